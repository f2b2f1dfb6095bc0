//! Kernel modules on the host, shared by the executors: module uploads ([`Uploads`]), the
//! cross-session module cache ([`ModuleCache`]), the emulator's view of a module from its cubin
//! ([`parse`]), the launch checks both executors apply ([`validate_launch`]), the occupancy
//! computation ([`occupancy`]) and the launch log ([`LaunchRecord`], [`LaunchLog`]).
//!
//! Everything here takes guest-controlled values: upload ids, offsets, lengths, hashes, image
//! bytes, names, dimensions. Each is checked before use; nothing panics on guest input, and every
//! buffer a guest can make the host allocate is bounded ([`MAX_MODULE_LEN`], [`MAX_UPLOADS`]) and
//! allocated fallibly.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};
use vgpu_fatbin::{Cubin, EntryKind, Fatbin, GlobalKind};
use vgpu_transport::region::Region;
use vgpu_transport::wire::{module_hash, FuncInfo, ModuleHash, ParamInfo, Status, MAX_MODULE_LEN, MAX_PARAMS, MAX_PARAM_BYTES};

/// A module image: a fatbin container as nvcc registers it, and its [`module_hash`].
#[derive(Clone)]
pub struct Image {
    pub hash: ModuleHash,
    pub bytes: Arc<[u8]>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({:x}, {} bytes)", self.hash, self.bytes.len())
    }
}

impl Image {
    /// An image from bytes, hashing them.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Image {
        let bytes = bytes.into();
        Image { hash: module_hash(&bytes), bytes }
    }
}

/// Most uploads a session may have open (started, not yet loaded) at once.
pub const MAX_UPLOADS: usize = 64;

struct Upload {
    total: u64,
    /// Anonymous memory: zero pages until written, so a large declared total costs address
    /// space, not memory, until its parts arrive.
    buf: memmap2::MmapMut,
    /// Parts received: start → end. Disjoint.
    parts: BTreeMap<u64, u64>,
    filled: u64,
}

/// A session's partial module uploads ([`Call::ModuleData`](vgpu_transport::wire::Call)).
/// Bounded: the open uploads together hold at most [`MAX_MODULE_LEN`] bytes, and at most
/// [`MAX_UPLOADS`] are open.
#[derive(Default)]
pub struct Uploads {
    open: HashMap<u64, Upload>,
    bytes: u64,
}

impl Uploads {
    pub fn new() -> Self {
        Uploads::default()
    }

    /// Bytes the open uploads hold.
    pub fn open_bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of open uploads.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// One ModuleData command: `a[0]` upload id (non-zero), `a[1]` window offset, `a[2]` part
    /// length (> 0), `a[3]` offset of the part in the image, `a[4]` total image length
    /// (1..=[`MAX_MODULE_LEN`], the same for every part). The bytes are copied out of the window
    /// before this returns. Overlapping parts, a part past the total or a differing total are
    /// InvalidArgument (the upload stays open with what it had); too many open uploads is
    /// QuotaExceeded, too many open bytes OutOfMemory.
    pub fn part(&mut self, region: &Region, a: &[u64; 6]) -> Result<(), Status> {
        let (id, off, len, at, total) = (a[0], a[1], a[2], a[3], a[4]);
        if id == 0 || len == 0 || total == 0 || total > MAX_MODULE_LEN {
            return Err(Status::InvalidArgument);
        }
        let end = at.checked_add(len).filter(|&e| e <= total).ok_or(Status::InvalidArgument)?;
        region.window_range(off, len).ok_or(Status::InvalidWindowRange)?;
        if !self.open.contains_key(&id) {
            if self.open.len() >= MAX_UPLOADS {
                return Err(Status::QuotaExceeded);
            }
            if self.bytes + total > MAX_MODULE_LEN {
                return Err(Status::OutOfMemory);
            }
            let n = usize::try_from(total).map_err(|_| Status::OutOfMemory)?;
            let buf = memmap2::MmapMut::map_anon(n).map_err(|_| Status::OutOfMemory)?;
            self.open.insert(id, Upload { total, buf, parts: BTreeMap::new(), filled: 0 });
            self.bytes += total;
        }
        let u = self.open.get_mut(&id).ok_or(Status::InvalidArgument)?;
        if u.total != total {
            return Err(Status::InvalidArgument);
        }
        // Parts are disjoint, so only the last one starting before `end` can overlap.
        if u.parts.range(..end).next_back().is_some_and(|(_, &e)| e > at) {
            return Err(Status::InvalidArgument);
        }
        // In bounds: end <= total == buf.len().
        region.read_window(off, &mut u.buf[at as usize..end as usize]).map_err(|_| Status::InvalidWindowRange)?;
        u.parts.insert(at, end);
        u.filled += len;
        Ok(())
    }

    /// Close upload `id` for ModuleLoad: it must be complete, `len` bytes long and hash to
    /// `hash`. The upload is gone afterwards, whatever the answer. Unknown id: InvalidHandle;
    /// incomplete, wrong length or wrong hash: InvalidArgument.
    pub fn finish(&mut self, id: u64, hash: ModuleHash, len: u64) -> Result<Image, Status> {
        let u = self.open.remove(&id).ok_or(Status::InvalidHandle)?;
        self.bytes -= u.total;
        if u.total != len || u.filled != u.total {
            return Err(Status::InvalidArgument);
        }
        if module_hash(&u.buf) != hash {
            return Err(Status::InvalidArgument);
        }
        Ok(Image { hash, bytes: Arc::from(&u.buf[..]) })
    }

    /// Drop every open upload.
    pub fn clear(&mut self) {
        self.open.clear();
        self.bytes = 0;
    }
}

/// Default bound of the module cache's total size.
pub const CACHE_MAX_BYTES: u64 = 4 << 30;

