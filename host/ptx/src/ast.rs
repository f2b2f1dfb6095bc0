//! What the parser produces: a module's header, variables and function signatures at once, and
//! each function's body on demand ([`crate::Module::body`]). Names and modifiers are still
//! text here; the lowering (next stage) resolves them into a compact form.

/// A state space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    Global,
    Shared,
    Const,
    Local,
    Param,
    Reg,
}

impl Space {
    pub fn from_directive(d: &str) -> Option<Space> {
        Some(match d {
            "global" => Space::Global,
            "shared" => Space::Shared,
            "const" => Space::Const,
            "local" => Space::Local,
            "param" => Space::Param,
            "reg" => Space::Reg,
            _ => return None,
        })
    }
}

/// A scalar type: `.u32`, `.f16x2`, `.pred`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    B8,
    B16,
    B32,
    B64,
    B128,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    Bf16,
    Bf16x2,
    F32,
    F64,
    Pred,
}

impl Scalar {
    pub fn from_directive(d: &str) -> Option<Scalar> {
        use Scalar::*;
        Some(match d {
            "b8" => B8,
            "b16" => B16,
            "b32" => B32,
            "b64" => B64,
            "b128" => B128,
            "u8" => U8,
            "u16" => U16,
            "u32" => U32,
            "u64" => U64,
            "s8" => S8,
            "s16" => S16,
            "s32" => S32,
            "s64" => S64,
            "f16" => F16,
            "f16x2" => F16x2,
            "bf16" => Bf16,
            "bf16x2" => Bf16x2,
            "f32" => F32,
            "f64" => F64,
            "pred" => Pred,
            _ => return None,
        })
    }

    /// Size in bytes (`.pred`: 1, as a byte in memory).
    #[inline]
    pub fn size(self) -> u32 {
        use Scalar::*;
        match self {
            B8 | U8 | S8 | Pred => 1,
            B16 | U16 | S16 | F16 | Bf16 => 2,
            B32 | U32 | S32 | F32 | F16x2 | Bf16x2 => 4,
            B64 | U64 | S64 | F64 => 8,
            B128 => 16,
        }
    }
}

/// `.visible`, `.extern`, `.weak` or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Linkage {
    #[default]
    Local,
    Visible,
    Extern,
    Weak,
}

/// A variable: module-level (`.global`, `.const`, `.shared`), a function's `.local`/`.shared`,
/// or a parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Variable {
    pub linkage: Linkage,
    pub space: Space,
    pub align: Option<u32>,
    /// `.v2`/`.v4` element count, 1 for a scalar.
    pub vector: u32,
    pub ty: Scalar,
    /// `.ptr` attributes of a kernel parameter (`.ptr .global .align 4`), kept as seen.
    pub ptr: Option<(Option<Space>, Option<u32>)>,
    pub name: String,
    /// Array dimensions; `None` for `[]` (an unsized `extern .shared` array).
    pub dims: Vec<Option<u64>>,
    pub init: Option<Vec<Init>>,
    pub line: u32,
}

impl Variable {
    /// Bytes the variable occupies (0 for an unsized array).
    pub fn size(&self) -> u64 {
        let mut n = u64::from(self.ty.size()) * u64::from(self.vector);
        for d in &self.dims {
            match d {
                Some(d) => n = n.saturating_mul(*d),
                None => return 0,
            }
        }
        n
    }

