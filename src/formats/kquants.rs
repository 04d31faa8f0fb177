//! K-quants: super-blocks of 256 values in 8 or 16 sub-blocks, each sub-block with its own
//! small integer scale (and minimum) that multiplies the super-block's f16 `d` (and `dmin`).
//! Decoding follows ggml's `dequantize_row_q{2..6}_K` operation for operation, so the values
//! are bit-identical to ggml's.
//!
//! The vectorised decodes here (AVX2 and AVX-512: weights decoded in registers into the
//! sums of up to four activation rows, or to memory) also serve the formats whose values are
//! a table's levels times a scale (IQ4_XS, IQ4_NL, MXFP4 and Q4_0: `codes::levels`) and the
//! other legacy formats (Q4_1, Q5_0, Q5_1: `codes::Affine32`).

use super::int8::{Codes, Q8Row};
use super::{Block, F16Bits, GpuLayout};
use crate::gguf::GgmlType;

/// Values per super-block.
pub const QK_K: usize = 256;

/// ggml's `block_q2_K`: 2-bit codes, 16 sub-blocks of 16 with a 4-bit scale and 4-bit min.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2K {
    /// Sub-block scale (low nibble) and min (high nibble).
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: F16Bits,
    pub dmin: F16Bits,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

/// ggml's `block_q3_K`: 3-bit codes (2 low bits in `qs`, the third in `hmask`), 16
/// sub-blocks of 16 with signed 6-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    /// 16 scales of 6 bits: low nibbles in bytes 0..8, high bit pairs in bytes 8..12.
    pub scales: [u8; 12],
    pub d: F16Bits,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

/// ggml's `block_q4_K`: 4-bit codes, 8 sub-blocks of 32 with 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    pub d: F16Bits,
    pub dmin: F16Bits,
    /// 8 scales and 8 mins of 6 bits (see [`scales_and_mins`]).
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// ggml's `block_q5_K`: Q4_K plus a fifth bit per value in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5K {
    pub d: F16Bits,
    pub dmin: F16Bits,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

/// ggml's `block_q6_K`: 6-bit codes (4 low bits in `ql`, 2 high in `qh`), 16 sub-blocks of
/// 16 with signed 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: F16Bits,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

// ---------------------------------------------------------------------------------------
// Where value `v` of a super-block lives.

/// Q2_K/Q3_K: the byte of `qs` holding value `v`, the shift of its 2 bits, and its
/// sub-block (16 values). Values come in two halves of 128; in each, four runs of 32 take
/// bits 0-1, 2-3, 4-5, 6-7 of the same 32 bytes.
#[inline]
fn two_bit_slot(v: usize) -> (usize, u32, usize) {
    let (half, run, l) = (v / 128, (v % 128) / 32, v % 32);
    (32 * half + l, 2 * run as u32, 8 * half + 2 * run + l / 16)
}

/// Q4_K/Q5_K: sub-block `v / 32`; the byte of `qs` and whether the code is its high nibble.
#[inline]
fn nibble_slot(v: usize) -> (usize, bool) {
    let (pair, l) = (v / 64, v % 32);
    (32 * pair + l, (v / 32) % 2 == 1)
}

/// Q6_K: (byte of `ql`, high nibble?, byte of `qh`, shift in it, sub-block) of value `v`.
#[inline]
fn six_bit_slot(v: usize) -> (usize, bool, usize, u32, usize) {
    let (half, quarter, l) = (v / 128, (v % 128) / 32, v % 32);
    (
        64 * half + l + 32 * (quarter % 2),
        quarter >= 2,
        32 * half + l,
        2 * quarter as u32,
        8 * half + l / 16 + 2 * quarter,
    )
}

/// Q4_K/Q5_K: the 8 six-bit scales and mins packed in 12 bytes (ggml's `get_scale_min_k4`).
#[inline]
pub fn scales_and_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    // Four bytes at a time: the masks keep each byte's own bits after the shifts.
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    // sc[0..4] = s[0..4] & 63, sc[4..8] = (s[8..12] & 15) | (s[0..4] >> 6) << 4
    let sc = [a & LOW6, (c & LOW4) | (((a >> 6) & LOW2) << 4)];
    // m[0..4] = s[4..8] & 63, m[4..8] = (s[8..12] >> 4) | (s[4..8] >> 6) << 4
    let m = [b & LOW6, ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4)];
    let bytes = |w: [u32; 2]| {
        let (lo, hi) = (w[0].to_le_bytes(), w[1].to_le_bytes());
        [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
    };
    (bytes(sc), bytes(m))
}

fn pack_scales_and_mins(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
    }
    s
}

/// Q3_K: the 16 signed scales (ggml unpacks them the same way with 32-bit masks).
#[inline]
pub(super) fn q3_scales(s: &[u8; 12]) -> [i32; 16] {
    std::array::from_fn(|i| {
        let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i32 - 32
    })
}

