//! The device context: one connection to the mediator, the guest-side tables of streams,
//! events, allocations, pinned and registered host memory, and the host-function thread.
//!
//! The process-wide context ([`Context::global`]) connects on first use, never at load time, over
//! the link the environment names (`vgpu_transport::connect_from_env`: the direct link to the
//! socket named by [`default_socket`] unless `VGPU_LINK`/`VGPU_DEVICE` select the ivshmem link).
//! Private contexts ([`Context::connect`]) serve the async Rust API and tests.
//!
//! The context's methods are split by subject over child modules: `copy` (allocations and data
//! paths), `launch` (modules, functions, launches, symbols), `capture` (capture and graphs).
//!
//! # Lock order
//! The guest runtime has eight locks (each an ordered lock, `crate::locks`, with the rank
//! below). A thread may take a lock only while every lock it holds has a lower number; most are
//! leaves, taken alone and released before anything else is taken. Debug builds check this at
//! every acquisition (a thread-local set of held ranks; an inversion panics, naming both), so
//! every test of this crate and of `vgpu-tests` runs under the check; release builds use plain
//! `std::sync` locks.
//!
//! 1. **`kern.loading`** (`KernelState::loading`, per context): serialises first-use loading of
//!    modules and functions (hash lookup, upload, `FuncGet`). Held across round trips, by
//!    design: two threads launching the same new kernel upload it once. Held: nothing. Taken
//!    under it: `open_h2d` (2, to close the open chunk before a whole-chunk `FuncGet` or
//!    upload) and `kern.tables` (4, to re-check and record what was loaded).
//! 2. **`open_h2d`** (per context): the open staging chunk small pageable H2D copies, launch
//!    parameters and symbol names are packed into. Held for a whole H2D staging loop, across
//!    waits for a free chunk and for ring space (staging serialises H2D callers). Held:
//!    nothing, or `kern.loading`. Taken under it: `mem` (7, the pinned check of each segment).
//! 3. **`REGISTRY`** (`kernel`, process-wide read-write lock): modules, functions and
//!    variables registered by nvcc's start-up code. Held: nothing. Taken under it: nothing.
//! 4. **`kern.tables`** (`KernelState::tables`, per context): loaded modules (or the error that
//!    keeps them from loading), functions by host stub and by name, symbols and their device
//!    ranges; one lock, so that forgetting a module is one step. Held: nothing, or
//!    `kern.loading`. Taken under it: nothing.
//! 5. **`captures.table`** (`graph::Captures`, per context): the capture sequence of each
//!    capturing stream. Skipped entirely (one atomic load) while nothing captures. Held:
//!    nothing. Taken under it: nothing.
//! 6. **`handles`** (per context): streams (host handle, flags, priority, query event), events,
//!    the legacy stream's query event. Held: nothing. Taken under it: nothing.
//! 7. **`mem`** (`memory::MemTables`, per context): device allocations, the pinned heap,
//!    registered host ranges; one lock, so that a registration's overlap check against pinned
//!    and registered memory and its insertion are one step. Held: nothing, or `open_h2d`.
//!    Taken under it: nothing.
//! 8. **`Func::state`** (per loaded function): its attributes, cluster attributes and
//!    occupancy cache (cleared with every attribute change, in the same step). Held: nothing.
//!    Taken under it: nothing.
//!
//! Only 1 and 2 may be held while the thread waits for the host (a round trip, a staging chunk,
//! ring space); `Context::call` and the copy waits assert that in debug builds. The transport's
//! own locks are below all of these: the client may be called with any of them held, and
//! nothing in the transport calls back into this crate with its locks held (completion actions,
//! run by the reactor, take none of these locks: they recycle staging chunks, copy D2H bytes
//! out of the window, hand host functions to their thread).
//!
//! Not locks: the sticky error and the host-function channel are set once (`OnceLock`); counters
//! and the capture fast path are atomics; the per-thread stream list and call configurations are
//! thread-locals. The per-call paths take: a null call or fire-and-forget call, no lock (the
//! legacy stream) or `handles` (a created stream); an async pageable H2D copy, `handles`, `mem`
//! (range and pinned checks) and `open_h2d`; a kernel launch, `kern.tables` (the function by
//! host stub), `Func::state`, `handles` and, with parameters, `open_h2d`, each taken alone.

