//! `cudaDeviceProp` exactly as CUDA 12.9 (`cuda_runtime_api` 12090, 1032 bytes) and CUDA 13.0
//! (13000, 1008 bytes) lay it out, field for field (generated from each version's `driver_types.h`
//! by compiling `offsetof` of every field with gcc; the asserts below pin every offset).

#![allow(non_snake_case)]

use std::ffi::c_char;
use std::mem::{offset_of, size_of};

/// `struct cudaDeviceProp` of CUDA 12.x (1032 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeviceProp12 {
    pub name: [c_char; 256],
    pub uuid: [u8; 16],
    pub luid: [c_char; 8],
    pub luidDeviceNodeMask: u32,
    pub totalGlobalMem: usize,
    pub sharedMemPerBlock: usize,
    pub regsPerBlock: i32,
    pub warpSize: i32,
    pub memPitch: usize,
    pub maxThreadsPerBlock: i32,
    pub maxThreadsDim: [i32; 3],
    pub maxGridSize: [i32; 3],
    pub clockRate: i32,
    pub totalConstMem: usize,
    pub major: i32,
    pub minor: i32,
    pub textureAlignment: usize,
    pub texturePitchAlignment: usize,
    pub deviceOverlap: i32,
    pub multiProcessorCount: i32,
    pub kernelExecTimeoutEnabled: i32,
    pub integrated: i32,
    pub canMapHostMemory: i32,
    pub computeMode: i32,
    pub maxTexture1D: i32,
    pub maxTexture1DMipmap: i32,
    pub maxTexture1DLinear: i32,
    pub maxTexture2D: [i32; 2],
    pub maxTexture2DMipmap: [i32; 2],
    pub maxTexture2DLinear: [i32; 3],
    pub maxTexture2DGather: [i32; 2],
    pub maxTexture3D: [i32; 3],
    pub maxTexture3DAlt: [i32; 3],
    pub maxTextureCubemap: i32,
    pub maxTexture1DLayered: [i32; 2],
    pub maxTexture2DLayered: [i32; 3],
    pub maxTextureCubemapLayered: [i32; 2],
    pub maxSurface1D: i32,
    pub maxSurface2D: [i32; 2],
    pub maxSurface3D: [i32; 3],
    pub maxSurface1DLayered: [i32; 2],
    pub maxSurface2DLayered: [i32; 3],
    pub maxSurfaceCubemap: i32,
    pub maxSurfaceCubemapLayered: [i32; 2],
    pub surfaceAlignment: usize,
    pub concurrentKernels: i32,
    pub ECCEnabled: i32,
    pub pciBusID: i32,
    pub pciDeviceID: i32,
    pub pciDomainID: i32,
    pub tccDriver: i32,
    pub asyncEngineCount: i32,
    pub unifiedAddressing: i32,
    pub memoryClockRate: i32,
    pub memoryBusWidth: i32,
    pub l2CacheSize: i32,
    pub persistingL2CacheMaxSize: i32,
    pub maxThreadsPerMultiProcessor: i32,
    pub streamPrioritiesSupported: i32,
    pub globalL1CacheSupported: i32,
    pub localL1CacheSupported: i32,
    pub sharedMemPerMultiprocessor: usize,
    pub regsPerMultiprocessor: i32,
    pub managedMemory: i32,
    pub isMultiGpuBoard: i32,
    pub multiGpuBoardGroupID: i32,
    pub hostNativeAtomicSupported: i32,
    pub singleToDoublePrecisionPerfRatio: i32,
    pub pageableMemoryAccess: i32,
    pub concurrentManagedAccess: i32,
    pub computePreemptionSupported: i32,
    pub canUseHostPointerForRegisteredMem: i32,
    pub cooperativeLaunch: i32,
    pub cooperativeMultiDeviceLaunch: i32,
    pub sharedMemPerBlockOptin: usize,
    pub pageableMemoryAccessUsesHostPageTables: i32,
    pub directManagedMemAccessFromHost: i32,
    pub maxBlocksPerMultiProcessor: i32,
    pub accessPolicyMaxWindowSize: i32,
    pub reservedSharedMemPerBlock: usize,
    pub hostRegisterSupported: i32,
    pub sparseCudaArraySupported: i32,
    pub hostRegisterReadOnlySupported: i32,
    pub timelineSemaphoreInteropSupported: i32,
    pub memoryPoolsSupported: i32,
    pub gpuDirectRDMASupported: i32,
    pub gpuDirectRDMAFlushWritesOptions: u32,
    pub gpuDirectRDMAWritesOrdering: i32,
    pub memoryPoolSupportedHandleTypes: u32,
    pub deferredMappingCudaArraySupported: i32,
    pub ipcEventSupported: i32,
    pub clusterLaunch: i32,
    pub unifiedFunctionPointers: i32,
    pub reserved: [i32; 63],
}