fn pack_q3_scales(codes: &[u8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (i, &c) in codes.iter().enumerate() {
        s[i % 8] |= (c & 0x0F) << (4 * (i / 8));
        s[8 + i % 4] |= ((c >> 4) & 3) << (2 * (i / 4));
    }
    s
}

// ---------------------------------------------------------------------------------------
// Encoding helpers: a simple, correct choice of scales (not llama.cpp's search).

/// The f16 a super-block scale is stored as, back as f32 (what decoding will use).
fn stored(d: f32) -> (F16Bits, f32) {
    let h = F16Bits::from_f32(d);
    (h, h.get())
}

/// `round(v / unit)` clamped to `0..=max` (0 when `unit` is 0).
fn level(v: f32, unit: f32, max: i32) -> i32 {
    if unit > 0.0 {
        ((v / unit).round() as i32).clamp(0, max)
    } else {
        0
    }
}

/// Asymmetric sub-blocks (Q2_K, Q4_K, Q5_K): per sub-block of `values.len() / n`, a scale
/// and a minimum (`-min(values, 0)`), both as `bits`-bit multiples of a super-block `d` and
/// `dmin`; then each value as a code in `0..=levels`. Returns (d, dmin, scales, mins, codes).
fn quantize_with_mins<const N: usize>(
    values: &[f32],
    bits: u32,
    levels: i32,
) -> (F16Bits, F16Bits, [u8; N], [u8; N], [u8; QK_K]) {
    let len = QK_K / N;
    let mut scale = [0f32; N];
    let mut min = [0f32; N];
    for (i, xs) in values.chunks_exact(len).enumerate() {
        let lo = xs.iter().fold(0f32, |m, &v| m.min(v));
        let hi = xs.iter().fold(lo, |m, &v| m.max(v));
        scale[i] = (hi - lo) / levels as f32;
        min[i] = -lo;
    }
    let top = ((1 << bits) - 1) as f32;
    let (d_bits, d) = stored(scale.iter().fold(0f32, |m, &v| m.max(v)) / top);
    let (dmin_bits, dmin) = stored(min.iter().fold(0f32, |m, &v| m.max(v)) / top);
    let sc: [u8; N] = std::array::from_fn(|i| level(scale[i], d, top as i32) as u8);
    let m: [u8; N] = std::array::from_fn(|i| level(min[i], dmin, top as i32) as u8);
    let codes = std::array::from_fn(|v| {
        let i = v / len;
        let (ds, dm) = (d * sc[i] as f32, dmin * m[i] as f32);
        level(values[v] + dm, ds, levels) as u8
    });
    (d_bits, dmin_bits, sc, m, codes)
}

/// Symmetric sub-blocks of 16 (Q3_K, Q6_K): per sub-block a signed scale that maps the value
/// of largest magnitude to code `-half`, as a signed multiple (at most `scale_max`) of `d`;
/// then each value as a code in `-half..half`. Returns (d, scales, codes + half).
fn quantize_symmetric(
    values: &[f32],
    half: i32,
    scale_max: i32,
) -> (F16Bits, [i32; 16], [u8; QK_K]) {
    let mut scale = [0f32; 16];
    for (i, xs) in values.chunks_exact(16).enumerate() {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        scale[i] = max / -(half as f32);
    }
    let amax = scale.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let (d_bits, d) = stored(amax / scale_max as f32);
    let sc: [i32; 16] = std::array::from_fn(|i| {
        if d > 0.0 {
            ((scale[i] / d).round() as i32).clamp(-scale_max - 1, scale_max)
        } else {
            0
        }
    });
    let codes = std::array::from_fn(|v| {
        let ds = d * sc[v / 16] as f32;
        let q = if ds != 0.0 {
            ((values[v] / ds).round() as i32).clamp(-half, half - 1)
        } else {
            0
        };
        (q + half) as u8
    });
    (d_bits, sc, codes)
}

// ---------------------------------------------------------------------------------------

impl BlockQ2K {
    /// Each sub-block's `d · scale` and `dmin · min`.
    #[inline(always)]
    pub(super) fn sub_scales(&self) -> ([f32; 16], [f32; 16]) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        (
            std::array::from_fn(|i| d * (self.scales[i] & 0x0F) as f32),
            std::array::from_fn(|i| dmin * (self.scales[i] >> 4) as f32),
        )
    }
}

impl Block for BlockQ2K {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::Q2_K;
    const VALUES: usize = QK_K;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q2K);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let (dls, mls) = self.sub_scales();
        for (v, o) in out.chunks_exact_mut(16).enumerate() {
            // Sub-block v: 16 values at the same shift of 16 consecutive bytes.
            let (byte, shift, sub) = two_bit_slot(16 * v);
            let (dl, ml) = (dls[sub], mls[sub]);
            for (o, &q) in o.iter_mut().zip(&self.qs[byte..byte + 16]) {
                *o = dl * ((q >> shift) & 3) as f32 - ml;
            }
        }
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 16,
        offset: 0,
        integer_rows: 8,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        let (dl, ml) = self.sub_scales();
        for (v, c) in codes.chunks_exact_mut(16).enumerate() {
            let (byte, shift, sub) = two_bit_slot(16 * v);
            (scale[v], min[v]) = (dl[sub], ml[sub]);
            for (c, &q) in c.iter_mut().zip(&self.qs[byte..byte + 16]) {
                *c = (q >> shift) & 3;
            }
        }
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    fn quantize(values: &[f32]) -> Self {
        let (d, dmin, sc, m, codes) = quantize_with_mins::<16>(values, 4, 3);
        let mut qs = [0u8; 64];
        for (v, &c) in codes.iter().enumerate() {
            let (byte, shift, _) = two_bit_slot(v);
            qs[byte] |= c << shift;
        }
        BlockQ2K {
            scales: std::array::from_fn(|i| sc[i] | (m[i] << 4)),
            qs,
            d,
            dmin,
        }
    }

    vectorised_rows!();
}

impl Block for BlockQ3K {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::Q3_K;
    const VALUES: usize = QK_K;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q3K);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.get();
        let scales = q3_scales(&self.scales);
        for (v, o) in out.chunks_exact_mut(16).enumerate() {
            let (byte, shift, sub) = two_bit_slot(16 * v);
            let dl = d * scales[sub] as f32;
            // Bit 16v / 32 of the mask bytes; set means no offset.
            let (mask, bit) = (&self.hmask[(16 * v) % 32..][..16], v / 2);
            for ((o, &q), &h) in o.iter_mut().zip(&self.qs[byte..byte + 16]).zip(mask) {
                let low = ((q >> shift) & 3) as i32;
                let offset = if (h >> bit) & 1 == 1 { 0 } else { 4 };
                *o = dl * (low - offset) as f32;
            }
        }
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 16,
        offset: 4,
        integer_rows: 8,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        let d = self.d.get();
        let scales = q3_scales(&self.scales);
        for (v, c) in codes.chunks_exact_mut(16).enumerate() {
            let (byte, shift, sub) = two_bit_slot(16 * v);
            (scale[v], min[v]) = (d * scales[sub] as f32, 0.0);
            let (mask, bit) = (&self.hmask[(16 * v) % 32..][..16], v / 2);
            for ((c, &q), &h) in c.iter_mut().zip(&self.qs[byte..byte + 16]).zip(mask) {
                *c = ((q >> shift) & 3) | (((h >> bit) & 1) << 2);
            }
        }
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    fn quantize(values: &[f32]) -> Self {
        let (d, sc, codes) = quantize_symmetric(values, 4, 31);
        let mut qs = [0u8; 64];
        let mut hmask = [0u8; 32];
        for (v, &c) in codes.iter().enumerate() {
            let (byte, shift, _) = two_bit_slot(v);
            qs[byte] |= (c & 3) << shift;
            hmask[v % 32] |= ((c >> 2) & 1) << (v / 32);
        }
        BlockQ3K {
            hmask,
            qs,
            scales: pack_q3_scales(&std::array::from_fn(|i| (sc[i] + 32) as u8)),
            d,
        }
    }

    vectorised_rows!();
}

