//! Synthetic modules for tests, benchmarks and the demo: a well-formed fatbin container holding
//! one cubin ELF whose kernels have the names and parameter layouts you ask for.
//!
//! **There is no GPU code in it.** Each kernel's `.text.<name>` section is empty: this is a
//! fixture for the `emu` executor (which validates and records launches and never runs them) and
//! for the guest's module and launch paths, not a compiler. Loading one on a real GPU (`vgpu
//! serve --executor cuda`) is meaningless; use nvcc output there. The image says so itself: it
//! carries a `.vgpu.synth` section with the text `vgpu synthetic module: no GPU code`.
//!
//! What is written is what [`Cubin::parse`](crate::Cubin::parse) reads, laid out as nvcc 13
//! lays it out (checked against nvcc in `tests/synth.rs`):
//!
//! - kernels: global `STT_FUNC` symbols with `STO_CUDA_ENTRY` (0x10) in `st_other`, each in its
//!   own (empty) `.text.<name>`;
//! - `.nv.info.<name>`: `EIATTR_MAX_THREADS` when a bound is given, then (kernels with
//!   parameters only, as nvcc does) `EIATTR_PARAM_CBANK` (the symbol of `.nv.constant0.<name>`,
//!   offset 0x160 before sm_90 and 0x210 from sm_90 on, the parameter bytes),
//!   `EIATTR_CBANK_PARAM_SIZE`, one `EIATTR_KPARAM_INFO` per parameter, last parameter first
//!   (info word: size << 18 | 0x1f000, no constant bank), and `EIATTR_MAXREG_COUNT` 255; in
//!   nvcc's order for the architecture (from sm_90 on the two size records come last);
//! - the global `.nv.info`: `EIATTR_REGCOUNT` and `EIATTR_FRAME_SIZE` (0) per kernel, then
//!   `EIATTR_MIN_STACK_SIZE` (0) per kernel;
//! - `.nv.constant0.<name>` (the parameter bank, zero), `.nv.shared.<name>` (`SHT_NOBITS`) when
//!   the kernel has static shared memory, and `.note.nv.cuinfo` with the virtual architecture
//!   equal to the real one and toolkit version 0 (no toolkit made it);
//! - ELF header: 64-bit little-endian, `ET_EXEC`, `EM_CUDA`, OS/ABI 0x41 version 8 and `e_flags`
//!   `0x06000004 | arch << 8` (nvcc 13's); no program headers.
//!
//! Parameters are placed as a C compiler places the arguments of a `__global__` function: each
//! at the next offset that is a multiple of its alignment; the total is the end of the last one
//! (no tail padding: `char, double, short, int *, char` is 33 bytes, as nvcc says).
//!
//! ```
//! use vgpu_fatbin::synth::{SynthKernel, SynthModule};
//! use vgpu_fatbin::{Cubin, Fatbin};
//! // __global__ void saxpy(float a, const float *x, float *y, int n)
//! let fatbin = SynthModule::new(80)
//!     .kernel(SynthKernel::new("_Z5saxpyfPKfPfi", &[(4, 4), (8, 8), (8, 8), (4, 4)]))
//!     .fatbin()
//!     .unwrap();
//! let fb = Fatbin::parse(&fatbin).unwrap();
//! let image = fb.best_cubin(8, 0).unwrap().data().unwrap();
//! let cubin = Cubin::parse(&image).unwrap();
//! let k = cubin.kernel("_Z5saxpyfPKfPfi").unwrap();
//! let offsets: Vec<u16> = k.params.params.iter().map(|p| p.offset).collect();
//! assert_eq!((offsets, k.params.total_size), (vec![0, 8, 16, 24], 28));
//! ```

use crate::{Error, Result, FATBIN_MAGIC, FLAG_64BIT};

