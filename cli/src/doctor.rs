//! `vgpu doctor`: check the link this machine would use and explain every failure with its fix.
//!
//! - In a guest (an ivshmem device `1af4:1110` is present, or `VGPU_LINK=ivshmem` /
//!   `VGPU_DEVICE=BDF` is set): the device is present (found by scanning
//!   `/sys/bus/pci/devices`, no lspci needed), bound to vfio-pci, in an IOMMU group with a usable
//!   `/dev/vfio`, opens through VFIO, bus mastering can be set, MSI-X has two vectors, the region's
//!   magic/version/layout match this build, and the host heartbeat advances (a mediator serves).
//! - With `VGPU_LINK=ivshmem-socket:PATH`: the ivshmem server answers as a peer and its region is
//!   valid and alive.
//! - Otherwise (a host or container on the direct link): the mediator socket answers a
//!   statistics request and a session round trip works.
//!
//! Nothing here opens a guest session on the ivshmem link (that would take the device over from
//! a running program): the checks only read the header.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vgpu_transport::link::vfio::{self, VfioDevice};
use vgpu_transport::link::LinkChoice;
use vgpu_transport::region::Region;
use vgpu_transport::sync::Ordering;
use vgpu_transport::wire::{hdr, req, HostState, PROTOCOL_VERSION};
use vgpu_transport::{Client, ClientConfig};

/// Options of `vgpu doctor`.
#[derive(Debug, Default, Clone)]
pub struct DoctorOpts {
    /// The direct-link socket to check (default: the usual rule).
    pub socket: Option<PathBuf>,
    /// The PCI address of the ivshmem device (default: `VGPU_DEVICE`, else auto-detected).
    pub device: Option<String>,
    /// sysfs root (tests).
    pub sys: Option<PathBuf>,
}

/// The report being built: each check is ok or failed with a fix.
struct Report {
    failed: usize,
}

impl Report {
    fn ok(&mut self, what: &str) {
        println!("[ ok ] {what}");
    }
    fn info(&mut self, what: &str) {
        println!("       {what}");
    }
    fn fail(&mut self, what: &str, fix: &str) {
        self.failed += 1;
        println!("[FAIL] {what}");
        for (i, line) in fix.lines().enumerate() {
            println!("       {} {line}", if i == 0 { "fix:" } else { "    " });
        }
    }
}

/// Run the checks; `Ok` when all pass, `Err` with a one-line summary otherwise.
pub fn run(opts: DoctorOpts) -> Result<(), String> {
    let sys = opts.sys.clone().unwrap_or_else(|| PathBuf::from("/sys"));
    let mut r = Report { failed: 0 };
    let choice = match (&opts.socket, &opts.device) {
        (Some(s), _) => LinkChoice::Direct(s.clone()),
        (None, Some(d)) => LinkChoice::IvshmemVfio(Some(d.clone())),
        (None, None) => match LinkChoice::from_env() {
            Ok(c) => c,
            Err(e) => {
                r.fail(&e.to_string(), "unset VGPU_LINK, or set it to `direct`, `ivshmem` or `ivshmem-socket:PATH`");
                return Err("1 check failed".into());
            }
        },
    };
    // A guest with an ivshmem device but no link variables: check the device, that is what a
    // VM guest uses once VGPU_LINK=ivshmem is set.
    let in_vm = !vfio::find_devices(&sys, vfio::IVSHMEM_VENDOR, vfio::IVSHMEM_DEVICE).is_empty();
    let choice = match choice {
        LinkChoice::Direct(p) if opts.socket.is_none() && in_vm && std::env::var_os("VGPU_LINK").is_none() => {
            println!("an ivshmem device (1af4:1110) is present: checking the VM link (set VGPU_LINK=ivshmem for programs to use it)");
            let _ = p;
            LinkChoice::IvshmemVfio(None)
        }
        c => c,
    };
    println!("vgpu doctor: {choice} (protocol v{PROTOCOL_VERSION})");
    match &choice {
        LinkChoice::Direct(p) => check_direct(&mut r, p),
        LinkChoice::IvshmemVfio(bdf) => check_vfio(&mut r, &sys, bdf.as_deref()),
        LinkChoice::IvshmemSocket(p) => check_peer(&mut r, p),
    }
    if r.failed == 0 {
        println!("all checks passed");
        Ok(())
    } else {
        Err(format!("{} check{} failed", r.failed, if r.failed == 1 { "" } else { "s" }))
    }
}

