//! The emulator's modules, functions, launches, stream capture and graphs (calls 22..36).
//!
//! - Modules come from uploads or, by hash, from the session's loaded modules or the
//!   cross-session cache ([`crate::modules`]); the emulator reads the PTX it will run
//!   ([`modules::parse_emu`]) and the cubin (or, without one, the PTX signatures) for the
//!   kernels' parameter layouts and attributes, and allocates the module's
//!   `__device__`/`__constant__` variables as device memory (with their initial bytes) at load,
//!   freed at unload, so symbol copies are plain copies and kernels see the same bytes.
//! - FuncGet lowers the kernel with every function it calls ([`prepare`]).
//! - Launches are validated (function handle, dimensions, parameter length, shared memory),
//!   recorded in stream order (tracing, `ServerStats::launches`, the launch log) and run on the
//!   stream's thread; they complete Ok, NoKernelImage (no PTX), or DeviceError with the fault.
//! - A capturing stream turns capturable commands into graph nodes (completing them Ok); any
//!   other stream-ordered command on it invalidates the capture. Graph launches replay the nodes
//!   on their stream: copies, memsets and kernels really happen, launches are recorded again.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{debug, warn};
use vgpu_transport::wire::{self, func_attr, launch, Call, Command, FuncInfo, ModuleHash, ParamInfo, Status, MAX_MODULE_LEN};
use vgpu_transport::Completer;

use super::vm;
use super::{after_streams, completion_result, Alloc, Done, Emu, Ordering};
use crate::modules::{self, DeviceLimits, Image, LaunchLog, LaunchRecord, ModuleCache, ParsedModule, Uploads};

/// The emulated device's limits (compute capability 9.0, [`modules::EMU_CC`]).
pub const DEVICE: DeviceLimits = DeviceLimits::cc90();
/// Multiprocessors the emu device reports (cooperative launches fit in occupancy × this).
const SMS: u64 = 16;
/// Longest device name FuncGet and SymbolGet read.
const MAX_NAME: u64 = 64 << 10;
/// `cudaGraphInstantiateFlag*` the emulator accepts.
const INSTANTIATE_FLAGS: u64 = 0x1 | 0x2 | 0x4 | 0x8;
/// `cudaGraphExecUpdateResult` values.
const UPDATE_TOPOLOGY_CHANGED: u64 = 2;
const UPDATE_NODE_TYPE_CHANGED: u64 = 3;
const UPDATE_FUNCTION_CHANGED: u64 = 4;
/// Graph memory cost of one node besides its parameters.
const NODE_COST: u64 = 64;

struct Module {
    hash: ModuleHash,
    image: Image,
    parsed: Arc<ParsedModule>,
    /// Function handles given out, by name.
    funcs: HashMap<String, u64>,
    /// Variables: name → (device address, size).
    symbols: HashMap<String, (u64, u64)>,
    /// The device address of each PTX module variable, by index (see [`vm::Kernel::globals`]).
    globals: Arc<[u64]>,
}

struct Func {
    name: Arc<str>,
    info: FuncInfo,
    params: Vec<ParamInfo>,
    /// What a launch runs; `None`: the module has no PTX emu can run (NoKernelImage).
    kernel: Option<Arc<vm::Kernel>>,
    /// Cluster attributes set with FuncSetAttr (validated, stored, not otherwise used).
    attrs: HashMap<u64, i32>,
}

/// One node of a captured graph.
#[derive(Clone)]
enum Node {
    Launch { func: u64, name: Arc<str>, grid: [u32; 3], block: [u32; 3], flags: u64, shared: u64, params: Arc<[u8]> },
    Memset { dst: u64, value: u8, len: u64 },
    HtoD { dst: u64, off: u64, len: u64 },
    DtoH { src: u64, off: u64, len: u64 },
    DtoD { dst: u64, src: u64, len: u64 },
}

impl Node {
    fn cost(&self) -> u64 {
        NODE_COST + if let Node::Launch { params, .. } = self { params.len() as u64 } else { 0 }
    }
    fn kind(&self) -> u8 {
        match self {
            Node::Launch { .. } => 0,
            Node::Memset { .. } => 1,
            Node::HtoD { .. } => 2,
            Node::DtoH { .. } => 3,
            Node::DtoD { .. } => 4,
        }
    }
}

type Nodes = Arc<Vec<Node>>;

fn nodes_cost(n: &[Node]) -> u64 {
    n.iter().map(Node::cost).sum()
}

#[derive(Default)]
struct Capture {
    nodes: Vec<Node>,
    invalid: bool,
}

/// A node resolved against the session's allocations, ready to run.
enum Op {
    Launch(LaunchRecord, u64, Option<Arc<vm::Kernel>>),
    Memset(Arc<Alloc>, usize, usize, u8),
    HtoD(Arc<Alloc>, usize, u64, usize),
    DtoH(Arc<Alloc>, usize, u64, usize),
    DtoD(Arc<Alloc>, usize, Arc<Alloc>, usize, usize),
}

