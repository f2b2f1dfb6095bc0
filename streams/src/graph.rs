//! Stream capture and graphs.
//!
//! The capture state of every stream is kept in the guest, so `cudaStreamIsCapturing` and
//! `cudaStreamGetCaptureInfo` cost no round trip (capture ids are a guest counter).
//! `cudaStreamBeginCapture`/`EndCapture` are one round trip each; the host records the
//! capturable commands of the stream (launches, memsets, device-to-device copies, copies from and
//! to pinned memory, graph launches) into a graph instead of running them.
//!
//! What CUDA forbids during capture is refused here, before anything is sent, with CUDA's error,
//! and the capture is invalidated (its `EndCapture` then answers
//! `cudaErrorStreamCaptureInvalidated`, as CUDA's does):
//! - on the capturing stream: copies from or to pageable memory, synchronous copies, host
//!   functions, event records and waits (no event nodes over the wire), stream synchronise and
//!   query: `cudaErrorStreamCaptureUnsupported`;
//! - `cudaDeviceSynchronize` while any stream captures: `cudaErrorStreamCaptureUnsupported`;
//! - work on the legacy default stream while a blocking stream captures (it would depend on the
//!   capture implicitly): `cudaErrorStreamCaptureImplicit`;
//! - "potentially unsafe" calls (`cudaMalloc`, `cudaFree`) from a thread that the capture modes
//!   prohibit (`cudaThreadExchangeStreamCaptureMode`, CUDA's rules for global, thread-local and
//!   relaxed captures): `cudaErrorStreamCaptureUnsupported`.
//! - Work on a stream whose capture was invalidated: `cudaErrorStreamCaptureInvalidated`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use tracing::debug;
use vgpu_transport::sync::{AtomicU64, AtomicUsize, Ordering};
use vgpu_transport::wire::req;

use crate::context::{lock, Context};
use crate::error::{CudaError, Result};
use crate::RawStream;

/// `cudaStreamCaptureMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum CaptureMode {
    Global = 0,
    ThreadLocal = 1,
    Relaxed = 2,
}

impl CaptureMode {
    /// Decode a `cudaStreamCaptureMode` value.
    pub fn from_raw(v: i32) -> Option<CaptureMode> {
        match v {
            0 => Some(CaptureMode::Global),
            1 => Some(CaptureMode::ThreadLocal),
            2 => Some(CaptureMode::Relaxed),
            _ => None,
        }
    }
}

/// `cudaStreamCaptureStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum CaptureStatus {
    None = 0,
    Active = 1,
    Invalidated = 2,
}

/// A `cudaGraph_t` value, as an integer (never 0).
pub type RawGraph = u64;
/// A `cudaGraphExec_t` value, as an integer (never 0).
pub type RawGraphExec = u64;

const GRAPH_TAG: u64 = 0x30;
const EXEC_TAG: u64 = 0x40;

fn graph_raw(host: u64) -> RawGraph {
    host << 8 | GRAPH_TAG
}

fn exec_raw(host: u64) -> RawGraphExec {
    host << 8 | EXEC_TAG
}

fn graph_host(raw: RawGraph) -> Result<u64> {
    match raw {
        0 => Err(CudaError::InvalidValue),
        r if r & 0xff == GRAPH_TAG => Ok(r >> 8),
        _ => Err(CudaError::InvalidResourceHandle),
    }
}

fn exec_host(raw: RawGraphExec) -> Result<u64> {
    match raw {
        0 => Err(CudaError::InvalidValue),
        r if r & 0xff == EXEC_TAG => Ok(r >> 8),
        _ => Err(CudaError::InvalidResourceHandle),
    }
}

#[derive(Clone, Copy, Debug)]
struct Capture {
    id: u64,
    mode: CaptureMode,
    thread: ThreadId,
    /// A blocking stream (flags 0): it would synchronise with the legacy stream.
    blocking: bool,
    invalidated: bool,
}

/// The capture sequences of one context, keyed by host stream handle.
#[derive(Debug, Default)]
pub(crate) struct Captures {
    /// Live capture sequences (a fast path: 0 means no check needs the lock).
    active: AtomicUsize,
    table: Mutex<HashMap<u32, Capture>>,
    next_id: AtomicU64,
}

thread_local! {
    static THREAD_MODE: std::cell::Cell<CaptureMode> = const { std::cell::Cell::new(CaptureMode::Global) };
}

/// `cudaThreadExchangeStreamCaptureMode`: set the calling thread's mode, return the old one.
pub fn exchange_thread_mode(mode: CaptureMode) -> CaptureMode {
    THREAD_MODE.with(|m| m.replace(mode))
}

impl Context {
    fn invalidate(t: &mut HashMap<u32, Capture>, which: impl Fn(u32, &Capture) -> bool) {
        for (h, c) in t.iter_mut() {
            if which(*h, c) && !c.invalidated {
                debug!(target: "vgpu::streams", stream = h, capture = c.id, "capture invalidated");
                c.invalidated = true;
            }
        }
    }

    /// Whether any capture sequence is live (one atomic load).
    pub(crate) fn capture_active(&self) -> bool {
        self.captures.active.load(Ordering::Acquire) != 0
    }

