//! `vgpu demo`: the README's first command. Starts a mediator on `emu` as a child process,
//! runs a guest workload through the real transport, and shows what it did and how fast.

use std::time::{Duration, Instant};

use vgpu_transport::wire::{Call, DeviceInfo};
use vgpu_transport::{Client, ClientConfig};

use crate::child::Mediator;
use crate::serve::{human_bytes, query_stat, render_stat};

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("demo check failed: {what}"))
    }
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Run the demo.
pub fn run() -> Result<(), String> {
    let m = Mediator::start_self("emu", 50)?;
    println!("vgpu demo: mediator pid {} on {} (executor emu)", m.pid(), m.socket().display());
    let c = Client::connect(m.socket(), ClientConfig::default()).map_err(|e| e.to_string())?;
    let e = |e: vgpu_transport::Error| e.to_string();

    // Device.
    let info_off = c.staging().rest(c.region().layout().window_len).0;
    c.call_blocking(Call::DeviceInfo, 0, [info_off, 512, 0, 0, 0, 0]).map_err(e)?;
    let mut raw = [0u8; 512];
    c.region().read_window(info_off, &mut raw).map_err(e)?;
    // SAFETY: DeviceInfo is repr(C), 512 bytes, made only of integers and byte arrays, so any
    // 512 bytes are a valid value; read_unaligned copes with the array's alignment.
    let info: DeviceInfo = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let [free, total] = c.call_blocking(Call::MemGetInfo, 0, [0; 6]).map_err(e)?;
    println!(
        "device: {} | {} total, {} free | window {}",
        info.name_str(),
        human_bytes(total),
        human_bytes(free),
        human_bytes(c.region().layout().window_len)
    );

    // Memory: 64 MiB up, memset a slice, device-to-device copy, down again; verify every byte.
    const N: usize = 64 << 20;
    let [a, _] = c.call_blocking(Call::MemAlloc, 0, [N as u64, 0, 0, 0, 0, 0]).map_err(e)?;
    let [b, _] = c.call_blocking(Call::MemAlloc, 0, [N as u64, 0, 0, 0, 0, 0]).map_err(e)?;
    let src: Vec<u8> = (0..N).map(|i| (i * 131 % 251) as u8).collect();
    // The first pass touches fresh pages (device memory, the host buffer): time the second.
    let t = Instant::now();
    c.copy_to_device(a, &src, 0).map_err(e)?;
    let h2d_cold = t.elapsed();
    let t = Instant::now();
    c.copy_to_device(a, &src, 0).map_err(e)?;
    let h2d = t.elapsed();
    c.fire(Call::Memset, 0, [a + 4096, 0xAB, 4096, 0, 0, 0]).map_err(e)?;
    c.fire(Call::MemcpyDtoD, 0, [b, a, N as u64, 0, 0, 0]).map_err(e)?;
    let mut back = vec![0u8; N];
    let t = Instant::now();
    c.copy_from_device(b, &mut back, 0).map_err(e)?;
    let d2h_cold = t.elapsed();
    let t = Instant::now();
    c.copy_from_device(b, &mut back, 0).map_err(e)?;
    let d2h = t.elapsed();
    let mut expect = src.clone();
    expect[4096..8192].fill(0xAB);
    check(back == expect, "64 MiB round trip through H2D, memset, D2D and D2H")?;
    if let Some(err) = c.take_deferred_error() {
        return Err(format!("deferred error: {err}"));
    }
    println!(
        "memory: 2 x {} allocated; H2D {:.2} GB/s, D2H {:.2} GB/s (first touch of fresh pages: {:.2} / {:.2}); window pipeline, {} chunks of {}; 64 MiB verified byte for byte",
        human_bytes(N as u64),
        gbps(N, h2d),
        gbps(N, d2h),
        gbps(N, h2d_cold),
        gbps(N, d2h_cold),
        c.staging().count(),
        human_bytes(c.staging().chunk_len())
    );

    // Streams and events: four streams, work on each, events timing stream 1.
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(c.call_blocking(Call::StreamCreate, 0, [1, 0, 0, 0, 0, 0]).map_err(e)?[0] as u32);
    }
    let [ev0, _] = c.call_blocking(Call::EventCreate, 0, [0; 6]).map_err(e)?;
    let [ev1, _] = c.call_blocking(Call::EventCreate, 0, [0; 6]).map_err(e)?;
    c.fire(Call::EventRecord, streams[0], [ev0, 0, 0, 0, 0, 0]).map_err(e)?;
    for (i, s) in streams.iter().enumerate() {
        let off = (i as u64) * (N as u64 / 4);
        c.fire(Call::Memset, *s, [a + off, i as u64, N as u64 / 4, 0, 0, 0]).map_err(e)?;
    }
    c.fire(Call::EventRecord, streams[0], [ev1, 0, 0, 0, 0, 0]).map_err(e)?;
    c.call_blocking(Call::EventSync, 0, [ev1, 0, 0, 0, 0, 0]).map_err(e)?;
    let [ms, _] = c.call_blocking(Call::EventElapsed, 0, [ev0, ev1, 0, 0, 0, 0]).map_err(e)?;
    c.call_blocking(Call::DeviceSync, 0, [0; 6]).map_err(e)?;
    let mut probe = [0u8; 4];
    for (i, _) in streams.iter().enumerate() {
        c.copy_from_device(a + (i as u64) * (N as u64 / 4), &mut probe, 0).map_err(e)?;
        check(probe == [i as u8; 4], "memset on each stream")?;
    }
    println!("streams: 4 streams x 16 MiB memset, concurrent; stream 0 took {:.3} ms between its events", f32::from_bits(ms as u32));

    // Latency and throughput.
    let mut lat = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        c.call_blocking(Call::Nop, 0, [0; 6]).map_err(e)?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let ops = 100_000u32;
    let t = Instant::now();
    let mut q = std::collections::VecDeque::with_capacity(256);
    for _ in 0..ops {
        if q.len() == 256 {
            let tk: vgpu_transport::client::Ticket = q.pop_front().expect("non-empty");
            tk.wait().map_err(e)?;
        }
        q.push_back(c.submit(Call::Nop, 0, [0; 6]).map_err(e)?);
    }
    for tk in q {
        tk.wait().map_err(e)?;
    }
    let el = t.elapsed();
    println!(
        "latency: null call p50 {:.2} us, p99 {:.2} us (adaptive spin) | async: {:.2} M ops/s with 256 in flight",
        lat[lat.len() / 2].as_secs_f64() * 1e6,
        lat[lat.len() * 99 / 100].as_secs_f64() * 1e6,
        ops as f64 / el.as_secs_f64() / 1e6
    );
    for s in streams {
        c.call_blocking(Call::StreamDestroy, 0, [s as u64, 0, 0, 0, 0, 0]).map_err(e)?;
    }
    c.call_blocking(Call::MemFree, 0, [a, 0, 0, 0, 0, 0]).map_err(e)?;
    c.call_blocking(Call::MemFree, 0, [b, 0, 0, 0, 0, 0]).map_err(e)?;
    let st = c.stats();
    use vgpu_transport::sync::Ordering::Relaxed;
    println!(
        "guest: {} calls, {} blocking, {} spin hits, {} parks, {} interrupts, {} doorbells",
        st.calls.load(Relaxed),
        st.blocking_waits.load(Relaxed),
        st.spin_hits.load(Relaxed),
        st.parks.load(Relaxed),
        st.interrupts.load(Relaxed),
        st.doorbells.load(Relaxed)
    );
    println!("\n$ vgpu stat\n{}", render_stat(&query_stat(m.socket())?));
    println!("demo OK");
    Ok(())
}
