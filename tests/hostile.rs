//! A guest that breaks the rules: hostile descriptors written straight into the submission ring,
//! corrupt ring indices, wrong protocol versions. Each bad command gets its exact error status,
//! the session goes on serving, and other sessions never notice.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vgpu_mediator::child::Mediator;
use vgpu_tests::{alloc, args, connect, mediator, pattern, poll_until, session_where, stat, RawSession, TempDir, EMU_MEM, HANG};
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::handshake::{self, Hello, Welcome, MSG_LEN};
use vgpu_transport::wire::{cmd_flags, hdr, Call, Command, HostState, PROTOCOL_VERSION};
use vgpu_transport::{Client, ClientConfig, Error, Status};

/// A mediator, one raw (hostile) session on it, and one well-behaved client session beside it.
struct Fixture {
    m: Mediator,
    raw: RawSession,
    good: Client,
    good_buf: u64,
    /// Error completions the raw session has been sent so far.
    errors: u64,
    round: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let m = mediator();
        let good = connect(&m);
        let good_buf = alloc(&good, 4096);
        let mut raw = RawSession::connect(m.socket());
        raw.ok(Call::Nop, 0, [0; 6]);
        let mut f = Fixture { m, raw, good, good_buf, errors: 0, round: 0 };
        f.bystander_works();
        f
    }

    /// The well-behaved session on the same mediator still works: a write read back intact.
    fn bystander_works(&mut self) {
        self.round += 1;
        let d = pattern(self.round, 4096);
        self.good.copy_to_device(self.good_buf, &d, 0).expect("bystander upload");
        let mut back = vec![0u8; 4096];
        self.good.copy_from_device(self.good_buf, &mut back, 0).expect("bystander download");
        assert!(back == d, "the bystander's bytes changed");
    }

    /// Send one command on the raw session and require exactly `want`; then prove the same
    /// session still serves a valid Nop.
    fn expect(&mut self, what: &str, call: u16, flags: u16, stream: u32, a: [u64; 6], want: Status) -> [u64; 2] {
        let c = self.raw.call_raw(call, flags, stream, a);
        assert_eq!(Status::from_u32(c.status), want, "{what}: call {call} flags {flags:#x} stream {stream} args {a:?}");
        if want != Status::Ok {
            assert_eq!(c.result, [0, 0], "{what}: an error completion carries no result");
            self.errors += 1;
        }
        let (s, _) = self.raw.call(Call::Nop, 0, [0; 6]);
        assert_eq!(s, Status::Ok, "after {what} the session no longer serves a Nop");
        c.result
    }

    /// A well-formed call (by [`Call`]) that must get `want`.
    fn call(&mut self, what: &str, call: Call, stream: u32, a: [u64; 6], want: Status) -> [u64; 2] {
        self.expect(what, call as u16, 0, stream, a, want)
    }

    /// The host counted exactly the error completions sent, the raw session is still serving,
    /// and the bystander still works.
    fn finish(mut self) {
        let id = self.raw.region.read_u64(hdr::SESSION_ID);
        let sess = session_where(&stat(&self.m), "id", id).expect("the raw session in vgpu stat");
        assert_eq!(sess["state"], "serving", "{sess}");
        assert_eq!(sess["errors"].as_u64(), Some(self.errors), "host error count: {sess}");
        assert_eq!(sess["protocol_errors"].as_u64(), Some(0), "{sess}");
        assert_eq!(self.raw.region.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire), HostState::Serving as u32);
        self.bystander_works();
    }
}

