//! Device properties and attributes, built from the host's `DeviceInfo` (one round trip, then
//! cached by the runtime).
//!
//! `DeviceInfo` carries what the host knows for sure (name, memory, SM count, compute capability,
//! warp size, threads and shared memory per block, clock, PCI address). The other properties
//! programs read are derived from the compute capability with NVIDIA's published per-architecture
//! limits (`derive`), the same numbers the real runtime reports for that architecture; features
//! vgpu does not provide (managed memory, mapped host memory, cooperative launch, memory pools)
//! are reported as absent so programs do not take those paths.

use std::ffi::c_char;

use crate::codes::{cudaErrorInvalidDevice, cudaErrorInvalidValue, cudaError_t};
use crate::entry::{fail, non_null, CallResult};
use crate::props::{DeviceProp12, DeviceProp13};
use vgpu_runtime_abi::{rt, DeviceInfo};

/// Everything the facade reports about the device, in CUDA's units.
#[derive(Clone, Debug)]
pub struct Facts {
    pub name: [u8; 256],
    pub total_global_mem: u64,
    pub multiprocessors: i32,
    pub major: i32,
    pub minor: i32,
    pub warp_size: i32,
    pub max_threads_per_block: i32,
    pub shared_mem_per_block: i32,
    pub shared_mem_per_block_optin: i32,
    pub shared_mem_per_sm: i32,
    pub reserved_shared_mem_per_block: i32,
    pub regs_per_block: i32,
    pub regs_per_sm: i32,
    pub max_threads_per_sm: i32,
    pub max_blocks_per_sm: i32,
    pub clock_khz: i32,
    pub memory_clock_khz: i32,
    pub memory_bus_width: i32,
    pub l2_cache_size: i32,
    pub pci_bus: i32,
    pub pci_device: i32,
    pub pci_domain: i32,
    pub uuid: [u8; 16],
}

/// `maxThreadsDim`, `maxGridSize`, and the other fixed limits of every architecture since 5.0.
pub const MAX_BLOCK_DIM: [i32; 3] = [1024, 1024, 64];
pub const MAX_GRID_DIM: [i32; 3] = [i32::MAX, 65535, 65535];
pub const TOTAL_CONST_MEM: i32 = 65536;
pub const MEM_PITCH: i32 = i32::MAX;
pub const TEXTURE_ALIGNMENT: i32 = 512;
pub const TEXTURE_PITCH_ALIGNMENT: i32 = 32;
pub const SURFACE_ALIGNMENT: i32 = 512;

impl Facts {
    /// Derive the full set from the host's `DeviceInfo`.
    pub fn from_info(d: &DeviceInfo) -> Facts {
        let major = d.cc_major as i32;
        let minor = d.cc_minor as i32;
        let cc = major * 10 + minor;
        // Per-architecture limits (CUDA C Programming Guide, "Compute Capabilities" table).
        let (optin, per_sm, max_thr_sm, max_blk_sm) = match cc {
            90.. => (232_448, 233_472, 2048, 32),
            89 => (101_376, 102_400, 1536, 24),
            86 | 87 => (101_376, 102_400, 1536, 16),
            80 => (166_912, 167_936, 2048, 32),
            75 => (65_536, 65_536, 1024, 16),
            70 | 72 => (98_304, 98_304, 2048, 32),
            _ => (49_152, 65_536, 2048, 32),
        };
        let shared = d.shared_mem_per_block.min(i32::MAX as u32) as i32;
        let mut uuid = [0u8; 16];
        uuid[..4].copy_from_slice(b"vgpu");
        uuid[4..8].copy_from_slice(&d.pci_domain.to_le_bytes());
        uuid[8] = d.pci_bus as u8;
        uuid[9] = d.pci_device as u8;
        uuid[10] = d.executor as u8;
        Facts {
            name: d.name,
            total_global_mem: d.total_mem,
            multiprocessors: d.multiprocessors.min(i32::MAX as u32) as i32,
            major,
            minor,
            warp_size: d.warp_size as i32,
            max_threads_per_block: d.max_threads_per_block as i32,
            shared_mem_per_block: shared,
            shared_mem_per_block_optin: optin.max(shared),
            shared_mem_per_sm: per_sm.max(shared),
            reserved_shared_mem_per_block: if cc >= 80 { 1024 } else { 0 },
            regs_per_block: 65536,
            regs_per_sm: 65536,
            max_threads_per_sm: max_thr_sm,
            max_blocks_per_sm: max_blk_sm,
            clock_khz: d.clock_khz.min(i32::MAX as u32) as i32,
            memory_clock_khz: 1_215_000,
            memory_bus_width: 5120,
            l2_cache_size: 40 << 20,
            pci_bus: d.pci_bus as i32,
            pci_device: d.pci_device as i32,
            pci_domain: d.pci_domain as i32,
            uuid,
        }
    }

