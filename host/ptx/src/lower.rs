//! Lowering: one function's parsed body → a compact decoded form the interpreter runs without
//! looking at text again.
//!
//! - every opcode is an [`Op`] and every modifier a [`Mod`] (types as [`Mod::Ty`]); an opcode
//!   or modifier vgpu does not know is an [`ErrorKind::Unsupported`] error naming the line, at
//!   load time, never a wrong result later;
//! - registers are slots ([`RegId`]): `.reg .b32 %r<17>` declares `%r0`..`%r16`; a nested
//!   block's declarations get their own slots (nvcc's call sequences declare `param0`,
//!   `retval0`, `temp_param_reg` in a `{ }` per call);
//! - labels are instruction indices; branch targets must exist;
//! - symbols are resolved: the function's parameters to byte offsets in its parameter buffer
//!   (laid out with each one's alignment, as the launch packs them), module variables to their
//!   index, `.local` variables to offsets in the thread's frame, `.shared` ones (the function's
//!   and the module's) to offsets in the block's static shared memory, called functions to
//!   their index;
//! - special registers (`%tid.x`, `%laneid`, ...) are [`Special`]s.
//!
//! Semantic checks that need the opcode's meaning (operand counts and kinds per instruction)
//! are the interpreter's, per [`Op`]; here every name is known and every reference resolved.

use std::collections::HashMap;

use crate::ast::{Body, Function, Operand, RegDecl, Scalar, Space, Statement, Variable};
use crate::{Error, ErrorKind, Module};

/// A register slot of a [`Kernel`].
pub type RegId = u32;

/// The most register slots one function may declare (nvcc's largest ggml kernels use a few
/// thousand names; this bounds what a hostile module can make the host allocate per thread).
pub const MAX_REGS: u32 = 1 << 16;
/// The most bytes of `.local` frame per thread.
pub const MAX_LOCAL: u64 = 512 << 10;
/// The most bytes of static `.shared` per block.
pub const MAX_SHARED: u64 = 228 << 10;
/// The most bytes of parameters (CUDA 12.1+: 32764).
pub const MAX_PARAMS: u64 = 32764;

macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($v:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($v),* }
        impl $name {
            /// The value for a PTX word, if vgpu knows it.
            pub fn from_word(w: &str) -> Option<$name> {
                match w { $($s => Some($name::$v),)* _ => None }
            }
            /// The PTX word.
            pub fn word(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
        }
    };
}

words! {
    /// A base opcode.
    Op {
        Mov = "mov", Ld = "ld", St = "st", Ldu = "ldu", Cvta = "cvta", Cvt = "cvt", Add = "add", Sub = "sub",
        Mul = "mul", Mad = "mad", Mul24 = "mul24", Mad24 = "mad24", Sad = "sad", Fma = "fma", Div = "div",
        Rem = "rem", Abs = "abs", Neg = "neg", Min = "min", Max = "max", And = "and", Or = "or", Xor = "xor",
        Not = "not", Cnot = "cnot", Shl = "shl", Shr = "shr", Shf = "shf", Bfi = "bfi", Bfe = "bfe",
        Bmsk = "bmsk", Brev = "brev", Clz = "clz", Popc = "popc", Bfind = "bfind", Prmt = "prmt",
        Setp = "setp", Selp = "selp", Set = "set", Slct = "slct", Bra = "bra", Ret = "ret", Exit = "exit",
        Trap = "trap", Call = "call", Shfl = "shfl", Vote = "vote", Activemask = "activemask",
        Bar = "bar", Barrier = "barrier", Membar = "membar", Fence = "fence", Atom = "atom", Red = "red",
        Ex2 = "ex2", Lg2 = "lg2", Sin = "sin", Cos = "cos", Rcp = "rcp", Rsqrt = "rsqrt", Sqrt = "sqrt",
        Tanh = "tanh", Copysign = "copysign", Testp = "testp", Dp4a = "dp4a", Dp2a = "dp2a",
        Mma = "mma", Ldmatrix = "ldmatrix", Griddepcontrol = "griddepcontrol", Nanosleep = "nanosleep",
        Prefetch = "prefetch", Isspacep = "isspacep", Match = "match", Redux = "redux",
    }
}

