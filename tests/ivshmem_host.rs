//! The host side of the `ivshmem` link without a VM: these tests do what QEMU does with
//! `-chardev socket,path=SOCK -device ivshmem-doorbell,chardev=...,vectors=2`. They connect to a
//! real `vgpu serve --ivshmem SOCK` process, receive its ivshmem-server messages and fds (and
//! check every byte of them), map the shared memory, then act as the guest: open a session by
//! epoch, ring the doorbell eventfd, and write commands straight into the rings.
//!
//! What they check: the protocol bytes and region header; a second VM on a socket is refused;
//! a VM's disconnect reclaims its session (memory, stat); a new guest epoch tears the previous
//! session down (memory freed, no stale completion); the heartbeat ticks with and without a
//! session and stops when the mediator is killed with SIGKILL; a guest that corrupts its ring
//! loses its session, not the link.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde_json::Value;
use vgpu_tests::{args, pattern, poll_until, vgpu_exe, TempDir, HANG};
use vgpu_transport::notify::{wait_readable, EventFd};
use vgpu_transport::region::Region;
use vgpu_transport::ring::{completion_ring, submission_ring, Consumer, Producer, RegionRing};
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::{hdr, Call, Command, Completion, HostState, PROTOCOL_VERSION, REGION_MAGIC};
use vgpu_transport::Status;

/// Shared memory per VM in these tests (`--size`).
const SIZE: u64 = 4 << 20;

/// A `vgpu serve --socket CTRL --ivshmem SOCK --size 4M` process, killed on drop.
struct Host {
    child: Child,
    ctrl: PathBuf,
    sock: PathBuf,
    _dir: TempDir,
}

