//! `vgpu-streams` against a real mediator: the CUDA execution model (`rt`, over the process-wide
//! context) and the async Rust API (private contexts).
//!
//! The `rt` tests share one mediator, started before the process-wide context first connects
//! (`VGPU_SOCKET` points at it); every other test starts its own.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vgpu_mediator::child::Mediator;
use vgpu_streams::rt;
use vgpu_streams::{
    Context, CudaError, Device, MemcpyKind, EVENT_DISABLE_TIMING, STREAM_LEGACY_DEFAULT, STREAM_NON_BLOCKING, STREAM_PER_THREAD,
};
use vgpu_tests::{mediator, pattern, session_where, stat, HANG};
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::Call;

/// The process-wide context can connect once per process, so every `rt` check runs in this one
/// test, against one mediator that the test owns (and stops at its end).
#[test]
fn rt_runtime_semantics() {
    let m: Mediator = mediator();
    // Set before the first use of the process-wide context, which reads them once. This test
    // exercises the asynchronous pageable D2H mode; the C suite covers the default (CUDA's
    // documented blocking behaviour, tests/c/async_d2h.c).
    std::env::set_var("VGPU_SOCKET", m.socket());
    std::env::set_var("VGPU_ASYNC_PAGEABLE_D2H", "1");
    assert_eq!(rt::blocking_round_trips(), 0, "nothing connects before the first call");
    assert_eq!(rt::get_device_count(), Ok(1));
    rt_async_pageable_d2h_lands_before_the_sync_returns();
    rt_host_functions_run_in_stream_order();
    rt_errors_codes_last_error_and_deferred_errors();
    rt_per_thread_streams_are_independent_but_sync_with_the_legacy_stream();
    rt_pinned_registered_2d_memset_peer_and_local_calls();
    rt_a_sync_right_after_async_d2h_sees_the_bytes();
    rt_device_ranges_are_checked_at_the_call();
    rt_pointer_attributes();
    rt_device_flags_pick_the_spin_policy();
    // Last: it frees everything the process has.
    rt_blocked_stream_does_not_starve_others_of_window_space();
    rt_device_reset_frees_everything(&m);
    drop(m);
}

const MIB: usize = 1 << 20;

/// Queue about `n` × 64 MiB of memsets on `stream` (a backlog of a good fraction of a second on
/// emu), into a scratch buffer.
fn backlog(stream: u64, n: usize) -> u64 {
    let big = rt::malloc(64 * MIB).expect("malloc 64 MiB");
    for i in 0..n {
        rt::memset_async(big, (i % 200) as i32 + 1, 64 * MIB, stream).expect("memset_async");
    }
    big
}

/// Pageable D2H with `cudaMemcpyAsync` is fire-and-forget: the call returns behind a backlog,
/// with no blocking round trip, and the reactor has put the bytes in the user's buffer when a
/// later stream sync (or event sync) returns. Larger than the staging chunks, so the chunks are
/// recycled by completion actions.
fn rt_async_pageable_d2h_lands_before_the_sync_returns() {
    let s = rt::stream_create(0, 0).expect("stream");
    let n = 9 * MIB + 77;
    let data = pattern(7, n);
    let dev = rt::malloc(n).expect("malloc");
    // SAFETY: `data` is a live buffer of `n` bytes; the sync copy returns after reading it.
    unsafe { rt::memcpy(dev as *mut u8, data.as_ptr(), n, MemcpyKind::HostToDevice) }.expect("memcpy H2D");
    let scratch = backlog(s, 6);
    let mut out = vec![0u8; n];
    let ev = rt::event_create(EVENT_DISABLE_TIMING).expect("event");
    let before = rt::blocking_round_trips();
    // SAFETY: `out` outlives the stream sync below, and is not touched before it.
    unsafe { rt::memcpy_async(out.as_mut_ptr(), dev as *const u8, n, MemcpyKind::DeviceToHost, s) }.expect("memcpy_async D2H");
    rt::event_record(ev, s).expect("record");
    assert_eq!(rt::blocking_round_trips(), before, "async D2H must not make a blocking round trip");
    rt::event_synchronize(ev).expect("event sync");
    assert!(out == data, "bytes missing after the event sync");
    rt::stream_synchronize(s).expect("stream sync");
    // Default kind, inferred from the pointers; pinned destination is zero-copy.
    let pinned = rt::malloc_host(n).expect("malloc_host");
    assert_eq!(pinned as usize % 256, 0, "pinned memory is 256-byte aligned");
    assert!(rt::is_pinned(pinned, n));
    // SAFETY: `pinned` holds `n` bytes and is read only after the sync.
    unsafe { rt::memcpy_async(pinned, dev as *const u8, n, MemcpyKind::Default, s) }.expect("D2H into pinned");
    rt::stream_synchronize(s).expect("sync");
    // SAFETY: the copy into `pinned` has completed (stream sync) and nothing writes it now.
    let got = unsafe { std::slice::from_raw_parts(pinned, n) }.to_vec();
    assert!(got == data, "pinned D2H bytes differ");
    rt::free_host(pinned).expect("free_host");
    // A burst of small pageable H2D copies shares staging chunks: no blocking round trip, and
    // each source buffer may be dropped as soon as its call returns (the bytes are staged).
    let before = rt::blocking_round_trips();
    for i in 0..300usize {
        let piece = pattern(1000 + i as u64, 1000);
        // SAFETY: `piece` is live for the call, which stages it before returning.
        unsafe { rt::memcpy_async((dev + (i * 1000) as u64) as *mut u8, piece.as_ptr(), 1000, MemcpyKind::HostToDevice, s) }
            .expect("small H2D");
    }
    assert_eq!(rt::blocking_round_trips(), before, "small async H2D copies must not wait");
    let mut back = vec![0u8; 300 * 1000];
    rt::stream_synchronize(s).expect("sync");
    rt::download(dev, &mut back).expect("download");
    for i in 0..300usize {
        assert!(back[i * 1000..(i + 1) * 1000] == pattern(1000 + i as u64, 1000)[..], "piece {i}");
    }
    rt::free(scratch).expect("free");
    rt::free(dev).expect("free");
    rt::event_destroy(ev).expect("event destroy");
    rt::stream_destroy(s).expect("stream destroy");
}