/// `e_machine` of a cubin.
const EM_CUDA: u16 = 190;
/// `st_other` bit of kernel entry points.
const STO_CUDA_ENTRY: u8 = 0x10;
/// `sh_type` of `.nv.info` sections (`SHT_LOPROC`).
const SHT_CUDA_INFO: u32 = 0x7000_0000;
const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_NOTE: u32 = 7;
const SHT_NOBITS: u32 = 8;
const SHF_WRITE: u64 = 0x1;
const SHF_ALLOC: u64 = 0x2;
const SHF_EXECINSTR: u64 = 0x4;
const SHF_INFO_LINK: u64 = 0x40;
/// Entry flag nvcc sets on every entry built on Linux.
const FLAG_LINUX: u64 = 0x10;
/// Largest parameter size the `EIATTR_KPARAM_INFO` info word holds (14 bits).
pub const MAX_PARAM_SIZE: u32 = (1 << 14) - 1;
/// The marker in every synthetic image's `.vgpu.synth` section.
pub const MARKER: &[u8] = b"vgpu synthetic module: no GPU code\0";

/// One kernel parameter: size and alignment in bytes, as the C declaration has them (an `int`
/// is `(4, 4)`, a pointer `(8, 8)`, a `float4` `(16, 16)`, `struct { char c; double d; }`
/// `(16, 8)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthParam {
    pub size: u32,
    pub align: u32,
}

/// A kernel of a synthetic module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthKernel {
    /// The symbol name (mangled, as `__cudaRegisterFunction` and `Module::function` take it).
    pub name: String,
    pub params: Vec<SynthParam>,
    /// `EIATTR_REGCOUNT` (registers per thread); 16 by default.
    pub registers: u32,
    /// Static shared memory per block (the size of `.nv.shared.<name>`); 0 by default.
    pub shared_static: u64,
    /// `__launch_bounds__(n)`: `EIATTR_MAX_THREADS` `[n, 1, 1]`; none by default.
    pub max_threads: Option<u32>,
}

impl SynthKernel {
    /// A kernel named `name` with parameters of these `(size, align)`.
    pub fn new(name: impl Into<String>, params: &[(u32, u32)]) -> SynthKernel {
        SynthKernel {
            name: name.into(),
            params: params.iter().map(|&(size, align)| SynthParam { size, align }).collect(),
            registers: 16,
            shared_static: 0,
            max_threads: None,
        }
    }

    pub fn with_registers(mut self, registers: u32) -> SynthKernel {
        self.registers = registers;
        self
    }

    pub fn with_shared_static(mut self, bytes: u64) -> SynthKernel {
        self.shared_static = bytes;
        self
    }

    pub fn with_max_threads(mut self, n: u32) -> SynthKernel {
        self.max_threads = Some(n);
        self
    }

    /// Offset of each parameter and the total parameter bytes ([`layout`]).
    pub fn layout(&self) -> Result<(Vec<u16>, u32)> {
        layout(&self.params).map_err(|reason| invalid(format!("kernel {}: {reason}", self.name)))
    }
}

fn invalid(reason: String) -> Error {
    Error::Invalid { what: "synthetic module", reason }
}

/// The C placement of parameters: each at the next multiple of its alignment, the total at the
/// end of the last one. Sizes must be 1..=[`MAX_PARAM_SIZE`], alignments powers of two up to
/// 256, and every offset and the total must fit the 16 bits `.nv.info` gives them.
pub fn layout(params: &[SynthParam]) -> std::result::Result<(Vec<u16>, u32), String> {
    let mut offsets = Vec::with_capacity(params.len());
    let mut end = 0u32;
    for (i, p) in params.iter().enumerate() {
        if p.size == 0 || p.size > MAX_PARAM_SIZE {
            return Err(format!("parameter {i}: size {} is not in 1..={MAX_PARAM_SIZE}", p.size));
        }
        if !p.align.is_power_of_two() || p.align > 256 {
            return Err(format!("parameter {i}: alignment {} is not a power of two up to 256", p.align));
        }
        let off = end.next_multiple_of(p.align);
        end = off + p.size;
        let off = u16::try_from(off).map_err(|_| format!("parameter {i}: offset {off} does not fit 16 bits"))?;
        if end > u32::from(u16::MAX) {
            return Err(format!("parameter {i}: ends at {end}, past 65535"));
        }
        offsets.push(off);
    }
    Ok((offsets, end))
}

