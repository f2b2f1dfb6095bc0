//! Parses real nvcc output: fatbin/tests/cu/*.cu compiled at test time with the CUDA 13 nvcc that
//! scripts/setup-nvcc.sh fetches from PyPI (`$VGPU_NVCC`, default target/nvcc/nvidia/cu13/bin/nvcc).
//! Without nvcc the tests skip with a message, except under CI (`CI` set), where they fail.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The one nvcc finder of the workspace's tests.
#[path = "../../../tests/src/nvcc.rs"]
mod nvcc_finder;
use nvcc_finder::nvcc;

use vgpu_fatbin::{Cubin, EntryKind, Error, Fatbin, Wrapper, FLAG_64BIT, FLAG_COMPRESSED_ZSTD, FLAG_DEBUG};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cu/params.cu");

/// Compiles params.cu with `args` into a file named after `out` (under the test's target tmp dir).
fn compile(out: &str, args: &[&str]) -> Option<Vec<u8>> {
    let nvcc = nvcc()?.to_path_buf();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fatbin-nvcc");
    std::fs::create_dir_all(&dir).unwrap();
    // One file per process, removed once read: concurrent test runs do not collide.
    let path = dir.join(format!("{}-{out}", std::process::id()));
    let status = Command::new(&nvcc).args(args).arg("-o").arg(&path).arg(SRC).status().expect("running nvcc");
    assert!(status.success(), "nvcc {args:?} failed");
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    Some(bytes)
}

fn cubin_sm80() -> Option<&'static [u8]> {
    static C: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    C.get_or_init(|| compile("params_sm80.cubin", &["-cubin", "-arch=sm_80"])).as_deref()
}

/// sm_80, sm_86, sm_90 cubins and compute_90 PTX (which nvcc 13 compresses with Zstandard).
fn fatbin_multi() -> Option<&'static [u8]> {
    static C: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    C.get_or_init(|| {
        compile(
            "params_multi.fatbin",
            &[
                "-fatbin",
                "-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_86,code=sm_86",
                "-gencode=arch=compute_90,code=[sm_90,compute_90]",
            ],
        )
    })
    .as_deref()
}

/// Every entry compressed, cubins included.
fn fatbin_compressed() -> Option<&'static [u8]> {
    static C: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    C.get_or_init(|| compile("params_compressed.fatbin", &["-fatbin", "-arch=sm_80", "-Xfatbin=-compress-all"])).as_deref()
}