impl Host {
    fn start() -> Host {
        let dir = TempDir::new("ivshmem");
        let ctrl = dir.path().join("vgpu.sock");
        let sock = dir.path().join("ivshmem.sock");
        let child = Process::new(vgpu_exe())
            .args(["serve", "--executor", "emu", "--spin-us", "50", "--size", "4M", "--socket"])
            .arg(&ctrl)
            .arg("--ivshmem")
            .arg(&sock)
            .env("VGPU_LOG", std::env::var("VGPU_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting vgpu serve --ivshmem");
        let h = Host { child, ctrl, sock, _dir: dir };
        // The VM sockets listen before the control socket answers.
        poll_until(HANG, "the mediator to answer vgpu stat", || vgpu_mediator::serve::query_stat(&h.ctrl).ok());
        assert!(h.sock.exists(), "no ivshmem socket at {}", h.sock.display());
        h
    }

    fn stat(&self) -> Value {
        vgpu_mediator::serve::query_stat(&self.ctrl).expect("vgpu stat")
    }

    /// The stat entry of the VM whose region has session id `id`.
    fn vm(&self, id: u64) -> Value {
        let st = self.stat();
        st["sessions"].as_array().and_then(|a| a.iter().find(|s| s["id"].as_u64() == Some(id)).cloned()).unwrap_or(Value::Null)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Receive one ivshmem-server message: the value and the fd that came with it.
fn recv_msg(s: &UnixStream) -> Option<(i64, Option<OwnedFd>)> {
    let mut buf = [0u8; 8];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).expect("recvmsg");
    let mut fds = Vec::new();
    for c in msg.cmsgs().expect("control messages") {
        if let ControlMessageOwned::ScmRights(v) = c {
            for fd in v {
                // SAFETY: the kernel just installed `fd` in this process (SCM_RIGHTS); nothing
                // else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return None;
    }
    assert_eq!(n, 8, "an ivshmem message is one i64");
    assert!(fds.len() <= 1, "at most one fd per message");
    Some((i64::from_le_bytes(buf), fds.pop()))
}

/// The VM, as QEMU sees it: the shared memory and the eventfds of both peers.
struct Vm {
    sock: UnixStream,
    region: Arc<Region>,
    /// Peer 0's vectors: writing one rings the host's doorbell.
    doorbells: Vec<EventFd>,
    /// Our own vectors: the host writes them to interrupt us.
    irqs: Vec<EventFd>,
}

impl Vm {
    /// Connect like QEMU and check every message of the ivshmem-server protocol.
    fn attach(h: &Host) -> Vm {
        let sock = UnixStream::connect(&h.sock).expect("connecting to the ivshmem socket");
        sock.set_read_timeout(Some(HANG)).expect("timeout");
        let next = || recv_msg(&sock).expect("the server closed the connection during setup");
        let (v, fd) = next();
        assert_eq!((v, fd.is_some()), (0, false), "protocol version 0, no fd");
        let (id, fd) = next();
        assert_eq!((id, fd.is_some()), (1, false), "our peer id is 1, no fd");
        let (v, shm) = next();
        assert_eq!(v, -1, "then -1 with the shared memory");
        let shm = shm.expect("the shared-memory fd");
        let (mut doorbells, mut irqs) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (v, fd) = next();
            assert_eq!(v, 0, "peer 0's vectors come next");
            doorbells.push(EventFd::from_owned(fd.expect("an eventfd per vector")).expect("eventfd"));
        }
        for _ in 0..2 {
            let (v, fd) = next();
            assert_eq!(v, id, "then our own vectors");
            irqs.push(EventFd::from_owned(fd.expect("an eventfd per vector")).expect("eventfd"));
        }
        // Nothing more: the server is silent until a peer comes or goes.
        sock.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 8];
        assert!(
            matches!(nix::sys::socket::recv(sock.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT), Err(nix::errno::Errno::EAGAIN)),
            "unexpected extra message"
        );
        let st = nix::sys::stat::fstat(shm.as_raw_fd()).expect("fstat");
        assert_eq!(st.st_size as u64, SIZE, "the shared memory is --size bytes (QEMU maps it whole as BAR2)");
        let region = Region::open_guest(&shm, SIZE).expect("a valid region header");
        assert_eq!(region.atomic_u64(hdr::MAGIC).load(Ordering::Acquire), REGION_MAGIC);
        assert_eq!(region.read_u32(hdr::VERSION), PROTOCOL_VERSION);
        assert!(region.layout().region_len <= SIZE);
        assert_ne!(region.read_u64(hdr::HOST_GENERATION), 0, "HOST_GENERATION is set");
        assert_eq!(region.atomic_u64(hdr::HOST_EPOCH).load(Ordering::Acquire), 0, "no session yet");
        Vm { sock, region: Arc::new(region), doorbells, irqs }
    }

    fn heartbeat(&self) -> u64 {
        self.region.atomic_u64(hdr::HEARTBEAT).load(Ordering::Acquire)
    }

    fn session_id(&self) -> u64 {
        self.region.read_u64(hdr::SESSION_ID)
    }

    /// Open a guest session with epoch `epoch`, as the contract says a guest process does.
    fn open(&self, epoch: u64) -> Guest {
        let r = &self.region;
        r.atomic_u32(hdr::SQ_TAIL).store(0, Ordering::Relaxed);
        r.atomic_u32(hdr::CQ_HEAD).store(0, Ordering::Relaxed);
        r.atomic_u32(hdr::WANTS_INTERRUPT).store(0, Ordering::Relaxed);
        r.atomic_u32(hdr::GUEST_PID).store(std::process::id(), Ordering::Relaxed);
        r.atomic_u64(hdr::GUEST_EPOCH).store(epoch, Ordering::Release);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.doorbells[0].signal();
        let t = Instant::now();
        while r.atomic_u64(hdr::HOST_EPOCH).load(Ordering::Acquire) != epoch {
            assert!(t.elapsed() < HANG, "the host did not take epoch {epoch:#x}");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The host reset its indices before it published the epoch.
        assert_eq!(r.atomic_u32(hdr::SQ_HEAD).load(Ordering::Acquire), 0);
        assert_eq!(r.atomic_u32(hdr::CQ_TAIL).load(Ordering::Acquire), 0);
        assert_eq!(r.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire), HostState::Serving as u32);
        Guest {
            sq: Producer::new(submission_ring(&self.region)),
            cq: Consumer::new(completion_ring(&self.region)),
            region: self.region.clone(),
            doorbell: self.doorbells[0].raw(),
            irq: self.irqs[0].raw(),
            next_seq: 1,
            got: VecDeque::new(),
        }
    }
}

/// One guest session on a [`Vm`], speaking the rings by hand.
struct Guest {
    region: Arc<Region>,
    sq: Producer<RegionRing<Command>>,
    cq: Consumer<RegionRing<Completion>>,
    doorbell: RawFd,
    irq: RawFd,
    next_seq: u64,
    got: VecDeque<Completion>,
}

impl Guest {
    fn ring(&self) {
        // SAFETY: `doorbell` is the raw fd of an EventFd the Vm owns and outlives this guest.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.doorbell) };
        let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
    }

    fn submit(&mut self, call: Call, stream: u32, a: [u64; 6]) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sq.push(Command { seq, call: call as u16, flags: 0, stream, args: a }).expect("submission ring full");
        if self.sq.publish_and_check() {
            self.ring();
        }
        seq
    }

    fn wait(&mut self, seq: u64) -> Completion {
        let deadline = Instant::now() + HANG;
        loop {
            self.cq.disarm();
            while let Some(c) = self.cq.pop().expect("completion ring indices") {
                self.got.push_back(c);
            }
            if let Some(i) = self.got.iter().position(|c| c.seq == seq) {
                return self.got.remove(i).expect("index just found");
            }
            assert!(Instant::now() < deadline, "no completion for seq {seq} within {HANG:?}");
            if self.cq.arm().expect("completion ring indices") {
                // SAFETY: `irq` is the raw fd of an EventFd the Vm owns and outlives this guest.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.irq) };
                wait_readable(&[fd], 100);
                let mut b = [0u8; 8];
                let _ = nix::unistd::read(self.irq, &mut b);
            }
        }
    }

    fn call(&mut self, call: Call, stream: u32, a: [u64; 6]) -> (Status, [u64; 2]) {
        let seq = self.submit(call, stream, a);
        let c = self.wait(seq);
        (Status::from_u32(c.status), c.result)
    }

    fn ok(&mut self, call: Call, stream: u32, a: [u64; 6]) -> [u64; 2] {
        let (s, r) = self.call(call, stream, a);
        assert_eq!(s, Status::Ok, "{call:?} {a:?}");
        r
    }
}

fn mem_in_use(v: &Value) -> u64 {
    v["mem_in_use"].as_u64().unwrap_or(u64::MAX)
}

#[test]
fn vm_session_serves_commands_through_the_rings() {
    let h = Host::start();
    let vm = Vm::attach(&h);
    let mut g = vm.open(0x1234_5678_9abc_def1);
    g.ok(Call::Nop, 0, [0; 6]);
    let ptr = g.ok(Call::MemAlloc, 0, args(1 << 20, 0, 0))[0];
    let data = pattern(7, 64 << 10);
    g.region.write_window(0, &data).expect("window");
    g.ok(Call::MemcpyHtoD, 0, args(ptr, 0, data.len() as u64));
    g.region.fill_window(0, 0, data.len() as u64).expect("window");
    g.ok(Call::MemcpyDtoH, 0, args(ptr + 4096, 4096, 60 << 10));
    let mut back = vec![0u8; 60 << 10];
    g.region.read_window(4096, &mut back).expect("window");
    assert!(back == data[4096..], "bytes differ after a round trip through the VM's region");
    // A bad command gets its error completion, and the session goes on.
    assert_eq!(g.call(Call::MemFree, 0, args(0xdead_0000, 0, 0)).0, Status::InvalidDevicePointer);
    assert_eq!(g.call(Call::MemcpyHtoD, 0, args(ptr, SIZE, 1)).0, Status::InvalidWindowRange);
    g.ok(Call::Nop, 0, [0; 6]);

    let s = h.vm(vm.session_id());
    assert_eq!(s["link"], "ivshmem", "{s}");
    assert_eq!(s["state"], "serving", "{s}");
    assert_eq!(s["guest_sessions"].as_u64(), Some(1), "{s}");
    assert_eq!(s["guest_pid"].as_u64(), Some(std::process::id() as u64), "{s}");
    assert_eq!(s["epoch"].as_u64(), Some(0x1234_5678_9abc_def1), "{s}");
    assert_eq!(mem_in_use(&s), 1 << 20, "{s}");
    assert!(s["ivshmem_socket"].as_str().is_some_and(|p| Path::new(p) == h.sock), "{s}");
}

#[test]
fn a_second_vm_on_the_same_socket_is_refused() {
    let h = Host::start();
    let vm = Vm::attach(&h);
    let second = UnixStream::connect(&h.sock).expect("connect");
    second.set_read_timeout(Some(HANG)).expect("timeout");
    assert!(recv_msg(&second).is_none(), "a second VM must get no messages, only a closed connection");
    // The first VM is unaffected.
    let mut g = vm.open(42);
    g.ok(Call::Nop, 0, [0; 6]);
    assert_eq!(h.stat()["live_sessions"].as_u64(), Some(1));
}

#[test]
fn vm_disconnect_reclaims_its_session() {
    let h = Host::start();
    let vm = Vm::attach(&h);
    let id = vm.session_id();
    let mut g = vm.open(7);
    g.ok(Call::MemAlloc, 0, args(32 << 20, 0, 0));
    assert_eq!(mem_in_use(&h.vm(id)), 32 << 20);
    drop(g);
    drop(vm);
    let s = poll_until(HANG, "the VM's session to end", || Some(h.vm(id)).filter(|s| s["state"] != "serving"));
    assert_eq!(mem_in_use(&s), 0, "{s}");
    let st = h.stat();
    assert_eq!(st["live_sessions"].as_u64(), Some(0), "{st}");
    assert_eq!(mem_in_use(&st), 0, "{st}");
    // The socket takes a new VM, with a fresh region.
    let vm2 = Vm::attach(&h);
    assert_ne!(vm2.session_id(), id);
    let mut g2 = vm2.open(7);
    g2.ok(Call::Nop, 0, [0; 6]);
}

#[test]
fn a_new_epoch_tears_the_previous_session_down() {
    let h = Host::start();
    let vm = Vm::attach(&h);
    let id = vm.session_id();
    let mut g = vm.open(1001);
    let old = g.ok(Call::MemAlloc, 0, args(16 << 20, 0, 0))[0];
    // Work that cannot finish: a stream held by a token nobody signals, with a memset behind
    // it. Its completions are pending when the guest process "dies".
    let stream = g.ok(Call::StreamCreate, 0, args(0, 0, 0))[0] as u32;
    g.ok(Call::StreamWaitToken, stream, args(99, 0, 0));
    let behind = g.submit(Call::Memset, stream, args(old, 1, 4096));
    g.ok(Call::Nop, 0, [0; 6]);
    assert!(!g.got.iter().any(|c| c.seq == behind), "the memset behind the token ran");
    assert_eq!(mem_in_use(&h.vm(id)), 16 << 20);
    drop(g);

    // A new guest process: new epoch, same VM.
    let mut g = vm.open(1002);
    let s = h.vm(id);
    assert_eq!(mem_in_use(&s), 0, "the previous session's memory is freed: {s}");
    assert_eq!(s["guest_sessions"].as_u64(), Some(2), "{s}");
    // The old session's work was released at teardown, but nothing of it reaches the ring.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(vm.region.atomic_u32(hdr::CQ_TAIL).load(Ordering::Acquire), 0, "a stale completion was posted");
    // Sequence numbers start over; the old pointer and stream mean nothing here.
    let (st, _) = g.call(Call::Memset, 0, args(old, 1, 4096));
    assert_eq!(st, Status::InvalidDevicePointer);
    assert_eq!(g.call(Call::StreamSync, stream, [0; 6]).0, Status::InvalidHandle);
    g.ok(Call::MemAlloc, 0, args(1 << 20, 0, 0));
    assert_eq!(mem_in_use(&h.vm(id)), 1 << 20);
    assert_eq!(h.vm(id)["protocol_errors"].as_u64(), Some(0));

    // Epoch 0: the guest closed its session; the host frees it and stands by.
    vm.region.atomic_u64(hdr::GUEST_EPOCH).store(0, Ordering::Release);
    vm.doorbells[0].signal();
    poll_until(HANG, "HOST_EPOCH back to 0", || (vm.region.atomic_u64(hdr::HOST_EPOCH).load(Ordering::Acquire) == 0).then_some(()));
    poll_until(HANG, "the session's memory to be freed", || (mem_in_use(&h.vm(id)) == 0).then_some(()));
}

#[test]
fn heartbeat_ticks_without_a_session_and_stops_when_the_mediator_is_killed() {
    let mut h = Host::start();
    let vm = Vm::attach(&h);
    // No session yet: the heartbeat already runs (at least every 100 ms).
    let b0 = vm.heartbeat();
    std::thread::sleep(Duration::from_millis(350));
    let b1 = vm.heartbeat();
    assert!(b1 >= b0 + 3, "heartbeat {b0} -> {b1} in 350 ms without a session");
    // With an idle session.
    let mut g = vm.open(5);
    g.ok(Call::Nop, 0, [0; 6]);
    std::thread::sleep(Duration::from_millis(350));
    let b2 = vm.heartbeat();
    assert!(b2 >= b1 + 3, "heartbeat {b1} -> {b2} in 350 ms with an idle session");

    // kill -9 of the mediator: its VM worker dies with it; the heartbeat stops and QEMU's socket
    // hangs up.
    h.child.kill().expect("SIGKILL");
    h.child.wait().expect("wait");
    std::thread::sleep(Duration::from_millis(300));
    let b3 = vm.heartbeat();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vm.heartbeat(), b3, "the heartbeat goes on after the mediator was killed");
    vm.sock.set_nonblocking(false).expect("blocking");
    vm.sock.set_read_timeout(Some(HANG)).expect("timeout");
    assert!(recv_msg(&vm.sock).is_none(), "the VM's socket must hang up");
}