/// Window offsets at or past the end, ranges running past it, and offset + length overflowing
/// u64 all get `InvalidWindowRange`; a range ending exactly at the end is fine.
#[test]
fn out_of_window_ranges_get_invalid_window_range() {
    let mut f = Fixture::new();
    let w = f.raw.window_len();
    let [dev, _] = f.call("alloc", Call::MemAlloc, 0, args(1 << 20, 0, 0), Status::Ok);
    let bad = Status::InvalidWindowRange;
    f.call("H2D at offset == window_len", Call::MemcpyHtoD, 0, args(dev, w, 1), bad);
    f.call("H2D past the window", Call::MemcpyHtoD, 0, args(dev, w + 4096, 1), bad);
    f.call("H2D at u64::MAX", Call::MemcpyHtoD, 0, args(dev, u64::MAX, 1), bad);
    f.call("H2D running past the end", Call::MemcpyHtoD, 0, args(dev, w - 4, 8), bad);
    f.call("H2D longer than the window", Call::MemcpyHtoD, 0, args(dev, 0, w + 1), bad);
    f.call("H2D offset + len overflows", Call::MemcpyHtoD, 0, args(dev, u64::MAX - 1, 4), bad);
    f.call("D2H at offset == window_len", Call::MemcpyDtoH, 0, args(dev, w, 1), bad);
    f.call("D2H running past the end", Call::MemcpyDtoH, 0, args(dev, w - 1, 2), bad);
    f.call("D2H offset + len overflows", Call::MemcpyDtoH, 0, args(dev, u64::MAX - 1, 4), bad);
    f.call("DeviceInfo running past the end", Call::DeviceInfo, 0, args(w - 100, 512, 0), bad);
    // The boundary itself is inside.
    f.raw.region.write_window(w - 8, &[1, 2, 3, 4, 5, 6, 7, 8]).expect("window write");
    f.call("H2D ending exactly at the end", Call::MemcpyHtoD, 0, args(dev, w - 8, 8), Status::Ok);
    f.call("D2H back", Call::MemcpyDtoH, 0, args(dev, 0, 8), Status::Ok);
    let mut b = [0u8; 8];
    f.raw.region.read_window(0, &mut b).expect("window read");
    assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
    f.finish();
}

/// Device pointers outside every allocation, ranges running past one, pointers into guard gaps
/// or freed memory, interior and double frees all get `InvalidDevicePointer`.
#[test]
fn bad_device_pointers_get_invalid_device_pointer() {
    const N: u64 = 64 << 10;
    let mut f = Fixture::new();
    let [dev, _] = f.call("alloc", Call::MemAlloc, 0, args(N, 0, 0), Status::Ok);
    let bad = Status::InvalidDevicePointer;
    f.call("H2D to a host-looking pointer", Call::MemcpyHtoD, 0, args(0x1234, 0, 16), bad);
    f.call("H2D to null", Call::MemcpyHtoD, 0, args(0, 0, 1), bad);
    f.call("H2D running past the allocation", Call::MemcpyHtoD, 0, args(dev + N - 4, 0, 8), bad);
    f.call("H2D into the guard gap", Call::MemcpyHtoD, 0, args(dev + N + 100, 0, 1), bad);
    f.call("D2H just past the allocation", Call::MemcpyDtoH, 0, args(dev + N, 0, 1), bad);
    f.call("memset before the first allocation", Call::Memset, 0, args(dev - 1, 0, 1), bad);
    f.call("memset whose end overflows u64", Call::Memset, 0, args(u64::MAX - 2, 0, 8), bad);
    f.call("memset longer than the allocation", Call::Memset, 0, args(dev, 0, N + 1), bad);
    f.call("D2D from a bad source", Call::MemcpyDtoD, 0, args(dev, 0xdead_0000, 16), bad);
    f.call("D2D to a range past the end", Call::MemcpyDtoD, 0, args(dev + N - 8, dev, 16), bad);
    f.call("free of an interior pointer", Call::MemFree, 0, args(dev + 512, 0, 0), bad);
    f.call("free of a pointer never allocated", Call::MemFree, 0, args(0x1000, 0, 0), bad);
    // The last byte is inside.
    f.call("memset of the last byte", Call::Memset, 0, args(dev + N - 1, 0xEE, 1), Status::Ok);
    // Double free, and use after free.
    let [d2, _] = f.call("alloc", Call::MemAlloc, 0, args(4096, 0, 0), Status::Ok);
    assert!(d2 >= dev + N, "allocations never overlap or reuse addresses");
    f.call("first free", Call::MemFree, 0, args(d2, 0, 0), Status::Ok);
    f.call("double free", Call::MemFree, 0, args(d2, 0, 0), bad);
    f.call("memset after free", Call::Memset, 0, args(d2, 0, 1), bad);
    f.call("D2H after free", Call::MemcpyDtoH, 0, args(d2, 0, 1), bad);
    f.finish();
}