/// The cross-session module cache: a directory of `<hash>.fatbin` files, written atomically
/// (a temporary file, then `rename`), bounded in total size (least recently used evicted), and
/// re-verified on every read (length and hash; a file that fails is removed). Shared by every
/// worker process of a mediator (and by mediators of the same user); each operation is a few
/// system calls, safe to run concurrently from several processes.
#[derive(Debug)]
pub struct ModuleCache {
    dir: Option<PathBuf>,
    max_bytes: u64,
}

impl ModuleCache {
    /// A cache in `dir` (created, mode 0700, if missing); `None`, or a folder that cannot be
    /// created, disables it (with a warning for the latter).
    pub fn open(dir: Option<PathBuf>) -> Self {
        ModuleCache::with_limit(dir, CACHE_MAX_BYTES)
    }

    /// [`open`](Self::open) with a size bound.
    pub fn with_limit(dir: Option<PathBuf>, max_bytes: u64) -> Self {
        let dir = dir.and_then(|d| {
            use std::os::unix::fs::DirBuilderExt;
            match fs::DirBuilder::new().recursive(true).mode(0o700).create(&d) {
                Ok(()) => Some(d),
                Err(e) => {
                    warn!(target: "vgpu::modules", "module cache {} disabled: {e}", d.display());
                    None
                }
            }
        });
        ModuleCache { dir, max_bytes }
    }

    /// No cache: every load by hash alone answers NotFound.
    pub fn disabled() -> Self {
        ModuleCache { dir: None, max_bytes: 0 }
    }

    /// `$XDG_CACHE_HOME/vgpu/modules`, else `~/.cache/vgpu/modules`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(d).join("vgpu/modules"));
        }
        std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache/vgpu/modules"))
    }

    /// The folder, when the cache is enabled.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn path(&self, hash: ModuleHash) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{hash:x}.fatbin")))
    }

    /// The cached image with this hash and length, verified.
    pub fn get(&self, hash: ModuleHash, len: u64) -> Option<Image> {
        if len == 0 || len > MAX_MODULE_LEN {
            return None;
        }
        let path = self.path(hash)?;
        let mut f = fs::File::open(&path).ok()?;
        if f.metadata().ok()?.len() != len {
            return None;
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(len as usize).ok()?;
        if let Err(e) = (&mut f).take(len + 1).read_to_end(&mut buf) {
            warn!(target: "vgpu::modules", "reading {}: {e}", path.display());
            return None;
        }
        if buf.len() as u64 != len || module_hash(&buf) != hash {
            warn!(target: "vgpu::modules", "{} does not match its name (length or hash): removed", path.display());
            let _ = fs::remove_file(&path);
            return None;
        }
        // Recently used: eviction goes by modification time.
        let _ = f.set_modified(SystemTime::now());
        Some(Image { hash, bytes: buf.into() })
    }

    /// Store an image (whose hash the caller verified), then evict the least recently used
    /// files past the size bound. Failures are logged, never fatal.
    pub fn put(&self, img: &Image) {
        let Some(path) = self.path(img.hash) else { return };
        if (img.bytes.len() as u64) > self.max_bytes {
            return;
        }
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            if f.metadata().is_ok_and(|m| m.len() == img.bytes.len() as u64) {
                let _ = f.set_modified(SystemTime::now());
                return;
            }
        }
        let Some(dir) = self.dir.as_ref() else { return };
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let tmp = dir.join(format!(".{:x}.{}.{nanos}.tmp", img.hash, std::process::id()));
        let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(&img.bytes)).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            warn!(target: "vgpu::modules", "caching module {:x} in {}: {e}", img.hash, dir.display());
            let _ = fs::remove_file(&tmp);
            return;
        }
        debug!(target: "vgpu::modules", "cached module {:x} ({} bytes)", img.hash, img.bytes.len());
        self.evict(&path);
    }

    /// Remove the least recently used `*.fatbin` files (never `keep`) until the total fits, and
    /// temporary files older than an hour (left by a process that died mid-write).
    fn evict(&self, keep: &Path) {
        let Some(dir) = self.dir.as_ref() else { return };
        let Ok(rd) = fs::read_dir(dir) else { return };
        let now = SystemTime::now();
        let mut files = Vec::new();
        let mut total = 0u64;
        for e in rd.flatten() {
            let (path, Ok(meta)) = (e.path(), e.metadata()) else { continue };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                if now.duration_since(mtime).unwrap_or_default() > Duration::from_secs(3600) {
                    let _ = fs::remove_file(&path);
                }
            } else if name.ends_with(".fatbin") && meta.is_file() {
                total += meta.len();
                files.push((mtime, meta.len(), path));
            }
        }
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

/// One kernel of a parsed module: what FuncGet answers.
#[derive(Clone, Debug)]
pub struct ParsedKernel {
    /// The device (mangled) name.
    pub name: String,
    /// The attributes known from the cubin (the guest fills the rest).
    pub info: FuncInfo,
    /// The parameter layout, by ordinal.
    pub params: Vec<ParamInfo>,
}

/// A `__device__` or `__constant__` variable of a parsed module.
#[derive(Clone, Debug)]
pub struct ParsedGlobal {
    pub name: String,
    pub size: u64,
    pub constant: bool,
    /// Initial bytes (`size` of them); `None`: zero.
    pub init: Option<Vec<u8>>,
}

/// The module's PTX for the emulator's interpreter: the entry chosen for [`EMU_CC`], parsed.
#[derive(Clone)]
pub struct Ptx {
    /// The `XX` of the `compute_XX` entry.
    pub arch: u32,
    pub program: Arc<vgpu_ptx::program::Program>,
}

impl std::fmt::Debug for Ptx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ptx(compute_{}, {} functions)", self.arch, self.program.module().functions.len())
    }
}

