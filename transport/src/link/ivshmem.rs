//! The `ivshmem` link, guest side: the region is BAR2 of QEMU's stock `ivshmem-doorbell` PCI
//! device (PCI `1af4:1110`), the doorbell is its BAR0 Doorbell register, the interrupts are its
//! MSI-X vectors 0 and 1. The host mediator is the ivshmem server and peer 0
//! (`vgpu serve --ivshmem SOCKET`); it writes the region header once when the VM connects.
//!
//! Two ways to obtain the device ([`IvshmemDevice`]):
//! - [`IvshmemDevice::open_vfio`]: inside a VM, through VFIO ([`super::vfio`]): map BAR0 and
//!   BAR2, set bus mastering, route MSI-X vectors 0/1 to two eventfds. The doorbell is a 32-bit
//!   write of `(0 << 16) | 0` (peer 0, vector 0) to BAR0 offset 12.
//! - [`IvshmemDevice::connect_peer`]: on the host (CI tests, containers), as a plain peer on the
//!   server's socket, exactly as QEMU does: receive the protocol version, this peer's id, the
//!   shared-memory fd, peer 0's doorbell eventfds and this peer's own interrupt eventfds.
//!
//! There is no Hello/Welcome: the guest validates the header it finds (magic, version, features,
//! layout), then opens a session with the epoch handshake ([`open_session`]) and runs the same
//! [`Client`] as the direct link, with heartbeat liveness ([`HeartbeatWatch`]) instead of a
//! socket hang-up. See docs/protocol.md, "The ivshmem link".

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::MmapRaw;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tracing::{debug, info};

use super::vfio::{self, Mmio, VfioDevice};
use crate::client::{Client, ClientConfig, LinkWatch};
use crate::notify::{EventFd, Notify};
use crate::region::Region;
use crate::sync::Ordering;
use crate::wire::{hdr, HostState};
use crate::{Error, Result};

/// Offsets of the ivshmem BAR0 registers (QEMU `docs/specs/ivshmem-spec.rst`).
pub mod reg {
    /// Interrupt mask (INTx only).
    pub const INTR_MASK: u64 = 0;
    /// Interrupt status (INTx only).
    pub const INTR_STATUS: u64 = 4;
    /// This VM's peer id (read-only).
    pub const IV_POSITION: u64 = 8;
    /// Write `(peer << 16) | vector` to interrupt `peer` on `vector`.
    pub const DOORBELL: u64 = 12;
}

/// The mediator's peer id on the ivshmem server.
pub const HOST_PEER_ID: u32 = 0;
/// How long a guest waits for the host to accept its epoch, and for the server's messages.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A heartbeat unchanged this long means the host is gone.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the reactor looks at the heartbeat.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// A mapped ivshmem device: the shared memory, a doorbell to peer 0 and two interrupt fds.
pub struct IvshmemDevice {
    map: MmapRaw,
    doorbell: Box<dyn Notify>,
    interrupts: [OwnedFd; 2],
    peer_id: Option<u32>,
    keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
    describe: String,
}

impl std::fmt::Debug for IvshmemDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IvshmemDevice")
            .field("device", &self.describe)
            .field("len", &self.map.len())
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

fn new_eventfd() -> Result<OwnedFd> {
    use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};
    let e = NixEventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(|e| Error::Setup(format!("eventfd: {e}")))?;
    Ok(OwnedFd::from(e))
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| Error::Setup(format!("fcntl: {e}")))?;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK))
        .map_err(|e| Error::Setup(format!("fcntl: {e}")))?;
    Ok(())
}

/// The VFIO doorbell: one 32-bit write of `(peer << 16) | vector` to BAR0's Doorbell register.
struct BarDoorbell {
    regs: Mmio,
    value: u32,
}

impl Notify for BarDoorbell {
    fn notify(&self) {
        self.regs.write32(reg::DOORBELL, self.value);
    }
}

impl IvshmemDevice {
    /// Open the ivshmem device through VFIO: `bdf` (or `VGPU_DEVICE`'s value), else the single
    /// `1af4:1110` device in the system.
    pub fn open_vfio(bdf: Option<&str>) -> Result<IvshmemDevice> {
        IvshmemDevice::open_vfio_in(Path::new("/sys"), bdf)
    }

