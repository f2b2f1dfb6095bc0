//! # vgpu-ptx
//!
//! PTX, the virtual ISA every fat binary nvcc makes carries (and the only code in Ollama's CUDA 13
//! build), read on the host so that `emu` can execute kernels. The stages, each a module with
//! its own tests, as in wasmtime/cranelift:
//! 1. [`lex`]: tokens (`logos`), comments and whitespace skipped;
//! 2. [`parse`] → [`ast`]: [`Module::parse`] reads the header, module variables and every
//!    function's signature in one pass and only *skips* bodies (brace matching); [`Module::body`]
//!    parses one body when it is first needed. A ggml build carries millions of PTX lines and
//!    most kernels never run;
//! 3. [`lower`]: [`Module::lower`] turns one function into a [`lower::Kernel`]: opcodes and
//!    modifiers as enums (an unknown one is refused at load time), registers as slots, labels
//!    as instruction indices, parameters, variables and functions resolved to offsets and
//!    indices;
//! 4. [`exec`]: [`exec::run`] executes a kernel over a grid on the CPU: 32-lane warps with a
//!    PC per lane (the lanes at the lowest PC run together), barriers, shared/local/param
//!    memory here and global memory through the device's [`exec::Memory`], atomics, shuffles
//!    and votes, integer and float arithmetic, conversions. Half and bfloat16 conversions
//!    and packed-pair arithmetic, calls of device functions (`Callee`) and `printf`,
//!    `mma.sync` (s8/u8, f16, bf16, tf32 shapes) and `ldmatrix` with the ISA's fragment
//!    layouts, counted and reducing barriers, `redux`, `match`. Not yet: textures, surfaces,
//!    the `mma` forms listed in `exec::mma`; each is an [`exec::ExecError::Unsupported`]
//!    naming the line, never a wrong result;
//! 5. [`program`]: a loaded module as a device holds it (`emu` in the mediator): kernels
//!    lowered on first lookup with every function they reach.
//!
//! The input is untrusted (it comes from the guest): every error is an [`Error`] naming the
//! line, its text and what was expected; nothing panics, recursion is bounded, sizes are
//! checked.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod ast;
pub mod exec;
pub mod lex;
pub mod lower;
pub mod mem;
pub mod parse;
pub mod program;

use std::sync::Arc;

use ast::{Body, FnKind, Function, Variable};
use parse::{Cursor, Lines};

/// What kind of problem an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not PTX (or not PTX as the ISA defines it).
    Syntax,
    /// PTX that vgpu does not implement.
    Unsupported,
    /// A size past what vgpu accepts.
    Limit,
}

/// A PTX error at a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("PTX line {line}: {message} (in: {text})")]
pub struct Error {
    /// 1-based line.
    pub line: u32,
    pub kind: ErrorKind,
    pub message: String,
    /// The line's text (trimmed, at most 120 characters).
    pub text: String,
}

/// `.version`, `.target`, `.address_size`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub version: (u32, u32),
    /// `sm_75`, and options such as `texmode_independent`.
    pub target: Vec<String>,
    pub address_size: u32,
}

impl Header {
    /// The compute capability of `.target sm_XY[a|f]` as `X * 10 + Y`.
    pub fn sm(&self) -> Option<u32> {
        self.target.iter().find_map(|t| {
            let d = t.strip_prefix("sm_")?;
            d.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse().ok()
        })
    }
}

/// The largest PTX text accepted (offsets are `u32`; a whole ggml module is well below).
pub const MAX_SOURCE: usize = 1 << 31;

/// A parsed module: header, variables and signatures; bodies on demand.
pub struct Module {
    src: Arc<str>,
    lines: Lines,
    pub header: Header,
    pub variables: Vec<Variable>,
    pub functions: Vec<Function>,
    /// Module-scope names for lowering, built on first use.
    names: std::sync::OnceLock<std::collections::HashMap<String, lower::Opd>>,
}

impl Module {
    /// Read `src`'s declarations. Bodies are skipped, not checked: [`Module::body`] checks one.
    pub fn parse(src: &str) -> Result<Module, Error> {
        Module::parse_shared(Arc::from(src))
    }

    /// [`Module::parse`] of text the module keeps (no copy).
    pub fn parse_shared(src: Arc<str>) -> Result<Module, Error> {
        if src.len() > MAX_SOURCE {
            return Err(Error {
                line: 0,
                kind: ErrorKind::Limit,
                message: format!("PTX of {} bytes (at most 2 GiB)", src.len()),
                text: String::new(),
            });
        }
        let lines = Lines::new(&src);
        let (header, variables, functions) = {
            let mut c = Cursor::new(&src, &lines, 0, src.len());
            parse::module(&mut c)?
        };
        Ok(Module { src, lines, header, variables, functions, names: std::sync::OnceLock::new() })
    }

    /// The trimmed text of 1-based `line` (at most 120 characters), for error messages.
    pub fn line_text(&self, line: u32) -> String {
        self.src.lines().nth(line.saturating_sub(1) as usize).unwrap_or("").trim().chars().take(120).collect()
    }

    /// The function called `name`.
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// The kernels (`.entry`).
    pub fn entries(&self) -> impl Iterator<Item = &Function> {
        self.functions.iter().filter(|f| f.kind == FnKind::Entry)
    }

    /// Parse `f`'s body (`None` for a declaration without one).
    pub fn body(&self, f: &Function) -> Result<Option<Body>, Error> {
        let Some((start, end)) = f.body else { return Ok(None) };
        if start > end || end > self.src.len() {
            return Err(Error { line: f.line, kind: ErrorKind::Syntax, message: "body out of range".into(), text: String::new() });
        }
        let mut c = Cursor::new(&self.src, &self.lines, start, end);
        parse::body(&mut c, 0).map(Some)
    }
}