impl Block for BlockQ4K {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::Q4_K;
    const VALUES: usize = QK_K;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q4K);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        let (sc, m) = scales_and_mins(&self.scales);
        for (sub, outs) in out.chunks_exact_mut(32).enumerate() {
            let (dl, ml) = (d * sc[sub] as f32, dmin * m[sub] as f32);
            let (byte, high) = nibble_slot(32 * sub);
            let shift = if high { 4 } else { 0 };
            for (o, &q) in outs.iter_mut().zip(&self.qs[byte..byte + 32]) {
                *o = dl * ((q >> shift) & 0x0F) as f32 - ml;
            }
        }
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 32,
        offset: 0,
        integer_rows: 8,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        let (sc, m) = scales_and_mins(&self.scales);
        for (sub, c) in codes.chunks_exact_mut(32).enumerate() {
            (scale[sub], min[sub]) = (d * sc[sub] as f32, dmin * m[sub] as f32);
            let (byte, high) = nibble_slot(32 * sub);
            let shift = if high { 4 } else { 0 };
            for (c, &q) in c.iter_mut().zip(&self.qs[byte..byte + 32]) {
                *c = (q >> shift) & 0x0F;
            }
        }
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    fn quantize(values: &[f32]) -> Self {
        let (d, dmin, sc, m, codes) = quantize_with_mins::<8>(values, 6, 15);
        let mut qs = [0u8; 128];
        for (v, &c) in codes.iter().enumerate() {
            let (byte, high) = nibble_slot(v);
            qs[byte] |= if high { c << 4 } else { c };
        }
        BlockQ4K {
            d,
            dmin,
            scales: pack_scales_and_mins(&sc, &m),
            qs,
        }
    }

    vectorised_rows!();
}

impl Block for BlockQ5K {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::Q5_K;
    const VALUES: usize = QK_K;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q5K);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        let (sc, m) = scales_and_mins(&self.scales);
        for (sub, outs) in out.chunks_exact_mut(32).enumerate() {
            let (dl, ml) = (d * sc[sub] as f32, dmin * m[sub] as f32);
            let (byte, high) = nibble_slot(32 * sub);
            let shift = if high { 4 } else { 0 };
            for ((o, &q), &h) in outs.iter_mut().zip(&self.qs[byte..byte + 32]).zip(&self.qh) {
                let q = ((q >> shift) & 0x0F) | (((h >> sub) & 1) << 4);
                *o = dl * q as f32 - ml;
            }
        }
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 32,
        offset: 0,
        integer_rows: 8,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        let (sc, m) = scales_and_mins(&self.scales);
        for (sub, c) in codes.chunks_exact_mut(32).enumerate() {
            (scale[sub], min[sub]) = (d * sc[sub] as f32, dmin * m[sub] as f32);
            let (byte, high) = nibble_slot(32 * sub);
            let shift = if high { 4 } else { 0 };
            for ((c, &q), &h) in c.iter_mut().zip(&self.qs[byte..byte + 32]).zip(&self.qh) {
                *c = ((q >> shift) & 0x0F) | (((h >> sub) & 1) << 4);
            }
        }
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    fn quantize(values: &[f32]) -> Self {
        let (d, dmin, sc, m, codes) = quantize_with_mins::<8>(values, 6, 31);
        let mut qs = [0u8; 128];
        let mut qh = [0u8; 32];
        for (v, &c) in codes.iter().enumerate() {
            let (byte, high) = nibble_slot(v);
            qs[byte] |= if high { (c & 0x0F) << 4 } else { c & 0x0F };
            qh[v % 32] |= ((c >> 4) & 1) << (v / 32);
        }
        BlockQ5K {
            d,
            dmin,
            scales: pack_scales_and_mins(&sc, &m),
            qh,
            qs,
        }
    }

    vectorised_rows!();
}

impl Block for BlockQ6K {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::Q6_K;
    const VALUES: usize = QK_K;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q6K);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.get();
        for (v, o) in out.chunks_exact_mut(16).enumerate() {
            let (lbyte, high, hbyte, shift, sub) = six_bit_slot(16 * v);
            let dl = d * self.scales[sub] as f32;
            let nibble = if high { 4 } else { 0 };
            let (ql, qh) = (&self.ql[lbyte..lbyte + 16], &self.qh[hbyte..hbyte + 16]);
            for ((o, &l), &h) in o.iter_mut().zip(ql).zip(qh) {
                let q = (((l >> nibble) & 0x0F) | (((h >> shift) & 3) << 4)) as i32 - 32;
                *o = dl * q as f32;
            }
        }
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 16,
        offset: 32,
        integer_rows: 8,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        let d = self.d.get();
        for (v, c) in codes.chunks_exact_mut(16).enumerate() {
            let (lbyte, high, hbyte, shift, sub) = six_bit_slot(16 * v);
            (scale[v], min[v]) = (d * self.scales[sub] as f32, 0.0);
            let nibble = if high { 4 } else { 0 };
            let (ql, qh) = (&self.ql[lbyte..lbyte + 16], &self.qh[hbyte..hbyte + 16]);
            for ((c, &l), &h) in c.iter_mut().zip(ql).zip(qh) {
                *c = ((l >> nibble) & 0x0F) | (((h >> shift) & 3) << 4);
            }
        }
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    fn quantize(values: &[f32]) -> Self {
        let (d, sc, codes) = quantize_symmetric(values, 32, 127);
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for (v, &c) in codes.iter().enumerate() {
            let (lbyte, high, hbyte, shift, _) = six_bit_slot(v);
            ql[lbyte] |= if high { (c & 0x0F) << 4 } else { c & 0x0F };
            qh[hbyte] |= (c >> 4) << shift;
        }
        BlockQ6K {
            ql,
            qh,
            scales: std::array::from_fn(|i| sc[i] as i8),
            d,
        }
    }

    vectorised_rows!();
}

/// A vectorised dot of one weight row against 1 to [`SIMD_ROWS`] activation rows, `stride`
/// apart, writing one sum per row of `out`; unsafe to call on a CPU without its features.
pub(super) type SimdRows<B> = unsafe fn(&[B], &[f32], usize, &mut [f32]);