fn check_direct(r: &mut Report, socket: &Path) {
    if !socket.exists() {
        r.fail(
            &format!("no mediator socket at {}", socket.display()),
            &format!(
                "start one: `vgpu serve --socket {}` (or run programs under `vgpu run -- APP`), or point VGPU_SOCKET at a running one",
                socket.display()
            ),
        );
        return;
    }
    match vgpu_mediator::serve::query_stat(socket) {
        Ok(v) => {
            let n = v.get("sessions").and_then(|s| s.as_array()).map_or(0, |a| a.len());
            r.ok(&format!("the mediator at {} answers ({n} session(s))", socket.display()));
        }
        Err(e) => {
            r.fail(
                &format!("the mediator at {} does not answer: {e}", socket.display()),
                "restart it (`vgpu serve`); if the socket file is stale, delete it first",
            );
            return;
        }
    }
    match Client::connect(socket, ClientConfig::default()) {
        Ok(c) => {
            let t = Instant::now();
            match c.call_blocking_req(0, req::Nop {}) {
                Ok(_) => r.ok(&format!("a session works: Nop round trip {} us", t.elapsed().as_micros())),
                Err(e) => r.fail(&format!("a Nop on a new session failed: {e}"), "see the mediator's log (VGPU_LOG=debug)"),
            }
        }
        Err(e) => r.fail(&format!("opening a session failed: {e}"), "see the message above; the mediator's log has more (VGPU_LOG=debug)"),
    }
}

/// The header checks shared by both ivshmem forms.
fn check_region(r: &mut Report, region: Region) {
    let l = *region.layout();
    r.ok(&format!(
        "region header: magic and protocol v{PROTOCOL_VERSION} match; ring depth {}, window {} MiB, region {} of {} bytes mapped",
        l.sq_depth,
        l.window_len >> 20,
        l.region_len,
        region.len()
    ));
    let beat0 = region.atomic_u64(hdr::HEARTBEAT).load(Ordering::Acquire);
    std::thread::sleep(Duration::from_millis(300));
    let beat1 = region.atomic_u64(hdr::HEARTBEAT).load(Ordering::Acquire);
    let state = region.atomic_u32(hdr::HOST_STATE).load(Ordering::Acquire);
    let generation = region.atomic_u64(hdr::HOST_GENERATION).load(Ordering::Acquire);
    if beat1 == beat0 {
        r.fail(
            &format!("the host heartbeat is not advancing (stuck at {beat0} for 300 ms): no mediator serves this device"),
            "on the host: `vgpu serve --ivshmem SOCKET` (start it before QEMU; QEMU connects to it at start-up), and check its log",
        );
    } else if state == HostState::Closed as u32 {
        r.fail("the mediator says it is shutting down (HOST_STATE = Closed)", "restart `vgpu serve --ivshmem` on the host, then the VM");
    } else {
        r.ok(&format!("the host heartbeat advances ({beat0} -> {beat1} in 300 ms): a mediator is alive (generation {generation:#x})"));
    }
    let ge = region.atomic_u64(hdr::GUEST_EPOCH).load(Ordering::Acquire);
    let he = region.atomic_u64(hdr::HOST_EPOCH).load(Ordering::Acquire);
    let pid = region.atomic_u32(hdr::GUEST_PID).load(Ordering::Acquire);
    match (ge, he) {
        (0, _) if pid == 0 => r.info("no guest session has been opened on this device yet"),
        (0, _) => r.info(&format!("no guest session is open (the last one, pid {pid}, ended cleanly)")),
        (g, h) if g == h => r.info(&format!("the last guest session (pid {pid}, epoch {g:#x}) was accepted by the host")),
        (g, h) => r.info(&format!("guest epoch {g:#x} (pid {pid}) is not (yet) accepted: the host serves {h:#x}")),
    }
}

fn check_region_result(r: &mut Report, res: vgpu_transport::Result<Region>) {
    match res {
        Ok(region) => check_region(r, region),
        Err(e @ vgpu_transport::Error::Version(_)) => {
            r.fail(&format!("region: {e}"), "install the same vgpu release in the guest and on the host (the message names both versions)")
        }
        Err(e) => r.fail(
            &format!("region: {e}"),
            "start `vgpu serve --ivshmem SOCKET` on the host before QEMU, and give QEMU `-device ivshmem-doorbell,chardev=ivs,vectors=2`",
        ),
    }
}

