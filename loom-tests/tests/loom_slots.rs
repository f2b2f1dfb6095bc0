//! In-flight slots: allocation, reuse and completion with sequence generations, detach, and
//! back-pressure (a caller waiting for a free slot).
//!
//! Depth 1, so every call reuses the one slot. The caller acquires sequence numbers in order and
//! waits for each outcome; the completer (the single completer role) completes each seq it is
//! handed, and in between replays a stale completion of the first one, which must be rejected
//! with `Err(Stale)` whatever state the slot is in by then (done, free, or held by the next
//! generation). Without the generation check it answers the next call with the wrong outcome.

#![cfg(vgpu_loom)]

use std::sync::Arc;

use loom::sync::mpsc;
use loom::thread;
use vgpu_loom_tests::{block_on_poll, knobs, model};
use vgpu_transport::slots::{Delivered, Outcome, Slots, Stale};
use vgpu_transport::sync::Knob;

fn generations_model() {
    model(3, || {
        let slots = Arc::new(Slots::new(1));
        let (submit, submitted) = mpsc::channel::<u64>();
        let completer = {
            let slots = slots.clone();
            thread::spawn(move || {
                let first = submitted.recv().unwrap();
                assert_eq!(slots.complete(first, 0, [first, 1]), Ok(Delivered::ToWaiter));
                // A duplicate of the first completion, arriving late (a replayed ring entry).
                let stale = slots.complete(first, 0, [first, 2]);
                let second = submitted.recv().unwrap();
                let r = slots.complete(second, 0, [second, 1]);
                (stale, r)
            })
        };
        for _ in 0..2 {
            let seq = slots.next_seq();
            block_on_poll(|cx| slots.poll_acquire(seq, cx));
            submit.send(seq).unwrap();
            let o = block_on_poll(|cx| slots.poll_result(seq, cx));
            assert_eq!(o, Outcome { status: 0, result: [seq, 1] }, "seq {seq} was answered with another call's outcome");
        }
        let (stale, r) = completer.join().unwrap();
        assert!(matches!(stale, Err(Stale { .. })), "a stale completion was accepted: {stale:?}");
        assert_eq!(r, Ok(Delivered::ToWaiter));
    });
}

#[test]
fn slots_reject_stale_completions() {
    knobs(&[]);
    generations_model();
}

/// Acquiring ignores the previous occupant's generation: the stale completion of the first call
/// lands in the slot now held by the second and answers it.
#[test]
#[should_panic(expected = "was answered with another call's outcome")]
fn slots_no_generation_is_caught() {
    knobs(&[Knob::SlotNoGeneration]);
    generations_model();
}

/// Back-pressure: depth 1, seq `a` holds the slot; another thread waits (`poll_acquire`) for it to
/// take seq `b`. The completer completes `a`, the caller of `a` takes the outcome, which releases
/// the slot and must wake the waiting thread.
fn backpressure_model() {
    model(3, || {
        let slots = Arc::new(Slots::new(1));
        let a = slots.next_seq();
        assert!(slots.try_acquire(a));
        let b = slots.next_seq();
        let completer = {
            let slots = slots.clone();
            thread::spawn(move || {
                assert_eq!(slots.complete(a, 0, [a, 0]), Ok(Delivered::ToWaiter));
            })
        };
        let acquirer = {
            let slots = slots.clone();
            thread::spawn(move || {
                block_on_poll(|cx| slots.poll_acquire(b, cx));
                // It holds the slot now: the stale generation `a` cannot complete into it.
                assert!(slots.complete(a, 0, [0, 0]).is_err());
            })
        };
        let o = block_on_poll(|cx| slots.poll_result(a, cx));
        assert_eq!(o.result, [a, 0]);
        completer.join().unwrap();
        acquirer.join().unwrap();
    });
}

#[test]
fn slots_release_wakes_acquirer() {
    knobs(&[]);
    backpressure_model();
}

/// A release does not wake threads waiting for a free slot: the waiter sleeps forever.
#[test]
#[should_panic(expected = "deadlock")]
fn slots_release_no_wake_is_caught() {
    knobs(&[Knob::ReleaseNoWake]);
    backpressure_model();
}

/// Detach racing completion: whoever sets the second of DONE / DETACHED releases the slot, exactly
/// one of them sees the outcome, and the next generation can then take the slot.
#[test]
fn slots_detach_races_completion() {
    knobs(&[]);
    model(3, || {
        let slots = Arc::new(Slots::new(1));
        let a = slots.next_seq();
        assert!(slots.try_acquire(a));
        let completer = {
            let slots = slots.clone();
            thread::spawn(move || slots.complete(a, 5, [6, 7]).unwrap())
        };
        let detached = slots.detach(a);
        let delivered = completer.join().unwrap();
        let want = Outcome { status: 5, result: [6, 7] };
        match (detached, delivered) {
            (Some(o), Delivered::ToWaiter) | (None, Delivered::Detached(o)) => assert_eq!(o, want),
            other => panic!("slot released twice or never: {other:?}"),
        }
        assert!(slots.try_acquire(slots.next_seq()), "slot not released");
    });
}