/// Activation rows the vectorised K-quant dots take at once.
const SIMD_ROWS: usize = 4;

/// The formats with vectorised decodes on x86_64 (every quantized one but Q8_0, which has its
/// own), at both widths.
#[cfg(target_arch = "x86_64")]
pub(super) trait Vectorised: decode::Decode {}
#[cfg(target_arch = "x86_64")]
impl<B: decode::Decode> Vectorised for B {}
#[cfg(not(target_arch = "x86_64"))]
pub(super) trait Vectorised {}
#[cfg(not(target_arch = "x86_64"))]
impl<B> Vectorised for B {}

/// The widest vectorised dot of `B` this CPU runs, if any.
pub(super) fn simd_rows<B: Vectorised>() -> Option<SimdRows<B>> {
    #[cfg(target_arch = "x86_64")]
    {
        if super::x86::has_avx512() {
            return Some(avx512::dot::<B>);
        }
        if super::x86::has_avx2_fma() {
            return Some(avx2::dot::<B>);
        }
    }
    None
}

/// Named vectorised dots of one format.
#[cfg(test)]
pub(super) type Variants<B> = Vec<(&'static str, SimdRows<B>)>;

/// Every vectorised dot of `B` (a format with a vectorised decode) this CPU runs (the tests check each, not
/// only the widest).
#[cfg(test)]
pub(super) fn simd_variants<B: Vectorised>() -> Variants<B> {
    let mut v: Variants<B> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if super::x86::has_avx2_fma() {
            v.push(("avx2", avx2::dot::<B>));
        }
        if super::x86::has_avx512() {
            v.push(("avx512", avx512::dot::<B>));
        }
    }
    v
}

/// `Block::dequantize_blocks` of a vectorised format: AVX-512 where the CPU has it (the
/// same bits), else block by block.
pub(super) fn simd_dequantize<B: Block + Vectorised>(blocks: &[B], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx512() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { avx512::dequantize(blocks, out) };
    }
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(B::VALUES)) {
        b.dequantize(o);
    }
}

/// `Block::dot` of a vectorised format, through [`simd_rows`] where the CPU has one.
pub(super) fn simd_dot<B: Block + Vectorised>(blocks: &[B], x: &[f32]) -> f32 {
    match simd_rows::<B>() {
        Some(rows) => {
            let mut out = [0f32];
            // SAFETY: `simd_rows` returned it for this CPU; `x` holds the row's values.
            unsafe { rows(blocks, &x[..B::VALUES * blocks.len()], 0, &mut out) };
            out[0]
        }
        None => super::dot_scalar(blocks, x),
    }
}

/// `Block::dot_tokens` of a vectorised format, [`SIMD_ROWS`] rows at a time (the per-row
/// dot without a vectorised version).
pub(super) fn simd_dot_tokens<B: Block + Vectorised>(
    blocks: &[B],
    x: &[f32],
    stride: usize,
    out: &mut [f32],
) {
    let n = B::VALUES * blocks.len();
    match simd_rows::<B>() {
        Some(rows) => {
            for (g, o) in out.chunks_mut(SIMD_ROWS).enumerate() {
                let x = &x[SIMD_ROWS * g * stride..];
                assert!(x.len() >= (o.len() - 1) * stride + n);
                // SAFETY: as in `simd_dot`; `x` holds every row of this group (checked).
                unsafe { rows(blocks, x, stride, o) };
            }
        }
        None => {
            for (t, o) in out.iter_mut().enumerate() {
                *o = B::dot(blocks, &x[t * stride..][..n]);
            }
        }
    }
}

/// Q3_K's GPU layout: `hmask` and `qs` to `quants`; the scale bytes and `d` (as f32) to
/// `scales` (the 110-byte block is not a whole number of u32).
pub(super) fn pack_gpu_q3_k(bytes: &[u8], quants: &mut Vec<u8>, scales: &mut Vec<u8>) {
    for b in bytemuck::cast_slice::<u8, BlockQ3K>(bytes) {
        quants.extend_from_slice(&b.hmask);
        quants.extend_from_slice(&b.qs);
        scales.extend_from_slice(&b.scales);
        scales.extend_from_slice(&b.d.get().to_le_bytes());
    }
}

/// Q6_K's GPU layout: `ql` and `qh` to `quants`; the scales and `d` (as f32) to `scales`
/// (the 210-byte block is not a whole number of u32).
pub(super) fn pack_gpu_q6_k(bytes: &[u8], quants: &mut Vec<u8>, scales: &mut Vec<u8>) {
    for b in bytemuck::cast_slice::<u8, BlockQ6K>(bytes) {
        quants.extend_from_slice(&b.ql);
        quants.extend_from_slice(&b.qh);
        scales.extend_from_slice(bytemuck::cast_slice(&b.scales));
        scales.extend_from_slice(&b.d.get().to_le_bytes());
    }
}

/// Each vectorised format's codes, 32 bytes at a time, shared by both widths below.
#[cfg(target_arch = "x86_64")]
pub(super) mod codes {
    use super::{BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
    use crate::formats::{BlockIQ4XS, BlockQ4_1, BlockQ5_0, BlockQ5_1, F16Bits, IQ4_LEVELS};
    use std::arch::x86_64::*;

    /// IQ4_XS's run `ib` (32 values: the low nibbles of its 16 bytes, then the high) as
    /// their levels plus 128, unsigned bytes (the decoders widen bytes as unsigned).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn iq4_xs(b: &BlockIQ4XS, ib: usize) -> __m256i {
        const IQ4_BIASED: [u8; 16] = biased(IQ4_LEVELS);
        levels(&IQ4_BIASED, &b.qs[16 * ib..16 * ib + 16])
    }

