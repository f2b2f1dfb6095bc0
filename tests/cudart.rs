//! The CUDA Runtime drop-in (`cudart-abi`): ELF shape of `libcudart.so.12`/`.13`, and the C
//! conformance suite (`tests/c/*.c`) compiled with gcc against NVIDIA's own
//! `cuda_runtime_api.h` of each version (fetched by `scripts/setup-cuda-headers.sh`), linked
//! against our libraries, and run through `vgpu run` on real mediators (emu).
//!
//! Without gcc, readelf or the headers these tests say so and skip, except under CI (`CI` set),
//! where they fail: there they must run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use vgpu_tests::*;

/// The conformance programs: each checks one documented behaviour and prints `ok NAME`.
const PROGRAMS: &[&str] = &[
    "invalid_args",
    "default_stream",
    "event_order",
    "async_d2h",
    "host_func",
    "pinned",
    "meminfo",
    "stream_props",
    "sticky",
    "threads",
    "no_mediator",
    "device_mgmt",
    "capture",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `Some(())` if `tool --version` runs; otherwise skip (or fail under CI) naming the tool.
fn require(tool: &str, why: &str) -> Option<()> {
    if Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(());
    }
    skip(&format!("{tool} not found ({why})"))
}

fn skip<T>(msg: &str) -> Option<T> {
    assert!(std::env::var_os("CI").is_none(), "{msg}: CI must run this test");
    eprintln!("SKIPPED: {msg}");
    None
}

/// The folder holding `12/include` and `13/include` (NVIDIA's headers), if set up.
fn headers() -> Option<PathBuf> {
    let root = std::env::var_os("VGPU_CUDA_HEADERS").map(PathBuf::from).unwrap_or_else(|| workspace().join("target/cuda-headers"));
    for v in [12, 13] {
        if !root.join(format!("{v}/include/cuda_runtime_api.h")).is_file() {
            return skip(&format!(
                "NVIDIA's CUDA {v} headers are not in {} (run `bash scripts/setup-cuda-headers.sh`, which scripts/test.sh does)",
                root.display()
            ));
        }
    }
    Some(root)
}

