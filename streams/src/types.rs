//! Handle and flag types shared by every layer (a leaf: imports nothing of this crate). The crate
//! root re-exports all of them.

/// A `cudaStream_t` value, as an integer.
pub type RawStream = u64;
/// A `cudaEvent_t` value, as an integer (never 0).
pub type RawEvent = u64;
/// The NULL stream: the legacy default stream.
pub const STREAM_LEGACY_DEFAULT: RawStream = 0;
/// `cudaStreamLegacy`.
pub const STREAM_LEGACY: RawStream = 1;
/// `cudaStreamPerThread`.
pub const STREAM_PER_THREAD: RawStream = 2;

/// `cudaStreamNonBlocking`.
pub const STREAM_NON_BLOCKING: u32 = 1;
/// `cudaEventBlockingSync`.
pub const EVENT_BLOCKING_SYNC: u32 = 1;
/// `cudaEventDisableTiming`.
pub const EVENT_DISABLE_TIMING: u32 = 2;
/// `cudaEventInterprocess`.
pub const EVENT_INTERPROCESS: u32 = 4;

/// Least (numerically greatest) stream priority, as `cudaDeviceGetStreamPriorityRange` reports.
pub const PRIORITY_LEAST: i32 = 0;
/// Greatest stream priority.
pub const PRIORITY_GREATEST: i32 = -5;

/// `cudaMemcpyKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum MemcpyKind {
    HostToHost = 0,
    HostToDevice = 1,
    DeviceToHost = 2,
    DeviceToDevice = 3,
    /// Inferred from the pointers (device pointers are this context's allocations).
    Default = 4,
}

impl MemcpyKind {
    /// Decode a `cudaMemcpyKind` value.
    pub fn from_raw(v: i32) -> Option<MemcpyKind> {
        Some(match v {
            0 => MemcpyKind::HostToHost,
            1 => MemcpyKind::HostToDevice,
            2 => MemcpyKind::DeviceToHost,
            3 => MemcpyKind::DeviceToDevice,
            4 => MemcpyKind::Default,
            _ => return None,
        })
    }
}
