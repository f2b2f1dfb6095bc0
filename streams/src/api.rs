//! The async Rust API for native guest programs.
//!
//! ```no_run
//! # async fn demo() -> vgpu_streams::Result<()> {
//! use vgpu_streams::Device;
//! let dev = Device::open()?;
//! let s = dev.stream()?;
//! let buf = dev.alloc::<f32>(1024)?;
//! s.upload(&buf, &vec![1.0f32; 1024])?;
//! let out = dev.alloc_pinned::<f32>(1024)?;
//! s.download_pinned(&buf, &out)?;
//! s.synchronize().await?;
//! assert_eq!(out.to_vec()[0], 1.0);
//! # Ok(()) }
//! ```
//!
//! Waiting is runtime-agnostic: [`SyncFuture`] is woken by the transport's reactor thread through
//! the `Waker` it was polled with, so it works under tokio, async-std, `futures::executor` or
//! any other executor.

use std::future::Future;
use std::marker::PhantomData;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use vgpu_transport::client::Ticket;
use vgpu_transport::wire::{req, CallRequest, DeviceInfo};

use crate::context::Context;
use crate::error::{CudaError, Result};
use crate::graph::{CaptureMode, CaptureStatus, RawGraph, RawGraphExec};
use crate::kernel::{pack_params, Func, LaunchConfig, ModuleReg};
use crate::memory::Seg;
use crate::types::{MemcpyKind, RawEvent, RawStream, STREAM_LEGACY_DEFAULT};
use vgpu_transport::wire::{FuncInfo, ParamInfo};

/// Plain data that may be copied to and from the device as bytes.
///
/// # Safety
/// Every bit pattern of `size_of::<Self>()` bytes must be a valid value, and the type must have
/// no padding.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! pod {
    ($($t:ty),*) => { $(
        // SAFETY: a primitive number: no padding, every bit pattern valid.
        unsafe impl Pod for $t {}
    )* };
}
pod!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64, usize, isize);

/// The (only) device, through one [`Context`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Device {
    ctx: Arc<Context>,
}

impl Device {
    /// The process-wide context (connects on first use).
    pub fn open() -> Result<Device> {
        Context::global().map(|c| Device { ctx: c.clone() })
    }

