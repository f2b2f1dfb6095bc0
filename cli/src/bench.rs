//! `vgpu bench`: the transport measured against its anchors, in one run, so every figure is
//! also a ratio to something this machine does natively:
//!
//! - null-call round trip (p50/p99), interrupt-only vs. an eventfd ping-pong between two threads;
//! - null-call round trip with adaptive spinning vs. the same anchor;
//! - async throughput (256 in flight);
//! - H2D/D2H through the window, 4 KiB to 256 MiB, vs. a plain `memcpy` of the same size;
//! - TCP loopback 64-byte request/response, for scale (what a socket-based remoting pays);
//! - the runtime layer (`vgpu_streams::rt`, what `libcudart` calls), each beside its anchor: see
//!   [`rt`];
//! - kernel launches on emu (enqueue, sustained rate, first launch by upload and by hash), each
//!   beside its anchor on the same session: see [`launch`].
//!
//! Mediators run as real child processes, exactly as guests see them.

mod compute;
mod launch;
mod rt;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use vgpu_transport::client::Ticket;
use vgpu_transport::wire::req;
use vgpu_transport::{Client, ClientConfig, SpinPolicy};

use vgpu_mediator::child::Mediator;

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// p50 and p99 of a set of durations, in microseconds.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)].as_secs_f64() * 1e6;
    (at(50), at(99))
}

/// Where the two sides of a round trip run: free (the scheduler decides), on one CPU, or on two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Free,
    SameCpu,
    CrossCpu,
}

impl Placement {
    /// CPUs for (caller side, serving side), if pinned.
    fn cpus(self) -> Option<(usize, usize)> {
        match self {
            Placement::Free => None,
            Placement::SameCpu => Some((0, 0)),
            Placement::CrossCpu => Some((0, 1)),
        }
    }
}

fn cpu_set(cpu: Option<usize>) -> nix::sched::CpuSet {
    let mut set = nix::sched::CpuSet::new();
    // Every CPU the set can name (not `available_parallelism`, which shrinks once pinned).
    for c in 0..nix::sched::CpuSet::count() {
        if cpu.is_none_or(|p| p == c) {
            let _ = set.set(c);
        }
    }
    set
}

/// Pin the calling thread to `cpu` (`None`: every CPU).
fn pin_self_thread(cpu: Option<usize>) {
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu_set(cpu));
}

/// Pin every thread of process `pid` (`None`: this process) to `cpu` (`None`: every CPU).
fn pin_process(pid: Option<u32>, cpu: Option<usize>) {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/task"),
        None => "/proc/self/task".to_string(),
    };
    for tid in std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &cpu_set(cpu));
    }
}

/// Round trip through two eventfds between two threads (the interrupt anchor).
pub fn eventfd_pingpong(iters: usize, placement: Placement) -> (f64, f64) {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    let a = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).expect("eventfd");
    let b = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).expect("eventfd");
    let cpus = placement.cpus();
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_self_thread(cpus.map(|c| c.1));
            for _ in 0..iters + 100 {
                if a.read().is_err() {
                    return;
                }
                let _ = b.write(1);
            }
        });
        pin_self_thread(cpus.map(|c| c.0));
        let mut lat = Vec::with_capacity(iters);
        for i in 0..iters + 100 {
            let t = Instant::now();
            let _ = a.write(1);
            let _ = b.read();
            if i >= 100 {
                lat.push(t.elapsed());
            }
        }
        pin_self_thread(None);
        percentiles(lat)
    })
}

/// 64-byte request/response over TCP loopback.
pub fn tcp_rr(iters: usize) -> (f64, f64) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("addr");
    std::thread::scope(|s| {
        s.spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            let _ = c.set_nodelay(true);
            let mut b = [0u8; 64];
            while c.read_exact(&mut b).is_ok() {
                if c.write_all(&b).is_err() {
                    break;
                }
            }
        });
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        let mut b = [7u8; 64];
        let mut lat = Vec::with_capacity(iters);
        for i in 0..iters + 100 {
            let t = Instant::now();
            c.write_all(&b).expect("write");
            c.read_exact(&mut b).expect("read");
            if i >= 100 {
                lat.push(t.elapsed());
            }
        }
        drop(c);
        percentiles(lat)
    })
}

/// Single-threaded memcpy bandwidth for `size` bytes, best of `reps`, GB/s.
pub fn memcpy_gbps(size: usize, reps: usize) -> f64 {
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src);
    let mut best = Duration::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed());
    }
    size as f64 / best.as_secs_f64() / 1e9
}

