//! `vgpu demo` end to end, its kernel section included: it must succeed, with saxpy computed by
//! emu's PTX interpreter and checked by the demo against the CPU, and print the launches the
//! mediator recorded in its launch log and the host's counters. Also: synthetic modules (`vgpu_fatbin::synth`) through the host's
//! module parser (`vgpu_mediator::modules::parse`), which must report the layouts they were built
//! with.

use std::process::Command;

use vgpu_fatbin::synth::{SynthKernel, SynthModule};
use vgpu_mediator::modules::{self, Image};
use vgpu_tests::vgpu_exe;

#[test]
fn demo_runs_and_shows_the_recorded_launches() {
    let out = Command::new(vgpu_exe()).arg("demo").env("VGPU_LOG", "warn").output().expect("running vgpu demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vgpu demo failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    for want in [
        "module: saxpy, nvcc's compute_75 PTX in a PTX-only fat binary",
        "the host's parameter layout from the PTX signature: [0+4, 8+8, 16+8, 24+4], 28 bytes",
        "y read back: all 1048576 elements equal the CPU's",
        "launch log (",
        "#1 saxpy grid [4096,1,1] block [256,1,1] shared 0: a = 2, x = 0x",
        "#3 saxpy grid [4096,1,1] block [256,1,1] shared 0: a = -1, x = 0x",
        "loaded the same module by hash",
        "host counters: 3 launches run (",
        "2 modules loaded, 1 of them from the cache",
        "demo OK",
    ] {
        assert!(stdout.contains(want), "the demo's output lacks {want:?}:\n{stdout}");
    }
    // Its launch log and module cache lived in a private folder, removed at the end.
    let log_line = stdout.lines().find(|l| l.starts_with("launch log (")).unwrap();
    let path = log_line.trim_start_matches("launch log (").trim_end_matches("):");
    assert!(!std::path::Path::new(path).exists(), "{path} was left behind");
}

/// Kernel name, parameters as (size, align), expected (offset, size) of each, expected total.
type Spec = (&'static str, Vec<(u32, u32)>, Vec<(u32, u32)>, u32);

#[test]
fn synthetic_modules_parse_on_the_host_with_their_layouts() {
    let specs: Vec<Spec> = vec![
        ("_Z5saxpyfPKfPfi", vec![(4, 4), (8, 8), (8, 8), (4, 4)], vec![(0, 4), (8, 8), (16, 8), (24, 4)], 28),
        ("_Z5mixedcdsPic", vec![(1, 1), (8, 8), (2, 2), (8, 8), (1, 1)], vec![(0, 1), (8, 8), (16, 2), (24, 8), (32, 1)], 33),
        ("_Z3vecc6float4", vec![(1, 1), (16, 16)], vec![(0, 1), (16, 16)], 32),
        ("_Z4k2563Big", vec![(256, 8)], vec![(0, 256)], 256),
        ("noparams", vec![], vec![], 0),
    ];
    for arch in [80, 86, 90] {
        let m = specs.iter().fold(SynthModule::new(arch), |m, (name, p, _, _)| m.kernel(SynthKernel::new(*name, p)));
        let m = m.kernel(SynthKernel::new("_Z7boundedPf", &[(8, 8)]).with_max_threads(128).with_shared_static(2048).with_registers(32));
        let parsed = modules::parse(&Image::new(m.fatbin().unwrap())).unwrap_or_else(|e| panic!("sm_{arch}: {e:?}"));
        assert_eq!(parsed.arch, arch);
        assert_eq!(parsed.kernels.len(), specs.len() + 1);
        for (name, _, layout, total) in &specs {
            let k = parsed.kernel(name).unwrap_or_else(|| panic!("{name} on sm_{arch}"));
            let got: Vec<(u32, u32)> = k.params.iter().map(|p| (p.offset, p.size)).collect();
            assert_eq!(&got, layout, "{name} on sm_{arch}");
            assert_eq!((k.info.num_params as usize, k.info.param_bytes), (layout.len(), *total), "{name}");
            assert_eq!((k.info.num_regs, k.info.max_threads_per_block, k.info.binary_version), (16, 1024, arch), "{name}");
        }
        let b = parsed.kernel("_Z7boundedPf").unwrap();
        assert_eq!((b.info.max_threads_per_block, b.info.shared_size_bytes, b.info.num_regs), (128, 2048, 32));
    }
}
