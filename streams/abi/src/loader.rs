//! Finding the one runtime of the process.
//!
//! On a facade's first call, [`table`] loads `libvgpu.so` and checks its table; every later
//! call is one atomic load. The search, in order:
//! 1. `$VGPU_RUNTIME`, if set: the path of the runtime to use;
//! 2. `dlopen("libvgpu.so")`: the dynamic loader answers with the runtime already in the process
//!    if any library (another facade, a preload, a `DT_NEEDED`) loaded it, matched by SONAME —
//!    this is what makes it one per process — and otherwise searches `LD_LIBRARY_PATH`, the
//!    facade's own folder (`$ORIGIN` is in every facade's run path) and the system's folders;
//! 3. the folder of the facade's real file (symlinks resolved), for a facade reached through a
//!    symlink in another folder (as `vgpu run` makes them).
//!
//! The runtime is never unloaded (`dlclose` is never called), so the table is `'static`.
//! Loading runs no constructor of ours: the runtime does nothing until its first call.

use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

use crate::{Header, RuntimeTable, Status, ENTRY_SYMBOL, INITIALIZATION_ERROR, LIBRARY, VERSION_NODE};

/// The table, once found (null before).
static TABLE: AtomicPtr<RuntimeTable> = AtomicPtr::new(std::ptr::null_mut());
/// Serialises loading; holds the reason of a failed load (reported once, returned each time).
static LOAD: Mutex<Option<String>> = Mutex::new(None);

/// The runtime's table, loading it on first use. `Err(INITIALIZATION_ERROR)` if it cannot be
/// loaded; the reason, naming the fix, is logged (target `vgpu::runtime_abi`) the first time.
#[inline]
pub fn table() -> Result<&'static RuntimeTable, Status> {
    let p = TABLE.load(Ordering::Acquire);
    if p.is_null() {
        return load_slow();
    }
    // SAFETY: only ever set to a checked table that lives for the whole process (a `'static`
    // installed by `install`, or the runtime's static table, which is never unloaded).
    Ok(unsafe { &*p })
}

/// Use `t` as the runtime (a program or test that links the runtime in-process). Returns false
/// if a runtime is already in use (the first one stays).
pub fn install(t: &'static RuntimeTable) -> bool {
    let _g = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    TABLE.compare_exchange(std::ptr::null_mut(), t as *const RuntimeTable as *mut RuntimeTable, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Why the runtime could not be loaded, if it was tried and failed.
pub fn load_error() -> Option<String> {
    LOAD.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cold]
fn load_slow() -> Result<&'static RuntimeTable, Status> {
    let mut failed = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let p = TABLE.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: as in `table`.
        return Ok(unsafe { &*p });
    }
    if failed.is_some() {
        return Err(INITIALIZATION_ERROR);
    }
    match find() {
        Ok(t) => {
            TABLE.store(t as *const RuntimeTable as *mut RuntimeTable, Ordering::Release);
            Ok(t)
        }
        Err(why) => {
            let me = own_file().map(|p| p.display().to_string()).unwrap_or_else(|| "this library".into());
            let msg = format!(
                "{me} cannot use the vgpu runtime {LIBRARY}: {why}. {LIBRARY} is built with the CUDA-named libraries \
                 (`cargo build -p vgpu-runtime`) and must be in the same folder as them or on LD_LIBRARY_PATH \
                 (`vgpu run` sets this up); VGPU_RUNTIME=/path/to/{LIBRARY} names it explicitly"
            );
            tracing::error!(target: "vgpu::runtime_abi", "{msg}");
            *failed = Some(msg);
            Err(INITIALIZATION_ERROR)
        }
    }
}

fn find() -> Result<&'static RuntimeTable, String> {
    if let Some(p) = std::env::var_os("VGPU_RUNTIME") {
        let p = PathBuf::from(p);
        return open(&p.to_string_lossy()).map_err(|e| format!("VGPU_RUNTIME={}: {e}", p.display()));
    }
    let by_name = match open(LIBRARY) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    if let Some(dir) = own_file().and_then(|f| std::fs::canonicalize(f).ok()).and_then(|f| f.parent().map(Path::to_path_buf)) {
        let p = dir.join(LIBRARY);
        if p.is_file() {
            return open(&p.to_string_lossy()).map_err(|e| format!("{}: {e}", p.display()));
        }
    }
    Err(by_name)
}

/// `dlopen` `name`, find the versioned entry symbol, call it and check the table's header.
fn open(name: &str) -> Result<&'static RuntimeTable, String> {
    let c = CString::new(name).map_err(|_| "a NUL in the path".to_string())?;
    // SAFETY: a NUL-terminated name; loading runs no constructor of ours.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        return Err(dl_error());
    }
    let sym = CString::new(ENTRY_SYMBOL).expect("no NUL");
    let node = CString::new(VERSION_NODE).expect("no NUL");
    // SAFETY: a live handle and NUL-terminated strings.
    let f = unsafe { libc::dlvsym(h, sym.as_ptr(), node.as_ptr()) };
    if f.is_null() {
        return Err(format!("{name} has no {ENTRY_SYMBOL}@{VERSION_NODE} ({}): not a vgpu runtime of this version", dl_error()));
    }
    // SAFETY: `vgpu_runtime_v1` has this signature (defined in vgpu-runtime by this crate's type).
    let entry: extern "C" fn() -> *const RuntimeTable =
        unsafe { std::mem::transmute::<*mut c_void, extern "C" fn() -> *const RuntimeTable>(f) };
    let t = entry();
    if t.is_null() {
        return Err(format!("{ENTRY_SYMBOL} returned no table"));
    }
    // SAFETY: the entry returns a pointer to its static table, which starts with a `Header`
    // whatever the build (the header's layout is part of ABI version 1 and never changes).
    let head: Header = unsafe { (t as *const Header).read() };
    let want = Header::current();
    if head != want {
        let path = own_path_of(f).unwrap_or_else(|| name.to_string());
        return Err(format!(
            "{path} is from another build (ABI version {}, table {} bytes, hash {:#018x}; this library expects {}, {} bytes, {:#018x}): \
             install libvgpu.so and the CUDA-named libraries from the same build",
            head.abi_version, head.table_size, head.abi_hash, want.abi_version, want.table_size, want.abi_hash
        ));
    }
    // SAFETY: the header matches, so the table has this crate's layout; it is static in a
    // library that is never closed.
    Ok(unsafe { &*t })
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-null, NUL-terminated.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// The file of the loaded object that contains `addr`.
fn own_path_of(addr: *const c_void) -> Option<String> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: `info` is writable; dladdr only reads the address.
    let ok = unsafe { libc::dladdr(addr, info.as_mut_ptr()) };
    if ok == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded and filled `info`.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated, owned by the loader.
    Some(unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned())
}

/// The file of the library (or program) this code is linked into.
fn own_file() -> Option<PathBuf> {
    own_path_of(own_file as *const c_void).map(PathBuf::from)
}
