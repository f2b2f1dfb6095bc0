//! A PCI device opened from user space through VFIO (type1 IOMMU, or no-IOMMU mode), and the two
//! interrupt sources a guest can sleep on: MSI-X vectors delivered to eventfds by VFIO, and a UIO
//! fd for devices that have an INTx pin.
//!
//! The steps are the kernel's documented VFIO sequence (`Documentation/driver-api/vfio.rst`):
//! open the container `/dev/vfio/vfio`, open the device's group (`/dev/vfio/N`, or
//! `/dev/vfio/noiommu-N` for a no-IOMMU group), `VFIO_GROUP_SET_CONTAINER`, `VFIO_SET_IOMMU`,
//! `VFIO_GROUP_GET_DEVICE_FD`, then region info and `mmap` of the BARs, the bus-master bit in
//! PCI_COMMAND through the config region, and `VFIO_DEVICE_SET_IRQS` for MSI-X.
//!
//! Every failure says what to do about it (bind the device, boot with an IOMMU, load a module):
//! the people who see these messages are setting a VM up, and the fix is rarely obvious.
//!
//! The ioctl structures are the few fixed-size ones from `<linux/vfio.h>` written out here (the
//! VFIO ABI is stable); the ioctls are generated with nix's macros.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::MmapRaw;

use crate::{Error, Result};

/// PCI vendor and device id of QEMU's ivshmem device (`ivshmem-plain` / `ivshmem-doorbell`).
pub const IVSHMEM_VENDOR: u16 = 0x1af4;
pub const IVSHMEM_DEVICE: u16 = 0x1110;

/// VFIO region indices of a PCI device (`VFIO_PCI_*_REGION_INDEX`).
pub const BAR0: u32 = 0;
pub const BAR2: u32 = 2;
pub const CONFIG_REGION: u32 = 7;

/// VFIO interrupt indices of a PCI device (`VFIO_PCI_*_IRQ_INDEX`).
pub const INTX_IRQ: u32 = 0;
pub const MSIX_IRQ: u32 = 2;

/// PCI_COMMAND (config space offset 4) and its bus-master bit.
pub const PCI_COMMAND: u64 = 4;
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: i32 = 1;
const VFIO_NOIOMMU_IOMMU: i32 = 8;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_REGION_INFO_FLAG_READ: u32 = 1;
const VFIO_REGION_INFO_FLAG_WRITE: u32 = 2;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 4;
const VFIO_IRQ_SET_DATA_NONE: u32 = 1;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