mod capture;
mod copy;
mod launch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock, Weak};

use tracing::{debug, error, warn};
use vgpu_transport::sync::{AtomicU64, Ordering};
use vgpu_transport::wire::{event_flags, req, CallRequest, DeviceInfo, Win};
use vgpu_transport::{Client, ClientConfig};

use crate::error::{CudaError, Result};
use crate::graph::Captures;
use crate::kernel::KernelState;
use crate::locks::{self, rank, OrderedMutex};
use crate::memory::{MemLock, MemTables, StagingLock};
use crate::types::{RawEvent, RawStream, PRIORITY_GREATEST, PRIORITY_LEAST, STREAM_LEGACY, STREAM_LEGACY_DEFAULT, STREAM_PER_THREAD};

/// The mediator's socket: `$VGPU_SOCKET`, else `$XDG_RUNTIME_DIR/vgpu.sock`, else
/// `/tmp/vgpu.sock` (the transport's rule, the same as `vgpu_mediator::default_socket`).
pub fn default_socket() -> PathBuf {
    vgpu_transport::link::default_socket()
}

/// A guest-side stream: its host handle and what CUDA lets a program query.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamEntry {
    pub host: u32,
    pub flags: u32,
    pub priority: i32,
    /// Internal timing-free event used by `stream_query` (created on first query).
    pub query_event: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct EventEntry {
    pub host: u64,
    pub flags: u32,
}

/// The handle tables of one context, under one lock ([`rank::HANDLES`]).
#[derive(Debug, Default)]
pub(crate) struct Handles {
    pub streams: HashMap<RawStream, StreamEntry>,
    pub events: HashMap<RawEvent, EventEntry>,
    /// Query event of the legacy default stream (0: not created yet).
    pub legacy_query_event: u64,
}

/// The lock of [`Handles`].
pub(crate) type HandlesLock = OrderedMutex<Handles, { rank::HANDLES }>;

pub(crate) struct HostJob {
    pub f: Box<dyn FnOnce(CudaError) + Send>,
    pub token: u64,
    pub status: CudaError,
}

/// One connection to the mediator and everything the guest tracks about it.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) id: u64,
    /// Address of window offset 0 in this process.
    pub(crate) window_base: usize,
    pub(crate) window_len: u64,
    /// Lock 2 of the order (module docs): the staging chunk small pageable H2D copies are packed
    /// into, and the bytes used in it.
    pub(crate) open_h2d: StagingLock,
    /// Lock 6: streams, events, the legacy stream's query event.
    pub(crate) handles: HandlesLock,
    /// Lock 7: device allocations, the pinned heap, registered host ranges.
    pub(crate) mem: MemLock,
    info: OnceLock<DeviceInfo>,
    /// The host-function thread's channel, made on first use.
    host_tx: OnceLock<mpsc::Sender<HostJob>>,
    next_token: AtomicU64,
    /// Set once, by the first error that breaks the context; never cleared.
    sticky: OnceLock<CudaError>,
    /// The process-wide context (its sticky error is the process's, `error::process_sticky`).
    process_wide: bool,
    /// Incremented by [`Context::reset`]: per-thread default streams of an earlier generation
    /// are gone (freed by the reset) and are created again on their thread's next use.
    generation: AtomicU64,
    /// D2H copies into pageable memory wait for completion, CUDA's documented host behaviour
    /// ("returns only once the copy has completed"). `VGPU_ASYNC_PAGEABLE_D2H=1` lets them
    /// complete in the reactor instead (one round trip fewer per copy; correct only for programs
    /// that synchronise before reading the buffer, as ggml does).
    pub(crate) sync_pageable_d2h: bool,
    /// Modules, functions and symbols loaded on this context (`kernel.rs`): locks 1 and 4.
    pub(crate) kern: KernelState,
    /// Capture sequences of this context's streams (`graph.rs`): lock 5.
    pub(crate) captures: Captures,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("id", &self.id).field("window_len", &self.window_len).finish()
    }
}

