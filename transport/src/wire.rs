//! The wire format: every byte that crosses the guest/host boundary is defined here.
//!
//! `docs/protocol.md` is the normative text; this file is its executable form. All integers are
//! little-endian (both ends run on x86-64 or aarch64 hosts, checked at compile time below). Entries
//! are plain `#[repr(C)]` values with compile-time size asserts, copied in and out of shared memory
//! by value: no reference into the region is ever created.

/// Region magic, at offset 0 of the region: `"VGPUREG1"` read as a little-endian u64.
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"VGPUREG1");
/// Protocol version. Any change to this file that a peer could observe bumps it.
pub const PROTOCOL_VERSION: u32 = 2;
/// Feature bits this build understands. None are defined in version 1.
pub const FEATURES_SUPPORTED: u32 = 0;

/// Size of the region header, in bytes. The submission ring starts right after it.
pub const HEADER_SIZE: usize = 4096;
/// Each index or flag written by one side sits alone in a block of this size (rule 2).
pub const BLOCK: usize = 128;

/// Offsets of header fields (bytes from the region base).
pub mod hdr {
    // Block 0: layout, written once by the host before the guest maps the region.
    pub const MAGIC: usize = 0; // u64
    pub const VERSION: usize = 8; // u32
    pub const FEATURES: usize = 12; // u32
    pub const REGION_LEN: usize = 16; // u64
    pub const SQ_OFF: usize = 24; // u64
    pub const SQ_DEPTH: usize = 32; // u32
    pub const CQ_DEPTH: usize = 36; // u32
    pub const CQ_OFF: usize = 40; // u64
    pub const WINDOW_OFF: usize = 48; // u64
    pub const WINDOW_LEN: usize = 56; // u64
    pub const SESSION_ID: usize = 64; // u64
    /// Bumped by the host each time a new host instance takes over the region (ivshmem mode).
    pub const HOST_GENERATION: usize = 72; // u64

    /// Block 1, guest-written: the submission ring's producer index (free-running u32).
    pub const SQ_TAIL: usize = 128;
    /// Block 2, host-written: the submission ring's consumer index.
    pub const SQ_HEAD: usize = 256;
    /// Block 3, host-written: the completion ring's producer index.
    pub const CQ_TAIL: usize = 384;
    /// Block 4, guest-written: the completion ring's consumer index.
    pub const CQ_HEAD: usize = 512;
    /// Block 5, guest-written: non-zero while the guest is about to sleep and wants an interrupt;
    /// the value is `vector + 1`, naming the interrupt vector to raise (see [`super::IRQ_VECTORS`]).
    pub const WANTS_INTERRUPT: usize = 640; // u32
    /// Block 5, guest-written: guest statistics (informational, never trusted).
    pub const GUEST_SPIN_HITS: usize = 648; // u64
    pub const GUEST_PARKS: usize = 656; // u64
    /// Block 6, host-written: non-zero while the host is about to sleep and needs a doorbell.
    pub const NEEDS_KICK: usize = 768; // u32
    /// Block 6, host-written: 0 = serving, otherwise a [`super::HostState`].
    pub const HOST_STATE: usize = 772; // u32
    /// Block 6, host-written: incremented by the host at least every 100 ms while it serves.
    pub const HEARTBEAT: usize = 776; // u64
    /// Block 6, host-written: bytes of device `printf` output the host holds for the guest
    /// ([`super::Call::PrintfDrain`]); stored before the completion of the work that printed, so
    /// a guest that read that completion sees it. 0 on hosts that never buffer output.
    pub const PRINTF_PENDING: usize = 784; // u64

    /// Block 7, guest-written (ivshmem mode): the guest's session epoch, non-zero and new for
    /// each guest process session. Stored with Release after [`GUEST_PID`].
    pub const GUEST_EPOCH: usize = 896; // u64
    /// Block 7, guest-written (ivshmem mode): the guest process id (informational, for logs).
    pub const GUEST_PID: usize = 904; // u32
    /// Block 8, host-written (ivshmem mode): the epoch the host serves; it stores the guest's
    /// epoch here (Release) once it has reset the session for it.
    pub const HOST_EPOCH: usize = 1024; // u64
}

/// Interrupt vectors a host provides. Vector 0 wakes the guest's reactor thread; vector 1 wakes
/// a blocked caller that holds the completion role and sleeps on the interrupt itself (so the
/// reactor is not woken with it). A `WANTS_INTERRUPT` value naming a vector the host lacks means
/// vector 0.
pub const IRQ_VECTORS: usize = 2;

/// Host state word at [`hdr::HOST_STATE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HostState {
    Serving = 0,
    /// The host found the guest's ring indices corrupt and stopped serving this session.
    ProtocolError = 1,
    /// The host is shutting down.
    Closed = 2,
}

/// One submission-ring entry: a command. 64 bytes, no padding (`Pod`: the host reads it out of
/// memory the guest writes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Command {
    /// Chosen by the guest; the completion echoes it. Slot = `seq % depth` on the guest.
    pub seq: u64,
    /// A [`Call`] id.
    pub call: u16,
    /// [`cmd_flags`] bits.
    pub flags: u16,
    /// Stream handle (0 = the default stream) for stream-ordered calls; 0 otherwise.
    pub stream: u32,
    /// Call-specific inline arguments; see [`Call`].
    pub args: [u64; 6],
}

/// Bits of [`Command::flags`].
pub mod cmd_flags {
    /// The guest thread blocks until this completes (counted as a blocking round trip).
    pub const BLOCKING: u16 = 1 << 0;
    /// All bits a version-1 host accepts.
    pub const KNOWN: u16 = BLOCKING;
}

/// One completion-ring entry. 32 bytes, no padding (`Pod`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Completion {
    /// The `seq` of the command this completes.
    pub seq: u64,
    /// A [`Status`].
    pub status: u32,
    /// Reserved, zero.
    pub aux: u32,
    /// Call-specific results; see [`Call`].
    pub result: [u64; 2],
}

const _: () = assert!(std::mem::size_of::<Command>() == 64);
const _: () = assert!(std::mem::align_of::<Command>() == 8);
const _: () = assert!(std::mem::size_of::<Completion>() == 32);
const _: () = assert!(std::mem::align_of::<Completion>() == 8);
#[cfg(not(target_endian = "little"))]
compile_error!("the vgpu wire format is little-endian");

/// How a request or reply field occupies argument words. Every field type of the call table
/// implements it; decoding checks the value's range, so a decoded request holds only values of
/// its field types (a `u32` field never carries bits 32..63, and so on).
pub trait Field: Sized + Copy {
    /// Words (u64) the field takes.
    const WORDS: usize;
    /// The type's name in the protocol's call table.
    const TYPE: &'static str;
    /// Write the field into `w[..Self::WORDS]`.
    fn put(self, w: &mut [u64]);
    /// Read the field from `w[..Self::WORDS]`; `InvalidArgument` if the words are out of range.
    fn get(w: &[u64]) -> Result<Self, Status>;
}

impl Field for u64 {
    const WORDS: usize = 1;
    const TYPE: &'static str = "u64";
    fn put(self, w: &mut [u64]) {
        w[0] = self;
    }
    fn get(w: &[u64]) -> Result<Self, Status> {
        Ok(w[0])
    }
}