    /// A private context connected to the mediator at `socket`.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Device> {
        Context::connect(socket).map(|ctx| Device { ctx })
    }

    /// The context behind this device.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Device properties (one round trip the first time, then cached).
    pub fn info(&self) -> Result<DeviceInfo> {
        self.ctx.device_info()
    }

    /// `(free, total)` device memory in bytes.
    pub fn mem_info(&self) -> Result<(u64, u64)> {
        self.ctx.call(0, req::MemGetInfo {}).map(|r| (r.free, r.total))
    }

    /// A new blocking stream with priority 0.
    pub fn stream(&self) -> Result<Stream> {
        self.stream_with(false, 0)
    }

    /// A new stream: `non_blocking` streams do not synchronise with the legacy default stream.
    pub fn stream_with(&self, non_blocking: bool, priority: i32) -> Result<Stream> {
        let raw = self.ctx.stream_create(non_blocking as u32, priority)?;
        Ok(Stream { ctx: self.ctx.clone(), raw, owned: true })
    }

    /// The legacy default stream.
    pub fn default_stream(&self) -> Stream {
        Stream { ctx: self.ctx.clone(), raw: STREAM_LEGACY_DEFAULT, owned: false }
    }

    /// A new event with timing.
    pub fn event(&self) -> Result<Event> {
        self.event_with(0)
    }

    /// A new event with CUDA event flags.
    pub fn event_with(&self, flags: u32) -> Result<Event> {
        let raw = self.ctx.event_create(flags)?;
        Ok(Event { ctx: self.ctx.clone(), raw })
    }

    /// `len` elements of device memory (uninitialised).
    pub fn alloc<T: Pod>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or(CudaError::MemoryAllocation)?;
        self.ctx.capture_check_unsafe()?;
        let ptr = self.ctx.malloc(bytes)?;
        Ok(DeviceBuffer { ctx: self.ctx.clone(), ptr, len, _t: PhantomData })
    }

    /// `len` elements of pinned host memory in the data window (zero-filled).
    pub fn alloc_pinned<T: Pod>(&self, len: usize) -> Result<PinnedBuffer<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or(CudaError::MemoryAllocation)?;
        let ptr = self.ctx.host_alloc(bytes, 0)?;
        // SAFETY: `ptr` is the start of a fresh pinned allocation of at least `bytes` bytes in
        // the mapped window; no command uses it yet.
        unsafe { std::ptr::write_bytes(ptr, 0, bytes) };
        Ok(PinnedBuffer { ctx: self.ctx.clone(), ptr: ptr.cast(), len })
    }

    /// Wait for all work on all streams (`StreamCaptureUnsupported` while a stream captures).
    pub fn synchronize(&self) -> SyncFuture {
        if let Err(e) = self.ctx.capture_check_sync(None) {
            return SyncFuture::failed(&self.ctx, e);
        }
        SyncFuture::submit(&self.ctx, 0, req::DeviceSync {})
    }

    /// Blocking round trips this device's context has made.
    pub fn blocking_round_trips(&self) -> u64 {
        self.ctx.blocking_round_trips()
    }

    /// Load a module from a fatbin container (what nvcc's `-fatbin` writes, or the bytes a
    /// `__fatBinC_Wrapper_t` points at). The bytes are copied; the host is asked for the image
    /// by hash first and sent it only if it does not hold it (one or two round trips).
    pub fn load_module(&self, fatbin: &[u8]) -> Result<Module> {
        let reg = ModuleReg::from_bytes(fatbin);
        self.ctx.ensure_module(&reg)?;
        Ok(Module { inner: Arc::new(ModuleInner { ctx: self.ctx.clone(), reg }) })
    }
}

struct ModuleInner {
    ctx: Arc<Context>,
    reg: Arc<ModuleReg>,
}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        self.ctx.forget_module(self.reg.id, true);
    }
}

/// A loaded module; unloaded when it and every [`Function`] from it are dropped.
#[derive(Clone)]
pub struct Module {
    inner: Arc<ModuleInner>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("id", &self.inner.reg.id).finish()
    }
}

impl Module {
    /// The kernel with this device (mangled) name: one round trip the first time, then cached.
    pub fn function(&self, name: &str) -> Result<Function> {
        let name = std::ffi::CString::new(name).map_err(|_| CudaError::InvalidValue)?;
        let func = self.inner.ctx.function_by_name(&self.inner.reg, &name)?;
        Ok(Function { module: self.inner.clone(), func })
    }
}

/// A kernel of a [`Module`], with its attributes and parameter layout.
#[derive(Clone)]
pub struct Function {
    module: Arc<ModuleInner>,
    func: Arc<Func>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("name", &self.func.name()).finish()
    }
}

impl Function {
    /// What the host reports about the function (attributes set since included).
    pub fn info(&self) -> FuncInfo {
        self.func.info()
    }

    /// Offset and size of each parameter in the packed parameter buffer.
    pub fn params(&self) -> &[ParamInfo] {
        self.func.params()
    }

    /// `cudaFuncSetAttribute` (`cudaFuncAttribute` values, e.g. 8 = max dynamic shared memory).
    pub fn set_attribute(&self, attr: u32, value: i32) -> Result<()> {
        self.module.ctx.func_set_attribute(&self.func, attr, value)
    }

    /// Active blocks per multiprocessor for `block_size` threads and `shared` dynamic bytes.
    pub fn max_active_blocks(&self, block_size: i32, shared: u64) -> Result<i32> {
        self.module.ctx.occupancy(&self.func, block_size, shared, 0)
    }
}

/// A kernel argument: the bytes the kernel receives for one parameter.
pub trait KernelArg {
    fn arg_bytes(&self) -> &[u8];
}