/// Host functions run in stream order: a host function sees the bytes of a D2H copy submitted
/// before it, work behind it waits until it returns (an event behind it stays NotReady while it
/// blocks), and a callback added with `cudaStreamAddCallback` gets `cudaSuccess`.
fn rt_host_functions_run_in_stream_order() {
    let s = rt::stream_create(STREAM_NON_BLOCKING, 0).expect("stream");
    let dev = rt::malloc(4096).expect("malloc");
    rt::memset_async(dev, 0x3C, 4096, s).expect("memset");
    let scratch = backlog(s, 4);
    let out: &'static mut [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
    let out_addr = out.as_mut_ptr() as usize;
    // SAFETY: `out` is leaked (never freed) and only read by the host function after the copy.
    unsafe { rt::memcpy_async(out.as_mut_ptr(), dev as *const u8, 4096, MemcpyKind::DeviceToHost, s) }.expect("D2H");
    let (started_tx, started_rx) = mpsc::channel::<bool>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    rt::launch_host_func(
        s,
        Box::new(move || {
            // SAFETY: the D2H before this function in stream order has completed (that is what
            // this test checks); the buffer is leaked, so the address stays valid.
            let seen = unsafe { std::slice::from_raw_parts(out_addr as *const u8, 4096) }.iter().all(|&b| b == 0x3C);
            let _ = started_tx.send(seen);
            let _ = release_rx.recv_timeout(HANG);
        }),
    )
    .expect("launch_host_func");
    let order = Arc::new(Mutex::new(Vec::new()));
    let o2 = order.clone();
    rt::stream_add_callback(s, Box::new(move |status| o2.lock().unwrap().push(status)), 0).expect("add callback");
    let behind = rt::event_create(0).expect("event");
    rt::event_record(behind, s).expect("record");
    let saw_bytes = started_rx.recv_timeout(HANG).expect("the host function ran");
    assert!(saw_bytes, "the host function ran before the D2H bytes were in the buffer");
    assert_eq!(rt::event_query(behind), Err(CudaError::NotReady), "work behind a running host function ran");
    assert_eq!(rt::get_last_error(), CudaError::Success, "NotReady is not recorded as an error");
    assert!(order.lock().unwrap().is_empty(), "the callback ran before the host function returned");
    release_tx.send(()).expect("release the host function");
    rt::event_synchronize(behind).expect("event sync");
    rt::stream_synchronize(s).expect("stream sync");
    assert_eq!(*order.lock().unwrap(), vec![CudaError::Success]);
    assert_eq!(rt::stream_add_callback(s, Box::new(|_| {}), 1), Err(CudaError::InvalidValue));
    rt::free(scratch).expect("free");
    rt::free(dev).expect("free");
    rt::stream_destroy(s).expect("destroy");
}

/// Errors: exact CUDA codes for bad arguments and handles; the per-thread last error
/// (`cudaGetLastError` clears, `cudaPeekAtLastError` does not, other threads unaffected); an
/// asynchronous failure surfaces once at the next synchronising call and is then gone.
fn rt_errors_codes_last_error_and_deferred_errors() {
    let _ = rt::get_last_error();
    assert_eq!(rt::set_device(1), Err(CudaError::InvalidDevice));
    assert_eq!(rt::peek_at_last_error(), CudaError::InvalidDevice);
    assert_eq!(rt::peek_at_last_error(), CudaError::InvalidDevice, "peek does not clear");
    std::thread::spawn(|| assert_eq!(rt::get_last_error(), CudaError::Success, "last error is per thread")).join().unwrap();
    assert_eq!(rt::get_last_error(), CudaError::InvalidDevice);
    assert_eq!(rt::get_last_error(), CudaError::Success, "get clears");
    assert_eq!(rt::set_device(0), Ok(()));
    assert_eq!(rt::get_device(), Ok(0));
    assert_eq!(rt::free(0x1234_5678), Err(CudaError::InvalidValue));
    assert_eq!(rt::stream_synchronize(0xdead_0010), Err(CudaError::InvalidResourceHandle));
    assert_eq!(rt::event_synchronize(0xdead_0020), Err(CudaError::InvalidResourceHandle));
    assert_eq!(rt::stream_create(0x8, 0), Err(CudaError::InvalidValue));
    assert_eq!(rt::memcpy_peer(0, 1, 0, 0, 16), Err(CudaError::InvalidDevice));
    assert_eq!(rt::malloc(0), Ok(0), "cudaMalloc(0) gives NULL");
    assert_eq!(rt::free(0), Ok(()));
    // Elapsed time needs timing on both events.
    let (a, b) = (rt::event_create(EVENT_DISABLE_TIMING).unwrap(), rt::event_create(0).unwrap());
    rt::event_record(a, 0).unwrap();
    rt::event_record(b, 0).unwrap();
    rt::event_synchronize(b).unwrap();
    assert_eq!(rt::event_elapsed_time(a, b), Err(CudaError::InvalidResourceHandle));
    // A device range outside every allocation is rejected at the call, as CUDA does
    // (NEEDS.md item 7), and nothing is left for the next sync.
    let _ = rt::get_last_error();
    let s = rt::stream_create(0, 0).unwrap();
    assert_eq!(rt::memset_async(0xd000_dead_0000, 0, 16, s), Err(CudaError::InvalidValue));
    assert_eq!(rt::get_last_error(), CudaError::InvalidValue);
    assert_eq!(rt::stream_synchronize(s), Ok(()));
    // Deferred: a fire-and-forget command the host rejects (sent past the guest's checks, on
    // the context's own client) returns at once and surfaces once at the next sync.
    let client = Context::global().expect("context").client();
    client.fire(Call::Memset, 0, [0xd000_dead_0000, 0, 16, 0, 0, 0]).expect("fire");
    assert_eq!(rt::device_synchronize(), Err(CudaError::InvalidValue));
    assert_eq!(rt::get_last_error(), CudaError::InvalidValue);
    assert_eq!(rt::stream_synchronize(s), Ok(()), "a deferred error is reported once");
    // A 2D copy whose width exceeds a pitch.
    let d = rt::malloc(4096).unwrap();
    let host = [0u8; 64];
    // SAFETY: rejected before any memory is touched.
    let r = unsafe { rt::memcpy_2d(d as *mut u8, 8, host.as_ptr(), 16, 16, 2, MemcpyKind::HostToDevice) };
    assert_eq!(r, Err(CudaError::InvalidPitchValue));
    rt::free(d).unwrap();
    for e in [a, b] {
        rt::event_destroy(e).unwrap();
    }
    assert_eq!(rt::event_destroy(a), Err(CudaError::InvalidResourceHandle), "destroyed twice");
    rt::stream_destroy(s).unwrap();
    assert_eq!(rt::stream_destroy(s), Err(CudaError::InvalidResourceHandle));
    let _ = rt::get_last_error();
}

