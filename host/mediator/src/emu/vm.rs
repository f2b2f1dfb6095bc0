//! Kernel execution on the emulator: the PTX interpreter (`vgpu-ptx`) over the session's device
//! memory.
//!
//! - [`Kernel`] is what a function handle runs: the kernel prepared by
//!   [`vgpu_ptx::program::Program::entry`] at FuncGet (its body and every function it calls,
//!   lowered) and the device address of each module variable, by PTX variable index.
//! - [`Memory`] is a launch's view of device memory: the session's allocations when the launch
//!   was queued, sorted by address. Every access is checked against them (an access outside
//!   every allocation, or across the end of one, ends the kernel with an illegal address); an
//!   allocation freed while a launch runs stays mapped for that launch (it holds an `Arc`), so a
//!   guest's early `cudaFree` cannot make the host touch unmapped memory.
//! - [`run`] executes one launch on the calling thread (a stream's worker, never the session's
//!   dispatcher), stopping at the session's end or past [`Limits::kernel_timeout`], and maps
//!   the interpreter's errors to the `CUresult` a GPU reports (see [`fault_code`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
// Counters, not a protocol: the block index handed out, a stop flag, a sum (no loom model needed:
// each is one independent atomic, and results are read after the scope joins every thread).
use vgpu_ptx::exec::{self, ExecError, Fault, Launch};
use vgpu_ptx::program::Entry;
use vgpu_transport::sync::stat::AtomicU64;
use vgpu_transport::sync::Ordering;

use super::Alloc;

/// `CUDA_ERROR_ILLEGAL_ADDRESS`.
pub const ILLEGAL_ADDRESS: u32 = 700;
/// `CUDA_ERROR_LAUNCH_TIMEOUT`.
pub const LAUNCH_TIMEOUT: u32 = 702;
/// `CUDA_ERROR_LAUNCH_FAILED` (a `trap`, or an instruction the interpreter lacks).
pub const LAUNCH_FAILED: u32 = 719;

/// How long and how far one kernel may run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Wall-clock time one launch may run before it is stopped (`cudaErrorLaunchTimeout`).
    pub kernel_timeout: Duration,
    /// Warp instructions one launch may run (0: no limit).
    pub kernel_budget: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { kernel_timeout: Duration::from_secs(600), kernel_budget: 0 }
    }
}

/// Most bytes of device printf output a session holds for its guest: CUDA's default
/// `cudaLimitPrintfFifoSize` (1 MiB). Output past it is dropped (counted, logged once), as a
/// GPU drops what overflows its printf buffer.
pub const PRINTF_MAX: usize = 1 << 20;

/// A session's device printf output, waiting for the guest's `PrintfDrain`; its length is
/// mirrored in the region header's `PRINTF_PENDING` word.
pub struct Printf {
    region: Arc<vgpu_transport::region::Region>,
    held: std::sync::Mutex<std::collections::VecDeque<u8>>,
    dropped: AtomicU64,
}

impl Printf {
    pub fn new(region: Arc<vgpu_transport::region::Region>) -> Printf {
        Printf { region, held: std::sync::Mutex::new(std::collections::VecDeque::new()), dropped: AtomicU64::new(0) }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<u8>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append one printf call's text (the whole text or nothing).
    pub fn push(&self, text: &str) {
        let mut h = self.held();
        if h.len() + text.len() > PRINTF_MAX {
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                warn!(target: "vgpu::emu::printf", "device printf output past {PRINTF_MAX} bytes not yet read by the guest: dropped");
            }
            return;
        }
        h.extend(text.as_bytes());
        // Stored before the launch's completion is posted, so the guest that reads the
        // completion sees it (the completion ring orders the two).
        self.region.write_u64(vgpu_transport::wire::hdr::PRINTF_PENDING, h.len() as u64);
    }

    /// Take up to `max` bytes, oldest first; what remains.
    pub fn drain(&self, max: usize) -> (Vec<u8>, u64) {
        let mut h = self.held();
        let n = max.min(h.len());
        let out: Vec<u8> = h.drain(..n).collect();
        self.region.write_u64(vgpu_transport::wire::hdr::PRINTF_PENDING, h.len() as u64);
        (out, h.len() as u64)
    }
}