impl<T: Pod> KernelArg for T {
    fn arg_bytes(&self) -> &[u8] {
        // SAFETY: `T: Pod` has no padding; the slice covers exactly the value, borrowed from it.
        unsafe { std::slice::from_raw_parts((self as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
    }
}

/// Raw bytes (a struct passed by value, laid out by the caller).
impl KernelArg for &[u8] {
    fn arg_bytes(&self) -> &[u8] {
        self
    }
}

/// Raw bytes (a struct passed by value, laid out by the caller).
impl<const N: usize> KernelArg for [u8; N] {
    fn arg_bytes(&self) -> &[u8] {
        self
    }
}

/// A device buffer is passed as its device address.
impl<T: Pod> KernelArg for DeviceBuffer<T> {
    fn arg_bytes(&self) -> &[u8] {
        self.ptr.arg_bytes()
    }
}

/// A captured graph (`cudaGraph_t`); destroyed on drop.
#[derive(Debug)]
pub struct Graph {
    ctx: Arc<Context>,
    raw: RawGraph,
}

impl Graph {
    /// `cudaGraphInstantiate`: one round trip.
    pub fn instantiate(&self) -> Result<GraphExec> {
        let raw = self.ctx.graph_instantiate(self.raw, 0)?;
        Ok(GraphExec { ctx: self.ctx.clone(), raw })
    }

    /// The raw `cudaGraph_t` value.
    pub fn raw(&self) -> RawGraph {
        self.raw
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        let _ = self.ctx.graph_destroy(self.raw);
    }
}

/// An instantiated graph (`cudaGraphExec_t`); destroyed on drop (after its pending launches).
#[derive(Debug)]
pub struct GraphExec {
    ctx: Arc<Context>,
    raw: RawGraphExec,
}

impl GraphExec {
    /// `cudaGraphExecUpdate`: `true` if updated to `graph`'s parameters, `false` if the graphs
    /// differ too much (instantiate `graph` instead).
    pub fn update(&self, graph: &Graph) -> Result<bool> {
        self.ctx.graph_exec_update(self.raw, graph.raw).map(|r| r == 0)
    }
}

impl Drop for GraphExec {
    fn drop(&mut self) {
        let _ = self.ctx.graph_exec_destroy(self.raw);
    }
}

/// A future that completes when a sync call (stream, event, device) completes on the host; it
/// then reports the deferred error of earlier fire-and-forget work, if any.
#[must_use = "a SyncFuture does nothing unless awaited"]
pub struct SyncFuture {
    ctx: Arc<Context>,
    state: Option<Result<Ticket>>,
}

impl SyncFuture {
    fn submit<R: CallRequest>(ctx: &Arc<Context>, stream: u32, r: R) -> SyncFuture {
        let t = ctx.sticky().and_then(|_| ctx.check(ctx.client.submit_req(stream, r)));
        SyncFuture { ctx: ctx.clone(), state: Some(t) }
    }

    fn failed(ctx: &Arc<Context>, e: CudaError) -> SyncFuture {
        SyncFuture { ctx: ctx.clone(), state: Some(Err(e)) }
    }

    /// Wait on this thread instead of awaiting.
    pub fn wait(mut self) -> Result<()> {
        match self.state.take() {
            Some(Ok(t)) => {
                self.ctx.client.stats().blocking_waits.fetch_add(1, vgpu_transport::sync::Ordering::Relaxed);
                self.ctx.check(t.wait())?;
                self.ctx.deferred()
            }
            Some(Err(e)) => Err(e),
            None => Err(CudaError::IllegalState),
        }
    }
}

impl Future for SyncFuture {
    type Output = Result<()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        match this.state.as_mut() {
            None => Poll::Ready(Err(CudaError::IllegalState)),
            Some(Err(e)) => {
                let e = *e;
                this.state = None;
                Poll::Ready(Err(e))
            }
            Some(Ok(t)) => match Pin::new(t).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => {
                    this.state = None;
                    Poll::Ready(this.ctx.check(r).and_then(|_| this.ctx.deferred()))
                }
            },
        }
    }
}

/// A stream. Streams made with [`Device::stream`] are destroyed on drop (their queued work still
/// completes, as `cudaStreamDestroy`).
#[derive(Debug)]
pub struct Stream {
    ctx: Arc<Context>,
    raw: RawStream,
    owned: bool,
}

impl Stream {
    /// The raw `cudaStream_t` value.
    pub fn raw(&self) -> RawStream {
        self.raw
    }