const _: () = {
    assert!(size_of::<DeviceProp12>() == 1032);
    assert!(offset_of!(DeviceProp12, name) == 0);
    assert!(offset_of!(DeviceProp12, uuid) == 256);
    assert!(offset_of!(DeviceProp12, luid) == 272);
    assert!(offset_of!(DeviceProp12, luidDeviceNodeMask) == 280);
    assert!(offset_of!(DeviceProp12, totalGlobalMem) == 288);
    assert!(offset_of!(DeviceProp12, sharedMemPerBlock) == 296);
    assert!(offset_of!(DeviceProp12, regsPerBlock) == 304);
    assert!(offset_of!(DeviceProp12, warpSize) == 308);
    assert!(offset_of!(DeviceProp12, memPitch) == 312);
    assert!(offset_of!(DeviceProp12, maxThreadsPerBlock) == 320);
    assert!(offset_of!(DeviceProp12, maxThreadsDim) == 324);
    assert!(offset_of!(DeviceProp12, maxGridSize) == 336);
    assert!(offset_of!(DeviceProp12, clockRate) == 348);
    assert!(offset_of!(DeviceProp12, totalConstMem) == 352);
    assert!(offset_of!(DeviceProp12, major) == 360);
    assert!(offset_of!(DeviceProp12, minor) == 364);
    assert!(offset_of!(DeviceProp12, textureAlignment) == 368);
    assert!(offset_of!(DeviceProp12, texturePitchAlignment) == 376);
    assert!(offset_of!(DeviceProp12, deviceOverlap) == 384);
    assert!(offset_of!(DeviceProp12, multiProcessorCount) == 388);
    assert!(offset_of!(DeviceProp12, kernelExecTimeoutEnabled) == 392);
    assert!(offset_of!(DeviceProp12, integrated) == 396);
    assert!(offset_of!(DeviceProp12, canMapHostMemory) == 400);
    assert!(offset_of!(DeviceProp12, computeMode) == 404);
    assert!(offset_of!(DeviceProp12, maxTexture1D) == 408);
    assert!(offset_of!(DeviceProp12, maxTexture1DMipmap) == 412);
    assert!(offset_of!(DeviceProp12, maxTexture1DLinear) == 416);
    assert!(offset_of!(DeviceProp12, maxTexture2D) == 420);
    assert!(offset_of!(DeviceProp12, maxTexture2DMipmap) == 428);
    assert!(offset_of!(DeviceProp12, maxTexture2DLinear) == 436);
    assert!(offset_of!(DeviceProp12, maxTexture2DGather) == 448);
    assert!(offset_of!(DeviceProp12, maxTexture3D) == 456);
    assert!(offset_of!(DeviceProp12, maxTexture3DAlt) == 468);
    assert!(offset_of!(DeviceProp12, maxTextureCubemap) == 480);
    assert!(offset_of!(DeviceProp12, maxTexture1DLayered) == 484);
    assert!(offset_of!(DeviceProp12, maxTexture2DLayered) == 492);
    assert!(offset_of!(DeviceProp12, maxTextureCubemapLayered) == 504);
    assert!(offset_of!(DeviceProp12, maxSurface1D) == 512);
    assert!(offset_of!(DeviceProp12, maxSurface2D) == 516);
    assert!(offset_of!(DeviceProp12, maxSurface3D) == 524);
    assert!(offset_of!(DeviceProp12, maxSurface1DLayered) == 536);
    assert!(offset_of!(DeviceProp12, maxSurface2DLayered) == 544);
    assert!(offset_of!(DeviceProp12, maxSurfaceCubemap) == 556);
    assert!(offset_of!(DeviceProp12, maxSurfaceCubemapLayered) == 560);
    assert!(offset_of!(DeviceProp12, surfaceAlignment) == 568);
    assert!(offset_of!(DeviceProp12, concurrentKernels) == 576);
    assert!(offset_of!(DeviceProp12, ECCEnabled) == 580);
    assert!(offset_of!(DeviceProp12, pciBusID) == 584);
    assert!(offset_of!(DeviceProp12, pciDeviceID) == 588);
    assert!(offset_of!(DeviceProp12, pciDomainID) == 592);
    assert!(offset_of!(DeviceProp12, tccDriver) == 596);
    assert!(offset_of!(DeviceProp12, asyncEngineCount) == 600);
    assert!(offset_of!(DeviceProp12, unifiedAddressing) == 604);
    assert!(offset_of!(DeviceProp12, memoryClockRate) == 608);
    assert!(offset_of!(DeviceProp12, memoryBusWidth) == 612);
    assert!(offset_of!(DeviceProp12, l2CacheSize) == 616);
    assert!(offset_of!(DeviceProp12, persistingL2CacheMaxSize) == 620);
    assert!(offset_of!(DeviceProp12, maxThreadsPerMultiProcessor) == 624);
    assert!(offset_of!(DeviceProp12, streamPrioritiesSupported) == 628);
    assert!(offset_of!(DeviceProp12, globalL1CacheSupported) == 632);
    assert!(offset_of!(DeviceProp12, localL1CacheSupported) == 636);
    assert!(offset_of!(DeviceProp12, sharedMemPerMultiprocessor) == 640);
    assert!(offset_of!(DeviceProp12, regsPerMultiprocessor) == 648);
    assert!(offset_of!(DeviceProp12, managedMemory) == 652);
    assert!(offset_of!(DeviceProp12, isMultiGpuBoard) == 656);
    assert!(offset_of!(DeviceProp12, multiGpuBoardGroupID) == 660);
    assert!(offset_of!(DeviceProp12, hostNativeAtomicSupported) == 664);
    assert!(offset_of!(DeviceProp12, singleToDoublePrecisionPerfRatio) == 668);
    assert!(offset_of!(DeviceProp12, pageableMemoryAccess) == 672);
    assert!(offset_of!(DeviceProp12, concurrentManagedAccess) == 676);
    assert!(offset_of!(DeviceProp12, computePreemptionSupported) == 680);
    assert!(offset_of!(DeviceProp12, canUseHostPointerForRegisteredMem) == 684);
    assert!(offset_of!(DeviceProp12, cooperativeLaunch) == 688);
    assert!(offset_of!(DeviceProp12, cooperativeMultiDeviceLaunch) == 692);
    assert!(offset_of!(DeviceProp12, sharedMemPerBlockOptin) == 696);
    assert!(offset_of!(DeviceProp12, pageableMemoryAccessUsesHostPageTables) == 704);
    assert!(offset_of!(DeviceProp12, directManagedMemAccessFromHost) == 708);
    assert!(offset_of!(DeviceProp12, maxBlocksPerMultiProcessor) == 712);
    assert!(offset_of!(DeviceProp12, accessPolicyMaxWindowSize) == 716);
    assert!(offset_of!(DeviceProp12, reservedSharedMemPerBlock) == 720);
    assert!(offset_of!(DeviceProp12, hostRegisterSupported) == 728);
    assert!(offset_of!(DeviceProp12, sparseCudaArraySupported) == 732);
    assert!(offset_of!(DeviceProp12, hostRegisterReadOnlySupported) == 736);
    assert!(offset_of!(DeviceProp12, timelineSemaphoreInteropSupported) == 740);
    assert!(offset_of!(DeviceProp12, memoryPoolsSupported) == 744);
    assert!(offset_of!(DeviceProp12, gpuDirectRDMASupported) == 748);
    assert!(offset_of!(DeviceProp12, gpuDirectRDMAFlushWritesOptions) == 752);
    assert!(offset_of!(DeviceProp12, gpuDirectRDMAWritesOrdering) == 756);
    assert!(offset_of!(DeviceProp12, memoryPoolSupportedHandleTypes) == 760);
    assert!(offset_of!(DeviceProp12, deferredMappingCudaArraySupported) == 764);
    assert!(offset_of!(DeviceProp12, ipcEventSupported) == 768);
    assert!(offset_of!(DeviceProp12, clusterLaunch) == 772);
    assert!(offset_of!(DeviceProp12, unifiedFunctionPointers) == 776);
    assert!(offset_of!(DeviceProp12, reserved) == 780);
};

