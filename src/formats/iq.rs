//! Non-linear 4-bit formats: each 4-bit code indexes ggml's table of 16 levels
//! (`kvalues_iq4nl`), scaled by an f16 `d` (IQ4_NL, blocks of 32) or by `d` times a signed
//! 6-bit sub-block scale (IQ4_XS, super-blocks of 256 in 8 sub-blocks of 32). Low nibbles hold
//! values 0..16 of a 32-value run, high nibbles 16..32.

use super::int8::{Codes, Q8Row};
use super::{Block, F16Bits, GpuLayout, QK_K};
use crate::gguf::GgmlType;

/// ggml's `kvalues_iq4nl`.
pub const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `block_iq4_nl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIQ4NL {
    pub d: F16Bits,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);

/// ggml's `block_iq4_xs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIQ4XS {
    pub d: F16Bits,
    /// High 2 bits of the 8 sub-block scales (little-endian u16).
    pub scales_h: [u8; 2],
    /// Low 4 bits of the 8 sub-block scales.
    pub scales_l: [u8; 4],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == 136);

/// Decodes 32 values from 16 bytes of codes with scale `d`.
#[inline]
fn decode_run(d: f32, qs: &[u8], out: &mut [f32]) {
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(qs) {
        *l = d * IQ4_LEVELS[(q & 0x0F) as usize] as f32;
        *h = d * IQ4_LEVELS[(q >> 4) as usize] as f32;
    }
}

/// The 8-bit mode's codes of a run of 32 nibbles indexing `levels` (IQ4's, MXFP4's): each
/// value's level plus 128 (the offset its [`Codes`] subtracts), values 0..16 from the low
/// nibbles, 16..32 from the high.
pub(super) fn level_codes(levels: &[i8; 16], qs: &[u8], codes: &mut [u8]) {
    let (lo, hi) = codes.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(qs) {
        *l = (levels[(q & 0x0F) as usize] as u8) ^ 0x80;
        *h = (levels[(q >> 4) as usize] as u8) ^ 0x80;
    }
}

/// The codes of 32 values for scale `d` (nearest level), packed as `decode_run` reads them.
fn encode_run(d: f32, values: &[f32]) -> [u8; 16] {
    let code = |v: f32| -> u8 {
        if d == 0.0 {
            // Level 8 (value 1) is the closest to zero.
            return 8;
        }
        let t = v / d;
        (0..16)
            .min_by(|&a, &b| {
                (IQ4_LEVELS[a] as f32 - t)
                    .abs()
                    .total_cmp(&(IQ4_LEVELS[b] as f32 - t).abs())
            })
            .unwrap() as u8
    };
    std::array::from_fn(|j| code(values[j]) | (code(values[j + 16]) << 4))
}

/// The scale mapping the value of largest magnitude to the level -127.
fn run_scale(values: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in values {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max / IQ4_LEVELS[0] as f32
}

impl Block for BlockIQ4NL {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const VALUES: usize = 32;
    const GPU: Option<GpuLayout> = Some(GpuLayout::IQ4NL);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        decode_run(self.d.get(), &self.qs, out);
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 32,
        offset: 128,
        integer_rows: 1,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        level_codes(&IQ4_LEVELS, &self.qs, codes);
        (scale[0], min[0]) = (self.d.get(), 0.0);
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    fn quantize(values: &[f32]) -> Self {
        let d = F16Bits::from_f32(run_scale(values));
        BlockIQ4NL {
            d,
            qs: encode_run(d.get(), values),
        }
    }

    vectorised_rows!();
}

impl BlockIQ4XS {
    /// The signed 6-bit scale of run `ib` (0..8): 4 low bits from `scales_l`, 2 high from
    /// `scales_h`, minus 32.
    #[inline]
    pub fn run_scale(&self, ib: usize) -> i32 {
        let high = u16::from_le_bytes(self.scales_h);
        let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F;
        (low | ((((high >> (2 * ib)) & 3) as u8) << 4)) as i32 - 32
    }
}

impl Block for BlockIQ4XS {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const VALUES: usize = QK_K;
    const GPU: Option<GpuLayout> = Some(GpuLayout::IQ4XS);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.get();
        for (ib, run) in out.chunks_exact_mut(32).enumerate() {
            decode_run(
                d * self.run_scale(ib) as f32,
                &self.qs[16 * ib..16 * ib + 16],
                run,
            );
        }
    }

    const CODES: Option<Codes> = Some(Codes {
        group: 32,
        offset: 128,
        integer_rows: 8,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        let d = self.d.get();
        for (ib, c) in codes.chunks_exact_mut(32).enumerate() {
            level_codes(&IQ4_LEVELS, &self.qs[16 * ib..16 * ib + 16], c);
            (scale[ib], min[ib]) = (d * self.run_scale(ib) as f32, 0.0);
        }
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    vectorised_rows!();

    fn quantize(values: &[f32]) -> Self {
        let scales: Vec<f32> = values.chunks_exact(32).map(run_scale).collect();
        let amax = scales.iter().fold(0f32, |m, s| m.max(s.abs()));
        let d = F16Bits::from_f32(amax / 31.0);
        let ls: Vec<i32> = scales
            .iter()
            .map(|&s| {
                if d.get() > 0.0 {
                    ((s / d.get()).round() as i32).clamp(-32, 31)
                } else {
                    0
                }
            })
            .collect();
        let mut block = BlockIQ4XS {
            d,
            scales_h: [0; 2],
            scales_l: [0; 4],
            qs: [0; 128],
        };
        let mut high = 0u16;
        for (ib, (&l, run)) in ls.iter().zip(values.chunks_exact(32)).enumerate() {
            let code = (l + 32) as u8;
            block.scales_l[ib / 2] |= (code & 0x0F) << (4 * (ib % 2));
            high |= ((code >> 4) as u16) << (2 * ib);
            let qs = encode_run(d.get() * l as f32, run);
            block.qs[16 * ib..16 * ib + 16].copy_from_slice(&qs);
        }
        block.scales_h = high.to_le_bytes();
        block
    }
}

/// IQ4_NL's GPU layout: the codes to `quants`, `d` to `scales` (the 18-byte block is not a
/// whole number of u32).
pub(super) fn pack_gpu_iq4_nl(bytes: &[u8], quants: &mut Vec<u8>, scales: &mut Vec<u8>) {
    for b in bytemuck::cast_slice::<u8, BlockIQ4NL>(bytes) {
        quants.extend_from_slice(&b.qs);
        scales.extend_from_slice(&b.d.0);
    }
}

/// IQ4_XS's GPU layout: the codes to `quants`, the 8 bytes before them (`d`, `scales_h`,
/// `scales_l`) to `scales` (the 136-byte block is not a whole number of vec4).
pub(super) fn pack_gpu_iq4_xs(bytes: &[u8], quants: &mut Vec<u8>, scales: &mut Vec<u8>) {
    for b in bytemuck::cast_slice::<u8, BlockIQ4XS>(bytes) {
        quants.extend_from_slice(&b.qs);
        scales.extend_from_slice(&b.d.0);
        scales.extend_from_slice(&b.scales_h);
        scales.extend_from_slice(&b.scales_l);
    }
}