words! {
    /// A modifier word other than a type.
    Word {
        // state spaces and address conversion
        Global = "global", Shared = "shared", Local = "local", Param = "param", Const = "const",
        To = "to", Nc = "nc", Volatile = "volatile", Weak = "weak", Relaxed = "relaxed", Acquire = "acquire",
        Release = "release", AcqRel = "acq_rel", Sc = "sc", Cta = "cta", Gpu = "gpu", Sys = "sys",
        Cluster = "cluster", Gl = "gl", Ca = "ca", Cg = "cg", Cs = "cs", Lu = "lu", Cv = "cv", Wb = "wb",
        Wt = "wt", V2 = "v2", V4 = "v4", V8 = "v8",
        // arithmetic modes
        Lo = "lo", Hi = "hi", Wide = "wide", Rn = "rn", Rz = "rz", Rm = "rm", Rp = "rp", Rni = "rni",
        Rzi = "rzi", Rmi = "rmi", Rpi = "rpi", Rna = "rna", Ftz = "ftz", Sat = "sat", Approx = "approx",
        Full = "full", Relu = "relu", Clamp = "clamp", Wrap = "wrap", Shiftamt = "shiftamt",
        // comparisons and boolean ops
        Eq = "eq", Ne = "ne", Lt = "lt", Le = "le", Gt = "gt", Ge = "ge", Ls = "ls", Hs = "hs",
        Equ = "equ", Neu = "neu", Ltu = "ltu", Leu = "leu", Gtu = "gtu", Geu = "geu", Num = "num", Nan = "nan",
        And = "and", Or = "or", Xor = "xor",
        // atomics
        AddOp = "add", Inc = "inc", Dec = "dec", Min = "min", Max = "max", Exch = "exch", Cas = "cas",
        // control, warp and block
        Uni = "uni", Sync = "sync", Aligned = "aligned", Arrive = "arrive", Red = "red", Warp = "warp",
        Bfly = "bfly", Up = "up", Down = "down", Idx = "idx", Any = "any", All = "all", Ballot = "ballot",
        Popc = "popc", Wait = "wait", LaunchDependents = "launch_dependents", L = "l", R = "r",
        // mma and ldmatrix
        Row = "row", Col = "col", M8n8k16 = "m8n8k16", M8n8k4 = "m8n8k4", M16n8k8 = "m16n8k8",
        M16n8k16 = "m16n8k16", M16n8k32 = "m16n8k32", M8n8 = "m8n8", X1 = "x1", X2 = "x2", X4 = "x4",
        Trans = "trans", Satfinite = "satfinite", Tf32 = "tf32", E4m3x2 = "e4m3x2", E5m2x2 = "e5m2x2",
        // prmt modes, testp
        F4e = "f4e", B4e = "b4e", Rc8 = "rc8", Ecl = "ecl", Ecr = "ecr", Rc16 = "rc16", Finite = "finite",
        Infinite = "infinite", Number = "number", Notanumber = "notanumber", Normal = "normal",
        Subnormal = "subnormal", L2 = "L2",
    }
}

/// One resolved modifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mod {
    Ty(Scalar),
    W(Word),
}

fn modifier(w: &str) -> Option<Mod> {
    if let Some(t) = Scalar::from_directive(w) {
        return Some(Mod::Ty(t));
    }
    Word::from_word(w).map(Mod::W)
}

/// A special register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    Laneid,
    Warpid,
    Nwarpid,
    Smid,
    Nsmid,
    LanemaskEq,
    LanemaskLe,
    LanemaskLt,
    LanemaskGe,
    LanemaskGt,
    Clock,
    Clock64,
    Globaltimer,
    Envreg(u8),
}