    fn host(&self) -> Result<u32> {
        self.ctx.host_stream(self.raw)
    }

    /// Upload from pageable memory: returns once every byte is staged in the window; the copy
    /// runs in stream order.
    pub fn upload<T: Pod>(&self, dst: &DeviceBuffer<T>, src: &[T]) -> Result<()> {
        check_len(dst.len, src.len())?;
        let h = self.host()?;
        let seg = Seg { dev: dst.ptr, host: src.as_ptr() as usize, len: std::mem::size_of_val(src) };
        // SAFETY: `src` is borrowed for the whole call, and `h2d` reads it only before returning
        // (staging copies it into the window).
        unsafe { self.ctx.h2d(&[seg], h, false) }
    }

    /// Upload from pinned memory: zero-copy and fully asynchronous. Do not change `src` before
    /// the stream has passed this copy.
    pub fn upload_pinned<T: Pod>(&self, dst: &DeviceBuffer<T>, src: &PinnedBuffer<T>) -> Result<()> {
        check_len(dst.len, src.len)?;
        let h = self.host()?;
        let seg = Seg { dev: dst.ptr, host: src.ptr as usize, len: src.bytes() };
        // SAFETY: pinned source: the host reads the window directly; no guest memory is read.
        unsafe { self.ctx.h2d(&[seg], h, false) }
    }

    /// Download into pageable memory; every byte is in `dst` when this returns.
    pub fn download<T: Pod>(&self, src: &DeviceBuffer<T>, dst: &mut [T]) -> Result<()> {
        check_len(src.len, dst.len())?;
        let h = self.host()?;
        let seg = Seg { dev: src.ptr, host: dst.as_mut_ptr() as usize, len: std::mem::size_of_val(dst) };
        // SAFETY: `dst` is exclusively borrowed for the whole call and the copy waits (`true`),
        // so every completion action writing into it has run before we return; `T: Pod`
        // accepts any bytes.
        unsafe { self.ctx.d2h(&[seg], h, true)? };
        self.ctx.deferred()
    }

    /// Download into pinned memory: zero-copy and fully asynchronous; read `dst` after a sync.
    pub fn download_pinned<T: Pod>(&self, src: &DeviceBuffer<T>, dst: &PinnedBuffer<T>) -> Result<()> {
        check_len(src.len, dst.len)?;
        let h = self.host()?;
        let seg = Seg { dev: src.ptr, host: dst.ptr as usize, len: dst.bytes() };
        // SAFETY: pinned destination: the host writes the window directly, no guest memory is
        // written by this process.
        unsafe { self.ctx.d2h(&[seg], h, false) }
    }

    /// Device-to-device copy.
    pub fn copy<T: Pod>(&self, dst: &DeviceBuffer<T>, src: &DeviceBuffer<T>) -> Result<()> {
        check_len(dst.len, src.len)?;
        let h = self.host()?;
        // SAFETY: device-to-device: no host memory is touched.
        unsafe { self.ctx.copy_1d(dst.ptr, src.ptr, src.bytes(), MemcpyKind::DeviceToDevice, h, false) }
    }

    /// Fill every byte of `dst` with `byte`.
    pub fn memset<T: Pod>(&self, dst: &DeviceBuffer<T>, byte: u8) -> Result<()> {
        let h = self.host()?;
        self.ctx.memset_on(dst.ptr, byte as i32, dst.bytes(), h)
    }

    /// Record `event` at this point of the stream.
    pub fn record(&self, event: &Event) -> Result<()> {
        event.record(self)
    }

