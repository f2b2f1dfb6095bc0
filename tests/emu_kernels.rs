//! Modules, functions, launches, symbols, occupancy, stream capture and graphs (calls 22..36) on
//! the emu executor, driven through the raw protocol (`RawSession`: commands written straight
//! into the ring) with a real fatbin that nvcc builds at test time from tests/emu/module.cu, and
//! with hostile inputs: garbage and truncated images, wrong hashes, overlapping parts, oversize
//! totals, unknown names, bad handles, wrong parameter lengths, bad dimensions, too much shared
//! memory, capture misuse. The launch log (`vgpu serve --launch-log`) is checked line by line.
//!
//! nvcc comes from `$VGPU_NVCC`, `target/nvcc` or `scripts/setup-nvcc.sh`; without it the tests
//! print SKIPPED and pass, except under CI (`CI` set), where they fail.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use vgpu_tests::{
    args, mediator, mediator_with_args, mediator_with_launch_log, pattern, poll_until, read_launch_log, session_where, stat, RawSession,
    TempDir,
};
use vgpu_transport::wire::{func_attr, hdr, launch, module_hash, module_load_args, Call, Status, FUNC_INFO_MAX, MAX_MODULE_LEN};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/emu/module.cu");

// Window layout of these tests (the host's default window is 64 MiB).
const UPLOAD_OFF: u64 = 0;
const UPLOAD_CHUNK: u64 = 256 << 10;
const FUNC_OFF: u64 = 1 << 20;
const NAME_OFF: u64 = 2 << 20;
const PARAM_OFF: u64 = 3 << 20;
const IO_OFF: u64 = 4 << 20;
const PINNED_IN: u64 = 8 << 20;
const PINNED_OUT: u64 = 9 << 20;

const BOUNDED: &str = "_Z7boundedPfi";
const SCALE: &str = "_Z5scalePff4Pairc";
const DYNSHARED: &str = "_Z9dynsharedPh";
const NOPARAMS: &str = "noparams";

fn compile(out: &str, args: &[&str]) -> Option<Vec<u8>> {
    let nvcc = vgpu_tests::nvcc::nvcc()?;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emu-kernels");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{out}", std::process::id()));
    let st = Command::new(nvcc).args(args).arg("-o").arg(&path).arg(SRC).status().expect("running nvcc");
    assert!(st.success(), "nvcc {args:?} failed");
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    Some(bytes)
}

