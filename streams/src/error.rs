//! CUDA error codes (`cudaError_t`, the numeric values of CUDA 12/13's `driver_types.h`), the
//! mapping from transport statuses, and the per-thread last error.
//!
//! # Which errors are sticky
//! CUDA distinguishes errors that leave the context usable (returned once, then cleared by
//! `cudaGetLastError`) from *sticky* ones that corrupt the context: every later call returns them
//! and nothing clears them. Here the context-corrupting events are losing the mediator
//! ([`CudaError::DevicesUnavailable`]), a protocol violation by the host
//! ([`CudaError::Unknown`]) and a kernel's fault on the device (`DeviceError` completions:
//! [`CudaError::IllegalAddress`] and the other launch faults); all are sticky per
//! [`crate::Context`]. Every other error,
//! including the deferred error of fire-and-forget work, is non-sticky: it is returned once (by the
//! call, or by the next synchronising call for deferred errors) and recorded as the calling
//! thread's last error.

use std::cell::Cell;
use std::sync::OnceLock;

use vgpu_transport::{Error, Status};

macro_rules! errors {
    ($($name:ident = $v:expr,)*) => {
        /// `cudaError_t`. The discriminants are the real CUDA values.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum CudaError {
            /// `cudaSuccess`: only ever returned by [`get_last_error`]-style queries.
            Success = 0,
            $($name = $v,)*
            /// `cudaErrorApiFailureBase` (not an error by itself).
            ApiFailureBase = 10000,
        }
        impl CudaError {
            /// Decode a `cudaError_t` value.
            pub fn from_code(v: i32) -> Option<CudaError> {
                match v { 0 => Some(CudaError::Success), $($v => Some(CudaError::$name),)* 10000 => Some(CudaError::ApiFailureBase), _ => None }
            }
            /// The CUDA enumerator name, e.g. `"cudaErrorInvalidValue"` (`cudaGetErrorName`).
            pub fn name(self) -> &'static str {
                match self {
                    CudaError::Success => "cudaSuccess",
                    $(CudaError::$name => concat!("cudaError", stringify!($name)),)*
                    CudaError::ApiFailureBase => "cudaErrorApiFailureBase",
                }
            }
        }
    };
}