/// What records launches: shared with stream jobs.
#[derive(Clone)]
struct Recorder {
    seq: Arc<vgpu_transport::sync::stat::AtomicU64>,
    log: Option<Arc<LaunchLog>>,
    stats: &'static vgpu_transport::ServerStats,
}

impl Recorder {
    fn record(&self, mut rec: LaunchRecord) {
        rec.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.launches.fetch_add(1, Ordering::Relaxed);
        debug!(
            target: "vgpu::emu::launch",
            session = rec.session, seq = rec.seq, stream = rec.stream, kernel = %rec.kernel,
            grid = ?rec.grid, block = ?rec.block, shared = rec.shared, params = rec.params.len(), graph = rec.graph,
            "launch recorded"
        );
        if let Some(log) = &self.log {
            log.write(&rec);
        }
    }
}

/// The kernel state of one session.
pub(super) struct Kernels {
    session: u64,
    pub(super) cache: Arc<ModuleCache>,
    pub(super) log: Option<Arc<LaunchLog>>,
    uploads: Uploads,
    modules: HashMap<u64, Module>,
    funcs: HashMap<u64, Func>,
    captures: HashMap<u32, Capture>,
    graphs: HashMap<u64, Nodes>,
    execs: HashMap<u64, Nodes>,
    /// Bytes the graphs, execs and captures hold (see `EmuLimits::max_graph_bytes`).
    graph_bytes: u64,
    launch_seq: Arc<vgpu_transport::sync::stat::AtomicU64>,
}

impl Kernels {
    pub(super) fn new(session: u64) -> Kernels {
        Kernels {
            session,
            cache: Arc::new(ModuleCache::disabled()),
            log: None,
            uploads: Uploads::new(),
            modules: HashMap::new(),
            funcs: HashMap::new(),
            captures: HashMap::new(),
            graphs: HashMap::new(),
            execs: HashMap::new(),
            graph_bytes: 0,
            launch_seq: Arc::new(vgpu_transport::sync::stat::AtomicU64::new(0)),
        }
    }

    pub(super) fn capturing(&self, stream: u32) -> bool {
        self.captures.contains_key(&stream)
    }

    /// The stream is going away: its capture (if any) ends, discarded.
    pub(super) fn end_capture_of(&mut self, stream: u32) {
        if let Some(c) = self.captures.remove(&stream) {
            self.graph_bytes -= nodes_cost(&c.nodes);
        }
    }

    pub(super) fn clear(&mut self) {
        self.uploads.clear();
        self.modules.clear();
        self.funcs.clear();
        self.captures.clear();
        self.graphs.clear();
        self.execs.clear();
        self.graph_bytes = 0;
    }
}

fn dims3(t: (u32, u32, u32)) -> [u32; 3] {
    [t.0, t.1, t.2]
}

/// A cooperative launch must have all its blocks resident at once: at most the occupancy per
/// multiprocessor times the multiprocessors.
fn cooperative_fits(info: &FuncInfo, grid: [u32; 3], block: [u32; 3], flags: u64, shared: u64) -> Result<(), Status> {
    if flags & launch::COOPERATIVE == 0 {
        return Ok(());
    }
    let per_sm = modules::occupancy(info, block[0] * block[1] * block[2], shared, &DEVICE);
    if grid.iter().map(|&g| u64::from(g)).product::<u64>() > u64::from(per_sm) * SMS {
        return Err(Status::LaunchOutOfResources);
    }
    Ok(())
}

/// Copy `len` bytes between two allocations (or within one). Locks are taken in address order,
/// whatever the direction, so two streams copying A→B and B→A cannot deadlock.
pub(super) fn copy_d2d(da: &Alloc, dat: usize, sa: &Alloc, sat: usize, len: usize) {
    if std::ptr::eq(da, sa) {
        let mut d = da.data.write().unwrap_or_else(|e| e.into_inner());
        d.copy_within(sat..sat + len, dat);
    } else if sa.base < da.base {
        let s = sa.data.read().unwrap_or_else(|e| e.into_inner());
        let mut d = da.data.write().unwrap_or_else(|e| e.into_inner());
        d[dat..dat + len].copy_from_slice(&s[sat..sat + len]);
    } else {
        let mut d = da.data.write().unwrap_or_else(|e| e.into_inner());
        let s = sa.data.read().unwrap_or_else(|e| e.into_inner());
        d[dat..dat + len].copy_from_slice(&s[sat..sat + len]);
    }
}

