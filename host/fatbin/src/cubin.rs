//! The cubin ELF: kernels and their `.nv.info` attributes (EIATTR records), parameter layouts.

use object::elf::{FileHeader64, SHT_NOBITS, SHT_SYMTAB, STT_FUNC, STT_OBJECT};
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::Endianness;

use crate::{Error, Reader, Result};

// The cubin need not be aligned: nvcc 13.5 writes section header tables at offsets that are
// multiples of 4 only, and an uncompressed cubin borrowed from a guest buffer (`Entry::data`)
// starts at whatever address the guest chose. `object` without its `unaligned` feature reads ELF
// structures in place as aligned `u64`s and refuses such input ("Invalid ELF section header
// offset/size/alignment", "Invalid ELF header size or alignment"); with it, every field is a byte
// array read bytewise (no unsafe here, and `object` still bounds-checks each table against the
// input). Any offset is accepted, not only multiples of 4: alignment is no safety matter for
// bytewise reads, and refusing odd layouts the driver may load would buy nothing. Cargo.toml
// enables the feature; these fail the build if a change of features ever loses it (the tests
// would not notice: a dev-dependency's features leak into test builds).
const _: () = {
    use std::mem::align_of;
    assert!(align_of::<FileHeader64<Endianness>>() == 1);
    assert!(align_of::<object::elf::SectionHeader64<Endianness>>() == 1);
    assert!(align_of::<object::elf::Sym64<Endianness>>() == 1);
};

/// `e_machine` of a cubin.
const EM_CUDA: u16 = 190;
/// `st_other` bit nvcc sets on kernel entry points (`__global__`), not on device functions.
const STO_CUDA_ENTRY: u8 = 0x10;

/// The `.nv.info` attributes this crate names; any other is kept as [`NvInfoAttr::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvInfoAttr {
    /// `EIATTR_MAX_THREADS` (0x05): 3 u32, the block size bound of `__launch_bounds__`.
    MaxThreads,
    /// `EIATTR_REQNTID` (0x10): 3 u32, the block size the kernel requires (PTX `.reqntid`).
    Reqntid,
    /// `EIATTR_PARAM_CBANK` (0x0a): symbol index of the kernel's constant bank section, then u16
    /// offset of the parameters within that bank and u16 their size.
    ParamCbank,
    /// `EIATTR_FRAME_SIZE` (0x11), in the global `.nv.info`: symbol index, bytes.
    FrameSize,
    /// `EIATTR_MIN_STACK_SIZE` (0x12), in the global `.nv.info`: symbol index, bytes.
    MinStackSize,
    /// `EIATTR_KPARAM_INFO` (0x17): one per parameter (see [`Param`]).
    KparamInfo,
    /// `EIATTR_CBANK_PARAM_SIZE` (0x19): total parameter bytes (u16 value).
    CbankParamSize,
    /// `EIATTR_MAXREG_COUNT` (0x1b): register limit (u16 value).
    MaxregCount,
    /// `EIATTR_EXIT_INSTR_OFFSETS` (0x1c): offsets of the EXIT instructions in `.text.<kernel>`.
    ExitInstrOffsets,
    /// `EIATTR_REGCOUNT` (0x2f), in the global `.nv.info`: symbol index, registers per thread.
    Regcount,
    /// Any other attribute code.
    Other(u8),
}

impl NvInfoAttr {
    fn from_raw(raw: u8) -> Self {
        match raw {
            0x05 => Self::MaxThreads,
            0x10 => Self::Reqntid,
            0x0a => Self::ParamCbank,
            0x11 => Self::FrameSize,
            0x12 => Self::MinStackSize,
            0x17 => Self::KparamInfo,
            0x19 => Self::CbankParamSize,
            0x1b => Self::MaxregCount,
            0x1c => Self::ExitInstrOffsets,
            0x2f => Self::Regcount,
            other => Self::Other(other),
        }
    }
}