fn null_calls(c: &Client, iters: usize) -> Result<(f64, f64), String> {
    for _ in 0..200 {
        c.call_blocking_req(0, req::Nop {}).map_err(|e| e.to_string())?;
    }
    let mut lat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        c.call_blocking_req(0, req::Nop {}).map_err(|e| e.to_string())?;
        lat.push(t.elapsed());
    }
    Ok(percentiles(lat))
}

fn async_throughput(c: &Client, ops: usize, depth: usize) -> Result<f64, String> {
    let e = |e: vgpu_transport::Error| e.to_string();
    let mut q: std::collections::VecDeque<Ticket> = std::collections::VecDeque::with_capacity(depth);
    let t = Instant::now();
    for _ in 0..ops {
        if q.len() == depth {
            q.pop_front().expect("non-empty").wait().map_err(e)?;
        }
        q.push_back(c.submit_req(0, req::Nop {}).map_err(e)?);
    }
    for tk in q {
        tk.wait().map_err(e)?;
    }
    Ok(ops as f64 / t.elapsed().as_secs_f64())
}

/// Best-of-`reps` bandwidth (GB/s) of H2D and D2H for `size` bytes.
fn bandwidth(c: &Client, dev: u64, buf: &mut [u8], reps: usize) -> Result<(f64, f64), String> {
    let e = |e: vgpu_transport::Error| e.to_string();
    let (mut h2d, mut d2h) = (Duration::MAX, Duration::MAX);
    for _ in 0..reps {
        let t = Instant::now();
        c.copy_to_device(dev, buf, 0).map_err(e)?;
        h2d = h2d.min(t.elapsed());
        let t = Instant::now();
        c.copy_from_device(dev, buf, 0).map_err(e)?;
        d2h = d2h.min(t.elapsed());
    }
    let g = |d: Duration| buf.len() as f64 / d.as_secs_f64() / 1e9;
    Ok((g(h2d), g(d2h)))
}

