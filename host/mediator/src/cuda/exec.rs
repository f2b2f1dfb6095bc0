//! The `cuda` executor of one session: guest commands on a real GPU through the driver API.
//!
//! - One context per session: the device's primary context, retained for the session (each
//!   session is its own worker process, or one epoch of an ivshmem worker, which releases it
//!   before the next epoch retains it).
//! - Guest stream 0 is `CU_STREAM_LEGACY`, so the driver itself gives it CUDA's legacy
//!   default-stream semantics against the session's blocking streams; other guest streams are
//!   real streams created with the guest's flags and priority.
//! - The data window is registered with `cuMemHostRegister` (portable, device-mapped), so copies
//!   DMA straight from and to it. Where registration fails, a pinned shadow of the window stands
//!   in (one CPU copy more per transfer).
//! - Nothing on the dispatcher waits for the GPU. A stream-ordered command that completes when
//!   executed gets a stream callback (`cuStreamAddCallback`) queued behind it, which posts its
//!   completion; callbacks run in stream order on the driver's thread and never call the driver.
//!   Device-wide waits (DeviceSync, MemFree, ModuleUnload, EventSync) run on helper streams that
//!   wait for events recorded at consume time on every stream. Frees and unloads, which must
//!   call the driver after the wait, go to a reaper thread.
//! - Host-function tokens hold their stream with `cuStreamWaitValue32` on a word of pinned host
//!   memory; SignalToken writes the word. No driver thread ever blocks on the guest.
//!
//! Every guest-supplied value is checked before it reaches the driver: handles against this
//! session's tables, device ranges against its allocations and module globals, window ranges
//! against the window, sizes against quotas.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use cudarc::driver::sys;
use tracing::{debug, info, warn};
use vgpu_transport::region::Region;
use vgpu_transport::sync::plain::{AtomicBool, AtomicU32, AtomicU64};
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::{
    event_flags, launch, stream_flags, Call, Command, Completion, DeviceInfo, FuncInfo, ParamInfo, Status, MAX_PARAMS,
};
use vgpu_transport::{Completer, Executor, ServerStats};

use super::driver::{self, add_callback, attr, ck, Driver, CU_STREAM_LEGACY};
use super::logic::{self, c_name, code, i32_arg, settable_func_attr, Fail, FreeList, MemKind, Params, Ranges, Table, TokenSlots};
use crate::emu::EmuLimits;
use crate::modules::{self, DeviceLimits, Image, LaunchLog, LaunchRecord, ModuleCache, ParsedModule, Uploads};

/// Most host-function tokens live at once (as emu).
pub const MAX_TOKENS: usize = 1 << 16;
/// Most helper streams (device-wide waits in flight at once); beyond it waits share streams.
const MAX_HELPERS: usize = 256;
/// Pinned bounce buffer for host-to-device copies on held streams (allocated on first use).
const BOUNCE_BYTES: u64 = 64 << 20;
/// How long EventQuery/EventElapsed wait for a record made on an idle stream (normally done in
/// microseconds; the bound covers a loaded host).
const QUICK_WAIT: Duration = Duration::from_millis(20);
/// How long session end waits for the device before it resets the context.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest FuncGet / SymbolGet name read from the window.
const MAX_NAME: u64 = 64 << 10;
/// cudaGraphInstantiateFlag bits accepted (AutoFreeOnLaunch, Upload, DeviceLaunch,
/// UseNodePriority, as emu); Upload only matters to cuGraphInstantiateWithParams and is dropped.
const GRAPH_FLAGS: u64 = 0x1 | 0x2 | 0x4 | 0x8;
const GRAPH_UPLOAD: u64 = 0x2;

/// Settings of a cuda session.
pub struct CudaOpts {
    pub session: u64,
    /// Count quotas (streams, events, allocations). Device memory is the device's.
    pub limits: EmuLimits,
    pub cache: Arc<ModuleCache>,
    pub launch_log: Option<Arc<LaunchLog>>,
}

/// A raw driver handle moved to another thread (the reaper) or kept in a callback.
struct SendPtr<T>(T);
// SAFETY: driver handles are plain identifiers valid in any thread that has the context current;
// the receiving thread (the reaper) makes the session's context current before it uses them.
unsafe impl<T> Send for SendPtr<T> {}

struct Stream {
    cu: sys::CUstream,
    /// Re-recorded at every device-wide wait; see [`Cuda::fence`].
    fence: sys::CUevent,
    nonblocking: bool,
    /// `Some(invalidated)` while the stream captures.
    capture: Option<bool>,
    /// Commands enqueued that finish in stream order (callbacks and launches)...
    gen: u64,
    /// ...the last of them that does device work (a copy, memset, launch or guest-held wait)...
    work: u64,
    /// ...and the last of them whose callback has run (callbacks run in stream order).
    done: Arc<AtomicU64>,
    /// Waits the guest controls (StreamWaitEvent, StreamWaitToken) queued and not yet passed.
    hold: Arc<AtomicU64>,
}

struct Event {
    cu: sys::CUevent,
    flags: u64,
    recorded: bool,
    /// The last record was made on a stream with nothing outstanding: it completes within
    /// microseconds, and a query may wait that long rather than answer NotReady.
    quick: bool,
    /// The last record's stream and position: an EventSync marks that much of it finished.
    at: Option<(Arc<AtomicU64>, u64)>,
}

struct Module {
    cu: sys::CUmodule,
    image: Image,
    /// The cubin's view, parsed on first need (parameter layouts without cuFuncGetParamInfo).
    parsed: Option<Result<ParsedModule, Status>>,
    funcs: HashMap<CString, u64>,
}

struct Func {
    cu: sys::CUfunction,
    module: u64,
    name: String,
    info: FuncInfo,
    params: Params,
}

struct Helper {
    cu: sys::CUstream,
    busy: Arc<AtomicBool>,
}

/// Work that must call the driver after a device-wide wait.
enum Job {
    Free { ptr: u64, seq: u64, done: Completer },
    Unload { module: SendPtr<sys::CUmodule>, seq: u64, done: Completer },
}

/// The data window as the device sees it.
enum Window {
    /// Registered in place: copies DMA from and to the guest's window.
    Registered { base: *mut u8 },
    /// Registration failed: a pinned copy of the window, `len` bytes.
    Shadow { host: *mut u8 },
}

/// The pinned bounce buffer and its free ranges.
struct Bounce {
    base: *mut u8,
    free: Mutex<FreeList>,
}

// SAFETY: `base` points at BOUNCE_BYTES of pinned host memory that lives until `shutdown` frees it
// after the device has drained; ranges are handed out and returned under the mutex.
unsafe impl Send for Bounce {}
// SAFETY: see Send.
unsafe impl Sync for Bounce {}

/// Host-function tokens and their flag words (pinned, device-mapped host memory).
struct Tokens {
    st: Mutex<TokenState>,
    cv: Condvar,
    words: *mut u32,
    dev: sys::CUdeviceptr,
}

struct TokenState {
    slots: TokenSlots,
    closed: bool,
}

// SAFETY: `words` points at MAX_TOKENS u32 of pinned host memory that lives until the executor
// frees it in `shutdown`, after every waiter is released; it is only accessed atomically.
unsafe impl Send for Tokens {}
// SAFETY: see Send; the rest is a Mutex and a Condvar.
unsafe impl Sync for Tokens {}