    /// A table of levels plus 128, as unsigned bytes (evaluated at compile time).
    pub const fn biased(levels: [i8; 16]) -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            out[i] = (levels[i] as u8) ^ 0x80;
            i += 1;
        }
        out
    }

    /// 16 bytes of nibbles (low: values 0-15, high: 16-31) as the levels of `biased` (a
    /// table from [`biased`]), unsigned bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn levels(biased: &[u8; 16], qs: &[u8]) -> __m256i {
        debug_assert!(qs.len() >= 16);
        let table = _mm_loadu_si128(biased.as_ptr() as *const __m128i);
        let mask = _mm_set1_epi8(0x0F);
        let q = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
        let lo = _mm_shuffle_epi8(table, _mm_and_si128(q, mask));
        let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(q, 4), mask));
        _mm256_set_m128i(hi, lo)
    }

    /// IQ4_NL, MXFP4 and Q4_0: blocks of 32 values, each a level of a 16-entry table times
    /// the block's scale.
    pub trait TableBlock {
        const LEVELS: [i8; 16];
        const BIASED: [u8; 16] = biased(Self::LEVELS);
        fn scale(&self) -> f32;
        fn nibbles(&self) -> &[u8; 16];
    }

    impl TableBlock for crate::formats::BlockIQ4NL {
        const LEVELS: [i8; 16] = IQ4_LEVELS;
        fn scale(&self) -> f32 {
            self.d.get()
        }
        fn nibbles(&self) -> &[u8; 16] {
            &self.qs
        }
    }

    impl TableBlock for crate::formats::BlockQ4_0 {
        /// Q4_0's codes minus 8, as a table.
        const LEVELS: [i8; 16] = [-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7];
        fn scale(&self) -> f32 {
            self.d.get()
        }
        fn nibbles(&self) -> &[u8; 16] {
            &self.qs
        }
    }

    impl TableBlock for crate::formats::BlockMXFP4 {
        const LEVELS: [i8; 16] = crate::formats::MXFP4_LEVELS;
        fn scale(&self) -> f32 {
            crate::formats::BlockMXFP4::scale(self)
        }
        fn nibbles(&self) -> &[u8; 16] {
            &self.qs
        }
    }

    /// Q4_K and Q5_K, whose super-blocks share the header (`d`, `dmin`, 8 scales and mins)
    /// and the order of their codes: one vectorised decode serves both.
    pub trait WithMins {
        fn header(&self) -> (F16Bits, F16Bits, &[u8; 12]);
        /// The codes of sub-blocks 2p and 2p + 1 (32 each).
        unsafe fn pair_codes(&self, pair: usize) -> [__m256i; 2];
    }

    impl WithMins for BlockQ4K {
        fn header(&self) -> (F16Bits, F16Bits, &[u8; 12]) {
            (self.d, self.dmin, &self.scales)
        }
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn pair_codes(&self, pair: usize) -> [__m256i; 2] {
            q4_k(self, pair)
        }
    }

    impl WithMins for BlockQ5K {
        fn header(&self) -> (F16Bits, F16Bits, &[u8; 12]) {
            (self.d, self.dmin, &self.scales)
        }
        /// Q4_K's nibbles with the fifth bit of sub-block `sub` (bit `sub` of `qh[l]`).
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn pair_codes(&self, pair: usize) -> [__m256i; 2] {
            let mask = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            let v = _mm256_loadu_si256(self.qs.as_ptr().add(32 * pair) as *const __m256i);
            let h = _mm256_loadu_si256(self.qh.as_ptr() as *const __m256i);
            let fifth = |sub: usize| {
                let bits = _mm256_srl_epi16(h, _mm_cvtsi32_si128(sub as i32));
                _mm256_slli_epi16(_mm256_and_si256(bits, one), 4)
            };
            [
                _mm256_or_si256(_mm256_and_si256(v, mask), fifth(2 * pair)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
                    fifth(2 * pair + 1),
                ),
            ]
        }
    }

    /// Q2_K's and Q3_K's low two bits of run `run` of half `half` (32 values: sub-blocks
    /// 8 half + 2 run and the next): bits 2 run and 2 run + 1 of `qs[32 half..32 half + 32]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn two_bits(qs: &[u8; 64], half: usize, run: usize) -> __m256i {
        let v = _mm256_loadu_si256(qs.as_ptr().add(32 * half) as *const __m256i);
        let shifted = _mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * run as i32));
        _mm256_and_si256(shifted, _mm256_set1_epi8(3))
    }

    /// Q3_K's codes (offset 4 not yet taken) of the same run: the two low bits, and bit
    /// 4 half + run of `hmask[l]` as the third (set: no offset, so the code is 4 higher).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn q3_k(b: &BlockQ3K, half: usize, run: usize) -> __m256i {
        let h = _mm256_loadu_si256(b.hmask.as_ptr() as *const __m256i);
        let bit = _mm256_srl_epi16(h, _mm_cvtsi32_si128((4 * half + run) as i32));
        let third = _mm256_slli_epi16(_mm256_and_si256(bit, _mm256_set1_epi8(1)), 2);
        _mm256_or_si256(two_bits(&b.qs, half, run), third)
    }

    /// 16 bytes of nibbles as 32 codes in value order: the low nibbles (values 0-15), then
    /// the high (16-31).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
        let mask = _mm_set1_epi8(0x0F);
        let q = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// The fifth bits of a legacy Q5 block: byte `i` is 16 where bit `i` of `qh` is set.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn fifth_bits(qh: u32) -> __m256i {
        let all = _mm256_set1_epi32(qh as i32);
        // Byte i takes byte i / 8 of qh (each 128-bit lane holds all four), then its bit i % 8.
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let bytes = _mm256_and_si256(_mm256_shuffle_epi8(all, spread), bit);
        _mm256_and_si256(_mm256_cmpeq_epi8(bytes, bit), _mm256_set1_epi8(16))
    }

    /// A legacy block's 32 codes in value order: its nibbles with `fifth`'s bits as the
    /// fifth bits.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn with_fifth(qs: &[u8; 16], fifth: u32) -> __m256i {
        _mm256_or_si256(nibbles(qs), fifth_bits(fifth))
    }

    /// The legacy formats: blocks of 32 codes (a nibble, and for the Q5 formats bit `i` of
    /// `qh` as the fifth bit of value `i`), each value `(code - OFFSET) · d`, plus the block's
    /// minimum `m` for the `_1` formats (the operations of their `dequantize`). The exact
    /// decode reads Q4_0 through its level table instead; the 8-bit dots read Q4_0 and Q5_0
    /// through this.
    pub trait Affine32 {
        const OFFSET: i32;
        const HAS_MIN: bool;
        /// `d` and the minimum `m` added (zero where not [`Affine32::HAS_MIN`]), as stored.
        fn scales(&self) -> (F16Bits, F16Bits);
        fn nibbles(&self) -> &[u8; 16];
        /// The fifth bits (0 for the 4-bit formats).
        fn fifth(&self) -> u32;
    }

    impl Affine32 for crate::formats::BlockQ4_0 {
        const OFFSET: i32 = 8;
        const HAS_MIN: bool = false;
        fn scales(&self) -> (F16Bits, F16Bits) {
            (self.d, F16Bits::default())
        }
        fn nibbles(&self) -> &[u8; 16] {
            &self.qs
        }
        fn fifth(&self) -> u32 {
            0
        }
    }

    impl Affine32 for BlockQ4_1 {
        const OFFSET: i32 = 0;
        const HAS_MIN: bool = true;
        fn scales(&self) -> (F16Bits, F16Bits) {
            (self.d, self.m)
        }
        fn nibbles(&self) -> &[u8; 16] {
            &self.qs
        }
        fn fifth(&self) -> u32 {
            0
        }
    }

    impl Affine32 for BlockQ5_0 {
        const OFFSET: i32 = 16;
        const HAS_MIN: bool = false;
        fn scales(&self) -> (F16Bits, F16Bits) {
            (self.d, F16Bits::default())
        }
        fn nibbles(&self) -> &[u8; 16] {
            &self.qs
        }
        fn fifth(&self) -> u32 {
            u32::from_le_bytes(self.qh)
        }
    }

    impl Affine32 for BlockQ5_1 {
        const OFFSET: i32 = 0;
        const HAS_MIN: bool = true;
        fn scales(&self) -> (F16Bits, F16Bits) {
            (self.d, self.m)
        }
        fn nibbles(&self) -> &[u8; 16] {
            &self.qs
        }
        fn fifth(&self) -> u32 {
            u32::from_le_bytes(self.qh)
        }
    }

    /// Q4_K's codes in `qs` bytes 32p..32p+32: sub-block 2p (low nibbles), then 2p + 1.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn q4_k(b: &BlockQ4K, pair: usize) -> [__m256i; 2] {
        let mask = _mm256_set1_epi8(0x0F);
        let v = _mm256_loadu_si256(b.qs.as_ptr().add(32 * pair) as *const __m256i);
        [
            _mm256_and_si256(v, mask),
            _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
        ]
    }

    /// Q6_K's codes (offset 32 not yet taken) of half `half`, by quarter of 32 values: 4 low
    /// bits from a nibble of `ql`, 2 high from `qh`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn q6_k(b: &BlockQ6K, half: usize) -> [__m256i; 4] {
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let load = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
        let ql0 = load(b.ql.as_ptr().add(64 * half));
        let ql1 = load(b.ql.as_ptr().add(64 * half + 32));
        let qh = load(b.qh.as_ptr().add(32 * half));
        [
            _mm256_or_si256(
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                _mm256_and_si256(qh, m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
            ),
        ]
    }
}