/// Unknown call ids, unknown flag bits, unknown or destroyed handles, zero and oversized
/// allocations, and malformed arguments each get their exact status.
#[test]
fn unknown_calls_flags_handles_and_sizes_get_exact_errors() {
    let mut f = Fixture::new();
    let [dev, _] = f.call("alloc", Call::MemAlloc, 0, args(4096, 0, 0), Status::Ok);
    // Call ids.
    for id in [999u16, Call::ALL.len() as u16, u16::MAX] {
        f.expect(&format!("unknown call id {id}"), id, 0, 0, [0; 6], Status::UnknownCall);
    }
    // Flag bits.
    for flags in [1u16 << 1, 1 << 15, !cmd_flags::KNOWN] {
        f.expect(&format!("unknown flag bits {flags:#x}"), Call::Nop as u16, flags, 0, [0; 6], Status::InvalidArgument);
    }
    f.expect("the known BLOCKING flag", Call::Nop as u16, cmd_flags::BLOCKING, 0, [0; 6], Status::Ok);
    // A stream on a call that is not stream-ordered, and non-zero unused argument words.
    f.call("Nop on stream 5", Call::Nop, 5, [0; 6], Status::InvalidArgument);
    f.call("MemGetInfo on stream 1", Call::MemGetInfo, 1, [0; 6], Status::InvalidArgument);
    f.call("Nop with a non-zero argument", Call::Nop, 0, [0, 0, 0, 0, 0, 1], Status::InvalidArgument);
    f.call("MemAlloc with a second argument", Call::MemAlloc, 0, args(4096, 1, 0), Status::InvalidArgument);
    f.call("Memset with a fourth argument", Call::Memset, 0, [dev, 0, 1, 7, 0, 0], Status::InvalidArgument);
    // Handles.
    let ih = Status::InvalidHandle;
    f.call("StreamSync on stream 12345", Call::StreamSync, 12345, [0; 6], ih);
    f.call("memset on an unknown stream", Call::Memset, 777, args(dev, 0, 1), ih);
    f.call("StreamDestroy of the default stream", Call::StreamDestroy, 0, args(0, 0, 0), ih);
    f.call("StreamDestroy of a handle wider than u32", Call::StreamDestroy, 0, args(u64::MAX, 0, 0), ih);
    f.call("EventQuery of an unknown event", Call::EventQuery, 0, args(987_654, 0, 0), ih);
    f.call("EventSync of an unknown event", Call::EventSync, 0, args(987_654, 0, 0), ih);
    f.call("EventRecord of an unknown event", Call::EventRecord, 0, args(987_654, 0, 0), ih);
    f.call("EventDestroy of an unknown event", Call::EventDestroy, 0, args(987_654, 0, 0), ih);
    f.call("EventElapsed of unknown events", Call::EventElapsed, 0, args(1 << 40, 1 << 41, 0), ih);
    let [s, _] = f.call("StreamCreate", Call::StreamCreate, 0, args(1, 0, 0), Status::Ok);
    f.call("StreamDestroy", Call::StreamDestroy, 0, args(s, 0, 0), Status::Ok);
    f.call("StreamSync on a destroyed stream", Call::StreamSync, s as u32, [0; 6], ih);
    f.call("StreamDestroy twice", Call::StreamDestroy, 0, args(s, 0, 0), ih);
    let [ev, _] = f.call("EventCreate", Call::EventCreate, 0, args(0, 0, 0), Status::Ok);
    f.call("EventRecord on an unknown stream", Call::EventRecord, 4242, args(ev, 0, 0), ih);
    f.call("EventDestroy", Call::EventDestroy, 0, args(ev, 0, 0), Status::Ok);
    f.call("EventQuery of a destroyed event", Call::EventQuery, 0, args(ev, 0, 0), ih);
    // Sizes.
    f.call("MemAlloc(0)", Call::MemAlloc, 0, args(0, 0, 0), Status::InvalidArgument);
    f.call("MemAlloc larger than the device", Call::MemAlloc, 0, args(EMU_MEM + 1, 0, 0), Status::OutOfMemory);
    f.call("MemAlloc(u64::MAX)", Call::MemAlloc, 0, args(u64::MAX, 0, 0), Status::OutOfMemory);
    // Arguments.
    let ia = Status::InvalidArgument;
    f.call("memset value wider than a byte", Call::Memset, 0, args(dev, 0x100, 1), ia);
    f.call("StreamCreate with unknown flags", Call::StreamCreate, 0, args(2, 0, 0), ia);
    f.call("EventCreate with unknown flags", Call::EventCreate, 0, args(0x80, 0, 0), ia);
    f.call("DeviceInfo into too small a range", Call::DeviceInfo, 0, args(0, 100, 0), ia);
    // Nothing leaked: only the one allocation is in use.
    let [free, total] = f.call("MemGetInfo", Call::MemGetInfo, 0, [0; 6], Status::Ok);
    assert_eq!((free, total), (EMU_MEM - 4096, EMU_MEM));
    f.finish();
}