/// One EIATTR record of a `.nv.info` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvInfoRecord<'a> {
    /// The attribute.
    pub attr: NvInfoAttr,
    /// The raw format byte: 1 no value, 2 byte value, 3 half-word value, 4 sized data.
    pub format: u8,
    /// The u16 value of formats 1-3 (0 for format 1); the data length for format 4.
    pub value: u16,
    /// The data of format 4 (empty otherwise).
    pub data: &'a [u8],
}

/// Parses the EIATTR records of one `.nv.info` section.
pub(crate) fn parse_nv_info(section: &[u8]) -> Result<Vec<NvInfoRecord<'_>>> {
    let r = Reader::new(section, ".nv.info record");
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < section.len() as u64 {
        let format = r.u8(pos)?;
        let attr = NvInfoAttr::from_raw(r.u8(pos + 1)?);
        let value = r.u16(pos + 2)?;
        let data = match format {
            1..=3 => &[][..],
            4 => r.bytes(pos + 4, u64::from(value))?,
            other => return Err(Error::Invalid { what: ".nv.info record", reason: format!("unknown format {other:#x} at offset {pos}") }),
        };
        out.push(NvInfoRecord { attr, format, value, data });
        pos += 4 + data.len() as u64;
    }
    Ok(out)
}

/// One kernel parameter, from `EIATTR_KPARAM_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// Position in the C declaration (0-based).
    pub ordinal: u16,
    /// Byte offset within the parameter buffer.
    pub offset: u16,
    /// Size in bytes (bits 18..32 of the info word).
    pub size: u32,
    /// The raw info word (bits 12..17: constant bank, 0x1f for none; bits 18..32: size).
    pub info: u32,
}

/// A kernel's parameter buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamLayout {
    /// Parameters by ordinal.
    pub params: Vec<Param>,
    /// Total parameter bytes: `EIATTR_CBANK_PARAM_SIZE`, else the `EIATTR_PARAM_CBANK` size, else
    /// the end of the last parameter.
    pub total_size: u32,
    /// Where the parameters start in constant bank 0 (`EIATTR_PARAM_CBANK`), e.g. 0x160 on sm_80.
    pub cbank_offset: Option<u16>,
}