    /// Check a stream-ordered operation on host stream `h` against the captures: `capturable`
    /// says whether the host can record it into a graph.
    pub(crate) fn capture_check(&self, h: u32, capturable: bool) -> Result<()> {
        if self.captures.active.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let mut t = lock(&self.captures.table);
        if h == 0 {
            if t.values().any(|c| c.blocking) {
                Self::invalidate(&mut t, |_, c| c.blocking);
                return Err(CudaError::StreamCaptureImplicit);
            }
            return Ok(());
        }
        match t.get_mut(&h) {
            None => Ok(()),
            Some(c) if c.invalidated => Err(CudaError::StreamCaptureInvalidated),
            Some(_) if capturable => Ok(()),
            Some(c) => {
                debug!(target: "vgpu::streams", stream = h, capture = c.id, "an operation that cannot be captured invalidates the capture");
                c.invalidated = true;
                Err(CudaError::StreamCaptureUnsupported)
            }
        }
    }

    /// A synchronising call: of host stream `h`, or of the whole device (`None`).
    pub(crate) fn capture_check_sync(&self, h: Option<u32>) -> Result<()> {
        match h {
            Some(h) => self.capture_check(h, false),
            None => {
                if self.captures.active.load(Ordering::Acquire) == 0 {
                    return Ok(());
                }
                let mut t = lock(&self.captures.table);
                if t.is_empty() {
                    return Ok(());
                }
                Self::invalidate(&mut t, |_, _| true);
                Err(CudaError::StreamCaptureUnsupported)
            }
        }
    }

    /// A "potentially unsafe" call (`cudaMalloc`, `cudaFree`): prohibited, by CUDA's rules, when
    /// the calling thread's mode is global and this thread has a non-relaxed capture or any
    /// thread a global one; thread-local: this thread has a non-relaxed capture; relaxed: never.
    pub(crate) fn capture_check_unsafe(&self) -> Result<()> {
        if self.captures.active.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let me = std::thread::current().id();
        let mode = THREAD_MODE.with(|m| m.get());
        let mut t = lock(&self.captures.table);
        let mine = |c: &Capture| c.thread == me && c.mode != CaptureMode::Relaxed;
        let other_global = |c: &Capture| c.thread != me && c.mode == CaptureMode::Global;
        let prohibited = match mode {
            CaptureMode::Global => t.values().any(|c| mine(c) || other_global(c)),
            CaptureMode::ThreadLocal => t.values().any(mine),
            CaptureMode::Relaxed => false,
        };
        if !prohibited {
            return Ok(());
        }
        Self::invalidate(&mut t, |_, c| match mode {
            CaptureMode::Global => mine(c) || other_global(c),
            _ => mine(c),
        });
        Err(CudaError::StreamCaptureUnsupported)
    }

    /// Forget the capture of host stream `h` (the stream is being destroyed), or of every
    /// stream (`None`: a device reset).
    pub(crate) fn capture_forget(&self, h: Option<u32>) {
        if self.captures.active.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut t = lock(&self.captures.table);
        let before = t.len();
        match h {
            Some(h) => drop(t.remove(&h)),
            None => t.clear(),
        }
        self.captures.active.fetch_sub(before - t.len(), Ordering::AcqRel);
    }

    /// `cudaStreamBeginCapture`: one round trip.
    pub fn begin_capture(self: &Arc<Self>, stream: RawStream, mode: CaptureMode) -> Result<()> {
        let h = self.host_stream(stream)?;
        if h == 0 {
            return Err(CudaError::StreamCaptureUnsupported);
        }
        let blocking = self.stream_entry(stream)?.flags & crate::STREAM_NON_BLOCKING == 0;
        if lock(&self.captures.table).contains_key(&h) {
            return Err(CudaError::IllegalState);
        }
        self.call(h, req::StreamBeginCapture { mode: mode as i32 as u64 })?;
        let id = self.captures.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let c = Capture { id, mode, thread: std::thread::current().id(), blocking, invalidated: false };
        lock(&self.captures.table).insert(h, c);
        self.captures.active.fetch_add(1, Ordering::AcqRel);
        debug!(target: "vgpu::streams", stream = h, capture = id, ?mode, "capture begins");
        Ok(())
    }

    /// `cudaStreamEndCapture`: one round trip; the captured graph, or
    /// `StreamCaptureInvalidated` if the capture was invalidated (the host's graph is dropped).
    pub fn end_capture(self: &Arc<Self>, stream: RawStream) -> Result<RawGraph> {
        let h = self.host_stream(stream)?;
        let c = {
            let mut t = lock(&self.captures.table);
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
        let t = lock(&self.captures.table);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_are_told_apart() {
        assert_eq!(graph_host(graph_raw(7)), Ok(7));
        assert_eq!(exec_host(exec_raw(7)), Ok(7));
        assert_eq!(graph_host(exec_raw(7)), Err(CudaError::InvalidResourceHandle));
        assert_eq!(exec_host(graph_raw(7)), Err(CudaError::InvalidResourceHandle));
        assert_eq!(graph_host(0), Err(CudaError::InvalidValue));
    }

    #[test]
    fn thread_mode_is_exchanged_per_thread() {
        assert_eq!(exchange_thread_mode(CaptureMode::Relaxed), CaptureMode::Global);
        std::thread::spawn(|| assert_eq!(exchange_thread_mode(CaptureMode::Global), CaptureMode::Global)).join().unwrap();
        assert_eq!(exchange_thread_mode(CaptureMode::Global), CaptureMode::Relaxed);
    }
}