/// Each vectorised format's decode, written once for both widths: weights decoded to the
/// bits of `dequantize` (its f32 operations, or a fused one where its product is exact), a
/// vector of [`Width::LANES`] at a time, handed to a [`Take`] (the sums of up to four
/// activation rows, or memory).
#[cfg(target_arch = "x86_64")]
mod decode {
    use super::{codes, q3_scales, scales_and_mins, BlockQ2K, BlockQ3K, BlockQ6K};
    use crate::formats::{BlockIQ4XS, BlockQ4_1, BlockQ5_0, BlockQ5_1};
    use std::arch::x86_64::{__m256i, _mm256_set1_epi8, _mm256_sub_epi8};

    /// One SIMD width: its vectors and the operations the decodes use. Every method is
    /// inlined into the width's `#[target_feature]` entry points (`avx2::dot`, ...).
    pub trait Width {
        /// `LANES` f32 values.
        type F: Copy;
        /// `LANES` i32 values.
        type I: Copy;
        const LANES: usize;
        unsafe fn splat(v: f32) -> Self::F;
        /// The 32 / `LANES` groups of a run of 32 values.
        type Groups: IntoIterator<Item = Self::I>;
        /// Each group of `LANES` bytes of `codes` (32 unsigned bytes), widened to i32.
        unsafe fn widen(codes: __m256i) -> Self::Groups;
        /// The same for signed bytes.
        unsafe fn widen_signed(codes: __m256i) -> Self::Groups;
        unsafe fn to_f32(a: Self::I) -> Self::F;
        unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
        /// `a · b - c` and `a · b + c` in one instruction each, rounded once. The decodes
        /// use them only where `a · b` is exact in f32 (a scale of at most 17 significant
        /// bits times a code of at most 5), so they give the bits of a multiply followed by
        /// a subtract or add, as `dequantize` computes them.
        unsafe fn mul_sub(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
        unsafe fn mul_add(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    }

    /// Where a row's decoded weights go, a vector at a time.
    pub trait Take<W: Width> {
        /// Weights `w` of values `at..at + LANES` of the row, the `g`-th group of their run
        /// of 32.
        unsafe fn take(&mut self, w: W::F, at: usize, g: usize);
    }

    /// A format with a vectorised decode.
    pub trait Decode: Sized {
        /// Feeds every weight of `blocks` to `sink`, in order.
        unsafe fn decode<W: Width, S: Take<W>>(blocks: &[Self], sink: &mut S);
    }

    /// The 16-value sub-block of group `g` within a run of 32 values (the run's first or
    /// second sub-block).
    #[inline(always)]
    fn sub16<W: Width>(g: usize) -> usize {
        W::LANES * g / 16
    }

    /// 32 codes less `offset` (each difference in -128..=127, so a byte subtraction that
    /// wraps gives it), widened to i32 groups: one subtraction per 32 values, not one per
    /// group.
    #[inline(always)]
    unsafe fn levels<W: Width>(codes: __m256i, offset: i32) -> W::Groups {
        W::widen_signed(_mm256_sub_epi8(codes, _mm256_set1_epi8(offset as i8)))
    }

    /// Q4_K and Q5_K: `d · scale · code - dmin · min` of each sub-block of 32.
    impl<B: codes::WithMins> Decode for B {
        #[inline(always)]
        unsafe fn decode<W: Width, S: Take<W>>(blocks: &[Self], sink: &mut S) {
            for (i, b) in blocks.iter().enumerate() {
                let (d, dmin, scales) = b.header();
                let (d, dmin) = (d.get(), dmin.get());
                let (sc, m) = scales_and_mins(scales);
                for pair in 0..4 {
                    for (half, codes) in b.pair_codes(pair).into_iter().enumerate() {
                        let sub = 2 * pair + half;
                        let dl = W::splat(d * sc[sub] as f32);
                        let ml = W::splat(dmin * m[sub] as f32);
                        for (g, q) in W::widen(codes).into_iter().enumerate() {
                            let w = W::mul_sub(dl, W::to_f32(q), ml);
                            sink.take(w, 256 * i + 32 * sub + W::LANES * g, g);
                        }
                    }
                }
            }
        }
    }

    /// IQ4_XS: each run of 32 its scale times the levels.
    impl Decode for BlockIQ4XS {
        #[inline(always)]
        unsafe fn decode<W: Width, S: Take<W>>(blocks: &[Self], sink: &mut S) {
            for (i, b) in blocks.iter().enumerate() {
                let d = b.d.get();
                for ib in 0..8 {
                    let dl = W::splat(d * b.run_scale(ib) as f32);
                    for (g, q) in levels::<W>(codes::iq4_xs(b, ib), 128)
                        .into_iter()
                        .enumerate()
                    {
                        let level = W::to_f32(q);
                        sink.take(W::mul(dl, level), 256 * i + 32 * ib + W::LANES * g, g);
                    }
                }
            }
        }
    }

    /// IQ4_NL, MXFP4 and Q4_0: each value the level times the block's scale (the product
    /// `dequantize` takes, commuted, so the same bits).
    #[inline(always)]
    unsafe fn decode_table<B: codes::TableBlock, W: Width, S: Take<W>>(blocks: &[B], sink: &mut S) {
        for (i, b) in blocks.iter().enumerate() {
            let d = W::splat(b.scale());
            for (g, q) in levels::<W>(codes::levels(&B::BIASED, b.nibbles()), 128)
                .into_iter()
                .enumerate()
            {
                sink.take(W::mul(d, W::to_f32(q)), 32 * i + W::LANES * g, g);
            }
        }
    }

    /// Q4_1, Q5_0 and Q5_1: `(code - offset) · d`, plus `m` for the `_1` formats.
    #[inline(always)]
    unsafe fn decode_affine<B: codes::Affine32, W: Width, S: Take<W>>(blocks: &[B], sink: &mut S) {
        for (i, b) in blocks.iter().enumerate() {
            let (d, m) = b.scales();
            let (d, m) = (d.get(), m.get());
            let (d, m) = (W::splat(d), W::splat(m));
            let codes = codes::with_fifth(b.nibbles(), b.fifth());
            for (g, q) in levels::<W>(codes, B::OFFSET).into_iter().enumerate() {
                let q = W::to_f32(q);
                let w = if B::HAS_MIN {
                    W::mul_add(q, d, m)
                } else {
                    W::mul(q, d)
                };
                sink.take(w, 32 * i + W::LANES * g, g);
            }
        }
    }

    /// The formats of 32-value blocks, each through its family's decode.
    macro_rules! decode_through {
        ($family:ident: $($block:ty),*) => {$(
            impl Decode for $block {
                #[inline(always)]
                unsafe fn decode<W: Width, S: Take<W>>(blocks: &[Self], sink: &mut S) {
                    $family(blocks, sink)
                }
            }
        )*};
    }
    decode_through!(decode_table: crate::formats::BlockIQ4NL, crate::formats::BlockMXFP4, crate::formats::BlockQ4_0);
    decode_through!(decode_affine: BlockQ4_1, BlockQ5_0, BlockQ5_1);

    /// Q2_K: each value `d · scale · code - dmin · min` of its sub-block of 16.
    impl Decode for BlockQ2K {
        #[inline(always)]
        unsafe fn decode<W: Width, S: Take<W>>(blocks: &[Self], sink: &mut S) {
            for (i, b) in blocks.iter().enumerate() {
                let (dl, ml) = b.sub_scales();
                for half in 0..2 {
                    for run in 0..4 {
                        let sub = 8 * half + 2 * run;
                        let dl = [W::splat(dl[sub]), W::splat(dl[sub + 1])];
                        let ml = [W::splat(ml[sub]), W::splat(ml[sub + 1])];
                        for (g, q) in W::widen(codes::two_bits(&b.qs, half, run))
                            .into_iter()
                            .enumerate()
                        {
                            let (dl, ml) = (dl[sub16::<W>(g)], ml[sub16::<W>(g)]);
                            let w = W::mul_sub(dl, W::to_f32(q), ml);
                            sink.take(w, 256 * i + 128 * half + 32 * run + W::LANES * g, g);
                        }
                    }
                }
            }
        }
    }

    /// Q3_K: each value `d · scale · (code - 4)` of its sub-block of 16.
    impl Decode for BlockQ3K {
        #[inline(always)]
        unsafe fn decode<W: Width, S: Take<W>>(blocks: &[Self], sink: &mut S) {
            for (i, b) in blocks.iter().enumerate() {
                let d = b.d.get();
                let scales = q3_scales(&b.scales);
                for half in 0..2 {
                    for run in 0..4 {
                        let codes = codes::q3_k(b, half, run);
                        for (g, q) in levels::<W>(codes, 4).into_iter().enumerate() {
                            let sub = 8 * half + 2 * run + sub16::<W>(g);
                            let dl = W::splat(d * scales[sub] as f32);
                            let at = 256 * i + 128 * half + 32 * run + W::LANES * g;
                            sink.take(W::mul(dl, W::to_f32(q)), at, g);
                        }
                    }
                }
            }
        }
    }

    /// Q6_K: each value `d · scale · (code - 32)` of its sub-block of 16.
    impl Decode for BlockQ6K {
        #[inline(always)]
        unsafe fn decode<W: Width, S: Take<W>>(blocks: &[Self], sink: &mut S) {
            for (i, b) in blocks.iter().enumerate() {
                let d = b.d.get();
                for half in 0..2 {
                    for (quarter, codes) in codes::q6_k(b, half).into_iter().enumerate() {
                        for (g, q) in levels::<W>(codes, 32).into_iter().enumerate() {
                            let sub = 8 * half + sub16::<W>(g) + 2 * quarter;
                            let dl = W::splat(d * b.scales[sub] as f32);
                            let at = 256 * i + 128 * half + 32 * quarter + W::LANES * g;
                            sink.take(W::mul(dl, W::to_f32(q)), at, g);
                        }
                    }
                }
            }
        }
    }
}

/// Eight lanes, into the sums of up to four activation rows (one row: four independent
/// 8-lane sums).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::decode::{Decode, Take, Width};
    use std::arch::x86_64::*;

