//! FP8 conversions (`cvt` with `.e4m3x2` / `.e5m2x2`, PTX ISA "cvt": "Floating-point
//! conversions involving f8 types"; ggml-cuda's compute_90 PTX uses `cvt.rn.f16x2.e4m3x2`):
//!
//! - `cvt.rn{.relu}.f16x2.e4m3x2 d, a` (and `.e5m2x2`): the two bytes of the `.b16` `a`, each
//!   converted exactly to f16, the upper byte to the upper half of `d`;
//! - `cvt.rn.satfinite{.relu}.e4m3x2.f32 d, a, b`: `a` to the upper byte, `b` to the lower, each
//!   rounded to nearest even; `.satfinite` clamps to the largest finite value (NaN stays NaN);
//! - `cvt.rn.satfinite{.relu}.e4m3x2.f16x2 d, a`: the two halves of `a`, upper to upper.
//!
//! E4M3 (e4m3fn): bias 7, 3 mantissa bits, no infinities, NaN = `S.1111.111`, largest 448.
//! E5M2: bias 15, 2 mantissa bits, IEEE-like infinities and NaNs, largest finite 57344.

use super::*;

/// One FP8 format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fp8 {
    E4m3,
    E5m2,
}

impl Fp8 {
    fn mbits(self) -> i32 {
        match self {
            Fp8::E4m3 => 3,
            Fp8::E5m2 => 2,
        }
    }
    fn bias(self) -> i32 {
        match self {
            Fp8::E4m3 => 7,
            Fp8::E5m2 => 15,
        }
    }
    /// The largest finite code (without the sign).
    fn max_finite(self) -> u8 {
        match self {
            Fp8::E4m3 => 0x7e,
            Fp8::E5m2 => 0x7b,
        }
    }

    /// The value of `b`.
    pub(super) fn decode(self, b: u8) -> f64 {
        let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
        let mag = b & 0x7f;
        let (m, e) = (i32::from(mag) & ((1 << self.mbits()) - 1), i32::from(mag) >> self.mbits());
        match self {
            Fp8::E4m3 if mag == 0x7f => return f64::NAN,
            Fp8::E5m2 if e == 31 => return if m == 0 { sign * f64::INFINITY } else { f64::NAN },
            _ => {}
        }
        let scale = |x: i32| 2f64.powi(x);
        let v = if e == 0 {
            f64::from(m) * scale(1 - self.bias() - self.mbits())
        } else {
            (1.0 + f64::from(m) / f64::from(1 << self.mbits())) * scale(e - self.bias())
        };
        sign * v
    }

    /// `x` rounded to nearest even; `satfinite`: past the largest finite value is that value.
    pub(super) fn encode(self, x: f64, satfinite: bool) -> u8 {
        if x.is_nan() {
            return 0x7f;
        }
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = x.abs();
        let mb = self.mbits();
        let min_normal_exp = 1 - self.bias();
        // Codes grow with the value, so rounding the value on its quantum gives the code.
        // Far past the largest value (infinity included): the overflow code below.
        let code: i64 = if a >= 2f64.powi(20) {
            i64::MAX
        } else if a < 2f64.powi(min_normal_exp) {
            (a / 2f64.powi(min_normal_exp - mb)).round_ties_even() as i64
        } else {
            let mut e = a.log2().floor() as i32;
            // log2 may be off by one ulp near powers of two.
            if 2f64.powi(e) > a {
                e -= 1;
            } else if 2f64.powi(e + 1) <= a {
                e += 1;
            }
            let q = (a / 2f64.powi(e - mb)).round_ties_even() as i64; // 2^mb ..= 2^(mb+1)
            let (e, q) = if q == 1 << (mb + 1) { (e + 1, 1i64 << mb) } else { (e, q) };
            (i64::from(e + self.bias()) << mb) | (q - (1 << mb))
        };
        let max = i64::from(self.max_finite());
        let mag = if code > max {
            match (self, satfinite) {
                (_, true) => self.max_finite(),
                (Fp8::E4m3, false) => 0x7f,
                (Fp8::E5m2, false) => 0x7c,
            }
        } else {
            code as u8
        };
        sign | mag
    }
}

/// The FP8 format a `cvt` names, if any.
pub(super) fn format(i: &Inst) -> Option<Fp8> {
    if has(i, Word::E4m3x2) {
        Some(Fp8::E4m3)
    } else if has(i, Word::E5m2x2) {
        Some(Fp8::E5m2)
    } else {
        None
    }
}