/// `struct cudaDeviceProp` of CUDA 13.x (1008 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeviceProp13 {
    pub name: [c_char; 256],
    pub uuid: [u8; 16],
    pub luid: [c_char; 8],
    pub luidDeviceNodeMask: u32,
    pub totalGlobalMem: usize,
    pub sharedMemPerBlock: usize,
    pub regsPerBlock: i32,
    pub warpSize: i32,
    pub memPitch: usize,
    pub maxThreadsPerBlock: i32,
    pub maxThreadsDim: [i32; 3],
    pub maxGridSize: [i32; 3],
    pub totalConstMem: usize,
    pub major: i32,
    pub minor: i32,
    pub textureAlignment: usize,
    pub texturePitchAlignment: usize,
    pub multiProcessorCount: i32,
    pub integrated: i32,
    pub canMapHostMemory: i32,
    pub maxTexture1D: i32,
    pub maxTexture1DMipmap: i32,
    pub maxTexture2D: [i32; 2],
    pub maxTexture2DMipmap: [i32; 2],
    pub maxTexture2DLinear: [i32; 3],
    pub maxTexture2DGather: [i32; 2],
    pub maxTexture3D: [i32; 3],
    pub maxTexture3DAlt: [i32; 3],
    pub maxTextureCubemap: i32,
    pub maxTexture1DLayered: [i32; 2],
    pub maxTexture2DLayered: [i32; 3],
    pub maxTextureCubemapLayered: [i32; 2],
    pub maxSurface1D: i32,
    pub maxSurface2D: [i32; 2],
    pub maxSurface3D: [i32; 3],
    pub maxSurface1DLayered: [i32; 2],
    pub maxSurface2DLayered: [i32; 3],
    pub maxSurfaceCubemap: i32,
    pub maxSurfaceCubemapLayered: [i32; 2],
    pub surfaceAlignment: usize,
    pub concurrentKernels: i32,
    pub ECCEnabled: i32,
    pub pciBusID: i32,
    pub pciDeviceID: i32,
    pub pciDomainID: i32,
    pub tccDriver: i32,
    pub asyncEngineCount: i32,
    pub unifiedAddressing: i32,
    pub memoryBusWidth: i32,
    pub l2CacheSize: i32,
    pub persistingL2CacheMaxSize: i32,
    pub maxThreadsPerMultiProcessor: i32,
    pub streamPrioritiesSupported: i32,
    pub globalL1CacheSupported: i32,
    pub localL1CacheSupported: i32,
    pub sharedMemPerMultiprocessor: usize,
    pub regsPerMultiprocessor: i32,
    pub managedMemory: i32,
    pub isMultiGpuBoard: i32,
    pub multiGpuBoardGroupID: i32,
    pub hostNativeAtomicSupported: i32,
    pub pageableMemoryAccess: i32,
    pub concurrentManagedAccess: i32,
    pub computePreemptionSupported: i32,
    pub canUseHostPointerForRegisteredMem: i32,
    pub cooperativeLaunch: i32,
    pub sharedMemPerBlockOptin: usize,
    pub pageableMemoryAccessUsesHostPageTables: i32,
    pub directManagedMemAccessFromHost: i32,
    pub maxBlocksPerMultiProcessor: i32,
    pub accessPolicyMaxWindowSize: i32,
    pub reservedSharedMemPerBlock: usize,
    pub hostRegisterSupported: i32,
    pub sparseCudaArraySupported: i32,
    pub hostRegisterReadOnlySupported: i32,
    pub timelineSemaphoreInteropSupported: i32,
    pub memoryPoolsSupported: i32,
    pub gpuDirectRDMASupported: i32,
    pub gpuDirectRDMAFlushWritesOptions: u32,
    pub gpuDirectRDMAWritesOrdering: i32,
    pub memoryPoolSupportedHandleTypes: u32,
    pub deferredMappingCudaArraySupported: i32,
    pub ipcEventSupported: i32,
    pub clusterLaunch: i32,
    pub unifiedFunctionPointers: i32,
    pub deviceNumaConfig: i32,
    pub deviceNumaId: i32,
    pub mpsEnabled: i32,
    pub hostNumaId: i32,
    pub gpuPciDeviceID: u32,
    pub gpuPciSubsystemID: u32,
    pub hostNumaMultinodeIpcSupported: i32,
    pub reserved: [i32; 56],
}

