//! The transport under load, against a real mediator: many threads and every way to call, thousands
//! of operations in flight completing out of order, and bulk copies of every awkward size.

use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use vgpu_tests::{alloc, args, connect, mediator, pattern, poll_until, session_where, stat, Rng, EMU_MEM};
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::Call;
use vgpu_transport::{Client, Error, Status};

const MIB: usize = 1 << 20;

/// Per-thread device buffer of the mixed-call test, and the side buffer its extra streams write.
const MIX_BUF: usize = 4096;
const MIX_SIDE: usize = 256;

/// What one thread of [`mixed_calls_from_32_threads_are_all_correct`] did.
#[derive(Default, Debug)]
struct MixCount {
    calls: u64,
    not_ready: u64,
}

/// One thread's share: 10,000 or more calls, mixing blocking, submit + wait, fire-and-forget and
/// async calls, checking every result against a host-side shadow of the device buffer.
fn mixed_thread(c: &Client, t: u64, calls: u64) -> MixCount {
    let mut rng = Rng::new(t + 1);
    let mut n = MixCount::default();
    let buf = alloc(c, MIX_BUF as u64);
    let side = alloc(c, MIX_SIDE as u64);
    n.calls += 2;
    let mut shadow = pattern(t, MIX_BUF);
    c.copy_to_device(buf, &shadow, 0).expect("initial upload");
    n.calls += 1;
    while n.calls < calls {
        let off = rng.below(MIX_BUF as u64 - 1);
        let len = 1 + rng.below((MIX_BUF as u64 - off).min(256));
        let (o, l) = (off as usize, len as usize);
        match rng.below(100) {
            // Blocking round trip.
            0..=24 => {
                assert_eq!(c.call_blocking(Call::Nop, 0, [0; 6]).expect("blocking Nop"), [0, 0]);
                n.calls += 1;
            }
            // Submit, then wait on the ticket.
            25..=39 => {
                let t = c.submit(Call::Nop, 0, [0; 6]).expect("submit Nop");
                t.wait().expect("wait Nop");
                n.calls += 1;
            }
            // Fire-and-forget memset; a later read on the same stream must see it.
            40..=59 => {
                let v = rng.below(256);
                c.fire(Call::Memset, 0, args(buf + off, v, len)).expect("fire Memset");
                shadow[o..o + l].fill(v as u8);
                n.calls += 1;
            }
            // Async call, on any executor (block_on here).
            60..=69 => {
                let [free, total] = block_on(c.call(Call::MemGetInfo, 0, [0; 6])).expect("async MemGetInfo");
                assert_eq!(total, EMU_MEM);
                assert!(free <= EMU_MEM - (MIX_BUF + MIX_SIDE) as u64, "free {free} ignores this thread's allocations");
                n.calls += 1;
            }
            // Small upload through the window.
            70..=79 => {
                let data = pattern(rng.next_u64(), l);
                c.copy_to_device(buf + off, &data, 0).expect("copy_to_device");
                shadow[o..o + l].copy_from_slice(&data);
                n.calls += 1;
            }
            // Small download, checked against the shadow.
            80..=89 => {
                let mut back = vec![0u8; l];
                c.copy_from_device(buf + off, &mut back, 0).expect("copy_from_device");
                assert_eq!(back, shadow[o..o + l], "thread {t}: device bytes {off}+{len} differ from what was written");
                n.calls += 1;
            }
            // Event life cycle: create, record behind a memset, query, sync (async), query, destroy.
            90..=94 => {
                let [ev, _] = c.call_blocking(Call::EventCreate, 0, [0; 6]).expect("EventCreate");
                assert_ne!(ev, 0);
                let v = rng.below(256);
                c.fire(Call::Memset, 0, args(buf + off, v, len)).expect("fire Memset");
                shadow[o..o + l].fill(v as u8);
                c.fire(Call::EventRecord, 0, args(ev, 0, 0)).expect("fire EventRecord");
                match c.call_blocking(Call::EventQuery, 0, args(ev, 0, 0)) {
                    Ok(_) => {}
                    Err(e) if e.status() == Some(Status::NotReady) => n.not_ready += 1,
                    Err(e) => panic!("EventQuery before sync: {e}"),
                }
                block_on(c.call(Call::EventSync, 0, args(ev, 0, 0))).expect("async EventSync");
                c.call_blocking(Call::EventQuery, 0, args(ev, 0, 0)).expect("EventQuery after EventSync must be Ok");
                c.submit(Call::EventDestroy, 0, args(ev, 0, 0)).expect("submit EventDestroy").wait().expect("EventDestroy");
                n.calls += 7;
            }
            // Stream life cycle: create, memset on it, sync it, read the result on stream 0, destroy.
            _ => {
                let [s, _] = c.call_blocking(Call::StreamCreate, 0, args(1, 0, 0)).expect("StreamCreate");
                assert!(s != 0 && s <= u32::MAX as u64, "stream handle {s}");
                let v = rng.below(256);
                c.fire(Call::Memset, s as u32, args(side, v, MIX_SIDE as u64)).expect("fire Memset on the new stream");
                c.call_blocking(Call::StreamSync, s as u32, [0; 6]).expect("StreamSync");
                let mut back = [0u8; MIX_SIDE];
                c.copy_from_device(side, &mut back, 0).expect("copy_from_device of the side buffer");
                assert_eq!(back, [v as u8; MIX_SIDE], "StreamSync returned before the stream's memset ran");
                block_on(c.call(Call::StreamDestroy, 0, args(s, 0, 0))).expect("async StreamDestroy");
                n.calls += 5;
            }
        }
    }
    let mut back = vec![0u8; MIX_BUF];
    c.copy_from_device(buf, &mut back, 0).expect("final download");
    assert!(back == shadow, "thread {t}: final device buffer differs from what was written");
    c.call_blocking(Call::MemFree, 0, args(buf, 0, 0)).expect("MemFree");
    c.call_blocking(Call::MemFree, 0, args(side, 0, 0)).expect("MemFree");
    n.calls += 3;
    n
}