/// `cvt` with an FP8 pair on one side.
pub(super) fn cvt(cx: &Ctx<'_, '_>, w: &mut Warp, i: &Inst, run: u32, fmt: Fp8) -> R<()> {
    let ts: Vec<Scalar> = types(i).collect();
    let d = dst(cx, i, 0)?;
    let relu = |x: f64| if has(i, Word::Relu) && x < 0.0 { 0.0 } else { x };
    let sat = has(i, Word::Satfinite);
    let half = |x: f64| u64::from(half::f16::from_f64(x).to_bits());
    // The destination type comes first: `cvt.rn.f16x2.e4m3x2` widens, `cvt.rn.satfinite.e4m3x2.f16x2`
    // narrows.
    let at = |m: Mod| i.mods.iter().position(|x| *x == m);
    let widen = match (at(Mod::Ty(Scalar::F16x2)), at(Mod::W(Word::E4m3x2)).or(at(Mod::W(Word::E5m2x2)))) {
        (Some(t), Some(f8)) => t < f8,
        _ => false,
    };
    match (ts.as_slice(), i.opds.len(), widen) {
        // f16x2 <- fp8x2
        ([Scalar::F16x2], 2, true) => {
            for l in lanes(run) {
                let a = src(cx, w, i, &i.opds[1], Scalar::B16, l)?;
                let (hi, lo) = (fmt.decode((a >> 8) as u8), fmt.decode(a as u8));
                set(w, d, l, half(relu(hi)) << 16 | half(relu(lo)));
            }
        }
        // fp8x2 <- f16x2
        ([Scalar::F16x2], 2, false) => {
            for l in lanes(run) {
                let a = src(cx, w, i, &i.opds[1], Scalar::B32, l)?;
                let h = |x: u64| half::f16::from_bits(x as u16).to_f64();
                let (hi, lo) = (h(a >> 16), h(a));
                set(w, d, l, u64::from(fmt.encode(relu(hi), sat)) << 8 | u64::from(fmt.encode(relu(lo), sat)));
            }
        }
        // fp8x2 <- f32, f32
        ([Scalar::F32], 3, _) => {
            for l in lanes(run) {
                let a = f(Scalar::F32, src(cx, w, i, &i.opds[1], Scalar::F32, l)?);
                let b = f(Scalar::F32, src(cx, w, i, &i.opds[2], Scalar::F32, l)?);
                set(w, d, l, u64::from(fmt.encode(relu(a), sat)) << 8 | u64::from(fmt.encode(relu(b), sat)));
            }
        }
        _ => return Err(unsupported(cx, i, "this FP8 conversion")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Fp8;

    #[test]
    fn e4m3_codes_follow_the_format() {
        let e = Fp8::E4m3;
        assert_eq!(e.decode(0x38), 1.0);
        assert_eq!(e.decode(0x7e), 448.0);
        assert_eq!(e.decode(0xfe), -448.0);
        assert_eq!(e.decode(0x01), 2f64.powi(-9), "smallest subnormal");
        assert_eq!(e.decode(0x08), 2f64.powi(-6), "smallest normal");
        assert!(e.decode(0x7f).is_nan() && e.decode(0xff).is_nan());
        for b in 0..=255u8 {
            let v = e.decode(b);
            if !v.is_nan() {
                assert_eq!(e.encode(v, false), b, "{b:#x} = {v}");
            }
        }
        assert_eq!(e.encode(1.0625, false), 0x38, "a tie rounds to even (1.0)");
        assert_eq!(e.encode(1.1875, false), 0x3a, "a tie rounds to even (1.25)");
        assert_eq!(e.encode(1000.0, true), 0x7e, "satfinite");
        assert_eq!(e.encode(1000.0, false), 0x7f, "no infinity: NaN");
        assert_eq!(e.encode(-1000.0, true), 0xfe);
        assert_eq!(e.encode(2f64.powi(-11), false), 0x00, "below half the smallest subnormal");
    }

    #[test]
    fn e5m2_is_the_top_byte_of_f16() {
        let e = Fp8::E5m2;
        for b in 0..=255u8 {
            let h = half::f16::from_bits(u16::from(b) << 8).to_f64();
            let v = e.decode(b);
            assert!(v == h || (v.is_nan() && h.is_nan()), "{b:#x}: {v} vs {h}");
            if !v.is_nan() {
                assert_eq!(e.encode(v, false), b);
            }
        }
        assert_eq!(e.encode(1e6, true), 0x7b);
        assert_eq!(e.encode(1e6, false), 0x7c, "infinity");
    }
}
