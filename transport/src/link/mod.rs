//! Links: how a region, a doorbell and an interrupt are obtained. Nothing above a link knows
//! which one it runs on.
//!
//! - [`direct`]: a memfd region and two eventfds passed over a Unix socket (SCM_RIGHTS). For
//!   processes and containers on the host, and every CI test.
//! - [`ivshmem`]: BAR2 of QEMU's `ivshmem-doorbell` device, opened with [`vfio`] in a VM (or as
//!   a plain peer on the ivshmem server's socket), with an epoch handshake and heartbeat
//!   liveness.
//!
//! [`connect_from_env`] picks the link from the environment (see [`LinkChoice::from_env`]).

pub mod direct;
pub mod ivshmem;
pub mod vfio;

use std::path::PathBuf;

use crate::client::{Client, ClientConfig};
use crate::{Error, Result};

/// The mediator's socket for the direct link: `$VGPU_SOCKET`, else `$XDG_RUNTIME_DIR/vgpu.sock`,
/// else `/tmp/vgpu.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(s) = std::env::var_os("VGPU_SOCKET") {
        return s.into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("vgpu.sock"),
        None => PathBuf::from("/tmp/vgpu.sock"),
    }
}

/// Which link a guest uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChoice {
    /// The direct link to the mediator socket at this path.
    Direct(PathBuf),
    /// The ivshmem device through VFIO: this PCI address, or the single `1af4:1110` device.
    IvshmemVfio(Option<String>),
    /// A plain peer on the ivshmem server socket at this path.
    IvshmemSocket(PathBuf),
}

impl LinkChoice {
    /// From the environment:
    /// - `VGPU_LINK=ivshmem`, or `VGPU_DEVICE=BDF` set: ivshmem through VFIO (device
    ///   `VGPU_DEVICE`, else auto-detected);
    /// - `VGPU_LINK=ivshmem-socket:PATH`: ivshmem as a peer on the server socket PATH;
    /// - `VGPU_LINK=direct`, or neither variable set: the direct link to [`default_socket`].
    pub fn from_env() -> Result<LinkChoice> {
        let link = std::env::var("VGPU_LINK").ok().filter(|s| !s.is_empty());
        let device = std::env::var("VGPU_DEVICE").ok().filter(|s| !s.is_empty());
        LinkChoice::parse(link.as_deref(), device.as_deref())
    }

    /// The rule of [`from_env`](Self::from_env) over given values.
    pub fn parse(link: Option<&str>, device: Option<&str>) -> Result<LinkChoice> {
        match link {
            Some("ivshmem") | Some("vfio") => Ok(LinkChoice::IvshmemVfio(device.map(str::to_string))),
            Some(s) if s.starts_with("ivshmem-socket:") => {
                let p = &s["ivshmem-socket:".len()..];
                if p.is_empty() {
                    return Err(Error::Setup("VGPU_LINK=ivshmem-socket:PATH needs a PATH".into()));
                }
                Ok(LinkChoice::IvshmemSocket(PathBuf::from(p)))
            }
            Some("direct") => Ok(LinkChoice::Direct(default_socket())),
            Some(other) => Err(Error::Setup(format!(
                "VGPU_LINK={other} is not a link: use `direct`, `ivshmem` (VFIO, with VGPU_DEVICE=BDF optional) or `ivshmem-socket:PATH`"
            ))),
            None if device.is_some() => Ok(LinkChoice::IvshmemVfio(device.map(str::to_string))),
            None => Ok(LinkChoice::Direct(default_socket())),
        }
    }

    /// Connect over this link.
    pub fn connect(&self, cfg: ClientConfig) -> Result<Client> {
        match self {
            LinkChoice::Direct(p) => direct::connect(p, cfg),
            LinkChoice::IvshmemVfio(bdf) => ivshmem::connect(ivshmem::IvshmemDevice::open_vfio(bdf.as_deref())?, cfg),
            LinkChoice::IvshmemSocket(p) => ivshmem::connect(ivshmem::IvshmemDevice::connect_peer(p)?, cfg),
        }
    }
}

impl std::fmt::Display for LinkChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkChoice::Direct(p) => write!(f, "direct link to {}", p.display()),
            LinkChoice::IvshmemVfio(Some(b)) => write!(f, "ivshmem device {b} through VFIO"),
            LinkChoice::IvshmemVfio(None) => write!(f, "ivshmem device (auto-detected) through VFIO"),
            LinkChoice::IvshmemSocket(p) => write!(f, "ivshmem peer on {}", p.display()),
        }
    }
}

/// Connect a guest over the link the environment names ([`LinkChoice::from_env`]). This is what
/// the CUDA runtime layer calls.
pub fn connect_from_env(cfg: ClientConfig) -> Result<Client> {
    LinkChoice::from_env()?.connect(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_selection_rules() {
        assert_eq!(LinkChoice::parse(Some("ivshmem"), None).unwrap(), LinkChoice::IvshmemVfio(None));
        assert_eq!(LinkChoice::parse(None, Some("0000:00:03.0")).unwrap(), LinkChoice::IvshmemVfio(Some("0000:00:03.0".into())));
        assert_eq!(LinkChoice::parse(Some("ivshmem-socket:/tmp/x"), None).unwrap(), LinkChoice::IvshmemSocket("/tmp/x".into()));
        assert!(matches!(LinkChoice::parse(None, None).unwrap(), LinkChoice::Direct(_)));
        assert!(matches!(LinkChoice::parse(Some("direct"), Some("0000:00:03.0")).unwrap(), LinkChoice::Direct(_)));
        let e = LinkChoice::parse(Some("pcie"), None).unwrap_err().to_string();
        assert!(e.contains("ivshmem-socket:PATH"), "{e}");
        assert!(LinkChoice::parse(Some("ivshmem-socket:"), None).is_err());
    }
}
