//! Fuzz harnesses for what the host (and the guest's link setup) decodes from the other side.
//!
//! Each `pub fn` here takes arbitrary bytes and must never panic, hang or allocate without
//! bound, whatever they hold; a panic is a bug in the code under test (or, for the few
//! `assert!`s below, a broken invariant of it). The same functions are
//! - the libFuzzer targets in `fuzz_targets/` (`cargo fuzz run <target> --features libfuzzer`,
//!   see `docs/security.md`, "Fuzzing"), and
//! - replayed over the committed corpus (`corpus/<target>/`) by `tests/corpus.rs`, an ordinary
//!   test that `cargo test --workspace` runs on stable Rust with no fuzzer.
//!
//! Targets:
//! - [`fatbin`]: `Wrapper::parse`, `Fatbin::parse`, every entry's `data()` (Zstandard included),
//!   `Cubin::parse` of every cubin (and of the input itself);
//! - [`modules`]: `vgpu_mediator::modules::parse`/`parse_for` on an image of the bytes, then the
//!   same bytes as a sequence of ModuleData/ModuleLoad argument tuples driving `Uploads`, checked
//!   against a model of what it must hold;
//! - [`commands`]: a real `Server` (its validation) and `Emu` executor in-process, on a real
//!   region: arbitrary commands written into the submission ring, window bytes, module uploads
//!   (hashed correctly by the harness, so the fuzzer reaches the module, function, launch and
//!   graph calls) and earlier results reused as handles;
//! - [`handshake`]: `Hello`/`Welcome` decoding, the host's `direct::accept` of a Hello, the
//!   guest's check of a region header (`Region::open_guest_map`), and the guest's reading of the
//!   ivshmem server's messages (`IvshmemDevice::peer_on_socket`) through a socket pair.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use vgpu_fatbin::{Cubin, EntryKind, Fatbin, Wrapper};
use vgpu_mediator::emu::{Emu, EmuLimits};
use vgpu_mediator::modules::{self, Image, ModuleCache, Uploads};
use vgpu_transport::notify::{EventFd, Notify};
use vgpu_transport::region::{self, Region};
use vgpu_transport::ring::{completion_ring, submission_ring, Consumer, Producer};
use vgpu_transport::server::{Server, ServerConfig, ServerStats};
use vgpu_transport::wire::{self, module_hash, module_load_args, Call, Command, Layout, Status};
use vgpu_transport::Executor;