    /// Later work on this stream waits for `event`'s captured work.
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        let h = self.host()?;
        let e = self.ctx.event(event.raw)?;
        self.ctx.capture_check(h, false)?;
        self.ctx.fire(h, req::StreamWaitEvent { event: e.host, flags: 0 })
    }

    /// Run `f` once all earlier work on this stream is done; later work waits for it. `f` runs
    /// on the context's host-function thread and must not wait for this stream.
    pub fn host_fn(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        self.ctx.capture_check(self.host()?, false)?;
        self.ctx.host_fn(
            self.raw,
            Box::new(move |s| {
                if s == CudaError::Success {
                    f()
                }
            }),
        )
    }

    /// Completes when all work submitted to this stream so far has finished.
    pub fn synchronize(&self) -> SyncFuture {
        match self.host().and_then(|h| self.ctx.capture_check_sync(Some(h)).map(|_| h)) {
            Ok(h) => SyncFuture::submit(&self.ctx, h, req::StreamSync {}),
            Err(e) => SyncFuture::failed(&self.ctx, e),
        }
    }

    /// [`synchronize`](Self::synchronize), blocking this thread.
    pub fn synchronize_blocking(&self) -> Result<()> {
        self.ctx.capture_check_sync(Some(self.host()?))?;
        self.ctx.stream_synchronize(self.raw)
    }

