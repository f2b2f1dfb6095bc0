//! The `direct` link: the mediator listens on a Unix socket; a guest connects, sends a Hello,
//! and receives a Welcome carrying the region memfd, the doorbell eventfd and one eventfd per
//! interrupt vector. The socket then stays open and silent: its hang-up is each side's signal that the
//! other is gone.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::client::{Client, ClientConfig, LinkWatch};
use crate::notify::EventFd;
use crate::region::{self, Region};
use crate::wire::handshake::{self, Hello, Welcome, MSG_LEN};
use crate::wire::{Layout, DEFAULT_DEPTH, DEFAULT_WINDOW, FEATURES_SUPPORTED, MAX_WINDOW, PROTOCOL_VERSION};
use crate::{Error, Result};

/// How long either side waits for the other's handshake message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The host's end of an accepted session.
pub struct HostLink {
    pub region: Arc<Region>,
    /// Read side of the guest's doorbell.
    pub doorbell: EventFd,
    /// Write sides of the guest's interrupt vectors ([`crate::wire::IRQ_VECTORS`]).
    pub interrupts: Vec<EventFd>,
    /// The session socket; readable on hang-up.
    pub socket: UnixStream,
    pub hello: Hello,
    pub session_id: u64,
}

/// Host limits applied to a guest's requests.
#[derive(Clone, Copy, Debug)]
pub struct HostLimits {
    pub max_window: u64,
    pub max_depth: u32,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits { max_window: MAX_WINDOW, max_depth: 1 << 16 }
    }
}

fn read_msg(s: &mut UnixStream) -> std::io::Result<[u8; MSG_LEN]> {
    let mut b = [0u8; MSG_LEN];
    s.read_exact(&mut b)?;
    Ok(b)
}

/// Read the first 64 bytes of a new connection (a Hello, or another request kind).
pub fn read_first(s: &mut UnixStream) -> std::io::Result<[u8; MSG_LEN]> {
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    read_msg(s)
}

/// Host side: answer a Hello (already read) and set the session up.
pub fn accept(mut socket: UnixStream, first: &[u8; MSG_LEN], session_id: u64, limits: HostLimits) -> Result<HostLink> {
    let hello = Hello::decode(first).ok_or_else(|| Error::Protocol("the first message is not a vgpu Hello".into()))?;
    let refuse = |socket: &mut UnixStream, status: u32| {
        let w = Welcome { version: PROTOCOL_VERSION, status, features: FEATURES_SUPPORTED, region_len: 0, session_id };
        let _ = socket.write_all(&w.encode());
    };
    if hello.version != PROTOCOL_VERSION {
        refuse(&mut socket, handshake::VERSION_MISMATCH);
        return Err(Error::Version(format!("guest speaks protocol v{}, this mediator speaks v{PROTOCOL_VERSION}", hello.version)));
    }
    if hello.features & !FEATURES_SUPPORTED != 0 {
        refuse(&mut socket, handshake::FEATURE_MISMATCH);
        return Err(Error::Version(format!("guest wants features {:#x}, this mediator has {FEATURES_SUPPORTED:#x}", hello.features)));
    }
    let window = match hello.window_len {
        0 => DEFAULT_WINDOW,
        w => w,
    }
    .min(limits.max_window);
    let depth = match hello.depth {
        // The host's limit bounds the default too (found by fuzzing: a host whose limit was below
        // the default handed out deeper rings than it allows).
        0 => DEFAULT_DEPTH.min(limits.max_depth),
        d if d.is_power_of_two() => d.min(limits.max_depth),
        _ => {
            refuse(&mut socket, handshake::REFUSED);
            return Err(Error::Protocol(format!("requested ring depth {} is not a power of two", hello.depth)));
        }
    };
    let layout = Layout::new(depth, window).ok_or_else(|| Error::Protocol("requested layout is invalid".into()))?;
    let (region, memfd) = region::create(layout, session_id)?;
    let doorbell = EventFd::new().map_err(|e| Error::Setup(format!("eventfd: {e}")))?;
    let interrupts = (0..crate::wire::IRQ_VECTORS)
        .map(|_| EventFd::new())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::Setup(format!("eventfd: {e}")))?;
    let w = Welcome { version: PROTOCOL_VERSION, status: handshake::OK, features: 0, region_len: layout.region_len, session_id };
    let bytes = w.encode();
    let fds: [RawFd; 4] = [memfd.as_raw_fd(), doorbell.raw(), interrupts[0].raw(), interrupts[1].raw()];
    let iov = [std::io::IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(|e| Error::LinkDown(format!("sending the Welcome: {e}")))?;
    if sent != bytes.len() {
        return Err(Error::LinkDown("short write of the Welcome".into()));
    }
    Ok(HostLink { region: Arc::new(region), doorbell, interrupts, socket, hello, session_id })
}

