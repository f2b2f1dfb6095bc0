//! Tokens of PTX text (`logos`). Comments and whitespace are skipped; every token keeps its
//! byte span, from which the parser computes line numbers for errors.
//!
//! An opcode with its modifiers (`ld.global.nc.v4.f32`) is one [`Tok::Dotted`] token; a
//! directive (`.reg`, `.u32`) is a [`Tok::Directive`]; a register or special register
//! (`%r12`, `%tid.x`) is a [`Tok::Reg`].

use logos::Logos;

/// One PTX token. Text-carrying variants borrow from the source.
#[derive(Logos, Clone, Copy, Debug, PartialEq)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip r"//[^\n]*")]
pub enum Tok<'a> {
    /// `.version`, `.u32`, `.param`, ...
    #[regex(r"\.[A-Za-z_][A-Za-z0-9_]*", |l| &l.slice()[1..])]
    Directive(&'a str),
    /// An opcode with modifiers: `ld.param.u64`, `setp.ge.s32`, `mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32`.
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+", |l| l.slice())]
    Dotted(&'a str),
    /// A plain identifier: an opcode without modifiers (`ret`), a symbol, a label.
    #[regex(r"[A-Za-z_$][A-Za-z0-9_$]*", |l| l.slice())]
    Ident(&'a str),
    /// `%r1`, `%rd<12>`'s stem, `%tid.x`, `%ctaid.y`, `%envreg3`.
    #[regex(r"%[A-Za-z0-9_$]+(\.[xyzw])?", |l| &l.slice()[1..])]
    Reg(&'a str),
    /// Decimal, hex (`0x..`), octal (`0..`) or binary (`0b..`) integer, optional `U` suffix.
    #[regex(r"[0-9]+U?", |l| parse_int(l.slice(), 10))]
    #[regex(r"0[xX][0-9a-fA-F]+U?", |l| parse_int(&l.slice()[2..], 16))]
    #[regex(r"0[bB][01]+U?", |l| parse_int(&l.slice()[2..], 2))]
    Int(u64),
    /// `0f3F800000` (f32 bits) — carried as the f32's bits widened to f64 bits.
    #[regex(r"0[fF][0-9a-fA-F]{8}", |l| u32::from_str_radix(&l.slice()[2..], 16).ok().map(|b| f64::from(f32::from_bits(b)).to_bits()))]
    /// `0d3FF0000000000000` (f64 bits).
    #[regex(r"0[dD][0-9a-fA-F]{16}", |l| u64::from_str_radix(&l.slice()[2..], 16).ok())]
    /// `1.5`, `2.0e-3`.
    #[regex(r"[0-9]+\.[0-9]*([eE][+-]?[0-9]+)?", |l| l.slice().parse::<f64>().ok().map(f64::to_bits))]
    Float(u64),
    /// A string (`.file 1 "a.cu"`), without its quotes.
    #[regex(r#""([^"\\\n]|\\.)*""#, |l| { let s = l.slice(); &s[1..s.len() - 1] })]
    Str(&'a str),
    #[token(",")]
    Comma,
    #[token(";")]
    Semi,
    #[token(":")]
    Colon,
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("<")]
    Lt,
    #[token(">")]
    Gt,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("@")]
    At,
    #[token("!")]
    Bang,
    #[token("|")]
    Pipe,
    #[token("=")]
    Eq,
    #[token("_", priority = 3)]
    Sink,
    /// `/* ... */`, skipped (an unterminated one is an error).
    #[token("/*", block_comment)]
    BlockComment,
}

fn block_comment<'a>(lex: &mut logos::Lexer<'a, Tok<'a>>) -> logos::FilterResult<(), ()> {
    match lex.remainder().find("*/") {
        Some(n) => {
            lex.bump(n + 2);
            logos::FilterResult::Skip
        }
        None => logos::FilterResult::Error(()),
    }
}

/// An integer literal's value, or `None` on overflow (a lexing error).
fn parse_int(digits: &str, radix: u32) -> Option<u64> {
    let d = digits.strip_suffix('U').unwrap_or(digits);
    if radix == 10 && d.len() > 1 && d.starts_with('0') {
        // PTX: a leading 0 means octal.
        return u64::from_str_radix(&d[1..], 8).ok();
    }
    u64::from_str_radix(d, radix).ok()
}

/// A token and its byte range in the source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spanned<'a> {
    pub tok: Tok<'a>,
    pub start: u32,
    pub end: u32,
}

/// A byte the lexer could not start a token with, at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LexError {
    pub offset: u32,
}

/// Every token of `src`, or the offset of the first bad one. Sources over 4 GiB are refused by
/// the caller (offsets are `u32`).
pub fn tokens(src: &str) -> Result<Vec<Spanned<'_>>, LexError> {
    let mut out = Vec::with_capacity(src.len() / 4);
    let mut lex = Tok::lexer(src);
    while let Some(t) = lex.next() {
        let span = lex.span();
        match t {
            Ok(tok) => out.push(Spanned { tok, start: span.start as u32, end: span.end as u32 }),
            Err(()) => return Err(LexError { offset: span.start as u32 }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok<'_>> {
        tokens(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn an_instruction_lexes_into_opcode_registers_and_punctuation() {
        assert_eq!(
            toks("@!%p1 ld.global.nc.f32 %f1, [%rd2+-4]; // c\n"),
            vec![
                Tok::At,
                Tok::Bang,
                Tok::Reg("p1"),
                Tok::Dotted("ld.global.nc.f32"),
                Tok::Reg("f1"),
                Tok::Comma,
                Tok::LBracket,
                Tok::Reg("rd2"),
                Tok::Plus,
                Tok::Minus,
                Tok::Int(4),
                Tok::RBracket,
                Tok::Semi
            ]
        );
        assert_eq!(toks("mov.u32 %r3, %ctaid.x;")[3], Tok::Reg("ctaid.x"));
        assert_eq!(toks("$L__BB0_2:"), vec![Tok::Ident("$L__BB0_2"), Tok::Colon]);
        assert_eq!(toks(".reg .b64 %rd<12>;")[..3], [Tok::Directive("reg"), Tok::Directive("b64"), Tok::Reg("rd")]);
    }

    #[test]
    fn literals_have_their_values() {
        assert_eq!(toks("0f3F800000"), vec![Tok::Float(1.0f64.to_bits())]);
        assert_eq!(toks("0d3FF0000000000000"), vec![Tok::Float(1.0f64.to_bits())]);
        assert_eq!(toks("0x10 010 0b11 7U 2.5"), vec![Tok::Int(16), Tok::Int(8), Tok::Int(3), Tok::Int(7), Tok::Float(2.5f64.to_bits())]);
        assert_eq!(toks("/* a\n * b */ ret"), vec![Tok::Ident("ret")]);
        assert_eq!(toks("\"a.cu\""), vec![Tok::Str("a.cu")]);
    }

    #[test]
    fn a_bad_byte_is_an_error_at_its_offset() {
        assert_eq!(tokens("ret; #"), Err(LexError { offset: 5 }));
        assert_eq!(tokens("ret; /* open"), Err(LexError { offset: 5 }));
        assert_eq!(tokens("99999999999999999999999"), Err(LexError { offset: 0 }));
    }
}