/// `struct vfio_device_info` (the part every kernel fills).
#[repr(C)]
#[derive(Default)]
struct DeviceInfoRaw {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
struct RegionInfoRaw {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(Default)]
struct IrqInfoRaw {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}

/// `struct vfio_irq_set` with its flexible `data` array sized for `N` eventfds.
#[repr(C)]
struct IrqSet<const N: usize> {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    data: [i32; N],
}

const _: () = assert!(std::mem::size_of::<RegionInfoRaw>() == 32);
const _: () = assert!(std::mem::size_of::<IrqSet<2>>() == 28);

/// The ioctls (`_IO(VFIO_TYPE, VFIO_BASE + n)`, `VFIO_TYPE` = `';'`, `VFIO_BASE` = 100). All
/// VFIO ioctls are "bad" in nix's terms: the size is not encoded in the number.
mod ioctls {
    use super::{DeviceInfoRaw, GroupStatus, IrqInfoRaw, IrqSet, RegionInfoRaw};
    nix::ioctl_none_bad!(get_api_version, nix::request_code_none!(b';', 100));
    nix::ioctl_write_int_bad!(check_extension, nix::request_code_none!(b';', 101));
    nix::ioctl_write_int_bad!(set_iommu, nix::request_code_none!(b';', 102));
    nix::ioctl_readwrite_bad!(group_get_status, nix::request_code_none!(b';', 103), GroupStatus);
    nix::ioctl_write_ptr_bad!(group_set_container, nix::request_code_none!(b';', 104), libc::c_int);
    nix::ioctl_write_ptr_bad!(group_get_device_fd, nix::request_code_none!(b';', 106), libc::c_char);
    nix::ioctl_readwrite_bad!(device_get_info, nix::request_code_none!(b';', 107), DeviceInfoRaw);
    nix::ioctl_readwrite_bad!(device_get_region_info, nix::request_code_none!(b';', 108), RegionInfoRaw);
    nix::ioctl_readwrite_bad!(device_get_irq_info, nix::request_code_none!(b';', 109), IrqInfoRaw);
    nix::ioctl_write_ptr_bad!(device_set_irqs, nix::request_code_none!(b';', 110), IrqSet<2>);
    nix::ioctl_write_ptr_bad!(device_set_irqs_none, nix::request_code_none!(b';', 110), IrqSet<0>);
}

// ---------------------------------------------------------------------------------------------
// sysfs: finding the device and explaining its state (no lspci needed)
// ---------------------------------------------------------------------------------------------

/// `/sys/bus/pci/devices` under `sys` (normally `/sys`; tests pass a fake tree).
pub fn pci_devices_dir(sys: &Path) -> PathBuf {
    sys.join("bus/pci/devices")
}

/// Accept `0000:00:03.0` or `00:03.0` (domain 0 implied).
pub fn normalize_bdf(bdf: &str) -> String {
    let b = bdf.trim();
    if b.matches(':').count() == 1 {
        format!("0000:{b}")
    } else {
        b.to_string()
    }
}

fn read_hex(p: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(p).ok()?;
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// Every PCI device with this vendor and device id, sorted by address.
pub fn find_devices(sys: &Path, vendor: u16, device: u16) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(pci_devices_dir(sys)) {
        for e in rd.flatten() {
            let p = e.path();
            if read_hex(&p.join("vendor")) == Some(vendor as u32) && read_hex(&p.join("device")) == Some(device as u32) {
                found.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

fn link_name(p: &Path) -> Option<String> {
    let t = std::fs::read_link(p).ok()?;
    Some(t.file_name()?.to_string_lossy().into_owned())
}

/// The driver a device is bound to (`None`: unbound).
pub fn pci_driver(sys: &Path, bdf: &str) -> Option<String> {
    link_name(&pci_devices_dir(sys).join(bdf).join("driver"))
}

/// The IOMMU group number of a device (`None`: the kernel has no IOMMU for it).
pub fn iommu_group(sys: &Path, bdf: &str) -> Option<String> {
    link_name(&pci_devices_dir(sys).join(bdf).join("iommu_group"))
}

/// The shell commands that bind `bdf` to vfio-pci.
pub fn bind_commands(bdf: &str, current: Option<&str>) -> String {
    let mut s = String::from("modprobe vfio-pci; ");
    if let Some(d) = current {
        s.push_str(&format!("echo {bdf} > /sys/bus/pci/drivers/{d}/unbind; "));
    }
    s.push_str(&format!("echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe"));
    s
}

/// What to do when a device has no IOMMU group.
pub const NO_IOMMU_FIX: &str = "the kernel has no IOMMU for it: boot the guest with intel_iommu=on (amd_iommu=on on AMD) and give QEMU `-machine q35 -device intel-iommu` before the ivshmem device (the vfio-noiommu alternative needs a kernel built with CONFIG_VFIO_NOIOMMU and `modprobe vfio enable_unsafe_noiommu_mode=1`)";

/// Choose the device: `bdf` if given, else the single ivshmem device in the system.
pub fn choose_ivshmem(sys: &Path, bdf: Option<&str>) -> Result<String> {
    if let Some(b) = bdf {
        let b = normalize_bdf(b);
        if !pci_devices_dir(sys).join(&b).exists() {
            return Err(Error::Setup(format!(
                "no PCI device {b} (from VGPU_DEVICE): list the ivshmem devices with `grep -l 0x1110 /sys/bus/pci/devices/*/device`"
            )));
        }
        return Ok(b);
    }
    let found = find_devices(sys, IVSHMEM_VENDOR, IVSHMEM_DEVICE);
    match found.len() {
        0 => Err(Error::Setup(
            "no ivshmem device (PCI 1af4:1110) in this system: start QEMU with `-chardev socket,path=SOCK,id=ivs -device ivshmem-doorbell,chardev=ivs,vectors=2` and `vgpu serve --ivshmem SOCK` on the host".into(),
        )),
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        _ => Err(Error::Setup(format!("{} ivshmem devices ({}): pick one with VGPU_DEVICE=BDF", found.len(), found.join(", ")))),
    }
}

// ---------------------------------------------------------------------------------------------
// The device
// ---------------------------------------------------------------------------------------------

/// Where a VFIO region lives in the device fd, and what may be done with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    pub index: u32,
    pub size: u64,
    pub offset: u64,
    pub readable: bool,
    pub writable: bool,
    pub mappable: bool,
}

/// An open VFIO device with its container and group (all three fds stay open together: closing
/// the device fd turns its interrupts off).
#[derive(Debug)]
pub struct VfioDevice {
    bdf: String,
    group: String,
    noiommu: bool,
    // Field order is drop order: device, then group, then container.
    device: OwnedFd,
    _group_file: File,
    _container: File,
    num_regions: u32,
    num_irqs: u32,
}

fn errno_of(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

impl VfioDevice {
    /// Open `bdf` (e.g. `0000:00:03.0`) through VFIO. `sys` is the sysfs root (`/sys`).
    pub fn open(sys: &Path, bdf: &str) -> Result<VfioDevice> {
        let bdf = normalize_bdf(bdf);
        let dev_dir = pci_devices_dir(sys).join(&bdf);
        if !dev_dir.exists() {
            return Err(Error::Setup(format!("no PCI device {bdf} under {}", pci_devices_dir(sys).display())));
        }
        let driver = pci_driver(sys, &bdf);
        if driver.as_deref() != Some("vfio-pci") {
            let now = driver.as_deref().map_or("no driver".to_string(), |d| format!("driver {d}"));
            return Err(Error::Setup(format!(
                "PCI device {bdf} is bound to {now}, not vfio-pci: bind it (as root): {}",
                bind_commands(&bdf, driver.as_deref())
            )));
        }
        let Some(group) = iommu_group(sys, &bdf) else {
            return Err(Error::Setup(format!("PCI device {bdf} has no IOMMU group: {NO_IOMMU_FIX}")));
        };
        let (group_path, noiommu) = {
            let normal = PathBuf::from(format!("/dev/vfio/{group}"));
            let noiommu = PathBuf::from(format!("/dev/vfio/noiommu-{group}"));
            if !normal.exists() && noiommu.exists() {
                (noiommu, true)
            } else {
                (normal, false)
            }
        };
        let rw = |p: &Path| std::fs::OpenOptions::new().read(true).write(true).open(p);
        let container = rw(Path::new("/dev/vfio/vfio")).map_err(|e| {
            Error::Setup(match errno_of(&e) {
                Some(libc::ENOENT) | Some(libc::ENODEV) => {
                    format!("/dev/vfio/vfio is missing ({e}): load the VFIO modules: modprobe vfio-pci (and vfio_iommu_type1)")
                }
                Some(libc::EACCES) | Some(libc::EPERM) => {
                    format!("cannot open /dev/vfio/vfio ({e}): run as root, or give this user the device (chown or a udev rule)")
                }
                _ => format!("cannot open /dev/vfio/vfio: {e}"),
            })
        })?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument; the fd is a valid open container.
        let api =
            unsafe { ioctls::get_api_version(container.as_raw_fd()) }.map_err(|e| Error::Setup(format!("VFIO_GET_API_VERSION: {e}")))?;
        if api != VFIO_API_VERSION {
            return Err(Error::Setup(format!("the kernel's VFIO API is version {api}, this program knows version {VFIO_API_VERSION}")));
        }
        let group_file = rw(&group_path).map_err(|e| {
            Error::Setup(match errno_of(&e) {
                Some(libc::EBUSY) => format!(
                    "the VFIO group {} of {bdf} is busy ({e}): another process has the device open; only one vgpu guest process at a time can use it (stop the other one)",
                    group_path.display()
                ),
                Some(libc::ENOENT) => format!("{} is missing ({e}): is vfio-pci bound to {bdf}? {}", group_path.display(), bind_commands(&bdf, None)),
                Some(libc::EACCES) | Some(libc::EPERM) => format!("cannot open {} ({e}): run as root, or chown the group device to this user", group_path.display()),
                _ => format!("cannot open {}: {e}", group_path.display()),
            })
        })?;
        let mut status = GroupStatus { argsz: std::mem::size_of::<GroupStatus>() as u32, flags: 0 };
        // SAFETY: `status` is a live, correctly sized `vfio_group_status` the kernel fills.
        unsafe { ioctls::group_get_status(group_file.as_raw_fd(), &mut status) }
            .map_err(|e| Error::Setup(format!("VFIO_GROUP_GET_STATUS on {}: {e}", group_path.display())))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::Setup(format!(
                "IOMMU group {group} is not viable: every device in it must be bound to vfio-pci (see `ls /sys/kernel/iommu_groups/{group}/devices`); give the ivshmem device its own group (QEMU's intel-iommu does)"
            )));
        }
        let cfd: libc::c_int = container.as_raw_fd();
        // SAFETY: the argument points at a live c_int holding the container fd.
        unsafe { ioctls::group_set_container(group_file.as_raw_fd(), &cfd) }
            .map_err(|e| Error::Setup(format!("VFIO_GROUP_SET_CONTAINER for group {group}: {e}")))?;
        let iommu = if noiommu { VFIO_NOIOMMU_IOMMU } else { VFIO_TYPE1_IOMMU };
        // SAFETY: VFIO_CHECK_EXTENSION takes an int by value.
        let supported = unsafe { ioctls::check_extension(container.as_raw_fd(), iommu) }.unwrap_or(0);
        if supported <= 0 {
            return Err(Error::Setup(if noiommu {
                "the kernel's VFIO has no no-IOMMU support: boot with an IOMMU instead (intel_iommu=on and QEMU `-device intel-iommu`)"
                    .to_string()
            } else {
                "the kernel's VFIO has no type1 IOMMU backend: modprobe vfio_iommu_type1".to_string()
            }));
        }
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU model as an int by value.
        unsafe { ioctls::set_iommu(container.as_raw_fd(), iommu) }.map_err(|e| {
            Error::Setup(match e {
                nix::errno::Errno::EPERM => format!(
                    "VFIO_SET_IOMMU: {e}: the IOMMU lacks interrupt remapping; enable it (QEMU: `-device intel-iommu,intremap=on` with `-machine q35,kernel-irqchip=split`) or, in a test VM only, `modprobe vfio_iommu_type1 allow_unsafe_interrupts=1`"
                ),
                _ => format!("VFIO_SET_IOMMU: {e}"),
            })
        })?;
        let name = CString::new(bdf.clone()).map_err(|_| Error::Setup("PCI address contains a NUL".into()))?;
        // SAFETY: the argument is a NUL-terminated string that outlives the call.
        let dfd = unsafe { ioctls::group_get_device_fd(group_file.as_raw_fd(), name.as_ptr()) }.map_err(|e| {
            Error::Setup(format!("VFIO_GROUP_GET_DEVICE_FD({bdf}): {e}: is the device in group {group} and bound to vfio-pci?"))
        })?;
        // SAFETY: the ioctl returned a new fd that this process owns and nothing else holds.
        let device = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dfd) };
        let mut info = DeviceInfoRaw { argsz: std::mem::size_of::<DeviceInfoRaw>() as u32, ..Default::default() };
        // SAFETY: `info` is a live, correctly sized `vfio_device_info` the kernel fills.
        unsafe { ioctls::device_get_info(device.as_raw_fd(), &mut info) }
            .map_err(|e| Error::Setup(format!("VFIO_DEVICE_GET_INFO({bdf}): {e}")))?;
        Ok(VfioDevice {
            bdf,
            group,
            noiommu,
            device,
            _group_file: group_file,
            _container: container,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        })
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Whether the group is a no-IOMMU group (`VFIO_NOIOMMU_IOMMU`).
    pub fn is_noiommu(&self) -> bool {
        self.noiommu
    }

    pub fn device_fd(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }

    /// Region info of region `index` (a BAR, or [`CONFIG_REGION`]).
    pub fn region_info(&self, index: u32) -> Result<RegionInfo> {
        if index >= self.num_regions {
            return Err(Error::Setup(format!("{} has {} VFIO regions, region {index} does not exist", self.bdf, self.num_regions)));
        }
        let mut r = RegionInfoRaw { argsz: std::mem::size_of::<RegionInfoRaw>() as u32, index, ..Default::default() };
        // SAFETY: `r` is a live, correctly sized `vfio_region_info` the kernel fills.
        unsafe { ioctls::device_get_region_info(self.device.as_raw_fd(), &mut r) }
            .map_err(|e| Error::Setup(format!("VFIO_DEVICE_GET_REGION_INFO({}, region {index}): {e}", self.bdf)))?;
        Ok(RegionInfo {
            index,
            size: r.size,
            offset: r.offset,
            readable: r.flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: r.flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mappable: r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        })
    }

    /// Map region `index` shared and read-write.
    pub fn map_region(&self, index: u32) -> Result<MmapRaw> {
        let info = self.region_info(index)?;
        if info.size == 0 {
            return Err(Error::Setup(format!(
                "BAR{index} of {} is empty: the QEMU device must be `ivshmem-doorbell` (or `ivshmem-plain`) with its shared memory",
                self.bdf
            )));
        }
        if !info.mappable {
            return Err(Error::Setup(format!("BAR{index} of {} cannot be mapped through VFIO", self.bdf)));
        }
        let len = usize::try_from(info.size).map_err(|_| Error::Setup("BAR too large".into()))?;
        memmap2::MmapOptions::new()
            .offset(info.offset)
            .len(len)
            .map_raw(self.device.as_raw_fd())
            .map_err(|e| Error::Setup(format!("mmap of BAR{index} ({} bytes) of {}: {e}", info.size, self.bdf)))
    }

    /// Read `buf.len()` bytes of region `info` at `off` with pread (for registers that cannot be
    /// mapped, and config space).
    pub fn region_read(&self, info: &RegionInfo, off: u64, buf: &mut [u8]) -> Result<()> {
        if off.checked_add(buf.len() as u64).is_none_or(|e| e > info.size) {
            return Err(Error::Setup(format!("read of {}+{} beyond region {}", off, buf.len(), info.index)));
        }
        let n = nix::sys::uio::pread(&self.device, buf, (info.offset + off) as i64)
            .map_err(|e| Error::Setup(format!("pread of region {} of {}: {e}", info.index, self.bdf)))?;
        if n != buf.len() {
            return Err(Error::Setup(format!("short pread of region {} of {}", info.index, self.bdf)));
        }
        Ok(())
    }

    /// Write `buf` into region `info` at `off` with pwrite.
    pub fn region_write(&self, info: &RegionInfo, off: u64, buf: &[u8]) -> Result<()> {
        if off.checked_add(buf.len() as u64).is_none_or(|e| e > info.size) {
            return Err(Error::Setup(format!("write of {}+{} beyond region {}", off, buf.len(), info.index)));
        }
        let n = nix::sys::uio::pwrite(&self.device, buf, (info.offset + off) as i64)
            .map_err(|e| Error::Setup(format!("pwrite of region {} of {}: {e}", info.index, self.bdf)))?;
        if n != buf.len() {
            return Err(Error::Setup(format!("short pwrite of region {} of {}", info.index, self.bdf)));
        }
        Ok(())
    }

    /// PCI_COMMAND from config space.
    pub fn pci_command(&self) -> Result<u16> {
        let cfg = self.region_info(CONFIG_REGION)?;
        let mut b = [0u8; 2];
        self.region_read(&cfg, PCI_COMMAND, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Set the bus-master bit of PCI_COMMAND. vfio-pci leaves it clear for user space, and
    /// without it QEMU drops every MSI-X message (vm-path.md pitfall 1).
    pub fn set_bus_master(&self) -> Result<()> {
        let cfg = self.region_info(CONFIG_REGION)?;
        let cmd = self.pci_command()?;
        if cmd & PCI_COMMAND_MASTER == 0 {
            self.region_write(&cfg, PCI_COMMAND, &(cmd | PCI_COMMAND_MASTER).to_le_bytes())?;
        }
        if self.pci_command()? & PCI_COMMAND_MASTER == 0 {
            return Err(Error::Setup(format!(
                "could not set bus mastering (PCI_COMMAND bit 2) on {}: interrupts would be dropped",
                self.bdf
            )));
        }
        Ok(())
    }

    /// How many vectors the device's interrupt index `index` has.
    pub fn irq_count(&self, index: u32) -> Result<u32> {
        if index >= self.num_irqs {
            return Ok(0);
        }
        let mut i = IrqInfoRaw { argsz: std::mem::size_of::<IrqInfoRaw>() as u32, index, ..Default::default() };
        // SAFETY: `i` is a live, correctly sized `vfio_irq_info` the kernel fills.
        unsafe { ioctls::device_get_irq_info(self.device.as_raw_fd(), &mut i) }
            .map_err(|e| Error::Setup(format!("VFIO_DEVICE_GET_IRQ_INFO({}, {index}): {e}", self.bdf)))?;
        Ok(i.count)
    }

    /// Route MSI-X vectors 0 and 1 to the two eventfds (`DATA_EVENTFD | ACTION_TRIGGER`).
    pub fn enable_msix(&self, fds: [RawFd; 2]) -> Result<()> {
        let n = self.irq_count(MSIX_IRQ)?;
        if n < 2 {
            return Err(Error::Setup(format!(
                "{} has {n} MSI-X vectors, vgpu needs 2: start QEMU with `-device ivshmem-doorbell,chardev=ivs,vectors=2`",
                self.bdf
            )));
        }
        let set = IrqSet::<2> {
            argsz: std::mem::size_of::<IrqSet<2>>() as u32,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: MSIX_IRQ,
            start: 0,
            count: 2,
            data: fds,
        };
        // SAFETY: `set` is a live `vfio_irq_set` whose argsz covers its two eventfds.
        unsafe { ioctls::device_set_irqs(self.device.as_raw_fd(), &set) }
            .map_err(|e| Error::Setup(format!("VFIO_DEVICE_SET_IRQS (MSI-X, 2 eventfds) on {}: {e}", self.bdf)))?;
        Ok(())
    }

    /// Turn the interrupts of index `index` off (`DATA_NONE | ACTION_TRIGGER`, count 0).
    pub fn disable_irqs(&self, index: u32) -> Result<()> {
        let set = IrqSet::<0> {
            argsz: std::mem::size_of::<IrqSet<0>>() as u32,
            flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
            data: [],
        };
        // SAFETY: `set` is a live `vfio_irq_set` with no data.
        unsafe { ioctls::device_set_irqs_none(self.device.as_raw_fd(), &set) }
            .map_err(|e| Error::Setup(format!("VFIO_DEVICE_SET_IRQS (disable {index}) on {}: {e}", self.bdf)))?;
        Ok(())
    }
}

/// 32-bit registers of a BAR: through a mapping when VFIO allows one, else pread/pwrite on the
/// device fd. Holds the device open.
pub struct Mmio {
    dev: Arc<VfioDevice>,
    info: RegionInfo,
    map: Option<MmapRaw>,
}

impl std::fmt::Debug for Mmio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmio").field("bdf", &self.dev.bdf).field("region", &self.info.index).field("mapped", &self.map.is_some()).finish()
    }
}

impl Mmio {
    /// Registers of BAR `index` of `dev`.
    pub fn new(dev: Arc<VfioDevice>, index: u32) -> Result<Mmio> {
        let info = dev.region_info(index)?;
        if info.size < 16 {
            return Err(Error::Setup(format!("BAR{index} of {} has {} bytes, expected the ivshmem registers", dev.bdf, info.size)));
        }
        // A BAR smaller than a page is mappable only when it sits alone in its page; otherwise
        // fall back to pread/pwrite (slower, but every doorbell is a single write either way).
        let map = if info.mappable { dev.map_region(index).ok() } else { None };
        Ok(Mmio { dev, info, map })
    }

    fn check(&self, off: u64) {
        assert!(off.is_multiple_of(4) && off + 4 <= self.info.size, "register offset {off} outside BAR{}", self.info.index);
    }

    /// 32-bit volatile write at `off`.
    pub fn write32(&self, off: u64, v: u32) {
        self.check(off);
        match &self.map {
            // SAFETY: `off + 4 <= size` (checked) and 4-aligned; the mapping lives as long as
            // `self`. A volatile 32-bit store is one MMIO write; no reference is created.
            Some(m) => unsafe { std::ptr::write_volatile(m.as_mut_ptr().add(off as usize).cast::<u32>(), v) },
            None => {
                let _ = self.dev.region_write(&self.info, off, &v.to_le_bytes());
            }
        }
    }

    /// 32-bit volatile read at `off`.
    pub fn read32(&self, off: u64) -> u32 {
        self.check(off);
        match &self.map {
            // SAFETY: as in `write32`; one 32-bit MMIO read, by value.
            Some(m) => unsafe { std::ptr::read_volatile(m.as_ptr().add(off as usize).cast::<u32>()) },
            None => {
                let mut b = [0u8; 4];
                let _ = self.dev.region_read(&self.info, off, &mut b);
                u32::from_le_bytes(b)
            }
        }
    }
}

// SAFETY: `Mmio` holds an MMIO mapping accessed only by volatile 32-bit reads and writes through
// raw pointers (no references), which any thread may issue; the rest is `Send + Sync`.
unsafe impl Send for Mmio {}
// SAFETY: see `Send`.
unsafe impl Sync for Mmio {}

// ---------------------------------------------------------------------------------------------
// UIO interrupts (INTx devices)
// ---------------------------------------------------------------------------------------------

/// An interrupt source that is a UIO device fd (`/dev/uioN` of `uio_pci_generic`), for devices
/// with an INTx pin. Reading returns the 4-byte interrupt count (it blocks until the count moves);
/// writing a 4-byte 1 re-enables the interrupt, which `uio_pci_generic` masks on each delivery.
///
/// Use: [`UioInterrupt::wait`] directly, or [`UioInterrupt::bridge`] to get an eventfd the
/// transport's client can sleep on like any other interrupt fd (a small thread waits on the UIO
/// fd and signals the eventfd; that extra hop is fine for INTx devices, which are slow anyway).
///
/// Note: QEMU's `ivshmem-doorbell` has no INTx pin unless started with `msi=off`, and vgpu needs
/// two vectors, so an ivshmem VM uses VFIO and MSI-X; this adapter is for other devices.
#[derive(Debug)]
pub struct UioInterrupt {
    fd: OwnedFd,
}

impl UioInterrupt {
    /// Wrap a UIO fd (opened read-write) and enable its interrupt.
    pub fn new(fd: OwnedFd) -> std::io::Result<UioInterrupt> {
        let u = UioInterrupt { fd };
        u.enable()?;
        Ok(u)
    }

    /// Open `/dev/uioN`.
    pub fn open(path: &Path) -> std::io::Result<UioInterrupt> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        UioInterrupt::new(OwnedFd::from(f))
    }

    /// Re-enable the interrupt (write a 4-byte 1).
    pub fn enable(&self) -> std::io::Result<()> {
        nix::unistd::write(&self.fd, &1u32.to_ne_bytes())?;
        Ok(())
    }

    /// Wait up to `timeout_ms` for an interrupt. Returns the new interrupt count, or `None` on
    /// timeout; the interrupt is re-enabled before this returns.
    pub fn wait(&self, timeout_ms: i32) -> std::io::Result<Option<u32>> {
        if !crate::notify::wait_readable(&[self.fd.as_fd()], timeout_ms)[0] {
            return Ok(None);
        }
        let mut b = [0u8; 4];
        let n = nix::unistd::read(self.fd.as_raw_fd(), &mut b)?;
        if n != 4 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short read of a UIO interrupt count"));
        }
        self.enable()?;
        Ok(Some(u32::from_ne_bytes(b)))
    }