/// A command whose sequence number is already in flight gets `SeqInUse` (so does one that would
/// land in the same host slot), without disturbing the command that holds it; once that one
/// completes, the number is free again.
#[test]
fn a_sequence_number_in_flight_gets_seq_in_use() {
    const BIG: u64 = 64 << 20;
    let mut f = Fixture::new();
    let depth = f.raw.depth() as u64;
    let [big, _] = f.call("alloc", Call::MemAlloc, 0, args(BIG, 0, 0), Status::Ok);
    let [ev, _] = f.call("EventCreate", Call::EventCreate, 0, args(0, 0, 0), Status::Ok);
    // Stream 0: 128 memsets of 64 MiB (8 GiB of stores, a good fraction of a second), then the
    // event; an EventSync on it stays pending all that while.
    let raw = &mut f.raw;
    let memsets: Vec<u64> = (0..128).map(|_| raw.seq()).collect();
    for (i, &seq) in memsets.iter().enumerate() {
        raw.push(Command { seq, call: Call::Memset as u16, flags: 0, stream: 0, args: args(big, i as u64 % 255 + 1, BIG) });
    }
    let record = raw.seq();
    raw.push(Command { seq: record, call: Call::EventRecord as u16, flags: 0, stream: 0, args: args(ev, 0, 0) });
    let sync = raw.seq();
    raw.push(Command { seq: sync, call: Call::EventSync as u16, flags: 0, stream: 0, args: args(ev, 0, 0) });
    // The hostile part: the same number again while it is in flight, and one on the same slot.
    raw.push(Command { seq: sync, call: Call::Nop as u16, flags: 0, stream: 0, args: [0; 6] });
    raw.push(Command { seq: sync + depth, call: Call::Nop as u16, flags: 0, stream: 0, args: [0; 6] });
    raw.kick();
    let dup = raw.wait(sync);
    assert_eq!(Status::from_u32(dup.status), Status::SeqInUse, "the duplicate of an in-flight seq");
    assert_eq!(Status::from_u32(raw.wait(sync + depth).status), Status::SeqInUse, "a seq on a busy host slot");
    // A rejected duplicate does not free the number: a third try is refused too.
    let again = raw.call_raw(Call::Nop as u16, 0, 0, [0; 6]);
    assert_eq!(Status::from_u32(again.status), Status::Ok);
    raw.push(Command { seq: sync, call: Call::Nop as u16, flags: 0, stream: 0, args: [0; 6] });
    raw.kick();
    assert_eq!(Status::from_u32(raw.wait(sync).status), Status::SeqInUse, "the third try of an in-flight seq");
    // Commands rejected before execution (unknown call id, unknown flag bits) that reuse the
    // number must not free it either: once their error completions are out, the number is still
    // taken.
    for (call, flags) in [(999u16, 0u16), (Call::Nop as u16, 1 << 15)] {
        raw.push(Command { seq: sync, call, flags, stream: 0, args: [0; 6] });
        raw.kick();
        let first = Status::from_u32(raw.wait(sync).status);
        assert!(
            matches!(first, Status::SeqInUse | Status::UnknownCall | Status::InvalidArgument),
            "call {call} flags {flags:#x}: {first:?}"
        );
        raw.push(Command { seq: sync, call: Call::Nop as u16, flags: 0, stream: 0, args: [0; 6] });
        raw.kick();
        let second = Status::from_u32(raw.wait(sync).status);
        assert_eq!(second, Status::SeqInUse, "a Nop on the in-flight seq after a rejected call {call} flags {flags:#x} reused it");
    }
    assert!(!raw.has_completion(sync), "the EventSync completed before the checks were done: make the backlog longer");
    f.errors += 7;
    // The original EventSync completes normally, after the memsets and the record.
    let done = raw.wait(sync);
    assert_eq!(Status::from_u32(done.status), Status::Ok, "the EventSync holding the seq");
    for s in memsets.into_iter().chain([record]) {
        assert_eq!(Status::from_u32(raw.wait(s).status), Status::Ok);
    }
    // Now the number is free again.
    f.raw.push(Command { seq: sync, call: Call::Nop as u16, flags: 0, stream: 0, args: [0; 6] });
    f.raw.kick();
    assert_eq!(Status::from_u32(f.raw.wait(sync).status), Status::Ok, "a completed seq is free for reuse");
    f.call("EventQuery after the sync", Call::EventQuery, 0, args(ev, 0, 0), Status::Ok);
    f.finish();
}

