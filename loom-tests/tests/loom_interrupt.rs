//! The interrupt-suppression handshake on the completion ring (ARCHITECTURE rules 3 and 4).
//!
//! Host producer (as `server::Completer::post`): push a completion, `publish_and_check()`, raise
//! the interrupt only when it returns true. Guest consumer (as the client's reactor): disarm,
//! drain, then arm and re-check (`arm()`; on `Ok(false)` drain again and re-arm); sleep on the
//! interrupt only once `arm()` returned `Ok(true)`. The interrupt is a [`Hint`]: notifications
//! merge, it is never a count. Every completion must be consumed, in order: a guest asleep with
//! nobody left to raise the interrupt is a lost wake-up, which loom reports as a deadlock.

#![cfg(vgpu_loom)]

use std::sync::Arc;

use loom::thread;
use vgpu_loom_tests::{knobs, model, Hint, LoomRing};
use vgpu_transport::notify::Notify;
use vgpu_transport::ring::Consumer;
use vgpu_transport::sync::Knob;
use vgpu_transport::wire::Completion;

const DEPTH: u32 = 4;
const N: u64 = 3;

fn drain(cq: &mut Consumer<LoomRing<Completion>>, got: &mut Vec<u64>) {
    while let Some(c) = cq.pop().unwrap() {
        assert_eq!(c.result, [c.seq, !c.seq], "completion entry torn or stale");
        got.push(c.seq);
    }
}

fn interrupt_model() {
    model(3, || {
        let (mut cq_host, mut cq) = LoomRing::<Completion>::split(DEPTH, 0);
        let interrupt = Arc::new(Hint::new());
        let host = {
            let interrupt = interrupt.clone();
            thread::spawn(move || {
                // Two posts, [1] then the batch [2, 3], so the second post reads the flag the
                // guest may have armed after draining the first.
                for batch in [1..=1, 2..=N] {
                    for seq in batch {
                        cq_host.push(Completion { seq, status: 0, aux: 0, result: [seq, !seq] }).unwrap();
                    }
                    if cq_host.publish_and_check() {
                        interrupt.notify();
                    }
                }
            })
        };
        // The guest's reactor.
        let mut got = Vec::new();
        loop {
            cq.disarm();
            drain(&mut cq, &mut got);
            while !cq.arm().unwrap() {
                drain(&mut cq, &mut got);
            }
            if got.len() as u64 == N {
                break;
            }
            interrupt.wait();
        }
        host.join().unwrap();
        assert_eq!(got, (1..=N).collect::<Vec<_>>());
    });
}

#[test]
fn interrupt_never_lost() {
    knobs(&[]);
    interrupt_model();
}

/// The guest arms and sleeps without re-checking the ring: a completion published just before the
/// flag was set is never signalled.
#[test]
#[should_panic(expected = "deadlock")]
fn interrupt_arm_no_recheck_is_caught() {
    knobs(&[Knob::ArmNoRecheck]);
    interrupt_model();
}

/// No `fence(SeqCst)` between publish and flag read (host) / flag store and re-check (guest): both
/// sides can read the other's old value (store buffering), so neither sees the other.
#[test]
#[should_panic(expected = "deadlock")]
fn interrupt_no_fence_is_caught() {
    knobs(&[Knob::HandshakeNoFence]);
    interrupt_model();
}
