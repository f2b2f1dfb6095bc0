//! A loaded module as a device holds it: the parsed [`Module`] (owned, shared by every launch
//! of a session, `Send + Sync`) and its functions, each lowered on first use and then kept.
//!
//! - [`Program::entry`] prepares one kernel for launching: its lowered body and every
//!   function it can reach through `call`, transitively. This is where a kernel's PTX is first
//!   read past its signature, so a device calls it when the kernel is first looked up
//!   (`cuModuleGetFunction`), and errors surface there, naming the line; a kernel never looked
//!   up is never lowered.
//! - Lowering results (errors too) are cached per function, so a function shared by many
//!   kernels is lowered once.
//! - [`Program::signature`] gives a kernel's parameter layout from its `.entry` line alone, for
//!   fat binaries that carry PTX and no cubin.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use crate::ast::{FnKind, Space};
use crate::exec::Callee;
use crate::lower::{Kernel, Op, Opd, ParamSlot};
use crate::{Error, ErrorKind, Module};

/// A function as a kernel's launch calls it.
#[derive(Clone)]
enum Target {
    Body(Arc<Kernel>),
    Printf,
    Missing,
}

/// One kernel, ready to run: see [`Entry::callees`].
pub struct Entry {
    pub kernel: Arc<Kernel>,
    /// By function index: what a `call` of it runs (`Missing` for functions it cannot reach;
    /// past its end, every function is missing).
    targets: Vec<Target>,
}

impl Entry {
    /// What [`crate::exec::Launch::functions`] takes.
    pub fn callees(&self) -> Vec<Callee<'_>> {
        self.targets
            .iter()
            .map(|t| match t {
                Target::Body(k) => Callee::Body(k),
                Target::Printf => Callee::Printf,
                Target::Missing => Callee::Missing,
            })
            .collect()
    }
}

/// A parsed module with lazily lowered functions.
pub struct Program {
    module: Module,
    lowered: Vec<OnceLock<Result<Arc<Kernel>, Error>>>,
}

impl Program {
    /// Parse `src`'s declarations (bodies are read when a kernel is first prepared).
    pub fn parse(src: Arc<str>) -> Result<Program, Error> {
        let module = Module::parse_shared(src)?;
        let lowered = (0..module.functions.len()).map(|_| OnceLock::new()).collect();
        Ok(Program { module, lowered })
    }

    pub fn module(&self) -> &Module {
        &self.module
    }

    /// The module variables a device allocates: `.global` and `.const` ones, by index in
    /// [`Module::variables`] (the index [`crate::exec::Launch::globals`] takes).
    pub fn device_variables(&self) -> impl Iterator<Item = (usize, &crate::ast::Variable)> {
        self.module.variables.iter().enumerate().filter(|(_, v)| matches!(v.space, Space::Global | Space::Const))
    }

    fn lowered(&self, i: usize) -> Result<Arc<Kernel>, Error> {
        self.lowered[i].get_or_init(|| self.module.lower(&self.module.functions[i]).map(Arc::new)).clone()
    }

    /// The kernel (`.entry`) called `name`, lowered, with every function it can call.
    pub fn entry(&self, name: &str) -> Result<Entry, Error> {
        let i = self.module.functions.iter().position(|f| f.kind == FnKind::Entry && f.name == name).ok_or_else(|| Error {
            line: 0,
            kind: ErrorKind::Syntax,
            message: format!("no kernel `{name}` in the module's PTX"),
            text: String::new(),
        })?;
        let kernel = self.lowered(i)?;
        let mut targets = vec![Target::Missing; self.module.functions.len()];
        let mut seen = BTreeSet::new();
        let mut work: Vec<u32> = calls(&kernel).collect();
        while let Some(f) = work.pop() {
            if !seen.insert(f) {
                continue;
            }
            let Some(func) = self.module.functions.get(f as usize) else { continue };
            targets[f as usize] = if func.body.is_some() {
                let k = self.lowered(f as usize)?;
                work.extend(calls(&k));
                Target::Body(k)
            } else if func.name == "vprintf" {
                Target::Printf
            } else {
                // Calling it fails at run time with an error naming it (`Callee::Missing`).
                Target::Missing
            };
        }
        // Only as long as the highest function it can call: a ggml module has thousands of
        // functions, and most kernels call none (a short table is also what each launch copies).
        let used = targets.iter().rposition(|t| !matches!(t, Target::Missing)).map_or(0, |i| i + 1);
        targets.truncate(used);
        targets.shrink_to_fit();
        Ok(Entry { kernel, targets })
    }

    /// The parameter layout of kernel `name` from its signature only (no body is read):
    /// `(slots, total bytes)`.
    pub fn signature(&self, name: &str) -> Option<Result<(Vec<ParamSlot>, u32), Error>> {
        let f = self.module.entries().find(|f| f.name == name)?;
        Some(self.module.layout(f, &f.params))
    }
}