/// The emulator's (and the cuda executor's fallback) view of a module: its kernels with their
/// parameter layouts and the attributes the cubin states, and its variables.
#[derive(Clone, Debug)]
pub struct ParsedModule {
    /// The PTX emu executes ([`parse_emu`] only; `None`: the module has no PTX emu can run).
    pub ptx: Option<Ptx>,
    /// Described from the PTX alone (no cubin): sizes known only from lowering are 0.
    pub from_ptx: bool,
    pub kernels: Vec<ParsedKernel>,
    pub globals: Vec<ParsedGlobal>,
    /// The `XX` of the `sm_XX` cubin the view comes from.
    pub arch: u32,
    /// [`FuncInfo::ptx_version`] of every kernel: the virtual architecture of that cubin.
    pub ptx_version: u32,
    /// [`FuncInfo::binary_version`] of every kernel: `arch`.
    pub binary_version: u32,
}

impl ParsedModule {
    pub fn kernel(&self, name: &str) -> Option<&ParsedKernel> {
        self.kernels.iter().find(|k| k.name == name)
    }
    pub fn global(&self, name: &str) -> Option<&ParsedGlobal> {
        self.globals.iter().find(|g| g.name == name)
    }
}

/// The emu device's compute capability: [`parse`] picks the best cubin for it, else the first.
pub const EMU_CC: (u32, u32) = (9, 0);

/// Parse a module for the emulator: the best cubin for [`EMU_CC`], else the first cubin of any
/// architecture (emu runs nothing, so any cubin describes the kernels). Errors: InvalidImage
/// (not a fatbin, corrupt, compressed data that does not decompress, a cubin that does not parse), NoKernelImage (no cubin,
/// e.g. PTX only); the message names the module and the reason, and is logged (`warn!`).
pub fn parse(img: &Image) -> Result<ParsedModule, (Status, String)> {
    parse_inner(img, EMU_CC, true)
}

/// Parse a module for the emulator's interpreter: [`parse`]'s view plus the PTX to execute, the
/// entry of the highest `compute_XX` at or below [`EMU_CC`] (PTX runs on any later device). A
/// fat binary with PTX and no cubin (`-gencode arch=compute_75,code=compute_75`, Ollama's CUDA 13
/// build) is described from the PTX: parameter layouts from the `.entry` signatures, variables
/// from the module's `.global`/`.const` declarations. A module with no usable PTX still loads
/// (its kernels can be looked up and queried); launching one completes with NoKernelImage.
/// Errors: [`parse`]'s, InvalidImage for PTX that does not parse (naming the line), and
/// NoKernelImage for a module with neither a cubin nor PTX emu can run.
pub fn parse_emu(img: &Image) -> Result<ParsedModule, (Status, String)> {
    let r = parse_emu_inner(img);
    if let Err((s, msg)) = &r {
        warn!(target: "vgpu::modules", hash = format_args!("{:x}", img.hash), status = s.name(), "module refused: {msg}");
    }
    r
}

fn parse_emu_inner(img: &Image) -> Result<ParsedModule, (Status, String)> {
    let module = format!("module {:x}", img.hash);
    let fb = Fatbin::parse(&img.bytes).map_err(|e| (Status::InvalidImage, format!("{module}: {e}")))?.with_name(format!("{:x}", img.hash));
    let ptx = match fb.best_ptx(EMU_CC.0, EMU_CC.1) {
        Err(_) => None,
        Ok(entry) => {
            let text = entry.ptx_text().map_err(|e| (Status::InvalidImage, e.to_string()))?;
            let t0 = std::time::Instant::now();
            let program = vgpu_ptx::program::Program::parse(Arc::from(&*text))
                .map_err(|err| (Status::InvalidImage, format!("{module}: compute_{} PTX: {err}", entry.arch)))?;
            debug!(
                target: "vgpu::modules", "{module}: compute_{} PTX, {} bytes, {} functions, declarations read in {:?}",
                entry.arch, text.len(), program.module().functions.len(), t0.elapsed()
            );
            Some(Ptx { arch: entry.arch, program: Arc::new(program) })
        }
    };
    let has_cubin = fb.entries.iter().any(|e| e.kind == EntryKind::Elf);
    let mut parsed = match (has_cubin, &ptx) {
        (true, _) | (false, None) => parse_image(img, EMU_CC, true)?,
        (false, Some(p)) => from_ptx(&module, p)?,
    };
    parsed.ptx = ptx;
    Ok(parsed)
}

/// A module's description from its PTX alone (a fat binary without a cubin).
fn from_ptx(module: &str, p: &Ptx) -> Result<ParsedModule, (Status, String)> {
    let m = p.program.module();
    let mut kernels = Vec::new();
    for f in m.entries() {
        let (slots, total) =
            p.program.signature(&f.name).unwrap_or(Ok((Vec::new(), 0))).map_err(|e| (Status::InvalidImage, format!("{module}: {e}")))?;
        if slots.len() > MAX_PARAMS || u64::from(total) > MAX_PARAM_BYTES {
            return Err((
                Status::InvalidImage,
                format!("{module}: kernel {}: {} parameters of {total} bytes exceed the limits", f.name, slots.len()),
            ));
        }
        let bound =
            |d: &str| f.directives.iter().find(|(n, _)| n == d).map(|(_, v)| v.iter().map(|&x| x.max(1)).fold(1u64, u64::saturating_mul));
        let max_threads = bound("maxntid").or_else(|| bound("reqntid")).unwrap_or(1024).min(1024) as u32;
        let info = FuncInfo {
            num_params: slots.len() as u32,
            param_bytes: total,
            max_threads_per_block: max_threads,
            // Static shared and local sizes are known once the body is lowered (FuncGet).
            shared_size_bytes: 0,
            const_size_bytes: 0,
            local_size_bytes: 0,
            num_regs: 0,
            ptx_version: p.arch,
            binary_version: p.arch,
            cache_mode_ca: 0,
            max_dynamic_shared_size_bytes: DEFAULT_DYNAMIC_SHARED,
            preferred_shmem_carveout: -1,
            _reserved: [0; 4],
        };
        let params = slots.iter().map(|s| ParamInfo { offset: s.offset, size: s.size }).collect();
        kernels.push(ParsedKernel { name: f.name.clone(), info, params });
    }
    let globals = p
        .program
        .device_variables()
        .map(|(_, v)| ParsedGlobal {
            name: v.name.clone(),
            size: v.size(),
            constant: v.space == vgpu_ptx::ast::Space::Const,
            // Written at load from the PTX initializers (they may name other symbols).
            init: None,
        })
        .collect();
    debug!(target: "vgpu::modules", "{module}: PTX only (compute_{}), {} kernels", p.arch, kernels.len());
    Ok(ParsedModule { ptx: None, from_ptx: true, kernels, globals, arch: p.arch, ptx_version: p.arch, binary_version: p.arch })
}

