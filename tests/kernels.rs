//! The project's own CUDA programs (`tests/cu/*.cu`), compiled at test time with NVIDIA's nvcc 13
//! from PyPI (`scripts/setup-nvcc.sh`: nothing of NVIDIA's is committed) with `-cudart shared`,
//! linked against our `libcudart.so.13`, and run on a fresh `emu` mediator that writes a launch log
//! (`vgpu serve --launch-log PATH`, one JSON line per launch: `vgpu_tests::mediator_with_launch_log`).
//!
//! Each program prints an `EXPECT-LAUNCH` line per launch it makes, with the parameter bytes built
//! in its own host code (`tests/cu/cu_check.h`); this test asserts that the launches the mediator
//! logged are exactly those: kernel name, grid, block, dynamic shared memory, parameter bytes and
//! graph replays, in order within each stream (a program's stream labels map one-to-one onto the
//! mediator's stream ids). emu runs the kernels (its PTX interpreter), so each program checks its
//! results in its own host code (`CU_REQUIRE`) and prints a `RESULT` checksum per checked buffer;
//! this test asserts that the programs exit 0 having checked them, and that the binaries import the
//! registration entry points from version node `libcudart.so.13`, as against NVIDIA's library.
//!
//! Without nvcc (no PyPI) the tests say so and skip, except under CI (`CI` set), where they fail.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use vgpu_tests::nvcc::nvcc;
use vgpu_tests::*;

/// How long one program may run on emu before it counts as hung.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Our `libcudart.so.13` (`libvgpu_cudart13.so`), built by cargo for this profile next to the
/// `vgpu` binary.
fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let exe = vgpu_exe();
        let dir = exe.parent().expect("the vgpu binary has a folder");
        if let Some(cargo) = std::env::var_os("CARGO") {
            let profile = match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev".to_string(),
                Some(p) => p.to_string(),
            };
            let st = Command::new(cargo)
                .args(["build", "--quiet", "-p", "vgpu-cudart13", "-p", "vgpu-runtime", "--profile", &profile, "--manifest-path"])
                .arg(workspace().join("Cargo.toml"))
                .arg("--target-dir")
                .arg(dir.parent().expect("the profile folder has a parent"))
                .status()
                .expect("running cargo build for libcudart.so.13");
            assert!(st.success(), "cargo build -p vgpu-cudart13 failed: {st}");
        }
        let lib = dir.join("libvgpu_cudart13.so");
        assert!(lib.is_file(), "{} was not built", lib.display());
        lib
    })
}

/// A folder to link against and run from: `libcudart.so` and `libcudart.so.13` → our library,
/// `libcudadevrt.a` → the one that comes with nvcc (nvcc links it by default).
fn lib_dir(nvcc: &Path, tmp: &Path) -> PathBuf {
    let dir = tmp.join("lib");
    std::fs::create_dir_all(&dir).expect("lib folder");
    let ours = std::fs::canonicalize(library()).expect("canonical library path");
    for name in ["libcudart.so", "libcudart.so.13"] {
        std::os::unix::fs::symlink(&ours, dir.join(name)).expect("symlink");
    }
    let devrt = nvcc.parent().and_then(Path::parent).map(|r| r.join("lib/libcudadevrt.a")).expect("nvcc's folder");
    assert!(devrt.is_file(), "{} missing (scripts/setup-nvcc.sh unpacks it)", devrt.display());
    std::os::unix::fs::symlink(&devrt, dir.join("libcudadevrt.a")).expect("symlink");
    dir
}

/// The flags of the suite (also in scripts/gpu-check.sh).
const NVCC_FLAGS: &[&str] = &[
    "-O2",
    "-std=c++17",
    "-cudart",
    "shared",
    "-gencode",
    "arch=compute_80,code=sm_80",
    "-gencode",
    "arch=compute_90,code=[sm_90,compute_90]",
];