static GLOBAL: OnceLock<std::result::Result<Arc<Context>, CudaError>> = OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Context {
    /// The process-wide context, connecting over the environment's link on first use. A failure is
    /// logged once with the fix and kept: every later call gets the same error, as a CUDA
    /// runtime whose initialisation failed.
    pub fn global() -> Result<&'static Arc<Context>> {
        GLOBAL
            .get_or_init(|| {
                // An unregistered module is forgotten by the process-wide context (the kernel
                // registry sits below the context and cannot call it).
                crate::kernel::on_unregister(|module| {
                    if let Some(c) = Context::global_if_connected() {
                        c.forget_module(module, false);
                    }
                });
                Context::open(None).map_err(|(code, why)| {
                    // The transport's setup errors already name the fix; the others get it here.
                    let fix = if why.contains("vgpu serve") {
                        ""
                    } else {
                        ". Start `vgpu serve` (or run the program under `vgpu run -- PROGRAM`), or set VGPU_SOCKET to the socket of a running mediator"
                    };
                    let msg = format!("no vgpu device ({}): {why}{fix}", code.name());
                    error!(target: "vgpu::streams", "{msg}");
                    // A program that never set up `tracing` must still see why it has no GPU.
                    if !tracing::dispatcher::has_been_set() {
                        eprintln!("vgpu: {msg}");
                    }
                    code
                })
            })
            .as_ref()
            .map_err(|e| *e)
    }

    /// The process-wide context if it is already connected (no I/O).
    pub fn global_if_connected() -> Option<&'static Arc<Context>> {
        GLOBAL.get().and_then(|r| r.as_ref().ok())
    }

    /// A private context connected to the mediator at `socket`.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Arc<Context>> {
        Context::open(Some(socket.as_ref())).map_err(|(code, why)| {
            warn!(target: "vgpu::streams", "{why}");
            code
        })
    }

    /// Connect to `socket` (direct link), or over the environment's link when `None`; on failure
    /// the CUDA error and the transport's explanation (which names the fix).
    fn open(socket: Option<&Path>) -> std::result::Result<Arc<Context>, (CudaError, String)> {
        // `VGPU_WINDOW_MIB` asks the mediator for a larger data window (pinned memory lives there).
        let window_len = std::env::var("VGPU_WINDOW_MIB").ok().and_then(|v| v.parse::<u64>().ok()).map_or(0, |m| m.saturating_mul(1 << 20));
        let mut cfg = ClientConfig { window_len, ..ClientConfig::default() };
        // `cudaSetDeviceFlags` before the first connection picks how blocked callers wait.
        if let Some(spin) = crate::device_flags::spin_policy(crate::device_flags::get()) {
            cfg.spin = spin;
        }
        let client = match socket {
            Some(s) => Client::connect(s, cfg),
            None => vgpu_transport::connect_from_env(cfg),
        }
        .map_err(|e| (CudaError::from_transport(&e), e.to_string()))?;
        let window_len = client.region().layout().window_len;
        let window_base =
            client.region().window_ptr(0, 0).ok_or_else(|| (CudaError::InitializationError, "the data window is not mapped".to_string()))?
                as usize;
        let (rest_off, rest_len) = client.staging().rest(window_len);
        let ctx = Arc::new(Context {
            client,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            window_base,
            window_len,
            open_h2d: Default::default(),
            handles: Default::default(),
            mem: OrderedMutex::new(MemTables::new(rest_off, rest_len)),
            info: OnceLock::new(),
            host_tx: OnceLock::new(),
            next_token: AtomicU64::new(1),
            sticky: OnceLock::new(),
            process_wide: socket.is_none(),
            generation: AtomicU64::new(0),
            sync_pageable_d2h: std::env::var_os("VGPU_ASYNC_PAGEABLE_D2H").is_none_or(|v| v != "1"),
            kern: Default::default(),
            captures: Default::default(),
        });
        debug!(target: "vgpu::streams", id = ctx.id, window_len, pinned = rest_len, "context connected");
        Ok(ctx)
    }

    /// The transport client (for statistics and tools).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Blocking round trips this context has made so far.
    pub fn blocking_round_trips(&self) -> u64 {
        self.client.stats().blocking_waits.load(Ordering::Relaxed)
    }

    /// The sticky error, if the context is broken.
    pub fn sticky(&self) -> Result<()> {
        match self.sticky.get() {
            Some(&e) => Err(e),
            None => Ok(()),
        }
    }

    /// Convert a transport result, making link loss and protocol errors sticky.
    pub(crate) fn check<T>(&self, r: vgpu_transport::Result<T>) -> Result<T> {
        r.map_err(|e| self.convert(&e))
    }

    pub(crate) fn convert(&self, e: &vgpu_transport::Error) -> CudaError {
        let c = CudaError::from_transport(e);
        if c.is_sticky() && self.sticky.set(c).is_ok() {
            error!(target: "vgpu::streams", "the vgpu device is unusable from now on: {e}");
            if self.process_wide {
                crate::error::set_process_sticky(c);
            }
        }
        c
    }

    /// The deferred error of earlier fire-and-forget work, returned once. Called at every
    /// synchronising call, which is also when device printf output reaches stdout.
    pub(crate) fn deferred(&self) -> Result<()> {
        self.drain_printf();
        self.sticky()?;
        match self.client.take_deferred_error() {
            Some(e) => {
                debug!(target: "vgpu::streams", "deferred error surfaces: {e}");
                Err(self.convert(&e))
            }
            None => Ok(()),
        }
    }

    /// Device printf output the host holds (`hdr::PRINTF_PENDING` non-zero), written to the
    /// program's stdout: a plain load of a header word when there is none. Best effort: a
    /// failing drain leaves the output on the host, and the error surfaces on the next call.
    fn drain_printf(&self) {
        let region = self.client.region();
        if region.read_u64(vgpu_transport::wire::hdr::PRINTF_PENDING) == 0 {
            return;
        }
        self.close_open_chunk();
        let staging = self.client.staging();
        let Ok(off) = self.client.acquire_staging() else { return };
        let len = staging.chunk_len();
        // Bounded: a kernel still printing on another stream cannot keep this call here.
        for _ in 0..64 {
            let Ok(r) = self.client.call_blocking_req(0, req::PrintfDrain { out: Win::new(off, len) }) else { break };
            let mut bytes = vec![0u8; r.written.min(len) as usize];
            if region.read_window(off, &mut bytes).is_err() {
                break;
            }
            crate::printf::write_stdout(&bytes);
            if r.pending == 0 {
                break;
            }
        }
        staging.release(off);
    }

    /// A blocking call with a typed request: one round trip, the typed reply.
    pub(crate) fn call<R: CallRequest>(&self, stream: u32, r: R) -> Result<R::Reply> {
        self.sticky()?;
        locks::may_block(std::any::type_name::<R>());
        self.check(self.client.call_blocking_req(stream, r))
    }

    /// A fire-and-forget call with a typed request.
    pub(crate) fn fire<R: CallRequest>(&self, stream: u32, r: R) -> Result<()> {
        self.sticky()?;
        self.check(self.client.fire_req(stream, r))
    }

    /// Device properties: fetched once (`DeviceInfo` through a staging chunk), then local.
    pub fn device_info(&self) -> Result<DeviceInfo> {
        if let Some(i) = self.info.get() {
            return Ok(*i);
        }
        self.sticky()?;
        self.close_open_chunk();
        let staging = self.client.staging();
        let off = self.check(self.client.acquire_staging())?;
        let size = std::mem::size_of::<DeviceInfo>();
        let r = self.call(0, req::DeviceInfo { out: Win::new(off, staging.chunk_len()) }).and_then(|_| {
            let mut bytes = vec![0u8; size];
            self.check(self.client.region().read_window(off, &mut bytes))?;
            let mut info = DeviceInfo::default();
            // SAFETY: DeviceInfo is a #[repr(C)] plain-old-data struct of integers and byte
            // arrays without padding (512 bytes, asserted in wire.rs); every bit pattern is a
            // valid value, and `bytes` holds exactly `size` bytes.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut info as *mut DeviceInfo).cast::<u8>(), size) };
            Ok(info)
        });
        staging.release(off);
        let info = r?;
        Ok(*self.info.get_or_init(|| info))
    }

    // ---- streams -------------------------------------------------------------------------

    /// Host handle of a stream, with the per-thread stream created on first use.
    pub(crate) fn host_stream(self: &Arc<Self>, s: RawStream) -> Result<u32> {
        match s {
            STREAM_LEGACY_DEFAULT | STREAM_LEGACY => Ok(0),
            STREAM_PER_THREAD => self.per_thread_stream().map(|(_, h)| h),
            raw => self.handles.lock().streams.get(&raw).map(|e| e.host).ok_or(CudaError::InvalidResourceHandle),
        }
    }

    /// The calling thread's per-thread default stream: `(raw, host)`.
    ///
    /// CUDA documents the per-thread default stream as a *blocking* stream: it synchronises with
    /// the legacy default stream (both ways) but not with other per-thread streams or other
    /// blocking streams. That is exactly a stream created with flags 0, which the host already
    /// orders against stream 0 (legacy semantics). It is created on the thread's first use and
    /// destroyed when the thread exits.
    pub(crate) fn per_thread_stream(self: &Arc<Self>) -> Result<(RawStream, u32)> {
        let gen = self.generation.load(Ordering::Acquire);
        // An entry of an earlier generation names a stream that a reset destroyed: forget it
        // (its drop sees the generation changed and destroys nothing).
        let stale = PER_THREAD.with(|p| {
            let mut p = p.borrow_mut();
            p.iter().position(|e| e.ctx == self.id && e.gen != gen).map(|i| p.swap_remove(i))
        });
        drop(stale);
        if let Some(r) = PER_THREAD.with(|p| p.borrow().iter().find(|e| e.ctx == self.id).map(|e| e.raw)) {
            let host = self.handles.lock().streams.get(&r).map(|e| e.host).ok_or(CudaError::InvalidResourceHandle)?;
            return Ok((r, host));
        }
        let raw = self.stream_create(0, 0)?;
        let host = self.handles.lock().streams.get(&raw).map(|e| e.host).ok_or(CudaError::InvalidResourceHandle)?;
        PER_THREAD.with(|p| p.borrow_mut().push(PerThread { ctx: self.id, gen, raw, weak: Arc::downgrade(self) }));
        debug!(target: "vgpu::streams", raw, host, "per-thread default stream created");
        Ok((raw, host))
    }

    pub(crate) fn stream_create(&self, flags: u32, priority: i32) -> Result<RawStream> {
        if flags & !1 != 0 {
            return Err(CudaError::InvalidValue);
        }
        // CUDA clamps priorities outside [greatest, least] into the range.
        let priority = priority.clamp(PRIORITY_GREATEST, PRIORITY_LEAST);
        let r = self.call(0, req::StreamCreate { flags: flags.into(), priority })?;
        let host = u32::try_from(r.stream).map_err(|_| CudaError::Unknown)?;
        let raw = stream_raw(host);
        self.handles.lock().streams.insert(raw, StreamEntry { host, flags, priority, query_event: 0 });
        Ok(raw)
    }

    pub(crate) fn stream_destroy(&self, raw: RawStream) -> Result<()> {
        self.sticky()?;
        let e = self.handles.lock().streams.remove(&raw).ok_or(CudaError::InvalidResourceHandle)?;
        if e.query_event != 0 {
            let _ = self.fire(0, req::EventDestroy { event: e.query_event });
        }
        // cudaStreamDestroy returns at once; the stream's work still completes.
        self.fire(0, req::StreamDestroy { stream: e.host.into() })
    }

    pub(crate) fn stream_entry(self: &Arc<Self>, s: RawStream) -> Result<StreamEntry> {
        match s {
            STREAM_LEGACY_DEFAULT | STREAM_LEGACY => Ok(StreamEntry { host: 0, flags: 0, priority: 0, query_event: 0 }),
            STREAM_PER_THREAD => {
                let (raw, _) = self.per_thread_stream()?;
                self.handles.lock().streams.get(&raw).copied().ok_or(CudaError::InvalidResourceHandle)
            }
            raw => self.handles.lock().streams.get(&raw).copied().ok_or(CudaError::InvalidResourceHandle),
        }
    }

    /// `Ok` if all work on the stream has finished, `Err(NotReady)` otherwise: records the
    /// stream's internal event and queries it (one round trip).
    pub(crate) fn stream_query(self: &Arc<Self>, s: RawStream) -> Result<()> {
        let host = self.host_stream(s)?;
        let ev = self.query_event(s, host)?;
        self.fire(host, req::EventRecord { event: ev })?;
        self.call(0, req::EventQuery { event: ev })?;
        self.deferred()
    }

    /// The stream's internal query event, created on first use. The creation's round trip is
    /// made without the handle lock (no table lock is held across a wait); a thread that loses
    /// the race to record its event destroys it again.
    fn query_event(self: &Arc<Self>, s: RawStream, host: u32) -> Result<u64> {
        let raw = match (host, s) {
            (0, _) => None,
            (_, STREAM_PER_THREAD) => Some(self.per_thread_stream()?.0),
            _ => Some(s),
        };
        // The slot of the stream's query event in the handle tables.
        fn slot(h: &mut Handles, raw: Option<RawStream>) -> Option<&mut u64> {
            match raw {
                None => Some(&mut h.legacy_query_event),
                Some(r) => h.streams.get_mut(&r).map(|e| &mut e.query_event),
            }
        }
        if let Some(&mut ev) = slot(&mut self.handles.lock(), raw).filter(|e| **e != 0) {
            return Ok(ev);
        }
        let ev = self.call(0, req::EventCreate { flags: event_flags::DISABLE_TIMING })?.event;
        let won = match slot(&mut self.handles.lock(), raw) {
            Some(q) if *q == 0 => {
                *q = ev;
                Ok(ev)
            }
            Some(q) => Err(Ok(*q)),
            None => Err(Err(CudaError::InvalidResourceHandle)),
        };
        won.or_else(|keep| {
            let _ = self.fire(0, req::EventDestroy { event: ev });
            keep
        })
    }

    pub(crate) fn stream_synchronize(self: &Arc<Self>, s: RawStream) -> Result<()> {
        let host = self.host_stream(s)?;
        self.call(host, req::StreamSync {})?;
        self.deferred()
    }

    pub(crate) fn device_synchronize(&self) -> Result<()> {
        self.call(0, req::DeviceSync {})?;
        self.deferred()
    }

    /// Run `f` in `stream`'s order: the stream reaches a token wait (its completion tells the
    /// guest that all earlier work is done), the host-function thread runs `f`, then signals
    /// the token so that later work on the stream may run.
    pub(crate) fn host_fn(self: &Arc<Self>, s: RawStream, f: Box<dyn FnOnce(CudaError) + Send>) -> Result<()> {
        let host = self.host_stream(s)?;
        self.sticky()?;
        let tx = self.host_sender()?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let action: vgpu_transport::OnComplete = Box::new(move |_, _, ok| {
            // Hand the function to the host-function thread: user code never runs in the
            // completion role. If that thread is gone, the job (and `f`) is dropped.
            let status = if ok { CudaError::Success } else { CudaError::DevicesUnavailable };
            let _ = tx.send(HostJob { f, token, status });
        });
        self.check(self.client.fire_then_req(host, req::StreamWaitToken { token }, action))
    }

    fn host_sender(self: &Arc<Self>) -> Result<mpsc::Sender<HostJob>> {
        if let Some(tx) = self.host_tx.get() {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel::<HostJob>();
        let weak: Weak<Context> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("vgpu-host-fn".into())
            .spawn(move || host_fn_thread(rx, weak))
            .map_err(|_| CudaError::MemoryAllocation)?;
        // Two first host functions at once: one channel wins; the other's thread sees its
        // sender dropped here and ends.
        Ok(self.host_tx.get_or_init(|| tx).clone())
    }

    // ---- events --------------------------------------------------------------------------

    pub(crate) fn event_create(&self, flags: u32) -> Result<RawEvent> {
        if flags & !0x7 != 0 {
            return Err(CudaError::InvalidValue);
        }
        let r = self.call(0, req::EventCreate { flags: flags.into() })?;
        let raw = event_raw(r.event);
        self.handles.lock().events.insert(raw, EventEntry { host: r.event, flags });
        Ok(raw)
    }

    pub(crate) fn event(&self, e: RawEvent) -> Result<EventEntry> {
        self.handles.lock().events.get(&e).copied().ok_or(CudaError::InvalidResourceHandle)
    }

    pub(crate) fn event_destroy(&self, e: RawEvent) -> Result<()> {
        self.sticky()?;
        let ev = self.handles.lock().events.remove(&e).ok_or(CudaError::InvalidResourceHandle)?;
        self.fire(0, req::EventDestroy { event: ev.host })
    }

    /// `cudaDeviceReset`: wait for all work, then free every allocation, stream (the per-thread
    /// ones included), event and pinned buffer of this context and forget every registration.
    /// The connection stays (the session is the process's device); everything the program held
    /// becomes invalid: old device pointers and pinned pointers are rejected (`InvalidValue`),
    /// old stream and event handles give `InvalidResourceHandle`, and each thread's per-thread
    /// stream is created again on its next use. Errors of earlier asynchronous work are
    /// discarded, as the reset discards the context they belong to. A sticky error (the
    /// mediator is gone) stays: a reset cannot bring the device back.
    pub fn reset(&self) -> Result<()> {
        self.sticky()?;
        self.close_open_chunk();
        // All work finishes first (host functions included: their streams wait on their tokens).
        self.call(0, req::DeviceSync {})?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        let Handles { streams, events, legacy_query_event: legacy_query } = std::mem::take(&mut *self.handles.lock());
        let streams: Vec<StreamEntry> = streams.into_values().collect();
        let events: Vec<EventEntry> = events.into_values().collect();
        // Pinned memory: no command uses it any more (all work is done), so the whole pinned
        // part of the window is free again; registrations are forgotten.
        let (rest_off, rest_len) = self.client.staging().rest(self.window_len);
        let mem = std::mem::replace(&mut *self.mem.lock(), MemTables::new(rest_off, rest_len));
        let allocs: Vec<u64> = mem.allocs.into_keys().collect();
        let (n_streams, n_events, n_allocs) = (streams.len(), events.len(), allocs.len());
        let mut r = Ok(());
        for e in &streams {
            if e.query_event != 0 {
                r = r.and(self.fire(0, req::EventDestroy { event: e.query_event }));
            }
            r = r.and(self.fire(0, req::StreamDestroy { stream: e.host.into() }));
        }
        for h in events.iter().map(|e| e.host).chain((legacy_query != 0).then_some(legacy_query)) {
            r = r.and(self.fire(0, req::EventDestroy { event: h }));
        }
        for p in allocs {
            r = r.and(self.fire(0, req::MemFree { ptr: p }));
        }
        r?;
        // One round trip after the frees: they have all been executed when it returns.
        self.call(0, req::DeviceSync {})?;
        if let Some(e) = self.client.take_deferred_error() {
            debug!(target: "vgpu::streams", "an error of work before the reset is discarded: {e}");
        }
        debug!(target: "vgpu::streams", id = self.id, n_streams, n_events, n_allocs, "device reset");
        Ok(())
    }
}