impl Field for u32 {
    const WORDS: usize = 1;
    const TYPE: &'static str = "u32";
    fn put(self, w: &mut [u64]) {
        w[0] = self.into();
    }
    fn get(w: &[u64]) -> Result<Self, Status> {
        u32::try_from(w[0]).map_err(|_| Status::InvalidArgument)
    }
}

/// An `i32`, sign-extended to 64 bits.
impl Field for i32 {
    const WORDS: usize = 1;
    const TYPE: &'static str = "i32";
    fn put(self, w: &mut [u64]) {
        w[0] = i64::from(self) as u64;
    }
    fn get(w: &[u64]) -> Result<Self, Status> {
        i32::try_from(w[0] as i64).map_err(|_| Status::InvalidArgument)
    }
}

/// A byte value in bits 0..7; bits 8..63 must be 0.
impl Field for u8 {
    const WORDS: usize = 1;
    const TYPE: &'static str = "u8";
    fn put(self, w: &mut [u64]) {
        w[0] = self.into();
    }
    fn get(w: &[u64]) -> Result<Self, Status> {
        u8::try_from(w[0]).map_err(|_| Status::InvalidArgument)
    }
}

/// An `f32` as its bits in bits 0..31; bits 32..63 must be 0.
impl Field for f32 {
    const WORDS: usize = 1;
    const TYPE: &'static str = "f32";
    fn put(self, w: &mut [u64]) {
        w[0] = self.to_bits().into();
    }
    fn get(w: &[u64]) -> Result<Self, Status> {
        u32::try_from(w[0]).map(f32::from_bits).map_err(|_| Status::InvalidArgument)
    }
}

/// A data-window range (§10 of the protocol): offset, then length. Decoding does not check it
/// against the window (the host's session core does, for every `Win` field of every call).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Win {
    pub off: u64,
    pub len: u64,
}

impl Win {
    pub const fn new(off: u64, len: u64) -> Win {
        Win { off, len }
    }
    /// `off + len`, or `None` if it overflows.
    pub fn end(self) -> Option<u64> {
        self.off.checked_add(self.len)
    }
}

impl Field for Win {
    const WORDS: usize = 2;
    const TYPE: &'static str = "win";
    fn put(self, w: &mut [u64]) {
        w[0] = self.off;
        w[1] = self.len;
    }
    fn get(w: &[u64]) -> Result<Self, Status> {
        Ok(Win { off: w[0], len: w[1] })
    }
}

impl Field for ModuleHash {
    const WORDS: usize = 4;
    const TYPE: &'static str = "hash";
    fn put(self, w: &mut [u64]) {
        w[..4].copy_from_slice(&self.0);
    }
    fn get(w: &[u64]) -> Result<Self, Status> {
        Ok(ModuleHash([w[0], w[1], w[2], w[3]]))
    }
}

/// Launch grid dimensions, packed as [`launch::pack_grid`] does (y and z at most 65535).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Grid {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Grid {
    /// `None` if y or z exceed 16 bits (CUDA's limit is 65535 for both).
    pub fn new(x: u32, y: u32, z: u32) -> Option<Grid> {
        launch::pack_grid(x, y, z).map(|_| Grid { x, y, z })
    }
}

impl Field for Grid {
    const WORDS: usize = 1;
    const TYPE: &'static str = "grid";
    /// A grid not made by [`Grid::new`] that does not pack encodes as one no host accepts.
    fn put(self, w: &mut [u64]) {
        w[0] = launch::pack_grid(self.x, self.y, self.z).unwrap_or(u64::MAX);
    }
    fn get(w: &[u64]) -> Result<Self, Status> {
        let (x, y, z) = launch::unpack_grid(w[0]);
        Ok(Grid { x, y, z })
    }
}

/// Launch block dimensions and launch flags ([`launch::COOPERATIVE`]), packed as
/// [`launch::pack_block`] does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Block {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub flags: u64,
}

impl Block {
    /// `None` if a dimension or the flags exceed 16 bits.
    pub fn new(x: u32, y: u32, z: u32, flags: u64) -> Option<Block> {
        launch::pack_block(x, y, z, flags).map(|_| Block { x, y, z, flags })
    }
}

impl Field for Block {
    const WORDS: usize = 1;
    const TYPE: &'static str = "block";
    /// A block not made by [`Block::new`] that does not pack encodes as one no host accepts.
    fn put(self, w: &mut [u64]) {
        w[0] = launch::pack_block(self.x, self.y, self.z, self.flags).unwrap_or(u64::MAX);
    }
    fn get(w: &[u64]) -> Result<Self, Status> {
        let (x, y, z, flags) = launch::unpack_block(w[0]);
        Ok(Block { x, y, z, flags })
    }
}

/// A typed request: the arguments of one call. Made by the [`calls!`] table, one per call.
pub trait CallRequest: Copy + std::fmt::Debug {
    /// The call this request is for.
    const CALL: Call;
    /// The typed result of the call.
    type Reply: CallReply;
    /// The command's argument words (unused words 0).
    fn encode(&self) -> [u64; 6];
    /// Decode argument words: `InvalidArgument` if a field is out of its type's range or an
    /// unused word is not 0.
    fn decode(args: &[u64; 6]) -> Result<Self, Status>;
}

/// A typed reply: the results of one call, carried in [`Completion::result`].
pub trait CallReply: Copy + std::fmt::Debug {
    fn encode(&self) -> [u64; 2];
    /// Decode result words: `Protocol` if a field is out of range or an unused word is not 0
    /// (the host broke the protocol).
    fn decode(result: [u64; 2]) -> Result<Self, Status>;
}

/// One field of a call, as the protocol's call table shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    /// [`Field::TYPE`] of the field's type.
    pub ty: &'static str,
    /// The first word the field takes (`a0` = 0), and how many.
    pub word: usize,
    pub words: usize,
}

/// One row of the call table: everything the protocol says about a call's encoding.
#[derive(Clone, Copy, Debug)]
pub struct CallSpec {
    pub call: Call,
    /// [`call_flags`] bits.
    pub flags: u32,
    pub args: &'static [FieldSpec],
    pub results: &'static [FieldSpec],
}

/// Bits of [`CallSpec::flags`].
pub mod call_flags {
    /// "S": stream-ordered; runs in the order of `Command::stream`. Other calls carry stream 0.
    pub const ORDERED: u32 = 1 << 0;
    /// A capturing stream records the call into its graph instead of running it. Other
    /// stream-ordered calls on a capturing stream invalidate the capture.
    pub const CAPTURED: u32 = 1 << 1;
    /// The call copies or fills device memory (its cost grows with its length).
    pub const MOVES_DATA: u32 = 1 << 2;
    pub const NONE: u32 = 0;
}