/// Issue test 1: 32 threads x 10,000 mixed calls through one client, every result verified, and
/// no deferred error left over.
#[test]
fn mixed_calls_from_32_threads_are_all_correct() {
    const THREADS: u64 = 32;
    const CALLS: u64 = 10_000;
    let m = mediator();
    let c = connect(&m);
    let t0 = Instant::now();
    let counts: Vec<MixCount> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn({
                    let c = &c;
                    move || mixed_thread(c, t, CALLS)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("a mixed-call thread panicked")).collect()
    });
    let el = t0.elapsed();
    let total: u64 = counts.iter().map(|n| n.calls).sum();
    let not_ready: u64 = counts.iter().map(|n| n.not_ready).sum();
    assert!(counts.iter().all(|n| n.calls >= CALLS));
    // A few seconds in a debug build on two cores. Far slower means callers are being woken by
    // the 100 ms safety-net timeouts instead of their completions: a lost wake-up.
    assert!(el < Duration::from_secs(40), "{total} calls took {el:?}: wake-ups are being lost");
    assert!(c.take_deferred_error().is_none(), "a fire-and-forget call failed");
    let sent = c.stats().calls.load(Ordering::Relaxed);
    assert!(sent >= THREADS * CALLS, "the client sent {sent} commands, expected at least {}", THREADS * CALLS);
    assert_eq!(sent, total, "the client's command count disagrees with the threads' count");
    // The host saw every command and failed none of them (EventQuery's NotReady is no error).
    // (The host counts a completion just after posting it, hence the short poll.)
    let sess = poll_until(Duration::from_secs(5), "the host to count every completion", || {
        let s = stat(&m)["sessions"][0].clone();
        (s["completions"].as_u64() == Some(sent)).then_some(s)
    });
    assert_eq!(sess["commands"].as_u64(), Some(sent), "host command count: {sess}");
    assert_eq!(sess["errors"].as_u64(), Some(0), "host error count: {sess}");
    assert_eq!(sess["mem_in_use"].as_u64(), Some(0), "every thread freed its memory: {sess}");
    eprintln!(
        "mixed: {total} calls from {THREADS} threads in {el:.2?} ({:.0} calls/s), {not_ready} EventQuery NotReady",
        total as f64 / el.as_secs_f64()
    );
}

/// One operation of the out-of-order test.
#[derive(Clone, Copy, Debug)]
enum Op {
    Memset,
    /// MemcpyDtoH of 16 bytes into window offset `win`, which must then hold `expect`.
    Read {
        win: u64,
        expect: u8,
    },
}