/// What a stream job needs to run launches: the memory view at queue time, the limits, and
/// the session's end.
struct Runner {
    session: u64,
    mem: Arc<vm::Memory>,
    limits: vm::Limits,
    gate: Arc<super::Gate>,
    printf: Arc<vm::Printf>,
    stats: &'static vgpu_transport::ServerStats,
}

impl Runner {
    /// Record `rec` and run it: `(Ok, _)`, NoKernelImage (no PTX for it), or DeviceError with
    /// the `CUresult` in `result[0]`.
    fn launch(&self, r: &Recorder, rec: LaunchRecord, flags: u64, kernel: Option<&vm::Kernel>) -> (Status, [u64; 2]) {
        let params = rec.params.clone();
        let shape = vm::Shape {
            grid: rec.grid,
            block: rec.block,
            dynamic_shared: u32::try_from(rec.shared).unwrap_or(u32::MAX),
            params: &params,
            cooperative: flags & launch::COOPERATIVE != 0,
        };
        r.record(rec);
        let Some(k) = kernel else { return (Status::NoKernelImage, [0, 0]) };
        let gate = &self.gate;
        match vm::run(self.session, k, &shape, &self.mem, &self.limits, &self.printf, &|| gate.is_closed()) {
            Ok(steps) => {
                self.stats.kernel_warp_insts.fetch_add(steps, Ordering::Relaxed);
                (Status::Ok, [0, 0])
            }
            Err(code) => {
                self.stats.kernel_faults.fetch_add(1, Ordering::Relaxed);
                (Status::DeviceError, [u64::from(code), 0])
            }
        }
    }
}

/// Prepare `k` of module `m` for launching (FuncGet): its PTX kernel lowered with every function
/// it calls, checked against the cubin's parameter layout; for a PTX-only module, the static
/// shared and local sizes the lowering found. `None` if the module has no PTX.
fn prepare(m: &Module, k: &mut modules::ParsedKernel) -> Result<Option<Arc<vm::Kernel>>, Status> {
    let Some(ptx) = &m.parsed.ptx else { return Ok(None) };
    let module = format!("module {:x}", m.hash);
    let entry = ptx.program.entry(&k.name).map_err(|e| {
        warn!(target: "vgpu::emu", "{module}: kernel {} cannot run on emu: {e}", k.name);
        Status::InvalidImage
    })?;
    let kern = &entry.kernel;
    let ptx_layout: Vec<(u32, u32)> = kern.params.iter().map(|p| (p.offset, p.size)).collect();
    let layout: Vec<(u32, u32)> = k.params.iter().map(|p| (p.offset, p.size)).collect();
    if ptx_layout != layout || kern.param_bytes > k.info.param_bytes {
        warn!(
            target: "vgpu::emu",
            "{module}: kernel {}: the PTX parameters {ptx_layout:?} ({} bytes) differ from the cubin's {layout:?} ({} bytes)",
            k.name, kern.param_bytes, k.info.param_bytes
        );
        return Err(Status::InvalidImage);
    }
    if m.parsed.from_ptx {
        // Described from the PTX (no cubin): the sizes the lowering found.
        k.info.shared_size_bytes = kern.shared_bytes;
        k.info.local_size_bytes = kern.local_bytes;
        k.info.max_dynamic_shared_size_bytes = modules::DEFAULT_DYNAMIC_SHARED.saturating_sub(kern.shared_bytes);
    }
    Ok(Some(Arc::new(vm::Kernel { entry, globals: m.globals.clone() })))
}

impl Emu {
    fn runner(&mut self) -> Runner {
        Runner {
            session: self.kern.session,
            mem: self.mem_view(),
            limits: self.limits.kernels,
            gate: self.gate.clone(),
            printf: self.printf.clone(),
            stats: self.stats,
        }
    }

    fn recorder(&self) -> Recorder {
        Recorder { seq: self.kern.launch_seq.clone(), log: self.kern.log.clone(), stats: self.stats }
    }

    /// Read a NUL-terminated name from the window (at most `len` bytes, at most [`MAX_NAME`]).
    fn window_name(&self, off: u64, len: u64) -> Result<String, Status> {
        self.window(off, len)?;
        let n = len.min(MAX_NAME);
        let buf = self.region.read_window_vec(off, n).map_err(|_| Status::InvalidWindowRange)?.ok_or(Status::OutOfMemory)?;
        let end = buf.iter().position(|&b| b == 0).ok_or(Status::InvalidArgument)?;
        String::from_utf8(buf[..end].to_vec()).map_err(|_| Status::NotFound)
    }

    fn func(&self, h: u64) -> Result<&Func, Status> {
        self.kern.funcs.get(&h).ok_or(Status::InvalidHandle)
    }

