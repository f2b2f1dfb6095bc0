//! Kernel attributes and module variables from real nvcc output: fatbin/tests/cu/attrs.cu compiled
//! at test time (see tests/nvcc.rs for how nvcc is found; without it these tests skip, except
//! under CI).

use std::path::Path;
use std::process::Command;

/// The one nvcc finder of the workspace's tests.
#[path = "../../../tests/src/nvcc.rs"]
mod nvcc_finder;
use nvcc_finder::nvcc;

use vgpu_fatbin::{Cubin, Fatbin, GlobalKind};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cu/attrs.cu");

fn compile(out: &str, args: &[&str]) -> Option<Vec<u8>> {
    let nvcc = nvcc()?.to_path_buf();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fatbin-nvcc");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{out}", std::process::id()));
    let status = Command::new(&nvcc).args(args).arg("-o").arg(&path).arg(SRC).status().expect("running nvcc");
    assert!(status.success(), "nvcc {args:?} failed");
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    Some(bytes)
}

fn check(cubin: &Cubin<'_>, arch: u32) {
    let bounded = cubin.kernel("_Z7boundedPfi").unwrap();
    // sm_90 cubins lay out 1 KiB the system reserves (`.nv.shared.reserved.0`) in every kernel's
    // `.nv.shared.<kernel>`; `shared_static` leaves it out (`vgpu_fatbin::SYSTEM_RESERVED_SHARED`).
    let reserved = 0;
    let _ = arch;
    assert_eq!(bounded.shared_static, 256 * 4 + reserved, "__shared__ float tile[256]");
    assert_eq!(bounded.max_threads, Some([128, 1, 1]), "__launch_bounds__(128)");
    assert_eq!(bounded.reqntid, None);
    let dynshared = cubin.kernel("_Z9dynsharedPhm").unwrap();
    // int st[10] (40 bytes), padded by ptxas to the 16-byte alignment of the extern array.
    assert!((40 + reserved..=64 + reserved).contains(&dynshared.shared_static), "{}", dynshared.shared_static);
    assert_eq!(dynshared.max_threads, None);
    let reqd = cubin.kernel("_Z4reqdPi").unwrap();
    assert_eq!(reqd.max_registers, Some(32), "__maxnreg__(32)");
    assert!(reqd.registers.is_some_and(|r| r <= 32));
    assert!(reqd.frame_size.is_some_and(|f| f > 0), "int local[64] lives in local memory: {:?}", reqd.frame_size);
    assert_eq!(reqd.shared_static, reserved);

    let g = |name: &str| cubin.global_named(name).unwrap_or_else(|| panic!("{name} missing: {:?}", cubin.globals));
    let counter = g("counter");
    assert_eq!((counter.size, counter.kind, counter.init), (4, GlobalKind::Device, None));
    let gtable = g("gtable");
    assert_eq!((gtable.size, gtable.kind), (16, GlobalKind::Device));
    let want: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|f| f.to_le_bytes()).collect();
    assert_eq!(gtable.init, Some(&want[..]));
    let coeffs = g("coeffs");
    assert_eq!((coeffs.size, coeffs.kind), (12, GlobalKind::Constant));
    let want: Vec<u8> = [7i32, 8, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(coeffs.init, Some(&want[..]));
    let czero = g("czero");
    assert_eq!((czero.size, czero.kind), (16, GlobalKind::Constant));
    // A constant bank is PROGBITS: zero-initialised constants still come with (zero) bytes.
    assert!(czero.init.map_or(true, |b| b.iter().all(|&x| x == 0)));
    let big = g("big");
    assert_eq!((big.size, big.kind, big.init), (100_000, GlobalKind::Device, None));
    assert_eq!(cubin.globals.len(), 5, "{:?}", cubin.globals);
    assert_eq!(cubin.virtual_arch, Some(arch));
    assert!(cubin.toolkit_version.is_some_and(|v| v >= 120), "{:?}", cubin.toolkit_version);
}

#[test]
fn attributes_and_globals_sm80() {
    let Some(data) = compile("attrs.cubin", &["-cubin", "-arch=sm_80"]) else { return };
    check(&Cubin::parse(&data).unwrap(), 80);
}

#[test]
fn attributes_and_globals_in_a_fatbin() {
    let Some(data) = compile(
        "attrs.fatbin",
        &["-fatbin", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_86,code=sm_86", "-gencode=arch=compute_90,code=sm_90"],
    ) else {
        return;
    };
    let fb = Fatbin::parse(&data).unwrap();
    for (major, minor, arch) in [(8, 0, 80), (8, 6, 86), (9, 0, 90)] {
        let e = fb.best_cubin(major, minor).unwrap();
        check(&Cubin::parse(&e.data().unwrap()).unwrap(), arch);
    }
}

/// `-arch=compute_80 -code=sm_86`: SASS for 8.6 generated from the 8.0 virtual architecture.
#[test]
fn virtual_arch_differs_from_sass() {
    let Some(data) = compile("attrs_v80.cubin", &["-cubin", "-gencode=arch=compute_80,code=sm_86"]) else { return };
    let cubin = Cubin::parse(&data).unwrap();
    assert_eq!(cubin.virtual_arch, Some(80));
}