/// Issue test 2: 4,096 asynchronous operations in flight on 8 streams, submitted before any is
/// waited for. Streams 0-3 carry 16 MiB memsets (one in eight) and finish late; streams 4-7
/// carry tiny ones.
/// Completions arrive out of submission order, all succeed, and each stream stays FIFO: every
/// read sees the bytes of the memset submitted just before it on its stream.
#[test]
fn async_4096_in_flight_on_8_streams_complete_out_of_order() {
    const OPS: usize = 4096;
    const STREAMS: usize = 8;
    const BIG: u64 = 16 << 20;
    let m = mediator();
    let c = connect(&m);
    let streams: Vec<u32> =
        (0..STREAMS).map(|_| c.call_blocking(Call::StreamCreate, 0, args(1, 0, 0)).expect("StreamCreate")[0] as u32).collect();
    let slow = |s: usize| s < 4;
    let bufs: Vec<u64> = (0..STREAMS).map(|s| alloc(&c, if slow(s) { BIG } else { 4096 })).collect();
    let (rest, rest_len) = c.staging().rest(c.region().layout().window_len);
    assert!(rest_len >= (OPS * 16) as u64);

    let mut ops = Vec::with_capacity(OPS);
    let mut tickets = Vec::with_capacity(OPS);
    let mut last = [0u8; STREAMS];
    let t0 = Instant::now();
    for i in 0..OPS {
        let (s, k) = (i % STREAMS, i / STREAMS);
        let (op, call, a) = if k % 2 == 0 {
            // A new value on every memset of a stream, so a read that overtook its memset shows.
            let v = ((k / 2 * 7 + s * 13 + 1) % 251) as u8;
            last[s] = v;
            let len = if slow(s) && k % 16 == 0 { BIG } else { 64 };
            (Op::Memset, Call::Memset, args(bufs[s], v as u64, len))
        } else {
            let win = rest + (i * 16) as u64;
            (Op::Read { win, expect: last[s] }, Call::MemcpyDtoH, args(bufs[s], win, 16))
        };
        ops.push(op);
        tickets.push(c.submit(call, streams[s], a).expect("submit"));
    }
    let submitted = t0.elapsed();

    // Collect in completion order.
    let mut pending: FuturesUnordered<_> = tickets.into_iter().enumerate().map(|(i, t)| t.map(move |r| (i, r))).collect();
    let order: Vec<usize> = block_on(async {
        let mut order = Vec::with_capacity(OPS);
        while let Some((i, r)) = pending.next().await {
            r.unwrap_or_else(|e| panic!("operation {i} ({:?} on stream {}) failed: {e}", ops[i], i % STREAMS));
            order.push(i);
        }
        order
    });
    let all = t0.elapsed();
    assert_eq!(order.len(), OPS);
    let mut pos = vec![usize::MAX; OPS];
    for (p, &i) in order.iter().enumerate() {
        assert_eq!(pos[i], usize::MAX, "operation {i} completed twice");
        pos[i] = p;
    }
    assert!(order.iter().zip(0..).any(|(&i, n)| i != n), "completions came back in submission order");
    // Some tiny operation submitted after a slow stream's operation completed before it.
    let overtaken = (0..OPS).filter(|&i| slow(i % STREAMS)).any(|i| (i + 1..OPS).any(|j| !slow(j % STREAMS) && pos[j] < pos[i]));
    assert!(overtaken, "no fast-stream operation overtook a slow-stream one");
    let inversions: usize = order.windows(2).filter(|w| w[1] < w[0]).count();

    // Per-stream FIFO: each read saw its own memset's bytes.
    for (i, op) in ops.iter().enumerate() {
        if let Op::Read { win, expect } = *op {
            let mut b = [0u8; 16];
            c.region().read_window(win, &mut b).expect("window read");
            assert_eq!(b, [expect; 16], "read {i} on stream {} does not see the memset before it", i % STREAMS);
        }
    }
    assert!(c.take_deferred_error().is_none());
    eprintln!(
        "out-of-order: {OPS} ops submitted in {submitted:.2?}, all done in {all:.2?}, {inversions} adjacent inversions in completion order"
    );
}

/// Upload `size` pseudo-random bytes to `dev + off`, download them from one byte earlier to one
/// byte later, and compare every byte; the two neighbours must keep the sentinels set before.
fn round_trip(c: &Client, dev: u64, off: u64, size: usize, seed: u64) {
    let data = pattern(seed, size);
    c.fire(Call::Memset, 0, args(dev + off - 1, 0xA5, 1)).expect("sentinel before");
    c.fire(Call::Memset, 0, args(dev + off + size as u64, 0x5A, 1)).expect("sentinel after");
    c.copy_to_device(dev + off, &data, 0).unwrap_or_else(|e| panic!("upload of {size} bytes at offset {off}: {e}"));
    let mut back = vec![0u8; size + 2];
    c.copy_from_device(dev + off - 1, &mut back, 0).unwrap_or_else(|e| panic!("download of {size} bytes at offset {off}: {e}"));
    assert_eq!(back[0], 0xA5, "{size} bytes at offset {off}: the byte before was overwritten");
    assert_eq!(back[size + 1], 0x5A, "{size} bytes at offset {off}: the byte after was overwritten");
    if let Some(i) = back[1..=size].iter().zip(&data).position(|(a, b)| a != b) {
        panic!("{size} bytes at offset {off}: first difference at byte {i}");
    }
}