impl Tokens {
    fn word(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: slot < MAX_TOKENS (TokenSlots' capacity), the memory is 4-aligned pinned host
        // memory alive as long as `self` is used (see Send), accessed only atomically by the
        // host; the device only reads it.
        unsafe { AtomicU32::from_ptr(self.words.add(slot)) }
    }

    fn release(&self, slot: usize, value: u32) {
        self.word(slot).store(value, Ordering::Release);
        drop(lock(&self.st));
        self.cv.notify_all();
    }

    /// Fallback hold (no stream memory operations): block the callback thread until the word
    /// reaches `value` or the session ends. Bounded sleeps, re-checked.
    fn hold(&self, slot: usize, value: u32) {
        let mut g = lock(&self.st);
        loop {
            if g.closed || (self.word(slot).load(Ordering::Acquire).wrapping_sub(value) as i32) >= 0 {
                return;
            }
            g = self.cv.wait_timeout(g, Duration::from_millis(100)).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The executor of one session.
pub struct Cuda {
    region: Arc<Region>,
    stats: &'static ServerStats,
    opts: CudaOpts,
    drv: Driver,
    ctx: sys::CUcontext,
    current: Option<ThreadId>,
    info: DeviceInfo,
    limits: DeviceLimits,
    prio: (i32, i32),
    window: Window,
    ranges: Ranges,
    allocs: usize,
    in_use: u64,
    streams: HashMap<u32, Stream>,
    next_stream: u32,
    /// Fence events of destroyed streams whose work may still run.
    draining: Vec<sys::CUevent>,
    helpers: Vec<Helper>,
    next_helper: usize,
    events: Table<Event>,
    modules: Table<Module>,
    funcs: Table<Func>,
    graphs: Table<SendPtr<sys::CUgraph>>,
    execs: Table<SendPtr<sys::CUgraphExec>>,
    next: u64,
    uploads: Uploads,
    /// Images loaded in this session, by hash (load-by-hash works without the shared cache).
    images: HashMap<vgpu_transport::wire::ModuleHash, Image>,
    tokens: Option<Arc<Tokens>>,
    bounce: Option<Arc<Bounce>>,
    /// The context's error once a callback saw one: every later command fails with it.
    sticky: Arc<AtomicU32>,
    /// Launches taken so far (the launch log's `seq`).
    launches: u64,
    reaper: Option<(mpsc::Sender<Job>, JoinHandle<()>)>,
    ended: bool,
}

// SAFETY: the raw pointers are driver handles (valid in any thread with the context current,
// which `ensure_current` arranges before every use) and the window/shadow pointers (into
// memory this executor keeps alive). The executor is used by one thread at a time (`&mut self`).
unsafe impl Send for Cuda {}

fn reply(seq: u64, f: Fail, result: [u64; 2]) -> Completion {
    Completion { seq, status: f.0 as u32, aux: f.1, result }
}

/// Post a callback's completion: Ok, or the device error the stream reports.
fn post(done: &Completer, seq: u64, status: u32, sticky: &AtomicU32) {
    if status == code::SUCCESS {
        done.finish(seq, Status::Ok, [0, 0]);
    } else {
        let _ = sticky.compare_exchange(0, status, Ordering::AcqRel, Ordering::Relaxed);
        done.complete(reply(seq, Fail::driver(status), [0, 0]));
    }
}

type R = Result<Option<[u64; 2]>, Fail>;

/// Streams' finished marks a wait advances when it is over: `(Stream::done, gen)`.
type Marks = Vec<(Arc<AtomicU64>, u64)>;

/// What a command's callback runs before it posts, whatever the stream's status (shadow window:
/// copy the bytes back; a passed wait: count it off).
type Then = Option<Box<dyn FnOnce() + Send>>;

impl Cuda {
    /// Open a session on the device [`driver::load`] chose: retain its primary context, make it
    /// current on this (the dispatching) thread, register the window, start the reaper.
    pub fn new(region: Arc<Region>, stats: &'static ServerStats, opts: CudaOpts) -> Result<Cuda, String> {
        let drv = driver::load()?;
        let dev = drv.device;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the device came from cuDeviceGet.
        ck(unsafe { sys::cuDevicePrimaryCtxRetain(&mut ctx, dev) })
            .map_err(|r| format!("cuDevicePrimaryCtxRetain: {}", driver::error_name(r)))?;
        // SAFETY: `ctx` was just retained.
        if let Err(r) = ck(unsafe { sys::cuCtxSetCurrent(ctx) }) {
            // SAFETY: releases the retain above.
            unsafe { sys::cuDevicePrimaryCtxRelease_v2(dev) };
            return Err(format!("cuCtxSetCurrent: {}", driver::error_name(r)));
        }
        let window_len = region.layout().window_len;
        let window = match Self::map_window(&region, window_len) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: releases the retain above.
                unsafe { sys::cuDevicePrimaryCtxRelease_v2(dev) };
                return Err(e);
            }
        };
        let a = |x| attr(dev, x) as u32;
        use sys::CUdevice_attribute as A;
        let limits = DeviceLimits {
            max_threads_per_block: a(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK),
            max_block: [
                a(A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X),
                a(A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y),
                a(A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z),
            ],
            max_grid: [
                a(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X),
                a(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y),
                a(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z),
            ],
            shared_per_block: a(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK),
            shared_per_block_optin: a(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
            shared_per_sm: a(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
            reserved_shared_per_block: a(A::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK),
            shared_granularity: 128,
            regs_per_sm: a(A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR),
            regs_per_block: a(A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK),
            reg_granularity: 256,
            max_threads_per_sm: a(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR),
            max_blocks_per_sm: a(A::CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR),
            warp_size: a(A::CU_DEVICE_ATTRIBUTE_WARP_SIZE),
        };
        let mut info = DeviceInfo::default();
        let name = drv.name.as_bytes();
        let n = name.len().min(255);
        info.name[..n].copy_from_slice(&name[..n]);
        let mut total = 0usize;
        // SAFETY: valid out-pointer.
        let _ = unsafe { sys::cuDeviceTotalMem_v2(&mut total, dev) };
        info.total_mem = total as u64;
        info.multiprocessors = a(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
        info.cc_major = a(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
        info.cc_minor = a(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
        info.warp_size = limits.warp_size;
        info.max_threads_per_block = limits.max_threads_per_block;
        info.shared_mem_per_block = limits.shared_per_block;
        info.clock_khz = a(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE);
        info.executor = 1;
        info.pci_bus = a(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID);
        info.pci_device = a(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID);
        info.pci_domain = a(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID);
        let (mut least, mut greatest) = (0, 0);
        // SAFETY: valid out-pointers; the context is current.
        let _ = unsafe { sys::cuCtxGetStreamPriorityRange(&mut least, &mut greatest) };
        let (tx, rx) = mpsc::channel::<Job>();
        let sticky = Arc::new(AtomicU32::new(0));
        let (c, st) = (SendPtr(ctx), sticky.clone());
        let reaper = std::thread::Builder::new().name("cuda-reaper".into()).spawn(move || reaper(c, rx, st));
        let mut me = Cuda {
            region,
            stats,
            opts,
            drv,
            ctx,
            current: Some(std::thread::current().id()),
            info,
            limits,
            prio: (greatest.min(least), greatest.max(least)),
            window,
            ranges: Ranges::default(),
            allocs: 0,
            in_use: 0,
            streams: HashMap::new(),
            next_stream: 1,
            draining: Vec::new(),
            helpers: Vec::new(),
            next_helper: 0,
            events: Table::new(0),
            modules: Table::new(0),
            funcs: Table::new(0),
            graphs: Table::new(0),
            execs: Table::new(0),
            next: 0,
            uploads: Uploads::new(),
            images: HashMap::new(),
            tokens: None,
            bounce: None,
            sticky,
            launches: 0,
            reaper: None,
            ended: false,
        };
        let l = me.opts.limits;
        me.events = Table::new(l.max_events);
        me.modules = Table::new(l.max_modules);
        me.funcs = Table::new(l.max_functions);
        me.graphs = Table::new(l.max_graphs);
        me.execs = Table::new(l.max_graphs);
        match reaper {
            Ok(h) => me.reaper = Some((tx, h)),
            Err(e) => {
                me.shutdown();
                return Err(format!("starting the reaper thread: {e}"));
            }
        }
        let fence = match me.new_event(event_flags::DISABLE_TIMING) {
            Ok(e) => e,
            Err(f) => {
                me.shutdown();
                return Err(format!("creating an event: {}", f.0.name()));
            }
        };
        me.streams.insert(
            0,
            Stream {
                cu: CU_STREAM_LEGACY,
                fence,
                nonblocking: false,
                capture: None,
                gen: 0,
                work: 0,
                done: Arc::new(AtomicU64::new(0)),
                hold: Arc::new(AtomicU64::new(0)),
            },
        );
        info!(target: "vgpu::cuda", session = me.opts.session, device = %me.drv.name, ordinal = me.drv.ordinal, driver = me.drv.version,
            window = if matches!(me.window, Window::Registered { .. }) { "registered" } else { "shadowed" }, "cuda session open");
        Ok(me)
    }

    fn map_window(region: &Region, len: u64) -> Result<Window, String> {
        if len == 0 {
            return Ok(Window::Registered { base: std::ptr::null_mut() });
        }
        let base = region.window_ptr(0, len).ok_or("the window lies outside the region")?;
        let flags = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
        // SAFETY: `base..base+len` is the live, page-aligned window mapping (WINDOW_ALIGN), which
        // the executor keeps alive (it holds the region) until it unregisters it in `shutdown`.
        match ck(unsafe { sys::cuMemHostRegister_v2(base.cast(), len as usize, flags) }) {
            Ok(()) => Ok(Window::Registered { base }),
            Err(r) => {
                warn!(target: "vgpu::cuda", "cuMemHostRegister of the {len}-byte window failed ({}); copies go through a pinned shadow", driver::error_name(r));
                let mut host: *mut c_void = std::ptr::null_mut();
                // SAFETY: valid out-pointer; the context is current.
                ck(unsafe { sys::cuMemHostAlloc(&mut host, len as usize, sys::CU_MEMHOSTALLOC_PORTABLE) })
                    .map_err(|r| format!("cuMemHostAlloc of a {len}-byte shadow window: {}", driver::error_name(r)))?;
                Ok(Window::Shadow { host: host.cast() })
            }
        }
    }

    /// Make the context current on the calling thread (the dispatcher may change in tests).
    fn ensure_current(&mut self) {
        let me = std::thread::current().id();
        if self.current != Some(me) {
            // SAFETY: the context is retained until shutdown.
            let _ = unsafe { sys::cuCtxSetCurrent(self.ctx) };
            self.current = Some(me);
        }
    }

    /// A driver failure as a command's answer; a sticky one poisons the session.
    fn fail(&self, r: u32) -> Fail {
        if logic::is_sticky(r) {
            let _ = self.sticky.compare_exchange(0, r, Ordering::AcqRel, Ordering::Relaxed);
        }
        Fail::driver(r)
    }

    fn new_event(&self, flags: u64) -> Result<sys::CUevent, Fail> {
        let mut e: sys::CUevent = std::ptr::null_mut();
        // SAFETY: valid out-pointer; flags are CU_EVENT_* bits (BLOCKING_SYNC, DISABLE_TIMING).
        ck(unsafe { sys::cuEventCreate(&mut e, flags as u32) }).map_err(|r| self.fail(r))?;
        Ok(e)
    }

    fn stream(&self, h: u32) -> Result<&Stream, Status> {
        self.streams.get(&h).ok_or(Status::InvalidHandle)
    }

    /// Queue the completion of `seq` behind the work on guest stream `h`: posted by a stream
    /// callback once that work has finished (after `then`, which may copy a shadow back).
    fn complete_after(&mut self, h: u32, real: bool, seq: u64, done: &Completer, then: Then) -> R {
        let s = self.streams.get_mut(&h).ok_or(Status::InvalidHandle)?;
        s.gen += 1;
        if real {
            s.work = s.gen;
        }
        let (gen, mark, d, sticky) = (s.gen, s.done.clone(), done.clone(), self.sticky.clone());
        let cu = s.cu;
        add_callback(cu, move |st| {
            if let Some(f) = then {
                f();
            }
            // Counted finished before it is posted ("finished means finished").
            mark.fetch_max(gen, Ordering::AcqRel);
            post(&d, seq, st, &sticky);
        })
        .map_err(|r| self.fail(r))?;
        Ok(None)
    }

    /// Whether guest stream `h` is known idle: every command with device work queued on it
    /// (and, by the legacy default stream's rules, on the streams it waits for) has finished
    /// (its own callback, or a later one, has run). Callbacks of records and syncs may still be
    /// pending: they hold the stream for microseconds only.
    fn quiet(&self, h: u32) -> bool {
        let q = |s: &Stream| s.done.load(Ordering::Acquire) >= s.work;
        let Some(s) = self.streams.get(&h) else { return false };
        if !q(s) {
            return false;
        }
        if h == 0 {
            self.streams.iter().filter(|(k, s)| **k != 0 && !s.nonblocking).all(|(_, s)| q(s))
        } else if !s.nonblocking {
            self.streams.get(&0).is_some_and(q)
        } else {
            true
        }
    }

    /// Whether guest stream `h` has finished everything queued on it, callbacks included (the
    /// driver's `cuStreamQuery`); if so, its launches count as finished too. A capturing stream
    /// runs nothing and is settled.
    fn settled(&self, h: u32) -> bool {
        let Some(s) = self.streams.get(&h) else { return false };
        if s.capture.is_some() {
            return true;
        }
        // SAFETY: a live stream of this session.
        let r = unsafe { sys::cuStreamQuery(s.cu) };
        if r as u32 != code::SUCCESS {
            return false;
        }
        s.done.fetch_max(s.gen, Ordering::AcqRel);
        true
    }

    /// [`settled`](Self::settled), for the stream and for the streams its work waits for by the
    /// legacy default stream's rules (all blocking streams for stream 0; stream 0 for a blocking
    /// stream), as a callback queued on it would.
    fn settled_with_deps(&self, h: u32) -> bool {
        if !self.settled(h) {
            return false;
        }
        match self.streams.get(&h) {
            Some(_) if h == 0 => {
                let blocking: Vec<u32> = self.streams.iter().filter(|(k, s)| **k != 0 && !s.nonblocking).map(|(k, _)| *k).collect();
                self.draining.is_empty() && blocking.into_iter().all(|k| self.settled(k))
            }
            Some(s) if !s.nonblocking => self.settled(0),
            _ => true,
        }
    }

    /// Whether every stream of the session (destroyed ones still draining included) has finished
    /// everything queued on it, callbacks included.
    fn idle(&mut self) -> bool {
        self.prune_draining();
        let all: Vec<u32> = self.streams.keys().copied().collect();
        self.draining.is_empty() && all.into_iter().all(|h| self.settled(h))
    }

    /// A helper stream for a device-wide wait, marked busy until its callback runs.
    fn helper(&mut self) -> Result<(sys::CUstream, Arc<AtomicBool>), Fail> {
        for h in &self.helpers {
            if h.busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return Ok((h.cu, h.busy.clone()));
            }
        }
        if self.helpers.len() < MAX_HELPERS {
            let mut s: sys::CUstream = std::ptr::null_mut();
            // SAFETY: valid out-pointer; a non-blocking stream does not synchronise with the
            // legacy default stream, so helpers never delay guest work.
            ck(unsafe { sys::cuStreamCreateWithPriority(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32, 0) })
                .map_err(|r| self.fail(r))?;
            let busy = Arc::new(AtomicBool::new(true));
            self.helpers.push(Helper { cu: s, busy: busy.clone() });
            return Ok((s, busy));
        }
        // All busy: share one (its waits then run one after another; never wrong).
        self.next_helper = (self.next_helper + 1) % self.helpers.len();
        let h = &self.helpers[self.next_helper];
        h.busy.store(true, Ordering::Release);
        Ok((h.cu, h.busy.clone()))
    }

    /// Forget fence events of destroyed streams whose work is done.
    fn prune_draining(&mut self) {
        self.draining.retain(|&e| {
            // SAFETY: `e` is a live event this executor created.
            let done = unsafe { sys::cuEventQuery(e) } as u32 != code::NOT_READY;
            if done {
                // SAFETY: the event is no longer referenced anywhere.
                unsafe { sys::cuEventDestroy_v2(e) };
            }
            !done
        });
    }

    /// A helper stream that waits for everything submitted so far on every stream (live and
    /// destroyed-but-draining). Capturing streams are skipped: their work is recorded, not run.
    fn fence(&mut self) -> Result<(sys::CUstream, Arc<AtomicBool>, Marks), Fail> {
        self.prune_draining();
        let (h, busy) = self.helper()?;
        let mut marks = Vec::new();
        let legacy_ok = !self.streams.values().any(|s| s.capture.is_some() && !s.nonblocking);
        let mut r = Ok(());
        for (k, s) in &self.streams {
            if s.capture.is_some() || (*k == 0 && !legacy_ok) {
                continue;
            }
            // SAFETY: a live stream and its fence event.
            r = ck(unsafe { sys::cuEventRecord(s.fence, s.cu) });
            if r.is_ok() {
                // SAFETY: live helper stream and event. The wait captures the record made just
                // before it, so re-recording the fence later does not affect this wait.
                r = ck(unsafe { sys::cuStreamWaitEvent(h, s.fence, 0) });
            }
            if r.is_err() {
                break;
            }
            marks.push((s.done.clone(), s.gen));
        }
        if r.is_ok() {
            for &e in &self.draining {
                // SAFETY: live helper stream and event.
                r = ck(unsafe { sys::cuStreamWaitEvent(h, e, 0) });
                if r.is_err() {
                    break;
                }
            }
        }
        match r {
            Ok(()) => Ok((h, busy, marks)),
            Err(c) => {
                busy.store(false, Ordering::Release);
                Err(self.fail(c))
            }
        }
    }

    /// Complete `seq` once everything submitted before it has finished (and, with `job`, once
    /// the reaper has done it).
    fn after_all(&mut self, seq: u64, done: &Completer, job: Option<Job>) -> R {
        if self.idle() {
            // Nothing is running: do it now (a free or an unload of an idle device returns at
            // once), and complete at consume.
            return match job {
                None => Ok(Some([0, 0])),
                Some(job) => {
                    let r = run_job(job);
                    if r == code::SUCCESS {
                        Ok(Some([0, 0]))
                    } else {
                        Err(self.fail(r))
                    }
                }
            };
        }
        let (h, busy, marks) = self.fence()?;
        let (d, sticky) = (done.clone(), self.sticky.clone());
        let tx = self.reaper.as_ref().map(|(tx, _)| tx.clone());
        add_callback(h, move |st| {
            busy.store(false, Ordering::Release);
            // Everything fenced has finished, launches (which have no callback) included.
            for (m, g) in marks {
                m.fetch_max(g, Ordering::AcqRel);
            }
            match (job, tx) {
                (Some(job), Some(tx)) if st == code::SUCCESS => {
                    if let Err(mpsc::SendError(job)) = tx.send(job) {
                        // The session is ending; its context goes with it.
                        let (Job::Free { seq, done, .. } | Job::Unload { seq, done, .. }) = job;
                        done.finish(seq, Status::Ok, [0, 0]);
                    }
                }
                _ => post(&d, seq, st, &sticky),
            }
        })
        .map_err(|r| self.fail(r))?;
        Ok(None)
    }

    fn window(&self, off: u64, len: u64) -> Result<(), Status> {
        self.region.window_range(off, len).map(|_| ()).ok_or(Status::InvalidWindowRange)
    }

    /// The host address a copy to the device reads (for the shadow, the bytes are copied into it
    /// first). Checked: `win(off, len)`.
    fn h2d_src(&self, off: u64, len: u64) -> Result<*const u8, Status> {
        let src = self.region.window_ptr(off, len).ok_or(Status::InvalidWindowRange)?;
        match self.window {
            Window::Registered { .. } => Ok(src),
            Window::Shadow { host } => {
                // SAFETY: `off + len <= window_len` (checked by window_ptr) and the shadow is
                // `window_len` bytes; raw copies between two live mappings, no references made.
                unsafe { std::ptr::copy_nonoverlapping(src, host.add(off as usize), len as usize) };
                // SAFETY: in bounds, as above.
                Ok(unsafe { host.add(off as usize) })
            }
        }
    }

    /// The host address a copy from the device writes, and what to run once it has (shadow: copy
    /// the bytes into the window before the completion is posted).
    fn d2h_dst(&self, off: u64, len: u64) -> Result<(*mut u8, Then), Status> {
        let dst = self.region.window_ptr(off, len).ok_or(Status::InvalidWindowRange)?;
        match self.window {
            Window::Registered { .. } => Ok((dst, None)),
            Window::Shadow { host } => {
                // SAFETY: in bounds (window_ptr checked off + len against the window length,
                // which is the shadow's length).
                let src = unsafe { host.add(off as usize) } as usize;
                let (dst, region) = (dst as usize, self.region.clone());
                let then: Box<dyn FnOnce() + Send> = Box::new(move || {
                    let _keep = region;
                    // SAFETY: the shadow and the window both outlive every callback (shutdown
                    // waits for the device before it frees the shadow; `region` keeps the window
                    // mapped); raw byte copy of `len` in-bounds bytes.
                    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len as usize) };
                });
                // SAFETY: in bounds, as above.
                Ok((unsafe { host.add(off as usize) }, Some(then)))
            }
        }
    }

    /// Count a guest-controlled wait queued on stream `h`; [`hold_end`] counts it off.
    fn hold_start(&self, h: u32) -> Arc<AtomicU64> {
        let hold = self.streams.get(&h).map(|s| s.hold.clone()).unwrap_or_default();
        hold.fetch_add(1, Ordering::AcqRel);
        hold
    }

    /// Whether work on stream `h` may wait for the guest: a StreamWaitEvent or StreamWaitToken
    /// queued on it (or, by the legacy default stream's rules, on a stream it waits for) that
    /// the stream has not passed yet.
    fn held(&self, h: u32) -> bool {
        let held = |s: &Stream| s.hold.load(Ordering::Acquire) != 0;
        let Some(s) = self.streams.get(&h) else { return false };
        if held(s) {
            return true;
        }
        if h == 0 {
            self.streams.iter().any(|(k, s)| *k != 0 && !s.nonblocking && held(s))
        } else {
            !s.nonblocking && self.streams.get(&0).is_some_and(held)
        }
    }

    /// A host-to-device copy on a stream that may be held by the guest: take the bytes out of
    /// the window into the pinned bounce buffer now and complete at consume, so the guest gets
    /// its window range back (a held stream must not starve other streams of staging space,
    /// protocol §4.4, MemcpyHtoD). The device write keeps its place in the stream. `None`: the
    /// bounce buffer is full (the copy then reads the window in place, as any other).
    fn bounced_h2d(&mut self, cmd: &Command, s: sys::CUstream, dst: u64, off: u64, len: u64) -> Option<R> {
        if len > BOUNCE_BYTES / 4 {
            return None;
        }
        if self.bounce.is_none() {
            let mut host: *mut c_void = std::ptr::null_mut();
            // SAFETY: valid out-pointer; the context is current.
            if ck(unsafe { sys::cuMemHostAlloc(&mut host, BOUNCE_BYTES as usize, sys::CU_MEMHOSTALLOC_PORTABLE) }).is_err() {
                return None;
            }
            self.bounce = Some(Arc::new(Bounce { base: host.cast(), free: Mutex::new(FreeList::new(BOUNCE_BYTES, 256)) }));
        }
        let b = self.bounce.clone()?;
        let (at, n) = lock(&b.free).alloc(len)?;
        let src = self.region.window_ptr(off, len)?;
        // SAFETY: `at + n <= BOUNCE_BYTES` (the free list's arena) and `len <= n`; the window
        // range was checked by window_ptr; raw copy between two live mappings.
        let dst_host = unsafe { b.base.add(at as usize) };
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(src, dst_host, len as usize) };
        // SAFETY: `dst_host..+len` is pinned bounce memory held until the callback below frees
        // it (after the copy ran); `dst..dst+len` lies in a live allocation (checked by caller).
        if let Err(r) = ck(unsafe { sys::cuMemcpyHtoDAsync_v2(dst, dst_host.cast(), len as usize, s) }) {
            lock(&b.free).free(at, n);
            return Some(Err(self.fail(r)));
        }
        let st = self.streams.get_mut(&cmd.stream)?;
        st.gen += 1;
        st.work = st.gen;
        let (gen, mark, sticky) = (st.gen, st.done.clone(), self.sticky.clone());
        let b2 = b.clone();
        let r = add_callback(s, move |status| {
            lock(&b2.free).free(at, n);
            mark.fetch_max(gen, Ordering::AcqRel);
            if status != code::SUCCESS {
                let _ = sticky.compare_exchange(0, status, Ordering::AcqRel, Ordering::Relaxed);
            }
        });
        if let Err(r) = r {
            // The copy is queued: the bounce range stays taken (leaked) rather than reused early.
            return Some(Err(self.fail(r)));
        }
        Some(Ok(Some([0, 0])))
    }

    fn tokens(&mut self) -> Result<Arc<Tokens>, Fail> {
        if let Some(t) = &self.tokens {
            return Ok(t.clone());
        }
        let bytes = MAX_TOKENS * 4;
        let mut host: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the context is current.
        ck(unsafe { sys::cuMemHostAlloc(&mut host, bytes, sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP) })
            .map_err(|r| self.fail(r))?;
        // SAFETY: `host` is `bytes` bytes of fresh pinned memory.
        unsafe { std::ptr::write_bytes(host.cast::<u8>(), 0, bytes) };
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: `host` was allocated DEVICEMAP; flags must be 0.
        if let Err(r) = ck(unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host, 0) }) {
            // SAFETY: freeing what was just allocated; nothing references it.
            unsafe { sys::cuMemFreeHost(host) };
            return Err(self.fail(r));
        }
        let t = Arc::new(Tokens {
            st: Mutex::new(TokenState { slots: TokenSlots::new(MAX_TOKENS), closed: false }),
            cv: Condvar::new(),
            words: host.cast(),
            dev,
        });
        self.tokens = Some(t.clone());
        Ok(t)
    }

    fn handle_stream(&mut self) -> u32 {
        let h = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1).max(1);
        h
    }

