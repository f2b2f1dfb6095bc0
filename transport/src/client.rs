//! The guest half: submission, in-flight slots, the reactor thread, and the three ways to call.
//!
//! - [`Client::call`] returns a future (runtime-agnostic: it only uses the `Waker` it is given);
//! - [`Client::call_blocking`] spins adaptively on its own slot (draining completions itself while
//!   it does), then parks;
//! - [`Client::fire`] submits and forgets; a failure is kept as a deferred (sticky) error, returned
//!   by [`Client::take_deferred_error`] at the next synchronising call of the layer above.
//!
//! Each has a typed form (`call_req`, `call_blocking_req`, `submit_req`, `fire_req`, ...) that
//! takes a [`crate::wire::req`] request and yields its [`crate::wire::reply`]; guest code uses
//! those. The positional forms take raw argument words, for tests that send malformed commands.
//!
//! # The completion role
//! Completions are drained by whoever holds the completion-ring lock: the reactor thread after an
//! interrupt, or a blocked caller while it spins. The holder clears "wants interrupt" while it
//! drains and, before it lets go, arms the flag and re-checks the ring (check-after-arm), so the
//! reactor's sleep never misses a completion. Only the holder completes slots.
//!
//! # Liveness
//! The reactor watches the link (socket hang-up on `direct`, heartbeat on `ivshmem`). When the
//! host is gone it marks the client down and completes every in-flight slot with `LinkDown`; a
//! submitter checks the mark after taking its slot (SeqCst on both sides), so no call can slip in
//! unfailed. Every park has a 100 ms timeout that re-checks the mark. Nothing waits forever.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::notify::Notify;
use crate::region::Region;
use crate::ring::{completion_ring, submission_ring, Consumer, Producer, RegionRing};
use crate::slots::{Delivered, Outcome, Slots};
use crate::sync::stat::AtomicU64 as StatU64;
use crate::sync::{lock, try_lock, Mutex, Ordering};
use crate::window::Staging;
use crate::wire::{cmd_flags, hdr, req, Call, CallReply, CallRequest, Command, Completion, Status, Win};
use crate::{Error, Result};

/// How a blocked caller waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpinPolicy {
    /// Park at once; completion arrives by interrupt only.
    Never,
    /// Spin on the slot (draining completions) for up to `max`, adapting: the budget halves after
    /// a spin that failed and resets to `max` after one that succeeded.
    Adaptive { max: Duration },
}

/// Client settings.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    pub spin: SpinPolicy,
    /// Requested data-window size (0: the host's default).
    pub window_len: u64,
    /// Requested ring depth (0: the host's default).
    pub depth: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { spin: SpinPolicy::Adaptive { max: Duration::from_micros(50) }, window_len: 0, depth: 0 }
    }
}

/// Watches the host's liveness for the reactor.
pub trait LinkWatch: Send + Sync + 'static {
    /// An fd that becomes readable (or hangs up) when the host may be gone.
    fn fd(&self) -> Option<RawFd>;
    /// Decide: `Err(reason)` if the host is gone. Called when `fd` fires and every
    /// [`interval`](Self::interval).
    fn check(&self) -> std::result::Result<(), String>;
    /// Decide from the region header (links without a hang-up signal: the ivshmem heartbeat).
    /// Called with [`check`](Self::check).
    fn check_region(&self, _region: &Region) -> std::result::Result<(), String> {
        Ok(())
    }
    /// How often the reactor calls the checks when nothing else wakes it.
    fn interval(&self) -> Duration {
        Duration::from_millis(100)
    }
    /// The client is being dropped: release the session in the header if the link has such a
    /// notion (ivshmem: `GUEST_EPOCH` back to 0). Returns whether to ring the host about it.
    fn on_close(&self, _region: &Region) -> bool {
        false
    }
}

/// Client-side counters (process-local).
#[derive(Debug, Default)]
pub struct ClientStats {
    pub calls: StatU64,
    pub blocking_waits: StatU64,
    pub doorbells: StatU64,
    pub interrupts: StatU64,
    pub spin_hits: StatU64,
    pub spin_misses: StatU64,
    pub parks: StatU64,
    pub completions: StatU64,
    pub deferred_errors: StatU64,
}

/// Work that the completing thread runs for one call *before* the call counts as done (before
/// its waiter can see the result, before a later sync on the same stream can return). It gets
/// the shared region (to read window bytes the host wrote), the staging chunks (to give one
/// back) and whether the host completed the call with `Ok`. It runs exactly once: on the
/// completion, when the link fails, or at once if the call could not be submitted. It runs with
/// the completion role held, so it must be short and must not call back into the client (no
/// submissions, no waits).
pub type OnComplete = Box<dyn FnOnce(&Region, &Staging, bool) + Send>;