    /// The value of `cudaDeviceAttr` `attr`, or `None` for a value that is not an attribute.
    /// Texture and surface limits are 0: vgpu has no texture or surface objects.
    pub fn attribute(&self, attr: i32) -> Option<i32> {
        let cc = self.major * 10 + self.minor;
        let v = match attr {
            1 => self.max_threads_per_block,
            2..=4 => MAX_BLOCK_DIM[(attr - 2) as usize],
            5..=7 => MAX_GRID_DIM[(attr - 5) as usize],
            8 => self.shared_mem_per_block,
            9 => TOTAL_CONST_MEM,
            10 => self.warp_size,
            11 => MEM_PITCH,
            12 => self.regs_per_block,
            13 => self.clock_khz,
            14 => TEXTURE_ALIGNMENT,
            15 => 1, // GpuOverlap
            16 => self.multiprocessors,
            17 => 0,                               // KernelExecTimeout
            18 => 0,                               // Integrated: a discrete device (1 would make ggml report guest RAM as VRAM)
            19 => 0,                               // CanMapHostMemory: no mapped pinned memory (cudaHostGetDevicePointer)
            20 => 0,                               // ComputeMode: default
            21..=29 | 42..=49 | 52..=74 | 77 => 0, // textures and surfaces
            30 => SURFACE_ALIGNMENT,
            31 => 1, // ConcurrentKernels
            32 => 0, // EccEnabled
            33 => self.pci_bus,
            34 => self.pci_device,
            35 => 0, // TccDriver
            36 => self.memory_clock_khz,
            37 => self.memory_bus_width,
            38 => self.l2_cache_size,
            39 => self.max_threads_per_sm,
            40 => 2, // AsyncEngineCount
            41 => 1, // UnifiedAddressing
            50 => self.pci_domain,
            51 => TEXTURE_PITCH_ALIGNMENT,
            75 => self.major,
            76 => self.minor,
            78 => 1, // StreamPrioritiesSupported
            79 | 80 => 1,
            81 => self.shared_mem_per_sm,
            82 => self.regs_per_sm,
            83 => 0, // ManagedMemory: cudaMallocManaged is not supported
            84 | 85 => 0,
            86 => 0, // HostNativeAtomicSupported
            87 => 32,
            88 | 89 => 0, // PageableMemoryAccess, ConcurrentManagedAccess
            90 => 1,      // ComputePreemptionSupported
            91 => 0,
            92..=94 => 0, // reserved
            95 => 0,      // CooperativeLaunch: off, so programs never need cudaLaunchCooperativeKernel
            96 => 0,
            97 => self.shared_mem_per_block_optin,
            98 => 0,
            99 => 1, // HostRegisterSupported
            100 | 101 => 0,
            106 => self.max_blocks_per_sm,
            108 | 109 => 0,
            111 => self.reserved_shared_mem_per_block,
            112..=114 => 0,
            115 => 0, // MemoryPoolsSupported
            116..=119 => 0,
            120 => i32::from(cc >= 90), // ClusterLaunch
            121..=129 => 0,
            130 => 0,  // NumaConfig: none
            131 => -1, // NumaId
            132 | 133 => 0,
            134 => -1, // HostNumaId
            135..=147 => 0,
            _ => return None,
        };
        Some(v)
    }
}