errors! {
    InvalidValue = 1,
    MemoryAllocation = 2,
    InitializationError = 3,
    CudartUnloading = 4,
    ProfilerDisabled = 5,
    ProfilerNotInitialized = 6,
    ProfilerAlreadyStarted = 7,
    ProfilerAlreadyStopped = 8,
    InvalidConfiguration = 9,
    InvalidPitchValue = 12,
    InvalidSymbol = 13,
    InvalidHostPointer = 16,
    InvalidDevicePointer = 17,
    InvalidTexture = 18,
    InvalidTextureBinding = 19,
    InvalidChannelDescriptor = 20,
    InvalidMemcpyDirection = 21,
    AddressOfConstant = 22,
    TextureFetchFailed = 23,
    TextureNotBound = 24,
    SynchronizationError = 25,
    InvalidFilterSetting = 26,
    InvalidNormSetting = 27,
    MixedDeviceExecution = 28,
    NotYetImplemented = 31,
    MemoryValueTooLarge = 32,
    StubLibrary = 34,
    InsufficientDriver = 35,
    CallRequiresNewerDriver = 36,
    InvalidSurface = 37,
    DuplicateVariableName = 43,
    DuplicateTextureName = 44,
    DuplicateSurfaceName = 45,
    DevicesUnavailable = 46,
    IncompatibleDriverContext = 49,
    MissingConfiguration = 52,
    PriorLaunchFailure = 53,
    LaunchMaxDepthExceeded = 65,
    LaunchFileScopedTex = 66,
    LaunchFileScopedSurf = 67,
    SyncDepthExceeded = 68,
    LaunchPendingCountExceeded = 69,
    InvalidDeviceFunction = 98,
    NoDevice = 100,
    InvalidDevice = 101,
    DeviceNotLicensed = 102,
    SoftwareValidityNotEstablished = 103,
    StartupFailure = 127,
    InvalidKernelImage = 200,
    DeviceUninitialized = 201,
    MapBufferObjectFailed = 205,
    UnmapBufferObjectFailed = 206,
    ArrayIsMapped = 207,
    AlreadyMapped = 208,
    NoKernelImageForDevice = 209,
    AlreadyAcquired = 210,
    NotMapped = 211,
    NotMappedAsArray = 212,
    NotMappedAsPointer = 213,
    ECCUncorrectable = 214,
    UnsupportedLimit = 215,
    DeviceAlreadyInUse = 216,
    PeerAccessUnsupported = 217,
    InvalidPtx = 218,
    InvalidGraphicsContext = 219,
    NvlinkUncorrectable = 220,
    JitCompilerNotFound = 221,
    UnsupportedPtxVersion = 222,
    JitCompilationDisabled = 223,
    UnsupportedExecAffinity = 224,
    UnsupportedDevSideSync = 225,
    Contained = 226,
    InvalidSource = 300,
    FileNotFound = 301,
    SharedObjectSymbolNotFound = 302,
    SharedObjectInitFailed = 303,
    OperatingSystem = 304,
    InvalidResourceHandle = 400,
    IllegalState = 401,
    LossyQuery = 402,
    SymbolNotFound = 500,
    NotReady = 600,
    IllegalAddress = 700,
    LaunchOutOfResources = 701,
    LaunchTimeout = 702,
    LaunchIncompatibleTexturing = 703,
    PeerAccessAlreadyEnabled = 704,
    PeerAccessNotEnabled = 705,
    SetOnActiveProcess = 708,
    ContextIsDestroyed = 709,
    Assert = 710,
    TooManyPeers = 711,
    HostMemoryAlreadyRegistered = 712,
    HostMemoryNotRegistered = 713,
    HardwareStackError = 714,
    IllegalInstruction = 715,
    MisalignedAddress = 716,
    InvalidAddressSpace = 717,
    InvalidPc = 718,
    LaunchFailure = 719,
    CooperativeLaunchTooLarge = 720,
    TensorMemoryLeak = 721,
    NotPermitted = 800,
    NotSupported = 801,
    SystemNotReady = 802,
    SystemDriverMismatch = 803,
    CompatNotSupportedOnDevice = 804,
    MpsConnectionFailed = 805,
    MpsRpcFailure = 806,
    MpsServerNotReady = 807,
    MpsMaxClientsReached = 808,
    MpsMaxConnectionsReached = 809,
    MpsClientTerminated = 810,
    CdpNotSupported = 811,
    CdpVersionMismatch = 812,
    StreamCaptureUnsupported = 900,
    StreamCaptureInvalidated = 901,
    StreamCaptureMerge = 902,
    StreamCaptureUnmatched = 903,
    StreamCaptureUnjoined = 904,
    StreamCaptureIsolation = 905,
    StreamCaptureImplicit = 906,
    CapturedEvent = 907,
    StreamCaptureWrongThread = 908,
    Timeout = 909,
    GraphExecUpdateFailure = 910,
    ExternalDevice = 911,
    InvalidClusterSize = 912,
    FunctionNotLoaded = 913,
    InvalidResourceType = 914,
    InvalidResourceConfiguration = 915,
    Unknown = 999,
}

