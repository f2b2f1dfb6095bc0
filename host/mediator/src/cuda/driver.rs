//! Loading the CUDA driver (`libcuda.so.1`) at run time through cudarc's `dynamic-loading`
//! bindings, so that `vgpu` builds and runs where no driver exists.
//!
//! cudarc panics when the library or a symbol is missing (on the first call of that function).
//! [`load`] therefore checks, once per process and without panicking, that the library opens and
//! that it exports every symbol the executor calls; only then does anything call into it. Each
//! step also runs under `catch_unwind`, so a panic inside cudarc becomes an error message.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

use cudarc::driver::sys;

use super::logic::code;

/// What `cudaStreamLegacy` is: the handle of the legacy default stream.
pub const CU_STREAM_LEGACY: sys::CUstream = 1usize as sys::CUstream;

/// The message for a machine without the driver.
pub const NO_DRIVER: &str =
    "libcuda.so.1 not found: install the NVIDIA driver (or put its libcuda.so.1 on LD_LIBRARY_PATH), or use --executor emu";

/// Every driver symbol the executor calls unconditionally (the names cudarc resolves).
pub const REQUIRED: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuDevicePrimaryCtxReset_v2",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuGetErrorName",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuMemHostRegister_v2",
    "cuMemHostUnregister",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemHostGetDevicePointer_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuMemsetD8Async",
    "cuStreamCreateWithPriority",
    "cuStreamDestroy_v2",
    "cuStreamQuery",
    "cuStreamWaitEvent",
    "cuStreamAddCallback",
    "cuStreamWaitValue32_v2",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuCtxGetStreamPriorityRange",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventElapsedTime",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuModuleGetGlobal_v2",
    "cuFuncGetAttribute",
    "cuFuncSetAttribute",
    "cuLaunchKernel",
    "cuLaunchCooperativeKernel",
    "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags",
    "cuGraphInstantiateWithFlags",
    "cuGraphExecUpdate_v2",
    "cuGraphLaunch",
    "cuGraphDestroy",
    "cuGraphExecDestroy",
];

/// Present from driver 12.4 on; without it parameter layouts come from the cubin.
const PARAM_INFO: &str = "cuFuncGetParamInfo";

/// What [`load`] found.
#[derive(Clone, Debug)]
pub struct Driver {
    /// `cuDriverGetVersion`, e.g. 12080.
    pub version: i32,
    /// The device the executor uses (`VGPU_CUDA_DEVICE`, default 0).
    pub ordinal: i32,
    pub device: sys::CUdevice,
    pub name: String,
    pub devices: i32,
    pub has_param_info: bool,
}

/// Load and initialise the driver once per process. Never panics; the error names the fix.
pub fn load() -> Result<Driver, String> {
    static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| match std::panic::catch_unwind(load_once) {
            Ok(r) => r,
            Err(_) => Err(format!("loading the CUDA driver failed inside cudarc ({NO_DRIVER})")),
        })
        .clone()
}

