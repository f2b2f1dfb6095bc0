//! The fat binary wrapper (`__fatBinC_Wrapper_t`) and the fatbin container (magic `0xBA55ED50`).

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use crate::{Error, Reader, Result};

/// Magic of `__fatBinC_Wrapper_t`, the struct whose address nvcc passes to `__cudaRegisterFatBinary`.
pub const WRAPPER_MAGIC: u32 = 0x4662_43b1;
/// Size of the wrapper on a 64-bit target: magic, version, data pointer, filename_or_fatbins pointer.
pub const WRAPPER_LEN: usize = 24;
/// Magic of the fatbin container.
pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;
/// Size of the container header: magic, version, header size, size of the entries.
pub const FATBIN_HEADER_LEN: usize = 16;
/// Smallest entry header (the fields this crate reads); PTX entries carry 80.
const ENTRY_HEADER_MIN: u64 = 64;

/// Entry flag: 64-bit address space.
pub const FLAG_64BIT: u64 = 0x1;
/// Entry flag: compiled with debug information (`-G`).
pub const FLAG_DEBUG: u64 = 0x2;
/// Entry flag: payload is one raw LZ4 block (fatbinary of CUDA 11.x-12.x; CUDA 13's
/// `-compress-mode=speed`).
pub const FLAG_COMPRESSED_LZ4: u64 = 0x2000;
/// Entry flag: payload is one Zstandard frame (fatbinary of CUDA 13, the default for PTX).
pub const FLAG_COMPRESSED_ZSTD: u64 = 0x8000;
/// Largest decompressed entry this crate will produce (a defence against decompression bombs).
pub const MAX_DECOMPRESSED_LEN: u64 = 256 << 20;

/// `__fatBinC_Wrapper_t`, read from the bytes at the address given to `__cudaRegisterFatBinary`.
///
/// The pointers are addresses in the registering process; turning [`Wrapper::data`] into bytes is
/// the caller's job (read [`FATBIN_HEADER_LEN`] bytes there, then [`Fatbin::total_len`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wrapper {
    /// 1: `data` points at a fatbin container; 2: also `filename_or_fatbins` (relocatable device
    /// code, `-rdc`).
    pub version: u32,
    /// Address of the fatbin container.
    pub data: u64,
    /// Address of the file name or of a null-terminated list of prelinked fatbins (version 2).
    pub filename_or_fatbins: u64,
}

impl Wrapper {
    /// Parses the wrapper from (at least) its 24 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let r = Reader::new(bytes, "fatbin wrapper");
        let magic = r.u32(0)?;
        if magic != WRAPPER_MAGIC {
            return Err(Error::BadMagic { what: "fatbin wrapper", found: magic, expected: WRAPPER_MAGIC });
        }
        let version = r.u32(4)?;
        if !(1..=2).contains(&version) {
            return Err(Error::Invalid { what: "fatbin wrapper", reason: format!("unknown version {version}") });
        }
        Ok(Self { version, data: r.u64(8)?, filename_or_fatbins: r.u64(16)? })
    }
}

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// PTX text (needs a JIT to run).
    Ptx,
    /// A cubin: an ELF file of SASS for one architecture.
    Elf,
    /// A kind this crate does not know (e.g. LTO IR).
    Other(u16),
}

impl EntryKind {
    fn from_raw(raw: u16) -> Self {
        match raw {
            1 => Self::Ptx,
            2 => Self::Elf,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ptx => f.write_str("PTX"),
            Self::Elf => f.write_str("ELF"),
            Self::Other(k) => write!(f, "kind-{k}"),
        }
    }
}

/// One entry of a fatbin container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Position in the container (0-based).
    pub index: usize,
    /// Byte offset of the entry header within the container.
    pub offset: u64,
    /// PTX, ELF or other.
    pub kind: EntryKind,
    /// The `XX` of `sm_XX` / `compute_XX`, e.g. 80, 90, 120.
    pub arch: u32,
    /// Version of the image format: PTX ISA version for PTX (e.g. 9.0), cubin ABI for ELF.
    pub image_version: (u16, u16),
    /// The raw flags (see the `FLAG_*` constants).
    pub flags: u64,
    /// The identifier string, when the entry has one.
    pub identifier: Option<String>,
    /// Size of the image once decompressed (the payload size when not compressed).
    pub uncompressed_len: u64,
    /// The payload as stored (compressed or not; trailing padding removed when compressed).
    pub payload: &'a [u8],
    module: String,
}