/// Parse a module for a device of compute capability `cc`: only a cubin that runs there
/// (NoKernelImage otherwise).
pub fn parse_for(img: &Image, cc: (u32, u32)) -> Result<ParsedModule, (Status, String)> {
    parse_inner(img, cc, false)
}

fn parse_inner(img: &Image, cc: (u32, u32), any: bool) -> Result<ParsedModule, (Status, String)> {
    let r = parse_image(img, cc, any);
    if let Err((s, msg)) = &r {
        warn!(target: "vgpu::modules", hash = format_args!("{:x}", img.hash), status = s.name(), "module refused: {msg}");
    }
    r
}

fn parse_image(img: &Image, cc: (u32, u32), any: bool) -> Result<ParsedModule, (Status, String)> {
    let module = format!("module {:x}", img.hash);
    let bad = |e: vgpu_fatbin::Error| (Status::InvalidImage, format!("{module}: {e}"));
    // Errors about an entry name the module themselves ("module <hash> (entry N): ...").
    let fb = Fatbin::parse(&img.bytes).map_err(bad)?.with_name(format!("{:x}", img.hash));
    let entry = match fb.best_cubin(cc.0, cc.1) {
        Ok(e) => e,
        Err(e) => match fb.entries.iter().find(|e| e.kind == EntryKind::Elf).filter(|_| any) {
            Some(first) => first,
            None => return Err((Status::NoKernelImage, e.to_string())),
        },
    };
    let data = entry.data().map_err(|e| (Status::InvalidImage, e.to_string()))?;
    let cubin = Cubin::parse(&data).map_err(bad)?;
    let arch = entry.arch;
    let ptx_version = cubin.virtual_arch.filter(|&v| v > 0 && v <= arch).unwrap_or(arch);
    // Saturating: the sizes are the image's (a sum of huge sizes must not overflow).
    let const_bytes = cubin.globals.iter().filter(|g| g.kind == GlobalKind::Constant).fold(0u64, |a, g| a.saturating_add(g.size));
    let mut kernels = Vec::with_capacity(cubin.kernels.len());
    for k in &cubin.kernels {
        let n = k.params.params.len();
        if n > MAX_PARAMS || u64::from(k.params.total_size) > MAX_PARAM_BYTES {
            return Err((
                Status::InvalidImage,
                format!("{module}: kernel {}: {n} parameters of {} bytes exceed the limits", k.name, k.params.total_size),
            ));
        }
        let regs = k.registers.unwrap_or(0);
        let bound = k.max_threads.or(k.reqntid).map_or(1024, block_threads);
        let max_threads = bound.min(1024).min(u64::from(reg_limited_threads(regs, &DeviceLimits::cc80()))) as u32;
        let shared = u32::try_from(k.shared_static).unwrap_or(u32::MAX);
        let info = FuncInfo {
            num_params: n as u32,
            param_bytes: k.params.total_size,
            max_threads_per_block: max_threads,
            shared_size_bytes: shared,
            const_size_bytes: u32::try_from(const_bytes).unwrap_or(u32::MAX),
            local_size_bytes: k.frame_size.unwrap_or(0),
            num_regs: regs,
            ptx_version,
            binary_version: arch,
            cache_mode_ca: 0,
            max_dynamic_shared_size_bytes: DEFAULT_DYNAMIC_SHARED.saturating_sub(shared),
            preferred_shmem_carveout: -1,
            _reserved: [0; 4],
        };
        let params = k.params.params.iter().map(|p| ParamInfo { offset: u32::from(p.offset), size: p.size }).collect();
        kernels.push(ParsedKernel { name: k.name.clone(), info, params });
    }
    let globals = cubin
        .globals
        .iter()
        .map(|g| ParsedGlobal {
            name: g.name.clone(),
            size: g.size,
            constant: g.kind == GlobalKind::Constant,
            init: g.init.filter(|b| b.iter().any(|&x| x != 0)).map(<[u8]>::to_vec),
        })
        .collect();
    debug!(target: "vgpu::modules", "{module}: sm_{arch} cubin, {} kernels, {} variables", cubin.kernels.len(), cubin.globals.len());
    Ok(ParsedModule { ptx: None, from_ptx: false, kernels, globals, arch, ptx_version, binary_version: arch })
}

/// Threads in a block of dimensions `d` (a kernel's `EIATTR_MAX_THREADS` or `EIATTR_REQNTID`),
/// each dimension at least 1. Saturating: the dimensions come from the image, and three large
/// ones overflowed a `u64` product (found while writing the fuzz targets; the input is
/// `fuzz/corpus/modules/crash-max-threads-overflow`).
fn block_threads(d: [u32; 3]) -> u64 {
    d.iter().fold(1u64, |n, &x| n.saturating_mul(u64::from(x.max(1))))
}

/// Shared memory a block may use without opting in (`cudaFuncAttributeMaxDynamicSharedMemorySize`):
/// a function's default dynamic limit is this less its static shared memory.
pub const DEFAULT_DYNAMIC_SHARED: u32 = 48 << 10;

