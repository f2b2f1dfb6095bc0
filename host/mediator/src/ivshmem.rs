//! The `ivshmem` link, host side: the mediator is the ivshmem server of QEMU's stock
//! `ivshmem-doorbell` device, and peer 0 on it.
//!
//! One socket serves one VM with one region (a sealed memfd of `--size` bytes), so no guest can
//! see another's memory. The wire protocol is QEMU's (`docs/specs/ivshmem-spec.rst`): every
//! message is a little-endian `i64`, some carry one file descriptor (SCM_RIGHTS). On connect the
//! server sends, each as its own message:
//!
//! 1. `0`, the protocol version;
//! 2. the client's peer id (`1`, the VM);
//! 3. `-1` with the shared-memory fd;
//! 4. `0` with eventfd D0, `0` with eventfd D1: peer 0's (the mediator's) vectors, i.e. the
//!    doorbells QEMU signals when the guest writes `(0 << 16) | v` to BAR0 Doorbell;
//! 5. `1` with eventfd I0, `1` with eventfd I1: the VM's own vectors, which QEMU turns into
//!    MSI-X interrupts in the guest when the mediator signals them.
//!
//! QEMU never sends anything back; the socket's hang-up means the VM (or its device) is gone.
//! What the guest writes into the region is validated by [`vgpu_transport::Server`], which
//! serves successive guest processes by epoch ([`vgpu_transport::Server::run_epochs`]).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vgpu_transport::notify::EventFd;
use vgpu_transport::region::{self, Region};
use vgpu_transport::wire::{hdr, Layout, DEFAULT_DEPTH, IRQ_VECTORS};

/// The version number the ivshmem-server protocol starts with.
pub const PROTOCOL_VERSION: i64 = 0;
/// The mediator's peer id.
pub const HOST_PEER: i64 = 0;
/// The VM's peer id (one VM per socket).
pub const VM_PEER: i64 = 1;
/// Default region size (`--size`).
pub const DEFAULT_SIZE: u64 = 128 << 20;
/// Smallest region size accepted.
pub const MIN_SIZE: u64 = 1 << 20;
/// Largest region size accepted (a PCI BAR of QEMU's device; the window then far exceeds what a
/// direct session may have).
pub const MAX_SIZE: u64 = 16 << 30;

/// Parse a size such as `134217728`, `128M`, `128MiB`, `1G`, `512k`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}: expected a number with an optional unit (K, M, G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("bad size {s:?}: unknown unit {unit:?} (use K, M or G)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("size {s:?} is too large"))
}

/// Check a region size: a power of two (QEMU maps it as a PCI BAR) in `[MIN_SIZE, MAX_SIZE]`.
pub fn check_size(size: u64) -> Result<(), String> {
    if !size.is_power_of_two() || !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(format!(
            "ivshmem size {size} must be a power of two between 1 MiB and 16 GiB (QEMU maps it as a PCI BAR), e.g. --size 128M"
        ));
    }
    Ok(())
}

/// The layout of a region of `size` bytes: the default ring depth (halved while the rings
/// would take more than a quarter of the region), the rest of the region as the data window.
pub fn layout_for(size: u64) -> Result<Layout, String> {
    check_size(size)?;
    let mut depth = DEFAULT_DEPTH;
    loop {
        let probe = Layout::new(depth, 0).ok_or("no ring depth fits")?;
        if probe.window_off <= size / 4 || depth == 1 {
            let window = (size - probe.window_off) / 4096 * 4096;
            let l = Layout::new(depth, window).ok_or("no layout fits")?;
            debug_assert!(l.region_len <= size);
            return Ok(l);
        }
        depth /= 2;
    }
}

/// Send one protocol message, with an optional file descriptor.
pub fn send_msg(sock: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let bytes = value.to_le_bytes();
    let iov = [std::io::IoSlice::new(&bytes)];
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsg: Vec<ControlMessage<'_>> = raw.as_ref().map(|r| vec![ControlMessage::ScmRights(r)]).unwrap_or_default();
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    if n != bytes.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "short write of an ivshmem message"));
    }
    Ok(())
}

/// A VM attached to its socket: the region, the doorbells it rings, the interrupts it takes.
pub struct VmLink {
    pub region: Arc<Region>,
    /// D0, D1: the host's doorbells (read side).
    pub doorbells: Vec<EventFd>,
    /// I0, I1: the VM's interrupt vectors (write side).
    pub interrupts: Vec<EventFd>,
    /// The QEMU connection; its hang-up means the VM is gone.
    pub conn: UnixStream,
}

/// Set a VM up on an accepted connection: create its region (`size` bytes, header block 0
/// written, `HOST_GENERATION` = `generation`) and eventfds, and send the server's messages.
pub fn attach(conn: UnixStream, size: u64, session_id: u64, generation: u64) -> Result<VmLink, String> {
    let layout = layout_for(size)?;
    let fd = region::create_memfd("vgpu-ivshmem", size).map_err(|e| e.to_string())?;
    let region = Region::map_fd(&fd, size, layout).map_err(|e| e.to_string())?;
    region.write_u64(hdr::HOST_GENERATION, generation);
    region.init_header(session_id);
    let ev = |what: &str| EventFd::new().map_err(|e| format!("creating the {what} eventfd: {e}"));
    let doorbells = (0..IRQ_VECTORS).map(|_| ev("doorbell")).collect::<Result<Vec<_>, _>>()?;
    let interrupts = (0..IRQ_VECTORS).map(|_| ev("interrupt")).collect::<Result<Vec<_>, _>>()?;
    let send = |v: i64, f: Option<BorrowedFd<'_>>| send_msg(&conn, v, f).map_err(|e| format!("sending to the VM: {e}"));
    send(PROTOCOL_VERSION, None)?;
    send(VM_PEER, None)?;
    send(-1, Some(std::os::fd::AsFd::as_fd(&fd)))?;
    for d in &doorbells {
        send(HOST_PEER, Some(std::os::fd::AsFd::as_fd(d)))?;
    }
    for i in &interrupts {
        send(VM_PEER, Some(std::os::fd::AsFd::as_fd(i)))?;
    }
    // The mapping keeps the memory; our fd is not needed any more (QEMU holds its own).
    drop(fd);
    Ok(VmLink { region: Arc::new(region), doorbells, interrupts, conn })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_must_be_powers_of_two() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(check_size(3 << 20).is_err());
        assert!(check_size(512 << 10).is_err());
        assert!(check_size(1 << 20).is_ok());
    }

    #[test]
    fn layouts_fit_their_region() {
        for shift in 20..=34 {
            let size = 1u64 << shift;
            let l = layout_for(size).unwrap();
            assert!(l.region_len <= size, "{l:?} for {size}");
            assert!(l.window_len >= size / 2, "{l:?} for {size}");
            assert_eq!(l.validate(size), Ok(()));
        }
        assert_eq!(layout_for(128 << 20).unwrap().sq_depth, DEFAULT_DEPTH);
    }
}
