//! Parsing what nvcc embeds in a program: the fat binary wrapper handed to
//! `__cudaRegisterFatBinary`, the fatbin container it points at, and the cubin ELF images inside
//! it (kernels and their parameter layouts from `.nv.info.<kernel>`).
//!
//! Every input is untrusted: all reads are bounds-checked, sizes are validated before anything is
//! allocated, and malformed data yields an [`Error`], never a panic. The format is documented in
//! `fatbin/README.md`.

mod container;
mod cubin;
pub mod synth;

pub use container::{
    Entry, EntryKind, Fatbin, Wrapper, FATBIN_HEADER_LEN, FATBIN_MAGIC, FLAG_64BIT, FLAG_COMPRESSED_LZ4, FLAG_COMPRESSED_ZSTD, FLAG_DEBUG,
    MAX_DECOMPRESSED_LEN, WRAPPER_LEN, WRAPPER_MAGIC,
};
pub use cubin::{Cubin, Global, GlobalKind, Kernel, NvInfoAttr, NvInfoRecord, Param, ParamLayout, SYSTEM_RESERVED_SHARED};

/// Everything that can be wrong with an input.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The input ends before a structure that must be there.
    #[error("{what}: truncated (need {need} bytes at offset {offset}, have {have})")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs.
        need: u64,
        /// How many bytes the input has from `offset` on.
        have: u64,
    },
    /// A magic number does not match.
    #[error("{what}: bad magic {found:#x} (expected {expected:#x})")]
    BadMagic {
        /// The structure being read.
        what: &'static str,
        /// The value found.
        found: u32,
        /// The value the format requires.
        expected: u32,
    },
    /// A field holds a value the format does not allow.
    #[error("{what}: {reason}")]
    Invalid {
        /// The structure being read.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry is compressed with a scheme this crate does not decompress, or its compressed data
    /// is corrupt.
    #[error("module {module}: {kind} entry for sm_{arch} is compressed: {reason}")]
    Compressed {
        /// The module: the entry's identifier, or the name given to [`Fatbin::with_name`], or
        /// `entry <n>`.
        module: String,
        /// PTX or ELF.
        kind: EntryKind,
        /// The entry's architecture.
        arch: u32,
        /// Why it cannot be used.
        reason: String,
    },
    /// No cubin in the fatbin runs on the requested compute capability.
    #[error("module {module}: no cubin for compute capability {major}.{minor} (cubins: {cubins}; PTX: {ptx})")]
    NoCompatibleCubin {
        /// The module (see [`Error::Compressed`]).
        module: String,
        /// Requested compute capability, major.
        major: u32,
        /// Requested compute capability, minor.
        minor: u32,
        /// The cubin architectures present, e.g. `sm_80, sm_90`, or `none`.
        cubins: String,
        /// The PTX architectures present (would need a JIT), or `none`.
        ptx: String,
    },
    /// No PTX in the fatbin can be JIT-compiled for the requested compute capability.
    #[error("module {module}: no PTX for compute capability {major}.{minor} (PTX: {ptx}; cubins: {cubins})")]
    NoCompatiblePtx {
        /// The module (see [`Error::Compressed`]).
        module: String,
        /// Requested compute capability, major.
        major: u32,
        /// Requested compute capability, minor.
        minor: u32,
        /// The PTX architectures present, e.g. `compute_90`, or `none`.
        ptx: String,
        /// The cubin architectures present, or `none`.
        cubins: String,
    },
    /// A PTX entry's text is unusable (not UTF-8, a NUL inside it, not a PTX entry).
    #[error("module {module}: PTX for compute_{arch}: {reason}")]
    BadPtx {
        /// The module (see [`Error::Compressed`]).
        module: String,
        /// The entry's architecture.
        arch: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// The cubin is not a well-formed ELF file.
    #[error("cubin ELF: {0}")]
    Elf(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Little-endian reads with bounds checks.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, what }
    }

    pub(crate) fn bytes(&self, offset: u64, len: u64) -> Result<&'a [u8]> {
        let have = (self.data.len() as u64).saturating_sub(offset);
        let truncated = Error::Truncated { what: self.what, offset, need: len, have };
        let start = usize::try_from(offset).map_err(|_| truncated.clone())?;
        let end = offset.checked_add(len).and_then(|e| usize::try_from(e).ok()).ok_or_else(|| truncated.clone())?;
        self.data.get(start..end).ok_or(truncated)
    }

    fn array<const N: usize>(&self, offset: u64) -> Result<[u8; N]> {
        let b = self.bytes(offset, N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&self, offset: u64) -> Result<u8> {
        Ok(self.array::<1>(offset)?[0])
    }

    pub(crate) fn u16(&self, offset: u64) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(offset)?))
    }

    pub(crate) fn u32(&self, offset: u64) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(offset)?))
    }

    pub(crate) fn u64(&self, offset: u64) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(offset)?))
    }
}