/// Lay out a field list at compile time: each field's first word.
macro_rules! field_specs {
    ($($f:ident : $t:ty),*) => {{
        const LEN: usize = 0 $(+ { let _ = stringify!($f); 1 })*;
        const NAMES: [&str; LEN] = [$(stringify!($f)),*];
        const TYPES: [&str; LEN] = [$(<$t as Field>::TYPE),*];
        const WORDS: [usize; LEN] = [$(<$t as Field>::WORDS),*];
        const SPECS: [FieldSpec; LEN] = {
            let mut out = [FieldSpec { name: "", ty: "", word: 0, words: 0 }; LEN];
            let mut i = 0;
            let mut at = 0;
            while i < LEN {
                out[i] = FieldSpec { name: NAMES[i], ty: TYPES[i], word: at, words: WORDS[i] };
                at += WORDS[i];
                i += 1;
            }
            out
        };
        &SPECS
    }};
}

/// Decode a field list from words, checking that every word past the fields is 0.
macro_rules! decode_fields {
    ($words:expr, $err:expr, $ty:ident { $($f:ident : $t:ty),* }) => {{
        let w: &[u64] = $words;
        let mut _at = 0usize;
        $(
            let $f = <$t as Field>::get(&w[_at..]).map_err(|_| $err)?;
            _at += <$t as Field>::WORDS;
        )*
        if w[_at..].iter().any(|&x| x != 0) {
            return Err($err);
        }
        Ok($ty { $($f),* })
    }};
}

macro_rules! calls {
    ($(
        $(#[$m:meta])*
        $name:ident = $id:literal ($flags:expr) { $($f:ident : $ft:ty),* $(,)? } -> { $($r:ident : $rt:ty),* $(,)? };
    )*) => {
        /// Call ids, carried in [`Command::call`]. Each call's typed request is in [`req`], its
        /// typed reply in [`reply`], and its row of the protocol's call table in [`Call::spec`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Call { $( $(#[$m])* $name = $id ),* }

        impl Call {
            /// Every call, in id order.
            pub const ALL: &'static [Call] = &[$(Call::$name),*];
            /// Decode a call id; `None` for ids this version does not know.
            pub fn from_u16(v: u16) -> Option<Call> {
                match v { $( $id => Some(Call::$name), )* _ => None }
            }
            /// Human-readable name, for logs and statistics.
            pub fn name(self) -> &'static str {
                match self { $( Call::$name => stringify!($name) ),* }
            }
            /// The call's row of the call table.
            pub fn spec(self) -> &'static CallSpec {
                match self {
                    $( Call::$name => {
                        const SPEC: CallSpec = CallSpec {
                            call: Call::$name,
                            flags: $flags,
                            args: field_specs!($($f : $ft),*),
                            results: field_specs!($($r : $rt),*),
                        };
                        &SPEC
                    } )*
                }
            }
        }

        /// Typed requests, one struct per call, named as the call. `encode` gives the command's
        /// argument words; `decode` is the host's only way to read them.
        pub mod req {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$m])*
                #[derive(Clone, Copy, Debug, Default, PartialEq)]
                pub struct $name { $(pub $f: $ft),* }

                impl CallRequest for $name {
                    const CALL: Call = Call::$name;
                    type Reply = super::reply::$name;
                    #[allow(unused_mut, unused_variables, unused_assignments)]
                    fn encode(&self) -> [u64; 6] {
                        let mut w = [0u64; 6];
                        let mut at = 0usize;
                        $( self.$f.put(&mut w[at..]); at += <$ft as Field>::WORDS; )*
                        w
                    }
                    fn decode(args: &[u64; 6]) -> Result<Self, Status> {
                        decode_fields!(&args[..], Status::InvalidArgument, $name { $($f : $ft),* })
                    }
                }
            )*
        }

        /// Typed replies, one struct per call, named as the call: the completion's result words.
        pub mod reply {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[doc = concat!("The results of [`Call::", stringify!($name), "`].")]
                #[derive(Clone, Copy, Debug, Default, PartialEq)]
                pub struct $name { $(pub $r: $rt),* }

                impl CallReply for $name {
                    #[allow(unused_mut, unused_variables, unused_assignments)]
                    fn encode(&self) -> [u64; 2] {
                        let mut w = [0u64; 2];
                        let mut at = 0usize;
                        $( self.$r.put(&mut w[at..]); at += <$rt as Field>::WORDS; )*
                        w
                    }
                    fn decode(result: [u64; 2]) -> Result<Self, Status> {
                        decode_fields!(&result[..], Status::Protocol, $name { $($r : $rt),* })
                    }
                }
            )*
        }

        /// A decoded command: the typed request of its call.
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub enum Request { $( $name(req::$name) ),* }

        impl Request {
            /// Decode a command's arguments for `call` (see [`CallRequest::decode`]).
            pub fn decode(call: Call, args: &[u64; 6]) -> Result<Request, Status> {
                match call { $( Call::$name => <req::$name as CallRequest>::decode(args).map(Request::$name) ),* }
            }
            pub fn call(&self) -> Call {
                match self { $( Request::$name(_) => Call::$name ),* }
            }
            pub fn encode(&self) -> [u64; 6] {
                match self { $( Request::$name(r) => r.encode() ),* }
            }
        }

        $( impl From<req::$name> for Request {
            fn from(r: req::$name) -> Request { Request::$name(r) }
        } )*
    };
}

use call_flags::{CAPTURED as C, MOVES_DATA as D, NONE, ORDERED as S};

