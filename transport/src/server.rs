//! The host half: drain the submission ring, validate and dispatch, post completions, raise the
//! interrupt only when the guest armed it, and sleep on the doorbell when idle.
//!
//! The server trusts nothing in the region. Ring indices are range-checked (a corrupt index ends
//! the session with `HostState::ProtocolError`, it never causes an out-of-range access); every
//! command is copied out by value before it is looked at; unknown call ids, unknown flag bits and
//! sequence numbers already in flight get error completions. What a call's arguments mean is
//! checked by the [`Executor`].
//!
//! Two ways to serve: [`Server::run`] serves one session until its guest hangs up (the `direct`
//! link); [`Server::run_epochs`] serves the successive guest sessions of one VM on one region (the
//! `ivshmem` link, `docs/protocol.md` §13): a new `GUEST_EPOCH` tears the previous session down
//! (its completer closed so nothing of it reaches the ring again, its executor shut down and
//! dropped), resets the host's indices and publishes `HOST_EPOCH`; the heartbeat ticks all along.

use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::notify::{EventFd, Notify};
use crate::region::Region;
use crate::ring::{completion_ring, submission_ring, Consumer, Producer, RegionRing};
use crate::sync::stat::AtomicU64;
use crate::sync::{lock, Mutex, Ordering};
use crate::wire::{cmd_flags, hdr, Call, Command, Completion, HostState, Status};

/// Host-side counters of one session. `#[repr(C)]` so the mediator can place it in a page shared
/// with its parent process (for `vgpu stat`).
#[derive(Debug, Default)]
#[repr(C)]
pub struct ServerStats {
    pub commands: AtomicU64,
    pub blocking_calls: AtomicU64,
    pub errors: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub completions: AtomicU64,
    pub interrupts_raised: AtomicU64,
    pub interrupts_suppressed: AtomicU64,
    pub doorbell_wakeups: AtomicU64,
    pub sleeps: AtomicU64,
    pub spin_hits: AtomicU64,
    pub bytes_h2d: AtomicU64,
    pub bytes_d2h: AtomicU64,
    pub bytes_d2d: AtomicU64,
    pub mem_in_use: AtomicU64,
    pub mem_peak: AtomicU64,
    pub allocations: AtomicU64,
    pub streams: AtomicU64,
    pub events: AtomicU64,
    pub guest_spin_hits: AtomicU64,
    pub guest_parks: AtomicU64,
    /// 0 = starting, 1 = serving, 2 = ended.
    pub state: AtomicU64,
    pub pid: AtomicU64,
    pub session_id: AtomicU64,
    /// Kernel launches taken (validated, recorded and run on emu; enqueued on cuda).
    pub launches: AtomicU64,
    /// Warp instructions emu's interpreter ran, and the launches that ended in a fault.
    pub kernel_warp_insts: AtomicU64,
    pub kernel_faults: AtomicU64,
    /// Modules loaded, and of them the ones found in the cross-session cache.
    pub modules_loaded: AtomicU64,
    pub modules_cached: AtomicU64,
    /// Graph launches taken.
    pub graph_launches: AtomicU64,
    /// ivshmem link: the guest epoch being served (0: none), guest sessions served so far on
    /// this VM, and the pid the current guest process wrote (informational).
    pub epoch: AtomicU64,
    pub guest_sessions: AtomicU64,
    pub guest_pid: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<ServerStats>() == 256);

/// Sequence numbers at or above this are refused (`SeqInUse`): the host's in-flight marker is
/// `seq + 1`, and guests keep `seq << 3` in a word.
pub const MAX_SEQ: u64 = 1 << 61;

/// Server settings.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// How long the server polls the submission ring after the last command before it arms
    /// "needs kick" and sleeps. Zero: sleep at once (interrupt-only operation).
    pub spin: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { spin: Duration::from_micros(50) }
    }
}

/// Executes validated commands. Returns `Some` to complete at once, or `None` after arranging
/// to complete later through the [`Completer`] (stream work, event waits).
pub trait Executor: Send {
    fn execute(&mut self, cmd: &Command, call: Call, done: &Completer) -> Option<Completion>;
    /// The guest is gone: release every resource of the session.
    fn shutdown(&mut self);
}