/// (name, [(offset, size)], total) of one kernel.
type Layout = (&'static str, Vec<(u16, u32)>, u32);

/// The layouts, from the C declarations in params.cu.
fn expected() -> Vec<Layout> {
    let mut many: Vec<(u16, u32)> = (0..16).map(|i| (i * 4, 4)).collect();
    many.push((64, 16));
    many.push((80, 1));
    vec![
        ("_Z5mixedcdsPic", vec![(0, 1), (8, 8), (16, 2), (24, 8), (32, 1)], 33),
        ("_Z8bystruct1SiPf", vec![(0, 24), (24, 4), (32, 8)], 40),
        ("_Z4manyiiiiiiiiiiiiiiii6float4c", many, 81),
        ("_Z4tmplIfEvPT_S0_", vec![(0, 8), (8, 4)], 12),
        ("_Z4tmplIdEvPT_S0_", vec![(0, 8), (8, 8)], 16),
        ("noparams", vec![], 0),
    ]
}

fn check_kernels(cubin: &Cubin<'_>) {
    let mut names: Vec<&str> = cubin.kernels.iter().map(|k| k.name.as_str()).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = expected().iter().map(|e| e.0).collect();
    want.sort_unstable();
    // The __noinline__ device function and the __constant__/__device__ variables are no kernels.
    assert_eq!(names, want);
    for (name, params, total) in expected() {
        let k = cubin.kernel(name).unwrap();
        let got: Vec<(u16, u32)> = k.params.params.iter().map(|p| (p.offset, p.size)).collect();
        assert_eq!(got, params, "{name}");
        let ordinals: Vec<u16> = k.params.params.iter().map(|p| p.ordinal).collect();
        assert_eq!(ordinals, (0..params.len() as u16).collect::<Vec<_>>(), "{name}");
        assert_eq!(k.params.total_size, total, "{name}");
        assert!(k.code_size > 0, "{name}");
        assert!(k.registers.is_some_and(|r| r > 0), "{name}: EIATTR_REGCOUNT");
    }
}

#[test]
fn cubin_kernels_and_param_layouts() {
    let Some(data) = cubin_sm80() else { return };
    let cubin = Cubin::parse(data).unwrap();
    check_kernels(&cubin);
    // sm_80 puts the parameters at 0x160 in constant bank 0.
    let k = cubin.kernel("_Z5mixedcdsPic").unwrap();
    assert_eq!(k.params.cbank_offset, Some(0x160));
}

#[test]
fn fatbin_entries_and_best_cubin() {
    let Some(data) = fatbin_multi() else { return };
    let fb = Fatbin::parse(data).unwrap().with_name("params.cu");
    assert_eq!(fb.len, data.len() as u64);
    let listed: Vec<(EntryKind, u32, bool)> = fb.entries.iter().map(|e| (e.kind, e.arch, e.is_compressed())).collect();
    let mut sorted = listed.clone();
    sorted.sort_by_key(|&(k, a, _)| (a, k == EntryKind::Ptx));
    assert_eq!(
        sorted,
        vec![(EntryKind::Elf, 80, false), (EntryKind::Elf, 86, false), (EntryKind::Elf, 90, false), (EntryKind::Ptx, 90, true),]
    );
    assert!(fb.entries.iter().all(|e| e.flags & FLAG_64BIT != 0));
    for (major, minor, arch) in [(8, 0, 80), (8, 6, 86), (8, 9, 86), (9, 0, 90)] {
        let e = fb.best_cubin(major, minor).unwrap();
        assert_eq!((e.kind, e.arch), (EntryKind::Elf, arch), "cc {major}.{minor}");
        let image = e.data().unwrap();
        check_kernels(&Cubin::parse(&image).unwrap());
    }
    for (major, minor) in [(7, 5), (10, 0), (12, 0)] {
        let err = fb.best_cubin(major, minor).unwrap_err();
        assert!(matches!(err, Error::NoCompatibleCubin { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("params.cu") && msg.contains("sm_80, sm_86, sm_90") && msg.contains("compute_90"), "{msg}");
    }
    // The PTX is one Zstandard frame; decompressed it is the PTX text of every kernel.
    let ptx = fb.entries.iter().find(|e| e.kind == EntryKind::Ptx).unwrap();
    assert_ne!(ptx.flags & FLAG_COMPRESSED_ZSTD, 0);
    let text = ptx.data().unwrap();
    assert_eq!(text.len() as u64, ptx.uncompressed_len);
    // The same through best_ptx/ptx_text: compute_90 for 9.0 and later majors, none before.
    for (major, minor) in [(9, 0), (10, 0), (12, 0)] {
        assert_eq!(fb.best_ptx(major, minor).unwrap().index, ptx.index);
    }
    assert!(matches!(fb.best_ptx(8, 9), Err(Error::NoCompatiblePtx { .. })));
    let text = fb.best_ptx(12, 0).unwrap().ptx_text().unwrap();
    assert_eq!(text.len() as u64 + 1, ptx.uncompressed_len, "text and NUL");
    assert!(text.contains(".target sm_90"), "{text}");
    for (name, _, _) in expected() {
        assert!(text.contains(&format!(".entry {name}(")), "{name} missing from the PTX");
    }
}

#[test]
fn compressed_cubin_is_decompressed() {
    let Some(data) = fatbin_compressed() else { return };
    let fb = Fatbin::parse(data).unwrap();
    let e = fb.best_cubin(8, 0).unwrap();
    assert!(e.is_compressed());
    assert!(e.stored_len() < e.uncompressed_len);
    check_kernels(&Cubin::parse(&e.data().unwrap()).unwrap());

    // Corrupt compressed data: an error naming the module, not a panic.
    let mut bad = data.to_vec();
    let start = (e.offset + 64 + 8) as usize; // past the entry header and the frame header
    for b in &mut bad[start..start + 32] {
        *b ^= 0x5a;
    }
    let fb = Fatbin::parse(&bad).unwrap().with_name("libfoo.so");
    let err = fb.best_cubin(8, 0).unwrap().data().unwrap_err();
    assert!(matches!(err, Error::Compressed { .. }), "{err}");
    assert!(err.to_string().contains("libfoo.so"), "{err}");

    // A declared size that does not match what the frame holds.
    let mut bad = data.to_vec();
    let at = (e.offset + 56) as usize;
    bad[at..at + 8].copy_from_slice(&(e.uncompressed_len - 1).to_le_bytes());
    let fb = Fatbin::parse(&bad).unwrap();
    assert!(matches!(fb.best_cubin(8, 0).unwrap().data(), Err(Error::Compressed { .. })));
    // A huge declared size is refused before any allocation.
    bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let fb = Fatbin::parse(&bad).unwrap();
    assert!(matches!(fb.best_cubin(8, 0).unwrap().data(), Err(Error::Compressed { .. })));
}

/// `-G`: entries flagged debug, and the cubin compressed (fatbinary compresses debug images).
#[test]
fn debug_cubin() {
    let Some(data) = compile("params_debug.fatbin", &["-fatbin", "-G", "-arch=sm_80"]) else { return };
    let fb = Fatbin::parse(&data).unwrap();
    let e = fb.best_cubin(8, 0).unwrap();
    assert_ne!(e.flags & FLAG_DEBUG, 0);
    assert_ne!(e.flags & FLAG_COMPRESSED_ZSTD, 0);
    check_kernels(&Cubin::parse(&e.data().unwrap()).unwrap());
}

/// A host object from `nvcc -c`: `.nvFatBinSegment` holds the wrapper, `.nv_fatbin` the container.
#[test]
fn host_object_wrapper_and_section() {
    let Some(obj) = compile("params.o", &["-c", "-arch=sm_80"]) else { return };
    let elf = object::read::File::parse(&*obj).unwrap();
    use object::{Object, ObjectSection};
    let seg = elf.section_by_name(".nvFatBinSegment").unwrap().data().unwrap();
    let w = Wrapper::parse(seg).unwrap();
    assert_eq!(w.version, 1);
    let section = elf.section_by_name(".nv_fatbin").unwrap().data().unwrap();
    let len = Fatbin::total_len(&section[..16]).unwrap();
    assert!(len <= section.len() as u64);
    let fb = Fatbin::parse(section).unwrap();
    check_kernels(&Cubin::parse(&fb.best_cubin(8, 0).unwrap().data().unwrap()).unwrap());
}

/// Deterministic pseudo-random numbers for the mutation tests.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Parses everything reachable from `data`, ignoring errors: must never panic.
fn parse_all(data: &[u8]) {
    if let Ok(fb) = Fatbin::parse(data) {
        let _ = fb.best_cubin(8, 6);
        for e in &fb.entries {
            if let Ok(image) = e.data() {
                if e.kind == EntryKind::Elf {
                    let _ = Cubin::parse(&image);
                }
            }
        }
    }
    let _ = Cubin::parse(data);
}

#[test]
fn truncated_and_mutated_real_inputs_do_not_panic() {
    let (Some(cubin), Some(fatbin), Some(compressed)) = (cubin_sm80(), fatbin_multi(), fatbin_compressed()) else {
        return;
    };
    // Every strict prefix of a container is an error (it declares its full size).
    for len in 0..fatbin.len() {
        assert!(Fatbin::parse(&fatbin[..len]).is_err(), "prefix {len}");
    }
    for len in (0..cubin.len()).step_by(7) {
        let _ = Cubin::parse(&cubin[..len]);
    }
    // Random byte changes.
    let mut rng = Lcg(0x5eed);
    for input in [cubin, fatbin, compressed] {
        for _ in 0..1500 {
            let mut m = input.to_vec();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % m.len();
                m[at] = match rng.next() % 3 {
                    0 => rng.next() as u8,
                    1 => 0xff,
                    _ => 0,
                };
            }
            parse_all(&m);
        }
    }
}