/// How long a bulk-copy pipeline spins for its next chunk before it sleeps (a 1 MiB chunk takes
/// about 50 µs to copy here).
const BULK_SPIN_NS: u64 = 500_000;

/// The completion action stored for one slot, with the seq it belongs to.
type ActionSlot = std::sync::Mutex<Option<(u64, OnComplete)>>;

/// Statuses from here up are generated by the guest only; the host never sends them.
const GUEST_LOCAL_STATUS: u32 = 0xffff_0000;

struct Inner {
    region: StdArc<Region>,
    sq: Mutex<Producer<RegionRing<Command>>>,
    cq: Mutex<Consumer<RegionRing<Completion>>>,
    slots: Slots,
    calls: Box<[StatU64]>,
    doorbell: Box<dyn Notify>,
    down_reason: std::sync::Mutex<Option<Error>>,
    deferred: std::sync::Mutex<Option<Error>>,
    stats: ClientStats,
    /// Per slot: the completion action of the call in flight there, with its seq.
    actions: Box<[ActionSlot]>,
    spin_max_ns: u64,
    spin_budget_ns: StatU64,
    staging: Staging,
    shutdown: crate::sync::AtomicBool,
    /// Interrupt vector 0: the reactor sleeps on it.
    irq: OwnedFd,
    /// Interrupt vector 1: a blocked caller that holds the completion role sleeps on it directly
    /// (`WANTS_INTERRUPT` = 2), which saves the hop through the reactor and does not wake it.
    irq_waiter: OwnedFd,
}

/// A connected guest session. Cheap to share behind `&`; all methods are thread-safe.
pub struct Client {
    inner: StdArc<Inner>,
    reactor: Option<JoinHandle<()>>,
    wake_reactor: StdArc<crate::notify::EventFd>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("region", &self.inner.region).finish()
    }
}

impl Client {
    /// Build a client over an established link and start its reactor thread.
    pub fn from_parts(
        region: Region,
        doorbell: Box<dyn Notify>,
        interrupts: [OwnedFd; 2],
        watch: Box<dyn LinkWatch>,
        cfg: ClientConfig,
    ) -> Result<Client> {
        let [irq, irq_waiter] = interrupts;
        let region = StdArc::new(region);
        let depth = region.layout().sq_depth;
        let window_len = region.layout().window_len;
        let spin_max_ns = match cfg.spin {
            SpinPolicy::Never => 0,
            SpinPolicy::Adaptive { max } => max.as_nanos() as u64,
        };
        let inner = StdArc::new(Inner {
            sq: Mutex::new(Producer::new(submission_ring(&region))),
            cq: Mutex::new(Consumer::new(completion_ring(&region))),
            slots: Slots::new(depth),
            calls: (0..depth).map(|_| StatU64::new(0)).collect(),
            actions: (0..depth).map(|_| std::sync::Mutex::new(None)).collect(),
            region,
            doorbell,
            down_reason: std::sync::Mutex::new(None),
            deferred: std::sync::Mutex::new(None),
            stats: ClientStats::default(),
            spin_max_ns,
            spin_budget_ns: StatU64::new(spin_max_ns),
            staging: Staging::new(window_len),
            shutdown: crate::sync::AtomicBool::new(false),
            irq,
            irq_waiter,
        });
        let wake_reactor = StdArc::new(crate::notify::EventFd::new().map_err(|e| Error::Setup(format!("eventfd: {e}")))?);
        let (i2, w2) = (inner.clone(), wake_reactor.clone());
        let reactor = std::thread::Builder::new()
            .name("vgpu-reactor".into())
            .spawn(move || reactor(i2, watch, w2))
            .map_err(|e| Error::Setup(format!("spawning the reactor thread: {e}")))?;
        Ok(Client { inner, reactor: Some(reactor), wake_reactor })
    }

    /// The shared region (for window access).
    pub fn region(&self) -> &Region {
        &self.inner.region
    }

    /// The staging chunks of the data window.
    pub fn staging(&self) -> &Staging {
        &self.inner.staging
    }

    /// Client counters.
    pub fn stats(&self) -> &ClientStats {
        &self.inner.stats
    }

    /// `Ok` while the host is reachable; the reason it is gone otherwise.
    pub fn check_alive(&self) -> Result<()> {
        self.inner.check_alive()
    }

    /// Raw (positional argument words; for tests that send malformed commands): submit a call
    /// and return a future for its result. Its sequence number and slot are taken
    /// on first poll (waiting for a slot if all are busy); dropping the future after submission
    /// detaches the call (fire-and-forget).
    pub fn call(&self, call: Call, stream: u32, args: [u64; 6]) -> CallFuture {
        CallFuture { inner: self.inner.clone(), seq: None, call, stream, args, state: FutState::Acquiring }
    }

