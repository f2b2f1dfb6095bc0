//! Processes dying under the transport: the mediator killed with calls in flight, and a guest
//! killed while it holds device memory.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::pin::Pin;
use std::process::{Command as Process, Stdio};
use std::sync::{Barrier, OnceLock};
use std::task::Context;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::future::join_all;
use futures::FutureExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vgpu_tests::{alloc, args, connect, mediator, pattern, poll_until, session_where, stat};
use vgpu_transport::wire::Call;
use vgpu_transport::{Client, ClientConfig, Error};

const MIB: u64 = 1 << 20;

/// How long after the kill every caller must have its error.
const NOTICE: Duration = Duration::from_secs(1);

type Timed = (Instant, Result<[u64; 2], Error>);

fn assert_link_down(what: &str, killed: Instant, (at, r): &Timed) {
    match r {
        Err(Error::LinkDown(_)) => {}
        other => panic!("{what}: expected LinkDown, got {other:?}"),
    }
    let after = at.saturating_duration_since(killed);
    assert!(after < NOTICE, "{what}: the error came {after:?} after the kill");
}

/// Issue test 4: SIGKILL the mediator while threads make blocking calls in a loop, tickets wait
/// behind seconds of queued work, and async calls are in flight. Every caller gets
/// `Error::LinkDown` within 1 s, and every later call fails at once.
#[test]
fn kill_9_of_the_mediator_fails_every_caller_within_1_s() {
    const BLOCKERS: usize = 4;
    const BIG: u64 = 256 * MIB;
    const BACKLOG: u64 = 64;
    let mut m = mediator();
    let socket = m.socket().to_path_buf();
    let c = connect(&m);
    let buf = alloc(&c, BIG);
    let [s, _] = c.call_blocking(Call::StreamCreate, 0, args(1, 0, 0)).expect("StreamCreate");
    let s = s as u32;
    let [ev, _] = c.call_blocking(Call::EventCreate, 0, [0; 6]).expect("EventCreate");

    // Seconds of emu work queued on stream `s` (64 memsets of 256 MiB: 16 GiB of stores), an
    // event recorded behind it, and tickets for all of it.
    let mut tickets: Vec<_> = (0..BACKLOG).map(|i| c.submit(Call::Memset, s, args(buf, i, BIG)).expect("submit Memset")).collect();
    c.fire(Call::EventRecord, s, args(ev, 0, 0)).expect("fire EventRecord");
    tickets.push(c.submit(Call::EventSync, 0, args(ev, 0, 0)).expect("submit EventSync"));
    tickets.push(c.submit(Call::StreamSync, s, [0; 6]).expect("submit StreamSync"));
    let queued = tickets.len();

    // Async calls, polled once so they are submitted before the kill.
    let mut futs: Vec<Pin<Box<vgpu_transport::client::CallFuture>>> =
        (0..4).map(|_| Box::pin(c.call(Call::EventSync, 0, args(ev, 0, 0)))).collect();
    futs.push(Box::pin(c.call(Call::DeviceSync, 0, [0; 6])));
    futs.push(Box::pin(c.call(Call::StreamSync, s, [0; 6])));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    for f in &mut futs {
        assert!(f.as_mut().poll(&mut cx).is_pending(), "an async call behind the backlog completed early");
    }
    assert!(!tickets[queued - 1].is_done() && !tickets[queued - 2].is_done(), "the backlog finished before the kill");

    let ready = Barrier::new(BLOCKERS + 3);
    let killed_at = OnceLock::new();
    let (blocked, waited, awaited) = std::thread::scope(|sc| {
        let blockers: Vec<_> = (0..BLOCKERS)
            .map(|_| {
                sc.spawn(|| {
                    let mut n = 0u64;
                    loop {
                        match c.call_blocking(Call::Nop, 0, [0; 6]) {
                            Ok(_) => {
                                n += 1;
                                if n == 1 {
                                    ready.wait();
                                }
                            }
                            Err(e) => return ((Instant::now(), Err(e)), n),
                        }
                    }
                })
            })
            .collect();
        let waiter = sc.spawn(|| {
            ready.wait();
            tickets.into_iter().map(timed_wait).collect::<Vec<Timed>>()
        });
        let asyncs = sc.spawn(|| {
            ready.wait();
            block_on(join_all(futs.into_iter().map(|f| f.map(|r| (Instant::now(), r)))))
        });
        ready.wait();
        // Proof that the backlog is still queued at the moment of the kill.
        let q = c.call_blocking(Call::EventQuery, 0, args(ev, 0, 0));
        assert_eq!(q.map_err(|e| e.status()), Err(Some(vgpu_transport::Status::NotReady)), "the backlog finished before the kill");
        killed_at.set(Instant::now()).expect("set once");
        m.kill();
        let blocked: Vec<(Timed, u64)> = blockers.into_iter().map(|h| h.join().expect("blocker panicked")).collect();
        (blocked, waiter.join().expect("ticket waiter panicked"), asyncs.join().expect("async waiter panicked"))
    });
    let killed = *killed_at.get().expect("killed");

    for (i, (r, n)) in blocked.iter().enumerate() {
        assert!(*n >= 1, "blocking caller {i} never got going");
        assert_link_down(&format!("blocking caller {i}"), killed, r);
    }
    // Memsets that finished before the kill may have succeeded; everything still queued failed.
    let failed = waited.iter().filter(|(_, r)| r.is_err()).count();
    assert!(failed >= queued - 2, "only {failed} of {queued} queued tickets failed");
    for (i, r) in waited.iter().enumerate().filter(|(_, (_, r))| r.is_err()) {
        assert_link_down(&format!("ticket {i}"), killed, r);
    }
    assert!(waited[queued - 1].1.is_err() && waited[queued - 2].1.is_err());
    for (i, r) in awaited.iter().enumerate() {
        assert_link_down(&format!("async call {i}"), killed, r);
    }

    // Later calls fail at once, through every path.
    let t = Instant::now();
    assert!(matches!(c.call_blocking(Call::Nop, 0, [0; 6]), Err(Error::LinkDown(_))));
    assert!(matches!(c.submit(Call::Nop, 0, [0; 6]), Err(Error::LinkDown(_))));
    assert!(matches!(c.fire(Call::Nop, 0, [0; 6]), Err(Error::LinkDown(_))));
    assert!(matches!(block_on(c.call(Call::MemGetInfo, 0, [0; 6])), Err(Error::LinkDown(_))));
    assert!(matches!(c.copy_to_device(buf, &[1; 4096], 0), Err(Error::LinkDown(_))));
    let mut back = [0u8; 4096];
    assert!(matches!(c.copy_from_device(buf, &mut back, 0), Err(Error::LinkDown(_))));
    assert!(c.check_alive().is_err());
    let el = t.elapsed();
    assert!(el < Duration::from_millis(100), "calls after the kill took {el:?}");
    // And a new guest is told that nobody serves the socket.
    match Client::connect(&socket, ClientConfig::default()) {
        Err(Error::Setup(msg)) => assert!(msg.contains("vgpu serve"), "{msg}"),
        other => panic!("connecting to a killed mediator: {other:?}"),
    }
    let latest = |v: &mut dyn Iterator<Item = Instant>| v.max().map(|t| t.saturating_duration_since(killed)).unwrap_or_default();
    eprintln!(
        "kill -9 of the mediator: last error after {:?} (blocking callers), {:?} (tickets), {:?} (async calls)",
        latest(&mut blocked.iter().map(|((at, _), _)| *at)),
        latest(&mut waited.iter().map(|(at, _)| *at)),
        latest(&mut awaited.iter().map(|(at, _)| *at)),
    );
}