    pub struct Avx2;

    impl Width for Avx2 {
        type F = __m256;
        type I = __m256i;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            _mm256_set1_ps(v)
        }
        type Groups = [__m256i; 4];
        #[inline(always)]
        unsafe fn widen(codes: __m256i) -> [__m256i; 4] {
            let lo = _mm256_castsi256_si128(codes);
            let hi = _mm256_extracti128_si256(codes, 1);
            [
                _mm256_cvtepu8_epi32(lo),
                _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                _mm256_cvtepu8_epi32(hi),
                _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)),
            ]
        }
        #[inline(always)]
        unsafe fn widen_signed(codes: __m256i) -> [__m256i; 4] {
            let lo = _mm256_castsi256_si128(codes);
            let hi = _mm256_extracti128_si256(codes, 1);
            [
                _mm256_cvtepi8_epi32(lo),
                _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)),
                _mm256_cvtepi8_epi32(hi),
                _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)),
            ]
        }
        #[inline(always)]
        unsafe fn to_f32(a: __m256i) -> __m256 {
            _mm256_cvtepi32_ps(a)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul_sub(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmsub_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
    }

    /// The sums of up to 4 activation rows (`x`, `x + stride`, ...) against one weight row:
    /// group `g` of a run of 32 goes to sum `g % (4 / T)` of each row, so one row keeps 4
    /// independent sums and 4 rows one each.
    struct Sums<const T: usize> {
        acc: [[__m256; 4]; T],
        x: *const f32,
        stride: usize,
    }

    impl<const T: usize> Take<Avx2> for Sums<T> {
        #[inline(always)]
        unsafe fn take(&mut self, w: __m256, at: usize, g: usize) {
            for (t, acc) in self.acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(self.x.add(t * self.stride + at));
                let a = &mut acc[g % (4 / T)];
                *a = _mm256_fmadd_ps(w, x, *a);
            }
        }
    }

    /// `out.len()` (1 to 4) sums at once: each weight decoded once for all of them.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot<B: Decode>(blocks: &[B], x: &[f32], stride: usize, out: &mut [f32]) {
        match out.len() {
            1 => rows::<B, 1>(blocks, x, stride, out),
            2 => rows::<B, 2>(blocks, x, stride, out),
            3 => rows::<B, 3>(blocks, x, stride, out),
            _ => rows::<B, 4>(blocks, x, stride, out),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<B: Decode, const T: usize>(
        blocks: &[B],
        x: &[f32],
        stride: usize,
        out: &mut [f32],
    ) {
        let mut sums = Sums::<T> {
            acc: [[_mm256_setzero_ps(); 4]; T],
            x: x.as_ptr(),
            stride,
        };
        B::decode::<Avx2, _>(blocks, &mut sums);
        for (o, acc) in out.iter_mut().zip(&sums.acc) {
            *o = super::super::x86::sum_lanes(*acc);
        }
    }
}

