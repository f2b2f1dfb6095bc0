//! The host half: drain the submission ring, validate and dispatch, post completions, raise the
//! interrupt only when the guest armed it, and sleep on the doorbell when idle.
//!
//! The server trusts nothing in the region. Ring indices are range-checked (a corrupt index ends
//! the session with `HostState::ProtocolError`, it never causes an out-of-range access); every
//! command is copied out by value before it is looked at; unknown call ids, unknown flag bits and
//! sequence numbers already in flight get error completions. What a call's arguments mean is
//! checked by the [`Executor`].

use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

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
    pub _reserved: [AtomicU64; 9],
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
    interrupts: Vec<Box<dyn Notify>>,
    inflight: Box<[AtomicU64]>,
    stats: &'static ServerStats,
    broken: crate::sync::stat::AtomicUsize,
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
            if !cq.has_unpublished() {
                return;
            }
            cq.publish_and_flag()
        };
        self.kicked(kick);
    }

    fn write(&self, cq: &mut Producer<RegionRing<Completion>>, c: &Completion, claimed: bool) {
        let i = &self.inner;
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
    doorbell: EventFd,
    hangup: Option<std::os::fd::OwnedFd>,
    cfg: ServerConfig,
    stats: &'static ServerStats,
    last_beat: Instant,
    stop: StdArc<EventFd>,
    poll: mio::Poll,
    events: mio::Events,
}

const DOORBELL: mio::Token = mio::Token(0);
const STOP: mio::Token = mio::Token(1);
const HANGUP: mio::Token = mio::Token(2);

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
        let depth = region.layout().sq_depth;
        let completer = Completer {
            inner: StdArc::new(CompleterInner {
                cq: Mutex::new(Producer::new(completion_ring(&region))),
                interrupts,
                inflight: (0..depth).map(|_| AtomicU64::new(0)).collect(),
                stats,
                broken: crate::sync::stat::AtomicUsize::new(0),
            }),
        };
        region.atomic_u32(hdr::HOST_STATE).store(HostState::Serving as u32, Ordering::Release);
        stats.state.store(1, Ordering::Relaxed);
        Ok(Server {
            sq: Consumer::new(submission_ring(&region)),
            region,
            completer,
            doorbell,
            hangup,
            cfg,
            stats,
            last_beat: Instant::now(),
            stop,
            poll,
            events: mio::Events::with_capacity(4),
        })
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
        let mut last_work = Instant::now();
        let mut polls: u32 = 0;
        loop {
            let n = match self.drain(exec) {
                Ok(n) => n,
                Err(e) => {
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(target: "vgpu::server", "guest broke the protocol: {e}; ending the session");
                    return self.end(exec, HostState::ProtocolError, Exit::ProtocolError(e));
                }
            };
            if self.completer.inner.broken.load(Ordering::SeqCst) != 0 {
                return self.end(exec, HostState::ProtocolError, Exit::ProtocolError("completion ring corrupt".into()));
            }
            if self.last_beat.elapsed() >= Duration::from_millis(50) {
                self.beat();
            }
            polls = polls.wrapping_add(1);
            if n > 0 {
                last_work = Instant::now();
                if polls.is_multiple_of(4096) && self.guest_gone() {
                    return self.end(exec, HostState::Closed, Exit::GuestGone);
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
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    return self.end(exec, HostState::ProtocolError, Exit::ProtocolError(e.to_string()));
                }
            }
            self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
            // epoll, registered once (cheaper per sleep than poll(2) over three fds). A timeout
            // also looks at the socket, so a guest that vanished is noticed within 50 ms.
            let (mut bell, mut stop, mut hup) = (false, false, false);
            match self.poll.poll(&mut self.events, Some(Duration::from_millis(50))) {
                Ok(()) => {
                    for ev in self.events.iter() {
                        match ev.token() {
                            DOORBELL => bell = true,
                            STOP => stop = true,
                            _ => hup = true,
                        }
                    }
                    hup |= self.events.is_empty();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(target: "vgpu::server", "epoll: {e}; ending the session");
                    return self.end(exec, HostState::Closed, Exit::Stopped);
                }
            }
            self.sq.disarm();
            if bell {
                self.doorbell.drain();
                self.stats.doorbell_wakeups.fetch_add(1, Ordering::Relaxed);
            }
            if stop {
                return self.end(exec, HostState::Closed, Exit::Stopped);
            }
            if hup && self.guest_gone() {
                return self.end(exec, HostState::Closed, Exit::GuestGone);
            }
            last_work = Instant::now();
        }
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
                if self.last_beat.elapsed() >= Duration::from_millis(50) {
                    self.beat();
                }
            }
        }
        self.completer.flush();
        Ok(n)
    }
}
