//! Device `printf` output reaching the program's stdout. CUDA's runtime prints the device's
//! printf buffer at synchronising calls through C's `stdout`; the guest does the same with the
//! bytes the host holds for it (`Call::PrintfDrain`), so they interleave with the program's own
//! `printf` output as they do under CUDA.

use std::ffi::c_void;

extern "C" {
    /// C's `stdout` (`FILE *`), which glibc and musl export under this name.
    static stdout: *mut c_void;
    fn fwrite(ptr: *const c_void, size: usize, n: usize, stream: *mut c_void) -> usize;
    fn fflush(stream: *mut c_void) -> i32;
}

/// Write `bytes` to C's stdout and flush it.
pub(crate) fn write_stdout(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: `stdout` is initialised by the C library before any Rust code runs and is only
    // read here; `fwrite` reads exactly `bytes.len()` bytes from a valid slice; `fwrite` and
    // `fflush` lock the stream themselves, so concurrent calls from other threads are safe.
    unsafe {
        let out = stdout;
        if !out.is_null() {
            fwrite(bytes.as_ptr().cast(), 1, bytes.len(), out);
            fflush(out);
        }
    }
}