fn load_once() -> Result<Driver, String> {
    // SAFETY: `is_culib_present` only dlopens candidate names and closes them again.
    if !unsafe { sys::is_culib_present() } {
        return Err(NO_DRIVER.to_string());
    }
    // SAFETY: the library is present (checked above), so `culib` opens it instead of panicking;
    // loading libcuda runs only its own initialisers.
    let lib = unsafe { sys::culib() };
    for name in REQUIRED {
        // SAFETY: only the symbol's presence is checked; the pointer is not used.
        if unsafe { lib.get::<*const c_void>(name.as_bytes()) }.is_err() {
            return Err(format!(
                "the NVIDIA driver's libcuda lacks {name}: vgpu's cuda executor needs a driver for CUDA 12.0 or newer; update the driver, or use --executor emu"
            ));
        }
    }
    // SAFETY: as above, presence only.
    let has_param_info = unsafe { lib.get::<*const c_void>(PARAM_INFO.as_bytes()) }.is_ok();
    // SAFETY: cuInit is present (REQUIRED) and may be called any number of times.
    let r = unsafe { sys::cuInit(0) } as u32;
    if r != code::SUCCESS {
        return Err(match r {
            code::NO_DEVICE => "the NVIDIA driver sees no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE): check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --executor emu".to_string(),
            34 => "libcuda.so.1 is the CUDA toolkit's stub library, not a driver (CUDA_ERROR_STUB_LIBRARY): install the NVIDIA driver, or use --executor emu".to_string(),
            35 => "the NVIDIA driver is older than the CUDA runtime it was paired with (CUDA_ERROR_INSUFFICIENT_DRIVER): update the driver, or use --executor emu".to_string(),
            _ => format!("cuInit failed: {} ({r}); check the NVIDIA driver with nvidia-smi, or use --executor emu", error_name(r)),
        });
    }
    let mut version = 0;
    // SAFETY: valid out-pointer.
    let _ = unsafe { sys::cuDriverGetVersion(&mut version) };
    if version < 12000 {
        return Err(format!("the NVIDIA driver supports CUDA {}.{} only; vgpu's cuda executor needs 12.0 or newer: update the driver, or use --executor emu", version / 1000, version % 1000 / 10));
    }
    let mut devices = 0;
    // SAFETY: valid out-pointer.
    let r = unsafe { sys::cuDeviceGetCount(&mut devices) } as u32;
    if r != code::SUCCESS || devices <= 0 {
        return Err(
            "the NVIDIA driver reports no CUDA device: check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --executor emu".to_string()
        );
    }
    let ordinal = match std::env::var("VGPU_CUDA_DEVICE") {
        Ok(v) => v.trim().parse::<i32>().map_err(|_| format!("VGPU_CUDA_DEVICE={v:?} is not a device number"))?,
        Err(_) => 0,
    };
    if ordinal < 0 || ordinal >= devices {
        return Err(format!("VGPU_CUDA_DEVICE={ordinal}, but the driver has {devices} device(s) (0..{})", devices - 1));
    }
    let mut device = 0;
    // SAFETY: valid out-pointer, ordinal in range.
    let r = unsafe { sys::cuDeviceGet(&mut device, ordinal) } as u32;
    if r != code::SUCCESS {
        return Err(format!("cuDeviceGet({ordinal}) failed: {} ({r})", error_name(r)));
    }
    Ok(Driver { version, ordinal, device, name: device_name(device), devices, has_param_info })
}

/// The device's name (`cuDeviceGetName`), or "" if the driver will not say.
pub fn device_name(dev: sys::CUdevice) -> String {
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: the buffer holds 256 bytes and we pass its length; the driver NUL-terminates.
    let r = unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as i32 - 1, dev) } as u32;
    if r != code::SUCCESS {
        return String::new();
    }
    // SAFETY: the last byte stays 0 (we passed len - 1), so the buffer holds a terminated string.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// `CUDA_ERROR_...` name of a result, for logs.