impl ParamLayout {
    fn from_records(kernel: &str, records: &[NvInfoRecord<'_>]) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid { what: ".nv.info kernel parameters", reason: format!("{kernel}: {reason}") };
        let mut params = Vec::new();
        let mut cbank_size = None;
        let mut cbank_offset = None;
        let mut cbank_param_size = None;
        for rec in records {
            match rec.attr {
                NvInfoAttr::KparamInfo => {
                    let r = Reader::new(rec.data, "EIATTR_KPARAM_INFO");
                    let info = r.u32(8)?;
                    params.push(Param { ordinal: r.u16(4)?, offset: r.u16(6)?, size: info >> 18, info });
                }
                NvInfoAttr::ParamCbank => {
                    let r = Reader::new(rec.data, "EIATTR_PARAM_CBANK");
                    cbank_offset = Some(r.u16(4)?);
                    cbank_size = Some(u32::from(r.u16(6)?));
                }
                NvInfoAttr::CbankParamSize => cbank_param_size = Some(u32::from(rec.value)),
                _ => {}
            }
        }
        params.sort_by_key(|p| p.ordinal);
        let end = params.iter().map(|p| u32::from(p.offset) + p.size).max().unwrap_or(0);
        let total_size = cbank_param_size.or(cbank_size).unwrap_or(end);
        if let (Some(a), Some(b)) = (cbank_param_size, cbank_size) {
            if a != b {
                return Err(invalid(format!("EIATTR_CBANK_PARAM_SIZE {a} != EIATTR_PARAM_CBANK size {b}")));
            }
        }
        for (i, p) in params.iter().enumerate() {
            if usize::from(p.ordinal) != i {
                return Err(invalid(format!("parameter ordinals are not 0..{}: found {}", params.len(), p.ordinal)));
            }
            if u32::from(p.offset) + p.size > total_size {
                return Err(invalid(format!(
                    "parameter {} at {}+{} ends past the parameter size {total_size}",
                    p.ordinal, p.offset, p.size
                )));
            }
        }
        Ok(Self { params, total_size, cbank_offset })
    }
}

/// Shared memory the system reserves at the start of every block's shared memory on sm_90 and
/// later. Measured with nvcc 13.0 (`-arch=sm_90`): such cubins have an empty
/// `.nv.shared.reserved.0` section and a `.nv.reservedSmem.offset0` symbol, and every kernel's
/// `.nv.shared.<kernel>` is 1 KiB larger than its variables (0x400 for a kernel without
/// shared memory, 0x800 for one with 1 KiB); sm_80 cubins have neither. CUDA counts this reserve
/// per block separately (`cudaDevAttrReservedSharedMemoryPerBlock`, 1 KiB), not in a function's
/// `sharedSizeBytes`, so it is taken out of [`Kernel::shared_static`].
pub const SYSTEM_RESERVED_SHARED: u64 = 1 << 10;

/// A kernel (`__global__` entry point) of a cubin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel<'a> {
    /// The (mangled) symbol name, as `__cudaRegisterFunction` names it.
    pub name: String,
    /// Index of its symbol in `.symtab`.
    pub symbol_index: usize,
    /// Size of its code in `.text.<name>`.
    pub code_size: u64,
    /// Registers per thread (`EIATTR_REGCOUNT` in the global `.nv.info`), when present.
    pub registers: Option<u32>,
    /// The records of `.nv.info.<name>` (empty when the section is missing).
    pub info: Vec<NvInfoRecord<'a>>,
    /// The parameter layout from those records.
    pub params: ParamLayout,
    /// Static shared memory per block: the size of `.nv.shared.<name>` (0 when absent), less
    /// the system's reserve when the cubin lays one out (see [`SYSTEM_RESERVED_SHARED`]).
    pub shared_static: u64,
    /// `EIATTR_MAX_THREADS` (`__launch_bounds__(n)` gives `[n, 1, 1]`), when present.
    pub max_threads: Option<[u32; 3]>,
    /// `EIATTR_REQNTID` (a required block size), when present.
    pub reqntid: Option<[u32; 3]>,
    /// `EIATTR_MAXREG_COUNT` (the register limit the kernel was built with), when present.
    pub max_registers: Option<u32>,
    /// `EIATTR_FRAME_SIZE` in the global `.nv.info`: local memory (stack frame) bytes per thread.
    pub frame_size: Option<u32>,
}

/// Where a module-scope variable lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalKind {
    /// `__device__`: `.nv.global` (zero-initialised) or `.nv.global.init`.
    Device,
    /// `__constant__`: a constant bank section `.nv.constant<N>` (N > 0, bank 3 on sm_80/sm_90).
    Constant,
}

/// A `__device__` or `__constant__` variable: an `STT_OBJECT` symbol in `.nv.global`,
/// `.nv.global.init` or `.nv.constant<N>` (N > 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global<'a> {
    /// The symbol name (mangled for C++ names at namespace scope), as `__cudaRegisterVar` names it.
    pub name: String,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Device or constant memory.
    pub kind: GlobalKind,
    /// The section that holds it.
    pub section: String,
    /// Initial bytes (`size` of them), or `None` for a zero-initialised variable (`SHT_NOBITS`).
    pub init: Option<&'a [u8]>,
}