/// Run the benchmark and print a table (or one JSON object with `json`).
pub fn run(quick: bool, as_json: bool) -> Result<(), String> {
    let started = Instant::now();
    let lat_iters = if quick { 5_000 } else { 50_000 };
    let ops = if quick { 300_000 } else { 2_000_000 };
    let max_size: usize = if quick { 64 << 20 } else { 256 << 20 };
    let mut out = Map::new();
    // First, while this process has no other thread: the runtime figures' mediator, and the
    // environment the process-wide context reads when it connects (it sets variables).
    let rt_mediator = rt::prepare(max_size)?;

    let two_cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2;
    let placements: &[(Placement, &str)] = if two_cpus {
        &[(Placement::Free, ""), (Placement::SameCpu, "_same_cpu"), (Placement::CrossCpu, "_cross_cpu")]
    } else {
        &[(Placement::Free, "")]
    };
    progress("anchors: eventfd ping-pong (free, same CPU, two CPUs), TCP loopback (memcpy is measured beside each transfer size)");
    for (p, suffix) in &placements[1..] {
        let (p50, p99) = eventfd_pingpong(lat_iters, *p);
        out.insert(format!("eventfd_pingpong{suffix}_p50_us"), json!(p50));
        out.insert(format!("eventfd_pingpong{suffix}_p99_us"), json!(p99));
    }
    let (efd50, efd99) = eventfd_pingpong(lat_iters, Placement::Free);
    let (tcp50, tcp99) = tcp_rr(lat_iters);
    out.insert("eventfd_pingpong_p50_us".into(), json!(efd50));
    out.insert("eventfd_pingpong_p99_us".into(), json!(efd99));
    out.insert("tcp_rr_p50_us".into(), json!(tcp50));
    out.insert("tcp_rr_p99_us".into(), json!(tcp99));

    progress("null calls, interrupt only (host and guest never spin)");
    {
        let m = Mediator::start_self("emu", 0).map_err(|e| e.to_string())?;
        let c =
            Client::connect(m.socket(), ClientConfig { spin: SpinPolicy::Never, ..ClientConfig::default() }).map_err(|e| e.to_string())?;
        let worker = vgpu_mediator::serve::query_stat(m.socket())?["sessions"][0]["worker_pid"].as_u64().map(|p| p as u32);
        for (p, suffix) in placements {
            if let (Some((guest_cpu, host_cpu)), Some(w)) = (p.cpus(), worker) {
                pin_process(None, Some(guest_cpu));
                pin_process(Some(w), Some(host_cpu));
            }
            let r = null_calls(&c, lat_iters);
            pin_process(None, None);
            if let Some(w) = worker {
                pin_process(Some(w), None);
            }
            let (p50, p99) = r?;
            out.insert(format!("null_call_interrupt{suffix}_p50_us"), json!(p50));
            out.insert(format!("null_call_interrupt{suffix}_p99_us"), json!(p99));
        }
    }

    progress("null calls, adaptive spin; async throughput; bandwidth");
    let m = Mediator::start_self("emu", 50).map_err(|e| e.to_string())?;
    let c = Client::connect(m.socket(), ClientConfig { window_len: 64 << 20, ..ClientConfig::default() }).map_err(|e| e.to_string())?;
    let (p50, p99) = null_calls(&c, lat_iters)?;
    out.insert("null_call_adaptive_p50_us".into(), json!(p50));
    out.insert("null_call_adaptive_p99_us".into(), json!(p99));
    progress(&format!("async throughput: {ops} null calls, 256 in flight"));
    out.insert("async_ops_per_s".into(), json!(async_throughput(&c, ops, 256)?));

    let dev = c.call_blocking_req(0, req::MemAlloc { size: max_size as u64 }).map_err(|e| e.to_string())?.ptr;
    let mut buf = vec![0x5au8; max_size];
    let mut sizes = Vec::new();
    let mut s = 4096usize;
    while s <= max_size {
        sizes.push(s);
        s *= 4;
    }
    if !sizes.contains(&(64 << 20)) {
        sizes.push(64 << 20);
    }
    if !sizes.contains(&max_size) {
        sizes.push(max_size);
    }
    sizes.sort();
    let mut bw = Vec::new();
    for &size in &sizes {
        let reps = if size <= 1 << 20 {
            50
        } else if size <= 16 << 20 {
            8
        } else {
            3
        };
        progress(&format!("bandwidth {} ({} reps)", vgpu_mediator::serve::human_bytes(size as u64), reps));
        let (h2d, d2h) = bandwidth(&c, dev, &mut buf[..size], reps)?;
        let mcs = memcpy_gbps(size, reps.min(10));
        bw.push(json!({ "bytes": size, "h2d_gbps": h2d, "d2h_gbps": d2h, "memcpy_gbps": mcs }));
        if size == 64 << 20 {
            // The memcpy anchor is measured right next to the transfers it is compared with.
            out.insert("memcpy_gbps".into(), json!(mcs));
            out.insert("h2d_64mib_gbps".into(), json!(h2d));
            out.insert("d2h_64mib_gbps".into(), json!(d2h));
        }
    }
    out.insert("bandwidth".into(), Value::Array(bw));
    drop(c);
    drop(m);

    rt::run(&mut out, quick, lat_iters, max_size)?;
    launch::run(&mut out, quick, lat_iters)?;
    compute::run(&mut out, quick, lat_iters)?;

    let f = |k: &str| out.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let ratios = json!({
        "interrupt_vs_eventfd": f("null_call_interrupt_p50_us") / f("eventfd_pingpong_p50_us"),
        "interrupt_vs_eventfd_same_cpu": f("null_call_interrupt_same_cpu_p50_us") / f("eventfd_pingpong_same_cpu_p50_us"),
        "interrupt_vs_eventfd_cross_cpu": f("null_call_interrupt_cross_cpu_p50_us") / f("eventfd_pingpong_cross_cpu_p50_us"),
        "adaptive_vs_eventfd": f("null_call_adaptive_p50_us") / f("eventfd_pingpong_p50_us"),
        "adaptive_vs_tcp": f("null_call_adaptive_p50_us") / f("tcp_rr_p50_us"),
        "h2d_64mib_vs_memcpy": f("h2d_64mib_gbps") / f("memcpy_gbps"),
        "d2h_64mib_vs_memcpy": f("d2h_64mib_gbps") / f("memcpy_gbps"),
    });
    out.insert("ratios".into(), ratios);
    out.insert("quick".into(), json!(quick));
    out.insert("cores".into(), json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)));
    out.insert("elapsed_s".into(), json!(started.elapsed().as_secs_f64()));
    let v = Value::Object(out);
    if as_json {
        println!("{}", serde_json::to_string(&v).map_err(|e| e.to_string())?);
    } else {
        print!("{}", render(&v));
    }
    // The process-wide context stays connected until exit; its mediator stops when we do.
    rt_mediator.stop_at_exit();
    Ok(())
}

