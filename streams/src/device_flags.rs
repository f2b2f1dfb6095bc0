//! Device flags (`cudaSetDeviceFlags` / `cudaGetDeviceFlags`): process-wide, kept from before the
//! first connection, because a program sets them before its first device call and the schedule
//! flag picks how the connection's blocked callers wait.

use std::time::Duration;

use vgpu_transport::client::SpinPolicy;
use vgpu_transport::sync::{AtomicU32, Ordering};

use crate::error::{CudaError, Result};

/// `cudaDeviceScheduleAuto`.
pub const SCHEDULE_AUTO: u32 = 0x00;
/// `cudaDeviceScheduleSpin`.
pub const SCHEDULE_SPIN: u32 = 0x01;
/// `cudaDeviceScheduleYield`.
pub const SCHEDULE_YIELD: u32 = 0x02;
/// `cudaDeviceScheduleBlockingSync` (and the deprecated `cudaDeviceBlockingSync`).
pub const SCHEDULE_BLOCKING_SYNC: u32 = 0x04;
/// `cudaDeviceScheduleMask`.
pub const SCHEDULE_MASK: u32 = 0x07;
/// `cudaDeviceMapHost`.
pub const MAP_HOST: u32 = 0x08;
/// `cudaDeviceLmemResizeToMax`.
pub const LMEM_RESIZE_TO_MAX: u32 = 0x10;
/// `cudaDeviceSyncMemops`.
pub const SYNC_MEMOPS: u32 = 0x80;

static FLAGS: AtomicU32 = AtomicU32::new(0);

/// Check `flags` as CUDA does: one schedule value (auto, spin, yield or blocking sync) plus any of
/// `MapHost`, `LmemResizeToMax`, `SyncMemops`; anything else is `InvalidValue`.
pub fn validate(flags: u32) -> Result<()> {
    let known = SCHEDULE_MASK | MAP_HOST | LMEM_RESIZE_TO_MAX | SYNC_MEMOPS;
    let schedule_ok = matches!(flags & SCHEDULE_MASK, SCHEDULE_AUTO | SCHEDULE_SPIN | SCHEDULE_YIELD | SCHEDULE_BLOCKING_SYNC);
    if flags & !known != 0 || !schedule_ok {
        return Err(CudaError::InvalidValue);
    }
    Ok(())
}

/// Record validated flags.
pub(crate) fn set(flags: u32) {
    FLAGS.store(flags, Ordering::Relaxed);
}

/// The recorded flags (0 until set).
pub fn get() -> u32 {
    FLAGS.load(Ordering::Relaxed)
}

/// How a connection made with `flags` waits: `BlockingSync` never spins (blocked callers park
/// at once and are woken by the interrupt), `Spin` spins adaptively (the default budget), and
/// `Auto`/`Yield` keep the client's default (`None`).
pub(crate) fn spin_policy(flags: u32) -> Option<SpinPolicy> {
    match flags & SCHEDULE_MASK {
        SCHEDULE_BLOCKING_SYNC => Some(SpinPolicy::Never),
        SCHEDULE_SPIN => Some(SpinPolicy::Adaptive { max: Duration::from_micros(50) }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_validated_as_cuda_does() {
        for ok in [0, 1, 2, 4, 0x08, 0x10, 0x80, 0x04 | 0x08 | 0x10 | 0x80, 0x01 | 0x08] {
            assert_eq!(validate(ok), Ok(()), "{ok:#x}");
        }
        for bad in [3, 5, 6, 7, 0x20, 0x40, 0x100, 0x8000_0000, 0x0b] {
            assert_eq!(validate(bad), Err(CudaError::InvalidValue), "{bad:#x}");
        }
        assert_eq!(spin_policy(SCHEDULE_BLOCKING_SYNC | MAP_HOST), Some(SpinPolicy::Never));
        assert!(matches!(spin_policy(SCHEDULE_SPIN), Some(SpinPolicy::Adaptive { .. })));
        assert_eq!(spin_policy(SCHEDULE_AUTO), None);
        assert_eq!(spin_policy(SCHEDULE_YIELD), None);
    }
}