/// Compile `tests/cu/<src>` into `<tmp>/<name>`, linked against `lib`.
fn compile(nvcc: &Path, src: &str, tmp: &Path, lib: &Path) -> PathBuf {
    let name = Path::new(src).file_stem().and_then(|s| s.to_str()).expect("source name");
    let bin = tmp.join(name);
    let o = Command::new(nvcc)
        .args(NVCC_FLAGS)
        .arg("-I")
        .arg(workspace().join("tests/cu"))
        .arg("-L")
        .arg(lib)
        .arg("-o")
        .arg(&bin)
        .arg(workspace().join("tests/cu").join(src))
        .output()
        .expect("running nvcc");
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        let mut missing: Vec<&str> =
            err.lines().filter_map(|l| l.split("undefined reference to `").nth(1)).filter_map(|s| s.split('\'').next()).collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            panic!("nvcc {src}: our libcudart.so.13 ({}) does not export: {}", library().display(), missing.join(" "));
        }
        panic!("nvcc {src} failed:\n{err}");
    }
    bin
}

/// The binary needs `libcudart.so.13` and imports the registration and launch entry points from
/// its version node, exactly as a program built against NVIDIA's library does.
fn check_imports(bin: &Path, also: &[&str]) {
    let o = Command::new("readelf").args(["-d", "-W"]).arg(bin).output().expect("readelf (binutils)");
    let dynamic = String::from_utf8_lossy(&o.stdout);
    assert!(dynamic.contains("Shared library: [libcudart.so.13]"), "{}: not linked against libcudart.so.13:\n{dynamic}", bin.display());
    let o = Command::new("nm").arg("-D").arg(bin).output().expect("nm (binutils)");
    let syms = String::from_utf8_lossy(&o.stdout);
    let mut want = vec!["__cudaRegisterFatBinary", "__cudaRegisterFatBinaryEnd", "__cudaRegisterFunction", "__cudaUnregisterFatBinary"];
    want.extend_from_slice(also);
    for name in want {
        let versioned = format!(" U {name}@libcudart.so.13");
        assert!(syms.lines().any(|l| l.trim_end().ends_with(versioned.trim_start())), "{}: no import {versioned}:\n{syms}", bin.display());
    }
}

/// One launch: what a program expects and what the mediator logged.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Launch {
    kernel: String,
    grid: [u64; 3],
    block: [u64; 3],
    shared: u64,
    params: String,
    graph: bool,
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [gx, gy, gz] = self.grid;
        let [bx, by, bz] = self.block;
        write!(
            f,
            "{} grid={gx},{gy},{gz} block={bx},{by},{bz} shared={} params={}{}",
            self.kernel,
            self.shared,
            self.params,
            if self.graph { " graph=1" } else { "" }
        )
    }
}

fn dims(s: &str, line: &str) -> [u64; 3] {
    let v: Vec<u64> = s.split(',').map(|x| x.parse().unwrap_or_else(|_| panic!("bad dims in {line}"))).collect();
    assert_eq!(v.len(), 3, "bad dims in {line}");
    [v[0], v[1], v[2]]
}

/// The `EXPECT-LAUNCH` lines of a program's output: `(stream label, launch)`.
fn expected(stdout: &str) -> Vec<(String, Launch)> {
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with("EXPECT-LAUNCH ")) {
        let mut f = line.split(' ').skip(1);
        let kernel = f.next().unwrap_or_else(|| panic!("no kernel in {line}")).to_string();
        let mut kv = BTreeMap::new();
        for x in f {
            let (k, v) = x.split_once('=').unwrap_or_else(|| panic!("bad field {x:?} in {line}"));
            kv.insert(k, v);
        }
        let get = |k: &str| *kv.get(k).unwrap_or_else(|| panic!("no {k}= in {line}"));
        let launch = Launch {
            kernel,
            grid: dims(get("grid"), line),
            block: dims(get("block"), line),
            shared: get("shared").parse().unwrap_or_else(|_| panic!("bad shared in {line}")),
            params: get("params").to_ascii_lowercase(),
            graph: kv.get("graph") == Some(&"1"),
        };
        out.push((get("stream").to_string(), launch));
    }
    out
}

/// One line of the launch log.
struct Logged {
    session: u64,
    seq: u64,
    stream: u64,
    launch: Launch,
}

