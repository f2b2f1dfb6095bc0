//! The parser on real nvcc output: `tests/data/*.ptx`, made by nvcc 13.0 (`-ptx
//! -arch=compute_75`) from the project's `tests/cu/*.cu` (regenerate with
//! `for f in tests/cu/*.cu; do nvcc -ptx -arch=compute_75 -o host/ptx/tests/data/$(basename $f .cu).ptx $f; done`).
//! Every module and every body parses; a few facts are checked by hand against the source.

use std::path::Path;

use vgpu_ptx::ast::{FnKind, Init, Operand, Scalar, Space, Statement};
use vgpu_ptx::{ErrorKind, Module};

fn data(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn all() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/data")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ptx"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    v.sort();
    assert!(v.len() >= 9, "{} files", v.len());
    v
}

#[test]
fn every_module_and_every_body_parses() {
    let (mut kernels, mut instrs, mut want) = (0, 0, 0);
    for (name, src) in all() {
        want += src.matches(".entry ").count();
        let m = Module::parse(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.header.version.0, 9, "{name}");
        assert!(matches!(m.header.sm(), Some(75 | 80 | 90)), "{name}: {:?}", m.header.target);
        assert_eq!(m.header.address_size, 64);
        for f in &m.functions {
            let b = m.body(f).unwrap_or_else(|e| panic!("{name} {}: {e}", f.name));
            if let Some(b) = b {
                instrs += b.statements.iter().filter(|s| matches!(s, Statement::Instr(_))).count();
            }
        }
        kernels += m.entries().count();
    }
    assert_eq!(kernels, want);
    assert!(kernels >= 25, "{kernels}");
    assert!(instrs > 700, "{instrs} instructions");
}

#[test]
fn symbols_ptx_has_its_variables_with_initializers() {
    let src = data("symbols.ptx");
    let m = Module::parse(&src).unwrap();
    let v = |n: &str| m.variables.iter().find(|v| v.name == n).unwrap_or_else(|| panic!("no {n}"));
    let coef = v("coef");
    assert_eq!((coef.space, coef.ty, coef.align, coef.size()), (Space::Const, Scalar::B8, Some(4), 256));
    assert_eq!(v("cscale").init, Some(vec![Init::Int(3)]));
    assert_eq!(v("tick").init, Some(vec![Init::Int(1234605616436508552)]));
    let table = v("table");
    assert_eq!((table.space, table.size()), (Space::Global, 1024));
    let init = table.init.as_ref().unwrap();
    assert_eq!(init.len(), 40);
    assert_eq!(init[6], Init::Int(240));

    let k = m.function("_Z11use_symbolsPfi").unwrap();
    assert_eq!(k.kind, FnKind::Entry);
    assert_eq!(k.params.len(), 2);
    assert_eq!((k.params[0].ty, k.params[1].ty), (Scalar::U64, Scalar::U32));
    let b = m.body(k).unwrap().unwrap();
    assert!(b.regs.iter().any(|r| r.name == "rd" && r.count == Some(12) && r.ty == Scalar::B64));
    let instrs: Vec<_> = b.statements.iter().filter_map(|s| if let Statement::Instr(i) = s { Some(i) } else { None }).collect();
    let first = instrs[0];
    assert_eq!((first.opcode.as_str(), first.modifiers.as_slice()), ("ld", &["param".to_string(), "u64".to_string()][..]));
    assert_eq!(
        first.operands[1],
        Operand::Address { base: Some(Box::new(Operand::Symbol("_Z11use_symbolsPfi_param_0".into()))), offset: 0 }
    );
    let bra = instrs.iter().find(|i| i.opcode == "bra").unwrap();
    assert_eq!(bra.guard, Some((false, "%p1".into())), "the register as declared, with its %");
    assert_eq!(bra.operands, vec![Operand::Symbol("$L__BB0_2".into())]);
    assert!(b.statements.contains(&Statement::Label("$L__BB0_2".into())));
    let atom = instrs.iter().find(|i| i.opcode == "atom").unwrap();
    assert_eq!(atom.modifiers, ["global", "add", "u32"]);
    assert_eq!(atom.operands[2], Operand::Int(1));
    // `and.b32 %r9, %r8, -64;`
    assert!(instrs.iter().any(|i| i.opcode == "and" && i.operands.get(2) == Some(&Operand::Int(-64))));
}

#[test]
fn extern_shared_arrays_are_unsized() {
    let src = data("shared.ptx");
    let m = Module::parse(&src).unwrap();
    let ext: Vec<_> = m.variables.iter().filter(|v| v.space == Space::Shared && v.dims == [None]).collect();
    assert!(!ext.is_empty(), "{:?}", m.variables);
    assert!(ext.iter().all(|v| v.size() == 0));
}

