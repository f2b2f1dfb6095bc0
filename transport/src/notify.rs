//! Doorbells and interrupts: "look at the ring" hints between the two sides (rule 4).
//!
//! A notification may merge with another or arrive spuriously; receivers always drain the ring to
//! empty and never count notifications.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Something that can poke the peer.
pub trait Notify: Send + Sync {
    fn notify(&self);
}

/// A non-blocking eventfd, used for both directions on the `direct` link.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> std::io::Result<EventFd> {
        use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};
        let e = NixEventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(EventFd { fd: OwnedFd::from(e) })
    }

    /// Wrap an eventfd received from the peer (made non-blocking here).
    pub fn from_owned(fd: OwnedFd) -> std::io::Result<EventFd> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(EventFd { fd })
    }

    /// Add one to the counter, waking any poller.
    pub fn signal(&self) {
        // An eventfd write only fails when the counter would overflow (it is then already
        // readable, so the hint is delivered anyway) or the fd is broken.
        let _ = nix::unistd::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Reset the counter; returns whether it was non-zero.
    pub fn drain(&self) -> bool {
        let mut b = [0u8; 8];
        matches!(nix::unistd::read(self.fd.as_raw_fd(), &mut b), Ok(8))
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Notify for EventFd {
    fn notify(&self) {
        self.signal()
    }
}

/// Block until one of `fds` is readable (or hung up), or `timeout_ms` passes. Returns for each fd
/// whether it is ready. EINTR counts as a timeout (callers loop).
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> Vec<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|f| PollFd::new(*f, PollFlags::POLLIN)).collect();
    let t = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX);
    match poll(&mut pfds, t) {
        Ok(n) if n > 0 => pfds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect(),
        _ => vec![false; fds.len()],
    }
}
