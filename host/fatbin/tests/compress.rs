//! Committed nvcc 13.0 output (tests/data, rebuilt by tests/data/make.sh from tests/data/tiny.cu):
//! every `-compress-mode`, LZ4 and Zstandard entries, PTX-only modules. No nvcc needed.

use std::borrow::Cow;

use vgpu_fatbin::{Cubin, Entry, EntryKind, Error, Fatbin, FLAG_COMPRESSED_LZ4, FLAG_COMPRESSED_ZSTD, MAX_DECOMPRESSED_LEN};

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn entry<'a>(fb: &'a Fatbin<'_>, kind: EntryKind) -> &'a Entry<'a> {
    fb.entries.iter().find(|e| e.kind == kind).unwrap()
}

/// A kernel's name, parameter (offset, size)s and parameter bytes.
type Layout = (String, Vec<(u16, u32)>, u32);

/// The kernels of tiny.cu and their layouts.
fn check_cubin(image: &[u8]) {
    let cubin = Cubin::parse(image).unwrap();
    let mut got: Vec<Layout> = cubin
        .kernels
        .iter()
        .map(|k| (k.name.clone(), k.params.params.iter().map(|p| (p.offset, p.size)).collect(), k.params.total_size))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("_Z5scalePffi".to_string(), vec![(0, 8), (8, 4), (12, 4)], 16), ("add".to_string(), vec![(0, 8), (8, 8), (16, 8)], 24)]
    );
}

#[test]
fn every_compress_mode_gives_the_uncompressed_images() {
    let none = data("tiny_none.fatbin");
    let none = Fatbin::parse(&none).unwrap();
    let (cubin, ptx) = (entry(&none, EntryKind::Elf), entry(&none, EntryKind::Ptx));
    assert!(!cubin.is_compressed() && !ptx.is_compressed());
    check_cubin(cubin.payload);
    // Uncompressed PTX is borrowed, without the NUL terminator and padding.
    let none_text = none.best_ptx(8, 0).unwrap().ptx_text().unwrap();
    assert!(matches!(none_text, Cow::Borrowed(_)));
    assert!(none_text.contains(".target sm_80") && none_text.contains(".entry add(") && !none_text.ends_with('\0'));
    for (mode, flag) in [
        ("default", FLAG_COMPRESSED_ZSTD),
        ("size", FLAG_COMPRESSED_ZSTD),
        ("balance", FLAG_COMPRESSED_ZSTD),
        ("speed", FLAG_COMPRESSED_LZ4),
    ] {
        let bytes = data(&format!("tiny_{mode}.fatbin"));
        let fb = Fatbin::parse(&bytes).unwrap();
        assert_eq!(fb.entries.len(), 2, "{mode}");
        for (e, plain) in [(entry(&fb, EntryKind::Elf), cubin), (entry(&fb, EntryKind::Ptx), ptx)] {
            assert_eq!(e.flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD), flag, "{mode} {}", e.kind);
            assert!(e.stored_len() < plain.stored_len(), "{mode} {}: not smaller", e.kind);
            // The header's decompressed size is the image's; the uncompressed payload is that
            // image padded with zeros to a multiple of 8 (the PTX: 1290 bytes, stored as 1296).
            let n = e.uncompressed_len as usize;
            assert_eq!(n.next_multiple_of(8), plain.payload.len(), "{mode} {}", e.kind);
            assert!(plain.payload[n..].iter().all(|&b| b == 0));
            // Decompression gives the uncompressed image byte for byte.
            assert_eq!(&*e.data().unwrap(), &plain.payload[..n], "{mode} {}", e.kind);
        }
        check_cubin(&fb.best_cubin(8, 0).unwrap().data().unwrap());
        let text = fb.best_ptx(8, 0).unwrap().ptx_text().unwrap();
        assert!(matches!(text, Cow::Owned(_)), "decompressed");
        assert_eq!(text, none_text, "{mode}");
        // The decompressed PTX is the text and its NUL terminator (1290 bytes here), no padding.
        assert_eq!(text.len() + 1, entry(&fb, EntryKind::Ptx).uncompressed_len as usize, "{mode}");
    }
}