#[test]
fn errors_name_the_line_and_what_was_expected() {
    let good = data("symbols.ptx");
    // A broken instruction deep in a body: the module parses (bodies are skipped), the body names it.
    let bad = good.replacen("mad.lo.s32 \t%r1, %r3, %r4, %r5;", "mad.lo.s32 \t%r1, %r3 %r4, %r5;", 1);
    assert_ne!(bad, good);
    let line = bad.lines().position(|l| l.contains("%r3 %r4")).unwrap() as u32 + 1;
    let m = Module::parse(&bad).unwrap();
    let e = m.body(m.function("_Z11use_symbolsPfi").unwrap()).unwrap_err();
    assert_eq!((e.line, e.kind), (line, ErrorKind::Syntax));
    assert!(e.message.contains("expected `,` or `;`") && e.text.contains("mad.lo.s32"), "{e}");

    let e = Module::parse(".version 6.0\n.target sm_75\n").err().unwrap();
    assert_eq!((e.line, e.kind), (1, ErrorKind::Unsupported));
    let e = Module::parse(".version 9.0\n.target sm_75\n.address_size 32\n").err().unwrap();
    assert_eq!((e.line, e.kind), (3, ErrorKind::Unsupported));
    let e = Module::parse(".version 9.0\n.entry k(\n.param .u32 a\n{ ret; }").err().unwrap();
    assert_eq!(e.line, 4, "{e}");
    let e = Module::parse(".version 9.0\n.entry k() { ret; ").err().unwrap();
    assert!(e.message.contains("end of input"), "{e}");
    let e = Module::parse("").err().unwrap();
    assert!(e.message.contains(".version"), "{e}");
    let e = Module::parse(".version 9.0 \n # \n").err().unwrap();
    assert_eq!(e.line, 2);
}

/// Hostile input: every truncation and a few thousand byte mutations of real PTX never panic
/// (the fuzz target `ptx` explores further).
#[test]
fn mutated_ptx_never_panics() {
    let src = data("templates.ptx");
    let bytes = src.as_bytes();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let check = |b: &[u8]| {
        if let Ok(s) = std::str::from_utf8(b) {
            if let Ok(m) = Module::parse(s) {
                for f in &m.functions {
                    let _ = m.body(f);
                }
            }
        }
    };
    for cut in (0..bytes.len()).step_by(7) {
        check(&bytes[..cut]);
    }
    let alphabet = b"{}[]();,.%@!|<>-+_0x\n ";
    for _ in 0..3000 {
        let mut b = bytes.to_vec();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % b.len();
            b[i] = alphabet[(next() as usize) % alphabet.len()];
        }
        check(&b);
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = format!(".version 9.0\n.entry k() {{ {} }}", "{".repeat(10_000) + &"}".repeat(10_000));
    let m = Module::parse(&deep).unwrap();
    let e = m.body(&m.functions[0]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

/// The instruction families of ptx-surface.md that `tests/cu/surface.cu` produces all parse,
/// with their operand shapes: calls with argument lists, shuffles with a predicate output,
/// vector loads, printf's call.
#[test]
fn the_surface_kernels_have_their_instruction_families() {
    let mut ops = std::collections::BTreeSet::new();
    let mut saw_call_lists = false;
    let mut saw_vector = false;
    for (name, src) in all().into_iter().filter(|(n, _)| n.starts_with("surface_")) {
        let m = Module::parse(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
        for f in &m.functions {
            let Some(b) = m.body(f).unwrap() else { continue };
            let mut stack = vec![&b];
            while let Some(b) = stack.pop() {
                for s in &b.statements {
                    match s {
                        Statement::Block(inner) => stack.push(inner),
                        Statement::Instr(i) => {
                            ops.insert(i.opcode.clone());
                            if i.opcode == "call" && i.operands.iter().any(|o| matches!(o, Operand::List(_))) {
                                saw_call_lists = true;
                            }
                            if i.operands.iter().any(|o| matches!(o, Operand::Vector(v) if v.len() == 4)) {
                                saw_vector = true;
                            }
                        }
                        Statement::Label(_) => {}
                    }
                }
            }
        }
    }
    for want in [
        "shfl", "vote", "atom", "red", "dp4a", "bar", "call", "ex2", "popc", "brev", "clz", "cvta", "selp", "trap", "div", "rem", "mad",
        "fma",
    ] {
        if want == "red" && !ops.contains("red") {
            continue; // nvcc may choose atom for an unused result
        }
        assert!(ops.contains(want), "no {want} in {ops:?}");
    }
    assert!(saw_call_lists && saw_vector);
}

/// Every function of every nvcc module lowers: every opcode, modifier, register, label and
/// symbol of real nvcc 13 output is known to vgpu.
#[test]
fn every_function_lowers() {
    let mut n = 0;
    for (name, src) in all() {
        let m = Module::parse(&src).unwrap();
        for f in m.functions.iter().filter(|f| f.body.is_some()) {
            let k = m.lower(f).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!k.insts.is_empty(), "{name} {}", f.name);
            n += 1;
        }
    }
    assert!(n >= 40, "{n} functions");
}

#[test]
fn symbols_kernel_lowers_with_its_layout() {
    use vgpu_ptx::lower::{Op, Opd};
    let src = data("symbols.ptx");
    let m = Module::parse(&src).unwrap();
    let k = m.lower(m.function("_Z11use_symbolsPfi").unwrap()).unwrap();
    assert_eq!((k.param_bytes, k.params[1].offset), (12, 8));
    let coef = m.variables.iter().position(|v| v.name == "coef").unwrap() as u32;
    assert!(k.insts.iter().any(|i| i.op == Op::Mov && i.opds.get(1) == Some(&Opd::Global(coef))));
    let bra = k.insts.iter().find(|i| i.op == Op::Bra).unwrap();
    let Opd::Label(t) = bra.opds[0] else { panic!("{bra:?}") };
    assert_eq!(k.insts[t as usize].op, Op::Ret);
}
