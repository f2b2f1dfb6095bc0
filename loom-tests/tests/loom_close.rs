//! The link-down handshake: a submitter that takes a slot while the completer closes the table
//! (the link died) must either see the table closed (and not publish) or have its slot found by
//! the closer's sweep and failed. Otherwise the call is published after the sweep and its caller
//! waits forever.
//!
//! `Slots::close` stores `closed`, fences, then scans; `Slots::confirm` (after the acquire) fences,
//! then loads `closed`. `Knob::CloseNoFence` drops both fences.

#![cfg(vgpu_loom)]

use std::sync::Arc;

use loom::thread;
use vgpu_loom_tests::{knobs, model};
use vgpu_transport::slots::Slots;
use vgpu_transport::sync::Knob;

const LINK_DOWN: u32 = 0xffff_0001;

fn close_model() {
    model(3, || {
        let slots = Arc::new(Slots::new(2));
        let closer = {
            let slots = slots.clone();
            thread::spawn(move || {
                for seq in slots.close() {
                    let _ = slots.complete(seq, LINK_DOWN, [0, 0]);
                }
            })
        };
        let seq = slots.next_seq();
        assert!(slots.try_acquire(seq));
        let published = slots.confirm(seq);
        closer.join().unwrap();
        if published {
            // Nothing else will ever complete this call: the sweep must have failed it.
            assert!(slots.is_done(seq), "a call published after the link-down sweep was never failed");
            assert_eq!(slots.try_take(seq).map(|o| o.status), Some(LINK_DOWN));
        }
    });
}

#[test]
fn close_fails_every_published_call() {
    knobs(&[]);
    close_model();
}

#[test]
#[should_panic(expected = "never failed")]
fn close_no_fence_is_caught() {
    knobs(&[Knob::CloseNoFence]);
    close_model();
}