/// A parsed cubin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cubin<'a> {
    /// The kernels, in symbol table order.
    pub kernels: Vec<Kernel<'a>>,
    /// `e_flags` of the ELF header (encodes the SASS architecture).
    pub e_flags: u32,
    /// `__device__` and `__constant__` variables, in symbol table order.
    pub globals: Vec<Global<'a>>,
    /// The virtual architecture the SASS was generated from (`.note.nv.cuinfo`, e.g. 80 for
    /// `compute_80`), when the note is present.
    pub virtual_arch: Option<u32>,
    /// The toolkit version of `.note.nv.cuinfo` (major * 10 + minor, e.g. 130), when present.
    pub toolkit_version: Option<u32>,
}

/// Reads a `[u32; 3]` record (`EIATTR_MAX_THREADS`, `EIATTR_REQNTID`).
fn dims(rec: &NvInfoRecord<'_>, what: &'static str) -> Result<[u32; 3]> {
    let r = Reader::new(rec.data, what);
    Ok([r.u32(0)?, r.u32(4)?, r.u32(8)?])
}

/// `.note.nv.cuinfo`: one ELF note (name "NVIDIA Corp"), whose descriptor is u16 *version*,
/// u16 virtual architecture, u32 toolkit version. `None` for anything else.
fn cuinfo(note: &[u8]) -> Option<(u32, u32)> {
    let r = Reader::new(note, ".note.nv.cuinfo");
    let namesz = u64::from(r.u32(0).ok()?);
    let descsz = u64::from(r.u32(4).ok()?);
    let desc = 12 + namesz.div_ceil(4) * 4;
    if descsz < 8 {
        return None;
    }
    Some((u32::from(r.u16(desc + 2).ok()?), r.u32(desc + 4).ok()?))
}

/// The kind of a section that holds variables, from its name.
fn global_section(name: &[u8]) -> Option<GlobalKind> {
    if name == b".nv.global" || name == b".nv.global.init" {
        return Some(GlobalKind::Device);
    }
    let bank = name.strip_prefix(b".nv.constant")?;
    (!bank.is_empty() && bank != b"0" && bank.iter().all(u8::is_ascii_digit)).then_some(GlobalKind::Constant)
}

fn elf(e: object::read::Error) -> Error {
    Error::Elf(e.to_string())
}

impl<'a> Cubin<'a> {
    /// Parses a cubin (a 64-bit little-endian ELF with `e_machine` EM_CUDA).
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let hdr = FileHeader64::<Endianness>::parse(data).map_err(elf)?;
        let endian = hdr.endian().map_err(elf)?;
        if hdr.e_machine(endian) != EM_CUDA {
            return Err(Error::Elf(format!("e_machine {} is not EM_CUDA (190)", hdr.e_machine(endian))));
        }
        let sections = hdr.sections(endian, data).map_err(elf)?;
        let symbols = sections.symbols(endian, data, SHT_SYMTAB).map_err(elf)?;

        // Per-kernel sections by name, and the global .nv.info.
        let mut infos = std::collections::HashMap::new();
        let mut shared = std::collections::HashMap::new();
        let mut registers = std::collections::HashMap::new();
        let mut frames = std::collections::HashMap::new();
        let mut note = None;
        let mut reserved = 0;
        for section in sections.iter() {
            let name = sections.section_name(endian, section).map_err(elf)?;
            if name == b".nv.info" {
                let body = section.data(endian, data).map_err(elf)?;
                for rec in parse_nv_info(body)? {
                    if rec.attr == NvInfoAttr::Regcount || rec.attr == NvInfoAttr::FrameSize {
                        let r = Reader::new(rec.data, "EIATTR_REGCOUNT/EIATTR_FRAME_SIZE");
                        let map = if rec.attr == NvInfoAttr::Regcount { &mut registers } else { &mut frames };
                        map.insert(r.u32(0)? as usize, r.u32(4)?);
                    }
                }
            } else if let Some(kernel) = name.strip_prefix(b".nv.info.") {
                infos.insert(kernel.to_vec(), section.data(endian, data).map_err(elf)?);
            } else if name.starts_with(b".nv.shared.reserved.") {
                reserved = SYSTEM_RESERVED_SHARED;
            } else if let Some(kernel) = name.strip_prefix(b".nv.shared.") {
                shared.insert(kernel.to_vec(), section.sh_size(endian));
            } else if name == b".note.nv.cuinfo" {
                note = cuinfo(section.data(endian, data).map_err(elf)?);
            }
        }