impl<'a> Entry<'a> {
    /// Whether the payload is compressed (by either scheme).
    pub fn is_compressed(&self) -> bool {
        self.flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD) != 0
    }

    /// Size of the payload as stored.
    pub fn stored_len(&self) -> u64 {
        self.payload.len() as u64
    }

    /// The module name errors about this entry use.
    pub fn module(&self) -> &str {
        &self.module
    }

    fn compressed(&self, reason: String) -> Error {
        Error::Compressed { module: self.module.clone(), kind: self.kind, arch: self.arch, reason }
    }

    /// The image: the payload itself, or its decompression (Zstandard or LZ4), which must have
    /// exactly the size the header declares ([`Entry::uncompressed_len`], at most
    /// [`MAX_DECOMPRESSED_LEN`]). Corrupt or mis-sized compressed data is [`Error::Compressed`]
    /// naming the module and the reason.
    pub fn data(&self) -> Result<Cow<'a, [u8]>> {
        if !self.is_compressed() {
            return Ok(Cow::Borrowed(self.payload));
        }
        if self.uncompressed_len > MAX_DECOMPRESSED_LEN {
            return Err(self.compressed(format!(
                "declared decompressed size {} exceeds the limit of {MAX_DECOMPRESSED_LEN} bytes",
                self.uncompressed_len
            )));
        }
        if self.flags & FLAG_COMPRESSED_ZSTD != 0 {
            if self.flags & FLAG_COMPRESSED_LZ4 != 0 {
                return Err(self.compressed("flagged both LZ4 and Zstandard".into()));
            }
            self.zstd()
        } else {
            self.lz4()
        }
    }

    /// Zstandard (flag `0x8000`, CUDA 13's `-compress-mode=default|size|balance`): the payload's
    /// first `compressed size` bytes are one Zstandard frame.
    fn zstd(&self) -> Result<Cow<'a, [u8]>> {
        let mut src = self.payload;
        let decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut src).map_err(|e| self.compressed(format!("bad Zstandard frame: {e}")))?;
        // Read at most one byte more than declared, so that a longer output is detected without
        // ever holding more than the limit.
        let mut out = Vec::new();
        decoder
            .take(self.uncompressed_len + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.compressed(format!("corrupt Zstandard data: {e}")))?;
        self.check_len(out.len() as u64, out.len() as u64 > self.uncompressed_len)?;
        Ok(Cow::Owned(out))
    }

    /// LZ4 (flag `0x2000`): CUDA 13's `-compress-mode=speed`, and fatbinary's compression before
    /// CUDA 13. What nvcc 13.0 writes (checked on `tests/data/tiny_speed.fatbin`): the payload's
    /// first `compressed size` bytes are one *raw LZ4 block* (no LZ4 frame: no magic
    /// `04 22 4D 18`, no block headers, no checksum; the first byte is already a sequence token),
    /// then zero padding up to the payload size (a multiple of 8). The block's output size is not
    /// stored in it: the header's decompressed size is the output buffer, which the block must
    /// fill exactly.
    fn lz4(&self) -> Result<Cow<'a, [u8]>> {
        // One LZ4 input byte yields at most 255 output bytes (a length-extension byte of 0xff),
        // so a declared size beyond that bound is a lie: refuse it before allocating the buffer
        // (a 100-byte payload cannot make us allocate 256 MiB).
        let bound = (self.stored_len() + 1).saturating_mul(255);
        if self.uncompressed_len > bound {
            return Err(self.compressed(format!(
                "declared decompressed size {} is more than {} bytes of LZ4 data can hold",
                self.uncompressed_len,
                self.stored_len()
            )));
        }
        // In range: at most MAX_DECOMPRESSED_LEN, checked by the caller.
        let mut out = vec![0u8; self.uncompressed_len as usize];
        let n = lz4_flex::block::decompress_into(self.payload, &mut out).map_err(|e| match e {
            lz4_flex::block::DecompressError::OutputTooSmall { .. } => {
                self.compressed(format!("LZ4 data decompresses to more than the {} bytes the header declares", self.uncompressed_len))
            }
            e => self.compressed(format!("corrupt LZ4 data: {e}")),
        })?;
        self.check_len(n as u64, false)?;
        Ok(Cow::Owned(out))
    }

    /// The text of a PTX entry: [`Entry::data`] (decompressed if need be) without its trailing
    /// NULs (fatbinary stores the C string's terminator, and an uncompressed payload is padded
    /// with NULs to a multiple of 8), checked to be UTF-8 (PTX is ASCII; its comments may carry
    /// UTF-8 file names). Borrowed when the entry is not compressed. Errors:
    /// [`Error::BadPtx`] for an entry that is not PTX, text that is not UTF-8 (naming the byte),
    /// or a NUL before the end of the text (a JIT reading a C string would silently stop there,
    /// so the text is refused rather than cut); decompression errors as [`Entry::data`].
    pub fn ptx_text(&self) -> Result<Cow<'a, str>> {
        let bad = |reason: String| Error::BadPtx { module: self.module.clone(), arch: self.arch, reason };
        if self.kind != EntryKind::Ptx {
            return Err(bad(format!("entry {} is {}, not PTX", self.index, self.kind)));
        }
        fn text_len(b: &[u8]) -> usize {
            b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1)
        }
        let check = |b: &[u8]| -> Result<()> {
            if let Some(at) = b.iter().position(|&c| c == 0) {
                return Err(bad(format!("NUL at byte {at} of {} bytes of text", b.len())));
            }
            Ok(())
        };
        let utf8 = |e: std::str::Utf8Error| bad(format!("not UTF-8 (invalid byte at {})", e.valid_up_to()));
        match self.data()? {
            Cow::Borrowed(b) => {
                let b = &b[..text_len(b)];
                check(b)?;
                std::str::from_utf8(b).map(Cow::Borrowed).map_err(utf8)
            }
            Cow::Owned(mut v) => {
                v.truncate(text_len(&v));
                check(&v)?;
                String::from_utf8(v).map(Cow::Owned).map_err(|e| utf8(e.utf8_error()))
            }
        }
    }

    /// The decompressed size must be the declared one (`more`: output went on past it).
    fn check_len(&self, got: u64, more: bool) -> Result<()> {
        if got == self.uncompressed_len && !more {
            return Ok(());
        }
        Err(self.compressed(format!(
            "decompressed to {}{} bytes, header says {}",
            got.min(self.uncompressed_len + 1),
            if more { "+" } else { "" },
            self.uncompressed_len
        )))
    }
}

