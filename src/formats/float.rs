//! Unquantized formats: one value per "block". The GPU keeps each as the file stores it.

use super::{Block, F16Bits, GpuLayout, GROUP};
use crate::gguf::GgmlType;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockF32(pub [u8; 4]);
const _: () = assert!(std::mem::size_of::<BlockF32>() == 4);

impl Block for BlockF32 {
    const TYPE: GgmlType = GgmlType::F32;
    const VALUES: usize = 1;
    const GPU: Option<GpuLayout> = Some(GpuLayout::F32);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        out[0] = f32::from_le_bytes(self.0);
    }

    fn quantize(values: &[f32]) -> Self {
        BlockF32(values[0].to_le_bytes())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockF16(pub F16Bits);
const _: () = assert!(std::mem::size_of::<BlockF16>() == 2);

impl Block for BlockF16 {
    const TYPE: GgmlType = GgmlType::F16;
    const VALUES: usize = 1;
    const GPU: Option<GpuLayout> = Some(GpuLayout::F16);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        out[0] = self.0.get();
    }

    fn quantize(values: &[f32]) -> Self {
        BlockF16(F16Bits::from_f32(values[0]))
    }

    /// `half`'s slice conversion, F16C eight values at a time where the CPU has it (the same
    /// bits: every f16 is exact in f32), through an aligned copy of the bits (a row of a
    /// mapped file may start at any byte).
    #[inline]
    fn dequantize_blocks(blocks: &[Self], out: &mut [f32]) {
        let mut bits = [0u16; GROUP];
        for (chunk, out) in blocks.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            let bits = &mut bits[..chunk.len()];
            bytemuck::cast_slice_mut::<u16, u8>(bits).copy_from_slice(bytemuck::cast_slice(chunk));
            for b in bits.iter_mut() {
                *b = u16::from_le(*b);
            }
            bits.reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(&mut out[..chunk.len()]);
        }
    }

    /// The reference dot's sums over values decoded by the row decode.
    #[inline]
    fn dot(blocks: &[Self], x: &[f32]) -> f32 {
        super::dot_decoded(blocks, x, Self::dequantize_blocks)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockBF16(pub [u8; 2]);
const _: () = assert!(std::mem::size_of::<BlockBF16>() == 2);

impl Block for BlockBF16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const VALUES: usize = 1;
    const GPU: Option<GpuLayout> = Some(GpuLayout::BF16);

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        out[0] = f32::from_bits((u16::from_le_bytes(self.0) as u32) << 16);
    }

    /// Round to nearest even, NaN kept quiet (ggml's `ggml_compute_fp32_to_bf16`).
    fn quantize(values: &[f32]) -> Self {
        BlockBF16(half::bf16::from_f32(values[0]).to_bits().to_le_bytes())
    }
}