    /// Validate a Launch's arguments into a node (parameters copied out of the window).
    fn launch_node(&self, a: &[u64; 6]) -> Result<Node, Status> {
        let f = self.func(a[0])?;
        let grid = launch::unpack_grid(a[1]);
        let (bx, by, bz, flags) = launch::unpack_block(a[2]);
        if flags & !launch::KNOWN_FLAGS != 0 {
            return Err(Status::InvalidArgument);
        }
        let (shared, off, len) = (a[3], a[4], a[5]);
        self.window(off, len)?;
        modules::validate_launch(&f.info, grid, (bx, by, bz), shared, len, &DEVICE)?;
        cooperative_fits(&f.info, dims3(grid), [bx, by, bz], flags, shared)?;
        let params = self.region.read_window_vec(off, len).map_err(|_| Status::InvalidWindowRange)?.ok_or(Status::OutOfMemory)?;
        Ok(Node::Launch { func: a[0], name: f.name.clone(), grid: dims3(grid), block: [bx, by, bz], flags, shared, params: params.into() })
    }

    /// Validate a capturable copy or memset into a node.
    fn copy_node(&self, call: Call, a: &[u64; 6]) -> Result<Node, Status> {
        let resolve = |p: u64, len: u64| self.resolve(p, len).map(|_| ()).ok_or(Status::InvalidDevicePointer);
        Ok(match call {
            Call::Memset => {
                if a[1] > 0xff {
                    return Err(Status::InvalidArgument);
                }
                resolve(a[0], a[2])?;
                Node::Memset { dst: a[0], value: a[1] as u8, len: a[2] }
            }
            Call::MemcpyHtoD => {
                self.window(a[1], a[2])?;
                resolve(a[0], a[2])?;
                Node::HtoD { dst: a[0], off: a[1], len: a[2] }
            }
            Call::MemcpyDtoH => {
                self.window(a[1], a[2])?;
                resolve(a[0], a[2])?;
                Node::DtoH { src: a[0], off: a[1], len: a[2] }
            }
            Call::MemcpyDtoD => {
                resolve(a[0], a[2])?;
                resolve(a[1], a[2])?;
                Node::DtoD { dst: a[0], src: a[1], len: a[2] }
            }
            _ => return Err(Status::InvalidArgument),
        })
    }

    /// Resolve a node against the current allocations and functions (a graph launch re-checks
    /// everything: memory may have been freed, a module unloaded, an attribute changed).
    fn resolve_node(&self, n: &Node, stream: u32) -> Result<Op, Status> {
        let resolve = |p: u64, len: u64| self.resolve(p, len).ok_or(Status::InvalidDevicePointer);
        Ok(match n {
            Node::Launch { func, name, grid, block, flags, shared, params } => {
                let f = self.func(*func)?;
                let g = (grid[0], grid[1], grid[2]);
                modules::validate_launch(&f.info, g, (block[0], block[1], block[2]), *shared, params.len() as u64, &DEVICE)?;
                cooperative_fits(&f.info, *grid, *block, *flags, *shared)?;
                Op::Launch(
                    LaunchRecord {
                        session: self.kern.session,
                        seq: 0,
                        stream,
                        kernel: name.to_string(),
                        grid: *grid,
                        block: *block,
                        shared: *shared,
                        params: params.clone(),
                        graph: true,
                    },
                    *flags,
                    f.kernel.clone(),
                )
            }
            Node::Memset { dst, value, len } => {
                let (a, at) = resolve(*dst, *len)?;
                Op::Memset(a, at, *len as usize, *value)
            }
            Node::HtoD { dst, off, len } => {
                self.window(*off, *len)?;
                let (a, at) = resolve(*dst, *len)?;
                Op::HtoD(a, at, *off, *len as usize)
            }
            Node::DtoH { src, off, len } => {
                self.window(*off, *len)?;
                let (a, at) = resolve(*src, *len)?;
                Op::DtoH(a, at, *off, *len as usize)
            }
            Node::DtoD { dst, src, len } => {
                let (da, dat) = resolve(*dst, *len)?;
                let (sa, sat) = resolve(*src, *len)?;
                Op::DtoD(da, dat, sa, sat, *len as usize)
            }
        })
    }

    /// Add nodes to the capture on `stream`, within the node and byte quotas.
    fn add_nodes(&mut self, stream: u32, nodes: &[Node]) -> Result<(), Status> {
        let cost = nodes_cost(nodes);
        let max_nodes = self.limits.max_graph_nodes;
        let max_bytes = self.limits.max_graph_bytes;
        let c = self.kern.captures.get_mut(&stream).ok_or(Status::InvalidHandle)?;
        if c.nodes.len() + nodes.len() > max_nodes || self.kern.graph_bytes + cost > max_bytes {
            return Err(Status::OutOfMemory);
        }
        c.nodes.extend_from_slice(nodes);
        self.kern.graph_bytes += cost;
        Ok(())
    }