fn logged(records: &[Value]) -> Vec<Logged> {
    let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("launch log: no number {k} in {v}"));
    let arr = |v: &Value, k: &str| {
        let a: Vec<u64> =
            v[k].as_array().unwrap_or_else(|| panic!("launch log: no array {k} in {v}")).iter().filter_map(Value::as_u64).collect();
        assert_eq!(a.len(), 3, "launch log: {k} in {v}");
        [a[0], a[1], a[2]]
    };
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_else(|| panic!("launch log: no {k} in {v}")).to_string();
    records
        .iter()
        .map(|v| Logged {
            session: num(v, "session"),
            seq: num(v, "seq"),
            stream: num(v, "stream"),
            launch: Launch {
                kernel: text(v, "kernel"),
                grid: arr(v, "grid"),
                block: arr(v, "block"),
                shared: num(v, "shared"),
                params: text(v, "params").to_ascii_lowercase(),
                graph: v["graph"].as_bool().unwrap_or_else(|| panic!("launch log: no graph in {v}")),
            },
        })
        .collect()
}

/// The logged launches equal the expected ones, stream by stream: each program label maps to one
/// mediator stream (and no two labels to the same one) whose launches, in log order, are exactly
/// the label's. Returns a description of the first difference.
fn compare(prog: &str, want: &[(String, Launch)], got: &[Logged]) -> Result<(), String> {
    let sessions: std::collections::BTreeSet<u64> = got.iter().map(|l| l.session).collect();
    if sessions.len() > 1 {
        return Err(format!("{prog}: launches from {} sessions {sessions:?}; expected one", sessions.len()));
    }
    let mut labels: Vec<(&str, Vec<&Launch>)> = Vec::new();
    for (label, l) in want {
        match labels.iter_mut().find(|(x, _)| x == label) {
            Some((_, v)) => v.push(l),
            None => labels.push((label, vec![l])),
        }
    }
    let mut by_seq: Vec<&Logged> = got.iter().collect();
    by_seq.sort_by_key(|l| l.seq);
    let mut streams: Vec<(u64, Vec<&Launch>)> = Vec::new();
    for l in by_seq {
        match streams.iter_mut().find(|(s, _)| *s == l.stream) {
            Some((_, v)) => v.push(&l.launch),
            None => streams.push((l.stream, vec![&l.launch])),
        }
    }
    let mut errs = Vec::new();
    if want.len() != got.len() {
        errs.push(format!("{prog}: {} launches expected, {} logged", want.len(), got.len()));
    }
    let mut used = vec![false; streams.len()];
    for (label, seq) in &labels {
        if let Some(i) = (0..streams.len()).find(|&i| !used[i] && streams[i].1 == *seq) {
            used[i] = true;
            continue;
        }
        // No stream matches: describe the closest (most leading launches in common).
        let common = |v: &Vec<&Launch>| v.iter().zip(seq.iter()).take_while(|(a, b)| a == b).count();
        let best = (0..streams.len()).filter(|&i| !used[i]).max_by_key(|&i| (common(&streams[i].1), streams[i].1.len() == seq.len()));
        let mut msg = format!("{prog}: stream {label:?}: no logged stream has its {} launches in order", seq.len());
        match best {
            Some(i) => {
                let (id, v) = &streams[i];
                let k = common(v);
                msg.push_str(&format!("; closest is mediator stream {id} ({} launches), equal up to #{k}:", v.len()));
                msg.push_str(&format!("\n    expected #{k}: {}", seq.get(k).map_or("(none)".to_string(), |l| l.to_string())));
                msg.push_str(&format!("\n    logged   #{k}: {}", v.get(k).map_or("(none)".to_string(), |l| l.to_string())));
            }
            None => msg.push_str("; no unmatched stream left in the log"),
        }
        errs.push(msg);
    }
    for (i, (id, v)) in streams.iter().enumerate() {
        if !used[i] && !errs.iter().any(|e| e.contains(&format!("mediator stream {id} "))) {
            errs.push(format!("{prog}: mediator stream {id}: {} unexpected launches, first: {}", v.len(), v[0]));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n"))
    }
}

/// Run `bin` with `env`, output into files under `dir`; kill it after `timeout`.
/// Returns (exit code, stdout, stderr).
fn run_with_timeout(bin: &Path, args: &[&str], env: &[(&str, &Path)], dir: &Path, timeout: Duration) -> (Option<i32>, String, String) {
    let name = bin.file_name().and_then(|n| n.to_str()).unwrap_or("prog");
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("LD_PRELOAD")
        .env("VGPU_LOG", std::env::var("VGPU_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for the program") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // std has no timed wait for a child.
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(st) => (st.code(), out, err),
        None => panic!("{name} hung: killed after {timeout:?}\nstdout (tail):\n{}\nstderr:\n{err}", tail(&out, 40)),
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Build `tests/cu/<prog>.cu`, check its imports, run it on a fresh emu mediator with a launch log,
/// and compare. emu runs the kernels: the program checks their results itself and prints a
/// `RESULT` checksum for each checked buffer, at least `min_results` of them; `imports`: entry
/// points it must import besides registration.
fn suite(prog: &str, min_results: usize, imports: &[&str]) {
    let Some(nvcc) = nvcc() else { return };
    let tmp = TempDir::new(&format!("kernels-{prog}"));
    let lib = lib_dir(nvcc, tmp.path());
    let bin = compile(nvcc, &format!("{prog}.cu"), tmp.path(), &lib);
    check_imports(&bin, imports);

    let log = tmp.path().join("launches.jsonl");
    let m = mediator_with_launch_log(&log);
    let (code, out, err) =
        run_with_timeout(&bin, &[], &[("LD_LIBRARY_PATH", &lib), ("VGPU_SOCKET", m.socket())], tmp.path(), PROGRAM_TIMEOUT);
    let show = || format!("stdout (tail):\n{}\nstderr:\n{err}", tail(&out, 30));
    assert_eq!(code, Some(0), "{prog} exited with {code:?}\n{}", show());
    assert!(out.lines().any(|l| l == format!("ok {prog}")), "{prog}: no `ok {prog}` line\n{}", show());
    assert!(out.lines().any(|l| l.starts_with("DEVICE vgpu emu")), "{prog}: did not see the emu device\n{}", show());
    // The program checked its results (CU_REQUIRE) before printing each checksum.
    let results = out.lines().filter(|l| l.starts_with("RESULT ")).count();
    assert!(results >= min_results, "{prog}: {results} checked results, expected at least {min_results}\n{}", show());

    let want = expected(&out);
    assert!(!want.is_empty(), "{prog}: no EXPECT-LAUNCH lines\n{}", show());
    // The log is complete once the program's last sync returned; allow the worker a moment anyway
    // (it writes each line when it takes the launch).
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        let got = logged(&read_launch_log(&log));
        if got.len() >= want.len() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Err(e) = compare(prog, &want, &got) {
        panic!("{e}\n{}", show());
    }
    eprintln!("{prog}: {} launches match the launch log ({} streams)", want.len(), {
        let mut l: Vec<&str> = want.iter().map(|(s, _)| s.as_str()).collect();
        l.sort_unstable();
        l.dedup();
        l.len()
    });
}

#[test]
fn params() {
    suite("params", 3, &["__cudaLaunchKernel", "__cudaGetKernel"]);
}

#[test]
fn templates() {
    suite("templates", 6, &[]);
}

#[test]
fn symbols() {
    suite("symbols", 3, &["__cudaRegisterVar", "cudaMemcpyToSymbol", "cudaMemcpyFromSymbol", "cudaGetSymbolAddress", "cudaGetSymbolSize"]);
}

#[test]
fn shared_memory() {
    suite("shared", 2, &["cudaFuncSetAttribute", "cudaFuncGetAttributes"]);
}

#[test]
fn attributes_and_occupancy() {
    suite("attrs", 4, &["cudaFuncGetAttributes", "cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags"]);
}

#[test]
fn streams_and_events() {
    suite("streams", 3, &["cudaStreamWaitEvent", "cudaEventElapsedTime"]);
}

#[test]
fn graph_capture_and_replay() {
    suite(
        "graphs",
        2,
        &["cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphLaunch", "cudaGraphExecUpdate"],
    );
}

#[test]
fn launch_forms() {
    suite("launch_forms", 2, &["cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchCooperativeKernel"]);
}

#[test]
fn many_launches() {
    suite("many_launches", 1, &[]);
}

/// Device printf reaches the program's stdout at the next synchronising call, in C's stdout
/// order: after what the host printed before the sync, before what it prints after.
#[test]
fn device_printf_reaches_stdout_at_the_sync() {
    let Some(nvcc) = nvcc() else { return };
    let tmp = TempDir::new("kernels-printf");
    let lib = lib_dir(nvcc, tmp.path());
    let bin = compile(nvcc, "printf.cu", tmp.path(), &lib);
    let m = mediator();
    let (code, out, err) =
        run_with_timeout(&bin, &[], &[("LD_LIBRARY_PATH", &lib), ("VGPU_SOCKET", m.socket())], tmp.path(), PROGRAM_TIMEOUT);
    assert_eq!(code, Some(0), "printf exited with {code:?}\n{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    let at = |l: &str| lines.iter().position(|x| *x == l).unwrap_or_else(|| panic!("no {l:?} line in:\n{out}"));
    let (before, after) = (at("host: before the sync"), at("host: after the sync"));
    let mut device: Vec<&str> = lines[before + 1..after].to_vec();
    device.sort_unstable();
    assert_eq!(
        device,
        [
            "device 7: thread 0 of block 0, 0.00 first",
            "device 7: thread 0 of block 1, 0.00 first",
            "device 7: thread 1 of block 0, 0.50 other",
            "device 7: thread 1 of block 1, 0.50 other",
        ],
        "the device's lines, between the host's:\n{out}"
    );
}

/// The GPU benchmark of scripts/gpu-check.sh builds against our library too, and on emu refuses
/// (exit 3) with a message instead of measuring nothing.
#[test]
fn gpubench_builds_and_refuses_the_emu() {
    let Some(nvcc) = nvcc() else { return };
    let tmp = TempDir::new("kernels-gpubench");
    let lib = lib_dir(nvcc, tmp.path());
    let bin = compile(nvcc, "bench/gpubench.cu", tmp.path(), &lib);
    check_imports(&bin, &["cudaGraphLaunch", "cudaMallocHost"]);
    let m = mediator();
    let (code, out, err) =
        run_with_timeout(&bin, &["--quick"], &[("LD_LIBRARY_PATH", &lib), ("VGPU_SOCKET", m.socket())], tmp.path(), PROGRAM_TIMEOUT);
    assert_eq!(code, Some(3), "gpubench on emu: {code:?}\n{out}\n{err}");
    assert!(err.contains("not a GPU: nothing to measure"), "{err}");
}

/// The comparison itself: a reordering within a stream, a changed parameter byte and a launch on
/// the wrong stream are all caught; interleaving across streams is not a difference.
#[test]
fn compare_catches_differences() {
    let l = |k: &str, p: &str| Launch { kernel: k.into(), grid: [1, 1, 1], block: [32, 1, 1], shared: 0, params: p.into(), graph: false };
    let log = |stream: u64, seq: u64, launch: Launch| Logged { session: 1, seq, stream, launch };
    let want = vec![("a".to_string(), l("k1", "00")), ("b".to_string(), l("k2", "01")), ("a".to_string(), l("k3", "02"))];
    let ok = vec![log(7, 1, l("k2", "01")), log(5, 2, l("k1", "00")), log(5, 3, l("k3", "02"))];
    compare("t", &want, &ok).unwrap();
    let reordered = vec![log(5, 1, l("k3", "02")), log(5, 2, l("k1", "00")), log(7, 3, l("k2", "01"))];
    assert!(compare("t", &want, &reordered).is_err());
    let byte = vec![log(5, 1, l("k1", "00")), log(7, 2, l("k2", "11")), log(5, 3, l("k3", "02"))];
    let e = compare("t", &want, &byte).unwrap_err();
    assert!(e.contains("params=11") && e.contains("params=01"), "{e}");
    let merged = vec![log(5, 1, l("k1", "00")), log(5, 2, l("k2", "01")), log(5, 3, l("k3", "02"))];
    assert!(compare("t", &want, &merged).is_err());
    let parsed = expected("x\nEXPECT-LAUNCH _Z1kPi grid=2,1,1 block=64,2,1 shared=16 params=0A0b stream=s graph=1\nok t\n");
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].0, "s");
    assert_eq!(parsed[0].1.grid, [2, 1, 1]);
    assert_eq!(parsed[0].1.params, "0a0b");
    assert!(parsed[0].1.graph);
}
