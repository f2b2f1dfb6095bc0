//! The guard around every entry point, and the facade's logging.
//!
//! Every `extern "C"` function runs its body through [`guard`]: a panic inside (ours or one in
//! the runtime's table thunks) is caught and becomes `cudaErrorUnknown` with an error log, so no unwind ever
//! crosses the C boundary (which would abort the host program).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crate::codes::{cudaErrorNotSupported, cudaErrorUnknown, cudaError_t, cudaSuccess};

/// The result type of an entry point's body: `Err` carries the `cudaError_t` to return.
pub type CallResult = Result<(), cudaError_t>;

/// Install a stderr `tracing` subscriber (filter from `VGPU_LOG`, default `warn`) once, unless
/// the program already has one. Called on the first entry into the facade, never at load time.
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| vgpu_transport::logging::init("warn"));
}

/// Run an entry point's body: `Ok` → `cudaSuccess`, `Err(code)` → `code`, a panic →
/// `cudaErrorUnknown` (logged).
pub fn guard(name: &'static str, body: impl FnOnce() -> CallResult) -> cudaError_t {
    init_logging();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => cudaSuccess,
        Ok(Err(code)) => code,
        Err(p) => {
            let msg =
                p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str)).unwrap_or("(no message)");
            tracing::error!(target: "vgpu::cudart", "{name}: internal panic caught at the C boundary: {msg}; returning cudaErrorUnknown");
            cudaErrorUnknown
        }
    }
}

/// Like [`guard`] for entry points that return a value rather than a `cudaError_t`
/// (`cudaGetErrorString`, `cudaGetLastError`): `fallback` on a panic.
pub fn guard_value<T>(name: &'static str, fallback: T, body: impl FnOnce() -> T) -> T {
    init_logging();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(_) => {
            tracing::error!(target: "vgpu::cudart", "{name}: internal panic caught at the C boundary");
            fallback
        }
    }
}

/// An error the facade detected itself (a null out-pointer, an unknown enum value). It is
/// recorded as the thread's last error, as the real runtime does.
pub fn fail(code: cudaError_t) -> cudaError_t {
    vgpu_runtime_abi::rt::set_last_error(code);
    code
}

/// A call vgpu does not implement: logged on target `vgpu::cudart`, recorded, and answered with
/// `cudaErrorNotSupported`. Never a pretended success.
pub fn unsupported(name: &str, why: &str) -> cudaError_t {
    tracing::warn!(target: "vgpu::cudart", "{name} is not supported by vgpu ({why}); returning cudaErrorNotSupported");
    fail(cudaErrorNotSupported)
}

/// `Err(fail(code))` if `p` is null.
pub fn non_null<T>(p: *const T) -> CallResult {
    if p.is_null() {
        Err(fail(crate::codes::cudaErrorInvalidValue))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::cudaErrorInvalidValue;

    #[test]
    fn a_panic_becomes_cuda_error_unknown() {
        assert_eq!(guard("test", || panic!("boom")), cudaErrorUnknown);
        assert_eq!(guard_value("test", 7, || -> i32 { panic!("boom") }), 7);
        assert_eq!(guard("test", || Ok(())), cudaSuccess);
        assert_eq!(guard("test", || Err(cudaErrorInvalidValue)), cudaErrorInvalidValue);
    }

    #[test]
    fn unsupported_is_logged_recorded_and_not_success() {
        crate::tests::runtime_in_process();
        let _ = vgpu_runtime_abi::rt::get_last_error();
        assert_eq!(unsupported("cudaSomething", "testing"), cudaErrorNotSupported);
        assert_eq!(vgpu_runtime_abi::rt::get_last_error(), cudaErrorNotSupported);
        assert_eq!(non_null(std::ptr::null::<u8>()), Err(cudaErrorInvalidValue));
        assert_eq!(vgpu_runtime_abi::rt::get_last_error(), cudaErrorInvalidValue);
    }
}