/// `Ticket::wait`, with the moment it returned.
fn timed_wait(t: vgpu_transport::client::Ticket) -> Timed {
    let r = t.wait();
    (Instant::now(), r)
}

/// Issue test 5: SIGKILL a guest process holding 64 MiB of device memory. `vgpu stat` shows the
/// 64 MiB while it lives; within seconds of the kill its session has ended and holds nothing,
/// and the mediator's total is back to what the surviving guest holds (then 0 once it leaves).
#[test]
fn kill_9_of_a_guest_reclaims_its_memory() {
    let m = mediator();
    // A bystander guest in this process, which must be unaffected.
    let by = connect(&m);
    let by_buf = alloc(&by, MIB);
    let by_data = pattern(5, MIB as usize);
    by.copy_to_device(by_buf, &by_data, 0).expect("bystander upload");

    let mut guest = Process::new(env!("CARGO_BIN_EXE_vgpu-test-guest"))
        .arg(m.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting vgpu-test-guest");
    let mut line = String::new();
    BufReader::new(guest.stdout.take().expect("guest stdout")).read_line(&mut line).expect("reading the guest's stdout");
    assert!(line.starts_with("ready"), "the guest did not get ready: {line:?}");
    let pid = guest.id();

    let report = stat(&m);
    let sess = session_where(&report, "guest_pid", pid as u64).expect("the guest's session in vgpu stat");
    assert_eq!(sess["state"], "serving", "{sess}");
    assert_eq!(sess["mem_in_use"].as_u64(), Some(64 * MIB), "{sess}");
    assert_eq!(report["mem_in_use"].as_u64(), Some(65 * MIB), "{report}");
    assert_eq!(report["live_sessions"].as_u64(), Some(2), "{report}");
    let id = sess["id"].as_u64().expect("session id");

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9 the guest");
    let st = guest.wait().expect("reaping the guest");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    let t = Instant::now();
    let (report, sess) = poll_until(Duration::from_secs(5), "the killed guest's session to end and release its memory", || {
        let r = stat(&m);
        let s = session_where(&r, "id", id)?;
        let ended = s["state"].as_str().is_some_and(|st| st.starts_with("ended"));
        (ended && s["mem_in_use"].as_u64() == Some(0) && r["mem_in_use"].as_u64() == Some(MIB)).then_some((r, s))
    });
    let took = t.elapsed();
    assert_eq!(report["live_sessions"].as_u64(), Some(1), "{report}");
    assert_eq!(sess["guest_pid"].as_u64(), Some(pid as u64));

    // The bystander never noticed.
    let mut back = vec![0u8; MIB as usize];
    by.copy_from_device(by_buf, &mut back, 0).expect("bystander download");
    assert!(back == by_data, "the bystander's memory changed");
    drop(by);
    poll_until(Duration::from_secs(5), "the mediator to hold no memory after the last guest left", || {
        let r = stat(&m);
        (r["mem_in_use"].as_u64() == Some(0) && r["live_sessions"].as_u64() == Some(0)).then_some(())
    });
    eprintln!("kill -9 of a guest: session {id} ended and its 64 MiB were reclaimed {took:?} after the kill");
}