/// A synthetic module: one cubin for `arch` (the `XX` of `sm_XX`) with these kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthModule {
    pub arch: u32,
    pub kernels: Vec<SynthKernel>,
    /// Stored in `.vgpu.synth` after the marker: modules that differ only in their tag have
    /// different bytes (so different hashes), e.g. to load "new" modules in a benchmark.
    pub tag: u64,
    /// Zero bytes added to `.vgpu.synth`, to give the image a size (e.g. to time uploads).
    pub padding: usize,
}

impl SynthModule {
    /// An empty module for `sm_<arch>` (e.g. 80).
    pub fn new(arch: u32) -> SynthModule {
        SynthModule { arch, kernels: Vec::new(), tag: 0, padding: 0 }
    }

    /// Add a kernel.
    pub fn kernel(mut self, k: SynthKernel) -> SynthModule {
        self.kernels.push(k);
        self
    }

    pub fn with_tag(mut self, tag: u64) -> SynthModule {
        self.tag = tag;
        self
    }

    pub fn with_padding(mut self, bytes: usize) -> SynthModule {
        self.padding = bytes;
        self
    }

    /// The fatbin container (one 64-bit, uncompressed ELF entry for `arch`) around [`cubin`](Self::cubin).
    pub fn fatbin(&self) -> Result<Vec<u8>> {
        Ok(fatbin_of(&[(self.arch, &self.cubin()?)]))
    }

    /// The cubin ELF image.
    pub fn cubin(&self) -> Result<Vec<u8>> {
        if !(10..=255).contains(&self.arch) {
            return Err(invalid(format!("architecture {} is not in 10..=255", self.arch)));
        }
        let mut names = std::collections::HashSet::new();
        for k in &self.kernels {
            if k.name.is_empty() || k.name.contains('\0') {
                return Err(invalid(format!("kernel name {:?} is empty or holds a NUL", k.name)));
            }
            if !names.insert(k.name.as_str()) {
                return Err(invalid(format!("kernel {} is there twice", k.name)));
            }
            if k.max_threads == Some(0) {
                return Err(invalid(format!("kernel {}: max_threads 0", k.name)));
            }
            if k.registers > 255 {
                return Err(invalid(format!("kernel {}: {} registers (at most 255)", k.name, k.registers)));
            }
        }
        let layouts = self.kernels.iter().map(SynthKernel::layout).collect::<Result<Vec<_>>>()?;
        Ok(self.elf(&layouts))
    }

    fn elf(&self, layouts: &[(Vec<u16>, u32)]) -> Vec<u8> {
        let n = self.kernels.len();
        let cbank: u16 = if self.arch >= 90 { 0x210 } else { 0x160 };
        // Section indices: 1..=5 fixed (below), then per kernel .nv.info.<k> (6..6+n),
        // .nv.constant0.<k>, .text.<k>, then the shared sections and .vgpu.synth.
        let const_idx = |i: usize| 6 + n + i;
        let text_idx = |i: usize| 6 + 2 * n + i;
        // Symbols: null, per kernel the section symbols of .text.<k> and .nv.constant0.<k>,
        // then the kernels (global).
        let const_sym = |i: usize| (2 + 2 * i) as u32;
        let first_global = 1 + 2 * n;
        let kernel_sym = |i: usize| (first_global + i) as u32;

        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; 24];
        let sym = |tab: &mut Vec<u8>, name: u32, info: u8, other: u8, shndx: usize, size: u64| {
            tab.extend_from_slice(&name.to_le_bytes());
            tab.push(info);
            tab.push(other);
            tab.extend_from_slice(&(shndx as u16).to_le_bytes());
            tab.extend_from_slice(&0u64.to_le_bytes());
            tab.extend_from_slice(&size.to_le_bytes());
        };
        for i in 0..n {
            sym(&mut symtab, 0, 3, 0, text_idx(i), 0); // STT_SECTION, STB_LOCAL
            sym(&mut symtab, 0, 3, 0, const_idx(i), 0);
        }
        for (i, k) in self.kernels.iter().enumerate() {
            let name = strtab.len() as u32;
            strtab.extend_from_slice(k.name.as_bytes());
            strtab.push(0);
            sym(&mut symtab, name, 0x12, STO_CUDA_ENTRY, text_idx(i), 0); // STT_FUNC, STB_GLOBAL
        }