fn special(name: &str) -> Option<Special> {
    let axis = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((base, a)) = name.split_once('.') {
        let a = axis(a)?;
        return Some(match base {
            "tid" => Special::Tid(a),
            "ntid" => Special::Ntid(a),
            "ctaid" => Special::Ctaid(a),
            "nctaid" => Special::Nctaid(a),
            _ => return None,
        });
    }
    Some(match name {
        "laneid" => Special::Laneid,
        "warpid" => Special::Warpid,
        "nwarpid" => Special::Nwarpid,
        "smid" => Special::Smid,
        "nsmid" => Special::Nsmid,
        "lanemask_eq" => Special::LanemaskEq,
        "lanemask_le" => Special::LanemaskLe,
        "lanemask_lt" => Special::LanemaskLt,
        "lanemask_ge" => Special::LanemaskGe,
        "lanemask_gt" => Special::LanemaskGt,
        "clock" => Special::Clock,
        "clock64" => Special::Clock64,
        "globaltimer" => Special::Globaltimer,
        _ => {
            let n: u8 = name.strip_prefix("envreg")?.parse().ok()?;
            if n > 31 {
                return None;
            }
            Special::Envreg(n)
        }
    })
}

/// A resolved operand.
#[derive(Clone, Debug, PartialEq)]
pub enum Opd {
    Reg(RegId),
    /// An integer immediate's bits.
    Imm(u64),
    /// A float immediate, f64 bits.
    Float(u64),
    Special(Special),
    /// An instruction index (branch target).
    Label(u32),
    /// Byte offset into the function's parameter buffer.
    Param(u32),
    /// Byte offset into a `.func`'s return buffer.
    Return(u32),
    /// Byte offset in the thread's call area: the `.param` variables a body declares for the
    /// arguments and return values of its calls.
    CallParam(u32),
    /// A module variable (`.global`, `.const`), by index in [`Module::variables`].
    Global(u32),
    /// Byte offset in the block's static shared memory.
    Shared(u32),
    /// Byte offset in the thread's local frame.
    Local(u32),
    /// A function of the module, by index in [`Module::functions`].
    Func(u32),
    /// `[base + offset]`; `base` None for an absolute address.
    Addr(Option<Box<Opd>>, i64),
    Vector(Vec<Opd>),
    PredPair(RegId, RegId),
    Not(Box<Opd>),
    Sink,
    List(Vec<Opd>),
}

/// One decoded instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct Inst {
    pub op: Op,
    /// `@p` / `@!p`: (negated, predicate slot).
    pub guard: Option<(bool, RegId)>,
    pub mods: Vec<Mod>,
    pub opds: Vec<Opd>,
    pub line: u32,
}

/// A register slot's declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    pub ty: Scalar,
    pub vector: u32,
}

/// A parameter of the function, placed in its parameter buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSlot {
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub align: u32,
}

/// A lowered function.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<ParamSlot>,
    /// Bytes of the parameter buffer.
    pub param_bytes: u32,
    /// A `.func`'s return values, placed in its return buffer.
    pub returns: Vec<ParamSlot>,
    pub regs: Vec<Reg>,
    pub insts: Vec<Inst>,
    /// The body's `.param` variables (call arguments and returns), in declaration order.
    pub call_params: Vec<Variable>,
    /// Bytes of the per-thread call area they are laid out in ([`Opd::CallParam`] offsets).
    pub call_param_bytes: u32,
    /// Bytes of static shared memory per block (module and function `.shared`).
    pub shared_bytes: u32,
    /// Bytes of local frame per thread.
    pub local_bytes: u32,
    /// Whether the kernel uses dynamic shared memory (an `extern .shared` array): it starts at
    /// `dynamic_shared_offset` (after the static part, aligned to 16).
    pub dynamic_shared: bool,
    pub dynamic_shared_offset: u32,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn natural_align(v: &Variable) -> u64 {
    u64::from(v.align.unwrap_or(v.ty.size() * v.vector.max(1)).max(1))
}

struct Scope {
    regs: HashMap<String, RegId>,
    vars: HashMap<String, Opd>,
}