// The call table. Each row: name = id (flags) { request fields } -> { reply fields }. Fields are
// laid out in order from `args[0]` (`result[0]`); every word past them must be 0. "S": stream-
// ordered, "C": captured into graphs, "D": moves data. Field types are [`Field`] impls: `win` is
// a data-window range (offset, length), two words.
calls! {
    /// No operation; completes immediately. The transport's null call.
    Nop = 0 (NONE) {} -> {};
    /// Allocate `size` (> 0) bytes of device memory.
    MemAlloc = 1 (NONE) { size: u64 } -> { ptr: u64 };
    /// Free an allocation made by MemAlloc.
    MemFree = 2 (NONE) { ptr: u64 } -> {};
    /// Copy `src.len` bytes from the window to device memory at `dst`.
    MemcpyHtoD = 3 (S | C | D) { dst: u64, src: Win } -> {};
    /// Copy `dst.len` bytes from device memory at `src` into the window; the bytes are there when
    /// the completion is posted.
    MemcpyDtoH = 4 (S | C | D) { src: u64, dst: Win } -> {};
    /// Copy `len` bytes between device ranges.
    MemcpyDtoD = 5 (S | C | D) { dst: u64, src: u64, len: u64 } -> {};
    /// Fill `len` bytes at `dst` with `value`.
    Memset = 6 (S | C | D) { dst: u64, value: u8, len: u64 } -> {};
    /// Create a stream ([`stream_flags`]); the handle fits in 32 bits (it travels in
    /// `Command::stream`).
    StreamCreate = 7 (NONE) { flags: u64, priority: i32 } -> { stream: u64 };
    /// Destroy a stream. Pending work finishes first, as in CUDA.
    StreamDestroy = 8 (NONE) { stream: u64 } -> {};
    /// Completes when all work submitted to `Command::stream` before it has completed.
    StreamSync = 9 (S) {} -> {};
    /// Create an event ([`event_flags`]).
    EventCreate = 10 (NONE) { flags: u64 } -> { event: u64 };
    EventDestroy = 11 (NONE) { event: u64 } -> {};
    /// Capture the stream's position (and time) in the event.
    EventRecord = 12 (S) { event: u64 } -> {};
    /// Status Ok when the recorded work is done, NotReady otherwise.
    EventQuery = 13 (NONE) { event: u64 } -> {};
    /// Completes when the recorded work is done.
    EventSync = 14 (NONE) { event: u64 } -> {};
    /// Milliseconds between two recorded events.
    EventElapsed = 15 (NONE) { start: u64, end: u64 } -> { ms: f32 };
    /// Completes when all work on all streams submitted before it has completed.
    DeviceSync = 16 (NONE) {} -> {};
    /// Free and total device memory (of the session's quota).
    MemGetInfo = 17 (NONE) {} -> { free: u64, total: u64 };
    /// The host writes a [`DeviceInfo`] at `out` (`out.len` >= its size).
    DeviceInfo = 18 (NONE) { out: Win } -> {};
    /// Later work on the stream waits until the work captured by the event's most recent record
    /// (consumed before this command) has finished; a never-recorded event is a no-op. `flags`
    /// must be 0.
    StreamWaitEvent = 19 (S) { event: u64, flags: u64 } -> {};
    /// Completes when the stream reaches it; the stream then waits until the guest sends
    /// [`Call::SignalToken`] with the same `token` (non-zero, not live). How a guest runs host
    /// functions in stream order.
    StreamWaitToken = 20 (S) { token: u64 } -> {};
    /// The stream of a live [`Call::StreamWaitToken`] may go on.
    SignalToken = 21 (NONE) { token: u64 } -> {};
    /// Module upload, one part: `part` holds the bytes at offset `at` of an image of `total`
    /// bytes (<= [`MAX_MODULE_LEN`]); `upload` is non-zero, chosen by the guest, live until its
    /// ModuleLoad. The host copies the bytes before it completes. Parts may come in any order;
    /// overlapping parts or a total that differs from the first part's is InvalidArgument.
    ModuleData = 22 (NONE) { upload: u64, part: Win, at: u64, total: u64 } -> {};
    /// Load the module of a complete `upload`, or by `hash` alone when `upload` is 0 (NotFound
    /// when the host does not hold that image; the guest then uploads it). The image is a fatbin
    /// container as nvcc registers it. The host checks the hash of uploaded bytes (BLAKE3-256),
    /// using its cross-session cache keyed by hash. InvalidImage: not a fatbin, or corrupt;
    /// NoKernelImage: no image this device can run.
    ModuleLoad = 23 (NONE) { upload: u64, len: u64, hash: ModuleHash } -> { module: u64 };
    /// Functions and symbols of the module become invalid.
    ModuleUnload = 24 (NONE) { module: u64 } -> {};
    /// On entry `buf` holds the function's NUL-terminated device (mangled) name; the host
    /// overwrites it with a [`FuncInfo`] followed by `FuncInfo::num_params` [`ParamInfo`] entries
    /// (`buf.len` >= [`FUNC_INFO_MAX`] always suffices). NotFound: no such function.
    FuncGet = 25 (NONE) { module: u64, buf: Win } -> { func: u64, written: u64 };
    /// Fire-and-forget. `params` holds the packed parameter buffer (length
    /// `FuncInfo::param_bytes`), copied when the host takes the command. Completes when the
    /// launch is enqueued on the device; errors of the kernel's execution surface as DeviceError
    /// at the next synchronising call.
    Launch = 26 (S | C) { func: u64, grid: Grid, block: Block, shared: u64, params: Win } -> {};
    /// The address of a `__device__`/`__constant__` variable whose NUL-terminated device name is
    /// in `name`; `size` is its size as registered (0: any). NotFound: no such variable.
    SymbolGet = 27 (NONE) { module: u64, name: Win, size: u64 } -> { addr: u64, size: u64 };
    /// Set a function attribute ([`func_attr`]); `value` is an i32's bits.
    FuncSetAttr = 28 (NONE) { func: u64, attr: u64, value: u32 } -> {};
    /// Active blocks per multiprocessor for `block_threads` threads and `shared` dynamic shared
    /// bytes; `flags` are cudaOccupancy* bits.
    Occupancy = 29 (NONE) { func: u64, block_threads: u64, shared: u64, flags: u64 } -> { blocks: u64 };
    /// Stream-ordered commands on the stream after this one are captured into a graph, not
    /// executed, until StreamEndCapture. `mode`: 0 global, 1 thread-local, 2 relaxed.
    /// CaptureUnsupported on the legacy default stream.
    StreamBeginCapture = 30 (S) { mode: u64 } -> {};
    /// Ends the capture. CaptureInvalidated if an operation that cannot be captured was submitted
    /// meanwhile (the graph is discarded).
    StreamEndCapture = 31 (S) {} -> { graph: u64 };
    /// `flags` are cudaGraphInstantiateFlag* bits.
    GraphInstantiate = 32 (NONE) { graph: u64, flags: u64 } -> { exec: u64 };
    /// `result` is a cudaGraphExecUpdateResult (0 = success; otherwise the exec is unchanged and
    /// the guest may re-instantiate).
    GraphExecUpdate = 33 (NONE) { exec: u64, graph: u64 } -> { result: u64 };
    /// Fire-and-forget.
    GraphLaunch = 34 (S | C) { exec: u64 } -> {};
    GraphDestroy = 35 (NONE) { graph: u64 } -> {};
    /// Pending launches of the exec finish first.
    GraphExecDestroy = 36 (NONE) { exec: u64 } -> {};
    /// Move up to `out.len` bytes of the device `printf` output the host holds (oldest first)
    /// into the window at `out`; `pending` is what remains (also in [`hdr::PRINTF_PENDING`]).
    /// Guests call it at synchronising calls while `hdr::PRINTF_PENDING` is non-zero and write
    /// the bytes to the program's stdout, as CUDA's runtime does with the device's printf buffer.
    PrintfDrain = 37 (NONE) { out: Win } -> { written: u64, pending: u64 };
}

impl Call {
    /// Whether the call is stream-ordered ("S" in the protocol): it runs in the order of
    /// `Command::stream`. Other calls must carry `stream = 0`.
    pub fn stream_ordered(self) -> bool {
        self.spec().flags & call_flags::ORDERED != 0
    }

    /// Whether a capturing stream records this call into its graph instead of running it.
    /// Other stream-ordered calls on a capturing stream invalidate the capture.
    pub fn capturable(self) -> bool {
        self.spec().flags & call_flags::CAPTURED != 0
    }

    /// Whether the call copies or fills device memory (its cost grows with its length).
    pub fn moves_data(self) -> bool {
        self.spec().flags & call_flags::MOVES_DATA != 0
    }

    /// How many of `args` the call uses; the rest must be 0.
    pub fn arg_count(self) -> usize {
        self.spec().args.iter().map(|f| f.words).sum()
    }
}