        let mut kernels = Vec::new();
        let mut globals = Vec::new();
        for (index, sym) in symbols.iter().enumerate() {
            if sym.st_type() == STT_OBJECT {
                if let Some(g) = Self::global(sym, &sections, &symbols, endian, data)? {
                    globals.push(g);
                }
                continue;
            }
            if sym.st_type() != STT_FUNC || sym.st_other() & STO_CUDA_ENTRY == 0 {
                continue;
            }
            let raw_name = symbols.symbol_name(endian, sym).map_err(elf)?;
            let name = String::from_utf8_lossy(raw_name).into_owned();
            let info = match infos.get(raw_name) {
                Some(body) => parse_nv_info(body)?,
                None => Vec::new(),
            };
            let params = ParamLayout::from_records(&name, &info)?;
            let (mut max_threads, mut reqntid, mut max_registers) = (None, None, None);
            for rec in &info {
                match rec.attr {
                    NvInfoAttr::MaxThreads => max_threads = Some(dims(rec, "EIATTR_MAX_THREADS")?),
                    NvInfoAttr::Reqntid => reqntid = Some(dims(rec, "EIATTR_REQNTID")?),
                    NvInfoAttr::MaxregCount => max_registers = Some(u32::from(rec.value)),
                    _ => {}
                }
            }
            kernels.push(Kernel {
                name,
                symbol_index: index,
                code_size: sym.st_size(endian),
                registers: registers.get(&index).copied(),
                info,
                params,
                shared_static: shared.get(raw_name).map_or(0, |&n| n.saturating_sub(reserved)),
                max_threads,
                reqntid,
                max_registers,
                frame_size: frames.get(&index).copied(),
            });
        }
        Ok(Self { kernels, e_flags: hdr.e_flags(endian), globals, virtual_arch: note.map(|n| n.0), toolkit_version: note.map(|n| n.1) })
    }

    /// The variable an `STT_OBJECT` symbol names, if it lives in a variable section.
    fn global(
        sym: &<FileHeader64<Endianness> as FileHeader>::Sym,
        sections: &object::read::elf::SectionTable<'a, FileHeader64<Endianness>>,
        symbols: &object::read::elf::SymbolTable<'a, FileHeader64<Endianness>>,
        endian: Endianness,
        data: &'a [u8],
    ) -> Result<Option<Global<'a>>> {
        let shndx = sym.st_shndx(endian);
        if shndx == 0 || shndx >= object::elf::SHN_LORESERVE {
            return Ok(None);
        }
        let section = sections.section(object::SectionIndex(usize::from(shndx))).map_err(elf)?;
        let Some(kind) = global_section(sections.section_name(endian, section).map_err(elf)?) else {
            return Ok(None);
        };
        let section_name = String::from_utf8_lossy(sections.section_name(endian, section).map_err(elf)?).into_owned();
        let name = String::from_utf8_lossy(symbols.symbol_name(endian, sym).map_err(elf)?).into_owned();
        let (value, size) = (sym.st_value(endian), sym.st_size(endian));
        let end = value.checked_add(size).filter(|&e| e <= section.sh_size(endian)).ok_or_else(|| Error::Invalid {
            what: "cubin variable",
            reason: format!("{name}: {value}+{size} is past the end of {section_name}"),
        })?;
        let init = if section.sh_type(endian) == SHT_NOBITS {
            None
        } else {
            let body = section.data(endian, data).map_err(elf)?;
            Some(Reader::new(body, "cubin variable").bytes(value, end - value)?)
        };
        Ok(Some(Global { name, size, kind, section: section_name, init }))
    }

    /// The variable with this name.
    pub fn global_named(&self, name: &str) -> Option<&Global<'a>> {
        self.globals.iter().find(|g| g.name == name)
    }

    /// The kernel with this (mangled) name.
    pub fn kernel(&self, name: &str) -> Option<&Kernel<'a>> {
        self.kernels.iter().find(|k| k.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kparam(ordinal: u16, offset: u16, size: u32) -> Vec<u8> {
        let mut v = vec![0x04, 0x17, 12, 0, 0, 0, 0, 0];
        v.extend_from_slice(&ordinal.to_le_bytes());
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&((size << 18) | 0x1f000).to_le_bytes());
        v
    }

    fn layout(section: &[u8]) -> Result<ParamLayout> {
        ParamLayout::from_records("k", &parse_nv_info(section)?)
    }

    #[test]
    fn records_and_layout() {
        // As nvcc emits them: last parameter first, then the size (HVAL) and a no-value record.
        let mut s = kparam(1, 8, 4);
        s.extend(kparam(0, 0, 8));
        s.extend([0x03, 0x19, 12, 0]);
        s.extend([0x01, 0x35, 0, 0]);
        let recs = parse_nv_info(&s).unwrap();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[2].attr, NvInfoAttr::CbankParamSize);
        assert_eq!(recs[3].attr, NvInfoAttr::Other(0x35));
        let l = layout(&s).unwrap();
        assert_eq!(l.total_size, 12);
        let got: Vec<_> = l.params.iter().map(|p| (p.ordinal, p.offset, p.size)).collect();
        assert_eq!(got, vec![(0, 0, 8), (1, 8, 4)]);
        // Without CBANK_PARAM_SIZE the total is the end of the last parameter.
        assert_eq!(layout(&s[..s.len() - 8]).unwrap().total_size, 12);
    }

    #[test]
    fn malformed_records_are_errors() {
        // Sized record longer than the section; unknown format; truncated header.
        assert!(matches!(parse_nv_info(&[0x04, 0x17, 0xff, 0xff, 0, 0]), Err(Error::Truncated { .. })));
        assert!(matches!(parse_nv_info(&[0x09, 0x17, 0, 0]), Err(Error::Invalid { .. })));
        assert!(matches!(parse_nv_info(&[0x03, 0x19, 4]), Err(Error::Truncated { .. })));
        // KPARAM_INFO too short to hold its fields.
        assert!(matches!(layout(&[0x04, 0x17, 4, 0, 0, 0, 0, 0]), Err(Error::Truncated { .. })));
        // A parameter past the declared size; duplicate or missing ordinals; sizes that disagree.
        let mut s = kparam(0, 0, 8);
        s.extend([0x03, 0x19, 4, 0]);
        assert!(matches!(layout(&s), Err(Error::Invalid { .. })));
        let mut s = kparam(0, 0, 8);
        s.extend(kparam(0, 8, 8));
        assert!(matches!(layout(&s), Err(Error::Invalid { .. })));
        assert!(matches!(layout(&kparam(1, 0, 8)), Err(Error::Invalid { .. })));
        let mut s = kparam(0, u16::MAX, (1 << 14) - 1);
        s.extend([0x03, 0x19, 0xff, 0xff]);
        assert!(matches!(layout(&s), Err(Error::Invalid { .. })));
        let mut s = vec![0x04, 0x0a, 8, 0, 0, 0, 0, 0, 0x60, 0x01, 16, 0];
        s.extend([0x03, 0x19, 12, 0]);
        assert!(matches!(layout(&s), Err(Error::Invalid { .. })));
    }

    #[test]
    fn not_a_cubin() {
        assert!(matches!(Cubin::parse(b""), Err(Error::Elf(_))));
        assert!(matches!(Cubin::parse(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]), Err(Error::Elf(_))));
    }
}