/// The limits of a device that launches are checked against, and occupancy is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    pub max_threads_per_block: u32,
    pub max_block: [u32; 3],
    pub max_grid: [u32; 3],
    /// Shared memory per block without opting in.
    pub shared_per_block: u32,
    /// Shared memory per block a function may opt in to (static + dynamic).
    pub shared_per_block_optin: u32,
    pub shared_per_sm: u32,
    /// Shared memory the system reserves per resident block.
    pub reserved_shared_per_block: u32,
    /// Allocation granularity of shared memory per block.
    pub shared_granularity: u32,
    pub regs_per_sm: u32,
    pub regs_per_block: u32,
    /// Registers are allocated per warp in units of this many.
    pub reg_granularity: u32,
    pub max_threads_per_sm: u32,
    pub max_blocks_per_sm: u32,
    pub warp_size: u32,
}

impl DeviceLimits {
    /// Compute capability 8.0 (A100).
    pub const fn cc80() -> DeviceLimits {
        DeviceLimits {
            max_threads_per_block: 1024,
            max_block: [1024, 1024, 64],
            max_grid: [i32::MAX as u32, 65535, 65535],
            shared_per_block: 48 << 10,
            shared_per_block_optin: 163 << 10,
            shared_per_sm: 164 << 10,
            reserved_shared_per_block: 1 << 10,
            shared_granularity: 128,
            regs_per_sm: 64 << 10,
            regs_per_block: 64 << 10,
            reg_granularity: 256,
            max_threads_per_sm: 2048,
            max_blocks_per_sm: 32,
            warp_size: 32,
        }
    }

    /// Compute capability 9.0 (H100/H200, the class vgpu serves): what the emu device reports.
    pub const fn cc90() -> DeviceLimits {
        DeviceLimits { shared_per_block_optin: 227 << 10, shared_per_sm: 228 << 10, ..DeviceLimits::cc80() }
    }
}

/// Registers one warp is allocated with `regs` per thread.
fn regs_per_warp(regs: u32, dev: &DeviceLimits) -> u64 {
    let g = u64::from(dev.reg_granularity.max(1));
    (u64::from(regs) * u64::from(dev.warp_size)).div_ceil(g) * g
}

/// Most threads a block can have when each thread uses `regs` registers.
fn reg_limited_threads(regs: u32, dev: &DeviceLimits) -> u32 {
    if regs == 0 {
        return dev.max_threads_per_block;
    }
    let warps = u64::from(dev.regs_per_block) / regs_per_warp(regs, dev);
    (warps * u64::from(dev.warp_size)).min(u64::from(dev.max_threads_per_block)) as u32
}

/// Launch checks common to both executors: grid and block dimensions in range (0 or too large:
/// InvalidConfiguration), threads per block within the device's limit (InvalidConfiguration)
/// and the function's (`FuncInfo::max_threads_per_block`: LaunchOutOfResources), registers per
/// block (LaunchOutOfResources), parameter length equal to `FuncInfo::param_bytes`
/// (InvalidArgument), dynamic shared memory within the function's limit and static + dynamic
/// within the device's opt-in limit (LaunchOutOfResources).
pub fn validate_launch(
    info: &FuncInfo,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared: u64,
    params_len: u64,
    dev: &DeviceLimits,
) -> Result<(), Status> {
    let g = [grid.0, grid.1, grid.2];
    let b = [block.0, block.1, block.2];
    if g.iter().zip(dev.max_grid).any(|(&v, m)| v == 0 || v > m) || b.iter().zip(dev.max_block).any(|(&v, m)| v == 0 || v > m) {
        return Err(Status::InvalidConfiguration);
    }
    let threads = b.iter().map(|&v| u64::from(v)).product::<u64>();
    if threads > u64::from(dev.max_threads_per_block) {
        return Err(Status::InvalidConfiguration);
    }
    if params_len != u64::from(info.param_bytes) {
        return Err(Status::InvalidArgument);
    }
    if threads > u64::from(info.max_threads_per_block) {
        return Err(Status::LaunchOutOfResources);
    }
    let warps = threads.div_ceil(u64::from(dev.warp_size.max(1)));
    if info.num_regs > 0 && warps * regs_per_warp(info.num_regs, dev) > u64::from(dev.regs_per_block) {
        return Err(Status::LaunchOutOfResources);
    }
    if shared > u64::from(info.max_dynamic_shared_size_bytes)
        || shared + u64::from(info.shared_size_bytes) > u64::from(dev.shared_per_block_optin)
    {
        return Err(Status::LaunchOutOfResources);
    }
    Ok(())
}

/// Active blocks per multiprocessor of a function launched with `threads` per block and
/// `dynamic_shared` bytes (cudaOccupancyMaxActiveBlocksPerMultiprocessor): the smallest of the
/// limits by resident blocks, threads (warps), registers and shared memory. 0 when the block
/// cannot launch at all. `threads` must be > 0.
pub fn occupancy(info: &FuncInfo, threads: u32, dynamic_shared: u64, dev: &DeviceLimits) -> u32 {
    if threads == 0 || threads > info.max_threads_per_block.min(dev.max_threads_per_block) {
        return 0;
    }
    let shared = dynamic_shared.saturating_add(u64::from(info.shared_size_bytes));
    if dynamic_shared > u64::from(info.max_dynamic_shared_size_bytes) || shared > u64::from(dev.shared_per_block_optin) {
        return 0;
    }
    let warp = u64::from(dev.warp_size.max(1));
    let warps = u64::from(threads).div_ceil(warp);
    let mut blocks = u64::from(dev.max_blocks_per_sm);
    blocks = blocks.min(u64::from(dev.max_threads_per_sm) / warp / warps);
    if info.num_regs > 0 {
        let per_warp = regs_per_warp(info.num_regs, dev);
        blocks = blocks.min(u64::from(dev.regs_per_sm) / per_warp / warps);
    }
    let g = u64::from(dev.shared_granularity.max(1));
    let per_block = (shared + u64::from(dev.reserved_shared_per_block)).div_ceil(g) * g;
    blocks = blocks.min(u64::from(dev.shared_per_sm) / per_block.max(1));
    blocks as u32
}