/// What a function handle launches.
pub struct Kernel {
    pub entry: Entry,
    /// Device address of each module variable by index in the PTX module's variables (0 for
    /// `.shared` ones, which live in the block's shared memory).
    pub globals: Arc<[u64]>,
}

/// A launch's view of device memory.
pub struct Memory {
    /// By base address.
    allocs: Vec<Arc<Alloc>>,
}

impl Memory {
    pub fn new(mut allocs: Vec<Arc<Alloc>>) -> Memory {
        allocs.sort_by_key(|a| a.base);
        Memory { allocs }
    }

    /// The allocation holding `[addr, addr + len)` and the offset of `addr` in it.
    fn find(&self, addr: u64, len: usize) -> Result<(&Alloc, usize), Fault> {
        let fault = Fault { addr, len: len as u64 };
        let i = self.allocs.partition_point(|a| a.base <= addr).checked_sub(1).ok_or(fault)?;
        let a = &self.allocs[i];
        let end = addr.checked_add(len as u64).ok_or(fault)?;
        if end > a.base + a.len {
            return Err(fault);
        }
        Ok((a, (addr - a.base) as usize))
    }
}

impl exec::Memory for Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let (a, at) = self.find(addr, buf.len())?;
        let d = a.data.read().unwrap_or_else(|e| e.into_inner());
        buf.copy_from_slice(&d[at..at + buf.len()]);
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), Fault> {
        let (a, at) = self.find(addr, data.len())?;
        let mut d = a.data.write().unwrap_or_else(|e| e.into_inner());
        d[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn read_lanes(&self, addrs: &[u64; 32], size: usize, mask: u32, out: &mut [u64; 32]) -> Result<(), Fault> {
        // One allocation lookup and one lock while the lanes stay in the same allocation (the
        // common case: a warp reading one array); one lock at a time, so no lock order.
        let mut cur: Option<(&Alloc, std::sync::RwLockReadGuard<'_, memmap2::MmapMut>)> = None;
        for l in (0..32).filter(|l| mask & (1 << l) != 0) {
            let (a, at) =
                self.find(addrs[l], size).and_then(|r| if size <= 8 { Ok(r) } else { Err(Fault { addr: addrs[l], len: size as u64 }) })?;
            let g = match &mut cur {
                Some((c, g)) if std::ptr::eq(*c, a) => g,
                slot => {
                    // Release the previous allocation's lock before taking the next one.
                    drop(slot.take());
                    &mut slot.insert((a, a.data.read().unwrap_or_else(|e| e.into_inner()))).1
                }
            };
            let d = &g[at..at + size];
            let mut v = [0u8; 8];
            v[..size].copy_from_slice(d);
            out[l] = u64::from_le_bytes(v);
        }
        Ok(())
    }

    fn write_lanes(&self, addrs: &[u64; 32], size: usize, mask: u32, vals: &[u64; 32]) -> Result<(), Fault> {
        let mut cur: Option<(&Alloc, std::sync::RwLockWriteGuard<'_, memmap2::MmapMut>)> = None;
        for l in (0..32).filter(|l| mask & (1 << l) != 0) {
            let (a, at) =
                self.find(addrs[l], size).and_then(|r| if size <= 8 { Ok(r) } else { Err(Fault { addr: addrs[l], len: size as u64 }) })?;
            let g = match &mut cur {
                Some((c, g)) if std::ptr::eq(*c, a) => g,
                slot => {
                    drop(slot.take());
                    &mut slot.insert((a, a.data.write().unwrap_or_else(|e| e.into_inner()))).1
                }
            };
            g[at..at + size].copy_from_slice(&vals[l].to_le_bytes()[..size]);
        }
        Ok(())
    }

    fn atomic(&self, addr: u64, size: usize, f: &mut dyn FnMut(u64) -> u64) -> Result<u64, Fault> {
        if !(1..=8).contains(&size) {
            return Err(Fault { addr, len: size as u64 });
        }
        let (a, at) = self.find(addr, size)?;
        // The write lock makes the read-modify-write atomic against every other access to the
        // allocation (other blocks, other streams, copies).
        let mut d = a.data.write().unwrap_or_else(|e| e.into_inner());
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(&d[at..at + size]);
        let old = u64::from_le_bytes(b);
        let new = f(old).to_le_bytes();
        d[at..at + size].copy_from_slice(&new[..size]);
        Ok(old)
    }
}

/// One launch's shape.
pub struct Shape<'a> {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared: u32,
    pub params: &'a [u8],
    /// `cudaLaunchCooperativeKernel` (or the cooperative attribute): all blocks at once.
    pub cooperative: bool,
}

/// The `CUresult` a GPU reports for the interpreter's error (the guest maps it to the
/// `cudaError_t` of the same value, sticky as on hardware).
pub fn fault_code(e: &ExecError) -> u32 {
    match e {
        ExecError::IllegalAddress { .. } => ILLEGAL_ADDRESS,
        ExecError::Stopped { .. } => LAUNCH_TIMEOUT,
        ExecError::Trap { .. } | ExecError::Unsupported { .. } | ExecError::BadLaunch { .. } => LAUNCH_FAILED,
    }
}

/// Threads one launch's blocks run on: the machine's cores.
fn cores() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Run the blocks of a launch on `workers` threads (the caller's among them), each taking the
/// next block index in turn, so blocks start in increasing order (cub's look-back scans rely on
/// it). A cooperative launch gets a thread per block: all its blocks are resident at once, so a
/// grid-wide barrier (spinning on global memory) completes. The first error stops the others.
fn run_grid(
    k: &Kernel,
    shape: &Shape<'_>,
    mem: &Memory,
    budget: u64,
    printf: &(dyn Fn(&str) + Sync),
    cancel: &(dyn Fn() -> bool + Sync),
) -> Result<u64, ExecError> {
    let callees = k.entry.callees();
    let launch = |callees: &[exec::Callee<'_>], f: &mut dyn FnMut(&Launch<'_>) -> Result<u64, ExecError>| {
        f(&Launch {
            grid: shape.grid,
            block: shape.block,
            params: shape.params,
            dynamic_shared: shape.dynamic_shared,
            globals: &k.globals,
            budget,
            functions: callees,
            printf,
        })
    };
    let blocks: u64 = shape.grid.iter().map(|&d| u64::from(d)).product();
    let workers = if shape.cooperative { blocks } else { (cores() as u64).min(blocks) };
    if workers <= 1 {
        return launch(&callees, &mut |l| exec::run(&k.entry.kernel, l, mem, cancel));
    }
    let next = AtomicU64::new(0);
    let stop = AtomicU64::new(0);
    let steps = AtomicU64::new(0);
    let first: std::sync::Mutex<Option<ExecError>> = std::sync::Mutex::new(None);
    let work = || {
        let callees = k.entry.callees();
        let cancel = || (stop.load(Ordering::Relaxed) != 0) || cancel();
        launch(&callees, &mut |l| {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= blocks || (stop.load(Ordering::Relaxed) != 0) {
                    return Ok(0);
                }
                match exec::run_blocks(&k.entry.kernel, l, mem, &cancel, b..b + 1) {
                    Ok(n) => {
                        steps.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let mut f = first.lock().unwrap_or_else(|e| e.into_inner());
                        // Keep the fault, not a block stopped because of it.
                        if f.is_none() {
                            *f = Some(e);
                        }
                        stop.store(1, Ordering::Relaxed);
                        return Ok(0);
                    }
                }
            }
        })
    };
    std::thread::scope(|s| {
        let mut spawned = 0;
        for _ in 1..workers {
            if std::thread::Builder::new().name("vgpu-emu-block".into()).spawn_scoped(s, work).is_ok() {
                spawned += 1;
            }
        }
        if shape.cooperative && spawned + 1 < workers {
            // Not every block could get a thread: a grid barrier would never complete.
            stop.store(1, Ordering::Relaxed);
            let what = format!("{blocks} cooperative blocks need as many threads; {} could start", spawned + 1);
            *first.lock().unwrap_or_else(|e| e.into_inner()) = Some(ExecError::BadLaunch { kernel: k.entry.kernel.name.clone(), what });
            return;
        }
        let _ = work();
    });
    match first.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(steps.load(Ordering::Relaxed)),
    }
}

/// Run `k` over `shape` on `mem`: `Ok(warp instructions)` or the `CUresult` of the fault.
/// `ended` is asked every time slice: the session is going away.
pub fn run(
    session: u64,
    k: &Kernel,
    shape: &Shape<'_>,
    mem: &Memory,
    limits: &Limits,
    out: &Printf,
    ended: &(dyn Fn() -> bool + Sync),
) -> Result<u64, u32> {
    let name = &k.entry.kernel.name;
    let printf = |s: &str| {
        // Device printf: held for the guest's stdout, and in the mediator's log at debug.
        debug!(target: "vgpu::emu::printf", session, kernel = %name, "{}", s.trim_end_matches('\n'));
        out.push(s);
    };
    let t0 = Instant::now();
    let deadline = t0 + limits.kernel_timeout;
    let cancel = || ended() || Instant::now() > deadline;
    match run_grid(k, shape, mem, limits.kernel_budget, &printf, &cancel) {
        Ok(steps) => {
            debug!(target: "vgpu::emu::launch", session, kernel = %name, warp_insts = steps, elapsed = ?t0.elapsed(), "kernel ran");
            Ok(steps)
        }
        Err(e) => {
            let code = fault_code(&e);
            warn!(target: "vgpu::emu::launch", session, code, elapsed = ?t0.elapsed(), "kernel fault: {e}");
            Err(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::RwLock;
    use vgpu_ptx::exec::Memory as _;

    fn alloc(base: u64, len: u64) -> Arc<Alloc> {
        let map = memmap2::MmapMut::map_anon(len as usize).expect("anonymous mapping");
        Arc::new(Alloc { base, len, owner: 0, data: RwLock::new(map) })
    }

    #[test]
    fn warp_accesses_are_the_lane_by_lane_ones() {
        let mem = Memory::new(vec![alloc(0x2000, 256), alloc(0x1000, 256)]);
        let mut addrs = [0u64; 32];
        let mut vals = [0u64; 32];
        for l in 0..32 {
            // Lanes alternate between the two allocations, as a gather might.
            addrs[l] = if l % 3 == 0 { 0x2000 } else { 0x1000 } + 4 * l as u64;
            vals[l] = 0xdead_0000 + l as u64;
        }
        mem.write_lanes(&addrs, 4, u32::MAX, &vals).unwrap();
        let mut out = [0u64; 32];
        mem.read_lanes(&addrs, 4, !1, &mut out).unwrap();
        assert_eq!(out[0], 0, "lane 0 is not in the mask");
        for l in 1..32 {
            let mut b = [0u8; 4];
            mem.read(addrs[l], &mut b).unwrap();
            assert_eq!((out[l], u64::from(u32::from_le_bytes(b))), (vals[l], vals[l]), "lane {l}");
        }
        // A lane past its allocation's end: that lane's fault, the lanes before it done.
        addrs[5] = 0x1000 + 254;
        assert_eq!(mem.write_lanes(&addrs, 4, u32::MAX, &[7; 32]), Err(Fault { addr: 0x1000 + 254, len: 4 }));
        let mut b = [0u8; 4];
        mem.read(addrs[4], &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 7, "lane 4 wrote before lane 5 faulted");
        mem.read(addrs[6], &mut b).unwrap();
        assert_eq!(u64::from(u32::from_le_bytes(b)), vals[6], "lane 6 did not");
        assert!(mem.read_lanes(&addrs, 16, 1, &mut out).is_err(), "more than 8 bytes a lane");
    }
}