fn check_peer(r: &mut Report, path: &Path) {
    let dev = match vgpu_transport::link::ivshmem::IvshmemDevice::connect_peer(path) {
        Ok(d) => d,
        Err(e) => {
            r.fail(
                &format!("the ivshmem server at {} does not answer as expected: {e}", path.display()),
                &format!(
                    "start `vgpu serve --ivshmem {}`; one socket serves one VM or peer, so stop whatever else is connected",
                    path.display()
                ),
            );
            return;
        }
    };
    r.ok(&format!("connected to {} as peer {}: {} bytes of shared memory", path.display(), dev.peer_id().unwrap_or(0), dev.len()));
    match vgpu_transport::link::ivshmem::probe_region(dev) {
        Ok((region, _keep)) => check_region_result(r, Ok(region)),
        Err(e) => check_region_result(r, Err(e)),
    }
}

fn check_vfio(r: &mut Report, sys: &Path, bdf: Option<&str>) {
    let bdf = match vfio::choose_ivshmem(sys, bdf) {
        Ok(b) => {
            r.ok(&format!("ivshmem device (PCI 1af4:1110) at {b}"));
            b
        }
        Err(e) => {
            r.fail(&e.to_string(), "see above; `vgpu doctor --device BDF` checks one device of several");
            return;
        }
    };
    let driver = vfio::pci_driver(sys, &bdf);
    if driver.as_deref() == Some("vfio-pci") {
        r.ok("bound to vfio-pci");
    } else {
        let now = driver.as_deref().map_or("no driver".to_string(), |d| format!("driver {d}"));
        r.fail(&format!("{bdf} is bound to {now}, not vfio-pci"), &vfio::bind_commands(&bdf, driver.as_deref()).replace("; ", "\n"));
        return;
    }
    let Some(group) = vfio::iommu_group(sys, &bdf) else {
        r.fail(&format!("{bdf} has no IOMMU group"), vfio::NO_IOMMU_FIX);
        return;
    };
    let group_dev = ["/dev/vfio/", "/dev/vfio/noiommu-"].iter().map(|p| PathBuf::from(format!("{p}{group}"))).find(|p| p.exists());
    match group_dev {
        Some(p) => r.ok(&format!("IOMMU group {group}: {}", p.display())),
        None => {
            r.fail(&format!("IOMMU group {group} has no /dev/vfio/{group}"), "modprobe vfio-pci, then rebind the device (see above)");
            return;
        }
    }
    let dev = match VfioDevice::open(sys, &bdf) {
        Ok(d) => {
            r.ok(&format!("opened through VFIO ({})", if d.is_noiommu() { "no-IOMMU mode" } else { "type1 IOMMU" }));
            d
        }
        Err(e) => {
            r.fail(&format!("VFIO: {e}"), "follow the advice in the message");
            return;
        }
    };
    match dev.pci_command() {
        Ok(cmd) if cmd & vfio::PCI_COMMAND_MASTER != 0 => r.ok("bus mastering is on"),
        Ok(_) => match dev.set_bus_master() {
            Ok(()) => r.ok("bus mastering was off (normal before a vgpu program runs; the vgpu link sets it) and can be set"),
            Err(e) => r.fail(
                &format!("bus mastering: {e}"),
                "without it QEMU drops every MSI-X interrupt; check the kernel log (dmesg) for vfio-pci errors",
            ),
        },
        Err(e) => r.fail(&format!("reading PCI_COMMAND: {e}"), "check the kernel log (dmesg) for vfio-pci errors"),
    }
    match dev.irq_count(vfio::MSIX_IRQ) {
        Ok(n) if n >= 2 => r.ok(&format!("MSI-X: {n} vectors")),
        Ok(n) => r.fail(&format!("MSI-X: {n} vectors, vgpu needs 2"), "give QEMU `-device ivshmem-doorbell,chardev=ivs,vectors=2`"),
        Err(e) => r.fail(&format!("MSI-X: {e}"), "give QEMU `-device ivshmem-doorbell,chardev=ivs,vectors=2`"),
    }
    match dev.map_region(vfio::BAR2) {
        Ok(map) => check_region_result(r, Region::open_guest_map(map)),
        Err(e) => {
            r.fail(&format!("BAR2 (shared memory): {e}"), "the QEMU device must be `ivshmem-doorbell` connected to `vgpu serve --ivshmem`")
        }
    }
}