/// Watches the session socket: readable means the host closed it.
struct SocketWatch {
    socket: UnixStream,
}

impl LinkWatch for SocketWatch {
    fn fd(&self) -> Option<RawFd> {
        Some(self.socket.as_raw_fd())
    }
    fn check(&self) -> std::result::Result<(), String> {
        let mut b = [0u8; 16];
        match nix::sys::socket::recv(self.socket.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK) {
            Ok(0) => Err("the mediator closed the session (it exited or was killed)".into()),
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(format!("the session socket failed: {e}")),
        }
    }
}

/// A guest's end of the link before any client logic: for tests that must speak the protocol
/// by hand (hostile descriptors) and for tools.
pub struct RawGuest {
    pub region: Region,
    /// Ring the host.
    pub doorbell: EventFd,
    /// Becomes readable when the host raises interrupt vector 0 (`WANTS_INTERRUPT` = 1).
    pub interrupt: OwnedFd,
    /// Becomes readable when the host raises interrupt vector 1 (`WANTS_INTERRUPT` = 2).
    pub interrupt1: OwnedFd,
    /// The session socket; closing it ends the session.
    pub socket: UnixStream,
}

/// Guest side: connect to the mediator at `path` and build a client.
pub fn connect(path: &Path, cfg: ClientConfig) -> Result<Client> {
    let g = connect_raw(path, cfg.window_len, cfg.depth)?;
    Client::from_parts(g.region, Box::new(g.doorbell), [g.interrupt, g.interrupt1], Box::new(SocketWatch { socket: g.socket }), cfg)
}