fn host_fn_thread(rx: mpsc::Receiver<HostJob>, ctx: Weak<Context>) {
    while let Ok(job) = rx.recv() {
        let HostJob { f, token, status } = job;
        // A panicking host function must not take the stream down with it: the token is
        // signalled either way.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(status))).is_err() {
            warn!(target: "vgpu::streams", token, "a host function panicked");
        }
        if status == CudaError::Success {
            if let Some(c) = ctx.upgrade() {
                if let Err(e) = c.fire(0, req::SignalToken { token }) {
                    debug!(target: "vgpu::streams", token, "signalling a host-function token: {e}");
                }
            }
        }
    }
}

/// Raw `cudaStream_t` value of a host stream handle: never 0, 1 or 2, distinct from events.
fn stream_raw(host: u32) -> RawStream {
    (host as u64) << 8 | 0x10
}

/// Raw `cudaEvent_t` value of a host event handle: never 0, distinct from streams.
fn event_raw(host: u64) -> RawEvent {
    host << 8 | 0x20
}

struct PerThread {
    ctx: u64,
    /// The context's generation when the stream was created.
    gen: u64,
    raw: RawStream,
    weak: Weak<Context>,
}

impl Drop for PerThread {
    fn drop(&mut self) {
        if let Some(c) = self.weak.upgrade() {
            // After a reset the stream is gone already (and its handle is not ours any more).
            if c.generation.load(Ordering::Acquire) == self.gen {
                let _ = c.stream_destroy(self.raw);
            }
        }
    }
}

