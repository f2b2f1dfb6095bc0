//! Hand-built containers: field semantics and malformed inputs (no nvcc needed).

use vgpu_fatbin::{Entry, EntryKind, Error, Fatbin, Wrapper, FLAG_64BIT, FLAG_COMPRESSED_LZ4, WRAPPER_MAGIC};

/// One entry: kind, arch, flags, payload, identifier (stored after the 64-byte header fields).
struct E<'a> {
    kind: u16,
    arch: u32,
    flags: u64,
    payload: &'a [u8],
    id: Option<&'a str>,
}

fn entry(e: &E<'_>) -> Vec<u8> {
    let id = e.id.map(|s| format!("{s}\0").into_bytes()).unwrap_or_default();
    let hdr_len = 64 + id.len().next_multiple_of(8);
    let mut h = vec![0u8; hdr_len];
    h[0..2].copy_from_slice(&e.kind.to_le_bytes());
    h[2..4].copy_from_slice(&0x0101u16.to_le_bytes());
    h[4..8].copy_from_slice(&(hdr_len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&(e.payload.len() as u64).to_le_bytes());
    if e.flags & FLAG_COMPRESSED_LZ4 != 0 {
        h[16..20].copy_from_slice(&(e.payload.len() as u32).to_le_bytes());
        h[56..64].copy_from_slice(&(4 * e.payload.len() as u64).to_le_bytes());
    }
    h[24..28].copy_from_slice(&[8, 0, 1, 0]);
    h[28..32].copy_from_slice(&e.arch.to_le_bytes());
    if !id.is_empty() {
        h[32..36].copy_from_slice(&64u32.to_le_bytes());
        h[36..40].copy_from_slice(&(id.len() as u32).to_le_bytes());
        h[64..64 + id.len()].copy_from_slice(&id);
    }
    h[40..48].copy_from_slice(&e.flags.to_le_bytes());
    h.extend_from_slice(e.payload);
    h
}

fn container(entries: &[E<'_>]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(entry).collect();
    let mut out = Vec::new();
    out.extend_from_slice(&0xBA55_ED50u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn sample() -> Vec<u8> {
    container(&[
        E { kind: 2, arch: 75, flags: FLAG_64BIT, payload: b"cubin-75", id: None },
        E { kind: 2, arch: 80, flags: FLAG_64BIT, payload: b"cubin-80", id: Some("kernels.cu") },
        E { kind: 1, arch: 80, flags: FLAG_64BIT, payload: b".version", id: None },
        E { kind: 2, arch: 86, flags: FLAG_64BIT | FLAG_COMPRESSED_LZ4, payload: b"lz4lz4lz", id: None },
    ])
}

#[test]
fn fields_and_selection() {
    let data = sample();
    let mut padded = data.clone();
    padded.extend_from_slice(&[0xee; 40]); // e.g. the next container of a .nv_fatbin section
    let fb = Fatbin::parse(&padded).unwrap().with_name("libggml-cuda.so");
    assert_eq!(fb.len, data.len() as u64);
    assert_eq!(Fatbin::total_len(&data[..16]).unwrap(), data.len() as u64);
    let summary: Vec<_> = fb.entries.iter().map(|e: &Entry<'_>| (e.kind, e.arch, e.is_compressed(), e.stored_len())).collect();
    assert_eq!(
        summary,
        vec![(EntryKind::Elf, 75, false, 8), (EntryKind::Elf, 80, false, 8), (EntryKind::Ptx, 80, false, 8), (EntryKind::Elf, 86, true, 8)]
    );
    assert_eq!(fb.entries[1].identifier.as_deref(), Some("kernels.cu"));
    assert_eq!(fb.entries[1].image_version, (1, 8));
    assert_eq!(&*fb.entries[0].data().unwrap(), b"cubin-75");
    assert_eq!(fb.best_cubin(7, 5).unwrap().arch, 75);
    assert_eq!(fb.best_cubin(8, 0).unwrap().arch, 80);
    assert_eq!(fb.best_cubin(8, 9).unwrap().arch, 86);
    // LZ4 that is not a valid block is reported, naming the module and the reason.
    let err = fb.best_cubin(8, 6).unwrap().data().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Compressed { arch: 86, .. }), "{msg}");
    assert!(msg.contains("libggml-cuda.so (entry 3)") && msg.contains("LZ4"), "{msg}");
    let err = fb.best_cubin(9, 0).unwrap_err().to_string();
    assert!(err.contains("sm_75, sm_80, sm_86") && err.contains("PTX: compute_80"), "{err}");
}

fn assert_err(data: &[u8]) -> Error {
    match Fatbin::parse(data) {
        Ok(fb) => panic!("parsed malformed input: {fb:?}"),
        Err(e) => e,
    }
}

fn patch(data: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    d[at..at + bytes.len()].copy_from_slice(bytes);
    d
}

#[test]
fn malformed_containers_are_errors() {
    let data = sample();
    assert!(matches!(assert_err(&[]), Error::Truncated { .. }));
    assert!(matches!(assert_err(&data[..10]), Error::Truncated { .. }));
    assert!(matches!(assert_err(&patch(&data, 0, &[0; 4])), Error::BadMagic { found: 0, .. }));
    // The container claims more than there is, or an absurd size.
    assert!(matches!(assert_err(&patch(&data, 8, &(data.len() as u64).to_le_bytes())), Error::Truncated { .. }));
    assert!(matches!(assert_err(&patch(&data, 8, &u64::MAX.to_le_bytes())), Error::Invalid { .. } | Error::Truncated { .. }));
    assert!(matches!(assert_err(&patch(&data, 6, &4u16.to_le_bytes())), Error::Invalid { .. }));
    // First entry (at 16): header size too small or huge, payload size past the end or huge.
    assert!(matches!(assert_err(&patch(&data, 16 + 4, &8u32.to_le_bytes())), Error::Invalid { .. }));
    assert!(matches!(assert_err(&patch(&data, 16 + 4, &u32::MAX.to_le_bytes())), Error::Truncated { .. }));
    assert!(matches!(assert_err(&patch(&data, 16 + 8, &1000u64.to_le_bytes())), Error::Truncated { .. }));
    assert!(matches!(assert_err(&patch(&data, 16 + 8, &u64::MAX.to_le_bytes())), Error::Truncated { .. } | Error::Invalid { .. }));
    // Identifier of the second entry pointing past the end.
    let second = 16 + 64 + 8;
    assert!(matches!(assert_err(&patch(&data, second + 32, &u32::MAX.to_le_bytes())), Error::Truncated { .. }));
    // Compressed size larger than the payload (last entry).
    let last = data.len() - 8 - 64;
    assert!(matches!(assert_err(&patch(&data, last + 16, &9u32.to_le_bytes())), Error::Invalid { .. }));
    // Entries that end short of the declared container size.
    let mut short = data.clone();
    short.extend_from_slice(&[0; 8]);
    let short = patch(&short, 8, &((data.len() - 16 + 8) as u64).to_le_bytes());
    assert!(matches!(assert_err(&short), Error::Invalid { .. }));
    // Every prefix fails.
    for len in 0..data.len() {
        assert!(Fatbin::parse(&data[..len]).is_err());
    }
}

#[test]
fn ptx_selection_and_text() {
    let data = container(&[
        E { kind: 1, arch: 52, flags: FLAG_64BIT, payload: b"// 52\0\0\0", id: None },
        E { kind: 1, arch: 90, flags: FLAG_64BIT, payload: b"// 90\0\0\0", id: None },
        E { kind: 1, arch: 70, flags: 0, payload: b"// 70 32", id: None },
        E { kind: 1, arch: 70, flags: FLAG_64BIT, payload: b"// 70\0\0\0", id: None },
        E { kind: 2, arch: 80, flags: FLAG_64BIT, payload: b"cubin-80", id: None },
        E { kind: 1, arch: 100, flags: FLAG_64BIT, payload: b"\xff\xfe not", id: None },
        E { kind: 1, arch: 110, flags: FLAG_64BIT, payload: b"a\0b\0\0\0\0\0", id: Some("k.cu") },
    ]);
    let fb = Fatbin::parse(&data).unwrap().with_name("libm.so");
    let best = |major, minor| fb.best_ptx(major, minor).map(|e| (e.arch, e.index));
    // The highest architecture not above the device's, any major; 64-bit first among equals.
    assert_eq!(best(5, 2), Ok((52, 0)));
    assert_eq!(best(6, 1), Ok((52, 0)));
    assert_eq!(best(8, 6), Ok((70, 3)));
    assert_eq!(best(9, 0), Ok((90, 1)));
    assert_eq!(best(9, 9), Ok((90, 1)));
    assert_eq!(best(10, 0), Ok((100, 5)));
    assert_eq!(best(12, 0), Ok((110, 6)));
    let err = fb.best_ptx(5, 0).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoCompatiblePtx { major: 5, minor: 0, .. }), "{msg}");
    assert!(
        msg.contains("libm.so") && msg.contains("PTX: compute_52, compute_90, compute_70, compute_70, compute_100, compute_110"),
        "{msg}"
    );
    assert!(msg.contains("cubins: sm_80"), "{msg}");
    // Text: trailing NULs trimmed, borrowed.
    assert_eq!(fb.entries[3].ptx_text().unwrap(), "// 70");
    assert_eq!(fb.entries[2].ptx_text().unwrap(), "// 70 32");
    // Not UTF-8, a NUL inside the text, not PTX: BadPtx naming the module.
    let err = fb.entries[5].ptx_text().unwrap_err().to_string();
    assert!(err.contains("libm.so (entry 5)") && err.contains("compute_100") && err.contains("not UTF-8 (invalid byte at 0)"), "{err}");
    let err = fb.entries[6].ptx_text().unwrap_err().to_string();
    assert!(err.contains("k.cu") && err.contains("NUL at byte 1 of 3"), "{err}");
    let err = fb.entries[4].ptx_text().unwrap_err();
    assert!(matches!(err, Error::BadPtx { arch: 80, .. }) && err.to_string().contains("is ELF, not PTX"), "{err}");
    // No PTX at all; all-NUL text is empty.
    let only_cubin = container(&[E { kind: 2, arch: 80, flags: FLAG_64BIT, payload: b"cubin-80", id: None }]);
    let fb = Fatbin::parse(&only_cubin).unwrap();
    assert!(fb.best_ptx(12, 0).unwrap_err().to_string().contains("PTX: none; cubins: sm_80"));
    let nuls = container(&[E { kind: 1, arch: 80, flags: FLAG_64BIT, payload: &[0; 8], id: None }]);
    let fb = Fatbin::parse(&nuls).unwrap();
    assert_eq!(fb.best_ptx(8, 0).unwrap().ptx_text().unwrap(), "");
}

#[test]
fn wrapper() {
    let mut w = Vec::new();
    w.extend_from_slice(&WRAPPER_MAGIC.to_le_bytes());
    w.extend_from_slice(&1u32.to_le_bytes());
    w.extend_from_slice(&0x7f00_1234_5678u64.to_le_bytes());
    w.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(Wrapper::parse(&w).unwrap(), Wrapper { version: 1, data: 0x7f00_1234_5678, filename_or_fatbins: 0 });
    assert!(matches!(Wrapper::parse(&w[..20]), Err(Error::Truncated { .. })));
    assert!(matches!(Wrapper::parse(&patch(&w, 0, &[1, 2, 3, 4])), Err(Error::BadMagic { .. })));
    assert!(matches!(Wrapper::parse(&patch(&w, 4, &7u32.to_le_bytes())), Err(Error::Invalid { .. })));
}