/// `cudaStreamPerThread`: one blocking stream per thread. Two threads' per-thread streams do not
/// wait for each other (one held by a blocking host function does not stall the other), while
/// the legacy default stream waits for a per-thread stream's earlier work.
fn rt_per_thread_streams_are_independent_but_sync_with_the_legacy_stream() {
    let buf = rt::malloc(64 * MIB).expect("malloc");
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        rt::launch_host_func(
            STREAM_PER_THREAD,
            Box::new(move || {
                let _ = held_tx.send(());
                let _ = release_rx.recv_timeout(HANG);
            }),
        )
        .expect("host func on the per-thread stream");
        // Queued behind the held host function.
        rt::memset_async(buf, 0x77, 64 * MIB, STREAM_PER_THREAD).expect("memset");
        // The per-thread stream lives as long as its thread.
        let _ = exit_rx.recv_timeout(HANG);
    });
    held_rx.recv_timeout(HANG).expect("the holder's host function runs");
    // Another thread's per-thread stream runs while the first one is held.
    let (done_tx, done_rx) = mpsc::channel::<Result<(), CudaError>>();
    // (Allocated and freed outside: cudaFree waits for the whole device, the held stream too.)
    let small = rt::malloc(4096).expect("malloc");
    std::thread::spawn(move || {
        let other = rt::memset_async(small, 1, 4096, STREAM_PER_THREAD).and_then(|_| rt::stream_synchronize(STREAM_PER_THREAD));
        let _ = done_tx.send(other);
    });
    let r = done_rx.recv_timeout(HANG).expect("a per-thread stream waited for another thread's per-thread stream");
    assert_eq!(r, Ok(()));
    // The legacy stream waits for the held per-thread stream (a blocking stream): an event on it
    // stays NotReady until the host function returns and the memset behind it ran.
    let ev = rt::event_create(EVENT_DISABLE_TIMING).unwrap();
    rt::event_record(ev, STREAM_LEGACY_DEFAULT).unwrap();
    // A negative check: give a wrong implementation time to complete the record (there is no
    // event for "did not happen"), then see that it did not.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rt::event_query(ev), Err(CudaError::NotReady), "the legacy stream did not wait for the per-thread stream");
    release_tx.send(()).unwrap();
    let mut out = vec![0u8; 4096];
    rt::download(buf, &mut out).expect("download on the legacy stream");
    assert!(out.iter().all(|&b| b == 0x77), "the legacy stream ran before the per-thread memset");
    rt::event_synchronize(ev).unwrap();
    rt::event_destroy(ev).unwrap();
    exit_tx.send(()).unwrap();
    holder.join().expect("holder thread");
    rt::free(buf).unwrap();
    rt::free(small).unwrap();
}