/// Guest side: perform the handshake and map the region, without starting a client.
pub fn connect_raw(path: &Path, window_len: u64, depth: u32) -> Result<RawGuest> {
    let mut socket = UnixStream::connect(path).map_err(|e| {
        Error::Setup(format!(
            "cannot connect to the vgpu mediator at {}: {e}. Start one with `vgpu serve --socket {}` (or `vgpu run -- APP`), or point VGPU_SOCKET at a running one",
            path.display(),
            path.display()
        ))
    })?;
    socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| Error::Setup(format!("socket timeout: {e}")))?;
    let hello = Hello { version: PROTOCOL_VERSION, features: 0, window_len, depth, pid: std::process::id() };
    socket.write_all(&hello.encode()).map_err(|e| Error::Setup(format!("sending Hello to {}: {e}", path.display())))?;

    let mut buf = [0u8; MSG_LEN];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (bytes, fds) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| Error::Setup(format!("waiting for the mediator's Welcome: {e}")))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(|e| Error::Protocol(format!("control message: {e}")))? {
            if let ControlMessageOwned::ScmRights(v) = c {
                for fd in v {
                    // SAFETY: the kernel just installed `fd` in this process for us (SCM_RIGHTS);
                    // nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    if bytes < MSG_LEN {
        // A short first read: the rest of the message may follow without fds (a refusal).
        if bytes == 0 {
            return Err(Error::Setup(format!("the mediator at {} closed the connection during the handshake", path.display())));
        }
        socket.read_exact(&mut buf[bytes..]).map_err(|e| Error::Setup(format!("reading the Welcome: {e}")))?;
    }
    let w = Welcome::decode(&buf).ok_or_else(|| Error::Protocol(format!("{} did not answer with a vgpu Welcome", path.display())))?;
    match w.status {
        handshake::OK => {}
        handshake::VERSION_MISMATCH => {
            return Err(Error::Version(format!(
            "this guest speaks protocol v{PROTOCOL_VERSION}, the mediator at {} speaks v{}: install the same vgpu release on both sides",
            path.display(),
            w.version
        )))
        }
        handshake::FEATURE_MISMATCH => {
            return Err(Error::Version(format!("the mediator lacks features this guest requires (it has {:#x})", w.features)))
        }
        s => return Err(Error::Setup(format!("the mediator refused the session (status {s})"))),
    }
    if w.version != PROTOCOL_VERSION {
        return Err(Error::Version(format!("guest v{PROTOCOL_VERSION}, mediator v{}", w.version)));
    }
    let [memfd, doorbell, interrupt, interrupt1]: [OwnedFd; 4] =
        fds.try_into().map_err(|v: Vec<OwnedFd>| Error::Protocol(format!("the Welcome carried {} fds, expected 4", v.len())))?;
    region::check_sealed(memfd.as_fd())?;
    let size = nix::sys::stat::fstat(memfd.as_raw_fd()).map_err(|e| Error::Setup(format!("fstat of the region memfd: {e}")))?.st_size;
    if (size as u64) < w.region_len {
        return Err(Error::Protocol(format!("the Welcome claims a {} byte region but the memfd holds {size}", w.region_len)));
    }
    let region = Region::open_guest(&memfd, w.region_len)?;
    if region.layout().region_len != w.region_len {
        return Err(Error::Protocol(format!("the region header says {} bytes, the Welcome {}", region.layout().region_len, w.region_len)));
    }
    drop(memfd);
    socket.set_read_timeout(None).map_err(|e| Error::Setup(format!("socket: {e}")))?;
    let doorbell = EventFd::from_owned(doorbell).map_err(|e| Error::Setup(format!("doorbell eventfd: {e}")))?;
    Ok(RawGuest { region, doorbell, interrupt, interrupt1, socket })
}

impl Client {
    /// Connect to a mediator over the `direct` link (Unix socket at `path`). Defined here, with
    /// the link, so that `client` does not import `link` (links build on the client, not the
    /// other way round).
    pub fn connect(path: impl AsRef<std::path::Path>, cfg: ClientConfig) -> Result<Client> {
        connect(path.as_ref(), cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_hello(window_len: u64, depth: u32, limits: HostLimits) -> Result<HostLink> {
        let (a, _b) = UnixStream::pair().unwrap();
        let hello = Hello { version: PROTOCOL_VERSION, features: 0, window_len, depth, pid: 1 };
        accept(a, &hello.encode(), 9, limits)
    }

    /// The host's limits bound what it grants, whether the guest asks for a size or leaves it to
    /// the host's defaults (fuzz/corpus/handshake/crash-default-depth-over-limit: a default ring
    /// depth above the host's limit was granted).
    #[test]
    fn host_limits_bound_requested_and_default_sizes() {
        let limits = HostLimits { max_window: 1 << 20, max_depth: 1 << 10 };
        for (window, depth) in [(0, 0), (u64::MAX, 0), (0, 1 << 15), (4096, 1 << 31)] {
            let l = *accept_hello(window, depth, limits).unwrap().region.layout();
            assert!(l.window_len <= limits.max_window && l.sq_depth <= limits.max_depth, "asked ({window}, {depth}): {l:?}");
            assert_eq!(l.validate(l.region_len), Ok(()));
        }
        assert!(accept_hello(0, 3, limits).is_err(), "a depth that is not a power of two");
    }
}