fn render(v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let r = |k: &str| v["ratios"][k].as_f64().unwrap_or(f64::NAN);
    let mut s = String::new();
    s.push_str("vgpu bench (emu executor, direct link)\n\n");
    s.push_str(&format!("{:<44} {:>10} {:>10} {:>12}\n", "round trip", "p50 (us)", "p99 (us)", "ratio p50"));
    s.push_str(&format!(
        "{:<44} {:>10.2} {:>10.2} {:>12}\n",
        "anchor: eventfd ping-pong (2 threads)",
        f("eventfd_pingpong_p50_us"),
        f("eventfd_pingpong_p99_us"),
        "1.00"
    ));
    s.push_str(&format!(
        "{:<44} {:>10.2} {:>10.2} {:>12}\n",
        "anchor: TCP loopback 64 B request/response",
        f("tcp_rr_p50_us"),
        f("tcp_rr_p99_us"),
        format!("{:.2}", f("tcp_rr_p50_us") / f("eventfd_pingpong_p50_us"))
    ));
    s.push_str(&format!(
        "{:<44} {:>10.2} {:>10.2} {:>12}\n",
        "null call, interrupt only",
        f("null_call_interrupt_p50_us"),
        f("null_call_interrupt_p99_us"),
        format!("{:.2} x efd", r("interrupt_vs_eventfd"))
    ));
    for (label, suffix, ratio) in
        [("same CPU", "_same_cpu", "interrupt_vs_eventfd_same_cpu"), ("two CPUs", "_cross_cpu", "interrupt_vs_eventfd_cross_cpu")]
    {
        if v.get(format!("eventfd_pingpong{suffix}_p50_us")).is_none() {
            continue;
        }
        let (a50, a99) = (f(&format!("eventfd_pingpong{suffix}_p50_us")), f(&format!("eventfd_pingpong{suffix}_p99_us")));
        let (n50, n99) = (f(&format!("null_call_interrupt{suffix}_p50_us")), f(&format!("null_call_interrupt{suffix}_p99_us")));
        s.push_str(&format!("{:<44} {a50:>10.2} {a99:>10.2} {:>12}\n", format!("anchor: eventfd ping-pong, pinned {label}"), "1.00"));
        s.push_str(&format!(
            "{:<44} {n50:>10.2} {n99:>10.2} {:>12}\n",
            format!("null call, interrupt only, pinned {label}"),
            format!("{:.2} x efd", r(ratio))
        ));
    }
    s.push_str(&format!(
        "{:<44} {:>10.2} {:>10.2} {:>12}\n",
        "null call, adaptive spin",
        f("null_call_adaptive_p50_us"),
        f("null_call_adaptive_p99_us"),
        format!("{:.2} x efd", r("adaptive_vs_eventfd"))
    ));
    s.push_str(&format!("\nasync throughput (256 in flight): {:.2} M ops/s\n\n", f("async_ops_per_s") / 1e6));
    s.push_str(&format!("{:>10} {:>10} {:>10} {:>10} {:>9} {:>9}\n", "size", "H2D GB/s", "D2H GB/s", "memcpy", "H2D/mc", "D2H/mc"));
    for b in v["bandwidth"].as_array().into_iter().flatten() {
        let g = |k: &str| b[k].as_f64().unwrap_or(f64::NAN);
        s.push_str(&format!(
            "{:>10} {:>10.2} {:>10.2} {:>10.2} {:>9.2} {:>9.2}\n",
            vgpu_mediator::serve::human_bytes(b["bytes"].as_u64().unwrap_or(0)),
            g("h2d_gbps"),
            g("d2h_gbps"),
            g("memcpy_gbps"),
            g("h2d_gbps") / g("memcpy_gbps"),
            g("d2h_gbps") / g("memcpy_gbps")
        ));
    }
    s.push_str(&format!(
        "\n64 MiB vs memcpy ({:.2} GB/s): H2D {:.2}x, D2H {:.2}x\n",
        f("memcpy_gbps"),
        r("h2d_64mib_vs_memcpy"),
        r("d2h_64mib_vs_memcpy")
    ));
    rt::render(v, &mut s);
    launch::render(v, &mut s);
    compute::render(v, &mut s);
    s.push_str(&format!("\nelapsed {:.1} s on {} cores\n", f("elapsed_s"), v["cores"]));
    s
}