/// Reads fuzzer bytes as values; past the end every read gives zeros (so every input decodes).
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Up to `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.take(N);
        out[..b.len()].copy_from_slice(b);
        out
    }
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// The PTX parser (`vgpu-ptx`): the module's declarations, then every function body and its
/// lowering. Bytes that
/// are not UTF-8 are cut at the first bad byte (the host hands the parser `&str`).
pub fn ptx(data: &[u8]) {
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or(""),
    };
    let Ok(m) = vgpu_ptx::Module::parse(text) else { return };
    for f in &m.functions {
        match m.body(f) {
            Err(e) => assert!(e.line >= 1, "an error without a line: {e}"),
            Ok(Some(_)) => {
                if let Ok(k) = m.lower(f) {
                    assert!(k.param_bytes as u64 <= vgpu_ptx::lower::MAX_PARAMS && k.regs.len() as u32 <= vgpu_ptx::lower::MAX_REGS);
                }
            }
            Ok(None) => {}
        }
    }
}

/// The interpreter on hostile kernels: every kernel of the input that lowers runs on one block
/// of 64 threads (two warps) over a small memory holding one allocation, with the input's first
/// bytes as its parameters, a 20,000 warp-instruction budget and 16 bytes of dynamic shared
/// memory. Any outcome is fine but a panic, a hang or a result past its bounds.
pub fn ptx_exec(data: &[u8]) {
    use vgpu_ptx::exec::{run, Launch};
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or(""),
    };
    let Ok(p) = vgpu_ptx::program::Program::parse(Arc::from(text)) else { return };
    let names: Vec<String> = p.module().entries().take(8).map(|f| f.name.clone()).collect();
    for name in names {
        let Ok(e) = p.entry(&name) else { continue };
        let mem = vgpu_ptx::mem::Allocations::default();
        let buf = mem.alloc(&[0x5a; 256]);
        // Parameters: the allocation's address in every 8-byte slot, then the input's bytes.
        let mut params = vec![0u8; e.kernel.param_bytes as usize];
        for (i, chunk) in params.chunks_mut(8).enumerate() {
            let v = if i % 2 == 0 { buf } else { data.len() as u64 };
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
        let globals: Vec<u64> = p.module().variables.iter().map(|v| mem.alloc(&v.init_bytes(&|_| None))).collect();
        let callees = e.callees();
        let l = Launch {
            grid: [1, 1, 1],
            block: [64, 1, 1],
            params: &params,
            dynamic_shared: 16,
            globals: &globals,
            budget: 20_000,
            functions: &callees,
            printf: &|_| {},
        };
        if let Ok(steps) = run(&e.kernel, &l, &mem, &|| false) {
            assert!(steps <= 20_000 + 64, "ran {steps} warp instructions past a budget of 20,000");
        }
    }
}

/// The fatbin parser: wrapper, container, every entry's image (decompressed), every cubin.
pub fn fatbin(data: &[u8]) {
    let _ = Wrapper::parse(data);
    let _ = Fatbin::total_len(data);
    // The input may also be a cubin on its own (what a fatbin's ELF entry holds).
    let _ = Cubin::parse(data);
    let Ok(fb) = Fatbin::parse(data) else { return };
    assert!(fb.len <= data.len() as u64, "a container longer than its input");
    let fb = fb.with_name("fuzz");
    let _ = fb.best_cubin(8, 0);
    let _ = fb.best_cubin(9, 0);
    for e in &fb.entries {
        let Ok(image) = e.data() else { continue };
        assert_eq!(image.len() as u64, e.uncompressed_len, "entry {}: data() length differs from its header", e.index);
        if e.kind == EntryKind::Elf {
            if let Ok(c) = Cubin::parse(&image) {
                for k in &c.kernels {
                    let _ = c.kernel(&k.name);
                }
                for g in &c.globals {
                    if let Some(init) = g.init {
                        assert_eq!(init.len() as u64, g.size, "{}: initial bytes differ from its size", g.name);
                    }
                }
            }
        }
    }
}

/// Window of the fuzz regions: small, so window ranges are easy to hit.
const WINDOW: u64 = 64 << 10;
/// Ring depth of the fuzz regions.
const DEPTH: u32 = 64;

fn small_region() -> Arc<Region> {
    let layout = Layout::new(DEPTH, WINDOW).expect("layout");
    Arc::new(region::create(layout, 1).expect("a memfd region").0)
}

/// Module images (the whole input, as a module) and module uploads (the input as arguments).
pub fn modules(data: &[u8]) {
    let img = Image::new(data.to_vec());
    if let Ok(m) = modules::parse(&img) {
        for k in &m.kernels {
            assert_eq!(k.params.len() as u32, k.info.num_params);
            assert!(k.info.max_threads_per_block <= 1024);
        }
    }
    let _ = modules::parse_for(&img, (9, 0));
    uploads(&mut Bytes::new(data));
}

/// What the harness knows an upload must hold.
struct ModelUpload {
    total: u64,
    /// The bytes sent, when the total is small enough to keep (else `None`).
    bytes: Option<Vec<u8>>,
    parts: Vec<(u64, u64)>,
}

/// `Uploads` driven by ModuleData/ModuleLoad argument tuples, against a model.
fn uploads(b: &mut Bytes<'_>) {
    let r = small_region();
    let mut u = Uploads::new();
    let mut model: HashMap<u64, ModelUpload> = HashMap::new();
    // Ids and totals from a small set, so that parts of one upload meet.
    let mut steps = 0;
    while !b.is_empty() && steps < 256 {
        steps += 1;
        let op = b.u8();
        let id = match op >> 4 {
            0 => 0,
            1..=12 => u64::from(op >> 4),
            _ => b.u64(),
        };
        if op & 1 == 0 {
            // ModuleData: window bytes, then the part.
            let total = match b.u8() % 4 {
                0 => u64::from(b.u8()) + 1,
                1 => u64::from(b.u16()) + 1,
                2 => b.u64(),
                _ => wire::MAX_MODULE_LEN - u64::from(b.u8()),
            };
            let at = match b.u8() % 3 {
                0 => u64::from(b.u8()),
                1 => u64::from(b.u16()),
                _ => b.u64(),
            };
            let len = match b.u8() % 3 {
                0 => u64::from(b.u8()),
                1 => u64::from(b.u16()),
                _ => b.u64(),
            };
            let off = if op & 2 == 0 { u64::from(b.u16()) } else { b.u64() };
            let fill = b.u8();
            let _ = r.fill_window(off, fill, len.min(WINDOW));
            let before = (u.open_count(), u.open_bytes());
            let res = u.part(&r, &[id, off, len, at, total, 0]);
            match res {
                Ok(()) => {
                    let m = model.entry(id).or_insert_with(|| ModelUpload {
                        total,
                        bytes: (total <= 1 << 20).then(|| vec![0u8; total as usize]),
                        parts: Vec::new(),
                    });
                    assert_eq!(m.total, total, "a part with another total was accepted");
                    let end = at + len;
                    assert!(end <= total && len > 0 && id != 0);
                    assert!(!m.parts.iter().any(|&(a, e)| a < end && at < e), "overlapping part accepted");
                    m.parts.push((at, end));
                    if let Some(buf) = &mut m.bytes {
                        buf[at as usize..end as usize].fill(fill);
                    }
                }
                Err(_) => assert_eq!((u.open_count(), u.open_bytes()), before, "a refused part changed the uploads"),
            }
        } else {
            // ModuleLoad of an upload: the right hash and length, or fuzzed ones.
            let right = op & 2 == 0;
            let m = model.remove(&id);
            let (hash, len) = match (&m, right) {
                (Some(m), true) => (m.bytes.as_deref().map(module_hash).unwrap_or_default(), m.total),
                _ => (wire::ModuleHash([b.u64(), b.u64(), b.u64(), b.u64()]), b.u64()),
            };
            let res = u.finish(id, hash, len);
            match (&m, res) {
                (None, r) => assert_eq!(r.unwrap_err(), Status::InvalidHandle, "finish of an unknown upload"),
                (Some(m), Ok(img)) => {
                    let filled: u64 = m.parts.iter().map(|&(a, e)| e - a).sum();
                    assert_eq!(filled, m.total, "an incomplete upload loaded");
                    if let Some(bytes) = &m.bytes {
                        assert_eq!(&img.bytes[..], &bytes[..], "the loaded image differs from the parts sent");
                    }
                }
                (Some(m), Err(_)) => {
                    let filled: u64 = m.parts.iter().map(|&(a, e)| e - a).sum();
                    assert!(!(right && m.bytes.is_some() && filled == m.total), "a complete upload with the right hash was refused");
                }
            }
        }
        assert_eq!(u.open_count(), model.len());
        assert_eq!(u.open_bytes(), model.values().map(|m| m.total).sum::<u64>());
        assert!(u.open_count() <= modules::MAX_UPLOADS && u.open_bytes() <= wire::MAX_MODULE_LEN);
    }
}

/// `VGPU_FUZZ_TRACE=1`: [`commands`] prints each command and completion (to read what an input
/// does, e.g. a crash the fuzzer found).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("VGPU_FUZZ_TRACE").is_some_and(|v| !v.is_empty() && v != "0"))
}

fn stats() -> &'static ServerStats {
    static S: OnceLock<&'static ServerStats> = OnceLock::new();
    S.get_or_init(|| Box::leak(Box::default()))
}

/// The guest end of an in-process session: a server and an emu executor on one region.
struct Session {
    region: Arc<Region>,
    server: Server,
    emu: Emu,
    sq: Producer<vgpu_transport::ring::RegionRing<Command>>,
    cq: Consumer<vgpu_transport::ring::RegionRing<wire::Completion>>,
    /// Results of completed commands (handles, addresses), newest last, for later arguments.
    results: Vec<u64>,
    next_seq: u64,
    /// The session ended (a ring violation the host detected): nothing more is served.
    over: bool,
}

impl Session {
    fn new() -> Session {
        let region = small_region();
        let interrupts: Vec<Box<dyn Notify>> = vec![Box::new(EventFd::new().expect("eventfd")), Box::new(EventFd::new().expect("eventfd"))];
        let server =
            Server::new(region.clone(), EventFd::new().expect("eventfd"), interrupts, None, ServerConfig { spin: Duration::ZERO }, stats())
                .expect("server");
        let limits = EmuLimits {
            mem_total: 16 << 20,
            max_streams: 8,
            max_events: 64,
            max_allocations: 64,
            max_modules: 8,
            max_functions: 64,
            max_graphs: 16,
            max_graph_nodes: 256,
            max_graph_bytes: 1 << 20,
            // A fuzzed kernel stops early: an input must never hang the target.
            kernels: vgpu_mediator::emu::KernelLimits { kernel_timeout: Duration::from_millis(200), kernel_budget: 100_000 },
        };
        let emu = Emu::new(region.clone(), stats(), limits).expect("emu").with_kernels(Arc::new(ModuleCache::disabled()), None);
        Session {
            sq: Producer::new(submission_ring(&region)),
            cq: Consumer::new(completion_ring(&region)),
            region,
            server,
            emu,
            results: vec![0, 1, 2],
            next_seq: 1,
            over: false,
        }
    }

    /// Take every completion posted so far.
    fn reap(&mut self) {
        while let Ok(Some(c)) = self.cq.pop() {
            if trace() {
                eprintln!("  done seq {} {:?} {:x?}", c.seq, Status::from_u32(c.status), c.result);
            }
            if c.status == Status::Ok as u32 {
                for r in c.result {
                    if r != 0 && self.results.len() < 4096 {
                        self.results.push(r);
                    }
                }
            }
        }
    }

    fn drain(&mut self) {
        if self.over {
            return;
        }
        self.sq.publish();
        if self.server.drain_once(&mut self.emu).is_err() {
            self.over = true;
        }
        self.reap();
    }

    fn push(&mut self, cmd: Command) {
        if self.over {
            return;
        }
        if trace() {
            eprintln!(
                "command seq {} {:?} ({}) flags {:#x} stream {} {:x?}",
                cmd.seq,
                Call::from_u16(cmd.call),
                cmd.call,
                cmd.flags,
                cmd.stream,
                cmd.args
            );
        }
        if self.sq.free().unwrap_or(0) == 0 {
            self.drain();
        }
        if self.sq.push(cmd).is_err() {
            self.over = true;
        }
    }

    /// An argument word: zero, small, any, or an earlier result (plus a small offset).
    fn arg(&self, b: &mut Bytes<'_>) -> u64 {
        match b.u8() % 6 {
            0 => 0,
            1 => u64::from(b.u8()),
            2 => u64::from(b.u32()),
            3 => b.u64(),
            _ => {
                let i = usize::from(b.u8());
                let base = self.results[self.results.len() - 1 - i % self.results.len()];
                base.wrapping_add(u64::from(b.u8()))
            }
        }
    }

    /// Upload `image` (ModuleData parts through the window) and load it, hashed correctly.
    fn upload(&mut self, image: &[u8], id: u64) {
        if image.is_empty() {
            return;
        }
        let total = image.len() as u64;
        let chunk = 4096usize;
        for (i, part) in image.chunks(chunk).enumerate() {
            let at = (i * chunk) as u64;
            // Each part in its own window slot, so parts in flight do not overwrite each other.
            let off = 0;
            self.drain();
            if self.region.write_window(off, part).is_err() {
                return;
            }
            let seq = self.seq();
            self.push(Command {
                seq,
                call: Call::ModuleData as u16,
                flags: 0,
                stream: 0,
                args: [id, off, part.len() as u64, at, total, 0],
            });
            self.drain();
        }
        let seq = self.seq();
        self.push(Command {
            seq,
            call: Call::ModuleLoad as u16,
            flags: 0,
            stream: 0,
            args: module_load_args(id, module_hash(image), total),
        });
        self.drain();
    }

    fn seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }
}

/// A known call id (mostly) or any.
fn call_id(b: &mut Bytes<'_>) -> u16 {
    let v = b.u8();
    if v < 0xf0 {
        u16::from(v) % Call::ALL.len() as u16
    } else {
        b.u16()
    }
}

/// The server's validation and the emu executor's dispatch, in-process.
///
/// Input: a sequence of operations, each a byte then its fields: a command (call, flags, stream,
/// arguments as zero/small/any/an earlier result), window bytes, a module upload (the next bytes
/// as the image, loaded with the right hash), a drain of the ring, or a guest-written ring index
/// or flag overwritten with any value.
pub fn commands(data: &[u8]) {
    let mut s = Session::new();
    let mut b = Bytes::new(data);
    let mut ops = 0;
    while !b.is_empty() && ops < 512 && !s.over {
        ops += 1;
        match b.u8() % 8 {
            0..=3 => {
                let call = call_id(&mut b);
                let flags = if b.u8() < 0xf0 { 0 } else { b.u16() };
                let stream = match b.u8() % 4 {
                    0 | 1 => 0,
                    2 => u32::from(b.u8()),
                    _ => s.arg(&mut b) as u32,
                };
                let n = Call::from_u16(call).map_or(6, Call::arg_count);
                let mut args = [0u64; 6];
                for a in args.iter_mut().take(n) {
                    *a = s.arg(&mut b);
                }
                // Now and then a non-zero unused argument word.
                if n < 6 && b.u8() == 0xff {
                    args[5] = 1;
                }
                let seq = if b.u8() == 0xff { b.u64() } else { s.seq() };
                s.push(Command { seq, call, flags, stream, args });
            }
            4 => {
                let off = u64::from(b.u16());
                let n = usize::from(b.u8()) * 4;
                let bytes = b.take(n);
                let _ = s.region.write_window(off, bytes);
            }
            5 => {
                let id = u64::from(b.u8() % 4) + 1;
                let len = usize::from(b.u16());
                let image = b.take(len);
                s.upload(image, id);
            }
            6 => s.drain(),
            _ => {
                // A guest-written index or flag set to anything: the host must end the session
                // (a corrupt ring) or carry on, never misbehave.
                let v = b.u32();
                let at = match b.u8() % 3 {
                    0 => wire::hdr::SQ_TAIL,
                    1 => wire::hdr::CQ_HEAD,
                    _ => wire::hdr::WANTS_INTERRUPT,
                };
                s.region.atomic_u32(at).store(v, vgpu_transport::sync::Ordering::Release);
                if s.server.drain_once(&mut s.emu).is_err() {
                    s.over = true;
                }
                s.reap();
            }
        }
    }
    s.drain();
    // The guest goes away: everything is released, stream threads joined.
    s.emu.shutdown();
    s.reap();
}

/// Handshake and link-setup decoders.
pub fn handshake(data: &[u8]) {
    let mut b = Bytes::new(data);
    match b.u8() % 4 {
        0 => hello(&mut b),
        1 => header(&mut b),
        2 => ivshmem_peer(&mut b),
        _ => {
            let msg: [u8; wire::handshake::MSG_LEN] = b.array();
            if let Some(w) = wire::handshake::Welcome::decode(&msg) {
                assert_eq!(wire::handshake::Welcome::decode(&w.encode()), Some(w));
            }
            if let Some(h) = wire::handshake::Hello::decode(&msg) {
                assert_eq!(wire::handshake::Hello::decode(&h.encode()), Some(h));
            }
        }
    }
}

/// The host's answer to a Hello (`direct::accept`), over a socket pair; the region it creates
/// must be what the guest then validates.
fn hello(b: &mut Bytes<'_>) {
    use vgpu_transport::link::direct::{self, HostLimits};
    let mut msg: [u8; wire::handshake::MSG_LEN] = b.array();
    // Mostly a real Hello magic, so the fields behind it get looked at.
    if msg[0] & 0x80 == 0 {
        msg[..8].copy_from_slice(&wire::handshake::HELLO_MAGIC.to_le_bytes());
    }
    // Keep the windows the fuzzer asks for small (a region is a real memfd).
    let limits = HostLimits { max_window: 1 << 20, max_depth: 1 << 10 };
    let (a, _peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    if let Ok(link) = direct::accept(a, &msg, 7, limits) {
        let l = *link.region.layout();
        assert!(l.validate(l.region_len).is_ok(), "the host built a region its guest would refuse: {l:?}");
        assert!(l.window_len <= limits.max_window && l.sq_depth <= limits.max_depth);
    }
}

/// The guest's check of a region header the host wrote (direct and ivshmem links).
fn header(b: &mut Bytes<'_>) {
    let len = match b.u8() % 4 {
        0 => wire::HEADER_SIZE,
        1 => 1 << 20,
        _ => (usize::from(b.u16()) + 1) * 4096,
    };
    let Ok(mut map) = memmap2::MmapMut::map_anon(len) else { return };
    // A real header most of the time (magic and version right), with fuzzed fields.
    let mut head = [0u8; 1152];
    let fields = b.take(head.len());
    head[..fields.len()].copy_from_slice(fields);
    if head[0] & 0x80 == 0 {
        head[..8].copy_from_slice(&wire::REGION_MAGIC.to_le_bytes());
        head[8..12].copy_from_slice(&wire::PROTOCOL_VERSION.to_le_bytes());
    }
    let n = head.len().min(len);
    map[..n].copy_from_slice(&head[..n]);
    if let Ok(r) = Region::open_guest_map(map.into()) {
        let l = *r.layout();
        assert!(l.region_len <= len as u64 && l.window_off.checked_add(l.window_len).is_some_and(|e| e <= len as u64));
    }
}

/// The guest's reading of the ivshmem server's messages: little-endian i64 values, some with
/// a file descriptor (an eventfd, or a memfd of a fuzzed size for the shared memory).
fn ivshmem_peer(b: &mut Bytes<'_>) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::{AsRawFd, OwnedFd};
    use vgpu_transport::link::ivshmem::IvshmemDevice;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut msgs = 0;
    while !b.is_empty() && msgs < 64 {
        msgs += 1;
        let kind = b.u8();
        let value = match kind >> 4 {
            0 => 0,
            1 => 1,
            2 => -1,
            3 => 2,
            _ => b.u64() as i64,
        };
        let fd: Option<OwnedFd> = match kind % 4 {
            0 | 1 => None,
            2 => nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC).ok().map(OwnedFd::from),
            _ => {
                let size = match b.u8() % 4 {
                    0 => 0,
                    1 => 4096,
                    2 => 1 << 20,
                    _ => u64::from(b.u16()),
                };
                region::create_memfd("fuzz-shm", size).ok()
            }
        };
        let bytes = value.to_le_bytes();
        // A message may also arrive in pieces.
        let split = if kind & 0x08 != 0 { usize::from(b.u8() % 8) } else { 8 };
        let raw = fd.as_ref().map(|f| [f.as_raw_fd()]);
        let cmsg: Vec<ControlMessage<'_>> = raw.as_ref().map(|r| vec![ControlMessage::ScmRights(r)]).unwrap_or_default();
        let first = [std::io::IoSlice::new(&bytes[..split.max(1)])];
        if sendmsg::<()>(theirs.as_raw_fd(), &first, &cmsg, MsgFlags::MSG_NOSIGNAL, None).is_err() {
            break;
        }
        if split.max(1) < 8 {
            let rest = [std::io::IoSlice::new(&bytes[split.max(1)..])];
            let _ = sendmsg::<()>(theirs.as_raw_fd(), &rest, &[], MsgFlags::MSG_NOSIGNAL, None);
        }
    }
    // The server hangs up after its messages: the reader sees the end instead of waiting.
    drop(theirs);
    let _ = IvshmemDevice::peer_on_socket(ours, std::path::Path::new("fuzz.sock"));
}
