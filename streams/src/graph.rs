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

//!
//! This module holds the capture table and its rules (no I/O, no [`crate::Context`]); the
//! capture and graph round trips are methods of the context (`context::capture`).

use std::collections::HashMap;
use std::thread::ThreadId;

use tracing::debug;
use vgpu_transport::sync::{AtomicU64, AtomicUsize, Ordering};

use crate::error::{CudaError, Result};
use crate::locks::{rank, OrderedMutex};

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

pub(crate) fn graph_raw(host: u64) -> RawGraph {
    host << 8 | GRAPH_TAG
}

pub(crate) fn exec_raw(host: u64) -> RawGraphExec {
    host << 8 | EXEC_TAG
}

pub(crate) fn graph_host(raw: RawGraph) -> Result<u64> {
    match raw {
        0 => Err(CudaError::InvalidValue),
        r if r & 0xff == GRAPH_TAG => Ok(r >> 8),
        _ => Err(CudaError::InvalidResourceHandle),
    }
}

pub(crate) fn exec_host(raw: RawGraphExec) -> Result<u64> {
    match raw {
        0 => Err(CudaError::InvalidValue),
        r if r & 0xff == EXEC_TAG => Ok(r >> 8),
        _ => Err(CudaError::InvalidResourceHandle),
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Capture {
    pub id: u64,
    pub mode: CaptureMode,
    pub thread: ThreadId,
    /// A blocking stream (flags 0): it would synchronise with the legacy stream.
    pub blocking: bool,
    pub invalidated: bool,
}

/// The capture sequences of one context, keyed by host stream handle.
#[derive(Debug, Default)]
pub(crate) struct Captures {
    /// Live capture sequences (a fast path: 0 means no check needs the lock).
    pub active: AtomicUsize,
    /// Host stream → its capture ([`rank::CAPTURES`]).
    pub table: OrderedMutex<HashMap<u32, Capture>, { rank::CAPTURES }>,
    pub next_id: AtomicU64,
}

thread_local! {
    static THREAD_MODE: std::cell::Cell<CaptureMode> = const { std::cell::Cell::new(CaptureMode::Global) };
}

/// `cudaThreadExchangeStreamCaptureMode`: set the calling thread's mode, return the old one.
pub fn exchange_thread_mode(mode: CaptureMode) -> CaptureMode {
    THREAD_MODE.with(|m| m.replace(mode))
}

impl Captures {
    fn invalidate(t: &mut HashMap<u32, Capture>, which: impl Fn(u32, &Capture) -> bool) {
        for (h, c) in t.iter_mut() {
            if which(*h, c) && !c.invalidated {
                debug!(target: "vgpu::streams", stream = h, capture = c.id, "capture invalidated");
                c.invalidated = true;
            }
        }
    }

    /// Whether any capture sequence is live (one atomic load).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire) != 0
    }

    /// Check a stream-ordered operation on host stream `h` against the captures: `capturable`
    /// says whether the host can record it into a graph.
    pub fn check(&self, h: u32, capturable: bool) -> Result<()> {
        if self.active.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let mut t = self.table.lock();
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
    pub fn check_sync(&self, h: Option<u32>) -> Result<()> {
        match h {
            Some(h) => self.check(h, false),
            None => {
                if self.active.load(Ordering::Acquire) == 0 {
                    return Ok(());
                }
                let mut t = self.table.lock();
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
    pub fn check_unsafe(&self) -> Result<()> {
        if self.active.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let me = std::thread::current().id();
        let mode = THREAD_MODE.with(|m| m.get());
        let mut t = self.table.lock();
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
    pub fn forget(&self, h: Option<u32>) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut t = self.table.lock();
        let before = t.len();
        match h {
            Some(h) => drop(t.remove(&h)),
            None => t.clear(),
        }
        self.active.fetch_sub(before - t.len(), Ordering::AcqRel);
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