thread_local! {
    static PER_THREAD: std::cell::RefCell<Vec<PerThread>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelState;

    /// The order the context's nested acquisitions use (module docs), with the context's own
    /// lock types: no panic.
    #[test]
    fn the_documented_nestings_pass_the_check() {
        let kern = KernelState::default();
        let staging = StagingLock::default();
        let mem = MemLock::default();
        {
            // `func_get` / `upload_module`: loading, then the open chunk is closed.
            let _l = kern.loading.lock();
            drop(staging.lock());
            // `ensure_module`: loading, then the tables are re-checked.
            drop(kern.tables.lock());
        }
        // `h2d`: the open chunk, then the pinned check of each segment.
        let _s = staging.lock();
        drop(mem.lock());
        locks::may_block("h2d's staging wait");
    }

    /// Taking the context's locks against the order (the open staging chunk while holding the
    /// memory tables: `h2d` takes them the other way round) panics in debug builds.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violated")]
    fn an_inversion_of_the_contexts_locks_panics() {
        let mem = MemLock::default();
        let staging = StagingLock::default();
        let _m = mem.lock();
        let _s = staging.lock();
    }

    /// Loading under the kernel tables (the wrong way round) panics in debug builds.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violated")]
    fn loading_under_the_kernel_tables_panics() {
        let kern = KernelState::default();
        let _t = kern.tables.lock();
        let _l = kern.loading.lock();
    }

    /// A round trip with a table locked (the handles) panics in debug builds.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "waits for the host")]
    fn waiting_with_the_handles_locked_panics() {
        let h = HandlesLock::default();
        let _g = h.lock();
        locks::may_block("a test round trip");
    }
}