/// Sixteen lanes, into the sums of up to four activation rows (one row: two independent
/// 16-lane sums), or to memory (the batched forward's dequantization).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::decode::{Decode, Take, Width};
    use std::arch::x86_64::*;

    pub struct Avx512;

    impl Width for Avx512 {
        type F = __m512;
        type I = __m512i;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m512 {
            _mm512_set1_ps(v)
        }
        type Groups = [__m512i; 2];
        #[inline(always)]
        unsafe fn widen(codes: __m256i) -> [__m512i; 2] {
            [
                _mm512_cvtepu8_epi32(_mm256_castsi256_si128(codes)),
                _mm512_cvtepu8_epi32(_mm256_extracti128_si256(codes, 1)),
            ]
        }
        #[inline(always)]
        unsafe fn widen_signed(codes: __m256i) -> [__m512i; 2] {
            [
                _mm512_cvtepi8_epi32(_mm256_castsi256_si128(codes)),
                _mm512_cvtepi8_epi32(_mm256_extracti128_si256(codes, 1)),
            ]
        }
        #[inline(always)]
        unsafe fn to_f32(a: __m512i) -> __m512 {
            _mm512_cvtepi32_ps(a)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul_sub(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmsub_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
    }

    /// The sums of T activation rows against one weight row: one row alternates two sums,
    /// more rows keep one each.
    struct Sums<const T: usize> {
        acc: [[__m512; 2]; T],
        x: *const f32,
        stride: usize,
    }

    impl<const T: usize> Take<Avx512> for Sums<T> {
        #[inline(always)]
        unsafe fn take(&mut self, w: __m512, at: usize, g: usize) {
            let i = if T == 1 { g % 2 } else { 0 };
            for (t, acc) in self.acc.iter_mut().enumerate() {
                let x = _mm512_loadu_ps(self.x.add(t * self.stride + at));
                acc[i] = _mm512_fmadd_ps(w, x, acc[i]);
            }
        }
    }

    /// The decoded values themselves.
    struct Store(*mut f32);

    impl Take<Avx512> for Store {
        #[inline(always)]
        unsafe fn take(&mut self, w: __m512, at: usize, _g: usize) {
            _mm512_storeu_ps(self.0.add(at), w);
        }
    }

    /// `out.len()` (1 to 4) sums at once: each weight decoded once for all of them.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn dot<B: Decode>(blocks: &[B], x: &[f32], stride: usize, out: &mut [f32]) {
        match out.len() {
            1 => rows::<B, 1>(blocks, x, stride, out),
            2 => rows::<B, 2>(blocks, x, stride, out),
            3 => rows::<B, 3>(blocks, x, stride, out),
            _ => rows::<B, 4>(blocks, x, stride, out),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn rows<B: Decode, const T: usize>(
        blocks: &[B],
        x: &[f32],
        stride: usize,
        out: &mut [f32],
    ) {
        let mut sums = Sums::<T> {
            acc: [[_mm512_setzero_ps(); 2]; T],
            x: x.as_ptr(),
            stride,
        };
        B::decode::<Avx512, _>(blocks, &mut sums);
        for (o, acc) in out.iter_mut().zip(&sums.acc) {
            *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
    }

    /// `out` = the values of `blocks`, the same bits as their `dequantize`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn dequantize<B: Decode + crate::formats::Block>(blocks: &[B], out: &mut [f32]) {
        assert!(out.len() >= B::VALUES * blocks.len());
        B::decode::<Avx512, _>(blocks, &mut Store(out.as_mut_ptr()));
    }
}