/// The kernel settings of `vgpu serve` that every worker gets: `--launch-log PATH` and
/// `--module-cache DIR|none`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelOpts {
    /// Append every launch to this file ([`LaunchLog`]).
    pub launch_log: Option<PathBuf>,
    /// The module cache folder; `None`: no cache.
    pub module_cache: Option<PathBuf>,
    /// How long one kernel may run on emu (`None`: [`crate::emu::KernelLimits`]'s default).
    pub kernel_timeout: Option<Duration>,
}

impl KernelOpts {
    /// From `vgpu serve`'s flags: `--module-cache` absent means [`ModuleCache::default_dir`],
    /// `none` (or an empty value) means no cache. Checks that the launch log can be opened, so a
    /// bad path fails at start, not in every worker.
    pub fn from_flags(launch_log: Option<PathBuf>, module_cache: Option<&str>) -> Result<KernelOpts, String> {
        if let Some(p) = &launch_log {
            LaunchLog::open(p).map_err(|e| format!("--launch-log {}: {e}", p.display()))?;
        }
        let module_cache = match module_cache {
            None => ModuleCache::default_dir(),
            Some("none") | Some("") => None,
            Some(d) => Some(PathBuf::from(d)),
        };
        for p in launch_log.iter().chain(module_cache.iter()) {
            if p.to_str().is_none() {
                return Err(format!("{}: the path must be valid UTF-8", p.display()));
            }
        }
        Ok(KernelOpts { launch_log, module_cache, kernel_timeout: None })
    }

    /// The `vgpu worker` arguments that carry these settings (the worker takes the folder as
    /// it is: no `--module-cache`, no cache).
    /// Paths must be UTF-8 here (the worker command line is built from strings); `vgpu serve`
    /// checks that at start ([`from_flags`](Self::from_flags)).
    pub fn worker_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(p) = &self.launch_log {
            v.push("--launch-log".into());
            v.push(p.to_string_lossy().into_owned());
        }
        if let Some(d) = &self.module_cache {
            v.push("--module-cache".into());
            v.push(d.to_string_lossy().into_owned());
        }
        if let Some(t) = self.kernel_timeout {
            v.push("--kernel-timeout-ms".into());
            v.push(t.as_millis().to_string());
        }
        v
    }

    /// The emu kernel limits these settings give.
    pub fn kernel_limits(&self) -> crate::emu::KernelLimits {
        let mut l = crate::emu::KernelLimits::default();
        if let Some(t) = self.kernel_timeout {
            l.kernel_timeout = t;
        }
        l
    }

    /// Open the cache and the log for a worker (a log that cannot be opened is logged and left
    /// out).
    pub fn open(&self) -> (Arc<ModuleCache>, Option<Arc<LaunchLog>>) {
        let cache = Arc::new(ModuleCache::open(self.module_cache.clone()));
        let log = self.launch_log.as_ref().and_then(|p| match LaunchLog::open(p) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                warn!(target: "vgpu::modules", "launch log {}: {e}", p.display());
                None
            }
        });
        (cache, log)
    }
}

/// One recorded launch (see [`LaunchLog`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchRecord {
    /// The session id (as `vgpu stat` shows it).
    pub session: u64,
    /// Position among this session's recorded launches, from 1, in the order they were taken
    /// (per stream, the stream order).
    pub seq: u64,
    pub stream: u32,
    /// The device (mangled) name.
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory bytes.
    pub shared: u64,
    /// The packed parameter bytes.
    pub params: Arc<[u8]>,
    /// Replayed from a graph.
    pub graph: bool,
}

impl LaunchRecord {
    /// The record as one JSON object (no newline):
    /// `{"session":N,"seq":N,"stream":N,"kernel":"…","grid":[x,y,z],"block":[x,y,z],"shared":N,"params":"hex","graph":false}`.
    pub fn to_json(&self) -> String {
        let hex: String = self.params.iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({
            "session": self.session,
            "seq": self.seq,
            "stream": self.stream,
            "kernel": self.kernel,
            "grid": self.grid,
            "block": self.block,
            "shared": self.shared,
            "params": hex,
            "graph": self.graph,
        })
        .to_string()
    }
}

/// The launch log of `vgpu serve --launch-log PATH`: one JSON line ([`LaunchRecord::to_json`])
/// per launch, appended. Each line is one `write` on a file opened with `O_APPEND`, so the
/// workers of several sessions can share the file without interleaving lines.
pub struct LaunchLog {
    file: Mutex<fs::File>,
    path: PathBuf,
}