    /// Raw: submit a call and block until it completes (a blocking round trip).
    pub fn call_blocking(&self, call: Call, stream: u32, args: [u64; 6]) -> Result<[u64; 2]> {
        self.inner.stats.blocking_waits.fetch_add(1, Ordering::Relaxed);
        let t = self.submit_flags(call, stream, args, cmd_flags::BLOCKING)?;
        t.wait()
    }

    /// Raw: submit a call without waiting; wait later with [`Ticket::wait`] or `.await`.
    pub fn submit(&self, call: Call, stream: u32, args: [u64; 6]) -> Result<Ticket> {
        self.submit_flags(call, stream, args, 0)
    }

    /// Raw: submit and forget. A failure becomes the deferred error.
    pub fn fire(&self, call: Call, stream: u32, args: [u64; 6]) -> Result<()> {
        self.submit(call, stream, args).map(drop)
    }

    /// Raw: submit a call with a completion action (see [`OnComplete`]), without waiting.
    pub fn submit_then(&self, call: Call, stream: u32, args: [u64; 6], then: OnComplete) -> Result<Ticket> {
        self.submit_inner(call, stream, args, 0, Some(then))
    }

    /// Raw: submit a call with a completion action and forget it; a failure becomes the deferred
    /// error.
    pub fn fire_then(&self, call: Call, stream: u32, args: [u64; 6], then: OnComplete) -> Result<()> {
        self.submit_then(call, stream, args, then).map(drop)
    }

    /// [`Client::call`] with a typed request; the future yields the typed reply.
    pub async fn call_req<R: CallRequest>(&self, stream: u32, r: R) -> Result<R::Reply> {
        let words = self.call(R::CALL, stream, r.encode()).await?;
        decode_reply::<R::Reply>(R::CALL, words)
    }

    /// [`Client::call_blocking`] with a typed request and reply.
    pub fn call_blocking_req<R: CallRequest>(&self, stream: u32, r: R) -> Result<R::Reply> {
        let words = self.call_blocking(R::CALL, stream, r.encode())?;
        decode_reply::<R::Reply>(R::CALL, words)
    }

    /// [`Client::submit`] with a typed request; wait with [`Ticket::wait_reply`].
    pub fn submit_req<R: CallRequest>(&self, stream: u32, r: R) -> Result<Ticket> {
        self.submit(R::CALL, stream, r.encode())
    }

    /// [`Client::fire`] with a typed request.
    pub fn fire_req<R: CallRequest>(&self, stream: u32, r: R) -> Result<()> {
        self.fire(R::CALL, stream, r.encode())
    }

    /// [`Client::submit_then`] with a typed request.
    pub fn submit_then_req<R: CallRequest>(&self, stream: u32, r: R, then: OnComplete) -> Result<Ticket> {
        self.submit_then(R::CALL, stream, r.encode(), then)
    }

    /// [`Client::fire_then`] with a typed request.
    pub fn fire_then_req<R: CallRequest>(&self, stream: u32, r: R, then: OnComplete) -> Result<()> {
        self.fire_then(R::CALL, stream, r.encode(), then)
    }

    fn submit_flags(&self, call: Call, stream: u32, args: [u64; 6], flags: u16) -> Result<Ticket> {
        self.submit_inner(call, stream, args, flags, None)
    }

    fn submit_inner(&self, call: Call, stream: u32, args: [u64; 6], flags: u16, then: Option<OnComplete>) -> Result<Ticket> {
        let seq = self.inner.slots.next_seq();
        if let Err(e) = self.inner.acquire_blocking(seq) {
            if let Some(a) = then {
                a(&self.inner.region, &self.inner.staging, false);
            }
            return Err(e);
        }
        let has_action = then.is_some();
        if let Some(a) = then {
            *lock_std(&self.inner.actions[self.inner.slot_index(seq)]) = Some((seq, a));
        }
        if let Err(e) = self.inner.publish(seq, call, stream, args, flags) {
            // Not published: nobody else will run the action.
            if has_action {
                if let Some(a) = self.inner.take_action(seq) {
                    a(&self.inner.region, &self.inner.staging, false);
                }
            }
            return Err(e);
        }
        Ok(Ticket { inner: self.inner.clone(), seq, call, done: false })
    }

    /// The first deferred error of fire-and-forget work since the last call, clearing it.
    pub fn take_deferred_error(&self) -> Option<Error> {
        lock_std(&self.inner.deferred).take()
    }

