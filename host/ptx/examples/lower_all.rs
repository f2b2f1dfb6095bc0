//! `cargo run -p vgpu-ptx --example lower_all -- FILE.ptx...`: parse each PTX file and lower every
//! kernel with the functions it calls, as emu does at FuncGet; print a line per file and, for the
//! kernels that do not lower, the distinct errors with a count. For checking what a real
//! program's PTX (ggml-cuda, ...) needs of the interpreter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use vgpu_ptx::program::Program;

fn main() {
    let mut failed = 0;
    for path in std::env::args().skip(1) {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                println!("{path}: {e}");
                failed += 1;
                continue;
            }
        };
        let t0 = Instant::now();
        let p = match Program::parse(Arc::from(text.as_str())) {
            Ok(p) => p,
            Err(e) => {
                println!("{path}: does not parse: {e}");
                failed += 1;
                continue;
            }
        };
        let parse = t0.elapsed();
        let names: Vec<String> = p.module().entries().map(|f| f.name.clone()).collect();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        let t1 = Instant::now();
        let mut ok = 0;
        for n in &names {
            match p.entry(n) {
                Ok(_) => ok += 1,
                Err(e) => *errors.entry(format!("{:?}: {}", e.kind, e.message)).or_default() += 1,
            }
        }
        println!(
            "{path}: {} lines, {} kernels, {ok} lower, {} do not (parse {parse:?}, lower all {:?})",
            text.lines().count(),
            names.len(),
            names.len() - ok,
            t1.elapsed()
        );
        for (e, n) in &errors {
            println!("  {n:>5} x {e}");
        }
        failed += usize::from(!errors.is_empty());
    }
    std::process::exit(i32::from(failed > 0));
}
