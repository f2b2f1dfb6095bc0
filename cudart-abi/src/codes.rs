//! `cudaError_t`: every value of CUDA 12.9 / 13.0 `driver_types.h` (the two agree), with the name and
//! the message the real `cudaGetErrorName` / `cudaGetErrorString` return for it.

#![allow(non_upper_case_globals, non_camel_case_types)]

/// `cudaError_t` (a C enum: `int` on every ABI we target).
pub type cudaError_t = i32;

/// `cudaSuccess`.
pub const cudaSuccess: cudaError_t = 0;
pub const cudaErrorInvalidValue: cudaError_t = 1;
pub const cudaErrorMemoryAllocation: cudaError_t = 2;
pub const cudaErrorInitializationError: cudaError_t = 3;
pub const cudaErrorCudartUnloading: cudaError_t = 4;
pub const cudaErrorProfilerDisabled: cudaError_t = 5;
pub const cudaErrorProfilerNotInitialized: cudaError_t = 6;
pub const cudaErrorProfilerAlreadyStarted: cudaError_t = 7;
pub const cudaErrorProfilerAlreadyStopped: cudaError_t = 8;
pub const cudaErrorInvalidConfiguration: cudaError_t = 9;
pub const cudaErrorInvalidPitchValue: cudaError_t = 12;
pub const cudaErrorInvalidSymbol: cudaError_t = 13;
pub const cudaErrorInvalidHostPointer: cudaError_t = 16;
pub const cudaErrorInvalidDevicePointer: cudaError_t = 17;
pub const cudaErrorInvalidTexture: cudaError_t = 18;
pub const cudaErrorInvalidTextureBinding: cudaError_t = 19;
pub const cudaErrorInvalidChannelDescriptor: cudaError_t = 20;
pub const cudaErrorInvalidMemcpyDirection: cudaError_t = 21;
pub const cudaErrorAddressOfConstant: cudaError_t = 22;
pub const cudaErrorTextureFetchFailed: cudaError_t = 23;
pub const cudaErrorTextureNotBound: cudaError_t = 24;
pub const cudaErrorSynchronizationError: cudaError_t = 25;
pub const cudaErrorInvalidFilterSetting: cudaError_t = 26;
pub const cudaErrorInvalidNormSetting: cudaError_t = 27;
pub const cudaErrorMixedDeviceExecution: cudaError_t = 28;
pub const cudaErrorNotYetImplemented: cudaError_t = 31;
pub const cudaErrorMemoryValueTooLarge: cudaError_t = 32;
pub const cudaErrorStubLibrary: cudaError_t = 34;
pub const cudaErrorInsufficientDriver: cudaError_t = 35;
pub const cudaErrorCallRequiresNewerDriver: cudaError_t = 36;
pub const cudaErrorInvalidSurface: cudaError_t = 37;
pub const cudaErrorDuplicateVariableName: cudaError_t = 43;
pub const cudaErrorDuplicateTextureName: cudaError_t = 44;
pub const cudaErrorDuplicateSurfaceName: cudaError_t = 45;
pub const cudaErrorDevicesUnavailable: cudaError_t = 46;
pub const cudaErrorIncompatibleDriverContext: cudaError_t = 49;
pub const cudaErrorMissingConfiguration: cudaError_t = 52;
pub const cudaErrorPriorLaunchFailure: cudaError_t = 53;
pub const cudaErrorLaunchMaxDepthExceeded: cudaError_t = 65;
pub const cudaErrorLaunchFileScopedTex: cudaError_t = 66;
pub const cudaErrorLaunchFileScopedSurf: cudaError_t = 67;
pub const cudaErrorSyncDepthExceeded: cudaError_t = 68;
pub const cudaErrorLaunchPendingCountExceeded: cudaError_t = 69;
pub const cudaErrorInvalidDeviceFunction: cudaError_t = 98;
pub const cudaErrorNoDevice: cudaError_t = 100;
pub const cudaErrorInvalidDevice: cudaError_t = 101;
pub const cudaErrorDeviceNotLicensed: cudaError_t = 102;
pub const cudaErrorSoftwareValidityNotEstablished: cudaError_t = 103;
pub const cudaErrorStartupFailure: cudaError_t = 127;
pub const cudaErrorInvalidKernelImage: cudaError_t = 200;
pub const cudaErrorDeviceUninitialized: cudaError_t = 201;
pub const cudaErrorMapBufferObjectFailed: cudaError_t = 205;
pub const cudaErrorUnmapBufferObjectFailed: cudaError_t = 206;
pub const cudaErrorArrayIsMapped: cudaError_t = 207;
pub const cudaErrorAlreadyMapped: cudaError_t = 208;
pub const cudaErrorNoKernelImageForDevice: cudaError_t = 209;
pub const cudaErrorAlreadyAcquired: cudaError_t = 210;
pub const cudaErrorNotMapped: cudaError_t = 211;
pub const cudaErrorNotMappedAsArray: cudaError_t = 212;
pub const cudaErrorNotMappedAsPointer: cudaError_t = 213;
pub const cudaErrorECCUncorrectable: cudaError_t = 214;
pub const cudaErrorUnsupportedLimit: cudaError_t = 215;
pub const cudaErrorDeviceAlreadyInUse: cudaError_t = 216;
pub const cudaErrorPeerAccessUnsupported: cudaError_t = 217;
pub const cudaErrorInvalidPtx: cudaError_t = 218;
pub const cudaErrorInvalidGraphicsContext: cudaError_t = 219;
pub const cudaErrorNvlinkUncorrectable: cudaError_t = 220;
pub const cudaErrorJitCompilerNotFound: cudaError_t = 221;
pub const cudaErrorUnsupportedPtxVersion: cudaError_t = 222;
pub const cudaErrorJitCompilationDisabled: cudaError_t = 223;
pub const cudaErrorUnsupportedExecAffinity: cudaError_t = 224;
pub const cudaErrorUnsupportedDevSideSync: cudaError_t = 225;
pub const cudaErrorContained: cudaError_t = 226;
pub const cudaErrorInvalidSource: cudaError_t = 300;
pub const cudaErrorFileNotFound: cudaError_t = 301;
pub const cudaErrorSharedObjectSymbolNotFound: cudaError_t = 302;
pub const cudaErrorSharedObjectInitFailed: cudaError_t = 303;
pub const cudaErrorOperatingSystem: cudaError_t = 304;
pub const cudaErrorInvalidResourceHandle: cudaError_t = 400;
pub const cudaErrorIllegalState: cudaError_t = 401;
pub const cudaErrorLossyQuery: cudaError_t = 402;
pub const cudaErrorSymbolNotFound: cudaError_t = 500;
pub const cudaErrorNotReady: cudaError_t = 600;
pub const cudaErrorIllegalAddress: cudaError_t = 700;
pub const cudaErrorLaunchOutOfResources: cudaError_t = 701;
pub const cudaErrorLaunchTimeout: cudaError_t = 702;
pub const cudaErrorLaunchIncompatibleTexturing: cudaError_t = 703;
pub const cudaErrorPeerAccessAlreadyEnabled: cudaError_t = 704;
pub const cudaErrorPeerAccessNotEnabled: cudaError_t = 705;
pub const cudaErrorSetOnActiveProcess: cudaError_t = 708;
pub const cudaErrorContextIsDestroyed: cudaError_t = 709;
pub const cudaErrorAssert: cudaError_t = 710;
pub const cudaErrorTooManyPeers: cudaError_t = 711;
pub const cudaErrorHostMemoryAlreadyRegistered: cudaError_t = 712;
pub const cudaErrorHostMemoryNotRegistered: cudaError_t = 713;
pub const cudaErrorHardwareStackError: cudaError_t = 714;
pub const cudaErrorIllegalInstruction: cudaError_t = 715;
pub const cudaErrorMisalignedAddress: cudaError_t = 716;
pub const cudaErrorInvalidAddressSpace: cudaError_t = 717;
pub const cudaErrorInvalidPc: cudaError_t = 718;
pub const cudaErrorLaunchFailure: cudaError_t = 719;
pub const cudaErrorCooperativeLaunchTooLarge: cudaError_t = 720;
pub const cudaErrorTensorMemoryLeak: cudaError_t = 721;
pub const cudaErrorNotPermitted: cudaError_t = 800;
pub const cudaErrorNotSupported: cudaError_t = 801;
pub const cudaErrorSystemNotReady: cudaError_t = 802;
pub const cudaErrorSystemDriverMismatch: cudaError_t = 803;
pub const cudaErrorCompatNotSupportedOnDevice: cudaError_t = 804;
pub const cudaErrorMpsConnectionFailed: cudaError_t = 805;
pub const cudaErrorMpsRpcFailure: cudaError_t = 806;
pub const cudaErrorMpsServerNotReady: cudaError_t = 807;
pub const cudaErrorMpsMaxClientsReached: cudaError_t = 808;
pub const cudaErrorMpsMaxConnectionsReached: cudaError_t = 809;
pub const cudaErrorMpsClientTerminated: cudaError_t = 810;
pub const cudaErrorCdpNotSupported: cudaError_t = 811;
pub const cudaErrorCdpVersionMismatch: cudaError_t = 812;
pub const cudaErrorStreamCaptureUnsupported: cudaError_t = 900;
pub const cudaErrorStreamCaptureInvalidated: cudaError_t = 901;
pub const cudaErrorStreamCaptureMerge: cudaError_t = 902;
pub const cudaErrorStreamCaptureUnmatched: cudaError_t = 903;
pub const cudaErrorStreamCaptureUnjoined: cudaError_t = 904;
pub const cudaErrorStreamCaptureIsolation: cudaError_t = 905;
pub const cudaErrorStreamCaptureImplicit: cudaError_t = 906;
pub const cudaErrorCapturedEvent: cudaError_t = 907;
pub const cudaErrorStreamCaptureWrongThread: cudaError_t = 908;
pub const cudaErrorTimeout: cudaError_t = 909;
pub const cudaErrorGraphExecUpdateFailure: cudaError_t = 910;
pub const cudaErrorExternalDevice: cudaError_t = 911;
pub const cudaErrorInvalidClusterSize: cudaError_t = 912;
pub const cudaErrorFunctionNotLoaded: cudaError_t = 913;
pub const cudaErrorInvalidResourceType: cudaError_t = 914;
pub const cudaErrorInvalidResourceConfiguration: cudaError_t = 915;
pub const cudaErrorUnknown: cudaError_t = 999;
pub const cudaErrorApiFailureBase: cudaError_t = 10000;