/// The functions `k` calls (by index), with repeats.
fn calls(k: &Kernel) -> impl Iterator<Item = u32> + '_ {
    k.insts.iter().filter(|i| i.op == Op::Call).flat_map(|i| {
        i.opds.iter().filter_map(|o| match o {
            Opd::Func(f) => Some(*f),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = ".version 9.0\n.target sm_80\n.address_size 64\n\
        .extern .func (.param .b32 r) vprintf (.param .b64 f, .param .b64 a);\n\
        .global .align 4 .u32 counter = 7;\n.const .align 4 .f32 coef[4] = {1.0, 2.0, 3.0, 4.0};\n\
        .shared .align 4 .b8 tile[16];\n\
        .func (.param .b32 r) twice (.param .b32 x)\n{\n.reg .b32 %r<3>;\nld.param.b32 %r1, [x];\n\
        add.s32 %r2, %r1, %r1;\nst.param.b32 [r], %r2;\nret;\n}\n\
        .func (.param .b32 r) quad (.param .b32 x)\n{\n.reg .b32 %r<3>;\nld.param.b32 %r1, [x];\n\
        { .param .b32 a; .param .b32 b; st.param.b32 [a], %r1; call.uni (b), twice, (a); ld.param.b32 %r2, [b]; }\n\
        add.s32 %r2, %r2, %r2;\nst.param.b32 [r], %r2;\nret;\n}\n\
        .visible .entry k(.param .u64 p, .param .u32 n)\n{\n.reg .b32 %r<3>;\n.reg .b64 %rd<2>;\n\
        ld.param.u32 %r1, [n];\n{ .param .b32 a; .param .b32 b; st.param.b32 [a], %r1; call.uni (b), quad, (a); ld.param.b32 %r2, [b]; }\n\
        ld.param.u64 %rd1, [p];\nst.global.u32 [%rd1], %r2;\nret;\n}\n\
        .visible .entry broken()\n{\nfrobnicate.u32 %r1;\nret;\n}\n";

    #[test]
    fn an_entry_brings_the_functions_it_reaches_and_nothing_else_is_lowered() {
        let p = Program::parse(Arc::from(SRC)).unwrap();
        let e = p.entry("k").unwrap();
        let names: Vec<&str> = p.module().functions.iter().map(|f| f.name.as_str()).collect();
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(matches!(e.targets[at("twice")], Target::Body(_)), "reached through quad");
        assert!(matches!(e.targets[at("quad")], Target::Body(_)));
        assert!(matches!(e.targets.get(at("vprintf")), None | Some(Target::Missing)), "not called by k");
        assert!(p.lowered[at("broken")].get().is_none(), "never looked up, never lowered");
        // Run it: 5 -> quad -> 20.
        let mem = crate::mem::Allocations::default();
        let out = mem.alloc(&[0; 4]);
        let mut params = out.to_le_bytes().to_vec();
        params.extend_from_slice(&5u32.to_le_bytes());
        let callees = e.callees();
        let l = crate::exec::Launch {
            grid: [1, 1, 1],
            block: [1, 1, 1],
            params: &params,
            dynamic_shared: 0,
            globals: &[],
            budget: 10_000,
            functions: &callees,
            printf: &|_| {},
        };
        crate::exec::run(&e.kernel, &l, &mem, &|| false).unwrap();
        let mut got = [0u8; 4];
        crate::exec::Memory::read(&mem, out, &mut got).unwrap();
        assert_eq!(u32::from_le_bytes(got), 20);
    }

    #[test]
    fn errors_are_the_lookups_and_name_the_line() {
        let p = Program::parse(Arc::from(SRC)).unwrap();
        let e = p.entry("broken").err().unwrap();
        assert!(e.to_string().contains("frobnicate"), "{e}");
        assert!(e.line > 0);
        assert!(p.entry("nope").is_err());
        assert!(p.entry("twice").is_err(), "a .func is not a kernel");
    }

    #[test]
    fn signatures_and_variables_come_from_declarations() {
        let p = Program::parse(Arc::from(SRC)).unwrap();
        let (slots, total) = p.signature("k").unwrap().unwrap();
        assert_eq!(slots.iter().map(|s| (s.offset, s.size)).collect::<Vec<_>>(), [(0, 8), (8, 4)]);
        assert_eq!(total, 12);
        let vars: Vec<(&str, Vec<u8>)> = p.device_variables().map(|(_, v)| (v.name.as_str(), v.init_bytes(&|_| None))).collect();
        assert_eq!(vars[0], ("counter", 7u32.to_le_bytes().to_vec()));
        assert_eq!(vars[1].0, "coef");
        assert_eq!(&vars[1].1[4..8], &2.0f32.to_le_bytes());
        assert_eq!(vars.len(), 2, "tile is shared, not a device variable");
    }
}
