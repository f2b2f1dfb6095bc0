//! A guest in its own process.
//!
//! - `vgpu-test-guest SOCKET`: for the kill-the-guest test. It connects to the mediator at
//!   SOCKET (direct link), allocates 64 MiB of device memory, fills it through the window and
//!   checks a sample back, prints `ready <device address>` and then waits until its standard
//!   input closes (so it never outlives a test that died without killing it).
//! - `vgpu-test-guest ivshmem-selftest`: connects with `vgpu_transport::connect_from_env` (in a VM:
//!   `VGPU_LINK=ivshmem` or `VGPU_DEVICE=BDF`; on a host: `VGPU_LINK=ivshmem-socket:PATH`) and runs
//!   a self-test: MemAlloc, copies of 1 B .. 16 MiB checked byte for byte, 1000 timed Nop round
//!   trips (median and p99 in µs), many commands in flight at once, a stream sync. Its last line
//!   is exactly `VGPU-GUEST-RESULT: PASS` or `VGPU-GUEST-RESULT: FAIL <reason>` (exit 0 / 1).

use std::io::{Read, Write};
use std::time::Instant;

use vgpu_transport::wire::Call;
use vgpu_transport::{Client, ClientConfig, LinkChoice};

const SIZE: usize = 64 << 20;

fn main() {
    let Some(arg) = std::env::args_os().nth(1) else {
        eprintln!("usage: vgpu-test-guest SOCKET | vgpu-test-guest ivshmem-selftest");
        std::process::exit(2);
    };
    if arg == "ivshmem-selftest" || arg == "selftest" {
        selftest_main();
    }
    let socket = arg;
    let c = Client::connect(&socket, ClientConfig::default()).unwrap_or_else(|e| {
        eprintln!("vgpu-test-guest: {e}");
        std::process::exit(1);
    });
    let [ptr, _] = c.call_blocking(Call::MemAlloc, 0, [SIZE as u64, 0, 0, 0, 0, 0]).expect("MemAlloc");
    let data = vgpu_tests::pattern(64, SIZE);
    c.copy_to_device(ptr, &data, 0).expect("copy_to_device");
    let mut back = vec![0u8; 1 << 20];
    c.copy_from_device(ptr + (SIZE - back.len()) as u64, &mut back, 0).expect("copy_from_device");
    assert_eq!(back[..], data[SIZE - back.len()..], "read-back differs");
    println!("ready {ptr:#x}");
    std::io::stdout().flush().expect("stdout");
    // Block until the test closes our stdin (or kills us, which is the point).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn selftest_main() -> ! {
    let r = std::panic::catch_unwind(selftest).unwrap_or_else(|p| {
        let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        Err(format!("panic: {what}"))
    });
    let _ = std::io::stdout().flush();
    match r {
        Ok(()) => {
            println!("VGPU-GUEST-RESULT: PASS");
            std::process::exit(0)
        }
        Err(why) => {
            println!("VGPU-GUEST-RESULT: FAIL {}", why.replace('\n', " "));
            std::process::exit(1)
        }
    }
}

fn a(x: u64, y: u64, z: u64) -> [u64; 6] {
    [x, y, z, 0, 0, 0]
}

