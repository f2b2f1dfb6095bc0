//! Cubins whose ELF structures are not 8-aligned: nvcc 13.5 writes section header tables at
//! offsets that are multiples of 4 only, and a cubin borrowed from a guest buffer
//! (`Entry::data` of an uncompressed entry) starts wherever the guest put it. The committed
//! sm_80 cubin of tests/data/tiny_none.fatbin (nvcc 13.0, 8-aligned) is re-laid out to get them.

use vgpu_fatbin::{Cubin, EntryKind, Error, Fatbin};

fn cubin() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny_none.fatbin");
    let bytes = std::fs::read(path).unwrap();
    let fb = Fatbin::parse(&bytes).unwrap();
    let e = fb.entries.iter().find(|e| e.kind == EntryKind::Elf).unwrap();
    e.data().unwrap().into_owned()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// ELF64 header fields: e_shoff at 0x28, e_shentsize at 0x3a, e_shnum at 0x3c.
const E_SHOFF: usize = 0x28;

fn sht_len(b: &[u8]) -> usize {
    let entsize = u16::from_le_bytes([b[0x3a], b[0x3b]]) as usize;
    let num = u16::from_le_bytes([b[0x3c], b[0x3d]]) as usize;
    entsize * num
}

/// The cubin with a copy of its section header table appended at an offset that is `rem` past a
/// multiple of 8, and e_shoff pointing there (the old table stays as dead bytes).
fn relaid(rem: usize) -> Vec<u8> {
    let mut c = cubin();
    let (shoff, len) = (u64_at(&c, E_SHOFF) as usize, sht_len(&c));
    assert_eq!(shoff % 8, 0, "nvcc 13.0 writes it 8-aligned");
    let table = c[shoff..shoff + len].to_vec();
    let at = c.len().next_multiple_of(8) + rem;
    c.resize(at, 0);
    c.extend_from_slice(&table);
    c[E_SHOFF..E_SHOFF + 8].copy_from_slice(&(at as u64).to_le_bytes());
    c
}

fn summary(c: &Cubin<'_>) -> Vec<(String, u32)> {
    c.kernels.iter().map(|k| (k.name.clone(), k.params.total_size)).collect()
}

#[test]
fn section_headers_4_aligned_like_nvcc_13_5() {
    let want = summary(&Cubin::parse(&cubin()).unwrap());
    assert_eq!(want.len(), 2);
    let c = relaid(4);
    assert_eq!(u64_at(&c, E_SHOFF) % 8, 4);
    let parsed = Cubin::parse(&c).unwrap();
    assert_eq!(summary(&parsed), want);
    assert_eq!(parsed.virtual_arch, Some(80));
    // Any other offset reads the same (reads are bytewise; see the note in cubin.rs).
    for rem in [1, 2, 6] {
        assert_eq!(summary(&Cubin::parse(&relaid(rem)).unwrap()), want, "offset 8k+{rem}");
    }
}

#[test]
fn cubin_at_an_unaligned_address() {
    let c = cubin();
    let want = summary(&Cubin::parse(&c).unwrap());
    for shift in 1..8 {
        let mut buf = vec![0u8; shift];
        buf.extend_from_slice(&c);
        assert_eq!(summary(&Cubin::parse(&buf[shift..]).unwrap()), want, "shifted by {shift}");
    }
}

#[test]
fn unaligned_section_headers_are_still_bounds_checked() {
    let c = relaid(4);
    let len = sht_len(&c);
    // Cut anywhere inside the table: an error, not a panic or a short read.
    for cut in [1, 4, len / 2, len - 1] {
        assert!(matches!(Cubin::parse(&c[..c.len() - cut]), Err(Error::Elf(_))), "cut {cut}");
    }
    // e_shoff past the end, at the very end, and overflowing.
    for shoff in [c.len() as u64 - 4, c.len() as u64 + 4, u64::MAX - 3] {
        let mut bad = c.clone();
        bad[E_SHOFF..E_SHOFF + 8].copy_from_slice(&shoff.to_le_bytes());
        assert!(matches!(Cubin::parse(&bad), Err(Error::Elf(_))), "e_shoff {shoff:#x}");
    }
    // The section name table (e_shstrndx at 0x3e) running past the end of the file.
    let mut bad = c.clone();
    let strndx = u16::from_le_bytes([c[0x3e], c[0x3f]]) as usize;
    let sh = u64_at(&c, E_SHOFF) as usize + strndx * 64;
    bad[sh + 0x20..sh + 0x28].copy_from_slice(&(c.len() as u64).to_le_bytes()); // sh_size
    assert!(matches!(Cubin::parse(&bad), Err(Error::Elf(_))), "name table past the end");
}