#[test]
fn a_mediator_shutting_down_marks_the_region_closed() {
    let mut h = Host::start();
    let vm = Vm::attach(&h);
    let mut g = vm.open(9);
    g.ok(Call::Nop, 0, [0; 6]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(h.child.id() as i32), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    poll_until(HANG, "HOST_STATE = Closed", || {
        (vm.region.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire) == HostState::Closed as u32).then_some(())
    });
    let st = h.child.wait().expect("wait");
    assert!(st.success(), "vgpu serve exits cleanly on SIGTERM: {st}");
    vm.sock.set_nonblocking(false).expect("blocking");
    vm.sock.set_read_timeout(Some(HANG)).expect("timeout");
    assert!(recv_msg(&vm.sock).is_none(), "the VM's socket must hang up");
}

#[test]
fn a_guest_that_corrupts_its_ring_loses_its_session_not_the_link() {
    let h = Host::start();
    let vm = Vm::attach(&h);
    let id = vm.session_id();
    let mut g = vm.open(77);
    g.ok(Call::MemAlloc, 0, args(1 << 20, 0, 0));
    // An SQ tail far beyond the ring: a protocol violation.
    vm.region.atomic_u32(hdr::SQ_TAIL).store(1 << 30, Ordering::Release);
    vm.doorbells[0].signal();
    poll_until(HANG, "HOST_STATE = ProtocolError", || {
        (vm.region.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire) == HostState::ProtocolError as u32).then_some(())
    });
    let s = poll_until(HANG, "the broken session's memory to be freed", || Some(h.vm(id)).filter(|s| mem_in_use(s) == 0));
    assert_eq!(s["protocol_errors"].as_u64(), Some(1), "{s}");
    assert_eq!(s["state"], "serving", "the VM stays attached: {s}");
    // Garbage in the guest's other words does not hurt the host either.
    vm.region.atomic_u32(hdr::CQ_HEAD).store(0xdead_beef, Ordering::Release);
    vm.region.atomic_u32(hdr::WANTS_INTERRUPT).store(0xffff_ffff, Ordering::Release);
    let b = vm.heartbeat();
    std::thread::sleep(Duration::from_millis(200));
    assert!(vm.heartbeat() > b, "the heartbeat stopped after a protocol error");
    // The next guest process gets a clean session.
    let mut g = vm.open(78);
    g.ok(Call::Nop, 0, [0; 6]);
    g.ok(Call::MemAlloc, 0, args(1 << 20, 0, 0));
    // One process per VM at a time: the doorbell of vector 1 also wakes the host.
    let seq = g.submit(Call::Nop, 0, [0; 6]);
    vm.doorbells[1].signal();
    g.wait(seq);
}