    /// A stream-ordered command on a capturing stream. `None`: not a matter of capture (Begin
    /// and EndCapture run as usual).
    pub(super) fn capture(&mut self, cmd: &Command, call: Call, done: &Completer) -> Option<Result<Option<[u64; 2]>, Status>> {
        if matches!(call, Call::StreamBeginCapture | Call::StreamEndCapture) {
            return None;
        }
        let stream = cmd.stream;
        if !call.capturable() {
            if let Some(c) = self.kern.captures.get_mut(&stream) {
                c.invalid = true;
            }
            debug!(target: "vgpu::emu", stream, call = call.name(), "not capturable: capture invalidated");
            return Some(Err(Status::CaptureUnsupported));
        }
        let a = cmd.args;
        let nodes = match call {
            Call::Launch => self.launch_node(&a).map(|n| vec![n]),
            Call::GraphLaunch => self.kern.execs.get(&a[0]).map(|n| n.to_vec()).ok_or(Status::InvalidHandle),
            _ => self.copy_node(call, &a).map(|n| vec![n]),
        };
        let r = nodes.and_then(|n| self.add_nodes(stream, &n));
        Some(match r {
            // Complete in the stream's order, after what was queued before the capture began.
            Ok(()) => self.queue(cmd, 0, done, || Status::Ok),
            Err(s) => Err(s),
        })
    }