impl CudaError {
    /// The numeric `cudaError_t` value.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// A short description (`cudaGetErrorString`).
    pub fn description(self) -> &'static str {
        match self {
            CudaError::Success => "no error",
            CudaError::InvalidValue => "invalid argument",
            CudaError::MemoryAllocation => "out of memory",
            CudaError::InitializationError => "initialization error",
            CudaError::InvalidPitchValue => "invalid pitch argument",
            CudaError::InvalidDevicePointer => "invalid device pointer",
            CudaError::InvalidMemcpyDirection => "invalid copy direction for memcpy",
            CudaError::InsufficientDriver => "CUDA driver version is insufficient for CUDA runtime version",
            CudaError::DevicesUnavailable => "CUDA-capable device(s) is/are busy or unavailable",
            CudaError::NoDevice => "no CUDA-capable device is detected",
            CudaError::InvalidDevice => "invalid device ordinal",
            CudaError::InvalidResourceHandle => "invalid resource handle",
            CudaError::NotReady => "device not ready",
            CudaError::HostMemoryAlreadyRegistered => "part or all of the requested memory range is already mapped",
            CudaError::HostMemoryNotRegistered => "pointer does not correspond to a registered memory region",
            CudaError::NotSupported => "operation not supported",
            CudaError::NotPermitted => "operation not permitted",
            CudaError::Unknown => "unknown error",
            other => other.name(),
        }
    }

    /// Whether this error leaves the context unusable (see the module docs).
    ///
    /// Faults of a kernel on the device are sticky too, as CUDA documents for each of them:
    /// the real context is corrupt and the process must exit.
    pub fn is_sticky(self) -> bool {
        matches!(
            self,
            CudaError::DevicesUnavailable
                | CudaError::Unknown
                | CudaError::IllegalAddress
                | CudaError::LaunchTimeout
                | CudaError::Assert
                | CudaError::HardwareStackError
                | CudaError::IllegalInstruction
                | CudaError::MisalignedAddress
                | CudaError::InvalidAddressSpace
                | CudaError::InvalidPc
                | CudaError::LaunchFailure
        )
    }

    /// The CUDA error for a failed host call.
    ///
    /// - `InvalidDevicePointer` maps to `cudaErrorInvalidValue`, which is what CUDA 12 returns for
    ///   a bad pointer given to `cudaFree`, `cudaMemcpy` or `cudaMemset` (`cudaErrorInvalidDevicePointer`
    ///   is deprecated since CUDA 10.1 and no longer returned by those calls).
    /// - `EventNoTiming` maps to `cudaErrorInvalidResourceHandle`, as `cudaEventElapsedTime`
    ///   documents for events created with `cudaEventDisableTiming` or never recorded.
    /// - `QuotaExceeded` (no more streams or events) maps to `cudaErrorMemoryAllocation`, what
    ///   `cudaStreamCreate`/`cudaEventCreate` return when out of resources.
    pub fn from_status(s: Status) -> CudaError {
        match s {
            Status::Ok => CudaError::Success,
            Status::NotReady => CudaError::NotReady,
            Status::InvalidArgument | Status::InvalidDevicePointer | Status::InvalidWindowRange => CudaError::InvalidValue,
            Status::InvalidHandle | Status::EventNoTiming => CudaError::InvalidResourceHandle,
            Status::OutOfMemory | Status::QuotaExceeded => CudaError::MemoryAllocation,
            Status::NotSupported => CudaError::NotSupported,
            Status::InvalidConfiguration => CudaError::InvalidConfiguration,
            Status::NotFound => CudaError::InvalidDeviceFunction,
            Status::InvalidImage => CudaError::InvalidKernelImage,
            Status::NoKernelImage => CudaError::NoKernelImageForDevice,
            Status::LaunchOutOfResources => CudaError::LaunchOutOfResources,
            Status::CaptureUnsupported => CudaError::StreamCaptureUnsupported,
            Status::CaptureInvalidated => CudaError::StreamCaptureInvalidated,
            // The CUresult in the completion's aux word gives the precise error where the
            // caller has it; without it, the generic launch failure.
            Status::DeviceError => CudaError::LaunchFailure,
            Status::LinkDown => CudaError::DevicesUnavailable,
            Status::UnknownCall | Status::SeqInUse | Status::Protocol | Status::Unknown => CudaError::Unknown,
        }
    }

    /// The CUDA error for a transport error.
    ///
    /// - The mediator went away during the session: `cudaErrorDevicesUnavailable` (sticky): the
    ///   device this context used is gone.
    /// - The connection could not be set up (no mediator at the socket): `cudaErrorNoDevice`,
    ///   what the real runtime returns when the driver finds no usable device. We choose it over
    ///   `cudaErrorInsufficientDriver` because the "driver" side (this library) is present and
    ///   working; what is missing is the device behind it, and applications (llama.cpp, PyTorch)
    ///   treat `cudaErrorNoDevice` from `cudaGetDeviceCount` as "no GPU, fall back to CPU".
    /// - A protocol version mismatch: `cudaErrorInsufficientDriver`, the runtime/driver version
    ///   mismatch error, which is exactly the situation (guest and mediator releases differ).
    pub fn from_transport(e: &Error) -> CudaError {
        match e {
            // The device's own error (e.g. 700, an illegal address): the cudaError of the same
            // value, which CUDA defines for every launch-time fault.
            Error::Call { status: Status::DeviceError, code, .. } => match CudaError::from_code(*code as i32) {
                Some(e) if (700..800).contains(code) => e,
                _ => CudaError::LaunchFailure,
            },
            Error::Call { status, .. } => CudaError::from_status(*status),
            Error::LinkDown(_) => CudaError::DevicesUnavailable,
            Error::Protocol(_) => CudaError::Unknown,
            Error::Version(_) => CudaError::InsufficientDriver,
            Error::Setup(_) => CudaError::NoDevice,
            Error::WindowRange { .. } => CudaError::InvalidValue,
        }
    }
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.name(), self.code(), self.description())
    }
}