    /// Fail a non-capturable command on a capturing stream and invalidate the capture.
    fn capture_gate(&mut self, cmd: &Command, call: Call) -> Result<bool, Fail> {
        if !call.stream_ordered() || matches!(call, Call::StreamBeginCapture | Call::StreamEndCapture) {
            return Ok(false);
        }
        match self.streams.get_mut(&cmd.stream).and_then(|s| s.capture.as_mut()) {
            None => Ok(false),
            Some(_) if call.capturable() => Ok(true),
            Some(inv) => {
                *inv = true;
                Err(Status::CaptureUnsupported.into())
            }
        }
    }

    fn exec(&mut self, cmd: &Command, call: Call, done: &Completer) -> R {
        let a = cmd.args;
        let seq = cmd.seq;
        if call != Call::Nop {
            let s = self.sticky.load(Ordering::Acquire);
            if s != 0 {
                return Err(Fail(Status::DeviceError, s));
            }
        }
        self.ensure_current();
        let capturing = self.capture_gate(cmd, call)?;
        match call {
            Call::Nop => Ok(Some([0, 0])),
            Call::MemAlloc => {
                let size = a[0];
                if size == 0 {
                    return Err(Status::InvalidArgument.into());
                }
                if self.allocs >= self.opts.limits.max_allocations {
                    return Err(Status::OutOfMemory.into());
                }
                let n = usize::try_from(size).map_err(|_| Status::OutOfMemory)?;
                let mut p: sys::CUdeviceptr = 0;
                // SAFETY: valid out-pointer; any size is accepted (the driver refuses what it
                // cannot give with CUDA_ERROR_OUT_OF_MEMORY).
                ck(unsafe { sys::cuMemAlloc_v2(&mut p, n) }).map_err(|r| self.fail(r))?;
                self.ranges.insert(p, size, MemKind::Alloc);
                self.allocs += 1;
                self.in_use += size;
                self.stats.mem_in_use.store(self.in_use, Ordering::Relaxed);
                self.stats.mem_peak.fetch_max(self.in_use, Ordering::Relaxed);
                self.stats.allocations.fetch_add(1, Ordering::Relaxed);
                Ok(Some([p, 0]))
            }
            Call::MemFree => {
                // Invalid for every later command at once; freed once earlier work is done.
                let len = self.ranges.remove_alloc(a[0]).ok_or(Status::InvalidDevicePointer)?;
                self.allocs -= 1;
                self.in_use -= len;
                self.stats.mem_in_use.store(self.in_use, Ordering::Relaxed);
                self.after_all(seq, done, Some(Job::Free { ptr: a[0], seq, done: done.clone() }))
            }
            Call::MemcpyHtoD => {
                let (dst, off, len) = (a[0], a[1], a[2]);
                self.window(off, len)?;
                if !self.ranges.contains(dst, len) {
                    return Err(Status::InvalidDevicePointer.into());
                }
                let s = self.stream(cmd.stream)?.cu;
                if capturing && matches!(self.window, Window::Shadow { .. }) {
                    return Err(Status::NotSupported.into());
                }
                self.stats.bytes_h2d.fetch_add(len, Ordering::Relaxed);
                if len > 0 && !capturing && self.held(cmd.stream) {
                    if let Some(r) = self.bounced_h2d(cmd, s, dst, off, len) {
                        return r;
                    }
                }
                if len > 0 {
                    let src = self.h2d_src(off, len)?;
                    // SAFETY: `src..src+len` is inside the registered window (or its shadow),
                    // pinned and alive until the copy's completion (which the guest waits for
                    // before reusing the range); `dst..dst+len` is inside a live allocation.
                    ck(unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), len as usize, s) }).map_err(|r| self.fail(r))?;
                }
                if capturing {
                    return Ok(Some([0, 0]));
                }
                self.complete_after(cmd.stream, true, seq, done, None)
            }
            Call::MemcpyDtoH => {
                let (src, off, len) = (a[0], a[1], a[2]);
                self.window(off, len)?;
                if !self.ranges.contains(src, len) {
                    return Err(Status::InvalidDevicePointer.into());
                }
                let s = self.stream(cmd.stream)?.cu;
                if capturing && matches!(self.window, Window::Shadow { .. }) {
                    return Err(Status::NotSupported.into());
                }
                self.stats.bytes_d2h.fetch_add(len, Ordering::Relaxed);
                let mut then = None;
                if len > 0 {
                    let (dst, t) = self.d2h_dst(off, len)?;
                    then = t;
                    // SAFETY: `dst..dst+len` is inside the registered window (or its shadow),
                    // pinned and alive until the completion; `src..src+len` inside a live
                    // allocation or module global.
                    ck(unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, len as usize, s) }).map_err(|r| self.fail(r))?;
                }
                if capturing {
                    return Ok(Some([0, 0]));
                }
                self.complete_after(cmd.stream, true, seq, done, then)
            }
            Call::MemcpyDtoD => {
                let (dst, src, len) = (a[0], a[1], a[2]);
                if !self.ranges.contains(dst, len) || !self.ranges.contains(src, len) {
                    return Err(Status::InvalidDevicePointer.into());
                }
                let s = self.stream(cmd.stream)?.cu;
                self.stats.bytes_d2d.fetch_add(len, Ordering::Relaxed);
                if len > 0 {
                    // SAFETY: both ranges lie inside live device memory of this session.
                    ck(unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, len as usize, s) }).map_err(|r| self.fail(r))?;
                }
                if capturing {
                    return Ok(Some([0, 0]));
                }
                self.complete_after(cmd.stream, true, seq, done, None)
            }
            Call::Memset => {
                let (dst, value, len) = (a[0], a[1], a[2]);
                if value > 0xff {
                    return Err(Status::InvalidArgument.into());
                }
                if !self.ranges.contains(dst, len) {
                    return Err(Status::InvalidDevicePointer.into());
                }
                let s = self.stream(cmd.stream)?.cu;
                if len > 0 {
                    // SAFETY: the range lies inside live device memory of this session.
                    ck(unsafe { sys::cuMemsetD8Async(dst, value as u8, len as usize, s) }).map_err(|r| self.fail(r))?;
                }
                if capturing {
                    return Ok(Some([0, 0]));
                }
                self.complete_after(cmd.stream, true, seq, done, None)
            }
            Call::StreamCreate => {
                if a[0] & !stream_flags::KNOWN != 0 || a[1] as i64 != a[1] as i32 as i64 {
                    return Err(Status::InvalidArgument.into());
                }
                if self.streams.len() >= self.opts.limits.max_streams {
                    return Err(Status::QuotaExceeded.into());
                }
                let nonblocking = a[0] & stream_flags::NON_BLOCKING != 0;
                let prio = (a[1] as i32).clamp(self.prio.0, self.prio.1);
                let flags =
                    if nonblocking { sys::CUstream_flags::CU_STREAM_NON_BLOCKING } else { sys::CUstream_flags::CU_STREAM_DEFAULT } as u32;
                let mut s: sys::CUstream = std::ptr::null_mut();
                // SAFETY: valid out-pointer, known flags, priority in the device's range.
                ck(unsafe { sys::cuStreamCreateWithPriority(&mut s, flags, prio) }).map_err(|r| self.fail(r))?;
                let fence = match self.new_event(event_flags::DISABLE_TIMING) {
                    Ok(e) => e,
                    Err(f) => {
                        // SAFETY: the stream was just created and has no work.
                        unsafe { sys::cuStreamDestroy_v2(s) };
                        return Err(f);
                    }
                };
                let h = self.handle_stream();
                self.streams.insert(
                    h,
                    Stream {
                        cu: s,
                        fence,
                        nonblocking,
                        capture: None,
                        gen: 0,
                        work: 0,
                        done: Arc::new(AtomicU64::new(0)),
                        hold: Arc::new(AtomicU64::new(0)),
                    },
                );
                self.stats.streams.store(self.streams.len() as u64 - 1, Ordering::Relaxed);
                Ok(Some([h as u64, 0]))
            }
            Call::StreamDestroy => {
                let h = u32::try_from(a[0]).map_err(|_| Status::InvalidHandle)?;
                if h == 0 || !self.streams.contains_key(&h) {
                    return Err(Status::InvalidHandle.into());
                }
                if self.streams.get(&h).is_some_and(|s| s.capture.is_some()) {
                    if let Ok(g) = self.end_capture(h) {
                        // SAFETY: the capture's graph, referenced nowhere.
                        unsafe { sys::cuGraphDestroy(g) };
                    }
                }
                // Completed by a callback behind the stream's work; the stream's fence keeps that
                // work visible to device-wide waits until it is done.
                let r = self.complete_after(h, false, seq, done, None);
                let Some(s) = self.streams.remove(&h) else { return r };
                self.stats.streams.store(self.streams.len() as u64 - 1, Ordering::Relaxed);
                // SAFETY: live stream and event; cuStreamDestroy returns at once and the driver
                // releases the stream when its work is done.
                unsafe {
                    if ck(sys::cuEventRecord(s.fence, s.cu)).is_ok() {
                        self.draining.push(s.fence);
                    } else {
                        sys::cuEventDestroy_v2(s.fence);
                    }
                    sys::cuStreamDestroy_v2(s.cu);
                }
                r
            }
            Call::StreamSync => {
                self.stream(cmd.stream)?;
                // An idle stream (its callbacks included, so their completions are posted):
                // complete now, without a trip through the device.
                if self.settled_with_deps(cmd.stream) {
                    return Ok(Some([0, 0]));
                }
                self.complete_after(cmd.stream, false, seq, done, None)
            }
            Call::DeviceSync => self.after_all(seq, done, None),
            Call::EventCreate => {
                if a[0] & !event_flags::KNOWN != 0 {
                    return Err(Status::InvalidArgument.into());
                }
                if a[0] & event_flags::INTERPROCESS != 0 {
                    // CUDA requires DISABLE_TIMING with it; IPC events cannot cross the VM.
                    return Err(if a[0] & event_flags::DISABLE_TIMING == 0 { Status::InvalidArgument } else { Status::NotSupported }.into());
                }
                if self.events.len() >= self.opts.limits.max_events {
                    return Err(Status::QuotaExceeded.into());
                }
                let e = self.new_event(a[0])?;
                let ev = Event { cu: e, flags: a[0], recorded: false, quick: false, at: None };
                let h = self.events.insert(&mut self.next, ev).map_err(|ev| {
                    // SAFETY: the event was just created and is unused.
                    unsafe { sys::cuEventDestroy_v2(ev.cu) };
                    Status::QuotaExceeded
                })?;
                self.stats.events.store(self.events.len() as u64, Ordering::Relaxed);
                Ok(Some([h, 0]))
            }
            Call::EventDestroy => {
                let ev = self.events.remove(a[0])?;
                // SAFETY: the event is gone from the table; the driver defers the release of an
                // event still being recorded, and waits already queued captured their record.
                unsafe { sys::cuEventDestroy_v2(ev.cu) };
                self.stats.events.store(self.events.len() as u64, Ordering::Relaxed);
                Ok(Some([0, 0]))
            }
            Call::EventRecord => {
                let st = self.stream(cmd.stream)?;
                let (s, at) = (st.cu, (st.done.clone(), st.gen));
                let quick = self.quiet(cmd.stream);
                let ev = self.events.get_mut(a[0])?;
                // SAFETY: live event and stream of this session.
                let r = ck(unsafe { sys::cuEventRecord(ev.cu, s) });
                if r.is_ok() {
                    ev.recorded = true;
                    ev.quick = quick;
                    ev.at = Some(at);
                }
                r.map_err(|r| self.fail(r))?;
                self.complete_after(cmd.stream, false, seq, done, None)
            }
            Call::EventQuery => {
                let ev = self.events.get(a[0])?;
                match event_done(ev) {
                    Ok(true) => Ok(Some([0, 0])),
                    Ok(false) => Err(Status::NotReady.into()),
                    Err(r) => Err(self.fail(r)),
                }
            }
            Call::EventSync => {
                let ev = self.events.get(a[0])?;
                let (e, at) = (ev.cu, ev.at.clone());
                // Already reached (or never recorded): the callbacks before the record have run.
                // SAFETY: a live event of this session.
                if unsafe { sys::cuEventQuery(e) } as u32 == code::SUCCESS {
                    if let Some((m, g)) = at {
                        m.fetch_max(g, Ordering::AcqRel);
                    }
                    return Ok(Some([0, 0]));
                }
                let (h, busy) = self.helper()?;
                // SAFETY: live helper stream and event; the wait captures the event's most
                // recent record now (a never-recorded event is no wait at all).
                if let Err(r) = ck(unsafe { sys::cuStreamWaitEvent(h, e, 0) }) {
                    busy.store(false, Ordering::Release);
                    return Err(self.fail(r));
                }
                let (d, sticky) = (done.clone(), self.sticky.clone());
                add_callback(h, move |st| {
                    busy.store(false, Ordering::Release);
                    // The record's stream has finished everything before the record.
                    if let Some((m, g)) = at {
                        m.fetch_max(g, Ordering::AcqRel);
                    }
                    post(&d, seq, st, &sticky);
                })
                .map_err(|r| self.fail(r))?;
                Ok(None)
            }
            Call::EventElapsed => {
                let (s, e) = (self.events.get(a[0])?, self.events.get(a[1])?);
                if (s.flags | e.flags) & event_flags::DISABLE_TIMING != 0 || !s.recorded || !e.recorded {
                    return Err(Status::EventNoTiming.into());
                }
                for ev in [s, e] {
                    match event_done(ev) {
                        Ok(true) => {}
                        Ok(false) => return Err(Status::NotReady.into()),
                        Err(r) => return Err(self.fail(r)),
                    }
                }
                let mut ms = 0f32;
                // SAFETY: valid out-pointer, two live completed timing events.
                match unsafe { sys::cuEventElapsedTime(&mut ms, s.cu, e.cu) } as u32 {
                    code::SUCCESS => Ok(Some([ms.to_bits() as u64, 0])),
                    code::NOT_READY => Err(Status::NotReady.into()),
                    code::INVALID_HANDLE => Err(Status::EventNoTiming.into()),
                    r => Err(self.fail(r)),
                }
            }
            Call::StreamWaitEvent => {
                if a[1] != 0 {
                    return Err(Status::InvalidArgument.into());
                }
                let e = self.events.get(a[0])?.cu;
                let s = self.stream(cmd.stream)?.cu;
                // SAFETY: live stream and event; a never-recorded event is no wait.
                ck(unsafe { sys::cuStreamWaitEvent(s, e, 0) }).map_err(|r| self.fail(r))?;
                let hold = self.hold_start(cmd.stream);
                self.complete_after(cmd.stream, true, seq, done, Some(Box::new(move || hold_end(&hold))))
            }
            Call::StreamWaitToken => self.wait_token(cmd, done),
            Call::SignalToken => {
                let t = self.tokens.clone().ok_or(Status::InvalidHandle)?;
                let (slot, value) = lock(&t.st).slots.signal(a[0])?;
                t.release(slot, value);
                Ok(Some([0, 0]))
            }
            Call::PrintfDrain => {
                // The driver prints a kernel's printf output itself, to this worker's stdout, at
                // the synchronising call; the executor holds none for the guest (and never sets
                // PRINTF_PENDING). Forwarding it to the guest is not done yet (docs/executors.md).
                let (off, len) = (a[0], a[1]);
                self.region.window_range(off, len).ok_or(Status::InvalidWindowRange)?;
                Ok(Some([0, 0]))
            }
            Call::MemGetInfo => {
                let (mut free, mut total) = (0usize, 0usize);
                // SAFETY: valid out-pointers; the context is current.
                ck(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }).map_err(|r| self.fail(r))?;
                Ok(Some([free as u64, total as u64]))
            }
            Call::DeviceInfo => {
                let (off, len) = (a[0], a[1]);
                let size = std::mem::size_of::<DeviceInfo>() as u64;
                self.window(off, len)?;
                if len < size {
                    return Err(Status::InvalidArgument.into());
                }
                // SAFETY: DeviceInfo is a #[repr(C)] struct of integers and byte arrays with no
                // padding (512 bytes, asserted in wire.rs); viewing it as bytes is sound.
                let bytes = unsafe { std::slice::from_raw_parts((&self.info as *const DeviceInfo).cast::<u8>(), size as usize) };
                self.region.write_window(off, bytes).map_err(|_| Status::InvalidWindowRange)?;
                Ok(Some([0, 0]))
            }
            Call::ModuleData => {
                self.uploads.part(&self.region, &a)?;
                Ok(Some([0, 0]))
            }
            Call::ModuleLoad => self.module_load(a),
            Call::ModuleUnload => {
                let m = self.modules.remove(a[0])?;
                let id = a[0];
                self.funcs.retain(|_, f| f.module != id);
                self.ranges.remove_module(id);
                self.after_all(seq, done, Some(Job::Unload { module: SendPtr(m.cu), seq, done: done.clone() }))
            }
            Call::FuncGet => self.func_get(a),
            Call::Launch => self.launch(cmd, capturing),
            Call::SymbolGet => {
                let m = self.modules.get(a[0])?.cu;
                let name = self.window_name(a[1], a[2])?;
                let (mut p, mut bytes): (sys::CUdeviceptr, usize) = (0, 0);
                // SAFETY: valid out-pointers, a live module, a NUL-terminated name.
                ck(unsafe { sys::cuModuleGetGlobal_v2(&mut p, &mut bytes, m, name.as_ptr()) }).map_err(|r| self.fail(r))?;
                // a3: the size the guest registered (0: any); more than the variable has is wrong.
                if a[3] > bytes as u64 {
                    return Err(Status::InvalidArgument.into());
                }
                self.ranges.insert(p, bytes as u64, MemKind::Symbol(a[0]));
                Ok(Some([p, bytes as u64]))
            }
            Call::FuncSetAttr => {
                let at = settable_func_attr(a[1]).ok_or(Status::InvalidArgument)?;
                let v = i32_arg(a[2]).ok_or(Status::InvalidArgument)?;
                let f = self.funcs.get(a[0])?.cu;
                let e = func_attr_enum(at).ok_or(Status::InvalidArgument)?;
                // SAFETY: a live function, a valid attribute.
                ck(unsafe { sys::cuFuncSetAttribute(f, e, v) }).map_err(|r| self.fail(r))?;
                let f = self.funcs.get_mut(a[0])?;
                f.info.max_dynamic_shared_size_bytes = func_attr(f.cu, 8).unwrap_or(f.info.max_dynamic_shared_size_bytes as i32) as u32;
                f.info.preferred_shmem_carveout = func_attr(f.cu, 9).unwrap_or(f.info.preferred_shmem_carveout);
                Ok(Some([0, 0]))
            }
            Call::Occupancy => {
                let f = self.funcs.get(a[0])?.cu;
                let threads = i32::try_from(a[1]).ok().filter(|&t| t > 0).ok_or(Status::InvalidArgument)?;
                let shared = usize::try_from(a[2]).map_err(|_| Status::InvalidArgument)?;
                if a[3] > 1 {
                    return Err(Status::InvalidArgument.into());
                }
                let mut n = 0;
                // SAFETY: valid out-pointer, a live function, checked sizes and flags.
                ck(unsafe { sys::cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&mut n, f, threads, shared, a[3] as u32) })
                    .map_err(|r| self.fail(r))?;
                Ok(Some([n.max(0) as u64, 0]))
            }
            Call::StreamBeginCapture => {
                if a[0] > 2 {
                    return Err(Status::InvalidArgument.into());
                }
                if cmd.stream == 0 {
                    return Err(Status::CaptureUnsupported.into());
                }
                let s = self.streams.get(&cmd.stream).ok_or(Status::InvalidHandle)?;
                if s.capture.is_some() {
                    return Err(Status::InvalidArgument.into());
                }
                // The guest enforces its capture mode itself; on the host every guest thread
                // shares this one, so the driver's capture is relaxed (it must not refuse other
                // guest threads' calls).
                // SAFETY: a live stream that is not capturing.
                ck(unsafe { sys::cuStreamBeginCapture_v2(s.cu, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) })
                    .map_err(|r| self.fail(r))?;
                if let Some(s) = self.streams.get_mut(&cmd.stream) {
                    s.capture = Some(false);
                }
                Ok(Some([0, 0]))
            }
            Call::StreamEndCapture => {
                let s = self.streams.get(&cmd.stream).ok_or(Status::InvalidHandle)?;
                let Some(invalidated) = s.capture else { return Err(Status::InvalidArgument.into()) };
                let g = self.end_capture(cmd.stream);
                match g {
                    Ok(g) if !invalidated => {
                        let h = self.graphs.insert(&mut self.next, SendPtr(g)).map_err(|g| {
                            // SAFETY: the graph was just made and is referenced nowhere.
                            unsafe { sys::cuGraphDestroy(g.0) };
                            Status::QuotaExceeded
                        })?;
                        Ok(Some([h, 0]))
                    }
                    Ok(g) => {
                        // SAFETY: as above.
                        unsafe { sys::cuGraphDestroy(g) };
                        Err(Status::CaptureInvalidated.into())
                    }
                    Err(code::STREAM_CAPTURE_INVALIDATED) => Err(Status::CaptureInvalidated.into()),
                    Err(r) => Err(self.fail(r)),
                }
            }
            Call::GraphInstantiate => {
                let g = self.graphs.get(a[0])?.0;
                if a[1] & !GRAPH_FLAGS != 0 {
                    return Err(Status::InvalidArgument.into());
                }
                let mut e: sys::CUgraphExec = std::ptr::null_mut();
                // SAFETY: valid out-pointer, a live graph, flags the driver accepts here.
                ck(unsafe { sys::cuGraphInstantiateWithFlags(&mut e, g, a[1] & !GRAPH_UPLOAD) }).map_err(|r| self.fail(r))?;
                let h = self.execs.insert(&mut self.next, SendPtr(e)).map_err(|e| {
                    // SAFETY: just instantiated, never launched.
                    unsafe { sys::cuGraphExecDestroy(e.0) };
                    Status::QuotaExceeded
                })?;
                Ok(Some([h, 0]))
            }
            Call::GraphExecUpdate => {
                let e = self.execs.get(a[0])?.0;
                let g = self.graphs.get(a[1])?.0;
                let mut info = std::mem::MaybeUninit::<UpdateInfo>::zeroed();
                // SAFETY: `UpdateInfo` has the layout of CUgraphExecUpdateResultInfo (an enum,
                // then two node handles) with the enum read as a plain u32; live exec and graph.
                let r = unsafe { sys::cuGraphExecUpdate_v2(e, g, info.as_mut_ptr().cast()) } as u32;
                // SAFETY: zero-initialised plain data, possibly written by the driver.
                let info = unsafe { info.assume_init() };
                match r {
                    code::SUCCESS | code::GRAPH_EXEC_UPDATE_FAILURE => Ok(Some([info.result as u64, 0])),
                    r => Err(self.fail(r)),
                }
            }
            Call::GraphLaunch => {
                let e = self.execs.get(a[0])?.0;
                let s = self.stream(cmd.stream)?.cu;
                // SAFETY: a live executable graph and stream.
                ck(unsafe { sys::cuGraphLaunch(e, s) }).map_err(|r| self.fail(r))?;
                if !capturing {
                    if let Some(s) = self.streams.get_mut(&cmd.stream) {
                        s.gen += 1;
                        s.work = s.gen;
                    }
                }
                self.stats.graph_launches.fetch_add(1, Ordering::Relaxed);
                Ok(Some([0, 0]))
            }
            Call::GraphDestroy => {
                let g = self.graphs.remove(a[0])?;
                // SAFETY: graphs are host-side templates; instantiated execs do not need them.
                unsafe { sys::cuGraphDestroy(g.0) };
                Ok(Some([0, 0]))
            }
            Call::GraphExecDestroy => {
                let e = self.execs.remove(a[0])?;
                // SAFETY: the driver frees an executable graph that is still running once its
                // launches finish.
                unsafe { sys::cuGraphExecDestroy(e.0) };
                Ok(Some([0, 0]))
            }
        }
    }

    /// End stream `h`'s capture in the driver: the graph, or the driver's error.
    fn end_capture(&mut self, h: u32) -> Result<sys::CUgraph, u32> {
        let Some(s) = self.streams.get_mut(&h) else { return Err(code::INVALID_HANDLE) };
        s.capture = None;
        let mut g: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: a live stream that is capturing; valid out-pointer.
        let r = ck(unsafe { sys::cuStreamEndCapture(s.cu, &mut g) });
        match r {
            Ok(()) if !g.is_null() => Ok(g),
            Ok(()) => Err(code::STREAM_CAPTURE_INVALIDATED),
            Err(r) => {
                if !g.is_null() {
                    // SAFETY: a graph the driver returned with its error; unused.
                    unsafe { sys::cuGraphDestroy(g) };
                }
                Err(r)
            }
        }
    }

    fn wait_token(&mut self, cmd: &Command, done: &Completer) -> R {
        let token = cmd.args[0];
        if token == 0 {
            return Err(Status::InvalidArgument.into());
        }
        let s = self.stream(cmd.stream)?.cu;
        let t = self.tokens()?;
        let (slot, value) = lock(&t.st).slots.open(token)?;
        let hold = self.hold_start(cmd.stream);
        // 1. The completion, once the stream reaches the token.
        if let Err(f) = self.complete_after(cmd.stream, true, cmd.seq, done, None) {
            lock(&t.st).slots.close(token);
            hold_end(&hold);
            return Err(f);
        }
        // 2. The hold: the stream waits for the word (the device polls pinned host memory).
        let addr = t.dev + slot as u64 * 4;
        // SAFETY: `addr` is the device address of a word of live pinned host memory (MAX_TOKENS
        // words, slot < MAX_TOKENS).
        let r = ck(unsafe { sys::cuStreamWaitValue32_v2(s, addr, value, sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32) });
        if let Err(r) = r {
            // Without stream memory operations: a callback that blocks until the signal (or the
            // session's end). It may delay other streams' callbacks; warned once.
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| warn!(target: "vgpu::cuda", "cuStreamWaitValue32 unavailable ({}); host-function tokens block a driver callback thread", driver::error_name(r)));
            let t2 = t.clone();
            if let Err(r) = add_callback(s, move |_| t2.hold(slot, value)) {
                lock(&t.st).slots.close(token);
                hold_end(&hold);
                return Err(self.fail(r));
            }
        }
        // 3. Once the stream has passed the hold, the token is no longer live.
        let (t2, h2) = (t.clone(), hold.clone());
        // The hold is device work of the stream: it is not idle until the hold is passed.
        let (gen, mark) = match self.streams.get_mut(&cmd.stream) {
            Some(st) => {
                st.gen += 1;
                st.work = st.gen;
                (st.gen, st.done.clone())
            }
            None => (0, Arc::default()),
        };
        if let Err(r) = add_callback(s, move |_| {
            lock(&t2.st).slots.close(token);
            hold_end(&h2);
            mark.fetch_max(gen, Ordering::AcqRel);
        }) {
            lock(&t.st).slots.close(token);
            hold_end(&hold);
            return Err(self.fail(r));
        }
        Ok(None)
    }

    fn window_name(&self, off: u64, len: u64) -> Result<CString, Status> {
        self.window(off, len)?;
        let buf =
            self.region.read_window_vec(off, len.min(MAX_NAME)).map_err(|_| Status::InvalidWindowRange)?.ok_or(Status::OutOfMemory)?;
        c_name(&buf).ok_or(Status::InvalidArgument)
    }

    fn module_load(&mut self, a: [u64; 6]) -> R {
        let (id, hash, len) = vgpu_transport::wire::parse_module_load_args(&a);
        let uploaded = id != 0;
        let img = if uploaded {
            self.uploads.finish(id, hash, len)?
        } else if let Some(img) = self.images.get(&hash).filter(|i| i.bytes.len() as u64 == len) {
            img.clone()
        } else {
            let img = self.opts.cache.get(hash, len).ok_or(Status::NotFound)?;
            self.stats.modules_cached.fetch_add(1, Ordering::Relaxed);
            img
        };
        if self.modules.len() >= self.opts.limits.max_modules {
            return Err(Status::QuotaExceeded.into());
        }
        // Only a well-formed fatbin container reaches the driver's own parser, which is not ours
        // to harden against hostile input.
        if let Err(e) = vgpu_fatbin::Fatbin::parse(&img.bytes) {
            warn!(target: "vgpu::cuda", hash = format!("{hash:x}"), "module refused: {e}");
            return Err(Status::InvalidImage.into());
        }
        // An 8-aligned copy: the driver reads the fatbin header as 64-bit words.
        let mut words = vec![0u64; img.bytes.len().div_ceil(8) + 1];
        // SAFETY: `words` holds at least `img.bytes.len()` bytes; the copy is in bounds.
        unsafe { std::ptr::copy_nonoverlapping(img.bytes.as_ptr(), words.as_mut_ptr().cast::<u8>(), img.bytes.len()) };
        let mut m: sys::CUmodule = std::ptr::null_mut();
        // SAFETY: valid out-pointer; `words` holds the whole image and outlives the call (the
        // driver copies what it keeps). A corrupt image is rejected by the driver's parser.
        let r = ck(unsafe { sys::cuModuleLoadData(&mut m, words.as_ptr().cast()) });
        if let Err(r) = r {
            debug!(target: "vgpu::cuda", hash = format!("{hash:x}"), "cuModuleLoadData: {}", driver::error_name(r));
            return Err(match r {
                code::INVALID_IMAGE | code::NO_BINARY_FOR_GPU => logic::module_load_status(r),
                r => self.fail(r),
            });
        }
        if uploaded {
            // Cached only once the driver accepted it.
            self.opts.cache.put(&img);
        }
        self.images.insert(hash, img.clone());
        let h = self.modules.insert(&mut self.next, Module { cu: m, image: img, parsed: None, funcs: HashMap::new() }).map_err(|m| {
            // SAFETY: the module was just loaded; nothing uses it.
            unsafe { sys::cuModuleUnload(m.cu) };
            Status::QuotaExceeded
        })?;
        self.stats.modules_loaded.fetch_add(1, Ordering::Relaxed);
        Ok(Some([h, 0]))
    }

    fn func_get(&mut self, a: [u64; 6]) -> R {
        let (mh, off, len) = (a[0], a[1], a[2]);
        self.modules.get(mh)?;
        let name = self.window_name(off, len)?;
        let module = self.modules.get(mh)?;
        let h = match module.funcs.get(&name) {
            Some(&h) => h,
            None => {
                let mut f: sys::CUfunction = std::ptr::null_mut();
                // SAFETY: valid out-pointer, a live module, a NUL-terminated name.
                ck(unsafe { sys::cuModuleGetFunction(&mut f, module.cu, name.as_ptr()) }).map_err(|r| self.fail(r))?;
                let params = self.param_layout(mh, f, &name)?;
                let mut info = FuncInfo::default();
                let g = |a: u32| func_attr(f, a).unwrap_or(0);
                info.num_params = params.params.len() as u32;
                info.param_bytes = params.bytes;
                info.max_threads_per_block = g(0) as u32;
                info.shared_size_bytes = g(1) as u32;
                info.const_size_bytes = g(2) as u32;
                info.local_size_bytes = g(3) as u32;
                info.num_regs = g(4) as u32;
                info.ptx_version = g(5) as u32;
                info.binary_version = g(6) as u32;
                info.cache_mode_ca = g(7) as u32;
                info.max_dynamic_shared_size_bytes = g(8) as u32;
                info.preferred_shmem_carveout = g(9);
                let func = Func { cu: f, module: mh, name: name.to_string_lossy().into_owned(), info, params };
                let h = self.funcs.insert(&mut self.next, func).map_err(|_| Status::QuotaExceeded)?;
                if let Ok(m) = self.modules.get_mut(mh) {
                    m.funcs.insert(name, h);
                }
                h
            }
        };
        let f = self.funcs.get(h)?;
        let bytes = vgpu_transport::wire::encode_func_info(&f.info, &f.params.params);
        if (bytes.len() as u64) > len {
            return Err(Status::InvalidArgument.into());
        }
        self.region.write_window(off, &bytes).map_err(|_| Status::InvalidWindowRange)?;
        Ok(Some([h, bytes.len() as u64]))
    }

    /// The parameter layout of `f`: from the driver (cuFuncGetParamInfo, 12.4+), else from the
    /// module's cubin (`.nv.info` KPARAM records).
    fn param_layout(&mut self, mh: u64, f: sys::CUfunction, name: &CString) -> Result<Params, Status> {
        if self.drv.has_param_info {
            let mut params = Vec::new();
            let mut ok = true;
            for i in 0..=MAX_PARAMS {
                let (mut off, mut size) = (0usize, 0usize);
                // SAFETY: present in this driver (checked at load), a live function, valid
                // out-pointers.
                match unsafe { sys::cuFuncGetParamInfo(f, i, &mut off, &mut size) } as u32 {
                    code::SUCCESS => params.push(ParamInfo { offset: off as u32, size: size as u32 }),
                    code::INVALID_VALUE => break,
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                return Params::new(params);
            }
        }
        let cc = (self.info.cc_major, self.info.cc_minor);
        let m = self.modules.get_mut(mh)?;
        // A PTX-only module (the driver JITs it) has no cubin to read: its PTX signatures give
        // the layouts (`parse_emu`).
        let image = &m.image;
        let parsed = m.parsed.get_or_insert_with(|| {
            match modules::parse_for(image, cc).or_else(|_| modules::parse(image)).or_else(|_| modules::parse_emu(image)) {
                Ok(p) => Ok(p),
                Err((s, why)) => {
                    warn!(target: "vgpu::cuda", "no parameter layouts for module {:x}: {why}", m.image.hash);
                    Err(s)
                }
            }
        });
        let p = parsed.as_ref().map_err(|_| Status::NotSupported)?;
        let k = p.kernel(&name.to_string_lossy()).ok_or(Status::NotSupported)?;
        Params::new(k.params.clone())
    }

    fn launch(&mut self, cmd: &Command, capturing: bool) -> R {
        let a = cmd.args;
        let f = self.funcs.get(a[0])?;
        let s = self.streams.get(&cmd.stream).ok_or(Status::InvalidHandle)?.cu;
        let grid = launch::unpack_grid(a[1]);
        let (bx, by, bz, flags) = launch::unpack_block(a[2]);
        if flags & !launch::KNOWN_FLAGS != 0 {
            return Err(Status::InvalidArgument.into());
        }
        let (off, len) = (a[4], a[5]);
        self.window(off, len)?;
        modules::validate_launch(&f.info, grid, (bx, by, bz), a[3], len, &self.limits)?;
        let shared = u32::try_from(a[3]).map_err(|_| Status::LaunchOutOfResources)?;
        let packed = self.region.read_window_vec(off, len).map_err(|_| Status::InvalidWindowRange)?.ok_or(Status::OutOfMemory)?;
        let mut storage = f.params.storage(&packed)?;
        let mut ptrs = f.params.pointers(&mut storage);
        let kp = if ptrs.is_empty() { std::ptr::null_mut() } else { ptrs.as_mut_ptr() };
        let r = if flags & launch::COOPERATIVE != 0 {
            // SAFETY: a live function; `kp` holds one pointer per parameter into `storage`,
            // which holds `param_bytes` bytes (checked against the layout); the driver copies
            // the parameters before it returns.
            unsafe { sys::cuLaunchCooperativeKernel(f.cu, grid.0, grid.1, grid.2, bx, by, bz, shared, s, kp) }
        } else {
            // SAFETY: as above; no `extra`.
            unsafe { sys::cuLaunchKernel(f.cu, grid.0, grid.1, grid.2, bx, by, bz, shared, s, kp, std::ptr::null_mut()) }
        };
        match ck(r) {
            Ok(()) => {}
            Err(code::INVALID_VALUE) => return Err(Status::InvalidConfiguration.into()),
            Err(r) => return Err(self.fail(r)),
        }
        // Captured launches are recorded by the driver, not run: not logged (as emu, which logs
        // graph replays instead; the driver replays graphs itself, so cuda does not).
        if let Some(log) = self.opts.launch_log.as_ref().filter(|_| !capturing) {
            self.launches += 1;
            log.write(&LaunchRecord {
                session: self.opts.session,
                seq: self.launches,
                stream: cmd.stream,
                kernel: f.name.clone(),
                grid: [grid.0, grid.1, grid.2],
                block: [bx, by, bz],
                shared: a[3],
                params: Arc::from(packed),
                graph: false,
            });
        }
        if !capturing {
            if let Some(s) = self.streams.get_mut(&cmd.stream) {
                s.gen += 1;
                s.work = s.gen;
            }
        }
        self.stats.launches.fetch_add(1, Ordering::Relaxed);
        Ok(Some([0, 0]))
    }

    /// Wait (bounded) until the device has finished everything queued; `false` on timeout.
    /// Session teardown only: it polls each stream and event every millisecond because a
    /// blocking `cuStreamSynchronize` could not be bounded by `timeout` (a hung kernel).
    fn drain_device(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let busy = self.streams.values().any(|s| stream_busy(s.cu))
                || self.helpers.iter().any(|h| stream_busy(h.cu))
                || self.draining.iter().any(|&e| event_busy(e));
            if !busy {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A guest-controlled wait has been passed (see `Cuda::hold_start`).
fn hold_end(hold: &AtomicU64) {
    hold.fetch_sub(1, Ordering::AcqRel);
}

fn stream_busy(s: sys::CUstream) -> bool {
    // SAFETY: a live stream of this session.
    let r = unsafe { sys::cuStreamQuery(s) };
    r as u32 == code::NOT_READY
}

fn event_busy(e: sys::CUevent) -> bool {
    // SAFETY: a live event of this session.
    let r = unsafe { sys::cuEventQuery(e) };
    r as u32 == code::NOT_READY
}

/// `CUgraphExecUpdateResultInfo` with its result read as a plain integer.
#[repr(C)]
struct UpdateInfo {
    result: u32,
    error_node: *mut c_void,
    error_from_node: *mut c_void,
}

/// Whether the work an event captured has finished. A record made on an idle stream is waited
/// for briefly (the device processes it within microseconds): a guest that saw a stream's work
/// complete and then records and queries gets Ok.
fn event_done(ev: &Event) -> Result<bool, u32> {
    let deadline = Instant::now() + QUICK_WAIT;
    loop {
        // SAFETY: a live event of this session.
        match unsafe { sys::cuEventQuery(ev.cu) } as u32 {
            code::SUCCESS => return Ok(true),
            // Yield, not spin: the driver's callback thread may need this core to get there.
            code::NOT_READY if ev.quick && Instant::now() < deadline => std::thread::yield_now(),
            code::NOT_READY => return Ok(false),
            r => return Err(r),
        }
    }
}

/// A function attribute (`CUfunction_attribute` 0..=9), `None` if the driver will not say.
fn func_attr(f: sys::CUfunction, a: u32) -> Option<i32> {
    use sys::CUfunction_attribute as F;
    let e = match a {
        0 => F::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
        1 => F::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
        2 => F::CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES,
        3 => F::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES,
        4 => F::CU_FUNC_ATTRIBUTE_NUM_REGS,
        5 => F::CU_FUNC_ATTRIBUTE_PTX_VERSION,
        6 => F::CU_FUNC_ATTRIBUTE_BINARY_VERSION,
        7 => F::CU_FUNC_ATTRIBUTE_CACHE_MODE_CA,
        8 => F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        9 => F::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
        _ => return None,
    };
    let mut v = 0;
    // SAFETY: valid out-pointer, a live function, a valid attribute.
    ck(unsafe { sys::cuFuncGetAttribute(&mut v, e, f) }).ok()?;
    Some(v)
}

/// The attribute FuncSetAttr sets (8..=15, the same numbers as cudaFuncAttribute).
fn func_attr_enum(a: u32) -> Option<sys::CUfunction_attribute> {
    use sys::CUfunction_attribute as F;
    Some(match a {
        8 => F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        9 => F::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
        10 => F::CU_FUNC_ATTRIBUTE_CLUSTER_SIZE_MUST_BE_SET,
        11 => F::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH,
        12 => F::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT,
        13 => F::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH,
        14 => F::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
        15 => F::CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE,
        _ => return None,
    })
}

/// The reaper: frees and unloads after device-wide waits, off the dispatcher (cuMemFree may
/// wait for the device). Ends when the executor drops its sender.
fn reaper(ctx: SendPtr<sys::CUcontext>, rx: mpsc::Receiver<Job>, sticky: Arc<AtomicU32>) {
    // SAFETY: the context is retained until the executor has joined this thread.
    let _ = unsafe { sys::cuCtxSetCurrent(ctx.0) };
    while let Ok(job) = rx.recv() {
        let (seq, done) = match &job {
            Job::Free { seq, done, .. } | Job::Unload { seq, done, .. } => (*seq, done.clone()),
        };
        let r = run_job(job);
        post(&done, seq, r, &sticky);
    }
}

/// Free or unload (on the reaper, or on the dispatcher when the device is idle); the result.
fn run_job(job: Job) -> u32 {
    match job {
        Job::Free { ptr, .. } => {
            // SAFETY: `ptr` is an allocation of this session, already gone from its tables, and
            // every command submitted before its MemFree has finished.
            let r = unsafe { sys::cuMemFree_v2(ptr) };
            r as u32
        }
        Job::Unload { module, .. } => {
            // SAFETY: the module is gone from the session's tables and every command submitted
            // before its unload has finished.
            let r = unsafe { sys::cuModuleUnload(module.0) };
            r as u32
        }
    }
}

impl Executor for Cuda {
    fn execute(&mut self, cmd: &Command, call: Call, done: &Completer) -> Option<Completion> {
        if self.ended {
            return Some(reply(cmd.seq, Status::DeviceError.into(), [0, 0]));
        }
        match self.exec(cmd, call, done) {
            Ok(Some(r)) => Some(reply(cmd.seq, Status::Ok.into(), r)),
            Ok(None) => None,
            Err(f) => {
                debug!(target: "vgpu::cuda", seq = cmd.seq, call = call.name(), status = f.0.name(), aux = f.1, "rejected");
                Some(reply(cmd.seq, f, [0, 0]))
            }
        }
    }

    fn shutdown(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.ensure_current();
        // Release every stream held for the guest first: no wait may outlive the session.
        if let Some(t) = &self.tokens {
            let mut g = lock(&t.st);
            g.closed = true;
            for (slot, value) in g.slots.all() {
                t.word(slot).store(value, Ordering::Release);
            }
            drop(g);
            t.cv.notify_all();
        }
        let hs: Vec<u32> = self.streams.iter().filter(|(_, s)| s.capture.is_some()).map(|(h, _)| *h).collect();
        for h in hs {
            if let Ok(g) = self.end_capture(h) {
                // SAFETY: a graph nobody else holds.
                unsafe { sys::cuGraphDestroy(g) };
            }
        }
        let drained = self.sticky.load(Ordering::Acquire) == 0 && self.drain_device(DRAIN_TIMEOUT);
        // The reaper finishes its queue (everything it holds was waited for) and exits.
        if let Some((tx, h)) = self.reaper.take() {
            drop(tx);
            if drained {
                let _ = h.join();
            }
        }
        if drained {
            // SAFETY: every handle below belongs to this session and the device has
            // finished all work that could use them.
            unsafe {
                for (_, e) in self.execs.drain() {
                    sys::cuGraphExecDestroy(e.0);
                }
                for (_, g) in self.graphs.drain() {
                    sys::cuGraphDestroy(g.0);
                }
                for (_, m) in self.modules.drain() {
                    sys::cuModuleUnload(m.cu);
                }
                for p in self.ranges.allocs().collect::<Vec<_>>() {
                    sys::cuMemFree_v2(p);
                }
                for (_, e) in self.events.drain() {
                    sys::cuEventDestroy_v2(e.cu);
                }
                for (h, s) in self.streams.drain() {
                    if h != 0 {
                        sys::cuStreamDestroy_v2(s.cu);
                    }
                    sys::cuEventDestroy_v2(s.fence);
                }
                for h in self.helpers.drain(..) {
                    sys::cuStreamDestroy_v2(h.cu);
                }
                for e in self.draining.drain(..) {
                    sys::cuEventDestroy_v2(e);
                }
                if let Some(t) = self.tokens.take() {
                    sys::cuMemFreeHost(t.words.cast());
                }
                if let Some(b) = self.bounce.take() {
                    sys::cuMemFreeHost(b.base.cast());
                }
                match self.window {
                    Window::Registered { base } if !base.is_null() => {
                        sys::cuMemHostUnregister(base.cast());
                    }
                    Window::Registered { .. } => {}
                    Window::Shadow { host } => {
                        sys::cuMemFreeHost(host.cast());
                    }
                }
                sys::cuDevicePrimaryCtxRelease_v2(self.drv.device);
            }
        } else {
            // A fault or a kernel that does not finish: reset the context, which stops its work
            // and frees everything it holds (the window registration too).
            warn!(target: "vgpu::cuda", session = self.opts.session, sticky = self.sticky.load(Ordering::Relaxed), "the device did not drain; resetting the context");
            // SAFETY: this process retained the primary context; resetting it destroys every
            // resource of it. The handles in the tables are dropped without further use.
            unsafe {
                sys::cuDevicePrimaryCtxReset_v2(self.drv.device);
                sys::cuDevicePrimaryCtxRelease_v2(self.drv.device);
            }
            let _ = self.execs.drain().count();
            let _ = self.graphs.drain().count();
            let _ = self.modules.drain().count();
            let _ = self.events.drain().count();
            self.streams.clear();
            self.helpers.clear();
            self.draining.clear();
            // Leaked on purpose: a callback that still runs may touch it.
            std::mem::forget(self.tokens.take());
            std::mem::forget(self.bounce.take());
        }
        // SAFETY: the context is gone for this thread.
        let _ = unsafe { sys::cuCtxSetCurrent(std::ptr::null_mut()) };
        self.current = None;
        self.uploads.clear();
        self.ranges.clear();
        self.funcs.retain(|_, _| false);
        self.in_use = 0;
        self.stats.mem_in_use.store(0, Ordering::Relaxed);
        self.stats.streams.store(0, Ordering::Relaxed);
        self.stats.events.store(0, Ordering::Relaxed);
        debug!(target: "vgpu::cuda", session = self.opts.session, drained, "cuda session closed");
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        self.shutdown();
    }
}