/// A submission-ring tail out of range ends that session (HOST_STATE = ProtocolError, socket
/// closed) and no other: a normal client on the same mediator works before and after.
#[test]
fn corrupt_ring_index_ends_only_that_session() {
    let mut f = Fixture::new();
    let bogus_tails: [fn(u32, u32) -> u32; 2] = [|head, depth| head.wrapping_add(depth + 5), |head, _| head.wrapping_sub(1)];
    for (k, bogus) in bogus_tails.iter().enumerate() {
        let mut raw = RawSession::connect(f.m.socket());
        raw.ok(Call::Nop, 0, [0; 6]);
        let id = raw.region.read_u64(hdr::SESSION_ID);
        let head = raw.region.atomic_u32(hdr::SQ_HEAD).load(Ordering::Acquire);
        raw.region.atomic_u32(hdr::SQ_TAIL).store(bogus(head, raw.depth()), Ordering::Release);
        raw.doorbell.signal();
        // The host hangs up: the socket reads end-of-file.
        raw.socket.set_read_timeout(Some(HANG)).expect("socket timeout");
        let mut b = [0u8; 16];
        assert_eq!(raw.socket.read(&mut b).expect("the host must close the session socket"), 0, "case {k}");
        assert_eq!(raw.region.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire), HostState::ProtocolError as u32, "case {k}");
        let sess = poll_until(Duration::from_secs(5), "the broken session to be marked ended", || {
            session_where(&stat(&f.m), "id", id).filter(|s| s["state"].as_str().is_some_and(|st| st.starts_with("ended")))
        });
        assert_eq!(sess["protocol_errors"].as_u64(), Some(1), "case {k}: {sess}");
        f.bystander_works();
        f.raw.ok(Call::Nop, 0, [0; 6]);
    }
    let report = stat(&f.m);
    assert_eq!(report["live_sessions"].as_u64(), Some(2), "the bystander and the first raw session live on: {report}");
    f.finish();
}

fn hello(version: u32, features: u32, depth: u32) -> [u8; MSG_LEN] {
    Hello { version, features, window_len: 0, depth, pid: std::process::id() }.encode()
}