impl LaunchLog {
    /// Open (create) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<LaunchLog> {
        let file = fs::File::options().create(true).append(true).open(path)?;
        Ok(LaunchLog { file: Mutex::new(file), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record. A failing write is logged, never fatal.
    pub fn write(&self, rec: &LaunchRecord) {
        let mut line = rec.to_json();
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            warn!(target: "vgpu::emu::launch", "writing the launch log {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_transport::wire::Layout;

    fn region() -> Region {
        vgpu_transport::region::create(Layout::new(64, 1 << 16).unwrap(), 1).unwrap().0
    }

    fn part(u: &mut Uploads, r: &Region, id: u64, data: &[u8], at: u64, total: u64) -> Result<(), Status> {
        r.write_window(0, data).unwrap();
        u.part(r, &[id, 0, data.len() as u64, at, total, 0])
    }

    #[test]
    fn uploads_assemble_out_of_order() {
        let r = region();
        let mut u = Uploads::new();
        let img: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        part(&mut u, &r, 5, &img[600..], 600, 1000).unwrap();
        part(&mut u, &r, 5, &img[..300], 0, 1000).unwrap();
        // Incomplete: refused, and the upload is gone.
        let mut u2 = Uploads::new();
        part(&mut u2, &r, 1, &img[..10], 0, 1000).unwrap();
        assert_eq!(u2.finish(1, module_hash(&img), 1000).unwrap_err(), Status::InvalidArgument);
        assert_eq!(u2.open_bytes(), 0);
        part(&mut u, &r, 5, &img[300..600], 300, 1000).unwrap();
        assert_eq!(u.open_bytes(), 1000);
        let got = u.finish(5, module_hash(&img), 1000).unwrap();
        assert_eq!(&got.bytes[..], &img[..]);
        assert_eq!(u.open_bytes(), 0);
        assert_eq!(u.finish(5, ModuleHash::default(), 1000).unwrap_err(), Status::InvalidHandle);
    }

    #[test]
    fn uploads_refuse_bad_parts() {
        let r = region();
        let mut u = Uploads::new();
        let a = [1u8; 100];
        assert_eq!(part(&mut u, &r, 0, &a, 0, 100), Err(Status::InvalidArgument), "id 0");
        assert_eq!(part(&mut u, &r, 1, &a, 1, 100), Err(Status::InvalidArgument), "past the total");
        assert_eq!(part(&mut u, &r, 1, &a, u64::MAX, 100), Err(Status::InvalidArgument), "offset overflow");
        assert_eq!(part(&mut u, &r, 1, &a, 0, MAX_MODULE_LEN + 1), Err(Status::InvalidArgument), "too large");
        assert_eq!(u.part(&r, &[1, 0, 0, 0, 100, 0]), Err(Status::InvalidArgument), "empty part");
        assert_eq!(u.part(&r, &[1, 1 << 16, 10, 0, 100, 0]), Err(Status::InvalidWindowRange));
        assert_eq!(u.part(&r, &[1, u64::MAX, 10, 0, 100, 0]), Err(Status::InvalidWindowRange));
        part(&mut u, &r, 1, &a[..50], 10, 100).unwrap();
        assert_eq!(part(&mut u, &r, 1, &a[..50], 50, 200), Err(Status::InvalidArgument), "other total");
        assert_eq!(part(&mut u, &r, 1, &a[..10], 55, 100), Err(Status::InvalidArgument), "inside");
        assert_eq!(part(&mut u, &r, 1, &a[..10], 5, 100), Err(Status::InvalidArgument), "overlaps the start");
        assert_eq!(part(&mut u, &r, 1, &a[..10], 59, 100), Err(Status::InvalidArgument), "overlaps the end");
        assert_eq!(part(&mut u, &r, 1, &a[..60], 0, 100), Err(Status::InvalidArgument), "covers");
        part(&mut u, &r, 1, &a[..10], 0, 100).unwrap();
        part(&mut u, &r, 1, &a[..40], 60, 100).unwrap();
        // Complete, but the wrong hash or length.
        let mut img = vec![1u8; 100];
        assert_eq!(
            u.finish(
                1,
                {
                    let mut h = module_hash(&img);
                    h.0[3] ^= 1;
                    h
                },
                100
            )
            .unwrap_err(),
            Status::InvalidArgument
        );
        img.truncate(10);
        // Quotas: open uploads and open bytes.
        for id in 1..=MAX_UPLOADS as u64 {
            part(&mut u, &r, id, &img, 0, 10).unwrap();
        }
        assert_eq!(part(&mut u, &r, 999, &img, 0, 10), Err(Status::QuotaExceeded));
        u.clear();
        part(&mut u, &r, 1, &img, 0, MAX_MODULE_LEN - 5).unwrap();
        assert_eq!(part(&mut u, &r, 2, &img, 0, 10), Err(Status::OutOfMemory));
        part(&mut u, &r, 3, &img[..5], 0, 5).unwrap();
    }

    #[test]
    fn cache_roundtrip_verify_and_evict() {
        let dir = std::env::temp_dir().join(format!("vgpu-modcache-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = fs::remove_dir_all(&dir);
        let c = ModuleCache::with_limit(Some(dir.clone()), 2500);
        let a = Image::new(vec![1u8; 1000]);
        let b = Image::new(vec![2u8; 1000]);
        let d = Image::new(vec![3u8; 1000]);
        assert!(c.get(a.hash, 1000).is_none());
        c.put(&a);
        assert_eq!(&c.get(a.hash, 1000).unwrap().bytes[..], &a.bytes[..]);
        assert!(c.get(a.hash, 999).is_none(), "wrong length");
        assert!(c.get(ModuleHash([a.hash.0[0] ^ 1, a.hash.0[1], a.hash.0[2], a.hash.0[3]]), 1000).is_none(), "wrong hash");
        // A file whose contents do not match its name is removed.
        fs::write(dir.join(format!("{:x}.fatbin", b.hash)), vec![9u8; 1000]).unwrap();
        assert!(c.get(b.hash, 1000).is_none());
        assert!(!dir.join(format!("{:x}.fatbin", b.hash)).exists());
        // Eviction: oldest first, down to the bound.
        let old = SystemTime::now() - Duration::from_secs(100);
        c.put(&b);
        fs::File::options().write(true).open(dir.join(format!("{:x}.fatbin", a.hash))).unwrap().set_modified(old).unwrap();
        c.put(&d);
        assert!(c.get(a.hash, 1000).is_none(), "oldest evicted");
        assert!(c.get(b.hash, 1000).is_some() && c.get(d.hash, 1000).is_some());
        assert!(!fs::read_dir(&dir).unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".tmp")));
        let off = ModuleCache::open(None);
        off.put(&a);
        assert!(off.get(a.hash, 1000).is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn block_bounds_from_the_image_saturate() {
        assert_eq!(block_threads([128, 1, 1]), 128);
        assert_eq!(block_threads([0, 0, 0]), 1);
        assert_eq!(block_threads([32, 4, 2]), 256);
        assert_eq!(block_threads([u32::MAX; 3]), u64::MAX);
        assert_eq!(block_threads([u32::MAX, u32::MAX, 1]), u64::from(u32::MAX) * u64::from(u32::MAX));
    }

    #[test]
    fn garbage_images_are_invalid() {
        for bytes in [&b""[..], b"not a fatbin", &[0x50, 0xed, 0x55, 0xba, 1, 0, 16, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0]] {
            let (s, msg) = parse(&Image::new(bytes.to_vec())).unwrap_err();
            assert_eq!(s, Status::InvalidImage, "{msg}");
            assert!(msg.contains("module "), "{msg}");
        }
        // A valid, empty container: no cubin.
        let empty = [0x50, 0xed, 0x55, 0xba, 1, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&Image::new(empty.to_vec())).unwrap_err().0, Status::NoKernelImage);
    }

    fn info(threads: u32, regs: u32, shared: u32) -> FuncInfo {
        FuncInfo {
            num_params: 1,
            param_bytes: 8,
            max_threads_per_block: threads,
            shared_size_bytes: shared,
            num_regs: regs,
            max_dynamic_shared_size_bytes: DEFAULT_DYNAMIC_SHARED - shared,
            ..FuncInfo::default()
        }
    }

    #[test]
    fn launch_checks() {
        let d = DeviceLimits::cc80();
        let f = info(1024, 32, 0);
        assert_eq!(validate_launch(&f, (1, 1, 1), (1, 1, 1), 0, 8, &d), Ok(()));
        assert_eq!(validate_launch(&f, (i32::MAX as u32, 65535, 65535), (1024, 1, 1), 0, 8, &d), Ok(()));
        for (g, b) in [
            ((0, 1, 1), (1, 1, 1)),
            ((1, 0, 1), (1, 1, 1)),
            ((1, 1, 0), (1, 1, 1)),
            ((1, 1, 1), (0, 1, 1)),
            ((1, 1, 1), (1, 1, 0)),
            ((1 << 31, 1, 1), (1, 1, 1)),
            ((1, 65536, 1), (1, 1, 1)),
            ((1, 1, 1), (1025, 1, 1)),
            ((1, 1, 1), (1, 1, 65)),
            ((1, 1, 1), (64, 32, 1)),
        ] {
            assert_eq!(validate_launch(&f, g, b, 0, 8, &d), Err(Status::InvalidConfiguration), "{g:?} {b:?}");
        }
        assert_eq!(validate_launch(&f, (1, 1, 1), (1, 1, 1), 0, 7, &d), Err(Status::InvalidArgument));
        assert_eq!(validate_launch(&info(128, 32, 0), (1, 1, 1), (256, 1, 1), 0, 8, &d), Err(Status::LaunchOutOfResources));
        assert_eq!(validate_launch(&info(1024, 128, 0), (1, 1, 1), (1024, 1, 1), 0, 8, &d), Err(Status::LaunchOutOfResources));
        assert_eq!(validate_launch(&f, (1, 1, 1), (1, 1, 1), 48 << 10, 8, &d), Ok(()));
        assert_eq!(validate_launch(&f, (1, 1, 1), (1, 1, 1), (48 << 10) + 1, 8, &d), Err(Status::LaunchOutOfResources));
        let mut big = f;
        big.max_dynamic_shared_size_bytes = 163 << 10;
        assert_eq!(validate_launch(&big, (1, 1, 1), (1, 1, 1), 163 << 10, 8, &d), Ok(()));
        big.shared_size_bytes = 1;
        assert_eq!(validate_launch(&big, (1, 1, 1), (1, 1, 1), 163 << 10, 8, &d), Err(Status::LaunchOutOfResources));
    }

    #[test]
    fn occupancy_limits() {
        let d = DeviceLimits::cc80();
        // Threads: 2048 per SM.
        assert_eq!(occupancy(&info(1024, 0, 0), 1024, 0, &d), 2);
        assert_eq!(occupancy(&info(1024, 0, 0), 256, 0, &d), 8);
        // Blocks: 32 per SM.
        assert_eq!(occupancy(&info(1024, 0, 0), 32, 0, &d), 32);
        // Registers: 64 per thread → 2048 per warp → 32 warps → 4 blocks of 256.
        assert_eq!(occupancy(&info(1024, 64, 0), 256, 0, &d), 4);
        // 255 registers → 8192 per warp → 8 warps → 1 block of 256, none of 512 (not launchable).
        assert_eq!(occupancy(&info(256, 255, 0), 256, 0, &d), 1);
        // Shared: 48 KiB + 1 KiB reserved each → 3 per 164 KiB.
        assert_eq!(occupancy(&info(1024, 0, 0), 128, 48 << 10, &d), 3);
        assert_eq!(occupancy(&info(1024, 0, 16 << 10), 128, 32 << 10, &d), 3);
        // Too many threads or too much shared: 0.
        assert_eq!(occupancy(&info(128, 0, 0), 256, 0, &d), 0);
        assert_eq!(occupancy(&info(1024, 0, 0), 128, (48 << 10) + 1, &d), 0);
        assert_eq!(occupancy(&info(1024, 0, 0), 0, 0, &d), 0);
        assert_eq!(occupancy(&info(1024, 0, 0), 32, u64::MAX, &d), 0);
        assert_eq!(validate_launch(&info(1024, 0, 0), (1, 1, 1), (1, 1, 1), u64::MAX, 8, &d), Err(Status::LaunchOutOfResources));
        assert_eq!(reg_limited_threads(255, &d), 256);
        assert_eq!(reg_limited_threads(64, &d), 1024);
    }

    #[test]
    fn record_json() {
        let r = LaunchRecord {
            session: 3,
            seq: 1,
            stream: 2,
            kernel: "_Z1kPf".into(),
            grid: [4, 1, 1],
            block: [128, 1, 1],
            shared: 0,
            params: vec![0xde, 0xad, 0x01].into(),
            graph: false,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["params"], "dead01");
        assert_eq!(v["grid"], serde_json::json!([4, 1, 1]));
        assert_eq!(v["kernel"], "_Z1kPf");
        assert_eq!(v["graph"], false);
        assert_eq!(v["session"], 3);
    }
}