    /// `true` if all work on the stream has finished.
    pub fn query(&self) -> Result<bool> {
        self.ctx.capture_check_sync(Some(self.host()?))?;
        match self.ctx.stream_query(self.raw) {
            Ok(()) => Ok(true),
            Err(CudaError::NotReady) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Launch `f` (fire-and-forget, like the copies): `grid` and `block` dimensions, `shared`
    /// bytes of dynamic shared memory, one argument per parameter. Bad dimensions or arguments
    /// fail at once; errors of the launch itself surface at the next synchronisation.
    pub fn launch(&self, f: &Function, grid: [u32; 3], block: [u32; 3], shared: u32, args: &[&dyn KernelArg]) -> Result<()> {
        if !Arc::ptr_eq(&f.module.ctx, &self.ctx) {
            return Err(CudaError::InvalidResourceHandle);
        }
        if args.len() != f.func.params().len() {
            return Err(CudaError::InvalidValue);
        }
        let params = pack_params(&f.func, |i, _| Ok(args[i].arg_bytes()))?;
        let cfg = LaunchConfig { grid, block, shared: shared as u64, stream: self.raw, cooperative: false };
        self.ctx.launch_packed(&f.func, &cfg, &params)
    }

    /// Start capturing this stream's work into a graph (`cudaStreamBeginCapture`).
    pub fn begin_capture(&self, mode: CaptureMode) -> Result<()> {
        self.ctx.begin_capture(self.raw, mode)
    }

    /// End the capture: the graph, or `StreamCaptureInvalidated`.
    pub fn end_capture(&self) -> Result<Graph> {
        let raw = self.ctx.end_capture(self.raw)?;
        Ok(Graph { ctx: self.ctx.clone(), raw })
    }

    /// Capture status of this stream (local).
    pub fn capture_status(&self) -> Result<CaptureStatus> {
        self.ctx.capture_info(self.raw).map(|(s, _)| s)
    }

    /// Launch an instantiated graph on this stream (fire-and-forget).
    pub fn launch_graph(&self, exec: &GraphExec) -> Result<()> {
        self.ctx.graph_launch(exec.raw, self.raw)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.owned {
            if let Ok(h) = self.host() {
                self.ctx.capture_forget(Some(h));
            }
            let _ = self.ctx.stream_destroy(self.raw);
        }
    }
}

/// An event.
#[derive(Debug)]
pub struct Event {
    ctx: Arc<Context>,
    raw: RawEvent,
}

impl Event {
    /// The raw `cudaEvent_t` value.
    pub fn raw(&self) -> RawEvent {
        self.raw
    }

    /// The CUDA flags it was created with.
    pub fn flags(&self) -> Result<u32> {
        self.ctx.event(self.raw).map(|e| e.flags)
    }

    /// Capture `stream`'s current position.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        let e = self.ctx.event(self.raw)?;
        let h = stream.host()?;
        self.ctx.capture_check(h, false)?;
        self.ctx.fire(h, req::EventRecord { event: e.host })
    }

    /// Completes when the captured work has finished (at once if never recorded).
    pub fn synchronize(&self) -> SyncFuture {
        match self.ctx.event(self.raw) {
            Ok(e) => SyncFuture::submit(&self.ctx, 0, req::EventSync { event: e.host }),
            Err(e) => SyncFuture::failed(&self.ctx, e),
        }
    }

    /// [`synchronize`](Self::synchronize), blocking this thread.
    pub fn synchronize_blocking(&self) -> Result<()> {
        self.synchronize().wait()
    }

    /// `true` if the captured work has finished.
    pub fn query(&self) -> Result<bool> {
        let e = self.ctx.event(self.raw)?;
        match self.ctx.call(0, req::EventQuery { event: e.host }) {
            Ok(_) => self.ctx.deferred().map(|_| true),
            Err(CudaError::NotReady) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Milliseconds between `self` and `end` (both recorded and finished, both with timing).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        let (s, e) = (self.ctx.event(self.raw)?, self.ctx.event(end.raw)?);
        Ok(self.ctx.call(0, req::EventElapsed { start: s.host, end: e.host })?.ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let _ = self.ctx.event_destroy(self.raw);
    }
}

fn check_len(a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(CudaError::InvalidValue)
    }
}

/// Device memory for `len` values of `T`; freed on drop (after earlier work that uses it).
#[derive(Debug)]
pub struct DeviceBuffer<T: Pod> {
    ctx: Arc<Context>,
    ptr: u64,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device address.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
    fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

impl<T: Pod> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        let _ = self.ctx.free_quiet(self.ptr);
    }
}

/// Pinned host memory for `len` values of `T`, inside the data window: copies to and from it are
/// zero-copy. There are no `&[T]` views of it (the host writes it during downloads): use
/// [`write`](Self::write), [`read`](Self::read), [`to_vec`](Self::to_vec).
#[derive(Debug)]
pub struct PinnedBuffer<T: Pod> {
    ctx: Arc<Context>,
    ptr: *mut T,
    len: usize,
}

// SAFETY: the buffer is raw window memory owned by this value, accessed only by byte copies;
// `T: Pod` is Send + Sync.
unsafe impl<T: Pod> Send for PinnedBuffer<T> {}
// SAFETY: see Send; shared access only copies bytes.
unsafe impl<T: Pod> Sync for PinnedBuffer<T> {}

impl<T: Pod> PinnedBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// The host address (for raw-API interop).
    pub fn as_ptr(&self) -> *mut T {
        self.ptr
    }
    /// Copy `src` in (`src.len()` must equal `len()`; otherwise nothing is copied).
    pub fn write(&self, src: &[T]) {
        if src.len() == self.len {
            // SAFETY: the allocation holds `len` values of `T` in the mapped window; `src` is a
            // separate slice; byte copy, no reference into the window is created.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr, self.len) };
        }
    }
    /// Copy out into `dst` (`dst.len()` must equal `len()`; otherwise nothing is copied).
    pub fn read(&self, dst: &mut [T]) {
        if dst.len() == self.len {
            // SAFETY: as in `write`, the other way; `T: Pod` accepts any bytes the host wrote.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr(), self.len) };
        }
    }
    /// A copy of the contents.
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = Vec::with_capacity(self.len);
        // SAFETY: copies `len` values into the fresh vector's capacity, then sets its length;
        // `T: Pod` accepts any bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr, v.as_mut_ptr(), self.len);
            v.set_len(self.len);
        }
        v
    }
}

impl<T: Pod> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        let _ = self.ctx.free_host(self.ptr.cast());
    }
}