/// A parsed fatbin container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatbin<'a> {
    /// Container version (1 in every file seen).
    pub version: u16,
    /// The entries, in file order.
    pub entries: Vec<Entry<'a>>,
    /// Bytes the container occupies (header plus entries); input past that is ignored.
    pub len: u64,
    name: Option<String>,
}

impl<'a> Fatbin<'a> {
    /// Total size of the container that starts with `header` (at least its 16 bytes), so a caller
    /// holding only a pointer knows how many bytes to read.
    pub fn total_len(header: &[u8]) -> Result<u64> {
        let r = Reader::new(header, "fatbin header");
        let magic = r.u32(0)?;
        if magic != FATBIN_MAGIC {
            return Err(Error::BadMagic { what: "fatbin header", found: magic, expected: FATBIN_MAGIC });
        }
        let header_len = u64::from(r.u16(6)?);
        if header_len < FATBIN_HEADER_LEN as u64 {
            return Err(Error::Invalid { what: "fatbin header", reason: format!("header size {header_len} < 16") });
        }
        header_len
            .checked_add(r.u64(8)?)
            .ok_or_else(|| Error::Invalid { what: "fatbin header", reason: "header size plus entries size overflows".into() })
    }

    /// Parses a container; `data` may extend past it (e.g. a whole `.nv_fatbin` section).
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let len = Self::total_len(data)?;
        let r = Reader::new(data, "fatbin header");
        let version = r.u16(4)?;
        let header_len = u64::from(r.u16(6)?);
        // The whole container must be present.
        let body = Reader::new(data, "fatbin entries").bytes(0, len)?;
        let r = Reader::new(body, "fatbin entry");
        let mut entries = Vec::new();
        let mut off = header_len;
        while off < len {
            let kind = EntryKind::from_raw(r.u16(off)?);
            let ehdr = u64::from(r.u32(off + 4)?);
            if ehdr < ENTRY_HEADER_MIN {
                return Err(Error::Invalid {
                    what: "fatbin entry",
                    reason: format!("entry {} at offset {off}: header size {ehdr} < {ENTRY_HEADER_MIN}", entries.len()),
                });
            }
            r.bytes(off, ehdr)?;
            let payload_len = r.u64(off + 8)?;
            let compressed_len = u64::from(r.u32(off + 16)?);
            let minor = r.u16(off + 24)?;
            let major = r.u16(off + 26)?;
            let arch = r.u32(off + 28)?;
            let id_off = u64::from(r.u32(off + 32)?);
            let id_len = u64::from(r.u32(off + 36)?);
            let flags = r.u64(off + 40)?;
            let uncompressed = r.u64(off + 56)?;
            let payload_off = off + ehdr;
            let mut payload = Reader::new(body, "fatbin entry payload").bytes(payload_off, payload_len)?;
            let compressed = flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD) != 0;
            if compressed {
                if compressed_len > payload_len {
                    return Err(Error::Invalid {
                        what: "fatbin entry",
                        reason: format!("entry {}: compressed size {compressed_len} exceeds payload size {payload_len}", entries.len()),
                    });
                }
                // In bounds: checked just above.
                payload = &payload[..compressed_len as usize];
            }
            let identifier = if id_off != 0 && id_len != 0 {
                let raw = Reader::new(body, "fatbin entry identifier").bytes(
                    off.checked_add(id_off).ok_or(Error::Invalid { what: "fatbin entry", reason: "identifier offset overflows".into() })?,
                    id_len,
                )?;
                let raw = raw.split(|&b| b == 0).next().unwrap_or(raw);
                Some(String::from_utf8_lossy(raw).into_owned())
            } else {
                None
            };
            let index = entries.len();
            let module = identifier.clone().unwrap_or_else(|| format!("entry {index}"));
            entries.push(Entry {
                index,
                offset: off,
                kind,
                arch,
                image_version: (major, minor),
                flags,
                identifier,
                uncompressed_len: if compressed { uncompressed } else { payload_len },
                payload,
                module,
            });
            off = payload_off
                .checked_add(payload_len)
                .ok_or(Error::Invalid { what: "fatbin entry", reason: "payload size overflows".into() })?;
        }
        if off != len {
            return Err(Error::Invalid {
                what: "fatbin entries",
                reason: format!("last entry ends at {off}, past the container end {len}"),
            });
        }
        Ok(Self { version, entries, len, name: None })
    }

    /// Names the module (e.g. after the library or the registration that holds it) for errors
    /// about entries without an identifier of their own.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        for e in &mut self.entries {
            if e.identifier.is_none() {
                e.module = format!("{name} (entry {})", e.index);
            }
        }
        self.name = Some(name);
        self
    }

    fn module(&self) -> String {
        self.name.clone().unwrap_or_else(|| "<unnamed fatbin>".into())
    }

    /// `sm_80, sm_90`-style list of the entries of `kind`, or `none`.
    fn arch_list(&self, kind: EntryKind, prefix: &str) -> String {
        let v: Vec<String> = self.entries.iter().filter(|e| e.kind == kind).map(|e| format!("{prefix}_{}", e.arch)).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    }

    /// The PTX to JIT-compile for compute capability `major.minor`: the PTX entry of the highest
    /// architecture not above `major * 10 + minor`, of any major version (unlike SASS, PTX for
    /// `compute_XY` compiles for every later device: compute_75 PTX runs on 8.0, 9.0, 12.0).
    /// Among equals, a 64-bit one, then the first. Its text: [`Entry::ptx_text`].
    /// Architecture-specific PTX (`compute_90a`, which does not carry forward) is not told apart:
    /// the entry header has no flag for it that we know of (as for [`Fatbin::best_cubin`]).
    /// None: [`Error::NoCompatiblePtx`], listing the PTX and cubin architectures present.
    pub fn best_ptx(&self, major: u32, minor: u32) -> Result<&Entry<'a>> {
        let want = major.saturating_mul(10).saturating_add(minor);
        let best = self
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Ptx && e.arch <= want)
            .max_by_key(|e| (e.arch, e.flags & FLAG_64BIT, std::cmp::Reverse(e.index)));
        best.ok_or_else(|| Error::NoCompatiblePtx {
            module: self.module(),
            major,
            minor,
            ptx: self.arch_list(EntryKind::Ptx, "compute"),
            cubins: self.arch_list(EntryKind::Elf, "sm"),
        })
    }

    /// The cubin that runs on compute capability `major.minor` and is closest to it: same major
    /// version, highest minor not above `minor` (SASS runs on later minors of its major only).
    /// Among equals, a 64-bit one. Its image may still be compressed: see [`Entry::data`].
    pub fn best_cubin(&self, major: u32, minor: u32) -> Result<&Entry<'a>> {
        let best = self
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Elf && e.arch / 10 == major && e.arch % 10 <= minor)
            .max_by_key(|e| (e.arch, e.flags & FLAG_64BIT, std::cmp::Reverse(e.index)));
        best.ok_or_else(|| Error::NoCompatibleCubin {
            module: self.module(),
            major,
            minor,
            cubins: self.arch_list(EntryKind::Elf, "sm"),
            ptx: self.arch_list(EntryKind::Ptx, "compute"),
        })
    }
}