impl CallSpec {
    /// The call's row of the generated call table in `docs/protocol.md` §4.4 (a test in
    /// `transport/tests/protocol_doc.rs` keeps the document equal to it).
    pub fn markdown_row(&self) -> String {
        fn fields(fs: &[FieldSpec], word: char) -> String {
            if fs.is_empty() {
                return "—".into();
            }
            let list: Vec<String> = fs
                .iter()
                .map(|f| {
                    let at = if f.words == 1 {
                        format!("{word}{}", f.word)
                    } else {
                        format!("{word}{}..{word}{}", f.word, f.word + f.words - 1)
                    };
                    format!("`{}`: {} ({at})", f.name, f.ty)
                })
                .collect();
            list.join(", ")
        }
        let mut flags = String::new();
        for (bit, c) in [(call_flags::ORDERED, 'S'), (call_flags::CAPTURED, 'C'), (call_flags::MOVES_DATA, 'D')] {
            if self.flags & bit != 0 {
                flags.push(c);
            }
        }
        format!(
            "| {} | `{}` | {} | {} | {} |",
            self.call as u16,
            self.call.name(),
            flags,
            fields(self.args, 'a'),
            fields(self.results, 'r')
        )
    }

    /// The whole generated call table, header included.
    pub fn markdown_table() -> String {
        let mut t = String::from("| id | name | flags | request fields (words) | reply fields (words) |\n|---|---|---|---|---|\n");
        for c in Call::ALL {
            t.push_str(&c.spec().markdown_row());
            t.push('\n');
        }
        t
    }
}

/// Bits of the StreamCreate flags (the CUDA values).
pub mod stream_flags {
    pub const NON_BLOCKING: u64 = 0x1;
    pub const KNOWN: u64 = NON_BLOCKING;
}

/// Bits of the EventCreate flags (the CUDA values).
pub mod event_flags {
    pub const BLOCKING_SYNC: u64 = 0x1;
    pub const DISABLE_TIMING: u64 = 0x2;
    pub const INTERPROCESS: u64 = 0x4;
    pub const KNOWN: u64 = BLOCKING_SYNC | DISABLE_TIMING | INTERPROCESS;
}

macro_rules! statuses {
    ($( $(#[$m:meta])* $name:ident = $v:expr ),* $(,)?) => {
        /// Completion status codes, carried in [`Completion::status`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Status { $( $(#[$m])* $name = $v ),* }
        impl Status {
            /// Decode; unknown values become [`Status::Unknown`].
            pub fn from_u32(v: u32) -> Status {
                match v { $( $v => Status::$name, )* _ => Status::Unknown }
            }
            /// The name, for logs and error messages.
            pub fn name(self) -> &'static str {
                match self { $( Status::$name => stringify!($name) ),* }
            }
        }
    };
}

statuses! {
    Ok = 0,
    /// The awaited work has not completed yet (EventQuery).
    NotReady = 1,
    /// An argument is malformed: zero size, unknown flag bits, bad count.
    InvalidArgument = 2,
    /// A stream or event handle this session does not own.
    InvalidHandle = 3,
    /// A device address (or address + length) outside this session's live allocations.
    InvalidDevicePointer = 4,
    /// A window offset or offset + length outside the data window.
    InvalidWindowRange = 5,
    /// Device memory exhausted or a per-session quota reached.
    OutOfMemory = 6,
    /// A call id this host does not know.
    UnknownCall = 7,
    /// The sequence number is already in flight on the host.
    SeqInUse = 8,
    /// The call is known but this executor cannot perform it.
    NotSupported = 9,
    /// EventElapsed on an event created with DISABLE_TIMING, or never recorded.
    EventNoTiming = 10,
    /// A per-session limit on handles was reached.
    QuotaExceeded = 11,
    /// Grid or block dimensions out of range, or too many threads per block
    /// (cudaErrorInvalidConfiguration).
    InvalidConfiguration = 12,
    /// A module hash, function or symbol name the host does not know.
    NotFound = 13,
    /// The module image is not a fatbin the host can parse (cudaErrorInvalidKernelImage).
    InvalidImage = 14,
    /// The module has no image this device can run (cudaErrorNoKernelImageForDevice).
    NoKernelImage = 15,
    /// More shared memory, registers or threads than the function can launch with
    /// (cudaErrorLaunchOutOfResources).
    LaunchOutOfResources = 16,
    /// The operation is not permitted on a capturing stream, or capture is not allowed on this
    /// stream (cudaErrorStreamCaptureUnsupported).
    CaptureUnsupported = 17,
    /// The capture was invalidated by an earlier operation (cudaErrorStreamCaptureInvalidated).
    CaptureInvalidated = 18,
    /// The device reported an error; `Completion::aux` carries the driver's CUresult (for
    /// example 700, an illegal address), which the guest maps to the cudaError of the same value.
    DeviceError = 19,
    /// Generated by the guest, never sent: the link to the host is gone.
    LinkDown = 0xffff_0001,
    /// Generated by the guest, never sent: the host violated the protocol.
    Protocol = 0xffff_0002,
    /// Any value this version does not know.
    Unknown = 0xffff_ffff,
}

/// Largest module image a host accepts.
pub const MAX_MODULE_LEN: u64 = 1 << 30;

/// The content hash of a module image: BLAKE3-256, as four little-endian `u64` words.
///
/// It names images in the host's cross-session module cache, so it must resist collisions made
/// on purpose: with a 64-bit or non-cryptographic hash, one guest could plant an image under the
/// name of another tenant's module. Displayed (and named on disk) as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ModuleHash(pub [u64; 4]);

impl ModuleHash {
    /// The hash as the 32 bytes BLAKE3 produced.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, w) in self.0.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }
}

impl std::fmt::LowerHex for ModuleHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.to_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModuleHash({self:x})")
    }
}

/// The [`ModuleHash`] of a module image.
pub fn module_hash(image: &[u8]) -> ModuleHash {
    let d = blake3::hash(image);
    let b = d.as_bytes();
    let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    ModuleHash([w(0), w(1), w(2), w(3)])
}

/// The arguments of a ModuleLoad: `[id, len, hash words...]`.
pub fn module_load_args(id: u64, hash: ModuleHash, len: u64) -> [u64; 6] {
    [id, len, hash.0[0], hash.0[1], hash.0[2], hash.0[3]]
}

/// Split ModuleLoad arguments into `(id, hash, len)`.
pub fn parse_module_load_args(a: &[u64; 6]) -> (u64, ModuleHash, u64) {
    (a[0], ModuleHash([a[2], a[3], a[4], a[5]]), a[1])
}

/// Written by FuncGet, followed by `num_params` [`ParamInfo`]. 64 bytes. The fields are those of
/// `cudaFuncAttributes` the host knows; the guest fills the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FuncInfo {
    pub num_params: u32,
    /// Size in bytes of the packed parameter buffer a Launch must carry.
    pub param_bytes: u32,
    pub max_threads_per_block: u32,
    /// Static shared memory per block.
    pub shared_size_bytes: u32,
    pub const_size_bytes: u32,
    pub local_size_bytes: u32,
    pub num_regs: u32,
    /// Virtual architecture of the PTX the image was built from, times 10 plus minor (e.g. 90).
    pub ptx_version: u32,
    /// Architecture of the binary the host loaded, same encoding (e.g. 90 for sm_90).
    pub binary_version: u32,
    pub cache_mode_ca: u32,
    pub max_dynamic_shared_size_bytes: u32,
    pub preferred_shmem_carveout: i32,
    pub _reserved: [u32; 4],
}

