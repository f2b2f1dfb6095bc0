//! The `emu` executor: a CPU device with CUDA's semantics, kernels included (they run on the PTX
//! interpreter, `emu/vm.rs` over `vgpu-ptx`).
//!
//! - Device memory lives in anonymous mappings at addresses in a non-canonical x86-64 range
//!   (`0x0000_d000_0000_0000` and up), so no host or guest pointer can ever be mistaken for one.
//!   Addresses are never reused, and allocations are separated by guard gaps, so a stale or
//!   overrunning pointer is rejected instead of landing in another allocation.
//! - Each stream is a worker thread running its commands in FIFO order; streams run
//!   concurrently, so completions of different streams arrive in any order.
//! - Events capture a stream position and a timestamp; sync waits are completions deferred until
//!   the recorded work has run.
//! - Modules, functions, launches, symbols, stream capture and graphs are in `emu/kernels.rs`: launches
//!   are validated against the kernel's parameter layout and attributes, recorded (tracing,
//!   statistics, the launch log) and run on the stream's thread (`emu/vm.rs`); a kernel's fault
//!   completes its launch with DeviceError and the device's `CUresult`.
//!
//! Every guest-supplied field is validated at dispatch, before any work is queued: window ranges
//! against the window, device ranges against this session's live allocations, handles against
//! this session's tables, sizes against quotas.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::{debug, warn};
use vgpu_transport::region::Region;
use vgpu_transport::sync::stat::{AtomicU64, AtomicUsize};
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::{event_flags, stream_flags, Call, Command, Completion, DeviceInfo, Status};
use vgpu_transport::{Completer, Executor, ServerStats};

mod kernels;
mod vm;

pub use vm::Limits as KernelLimits;

/// First device address handed out. Non-canonical on x86-64 (bit 47 set, bits 48..63 clear).
pub const EMU_BASE: u64 = 0x0000_d000_0000_0000;
/// Allocation alignment (what `cudaMalloc` guarantees is at least 256).
pub const ALIGN: u64 = 512;
/// Unmapped gap left after every allocation.
pub const GUARD: u64 = 64 << 10;

/// Per-session limits of the emulated device.
#[derive(Clone, Copy, Debug)]
pub struct EmuLimits {
    /// Device memory the emulated GPU reports and enforces.
    pub mem_total: u64,
    pub max_streams: usize,
    pub max_events: usize,
    pub max_allocations: usize,
    /// Modules loaded at once.
    pub max_modules: usize,
    /// Function handles (FuncGet) at once.
    pub max_functions: usize,
    /// Graphs and graph execs at once (each).
    pub max_graphs: usize,
    /// Nodes of one graph (or capture).
    pub max_graph_nodes: usize,
    /// Bytes all graphs, execs and captures of the session hold (parameters plus 64 per node).
    pub max_graph_bytes: u64,
    /// How long and how far one kernel may run on the interpreter.
    pub kernels: KernelLimits,
}

impl Default for EmuLimits {
    fn default() -> Self {
        EmuLimits {
            mem_total: 16 << 30,
            max_streams: 1024,
            max_events: 1 << 16,
            max_allocations: 1 << 20,
            max_modules: 1024,
            max_functions: 1 << 16,
            max_graphs: 4096,
            max_graph_nodes: 1 << 16,
            max_graph_bytes: 256 << 20,
            kernels: KernelLimits::default(),
        }
    }
}

struct Alloc {
    base: u64,
    len: u64,
    /// 0: a MemAlloc allocation; otherwise the module whose `__device__`/`__constant__`
    /// variable this is (freed by ModuleUnload only, never by MemFree).
    owner: u64,
    data: RwLock<memmap2::MmapMut>,
}

/// A job on a stream's worker thread. It returns what to post once the stream counts it as
/// finished: completions are posted only after the worker has decremented the stream's `pending`
/// counter, so a guest that saw a completion and submits more work finds the stream idle (a
/// `StreamSync` followed by `cudaStreamQuery` must answer "idle", NEEDS.md item 8).
type Job = Box<dyn FnOnce() -> Post + Send>;

/// What a stream job reports: its own completion (`None`: it completed itself, or the session is
/// ending), and the event-sync waiters its event record released.
struct Done {
    reply: Option<(Status, [u64; 2])>,
    wake: Vec<u64>,
}

impl Done {
    fn reply(r: Option<(Status, [u64; 2])>) -> Done {
        Done { reply: r, wake: Vec::new() }
    }
}

/// What a stream worker does after it has counted a job as finished.
enum Post {
    /// Post a job's completion (and the event-sync completions it released).
    Job { done: Completer, seq: u64, out: Done },
    /// A marker for a legacy-stream dependency: count the latch down.
    Latch(Arc<Latch>),
    /// A marker of [`after_streams`]: the last of them completes `seq`.
    Marker { left: Arc<AtomicUsize>, done: Completer, seq: u64 },
}