fn selftest() -> Result<(), String> {
    let link = LinkChoice::from_env().map_err(|e| e.to_string())?;
    println!("link: {link}");
    let t0 = Instant::now();
    let c = vgpu_transport::connect_from_env(ClientConfig::default()).map_err(|e| format!("connect: {e}"))?;
    let l = *c.region().layout();
    println!("connected in {} ms: ring depth {}, window {} KiB", t0.elapsed().as_millis(), l.sq_depth, l.window_len >> 10);

    // Memory and copies, byte for byte.
    const MAX: usize = 16 << 20;
    let [ptr, _] = c.call_blocking(Call::MemAlloc, 0, a(MAX as u64 + 4096, 0, 0)).map_err(|e| format!("MemAlloc: {e}"))?;
    for (i, &len) in [1usize, 3, 255, 4096, 4097, 65_537, 1 << 20, (1 << 20) + 13, 5 << 20, MAX].iter().enumerate() {
        let data = vgpu_tests::pattern(i as u64 + 1, len);
        let at = ptr + (i as u64 % 3);
        let t = Instant::now();
        c.copy_to_device(at, &data, 0).map_err(|e| format!("copy of {len} B to the device: {e}"))?;
        let mut back = vec![0u8; len];
        c.copy_from_device(at, &mut back, 0).map_err(|e| format!("copy of {len} B from the device: {e}"))?;
        if let Some(p) = back.iter().zip(&data).position(|(x, y)| x != y) {
            return Err(format!("copy of {len} B: byte {p} differs ({:#04x} != {:#04x})", back[p], data[p]));
        }
        if len >= 1 << 20 {
            let s = t.elapsed().as_secs_f64();
            println!("copy {len} B there and back: {:.1} ms ({:.0} MiB/s)", s * 1e3, 2.0 * len as f64 / s / (1 << 20) as f64);
        }
    }
    println!("copies 1 B .. 16 MiB: ok");

    // Round trips.
    let mut lat: Vec<u64> = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        c.call_blocking(Call::Nop, 0, a(0, 0, 0)).map_err(|e| format!("Nop: {e}"))?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    println!(
        "1000 Nop round trips: median {:.1} us, p99 {:.1} us, max {:.1} us",
        lat[500] as f64 / 1e3,
        lat[989] as f64 / 1e3,
        lat[999] as f64 / 1e3
    );

    // Many commands in flight: a full ring's worth at a time (a held ticket keeps its slot),
    // twice the ring depth in all, so every slot is recycled.
    let depth = l.sq_depth as usize;
    let n = (depth * 2).max(64);
    let t = Instant::now();
    let mut inflight = std::collections::VecDeque::with_capacity(depth);
    let mut peak = 0;
    for _ in 0..n {
        if inflight.len() == depth {
            let old: vgpu_transport::client::Ticket = inflight.pop_front().ok_or("no ticket")?;
            old.wait().map_err(|e| format!("Nop in flight: {e}"))?;
        }
        inflight.push_back(c.submit(Call::Nop, 0, a(0, 0, 0)).map_err(|e| format!("submitting Nops: {e}"))?);
        peak = peak.max(inflight.len());
    }
    for old in inflight {
        old.wait().map_err(|e| format!("Nop in flight: {e}"))?;
    }
    println!("{n} Nops, up to {peak} in flight: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    // Stream-ordered work and a stream sync.
    let [stream, _] = c.call_blocking(Call::StreamCreate, 0, a(1, 0, 0)).map_err(|e| format!("StreamCreate: {e}"))?;
    let s = stream as u32;
    let len = 1u64 << 20;
    c.fire(Call::Memset, s, a(ptr, 0x5a, len)).map_err(|e| format!("Memset: {e}"))?;
    c.fire(Call::MemcpyDtoD, s, a(ptr + len, ptr, len)).map_err(|e| format!("MemcpyDtoD: {e}"))?;
    c.call_blocking(Call::StreamSync, s, a(0, 0, 0)).map_err(|e| format!("StreamSync: {e}"))?;
    if let Some(e) = c.take_deferred_error() {
        return Err(format!("stream work failed: {e}"));
    }
    let mut back = vec![0u8; len as usize];
    c.copy_from_device(ptr + len, &mut back, 0).map_err(|e| format!("reading the stream's result: {e}"))?;
    if let Some(p) = back.iter().position(|&b| b != 0x5a) {
        return Err(format!("after Memset + MemcpyDtoD + StreamSync, byte {p} is {:#04x}, expected 0x5a", back[p]));
    }
    c.call_blocking(Call::StreamDestroy, 0, a(stream, 0, 0)).map_err(|e| format!("StreamDestroy: {e}"))?;
    c.call_blocking(Call::DeviceSync, 0, a(0, 0, 0)).map_err(|e| format!("DeviceSync: {e}"))?;
    c.call_blocking(Call::MemFree, 0, a(ptr, 0, 0)).map_err(|e| format!("MemFree: {e}"))?;
    println!("stream sync: ok");
    let st = c.stats();
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "client: {} calls, {} doorbells, {} interrupts, {} spin hits, {} parks",
        st.calls.load(Relaxed),
        st.doorbells.load(Relaxed),
        st.interrupts.load(Relaxed),
        st.spin_hits.load(Relaxed),
        st.parks.load(Relaxed)
    );
    c.check_alive().map_err(|e| e.to_string())?;
    Ok(())
}
