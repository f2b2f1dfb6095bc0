//! `vgpu_fatbin::synth` against nvcc: for the same signatures, the synthetic cubin must give the
//! parser the same kernels, layouts and parameter records as nvcc 13's (sm_80 and sm_90).
//! nvcc comes from `$VGPU_NVCC` or target/nvcc (scripts/setup-nvcc.sh); without it the test prints
//! SKIPPED and passes, except under CI (`CI` set), where it fails.

use std::path::Path;
use std::process::Command;

/// The one nvcc finder of the workspace's tests.
#[path = "../../../tests/src/nvcc.rs"]
mod nvcc_finder;
use nvcc_finder::nvcc;

use vgpu_fatbin::synth::{SynthKernel, SynthModule};
use vgpu_fatbin::{Cubin, Fatbin, NvInfoAttr};

/// C declaration, mangled name, synth parameters as (size, align).
type Signature = (&'static str, &'static str, Vec<(u32, u32)>);

fn signatures() -> Vec<Signature> {
    vec![
        ("__global__ void k16(unsigned long long a, unsigned long long b)", "_Z3k16yy", vec![(8, 8), (8, 8)]),
        ("__global__ void k256(Big b)", "_Z4k2563Big", vec![(256, 8)]),
        (
            "__global__ void mixed(char a, double b, short c, int *p, char e)",
            "_Z5mixedcdsPic",
            vec![(1, 1), (8, 8), (2, 2), (8, 8), (1, 1)],
        ),
        ("__global__ void bystruct(S s, int n, float *out)", "_Z8bystruct1SiPf", vec![(24, 8), (4, 4), (8, 8)]),
        (
            "__global__ void vec(char c, float4 v, short s, double2 d, char e)",
            "_Z3vecc6float4s7double2c",
            vec![(1, 1), (16, 16), (2, 2), (16, 16), (1, 1)],
        ),
        ("__global__ void saxpy(float a, const float *x, float *y, int n)", "_Z5saxpyfPKfPfi", vec![(4, 4), (8, 8), (8, 8), (4, 4)]),
        ("extern \"C\" __global__ void noparams()", "noparams", vec![]),
    ]
}

fn source() -> String {
    let mut s = String::from(
        "#include <cuda_runtime.h>\nstruct S { char c; double d; int i; };\nstruct Big { unsigned long long v[32]; };\n__device__ int sink;\n",
    );
    for (decl, _, _) in signatures() {
        // Touch the first byte of every parameter so none is optimised into a different layout.
        s.push_str(&format!("{decl} {{ sink = 1; }}\n"));
    }
    s
}

fn compile(arch: u32) -> Option<Vec<u8>> {
    let nvcc = nvcc()?.to_path_buf();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fatbin-synth");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{}-sigs.cu", std::process::id()));
    std::fs::write(&src, source()).unwrap();
    let out = dir.join(format!("{}-sigs-sm{arch}.cubin", std::process::id()));
    let st = Command::new(&nvcc).args(["-cubin", &format!("-arch=sm_{arch}"), "-o"]).arg(&out).arg(&src).status().expect("running nvcc");
    assert!(st.success(), "nvcc failed");
    let bytes = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&src);
    Some(bytes)
}

/// The parameter records the parser reads, comparable across the two cubins: PARAM_CBANK without
/// its symbol index (which numbers symbols differently), CBANK_PARAM_SIZE, each KPARAM_INFO.
fn param_records(k: &vgpu_fatbin::Kernel<'_>) -> Vec<(u8, u16, Vec<u8>)> {
    k.info
        .iter()
        .filter_map(|r| match r.attr {
            NvInfoAttr::ParamCbank => Some((0x0a, r.value, r.data[4..].to_vec())),
            NvInfoAttr::CbankParamSize => Some((0x19, r.value, Vec::new())),
            NvInfoAttr::KparamInfo => Some((0x17, r.value, r.data.to_vec())),
            _ => None,
        })
        .collect()
}

#[test]
fn synthetic_cubins_match_nvcc() {
    for arch in [80, 90] {
        let Some(real) = compile(arch) else { return };
        let real = Cubin::parse(&real).unwrap();
        let module = signatures().into_iter().fold(SynthModule::new(arch), |m, (_, name, p)| m.kernel(SynthKernel::new(name, &p)));
        let fb = module.fatbin().unwrap();
        let fb = Fatbin::parse(&fb).unwrap();
        let image = fb.best_cubin(arch / 10, arch % 10).unwrap().data().unwrap();
        let synth = Cubin::parse(&image).unwrap();
        assert_eq!(synth.kernels.len(), real.kernels.len());
        for (_, name, _) in signatures() {
            let (r, s) = (real.kernel(name).unwrap_or_else(|| panic!("nvcc has no {name}")), synth.kernel(name).unwrap());
            assert_eq!(s.params, r.params, "{name} on sm_{arch}: layout");
            assert_eq!(param_records(s), param_records(r), "{name} on sm_{arch}: records, in nvcc's order");
            assert_eq!(s.max_registers, r.max_registers, "{name}");
            assert_eq!((s.max_threads, s.reqntid, s.frame_size), (r.max_threads, r.reqntid, r.frame_size), "{name}");
        }
        assert_eq!(synth.e_flags, real.e_flags, "sm_{arch}: e_flags");
        assert_eq!(synth.virtual_arch, real.virtual_arch, "sm_{arch}: virtual architecture");
    }
}