/// Issue test 3: copies from 1 byte to 256 MiB at odd sizes and odd device offsets, through the
/// window pipeline both ways, checked byte for byte; then device-to-device copies at odd offsets.
#[test]
fn copies_from_1_byte_to_256_mib_at_odd_sizes_and_offsets() {
    let m = mediator();
    let c = connect(&m);
    let cap = 256 * MIB + 8192;
    let dev = alloc(&c, cap as u64);
    let sizes = [1, 3, 4095, 4097, 65537, MIB + 7, 3 * MIB + 1, 17 * MIB + 3, 256 * MIB];
    let offsets = [1u64, 7, 4093];
    let t0 = Instant::now();
    let mut moved = 0u64;
    for (n, &size) in sizes.iter().enumerate() {
        // Small sizes at every offset; large ones at one offset each (they cost seconds).
        let offs = if size <= 65537 { &offsets[..] } else { std::slice::from_ref(&offsets[n % 3]) };
        for (k, &off) in offs.iter().enumerate() {
            round_trip(&c, dev, off, size, (n * 3 + k) as u64);
            moved += 2 * size as u64;
        }
    }
    let up_down = t0.elapsed();

    // Device to device at odd offsets, across allocations and inside one.
    let len = 3 * MIB + 1;
    let other = alloc(&c, (4 * MIB) as u64);
    let src = pattern(99, len + 3);
    c.copy_to_device(dev + 4093, &src, 0).expect("upload for D2D");
    c.fire(Call::Memset, 0, args(other, 0x11, (4 * MIB) as u64)).expect("clear target");
    c.fire(Call::MemcpyDtoD, 0, args(other + 7, dev + 4093 + 2, len as u64)).expect("D2D across allocations");
    let mut back = vec![0u8; len + 2];
    c.copy_from_device(other + 6, &mut back, 0).expect("download after D2D");
    assert_eq!((back[0], back[len + 1]), (0x11, 0x11), "D2D wrote outside its range");
    assert!(back[1..=len] == src[2..2 + len], "D2D across allocations: bytes differ");
    // Inside one allocation, to a non-overlapping odd offset.
    let to = 200 * MIB as u64 + 3;
    c.fire(Call::MemcpyDtoD, 0, args(dev + to, dev + 4093 + 1, len as u64)).expect("D2D inside one allocation");
    let mut back = vec![0u8; len];
    c.copy_from_device(dev + to, &mut back, 0).expect("download after D2D");
    assert!(back[..] == src[1..1 + len], "D2D inside one allocation: bytes differ");
    assert!(c.take_deferred_error().is_none());

    let sess = &stat(&m)["sessions"][0];
    assert!(sess["bytes_h2d"].as_u64().unwrap_or(0) >= moved / 2, "host counted fewer uploaded bytes than sent: {sess}");
    assert!(sess["bytes_d2d"].as_u64().unwrap_or(0) >= 2 * len as u64);
    eprintln!("copies: {:.0} MiB up and down in {up_down:.2?}", moved as f64 / MIB as f64);
}

/// Copies that the host must refuse come back as errors through every path, and leave the
/// client usable: a download past the end of an allocation, and an upload to freed memory.
#[test]
fn refused_copies_surface_as_errors_and_the_client_goes_on() {
    let m = mediator();
    let c = connect(&m);
    let dev = alloc(&c, 4096);
    let mut back = vec![0u8; 4097];
    let e = c.copy_from_device(dev, &mut back, 0).expect_err("a download past the allocation must fail");
    assert_eq!(e.status(), Some(Status::InvalidDevicePointer), "{e}");
    c.call_blocking(Call::MemFree, 0, args(dev, 0, 0)).expect("MemFree");
    let e = c.copy_to_device(dev, &[1, 2, 3], 0).expect_err("an upload to freed memory must fail");
    assert!(matches!(e, Error::Call { call: Call::MemcpyHtoD, status: Status::InvalidDevicePointer, .. }), "{e}");
    // A fire-and-forget failure is deferred, and reported once.
    c.fire(Call::Memset, 0, args(dev, 0, 1)).expect("fire");
    c.call_blocking(Call::StreamSync, 0, [0; 6]).expect("StreamSync");
    let e = c.take_deferred_error().expect("the failed memset is the deferred error");
    assert_eq!(e.status(), Some(Status::InvalidDevicePointer));
    assert!(c.take_deferred_error().is_none(), "a deferred error is reported once");
    let d = alloc(&c, 100);
    c.copy_to_device(d, &[7; 100], 0).expect("the client still works");
    let mut b = [0u8; 100];
    c.copy_from_device(d, &mut b, 0).expect("the client still works");
    assert_eq!(b, [7; 100]);
    let sess = session_where(&stat(&m), "id", c.region().read_u64(vgpu_transport::wire::hdr::SESSION_ID)).expect("our session");
    assert_eq!(sess["errors"].as_u64(), Some(3), "{sess}");
}