    /// Forward every interrupt to a new non-blocking eventfd and return it (hand it to the
    /// client as an interrupt fd) with a guard: the forwarding thread ends within 100 ms of the
    /// guard's drop, or when the UIO fd fails.
    pub fn bridge(self) -> std::io::Result<(OwnedFd, UioBridge)> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let ev = OwnedFd::from(EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?);
        let out = ev.try_clone()?;
        let stop = Arc::new(crate::sync::plain::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new().name("vgpu-uio-irq".into()).spawn(move || {
            while !flag.load(crate::sync::Ordering::Relaxed) {
                match self.wait(100) {
                    Ok(Some(_)) => {
                        let _ = nix::unistd::write(&ev, &1u64.to_ne_bytes());
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        })?;
        Ok((out, UioBridge { stop }))
    }
}

/// Stops a [`UioInterrupt::bridge`] thread when dropped.
#[derive(Debug)]
pub struct UioBridge {
    stop: Arc<crate::sync::plain::AtomicBool>,
}

impl Drop for UioBridge {
    fn drop(&mut self) {
        self.stop.store(true, crate::sync::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs() -> PathBuf {
        let root = std::env::temp_dir().join(format!("vgpu-sysfs-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&root);
        let devs = pci_devices_dir(&root);
        for (bdf, vendor, device) in [("0000:00:03.0", "0x1af4", "0x1110"), ("0000:00:02.0", "0x8086", "0x100e")] {
            let d = devs.join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        }
        std::fs::create_dir_all(root.join("bus/pci/drivers/uio_pci_generic")).unwrap();
        std::os::unix::fs::symlink(root.join("bus/pci/drivers/uio_pci_generic"), devs.join("0000:00:03.0/driver")).unwrap();
        root
    }

    #[test]
    fn finds_the_ivshmem_device_and_explains_binding() {
        let root = fake_sysfs();
        assert_eq!(find_devices(&root, IVSHMEM_VENDOR, IVSHMEM_DEVICE), vec!["0000:00:03.0".to_string()]);
        assert_eq!(choose_ivshmem(&root, None).unwrap(), "0000:00:03.0");
        assert_eq!(choose_ivshmem(&root, Some("00:03.0")).unwrap(), "0000:00:03.0");
        assert!(choose_ivshmem(&root, Some("0000:00:09.0")).is_err());
        assert_eq!(pci_driver(&root, "0000:00:03.0").as_deref(), Some("uio_pci_generic"));
        assert_eq!(iommu_group(&root, "0000:00:03.0"), None);
        let e = VfioDevice::open(&root, "0000:00:03.0").unwrap_err().to_string();
        assert!(e.contains("echo vfio-pci > /sys/bus/pci/devices/0000:00:03.0/driver_override"), "{e}");
        assert!(e.contains("echo 0000:00:03.0 > /sys/bus/pci/drivers/uio_pci_generic/unbind"), "{e}");
        assert!(e.contains("echo 0000:00:03.0 > /sys/bus/pci/drivers_probe"), "{e}");
        // Bound to vfio-pci but no IOMMU group: the message names the IOMMU fix.
        let devs = pci_devices_dir(&root);
        std::fs::remove_file(devs.join("0000:00:03.0/driver")).unwrap();
        std::fs::create_dir_all(root.join("bus/pci/drivers/vfio-pci")).unwrap();
        std::os::unix::fs::symlink(root.join("bus/pci/drivers/vfio-pci"), devs.join("0000:00:03.0/driver")).unwrap();
        let e = VfioDevice::open(&root, "0000:00:03.0").unwrap_err().to_string();
        assert!(e.contains("intel_iommu=on"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn uio_adapter_reads_count_and_reenables() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let u = UioInterrupt::new(OwnedFd::from(a)).unwrap();
        let mut got = [0u8; 4];
        use std::io::{Read, Write};
        let mut b = b;
        b.read_exact(&mut got).unwrap();
        assert_eq!(u32::from_ne_bytes(got), 1, "enabled at creation");
        assert_eq!(u.wait(10).unwrap(), None);
        b.write_all(&7u32.to_ne_bytes()).unwrap();
        assert_eq!(u.wait(1000).unwrap(), Some(7));
        b.read_exact(&mut got).unwrap();
        assert_eq!(u32::from_ne_bytes(got), 1, "re-enabled after the interrupt");
        let (ev, guard) = u.bridge().unwrap();
        b.write_all(&8u32.to_ne_bytes()).unwrap();
        assert!(crate::notify::wait_readable(&[ev.as_fd()], 2000)[0]);
        drop(guard);
    }
}
