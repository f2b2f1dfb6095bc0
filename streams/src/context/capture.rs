//! Capture and graphs on a context: the round trips (`StreamBeginCapture`, `StreamEndCapture`,
//! graph instantiation and launch); the capture table and its rules live in [`crate::graph`].

use std::sync::Arc;

use tracing::debug;
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::req;

use super::Context;
use crate::error::{CudaError, Result};
use crate::graph::{exec_host, exec_raw, graph_host, graph_raw, Capture, CaptureMode, CaptureStatus, RawGraph, RawGraphExec};
use crate::types::RawStream;

impl Context {
    /// Whether any capture sequence is live (one atomic load).
    pub(crate) fn capture_active(&self) -> bool {
        self.captures.active()
    }

    /// [`Captures::check`] on this context's captures.
    pub(crate) fn capture_check(&self, h: u32, capturable: bool) -> Result<()> {
        self.captures.check(h, capturable)
    }

    /// [`Captures::check_sync`] on this context's captures.
    pub(crate) fn capture_check_sync(&self, h: Option<u32>) -> Result<()> {
        self.captures.check_sync(h)
    }

    /// [`Captures::check_unsafe`] on this context's captures.
    pub(crate) fn capture_check_unsafe(&self) -> Result<()> {
        self.captures.check_unsafe()
    }

    /// [`Captures::forget`] on this context's captures.
    pub(crate) fn capture_forget(&self, h: Option<u32>) {
        self.captures.forget(h)
    }

    /// `cudaStreamBeginCapture`: one round trip.
    pub fn begin_capture(self: &Arc<Self>, stream: RawStream, mode: CaptureMode) -> Result<()> {
        let h = self.host_stream(stream)?;
        if h == 0 {
            return Err(CudaError::StreamCaptureUnsupported);
        }
        let blocking = self.stream_entry(stream)?.flags & crate::types::STREAM_NON_BLOCKING == 0;
        if self.captures.table.lock().contains_key(&h) {
            return Err(CudaError::IllegalState);
        }
        self.call(h, req::StreamBeginCapture { mode: mode as i32 as u64 })?;
        let id = self.captures.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let c = Capture { id, mode, thread: std::thread::current().id(), blocking, invalidated: false };
        self.captures.table.lock().insert(h, c);
        self.captures.active.fetch_add(1, Ordering::AcqRel);
        debug!(target: "vgpu::streams", stream = h, capture = id, ?mode, "capture begins");
        Ok(())
    }

    /// `cudaStreamEndCapture`: one round trip; the captured graph, or
    /// `StreamCaptureInvalidated` if the capture was invalidated (the host's graph is dropped).
    pub fn end_capture(self: &Arc<Self>, stream: RawStream) -> Result<RawGraph> {
        let h = self.host_stream(stream)?;
        let c = {
            let mut t = self.captures.table.lock();
            let c = *t.get(&h).ok_or(CudaError::IllegalState)?;
            if c.mode != CaptureMode::Relaxed && c.thread != std::thread::current().id() {
                return Err(CudaError::StreamCaptureWrongThread);
            }
            t.remove(&h);
            c
        };
        self.captures.active.fetch_sub(1, Ordering::AcqRel);
        let r = self.call(h, req::StreamEndCapture {});
        debug!(target: "vgpu::streams", stream = h, capture = c.id, invalidated = c.invalidated, ok = r.is_ok(), "capture ends");
        let graph = r?.graph;
        if c.invalidated {
            let _ = self.fire(0, req::GraphDestroy { graph });
            return Err(CudaError::StreamCaptureInvalidated);
        }
        Ok(graph_raw(graph))
    }

    /// `cudaStreamIsCapturing` / `cudaStreamGetCaptureInfo`: status and capture id (local).
    pub fn capture_info(self: &Arc<Self>, stream: RawStream) -> Result<(CaptureStatus, u64)> {
        let h = self.host_stream(stream)?;
        if self.captures.active.load(Ordering::Acquire) == 0 {
            return Ok((CaptureStatus::None, 0));
        }
        let t = self.captures.table.lock();
        if h == 0 {
            // Asking about the legacy stream while a blocking stream captures is an implicit
            // dependency on the capture (CUDA answers cudaErrorStreamCaptureImplicit).
            if t.values().any(|c| c.blocking) {
                return Err(CudaError::StreamCaptureImplicit);
            }
            return Ok((CaptureStatus::None, 0));
        }
        Ok(match t.get(&h) {
            None => (CaptureStatus::None, 0),
            Some(c) if c.invalidated => (CaptureStatus::Invalidated, c.id),
            Some(c) => (CaptureStatus::Active, c.id),
        })
    }

    /// `cudaGraphInstantiate[WithFlags|WithParams]`: one round trip.
    pub fn graph_instantiate(&self, graph: RawGraph, flags: u64) -> Result<RawGraphExec> {
        if flags & !0xf != 0 {
            return Err(CudaError::InvalidValue);
        }
        let g = graph_host(graph)?;
        let r = self.call(0, req::GraphInstantiate { graph: g, flags })?;
        Ok(exec_raw(r.exec))
    }

    /// `cudaGraphExecUpdate`: one round trip; the `cudaGraphExecUpdateResult` (0 = updated).
    pub fn graph_exec_update(&self, exec: RawGraphExec, graph: RawGraph) -> Result<u32> {
        let (e, g) = (exec_host(exec)?, graph_host(graph)?);
        let r = self.call(0, req::GraphExecUpdate { exec: e, graph: g })?;
        u32::try_from(r.result).map_err(|_| CudaError::Unknown)
    }

    /// `cudaGraphLaunch`: fire-and-forget on `stream` (captured if the stream captures).
    pub fn graph_launch(self: &Arc<Self>, exec: RawGraphExec, stream: RawStream) -> Result<()> {
        let e = exec_host(exec)?;
        let h = self.host_stream(stream)?;
        self.capture_check(h, true)?;
        self.fire(h, req::GraphLaunch { exec: e })
    }

    /// `cudaGraphDestroy` (fire-and-forget).
    pub fn graph_destroy(&self, graph: RawGraph) -> Result<()> {
        let g = graph_host(graph)?;
        self.fire(0, req::GraphDestroy { graph: g })
    }

    /// `cudaGraphExecDestroy` (fire-and-forget; pending launches of it finish first).
    pub fn graph_exec_destroy(&self, exec: RawGraphExec) -> Result<()> {
        let e = exec_host(exec)?;
        self.fire(0, req::GraphExecDestroy { exec: e })
    }
}