    /// Calls 22..36 (outside capture).
    pub(super) fn exec_kernel(&mut self, cmd: &Command, call: Call, done: &Completer) -> Result<Option<[u64; 2]>, Status> {
        let a = cmd.args;
        match call {
            Call::ModuleData => {
                self.kern.uploads.part(&self.region, &a)?;
                Ok(Some([0, 0]))
            }
            Call::ModuleLoad => {
                let (id, hash, len) = wire::parse_module_load_args(&a);
                self.module_load(id, hash, len).map(|h| Some([h, 0]))
            }
            Call::ModuleUnload => {
                let m = self.kern.modules.remove(&a[0]).ok_or(Status::InvalidHandle)?;
                for h in m.funcs.values() {
                    self.kern.funcs.remove(h);
                }
                for (addr, _) in m.symbols.values() {
                    self.free_owned(*addr);
                }
                debug!(target: "vgpu::emu", module = a[0], hash = format_args!("{:x}", m.hash), "module unloaded");
                Ok(Some([0, 0]))
            }
            Call::FuncGet => {
                let (module, off, len) = (a[0], a[1], a[2]);
                let name = self.window_name(off, len)?;
                let max_functions = self.limits.max_functions;
                let m = self.kern.modules.get(&module).ok_or(Status::InvalidHandle)?;
                let k = m.parsed.kernel(&name).ok_or(Status::NotFound)?.clone();
                let bytes_needed = 64 + 8 * k.params.len() as u64;
                if len < bytes_needed {
                    return Err(Status::InvalidArgument);
                }
                let h = match m.funcs.get(&name) {
                    Some(&h) => h,
                    None => {
                        if self.kern.funcs.len() >= max_functions {
                            return Err(Status::QuotaExceeded);
                        }
                        let mut k = k;
                        let kernel = prepare(m, &mut k)?;
                        let h = u64::from(self.handle());
                        let f = Func { name: Arc::from(name.as_str()), info: k.info, params: k.params, kernel, attrs: HashMap::new() };
                        self.kern.funcs.insert(h, f);
                        if let Some(m) = self.kern.modules.get_mut(&module) {
                            m.funcs.insert(name, h);
                        }
                        h
                    }
                };
                let f = self.func(h)?;
                let bytes = wire::encode_func_info(&f.info, &f.params);
                self.region.write_window(off, &bytes).map_err(|_| Status::InvalidWindowRange)?;
                Ok(Some([h, bytes.len() as u64]))
            }
            Call::Launch => {
                let node = self.launch_node(&a)?;
                let Node::Launch { name, grid, block, shared, params, flags, .. } = node else {
                    return Err(Status::InvalidArgument);
                };
                let kernel = self.func(a[0])?.kernel.clone();
                let rec = LaunchRecord {
                    session: self.kern.session,
                    seq: 0,
                    stream: cmd.stream,
                    kernel: name.to_string(),
                    grid,
                    block,
                    shared,
                    params,
                    graph: false,
                };
                let r = self.recorder();
                let run = self.runner();
                // Recorded and run when the stream reaches it, on the stream's thread (never
                // inline on the dispatcher: a kernel may run long).
                completion_result(
                    self.enqueue(cmd.stream, cmd.seq, u64::MAX, done, move || {
                        Done::reply(Some(run.launch(&r, rec, flags, kernel.as_deref())))
                    }),
                )
            }
            Call::SymbolGet => {
                let (module, off, len, size) = (a[0], a[1], a[2], a[3]);
                let name = self.window_name(off, len)?;
                let m = self.kern.modules.get(&module).ok_or(Status::InvalidHandle)?;
                let &(addr, real) = m.symbols.get(&name).ok_or(Status::NotFound)?;
                if size > real {
                    return Err(Status::InvalidArgument);
                }
                Ok(Some([addr, real]))
            }
            Call::FuncSetAttr => {
                let (attr, raw) = (a[1], a[2]);
                if raw > u64::from(u32::MAX) {
                    return Err(Status::InvalidArgument);
                }
                let v = raw as u32 as i32;
                let f = self.kern.funcs.get_mut(&a[0]).ok_or(Status::InvalidHandle)?;
                match attr {
                    func_attr::MAX_DYNAMIC_SHARED_MEMORY_SIZE => {
                        let total = i64::from(v) + i64::from(f.info.shared_size_bytes);
                        if v < 0 || total > i64::from(DEVICE.shared_per_block_optin) {
                            return Err(Status::InvalidArgument);
                        }
                        f.info.max_dynamic_shared_size_bytes = v as u32;
                    }
                    func_attr::PREFERRED_SHARED_MEMORY_CARVEOUT => {
                        if !(-1..=100).contains(&v) {
                            return Err(Status::InvalidArgument);
                        }
                        f.info.preferred_shmem_carveout = v;
                    }
                    func_attr::REQUIRED_CLUSTER_WIDTH | func_attr::REQUIRED_CLUSTER_HEIGHT | func_attr::REQUIRED_CLUSTER_DEPTH => {
                        if !(0..=8).contains(&v) {
                            return Err(Status::InvalidArgument);
                        }
                        f.attrs.insert(attr, v);
                    }
                    func_attr::NON_PORTABLE_CLUSTER_SIZE_ALLOWED => {
                        if !(0..=1).contains(&v) {
                            return Err(Status::InvalidArgument);
                        }
                        f.attrs.insert(attr, v);
                    }
                    func_attr::CLUSTER_SCHEDULING_POLICY_PREFERENCE => {
                        if !(0..=2).contains(&v) {
                            return Err(Status::InvalidArgument);
                        }
                        f.attrs.insert(attr, v);
                    }
                    // CLUSTER_DIM_MUST_BE_SET is read-only; anything else is unknown.
                    _ => return Err(Status::InvalidArgument),
                }
                Ok(Some([0, 0]))
            }
            Call::Occupancy => {
                let (threads, shared, flags) = (a[1], a[2], a[3]);
                let f = self.func(a[0])?;
                if threads == 0 || threads > u64::from(u32::MAX) || flags & !1 != 0 {
                    return Err(Status::InvalidArgument);
                }
                Ok(Some([u64::from(modules::occupancy(&f.info, threads as u32, shared, &DEVICE)), 0]))
            }
            Call::StreamBeginCapture => {
                let stream = cmd.stream;
                if a[0] > 2 {
                    return Err(Status::InvalidArgument);
                }
                self.stream(stream)?;
                if stream == 0 {
                    return Err(Status::CaptureUnsupported);
                }
                if self.kern.captures.contains_key(&stream) {
                    return Err(Status::InvalidArgument);
                }
                self.kern.captures.insert(stream, Capture::default());
                debug!(target: "vgpu::emu", stream, mode = a[0], "capture begins");
                self.queue(cmd, 0, done, || Status::Ok)
            }
            Call::StreamEndCapture => {
                let stream = cmd.stream;
                self.stream(stream)?;
                let c = self.kern.captures.remove(&stream).ok_or(Status::InvalidArgument)?;
                let cost = nodes_cost(&c.nodes);
                if c.invalid {
                    self.kern.graph_bytes -= cost;
                    return Err(Status::CaptureInvalidated);
                }
                if self.kern.graphs.len() >= self.limits.max_graphs {
                    self.kern.graph_bytes -= cost;
                    return Err(Status::QuotaExceeded);
                }
                let g = u64::from(self.handle());
                debug!(target: "vgpu::emu", stream, graph = g, nodes = c.nodes.len(), "capture ends");
                self.kern.graphs.insert(g, Arc::new(c.nodes));
                completion_result(self.enqueue(stream, cmd.seq, 0, done, move || Done::reply(Some((Status::Ok, [g, 0])))))
            }
            Call::GraphInstantiate => {
                if a[1] & !INSTANTIATE_FLAGS != 0 {
                    return Err(Status::InvalidArgument);
                }
                let g = self.kern.graphs.get(&a[0]).ok_or(Status::InvalidHandle)?.clone();
                let cost = nodes_cost(&g);
                if self.kern.execs.len() >= self.limits.max_graphs {
                    return Err(Status::QuotaExceeded);
                }
                if self.kern.graph_bytes + cost > self.limits.max_graph_bytes {
                    return Err(Status::OutOfMemory);
                }
                let h = u64::from(self.handle());
                self.kern.graph_bytes += cost;
                self.kern.execs.insert(h, g);
                Ok(Some([h, 0]))
            }
            Call::GraphExecUpdate => {
                let exec = self.kern.execs.get(&a[0]).ok_or(Status::InvalidHandle)?;
                let g = self.kern.graphs.get(&a[1]).ok_or(Status::InvalidHandle)?;
                let result = if exec.len() != g.len() {
                    UPDATE_TOPOLOGY_CHANGED
                } else if exec.iter().zip(g.iter()).any(|(x, y)| x.kind() != y.kind()) {
                    UPDATE_NODE_TYPE_CHANGED
                } else if exec.iter().zip(g.iter()).any(|(x, y)| match (x, y) {
                    (Node::Launch { func: f1, .. }, Node::Launch { func: f2, .. }) => f1 != f2,
                    _ => false,
                }) {
                    UPDATE_FUNCTION_CHANGED
                } else {
                    0
                };
                if result == 0 {
                    let (old, new) = (nodes_cost(exec), nodes_cost(g));
                    if self.kern.graph_bytes - old + new > self.limits.max_graph_bytes {
                        return Err(Status::OutOfMemory);
                    }
                    let g = g.clone();
                    self.kern.graph_bytes = self.kern.graph_bytes - old + new;
                    self.kern.execs.insert(a[0], g);
                }
                Ok(Some([result, 0]))
            }
            Call::GraphLaunch => {
                let nodes = self.kern.execs.get(&a[0]).ok_or(Status::InvalidHandle)?.clone();
                self.stream(cmd.stream)?;
                let ops = nodes.iter().map(|n| self.resolve_node(n, cmd.stream)).collect::<Result<Vec<Op>, Status>>()?;
                self.stats.graph_launches.fetch_add(1, Ordering::Relaxed);
                let launches = ops.iter().any(|o| matches!(o, Op::Launch(..)));
                let cost: u64 = ops
                    .iter()
                    .map(|o| match o {
                        Op::Launch(..) => u64::MAX,
                        Op::Memset(_, _, n, _) | Op::HtoD(_, _, _, n) | Op::DtoH(_, _, _, n) | Op::DtoD(_, _, _, _, n) => *n as u64,
                    })
                    .fold(0u64, u64::saturating_add);
                let (r, region, stats) = (self.recorder(), self.region.clone(), self.stats);
                let run = launches.then(|| self.runner());
                completion_result(self.enqueue(cmd.stream, cmd.seq, cost, done, move || {
                    let mut status = Status::Ok;
                    let mut result = [0, 0];
                    for op in ops {
                        if status != Status::Ok {
                            // A failed node ends the replay, as a fault ends a GPU's.
                            break;
                        }
                        match op {
                            Op::Launch(rec, flags, kernel) => {
                                if let Some(run) = &run {
                                    (status, result) = run.launch(&r, rec, flags, kernel.as_deref());
                                }
                            }
                            Op::Memset(a, at, len, v) => {
                                a.data.write().unwrap_or_else(|e| e.into_inner())[at..at + len].fill(v);
                            }
                            Op::HtoD(a, at, off, len) => {
                                stats.bytes_h2d.fetch_add(len as u64, Ordering::Relaxed);
                                let mut d = a.data.write().unwrap_or_else(|e| e.into_inner());
                                if region.read_window(off, &mut d[at..at + len]).is_err() {
                                    status = Status::InvalidWindowRange;
                                }
                            }
                            Op::DtoH(a, at, off, len) => {
                                stats.bytes_d2h.fetch_add(len as u64, Ordering::Relaxed);
                                let d = a.data.read().unwrap_or_else(|e| e.into_inner());
                                if region.write_window(off, &d[at..at + len]).is_err() {
                                    status = Status::InvalidWindowRange;
                                }
                            }
                            Op::DtoD(da, dat, sa, sat, len) => {
                                stats.bytes_d2d.fetch_add(len as u64, Ordering::Relaxed);
                                copy_d2d(&da, dat, &sa, sat, len);
                            }
                        }
                    }
                    Done::reply(Some((status, result)))
                }))
            }
            Call::GraphDestroy => {
                let g = self.kern.graphs.remove(&a[0]).ok_or(Status::InvalidHandle)?;
                self.kern.graph_bytes -= nodes_cost(&g);
                Ok(Some([0, 0]))
            }
            Call::GraphExecDestroy => {
                let e = self.kern.execs.remove(&a[0]).ok_or(Status::InvalidHandle)?;
                self.kern.graph_bytes -= nodes_cost(&e);
                // Launches of it already queued hold their own copy of the nodes; the
                // completion still waits for them, as CUDA's does.
                Ok(after_streams(self.streams.values().chain(self.draining.iter()), cmd.seq, done))
            }
            _ => Err(Status::UnknownCall),
        }
    }