/// One kernel parameter: its offset and size in the packed parameter buffer. 8 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ParamInfo {
    pub offset: u32,
    pub size: u32,
}

impl FuncInfo {
    fn words(&self) -> [u32; 16] {
        let r = self._reserved;
        [
            self.num_params,
            self.param_bytes,
            self.max_threads_per_block,
            self.shared_size_bytes,
            self.const_size_bytes,
            self.local_size_bytes,
            self.num_regs,
            self.ptx_version,
            self.binary_version,
            self.cache_mode_ca,
            self.max_dynamic_shared_size_bytes,
            self.preferred_shmem_carveout as u32,
            r[0],
            r[1],
            r[2],
            r[3],
        ]
    }
}

/// FuncGet's answer as the window carries it: the [`FuncInfo`], then its [`ParamInfo`] table,
/// every field a little-endian `u32` in declaration order.
pub fn encode_func_info(info: &FuncInfo, params: &[ParamInfo]) -> Vec<u8> {
    let mut out = Vec::with_capacity(std::mem::size_of::<FuncInfo>() + std::mem::size_of_val(params));
    for w in info.words() {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for p in params {
        out.extend_from_slice(&p.offset.to_le_bytes());
        out.extend_from_slice(&p.size.to_le_bytes());
    }
    out
}

/// Decode a FuncGet answer; `None` if it is shorter than its header or than the table the header
/// announces. The caller checks the values against its limits.
pub fn decode_func_info(bytes: &[u8]) -> Option<(FuncInfo, Vec<ParamInfo>)> {
    let word = |i: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(i * 4..i * 4 + 4)?.try_into().ok()?)) };
    let mut w = [0u32; 16];
    for (i, v) in w.iter_mut().enumerate() {
        *v = word(i)?;
    }
    let info = FuncInfo {
        num_params: w[0],
        param_bytes: w[1],
        max_threads_per_block: w[2],
        shared_size_bytes: w[3],
        const_size_bytes: w[4],
        local_size_bytes: w[5],
        num_regs: w[6],
        ptx_version: w[7],
        binary_version: w[8],
        cache_mode_ca: w[9],
        max_dynamic_shared_size_bytes: w[10],
        preferred_shmem_carveout: w[11] as i32,
        _reserved: [w[12], w[13], w[14], w[15]],
    };
    let n = info.num_params as usize;
    if n > MAX_PARAMS {
        return None;
    }
    let params = (0..n).map(|i| Some(ParamInfo { offset: word(16 + 2 * i)?, size: word(17 + 2 * i)? })).collect::<Option<Vec<_>>>()?;
    Some((info, params))
}

const _: () = assert!(std::mem::size_of::<FuncInfo>() == 64);
const _: () = assert!(std::mem::size_of::<ParamInfo>() == 8);

/// Most parameters a function may have (CUDA allows 32764 bytes of parameters).
pub const MAX_PARAMS: usize = 4096;
/// A FuncGet buffer this large always holds the answer.
pub const FUNC_INFO_MAX: usize = std::mem::size_of::<FuncInfo>() + MAX_PARAMS * std::mem::size_of::<ParamInfo>();
/// Most parameter bytes a Launch may carry.
pub const MAX_PARAM_BYTES: u64 = 32764;

/// Function attributes for FuncSetAttr (the `cudaFuncAttribute` values).
pub mod func_attr {
    pub const MAX_DYNAMIC_SHARED_MEMORY_SIZE: u64 = 8;
    pub const PREFERRED_SHARED_MEMORY_CARVEOUT: u64 = 9;
    pub const CLUSTER_DIM_MUST_BE_SET: u64 = 10;
    pub const REQUIRED_CLUSTER_WIDTH: u64 = 11;
    pub const REQUIRED_CLUSTER_HEIGHT: u64 = 12;
    pub const REQUIRED_CLUSTER_DEPTH: u64 = 13;
    pub const NON_PORTABLE_CLUSTER_SIZE_ALLOWED: u64 = 14;
    pub const CLUSTER_SCHEDULING_POLICY_PREFERENCE: u64 = 15;
}

/// Packing of Launch's grid and block arguments.
pub mod launch {
    /// Launch flag: cooperative launch (cudaLaunchCooperativeKernel).
    pub const COOPERATIVE: u64 = 1;
    pub const KNOWN_FLAGS: u64 = COOPERATIVE;

    /// `x | y << 32 | z << 48`; `None` if y or z exceed 16 bits (CUDA's limit is 65535).
    pub fn pack_grid(x: u32, y: u32, z: u32) -> Option<u64> {
        (y <= 0xffff && z <= 0xffff).then_some(x as u64 | (y as u64) << 32 | (z as u64) << 48)
    }
    pub fn unpack_grid(v: u64) -> (u32, u32, u32) {
        (v as u32, (v >> 32) as u32 & 0xffff, (v >> 48) as u32)
    }
    /// `x | y << 16 | z << 32 | flags << 48`; `None` if a dimension exceeds 16 bits.
    pub fn pack_block(x: u32, y: u32, z: u32, flags: u64) -> Option<u64> {
        (x <= 0xffff && y <= 0xffff && z <= 0xffff && flags <= 0xffff)
            .then_some(x as u64 | (y as u64) << 16 | (z as u64) << 32 | flags << 48)
    }
    /// `(x, y, z, flags)`.
    pub fn unpack_block(v: u64) -> (u32, u32, u32, u64) {
        (v as u32 & 0xffff, (v >> 16) as u32 & 0xffff, (v >> 32) as u32 & 0xffff, v >> 48)
    }
}

/// Written by DeviceInfo into the data window. 512 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct DeviceInfo {
    /// NUL-terminated UTF-8 device name.
    pub name: [u8; 256],
    pub total_mem: u64,
    pub multiprocessors: u32,
    pub cc_major: u32,
    pub cc_minor: u32,
    pub warp_size: u32,
    pub max_threads_per_block: u32,
    pub shared_mem_per_block: u32,
    pub clock_khz: u32,
    /// 0 = emu executor, 1 = cuda executor.
    pub executor: u32,
    pub pci_bus: u32,
    pub pci_device: u32,
    pub pci_domain: u32,
    pub _reserved: [u32; 51],
}

const _: () = assert!(std::mem::size_of::<DeviceInfo>() == 512);

impl Default for DeviceInfo {
    fn default() -> Self {
        DeviceInfo {
            name: [0; 256],
            total_mem: 0,
            multiprocessors: 0,
            cc_major: 0,
            cc_minor: 0,
            warp_size: 0,
            max_threads_per_block: 0,
            shared_mem_per_block: 0,
            clock_khz: 0,
            executor: 0,
            pci_bus: 0,
            pci_device: 0,
            pci_domain: 0,
            _reserved: [0; 51],
        }
    }
}