    /// [`open_vfio`](Self::open_vfio) with another sysfs root (tests).
    pub fn open_vfio_in(sys: &Path, bdf: Option<&str>) -> Result<IvshmemDevice> {
        let bdf = vfio::choose_ivshmem(sys, bdf)?;
        let dev = Arc::new(VfioDevice::open(sys, &bdf)?);
        let regs = Mmio::new(dev.clone(), vfio::BAR0)?;
        let map = dev.map_region(vfio::BAR2)?;
        dev.set_bus_master()?;
        let interrupts = [new_eventfd()?, new_eventfd()?];
        dev.enable_msix([interrupts[0].as_raw_fd(), interrupts[1].as_raw_fd()])?;
        let peer_id = regs.read32(reg::IV_POSITION);
        info!(target: "vgpu::transport", bdf = %bdf, group = %dev.group(), peer_id, len = map.len(), "ivshmem device opened through VFIO");
        Ok(IvshmemDevice {
            map,
            doorbell: Box::new(BarDoorbell { regs, value: (HOST_PEER_ID << 16) }),
            interrupts,
            peer_id: Some(peer_id),
            keep: vec![Box::new(dev)],
            describe: format!("ivshmem device {bdf} (VFIO)"),
        })
    }

    /// Connect to an ivshmem server's socket as a plain peer, as QEMU does.
    pub fn connect_peer(path: &Path) -> Result<IvshmemDevice> {
        let fix = || format!("start `vgpu serve --ivshmem {}` first (one socket per VM or peer)", path.display());
        let sock = UnixStream::connect(path)
            .map_err(|e| Error::Setup(format!("cannot connect to the ivshmem server at {}: {e}: {}", path.display(), fix())))?;
        IvshmemDevice::peer_on_socket(sock, path)
    }