/// sm_80 and sm_90 cubins and compute_90 PTX: emu (compute capability 9.0) describes the
/// kernels from the sm_90 cubin and runs the PTX.
fn fatbin() -> Option<&'static [u8]> {
    static F: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    F.get_or_init(|| {
        compile("module.fatbin", &["-fatbin", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=[sm_90,compute_90]"])
    })
    .as_deref()
}

/// PTX only (as Ollama's CUDA 13 build ships its kernels): emu describes the kernels from the
/// PTX signatures and runs them.
fn ptx_only() -> Option<Vec<u8>> {
    compile("module-ptx.fatbin", &["-fatbin", "-gencode=arch=compute_80,code=compute_80"])
}

/// FuncInfo as FuncGet writes it, plus the parameter table.
#[derive(Debug)]
struct Info {
    num_params: u32,
    param_bytes: u32,
    max_threads: u32,
    shared: u32,
    const_bytes: u32,
    num_regs: u32,
    ptx_version: u32,
    binary_version: u32,
    max_dyn_shared: u32,
    params: Vec<(u32, u32)>,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
}

/// A raw session with helpers for the kernel calls.
struct S {
    raw: RawSession,
    next_upload: u64,
}

impl S {
    fn new(m: &vgpu_mediator::child::Mediator) -> S {
        S { raw: RawSession::connect(m.socket()), next_upload: 1000 }
    }

    fn session_id(&self) -> u64 {
        self.raw.region.read_u64(hdr::SESSION_ID)
    }

    fn call(&mut self, call: Call, stream: u32, a: [u64; 6]) -> (Status, [u64; 2]) {
        self.raw.call(call, stream, a)
    }

    fn status(&mut self, call: Call, stream: u32, a: [u64; 6]) -> Status {
        self.call(call, stream, a).0
    }

    fn ok(&mut self, call: Call, stream: u32, a: [u64; 6]) -> [u64; 2] {
        self.raw.ok(call, stream, a)
    }

    /// One ModuleData part: `data` is the part, at `at` of a `total`-byte image.
    fn part(&mut self, id: u64, data: &[u8], at: u64, total: u64) -> Status {
        self.raw.region.write_window(UPLOAD_OFF, data).unwrap();
        self.status(Call::ModuleData, 0, [id, UPLOAD_OFF, data.len() as u64, at, total, 0])
    }

    /// Upload `img` in parts (last part first, to show order does not matter); returns the id.
    fn upload(&mut self, img: &[u8]) -> u64 {
        let id = self.next_upload;
        self.next_upload += 1;
        let parts: Vec<(usize, &[u8])> = img.chunks(UPLOAD_CHUNK as usize).enumerate().collect();
        for (i, p) in parts.into_iter().rev() {
            assert_eq!(self.part(id, p, i as u64 * UPLOAD_CHUNK, img.len() as u64), Status::Ok, "part {i}");
        }
        id
    }

    fn load_status(&mut self, img: &[u8]) -> (Status, u64) {
        let id = self.upload(img);
        let (s, r) = self.call(Call::ModuleLoad, 0, module_load_args(id, module_hash(img), img.len() as u64));
        (s, r[0])
    }

    fn load(&mut self, img: &[u8]) -> u64 {
        let (s, h) = self.load_status(img);
        assert_eq!(s, Status::Ok, "ModuleLoad");
        assert_ne!(h, 0);
        h
    }

    fn func_get_raw(&mut self, module: u64, name: &[u8], len: u64) -> (Status, [u64; 2]) {
        self.raw.region.write_window(FUNC_OFF, name).unwrap();
        self.call(Call::FuncGet, 0, args(module, FUNC_OFF, len))
    }

    fn func(&mut self, module: u64, name: &str) -> (u64, Info) {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let (s, r) = self.func_get_raw(module, &n, FUNC_INFO_MAX as u64);
        assert_eq!(s, Status::Ok, "FuncGet {name}");
        let mut b = vec![0u8; r[1] as usize];
        self.raw.region.read_window(FUNC_OFF, &mut b).unwrap();
        let num_params = u32_at(&b, 0);
        assert_eq!(r[1], 64 + 8 * num_params as u64, "bytes written");
        let params = (0..num_params as usize).map(|i| (u32_at(&b, 16 + 2 * i), u32_at(&b, 17 + 2 * i))).collect();
        let info = Info {
            num_params,
            param_bytes: u32_at(&b, 1),
            max_threads: u32_at(&b, 2),
            shared: u32_at(&b, 3),
            const_bytes: u32_at(&b, 4),
            num_regs: u32_at(&b, 6),
            ptx_version: u32_at(&b, 7),
            binary_version: u32_at(&b, 8),
            max_dyn_shared: u32_at(&b, 10),
            params,
        };
        (r[0], info)
    }

    fn symbol(&mut self, module: u64, name: &str, size: u64) -> (Status, [u64; 2]) {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        self.raw.region.write_window(NAME_OFF, &n).unwrap();
        self.call(Call::SymbolGet, 0, [module, NAME_OFF, n.len() as u64, size, 0, 0])
    }

    #[allow(clippy::too_many_arguments)] // the fields of one wire command / log record
    fn launch_full(
        &mut self,
        stream: u32,
        f: u64,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        flags: u64,
        shared: u64,
        params: &[u8],
    ) -> Status {
        self.raw.region.write_window(PARAM_OFF, params).unwrap();
        let g = launch::pack_grid(grid.0, grid.1, grid.2).unwrap();
        let b = launch::pack_block(block.0, block.1, block.2, flags).unwrap();
        self.status(Call::Launch, stream, [f, g, b, shared, PARAM_OFF, params.len() as u64])
    }

    fn launch(&mut self, stream: u32, f: u64, grid: (u32, u32, u32), block: (u32, u32, u32), shared: u64, params: &[u8]) -> Status {
        self.launch_full(stream, f, grid, block, 0, shared, params)
    }

    fn alloc(&mut self, size: u64) -> u64 {
        self.ok(Call::MemAlloc, 0, args(size, 0, 0))[0]
    }

    fn write(&mut self, dst: u64, data: &[u8]) {
        self.raw.region.write_window(IO_OFF, data).unwrap();
        self.ok(Call::MemcpyHtoD, 0, args(dst, IO_OFF, data.len() as u64));
    }

    fn read_status(&mut self, src: u64, len: usize) -> Result<Vec<u8>, Status> {
        let (s, _) = self.call(Call::MemcpyDtoH, 0, args(src, IO_OFF, len as u64));
        if s != Status::Ok {
            return Err(s);
        }
        let mut v = vec![0u8; len];
        self.raw.region.read_window(IO_OFF, &mut v).unwrap();
        Ok(v)
    }

    fn read(&mut self, src: u64, len: usize) -> Vec<u8> {
        self.read_status(src, len).expect("MemcpyDtoH")
    }

    fn stat(&self, m: &vgpu_mediator::child::Mediator) -> Value {
        session_where(&stat(m), "id", self.session_id()).expect("this session in vgpu stat")
    }
}

fn le(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// bounded's parameters: (float *out, int n) → 12 bytes.
fn bounded_params(ptr: u64, n: i32) -> Vec<u8> {
    le(&[&ptr.to_le_bytes(), &n.to_le_bytes()])
}

/// scale's parameters: (float *x, float f, Pair p, char c) → x at 0, f at 8, p {int a; double b} at 16, c at 32; 33 bytes.
fn scale_params(ptr: u64, f: f32, a: i32, b: f64, c: u8) -> Vec<u8> {
    le(&[&ptr.to_le_bytes(), &f.to_le_bytes(), &[0; 4], &a.to_le_bytes(), &[0; 4], &b.to_le_bytes(), &[c]])
}

#[allow(clippy::too_many_arguments)] // the fields of one wire command / log record
fn check_record(
    r: &Value,
    session: u64,
    stream: u32,
    kernel: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u64,
    params: &[u8],
    graph: bool,
) {
    let want = serde_json::json!({
        "session": session, "seq": r["seq"], "stream": stream, "kernel": kernel, "grid": grid, "block": block,
        "shared": shared, "params": hex(params), "graph": graph,
    });
    assert_eq!(r, &want);
}

#[test]
fn load_query_launch_and_symbols() {
    let Some(img) = fatbin() else { return };
    let dir = TempDir::new("emu-kernels-log");
    let log = dir.path().join("launches.jsonl");
    let m = mediator_with_args(&[
        std::ffi::OsStr::new("--launch-log"),
        log.as_os_str(),
        "--module-cache".as_ref(),
        "none".as_ref(),
        "--kernel-timeout".as_ref(),
        "2".as_ref(),
    ]);
    let mut s = S::new(&m);
    let module = s.load(img);
    let st = s.stat(&m);
    assert_eq!((st["modules_loaded"].as_u64(), st["modules_cached"].as_u64()), (Some(1), Some(0)), "{st}");

    // Functions: layouts and attributes from the sm_80 cubin.
    let (fb, bi) = s.func(module, BOUNDED);
    assert_eq!((bi.num_params, bi.param_bytes, bi.params.clone()), (2, 12, vec![(0, 8), (8, 4)]), "{bi:?}");
    assert_eq!(bi.max_threads, 128, "__launch_bounds__(128)");
    assert_eq!(bi.shared, 1024, "__shared__ float tile[256]");
    assert_eq!(bi.max_dyn_shared, (48 << 10) - 1024);
    assert!(bi.num_regs > 0 && bi.const_bytes >= 12, "{bi:?}");
    assert_eq!((bi.binary_version, bi.ptx_version), (90, 90), "the sm_90 cubin, from compute_90");
    assert_eq!(s.func(module, BOUNDED).0, fb, "the same function gets the same handle");
    let (fs, si) = s.func(module, SCALE);
    assert_eq!((si.param_bytes, si.params.clone()), (33, vec![(0, 8), (8, 4), (16, 16), (32, 1)]), "{si:?}");
    assert_eq!(si.max_threads, 1024);
    let (fd, di) = s.func(module, DYNSHARED);
    assert_eq!((di.param_bytes, di.shared, di.max_dyn_shared), (8, 0, 48 << 10), "{di:?}");
    let (fnp, ni) = s.func(module, NOPARAMS);
    assert_eq!((ni.num_params, ni.param_bytes), (0, 0));

    // Variables: allocated with their initial bytes, copies round-trip, not the guest's to free.
    let (st_, g) = s.symbol(module, "gtable", 16);
    assert_eq!((st_, g[1]), (Status::Ok, 16));
    let floats: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|f| f.to_le_bytes()).collect();
    assert_eq!(s.read(g[0], 16), floats);
    let (_, c) = s.symbol(module, "coeffs", 12);
    assert_eq!(s.read(c[0], 12), [7i32, 8, 9].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    let (_, k) = s.symbol(module, "counter", 0);
    assert_eq!((k[1], s.read(k[0], 4)), (4, vec![0; 4]));
    let data = pattern(7, 16);
    s.write(g[0], &data);
    assert_eq!(s.read(g[0], 16), data);
    assert_eq!(s.status(Call::MemcpyDtoD, 0, args(k[0], g[0], 4)), Status::Ok);
    assert_eq!(s.read(k[0], 4), data[..4]);
    assert_eq!(s.symbol(module, "gtable", 17).0, Status::InvalidArgument, "registered larger than it is");
    assert_eq!(s.symbol(module, "nosuch", 4).0, Status::NotFound);
    assert_eq!(s.symbol(module + 1000, "gtable", 16).0, Status::InvalidHandle);
    assert_eq!(s.status(Call::MemFree, 0, args(g[0], 0, 0)), Status::InvalidDevicePointer);
    assert_eq!(s.read_status(g[0] + 8, 9), Err(Status::InvalidDevicePointer), "past the variable");

    // Launches: validated, recorded in the log, run. The last one's grid is the largest the
    // device takes (2^33 blocks): it runs past the mediator's --kernel-timeout and is stopped
    // with the device's launch-timeout fault.
    let buf = s.alloc(4096);
    let stream = s.ok(Call::StreamCreate, 0, args(0, 0, 0))[0] as u32;
    let p1 = bounded_params(buf, 100);
    let p2 = scale_params(buf, 2.5, -3, 0.25, 7);
    let p3 = buf.to_le_bytes().to_vec();
    assert_eq!(s.launch(0, fb, (2, 1, 1), (128, 1, 1), 0, &p1), Status::Ok);
    assert_eq!(s.launch(stream, fs, (3, 2, 1), (32, 4, 1), 0, &p2), Status::Ok);
    assert_eq!(s.launch(stream, fd, (1, 1, 1), (256, 1, 1), 1000, &p3), Status::Ok);
    let t = std::time::Instant::now();
    assert_eq!(s.launch(0, fnp, (65536, 65535, 2), (1, 1, 1), 0, &[]), Status::DeviceError, "stopped by the timeout");
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "stopped after {:?}", t.elapsed());
    // dynshared: out[t] = dyn[(t + 1) % 256] = (t + 1) % 256.
    let want: Vec<u8> = (0..256u32).map(|t| ((t + 1) % 256) as u8).collect();
    assert_eq!(s.read(buf, 256), want, "dynshared ran");
    let recs = read_launch_log(&log);
    assert_eq!(recs.len(), 4, "{recs:?}");
    let sid = s.session_id();
    check_record(&recs[0], sid, 0, BOUNDED, [2, 1, 1], [128, 1, 1], 0, &p1, false);
    check_record(&recs[1], sid, stream, SCALE, [3, 2, 1], [32, 4, 1], 0, &p2, false);
    check_record(&recs[2], sid, stream, DYNSHARED, [1, 1, 1], [256, 1, 1], 1000, &p3, false);
    check_record(&recs[3], sid, 0, NOPARAMS, [65536, 65535, 2], [1, 1, 1], 0, &[], false);
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(s.stat(&m)["launches"].as_u64(), Some(4));
    assert_eq!(s.stat(&m)["kernel_faults"].as_u64(), Some(1), "the timed-out launch");

    // Unload: functions and variables are gone, and their memory with them.
    let before = s.stat(&m)["mem_in_use"].as_u64().unwrap();
    s.ok(Call::ModuleUnload, 0, args(module, 0, 0));
    assert_eq!(s.launch(0, fb, (1, 1, 1), (1, 1, 1), 0, &p1), Status::InvalidHandle);
    assert_eq!(s.read_status(g[0], 4), Err(Status::InvalidDevicePointer));
    assert_eq!(s.status(Call::ModuleUnload, 0, args(module, 0, 0)), Status::InvalidHandle);
    let after = s.stat(&m)["mem_in_use"].as_u64().unwrap();
    assert_eq!(before - after, 4 + 16 + 12, "counter, gtable and coeffs freed");
    assert_eq!(read_launch_log(&log).len(), 4, "refused launches are not recorded");
}

#[test]
fn hostile_uploads_and_images() {
    let Some(img) = fatbin() else { return };
    let m = mediator();
    let mut s = S::new(&m);
    let len = img.len() as u64;
    let hash = module_hash(img);
    let a = [7u8; 64];
    // ModuleData: bad ids, totals, ranges, overlaps.
    assert_eq!(s.part(0, &a, 0, 64), Status::InvalidArgument, "upload id 0");
    assert_eq!(s.part(1, &a, 0, MAX_MODULE_LEN + 1), Status::InvalidArgument, "oversize total");
    assert_eq!(s.part(1, &a, 1, 64), Status::InvalidArgument, "part past the total");
    assert_eq!(s.part(1, &a, u64::MAX - 10, 64), Status::InvalidArgument, "offset overflow");
    assert_eq!(s.status(Call::ModuleData, 0, [1, UPLOAD_OFF, 0, 0, 64, 0]), Status::InvalidArgument, "empty part");
    assert_eq!(s.status(Call::ModuleData, 0, [1, u64::MAX - 4, 8, 0, 64, 0]), Status::InvalidWindowRange);
    assert_eq!(s.status(Call::ModuleData, 0, [1, s.raw.window_len(), 8, 0, 64, 0]), Status::InvalidWindowRange);
    assert_eq!(s.part(2, &a[..32], 16, 64), Status::Ok);
    assert_eq!(s.part(2, &a[..8], 40, 64), Status::InvalidArgument, "overlaps the end");
    assert_eq!(s.part(2, &a[..32], 0, 64), Status::InvalidArgument, "overlaps the start");
    assert_eq!(s.part(2, &a[..16], 0, 65), Status::InvalidArgument, "another total");
    assert_eq!(s.part(2, &a[..16], 0, 64), Status::Ok);
    // ModuleLoad: incomplete, unknown upload, wrong hash, unknown hash, bad length.
    assert_eq!(s.status(Call::ModuleLoad, 0, module_load_args(2, module_hash(&a), 64)), Status::InvalidArgument, "incomplete");
    assert_eq!(
        s.status(Call::ModuleLoad, 0, module_load_args(2, module_hash(&a), 64)),
        Status::InvalidHandle,
        "gone after the failed load"
    );
    assert_eq!(s.status(Call::ModuleLoad, 0, module_load_args(99, hash, len)), Status::InvalidHandle);
    let id = s.upload(img);
    assert_eq!(
        s.status(
            Call::ModuleLoad,
            0,
            module_load_args(
                id,
                {
                    let mut h = hash;
                    h.0[0] ^= 1;
                    h
                },
                len
            )
        ),
        Status::InvalidArgument,
        "wrong hash"
    );
    let id = s.upload(img);
    assert_eq!(s.status(Call::ModuleLoad, 0, module_load_args(id, hash, len + 1)), Status::InvalidArgument, "wrong length");
    assert_eq!(s.status(Call::ModuleLoad, 0, module_load_args(0, hash, len)), Status::NotFound, "by hash, never loaded, no cache");
    assert_eq!(s.status(Call::ModuleLoad, 0, module_load_args(0, hash, 0)), Status::InvalidArgument);
    assert_eq!(s.status(Call::ModuleLoad, 0, module_load_args(0, hash, MAX_MODULE_LEN + 1)), Status::InvalidArgument);
    // Images that are not fatbins, or broken ones.
    assert_eq!(s.load_status(&pattern(3, 5000)).0, Status::InvalidImage, "garbage");
    assert_eq!(s.load_status(&img[..img.len() / 2]).0, Status::InvalidImage, "truncated");
    assert_eq!(s.load_status(&img[..10]).0, Status::InvalidImage, "a header fragment");
    let mut broken = img.to_vec();
    // Every cubin's ELF magic destroyed: the container parses, the cubin does not.
    for i in 0..broken.len() - 4 {
        if &broken[i..i + 4] == b"\x7fELF" {
            broken[i + 1] = b'X';
        }
    }
    assert_eq!(s.load_status(&broken).0, Status::InvalidImage, "corrupt cubin");
    // Entries flagged LZ4 whose payload is no LZ4 block (the plain cubin, declared size 0): a clear
    // InvalidImage.
    let mut lz4 = img.to_vec();
    let total = 16 + u64::from_le_bytes(lz4[8..16].try_into().unwrap()) as usize;
    let mut off = 16;
    while off < total {
        let ehdr = u32::from_le_bytes(lz4[off + 4..off + 8].try_into().unwrap()) as usize;
        let payload = u64::from_le_bytes(lz4[off + 8..off + 16].try_into().unwrap());
        lz4[off + 16..off + 20].copy_from_slice(&(payload as u32).to_le_bytes());
        lz4[off + 41] |= 0x20; // flags |= 0x2000
        off += ehdr + payload as usize;
    }
    assert_eq!(s.load_status(&lz4).0, Status::InvalidImage, "LZ4");
    if let Some(ptx) = ptx_only() {
        let (st, pm) = s.load_status(&ptx);
        assert_eq!(st, Status::Ok, "PTX only");
        let (f, info) = s.func(pm, BOUNDED);
        assert_eq!(info.params, [(0, 8), (8, 4)], "the layout from the PTX signature");
        assert_eq!((info.max_threads, info.shared, info.ptx_version), (128, 1024, 80), ".maxntid 128, tile[256], compute_80");
        let out = s.alloc(512);
        s.write(out, &[0; 512]);
        assert_eq!(s.launch(0, f, (1, 1, 1), (128, 1, 1), 0, &bounded_params(out, 4)), Status::Ok);
        // out[t] = tile[t + 1] + gtable[4 & 3] for t < 4, and tile holds 0 * coeffs.
        let got = s.read(out, 16);
        assert_eq!(got, [1.0f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    }
    // Quotas: 64 open uploads, MAX_MODULE_LEN open bytes (address space only: nothing written).
    for id in 100..164 {
        assert_eq!(s.part(id, &a[..1], 0, 10), Status::Ok);
    }
    assert_eq!(s.part(200, &a[..1], 0, 10), Status::QuotaExceeded);
    for id in 100..164 {
        assert_eq!(
            s.status(Call::ModuleLoad, 0, module_load_args(id, Default::default(), 10)),
            Status::InvalidArgument,
            "incomplete: dropped"
        );
    }
    assert_eq!(s.part(300, &a[..1], 0, MAX_MODULE_LEN), Status::Ok);
    assert_eq!(s.part(301, &a[..1], 0, 16), Status::OutOfMemory);
    assert_eq!(s.status(Call::ModuleLoad, 0, module_load_args(300, Default::default(), MAX_MODULE_LEN)), Status::InvalidArgument);
    // After all that, the session still loads a good module.
    let module = s.load(img);
    assert_eq!(s.func(module, BOUNDED).1.param_bytes, 12);
    // And by hash now: this session holds it.
    let (st_, r) = s.call(Call::ModuleLoad, 0, module_load_args(0, hash, len));
    assert_eq!(st_, Status::Ok);
    assert_ne!(r[0], module, "a second load is a second module");
    let st = s.stat(&m);
    assert_eq!(
        (st["modules_loaded"].as_u64(), st["modules_cached"].as_u64()),
        (Some(3), Some(1)),
        "the PTX-only module, the good one twice: {st}"
    );
}

#[test]
fn hostile_functions_and_launches() {
    let Some(img) = fatbin() else { return };
    let dir = TempDir::new("emu-kernels-hostile");
    let log = dir.path().join("launches.jsonl");
    let m = mediator_with_launch_log(&log);
    let mut s = S::new(&m);
    let module = s.load(img);
    // FuncGet.
    assert_eq!(s.func_get_raw(module + 1000, b"noparams\0", 4096).0, Status::InvalidHandle);
    assert_eq!(s.func_get_raw(module, b"nosuch\0", 4096).0, Status::NotFound);
    assert_eq!(s.func_get_raw(module, b"noparamsnoparams", 16).0, Status::InvalidArgument, "no NUL");
    assert_eq!(s.func_get_raw(module, b"_Z7boundedPfi\0", 64 + 8).0, Status::InvalidArgument, "too small for the table");
    assert_eq!(s.func_get_raw(module, b"noparams\0", 64).0, Status::Ok, "exactly large enough");
    assert_eq!(s.call(Call::FuncGet, 0, args(module, s.raw.window_len() - 4, 64)).0, Status::InvalidWindowRange);
    let (fb, _) = s.func(module, BOUNDED);
    let (fd, _) = s.func(module, DYNSHARED);
    let buf = s.alloc(4096);
    let p = bounded_params(buf, 1);
    let pd = buf.to_le_bytes();
    // Launch: every refusal, none recorded.
    assert_eq!(s.launch(0, 12345, (1, 1, 1), (1, 1, 1), 0, &p), Status::InvalidHandle, "bad function");
    assert_eq!(s.launch(77, fb, (1, 1, 1), (1, 1, 1), 0, &p), Status::InvalidHandle, "bad stream");
    assert_eq!(s.launch(0, fb, (1, 1, 1), (1, 1, 1), 0, &p[..11]), Status::InvalidArgument, "short params");
    assert_eq!(s.launch(0, fb, (1, 1, 1), (1, 1, 1), 0, &[p.clone(), vec![0]].concat()), Status::InvalidArgument, "long params");
    for (g, b) in [
        ((0, 1, 1), (1, 1, 1)),
        ((1, 0, 1), (1, 1, 1)),
        ((1, 1, 1), (0, 1, 1)),
        ((1, 1, 1), (1025, 1, 1)),
        ((1, 1, 1), (32, 32, 2)),
        ((1, 1, 1), (1, 1, 65)),
    ] {
        assert_eq!(s.launch(0, fb, g, b, 0, &p), Status::InvalidConfiguration, "{g:?} {b:?}");
    }
    assert_eq!(s.launch(0, fb, (1 << 31, 1, 1), (1, 1, 1), 0, &p), Status::InvalidConfiguration, "grid x past 2^31-1");
    assert_eq!(s.launch(0, fb, (1, 1, 1), (129, 1, 1), 0, &p), Status::LaunchOutOfResources, "past __launch_bounds__(128)");
    assert_eq!(
        s.launch(0, fb, (1, 1, 1), (64, 1, 1), (47 << 10) + 1, &p),
        Status::LaunchOutOfResources,
        "dynamic shared past 48 KiB - static"
    );
    assert_eq!(s.launch(0, fb, (1, 1, 1), (64, 1, 1), u64::MAX, &p), Status::LaunchOutOfResources);
    assert_eq!(s.launch_full(0, fb, (1, 1, 1), (64, 1, 1), 2, 0, &p), Status::InvalidArgument, "unknown launch flag");
    assert_eq!(
        s.launch_full(0, fb, (10_000, 1, 1), (128, 1, 1), launch::COOPERATIVE, 0, &p),
        Status::LaunchOutOfResources,
        "cooperative grid larger than the device holds"
    );
    s.raw.region.write_window(PARAM_OFF, &p).unwrap();
    let (g, b) = (launch::pack_grid(1, 1, 1).unwrap(), launch::pack_block(1, 1, 1, 0).unwrap());
    assert_eq!(s.status(Call::Launch, 0, [fb, g, b, 0, s.raw.window_len() - 4, 12]), Status::InvalidWindowRange);
    assert_eq!(read_launch_log(&log).len(), 0, "nothing recorded");
    // Dynamic shared memory: 48 KiB by default, more after opting in, never past 227 KiB (cc 9.0).
    assert_eq!(s.launch(0, fd, (1, 1, 1), (64, 1, 1), 48 << 10, &pd), Status::Ok);
    assert_eq!(s.launch(0, fd, (1, 1, 1), (64, 1, 1), (48 << 10) + 1, &pd), Status::LaunchOutOfResources);
    let set = |s: &mut S, f: u64, attr: u64, v: u64| s.status(Call::FuncSetAttr, 0, args(f, attr, v));
    assert_eq!(set(&mut s, fd, func_attr::MAX_DYNAMIC_SHARED_MEMORY_SIZE, 100 << 10), Status::Ok);
    assert_eq!(s.launch(0, fd, (1, 1, 1), (64, 1, 1), 100 << 10, &pd), Status::Ok);
    assert_eq!(s.launch(0, fd, (1, 1, 1), (64, 1, 1), (100 << 10) + 1, &pd), Status::LaunchOutOfResources);
    assert_eq!(s.func(module, DYNSHARED).1.max_dyn_shared, 100 << 10, "FuncGet reports the raised limit");
    assert_eq!(set(&mut s, fd, func_attr::MAX_DYNAMIC_SHARED_MEMORY_SIZE, (227 << 10) + 1), Status::InvalidArgument);
    assert_eq!(set(&mut s, fb, func_attr::MAX_DYNAMIC_SHARED_MEMORY_SIZE, 226 << 10), Status::Ok);
    assert_eq!(
        set(&mut s, fb, func_attr::MAX_DYNAMIC_SHARED_MEMORY_SIZE, (226 << 10) + 1),
        Status::InvalidArgument,
        "static 1 KiB + dynamic past 227 KiB"
    );
    assert_eq!(set(&mut s, fd, func_attr::MAX_DYNAMIC_SHARED_MEMORY_SIZE, (-1i32) as u32 as u64), Status::InvalidArgument);
    assert_eq!(set(&mut s, fd, func_attr::MAX_DYNAMIC_SHARED_MEMORY_SIZE, 1 << 40), Status::InvalidArgument);
    assert_eq!(set(&mut s, fd, func_attr::PREFERRED_SHARED_MEMORY_CARVEOUT, 50), Status::Ok);
    assert_eq!(set(&mut s, fd, func_attr::PREFERRED_SHARED_MEMORY_CARVEOUT, 101), Status::InvalidArgument);
    assert_eq!(set(&mut s, fd, func_attr::REQUIRED_CLUSTER_WIDTH, 2), Status::Ok);
    assert_eq!(set(&mut s, fd, func_attr::CLUSTER_DIM_MUST_BE_SET, 1), Status::InvalidArgument, "read-only");
    assert_eq!(set(&mut s, fd, 99, 1), Status::InvalidArgument);
    assert_eq!(set(&mut s, 999_999, func_attr::PREFERRED_SHARED_MEMORY_CARVEOUT, 1), Status::InvalidHandle);
    // Occupancy: resident blocks from threads, registers and shared memory (cc 9.0 limits).
    let occ = |s: &mut S, f: u64, threads: u64, shared: u64| s.call(Call::Occupancy, 0, [f, threads, shared, 0, 0, 0]);
    let (_, bi) = s.func(module, BOUNDED);
    let warps = 4u64;
    let by_regs = 65536 / ((bi.num_regs as u64 * 32).div_ceil(256) * 256) / warps;
    let want = 32.min(64 / warps).min(by_regs).min((228 << 10) / 2048);
    assert_eq!(occ(&mut s, fb, 128, 0), (Status::Ok, [want, 0]), "{bi:?}");
    assert_eq!(occ(&mut s, fb, 256, 0), (Status::Ok, [0, 0]), "more threads than the function takes");
    assert_eq!(occ(&mut s, fd, 128, 48 << 10).1[0], 4, "48 KiB + 1 KiB reserved per block in 228 KiB");
    assert_eq!(occ(&mut s, fd, 32, 0).1[0], 32, "block limit");
    assert_eq!(occ(&mut s, fd, 0, 0).0, Status::InvalidArgument);
    assert_eq!(occ(&mut s, fd, 32, u64::MAX), (Status::Ok, [0, 0]), "more shared memory than exists");
    assert_eq!(occ(&mut s, fd, u64::MAX, 0).0, Status::InvalidArgument);
    assert_eq!(s.status(Call::Occupancy, 0, [fd, 32, 0, 2, 0, 0]), Status::InvalidArgument, "unknown flag");
    assert_eq!(occ(&mut s, 999_999, 32, 0).0, Status::InvalidHandle);
    // Only the three launches that passed are in the log.
    let recs = read_launch_log(&log);
    let shared: Vec<u64> = recs.iter().map(|r| r["shared"].as_u64().unwrap()).collect();
    assert_eq!(shared, vec![48 << 10, 100 << 10], "{recs:?}");
    // The session is fine.
    assert_eq!(s.status(Call::Nop, 0, [0; 6]), Status::Ok);
}

#[test]
fn capture_graphs_and_replay() {
    let Some(img) = fatbin() else { return };
    let dir = TempDir::new("emu-kernels-graphs");
    let log = dir.path().join("launches.jsonl");
    let m = mediator_with_launch_log(&log);
    let mut s = S::new(&m);
    let module = s.load(img);
    let (fs, _) = s.func(module, SCALE);
    let a = s.alloc(4096);
    let b = s.alloc(4096);
    let pa = pattern(1, 4096);
    s.write(a, &pa);
    s.write(b, &[0u8; 4096]);
    let st = s.ok(Call::StreamCreate, 0, args(0, 0, 0))[0] as u32;

    // Misuse.
    assert_eq!(s.status(Call::StreamBeginCapture, 0, args(0, 0, 0)), Status::CaptureUnsupported, "legacy default stream");
    assert_eq!(s.status(Call::StreamBeginCapture, st, args(3, 0, 0)), Status::InvalidArgument, "unknown mode");
    assert_eq!(s.status(Call::StreamBeginCapture, 999, args(0, 0, 0)), Status::InvalidHandle);
    assert_eq!(s.status(Call::StreamEndCapture, st, args(0, 0, 0)), Status::InvalidArgument, "not capturing");

    // Capture: every capturable command completes Ok and does nothing yet.
    let params = scale_params(a, 2.0, 1, 0.5, 3);
    s.ok(Call::StreamBeginCapture, st, args(0, 0, 0));
    assert_eq!(s.status(Call::StreamBeginCapture, st, args(0, 0, 0)), Status::InvalidArgument, "already capturing");
    s.ok(Call::Memset, st, args(a, 0x11, 1024));
    s.ok(Call::MemcpyHtoD, st, args(b, PINNED_IN, 512));
    // One block: scale's threads index x by threadIdx.x alone, so two blocks would race.
    assert_eq!(s.launch(st, fs, (1, 1, 1), (64, 1, 1), 0, &params), Status::Ok, "a captured launch completes Ok");
    s.ok(Call::MemcpyDtoD, st, args(b + 1024, a, 256));
    s.ok(Call::MemcpyDtoH, st, args(b, PINNED_OUT, 128));
    assert_eq!(s.launch(st, fs, (0, 1, 1), (64, 1, 1), 0, &params), Status::InvalidConfiguration, "still validated");
    assert_eq!(s.status(Call::Memset, st, args(a + 4096, 0, 1)), Status::InvalidDevicePointer, "still validated");
    let g = s.ok(Call::StreamEndCapture, st, args(0, 0, 0))[0];
    assert_eq!(s.read(a, 4096), pa, "captured work did not run");
    assert_eq!(read_launch_log(&log).len(), 0);

    // Instantiate and replay: copies and memsets happen, the launch is recorded again.
    assert_eq!(s.status(Call::GraphInstantiate, 0, args(g, 0x100, 0)), Status::InvalidArgument);
    assert_eq!(s.status(Call::GraphInstantiate, 0, args(999_999, 0, 0)), Status::InvalidHandle);
    let e = s.ok(Call::GraphInstantiate, 0, args(g, 0, 0))[0];
    let x = pattern(2, 512);
    s.raw.region.write_window(PINNED_IN, &x).unwrap();
    assert_eq!(s.status(Call::GraphLaunch, st, args(e, 0, 0)), Status::Ok, "memset, copy, launch, copies");
    // scale on a: x = x * 2 + 1 + 0.5 + 3 for its 64 threads, x = bits 0x11111111 (about 1e-28).
    let scaled: Vec<u8> = 4.5f32.to_le_bytes().repeat(64);
    let ga = s.read(a, 4096);
    assert_eq!(ga[..256], scaled[..]);
    assert_eq!(ga[256..1024], [0x11; 768]);
    assert_eq!(ga[1024..], pa[1024..]);
    let gb = s.read(b, 4096);
    assert_eq!(gb[..512], x[..]);
    assert_eq!(gb[1024..1280], scaled[..], "the copy after the launch saw its result");
    let mut out = vec![0u8; 128];
    s.raw.region.read_window(PINNED_OUT, &mut out).unwrap();
    assert_eq!(out, x[..128]);
    let recs = read_launch_log(&log);
    assert_eq!(recs.len(), 1);
    check_record(&recs[0], s.session_id(), st, SCALE, [1, 1, 1], [64, 1, 1], 0, &params, true);
    assert_eq!(s.stat(&m)["graph_launches"].as_u64(), Some(1));

    // Update with the same topology: new parameters, same exec.
    s.ok(Call::StreamBeginCapture, st, args(1, 0, 0));
    s.ok(Call::Memset, st, args(a, 0x22, 1024));
    s.ok(Call::MemcpyHtoD, st, args(b, PINNED_IN, 512));
    let params2 = scale_params(b, 3.0, 2, 1.5, 4);
    assert_eq!(s.launch(st, fs, (4, 1, 1), (32, 1, 1), 0, &params2), Status::Ok);
    s.ok(Call::MemcpyDtoD, st, args(b + 1024, a, 256));
    s.ok(Call::MemcpyDtoH, st, args(b, PINNED_OUT, 128));
    let g2 = s.ok(Call::StreamEndCapture, st, args(0, 0, 0))[0];
    assert_eq!(s.ok(Call::GraphExecUpdate, 0, args(e, g2, 0))[0], 0, "same topology");
    assert_eq!(s.status(Call::GraphLaunch, st, args(e, 0, 0)), Status::Ok);
    assert_eq!(s.read(a, 1024), vec![0x22; 1024]);
    let recs = read_launch_log(&log);
    check_record(&recs[1], s.session_id(), st, SCALE, [4, 1, 1], [32, 1, 1], 0, &params2, true);

    // A different topology: refused with a nonzero result, the exec unchanged.
    s.ok(Call::StreamBeginCapture, st, args(2, 0, 0));
    s.ok(Call::Memset, st, args(a, 0x33, 1024));
    let g3 = s.ok(Call::StreamEndCapture, st, args(0, 0, 0))[0];
    assert_eq!(s.ok(Call::GraphExecUpdate, 0, args(e, g3, 0))[0], 2, "cudaGraphExecUpdateErrorTopologyChanged");
    assert_eq!(s.status(Call::GraphExecUpdate, 0, args(999_999, g3, 0)), Status::InvalidHandle);
    assert_eq!(s.status(Call::GraphExecUpdate, 0, args(e, 999_999, 0)), Status::InvalidHandle);
    assert_eq!(s.status(Call::GraphLaunch, st, args(e, 0, 0)), Status::Ok);
    assert_eq!(s.read(a, 1024), vec![0x22; 1024], "still the updated exec");
    // A graph of copies only completes Ok.
    let e3 = s.ok(Call::GraphInstantiate, 0, args(g3, 0, 0))[0];
    assert_eq!(s.status(Call::GraphLaunch, 0, args(e3, 0, 0)), Status::Ok);
    assert_eq!(s.read(a, 1024), vec![0x33; 1024]);

    // A graph launch inside a capture is captured (its nodes join the new graph).
    let st2 = s.ok(Call::StreamCreate, 0, args(1, 0, 0))[0] as u32;
    s.ok(Call::StreamBeginCapture, st2, args(0, 0, 0));
    assert_eq!(s.status(Call::GraphLaunch, st2, args(e3, 0, 0)), Status::Ok);
    s.ok(Call::Memset, st2, args(a + 1024, 0x44, 16));
    let g4 = s.ok(Call::StreamEndCapture, st2, args(0, 0, 0))[0];
    s.write(a, &[0; 2048]);
    let e4 = s.ok(Call::GraphInstantiate, 0, args(g4, 0, 0))[0];
    assert_eq!(s.status(Call::GraphLaunch, st2, args(e4, 0, 0)), Status::Ok);
    let r = s.read(a, 1040);
    assert_eq!((r[..1024].to_vec(), r[1024..].to_vec()), (vec![0x33; 1024], vec![0x44; 16]));

    // Invalidation: a non-capturable command on a capturing stream.
    s.ok(Call::StreamBeginCapture, st, args(0, 0, 0));
    s.ok(Call::Memset, st, args(a, 0x55, 16));
    assert_eq!(s.status(Call::StreamSync, st, args(0, 0, 0)), Status::CaptureUnsupported);
    let ev = s.ok(Call::EventCreate, 0, args(0, 0, 0))[0];
    assert_eq!(s.status(Call::EventRecord, st, args(ev, 0, 0)), Status::CaptureUnsupported);
    assert_eq!(s.status(Call::StreamEndCapture, st, args(0, 0, 0)), Status::CaptureInvalidated);
    s.ok(Call::Memset, st, args(a, 0x66, 16));
    s.ok(Call::StreamSync, st, args(0, 0, 0));
    assert_eq!(s.read(a, 16), vec![0x66; 16], "the stream runs work again");

    // Replays re-check everything: freed memory, unloaded functions.
    let c = s.alloc(64);
    s.ok(Call::StreamBeginCapture, st, args(0, 0, 0));
    s.ok(Call::Memset, st, args(c, 1, 64));
    let gc = s.ok(Call::StreamEndCapture, st, args(0, 0, 0))[0];
    let ec = s.ok(Call::GraphInstantiate, 0, args(gc, 0, 0))[0];
    s.ok(Call::MemFree, 0, args(c, 0, 0));
    assert_eq!(s.status(Call::GraphLaunch, st, args(ec, 0, 0)), Status::InvalidDevicePointer);

    // Destroy: a graph's execs outlive it; a destroyed exec is gone.
    s.ok(Call::GraphDestroy, 0, args(g, 0, 0));
    assert_eq!(s.status(Call::GraphDestroy, 0, args(g, 0, 0)), Status::InvalidHandle);
    assert_eq!(s.status(Call::GraphLaunch, st, args(e, 0, 0)), Status::Ok);
    s.ok(Call::ModuleUnload, 0, args(module, 0, 0));
    assert_eq!(s.status(Call::GraphLaunch, st, args(e, 0, 0)), Status::InvalidHandle, "its function was unloaded");
    s.ok(Call::GraphExecDestroy, 0, args(e, 0, 0));
    assert_eq!(s.status(Call::GraphLaunch, st, args(e, 0, 0)), Status::InvalidHandle);
    assert_eq!(s.status(Call::GraphExecDestroy, 0, args(e, 0, 0)), Status::InvalidHandle);
    assert_eq!(s.status(Call::GraphLaunch, st, args(999_999, 0, 0)), Status::InvalidHandle);

    // A capturing stream that is destroyed ends its capture.
    let st3 = s.ok(Call::StreamCreate, 0, args(0, 0, 0))[0] as u32;
    s.ok(Call::StreamBeginCapture, st3, args(0, 0, 0));
    s.ok(Call::StreamDestroy, 0, args(st3 as u64, 0, 0));
    assert_eq!(s.status(Call::StreamEndCapture, st3, args(0, 0, 0)), Status::InvalidHandle);
    assert_eq!(s.status(Call::Nop, 0, [0; 6]), Status::Ok);
}

#[test]
fn module_cache_across_sessions() {
    let Some(img) = fatbin() else { return };
    let (hash, len) = (module_hash(img), img.len() as u64);
    let dir = TempDir::new("emu-kernels-cache");
    let cache = dir.path().join("modules");
    let m = mediator_with_args(&[std::ffi::OsStr::new("--module-cache"), cache.as_os_str()]);
    let mut s1 = S::new(&m);
    assert_eq!(s1.status(Call::ModuleLoad, 0, module_load_args(0, hash, len)), Status::NotFound, "nothing cached yet");
    s1.load(img);
    let file = cache.join(format!("{hash:x}.fatbin"));
    assert_eq!(std::fs::read(&file).expect("the module is cached"), img);
    // Another session loads it by hash alone, without an upload.
    let mut s2 = S::new(&m);
    let (st, r) = s2.call(Call::ModuleLoad, 0, module_load_args(0, hash, len));
    assert_eq!(st, Status::Ok);
    assert_eq!(s2.func(r[0], BOUNDED).1.param_bytes, 12);
    let sess = s2.stat(&m);
    assert_eq!((sess["modules_loaded"].as_u64(), sess["modules_cached"].as_u64()), (Some(1), Some(1)), "{sess}");
    assert_eq!(s2.status(Call::ModuleLoad, 0, module_load_args(0, hash, len - 1)), Status::NotFound, "the length is part of the key");
    // A cache file whose bytes do not hash to its name is not used (and is removed).
    let mut bad = img.to_vec();
    bad[100] ^= 0xff;
    std::fs::write(&file, &bad).unwrap();
    let mut s3 = S::new(&m);
    assert_eq!(s3.status(Call::ModuleLoad, 0, module_load_args(0, hash, len)), Status::NotFound);
    assert!(!file.exists());
    // Without a cache, loading by hash finds only what the session itself holds.
    let m2 = mediator();
    let mut s4 = S::new(&m2);
    assert_eq!(s4.status(Call::ModuleLoad, 0, module_load_args(0, hash, len)), Status::NotFound);
}

#[test]
fn module_quota() {
    let Some(img) = fatbin() else { return };
    let (hash, len) = (module_hash(img), img.len() as u64);
    let m = mediator();
    let mut s = S::new(&m);
    let first = s.load(img);
    // 1024 modules per session (reference quota); loading by hash what the session holds.
    let mut handles = vec![first];
    loop {
        let (st, r) = s.call(Call::ModuleLoad, 0, module_load_args(0, hash, len));
        if st != Status::Ok {
            assert_eq!(st, Status::QuotaExceeded);
            break;
        }
        handles.push(r[0]);
        assert!(handles.len() <= 1024, "no module quota");
    }
    assert_eq!(handles.len(), 1024);
    // Unloading makes room again; every variable of the unloaded modules is freed.
    let mem = s.stat(&m)["mem_in_use"].as_u64().unwrap();
    assert_eq!(mem, 1024 * (4 + 16 + 12), "three variables per module");
    for h in handles.drain(1..) {
        s.ok(Call::ModuleUnload, 0, args(h, 0, 0));
    }
    assert_eq!(s.stat(&m)["mem_in_use"].as_u64(), Some(4 + 16 + 12));
    let (st, _) = s.call(Call::ModuleLoad, 0, module_load_args(0, hash, len));
    assert_eq!(st, Status::Ok);
}

/// Random byte changes of a real fatbin, uploaded and loaded: each load succeeds or fails with a
/// status, and the session (one worker process) survives every one of them.
#[test]
fn mutated_images_never_hurt_the_session() {
    let Some(img) = fatbin() else { return };
    let m = mediator();
    let mut s = S::new(&m);
    let mut rng = vgpu_tests::Rng::new(0x5eed);
    let mut loaded = 0;
    for round in 0..300 {
        let mut b = img.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(b.len() as u64) as usize;
            b[at] = match rng.below(3) {
                0 => rng.next_u64() as u8,
                1 => 0xff,
                _ => 0,
            };
        }
        let (st, h) = s.load_status(&b);
        match st {
            Status::Ok => {
                loaded += 1;
                // Whatever it parsed to, asking for its kernels and variables is safe.
                for name in [BOUNDED, SCALE, DYNSHARED, NOPARAMS] {
                    let mut n = name.as_bytes().to_vec();
                    n.push(0);
                    let _ = s.func_get_raw(h, &n, FUNC_INFO_MAX as u64);
                }
                let _ = s.symbol(h, "gtable", 0);
                s.ok(Call::ModuleUnload, 0, args(h, 0, 0));
            }
            Status::InvalidImage | Status::NoKernelImage | Status::OutOfMemory => {}
            other => panic!("round {round}: unexpected {other:?}"),
        }
        assert_eq!(s.status(Call::Nop, 0, [0; 6]), Status::Ok, "round {round}: the session is gone");
    }
    assert!(loaded > 0, "some mutations leave the module loadable");
    assert_eq!(s.stat(&m)["state"], "serving");
}

// ---- The PTX interpreter against hostile kernels (hand-written PTX in PTX-only fat binaries, so
// no nvcc is needed): faults, endless loops, a session that ends under a running kernel, PTX that
// does not parse or uses what the interpreter lacks. ----

const VM_PTX: &str = ".version 8.0\n.target sm_80\n.address_size 64\n\
    .visible .entry poke(.param .u64 p)\n{\n.reg .b64 %rd<2>;\n.reg .b32 %r<2>;\n\
    ld.param.u64 %rd1, [p];\nmov.u32 %r1, 7;\nst.global.u32 [%rd1], %r1;\nret;\n}\n\
    .visible .entry spin()\n{\n$L_top:\nbra.uni $L_top;\n}\n\
    .visible .entry boom()\n{\ntrap;\n}\n\
    .visible .entry uses_tex(.param .u64 t)\n{\n.reg .b64 %rd<2>;\n.reg .f32 %f<5>;\n\
    ld.param.u64 %rd1, [t];\ntex.1d.v4.f32.s32 {%f1, %f2, %f3, %f4}, [%rd1, {0}];\nret;\n}\n";

fn vm_module(s: &mut S) -> u64 {
    s.load(&vgpu_fatbin::synth::ptx_fatbin(&[(80, VM_PTX)]))
}

/// `(status, CUresult)` of a launch (a DeviceError carries the device's code in `aux`).
fn launch_code(s: &mut S, stream: u32, f: u64, params: &[u8]) -> (Status, u32) {
    s.raw.region.write_window(PARAM_OFF, params).unwrap();
    let (g, b) = (launch::pack_grid(1, 1, 1).unwrap(), launch::pack_block(32, 1, 1, 0).unwrap());
    let c = s.raw.call_raw(Call::Launch as u16, 0, stream, [f, g, b, 0, PARAM_OFF, params.len() as u64]);
    (Status::from_u32(c.status), c.aux)
}

#[test]
fn kernel_faults_are_device_errors_and_the_session_goes_on() {
    let m = mediator_with_args(&["--module-cache", "none", "--kernel-timeout", "1"]);
    let mut s = S::new(&m);
    let module = vm_module(&mut s);
    let (poke, _) = s.func(module, "poke");
    let (boom, _) = s.func(module, "boom");
    // A store to a device address: it lands.
    let buf = s.alloc(64);
    s.write(buf, &[0; 64]);
    assert_eq!(launch_code(&mut s, 0, poke, &buf.to_le_bytes()), (Status::Ok, 0));
    assert_eq!(s.read(buf, 4), 7u32.to_le_bytes());
    // Past the allocation, an address no allocation has, a host address, null: an illegal address.
    for bad in [buf + 64, buf + (1 << 30), &s as *const S as u64, 0] {
        assert_eq!(launch_code(&mut s, 0, poke, &bad.to_le_bytes()), (Status::DeviceError, 700), "store to {bad:#x}");
    }
    // A freed allocation is gone for kernels too.
    let gone = s.alloc(64);
    s.ok(Call::MemFree, 0, args(gone, 0, 0));
    assert_eq!(launch_code(&mut s, 0, poke, &gone.to_le_bytes()), (Status::DeviceError, 700));
    // trap: the device's launch failure.
    assert_eq!(launch_code(&mut s, 0, boom, &[]), (Status::DeviceError, 719));
    // The session and its memory are unharmed.
    assert_eq!(s.read(buf, 4), 7u32.to_le_bytes());
    assert_eq!(launch_code(&mut s, 0, poke, &(buf + 60).to_le_bytes()), (Status::Ok, 0));
    assert_eq!(s.stat(&m)["kernel_faults"].as_u64(), Some(6));
}

#[test]
fn an_endless_kernel_is_stopped_and_other_streams_stay_responsive() {
    let m = mediator_with_args(&["--module-cache", "none", "--kernel-timeout", "2"]);
    let mut s = S::new(&m);
    let module = vm_module(&mut s);
    let (spin, _) = s.func(module, "spin");
    let other = s.ok(Call::StreamCreate, 0, args(1, 0, 0))[0] as u32; // non-blocking
    let spinning = s.ok(Call::StreamCreate, 0, args(1, 0, 0))[0] as u32;
    let (g, b) = (launch::pack_grid(4, 1, 1).unwrap(), launch::pack_block(64, 1, 1, 0).unwrap());
    let t = std::time::Instant::now();
    let seq = s.raw.submit(Call::Launch as u16, 0, spinning, [spin, g, b, 0, PARAM_OFF, 0]);
    // While it spins, another stream's work completes at once.
    let buf = s.alloc(1 << 20);
    for i in 0..20u8 {
        s.ok(Call::Memset, other, args(buf, u64::from(i), 1 << 20));
        s.ok(Call::StreamSync, other, args(0, 0, 0));
    }
    assert_eq!(s.read(buf, 4), [19; 4]);
    assert!(t.elapsed() < std::time::Duration::from_millis(1500), "other streams waited for the kernel: {:?}", t.elapsed());
    assert!(!s.raw.has_completion(seq), "the spinning kernel cannot have finished yet");
    let c = s.raw.wait(seq);
    let took = t.elapsed();
    assert_eq!((Status::from_u32(c.status), c.aux), (Status::DeviceError, 702), "cudaErrorLaunchTimeout");
    assert!(took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(20), "stopped after {took:?}");
}

#[test]
fn a_session_that_ends_stops_its_running_kernel() {
    let m = mediator_with_args(&["--module-cache", "none"]); // the default timeout: 10 minutes
    let mut s = S::new(&m);
    let module = vm_module(&mut s);
    let (spin, _) = s.func(module, "spin");
    let (g, b) = (launch::pack_grid(1, 1, 1).unwrap(), launch::pack_block(32, 1, 1, 0).unwrap());
    s.raw.submit(Call::Launch as u16, 0, 0, [spin, g, b, 0, PARAM_OFF, 0]);
    // The launch is counted when its stream takes it, right before it runs.
    poll_until(std::time::Duration::from_secs(10), "the kernel to start", || (s.stat(&m)["launches"].as_u64() == Some(1)).then_some(()));
    let id = s.session_id();
    drop(s);
    let t = std::time::Instant::now();
    let ended = poll_until(std::time::Duration::from_secs(20), "the session to end", || {
        let st = vgpu_mediator::serve::query_stat(m.socket()).ok()?;
        let sess = st["sessions"].as_array()?.iter().find(|x| x["id"].as_u64() == Some(id))?.clone();
        sess["state"].as_str().is_some_and(|v| v.starts_with("ended")).then_some(sess)
    });
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "the worker took {:?} to stop the kernel: {ended}", t.elapsed());
}

#[test]
fn bad_ptx_fails_at_load_or_lookup_naming_the_line() {
    let m = mediator_with_args(&["--module-cache", "none"]);
    let mut s = S::new(&m);
    // A syntax error in the declarations: the module does not load.
    let broken = ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 p\n{\nret;\n}\n";
    assert_eq!(s.load_status(&vgpu_fatbin::synth::ptx_fatbin(&[(80, broken)])).0, Status::InvalidImage);
    // An instruction the interpreter lacks (textures): the lookup of that kernel fails, the rest
    // of the module works.
    let module = vm_module(&mut s);
    assert_eq!(s.func_get_raw(module, b"uses_tex\0", FUNC_INFO_MAX as u64).0, Status::InvalidImage);
    let (poke, _) = s.func(module, "poke");
    let buf = s.alloc(4);
    assert_eq!(launch_code(&mut s, 0, poke, &buf.to_le_bytes()), (Status::Ok, 0));
    // PTX for a later device than emu's: no kernel image.
    let later = VM_PTX.replace(".target sm_80", ".target sm_100");
    let (st, _) = s.load_status(&vgpu_fatbin::synth::ptx_fatbin(&[(100, later.as_str())]));
    assert_eq!(st, Status::NoKernelImage, "compute_100 PTX on a 9.0 device");
}