impl DeviceInfo {
    /// The name up to its NUL, lossily decoded.
    pub fn name_str(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// Handshake messages of the `direct` link (Unix socket), fixed 64 bytes each.
pub mod handshake {
    /// `"VGPUHELO"`: a guest opening a session.
    pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"VGPUHELO");
    /// `"VGPUWLCM"`: the host's answer.
    pub const WELCOME_MAGIC: u64 = u64::from_le_bytes(*b"VGPUWLCM");
    /// `"VGPUSTAT"`: a statistics request (`vgpu stat`); answered with JSON text.
    pub const STAT_MAGIC: u64 = u64::from_le_bytes(*b"VGPUSTAT");
    /// Size of a Hello or Welcome message.
    pub const MSG_LEN: usize = 64;

    /// Welcome status values.
    pub const OK: u32 = 0;
    pub const VERSION_MISMATCH: u32 = 1;
    pub const FEATURE_MISMATCH: u32 = 2;
    pub const REFUSED: u32 = 3;

    /// Guest → host.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Hello {
        pub version: u32,
        pub features: u32,
        /// Requested data-window size in bytes, 0 for the host's default. The host may cap it.
        pub window_len: u64,
        /// Requested ring depth (power of two), 0 for the host's default.
        pub depth: u32,
        pub pid: u32,
    }

    /// Host → guest. With status OK it carries three fds: region memfd, doorbell, interrupt.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Welcome {
        pub version: u32,
        pub status: u32,
        pub features: u32,
        pub region_len: u64,
        pub session_id: u64,
    }

    fn put64(b: &mut [u8], o: usize, v: u64) {
        b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(b: &mut [u8], o: usize, v: u32) {
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn get64(b: &[u8], o: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    }
    fn get32(b: &[u8], o: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[o..o + 4]);
        u32::from_le_bytes(a)
    }

    impl Hello {
        pub fn encode(&self) -> [u8; MSG_LEN] {
            let mut b = [0u8; MSG_LEN];
            put64(&mut b, 0, HELLO_MAGIC);
            put32(&mut b, 8, self.version);
            put32(&mut b, 12, self.features);
            put64(&mut b, 16, self.window_len);
            put32(&mut b, 24, self.depth);
            put32(&mut b, 28, self.pid);
            b
        }
        /// `None` if the magic is wrong.
        pub fn decode(b: &[u8; MSG_LEN]) -> Option<Hello> {
            (get64(b, 0) == HELLO_MAGIC).then(|| Hello {
                version: get32(b, 8),
                features: get32(b, 12),
                window_len: get64(b, 16),
                depth: get32(b, 24),
                pid: get32(b, 28),
            })
        }
    }

    impl Welcome {
        pub fn encode(&self) -> [u8; MSG_LEN] {
            let mut b = [0u8; MSG_LEN];
            put64(&mut b, 0, WELCOME_MAGIC);
            put32(&mut b, 8, self.version);
            put32(&mut b, 12, self.status);
            put32(&mut b, 16, self.features);
            put64(&mut b, 24, self.region_len);
            put64(&mut b, 32, self.session_id);
            b
        }
        pub fn decode(b: &[u8; MSG_LEN]) -> Option<Welcome> {
            (get64(b, 0) == WELCOME_MAGIC).then(|| Welcome {
                version: get32(b, 8),
                status: get32(b, 12),
                features: get32(b, 16),
                region_len: get64(b, 24),
                session_id: get64(b, 32),
            })
        }
    }
}

/// Region geometry, computed identically by both sides from the header's block 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub region_len: u64,
    pub sq_off: u64,
    pub sq_depth: u32,
    pub cq_off: u64,
    pub cq_depth: u32,
    pub window_off: u64,
    pub window_len: u64,
}

/// Alignment of the data window and of window chunks.
pub const WINDOW_ALIGN: u64 = 4096;

impl Layout {
    /// The standard layout for `depth` slots and a window of `window_len` bytes: header, SQ, CQ,
    /// then the window, page-aligned. Both rings get `depth` entries, which is what guarantees the
    /// completion ring never overflows (at most `depth` commands are in flight).
    pub fn new(depth: u32, window_len: u64) -> Option<Layout> {
        if depth == 0 || !depth.is_power_of_two() || depth > 1 << 16 {
            return None;
        }
        let sq_off = HEADER_SIZE as u64;
        let cq_off = sq_off + depth as u64 * std::mem::size_of::<Command>() as u64;
        let end = cq_off + depth as u64 * std::mem::size_of::<Completion>() as u64;
        let window_off = end.div_ceil(WINDOW_ALIGN) * WINDOW_ALIGN;
        // Checked: the length comes from a header or a Hello the other side wrote (found by
        // fuzzing: a window length near u64::MAX overflowed while rounding up).
        let window_len = window_len.checked_next_multiple_of(WINDOW_ALIGN)?;
        let region_len = window_off.checked_add(window_len)?;
        Some(Layout { region_len, sq_off, sq_depth: depth, cq_off, cq_depth: depth, window_off, window_len })
    }

    /// Check a layout read from a header against the mapping's real length: every part inside
    /// the region, no overlap, depths powers of two, ring sizes as this version defines them.
    pub fn validate(&self, mapped_len: u64) -> Result<(), String> {
        let Some(expect) = Layout::new(self.sq_depth, self.window_len) else {
            return Err(format!("bad ring depth {}", self.sq_depth));
        };
        if *self != expect {
            return Err(format!("header layout {self:?} differs from the version-1 layout {expect:?}"));
        }
        if self.region_len > mapped_len {
            return Err(format!("header says {} bytes but {} are mapped", self.region_len, mapped_len));
        }
        Ok(())
    }
}