    /// ModuleLoad: from upload `id`, or by hash (this session's modules, then the cache).
    fn module_load(&mut self, id: u64, hash: ModuleHash, len: u64) -> Result<u64, Status> {
        if len == 0 || len > MAX_MODULE_LEN {
            if id != 0 {
                // Drop the upload: it can never load.
                let _ = self.kern.uploads.finish(id, hash, len);
            }
            return Err(Status::InvalidArgument);
        }
        if self.kern.modules.len() >= self.limits.max_modules {
            if id != 0 {
                let _ = self.kern.uploads.finish(id, hash, len);
            }
            return Err(Status::QuotaExceeded);
        }
        let (image, parsed, uploaded) = if id != 0 {
            let img = self.kern.uploads.finish(id, hash, len)?;
            match self.kern.modules.values().find(|m| m.hash == hash && m.image.bytes.len() as u64 == len) {
                Some(m) => (img, m.parsed.clone(), true),
                None => {
                    let p = modules::parse_emu(&img).map_err(|(s, _)| s)?;
                    (img, Arc::new(p), true)
                }
            }
        } else if let Some(m) = self.kern.modules.values().find(|m| m.hash == hash && m.image.bytes.len() as u64 == len) {
            (m.image.clone(), m.parsed.clone(), false)
        } else {
            let img = self.kern.cache.get(hash, len).ok_or(Status::NotFound)?;
            let p = modules::parse_emu(&img).map_err(|(s, _)| s)?;
            (img, Arc::new(p), false)
        };
        let h = u64::from(self.handle());
        // The module's variables, with their initial bytes.
        let mut symbols = HashMap::new();
        for g in &parsed.globals {
            let addr = match self.alloc_owned(g.size.max(1), h) {
                Ok(addr) => addr,
                Err(s) => {
                    for (addr, _) in symbols.values() {
                        self.free_owned(*addr);
                    }
                    return Err(s);
                }
            };
            if let (Some(init), Some(al)) = (&g.init, self.allocs.get(&addr)) {
                let mut d = al.data.write().unwrap_or_else(|e| e.into_inner());
                let n = init.len().min(d.len());
                d[..n].copy_from_slice(&init[..n]);
            }
            symbols.insert(g.name.clone(), (addr, g.size));
        }
        let globals = match self.ptx_variables(&parsed, h, &mut symbols) {
            Ok(g) => g,
            Err(s) => {
                for (addr, _) in symbols.values() {
                    self.free_owned(*addr);
                }
                return Err(s);
            }
        };
        if uploaded {
            self.kern.cache.put(&image);
        } else {
            self.stats.modules_cached.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.modules_loaded.fetch_add(1, Ordering::Relaxed);
        debug!(
            target: "vgpu::emu", module = h, hash = format_args!("{hash:x}"), len, uploaded,
            kernels = parsed.kernels.len(), variables = parsed.globals.len(), "module loaded"
        );
        self.kern.modules.insert(h, Module { hash, image, parsed, funcs: HashMap::new(), symbols, globals });
        Ok(h)
    }

    /// The PTX's `.global`/`.const` variables: each one the cubin did not describe is allocated
    /// too (owned by module `h`), then every one gets the PTX's initial bytes (address
    /// initializers resolved against the module's symbols). Returns the address of each PTX
    /// variable by index, what the interpreter's `Launch::globals` takes.
    fn ptx_variables(&mut self, parsed: &ParsedModule, h: u64, symbols: &mut HashMap<String, (u64, u64)>) -> Result<Arc<[u64]>, Status> {
        let Some(ptx) = &parsed.ptx else { return Ok(Arc::from(Vec::new())) };
        let m = ptx.program.module();
        let mut globals = vec![0u64; m.variables.len()];
        for (i, v) in ptx.program.device_variables() {
            let addr = match symbols.get(&v.name) {
                Some(&(addr, _)) => addr,
                None => {
                    let addr = self.alloc_owned(v.size().max(1), h)?;
                    symbols.insert(v.name.clone(), (addr, v.size()));
                    addr
                }
            };
            globals[i] = addr;
        }
        for (i, v) in ptx.program.device_variables() {
            if v.init.is_none() {
                continue;
            }
            let bytes = v.init_bytes(&|name| symbols.get(name).map(|s| s.0));
            if let Some(al) = self.allocs.get(&globals[i]) {
                let mut d = al.data.write().unwrap_or_else(|e| e.into_inner());
                let n = bytes.len().min(d.len());
                d[..n].copy_from_slice(&bytes[..n]);
            }
        }
        Ok(Arc::from(globals))
    }
}