impl std::error::Error for CudaError {}

/// `Result` with [`CudaError`].
pub type Result<T, E = CudaError> = std::result::Result<T, E>;

thread_local! {
    static LAST: Cell<CudaError> = const { Cell::new(CudaError::Success) };
}

/// The sticky error of the process-wide context, set once by it (`Context::convert`) and never
/// cleared. Kept here, not asked of the context, so that this module stays a leaf (see the
/// crate's layering); reading it is one atomic load.
static PROCESS_STICKY: OnceLock<CudaError> = OnceLock::new();

/// The process-wide context became unusable with `e` (the first such error stays).
pub(crate) fn set_process_sticky(e: CudaError) {
    let _ = PROCESS_STICKY.set(e);
}

/// The sticky error of the process-wide context, if it has one.
pub(crate) fn process_sticky() -> Option<CudaError> {
    PROCESS_STICKY.get().copied()
}

/// Record `e` as the calling thread's last error (`cudaErrorNotReady` is not an error and is
/// never recorded, as in CUDA).
pub fn set_last_error(e: CudaError) {
    if e != CudaError::NotReady && e != CudaError::Success {
        LAST.with(|l| l.set(e));
    }
}

/// The calling thread's last error, cleared (`cudaGetLastError`). A sticky error of the
/// process-wide context is returned every time and never cleared.
pub fn get_last_error() -> CudaError {
    if let Some(e) = process_sticky() {
        return e;
    }
    LAST.with(|l| l.replace(CudaError::Success))
}

/// The calling thread's last error, not cleared (`cudaPeekAtLastError`).
pub fn peek_at_last_error() -> CudaError {
    if let Some(e) = process_sticky() {
        return e;
    }
    LAST.with(|l| l.get())
}

/// Record the error of `r` (if any) as the thread's last error and pass `r` on.
pub fn record<T>(r: Result<T>) -> Result<T> {
    if let Err(e) = &r {
        set_last_error(*e);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_faults_keep_their_code_and_are_sticky() {
        use vgpu_transport::Call;
        let fault = |code| Error::Call { call: Call::StreamSync, status: Status::DeviceError, code };
        assert_eq!(CudaError::from_transport(&fault(700)), CudaError::IllegalAddress);
        assert_eq!(CudaError::from_transport(&fault(716)), CudaError::MisalignedAddress);
        // A code outside the launch-fault range is not trusted as one.
        assert_eq!(CudaError::from_transport(&fault(1)), CudaError::LaunchFailure);
        assert!(CudaError::IllegalAddress.is_sticky() && CudaError::LaunchFailure.is_sticky());
        assert!(!CudaError::NotSupported.is_sticky() && !CudaError::InvalidConfiguration.is_sticky());
    }

    #[test]
    fn codes_are_the_cuda_values() {
        assert_eq!(CudaError::InvalidValue.code(), 1);
        assert_eq!(CudaError::MemoryAllocation.code(), 2);
        assert_eq!(CudaError::InsufficientDriver.code(), 35);
        assert_eq!(CudaError::NoDevice.code(), 100);
        assert_eq!(CudaError::InvalidDevice.code(), 101);
        assert_eq!(CudaError::InvalidResourceHandle.code(), 400);
        assert_eq!(CudaError::NotReady.code(), 600);
        assert_eq!(CudaError::NotSupported.code(), 801);
        assert_eq!(CudaError::Unknown.code(), 999);
        assert_eq!(CudaError::from_code(17), Some(CudaError::InvalidDevicePointer));
        assert_eq!(CudaError::from_code(12345), None);
        assert_eq!(CudaError::NoDevice.name(), "cudaErrorNoDevice");
    }

    #[test]
    fn last_error_is_per_thread_and_cleared_by_get() {
        set_last_error(CudaError::InvalidValue);
        set_last_error(CudaError::NotReady);
        assert_eq!(peek_at_last_error(), CudaError::InvalidValue);
        std::thread::spawn(|| assert_eq!(peek_at_last_error(), CudaError::Success)).join().unwrap();
        assert_eq!(get_last_error(), CudaError::InvalidValue);
        assert_eq!(get_last_error(), CudaError::Success);
    }
}