        // The global .nv.info: REGCOUNT and FRAME_SIZE per kernel, then MIN_STACK_SIZE per kernel.
        let rec8 = |out: &mut Vec<u8>, attr: u8, a: u32, b: u32| {
            out.extend_from_slice(&[0x04, attr, 8, 0]);
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
        };
        let mut nv_info = Vec::new();
        for (i, k) in self.kernels.iter().enumerate() {
            rec8(&mut nv_info, 0x2f, kernel_sym(i), k.registers);
            rec8(&mut nv_info, 0x11, kernel_sym(i), 0);
        }
        for i in 0..n {
            rec8(&mut nv_info, 0x12, kernel_sym(i), 0);
        }

        let mut note = Vec::new();
        note.extend_from_slice(&12u32.to_le_bytes());
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&1000u32.to_le_bytes());
        note.extend_from_slice(b"NVIDIA Corp\0");
        note.extend_from_slice(&2u16.to_le_bytes());
        note.extend_from_slice(&(self.arch as u16).to_le_bytes());
        note.extend_from_slice(&0u32.to_le_bytes());

        let mut sections = vec![
            Section::new(".shstrtab", SHT_STRTAB, 0, 1, Vec::new()),
            Section::new(".strtab", SHT_STRTAB, 0, 1, strtab),
            Section { link: 2, info: first_global as u32, entsize: 24, ..Section::new(".symtab", SHT_SYMTAB, 0, 8, symtab) },
            Section::new(".note.nv.cuinfo", SHT_NOTE, 0, 4, note),
            Section { link: 3, ..Section::new(".nv.info", SHT_CUDA_INFO, 0, 4, nv_info) },
        ];
        for (i, (k, (offsets, total))) in self.kernels.iter().zip(layouts).enumerate() {
            let mut info = Vec::new();
            if let Some(t) = k.max_threads {
                info.extend_from_slice(&[0x04, 0x05, 12, 0]);
                for d in [t, 1, 1] {
                    info.extend_from_slice(&d.to_le_bytes());
                }
            }
            let mut kparams = Vec::new();
            for (ordinal, (p, off)) in k.params.iter().zip(offsets).enumerate().rev() {
                kparams.extend_from_slice(&[0x04, 0x17, 12, 0, 0, 0, 0, 0]);
                kparams.extend_from_slice(&(ordinal as u16).to_le_bytes());
                kparams.extend_from_slice(&off.to_le_bytes());
                kparams.extend_from_slice(&((p.size << 18) | 0x1f000).to_le_bytes());
            }
            // In range: layout() keeps the total within u16.
            let total16 = *total as u16;
            let mut sizes = Vec::new();
            if !k.params.is_empty() {
                sizes.extend_from_slice(&[0x04, 0x0a, 8, 0]);
                sizes.extend_from_slice(&const_sym(i).to_le_bytes());
                sizes.extend_from_slice(&cbank.to_le_bytes());
                sizes.extend_from_slice(&total16.to_le_bytes());
                sizes.extend_from_slice(&[0x03, 0x19]);
                sizes.extend_from_slice(&total16.to_le_bytes());
            }
            let maxreg = [0x03, 0x1b, 0xff, 0x00];
            if self.arch >= 90 {
                // nvcc's sm_90 order: parameters, register limit, CBANK_PARAM_SIZE, PARAM_CBANK.
                info.extend_from_slice(&kparams);
                info.extend_from_slice(&maxreg);
                if sizes.len() == 16 {
                    info.extend_from_slice(&sizes[12..]);
                    info.extend_from_slice(&sizes[..12]);
                }
            } else {
                // Before sm_90: PARAM_CBANK, CBANK_PARAM_SIZE, parameters, register limit.
                info.extend_from_slice(&sizes);
                info.extend_from_slice(&kparams);
                info.extend_from_slice(&maxreg);
            }
            let name = format!(".nv.info.{}", k.name);
            sections.push(Section {
                flags: SHF_INFO_LINK,
                link: 3,
                info: text_idx(i) as u32,
                ..Section::new(&name, SHT_CUDA_INFO, 0, 4, info)
            });
        }
        for (i, (k, (_, total))) in self.kernels.iter().zip(layouts).enumerate() {
            let bank = vec![0u8; usize::from(cbank) + *total as usize];
            let name = format!(".nv.constant0.{}", k.name);
            sections.push(Section { info: text_idx(i) as u32, ..Section::new(&name, SHT_PROGBITS, SHF_ALLOC | SHF_INFO_LINK, 4, bank) });
        }
        for (i, k) in self.kernels.iter().enumerate() {
            let name = format!(".text.{}", k.name);
            let info = (k.registers << 24) | kernel_sym(i);
            sections.push(Section { link: 3, info, ..Section::new(&name, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, 128, Vec::new()) });
        }
        for (i, k) in self.kernels.iter().enumerate().filter(|(_, k)| k.shared_static > 0) {
            let name = format!(".nv.shared.{}", k.name);
            sections.push(Section {
                info: text_idx(i) as u32,
                nobits: k.shared_static,
                ..Section::new(&name, SHT_NOBITS, SHF_ALLOC | SHF_WRITE, 16, Vec::new())
            });
        }
        let mut synth = MARKER.to_vec();
        synth.extend_from_slice(&self.tag.to_le_bytes());
        synth.resize(synth.len() + self.padding, 0);
        sections.push(Section::new(".vgpu.synth", SHT_PROGBITS, 0, 1, synth));

        // Section names.
        let mut shstrtab = vec![0u8];
        let mut name_offs = Vec::with_capacity(sections.len());
        for s in &sections {
            name_offs.push(shstrtab.len() as u32);
            shstrtab.extend_from_slice(s.name.as_bytes());
            shstrtab.push(0);
        }
        sections[0].data = shstrtab;

        // Layout: ELF header, section bodies (aligned), section headers.
        let mut out = vec![0u8; 64];
        let mut offsets = Vec::with_capacity(sections.len());
        for s in &sections {
            let at = out.len().next_multiple_of(s.align as usize);
            out.resize(at, 0);
            offsets.push(at as u64);
            out.extend_from_slice(&s.data);
        }
        let shoff = out.len().next_multiple_of(8);
        out.resize(shoff, 0);
        out.extend_from_slice(&[0u8; 64]); // section 0
        for ((s, &name), &off) in sections.iter().zip(&name_offs).zip(&offsets) {
            let size = if s.sh_type == SHT_NOBITS { s.nobits } else { s.data.len() as u64 };
            out.extend_from_slice(&name.to_le_bytes());
            out.extend_from_slice(&s.sh_type.to_le_bytes());
            out.extend_from_slice(&s.flags.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes()); // sh_addr
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&s.link.to_le_bytes());
            out.extend_from_slice(&s.info.to_le_bytes());
            out.extend_from_slice(&s.align.to_le_bytes());
            out.extend_from_slice(&s.entsize.to_le_bytes());
        }
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0x41, 8, 0, 0, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        h.extend_from_slice(&EM_CUDA.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes()); // e_version
        h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
        h.extend_from_slice(&0u64.to_le_bytes()); // e_phoff
        h.extend_from_slice(&(shoff as u64).to_le_bytes());
        h.extend_from_slice(&(0x0600_0004 | (self.arch << 8)).to_le_bytes());
        h.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        h.extend_from_slice(&0u16.to_le_bytes()); // e_phentsize
        h.extend_from_slice(&0u16.to_le_bytes()); // e_phnum
        h.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        h.extend_from_slice(&((sections.len() + 1) as u16).to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes()); // e_shstrndx
        out[..64].copy_from_slice(&h);
        out
    }
}

