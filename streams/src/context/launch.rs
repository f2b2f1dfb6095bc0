//! Kernels on a context: modules loaded on first use (by hash, else uploaded), functions
//! fetched once, launches, attributes, occupancy, symbols (see [`crate::kernel`] for the flow
//! and the registry).

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use tracing::{debug, warn};
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::{self, launch, reply, req, Block, Grid, ParamInfo, Status, Win};
use vgpu_transport::OnComplete;

use super::Context;
use crate::error::{CudaError, Result};
use crate::kernel::{check_dims, func_reg, pack_c_args, raw_status, var_reg, Func, Image, LaunchConfig, ModuleReg};
use crate::types::{MemcpyKind, RawStream};

impl Context {
    /// The host handle of `module` on this context, loading it (by hash, else by upload) on
    /// first use.
    pub(crate) fn ensure_module(&self, module: &ModuleReg) -> Result<u64> {
        if let Some(&h) = self.kern.tables.lock().modules.get(&module.id) {
            return h;
        }
        self.sticky()?;
        let _g = self.kern.loading.lock();
        if let Some(&h) = self.kern.tables.lock().modules.get(&module.id) {
            return h;
        }
        if !module.live.load(Ordering::Acquire) {
            return Err(CudaError::InvalidDeviceFunction);
        }
        let r = self.load_module(module);
        let for_good = matches!(r, Err(CudaError::InvalidKernelImage | CudaError::NoKernelImageForDevice | CudaError::NotSupported));
        if r.is_ok() || for_good {
            if let Err(e) = r {
                warn!(target: "vgpu::streams", module = module.id, "the module cannot be loaded on this device: {e}");
            }
            self.kern.tables.lock().modules.insert(module.id, r);
        }
        r
    }

    fn load_module(&self, module: &ModuleReg) -> Result<u64> {
        let img = module.image()?;
        let by_hash = self.client.call_blocking_req(0, req::ModuleLoad { upload: 0, len: img.len as u64, hash: img.hash });
        match by_hash {
            Ok(r) => {
                self.kern.loaded_by_hash.fetch_add(1, Ordering::Relaxed);
                debug!(target: "vgpu::streams", module = module.id, hash = format_args!("{:x}", img.hash), "module loaded by hash");
                Ok(r.module)
            }
            Err(e) if raw_status(&e) == Some(Status::NotFound) => {
                let id = self.upload_module(module, &img)?;
                let r = self.call(0, req::ModuleLoad { upload: id, len: img.len as u64, hash: img.hash })?;
                self.kern.uploaded.fetch_add(1, Ordering::Relaxed);
                debug!(target: "vgpu::streams", module = module.id, hash = format_args!("{:x}", img.hash), len = img.len, "module uploaded and loaded");
                Ok(r.module)
            }
            Err(e) => Err(self.convert(&e)),
        }
    }