/// What nvcc's LZ4 payload is: a raw block (no frame), zero padding to 8 after `compressed size`.
#[test]
fn lz4_framing() {
    let bytes = data("tiny_speed.fatbin");
    let fb = Fatbin::parse(&bytes).unwrap();
    for e in &fb.entries {
        let off = e.offset as usize;
        let hdr_len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        let payload_len = u64::from_le_bytes(bytes[off + 8..off + 16].try_into().unwrap()) as usize;
        let compressed_len = u32::from_le_bytes(bytes[off + 16..off + 20].try_into().unwrap()) as usize;
        assert_eq!(e.stored_len() as usize, compressed_len);
        assert_eq!(payload_len, compressed_len.next_multiple_of(8), "{}", e.kind);
        let payload = &bytes[off + hdr_len..off + hdr_len + payload_len];
        assert!(payload[compressed_len..].iter().all(|&b| b == 0), "padding is zeros");
        assert_ne!(&payload[..4], &[0x04, 0x22, 0x4d, 0x18], "not an LZ4 frame");
        // A raw block decodes on its own with exactly the declared output size.
        let out = lz4_flex::block::decompress(e.payload, e.uncompressed_len as usize).unwrap();
        assert_eq!(out.len() as u64, e.uncompressed_len);
    }
}

fn patched(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + value.len()].copy_from_slice(value);
    b
}

/// `data()` of the entry of `kind` in `bytes` (which must still parse), named `libfoo.so`.
fn decode(bytes: &[u8], kind: EntryKind) -> Result<usize, Error> {
    let fb = Fatbin::parse(bytes).unwrap().with_name("libfoo.so");
    let e = entry(&fb, kind);
    e.data().map(|d| d.len())
}