/// Pinned and registered memory, 2D copies, memset, peer copies, device info and cheap calls.
fn rt_pinned_registered_2d_memset_peer_and_local_calls() {
    // Device info: the first fetch is a round trip, later ones are local.
    let info = rt::device_info().expect("device info");
    assert!(info.name_str().contains("emu"), "{}", info.name_str());
    let rts = rt::blocking_round_trips();
    rt::device_info().unwrap();
    assert_eq!(rt::get_device(), Ok(0));
    assert_eq!(rt::stream_is_capturing(STREAM_LEGACY_DEFAULT), Ok(false));
    assert_eq!(rt::stream_priority_range(), Ok((0, -5)));
    assert_eq!(rt::blocking_round_trips(), rts, "cheap calls must stay local");
    // Priorities are clamped, flags kept.
    let s = rt::stream_create(STREAM_NON_BLOCKING, -100).unwrap();
    assert_eq!(rt::stream_get_priority(s), Ok(-5));
    assert_eq!(rt::stream_get_flags(s), Ok(STREAM_NON_BLOCKING));
    // Pinned round trip, zero-copy both ways, without blocking round trips until the sync.
    let n = 3 * MIB + 5;
    let data = pattern(3, n);
    let (src, dst) = (rt::host_alloc(n, 1).unwrap(), rt::malloc_host(n).unwrap());
    // SAFETY: `src` holds `n` bytes of pinned memory no command uses yet.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), src, n) };
    let dev = rt::malloc(n).unwrap();
    let before = rt::blocking_round_trips();
    // SAFETY: pinned buffers of `n` bytes, read after the sync.
    unsafe {
        rt::memcpy_async(dev as *mut u8, src, n, MemcpyKind::HostToDevice, s).unwrap();
        rt::memcpy_async(dst, dev as *const u8, n, MemcpyKind::DeviceToHost, s).unwrap();
    }
    assert_eq!(rt::blocking_round_trips(), before, "pinned copies are fire-and-forget");
    rt::stream_synchronize(s).unwrap();
    // SAFETY: the copies completed; nothing writes `dst` now.
    assert!(unsafe { std::slice::from_raw_parts(dst, n) } == &data[..], "pinned round trip");
    assert_eq!(rt::free_host(data.as_ptr() as *mut u8), Err(CudaError::InvalidValue), "not pinned");
    rt::free_host(src).unwrap();
    rt::free_host(dst).unwrap();
    // Registered memory behaves as pageable memory.
    let mut reg = pattern(4, 64 << 10);
    let p = reg.as_mut_ptr();
    rt::host_register(p, reg.len(), 0).unwrap();
    assert_eq!(rt::host_register(p, 16, 0), Err(CudaError::HostMemoryAlreadyRegistered));
    // SAFETY: `reg` is live; the sync copy reads it before returning.
    unsafe { rt::memcpy(dev as *mut u8, p, reg.len(), MemcpyKind::HostToDevice) }.unwrap();
    let mut back = vec![0u8; reg.len()];
    rt::download(dev, &mut back).unwrap();
    assert!(back == reg);
    rt::host_unregister(p).unwrap();
    assert_eq!(rt::host_unregister(p), Err(CudaError::HostMemoryNotRegistered));
    // 2D: 5 rows of 100 bytes from a 128-byte pitch host image into a 256-byte pitch device one,
    // then back into a 100-byte pitch buffer.
    let (w, h) = (100usize, 5usize);
    let img = pattern(5, 128 * h);
    rt::memset(dev, 0, 256 * h).unwrap();
    // SAFETY: `img` holds h rows of 128 bytes; the sync copy reads it before returning.
    unsafe { rt::memcpy_2d(dev as *mut u8, 256, img.as_ptr(), 128, w, h, MemcpyKind::HostToDevice) }.unwrap();
    let mut packed = vec![0u8; w * h];
    // SAFETY: `packed` holds h rows of w bytes; the sync copy returns when they are written.
    unsafe { rt::memcpy_2d(packed.as_mut_ptr(), w, dev as *const u8, 256, w, h, MemcpyKind::DeviceToHost) }.unwrap();
    for r in 0..h {
        assert_eq!(&packed[r * w..(r + 1) * w], &img[r * 128..r * 128 + w], "row {r}");
    }
    let mut gap = vec![0xFFu8; 156];
    rt::download(dev + w as u64, &mut gap).unwrap();
    assert!(gap.iter().all(|&b| b == 0), "the 2D copy wrote into the row padding");
    // Memset and peer copies (one device).
    let dev2 = rt::malloc(4096).unwrap();
    rt::memset_async(dev, 0xAB, 4096, s).unwrap();
    rt::memcpy_peer_async(dev2, 0, dev, 0, 4096, s).unwrap();
    rt::stream_synchronize(s).unwrap();
    let mut peer = vec![0u8; 4096];
    rt::download(dev2, &mut peer).unwrap();
    assert!(peer.iter().all(|&b| b == 0xAB));
    let (free, total) = rt::mem_get_info().unwrap();
    assert!(free < total && total == vgpu_tests::EMU_MEM, "{free} {total}");
    rt::free(dev).unwrap();
    rt::free(dev2).unwrap();
    rt::stream_destroy(s).unwrap();
}

/// A stream sync submitted while the stream's last job (an async pageable D2H) is finishing
/// must complete after that job: its completion action has put the bytes in place when the
/// sync returns, every time (the host posts a job's completion before anything it completes
/// later on an idle stream).
fn rt_a_sync_right_after_async_d2h_sees_the_bytes() {
    let s = rt::stream_create(STREAM_NON_BLOCKING, 0).unwrap();
    let big = rt::malloc(2 * MIB).unwrap();
    let small = rt::malloc(4096).unwrap();
    let mut out = vec![0u8; 4096];
    for i in 0..600u32 {
        let v = (i % 250) as i32 + 1;
        rt::memset_async(small, v, 4096, s).unwrap();
        // Queued behind work that goes to the stream's thread, so the copy runs there too.
        rt::memset_async(big, v, 2 * MIB, s).unwrap();
        // SAFETY: `out` is live and untouched until the sync below returns.
        unsafe { rt::memcpy_async(out.as_mut_ptr(), small as *const u8, 4096, MemcpyKind::DeviceToHost, s) }.unwrap();
        // Submit the sync at varying moments around the end of the stream's work.
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_micros(u64::from(i % 60) * 10) {
            std::hint::spin_loop();
        }
        rt::stream_synchronize(s).unwrap();
        assert!(out[0] == v as u8 && out[4095] == v as u8, "round {i}: the sync returned before the D2H bytes landed");
        assert_eq!(rt::stream_query(s), Ok(()), "round {i}: the stream is idle after its sync");
    }
    rt::free(big).unwrap();
    rt::free(small).unwrap();
    rt::stream_destroy(s).unwrap();
}

