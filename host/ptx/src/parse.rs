//! The parser: recursive descent over a streaming token cursor.
//!
//! [`module`] reads the header, the module variables and every function's signature, and skips
//! each body by brace matching, recording its byte range; [`body`] parses one body from that
//! range when it is first needed. So a module of millions of lines costs one lexing pass and
//! memory for its declarations only.

use logos::Logos;

use crate::ast::*;
use crate::lex::{Spanned, Tok};
use crate::{Error, ErrorKind, Header};

/// Bodies nest blocks at most this deep (nvcc emits 1-2; a hostile module is refused, not a
/// stack overflow).
const MAX_DEPTH: u32 = 64;

/// Line starts of a source, for error messages.
pub(crate) struct Lines(Vec<u32>);

impl Lines {
    pub(crate) fn new(src: &str) -> Lines {
        let mut v = vec![0u32];
        v.extend(src.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i as u32 + 1));
        Lines(v)
    }
    /// 1-based line of byte `offset`.
    pub(crate) fn line(&self, offset: u32) -> u32 {
        self.0.partition_point(|&s| s <= offset) as u32
    }
}

pub(crate) struct Cursor<'a, 'l> {
    src: &'a str,
    lines: &'l Lines,
    lex: logos::Lexer<'a, Tok<'a>>,
    base: u32,
    peeked: Option<Option<Spanned<'a>>>,
    /// Offset of the last token taken (for errors at the end of input).
    last: u32,
}

impl<'a, 'l> Cursor<'a, 'l> {
    /// A cursor over `src[start..end]`.
    pub(crate) fn new(src: &'a str, lines: &'l Lines, start: usize, end: usize) -> Cursor<'a, 'l> {
        Cursor { src, lines, lex: Tok::lexer(&src[start..end]), base: start as u32, peeked: None, last: start as u32 }
    }

    fn err(&self, at: u32, kind: ErrorKind, msg: String) -> Error {
        let line = self.lines.line(at);
        let text = self.src.lines().nth(line.saturating_sub(1) as usize).unwrap_or("").trim().chars().take(120).collect();
        Error { line, kind, message: msg, text }
    }