/// `(code, name, message)` for every known code, in header order.
pub const ERRORS: &[(cudaError_t, &str, &str)] = &[
    (cudaSuccess, "cudaSuccess\0", "no error\0"),
    (cudaErrorInvalidValue, "cudaErrorInvalidValue\0", "invalid argument\0"),
    (cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation\0", "out of memory\0"),
    (cudaErrorInitializationError, "cudaErrorInitializationError\0", "initialization error\0"),
    (cudaErrorCudartUnloading, "cudaErrorCudartUnloading\0", "driver shutting down\0"),
    (cudaErrorProfilerDisabled, "cudaErrorProfilerDisabled\0", "profiler disabled while using external profiling tool\0"),
    (cudaErrorProfilerNotInitialized, "cudaErrorProfilerNotInitialized\0", "profiler not initialized: call cudaProfilerInitialize()\0"),
    (cudaErrorProfilerAlreadyStarted, "cudaErrorProfilerAlreadyStarted\0", "profiler already started\0"),
    (cudaErrorProfilerAlreadyStopped, "cudaErrorProfilerAlreadyStopped\0", "profiler already stopped\0"),
    (cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration\0", "invalid configuration argument\0"),
    (cudaErrorInvalidPitchValue, "cudaErrorInvalidPitchValue\0", "invalid pitch argument\0"),
    (cudaErrorInvalidSymbol, "cudaErrorInvalidSymbol\0", "invalid device symbol\0"),
    (cudaErrorInvalidHostPointer, "cudaErrorInvalidHostPointer\0", "invalid host pointer\0"),
    (cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer\0", "invalid device pointer\0"),
    (cudaErrorInvalidTexture, "cudaErrorInvalidTexture\0", "invalid texture reference\0"),
    (cudaErrorInvalidTextureBinding, "cudaErrorInvalidTextureBinding\0", "texture is not bound to a pointer\0"),
    (cudaErrorInvalidChannelDescriptor, "cudaErrorInvalidChannelDescriptor\0", "invalid channel descriptor\0"),
    (cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection\0", "invalid copy direction for memcpy\0"),
    (cudaErrorAddressOfConstant, "cudaErrorAddressOfConstant\0", "invalid address of constant\0"),
    (cudaErrorTextureFetchFailed, "cudaErrorTextureFetchFailed\0", "fetch from texture failed\0"),
    (cudaErrorTextureNotBound, "cudaErrorTextureNotBound\0", "cannot fetch from a texture that is not bound\0"),
    (cudaErrorSynchronizationError, "cudaErrorSynchronizationError\0", "incorrect use of __syncthreads()\0"),
    (cudaErrorInvalidFilterSetting, "cudaErrorInvalidFilterSetting\0", "linear filtering not supported for non-float type\0"),
    (cudaErrorInvalidNormSetting, "cudaErrorInvalidNormSetting\0", "read as normalized float not supported for data type\0"),
    (cudaErrorMixedDeviceExecution, "cudaErrorMixedDeviceExecution\0", "device emulation mode and device execution mode cannot be mixed\0"),
    (cudaErrorNotYetImplemented, "cudaErrorNotYetImplemented\0", "feature not yet implemented\0"),
    (cudaErrorMemoryValueTooLarge, "cudaErrorMemoryValueTooLarge\0", "memory size or pointer value too large to fit in 32 bit\0"),
    (cudaErrorStubLibrary, "cudaErrorStubLibrary\0", "CUDA driver is a stub library\0"),
    (cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver\0", "CUDA driver version is insufficient for CUDA runtime version\0"),
    (cudaErrorCallRequiresNewerDriver, "cudaErrorCallRequiresNewerDriver\0", "API call is not supported in the installed CUDA driver\0"),
    (cudaErrorInvalidSurface, "cudaErrorInvalidSurface\0", "invalid surface reference\0"),
    (cudaErrorDuplicateVariableName, "cudaErrorDuplicateVariableName\0", "duplicate global variable looked up by string name\0"),
    (cudaErrorDuplicateTextureName, "cudaErrorDuplicateTextureName\0", "duplicate texture looked up by string name\0"),
    (cudaErrorDuplicateSurfaceName, "cudaErrorDuplicateSurfaceName\0", "duplicate surface looked up by string name\0"),
    (cudaErrorDevicesUnavailable, "cudaErrorDevicesUnavailable\0", "CUDA-capable device(s) is/are busy or unavailable\0"),
    (cudaErrorIncompatibleDriverContext, "cudaErrorIncompatibleDriverContext\0", "incompatible driver context\0"),
    (cudaErrorMissingConfiguration, "cudaErrorMissingConfiguration\0", "__global__ function call is not configured\0"),
    (cudaErrorPriorLaunchFailure, "cudaErrorPriorLaunchFailure\0", "unspecified launch failure in prior launch\0"),
    (cudaErrorLaunchMaxDepthExceeded, "cudaErrorLaunchMaxDepthExceeded\0", "launch would exceed maximum depth of nested launches\0"),
    (
        cudaErrorLaunchFileScopedTex,
        "cudaErrorLaunchFileScopedTex\0",
        "launch failed because kernel uses unsupported, file-scoped textures (texture objects are supported)\0",
    ),
    (
        cudaErrorLaunchFileScopedSurf,
        "cudaErrorLaunchFileScopedSurf\0",
        "launch failed because kernel uses unsupported, file-scoped surfaces (surface objects are supported)\0",
    ),
    (
        cudaErrorSyncDepthExceeded,
        "cudaErrorSyncDepthExceeded\0",
        "cudaDeviceSynchronize failed because caller's grid depth exceeds cudaLimitDevRuntimeSyncDepth\0",
    ),
    (
        cudaErrorLaunchPendingCountExceeded,
        "cudaErrorLaunchPendingCountExceeded\0",
        "launch failed because launch would exceed cudaLimitDevRuntimePendingLaunchCount\0",
    ),
    (cudaErrorInvalidDeviceFunction, "cudaErrorInvalidDeviceFunction\0", "invalid device function\0"),
    (cudaErrorNoDevice, "cudaErrorNoDevice\0", "no CUDA-capable device is detected\0"),
    (cudaErrorInvalidDevice, "cudaErrorInvalidDevice\0", "invalid device ordinal\0"),
    (cudaErrorDeviceNotLicensed, "cudaErrorDeviceNotLicensed\0", "device doesn't have valid Grid license\0"),
    (cudaErrorSoftwareValidityNotEstablished, "cudaErrorSoftwareValidityNotEstablished\0", "integrity checks failed\0"),
    (cudaErrorStartupFailure, "cudaErrorStartupFailure\0", "startup failure in cuda runtime\0"),
    (cudaErrorInvalidKernelImage, "cudaErrorInvalidKernelImage\0", "device kernel image is invalid\0"),
    (cudaErrorDeviceUninitialized, "cudaErrorDeviceUninitialized\0", "invalid device context\0"),
    (cudaErrorMapBufferObjectFailed, "cudaErrorMapBufferObjectFailed\0", "mapping of buffer object failed\0"),
    (cudaErrorUnmapBufferObjectFailed, "cudaErrorUnmapBufferObjectFailed\0", "unmapping of buffer object failed\0"),
    (cudaErrorArrayIsMapped, "cudaErrorArrayIsMapped\0", "array is mapped\0"),
    (cudaErrorAlreadyMapped, "cudaErrorAlreadyMapped\0", "resource already mapped\0"),
    (cudaErrorNoKernelImageForDevice, "cudaErrorNoKernelImageForDevice\0", "no kernel image is available for execution on the device\0"),
    (cudaErrorAlreadyAcquired, "cudaErrorAlreadyAcquired\0", "resource already acquired\0"),
    (cudaErrorNotMapped, "cudaErrorNotMapped\0", "resource not mapped\0"),
    (cudaErrorNotMappedAsArray, "cudaErrorNotMappedAsArray\0", "resource not mapped as array\0"),
    (cudaErrorNotMappedAsPointer, "cudaErrorNotMappedAsPointer\0", "resource not mapped as pointer\0"),
    (cudaErrorECCUncorrectable, "cudaErrorECCUncorrectable\0", "uncorrectable ECC error encountered\0"),
    (cudaErrorUnsupportedLimit, "cudaErrorUnsupportedLimit\0", "limit is not supported on this architecture\0"),
    (cudaErrorDeviceAlreadyInUse, "cudaErrorDeviceAlreadyInUse\0", "exclusive-thread device already in use by a different thread\0"),
    (cudaErrorPeerAccessUnsupported, "cudaErrorPeerAccessUnsupported\0", "peer access is not supported between these two devices\0"),
    (cudaErrorInvalidPtx, "cudaErrorInvalidPtx\0", "a PTX JIT compilation failed\0"),
    (cudaErrorInvalidGraphicsContext, "cudaErrorInvalidGraphicsContext\0", "invalid OpenGL or DirectX context\0"),
    (cudaErrorNvlinkUncorrectable, "cudaErrorNvlinkUncorrectable\0", "uncorrectable NVLink error detected during the execution\0"),
    (cudaErrorJitCompilerNotFound, "cudaErrorJitCompilerNotFound\0", "PTX JIT compiler library not found\0"),
    (cudaErrorUnsupportedPtxVersion, "cudaErrorUnsupportedPtxVersion\0", "the provided PTX was compiled with an unsupported toolchain.\0"),
    (cudaErrorJitCompilationDisabled, "cudaErrorJitCompilationDisabled\0", "PTX JIT compilation was disabled\0"),
    (cudaErrorUnsupportedExecAffinity, "cudaErrorUnsupportedExecAffinity\0", "the provided execution affinity is not supported\0"),
    (
        cudaErrorUnsupportedDevSideSync,
        "cudaErrorUnsupportedDevSideSync\0",
        "the provided PTX contains unsupported call to cudaDeviceSynchronize\0",
    ),
    (cudaErrorContained, "cudaErrorContained\0", "Invalid access of peer GPU memory over nvlink or a hardware error\0"),
    (cudaErrorInvalidSource, "cudaErrorInvalidSource\0", "device kernel image is invalid\0"),
    (cudaErrorFileNotFound, "cudaErrorFileNotFound\0", "file not found\0"),
    (cudaErrorSharedObjectSymbolNotFound, "cudaErrorSharedObjectSymbolNotFound\0", "shared object symbol not found\0"),
    (cudaErrorSharedObjectInitFailed, "cudaErrorSharedObjectInitFailed\0", "shared object initialization failed\0"),
    (cudaErrorOperatingSystem, "cudaErrorOperatingSystem\0", "OS call failed or operation not supported on this OS\0"),
    (cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle\0", "invalid resource handle\0"),
    (cudaErrorIllegalState, "cudaErrorIllegalState\0", "the operation cannot be performed in the present state\0"),
    (cudaErrorLossyQuery, "cudaErrorLossyQuery\0", "attempted introspection would be semantically lossy\0"),
    (cudaErrorSymbolNotFound, "cudaErrorSymbolNotFound\0", "named symbol not found\0"),
    (cudaErrorNotReady, "cudaErrorNotReady\0", "device not ready\0"),
    (cudaErrorIllegalAddress, "cudaErrorIllegalAddress\0", "an illegal memory access was encountered\0"),
    (cudaErrorLaunchOutOfResources, "cudaErrorLaunchOutOfResources\0", "too many resources requested for launch\0"),
    (cudaErrorLaunchTimeout, "cudaErrorLaunchTimeout\0", "the launch timed out and was terminated\0"),
    (cudaErrorLaunchIncompatibleTexturing, "cudaErrorLaunchIncompatibleTexturing\0", "launch uses incompatible texturing mode\0"),
    (cudaErrorPeerAccessAlreadyEnabled, "cudaErrorPeerAccessAlreadyEnabled\0", "peer access is already enabled\0"),
    (cudaErrorPeerAccessNotEnabled, "cudaErrorPeerAccessNotEnabled\0", "peer access has not been enabled\0"),
    (cudaErrorSetOnActiveProcess, "cudaErrorSetOnActiveProcess\0", "cannot set while device is active in this process\0"),
    (cudaErrorContextIsDestroyed, "cudaErrorContextIsDestroyed\0", "context is destroyed\0"),
    (cudaErrorAssert, "cudaErrorAssert\0", "device-side assert triggered\0"),
    (cudaErrorTooManyPeers, "cudaErrorTooManyPeers\0", "peer mapping resources exhausted\0"),
    (
        cudaErrorHostMemoryAlreadyRegistered,
        "cudaErrorHostMemoryAlreadyRegistered\0",
        "part or all of the requested memory range is already mapped\0",
    ),
    (cudaErrorHostMemoryNotRegistered, "cudaErrorHostMemoryNotRegistered\0", "pointer does not correspond to a registered memory region\0"),
    (cudaErrorHardwareStackError, "cudaErrorHardwareStackError\0", "hardware stack error\0"),
    (cudaErrorIllegalInstruction, "cudaErrorIllegalInstruction\0", "an illegal instruction was encountered\0"),
    (cudaErrorMisalignedAddress, "cudaErrorMisalignedAddress\0", "misaligned address\0"),
    (cudaErrorInvalidAddressSpace, "cudaErrorInvalidAddressSpace\0", "operation not supported on global/shared address space\0"),
    (cudaErrorInvalidPc, "cudaErrorInvalidPc\0", "invalid program counter\0"),
    (cudaErrorLaunchFailure, "cudaErrorLaunchFailure\0", "unspecified launch failure\0"),
    (cudaErrorCooperativeLaunchTooLarge, "cudaErrorCooperativeLaunchTooLarge\0", "too many blocks in cooperative launch\0"),
    (cudaErrorTensorMemoryLeak, "cudaErrorTensorMemoryLeak\0", "tensor memory not completely freed\0"),
    (cudaErrorNotPermitted, "cudaErrorNotPermitted\0", "operation not permitted\0"),
    (cudaErrorNotSupported, "cudaErrorNotSupported\0", "operation not supported\0"),
    (cudaErrorSystemNotReady, "cudaErrorSystemNotReady\0", "system not yet initialized\0"),
    (cudaErrorSystemDriverMismatch, "cudaErrorSystemDriverMismatch\0", "system has unsupported display driver / cuda driver combination\0"),
    (
        cudaErrorCompatNotSupportedOnDevice,
        "cudaErrorCompatNotSupportedOnDevice\0",
        "forward compatibility was attempted on non supported HW\0",
    ),
    (
        cudaErrorMpsConnectionFailed,
        "cudaErrorMpsConnectionFailed\0",
        "MPS client failed to connect to the MPS control daemon or the MPS server\0",
    ),
    (cudaErrorMpsRpcFailure, "cudaErrorMpsRpcFailure\0", "the remote procedural call between the MPS server and the MPS client failed\0"),
    (cudaErrorMpsServerNotReady, "cudaErrorMpsServerNotReady\0", "MPS server is not ready to accept new MPS client requests\0"),
    (
        cudaErrorMpsMaxClientsReached,
        "cudaErrorMpsMaxClientsReached\0",
        "the hardware resources required to create MPS client have been exhausted\0",
    ),
    (
        cudaErrorMpsMaxConnectionsReached,
        "cudaErrorMpsMaxConnectionsReached\0",
        "the hardware resources required to support device connections have been exhausted\0",
    ),
    (cudaErrorMpsClientTerminated, "cudaErrorMpsClientTerminated\0", "the MPS client has been terminated by the server\0"),
    (
        cudaErrorCdpNotSupported,
        "cudaErrorCdpNotSupported\0",
        "is using CUDA Dynamic Parallelism, but the current configuration, like MPS, does not support it\0",
    ),
    (
        cudaErrorCdpVersionMismatch,
        "cudaErrorCdpVersionMismatch\0",
        "unsupported interaction between different versions of CUDA Dynamic Parallelism\0",
    ),
    (cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported\0", "operation not permitted when stream is capturing\0"),
    (cudaErrorStreamCaptureInvalidated, "cudaErrorStreamCaptureInvalidated\0", "operation failed due to a previous error during capture\0"),
    (cudaErrorStreamCaptureMerge, "cudaErrorStreamCaptureMerge\0", "operation would result in a merge of separate capture sequences\0"),
    (cudaErrorStreamCaptureUnmatched, "cudaErrorStreamCaptureUnmatched\0", "capture was not ended in the same stream as it began\0"),
    (cudaErrorStreamCaptureUnjoined, "cudaErrorStreamCaptureUnjoined\0", "capturing stream has unjoined work\0"),
    (cudaErrorStreamCaptureIsolation, "cudaErrorStreamCaptureIsolation\0", "dependency created on uncaptured work in another stream\0"),
    (
        cudaErrorStreamCaptureImplicit,
        "cudaErrorStreamCaptureImplicit\0",
        "operation would make the legacy stream depend on a capturing blocking stream\0",
    ),
    (cudaErrorCapturedEvent, "cudaErrorCapturedEvent\0", "operation not permitted on an event last recorded in a capturing stream\0"),
    (
        cudaErrorStreamCaptureWrongThread,
        "cudaErrorStreamCaptureWrongThread\0",
        "attempt to terminate a thread-local capture sequence from another thread\0",
    ),
    (cudaErrorTimeout, "cudaErrorTimeout\0", "wait operation timed out\0"),
    (
        cudaErrorGraphExecUpdateFailure,
        "cudaErrorGraphExecUpdateFailure\0",
        "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update\0",
    ),
    (cudaErrorExternalDevice, "cudaErrorExternalDevice\0", "an async error has occured in external entity outside of CUDA\0"),
    (cudaErrorInvalidClusterSize, "cudaErrorInvalidClusterSize\0", "a kernel launch error has occurred due to cluster misconfiguration\0"),
    (
        cudaErrorFunctionNotLoaded,
        "cudaErrorFunctionNotLoaded\0",
        "the function handle is not loaded when calling an API that requires a loaded function\0",
    ),
    (
        cudaErrorInvalidResourceType,
        "cudaErrorInvalidResourceType\0",
        "one or more resources passed in are not valid resource types for the operation\0",
    ),
    (
        cudaErrorInvalidResourceConfiguration,
        "cudaErrorInvalidResourceConfiguration\0",
        "one or more resources are insufficient or non-applicable for the operation\0",
    ),
    (cudaErrorUnknown, "cudaErrorUnknown\0", "unknown error\0"),
    (cudaErrorApiFailureBase, "cudaErrorApiFailureBase\0", "api failure base\0"),
];

/// What the real runtime answers for a value it does not know, as name and as message.
pub const UNRECOGNIZED: &str = "unrecognized error code\0";

fn find(code: cudaError_t) -> Option<&'static (cudaError_t, &'static str, &'static str)> {
    ERRORS.iter().find(|e| e.0 == code)
}

/// `cudaGetErrorName`: a static NUL-terminated string.
pub fn name(code: cudaError_t) -> *const std::ffi::c_char {
    find(code).map_or(UNRECOGNIZED, |e| e.1).as_ptr().cast()
}

/// `cudaGetErrorString`: a static NUL-terminated string.
pub fn message(code: cudaError_t) -> *const std::ffi::c_char {
    find(code).map_or(UNRECOGNIZED, |e| e.2).as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn every_string_is_one_c_string_and_codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &(code, n, m) in ERRORS {
            assert!(seen.insert(code), "code {code} twice");
            for s in [n, m] {
                let c = CStr::from_bytes_with_nul(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e}"));
                assert!(!c.to_bytes().is_empty());
            }
            assert!(n.starts_with("cuda"), "{n}");
        }
        assert_eq!(ERRORS.len(), 134);
    }

    #[test]
    fn names_and_messages_match_the_real_runtime() {
        // SAFETY: `name`/`message` return pointers to static NUL-terminated strings.
        let s = |p: *const std::ffi::c_char| unsafe { CStr::from_ptr(p) }.to_str().expect("utf-8").to_string();
        assert_eq!(s(name(0)), "cudaSuccess");
        assert_eq!(s(message(0)), "no error");
        assert_eq!(s(name(cudaErrorInvalidValue)), "cudaErrorInvalidValue");
        assert_eq!(s(message(cudaErrorInvalidValue)), "invalid argument");
        assert_eq!(s(message(cudaErrorMemoryAllocation)), "out of memory");
        assert_eq!(s(name(cudaErrorNotSupported)), "cudaErrorNotSupported");
        assert_eq!(s(message(cudaErrorNotSupported)), "operation not supported");
        assert_eq!(s(name(12345)), "unrecognized error code");
        assert_eq!(s(message(-1)), "unrecognized error code");
    }

    #[test]
    fn agrees_with_vgpu_streams() {
        for &(code, n, _) in ERRORS {
            let e = vgpu_streams::CudaError::from_code(code).unwrap_or_else(|| panic!("vgpu-streams lacks {n}"));
            assert_eq!(e.code(), code);
            assert_eq!(format!("{}\0", e.name()), n);
        }
    }
}