struct Lowerer<'m> {
    m: &'m Module,
    f: &'m Function,
    k: Kernel,
    scopes: Vec<Scope>,
    labels: HashMap<String, u32>,
    shared_next: u64,
    local_next: u64,
    /// Module-level names: variables and functions.
    /// The module's variables (not `.shared`) and functions by name ([`Module::names`]).
    module_names: &'m HashMap<String, Opd>,
}

impl<'m> Lowerer<'m> {
    fn error(&self, line: u32, kind: ErrorKind, message: String) -> Error {
        Error { line, kind, message: format!("{}: {message}", self.f.name), text: self.m.line_text(line) }
    }

    fn declare_reg(&mut self, d: &RegDecl) -> Result<(), Error> {
        // Scope keys keep the sigil: `%p0` (a register) and `p0` (a symbol-like register or a
        // variable) are different names.
        let stem = if d.percent { format!("%{}", d.name) } else { d.name.clone() };
        let names: Vec<String> = match d.count {
            Some(n) => (0..n).map(|i| format!("{stem}{i}")).collect(),
            None => vec![stem],
        };
        if self.k.regs.len() as u64 + names.len() as u64 > u64::from(MAX_REGS) {
            return Err(self.error(d.line, ErrorKind::Limit, format!("more than {MAX_REGS} registers")));
        }
        for n in names {
            let id = self.k.regs.len() as RegId;
            self.k.regs.push(Reg { ty: d.ty, vector: d.vector });
            if let Some(s) = self.scopes.last_mut() {
                s.regs.insert(n, id);
            }
        }
        Ok(())
    }

    fn declare_var(&mut self, v: &Variable) -> Result<(), Error> {
        let a = natural_align(v);
        let opd = match v.space {
            Space::Local => {
                let at = align_up(self.local_next, a);
                self.local_next = at + v.size();
                if self.local_next > MAX_LOCAL {
                    return Err(self.error(v.line, ErrorKind::Limit, format!("more than {MAX_LOCAL} bytes of .local")));
                }
                Opd::Local(at as u32)
            }
            Space::Shared => self.place_shared(v)?,
            Space::Param => {
                let at = align_up(u64::from(self.k.call_param_bytes), a);
                let end = at + v.size();
                if end > MAX_PARAMS {
                    return Err(self.error(v.line, ErrorKind::Limit, format!("more than {MAX_PARAMS} bytes of call parameters")));
                }
                self.k.call_param_bytes = end as u32;
                self.k.call_params.push(v.clone());
                Opd::CallParam(at as u32)
            }
            other => return Err(self.error(v.line, ErrorKind::Unsupported, format!("a {other:?} variable inside a function"))),
        };
        if let Some(s) = self.scopes.last_mut() {
            s.vars.insert(v.name.clone(), opd);
        }
        Ok(())
    }

    fn place_shared(&mut self, v: &Variable) -> Result<Opd, Error> {
        if v.dims.contains(&None) {
            // `extern .shared .b8 x[]`: the dynamic part, placed after the static part.
            self.k.dynamic_shared = true;
            return Ok(Opd::Shared(u32::MAX));
        }
        let at = align_up(self.shared_next, natural_align(v));
        self.shared_next = at + v.size();
        if self.shared_next > MAX_SHARED {
            return Err(self.error(v.line, ErrorKind::Limit, format!("more than {MAX_SHARED} bytes of static .shared")));
        }
        Ok(Opd::Shared(at as u32))
    }

    fn lookup_reg(&self, name: &str) -> Option<RegId> {
        self.scopes.iter().rev().find_map(|s| s.regs.get(name).copied())
    }

    /// The register `%name`.
    fn reg(&self, name: &str, line: u32) -> Result<RegId, Error> {
        self.lookup_reg(&format!("%{name}")).ok_or_else(|| self.error(line, ErrorKind::Syntax, format!("undeclared register %{name}")))
    }