    /// The variable's initial bytes (`size()` of them; zero where the initializer is shorter).
    /// `symbol` gives the device address of a module symbol named by an address initializer
    /// (`.u64 p = generic(table)`); one it does not know reads as 0. An initializer longer than
    /// the variable is cut at its size, as `size()` is what is allocated. Integer elements are
    /// truncated to the element's width; float elements are stored in the element's format
    /// (f16/bf16/f32 rounded to nearest, f64 as written).
    pub fn init_bytes(&self, symbol: &dyn Fn(&str) -> Option<u64>) -> Vec<u8> {
        let size = usize::try_from(self.size()).unwrap_or(0);
        let mut bytes = vec![0u8; size];
        let el = self.ty.size() as usize;
        for (k, init) in self.init.iter().flatten().enumerate() {
            let Some(at) = k.checked_mul(el).filter(|&at| at + el <= size) else { break };
            let raw = match init {
                Init::Int(x) => *x as u64,
                Init::Float(b) => {
                    let f = f64::from_bits(*b);
                    match self.ty {
                        Scalar::F32 | Scalar::B32 | Scalar::U32 | Scalar::S32 => u64::from((f as f32).to_bits()),
                        Scalar::F16 => u64::from(half::f16::from_f64(f).to_bits()),
                        Scalar::Bf16 => u64::from(half::bf16::from_f64(f).to_bits()),
                        _ => *b,
                    }
                }
                Init::Symbol(name, off) => symbol(name).map_or(0, |a| a.wrapping_add(*off as u64)),
            };
            let le = raw.to_le_bytes();
            bytes[at..at + el.min(8)].copy_from_slice(&le[..el.min(8)]);
        }
        bytes
    }
}

/// One initializer element.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Int(i128),
    /// f64 bits.
    Float(u64),
    /// The address of a symbol (`generic(sym)` or `sym`), plus an offset.
    Symbol(String, i64),
}

/// `.entry` (a kernel) or `.func`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FnKind {
    Entry,
    Func,
}

/// A function's signature; its body stays unparsed until asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    pub kind: FnKind,
    pub linkage: Linkage,
    pub name: String,
    pub returns: Vec<Variable>,
    pub params: Vec<Variable>,
    /// Performance directives: `maxntid`, `reqntid`, `minnctapersm`, `maxnreg`, ... with values.
    pub directives: Vec<(String, Vec<u64>)>,
    /// Token range of the body (inside the braces); `None` for a declaration (`.extern .func`).
    pub body: Option<(usize, usize)>,
    pub line: u32,
}

/// A register declaration: `.reg .b32 %r<17>;` (`count` 17) or `.reg .f32 %f;` (`count` None).
#[derive(Clone, Debug, PartialEq)]
pub struct RegDecl {
    pub ty: Scalar,
    pub vector: u32,
    /// Without the `%`; see `percent`.
    pub name: String,
    /// Declared as `%name` (a register operand) rather than `name` (nvcc's `temp_param_reg`,
    /// named like a symbol): `%p0` and `p0` are different names.
    pub percent: bool,
    pub count: Option<u32>,
    pub line: u32,
}

/// An instruction operand.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A register, without `%` (`r1`, `tid.x`).
    Reg(String),
    /// An integer immediate (sign applied).
    Int(i64),
    /// A float immediate, as f64 bits.
    Float(u64),
    /// A symbol or label name.
    Symbol(String),
    /// `[base + offset]`: base a register or symbol, or an absolute address.
    Address { base: Option<Box<Operand>>, offset: i64 },
    /// `{a, b, c, d}`.
    Vector(Vec<Operand>),
    /// `%p|%q` (setp's two predicate outputs).
    PredPair(String, String),
    /// `!%p` as a source predicate.
    Not(Box<Operand>),
    /// `_`: a discarded output.
    Sink,
    /// `(a, b)`: a call's argument or return list.
    List(Vec<Operand>),
}

/// One instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct Instruction {
    /// `@%p` / `@!%p`: (negated, predicate register).
    pub guard: Option<(bool, String)>,
    pub opcode: String,
    /// The dotted parts after the opcode, in order (`ld.global.nc.f32` → `global`, `nc`, `f32`).
    pub modifiers: Vec<String>,
    pub operands: Vec<Operand>,
    pub line: u32,
}

/// One statement of a body.
#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    Label(String),
    Instr(Instruction),
    /// `{` ... `}`: a nested scope (its declarations are local to it).
    Block(Body),
}

/// A parsed function body.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Body {
    pub regs: Vec<RegDecl>,
    /// `.local`, `.shared` and `.param` variables declared in the body.
    pub vars: Vec<Variable>,
    pub statements: Vec<Statement>,
}
