//! Completion publication against a waiter that parks (`Slots::complete` vs `Slots::poll_result`).
//!
//! The completer writes the outcome, publishes DONE (Release), then takes the waiter's waker under
//! the slot's lock and wakes it. The waiter tries to take the outcome (Acquire), registers its
//! waker under the same lock, re-checks, and only then parks. The waker unparks a loom thread, so
//! a lost wake-up leaves the waiter parked forever (loom: deadlock), and an outcome read without
//! the Release/Acquire pairing can be stale (the assertion fails).

#![cfg(vgpu_loom)]

use std::sync::Arc;

use loom::thread;
use vgpu_loom_tests::{block_on_poll, knobs, model};
use vgpu_transport::slots::{Delivered, Outcome, Slots};
use vgpu_transport::sync::Knob;

fn waiter_model() {
    model(3, || {
        // Two calls in flight in a depth-2 table; the host completes them out of order.
        let slots = Arc::new(Slots::new(2));
        let a = slots.next_seq();
        let b = slots.next_seq();
        assert!(slots.try_acquire(a) && slots.try_acquire(b));
        let completer = {
            let slots = slots.clone();
            thread::spawn(move || {
                for seq in [b, a] {
                    assert_eq!(slots.complete(seq, 3, [seq, 100 + seq]), Ok(Delivered::ToWaiter));
                }
            })
        };
        for seq in [a, b] {
            let o = block_on_poll(|cx| slots.poll_result(seq, cx));
            assert_eq!(o, Outcome { status: 3, result: [seq, 100 + seq] }, "waiter read a stale outcome");
        }
        completer.join().unwrap();
        // Taking the outcomes released both slots for the next generation.
        assert!(slots.try_acquire(slots.next_seq()) && slots.try_acquire(slots.next_seq()));
    });
}

#[test]
fn waiter_is_woken_with_the_outcome() {
    knobs(&[]);
    waiter_model();
}

/// The waiter registers its waker and parks without re-checking DONE: a completion that took the
/// (still empty) waker slot just before the registration never wakes it.
#[test]
#[should_panic(expected = "deadlock")]
fn waiter_no_recheck_is_caught() {
    knobs(&[Knob::WaiterNoRecheck]);
    waiter_model();
}

/// DONE is published `Relaxed`: a waiter that sees DONE may still read the old outcome words.
#[test]
#[should_panic(expected = "waiter read a stale outcome")]
fn waiter_publish_relaxed_is_caught() {
    knobs(&[Knob::SlotPublishRelaxed]);
    waiter_model();
}
