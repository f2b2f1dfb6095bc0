//! Ring head and tail across wrap-around (ARCHITECTURE rules 1 and 2).
//!
//! A depth-2 ring; the producer pushes three entries, retrying on `RingError::Full`, publishing
//! after each; the consumer pops all three. The entries live in `loom::cell::UnsafeCell`s, so an
//! entry read not ordered after its write (tail Release -> Acquire), or a write into a slot not
//! ordered after the previous occupant's read (head Release -> Acquire), is a data race loom
//! reports. The counters start just below `u32::MAX`, so they also wrap.

#![cfg(vgpu_loom)]

use loom::thread;
use vgpu_loom_tests::{knobs, model, LoomRing};
use vgpu_transport::ring::RingError;
use vgpu_transport::sync::Knob;

const DEPTH: u32 = 2;
const N: u64 = 3;

fn ring_model(start: u32) {
    model(3, move || {
        let (mut p, mut c) = LoomRing::<u64>::split(DEPTH, start);
        let producer = thread::spawn(move || {
            for v in 1..=N {
                loop {
                    match p.push(v * 10) {
                        Ok(()) => break,
                        Err(RingError::Full) => thread::yield_now(),
                        Err(e) => panic!("producer: {e}"),
                    }
                }
                p.publish();
            }
        });
        let mut got = Vec::new();
        while (got.len() as u64) < N {
            match c.pop() {
                Ok(Some(v)) => got.push(v),
                Ok(None) => thread::yield_now(),
                Err(e) => panic!("consumer: {e}"),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, [10, 20, 30], "entries lost, duplicated or reordered");
        assert_eq!(c.pop(), Ok(None));
    });
}

#[test]
fn ring_wraps_in_order() {
    knobs(&[]);
    ring_model(0);
}

#[test]
fn ring_wraps_across_u32_overflow() {
    knobs(&[]);
    ring_model(u32::MAX - 1);
}

/// The producer's tail store is `Relaxed`: the consumer sees the index before the entry.
#[test]
#[should_panic(expected = "Causality violation")]
fn ring_publish_relaxed_is_caught() {
    knobs(&[Knob::RingPublishRelaxed]);
    ring_model(0);
}

/// The consumer's tail load is `Relaxed`: it may read the entry before the producer's write.
#[test]
#[should_panic(expected = "Causality violation")]
fn ring_consume_relaxed_is_caught() {
    knobs(&[Knob::RingConsumeRelaxed]);
    ring_model(0);
}