/// Our two libraries, built by cargo for this profile next to the `vgpu` binary:
/// `[libvgpu_cudart12.so, libvgpu_cudart13.so]`.
fn libraries() -> &'static [PathBuf; 2] {
    static LIBS: OnceLock<[PathBuf; 2]> = OnceLock::new();
    LIBS.get_or_init(|| {
        let exe = vgpu_exe();
        let dir = exe.parent().expect("the vgpu binary has a folder");
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        if std::env::var_os("CARGO").is_some() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let st = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "vgpu-cudart12",
                    "-p",
                    "vgpu-cudart13",
                    "-p",
                    "vgpu-runtime",
                    "--profile",
                    &profile,
                    "--manifest-path",
                ])
                .arg(workspace().join("Cargo.toml"))
                .arg("--target-dir")
                .arg(dir.parent().expect("the profile folder has a parent"))
                .status()
                .expect("running cargo build for the cudart libraries");
            assert!(st.success(), "cargo build -p vgpu-cudart12 -p vgpu-cudart13 -p vgpu-runtime failed: {st}");
        }
        let libs = [dir.join("libvgpu_cudart12.so"), dir.join("libvgpu_cudart13.so")];
        for l in &libs {
            assert!(l.is_file(), "{} was not built", l.display());
        }
        libs
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn stdout(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The names listed in `cudart-abi/vN/exports.txt`.
fn export_list(v: u32) -> Vec<String> {
    let p = workspace().join(format!("cudart-abi/v{v}/exports.txt"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut names: Vec<String> =
        text.lines().map(|l| l.split('#').next().unwrap_or("").trim().to_string()).filter(|l| !l.is_empty()).collect();
    names.sort();
    names
}

/// SONAME, version definitions and symbol versions, as NVIDIA's library has them: SONAME
/// `libcudart.so.N`; version definitions BASE and `libcudart.so.N`; every exported function is
/// `name@@libcudart.so.N`, the set equals `exports.txt`, nothing else is exported; and, where
/// the headers are set up, every export is a function NVIDIA's `cuda_runtime_api.h` declares.
#[test]
fn libraries_have_the_soname_and_version_node_of_the_real_ones() {
    if require("readelf", "binutils, needed to inspect the libraries").is_none() {
        return;
    }
    let hdr = headers();
    for (v, lib) in [12u32, 13].into_iter().zip(libraries()) {
        let node = format!("libcudart.so.{v}");
        let dynamic = stdout(Command::new("readelf").arg("-d").arg(lib));
        assert!(dynamic.contains(&format!("Library soname: [{node}]")), "{}: SONAME is not {node}:\n{dynamic}", lib.display());

        let vers = stdout(Command::new("readelf").args(["-V", "-W"]).arg(lib));
        let defs: Vec<&str> =
            vers.lines().skip_while(|l| !l.contains(".gnu.version_d")).skip(2).take_while(|l| l.contains("Rev:")).collect();
        assert_eq!(defs.len(), 2, "{}: expected 2 version definitions:\n{vers}", lib.display());
        assert!(defs[0].contains("Flags: BASE") && defs[0].ends_with(&format!("Name: {node}")), "{defs:?}");
        assert!(defs[1].contains("Index: 2") && defs[1].ends_with(&format!("Name: {node}")), "{defs:?}");

        let syms = stdout(Command::new("readelf").args(["--dyn-syms", "-W"]).arg(lib));
        let mut exported = Vec::new();
        for l in syms.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Num: Value Size Type Bind Vis Ndx Name
            if f.len() < 8 || f[4] != "GLOBAL" && f[4] != "WEAK" || f[6] == "UND" {
                continue;
            }
            if f[3] == "OBJECT" && f[6] == "ABS" && f[7] == node {
                continue; // the version node's own symbol, as in NVIDIA's library
            }
            let (name, ver) = f[7].split_once("@@").unwrap_or_else(|| panic!("{}: unversioned export {l}", lib.display()));
            assert_eq!(ver, node, "{}: {name} is in version {ver}", lib.display());
            assert_eq!(f[3], "FUNC", "{}: {name} is not a function", lib.display());
            exported.push(name.to_string());
        }
        exported.sort();
        assert_eq!(exported, export_list(v), "{}: exports differ from cudart-abi/v{v}/exports.txt", lib.display());

        if let Some(root) = &hdr {
            if require("gcc", "needed to check the exports against NVIDIA's header").is_some() {
                declared_by_the_header(v, root, &exported);
            }
        }
    }
}

/// Every name is a function NVIDIA's headers of CUDA `v` declare:
/// - API functions: `cuda_runtime_api.h` (after its macros): a C file taking the address of each
///   one compiles with implicit declarations as errors; the per-thread-default-stream forms
///   (`_ptsz`, `_ptds`) are what the header declares under `CUDA_API_PER_THREAD_DEFAULT_STREAM`;
/// - nvcc's ABI (`__cuda*`): declared `CUDARTAPI __cudaX(` in `crt/host_runtime.h` or
///   `crt/device_functions.h` (C++ headers only nvcc's own compilation can include, so the check
///   reads them).
fn declared_by_the_header(v: u32, root: &Path, names: &[String]) {
    let (nvcc, api): (Vec<&String>, Vec<&String>) = names.iter().partition(|n| n.starts_with("__cuda"));
    let (ptsz, plain): (Vec<&String>, Vec<&String>) = api.into_iter().partition(|n| n.ends_with("_ptsz") || n.ends_with("_ptds"));
    let tmp = TempDir::new(&format!("cudart-decl{v}"));
    for (tag, list, define) in [("plain", plain, None), ("ptsz", ptsz, Some("-DCUDA_API_PER_THREAD_DEFAULT_STREAM"))] {
        let src = tmp.path().join(format!("decl_{tag}.c"));
        let mut c = String::from("#include <cuda_runtime_api.h>\nvoid *vgpu_exports[] = {\n");
        for n in &list {
            c.push_str(&format!("  (void *)&{n},\n"));
        }
        c.push_str("  0\n};\n");
        std::fs::write(&src, c).expect("writing decl.c");
        let mut cmd = Command::new("gcc");
        cmd.args(["-c", "-std=gnu11", "-Werror", "-Wno-deprecated-declarations", "-o"])
            .arg(tmp.path().join(format!("decl_{tag}.o")))
            .arg("-I")
            .arg(root.join(format!("{v}/include")));
        if let Some(d) = define {
            cmd.arg(d);
        }
        let o = run(cmd.arg(&src));
        assert!(
            o.status.success(),
            "exports ({tag}) not declared by CUDA {v}'s cuda_runtime_api.h:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let crt: String = ["crt/host_runtime.h", "crt/device_functions.h"]
        .iter()
        .map(|h| std::fs::read_to_string(root.join(format!("{v}/include/{h}"))).unwrap_or_else(|e| panic!("CUDA {v} {h}: {e}")))
        .collect();
    let crt: String = crt.split_whitespace().collect::<Vec<_>>().join(" ");
    for n in nvcc {
        assert!(crt.contains(&format!("CUDARTAPI {n}(")), "{n} is not declared by CUDA {v}'s crt/host_runtime.h or crt/device_functions.h");
    }
}

/// Compile every conformance program for CUDA `v` and run it; see the module docs.
fn conformance(v: u32) {
    if require("gcc", "needed to compile tests/c").is_none() || require("readelf", "binutils").is_none() {
        return;
    }
    let Some(root) = headers() else { return };
    let lib = &libraries()[(v - 12) as usize];
    let tmp = TempDir::new(&format!("cudart{v}"));
    // The link-time name: a `libcudart.so.N` symlink to our library (the SONAME is what the
    // program records as NEEDED, with version references to node libcudart.so.N).
    let libdir = tmp.path().join("lib");
    std::fs::create_dir_all(&libdir).expect("lib folder");
    let link = libdir.join(format!("libcudart.so.{v}"));
    std::os::unix::fs::symlink(std::fs::canonicalize(lib).expect("canonical library path"), &link).expect("symlink");

    let m = mediator();
    let vgpu = vgpu_exe();
    let lib_dir = lib.parent().expect("library folder");
    let want = format!("(CUDART_VERSION {})", if v == 12 { 12090 } else { 13000 });
    for prog in PROGRAMS {
        let src = workspace().join(format!("tests/c/{prog}.c"));
        let bin = tmp.path().join(format!("{prog}.{v}"));
        let o = run(Command::new("gcc")
            .args(["-O1", "-g", "-Wall", "-Werror", "-std=gnu11", "-o"])
            .arg(&bin)
            .arg("-I")
            .arg(root.join(format!("{v}/include")))
            .arg(&src)
            .arg(&link)
            .arg("-lpthread"));
        assert!(o.status.success(), "gcc {prog}.c (CUDA {v}) failed:\n{}", String::from_utf8_lossy(&o.stderr));
        let needs = stdout(Command::new("readelf").args(["-V", "-W"]).arg(&bin));
        assert!(
            needs.contains(&format!("File: libcudart.so.{v}")) && needs.contains(&format!("Name: libcudart.so.{v}")),
            "{prog}: no version reference to libcudart.so.{v}:\n{needs}"
        );

        let mut cmd = Command::new(vgpu);
        cmd.arg("run").arg("--lib-dir").arg(lib_dir).env("VGPU_LOG", "warn");
        match *prog {
            // No mediator anywhere: straight from the library folder, with a socket nobody serves.
            "no_mediator" => {
                cmd = Command::new(&bin);
                cmd.env("LD_LIBRARY_PATH", &libdir).env("VGPU_SOCKET", tmp.path().join("nobody.sock")).env_remove("LD_PRELOAD");
            }
            // Kills its mediator: it gets a private one (vgpu run starts it and passes its pid).
            "sticky" => {
                cmd.env_remove("VGPU_SOCKET").env("XDG_RUNTIME_DIR", tmp.path());
            }
            // Library replacement alone, no LD_PRELOAD.
            "meminfo" => {
                cmd.arg("--socket").arg(m.socket()).arg("--no-preload");
            }
            _ => {
                cmd.arg("--socket").arg(m.socket());
            }
        }
        if *prog != "no_mediator" {
            cmd.arg("--").arg(&bin);
        }
        let o = run(&mut cmd);
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{prog} (CUDA {v}) exited with {}:\nstdout:\n{out}\nstderr:\n{err}", o.status);
        assert!(out.contains(&format!("ok {prog} {want}")), "{prog} (CUDA {v}) did not pass:\nstdout:\n{out}\nstderr:\n{err}");
    }

    // Loading the library runs no code of ours (no constructor, no connection): preloaded into a
    // program that never calls CUDA, it says nothing even at trace level.
    let o = run(Command::new("true").env("LD_PRELOAD", lib).env("VGPU_LOG", "trace").env("VGPU_SOCKET", tmp.path().join("nobody.sock")));
    assert!(o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(), "preloading into true: {o:?}");

    // Without vgpu run: the plain LD_LIBRARY_PATH replacement a deployment would use.
    let bin = tmp.path().join(format!("invalid_args.{v}"));
    let o = run(Command::new(&bin).env("LD_LIBRARY_PATH", &libdir).env("VGPU_SOCKET", m.socket()).env_remove("LD_PRELOAD"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains(&format!("ok invalid_args {want}")),
        "invalid_args via LD_LIBRARY_PATH: {}\n{out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );

    // NVIDIA's own libcudart.so.N first in the search path, as in an Ollama install that bundles
    // it: alone it fails (no driver in this guest), and our library preloaded over it wins,
    // because its exports carry the same version node the program's references name.
    let real_dir = root.join(format!("{v}/lib"));
    if real_dir.join(format!("libcudart.so.{v}")).is_file() {
        let o = run(Command::new(&bin).env("LD_LIBRARY_PATH", &real_dir).env("VGPU_SOCKET", m.socket()).env_remove("LD_PRELOAD"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("cudaGetDeviceCount(&n) returned"),
            "NVIDIA's library alone should fail here: {}\n{err}",
            o.status
        );
        let o = run(Command::new(&bin).env("LD_LIBRARY_PATH", &real_dir).env("LD_PRELOAD", lib).env("VGPU_SOCKET", m.socket()));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains(&format!("ok invalid_args {want}")),
            "ours preloaded over NVIDIA's: {}\n{out}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        skip::<()>(&format!("NVIDIA's libcudart.so.{v} is not in {} (scripts/setup-cuda-headers.sh puts it there)", real_dir.display()));
    }
}

#[test]
fn conformance_suite_on_libcudart_so_12() {
    conformance(12);
}

#[test]
fn conformance_suite_on_libcudart_so_13() {
    conformance(13);
}

/// One runtime per process: a program linked against `libcudart.so.13` that `dlopen`s
/// `libcudart.so.12` (`tests/c/one_runtime.c`) allocates with one, copies and frees with the
/// other, shares a stream and the thread's last error between them, and has exactly one session
/// in `vgpu stat` while it runs. Run from a deployment-shaped folder: both libraries and
/// `libvgpu.so` side by side, found through `LD_LIBRARY_PATH` alone.
#[test]
fn libcudart_12_and_13_in_one_process_share_one_runtime() {
    use std::io::{BufRead, BufReader, Write};
    if require("gcc", "needed to compile tests/c").is_none() {
        return;
    }
    let Some(root) = headers() else { return };
    let tmp = TempDir::new("one-runtime");
    let libdir = tmp.path().join("lib");
    std::fs::create_dir_all(&libdir).expect("lib folder");
    let [l12, l13] = libraries();
    let runtime = l13.parent().expect("library folder").join("libvgpu.so");
    for (from, name) in [(l12, "libcudart.so.12"), (l13, "libcudart.so.13"), (&runtime, "libvgpu.so")] {
        std::fs::copy(from, libdir.join(name)).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    }
    let bin = tmp.path().join("one_runtime");
    let o = run(Command::new("gcc")
        .args(["-O1", "-g", "-Wall", "-Werror", "-std=gnu11", "-o"])
        .arg(&bin)
        .arg("-I")
        .arg(root.join("13/include"))
        .arg(workspace().join("tests/c/one_runtime.c"))
        .arg(libdir.join("libcudart.so.13"))
        .args(["-ldl", "-lpthread"]));
    assert!(o.status.success(), "gcc one_runtime.c failed:\n{}", String::from_utf8_lossy(&o.stderr));

    let m = mediator();
    let mut child = Command::new(&bin)
        .env("LD_LIBRARY_PATH", &libdir)
        .env("VGPU_SOCKET", m.socket())
        .env("VGPU_LOG", "warn")
        .env_remove("LD_PRELOAD")
        .env_remove("VGPU_RUNTIME")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting one_runtime");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("reading one_runtime's stdout");
    if !line.starts_with("ready ") {
        let o = child.wait_with_output().expect("one_runtime");
        panic!("one_runtime did not get ready: {line:?}\nstderr:\n{}", String::from_utf8_lossy(&o.stderr));
    }
    let pid = u64::from(child.id());
    let report = stat(&m);
    let mine: Vec<_> = report["sessions"].as_array().expect("sessions").iter().filter(|s| s["guest_pid"].as_u64() == Some(pid)).collect();
    assert_eq!(mine.len(), 1, "sessions of pid {pid} (libcudart.so.12 + .13 loaded): {report:#}");

    child.stdin.take().expect("stdin").write_all(b"go\n").expect("go-ahead");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("the rest of stdout");
    let o = child.wait_with_output().expect("one_runtime");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && rest.contains("ok one_runtime (CUDART_VERSION 13000)"), "{}\n{rest}\n{err}", o.status);
}

/// Without `libvgpu.so` anywhere, the first call fails with `cudaErrorInitializationError` and a
/// message that names the fix; loading alone still runs nothing.
#[test]
fn a_missing_runtime_is_an_error_that_names_the_fix() {
    if require("gcc", "needed to compile tests/c").is_none() {
        return;
    }
    let Some(root) = headers() else { return };
    let tmp = TempDir::new("no-runtime");
    let libdir = tmp.path().join("lib");
    std::fs::create_dir_all(&libdir).expect("lib folder");
    // A copy, not a symlink: the folder of its real file has no libvgpu.so either.
    std::fs::copy(&libraries()[1], libdir.join("libcudart.so.13")).expect("copying libcudart.so.13");
    let src = tmp.path().join("count.c");
    std::fs::write(
        &src,
        "#include <cuda_runtime_api.h>\n#include <stdio.h>\nint main(void) { int n = -1; cudaError_t e = cudaGetDeviceCount(&n); \
         printf(\"%d %d\\n\", (int)e, n); return 0; }\n",
    )
    .expect("writing count.c");
    let bin = tmp.path().join("count");
    let o =
        run(Command::new("gcc").arg("-o").arg(&bin).arg("-I").arg(root.join("13/include")).arg(&src).arg(libdir.join("libcudart.so.13")));
    assert!(o.status.success(), "gcc count.c: {}", String::from_utf8_lossy(&o.stderr));
    let o =
        run(Command::new(&bin).env("LD_LIBRARY_PATH", &libdir).env_remove("LD_PRELOAD").env_remove("VGPU_RUNTIME").env("VGPU_LOG", "warn"));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(out.trim(), "3 -1", "cudaErrorInitializationError expected; stderr:\n{err}");
    assert!(err.contains("libvgpu.so") && err.contains("cargo build -p vgpu-runtime") && err.contains("VGPU_RUNTIME"), "{err}");
}

/// Missing libraries: `vgpu run` refuses with the command that builds them.
#[test]
fn vgpu_run_names_the_fix_when_the_libraries_are_missing() {
    let tmp = TempDir::new("cudart-missing");
    let o = run(Command::new(vgpu_exe()).args(["run", "--lib-dir"]).arg(tmp.path()).args(["--", "true"]).env_remove("VGPU_LIB_DIR"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("libvgpu_cudart12.so") && err.contains("cargo build -p vgpu-cudart12 -p vgpu-cudart13"), "{err}");
}