    fn symbol(&self, name: &str, line: u32) -> Result<Opd, Error> {
        if let Some(r) = self.lookup_reg(name) {
            return Ok(Opd::Reg(r));
        }
        if let Some(v) = self.scopes.iter().rev().find_map(|s| s.vars.get(name)) {
            return Ok(v.clone());
        }
        if let Some(&l) = self.labels.get(name) {
            return Ok(Opd::Label(l));
        }
        if let Some(p) = self.k.params.iter().find(|p| p.name == name) {
            return Ok(Opd::Param(p.offset));
        }
        if let Some(p) = self.k.returns.iter().find(|p| p.name == name) {
            return Ok(Opd::Return(p.offset));
        }
        if let Some(o) = self.module_names.get(name) {
            return Ok(o.clone());
        }
        Err(self.error(line, ErrorKind::Syntax, format!("unknown symbol {name}")))
    }

    fn operand(&self, o: &Operand, line: u32) -> Result<Opd, Error> {
        Ok(match o {
            Operand::Reg(r) => match special(r) {
                Some(s) if self.lookup_reg(&format!("%{r}")).is_none() => Opd::Special(s),
                _ => Opd::Reg(self.reg(r, line)?),
            },
            Operand::Int(v) => Opd::Imm(*v as u64),
            Operand::Float(b) => Opd::Float(*b),
            Operand::Symbol(s) => self.symbol(s, line)?,
            Operand::Address { base, offset } => {
                let b = match base {
                    Some(b) => Some(Box::new(self.operand(b, line)?)),
                    None => None,
                };
                Opd::Addr(b, *offset)
            }
            Operand::Vector(v) => Opd::Vector(v.iter().map(|o| self.operand(o, line)).collect::<Result<_, _>>()?),
            Operand::PredPair(a, b) => {
                let r = |n: &str| self.lookup_reg(n).ok_or_else(|| self.error(line, ErrorKind::Syntax, format!("undeclared register {n}")));
                Opd::PredPair(r(a)?, r(b)?)
            }
            Operand::Not(o) => Opd::Not(Box::new(self.operand(o, line)?)),
            Operand::Sink => Opd::Sink,
            Operand::List(v) => Opd::List(v.iter().map(|o| self.operand(o, line)).collect::<Result<_, _>>()?),
        })
    }

    /// Pass 1: label positions (instruction indices over the flattened body).
    fn collect_labels(&mut self, b: &Body, next: &mut u32) -> Result<(), Error> {
        for s in &b.statements {
            match s {
                Statement::Label(l) => {
                    if self.labels.insert(l.clone(), *next).is_some() {
                        return Err(self.error(self.f.line, ErrorKind::Syntax, format!("label {l} defined twice")));
                    }
                }
                Statement::Instr(_) => *next += 1,
                Statement::Block(inner) => self.collect_labels(inner, next)?,
            }
        }
        Ok(())
    }