/// Device ranges of memsets and copies (1D, 2D, peer) must lie inside one live allocation:
/// otherwise `InvalidValue` at the call (NEEDS.md item 7), with nothing sent to the host.
fn rt_device_ranges_are_checked_at_the_call() {
    let _ = rt::get_last_error();
    let d = rt::malloc(4096).unwrap();
    let other = rt::malloc(4096).unwrap();
    let mut host = vec![0u8; 8192];
    let bad = Err(CudaError::InvalidValue);
    assert_eq!(rt::memset(d, 0, 4097), bad, "past the end");
    assert_eq!(rt::memset(d + 4096, 0, 1), bad, "one past the end");
    assert_eq!(rt::memset(d.wrapping_sub(1), 0, 2), bad, "before the start");
    assert_eq!(rt::memset_async(u64::MAX - 4, 0, 16, STREAM_LEGACY_DEFAULT), bad, "wrapping range");
    assert_eq!(rt::memcpy_peer(other, 0, d + 1, 0, 4096), bad, "D2D source past the end");
    assert_eq!(rt::memcpy_peer_async(other + 8, 0, d, 0, 4096, STREAM_LEGACY_DEFAULT), bad, "D2D destination past the end");
    // SAFETY: `host` holds 8192 bytes; every call below is rejected before touching memory, or
    // copies within it.
    unsafe {
        assert_eq!(rt::memcpy(d as *mut u8, host.as_ptr(), 4097, MemcpyKind::HostToDevice), bad);
        assert_eq!(rt::memcpy(host.as_mut_ptr(), (d + 1) as *const u8, 4096, MemcpyKind::DeviceToHost), bad);
        assert_eq!(rt::memcpy_async(host.as_mut_ptr(), (d + 2048) as *const u8, 4096, MemcpyKind::DeviceToHost, STREAM_PER_THREAD), bad);
        // Two rows 4096 apart: the second row lies past the end of the allocation.
        assert_eq!(rt::memcpy_2d(d as *mut u8, 4096, host.as_ptr(), 64, 64, 2, MemcpyKind::HostToDevice), bad);
        assert_eq!(rt::memcpy_2d_async(host.as_mut_ptr(), 64, d as *const u8, 4000, 64, 2, MemcpyKind::DeviceToHost, 0), Ok(()));
        assert_eq!(rt::memcpy_2d(host.as_mut_ptr(), 64, d as *const u8, 4033, 64, 2, MemcpyKind::DeviceToHost), bad);
    }
    assert_eq!(rt::get_last_error(), CudaError::InvalidValue);
    // Nothing was deferred: the rejected calls never reached the host.
    assert_eq!(rt::device_synchronize(), Ok(()));
    // The edges themselves are fine.
    assert_eq!(rt::memset(d, 1, 4096), Ok(()));
    assert_eq!(rt::memset(d + 4095, 2, 1), Ok(()));
    assert_eq!(rt::memcpy_peer(other, 0, d, 0, 4096), Ok(()));
    assert_eq!(rt::device_synchronize(), Ok(()));
    rt::free(d).unwrap();
    // A freed allocation is no longer a valid range.
    assert_eq!(rt::memset(d, 0, 16), bad);
    rt::free(other).unwrap();
    let _ = rt::get_last_error();
}

/// `cudaPointerGetAttributes` (NEEDS.md item 2).
fn rt_pointer_attributes() {
    use vgpu_streams::{MemoryType, PointerInfo, INVALID_DEVICE_ID};
    let d = rt::malloc(1000).unwrap();
    let dev = |p: u64| PointerInfo { kind: MemoryType::Device, device: 0, device_ptr: p, host_ptr: 0 };
    let host = |p: u64| PointerInfo { kind: MemoryType::Host, device: 0, device_ptr: 0, host_ptr: p };
    let unreg = |p: u64| PointerInfo { kind: MemoryType::Unregistered, device: INVALID_DEVICE_ID, device_ptr: 0, host_ptr: p };
    assert_eq!(rt::pointer_attributes(d), Ok(dev(d)));
    assert_eq!(rt::pointer_attributes(d + 999), Ok(dev(d + 999)));
    assert_eq!(rt::pointer_attributes(d + 1000), Ok(unreg(d + 1000)), "one past the end");
    let pinned = rt::malloc_host(300).unwrap();
    assert_eq!(rt::pointer_attributes(pinned as u64 + 299), Ok(host(pinned as u64 + 299)));
    let mut plain = vec![0u8; 4096];
    let p = plain.as_mut_ptr();
    assert_eq!(rt::pointer_attributes(p as u64), Ok(unreg(p as u64)));
    assert_eq!(rt::pointer_attributes(0), Ok(unreg(0)));
    rt::host_register(p, 4096, 0).unwrap();
    assert_eq!(rt::pointer_attributes(p as u64 + 4095), Ok(host(p as u64 + 4095)));
    assert_eq!(rt::pointer_attributes(p as u64 + 4096), Ok(unreg(p as u64 + 4096)));
    rt::host_unregister(p).unwrap();
    assert_eq!(rt::pointer_attributes(p as u64), Ok(unreg(p as u64)));
    rt::free_host(pinned).unwrap();
    assert_eq!(rt::pointer_attributes(pinned as u64), Ok(unreg(pinned as u64)), "freed pinned memory");
    rt::free(d).unwrap();
    assert_eq!(rt::pointer_attributes(d), Ok(unreg(d)), "freed device memory");
}

/// `cudaSetDeviceFlags` / `cudaGetDeviceFlags` (NEEDS.md item 4): validated as CUDA does, kept
/// process-wide, and the schedule flag picks how a connection made afterwards waits:
/// `BlockingSync` never spins, the default spins adaptively.
fn rt_device_flags_pick_the_spin_policy() {
    // Private contexts on a mediator of their own (the reset check counts this process's
    // session on the shared one).
    let m = mediator();
    use vgpu_streams::device_flags::{LMEM_RESIZE_TO_MAX, MAP_HOST, SCHEDULE_BLOCKING_SYNC, SCHEDULE_SPIN};
    let _ = rt::get_last_error();
    assert_eq!(rt::get_device_flags(), Ok(0));
    assert_eq!(rt::set_device_flags(3), Err(CudaError::InvalidValue));
    assert_eq!(rt::get_last_error(), CudaError::InvalidValue);
    assert_eq!(rt::set_device_flags(0x40), Err(CudaError::InvalidValue));
    assert_eq!(rt::get_device_flags(), Ok(0), "a rejected value changes nothing");
    let spins = |ctx: &Arc<Context>| {
        let s = ctx.client().stats();
        s.spin_hits.load(Ordering::Relaxed) + s.spin_misses.load(Ordering::Relaxed)
    };
    let round_trips = |ctx: &Arc<Context>| {
        for _ in 0..20 {
            ctx.client().call_blocking(Call::Nop, 0, [0; 6]).expect("nop");
        }
    };
    rt::set_device_flags(SCHEDULE_BLOCKING_SYNC | MAP_HOST).unwrap();
    assert_eq!(rt::get_device_flags(), Ok(SCHEDULE_BLOCKING_SYNC | MAP_HOST));
    let blocking = Context::connect(m.socket()).expect("connect");
    round_trips(&blocking);
    assert_eq!(spins(&blocking), 0, "BlockingSync: blocked callers must not spin");
    rt::set_device_flags(SCHEDULE_SPIN | LMEM_RESIZE_TO_MAX).unwrap();
    assert_eq!(rt::get_device_flags(), Ok(SCHEDULE_SPIN | LMEM_RESIZE_TO_MAX));
    let spinning = Context::connect(m.socket()).expect("connect");
    round_trips(&spinning);
    assert!(spins(&spinning) > 0, "Spin: blocked callers spin first");
    rt::set_device_flags(0).unwrap();
    assert_eq!(rt::get_device_flags(), Ok(0));
}

