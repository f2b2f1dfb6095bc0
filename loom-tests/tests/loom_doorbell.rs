//! The doorbell ("needs kick") handshake on the submission ring (ARCHITECTURE rules 3 and 4).
//!
//! Guest producer (as `Client`'s `publish`): push a command, `publish_and_check()`, ring the
//! doorbell only when it returns true. Host consumer (as `Server`'s run loop): drain; if that found
//! nothing, `arm()` ("needs kick") and re-check; on `Ok(false)` go round again; on `Ok(true)` sleep
//! on the doorbell, then disarm. The doorbell is a [`Hint`]: rings merge, it is never a count.
//! Every command must be consumed, in order: a host asleep with nobody left to ring is a lost
//! wake-up, which loom reports as a deadlock.

#![cfg(vgpu_loom)]

use std::sync::Arc;

use loom::thread;
use vgpu_loom_tests::{knobs, model, Hint, LoomRing};
use vgpu_transport::notify::Notify;
use vgpu_transport::ring::Consumer;
use vgpu_transport::sync::Knob;
use vgpu_transport::wire::Command;

const DEPTH: u32 = 4;
const N: u64 = 3;

fn drain(sq: &mut Consumer<LoomRing<Command>>, got: &mut Vec<u64>) -> usize {
    let mut n = 0;
    while let Some(c) = sq.pop().unwrap() {
        assert_eq!(c.args[0], !c.seq, "command entry torn or stale");
        got.push(c.seq);
        n += 1;
    }
    n
}

fn doorbell_model() {
    model(3, || {
        let (mut sq_guest, mut sq) = LoomRing::<Command>::split(DEPTH, 0);
        let doorbell = Arc::new(Hint::new());
        let guest = {
            let doorbell = doorbell.clone();
            thread::spawn(move || {
                for seq in 1..=N {
                    sq_guest.push(Command { seq, args: [!seq, 0, 0, 0, 0, 0], ..Default::default() }).unwrap();
                    if sq_guest.publish_and_check() {
                        doorbell.notify();
                    }
                }
            })
        };
        // The host's serving loop.
        let mut got = Vec::new();
        loop {
            let n = drain(&mut sq, &mut got);
            if got.len() as u64 == N {
                break;
            }
            if n > 0 {
                continue;
            }
            if !sq.arm().unwrap() {
                continue;
            }
            doorbell.wait();
            sq.disarm();
        }
        guest.join().unwrap();
        assert_eq!(got, (1..=N).collect::<Vec<_>>());
    });
}

#[test]
fn doorbell_never_lost() {
    knobs(&[]);
    doorbell_model();
}

/// The host arms "needs kick" and sleeps without re-checking: a command published just before the
/// flag was set never rings the doorbell.
#[test]
#[should_panic(expected = "deadlock")]
fn doorbell_arm_no_recheck_is_caught() {
    knobs(&[Knob::ArmNoRecheck]);
    doorbell_model();
}

/// No `fence(SeqCst)` in the kick / arm handshakes: store buffering lets both sides miss the other.
#[test]
#[should_panic(expected = "deadlock")]
fn doorbell_no_fence_is_caught() {
    knobs(&[Knob::HandshakeNoFence]);
    doorbell_model();
}