    /// Send the image in `ModuleData` parts of one staging chunk each (pipelined); returns the
    /// upload id once the host has every part.
    fn upload_module(&self, module: &ModuleReg, img: &Image) -> Result<u64> {
        let id = self.kern.next_upload.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = module.bytes(img);
        let staging = self.client.staging();
        let chunk = staging.chunk_len() as usize;
        self.close_open_chunk();
        let mut tickets = Vec::new();
        let mut first = Ok(());
        for (i, part) in bytes.chunks(chunk).enumerate() {
            let off = match self.check(self.client.acquire_staging()) {
                Ok(o) => o,
                Err(e) => {
                    first = Err(e);
                    break;
                }
            };
            if let Err(e) = self.check(self.client.region().write_window(off, part)) {
                staging.release(off);
                first = Err(e);
                break;
            }
            let release: OnComplete = Box::new(move |_, s, _| s.release(off));
            let r = req::ModuleData { upload: id, part: Win::new(off, part.len() as u64), at: (i * chunk) as u64, total: img.len as u64 };
            match self.check(self.client.submit_then_req(0, r, release)) {
                Ok(t) => tickets.push(t),
                Err(e) => {
                    first = Err(e);
                    break;
                }
            }
        }
        self.client.stats().blocking_waits.fetch_add(1, Ordering::Relaxed);
        for t in tickets {
            if let Err(e) = t.wait() {
                let e = self.convert(&e);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first.map(|_| id)
    }

    /// The module was unregistered: drop what this context knows of it and, with `unload`,
    /// unload it on the host (fire-and-forget).
    pub(crate) fn forget_module(&self, module_id: u64, unload: bool) {
        let handle = self.kern.tables.lock().forget_module(module_id);
        if let (Some(Ok(h)), true) = (handle, unload) {
            let _ = self.fire(0, req::ModuleUnload { module: h });
        }
    }

    /// The function `name` of `module` on this context (loading the module, then one `FuncGet`,
    /// on first use).
    pub(crate) fn function_by_name(&self, module: &Arc<ModuleReg>, name: &CStr) -> Result<Arc<Func>> {
        let key = (module.id, name.to_owned());
        if let Some(f) = self.kern.tables.lock().by_name.get(&key) {
            return Ok(f.clone());
        }
        let mh = self.ensure_module(module)?;
        let _g = self.kern.loading.lock();
        if let Some(f) = self.kern.tables.lock().by_name.get(&key) {
            return Ok(f.clone());
        }
        let f = Arc::new(self.func_get(mh, module.id, name)?);
        self.kern.tables.lock().by_name.insert(key, f.clone());
        Ok(f)
    }

    /// One `FuncGet` round trip through a whole staging chunk.
    fn func_get(&self, module: u64, module_id: u64, name: &CStr) -> Result<Func> {
        let name_bytes = name.to_bytes_with_nul();
        let staging = self.client.staging();
        let chunk = staging.chunk_len();
        if name_bytes.len() as u64 > chunk {
            return Err(CudaError::InvalidDeviceFunction);
        }
        self.close_open_chunk();
        let off = self.check(self.client.acquire_staging())?;
        let r = (|| {
            self.check(self.client.region().write_window(off, name_bytes))?;
            let r = match self.client.call_blocking_req(0, req::FuncGet { module, buf: Win::new(off, chunk) }) {
                Ok(r) => r,
                Err(e) if raw_status(&e) == Some(Status::NotFound) => return Err(CudaError::InvalidDeviceFunction),
                Err(e) => return Err(self.convert(&e)),
            };
            let written = r.written.min(chunk) as usize;
            let mut bytes = vec![0u8; written];
            self.check(self.client.region().read_window(off, &mut bytes))?;
            // A host answer that does not decode or breaks the limits is the host's fault.
            let (info, params) = wire::decode_func_info(&bytes).ok_or(CudaError::Unknown)?;
            if info.param_bytes as u64 > wire::MAX_PARAM_BYTES {
                return Err(CudaError::Unknown);
            }
            let params: Box<[ParamInfo]> = params.into();
            if params.iter().any(|p| p.offset as u64 + p.size as u64 > info.param_bytes as u64) {
                return Err(CudaError::Unknown);
            }
            Ok(Func::new(r.func, module_id, name.to_owned(), params, info))
        })();
        staging.release(off);
        r
    }

    /// The function registered for host stub `host_fun` (process-wide registry), loaded on this
    /// context on first use.
    pub fn function(&self, host_fun: usize) -> Result<Arc<Func>> {
        if let Some(f) = self.kern.tables.lock().by_host.get(&host_fun) {
            return Ok(f.clone());
        }
        let reg = func_reg(host_fun)?;
        let f = self.function_by_name(&reg.module, &reg.name)?;
        self.kern.tables.lock().by_host.insert(host_fun, f.clone());
        Ok(f)
    }

    /// Launch `func` with packed parameters (fire-and-forget).
    pub(crate) fn launch_packed(self: &Arc<Self>, func: &Func, cfg: &LaunchConfig, params: &[u8]) -> Result<()> {
        check_dims(cfg.grid, cfg.block)?;
        let flags = if cfg.cooperative { launch::COOPERATIVE } else { 0 };
        let grid = Grid::new(cfg.grid[0], cfg.grid[1], cfg.grid[2]).ok_or(CudaError::InvalidConfiguration)?;
        let block = Block::new(cfg.block[0], cfg.block[1], cfg.block[2], flags).ok_or(CudaError::InvalidConfiguration)?;
        let info = func.info();
        if params.len() != info.param_bytes as usize {
            return Err(CudaError::InvalidValue);
        }
        // More threads than the function can run with (`__launch_bounds__`, registers): CUDA
        // refuses the launch at the call.
        let threads = cfg.block.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
        if info.max_threads_per_block != 0 && threads > info.max_threads_per_block as u64 {
            return Err(CudaError::LaunchOutOfResources);
        }
        let h = self.host_stream(cfg.stream)?;
        self.capture_check(h, true)?;
        self.sticky()?;
        let r = req::Launch { func: func.handle, grid, block, shared: cfg.shared, params: Win::default() };
        if params.is_empty() {
            return self.fire(h, r);
        }
        let (woff, done) = self.stage_small(params)?;
        let r = req::Launch { params: Win::new(woff, params.len() as u64), ..r };
        self.check(self.client.fire_then_req(h, r, done))
    }

    /// `cudaLaunchKernel` and friends: `args` is C's `void**`.
    ///
    /// # Safety
    /// As [`pack_c_args`].
    pub unsafe fn launch_c(self: &Arc<Self>, host_fun: usize, cfg: &LaunchConfig, args: *const *const c_void) -> Result<()> {
        // Configuration errors come first and cost nothing.
        check_dims(cfg.grid, cfg.block)?;
        let f = self.function(host_fun)?;
        // SAFETY: forwarded caller guarantee.
        let params = unsafe { pack_c_args(&f, args)? };
        self.launch_packed(&f, cfg, &params)
    }

    /// `cudaFuncSetAttribute`: one round trip; the cached attributes follow.
    pub fn func_set_attribute(&self, func: &Func, attr: u32, value: i32) -> Result<()> {
        if !(8..=15).contains(&attr) || (attr == 8 && value < 0) || (attr == 9 && !(-1..=100).contains(&value)) {
            return Err(CudaError::InvalidValue);
        }
        self.call(0, req::FuncSetAttr { func: func.handle, attr: attr.into(), value: value as u32 })?;
        let mut st = func.state.lock();
        match attr {
            8 => st.info.max_dynamic_shared_size_bytes = value as u32,
            9 => st.info.preferred_shmem_carveout = value,
            a => st.cluster[(a - 10) as usize] = value,
        }
        st.occupancy.clear();
        Ok(())
    }

    /// `cudaOccupancyMaxActiveBlocksPerMultiprocessor[WithFlags]`: one round trip per distinct
    /// (block size, shared memory, flags) of a function, then cached.
    pub fn occupancy(&self, func: &Func, block_size: i32, shared: u64, flags: u32) -> Result<i32> {
        if flags & !1 != 0 || block_size <= 0 {
            return Err(CudaError::InvalidValue);
        }
        if let Some(&n) = func.state.lock().occupancy.get(&(block_size, shared, flags)) {
            return Ok(n);
        }
        let r = self.call(0, req::Occupancy { func: func.handle, block_threads: block_size as u64, shared, flags: flags.into() })?;
        let n = i32::try_from(r.blocks).map_err(|_| CudaError::Unknown)?;
        func.state.lock().occupancy.insert((block_size, shared, flags), n);
        Ok(n)
    }

    /// `(device address, size)` of the variable registered for `host_var`: `SymbolGet` once per
    /// context. Managed variables are not supported.
    pub fn symbol(&self, host_var: usize) -> Result<(u64, u64)> {
        if let Some(&(a, s, _)) = self.kern.tables.lock().symbols.get(&host_var) {
            return Ok((a, s));
        }
        let v = var_reg(host_var)?;
        if v.managed {
            warn!(target: "vgpu::streams", name = ?v.name, "a __managed__ variable was used: managed memory is not supported by vgpu");
            return Err(CudaError::NotSupported);
        }
        let mh = self.ensure_module(&v.module)?;
        let name = v.name.to_bytes_with_nul();
        let (woff, done) = self.stage_small(name)?;
        let r = req::SymbolGet { module: mh, name: Win::new(woff, name.len() as u64), size: v.size };
        let t = self.check(self.client.submit_then_req(0, r, done))?;
        self.client.stats().blocking_waits.fetch_add(1, Ordering::Relaxed);
        let r = match t.wait_reply::<reply::SymbolGet>() {
            Ok(r) => r,
            Err(e) if raw_status(&e) == Some(Status::NotFound) => return Err(CudaError::InvalidSymbol),
            Err(e) => return Err(self.convert(&e)),
        };
        let (addr, size) = (r.addr, r.size);
        debug!(target: "vgpu::streams", name = ?v.name, addr, size, constant = v.constant, "symbol resolved");
        let mut t = self.kern.tables.lock();
        t.symbols.insert(host_var, (addr, size, v.module.id));
        if size > 0 {
            t.symbol_ranges.insert(addr, size);
        }
        drop(t);
        Ok((addr, size))
    }

    /// `cudaMemcpyToSymbol[Async]`: `kind` is HostToDevice, DeviceToDevice or Default.
    ///
    /// # Safety
    /// `src` is valid for `count` bytes (host memory until the copy is staged / completes).
    pub unsafe fn memcpy_to_symbol(
        self: &Arc<Self>,
        host_var: usize,
        src: *const u8,
        count: usize,
        offset: usize,
        kind: MemcpyKind,
        stream: Option<RawStream>,
    ) -> Result<()> {
        if !matches!(kind, MemcpyKind::HostToDevice | MemcpyKind::DeviceToDevice | MemcpyKind::Default) {
            return Err(CudaError::InvalidMemcpyDirection);
        }
        let dst = self.symbol_range(host_var, offset, count)?;
        let kind = self.symbol_kind(kind, src as u64, MemcpyKind::HostToDevice);
        // SAFETY: forwarded caller guarantee.
        unsafe { self.symbol_copy(dst, src as u64, count, kind, stream) }
    }

    /// `cudaMemcpyFromSymbol[Async]`: `kind` is DeviceToHost, DeviceToDevice or Default.
    ///
    /// # Safety
    /// `dst` is valid for `count` bytes until the copy completes.
    pub unsafe fn memcpy_from_symbol(
        self: &Arc<Self>,
        dst: *mut u8,
        host_var: usize,
        count: usize,
        offset: usize,
        kind: MemcpyKind,
        stream: Option<RawStream>,
    ) -> Result<()> {
        if !matches!(kind, MemcpyKind::DeviceToHost | MemcpyKind::DeviceToDevice | MemcpyKind::Default) {
            return Err(CudaError::InvalidMemcpyDirection);
        }
        let src = self.symbol_range(host_var, offset, count)?;
        let kind = self.symbol_kind(kind, dst as u64, MemcpyKind::DeviceToHost);
        // SAFETY: forwarded caller guarantee.
        unsafe { self.symbol_copy(dst as u64, src, count, kind, stream) }
    }

    /// The device address of `count` bytes at `offset` in the variable registered at `host_var`;
    /// `cudaErrorInvalidValue` if the range runs past the variable.
    fn symbol_range(self: &Arc<Self>, host_var: usize, offset: usize, count: usize) -> Result<u64> {
        let (addr, size) = self.symbol(host_var)?;
        let end = offset.checked_add(count).ok_or(CudaError::InvalidValue)?;
        if end as u64 > size {
            return Err(CudaError::InvalidValue);
        }
        Ok(addr + offset as u64)
    }

    /// `cudaMemcpyDefault` resolved by where the other side (`other`) lives: device memory makes
    /// it a device-to-device copy, host memory `host_kind`.
    fn symbol_kind(&self, kind: MemcpyKind, other: u64, host_kind: MemcpyKind) -> MemcpyKind {
        match kind {
            MemcpyKind::Default if self.is_device(other) => MemcpyKind::DeviceToDevice,
            MemcpyKind::Default => host_kind,
            k => k,
        }
    }

    /// A copy to or from a symbol: synchronous on the legacy stream (`stream` = None), or
    /// asynchronous on `stream`.
    ///
    /// # Safety
    /// Host ranges as for `copy_1d`.
    unsafe fn symbol_copy(self: &Arc<Self>, dst: u64, src: u64, count: usize, kind: MemcpyKind, stream: Option<RawStream>) -> Result<()> {
        match stream {
            // SAFETY: forwarded caller guarantee.
            None => unsafe { self.copy_sync(dst, src, count, kind, 0) },
            Some(s) => {
                let h = self.host_stream(s)?;
                // SAFETY: forwarded caller guarantee.
                unsafe { self.copy_1d(dst, src, count, kind, h, false) }
            }
        }
    }

    /// Modules this context loaded by hash and by upload (for tests and logs).
    pub fn module_counts(&self) -> (u64, u64) {
        (self.kern.loaded_by_hash.load(Ordering::Relaxed), self.kern.uploaded.load(Ordering::Relaxed))
    }
}