/// `cudaDeviceReset` (NEEDS.md item 3): after work on every kind of stream, everything of the
/// process is freed on the host; old pointers and handles give errors, not crashes; the device
/// works again, the per-thread streams of this and other threads included.
fn rt_device_reset_frees_everything(m: &Mediator) {
    let _ = rt::get_last_error();
    let d = rt::malloc(8 * MIB).unwrap();
    let s = rt::stream_create(STREAM_NON_BLOCKING, 0).unwrap();
    let ev = rt::event_create(0).unwrap();
    let pinned = rt::malloc_host(4096).unwrap();
    let mut reg = vec![0u8; 4096];
    rt::host_register(reg.as_mut_ptr(), reg.len(), 0).unwrap();
    for st in [s, STREAM_PER_THREAD, STREAM_LEGACY_DEFAULT] {
        rt::memset_async(d, 3, 8 * MIB, st).unwrap();
        rt::stream_query(st).ok();
    }
    rt::event_record(ev, s).unwrap();
    // Another thread that outlives the reset, with its own per-thread stream.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        let small = rt::malloc(4096).unwrap();
        rt::memset_async(small, 1, 4096, STREAM_PER_THREAD).unwrap();
        rt::stream_synchronize(STREAM_PER_THREAD).unwrap();
        ready_tx.send(()).unwrap();
        go_rx.recv_timeout(HANG).unwrap();
        // After the reset: the old per-thread stream is gone; a new one is made on use.
        let fresh = rt::malloc(4096).unwrap();
        rt::memset_async(fresh, 2, 4096, STREAM_PER_THREAD).and_then(|_| rt::stream_synchronize(STREAM_PER_THREAD)).map(|_| fresh)
    });
    ready_rx.recv_timeout(HANG).unwrap();
    let me = std::process::id() as u64;
    let before = session_where(&stat(m), "guest_pid", me).expect("this process's session");
    assert!(before["streams"].as_u64().unwrap() >= 3, "{before}");

    rt::device_reset().expect("device reset");

    let (free, total) = rt::mem_get_info().unwrap();
    assert_eq!(free, total, "every allocation is freed");
    let after = session_where(&stat(m), "guest_pid", me).expect("session");
    assert_eq!(after["streams"].as_u64(), Some(0), "every stream is destroyed: {after}");
    assert_eq!(after["events"].as_u64(), Some(0), "every event is destroyed: {after}");
    // Old pointers and handles are rejected.
    assert_eq!(rt::memset(d, 0, 16), Err(CudaError::InvalidValue));
    assert_eq!(rt::free(d), Err(CudaError::InvalidValue));
    assert_eq!(rt::free_host(pinned), Err(CudaError::InvalidValue));
    assert!(!rt::is_pinned(pinned, 1));
    assert_eq!(rt::host_unregister(reg.as_mut_ptr()), Err(CudaError::HostMemoryNotRegistered));
    assert_eq!(rt::stream_synchronize(s), Err(CudaError::InvalidResourceHandle));
    assert_eq!(rt::stream_destroy(s), Err(CudaError::InvalidResourceHandle));
    assert_eq!(rt::event_query(ev), Err(CudaError::InvalidResourceHandle));
    let _ = rt::get_last_error();
    // The device works again: this thread's per-thread stream, another thread's, the legacy one.
    let d2 = rt::malloc(4096).unwrap();
    rt::memset_async(d2, 0x42, 4096, STREAM_PER_THREAD).unwrap();
    rt::stream_synchronize(STREAM_PER_THREAD).unwrap();
    assert_eq!(rt::stream_query(STREAM_PER_THREAD), Ok(()));
    assert_eq!(rt::stream_query(STREAM_LEGACY_DEFAULT), Ok(()));
    let mut out = vec![0u8; 4096];
    rt::download(d2, &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 0x42));
    go_tx.send(()).unwrap();
    let fresh = other.join().expect("other thread").expect("the other thread's per-thread stream after the reset");
    let s2 = rt::stream_create(0, 0).unwrap();
    let p2 = rt::malloc_host(4096).unwrap();
    assert!(rt::is_pinned(p2, 4096));
    rt::free_host(p2).unwrap();
    rt::stream_destroy(s2).unwrap();
    rt::free(fresh).unwrap();
    rt::free(d2).unwrap();
    assert_eq!(rt::get_last_error(), CudaError::Success);
}

/// No mediator at the socket: `cudaErrorNoDevice`, as a runtime with no usable device.
#[test]
fn no_mediator_gives_no_device() {
    let dir = vgpu_tests::TempDir::new("nomediator");
    let sock = dir.path().join("absent.sock");
    assert_eq!(Context::connect(&sock).map(drop), Err(CudaError::NoDevice));
    assert_eq!(Device::connect(&sock).map(drop).unwrap_err().code(), 100);
}