fn assert_compressed_err(r: Result<usize, Error>, what: &str, needle: &str) {
    match r {
        Err(e @ Error::Compressed { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("libfoo.so (entry ") && msg.contains(needle), "{what}: {msg}");
        }
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn corrupt_lz4_is_an_error_naming_the_module() {
    let bytes = data("tiny_speed.fatbin");
    let fb = Fatbin::parse(&bytes).unwrap();
    let e = entry(&fb, EntryKind::Elf);
    let (off, declared, stored) = (e.offset as usize, e.uncompressed_len, e.stored_len());
    let size_at = off + 56;
    // Declared sizes one short and one long of the block's output.
    assert_compressed_err(decode(&patched(&bytes, size_at, &(declared - 1).to_le_bytes()), EntryKind::Elf), "short", "more than");
    assert_compressed_err(decode(&patched(&bytes, size_at, &(declared + 1).to_le_bytes()), EntryKind::Elf), "long", "header says");
    assert_compressed_err(decode(&patched(&bytes, size_at, &0u64.to_le_bytes()), EntryKind::Elf), "zero", "LZ4");
    // Sizes no LZ4 data of this length can reach, and past the limit: refused before allocating.
    assert_compressed_err(decode(&patched(&bytes, size_at, &(stored * 300).to_le_bytes()), EntryKind::Elf), "bomb", "LZ4 data can hold");
    assert_compressed_err(
        decode(&patched(&bytes, size_at, &(MAX_DECOMPRESSED_LEN + 1).to_le_bytes()), EntryKind::Elf),
        "limit",
        "exceeds the limit",
    );
    assert_compressed_err(decode(&patched(&bytes, size_at, &u64::MAX.to_le_bytes()), EntryKind::Elf), "max", "exceeds the limit");
    // The block cut short (a smaller compressed size).
    assert_compressed_err(decode(&patched(&bytes, off + 16, &((stored / 2) as u32).to_le_bytes()), EntryKind::Elf), "cut", "LZ4");
    // A match offset pointing before the start of the output: the first sequence has no earlier
    // bytes to copy from. Token 0x0f (no literals, match), offset 0xffff.
    let payload_at = off + 64;
    assert_compressed_err(decode(&patched(&bytes, payload_at, &[0x0f, 0xff, 0xff]), EntryKind::Elf), "offset", "corrupt LZ4 data");
    // An uncompressed cubin flagged LZ4 (the ELF bytes are no LZ4 block of the declared size 0).
    let plain = data("tiny_none.fatbin");
    let fb = Fatbin::parse(&plain).unwrap();
    let c = entry(&fb, EntryKind::Elf);
    let mut flagged = patched(&plain, c.offset as usize + 40, &(c.flags | FLAG_COMPRESSED_LZ4).to_le_bytes());
    let n = c.payload.len() as u32;
    flagged[c.offset as usize + 16..c.offset as usize + 20].copy_from_slice(&n.to_le_bytes());
    assert_compressed_err(decode(&flagged, EntryKind::Elf), "raw ELF", "LZ4");
    // Both compression flags.
    let flags_at = off + 40;
    let both = e.flags | FLAG_COMPRESSED_ZSTD;
    assert_compressed_err(decode(&patched(&bytes, flags_at, &both.to_le_bytes()), EntryKind::Elf), "both", "both LZ4 and Zstandard");
}

/// Deterministic pseudo-random numbers.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Fuzz-style: random changes to the compressed bytes (and sometimes the declared sizes) of every
/// entry of the LZ4 and Zstandard fatbins; decoding must fail cleanly or give exactly the declared
/// size, never panic.
#[test]
fn mutated_compressed_payloads_do_not_panic() {
    let mut rng = Lcg(0xf47b);
    let (mut ok, mut failed) = (0u32, 0u32);
    for name in ["tiny_speed.fatbin", "tiny_ptx75_speed.fatbin", "tiny_default.fatbin", "tiny_size.fatbin", "tiny_ptx75.fatbin"] {
        let bytes = data(name);
        let fb = Fatbin::parse(&bytes).unwrap();
        let spans: Vec<(usize, usize, usize)> = fb
            .entries
            .iter()
            .map(|e| {
                let off = e.offset as usize;
                let hdr = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
                (off, off + hdr, e.stored_len() as usize)
            })
            .collect();
        for i in 0..2000 {
            let (off, start, len) = spans[i % spans.len()];
            let mut m = bytes.clone();
            for _ in 0..1 + rng.next() % 6 {
                let at = start + (rng.next() as usize) % len;
                m[at] = match rng.next() % 4 {
                    0 => rng.next() as u8,
                    1 => 0xff,
                    2 => 0,
                    _ => m[at] ^ (1 << (rng.next() % 8)),
                };
            }
            if rng.next() % 8 == 0 {
                // Declared decompressed size off by a little, or compressed size shortened.
                let declared = u64::from_le_bytes(m[off + 56..off + 64].try_into().unwrap());
                let delta = rng.next() % 64;
                let v = if rng.next() % 2 == 0 { declared.saturating_sub(delta) } else { declared + delta };
                m[off + 56..off + 64].copy_from_slice(&v.to_le_bytes());
            }
            if rng.next() % 8 == 0 {
                let c = (rng.next() as usize % len) as u32;
                m[off + 16..off + 20].copy_from_slice(&c.to_le_bytes());
            }
            let fb = Fatbin::parse(&m).unwrap();
            for e in &fb.entries {
                match e.data() {
                    Ok(d) => {
                        assert_eq!(d.len() as u64, e.uncompressed_len, "{name}");
                        ok += 1;
                        if e.kind == EntryKind::Elf {
                            let _ = Cubin::parse(&d);
                        } else {
                            let _ = e.ptx_text();
                        }
                    }
                    Err(Error::Compressed { .. }) => failed += 1,
                    Err(other) => panic!("{name}: unexpected error kind {other}"),
                }
            }
        }
    }
    eprintln!("mutated entries: {ok} decoded, {failed} refused");
    // Both outcomes happen (unmutated entries of two-entry modules decode fine).
    assert!(ok > 0 && failed > 1000, "ok {ok}, failed {failed}");
}

/// PTX only (`-gencode arch=compute_75,code=compute_75`), Zstandard and LZ4: PTX carries forward
/// to every later compute capability, any major; no cubin for any.
#[test]
fn ptx_only_modules() {
    let mut texts = Vec::new();
    for (name, flag) in [("tiny_ptx75.fatbin", FLAG_COMPRESSED_ZSTD), ("tiny_ptx75_speed.fatbin", FLAG_COMPRESSED_LZ4)] {
        let bytes = data(name);
        let fb = Fatbin::parse(&bytes).unwrap().with_name("tiny.so");
        assert_eq!(fb.entries.len(), 1);
        assert_eq!(fb.entries[0].flags & (FLAG_COMPRESSED_LZ4 | FLAG_COMPRESSED_ZSTD), flag, "{name}");
        for (major, minor) in [(7, 5), (7, 9), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0)] {
            assert_eq!(fb.best_ptx(major, minor).unwrap().arch, 75, "{name} {major}.{minor}");
        }
        for (major, minor) in [(7, 0), (7, 2), (6, 1), (0, 0)] {
            let err = fb.best_ptx(major, minor).unwrap_err();
            assert!(matches!(err, Error::NoCompatiblePtx { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("tiny.so") && msg.contains("PTX: compute_75") && msg.contains("cubins: none"), "{msg}");
        }
        let err = fb.best_cubin(7, 5).unwrap_err().to_string();
        assert!(err.contains("cubins: none") && err.contains("PTX: compute_75"), "{err}");
        let text = fb.best_ptx(8, 6).unwrap().ptx_text().unwrap().into_owned();
        assert!(text.contains(".version 9.0") && text.contains(".target sm_75"), "{text}");
        assert!(text.contains(".entry add(") && text.contains(".entry _Z5scalePffi("), "{text}");
        assert!(!text.ends_with('\0'));
        texts.push(text);
    }
    assert_eq!(texts[0], texts[1], "both schemes hold the same text");
}