const _: () = {
    assert!(size_of::<DeviceProp13>() == 1008);
    assert!(offset_of!(DeviceProp13, name) == 0);
    assert!(offset_of!(DeviceProp13, uuid) == 256);
    assert!(offset_of!(DeviceProp13, luid) == 272);
    assert!(offset_of!(DeviceProp13, luidDeviceNodeMask) == 280);
    assert!(offset_of!(DeviceProp13, totalGlobalMem) == 288);
    assert!(offset_of!(DeviceProp13, sharedMemPerBlock) == 296);
    assert!(offset_of!(DeviceProp13, regsPerBlock) == 304);
    assert!(offset_of!(DeviceProp13, warpSize) == 308);
    assert!(offset_of!(DeviceProp13, memPitch) == 312);
    assert!(offset_of!(DeviceProp13, maxThreadsPerBlock) == 320);
    assert!(offset_of!(DeviceProp13, maxThreadsDim) == 324);
    assert!(offset_of!(DeviceProp13, maxGridSize) == 336);
    assert!(offset_of!(DeviceProp13, totalConstMem) == 352);
    assert!(offset_of!(DeviceProp13, major) == 360);
    assert!(offset_of!(DeviceProp13, minor) == 364);
    assert!(offset_of!(DeviceProp13, textureAlignment) == 368);
    assert!(offset_of!(DeviceProp13, texturePitchAlignment) == 376);
    assert!(offset_of!(DeviceProp13, multiProcessorCount) == 384);
    assert!(offset_of!(DeviceProp13, integrated) == 388);
    assert!(offset_of!(DeviceProp13, canMapHostMemory) == 392);
    assert!(offset_of!(DeviceProp13, maxTexture1D) == 396);
    assert!(offset_of!(DeviceProp13, maxTexture1DMipmap) == 400);
    assert!(offset_of!(DeviceProp13, maxTexture2D) == 404);
    assert!(offset_of!(DeviceProp13, maxTexture2DMipmap) == 412);
    assert!(offset_of!(DeviceProp13, maxTexture2DLinear) == 420);
    assert!(offset_of!(DeviceProp13, maxTexture2DGather) == 432);
    assert!(offset_of!(DeviceProp13, maxTexture3D) == 440);
    assert!(offset_of!(DeviceProp13, maxTexture3DAlt) == 452);
    assert!(offset_of!(DeviceProp13, maxTextureCubemap) == 464);
    assert!(offset_of!(DeviceProp13, maxTexture1DLayered) == 468);
    assert!(offset_of!(DeviceProp13, maxTexture2DLayered) == 476);
    assert!(offset_of!(DeviceProp13, maxTextureCubemapLayered) == 488);
    assert!(offset_of!(DeviceProp13, maxSurface1D) == 496);
    assert!(offset_of!(DeviceProp13, maxSurface2D) == 500);
    assert!(offset_of!(DeviceProp13, maxSurface3D) == 508);
    assert!(offset_of!(DeviceProp13, maxSurface1DLayered) == 520);
    assert!(offset_of!(DeviceProp13, maxSurface2DLayered) == 528);
    assert!(offset_of!(DeviceProp13, maxSurfaceCubemap) == 540);
    assert!(offset_of!(DeviceProp13, maxSurfaceCubemapLayered) == 544);
    assert!(offset_of!(DeviceProp13, surfaceAlignment) == 552);
    assert!(offset_of!(DeviceProp13, concurrentKernels) == 560);
    assert!(offset_of!(DeviceProp13, ECCEnabled) == 564);
    assert!(offset_of!(DeviceProp13, pciBusID) == 568);
    assert!(offset_of!(DeviceProp13, pciDeviceID) == 572);
    assert!(offset_of!(DeviceProp13, pciDomainID) == 576);
    assert!(offset_of!(DeviceProp13, tccDriver) == 580);
    assert!(offset_of!(DeviceProp13, asyncEngineCount) == 584);
    assert!(offset_of!(DeviceProp13, unifiedAddressing) == 588);
    assert!(offset_of!(DeviceProp13, memoryBusWidth) == 592);
    assert!(offset_of!(DeviceProp13, l2CacheSize) == 596);
    assert!(offset_of!(DeviceProp13, persistingL2CacheMaxSize) == 600);
    assert!(offset_of!(DeviceProp13, maxThreadsPerMultiProcessor) == 604);
    assert!(offset_of!(DeviceProp13, streamPrioritiesSupported) == 608);
    assert!(offset_of!(DeviceProp13, globalL1CacheSupported) == 612);
    assert!(offset_of!(DeviceProp13, localL1CacheSupported) == 616);
    assert!(offset_of!(DeviceProp13, sharedMemPerMultiprocessor) == 624);
    assert!(offset_of!(DeviceProp13, regsPerMultiprocessor) == 632);
    assert!(offset_of!(DeviceProp13, managedMemory) == 636);
    assert!(offset_of!(DeviceProp13, isMultiGpuBoard) == 640);
    assert!(offset_of!(DeviceProp13, multiGpuBoardGroupID) == 644);
    assert!(offset_of!(DeviceProp13, hostNativeAtomicSupported) == 648);
    assert!(offset_of!(DeviceProp13, pageableMemoryAccess) == 652);
    assert!(offset_of!(DeviceProp13, concurrentManagedAccess) == 656);
    assert!(offset_of!(DeviceProp13, computePreemptionSupported) == 660);
    assert!(offset_of!(DeviceProp13, canUseHostPointerForRegisteredMem) == 664);
    assert!(offset_of!(DeviceProp13, cooperativeLaunch) == 668);
    assert!(offset_of!(DeviceProp13, sharedMemPerBlockOptin) == 672);
    assert!(offset_of!(DeviceProp13, pageableMemoryAccessUsesHostPageTables) == 680);
    assert!(offset_of!(DeviceProp13, directManagedMemAccessFromHost) == 684);
    assert!(offset_of!(DeviceProp13, maxBlocksPerMultiProcessor) == 688);
    assert!(offset_of!(DeviceProp13, accessPolicyMaxWindowSize) == 692);
    assert!(offset_of!(DeviceProp13, reservedSharedMemPerBlock) == 696);
    assert!(offset_of!(DeviceProp13, hostRegisterSupported) == 704);
    assert!(offset_of!(DeviceProp13, sparseCudaArraySupported) == 708);
    assert!(offset_of!(DeviceProp13, hostRegisterReadOnlySupported) == 712);
    assert!(offset_of!(DeviceProp13, timelineSemaphoreInteropSupported) == 716);
    assert!(offset_of!(DeviceProp13, memoryPoolsSupported) == 720);
    assert!(offset_of!(DeviceProp13, gpuDirectRDMASupported) == 724);
    assert!(offset_of!(DeviceProp13, gpuDirectRDMAFlushWritesOptions) == 728);
    assert!(offset_of!(DeviceProp13, gpuDirectRDMAWritesOrdering) == 732);
    assert!(offset_of!(DeviceProp13, memoryPoolSupportedHandleTypes) == 736);
    assert!(offset_of!(DeviceProp13, deferredMappingCudaArraySupported) == 740);
    assert!(offset_of!(DeviceProp13, ipcEventSupported) == 744);
    assert!(offset_of!(DeviceProp13, clusterLaunch) == 748);
    assert!(offset_of!(DeviceProp13, unifiedFunctionPointers) == 752);
    assert!(offset_of!(DeviceProp13, deviceNumaConfig) == 756);
    assert!(offset_of!(DeviceProp13, deviceNumaId) == 760);
    assert!(offset_of!(DeviceProp13, mpsEnabled) == 764);
    assert!(offset_of!(DeviceProp13, hostNumaId) == 768);
    assert!(offset_of!(DeviceProp13, gpuPciDeviceID) == 772);
    assert!(offset_of!(DeviceProp13, gpuPciSubsystemID) == 776);
    assert!(offset_of!(DeviceProp13, hostNumaMultinodeIpcSupported) == 780);
    assert!(offset_of!(DeviceProp13, reserved) == 784);
};