/// Default ring depth (= maximum commands in flight per session).
pub const DEFAULT_DEPTH: u32 = 4096;
/// Default data-window size.
pub const DEFAULT_WINDOW: u64 = 64 << 20;
/// Largest window a host grants.
pub const MAX_WINDOW: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    /// The words each call uses, as the protocol has had them since version 2 (the table must
    /// not move a field).
    #[test]
    fn arg_counts_are_the_protocols() {
        use Call::*;
        let want: &[(Call, usize)] = &[
            (Nop, 0),
            (StreamSync, 0),
            (DeviceSync, 0),
            (MemGetInfo, 0),
            (StreamEndCapture, 0),
            (MemAlloc, 1),
            (MemFree, 1),
            (StreamDestroy, 1),
            (EventCreate, 1),
            (EventDestroy, 1),
            (EventRecord, 1),
            (EventQuery, 1),
            (EventSync, 1),
            (StreamWaitToken, 1),
            (SignalToken, 1),
            (ModuleUnload, 1),
            (GraphDestroy, 1),
            (GraphExecDestroy, 1),
            (GraphLaunch, 1),
            (StreamBeginCapture, 1),
            (StreamCreate, 2),
            (EventElapsed, 2),
            (DeviceInfo, 2),
            (StreamWaitEvent, 2),
            (GraphInstantiate, 2),
            (GraphExecUpdate, 2),
            (PrintfDrain, 2),
            (MemcpyHtoD, 3),
            (MemcpyDtoH, 3),
            (MemcpyDtoD, 3),
            (Memset, 3),
            (FuncGet, 3),
            (FuncSetAttr, 3),
            (SymbolGet, 4),
            (Occupancy, 4),
            (ModuleData, 5),
            (ModuleLoad, 6),
            (Launch, 6),
        ];
        assert_eq!(want.len(), Call::ALL.len());
        for &(c, n) in want {
            assert_eq!(c.arg_count(), n, "{c:?}");
        }
        for (i, c) in Call::ALL.iter().enumerate() {
            assert_eq!(Call::from_u16(*c as u16), Some(*c));
            assert_eq!(*c as usize, i, "ids are dense and in order");
            assert!(c.spec().results.iter().map(|f| f.words).sum::<usize>() <= 2, "{c:?}");
        }
        assert_eq!(Call::from_u16(Call::ALL.len() as u16), None);
    }

    /// A word past a call's fields must be 0; decoding rejects it as InvalidArgument.
    #[test]
    fn unused_words_are_rejected() {
        for &c in Call::ALL {
            for i in c.arg_count()..6 {
                let mut w = [0u64; 6];
                w[i] = 1;
                assert_eq!(Request::decode(c, &w), Err(Status::InvalidArgument), "{c:?} word {i}");
            }
        }
    }

    /// For arbitrary words, a request that decodes encodes back to exactly those words (no field
    /// drops or invents bits), and its call is the one it was decoded for.
    #[test]
    fn decode_then_encode_is_identity() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut decoded = vec![0usize; Call::ALL.len()];
        for round in 0..20_000 {
            for &c in Call::ALL {
                let mut w = [0u64; 6];
                for (i, word) in w.iter_mut().enumerate().take(c.arg_count()) {
                    // Mix small values (which fit narrow fields) with full-width noise.
                    *word = match (round + i) % 3 {
                        0 => next() & 0xffff,
                        1 => next() & 0xffff_ffff,
                        _ => next(),
                    };
                }
                if let Ok(r) = Request::decode(c, &w) {
                    decoded[c as usize] += 1;
                    assert_eq!(r.call(), c);
                    assert_eq!(r.encode(), w, "{c:?} {r:?}");
                }
            }
        }
        for &c in Call::ALL {
            assert!(decoded[c as usize] > 0, "{c:?} never decoded");
        }
    }

    #[test]
    fn typed_fields_roundtrip() {
        let r = req::StreamCreate { flags: stream_flags::NON_BLOCKING, priority: -3 };
        assert_eq!(r.encode(), [1, (-3i64) as u64, 0, 0, 0, 0]);
        assert_eq!(req::StreamCreate::decode(&r.encode()), Ok(r));
        // An i32 field is sign-extended; a value that is not is out of range.
        assert_eq!(req::StreamCreate::decode(&[0, 0xffff_fffd, 0, 0, 0, 0]), Err(Status::InvalidArgument));
        let m = req::Memset { dst: 0x1000, value: 0xab, len: 7 };
        assert_eq!(m.encode(), [0x1000, 0xab, 7, 0, 0, 0]);
        assert_eq!(req::Memset::decode(&[0x1000, 0x1ab, 7, 0, 0, 0]), Err(Status::InvalidArgument));
        let l = req::Launch {
            func: 9,
            grid: Grid::new(70_000, 2, 3).unwrap(),
            block: Block::new(32, 4, 1, launch::COOPERATIVE).unwrap(),
            shared: 1024,
            params: Win::new(4096, 48),
        };
        assert_eq!(req::Launch::decode(&l.encode()), Ok(l));
        assert_eq!(Request::decode(Call::Launch, &l.encode()), Ok(Request::Launch(l)));
        let e = reply::EventElapsed { ms: 1.25 };
        assert_eq!(e.encode(), [1.25f32.to_bits() as u64, 0]);
        assert_eq!(reply::EventElapsed::decode(e.encode()), Ok(e));
        assert_eq!(reply::EventElapsed::decode([1 << 40, 0]), Err(Status::Protocol));
        assert_eq!(reply::MemAlloc::decode([5, 1]), Err(Status::Protocol));
        let h = req::ModuleLoad { upload: 1, len: 2, hash: ModuleHash([3, 4, 5, 6]) };
        assert_eq!(h.encode(), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn layout_is_page_aligned_and_disjoint() {
        let l = Layout::new(4096, 64 << 20).unwrap();
        assert_eq!(l.sq_off, 4096);
        assert_eq!(l.cq_off, 4096 + 4096 * 64);
        assert_eq!(l.window_off % 4096, 0);
        assert!(l.window_off >= l.cq_off + 4096 * 32);
        assert_eq!(l.region_len, l.window_off + (64 << 20));
        l.validate(l.region_len).unwrap();
        assert!(l.validate(l.region_len - 1).is_err());
        assert!(Layout::new(3, 0).is_none());
    }

    /// A window length that overflows when rounded up to a page, or when added to the rings, is
    /// no layout (fuzz/corpus/handshake/crash-window-len-overflow: a region header whose
    /// WINDOW_LEN was near u64::MAX panicked the guest's check with an arithmetic overflow).
    #[test]
    fn huge_window_lengths_are_no_layout() {
        for w in [u64::MAX, u64::MAX - 4095, u64::MAX - 4096, u64::MAX - 8191] {
            assert_eq!(Layout::new(64, w), None, "{w:#x}");
            let mut l = Layout::new(64, 1 << 16).unwrap();
            l.window_len = w;
            assert!(l.validate(u64::MAX).is_err(), "{w:#x}");
        }
        assert!(Layout::new(64, (1 << 40) + 1).is_some_and(|l| l.window_len == (1 << 40) + 4096));
    }

    #[test]
    fn func_info_roundtrip() {
        let info = FuncInfo { num_params: 2, param_bytes: 12, ptx_version: 90, preferred_shmem_carveout: -1, ..FuncInfo::default() };
        let params = [ParamInfo { offset: 0, size: 8 }, ParamInfo { offset: 8, size: 4 }];
        let b = encode_func_info(&info, &params);
        assert_eq!(b.len(), 64 + 16);
        // The byte layout is the struct's: fields in declaration order, little-endian.
        assert_eq!(&b[0..4], &2u32.to_le_bytes());
        assert_eq!(&b[4..8], &12u32.to_le_bytes());
        assert_eq!(&b[28..32], &90u32.to_le_bytes());
        assert_eq!(&b[44..48], &(-1i32).to_le_bytes());
        assert_eq!(&b[64..72], &[0, 0, 0, 0, 8, 0, 0, 0]);
        assert_eq!(&b[72..80], &[8, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(decode_func_info(&b), Some((info, params.to_vec())));
        assert_eq!(decode_func_info(&b[..70]), None, "table cut short");
        assert_eq!(decode_func_info(&b[..10]), None, "header cut short");
    }

    #[test]
    fn handshake_roundtrip() {
        let h = handshake::Hello { version: 1, features: 0, window_len: 123, depth: 64, pid: 9 };
        assert_eq!(handshake::Hello::decode(&h.encode()), Some(h));
        let w = handshake::Welcome { version: 1, status: 0, features: 0, region_len: 5, session_id: 7 };
        assert_eq!(handshake::Welcome::decode(&w.encode()), Some(w));
        assert_eq!(handshake::Welcome::decode(&h.encode()), None);
    }

    #[test]
    fn call_ids_roundtrip() {
        for c in Call::ALL {
            assert_eq!(Call::from_u16(*c as u16), Some(*c));
        }
        assert_eq!(Call::from_u16(999), None);
        assert_eq!(Status::from_u32(4), Status::InvalidDevicePointer);
        assert_eq!(Status::from_u32(12345), Status::Unknown);
    }
}