/// Send a raw Hello to the mediator and read its answer; the host hangs up after a refusal.
fn refused(m: &Mediator, hello: [u8; MSG_LEN]) -> Welcome {
    let mut s = UnixStream::connect(m.socket()).expect("connect");
    s.set_read_timeout(Some(HANG)).expect("timeout");
    s.write_all(&hello).expect("send Hello");
    let mut b = [0u8; MSG_LEN];
    s.read_exact(&mut b).expect("read Welcome");
    let w = Welcome::decode(&b).expect("the answer is a Welcome");
    assert_eq!(s.read(&mut b).expect("read after the refusal"), 0, "the host must hang up after refusing");
    w
}

/// The host refuses a guest of another protocol version (and unknown features, and a bad ring
/// depth) with the status saying so and its own version, and serves proper guests after.
#[test]
fn host_refuses_a_version_mismatch_with_its_own_version() {
    let m = mediator();
    let w = refused(&m, hello(99, 0, 0));
    assert_eq!((w.status, w.version, w.region_len), (handshake::VERSION_MISMATCH, PROTOCOL_VERSION, 0));
    let w = refused(&m, hello(PROTOCOL_VERSION, 1 << 7, 0));
    assert_eq!((w.status, w.version), (handshake::FEATURE_MISMATCH, PROTOCOL_VERSION));
    let w = refused(&m, hello(PROTOCOL_VERSION, 0, 3));
    assert_eq!(w.status, handshake::REFUSED);
    let c = connect(&m);
    c.call_blocking(Call::Nop, 0, [0; 6]).expect("a proper guest is served");
    // The refused workers have exited; the mediator notices each exit asynchronously.
    poll_until(Duration::from_secs(5), "the refused sessions to be marked ended", || {
        let r = stat(&m);
        let ended = r["sessions"]
            .as_array()
            .map_or(0, |v| v.iter().filter(|s| s["state"].as_str().is_some_and(|st| st.starts_with("ended"))).count());
        (r["live_sessions"].as_u64() == Some(1) && ended == 3).then_some(())
    });
}

/// What a fake mediator answers to a Hello.
enum Answer {
    Welcome(Welcome),
    Garbage,
    HangUp,
}

/// A fake mediator on a private socket that answers successive connections as scripted, after
/// checking each Hello. Returns the socket's folder (keep it alive) and path.
fn fake_mediator(answers: Vec<Answer>) -> (TempDir, std::path::PathBuf, std::thread::JoinHandle<()>) {
    let dir = TempDir::new("fake");
    let path = dir.path().join("fake.sock");
    let l = UnixListener::bind(&path).expect("bind the fake mediator");
    let h = std::thread::spawn(move || {
        for a in answers {
            let (mut s, _) = l.accept().expect("accept");
            let mut b = [0u8; MSG_LEN];
            s.read_exact(&mut b).expect("read Hello");
            let h = Hello::decode(&b).expect("the guest sends a Hello");
            assert_eq!(h.version, PROTOCOL_VERSION);
            assert_eq!(h.pid, std::process::id());
            match a {
                Answer::Welcome(w) => s.write_all(&w.encode()).expect("send Welcome"),
                Answer::Garbage => s.write_all(&[0x42; MSG_LEN]).expect("send garbage"),
                Answer::HangUp => {}
            }
        }
    });
    (dir, path, h)
}

/// The guest side of a mismatch: `Client::connect` fails with `Error::Version` naming both
/// versions, whether the host refuses or claims success with the wrong version; a peer that is
/// no mediator gives a protocol or setup error, never a session.
#[test]
fn guest_reports_a_version_mismatch_naming_both_versions() {
    let other = PROTOCOL_VERSION + 1;
    let v2 = |status| Welcome { version: other, status, features: 0, region_len: 0, session_id: 7 };
    let (_dir, path, srv) = fake_mediator(vec![
        Answer::Welcome(v2(handshake::VERSION_MISMATCH)),
        Answer::Welcome(v2(handshake::OK)),
        Answer::Garbage,
        Answer::HangUp,
    ]);
    for case in ["refusal", "wrong version"] {
        match Client::connect(&path, ClientConfig::default()) {
            Err(Error::Version(msg)) => {
                assert!(msg.contains(&format!("v{PROTOCOL_VERSION}")) && msg.contains(&format!("v{other}")), "{case}: {msg}")
            }
            other => panic!("{case}: expected a version error, got {other:?}"),
        }
    }
    match Client::connect(&path, ClientConfig::default()) {
        Err(Error::Protocol(msg)) => assert!(msg.contains("Welcome"), "{msg}"),
        other => panic!("garbage answer: expected a protocol error, got {other:?}"),
    }
    match Client::connect(&path, ClientConfig::default()) {
        Err(Error::Setup(msg)) => assert!(msg.contains("closed"), "{msg}"),
        other => panic!("hang-up: expected a setup error, got {other:?}"),
    }
    srv.join().expect("the fake mediator checked every Hello");
}

