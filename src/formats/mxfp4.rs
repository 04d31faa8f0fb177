//! MXFP4 (OCP microscaling): blocks of 32 four-bit e2m1 floats sharing a power-of-two scale
//! stored as an 8-bit exponent (e8m0). ggml keeps the e2m1 levels doubled as integers and
//! halves the scale. Low nibbles hold values 0..16, high nibbles 16..32.

use super::int8::{Codes, Q8Row};
use super::{Block, GpuLayout};
use crate::gguf::GgmlType;

/// ggml's `kvalues_mxfp4`: the e2m1 values, doubled.
pub const MXFP4_LEVELS: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml's `block_mxfp4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockMXFP4 {
    /// The shared exponent (e8m0).
    pub e: u8,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockMXFP4>() == 17);

/// Half of 2^(e - 127), as ggml's `GGML_E8M0_TO_FP32_HALF` (subnormal for e < 2).
#[inline]
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

impl BlockMXFP4 {
    /// The block's scale: half of 2^(e - 127).
    #[inline]
    pub fn scale(&self) -> f32 {
        e8m0_half(self.e)
    }
}

impl Block for BlockMXFP4 {
    wide_8_bit!();

    const TYPE: GgmlType = GgmlType::MXFP4;
    const VALUES: usize = 32;
    const GPU: Option<GpuLayout> = Some(GpuLayout::MXFP4);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        let d = e8m0_half(self.e);
        let (lo, hi) = out.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&self.qs) {
            *l = MXFP4_LEVELS[(q & 0x0F) as usize] as f32 * d;
            *h = MXFP4_LEVELS[(q >> 4) as usize] as f32 * d;
        }
    }

    /// The levels plus 128 (the offset [`Codes`] subtracts), the scale the block's.
    const CODES: Option<Codes> = Some(Codes {
        group: 32,
        offset: 128,
        integer_rows: 1,
    });

    fn codes(&self, codes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
        super::iq::level_codes(&MXFP4_LEVELS, &self.qs, codes);
        (scale[0], min[0]) = (e8m0_half(self.e), 0.0);
    }

    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        super::int8::dot_rows(blocks, xs, out)
    }

    /// ggml's `quantize_row_mxfp4_ref`: exponent `floor(log2(amax)) - 2`, nearest level.
    fn quantize(values: &[f32]) -> Self {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = if amax > 0.0 {
            (amax.log2().floor() - 2.0 + 127.0).clamp(0.0, 254.0) as u8
        } else {
            0
        };
        let d = e8m0_half(e);
        let code = |v: f32| -> u8 {
            (0..16)
                .min_by(|&a, &b| {
                    (d * MXFP4_LEVELS[a] as f32 - v)
                        .abs()
                        .total_cmp(&(d * MXFP4_LEVELS[b] as f32 - v).abs())
                })
                .unwrap() as u8
        };
        BlockMXFP4 {
            e,
            qs: std::array::from_fn(|j| code(values[j]) | (code(values[j + 16]) << 4)),
        }
    }

    vectorised_rows!();
}

/// The GPU layout: the codes to `quants`, the exponent bytes to `scales` (the 17-byte block
/// is not a whole number of u32).
pub(super) fn pack_gpu(bytes: &[u8], quants: &mut Vec<u8>, scales: &mut Vec<u8>) {
    for b in bytemuck::cast_slice::<u8, BlockMXFP4>(bytes) {
        quants.extend_from_slice(&b.qs);
        scales.push(b.e);
    }
}