struct CompleterInner {
    cq: Mutex<Producer<RegionRing<Completion>>>,
    /// One per interrupt vector; the guest's `WANTS_INTERRUPT` value picks one.
    interrupts: StdArc<Vec<Box<dyn Notify>>>,
    inflight: Box<[AtomicU64]>,
    stats: &'static ServerStats,
    broken: crate::sync::stat::AtomicUsize,
    /// Set (under the `cq` lock) when the session this completer belongs to is torn down: from
    /// then on nothing is written, published or signalled, whichever thread still holds a clone.
    closed: crate::sync::stat::AtomicUsize,
}

/// Posts completions from any thread. Cheap to clone.
#[derive(Clone)]
pub struct Completer {
    inner: StdArc<CompleterInner>,
}

impl Completer {
    /// Post one completion now.
    pub fn complete(&self, c: Completion) {
        self.post(std::slice::from_ref(&c))
    }

    /// Shorthand: complete `seq` with `status` and `result`.
    pub fn finish(&self, seq: u64, status: Status, result: [u64; 2]) {
        self.complete(Completion { seq, status: status as u32, aux: 0, result })
    }

    /// Post a batch of completions, then raise the interrupt if the guest armed it. Completions
    /// staged earlier by any thread are published with them, ahead of them.
    pub fn post(&self, cs: &[Completion]) {
        let kick = {
            let mut cq = lock(&self.inner.cq);
            if self.is_closed() {
                return;
            }
            for c in cs {
                self.write(&mut cq, c, true);
            }
            cq.publish_and_flag()
        };
        self.kicked(kick);
    }

    /// Write a completion into the ring without publishing it. It becomes visible with the next
    /// [`flush`](Self::flush) or [`post`](Self::post) from any thread, which keeps the order in
    /// which completions were produced across threads: a completion posted by a stream thread can
    /// never overtake one the dispatcher produced before handing that stream its work.
    pub fn stage(&self, c: Completion) {
        let mut cq = lock(&self.inner.cq);
        self.write(&mut cq, &c, true);
    }

    /// Stage the completion of a command rejected before it claimed its in-flight marker (a
    /// sequence number already in flight): the marker belongs to the other command.
    fn stage_unclaimed(&self, c: Completion) {
        let mut cq = lock(&self.inner.cq);
        self.write(&mut cq, &c, false);
    }

    /// Publish everything staged, and raise the interrupt if the guest armed it.
    pub fn flush(&self) {
        let kick = {
            let mut cq = lock(&self.inner.cq);
            if !cq.has_unpublished() || self.is_closed() {
                return;
            }
            cq.publish_and_flag()
        };
        self.kicked(kick);
    }