/// The device's facts: validates `device` (only device 0 exists; `cudaErrorInvalidDevice`
/// otherwise, as the real runtime) and fetches `DeviceInfo`.
pub fn facts(device: i32) -> Result<Facts, cudaError_t> {
    let count = rt::get_device_count()?;
    if device < 0 || device >= count {
        return Err(fail(cudaErrorInvalidDevice));
    }
    Ok(Facts::from_info(&rt::device_info()?))
}

/// A `cudaDeviceProp` layout of one CUDA major version.
pub trait PropLayout: Copy {
    /// A zeroed value with every field taken from `f`.
    fn from_facts(f: &Facts) -> Self;
}

macro_rules! fill_common {
    ($p:ident, $f:ident) => {{
        for (d, s) in $p.name.iter_mut().zip($f.name.iter()) {
            *d = *s as c_char;
        }
        $p.name[255] = 0;
        $p.uuid = $f.uuid;
        $p.totalGlobalMem = $f.total_global_mem as usize;
        $p.sharedMemPerBlock = $f.shared_mem_per_block as usize;
        $p.regsPerBlock = $f.regs_per_block;
        $p.warpSize = $f.warp_size;
        $p.memPitch = MEM_PITCH as usize;
        $p.maxThreadsPerBlock = $f.max_threads_per_block;
        $p.maxThreadsDim = MAX_BLOCK_DIM;
        $p.maxGridSize = MAX_GRID_DIM;
        $p.totalConstMem = TOTAL_CONST_MEM as usize;
        $p.major = $f.major;
        $p.minor = $f.minor;
        $p.textureAlignment = TEXTURE_ALIGNMENT as usize;
        $p.texturePitchAlignment = TEXTURE_PITCH_ALIGNMENT as usize;
        $p.multiProcessorCount = $f.multiprocessors;
        $p.integrated = 0;
        $p.canMapHostMemory = 0;
        $p.surfaceAlignment = SURFACE_ALIGNMENT as usize;
        $p.concurrentKernels = 1;
        $p.pciBusID = $f.pci_bus;
        $p.pciDeviceID = $f.pci_device;
        $p.pciDomainID = $f.pci_domain;
        $p.asyncEngineCount = 2;
        $p.unifiedAddressing = 1;
        $p.memoryBusWidth = $f.memory_bus_width;
        $p.l2CacheSize = $f.l2_cache_size;
        $p.maxThreadsPerMultiProcessor = $f.max_threads_per_sm;
        $p.streamPrioritiesSupported = 1;
        $p.globalL1CacheSupported = 1;
        $p.localL1CacheSupported = 1;
        $p.sharedMemPerMultiprocessor = $f.shared_mem_per_sm as usize;
        $p.regsPerMultiprocessor = $f.regs_per_sm;
        $p.computePreemptionSupported = 1;
        $p.sharedMemPerBlockOptin = $f.shared_mem_per_block_optin as usize;
        $p.maxBlocksPerMultiProcessor = $f.max_blocks_per_sm;
        $p.reservedSharedMemPerBlock = $f.reserved_shared_mem_per_block as usize;
        $p.hostRegisterSupported = 1;
        $p.clusterLaunch = i32::from($f.major >= 9);
    }};
}

impl PropLayout for DeviceProp12 {
    fn from_facts(f: &Facts) -> Self {
        // SAFETY: every field is an integer or an array of integers, for which all-zero is valid.
        let mut p: DeviceProp12 = unsafe { std::mem::zeroed() };
        fill_common!(p, f);
        p.clockRate = f.clock_khz;
        p.deviceOverlap = 1;
        p.memoryClockRate = f.memory_clock_khz;
        p.singleToDoublePrecisionPerfRatio = 32;
        p
    }
}