/// Connecting where no mediator runs (no socket, or a stale socket file) is a setup error that
/// tells the user to start `vgpu serve`.
#[test]
fn connecting_where_no_mediator_runs_says_to_start_vgpu_serve() {
    let dir = TempDir::new("nobody");
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    for path in [dir.path().join("missing.sock"), stale] {
        match Client::connect(&path, ClientConfig::default()) {
            Err(Error::Setup(msg)) => assert!(msg.contains("vgpu serve") && msg.contains(&*path.to_string_lossy()), "{msg}"),
            other => panic!("{}: expected a setup error, got {other:?}", path.display()),
        }
    }
}

/// The stream-wait calls (`StreamWaitEvent`, `StreamWaitToken`, `SignalToken`): bad handles,
/// tokens, flags and argument words get their exact statuses; a stream held by a token stalls
/// only itself (the dispatcher and the other streams go on) until the token is signalled; and a
/// session that ends with a stream held by a token nobody signals is released (its worker exits
/// and frees everything), never hung.
#[test]
fn stream_waits_and_tokens_reject_bad_input_and_never_hang_the_host() {
    let mut f = Fixture::new();
    let (ih, ia, ok) = (Status::InvalidHandle, Status::InvalidArgument, Status::Ok);
    let [dev, _] = f.call("alloc", Call::MemAlloc, 0, args(1 << 20, 0, 0), ok);
    let [ev, _] = f.call("EventCreate", Call::EventCreate, 0, args(0, 0, 0), ok);
    let [s, _] = f.call("StreamCreate (non-blocking)", Call::StreamCreate, 0, args(1, 0, 0), ok);
    let [s2, _] = f.call("StreamCreate (non-blocking)", Call::StreamCreate, 0, args(1, 0, 0), ok);
    let (s, s2) = (s as u32, s2 as u32);
    // StreamWaitEvent.
    f.call("StreamWaitEvent on an unknown stream", Call::StreamWaitEvent, 4242, args(ev, 0, 0), ih);
    f.call("StreamWaitEvent of an unknown event", Call::StreamWaitEvent, s, args(987_654, 0, 0), ih);
    f.call("StreamWaitEvent with flags", Call::StreamWaitEvent, s, args(ev, 1, 0), ia);
    f.call("StreamWaitEvent with a third argument", Call::StreamWaitEvent, s, args(ev, 0, 1), ia);
    f.call("StreamWaitEvent on a never-recorded event", Call::StreamWaitEvent, s, args(ev, 0, 0), ok);
    // StreamWaitToken and SignalToken.
    f.call("StreamWaitToken with token 0", Call::StreamWaitToken, s, args(0, 0, 0), ia);
    f.call("StreamWaitToken on an unknown stream", Call::StreamWaitToken, 999, args(5, 0, 0), ih);
    f.call("StreamWaitToken with a second argument", Call::StreamWaitToken, s, args(5, 1, 0), ia);
    f.call("SignalToken of a token never waited on", Call::SignalToken, 0, args(77, 0, 0), ih);
    f.call("SignalToken carrying a stream", Call::SignalToken, s, args(77, 0, 0), ia);
    f.call("SignalToken with a second argument", Call::SignalToken, 0, args(77, 1, 0), ia);

    // Stream s reaches token 5 (its completion says so) and holds: the record behind it, the
    // wait of s2 on that record and the memset behind that wait all stay pending.
    f.call("StreamWaitToken 5", Call::StreamWaitToken, s, args(5, 0, 0), ok);
    f.call("the same token while it is live", Call::StreamWaitToken, s2, args(5, 0, 0), ia);
    let rec = f.raw.submit(Call::EventRecord as u16, 0, s, args(ev, 0, 0));
    let wait = f.raw.submit(Call::StreamWaitEvent as u16, 0, s2, args(ev, 0, 0));
    let set = f.raw.submit(Call::Memset as u16, 0, s2, args(dev, 0x5A, 1 << 20));
    // Meanwhile the dispatcher serves everything else: stream 0, DeviceInfo, queries.
    f.call("memset on stream 0 beside the held stream", Call::Memset, 0, args(dev, 0x11, 4096), ok);
    let (q, _) = f.raw.call(Call::EventQuery, 0, args(ev, 0, 0));
    assert_eq!(q, Status::NotReady, "the record behind the token must not have run");
    for seq in [rec, wait, set] {
        assert!(!f.raw.has_completion(seq), "seq {seq} completed while its stream was held");
    }
    f.call("SignalToken 5", Call::SignalToken, 0, args(5, 0, 0), ok);
    for seq in [rec, wait, set] {
        let c = f.raw.wait(seq);
        assert_eq!(Status::from_u32(c.status), ok, "seq {seq} after the signal");
    }
    f.call("EventQuery after the signal", Call::EventQuery, 0, args(ev, 0, 0), ok);
    f.call("StreamSync of s2", Call::StreamSync, s2, [0; 6], ok);
    f.call("SignalToken of a token already passed", Call::SignalToken, 0, args(5, 0, 0), ih);
    // A signal that arrives before the stream reaches the wait lets it pass.
    let [big, _] = f.call("alloc", Call::MemAlloc, 0, args(64 << 20, 0, 0), ok);
    for _ in 0..8 {
        f.raw.submit(Call::Memset as u16, 0, s, args(big, 1, 64 << 20));
    }
    let early = f.raw.submit(Call::StreamWaitToken as u16, 0, s, args(6, 0, 0));
    f.call("SignalToken before the stream gets there", Call::SignalToken, 0, args(6, 0, 0), ok);
    assert_eq!(Status::from_u32(f.raw.wait(early).status), ok);
    f.call("StreamSync of s after an early signal", Call::StreamSync, s, [0; 6], ok);

    // Token 7 is never signalled: s stays held with work behind it when the session ends.
    f.call("StreamWaitToken 7, never signalled", Call::StreamWaitToken, s, args(7, 0, 0), ok);
    f.raw.submit(Call::Memset as u16, 0, s, args(dev, 0x22, 4096));
    f.raw.submit(Call::StreamSync as u16, 0, s, [0; 6]);
    let id = f.raw.region.read_u64(hdr::SESSION_ID);
    let Fixture { m, raw, good, good_buf, .. } = {
        // Check the counters while the raw session still lives, then take the fixture apart.
        let sess = session_where(&stat(&f.m), "id", id).expect("the raw session in vgpu stat");
        assert_eq!(sess["state"], "serving", "{sess}");
        assert_eq!(sess["errors"].as_u64(), Some(f.errors), "host error count: {sess}");
        f
    };
    drop(raw);
    let sess = poll_until(Duration::from_secs(5), "the session held by a token to end", || {
        session_where(&stat(&m), "id", id).filter(|s| s["state"].as_str().is_some_and(|st| st.starts_with("ended")))
    });
    assert_eq!(sess["mem_in_use"].as_u64(), Some(0), "everything released: {sess}");
    // The mediator and the other session are unaffected.
    let d = pattern(99, 4096);
    good.copy_to_device(good_buf, &d, 0).expect("bystander upload");
    let mut back = vec![0u8; 4096];
    good.copy_from_device(good_buf, &mut back, 0).expect("bystander download");
    assert!(back == d, "the bystander's bytes changed");
}