pub fn error_name(r: u32) -> String {
    let Some(res) = result_enum(r) else { return format!("CUresult {r}") };
    let mut p: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: valid out-pointer; the driver returns a static string or an error.
    let ok = unsafe { sys::cuGetErrorName(res, &mut p) } as u32 == code::SUCCESS;
    if !ok || p.is_null() {
        return format!("CUresult {r}");
    }
    // SAFETY: the driver returned a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A `CUresult` value as cudarc's enum, for the few calls that take one; `None` for a value the
/// bindings do not know (transmuting it would be undefined behaviour).
fn result_enum(r: u32) -> Option<sys::CUresult> {
    use sys::CUresult as R;
    Some(match r {
        0 => R::CUDA_SUCCESS,
        1 => R::CUDA_ERROR_INVALID_VALUE,
        2 => R::CUDA_ERROR_OUT_OF_MEMORY,
        100 => R::CUDA_ERROR_NO_DEVICE,
        200 => R::CUDA_ERROR_INVALID_IMAGE,
        209 => R::CUDA_ERROR_NO_BINARY_FOR_GPU,
        218 => R::CUDA_ERROR_INVALID_PTX,
        222 => R::CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
        400 => R::CUDA_ERROR_INVALID_HANDLE,
        500 => R::CUDA_ERROR_NOT_FOUND,
        600 => R::CUDA_ERROR_NOT_READY,
        700 => R::CUDA_ERROR_ILLEGAL_ADDRESS,
        701 => R::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
        719 => R::CUDA_ERROR_LAUNCH_FAILED,
        801 => R::CUDA_ERROR_NOT_SUPPORTED,
        900 => R::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
        901 => R::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        999 => R::CUDA_ERROR_UNKNOWN,
        _ => return None,
    })
}

/// `Ok` for `CUDA_SUCCESS`, else the result as a `u32`.
pub fn ck(r: sys::CUresult) -> Result<(), u32> {
    match r as u32 {
        code::SUCCESS => Ok(()),
        c => Err(c),
    }
}

/// A stream callback: runs on the driver's callback thread, after the work queued on the stream
/// before it, with the stream's status (0, or the context's error). It must not call the driver.
pub type Callback = Box<dyn FnOnce(u32) + Send>;

/// The C side of [`add_callback`]. `status` is declared `u32`: the driver may pass any
/// `CUresult`, including values cudarc's enum does not list.
unsafe extern "C" fn trampoline(_stream: sys::CUstream, status: u32, user: *mut c_void) {
    // SAFETY: `user` is the `Box<Callback>` leaked by `add_callback`; the driver calls each
    // callback exactly once, so it is reclaimed exactly once.
    let cb: Box<Callback> = unsafe { Box::from_raw(user.cast::<Callback>()) };
    // A panic must not unwind into the driver.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || cb(status)));
}

/// Queue `f` on `stream` (`cuStreamAddCallback`): it runs once everything queued before it on
/// the stream has finished, and receives the context's status. Unlike `cuLaunchHostFunc`, a
/// stream callback also runs after a device fault (with the error), so a completion is never
/// lost to one. On error `f` is dropped without running.
pub(crate) fn add_callback(stream: sys::CUstream, f: impl FnOnce(u32) + Send + 'static) -> Result<(), u32> {
    let boxed: Box<Callback> = Box::new(Box::new(f));
    let user = Box::into_raw(boxed);
    type Raw = unsafe extern "C" fn(sys::CUstream, u32, *mut c_void);
    type Typed = unsafe extern "C" fn(sys::CUstream, sys::CUresult, *mut c_void);
    let raw: Raw = trampoline;
    // SAFETY: CUresult is `#[repr(u32)]`, so both signatures have the same C ABI; declaring the
    // status as `u32` only widens the values the function accepts.
    let typed: Typed = unsafe { std::mem::transmute::<Raw, Typed>(raw) };
    // SAFETY: `typed` is a valid callback for the life of the process, `user` a live pointer the
    // callback reclaims; flags must be 0.
    let r = unsafe { sys::cuStreamAddCallback(stream, Some(typed), user.cast(), 0) };
    if let Err(c) = ck(r) {
        // SAFETY: the driver refused the callback, so it will never run: reclaim the box here.
        drop(unsafe { Box::from_raw(user) });
        return Err(c);
    }
    Ok(())
}

/// One device attribute, 0 if the driver will not say.
pub fn attr(dev: sys::CUdevice, a: sys::CUdevice_attribute) -> i32 {
    let mut v = 0;
    // SAFETY: valid out-pointer; `a` is a valid enum value.
    let r = unsafe { sys::cuDeviceGetAttribute(&mut v, a, dev) };
    if ck(r).is_err() {
        return 0;
    }
    v
}