/// The mediator dies mid-session: every later call of that context fails with the sticky
/// `cudaErrorDevicesUnavailable`, whatever it is.
#[test]
fn losing_the_mediator_is_a_sticky_error() {
    let mut m = mediator();
    let dev = Device::connect(m.socket()).expect("connect");
    let s = dev.stream().expect("stream");
    let buf = dev.alloc::<u8>(4096).expect("alloc");
    s.memset(&buf, 1).expect("memset");
    s.synchronize_blocking().expect("sync");
    m.kill();
    let e = s.synchronize_blocking().expect_err("sync after the mediator died");
    assert_eq!(e, CudaError::DevicesUnavailable);
    for r in [dev.mem_info().map(drop), dev.stream().map(drop), s.memset(&buf, 2), dev.alloc::<u8>(16).map(drop)] {
        assert_eq!(r, Err(CudaError::DevicesUnavailable), "the error is sticky");
    }
    assert!(dev.context().sticky().is_err());
}

/// The async API under tokio: `.await` on stream, event and device completion; pageable and
/// pinned copies; a cross-stream event dependency; a host function in stream order; elapsed time.
#[test]
fn async_api_under_tokio() {
    let m = mediator();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    rt.block_on(async {
        let dev = Device::connect(m.socket()).expect("connect");
        let n = 2 * MIB / 4 + 3;
        let input: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(2654435761)).collect();
        let (s1, s2) = (dev.stream().unwrap(), dev.stream_with(true, -1).unwrap());
        let (a, b) = (dev.alloc::<u32>(n).unwrap(), dev.alloc::<u32>(n).unwrap());
        let (start, ready) = (dev.event().unwrap(), dev.event().unwrap());
        start.record(&s1).unwrap();
        s1.upload(&a, &input).unwrap();
        for _ in 0..4 {
            s1.copy(&b, &a).unwrap();
        }
        ready.record(&s1).unwrap();
        let out = dev.alloc_pinned::<u32>(n).unwrap();
        s2.wait_event(&ready).unwrap();
        s2.download_pinned(&b, &out).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let probe = out.as_ptr() as usize;
        s2.host_fn(move || {
            // SAFETY: reads one element of the pinned buffer after the download before this
            // host function in stream order has completed; the buffer outlives the await below.
            let first = unsafe { std::ptr::read_volatile(probe as *const u32) };
            let _ = tx.send(first);
        })
        .unwrap();
        s2.synchronize().await.expect("await stream 2");
        assert_eq!(rx.await.expect("host function ran"), input[0]);
        assert!(out.to_vec() == input, "the pinned download after a cross-stream wait differs");
        ready.synchronize().await.expect("await event");
        assert!(ready.query().unwrap());
        let ms = start.elapsed_ms(&ready).expect("elapsed");
        assert!(ms >= 0.0, "{ms}");
        let mut back = vec![0u32; n];
        s1.download(&b, &mut back).unwrap();
        assert!(back == input);
        dev.synchronize().await.expect("await device");
        assert!(s1.query().unwrap() && s2.query().unwrap());
        assert_eq!(s1.upload(&a, &input[1..]), Err(CudaError::InvalidValue), "length mismatch");
    });
}