impl PropLayout for DeviceProp13 {
    fn from_facts(f: &Facts) -> Self {
        // SAFETY: every field is an integer or an array of integers, for which all-zero is valid.
        let mut p: DeviceProp13 = unsafe { std::mem::zeroed() };
        fill_common!(p, f);
        p.deviceNumaId = -1;
        p.hostNumaId = -1;
        p
    }
}

/// `cudaGetDeviceProperties` for layout `P`.
///
/// # Safety
/// `prop` is null or valid for writing one `P`.
pub unsafe fn get_properties<P: PropLayout>(prop: *mut P, device: i32) -> CallResult {
    non_null(prop)?;
    let f = facts(device)?;
    // SAFETY: non-null (checked), and the caller passes a `cudaDeviceProp` of this version.
    unsafe { prop.write_unaligned(P::from_facts(&f)) };
    Ok(())
}

/// `cudaDeviceGetAttribute`.
///
/// # Safety
/// `value` is null or valid for writing an `int`.
pub unsafe fn get_attribute(value: *mut i32, attr: i32, device: i32) -> CallResult {
    non_null(value)?;
    let f = facts(device)?;
    let v = f.attribute(attr).ok_or_else(|| fail(cudaErrorInvalidValue))?;
    // SAFETY: non-null (checked); the caller passes an `int*`.
    unsafe { value.write_unaligned(v) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emu_info() -> DeviceInfo {
        let mut d = DeviceInfo::default();
        d.name[..8].copy_from_slice(b"vgpu emu");
        d.total_mem = 16 << 30;
        d.multiprocessors = 16;
        d.cc_major = 8;
        d.cc_minor = 0;
        d.warp_size = 32;
        d.max_threads_per_block = 1024;
        d.shared_mem_per_block = 48 << 10;
        d.clock_khz = 1_000_000;
        d.pci_bus = 3;
        d
    }

    #[test]
    fn properties_carry_the_host_facts_in_both_layouts() {
        let f = Facts::from_info(&emu_info());
        let p12 = DeviceProp12::from_facts(&f);
        let p13 = DeviceProp13::from_facts(&f);
        assert_eq!((p12.major, p12.minor, p13.major, p13.minor), (8, 0, 8, 0));
        assert_eq!((p12.totalGlobalMem, p13.totalGlobalMem), (16 << 30, 16 << 30));
        assert_eq!((p12.multiProcessorCount, p13.multiProcessorCount), (16, 16));
        assert_eq!((p12.warpSize, p13.warpSize), (32, 32));
        assert_eq!(p12.sharedMemPerBlockOptin, 166_912, "sm_80 opt-in shared memory (>= 48 KiB keeps ggml's MMQ on)");
        assert_eq!((p12.integrated, p13.integrated), (0, 0));
        assert_eq!((p12.pciBusID, p13.pciBusID), (3, 3));
        assert_eq!(p12.name[..8].iter().map(|&c| c as u8).collect::<Vec<_>>(), b"vgpu emu");
        assert_eq!(p12.clockRate, 1_000_000);
    }

    #[test]
    fn attributes_agree_with_properties() {
        let f = Facts::from_info(&emu_info());
        let p = DeviceProp12::from_facts(&f);
        assert_eq!(f.attribute(75), Some(p.major));
        assert_eq!(f.attribute(76), Some(p.minor));
        assert_eq!(f.attribute(16), Some(p.multiProcessorCount));
        assert_eq!(f.attribute(97), Some(p.sharedMemPerBlockOptin as i32));
        assert_eq!(f.attribute(8), Some(p.sharedMemPerBlock as i32));
        assert_eq!(f.attribute(95), Some(0), "cooperative launch is off");
        assert_eq!(f.attribute(41), Some(1), "unified addressing");
        assert_eq!(f.attribute(0), None);
        assert_eq!(f.attribute(10_000), None);
    }
}