struct Section {
    name: String,
    sh_type: u32,
    flags: u64,
    link: u32,
    info: u32,
    align: u64,
    entsize: u64,
    data: Vec<u8>,
    /// Size of an `SHT_NOBITS` section.
    nobits: u64,
}

impl Section {
    fn new(name: &str, sh_type: u32, flags: u64, align: u64, data: Vec<u8>) -> Section {
        Section { name: name.to_string(), sh_type, flags, link: 0, info: 0, align, entsize: 0, data, nobits: 0 }
    }
}

/// A fatbin container (version 1) holding these cubins, each as an uncompressed 64-bit ELF entry
/// for `sm_<arch>` (entry header as nvcc 13 writes it: version 0x0101, image version 1.8, flags
/// 0x11), payloads padded to 8 bytes.
pub fn fatbin_of(cubins: &[(u32, &[u8])]) -> Vec<u8> {
    let entries: Vec<RawEntry<'_>> = cubins.iter().map(|&(arch, image)| (2, arch, (1, 8), image)).collect();
    container(&entries)
}

/// A fatbin container holding PTX only, as `nvcc -fatbin -gencode arch=compute_XX,code=compute_XX
/// -Xfatbin -compress-all=false` makes it: one uncompressed 64-bit PTX entry per `(XX, text)`,
/// the text NUL-terminated and padded to 8 bytes, its image version the text's `.version`
/// (9.0 when it has none).
pub fn ptx_fatbin(ptx: &[(u32, &str)]) -> Vec<u8> {
    let texts: Vec<(u32, (u16, u16), Vec<u8>)> = ptx
        .iter()
        .map(|&(arch, text)| {
            let version = text
                .lines()
                .find_map(|l| l.trim().strip_prefix(".version"))
                .and_then(|v| v.trim().split_once('.'))
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                .unwrap_or((9, 0));
            let mut bytes = text.as_bytes().to_vec();
            bytes.push(0);
            (arch, version, bytes)
        })
        .collect();
    let entries: Vec<RawEntry<'_>> = texts.iter().map(|(arch, v, b)| (1, *arch, *v, b.as_slice())).collect();
    container(&entries)
}