    /// Take a free staging chunk. If none is free, spin for a while taking the completion role
    /// (draining completions, whose actions give chunks back) before sleeping until one is
    /// released: a bulk-copy loop gets its next chunk without a thread wake-up per chunk.
    pub fn acquire_staging(&self) -> Result<u64> {
        let i = &self.inner;
        if let Some(o) = i.staging.try_acquire() {
            return Ok(o);
        }
        if i.spin_max_ns > 0 {
            if let Some(mut cq) = try_lock(&i.cq) {
                let deadline = Instant::now() + Duration::from_nanos(BULK_SPIN_NS);
                cq.disarm();
                let got = loop {
                    i.drain(&mut cq);
                    if let Some(o) = i.staging.try_acquire() {
                        break Some(o);
                    }
                    if i.is_down() || Instant::now() >= deadline {
                        break None;
                    }
                    std::hint::spin_loop();
                };
                i.rearm(&mut cq);
                if let Some(o) = got {
                    return Ok(o);
                }
            }
        }
        i.staging.acquire(|| i.check_alive())
    }

    /// Copy `src` to device address `dst` through the window, pipelined over staging chunks,
    /// ordered on `stream`. Returns when the host has consumed every byte.
    pub fn copy_to_device(&self, dst: u64, src: &[u8], stream: u32) -> Result<()> {
        let chunk = self.inner.staging.chunk_len() as usize;
        let mut inflight: std::collections::VecDeque<(Ticket, u64)> = std::collections::VecDeque::new();
        let mut first_err = None;
        for (i, piece) in src.chunks(chunk).enumerate() {
            let off = match self.inner.staging.try_acquire() {
                Some(o) => o,
                None => {
                    if let Some((t, o)) = inflight.pop_front() {
                        let r = t.wait_chunk();
                        self.inner.staging.release(o);
                        if let Err(e) = r {
                            first_err.get_or_insert(e);
                            break;
                        }
                    }
                    self.inner.staging.acquire(|| self.inner.check_alive())?
                }
            };
            self.inner.region.write_window(off, piece)?;
            let d = dst.wrapping_add((i * chunk) as u64);
            match self.submit_req(stream, req::MemcpyHtoD { dst: d, src: Win::new(off, piece.len() as u64) }) {
                Ok(t) => inflight.push_back((t, off)),
                Err(e) => {
                    self.inner.staging.release(off);
                    first_err.get_or_insert(e);
                    break;
                }
            }
        }
        for (t, o) in inflight {
            let r = t.wait_chunk();
            self.inner.staging.release(o);
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Copy from device address `src` into `dst` through the window, pipelined, ordered on
    /// `stream`. Every byte is in `dst` when this returns.
    pub fn copy_from_device(&self, src: u64, dst: &mut [u8], stream: u32) -> Result<()> {
        let chunk = self.inner.staging.chunk_len() as usize;
        let mut inflight: std::collections::VecDeque<(Ticket, u64, usize, usize)> = std::collections::VecDeque::new();
        let mut first_err = None;
        let total = dst.len();
        let mut pos = 0usize;
        loop {
            // Keep every staging chunk busy, then retire the oldest.
            while pos < total {
                let Some(off) = self.inner.staging.try_acquire() else { break };
                let len = chunk.min(total - pos);
                match self.submit_req(stream, req::MemcpyDtoH { src: src.wrapping_add(pos as u64), dst: Win::new(off, len as u64) }) {
                    Ok(t) => inflight.push_back((t, off, pos, len)),
                    Err(e) => {
                        self.inner.staging.release(off);
                        first_err.get_or_insert(e);
                        pos = total;
                        break;
                    }
                }
                pos += len;
            }
            let Some((t, off, at, len)) = inflight.pop_front() else {
                if pos < total {
                    let o = self.inner.staging.acquire(|| self.inner.check_alive())?;
                    self.inner.staging.release(o);
                    continue;
                }
                break;
            };
            match t.wait_chunk() {
                Ok(_) => {
                    if let Err(e) = self.inner.region.read_window(off, &mut dst[at..at + len]) {
                        first_err.get_or_insert(e);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    pos = total;
                }
            }
            self.inner.staging.release(off);
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.wake_reactor.signal();
        if let Some(h) = self.reactor.take() {
            let _ = h.join();
        }
    }
}

fn lock_std<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: StdArc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &StdArc<Self>) {
        self.0.unpark();
    }
}

/// Decode the result words of a completed `call` as its typed reply; a reply that breaks the
/// call table is the host's protocol error.
pub fn decode_reply<R: CallReply>(call: Call, result: [u64; 2]) -> Result<R> {
    R::decode(result).map_err(|_| Error::Protocol(format!("the host answered {call:?} with malformed results {result:#x?}")))
}

fn to_result(inner: &Inner, call: Call, o: Outcome) -> Result<[u64; 2]> {
    match Status::from_u32(o.status) {
        Status::Ok => Ok(o.result),
        // Only `fail` produces these (the host cannot send them: see `deliver`).
        Status::LinkDown | Status::Protocol => Err(inner.down_error()),
        // Our sequence numbers are never reused while in flight, so this is the host's fault.
        Status::SeqInUse => Err(Error::Protocol(format!("the host answered {call:?} with SeqInUse"))),
        // A DeviceError's code travels in result[0] inside the guest (see `deliver`).
        Status::DeviceError => Err(Error::Call { call, status: Status::DeviceError, code: o.result[0] as u32 }),
        status => Err(Error::Call { call, status, code: 0 }),
    }
}

impl Inner {
    fn slot_index(&self, seq: u64) -> usize {
        (seq & (self.slots.depth() - 1)) as usize
    }

    /// Take the completion action stored for `seq`, if any (and only if it is `seq`'s).
    fn take_action(&self, seq: u64) -> Option<OnComplete> {
        let mut a = lock_std(&self.actions[self.slot_index(seq)]);
        match a.take() {
            Some((s, f)) if s == seq => Some(f),
            other => {
                *a = other;
                None
            }
        }
    }

    fn is_down(&self) -> bool {
        self.slots.is_closed()
    }

    fn down_error(&self) -> Error {
        lock_std(&self.down_reason).clone().unwrap_or_else(|| Error::LinkDown("the link is closed".into()))
    }

    fn check_alive(&self) -> Result<()> {
        if self.is_down() {
            Err(self.down_error())
        } else {
            Ok(())
        }
    }

    /// Mark the link down and fail everything in flight. Caller holds the completion role.
    fn fail(&self, cq: &mut Consumer<RegionRing<Completion>>, why: Error) {
        let _ = cq;
        {
            let mut r = lock_std(&self.down_reason);
            if r.is_none() {
                if self.shutdown.load(Ordering::SeqCst) {
                    debug!(target: "vgpu::transport", "client closed");
                } else {
                    warn!(target: "vgpu::transport", "link down: {why}");
                }
                *r = Some(why.clone());
            }
        }
        let in_flight = self.slots.close();
        let status = match why {
            Error::Protocol(_) => Status::Protocol,
            _ => Status::LinkDown,
        };
        for seq in in_flight {
            if let Some(a) = self.take_action(seq) {
                a(&self.region, &self.staging, false);
            }
            let _ = self.slots.complete(seq, status as u32, [0, 0]);
        }
        self.slots.wake_all_acquirers();
    }

    fn acquire_blocking(&self, seq: u64) -> Result<()> {
        if self.slots.try_acquire(seq) {
            return self.after_acquire(seq);
        }
        let waker = Waker::from(StdArc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if self.slots.poll_acquire(seq, &mut cx).is_ready() {
                return self.after_acquire(seq);
            }
            if self.is_down() {
                // The slot chain is dead with the link; nothing will reuse it.
                return Err(self.down_error());
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
    }

    fn after_acquire(&self, seq: u64) -> Result<()> {
        // The close handshake (`Slots::close` / `Slots::confirm`, modelled in loom).
        if !self.slots.confirm(seq) {
            return Err(self.down_error());
        }
        Ok(())
    }

    fn publish(&self, seq: u64, call: Call, stream: u32, args: [u64; 6], flags: u16) -> Result<()> {
        let cmd = Command { seq, call: call as u16, flags, stream, args };
        self.calls[(seq & (self.slots.depth() - 1)) as usize].store(call as u64, Ordering::Relaxed);
        let kick = {
            let mut sq = lock(&self.sq);
            if let Err(e) = sq.push(cmd) {
                // At most `depth` commands are in flight, so a full submission ring means the
                // host corrupted its consumer index: the link is unusable.
                drop(sq);
                self.slots.abandon(seq);
                let err = Error::Protocol(format!("submission ring: {e}"));
                let mut cq = lock(&self.cq);
                self.fail(&mut cq, err.clone());
                return Err(err);
            }
            sq.publish_and_check()
        };
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        debug!(target: "vgpu::transport", seq, call = call.name(), stream, ?args, "submit");
        if kick {
            self.stats.doorbells.fetch_add(1, Ordering::Relaxed);
            self.doorbell.notify();
        }
        Ok(())
    }

    /// Drain the completion ring. Caller holds the completion role.
    fn drain(&self, cq: &mut Consumer<RegionRing<Completion>>) -> usize {
        let mut n = 0;
        loop {
            match cq.pop() {
                Ok(Some(c)) => {
                    n += 1;
                    self.deliver(cq, c);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(cq, Error::Protocol(format!("completion ring: {e}")));
                    break;
                }
            }
        }
        if n > 0 {
            self.stats.completions.fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }

    fn deliver(&self, cq: &mut Consumer<RegionRing<Completion>>, c: Completion) {
        debug!(target: "vgpu::transport", seq = c.seq, status = Status::from_u32(c.status).name(), "complete");
        if c.status >= GUEST_LOCAL_STATUS {
            self.fail(cq, Error::Protocol(format!("the host sent the guest-local status {:#x} for seq {}", c.status, c.seq)));
            return;
        }
        // The action runs before the slot is marked done, so whoever waits for this call (or
        // for later work behind it) sees its effects. A stale seq finds no action of its own.
        if let Some(a) = self.take_action(c.seq) {
            a(&self.region, &self.staging, c.status == Status::Ok as u32);
        }
        // A failed command has no results; a DeviceError's CUresult (in `aux`) takes result[0]'s
        // place so the slot carries it to the caller or the deferred error.
        let result = if c.status == Status::DeviceError as u32 { [c.aux as u64, 0] } else { c.result };
        match self.slots.complete(c.seq, c.status, result) {
            Ok(Delivered::ToWaiter) => {}
            Ok(Delivered::Detached(o)) => {
                if o.status != Status::Ok as u32 && o.status != Status::NotReady as u32 {
                    let call = Call::from_u16(self.calls[(c.seq & (self.slots.depth() - 1)) as usize].load(Ordering::Relaxed) as u16)
                        .unwrap_or(Call::Nop);
                    self.record_deferred(to_result(self, call, o).unwrap_err());
                }
            }
            Err(stale) => self.fail(cq, Error::Protocol(stale.to_string())),
        }
    }

    fn record_deferred(&self, e: Error) {
        self.stats.deferred_errors.fetch_add(1, Ordering::Relaxed);
        debug!(target: "vgpu::transport", "deferred error: {e}");
        lock_std(&self.deferred).get_or_insert(e);
    }

    /// Give back the completion role: drain, arm, re-check until the ring stays empty.
    fn rearm(&self, cq: &mut Consumer<RegionRing<Completion>>) {
        loop {
            match cq.arm() {
                Ok(true) => return,
                Ok(false) => {
                    self.drain(cq);
                }
                Err(e) => {
                    self.fail(cq, Error::Protocol(format!("completion ring: {e}")));
                    return;
                }
            }
        }
    }

    /// Wait for `seq`: spin (draining completions) within the adaptive budget, raised to
    /// `floor_ns` for waits known to be short (a bulk-copy pipeline waiting for its next chunk),
    /// then sleep on the interrupt. With `SpinPolicy::Never` nothing spins.
    fn wait_blocking(&self, seq: u64, floor_ns: u64) -> Outcome {
        let adaptive = self.spin_budget_ns.load(Ordering::Relaxed);
        let budget = if self.spin_max_ns == 0 { 0 } else { adaptive.max(floor_ns) };
        if budget > 0 {
            let start = Instant::now();
            let deadline = start + Duration::from_nanos(budget);
            let got = if let Some(mut cq) = try_lock(&self.cq) {
                cq.disarm();
                let got = loop {
                    self.drain(&mut cq);
                    if let Some(o) = self.slots.try_take(seq) {
                        break Some(o);
                    }
                    if Instant::now() >= deadline {
                        break None;
                    }
                    std::hint::spin_loop();
                };
                self.rearm(&mut cq);
                got
            } else {
                loop {
                    if let Some(o) = self.slots.try_take(seq) {
                        break Some(o);
                    }
                    if Instant::now() >= deadline {
                        break None;
                    }
                    std::hint::spin_loop();
                }
            };
            if let Some(o) = got {
                self.stats.spin_hits.fetch_add(1, Ordering::Relaxed);
                self.spin_budget_ns.store(self.spin_max_ns, Ordering::Relaxed);
                return o;
            }
            self.stats.spin_misses.fetch_add(1, Ordering::Relaxed);
            self.spin_budget_ns.store((adaptive / 2).max(2_000.min(self.spin_max_ns)), Ordering::Relaxed);
        }
        if let Some(o) = self.wait_on_interrupt(seq) {
            return o;
        }
        let waker = Waker::from(StdArc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(o) = self.slots.poll_result(seq, &mut cx) {
                return o;
            }
            self.stats.parks.fetch_add(1, Ordering::Relaxed);
            std::thread::park_timeout(Duration::from_millis(100));
            if self.is_down() {
                // If the failer's scan missed this slot, fail it here, as the completer.
                let _g = lock(&self.cq);
                if !self.slots.is_done(seq) {
                    if let Some(a) = self.take_action(seq) {
                        a(&self.region, &self.staging, false);
                    }
                }
                let _ = self.slots.complete(seq, Status::LinkDown as u32, [0, 0]);
            }
        }
    }

    /// If nobody holds the completion role, take it and sleep on the interrupt fd directly until
    /// `seq` completes. Gives up (returns `None`) after 100 ms without an interrupt, or when the
    /// link goes down, so the reactor gets the role back for its liveness checks.
    fn wait_on_interrupt(&self, seq: u64) -> Option<Outcome> {
        use std::os::fd::AsFd;
        let mut cq = try_lock(&self.cq)?;
        let got = loop {
            cq.disarm();
            self.drain(&mut cq);
            if let Some(o) = self.slots.try_take(seq) {
                break Some(o);
            }
            if self.is_down() {
                break None;
            }
            match cq.arm_with(2) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    self.fail(&mut cq, Error::Protocol(format!("completion ring: {e}")));
                    break None;
                }
            }
            self.stats.parks.fetch_add(1, Ordering::Relaxed);
            if !crate::notify::wait_readable(&[self.irq_waiter.as_fd()], 100)[0] {
                break None;
            }
            self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
            let mut b = [0u8; 8];
            let _ = nix::unistd::read(self.irq_waiter.as_raw_fd(), &mut b);
        };
        self.rearm(&mut cq);
        got
    }

    fn publish_guest_stats(&self) {
        self.region.atomic_u64(hdr::GUEST_SPIN_HITS).store(self.stats.spin_hits.load(Ordering::Relaxed), Ordering::Relaxed);
        self.region.atomic_u64(hdr::GUEST_PARKS).store(self.stats.parks.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

fn reactor(inner: StdArc<Inner>, watch: Box<dyn LinkWatch>, wake: StdArc<crate::notify::EventFd>) {
    let interrupt = &inner.irq;
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll as MioPoll, Token};
    const IRQ: Token = Token(0);
    const WATCH: Token = Token(1);
    const WAKE: Token = Token(2);
    let setup = || -> std::io::Result<MioPoll> {
        let poll = MioPoll::new()?;
        poll.registry().register(&mut SourceFd(&interrupt.as_raw_fd()), IRQ, Interest::READABLE)?;
        if let Some(fd) = watch.fd() {
            poll.registry().register(&mut SourceFd(&fd), WATCH, Interest::READABLE)?;
        }
        poll.registry().register(&mut SourceFd(&wake.raw()), WAKE, Interest::READABLE)?;
        Ok(poll)
    };
    let mut poll = match setup() {
        Ok(p) => p,
        Err(e) => {
            let mut cq = lock(&inner.cq);
            inner.fail(&mut cq, Error::Setup(format!("reactor setup: {e}")));
            return;
        }
    };
    let mut events = Events::with_capacity(8);
    let mut last_check = Instant::now();
    let interval = watch.interval();
    loop {
        // If a blocked caller holds the completion role, it drains, and it re-arms and re-checks
        // before it lets go, so skipping here loses nothing.
        if let Some(mut cq) = try_lock(&inner.cq) {
            // Consume the interrupt only while holding the role: a caller sleeping on the same fd
            // in the role must see the counter, or its poll() would go back to sleep.
            let mut b = [0u8; 8];
            let _ = nix::unistd::read(interrupt.as_raw_fd(), &mut b);
            cq.disarm();
            inner.drain(&mut cq);
            inner.rearm(&mut cq);
        }
        if inner.shutdown.load(Ordering::SeqCst) || inner.is_down() {
            break;
        }
        if let Err(e) = poll.poll(&mut events, Some(interval)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                let mut cq = lock(&inner.cq);
                inner.fail(&mut cq, Error::LinkDown(format!("reactor poll: {e}")));
                break;
            }
        }
        let mut check = last_check.elapsed() >= interval;
        for ev in events.iter() {
            match ev.token() {
                IRQ => {
                    inner.stats.interrupts.fetch_add(1, Ordering::Relaxed);
                }
                WATCH => check = true,
                _ => {
                    wake.drain();
                }
            }
        }
        if check {
            last_check = Instant::now();
            inner.publish_guest_stats();
            let host_state = inner.region.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire);
            let verdict = match watch.check().and_then(|()| watch.check_region(&inner.region)) {
                Err(why) => Err(why),
                Ok(()) if host_state == crate::wire::HostState::ProtocolError as u32 => {
                    Err("the host reported a protocol error".to_string())
                }
                Ok(()) if host_state == crate::wire::HostState::Closed as u32 => Err("the host closed the session".to_string()),
                Ok(()) => Ok(()),
            };
            if let Err(why) = verdict {
                let state = inner.region.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire);
                let err = if state == crate::wire::HostState::ProtocolError as u32 {
                    Error::Protocol(format!("the host ended the session because this guest broke the protocol ({why})"))
                } else {
                    Error::LinkDown(why)
                };
                // Mark down first: a caller sleeping in the completion role sees it within 100 ms
                // and lets go of the role, so taking the lock below cannot wait longer than that.
                // Poking vector 1's fd (a spurious interrupt is harmless, rule 4) wakes such a
                // caller at once, so on the ivshmem link every caller fails well within 1 s.
                inner.slots.close();
                let _ = nix::unistd::write(&inner.irq_waiter, &1u64.to_ne_bytes());
                let mut cq = lock(&inner.cq);
                inner.fail(&mut cq, err);
                break;
            }
        }
    }
    if inner.shutdown.load(Ordering::SeqCst) && watch.on_close(&inner.region) {
        inner.doorbell.notify();
    }
    // Whatever ended the reactor, nobody may wait on it any more.
    let mut cq = lock(&inner.cq);
    if !inner.is_down() {
        inner.fail(&mut cq, Error::LinkDown("the client was shut down".into()));
    }
}

/// A submitted call. Wait with [`Ticket::wait`] or `.await`; dropping it forgets the call (a
/// failure then becomes the deferred error).
#[must_use = "dropping a ticket turns the call into fire-and-forget"]
pub struct Ticket {
    inner: StdArc<Inner>,
    seq: u64,
    call: Call,
    done: bool,
}

impl Ticket {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Block until the call completes.
    pub fn wait(self) -> Result<[u64; 2]> {
        self.wait_spinning(0)
    }

    /// Block until the call completes and decode its typed reply (`R` is the reply type of the
    /// submitted request, e.g. `wire::reply::MemAlloc`).
    pub fn wait_reply<R: CallReply>(self) -> Result<R> {
        let call = self.call;
        decode_reply(call, self.wait()?)
    }

    /// Block until the call completes, spinning at least `floor_ns` first (unless the client
    /// never spins).
    fn wait_spinning(mut self, floor_ns: u64) -> Result<[u64; 2]> {
        let o = self.inner.wait_blocking(self.seq, floor_ns);
        self.done = true;
        to_result(&self.inner, self.call, o)
    }

    /// Wait for the next chunk of a bulk copy: its completion is due within about one chunk's
    /// copy time, so sleeping (and paying a wake-up per chunk) would cost more than spinning.
    fn wait_chunk(self) -> Result<[u64; 2]> {
        self.wait_spinning(BULK_SPIN_NS)
    }

    /// Whether the result is ready (a `wait` would not block).
    pub fn is_done(&self) -> bool {
        self.inner.slots.is_done(self.seq)
    }
}

impl std::future::Future for Ticket {
    type Output = Result<[u64; 2]>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(!self.done, "Ticket polled after completion");
        match self.inner.slots.poll_result(self.seq, cx) {
            Poll::Ready(o) => {
                self.done = true;
                Poll::Ready(to_result(&self.inner, self.call, o))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            if let Some(o) = self.inner.slots.detach(self.seq) {
                if let Err(e) = to_result(&self.inner, self.call, o) {
                    self.inner.record_deferred(e);
                }
            }
        }
    }
}

enum FutState {
    Acquiring,
    InFlight(Ticket),
    Done,
}

/// The future returned by [`Client::call`].
pub struct CallFuture {
    inner: StdArc<Inner>,
    seq: Option<u64>,
    call: Call,
    stream: u32,
    args: [u64; 6],
    state: FutState,
}

impl std::future::Future for CallFuture {
    type Output = Result<[u64; 2]>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                FutState::Acquiring => {
                    if this.inner.is_down() {
                        this.state = FutState::Done;
                        return Poll::Ready(Err(this.inner.down_error()));
                    }
                    let seq = *this.seq.get_or_insert_with(|| this.inner.slots.next_seq());
                    if this.inner.slots.poll_acquire(seq, cx).is_pending() {
                        return Poll::Pending;
                    }
                    if let Err(e) =
                        this.inner.after_acquire(seq).and_then(|_| this.inner.publish(seq, this.call, this.stream, this.args, 0))
                    {
                        this.state = FutState::Done;
                        return Poll::Ready(Err(e));
                    }
                    this.state = FutState::InFlight(Ticket { inner: this.inner.clone(), seq, call: this.call, done: false });
                }
                FutState::InFlight(t) => {
                    let r = Pin::new(t).poll(cx);
                    if r.is_ready() {
                        this.state = FutState::Done;
                    }
                    return r;
                }
                FutState::Done => panic!("CallFuture polled after completion"),
            }
        }
    }
}

impl Drop for CallFuture {
    fn drop(&mut self) {
        if let (FutState::Acquiring, Some(seq)) = (&self.state, self.seq) {
            // The sequence number was handed out: the slot chain must pass through it, or the
            // call `depth` numbers later would wait forever. Take the slot and give it back
            // (this waits only while all slots are busy).
            if self.inner.acquire_blocking(seq).is_ok() {
                self.inner.slots.abandon(seq);
            }
        }
    }
}