    fn write(&self, cq: &mut Producer<RegionRing<Completion>>, c: &Completion, claimed: bool) {
        let i = &self.inner;
        if self.is_closed() {
            // The session was torn down (ivshmem epoch reset): a late completion of the old
            // session must never reach the ring the next session uses.
            return;
        }
        if c.status != Status::Ok as u32 && c.status != Status::NotReady as u32 {
            i.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        if claimed {
            let mask = i.inflight.len() as u64 - 1;
            let _ = i.inflight[(c.seq & mask) as usize].compare_exchange(c.seq.wrapping_add(1), 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        debug!(target: "vgpu::server", seq = c.seq, status = Status::from_u32(c.status).name(), "complete");
        i.stats.completions.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = cq.push(*c) {
            // At most `depth` commands are in flight, so a full completion ring means the guest
            // corrupted its consumer index. The session is over; nothing blocks.
            warn!(target: "vgpu::server", "completion ring: {e}; ending the session");
            i.broken.store(1, Ordering::SeqCst);
            i.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn kicked(&self, flag: u32) {
        let i = &self.inner;
        if flag != 0 {
            i.stats.interrupts_raised.fetch_add(1, Ordering::Relaxed);
            let v = (flag as usize - 1).min(i.interrupts.len() - 1);
            i.interrupts[v].notify();
        } else {
            i.stats.interrupts_suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Session-wide statistics.
    pub fn stats(&self) -> &'static ServerStats {
        self.inner.stats
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) != 0
    }

    /// End this completer's session: once this returns, no thread can write, publish or raise
    /// an interrupt through any clone of it (every such path checks the mark under the lock
    /// taken here).
    fn close(&self) {
        let _cq = lock(&self.inner.cq);
        self.inner.closed.store(1, Ordering::Release);
    }

    fn new(region: &StdArc<Region>, interrupts: StdArc<Vec<Box<dyn Notify>>>, stats: &'static ServerStats) -> Completer {
        let depth = region.layout().sq_depth;
        Completer {
            inner: StdArc::new(CompleterInner {
                cq: Mutex::new(Producer::new(completion_ring(region))),
                interrupts,
                inflight: (0..depth).map(|_| AtomicU64::new(0)).collect(),
                stats,
                broken: crate::sync::stat::AtomicUsize::new(0),
                closed: crate::sync::stat::AtomicUsize::new(0),
            }),
        }
    }
}

/// Why [`Server::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest closed its end (or died).
    GuestGone,
    /// The guest corrupted the rings; the session was ended.
    ProtocolError(String),
    /// [`Server::stop`] was signalled.
    Stopped,
}

/// The host half of one session.
pub struct Server {
    region: StdArc<Region>,
    sq: Consumer<RegionRing<Command>>,
    completer: Completer,
    interrupts: StdArc<Vec<Box<dyn Notify>>>,
    doorbell: EventFd,
    /// Further doorbells (ivshmem: one eventfd per vector the guest may ring).
    extra_doorbells: Vec<EventFd>,
    hangup: Option<std::os::fd::OwnedFd>,
    cfg: ServerConfig,
    stats: &'static ServerStats,
    last_beat: Instant,
    stop: StdArc<EventFd>,
    poll: mio::Poll,
    events: mio::Events,
    /// Epoch mode ([`run_epochs`](Self::run_epochs)): the guest epoch being served, 0 for none.
    epoch: u64,
}

const DOORBELL: mio::Token = mio::Token(0);
const STOP: mio::Token = mio::Token(1);
const HANGUP: mio::Token = mio::Token(2);
/// Tokens from here on are the extra doorbells.
const EXTRA_DOORBELL: usize = 3;

/// How often the heartbeat is bumped (the protocol requires at most 100 ms).
const BEAT: Duration = Duration::from_millis(50);

/// What one serving loop ended with.
enum Step {
    /// The link is over (guest gone, stopped, epoll failed).
    Exit(Exit, HostState),
    /// The guest broke the protocol; the session (not necessarily the link) is over. The flag
    /// says whether the violation was counted in the statistics already.
    Broken(String, bool),
    /// Epoch mode: the guest wrote a new `GUEST_EPOCH` (0: it closed its session).
    NewEpoch(u64),
}

impl Server {
    /// `doorbell` is the host's read side of the guest's doorbell; `interrupts` poke the guest (one
    /// per vector, at least one);
    /// `hangup` (the session socket) becomes readable when the guest goes away.
    pub fn new(
        region: StdArc<Region>,
        doorbell: EventFd,
        interrupts: Vec<Box<dyn Notify>>,
        hangup: Option<std::os::fd::OwnedFd>,
        cfg: ServerConfig,
        stats: &'static ServerStats,
    ) -> std::io::Result<Server> {
        let stop = StdArc::new(EventFd::new()?);
        let poll = mio::Poll::new()?;
        {
            use mio::unix::SourceFd;
            use std::os::fd::AsRawFd;
            let r = poll.registry();
            r.register(&mut SourceFd(&doorbell.raw()), DOORBELL, mio::Interest::READABLE)?;
            r.register(&mut SourceFd(&stop.raw()), STOP, mio::Interest::READABLE)?;
            if let Some(h) = &hangup {
                r.register(&mut SourceFd(&h.as_raw_fd()), HANGUP, mio::Interest::READABLE)?;
            }
        }
        if interrupts.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a server needs at least one interrupt"));
        }
        let interrupts = StdArc::new(interrupts);
        let completer = Completer::new(&region, interrupts.clone(), stats);
        region.atomic_u32(hdr::HOST_STATE).store(HostState::Serving as u32, Ordering::Release);
        stats.state.store(1, Ordering::Relaxed);
        Ok(Server {
            sq: Consumer::new(submission_ring(&region)),
            region,
            completer,
            interrupts,
            doorbell,
            extra_doorbells: Vec::new(),
            hangup,
            cfg,
            stats,
            last_beat: Instant::now(),
            stop,
            poll,
            events: mio::Events::with_capacity(4),
            epoch: 0,
        })
    }

    /// Also wake on `fd` as a doorbell (ivshmem: the guest may ring any of its vectors).
    pub fn add_doorbell(&mut self, fd: EventFd) -> std::io::Result<()> {
        let token = mio::Token(EXTRA_DOORBELL + self.extra_doorbells.len());
        self.poll.registry().register(&mut mio::unix::SourceFd(&fd.raw()), token, mio::Interest::READABLE)?;
        self.extra_doorbells.push(fd);
        Ok(())
    }

    /// A handle that makes [`run`](Self::run) return `Exit::Stopped`.
    pub fn stopper(&self) -> StdArc<EventFd> {
        self.stop.clone()
    }

    pub fn completer(&self) -> &Completer {
        &self.completer
    }

    fn guest_gone(&self) -> bool {
        let Some(s) = &self.hangup else { return false };
        let mut b = [0u8; 64];
        // The guest never sends after the handshake: readable means EOF (gone) or junk (ignored).
        match nix::sys::socket::recv(std::os::fd::AsRawFd::as_raw_fd(s), &mut b, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
            Ok(0) => true,
            Ok(_) => false,
            Err(nix::errno::Errno::EAGAIN) => false,
            Err(nix::errno::Errno::EINTR) => false,
            Err(_) => true,
        }
    }

    fn beat(&mut self) {
        self.last_beat = Instant::now();
        self.region.atomic_u64(hdr::HEARTBEAT).fetch_add(1, Ordering::Release);
        self.stats.guest_spin_hits.store(self.region.atomic_u64(hdr::GUEST_SPIN_HITS).load(Ordering::Relaxed), Ordering::Relaxed);
        self.stats.guest_parks.store(self.region.atomic_u64(hdr::GUEST_PARKS).load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn end(&mut self, exec: &mut dyn Executor, state: HostState, exit: Exit) -> Exit {
        self.region.atomic_u32(hdr::HOST_STATE).store(state as u32, Ordering::Release);
        // Hang up at once, so the guest learns the session is over even if this process lingers.
        if let Some(s) = &self.hangup {
            let _ = nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(s), nix::sys::socket::Shutdown::Both);
        }
        exec.shutdown();
        self.stats.state.store(2, Ordering::Relaxed);
        exit
    }

    /// Serve until the guest goes away, breaks the protocol, or [`stopper`](Self::stopper) fires.
    pub fn run(&mut self, exec: &mut dyn Executor) -> Exit {
        match self.serve(exec, false) {
            Step::Exit(exit, state) => self.end(exec, state, exit),
            Step::Broken(e, _) => self.end(exec, HostState::ProtocolError, Exit::ProtocolError(e)),
            Step::NewEpoch(_) => unreachable!("epochs are only watched in epoch mode"),
        }
    }

    /// The guest's current `GUEST_EPOCH` (ivshmem sessions).
    fn guest_epoch(&self) -> u64 {
        self.region.atomic_u64(hdr::GUEST_EPOCH).load(Ordering::Acquire)
    }

    /// Serve successive guest sessions on one region, told apart by the guest's epoch (the
    /// ivshmem link, where the region, doorbell and interrupts outlive every guest process).
    ///
    /// Whenever the guest's `GUEST_EPOCH` differs from the epoch being served, the current
    /// session is torn down completely (its completer closed, so nothing of it can reach the
    /// ring again; the executor shut down, its threads joined, and dropped), the host's ring
    /// indices are reset, a new executor comes from `new_exec`, and only then is the epoch
    /// published in `HOST_EPOCH` (Release). An epoch of 0 means no session. The heartbeat keeps
    /// ticking the whole time, sessions or not. Returns when the VM goes away (the `hangup`
    /// socket) or [`stopper`](Self::stopper) fires.
    pub fn run_epochs(&mut self, new_exec: &mut dyn FnMut() -> Result<Box<dyn Executor>, String>) -> Exit {
        self.epoch = 0;
        self.region.atomic_u64(hdr::HOST_EPOCH).store(0, Ordering::Release);
        let mut exec: Option<Box<dyn Executor>> = None;
        loop {
            let step = match exec.as_deref_mut() {
                Some(e) => self.serve(e, true),
                None => self.idle(),
            };
            match step {
                Step::Exit(exit, state) => {
                    self.region.atomic_u32(hdr::HOST_STATE).store(state as u32, Ordering::Release);
                    if let Some(e) = exec.take() {
                        self.teardown(e);
                    }
                    self.stats.epoch.store(0, Ordering::Relaxed);
                    self.stats.state.store(2, Ordering::Relaxed);
                    return exit;
                }
                Step::Broken(e, counted) => {
                    // The guest's epoch moving on explains a reset ring (a new guest process
                    // zeroes its indices before it publishes its epoch); anything else is a
                    // real violation. Either way this session is over; the link is not.
                    if !self.epoch_moves_on() {
                        if !counted {
                            self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        warn!(target: "vgpu::server", epoch = self.epoch, "guest broke the protocol: {e}; ending its session");
                    }
                    self.region.atomic_u32(hdr::HOST_STATE).store(HostState::ProtocolError as u32, Ordering::Release);
                    if let Some(x) = exec.take() {
                        self.teardown(x);
                    }
                }
                Step::NewEpoch(e) => {
                    if let Some(x) = exec.take() {
                        info!(target: "vgpu::server", old = self.epoch, new = e, "guest epoch changed; tearing the previous session down");
                        self.teardown(x);
                    }
                    self.epoch = e;
                    self.stats.epoch.store(e, Ordering::Relaxed);
                    if e == 0 {
                        self.region.atomic_u64(hdr::HOST_EPOCH).store(0, Ordering::Release);
                        continue;
                    }
                    let x = match new_exec() {
                        Ok(x) => x,
                        Err(err) => {
                            // HOST_EPOCH stays behind: the guest's handshake times out and
                            // names the mediator; a later epoch tries again.
                            warn!(target: "vgpu::server", epoch = e, "cannot open a session: {err}");
                            self.region.atomic_u32(hdr::HOST_STATE).store(HostState::Closed as u32, Ordering::Release);
                            continue;
                        }
                    };
                    self.reset_rings();
                    let pid = self.region.atomic_u32(hdr::GUEST_PID).load(Ordering::Relaxed);
                    self.stats.guest_pid.store(pid as u64, Ordering::Relaxed);
                    self.stats.guest_sessions.fetch_add(1, Ordering::Relaxed);
                    info!(target: "vgpu::server", epoch = e, guest_pid = pid, "guest session opened");
                    self.region.atomic_u64(hdr::HOST_EPOCH).store(e, Ordering::Release);
                    exec = Some(x);
                }
            }
        }
    }

    /// Whether the guest is switching to a new epoch, allowing it 20 ms to publish it: a new
    /// guest process zeroes its ring indices just before it stores its epoch, and a host that
    /// looks in between sees a corrupt ring that is no violation. It polls: the guest rings no
    /// doorbell between the two stores, and the wait is bounded and rare (a corrupt-looking ring).
    fn epoch_moves_on(&self) -> bool {
        let t = Instant::now();
        loop {
            if self.guest_epoch() != self.epoch {
                return true;
            }
            if t.elapsed() >= Duration::from_millis(20) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// End the current session for good: no completion of it can be posted after the
    /// completer is closed; the executor releases everything and joins its threads.
    fn teardown(&mut self, mut exec: Box<dyn Executor>) {
        self.completer.close();
        exec.shutdown();
        drop(exec);
    }

    /// Start a fresh session on the same region: host indices and flags to zero, a fresh
    /// completer (in-flight markers clear) and submission consumer.
    fn reset_rings(&mut self) {
        let r = &self.region;
        r.atomic_u32(hdr::NEEDS_KICK).store(0, Ordering::Relaxed);
        r.atomic_u32(hdr::SQ_HEAD).store(0, Ordering::Release);
        r.atomic_u32(hdr::CQ_TAIL).store(0, Ordering::Release);
        self.sq = Consumer::new(submission_ring(r));
        self.completer = Completer::new(r, self.interrupts.clone(), self.stats);
        r.atomic_u32(hdr::HOST_STATE).store(HostState::Serving as u32, Ordering::Release);
        self.stats.state.store(1, Ordering::Relaxed);
    }

    /// Epoch mode without a session: keep the heartbeat going, watch the link, and wait for
    /// the guest to publish a new epoch (it rings the doorbell after doing so; the 50 ms
    /// timeout catches a merged or lost doorbell).
    fn idle(&mut self) -> Step {
        loop {
            let e = self.guest_epoch();
            if e != self.epoch {
                return Step::NewEpoch(e);
            }
            if self.last_beat.elapsed() >= BEAT {
                self.beat();
            }
            match self.wait(BEAT) {
                Ok((_, true, _)) => return Step::Exit(Exit::Stopped, HostState::Closed),
                Ok((_, _, true)) if self.guest_gone() => return Step::Exit(Exit::GuestGone, HostState::Closed),
                Ok(_) => {}
                Err(e) => {
                    warn!(target: "vgpu::server", "epoll: {e}; ending the link");
                    return Step::Exit(Exit::Stopped, HostState::Closed);
                }
            }
        }
    }

    /// Sleep on the doorbells, the stop fd and the hang-up socket for at most `timeout`.
    /// Returns `(doorbell, stop, maybe hung up)`; a timeout counts as "maybe hung up" so that a
    /// vanished guest is noticed within one timeout. Doorbells are drained here.
    fn wait(&mut self, timeout: Duration) -> std::io::Result<(bool, bool, bool)> {
        let (mut bell, mut stop, mut hup) = (false, false, false);
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {
                for ev in self.events.iter() {
                    match ev.token() {
                        DOORBELL => bell = true,
                        STOP => stop = true,
                        HANGUP => hup = true,
                        _ => bell = true,
                    }
                }
                hup |= self.events.is_empty();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if bell {
            self.doorbell.drain();
            for d in &self.extra_doorbells {
                d.drain();
            }
            self.stats.doorbell_wakeups.fetch_add(1, Ordering::Relaxed);
        }
        Ok((bell, stop, hup))
    }

    /// The serving loop of one session. With `epochs`, a change of the guest's epoch ends it.
    fn serve(&mut self, exec: &mut dyn Executor, epochs: bool) -> Step {
        let mut last_work = Instant::now();
        let mut polls: u32 = 0;
        loop {
            if epochs {
                let e = self.guest_epoch();
                if e != self.epoch {
                    return Step::NewEpoch(e);
                }
            }
            let n = match self.drain(exec) {
                Ok(n) => n,
                Err(e) => {
                    if !epochs {
                        self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(target: "vgpu::server", "guest broke the protocol: {e}; ending the session");
                    }
                    return Step::Broken(e, !epochs);
                }
            };
            if self.completer.inner.broken.load(Ordering::SeqCst) != 0 {
                return Step::Broken("completion ring corrupt".into(), true);
            }
            if self.last_beat.elapsed() >= BEAT {
                self.beat();
            }
            polls = polls.wrapping_add(1);
            if n > 0 {
                last_work = Instant::now();
                if polls.is_multiple_of(4096) && self.guest_gone() {
                    return Step::Exit(Exit::GuestGone, HostState::Closed);
                }
                continue;
            }
            if !self.cfg.spin.is_zero() && last_work.elapsed() < self.cfg.spin {
                std::hint::spin_loop();
                continue;
            }
            // Idle: arm "needs kick", re-check, sleep on the doorbell.
            match self.sq.arm() {
                Ok(false) => {
                    self.stats.spin_hits.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(true) => {}
                Err(e) => {
                    if !epochs {
                        self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return Step::Broken(e.to_string(), !epochs);
                }
            }
            self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
            // epoll, registered once (cheaper per sleep than poll(2) over three fds). A timeout
            // also looks at the socket, so a guest that vanished is noticed within 50 ms.
            let woke = self.wait(BEAT);
            self.sq.disarm();
            match woke {
                Ok((_, true, _)) => return Step::Exit(Exit::Stopped, HostState::Closed),
                Ok((_, _, true)) if self.guest_gone() => return Step::Exit(Exit::GuestGone, HostState::Closed),
                Ok(_) => {}
                Err(e) => {
                    warn!(target: "vgpu::server", "epoll: {e}; ending the session");
                    return Step::Exit(Exit::Stopped, HostState::Closed);
                }
            }
            last_work = Instant::now();
        }
    }

    /// Validate and dispatch every command the guest has published, once, then publish the
    /// completions produced, without the serving loop's sleeping, heartbeat or hang-up watch.
    /// For the fuzz harness (`fuzz/`), which drives a server in-process. `Err` is a ring
    /// violation that would end the session.
    #[doc(hidden)]
    pub fn drain_once(&mut self, exec: &mut dyn Executor) -> Result<usize, String> {
        let n = self.drain(exec)?;
        if self.completer.inner.broken.load(Ordering::SeqCst) != 0 {
            return Err("completion ring corrupt".into());
        }
        Ok(n)
    }

    fn drain(&mut self, exec: &mut dyn Executor) -> Result<usize, String> {
        let mut n = 0;
        let mask = self.completer.inner.inflight.len() as u64 - 1;
        while let Some(cmd) = self.sq.pop().map_err(|e| e.to_string())? {
            n += 1;
            self.stats.commands.fetch_add(1, Ordering::Relaxed);
            if cmd.flags & cmd_flags::BLOCKING != 0 {
                self.stats.blocking_calls.fetch_add(1, Ordering::Relaxed);
            }
            let reply = |status: Status| Completion { seq: cmd.seq, status: status as u32, aux: 0, result: [0, 0] };
            // Claim the sequence number first, so that every later reply for this command
            // (whatever it says) releases exactly its own marker and never another's.
            let slot = &self.completer.inner.inflight[(cmd.seq & mask) as usize];
            if cmd.seq >= MAX_SEQ || slot.compare_exchange(0, cmd.seq + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                self.completer.stage_unclaimed(reply(Status::SeqInUse));
                continue;
            }
            let Some(call) = Call::from_u16(cmd.call) else {
                debug!(target: "vgpu::server", seq = cmd.seq, call = cmd.call, "unknown call");
                self.completer.stage(reply(Status::UnknownCall));
                continue;
            };
            if cmd.flags & !cmd_flags::KNOWN != 0
                || (!call.stream_ordered() && cmd.stream != 0)
                || cmd.args[call.arg_count()..].iter().any(|&a| a != 0)
            {
                self.completer.stage(reply(Status::InvalidArgument));
                continue;
            }
            debug!(target: "vgpu::server", seq = cmd.seq, call = call.name(), stream = cmd.stream, args = ?cmd.args, "command");
            let completed_now = exec.execute(&cmd, call, &self.completer).map(|c| self.completer.stage(c)).is_some();
            // Cheap commands are published in batches of 64; a command that moved data was slow
            // enough that holding its completion back would stall the guest's copy pipeline.
            if n % 64 == 0 || (completed_now && call.moves_data()) {
                self.completer.flush();
                if self.last_beat.elapsed() >= BEAT {
                    self.beat();
                }
            }
        }
        self.completer.flush();
        Ok(n)
    }
}