    /// The peer handshake of [`connect_peer`](Self::connect_peer) on a connected socket (`path`
    /// names the server in messages). Public for the fuzz harness (`fuzz/`), which feeds it
    /// hostile server messages through a socket pair.
    #[doc(hidden)]
    pub fn peer_on_socket(sock: UnixStream, path: &Path) -> Result<IvshmemDevice> {
        let fix = || format!("start `vgpu serve --ivshmem {}` first (one socket per VM or peer)", path.display());
        sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| Error::Setup(format!("socket timeout: {e}")))?;
        let next = || read_server_msg(&sock).map_err(|e| Error::Setup(format!("ivshmem server at {}: {e}", path.display())));
        let (version, _) = read_server_msg(&sock).map_err(|e| {
            Error::Setup(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!(
                    "the ivshmem server at {} closed the connection unanswered: it already serves a VM or peer on this socket (one socket per VM)",
                    path.display()
                )
            } else {
                format!("ivshmem server at {}: {e}", path.display())
            })
        })?;
        if version != 0 {
            return Err(Error::Version(format!(
                "the ivshmem server at {} speaks ivshmem protocol {version}, this peer speaks 0",
                path.display()
            )));
        }
        let (own_id, fd) = next()?;
        if fd.is_some() || !(0..=0xffff).contains(&own_id) {
            return Err(Error::Protocol(format!("the ivshmem server sent {own_id} as this peer's id")));
        }
        let (shm_tag, shm) = next()?;
        let shm = match (shm_tag, shm) {
            (-1, Some(fd)) => fd,
            (tag, _) => {
                return Err(Error::Protocol(format!("the ivshmem server sent {tag} where the shared memory fd (-1) belongs: {}", fix())))
            }
        };
        let mut host_doorbells: Vec<OwnedFd> = Vec::new();
        let mut own: Vec<OwnedFd> = Vec::new();
        while own.len() < crate::wire::IRQ_VECTORS || host_doorbells.is_empty() {
            match next()? {
                (id, Some(fd)) if id == own_id => own.push(fd),
                (id, Some(fd)) if id == HOST_PEER_ID as i64 => host_doorbells.push(fd),
                (id, Some(_)) => debug!(target: "vgpu::transport", peer = id, "ivshmem: ignoring another peer's eventfd"),
                (id, None) if id == HOST_PEER_ID as i64 => {
                    return Err(Error::LinkDown(format!("the ivshmem server at {} says the mediator (peer 0) left", path.display())))
                }
                (id, None) => debug!(target: "vgpu::transport", peer = id, "ivshmem: peer left"),
            }
        }
        sock.set_read_timeout(None).map_err(|e| Error::Setup(format!("socket: {e}")))?;
        let size = nix::sys::stat::fstat(shm.as_raw_fd()).map_err(|e| Error::Setup(format!("fstat of the shared memory fd: {e}")))?.st_size;
        let len = usize::try_from(size).map_err(|_| Error::Protocol(format!("shared memory of {size} bytes")))?;
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(shm.as_raw_fd())
            .map_err(|e| Error::Setup(format!("mmap of the {len} byte ivshmem shared memory: {e}")))?;
        drop(shm);
        let doorbell = EventFd::from_owned(host_doorbells.swap_remove(0)).map_err(|e| Error::Setup(format!("doorbell eventfd: {e}")))?;
        let mut own = own.into_iter();
        let (Some(i0), Some(i1)) = (own.next(), own.next()) else {
            return Err(Error::Protocol("the ivshmem server sent fewer than two interrupt eventfds".into()));
        };
        set_nonblocking(&i0)?;
        set_nonblocking(&i1)?;
        debug!(target: "vgpu::transport", path = %path.display(), peer_id = own_id, len, "ivshmem peer connected");
        Ok(IvshmemDevice {
            map,
            doorbell: Box::new(doorbell),
            interrupts: [i0, i1],
            peer_id: Some(own_id as u32),
            keep: vec![Box::new(sock)],
            describe: format!("ivshmem server {} (peer {own_id})", path.display()),
        })
    }

    /// A device from parts obtained some other way (e.g. a UIO map and
    /// [`vfio::UioInterrupt::bridge`]). `keep` is held as long as the session lives.
    pub fn from_parts(
        map: MmapRaw,
        doorbell: Box<dyn Notify>,
        interrupts: [OwnedFd; 2],
        keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
        describe: String,
    ) -> IvshmemDevice {
        IvshmemDevice { map, doorbell, interrupts, peer_id: None, keep, describe }
    }

    /// What this device is, for messages.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// This peer's id on the ivshmem server (IVPosition), if known.
    pub fn peer_id(&self) -> Option<u32> {
        self.peer_id
    }

    /// Size of the shared memory.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Ring the host (peer 0, vector 0).
    pub fn ring(&self) {
        self.doorbell.notify()
    }
}

/// Read one ivshmem-server message: a little-endian i64, with at most one fd.
fn read_server_msg(sock: &UnixStream) -> std::io::Result<(i64, Option<OwnedFd>)> {
    let mut buf = [0u8; 8];
    let mut got = 0usize;
    let mut fd: Option<OwnedFd> = None;
    while got < 8 {
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let (n, fds) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf[got..])];
            let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).map_err(|e| {
                if e == nix::errno::Errno::EAGAIN {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out waiting for the server's messages")
                } else {
                    std::io::Error::from(e)
                }
            })?;
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(v) = c {
                    for f in v {
                        // SAFETY: the kernel just installed `f` in this process for us
                        // (SCM_RIGHTS); nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(f) });
                    }
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        got += n;
        for f in fds {
            // More than one fd per message is a server bug; keep the first, close the rest.
            fd.get_or_insert(f);
        }
    }
    Ok((i64::from_le_bytes(buf), fd))
}

