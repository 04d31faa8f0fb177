//! ggml's first quantizations: blocks of 32 values with 4 or 5 bits each and one f16 scale
//! `d` (`_0`: value = `d · (q - offset)`) or a scale and a minimum `m` (`_1`: `d · q + m`).
//! Low nibbles hold values 0..16 of a block, high nibbles 16..32; Q5's fifth bits are bit
//! `i` of the little-endian 32-bit `qh` for value `i`.

use super::int8::{Codes, Q8Row};
use super::{Block, F16Bits, GpuLayout};
use crate::gguf::GgmlType;

/// ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    pub d: F16Bits,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// ggml's `block_q4_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_1 {
    pub d: F16Bits,
    pub m: F16Bits,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// ggml's `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 {
    pub d: F16Bits,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// ggml's `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_1 {
    pub d: F16Bits,
    pub m: F16Bits,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// Packs 32 codes (each < 16 after masking) into nibbles: value i low, value 16 + i high.
fn pack_nibbles(q: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4))
}

/// The fifth bits of 32 codes.
fn pack_high_bits(q: &[u8; 32]) -> [u8; 4] {
    let bits = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (i, &v)| h | ((((v >> 4) & 1) as u32) << i));
    bits.to_le_bytes()
}

/// The value of largest magnitude, with its sign (ggml's `_0` quantizers scale by it).
fn signed_absmax(values: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in values {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

impl Block for BlockQ4_0 {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::Q4_0;
    const VALUES: usize = 32;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q4_0);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.get();
        let (lo, hi) = out.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&self.qs) {
            *l = ((q & 0x0F) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 32,
        offset: 8,
        integer_rows: 1,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        let (lo, hi) = codes.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&self.qs) {
            (*l, *h) = (q & 0x0F, q >> 4);
        }
        (scale[0], min[0]) = (self.d.get(), 0.0);
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    /// ggml's `quantize_row_q4_0_ref`.
    fn quantize(values: &[f32]) -> Self {
        let d = signed_absmax(values) / -8.0;
        let id = inverse(d);
        let q = std::array::from_fn(|i| ((values[i] * id + 8.5) as i8).min(15) as u8);
        BlockQ4_0 {
            d: F16Bits::from_f32(d),
            qs: pack_nibbles(&q),
        }
    }

    vectorised_rows!();
}

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const VALUES: usize = 32;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q4_1);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.get(), self.m.get());
        let (lo, hi) = out.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&self.qs) {
            *l = (q & 0x0F) as f32 * d + m;
            *h = (q >> 4) as f32 * d + m;
        }
    }

    /// ggml's `quantize_row_q4_1_ref`.
    fn quantize(values: &[f32]) -> Self {
        let (min, max) = min_max(values);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        let q = std::array::from_fn(|i| (((values[i] - min) * id + 0.5) as i8).min(15) as u8);
        BlockQ4_1 {
            d: F16Bits::from_f32(d),
            m: F16Bits::from_f32(min),
            qs: pack_nibbles(&q),
        }
    }

    vectorised_rows!();
}

impl Block for BlockQ5_0 {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::Q5_0;
    const VALUES: usize = 32;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q5_0);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.get();
        let qh = u32::from_le_bytes(self.qh);
        let (lo, hi) = out.split_at_mut(16);
        for (j, ((l, h), &q)) in lo.iter_mut().zip(hi).zip(&self.qs).enumerate() {
            let (bl, bh) = (((qh >> j) & 1) << 4, ((qh >> (j + 16)) & 1) << 4);
            *l = (((q & 0x0F) as u32 | bl) as i32 - 16) as f32 * d;
            *h = (((q >> 4) as u32 | bh) as i32 - 16) as f32 * d;
        }
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 32,
        offset: 16,
        integer_rows: 1,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        let qh = u32::from_le_bytes(self.qh);
        let (lo, hi) = codes.split_at_mut(16);
        for (j, ((l, h), &q)) in lo.iter_mut().zip(hi).zip(&self.qs).enumerate() {
            *l = (q & 0x0F) | (((qh >> j) & 1) << 4) as u8;
            *h = (q >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
        }
        (scale[0], min[0]) = (self.d.get(), 0.0);
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    /// ggml's `quantize_row_q5_0_ref`.
    fn quantize(values: &[f32]) -> Self {
        let d = signed_absmax(values) / -16.0;
        let id = inverse(d);
        let q = std::array::from_fn(|i| ((values[i] * id + 16.5) as i8).min(31) as u8);
        BlockQ5_0 {
            d: F16Bits::from_f32(d),
            qh: pack_high_bits(&q),
            qs: pack_nibbles(&q),
        }
    }

    vectorised_rows!();
}

impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const VALUES: usize = 32;
    const GPU: Option<GpuLayout> = Some(GpuLayout::Q5_1);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.get(), self.m.get());
        let qh = u32::from_le_bytes(self.qh);
        let (lo, hi) = out.split_at_mut(16);
        for (j, ((l, h), &q)) in lo.iter_mut().zip(hi).zip(&self.qs).enumerate() {
            let (bl, bh) = (((qh >> j) & 1) << 4, ((qh >> (j + 16)) & 1) << 4);
            *l = ((q & 0x0F) as u32 | bl) as f32 * d + m;
            *h = ((q >> 4) as u32 | bh) as f32 * d + m;
        }
    }

    /// ggml's `quantize_row_q5_1_ref`.
    fn quantize(values: &[f32]) -> Self {
        let (min, max) = min_max(values);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        let q = std::array::from_fn(|i| (((values[i] - min) * id + 0.5) as u8).min(31));
        BlockQ5_1 {
            d: F16Bits::from_f32(d),
            m: F16Bits::from_f32(min),
            qh: pack_high_bits(&q),
            qs: pack_nibbles(&q),
        }
    }

    vectorised_rows!();
}

/// Rows of Q4_0 or Q5_0 in the Q8_0 layout's arrays (`GpuLayout::Q8_0`): each block's codes
/// less their offset as int8, and its scale as the same f16 (`d` converts back exactly), so
/// every value decodes to the same bits.
pub(super) fn pack_widened<B: Block>(bytes: &[u8], quants: &mut Vec<u8>, scales: &mut Vec<u8>) {
    let offset = B::CODES.expect("a widened format has codes").offset as i16;
    let (mut codes, mut scale, mut min) = ([0u8; 32], [0f32; 1], [0f32; 1]);
    for b in bytemuck::cast_slice::<u8, B>(bytes) {
        b.codes(&mut codes[..B::VALUES], &mut scale, &mut min);
        debug_assert!(B::VALUES == 32 && min[0] == 0.0);
        quants.extend(codes.iter().map(|&c| (c as i16 - offset) as i8 as u8));
        scales.extend_from_slice(&F16Bits::from_f32(scale[0]).0);
    }
}

/// The GPU layouts (see [`GpuLayout`]): the nibbles to `quants`; `d` (and `m`, `qh`) to
/// `scales`.
pub(super) fn pack_gpu(
    layout: GpuLayout,
    bytes: &[u8],
    quants: &mut Vec<u8>,
    scales: &mut Vec<u8>,
) {
    match layout {
        GpuLayout::Q4_0 => {
            for b in bytemuck::cast_slice::<u8, BlockQ4_0>(bytes) {
                quants.extend_from_slice(&b.qs);
                scales.extend_from_slice(&b.d.0);
            }
        }
        GpuLayout::Q4_1 => {
            for b in bytemuck::cast_slice::<u8, BlockQ4_1>(bytes) {
                quants.extend_from_slice(&b.qs);
                scales.extend_from_slice(&b.d.0);
                scales.extend_from_slice(&b.m.0);
            }
        }
        GpuLayout::Q5_0 => {
            for b in bytemuck::cast_slice::<u8, BlockQ5_0>(bytes) {
                quants.extend_from_slice(&b.qs);
                scales.extend_from_slice(&b.d.get().to_le_bytes());
                scales.extend_from_slice(&b.qh);
            }
        }
        GpuLayout::Q5_1 => {
            for b in bytemuck::cast_slice::<u8, BlockQ5_1>(bytes) {
                quants.extend_from_slice(&b.qs);
                scales.extend_from_slice(&b.d.0);
                scales.extend_from_slice(&b.m.0);
                scales.extend_from_slice(&b.qh);
            }
        }
        _ => unreachable!("{} is not a legacy layout", layout.name()),
    }
}