    /// Pass 2: declarations and instructions, scope by scope.
    fn lower_body(&mut self, b: &Body) -> Result<(), Error> {
        self.scopes.push(Scope { regs: HashMap::new(), vars: HashMap::new() });
        for d in &b.regs {
            self.declare_reg(d)?;
        }
        for v in &b.vars {
            self.declare_var(v)?;
        }
        for s in &b.statements {
            match s {
                Statement::Label(_) => {}
                Statement::Block(inner) => self.lower_body(inner)?,
                Statement::Instr(i) => {
                    let op = Op::from_word(&i.opcode)
                        .ok_or_else(|| self.error(i.line, ErrorKind::Unsupported, format!("the instruction {}", i.opcode)))?;
                    let mods = i
                        .modifiers
                        .iter()
                        .map(|w| {
                            modifier(w)
                                .ok_or_else(|| self.error(i.line, ErrorKind::Unsupported, format!("the modifier .{w} of {}", i.opcode)))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let guard = match &i.guard {
                        Some((neg, p)) => Some((
                            *neg,
                            self.lookup_reg(p).ok_or_else(|| self.error(i.line, ErrorKind::Syntax, format!("undeclared register {p}")))?,
                        )),
                        None => None,
                    };
                    let opds = i.operands.iter().map(|o| self.operand(o, i.line)).collect::<Result<Vec<_>, _>>()?;
                    self.k.insts.push(Inst { op, guard, mods, opds, line: i.line });
                }
            }
        }
        self.scopes.pop();
        Ok(())
    }
}

impl Module {
    /// Lower the function `f` (parsing its body).
    pub fn lower(&self, f: &Function) -> Result<Kernel, Error> {
        let body = self.body(f)?.ok_or_else(|| Error {
            line: f.line,
            kind: ErrorKind::Syntax,
            message: format!("{} is declared without a body", f.name),
            text: self.line_text(f.line),
        })?;
        let (params, at) = self.layout(f, &f.params)?;
        let (returns, _) = self.layout(f, &f.returns)?;
        let module_names = self.names();
        let k = Kernel {
            name: f.name.clone(),
            params,
            param_bytes: at,
            returns,
            regs: Vec::new(),
            insts: Vec::new(),
            call_params: Vec::new(),
            call_param_bytes: 0,
            shared_bytes: 0,
            local_bytes: 0,
            dynamic_shared: false,
            dynamic_shared_offset: 0,
        };
        let mut l = Lowerer {
            m: self,
            f,
            k,
            scopes: vec![Scope { regs: HashMap::new(), vars: HashMap::new() }],
            labels: HashMap::new(),
            shared_next: 0,
            local_next: 0,
            module_names,
        };
        // Module `.shared` variables: per block, laid out first.
        for v in self.variables.iter().filter(|v| v.space == Space::Shared) {
            let o = l.place_shared(v)?;
            l.scopes[0].vars.insert(v.name.clone(), o);
        }
        let mut n = 0;
        l.collect_labels(&body, &mut n)?;
        l.lower_body(&body)?;
        let mut k = l.k;
        k.shared_bytes = l.shared_next as u32;
        k.local_bytes = l.local_next as u32;
        k.dynamic_shared_offset = align_up(l.shared_next, 16) as u32;
        // The dynamic part's placeholder becomes its offset.
        let dyn_at = k.dynamic_shared_offset;
        for i in &mut k.insts {
            for o in &mut i.opds {
                fix_dynamic(o, dyn_at);
            }
        }
        Ok(k)
    }
}

impl Module {
    /// The module-scope names a body can use: `.global`/`.const` variables and functions, built
    /// once per module (a ggml module has thousands of functions; lowering each kernel would
    /// otherwise rebuild it).
    fn names(&self) -> &HashMap<String, Opd> {
        self.names.get_or_init(|| {
            let mut m = HashMap::new();
            for (i, v) in self.variables.iter().enumerate() {
                if v.space != Space::Shared {
                    m.insert(v.name.clone(), Opd::Global(i as u32));
                }
            }
            for (i, g) in self.functions.iter().enumerate() {
                m.insert(g.name.clone(), Opd::Func(i as u32));
            }
            m
        })
    }

    /// Parameters (or return values) placed one after another, each at its alignment.
    pub(crate) fn layout(&self, f: &Function, list: &[Variable]) -> Result<(Vec<ParamSlot>, u32), Error> {
        let mut out = Vec::new();
        let mut at = 0u64;
        for p in list {
            let a = natural_align(p);
            at = align_up(at, a);
            let size = p.size();
            out.push(ParamSlot { name: p.name.clone(), offset: at as u32, size: size as u32, align: a as u32 });
            at += size;
            if at > MAX_PARAMS {
                return Err(Error {
                    line: p.line,
                    kind: ErrorKind::Limit,
                    message: format!("{}: more than {MAX_PARAMS} bytes of parameters", f.name),
                    text: self.line_text(p.line),
                });
            }
        }
        Ok((out, at as u32))
    }
}

fn fix_dynamic(o: &mut Opd, at: u32) {
    match o {
        Opd::Shared(v) if *v == u32::MAX => *v = at,
        Opd::Addr(Some(b), _) | Opd::Not(b) => fix_dynamic(b, at),
        Opd::Vector(v) | Opd::List(v) => v.iter_mut().for_each(|o| fix_dynamic(o, at)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for w in ["mov", "mma", "griddepcontrol"] {
            assert_eq!(Op::from_word(w).map(Op::word), Some(w));
        }
        assert_eq!(modifier("u32"), Some(Mod::Ty(Scalar::U32)));
        assert_eq!(modifier("ftz"), Some(Mod::W(Word::Ftz)));
        assert_eq!(modifier("bogus"), None);
        assert_eq!(special("tid.y"), Some(Special::Tid(1)));
        assert_eq!(special("envreg2"), Some(Special::Envreg(2)));
        assert_eq!(special("envreg99"), None);
        assert_eq!(special("r1"), None);
    }

    #[test]
    fn a_small_kernel_lowers_to_slots_offsets_and_indices() {
        let src = ".version 9.0\n.target sm_90\n.address_size 64\n\
            .shared .align 4 .b8 tile[64];\n.extern .shared .align 16 .b8 dyn[];\n\
            .visible .entry k(.param .u32 n, .param .u64 p, .param .align 8 .b8 s[12])\n{\n\
            .reg .pred %p<2>;\n.reg .b32 %r<3>;\n.local .align 4 .b8 frame[24];\n\
            ld.param.u32 %r1, [n];\nmov.u32 %r2, %tid.x;\nsetp.ge.u32 %p1, %r2, %r1;\n@%p1 bra DONE;\n\
            st.shared.u32 [tile+4], %r2;\nst.shared.u32 [dyn], %r2;\nst.local.u32 [frame+8], %r2;\n\
            DONE:\nret;\n}\n";
        let m = Module::parse(src).unwrap();
        let k = m.lower(&m.functions[0]).unwrap();
        let offs: Vec<_> = k.params.iter().map(|p| (p.offset, p.size)).collect();
        assert_eq!(offs, [(0, 4), (8, 8), (16, 12)]);
        assert_eq!(k.param_bytes, 28);
        assert_eq!(k.regs.len(), 5);
        assert_eq!((k.shared_bytes, k.dynamic_shared, k.dynamic_shared_offset, k.local_bytes), (64, true, 64, 24));
        assert_eq!(k.insts[0].opds[1], Opd::Addr(Some(Box::new(Opd::Param(0))), 0));
        assert_eq!(k.insts[1].opds[1], Opd::Special(Special::Tid(0)));
        assert_eq!(k.insts[3].op, Op::Bra);
        assert_eq!(k.insts[3].guard, Some((false, 1)));
        assert_eq!(k.insts[3].opds, [Opd::Label(7)]);
        assert_eq!(k.insts[4].opds[0], Opd::Addr(Some(Box::new(Opd::Shared(0))), 4));
        assert_eq!(k.insts[5].opds[0], Opd::Addr(Some(Box::new(Opd::Shared(64))), 0));
        assert_eq!(k.insts[6].opds[0], Opd::Addr(Some(Box::new(Opd::Local(0))), 8));
        assert_eq!(k.insts[2].mods, [Mod::W(Word::Ge), Mod::Ty(Scalar::U32)]);
    }

    #[test]
    fn unknown_names_are_errors_at_their_line() {
        let base = ".version 9.0\n.target sm_90\n.address_size 64\n.entry k()\n{\n.reg .b32 %r<2>;\n";
        let check = |body: &str, kind: ErrorKind, what: &str| {
            let src = format!("{base}{body}\nret;\n}}\n");
            let m = Module::parse(&src).unwrap();
            let e = m.lower(&m.functions[0]).unwrap_err();
            assert_eq!((e.line, e.kind), (7, kind), "{e}");
            assert!(e.message.contains(what), "{e}");
        };
        check("frobnicate.u32 %r1;", ErrorKind::Unsupported, "the instruction frobnicate");
        check("add.weird.u32 %r1, %r1, 1;", ErrorKind::Unsupported, "the modifier .weird");
        check("add.u32 %r7, %r1, 1;", ErrorKind::Syntax, "undeclared register %r7");
        check("bra NOWHERE;", ErrorKind::Syntax, "unknown symbol NOWHERE");
    }
}