/// Liveness on the ivshmem link: the host's heartbeat must move at least every
/// [`HEARTBEAT_TIMEOUT`], its generation must not change, `HOST_EPOCH` must stay ours (another
/// guest process did not take the device over), and the state must not be Closed (the reactor
/// checks `HOST_STATE` itself).
pub struct HeartbeatWatch {
    generation: u64,
    epoch: u64,
    state: std::sync::Mutex<(u64, Instant)>,
    _keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl HeartbeatWatch {
    /// Judge the header now (`Err(reason)` when the host is gone).
    pub fn judge(&self, region: &Region) -> std::result::Result<(), String> {
        let generation = region.atomic_u64(hdr::HOST_GENERATION).load(Ordering::Acquire);
        if generation != self.generation {
            return Err(format!(
                "the vgpu mediator was replaced (host generation {:#x} -> {generation:#x}): this session is gone",
                self.generation
            ));
        }
        let host_epoch = region.atomic_u64(hdr::HOST_EPOCH).load(Ordering::Acquire);
        if host_epoch != self.epoch {
            return Err(format!(
                "the host now serves epoch {host_epoch:#x}, not this process's {:#x}: another guest process took the device over",
                self.epoch
            ));
        }
        if region.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire) == HostState::Closed as u32 {
            return Err("the vgpu mediator closed the device (it is shutting down)".into());
        }
        let beat = region.atomic_u64(hdr::HEARTBEAT).load(Ordering::Acquire);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if beat != st.0 {
            *st = (beat, now);
            return Ok(());
        }
        let still = now.duration_since(st.1);
        if still >= HEARTBEAT_TIMEOUT {
            return Err(format!(
                "the host's heartbeat stopped (unchanged at {beat} for {} ms): the vgpu mediator is hung or gone",
                still.as_millis()
            ));
        }
        Ok(())
    }
}