impl Post {
    fn run(self) {
        match self {
            Post::Job { done, seq, out } => {
                for s in out.wake {
                    done.finish(s, Status::Ok, [0, 0]);
                }
                if let Some((status, result)) = out.reply {
                    done.complete(reply(seq, status, result));
                }
            }
            Post::Latch(l) => l.count_down(),
            Post::Marker { left, done, seq } => {
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    done.finish(seq, Status::Ok, [0, 0]);
                }
            }
        }
    }
}

/// Work of at most this many bytes runs on the dispatching thread when its stream is idle.
pub const INLINE_MAX: u64 = 1 << 20;
/// Most bytes of queued host-to-device writes a session may hold in host bounce buffers.
pub const BOUNCE_MAX: u64 = 256 << 20;

/// A count-down latch: `wait` returns once `count_down` was called `n` times.
struct Latch {
    left: Mutex<usize>,
    cv: std::sync::Condvar,
}

impl Latch {
    fn new(n: usize) -> Latch {
        Latch { left: Mutex::new(n), cv: std::sync::Condvar::new() }
    }
    fn count_down(&self) {
        let mut l = lock(&self.left);
        *l = l.saturating_sub(1);
        if *l == 0 {
            self.cv.notify_all();
        }
    }
    fn wait(&self) {
        // The markers this waits for were queued before this job on other stream threads and
        // run unconditionally, so the wait is bounded by earlier work, never by later work.
        let mut l = lock(&self.left);
        while *l > 0 {
            l = self.cv.wait(l).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Where stream threads wait for something outside their stream (an event another stream
/// records, a token the guest signals). Waiters re-check their condition under the lock before
/// sleeping and every notifier changes state first, then takes the lock to notify, so no wake-up
/// is lost; each sleep is also bounded (100 ms). Closing the gate (session end) releases every
/// waiter, so a guest that never signals cannot keep a stream thread, or the session, alive.
struct Gate {
    closed: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn new() -> Gate {
        Gate { closed: Mutex::new(false), cv: std::sync::Condvar::new() }
    }

    /// Wait until `cond` holds (`true`) or the gate closes (`false`).
    fn wait_until(&self, cond: impl Fn() -> bool) -> bool {
        loop {
            if cond() {
                return true;
            }
            let g = lock(&self.closed);
            if *g {
                return false;
            }
            if cond() {
                return true;
            }
            let _ = self.cv.wait_timeout(g, std::time::Duration::from_millis(100));
        }
    }

    fn notify(&self) {
        let _g = lock(&self.closed);
        self.cv.notify_all();
    }

    fn is_closed(&self) -> bool {
        *lock(&self.closed)
    }

    fn close(&self) {
        *lock(&self.closed) = true;
        self.cv.notify_all();
    }
}

/// Live host-function tokens of a session: token → signalled.
type Tokens = Arc<Mutex<HashMap<u64, bool>>>;

/// Most host-function tokens a session may have live at once.
pub const MAX_TOKENS: usize = 1 << 16;

struct StreamWorker {
    tx: mpsc::Sender<Job>,
    thread: JoinHandle<()>,
    /// Created with `NON_BLOCKING`: no implicit synchronisation with stream 0.
    nonblocking: bool,
    /// Jobs queued and not yet finished. The worker decrements it (Release) after each job and
    /// before it posts the job's completion; the dispatcher reads it (Acquire), so when it sees
    /// zero every earlier job's effects are visible and running the next one inline keeps the
    /// stream's FIFO order, and a command the guest sends after seeing a completion of this stream
    /// finds the stream idle if nothing else was queued.
    pending: Arc<AtomicUsize>,
    /// Held by the worker while it counts a job finished and posts what the job reports. A
    /// dispatcher that sees `pending` at zero takes it once before it treats the stream as idle,
    /// so anything it then completes (inline work, a sync covering this stream) is posted after
    /// the stream's last completion: the stream's completion order and "sync after data" hold.
    posting: Arc<Mutex<()>>,
}

impl StreamWorker {
    fn spawn(handle: u32, nonblocking: bool) -> std::io::Result<StreamWorker> {
        let (tx, rx) = mpsc::channel::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let posting = Arc::new(Mutex::new(()));
        let (p, g) = (pending.clone(), posting.clone());
        let thread = std::thread::Builder::new().name(format!("emu-stream-{handle}")).spawn(move || {
            while let Ok(job) = rx.recv() {
                let post = job();
                // Count the job finished first, then post: a guest that has seen the completion
                // finds the stream idle (NEEDS.md item 8). Under `posting`, see `idle`.
                let _g = lock(&g);
                p.fetch_sub(1, Ordering::Release);
                post.run();
            }
        })?;
        Ok(StreamWorker { tx, thread, nonblocking, pending, posting })
    }

    /// Nothing queued on the stream, and the completions of its last job are posted.
    fn idle(&self) -> bool {
        if self.pending.load(Ordering::Acquire) != 0 {
            return false;
        }
        // The worker decrements `pending` under `posting` before it posts: if it is posting
        // now, wait for it (a few hundred nanoseconds), so what the caller completes next is
        // posted after the stream's earlier completions.
        drop(lock(&self.posting));
        true
    }
}

#[derive(Default)]
struct EvState {
    /// Number of records submitted.
    recorded: u64,
    /// Highest record that has executed.
    done: u64,
    time: Option<Instant>,
    waiters: Vec<(u64, u64)>,
}

struct Event {
    flags: u64,
    st: Mutex<EvState>,
}

/// The executor of one session.
pub struct Emu {
    region: Arc<Region>,
    stats: &'static ServerStats,
    limits: EmuLimits,
    allocs: BTreeMap<u64, Arc<Alloc>>,
    next_addr: u64,
    in_use: u64,
    streams: HashMap<u32, StreamWorker>,
    retired: Vec<JoinHandle<()>>,
    /// Destroyed streams whose queued work has not finished yet. Their handles are invalid, but
    /// their work still counts for device-wide waits and for the legacy default stream.
    draining: Vec<StreamWorker>,
    events: HashMap<u64, Arc<Event>>,
    next_handle: u32,
    epoch: Instant,
    gate: Arc<Gate>,
    tokens: Tokens,
    /// Bytes of queued host-to-device writes held in host bounce buffers (see MemcpyHtoD).
    bounced: Arc<AtomicU64>,
    /// Modules, functions, launches, captures and graphs.
    kern: kernels::Kernels,
    /// The allocations as kernels see them, rebuilt after an allocation or free.
    mem_view: Option<Arc<vm::Memory>>,
    /// Device printf output waiting for the guest.
    printf: Arc<vm::Printf>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Emu {
    pub fn new(region: Arc<Region>, stats: &'static ServerStats, limits: EmuLimits) -> std::io::Result<Emu> {
        let mut streams = HashMap::new();
        streams.insert(0, StreamWorker::spawn(0, false)?);
        let printf = Arc::new(vm::Printf::new(region.clone()));
        Ok(Emu {
            region,
            stats,
            limits,
            allocs: BTreeMap::new(),
            next_addr: EMU_BASE,
            in_use: 0,
            streams,
            retired: Vec::new(),
            draining: Vec::new(),
            events: HashMap::new(),
            next_handle: 1,
            epoch: Instant::now(),
            gate: Arc::new(Gate::new()),
            tokens: Arc::new(Mutex::new(HashMap::new())),
            bounced: Arc::new(AtomicU64::new(0)),
            kern: kernels::Kernels::new(stats.session_id.load(Ordering::Relaxed)),
            mem_view: None,
            printf,
        })
    }

    /// Use `cache` for modules loaded by hash (and to keep uploaded ones), and append every
    /// launch to `log` (`vgpu serve --module-cache`, `--launch-log`).
    pub fn with_kernels(mut self, cache: Arc<crate::modules::ModuleCache>, log: Option<Arc<crate::modules::LaunchLog>>) -> Emu {
        self.kern.cache = cache;
        self.kern.log = log;
        self
    }

    /// The allocation containing `[ptr, ptr+len)`, and the offset of `ptr` in it.
    fn resolve(&self, ptr: u64, len: u64) -> Option<(Arc<Alloc>, usize)> {
        let (_, a) = self.allocs.range(..=ptr).next_back()?;
        let end = ptr.checked_add(len)?;
        (end <= a.base + a.len).then(|| (a.clone(), (ptr - a.base) as usize))
    }

    /// Device memory as a kernel launched now sees it.
    fn mem_view(&mut self) -> Arc<vm::Memory> {
        let allocs = &self.allocs;
        self.mem_view.get_or_insert_with(|| Arc::new(vm::Memory::new(allocs.values().cloned().collect()))).clone()
    }

    fn alloc(&mut self, size: u64) -> Result<u64, Status> {
        self.alloc_owned(size, 0)
    }

    fn alloc_owned(&mut self, size: u64, owner: u64) -> Result<u64, Status> {
        if size == 0 {
            return Err(Status::InvalidArgument);
        }
        if size > self.limits.mem_total - self.in_use || self.allocs.len() >= self.limits.max_allocations {
            return Err(Status::OutOfMemory);
        }
        let len = usize::try_from(size).map_err(|_| Status::OutOfMemory)?;
        let map = memmap2::MmapMut::map_anon(len).map_err(|e| {
            warn!(target: "vgpu::emu", "anonymous mapping of {size} bytes failed: {e}");
            Status::OutOfMemory
        })?;
        let base = self.next_addr;
        self.next_addr = base + size.div_ceil(ALIGN) * ALIGN + GUARD;
        self.allocs.insert(base, Arc::new(Alloc { base, len: size, owner, data: RwLock::new(map) }));
        self.mem_view = None;
        self.in_use += size;
        self.stats.mem_in_use.store(self.in_use, Ordering::Relaxed);
        self.stats.mem_peak.fetch_max(self.in_use, Ordering::Relaxed);
        self.stats.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(base)
    }

    fn free(&mut self, ptr: u64) -> Status {
        if self.allocs.get(&ptr).is_some_and(|a| a.owner != 0) {
            // A module variable: not the guest's to free.
            return Status::InvalidDevicePointer;
        }
        self.free_owned(ptr)
    }

    fn free_owned(&mut self, ptr: u64) -> Status {
        match self.allocs.remove(&ptr) {
            Some(a) => {
                self.mem_view = None;
                self.in_use -= a.len;
                self.stats.mem_in_use.store(self.in_use, Ordering::Relaxed);
                Status::Ok
            }
            None => Status::InvalidDevicePointer,
        }
    }

    fn stream(&self, h: u32) -> Result<&StreamWorker, Status> {
        self.streams.get(&h).ok_or(Status::InvalidHandle)
    }

    /// Run `job` in stream `h`'s order; it completes `seq` with the status it returns. Small work
    /// (`cost` bytes <= [`INLINE_MAX`]) on an idle stream runs right here, which saves a thread
    /// hand-off per command; anything else goes to the stream's worker thread.
    fn enqueue(&self, h: u32, seq: u64, cost: u64, done: &Completer, job: impl FnOnce() -> Done + Send + 'static) -> Option<Completion> {
        let w = match self.stream(h) {
            Ok(w) => w,
            Err(s) => return Some(reply(seq, s, [0, 0])),
        };
        let deps = self.legacy_deps(h, w);
        if deps.is_empty() && cost <= INLINE_MAX && w.idle() {
            let out = job();
            for s in out.wake {
                done.finish(s, Status::Ok, [0, 0]);
            }
            return out.reply.map(|(status, result)| reply(seq, status, result));
        }
        // Legacy default stream: wait, on this stream's thread, until every dependency stream has
        // run what was queued on it before this command (a marker job at its queue's end).
        let latch = (!deps.is_empty()).then(|| Arc::new(Latch::new(deps.len())));
        if let Some(l) = &latch {
            for d in &deps {
                let l2 = l.clone();
                d.pending.fetch_add(1, Ordering::Relaxed);
                if d.tx.send(Box::new(move || Post::Latch(l2))).is_err() {
                    d.pending.fetch_sub(1, Ordering::Relaxed);
                    l.count_down();
                }
            }
        }
        w.pending.fetch_add(1, Ordering::Relaxed);
        let done = done.clone();
        let job: Job = Box::new(move || {
            if let Some(l) = latch {
                l.wait();
            }
            // A reply of `None`: the job completed `seq` itself (or the session is ending).
            Post::Job { done, seq, out: job() }
        });
        if w.tx.send(job).is_err() {
            w.pending.fetch_sub(1, Ordering::Relaxed);
            return Some(reply(seq, Status::InvalidHandle, [0, 0]));
        }
        None
    }

    /// CUDA's legacy default stream: work on stream 0 waits for earlier work on every blocking
    /// stream, and work on a blocking stream waits for earlier work on stream 0. Returns the
    /// streams with queued work that `h` must wait for.
    fn legacy_deps(&self, h: u32, w: &StreamWorker) -> Vec<&StreamWorker> {
        if h == 0 {
            let live = self.streams.iter().filter(|(k, _)| **k != 0).map(|(_, s)| s);
            live.chain(self.draining.iter()).filter(|s| !s.nonblocking && !s.idle()).collect()
        } else if !w.nonblocking {
            self.streams.get(&0).filter(|s| !s.idle()).into_iter().collect()
        } else {
            Vec::new()
        }
    }

    fn window(&self, off: u64, len: u64) -> Result<(), Status> {
        self.region.window_range(off, len).map(|_| ()).ok_or(Status::InvalidWindowRange)
    }

    fn device_info(&self) -> DeviceInfo {
        let mut d = DeviceInfo::default();
        let name = b"vgpu emu (CPU device, PTX interpreter)";
        d.name[..name.len()].copy_from_slice(name);
        d.total_mem = self.limits.mem_total;
        d.multiprocessors = 16;
        (d.cc_major, d.cc_minor) = crate::modules::EMU_CC;
        d.warp_size = 32;
        d.max_threads_per_block = 1024;
        d.shared_mem_per_block = 48 << 10;
        d.clock_khz = 1_000_000;
        d.executor = 0;
        d
    }

    fn event(&self, h: u64) -> Result<Arc<Event>, Status> {
        self.events.get(&h).cloned().ok_or(Status::InvalidHandle)
    }

    fn handle(&mut self) -> u32 {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }

    /// Retire destroyed streams that have finished their work (their threads then exit).
    fn prune_draining(&mut self) {
        let (idle, busy): (Vec<_>, Vec<_>) = self.draining.drain(..).partition(|w| w.idle());
        self.draining = busy;
        for w in idle {
            drop(w.tx);
            self.retired.push(w.thread);
        }
    }

    fn exec(&mut self, cmd: &Command, call: Call, done: &Completer) -> Result<Option<[u64; 2]>, Status> {
        if !self.draining.is_empty() {
            self.prune_draining();
        }
        if call.stream_ordered() && self.kern.capturing(cmd.stream) {
            if let Some(r) = self.capture(cmd, call, done) {
                return r;
            }
        }
        let a = cmd.args;
        let seq = cmd.seq;
        let region = &self.region;
        match call {
            Call::Nop => Ok(Some([0, 0])),
            Call::MemAlloc => self.alloc(a[0]).map(|p| Some([p, 0])),
            Call::MemFree => match self.free(a[0]) {
                // The address is invalid for every later command at once; the completion waits,
                // as cudaFree does, for the work submitted before it (which holds the memory).
                Status::Ok => Ok(after_streams(self.streams.values().chain(self.draining.iter()), seq, done)),
                s => Err(s),
            },
            Call::MemcpyHtoD => {
                let (dst, off, len) = (a[0], a[1], a[2]);
                self.window(off, len)?;
                let (alloc, at) = self.resolve(dst, len).ok_or(Status::InvalidDevicePointer)?;
                let region = region.clone();
                self.stats.bytes_h2d.fetch_add(len, Ordering::Relaxed);
                // A write that must wait in its stream (busy, or behind the legacy default
                // stream) takes its bytes out of the window now, into a host bounce buffer, and
                // completes at once: the guest gets its window range back instead of holding it
                // until the stream gets there, so a stream blocked on another stream's event can
                // never starve that stream of window space. The device write keeps its place in
                // the stream. Bounded per session; past the bound the window range stays held.
                let w = self.stream(cmd.stream)?;
                // Only writes that wait behind other work: an idle stream runs the write now (or
                // next, on its thread), straight from the window.
                let waits = !w.idle() || !self.legacy_deps(cmd.stream, w).is_empty();
                if waits && self.bounced.load(Ordering::Relaxed) + len <= BOUNCE_MAX {
                    if let Some(buf) = region.read_window_vec(off, len).map_err(|_| Status::InvalidWindowRange)? {
                        self.bounced.fetch_add(len, Ordering::Relaxed);
                        let bounced = self.bounced.clone();
                        let c = self.enqueue(cmd.stream, cmd.seq, len, done, move || {
                            let mut d = alloc.data.write().unwrap_or_else(|e| e.into_inner());
                            d[at..at + buf.len()].copy_from_slice(&buf);
                            bounced.fetch_sub(buf.len() as u64, Ordering::Relaxed);
                            // Completed at consume (below), so nothing to post now.
                            Done::reply(None)
                        });
                        return match c {
                            // Queued (or, had the stream just gone idle, already written).
                            None => Ok(Some([0, 0])),
                            Some(c) => completion_result(Some(c)),
                        };
                    }
                }
                self.queue(cmd, len, done, move || {
                    let mut d = alloc.data.write().unwrap_or_else(|e| e.into_inner());
                    match region.read_window(off, &mut d[at..at + len as usize]) {
                        Ok(()) => Status::Ok,
                        Err(_) => Status::InvalidWindowRange,
                    }
                })
            }
            Call::MemcpyDtoH => {
                let (src, off, len) = (a[0], a[1], a[2]);
                self.window(off, len)?;
                let (alloc, at) = self.resolve(src, len).ok_or(Status::InvalidDevicePointer)?;
                let region = region.clone();
                self.stats.bytes_d2h.fetch_add(len, Ordering::Relaxed);
                self.queue(cmd, len, done, move || {
                    let d = alloc.data.read().unwrap_or_else(|e| e.into_inner());
                    match region.write_window(off, &d[at..at + len as usize]) {
                        Ok(()) => Status::Ok,
                        Err(_) => Status::InvalidWindowRange,
                    }
                })
            }
            Call::MemcpyDtoD => {
                let (dst, src, len) = (a[0], a[1], a[2]);
                let (da, dat) = self.resolve(dst, len).ok_or(Status::InvalidDevicePointer)?;
                let (sa, sat) = self.resolve(src, len).ok_or(Status::InvalidDevicePointer)?;
                self.stats.bytes_d2d.fetch_add(len, Ordering::Relaxed);
                let cost = len;
                let len = len as usize;
                self.queue(cmd, cost, done, move || {
                    kernels::copy_d2d(&da, dat, &sa, sat, len);
                    Status::Ok
                })
            }
            Call::Memset => {
                let (dst, value, len) = (a[0], a[1], a[2]);
                if value > 0xff {
                    return Err(Status::InvalidArgument);
                }
                let (alloc, at) = self.resolve(dst, len).ok_or(Status::InvalidDevicePointer)?;
                self.queue(cmd, len, done, move || {
                    let mut d = alloc.data.write().unwrap_or_else(|e| e.into_inner());
                    d[at..at + len as usize].fill(value as u8);
                    Status::Ok
                })
            }
            Call::StreamCreate => {
                if a[0] & !stream_flags::KNOWN != 0 || a[1] as i64 != a[1] as i32 as i64 {
                    return Err(Status::InvalidArgument);
                }
                if self.streams.len() >= self.limits.max_streams {
                    return Err(Status::QuotaExceeded);
                }
                let h = self.handle();
                let w = StreamWorker::spawn(h, a[0] & stream_flags::NON_BLOCKING != 0).map_err(|_| Status::OutOfMemory)?;
                self.streams.insert(h, w);
                self.stats.streams.store(self.streams.len() as u64 - 1, Ordering::Relaxed);
                Ok(Some([h as u64, 0]))
            }
            Call::StreamDestroy => {
                let h = u32::try_from(a[0]).map_err(|_| Status::InvalidHandle)?;
                if h == 0 {
                    return Err(Status::InvalidHandle);
                }
                let w = self.streams.remove(&h).ok_or(Status::InvalidHandle)?;
                self.kern.end_capture_of(h);
                self.stats.streams.store(self.streams.len() as u64 - 1, Ordering::Relaxed);
                let r = after_streams(std::iter::once(&w), seq, done);
                if w.idle() && r.is_some() {
                    // Dropping the sender lets the thread exit.
                    drop(w.tx);
                    self.retired.push(w.thread);
                } else {
                    self.draining.push(w);
                }
                Ok(r)
            }
            Call::StreamSync => self.queue(cmd, 0, done, || Status::Ok),
            Call::DeviceSync => Ok(after_streams(self.streams.values().chain(self.draining.iter()), seq, done)),
            Call::EventCreate => {
                if a[0] & !event_flags::KNOWN != 0 {
                    return Err(Status::InvalidArgument);
                }
                if a[0] & event_flags::INTERPROCESS != 0 {
                    // Interprocess events need DISABLE_TIMING in CUDA; either way emu has no IPC.
                    return Err(if a[0] & event_flags::DISABLE_TIMING == 0 { Status::InvalidArgument } else { Status::NotSupported });
                }
                if self.events.len() >= self.limits.max_events {
                    return Err(Status::QuotaExceeded);
                }
                let h = self.handle() as u64;
                self.events.insert(h, Arc::new(Event { flags: a[0], st: Mutex::new(EvState::default()) }));
                self.stats.events.store(self.events.len() as u64, Ordering::Relaxed);
                Ok(Some([h, 0]))
            }
            Call::EventDestroy => {
                self.events.remove(&a[0]).ok_or(Status::InvalidHandle)?;
                self.stats.events.store(self.events.len() as u64, Ordering::Relaxed);
                Ok(Some([0, 0]))
            }
            Call::EventRecord => {
                let ev = self.event(a[0])?;
                self.stream(cmd.stream)?;
                let gen = {
                    let mut st = lock(&ev.st);
                    st.recorded += 1;
                    st.recorded
                };
                let gate = self.gate.clone();
                let r = self.enqueue(cmd.stream, seq, 0, done, move || {
                    let wake: Vec<u64> = {
                        let mut st = lock(&ev.st);
                        if gen >= st.done {
                            st.done = gen;
                            st.time = Some(Instant::now());
                        }
                        let d = st.done;
                        let (ready, rest): (Vec<_>, Vec<_>) = st.waiters.drain(..).partition(|(target, _)| *target <= d);
                        st.waiters = rest;
                        ready.into_iter().map(|(_, s)| s).collect()
                    };
                    // Stream waits on other threads may go on at once; event syncs are
                    // completed once this stream counts the record as finished.
                    gate.notify();
                    Done { reply: Some((Status::Ok, [0, 0])), wake }
                });
                completion_result(r)
            }
            Call::EventQuery => {
                let ev = self.event(a[0])?;
                let st = lock(&ev.st);
                if st.done >= st.recorded {
                    Ok(Some([0, 0]))
                } else {
                    Err(Status::NotReady)
                }
            }
            Call::EventSync => {
                let ev = self.event(a[0])?;
                let mut st = lock(&ev.st);
                if st.done >= st.recorded {
                    return Ok(Some([0, 0]));
                }
                let target = st.recorded;
                st.waiters.push((target, seq));
                Ok(None)
            }
            Call::EventElapsed => {
                let (s, e) = (self.event(a[0])?, self.event(a[1])?);
                if (s.flags | e.flags) & event_flags::DISABLE_TIMING != 0 {
                    return Err(Status::EventNoTiming);
                }
                let time = |ev: &Event| -> Result<Instant, Status> {
                    let st = lock(&ev.st);
                    if st.recorded == 0 {
                        return Err(Status::EventNoTiming);
                    }
                    if st.done < st.recorded {
                        return Err(Status::NotReady);
                    }
                    st.time.ok_or(Status::EventNoTiming)
                };
                let (t0, t1) = (time(&s)?, time(&e)?);
                let ms = if t1 >= t0 { (t1 - t0).as_secs_f64() * 1e3 } else { -((t0 - t1).as_secs_f64() * 1e3) };
                Ok(Some([(ms as f32).to_bits() as u64, 0]))
            }
            Call::StreamWaitEvent => {
                if a[1] != 0 {
                    return Err(Status::InvalidArgument);
                }
                let ev = self.event(a[0])?;
                self.stream(cmd.stream)?;
                // The wait refers to the most recent record consumed before it.
                let (target, satisfied) = {
                    let st = lock(&ev.st);
                    (st.recorded, st.done >= st.recorded)
                };
                if satisfied {
                    return self.queue(cmd, 0, done, || Status::Ok);
                }
                let gate = self.gate.clone();
                // Never inline: the wait blocks this stream's thread, never the dispatcher.
                self.wait_job(cmd, done, move || gate.wait_until(|| lock(&ev.st).done >= target).then_some((Status::Ok, [0, 0])))
            }
            Call::StreamWaitToken => {
                let token = a[0];
                if token == 0 {
                    return Err(Status::InvalidArgument);
                }
                self.stream(cmd.stream)?;
                {
                    let mut t = lock(&self.tokens);
                    if t.contains_key(&token) {
                        return Err(Status::InvalidArgument);
                    }
                    if t.len() >= MAX_TOKENS {
                        return Err(Status::QuotaExceeded);
                    }
                    t.insert(token, false);
                }
                let (gate, tokens, d) = (self.gate.clone(), self.tokens.clone(), done.clone());
                let r = self.wait_job(cmd, done, move || {
                    // The stream has reached the token: tell the guest, then hold the stream
                    // until it signals (or the session ends).
                    d.finish(seq, Status::Ok, [0, 0]);
                    gate.wait_until(|| lock(&tokens).get(&token).copied().unwrap_or(true));
                    lock(&tokens).remove(&token);
                    None
                });
                if r.is_err() {
                    lock(&self.tokens).remove(&token);
                }
                r
            }
            Call::SignalToken => {
                let mut t = lock(&self.tokens);
                match t.get_mut(&a[0]) {
                    Some(s) => {
                        *s = true;
                        drop(t);
                        self.gate.notify();
                        Ok(Some([0, 0]))
                    }
                    None => Err(Status::InvalidHandle),
                }
            }
            Call::MemGetInfo => Ok(Some([self.limits.mem_total - self.in_use, self.limits.mem_total])),
            Call::PrintfDrain => {
                let (off, len) = (a[0], a[1]);
                self.window(off, len)?;
                let (bytes, pending) = self.printf.drain(usize::try_from(len).unwrap_or(usize::MAX));
                self.region.write_window(off, &bytes).map_err(|_| Status::InvalidWindowRange)?;
                Ok(Some([bytes.len() as u64, pending]))
            }
            Call::DeviceInfo => {
                let (off, len) = (a[0], a[1]);
                let size = std::mem::size_of::<DeviceInfo>() as u64;
                self.window(off, len)?;
                if len < size {
                    return Err(Status::InvalidArgument);
                }
                let info = self.device_info();
                // SAFETY: DeviceInfo is a #[repr(C)] struct of integers and byte arrays with no
                // padding (512 bytes, asserted in wire.rs); viewing it as bytes is sound.
                let bytes = unsafe { std::slice::from_raw_parts((&info as *const DeviceInfo).cast::<u8>(), size as usize) };
                region.write_window(off, bytes).map_err(|_| Status::InvalidWindowRange)?;
                Ok(Some([0, 0]))
            }
            Call::ModuleData
            | Call::ModuleLoad
            | Call::ModuleUnload
            | Call::FuncGet
            | Call::Launch
            | Call::SymbolGet
            | Call::FuncSetAttr
            | Call::Occupancy
            | Call::StreamBeginCapture
            | Call::StreamEndCapture
            | Call::GraphInstantiate
            | Call::GraphExecUpdate
            | Call::GraphLaunch
            | Call::GraphDestroy
            | Call::GraphExecDestroy => self.exec_kernel(cmd, call, done),
        }
    }

    /// Queue a job that may wait (never run inline on the dispatcher). `job` returns the
    /// completion, or `None` if it completed the command itself or the session is ending.
    fn wait_job(
        &self,
        cmd: &Command,
        done: &Completer,
        job: impl FnOnce() -> Option<(Status, [u64; 2])> + Send + 'static,
    ) -> Result<Option<[u64; 2]>, Status> {
        completion_result(self.enqueue(cmd.stream, cmd.seq, u64::MAX, done, move || Done::reply(job())))
    }

    fn queue(
        &self,
        cmd: &Command,
        cost: u64,
        done: &Completer,
        job: impl FnOnce() -> Status + Send + 'static,
    ) -> Result<Option<[u64; 2]>, Status> {
        completion_result(self.enqueue(cmd.stream, cmd.seq, cost, done, move || Done::reply(Some((job(), [0, 0])))))
    }
}

/// `enqueue`'s answer as `exec`'s: `None` (completed later), or the inline completion.
fn completion_result(c: Option<Completion>) -> Result<Option<[u64; 2]>, Status> {
    match c {
        None => Ok(None),
        Some(c) if c.status == Status::Ok as u32 => Ok(Some(c.result)),
        Some(c) => Err(Status::from_u32(c.status)),
    }
}

/// Complete `seq` once every job queued so far on `streams` has run: at once (`Some`) if they are
/// all idle, otherwise from the last of them to get there (`None`).
fn after_streams<'a>(streams: impl Iterator<Item = &'a StreamWorker> + Clone, seq: u64, done: &Completer) -> Option<[u64; 2]> {
    let busy: Vec<&StreamWorker> = streams.filter(|w| !w.idle()).collect();
    if busy.is_empty() {
        return Some([0, 0]);
    }
    let left = Arc::new(AtomicUsize::new(busy.len()));
    let mut sent = 0;
    for w in &busy {
        let (l, d) = (left.clone(), done.clone());
        let job: Job = Box::new(move || Post::Marker { left: l, done: d, seq });
        w.pending.fetch_add(1, Ordering::Relaxed);
        if w.tx.send(job).is_ok() {
            sent += 1;
        } else {
            w.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
    // Streams whose thread is gone count as done; if that brings the count to zero, the sent
    // markers have all run already and none of them completed `seq`: complete it here.
    let failed = busy.len() - sent;
    if failed > 0 && left.fetch_sub(failed, Ordering::AcqRel) == failed {
        return Some([0, 0]);
    }
    None
}

/// A completion. A [`Status::DeviceError`] carries the device's `CUresult` in `result[0]`
/// inside the emulator; on the wire it travels in `aux`.
fn reply(seq: u64, status: Status, result: [u64; 2]) -> Completion {
    if status == Status::DeviceError {
        return Completion { seq, status: status as u32, aux: result[0] as u32, result: [0, 0] };
    }
    Completion { seq, status: status as u32, aux: 0, result }
}

impl Executor for Emu {
    fn execute(&mut self, cmd: &Command, call: Call, done: &Completer) -> Option<Completion> {
        match self.exec(cmd, call, done) {
            Ok(Some(r)) => Some(reply(cmd.seq, Status::Ok, r)),
            Ok(None) => None,
            Err(s) => {
                debug!(target: "vgpu::emu", seq = cmd.seq, call = call.name(), status = s.name(), "rejected");
                Some(reply(cmd.seq, s, [0, 0]))
            }
        }
    }

    fn shutdown(&mut self) {
        // Release every stream thread waiting for an event or a guest token first, so the joins
        // below cannot wait for a guest that will never signal.
        self.gate.close();
        lock(&self.tokens).clear();
        for w in self.streams.drain().map(|(_, w)| w).chain(self.draining.drain(..)).collect::<Vec<_>>() {
            drop(w.tx);
            self.retired.push(w.thread);
        }
        for t in self.retired.drain(..) {
            let _ = t.join();
        }
        self.events.clear();
        self.kern.clear();
        self.allocs.clear();
        self.mem_view = None;
        self.in_use = 0;
        self.stats.mem_in_use.store(0, Ordering::Relaxed);
        self.stats.streams.store(0, Ordering::Relaxed);
        self.stats.events.store(0, Ordering::Relaxed);
        debug!(target: "vgpu::emu", "session resources released after {:?}", self.epoch.elapsed());
    }
}