/// One entry for [`container`]: `(kind, arch, (major, minor) image version, payload)`.
type RawEntry<'a> = (u16, u32, (u16, u16), &'a [u8]);

/// A container of these entries, uncompressed, 64-bit Linux.
fn container(list: &[RawEntry<'_>]) -> Vec<u8> {
    let mut entries = Vec::new();
    for &(kind, arch, (major, minor), image) in list {
        let padded = image.len().next_multiple_of(8);
        entries.extend_from_slice(&kind.to_le_bytes()); // 1: PTX, 2: ELF
        entries.extend_from_slice(&0x0101u16.to_le_bytes());
        entries.extend_from_slice(&64u32.to_le_bytes()); // header size
        entries.extend_from_slice(&(padded as u64).to_le_bytes());
        entries.extend_from_slice(&0u32.to_le_bytes()); // compressed size
        entries.extend_from_slice(&0u32.to_le_bytes()); // options offset
        entries.extend_from_slice(&minor.to_le_bytes()); // image version, minor
        entries.extend_from_slice(&major.to_le_bytes()); // image version, major
        entries.extend_from_slice(&arch.to_le_bytes());
        entries.extend_from_slice(&0u32.to_le_bytes()); // identifier offset
        entries.extend_from_slice(&0u32.to_le_bytes()); // identifier length
        entries.extend_from_slice(&(FLAG_64BIT | FLAG_LINUX).to_le_bytes());
        entries.extend_from_slice(&0u64.to_le_bytes()); // reserved
        entries.extend_from_slice(&0u64.to_le_bytes()); // decompressed size
        entries.extend_from_slice(image);
        entries.resize(entries.len() + padded - image.len(), 0);
    }
    let mut out = Vec::with_capacity(16 + entries.len());
    out.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    out.extend_from_slice(&entries);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cubin, EntryKind, Fatbin};

    #[test]
    fn a_ptx_fatbin_reads_back_as_nvcc_s() {
        let text = ".version 8.7\n.target sm_75\n.address_size 64\n";
        let fb_bytes = ptx_fatbin(&[(75, text), (90, ".target sm_90\n")]);
        let fb = Fatbin::parse(&fb_bytes).unwrap();
        assert_eq!(fb.entries.len(), 2);
        assert_eq!((fb.entries[0].kind, fb.entries[0].arch, fb.entries[0].image_version), (EntryKind::Ptx, 75, (8, 7)));
        assert_eq!(fb.entries[1].image_version, (9, 0));
        assert_eq!(fb.best_ptx(8, 0).unwrap().ptx_text().unwrap(), text);
        assert_eq!(fb.best_ptx(9, 0).unwrap().arch, 90);
    }

    /// (name, params as (size, align), expected (offset, size) list, expected total)
    type Case = (&'static str, Vec<(u32, u32)>, Vec<(u16, u32)>, u32);

    fn cases() -> Vec<Case> {
        let mut many_in: Vec<(u32, u32)> = vec![(4, 4); 16];
        many_in.push((16, 16));
        many_in.push((1, 1));
        let mut many_out: Vec<(u16, u32)> = (0..16).map(|i| (i * 4, 4)).collect();
        many_out.push((64, 16));
        many_out.push((80, 1));
        vec![
            ("_Z5mixedcdsPic", vec![(1, 1), (8, 8), (2, 2), (8, 8), (1, 1)], vec![(0, 1), (8, 8), (16, 2), (24, 8), (32, 1)], 33),
            ("_Z8bystruct1SiPf", vec![(24, 8), (4, 4), (8, 8)], vec![(0, 24), (24, 4), (32, 8)], 40),
            ("_Z4manyiiiiiiiiiiiiiiii6float4c", many_in, many_out, 81),
            ("noparams", vec![], vec![], 0),
            ("_Z3bigPv", vec![(8, 8), (256, 8)], vec![(0, 8), (8, 256)], 264),
            ("k_max", vec![(1, 1), (MAX_PARAM_SIZE, 1)], vec![(0, 1), (1, MAX_PARAM_SIZE)], MAX_PARAM_SIZE + 1),
        ]
    }

    fn module(arch: u32) -> SynthModule {
        cases().into_iter().fold(SynthModule::new(arch), |m, (name, params, _, _)| m.kernel(SynthKernel::new(name, &params)))
    }

    #[test]
    fn round_trip_through_the_parser() {
        for arch in [70, 80, 86, 90, 120] {
            let fb_bytes = module(arch).fatbin().unwrap();
            let fb = Fatbin::parse(&fb_bytes).unwrap();
            assert_eq!(fb.len, fb_bytes.len() as u64);
            assert_eq!(fb.entries.len(), 1);
            let e = &fb.entries[0];
            assert_eq!((e.kind, e.arch, e.is_compressed(), e.flags & FLAG_64BIT), (EntryKind::Elf, arch, false, FLAG_64BIT));
            let best = fb.best_cubin(arch / 10, arch % 10).unwrap();
            let image = best.data().unwrap();
            let cubin = Cubin::parse(&image).unwrap();
            assert_eq!(cubin.e_flags, 0x0600_0004 | (arch << 8));
            assert_eq!(cubin.virtual_arch, Some(arch));
            assert!(cubin.globals.is_empty());
            let names: Vec<&str> = cubin.kernels.iter().map(|k| k.name.as_str()).collect();
            let want: Vec<&str> = cases().iter().map(|c| c.0).collect();
            assert_eq!(names, want);
            for (name, _, params, total) in cases() {
                let k = cubin.kernel(name).unwrap();
                let got: Vec<(u16, u32)> = k.params.params.iter().map(|p| (p.offset, p.size)).collect();
                assert_eq!(got, params, "{name} on sm_{arch}");
                assert_eq!(k.params.total_size, total, "{name}");
                let cbank = if params.is_empty() {
                    None
                } else if arch >= 90 {
                    Some(0x210)
                } else {
                    Some(0x160)
                };
                assert_eq!(k.params.cbank_offset, cbank);
                assert_eq!(k.registers, Some(16));
                assert_eq!((k.code_size, k.shared_static, k.max_threads, k.max_registers, k.frame_size), (0, 0, None, Some(255), Some(0)));
            }
        }
    }

    #[test]
    fn attributes_round_trip() {
        let m = SynthModule::new(80)
            .kernel(SynthKernel::new("_Z7boundedPfi", &[(8, 8), (4, 4)]).with_registers(40).with_shared_static(4096).with_max_threads(128));
        let bytes = m.cubin().unwrap();
        let c = Cubin::parse(&bytes).unwrap();
        let k = &c.kernels[0];
        assert_eq!((k.registers, k.shared_static, k.max_threads), (Some(40), 4096, Some([128, 1, 1])));
        assert_eq!(k.params.total_size, 12);
    }

    #[test]
    fn tag_and_padding_change_the_bytes_not_the_kernels() {
        let base = SynthModule::new(80).kernel(SynthKernel::new("k", &[(8, 8)]));
        let a = base.fatbin().unwrap();
        let b = base.clone().with_tag(1).fatbin().unwrap();
        let c = base.clone().with_padding(1 << 20).fatbin().unwrap();
        assert_ne!(a, b);
        assert!(c.len() > (1 << 20) && c.len() < (1 << 20) + 4096, "{}", c.len());
        assert_eq!(base.fatbin().unwrap(), a, "deterministic");
        for img in [&a, &b, &c] {
            let fb = Fatbin::parse(img).unwrap();
            let cubin_bytes = fb.entries[0].data().unwrap();
            let cubin = Cubin::parse(&cubin_bytes).unwrap();
            assert_eq!(cubin.kernels.len(), 1);
            assert!(cubin_bytes.windows(MARKER.len()).any(|w| w == MARKER), "the image says what it is");
        }
    }

    #[test]
    fn several_cubins_in_one_container() {
        let c80 = module(80).cubin().unwrap();
        let c90 = module(90).cubin().unwrap();
        let fb_bytes = fatbin_of(&[(80, &c80), (90, &c90)]);
        let fb = Fatbin::parse(&fb_bytes).unwrap();
        assert_eq!(fb.entries.iter().map(|e| e.arch).collect::<Vec<_>>(), [80, 90]);
        assert_eq!(fb.best_cubin(8, 6).unwrap().arch, 80);
        assert_eq!(fb.best_cubin(9, 0).unwrap().arch, 90);
    }

    #[test]
    fn bad_specs_are_errors() {
        let bad = |m: SynthModule| matches!(m.cubin(), Err(Error::Invalid { what: "synthetic module", .. }));
        let one = |params: &[(u32, u32)]| SynthModule::new(80).kernel(SynthKernel::new("k", params));
        assert!(bad(one(&[(0, 1)])), "size 0");
        assert!(bad(one(&[(MAX_PARAM_SIZE + 1, 1)])), "size past 14 bits");
        assert!(bad(one(&[(4, 3)])), "alignment not a power of two");
        assert!(bad(one(&[(4, 512)])), "alignment too large");
        assert!(bad(one(&[(MAX_PARAM_SIZE, 1); 5])), "total past 16 bits");
        assert!(bad(SynthModule::new(9)), "arch");
        assert!(bad(SynthModule::new(80).kernel(SynthKernel::new("", &[]))), "empty name");
        assert!(bad(SynthModule::new(80).kernel(SynthKernel::new("a\0b", &[]))), "NUL");
        assert!(bad(SynthModule::new(80).kernel(SynthKernel::new("k", &[])).kernel(SynthKernel::new("k", &[]))), "twice");
        assert!(bad(SynthModule::new(80).kernel(SynthKernel::new("k", &[]).with_max_threads(0))), "max threads 0");
        assert!(bad(SynthModule::new(80).kernel(SynthKernel::new("k", &[]).with_registers(256))), "registers");
        assert!(SynthModule::new(80).cubin().is_ok(), "a module without kernels is well-formed");
    }
}