/// The transport's completion actions (what pageable D2H and host functions rest on): an action
/// runs exactly once, before its call counts as done (a waiter sees its effect), with `ok` =
/// false for a host error; and when the mediator dies, the actions of calls in flight run with
/// `ok` = false, so nothing they hold (staging chunks) is lost.
#[test]
fn completion_actions_run_once_before_done_and_on_link_failure() {
    use vgpu_transport::wire::Call;
    let mut m = mediator();
    let c = vgpu_tests::connect(&m);
    let log = Arc::new(Mutex::new(Vec::<(&'static str, bool)>::new()));
    let action = |tag: &'static str| -> vgpu_transport::OnComplete {
        let l = log.clone();
        Box::new(move |_, _, ok| l.lock().unwrap().push((tag, ok)))
    };
    let t = c.submit_then(Call::Nop, 0, [0; 6], action("nop")).expect("submit");
    t.wait().expect("nop");
    assert_eq!(*log.lock().unwrap(), vec![("nop", true)], "the action ran before the waiter returned");
    let t = c.submit_then(Call::MemFree, 0, [0x1234, 0, 0, 0, 0, 0], action("bad free")).expect("submit");
    assert!(t.wait().is_err());
    assert_eq!(log.lock().unwrap()[1], ("bad free", false));
    // A call queued behind seconds of work when the mediator is killed.
    let big = vgpu_tests::alloc(&c, 256 << 20);
    let [s, _] = c.call_blocking(Call::StreamCreate, 0, [1, 0, 0, 0, 0, 0]).expect("stream");
    for i in 0..32 {
        c.fire(Call::Memset, s as u32, [big, i, 256 << 20, 0, 0, 0]).expect("memset");
    }
    let t = c.submit_then(Call::StreamSync, s as u32, [0; 6], action("in flight")).expect("submit");
    m.kill();
    assert!(t.wait().is_err(), "the link is down");
    assert_eq!(log.lock().unwrap().len(), 3, "every action ran exactly once: {:?}", log.lock().unwrap());
    assert_eq!(log.lock().unwrap()[2], ("in flight", false));
    // After the link is down an action still runs (at once, not ok).
    assert!(c.submit_then(Call::Nop, 0, [0; 6], action("after")).is_err());
    assert_eq!(log.lock().unwrap()[3], ("after", false));
}

/// A destroyed stream's queued work still runs, and still counts: `DeviceSync` and `MemFree`
/// wait for it, and (for a blocking stream) so does the legacy default stream, as a per-thread
/// stream destroyed at thread exit needs.
#[test]
fn destroyed_streams_still_count_for_device_sync_and_the_legacy_stream() {
    use vgpu_transport::wire::Call;
    let m = mediator();
    let c = vgpu_tests::connect(&m);
    const BIG: u64 = 64 << 20;
    let (x, y) = (vgpu_tests::alloc(&c, BIG), vgpu_tests::alloc(&c, 4096));
    for (flags, value) in [(0u64, 0x21u64), (1, 0x22)] {
        let [s, _] = c.call_blocking(Call::StreamCreate, 0, [flags, 0, 0, 0, 0, 0]).expect("stream");
        for i in 0..24 {
            let v = if i == 23 { value } else { 0x40 + i % 16 };
            c.fire(Call::Memset, s as u32, [x, v, BIG, 0, 0, 0]).expect("memset");
        }
        // Destroy without waiting (fire), then wait for the whole device.
        c.fire(Call::StreamDestroy, 0, [s, 0, 0, 0, 0, 0]).expect("destroy");
        if flags == 0 {
            // Blocking stream: stream 0 waits for its earlier work even though it is destroyed.
            c.fire(Call::MemcpyDtoD, 0, [y, x, 4096, 0, 0, 0]).expect("DtoD on stream 0");
            let mut out = vec![0u8; 4096];
            c.copy_from_device(y, &mut out, 0).expect("D2H");
            assert!(out.iter().all(|&b| b as u64 == value), "stream 0 overtook a destroyed blocking stream: {:#x}", out[0]);
        } else {
            c.call_blocking(Call::DeviceSync, 0, [0; 6]).expect("DeviceSync");
            let mut out = vec![0u8; 4096];
            c.copy_from_device(x, &mut out, 0).expect("D2H");
            assert!(out.iter().all(|&b| b as u64 == value), "DeviceSync returned before a destroyed stream's work: {:#x}", out[0]);
        }
    }
    // Freeing waits for everything too; afterwards no stream is left behind.
    c.call_blocking(Call::MemFree, 0, [x, 0, 0, 0, 0, 0]).expect("free");
    let sess = vgpu_tests::stat(&m)["sessions"][0].clone();
    assert_eq!(sess["streams"].as_u64(), Some(0), "{sess}");
}

/// `cudaStreamQuery` right after a sync that returned answers "idle", every time (NEEDS.md
/// item 8): the host counts a stream's job as finished before it posts the job's completion, so
/// the query's record on the idle stream runs at once. Each round queues work that goes to the
/// stream's worker thread (larger than what runs inline), then waits for it by a stream sync, a
/// device sync or an event sync, then queries the stream (and the legacy stream).
#[test]
fn stream_query_right_after_a_sync_is_idle() {
    let m = mediator();
    let dev = Device::connect(m.socket()).expect("connect");
    let (s, nb) = (dev.stream().expect("stream"), dev.stream_with(true, 0).expect("stream"));
    let buf = dev.alloc::<u8>(2 * MIB).expect("alloc");
    let ev = dev.event_with(EVENT_DISABLE_TIMING).expect("event");
    let mut not_ready = Vec::new();
    for i in 0..300u32 {
        let st = if i % 2 == 0 { &s } else { &nb };
        st.memset(&buf, i as u8).expect("memset");
        match i % 3 {
            0 => st.synchronize_blocking().expect("stream sync"),
            1 => dev.synchronize().wait().expect("device sync"),
            _ => {
                ev.record(st).expect("record");
                ev.synchronize_blocking().expect("event sync");
            }
        }
        if !st.query().expect("query") {
            not_ready.push(i);
        }
        if i % 3 == 1 && !dev.default_stream().query().expect("legacy query") {
            not_ready.push(i + 1000);
        }
    }
    assert!(not_ready.is_empty(), "the query after a completed sync answered NotReady in rounds {not_ready:?}");
}

/// A stream held back (here by a host function that waits for the test) with more pageable H2D
/// copies queued on it than there are staging chunks must not starve other streams: the host
/// takes each queued copy's bytes out of the window at once (a bounce buffer) and the chunks come
/// back, so a copy on another stream goes through while the first stream is still held.
fn rt_blocked_stream_does_not_starve_others_of_window_space() {
    const PIECES: usize = 12;
    let a = rt::stream_create(1, 0).expect("stream a");
    let dev_a = rt::malloc(PIECES * MIB).expect("malloc a");
    let dev_b = rt::malloc(MIB).expect("malloc b");
    let (release, held) = std::sync::mpsc::channel::<()>();
    rt::launch_host_func(
        a,
        Box::new(move || {
            let _ = held.recv_timeout(HANG);
        }),
    )
    .expect("launch_host_func");
    let pieces: Vec<Vec<u8>> = (0..PIECES).map(|i| pattern(500 + i as u64, MIB)).collect();
    let other = pattern(999, MIB);
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let (p2, o2) = (pieces.clone(), other.clone());
    let worker = std::thread::spawn(move || {
        for (i, piece) in p2.iter().enumerate() {
            // SAFETY: `piece` is live for the call, which stages its bytes before returning.
            unsafe { rt::memcpy_async((dev_a + (i * MIB) as u64) as *mut u8, piece.as_ptr(), MIB, MemcpyKind::HostToDevice, a) }
                .expect("H2D on the held stream");
        }
        // SAFETY: `o2` is live for the synchronous copy.
        unsafe { rt::memcpy(dev_b as *mut u8, o2.as_ptr(), MIB, MemcpyKind::HostToDevice) }.expect("H2D on the default stream");
        let _ = done.send(());
    });
    // Well under HANG, after which the host function gives up holding the stream by itself.
    let got = finished.recv_timeout(std::time::Duration::from_secs(8));
    let _ = release.send(());
    assert!(got.is_ok(), "copies queued on a held stream starved the other streams of window space");
    worker.join().expect("copy thread");
    rt::stream_synchronize(a).expect("sync a");
    let mut back = vec![0u8; PIECES * MIB];
    rt::download(dev_a, &mut back).expect("download a");
    for (i, piece) in pieces.iter().enumerate() {
        assert!(&back[i * MIB..(i + 1) * MIB] == piece.as_slice(), "piece {i} of the held stream differs");
    }
    let mut b = vec![0u8; MIB];
    rt::download(dev_b, &mut b).expect("download b");
    assert!(b == other);
    rt::free(dev_a).expect("free");
    rt::free(dev_b).expect("free");
    rt::stream_destroy(a).expect("destroy");
}