impl LinkWatch for HeartbeatWatch {
    fn fd(&self) -> Option<RawFd> {
        None
    }
    fn check(&self) -> std::result::Result<(), String> {
        Ok(())
    }
    fn check_region(&self, region: &Region) -> std::result::Result<(), String> {
        self.judge(region)
    }
    fn interval(&self) -> Duration {
        WATCH_INTERVAL
    }
    fn on_close(&self, region: &Region) -> bool {
        // Only our own epoch is cleared: a successor's is never touched.
        region.atomic_u64(hdr::GUEST_EPOCH).compare_exchange(self.epoch, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }
}

/// An open session on an ivshmem device, before a client runs on it (tools and tests).
pub struct Session {
    pub region: Region,
    pub doorbell: Box<dyn Notify>,
    pub interrupts: [OwnedFd; 2],
    /// This session's epoch (non-zero; `HOST_EPOCH` equals it while the host serves us).
    pub epoch: u64,
    pub watch: HeartbeatWatch,
}

/// A fresh epoch: `(pid << 32) ^ time_ns`, never 0 and never `avoid` (the epoch currently in
/// the header, so a new process always differs from the one before it).
pub fn new_epoch(avoid: u64) -> u64 {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut e = ((std::process::id() as u64) << 32) ^ ns;
    while e == 0 || e == avoid {
        e = e.wrapping_add(1);
    }
    e
}

/// Validate the header and open a session: the epoch handshake of docs/protocol.md.
///
/// Store `SQ_TAIL = 0`, `CQ_HEAD = 0`, `WANTS_INTERRUPT = 0`, then `GUEST_PID`, then
/// `GUEST_EPOCH = e` (Release); `fence(SeqCst)`; ring; wait until `HOST_EPOCH == e` (Acquire),
/// polling every 1 ms and ringing again every 100 ms, for at most [`HANDSHAKE_TIMEOUT`]. The host
/// resets its side of the rings before it publishes `HOST_EPOCH`, so once we see our epoch the
/// rings are empty and every index is 0. It polls because the host raises no interrupt for the
/// epoch (the interrupt vectors belong to the session the handshake is opening); once per process.
pub fn open_session(dev: IvshmemDevice) -> Result<Session> {
    let IvshmemDevice { map, doorbell, interrupts, keep, describe, .. } = dev;
    let region = Region::open_guest_map(map).map_err(|e| match e {
        Error::Version(m) => Error::Version(format!("{describe}: {m}")),
        Error::Setup(m) => Error::Setup(format!("{describe}: {m}")),
        other => other,
    })?;
    let old = region.atomic_u64(hdr::GUEST_EPOCH).load(Ordering::Relaxed);
    let epoch = new_epoch(old);
    region.atomic_u32(hdr::SQ_TAIL).store(0, Ordering::Relaxed);
    region.atomic_u32(hdr::CQ_HEAD).store(0, Ordering::Relaxed);
    region.atomic_u32(hdr::WANTS_INTERRUPT).store(0, Ordering::Relaxed);
    region.atomic_u32(hdr::GUEST_PID).store(std::process::id(), Ordering::Relaxed);
    region.atomic_u64(hdr::GUEST_EPOCH).store(epoch, Ordering::Release);
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    doorbell.notify();
    let start = Instant::now();
    let beat0 = region.atomic_u64(hdr::HEARTBEAT).load(Ordering::Acquire);
    let mut last_ring = start;
    loop {
        if region.atomic_u64(hdr::HOST_EPOCH).load(Ordering::Acquire) == epoch {
            break;
        }
        if start.elapsed() >= HANDSHAKE_TIMEOUT {
            let beat1 = region.atomic_u64(hdr::HEARTBEAT).load(Ordering::Acquire);
            let host_epoch = region.atomic_u64(hdr::HOST_EPOCH).load(Ordering::Acquire);
            let why = if beat1 != beat0 {
                format!("the host heartbeat is advancing ({beat0} -> {beat1}), so a mediator is attached but did not accept the session: check its log, and that it is a `vgpu serve --ivshmem` of the same vgpu release")
            } else {
                format!("the host heartbeat is not advancing (stuck at {beat0}): no mediator serves this device; start `vgpu serve --ivshmem SOCKET` on the host (before QEMU)")
            };
            return Err(Error::Setup(format!(
                "{describe}: the host did not accept this guest's session within {} s (HOST_EPOCH {host_epoch:#x}, ours {epoch:#x}); {why}",
                HANDSHAKE_TIMEOUT.as_secs()
            )));
        }
        if last_ring.elapsed() >= Duration::from_millis(100) {
            doorbell.notify();
            last_ring = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let state = region.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire);
    if state != HostState::Serving as u32 {
        return Err(Error::LinkDown(format!("{describe}: the host accepted the session but its state is {state}, not Serving")));
    }
    let generation = region.atomic_u64(hdr::HOST_GENERATION).load(Ordering::Acquire);
    let beat = region.atomic_u64(hdr::HEARTBEAT).load(Ordering::Acquire);
    debug!(target: "vgpu::transport", epoch, generation, waited_us = start.elapsed().as_micros() as u64, "ivshmem session open");
    let watch = HeartbeatWatch { generation, epoch, state: std::sync::Mutex::new((beat, Instant::now())), _keep: keep };
    Ok(Session { region, doorbell, interrupts, epoch, watch })
}

/// Open a session on `dev` and start the same [`Client`] as the direct link. The host decides
/// the ring depth and window size in ivshmem mode; `cfg.window_len` and `cfg.depth` are ignored.
pub fn connect(dev: IvshmemDevice, cfg: ClientConfig) -> Result<Client> {
    let s = open_session(dev)?;
    if cfg.window_len != 0 && cfg.window_len > s.region.layout().window_len {
        debug!(target: "vgpu::transport", asked = cfg.window_len, got = s.region.layout().window_len, "ivshmem: the host sized the window");
    }
    Client::from_parts(s.region, s.doorbell, s.interrupts, Box::new(s.watch), cfg)
}

/// Keeps a device's fds (VFIO container/group/device, or the server socket) open while a
/// [`probe_region`] result is looked at: closing a peer's socket tells the host the VM left.
pub struct KeepAlive(#[allow(dead_code)] Vec<Box<dyn std::any::Any + Send + Sync>>);

/// Validate the header of `dev`'s region without opening a session (tools such as
/// `vgpu doctor`: opening a session would take the device over from a running program).
pub fn probe_region(dev: IvshmemDevice) -> Result<(Region, KeepAlive)> {
    let IvshmemDevice { map, keep, describe, .. } = dev;
    let region = Region::open_guest_map(map).map_err(|e| match e {
        Error::Version(m) => Error::Version(format!("{describe}: {m}")),
        Error::Setup(m) => Error::Setup(format!("{describe}: {m}")),
        other => other,
    })?;
    Ok((region, KeepAlive(keep)))
}