    fn raw_next(&mut self) -> Result<Option<Spanned<'a>>, Error> {
        match self.lex.next() {
            None => Ok(None),
            Some(r) => {
                let span = self.lex.span();
                let (start, end) = (self.base + span.start as u32, self.base + span.end as u32);
                match r {
                    Ok(tok) => Ok(Some(Spanned { tok, start, end })),
                    Err(()) => {
                        let bad: String = self.lex.slice().chars().take(20).collect();
                        Err(self.err(start, ErrorKind::Syntax, format!("cannot read {bad:?}")))
                    }
                }
            }
        }
    }

    pub(crate) fn peek(&mut self) -> Result<Option<Spanned<'a>>, Error> {
        if self.peeked.is_none() {
            let t = self.raw_next()?;
            self.peeked = Some(t);
        }
        Ok(self.peeked.flatten())
    }

    pub(crate) fn next(&mut self) -> Result<Option<Spanned<'a>>, Error> {
        let t = match self.peeked.take() {
            Some(t) => t,
            None => self.raw_next()?,
        };
        if let Some(s) = t {
            self.last = s.start;
        }
        Ok(t)
    }

    fn at(&mut self) -> u32 {
        match self.peek() {
            Ok(Some(s)) => s.start,
            _ => self.last,
        }
    }

    fn syntax(&mut self, msg: impl Into<String>) -> Error {
        let at = self.at();
        self.err(at, ErrorKind::Syntax, msg.into())
    }

    fn unsupported(&mut self, msg: impl Into<String>) -> Error {
        let at = self.at();
        self.err(at, ErrorKind::Unsupported, msg.into())
    }

    /// The next token, which must exist.
    fn take(&mut self, what: &str) -> Result<Spanned<'a>, Error> {
        match self.next()? {
            Some(t) => Ok(t),
            None => Err(self.err(self.last, ErrorKind::Syntax, format!("unexpected end of input, expected {what}"))),
        }
    }

    fn expect(&mut self, want: Tok<'static>, what: &str) -> Result<Spanned<'a>, Error> {
        let t = self.take(what)?;
        if std::mem::discriminant(&t.tok) != std::mem::discriminant(&want) {
            return Err(self.err(t.start, ErrorKind::Syntax, format!("expected {what}, found {}", describe(&t.tok))));
        }
        Ok(t)
    }

    fn eat(&mut self, want: Tok<'static>) -> Result<bool, Error> {
        if let Some(t) = self.peek()? {
            if std::mem::discriminant(&t.tok) == std::mem::discriminant(&want) {
                self.next()?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn int(&mut self, what: &str) -> Result<u64, Error> {
        let t = self.take(what)?;
        match t.tok {
            Tok::Int(v) => Ok(v),
            other => Err(self.err(t.start, ErrorKind::Syntax, format!("expected {what}, found {}", describe(&other)))),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let at = self.at();
        let v = self.int(what)?;
        u32::try_from(v).map_err(|_| self.err(at, ErrorKind::Syntax, format!("{what} {v} is out of range")))
    }

    fn ident(&mut self, what: &str) -> Result<&'a str, Error> {
        let t = self.take(what)?;
        match t.tok {
            Tok::Ident(s) => Ok(s),
            other => Err(self.err(t.start, ErrorKind::Syntax, format!("expected {what}, found {}", describe(&other)))),
        }
    }

    fn line_of(&self, offset: u32) -> u32 {
        self.lines.line(offset)
    }

    /// Skip the rest of the line of the token at `offset` (`.loc`, `.file` have no `;`).
    fn skip_line(&mut self, offset: u32) -> Result<(), Error> {
        let line = self.line_of(offset);
        while let Some(t) = self.peek()? {
            if self.line_of(t.start) != line {
                break;
            }
            self.next()?;
        }
        Ok(())
    }

    /// Skip to just past the `}` that closes an already-consumed `{`; returns the byte offset of
    /// that `}`.
    fn skip_braces(&mut self) -> Result<u32, Error> {
        let mut depth = 1u32;
        loop {
            let t = self.take("`}`")?;
            match t.tok {
                Tok::LBrace => depth += 1,
                Tok::RBrace => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(t.start);
                    }
                }
                _ => {}
            }
        }
    }
}

pub(crate) fn describe(t: &Tok<'_>) -> String {
    match t {
        Tok::Directive(d) => format!("`.{d}`"),
        Tok::Dotted(s) | Tok::Ident(s) => format!("`{s}`"),
        Tok::Reg(r) => format!("`%{r}`"),
        Tok::Int(v) => format!("the number {v}"),
        Tok::Float(_) => "a float".into(),
        Tok::Str(s) => format!("the string {s:?}"),
        other => format!("`{}`", punct(other)),
    }
}

fn punct(t: &Tok<'_>) -> &'static str {
    match t {
        Tok::Comma => ",",
        Tok::Semi => ";",
        Tok::Colon => ":",
        Tok::LParen => "(",
        Tok::RParen => ")",
        Tok::LBrace => "{",
        Tok::RBrace => "}",
        Tok::LBracket => "[",
        Tok::RBracket => "]",
        Tok::Lt => "<",
        Tok::Gt => ">",
        Tok::Plus => "+",
        Tok::Minus => "-",
        Tok::At => "@",
        Tok::Bang => "!",
        Tok::Pipe => "|",
        Tok::Eq => "=",
        Tok::Sink => "_",
        _ => "?",
    }
}

/// `MAJOR.MINOR` from the source text of a version token.
fn version(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The whole module: header, variables, function signatures (bodies skipped).
pub(crate) fn module(c: &mut Cursor<'_, '_>) -> Result<(Header, Vec<Variable>, Vec<Function>), Error> {
    let mut h = Header::default();
    let mut vars = Vec::new();
    let mut funcs = Vec::new();
    let mut linkage = Linkage::Local;
    while let Some(t) = c.next()? {
        match t.tok {
            Tok::Directive("version") => {
                let v = c.take("a version")?;
                let text = &c.src[v.start as usize..v.end as usize];
                h.version = version(text).ok_or_else(|| c.err(v.start, ErrorKind::Syntax, format!("bad .version {text:?}")))?;
                if !(7..=9).contains(&h.version.0) {
                    return Err(c.err(v.start, ErrorKind::Unsupported, format!("PTX ISA {text} (vgpu reads 7.x to 9.x)")));
                }
            }
            Tok::Directive("target") => loop {
                h.target.push(c.ident("a target")?.to_string());
                if !c.eat(Tok::Comma)? {
                    break;
                }
            },
            Tok::Directive("address_size") => {
                let at = c.at();
                h.address_size = c.u32("an address size")?;
                if h.address_size != 64 {
                    return Err(c.err(at, ErrorKind::Unsupported, format!(".address_size {} (only 64)", h.address_size)));
                }
            }
            Tok::Directive("file") | Tok::Directive("loc") => c.skip_line(t.start)?,
            Tok::Directive("section") => {
                // DWARF sections: `.section .debug_x { ... }`.
                while !c.eat(Tok::LBrace)? {
                    c.take("`{`")?;
                }
                c.skip_braces()?;
            }
            Tok::Directive("visible") => linkage = Linkage::Visible,
            Tok::Directive("extern") => linkage = Linkage::Extern,
            Tok::Directive("weak") | Tok::Directive("common") => linkage = Linkage::Weak,
            Tok::Directive("entry") | Tok::Directive("func") => {
                let kind = if t.tok == Tok::Directive("entry") { FnKind::Entry } else { FnKind::Func };
                funcs.push(function(c, kind, std::mem::take(&mut linkage), t.start)?);
            }
            Tok::Directive(d) if Space::from_directive(d).is_some() => {
                let v = variable(c, Space::from_directive(d).unwrap_or(Space::Global), std::mem::take(&mut linkage), t.start)?;
                c.expect(Tok::Semi, "`;`")?;
                vars.push(v);
            }
            Tok::Directive(d) => return Err(c.err(t.start, ErrorKind::Unsupported, format!("the module directive .{d}"))),
            other => return Err(c.err(t.start, ErrorKind::Syntax, format!("expected a directive, found {}", describe(&other)))),
        }
    }
    if h.version == (0, 0) {
        return Err(Error { line: 1, kind: ErrorKind::Syntax, message: "no .version directive".into(), text: String::new() });
    }
    Ok((h, vars, funcs))
}

/// A variable after its state-space directive: `.align N`, `.vN`, `.ptr ...`, the type, the
/// name, dimensions, an initializer (not the `;`).
fn variable(c: &mut Cursor<'_, '_>, space: Space, linkage: Linkage, start: u32) -> Result<Variable, Error> {
    let mut v = Variable {
        linkage,
        space,
        align: None,
        vector: 1,
        ty: Scalar::B8,
        ptr: None,
        name: String::new(),
        dims: Vec::new(),
        init: None,
        line: c.line_of(start),
    };
    let mut have_ty = false;
    loop {
        let t = c.take("a type or name")?;
        match t.tok {
            Tok::Directive("align") => {
                let at = c.at();
                let a = c.u32("an alignment")?;
                if a == 0 || !a.is_power_of_two() {
                    return Err(c.err(at, ErrorKind::Syntax, format!(".align {a} is not a power of two")));
                }
                if v.ptr.is_some() {
                    v.ptr = v.ptr.map(|(s, _)| (s, Some(a)));
                } else {
                    v.align = Some(a);
                }
            }
            Tok::Directive("v2") => v.vector = 2,
            Tok::Directive("v4") => v.vector = 4,
            Tok::Directive("v8") => v.vector = 8,
            Tok::Directive("ptr") => v.ptr = Some((None, None)),
            Tok::Directive(d) if v.ptr.is_some() && Space::from_directive(d).is_some() => {
                v.ptr = v.ptr.map(|(_, a)| (Space::from_directive(d), a))
            }
            Tok::Directive(d) if Scalar::from_directive(d).is_some() => {
                v.ty = Scalar::from_directive(d).unwrap_or(Scalar::B8);
                have_ty = true;
            }
            Tok::Ident(name) | Tok::Reg(name) if have_ty => {
                v.name = name.to_string();
                break;
            }
            other => return Err(c.err(t.start, ErrorKind::Syntax, format!("expected a type then a name, found {}", describe(&other)))),
        }
    }
    while c.eat(Tok::LBracket)? {
        if c.eat(Tok::RBracket)? {
            v.dims.push(None);
        } else {
            v.dims.push(Some(c.int("an array size")?));
            c.expect(Tok::RBracket, "`]`")?;
        }
    }
    if c.eat(Tok::Eq)? {
        let mut out = Vec::new();
        init(c, &mut out, 0)?;
        v.init = Some(out);
    }
    Ok(v)
}

/// An initializer: a number, a symbol (`sym`, `generic(sym)`, `sym+4`), or `{...}` of them.
fn init(c: &mut Cursor<'_, '_>, out: &mut Vec<Init>, depth: u32) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(c.unsupported("an initializer nested deeper than 64"));
    }
    if c.eat(Tok::LBrace)? {
        loop {
            init(c, out, depth + 1)?;
            if !c.eat(Tok::Comma)? {
                break;
            }
        }
        c.expect(Tok::RBrace, "`}`")?;
        return Ok(());
    }
    let neg = c.eat(Tok::Minus)?;
    let t = c.take("an initializer")?;
    let v = match t.tok {
        Tok::Int(v) => Init::Int(if neg { -i128::from(v) } else { i128::from(v) }),
        Tok::Float(b) => Init::Float(if neg { (-f64::from_bits(b)).to_bits() } else { b }),
        Tok::Ident("generic") if !neg => {
            c.expect(Tok::LParen, "`(`")?;
            let s = c.ident("a symbol")?.to_string();
            c.expect(Tok::RParen, "`)`")?;
            Init::Symbol(s, symbol_offset(c)?)
        }
        Tok::Ident(s) if !neg => Init::Symbol(s.to_string(), symbol_offset(c)?),
        other => return Err(c.err(t.start, ErrorKind::Syntax, format!("expected an initializer, found {}", describe(&other)))),
    };
    out.push(v);
    Ok(())
}

fn symbol_offset(c: &mut Cursor<'_, '_>) -> Result<i64, Error> {
    if c.eat(Tok::Plus)? {
        let at = c.at();
        let v = c.int("an offset")?;
        return i64::try_from(v).map_err(|_| c.err(at, ErrorKind::Syntax, "offset out of range".into()));
    }
    Ok(0)
}

/// A parameter list `( .param ... , ... )` (the `(` already consumed).
fn params(c: &mut Cursor<'_, '_>) -> Result<Vec<Variable>, Error> {
    let mut out = Vec::new();
    if c.eat(Tok::RParen)? {
        return Ok(out);
    }
    loop {
        let t = c.take("`.param`")?;
        let space = match t.tok {
            Tok::Directive("param") => Space::Param,
            Tok::Directive("reg") => Space::Reg,
            other => return Err(c.err(t.start, ErrorKind::Syntax, format!("expected `.param`, found {}", describe(&other)))),
        };
        out.push(variable(c, space, Linkage::Local, t.start)?);
        if c.eat(Tok::RParen)? {
            return Ok(out);
        }
        c.expect(Tok::Comma, "`,` or `)`")?;
    }
}

fn function(c: &mut Cursor<'_, '_>, kind: FnKind, linkage: Linkage, start: u32) -> Result<Function, Error> {
    let mut returns = Vec::new();
    if kind == FnKind::Func && c.eat(Tok::LParen)? {
        returns = params(c)?;
    }
    let name = c.ident("a function name")?.to_string();
    let mut f = Function { kind, linkage, name, returns, params: Vec::new(), directives: Vec::new(), body: None, line: c.line_of(start) };
    if c.eat(Tok::LParen)? {
        f.params = params(c)?;
    }
    loop {
        let t = c.take("`{` or `;`")?;
        match t.tok {
            Tok::LBrace => {
                let open = t.end as usize;
                let close = c.skip_braces()? as usize;
                f.body = Some((open, close));
                return Ok(f);
            }
            Tok::Semi => return Ok(f),
            Tok::Directive("noreturn") => f.directives.push(("noreturn".into(), Vec::new())),
            Tok::Directive(d) => {
                let mut vals = Vec::new();
                while let Some(Spanned { tok: Tok::Int(_), .. }) = c.peek()? {
                    vals.push(c.int("a value")?);
                    if !c.eat(Tok::Comma)? {
                        break;
                    }
                }
                f.directives.push((d.to_string(), vals));
            }
            other => return Err(c.err(t.start, ErrorKind::Syntax, format!("expected a function body, found {}", describe(&other)))),
        }
    }
}

/// A body (between its braces).
pub(crate) fn body(c: &mut Cursor<'_, '_>, depth: u32) -> Result<Body, Error> {
    if depth > MAX_DEPTH {
        return Err(c.unsupported("blocks nested deeper than 64"));
    }
    let mut b = Body::default();
    while let Some(t) = c.next()? {
        match t.tok {
            Tok::RBrace if depth > 0 => return Ok(b),
            Tok::LBrace => b.statements.push(Statement::Block(body(c, depth + 1)?)),
            Tok::Directive("reg") => reg_decl(c, &mut b.regs, t.start)?,
            Tok::Directive(d @ ("local" | "shared" | "param" | "global" | "const")) => {
                let v = variable(c, Space::from_directive(d).unwrap_or(Space::Local), Linkage::Local, t.start)?;
                c.expect(Tok::Semi, "`;`")?;
                b.vars.push(v);
            }
            Tok::Directive("loc") | Tok::Directive("file") => c.skip_line(t.start)?,
            Tok::Directive("pragma") => {
                c.take("a pragma")?;
                c.expect(Tok::Semi, "`;`")?;
            }
            Tok::Ident(l) if c.peek()?.is_some_and(|n| n.tok == Tok::Colon) => {
                c.next()?;
                b.statements.push(Statement::Label(l.to_string()));
            }
            Tok::At => {
                let neg = c.eat(Tok::Bang)?;
                let p = c.take("a predicate")?;
                // The register's name as declared: `%p`, or `p` (declared without `%`, as in
                // cub's inline PTX).
                let p = match p.tok {
                    Tok::Reg(p) => format!("%{p}"),
                    Tok::Ident(p) => p.to_string(),
                    _ => {
                        return Err(c.err(p.start, ErrorKind::Syntax, format!("expected a predicate register, found {}", describe(&p.tok))))
                    }
                };
                let op = c.take("an instruction")?;
                let mut i = instruction(c, op)?;
                i.guard = Some((neg, p));
                b.statements.push(Statement::Instr(i));
            }
            Tok::Dotted(_) | Tok::Ident(_) => {
                let i = instruction(c, t)?;
                b.statements.push(Statement::Instr(i));
            }
            Tok::Directive(d) => return Err(c.err(t.start, ErrorKind::Unsupported, format!("the directive .{d} in a function body"))),
            other => return Err(c.err(t.start, ErrorKind::Syntax, format!("expected an instruction, found {}", describe(&other)))),
        }
    }
    if depth > 0 {
        return Err(c.syntax("unexpected end of the body, expected `}`"));
    }
    Ok(b)
}

/// `.reg .b32 %r<17>;`, `.reg .pred %p, %q;`, `.reg .v4 .f32 %v;`.
fn reg_decl(c: &mut Cursor<'_, '_>, out: &mut Vec<RegDecl>, start: u32) -> Result<(), Error> {
    let mut vector = 1;
    let ty = loop {
        let t = c.take("a register type")?;
        match t.tok {
            Tok::Directive("v2") => vector = 2,
            Tok::Directive("v4") => vector = 4,
            Tok::Directive(d) if Scalar::from_directive(d).is_some() => break Scalar::from_directive(d).unwrap_or(Scalar::B32),
            other => return Err(c.err(t.start, ErrorKind::Syntax, format!("expected a register type, found {}", describe(&other)))),
        }
    };
    loop {
        let t = c.take("a register name")?;
        // `%r` names, and plain ones (nvcc declares `.reg .b32 temp_param_reg;` around calls).
        let (Tok::Reg(name) | Tok::Ident(name)) = t.tok else {
            return Err(c.err(t.start, ErrorKind::Syntax, format!("expected a register name, found {}", describe(&t.tok))));
        };
        let count = if c.eat(Tok::Lt)? {
            let n = c.u32("a register count")?;
            c.expect(Tok::Gt, "`>`")?;
            Some(n)
        } else {
            None
        };
        let percent = matches!(t.tok, Tok::Reg(_));
        out.push(RegDecl { ty, vector, name: name.to_string(), percent, count, line: c.line_of(start) });
        if !c.eat(Tok::Comma)? {
            break;
        }
    }
    c.expect(Tok::Semi, "`;`")?;
    Ok(())
}

fn instruction(c: &mut Cursor<'_, '_>, op: Spanned<'_>) -> Result<Instruction, Error> {
    let text = match op.tok {
        Tok::Dotted(s) | Tok::Ident(s) => s,
        other => return Err(c.err(op.start, ErrorKind::Syntax, format!("expected an instruction, found {}", describe(&other)))),
    };
    let mut parts = text.split('.');
    let opcode = parts.next().unwrap_or("").to_string();
    let modifiers = parts.map(str::to_string).collect();
    let mut i = Instruction { guard: None, opcode, modifiers, operands: Vec::new(), line: c.line_of(op.start) };
    if c.eat(Tok::Semi)? {
        return Ok(i);
    }
    loop {
        i.operands.push(operand(c, 0)?);
        if c.eat(Tok::Semi)? {
            return Ok(i);
        }
        c.expect(Tok::Comma, "`,` or `;`")?;
    }
}

/// The predicate of `d|p`, as its register's name (`%p`, or `p` for one declared without `%`).
fn pred_after_pipe(c: &mut Cursor<'_, '_>) -> Result<String, Error> {
    let q = c.take("a predicate")?;
    match q.tok {
        Tok::Reg(q) => Ok(format!("%{q}")),
        Tok::Ident(q) => Ok(q.to_string()),
        _ => Err(c.err(q.start, ErrorKind::Syntax, "expected a predicate after `|`".into())),
    }
}

fn operand(c: &mut Cursor<'_, '_>, depth: u32) -> Result<Operand, Error> {
    if depth > MAX_DEPTH {
        return Err(c.unsupported("operands nested deeper than 64"));
    }
    let t = c.take("an operand")?;
    Ok(match t.tok {
        Tok::Reg(r) => {
            if c.eat(Tok::Pipe)? {
                Operand::PredPair(format!("%{r}"), pred_after_pipe(c)?)
            } else {
                Operand::Reg(r.to_string())
            }
        }
        // `r0|p` with registers declared without `%` (cub's inline PTX: `shfl.sync.up.b32 r0|p`).
        Tok::Ident(s) if c.eat(Tok::Pipe)? => Operand::PredPair(s.to_string(), pred_after_pipe(c)?),
        Tok::Int(v) => Operand::Int(int_imm(c, v, false, t.start)?),
        Tok::Float(b) => Operand::Float(b),
        Tok::Minus => {
            let n = c.take("a number")?;
            match n.tok {
                Tok::Int(v) => Operand::Int(int_imm(c, v, true, n.start)?),
                Tok::Float(b) => Operand::Float((-f64::from_bits(b)).to_bits()),
                other => return Err(c.err(n.start, ErrorKind::Syntax, format!("expected a number after `-`, found {}", describe(&other)))),
            }
        }
        Tok::Bang => Operand::Not(Box::new(operand(c, depth + 1)?)),
        Tok::Sink => Operand::Sink,
        Tok::Ident(s) => Operand::Symbol(s.to_string()),
        Tok::LBrace => {
            let mut v = Vec::new();
            loop {
                v.push(operand(c, depth + 1)?);
                if c.eat(Tok::RBrace)? {
                    break;
                }
                c.expect(Tok::Comma, "`,` or `}`")?;
            }
            Operand::Vector(v)
        }
        Tok::LParen => {
            let mut v = Vec::new();
            if !c.eat(Tok::RParen)? {
                loop {
                    v.push(operand(c, depth + 1)?);
                    if c.eat(Tok::RParen)? {
                        break;
                    }
                    c.expect(Tok::Comma, "`,` or `)`")?;
                }
            }
            Operand::List(v)
        }
        Tok::LBracket => address(c)?,
        other => return Err(c.err(t.start, ErrorKind::Syntax, format!("expected an operand, found {}", describe(&other)))),
    })
}

/// An immediate as i64: values up to 2^64-1 are taken as their bit pattern (`0xFFFFFFFFFFFFFFFF`).
fn int_imm(c: &Cursor<'_, '_>, v: u64, neg: bool, at: u32) -> Result<i64, Error> {
    if neg {
        if v > 1u64 << 63 {
            return Err(c.err(at, ErrorKind::Syntax, format!("-{v} is out of range")));
        }
        return Ok((v as i64).wrapping_neg());
    }
    Ok(v as i64)
}

/// `[%rd1]`, `[%rd1+8]`, `[%rd1+-4]`, `[sym]`, `[sym+4]`, `[128]` (the `[` consumed).
fn address(c: &mut Cursor<'_, '_>) -> Result<Operand, Error> {
    let t = c.take("an address")?;
    let base = match t.tok {
        Tok::Reg(r) => Some(Box::new(Operand::Reg(r.to_string()))),
        Tok::Ident(s) => Some(Box::new(Operand::Symbol(s.to_string()))),
        Tok::Int(v) => {
            c.expect(Tok::RBracket, "`]`")?;
            let off = i64::try_from(v).map_err(|_| c.err(t.start, ErrorKind::Syntax, "address out of range".into()))?;
            return Ok(Operand::Address { base: None, offset: off });
        }
        other => return Err(c.err(t.start, ErrorKind::Syntax, format!("expected an address, found {}", describe(&other)))),
    };
    let mut offset = 0i64;
    if c.eat(Tok::Plus)? {
        let neg = c.eat(Tok::Minus)?;
        let at = c.at();
        let v = c.int("an offset")?;
        offset = int_imm(c, v, neg, at)?;
    } else if c.eat(Tok::Minus)? {
        let at = c.at();
        let v = c.int("an offset")?;
        offset = int_imm(c, v, true, at)?;
    }
    c.expect(Tok::RBracket, "`]`")?;
    Ok(Operand::Address { base, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based() {
        let l = Lines::new("a\nbb\n\nc");
        assert_eq!((l.line(0), l.line(2), l.line(4), l.line(5), l.line(6)), (1, 2, 2, 3, 4));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(version("9.0"), Some((9, 0)));
        assert_eq!(version("8.75"), Some((8, 75)));
        assert_eq!(version("9"), None);
    }
}
