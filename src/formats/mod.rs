//! Weight formats: how a tensor's values are stored in a GGUF file, and everything the engine
//! does with that storage. This module is the only place that knows a block layout.
//!
//! Each format is a `#[repr(C)]` block laid out byte for byte as ggml's `block_*` struct,
//! implementing [`Block`]: decode (exactly as ggml's `dequantize_row_*`), encode (for synthetic
//! models and tests), and the layout the GPU keeps it in. [`FORMATS`] turns the blocks into one
//! table keyed by [`GgmlType`]; the CPU backend, the GPU packer, synth and the tests all go
//! through [`of`]. Blocks have alignment 1 (f16 fields are byte pairs), so a row is read in
//! place from any offset of a memory-mapped file.
//!
//! Families: `float` (F32, F16, BF16), `q8_0`, `legacy` (Q4_0, Q4_1, Q5_0, Q5_1), `kquants`
//! (Q2_K to Q6_K), `iq` (IQ4_NL, IQ4_XS), `mxfp4`. A new format: its block in the family's
//! file (or a new one), and one line in [`FORMATS`].

/// Inside a format's `impl Block` when it implements `int8::WideCodes`: the 8-bit mode's
/// many-row product where this CPU runs it.
macro_rules! wide_8_bit {
    () => {
        fn has_dot_q8_wide() -> bool {
            super::int8::wide_available()
        }

        fn dot_q8_wide(blocks: &[Self], x: &super::int8::Q8Lanes, out: &mut [f32]) {
            super::int8::wide_rows(blocks, x, out)
        }
    };
}

/// Inside a format's `impl Block`: its row decode and dots through the vectorised decode it
/// implements (`kquants::Vectorised`), at the widest width this CPU runs.
macro_rules! vectorised_rows {
    () => {
        #[inline]
        fn dequantize_blocks(blocks: &[Self], out: &mut [f32]) {
            crate::formats::kquants::simd_dequantize(blocks, out)
        }

        #[inline]
        fn dot(blocks: &[Self], x: &[f32]) -> f32 {
            crate::formats::kquants::simd_dot(blocks, x)
        }

        #[inline]
        fn has_dot_tokens() -> bool {
            crate::formats::kquants::simd_rows::<Self>().is_some()
        }

        #[inline]
        fn dot_tokens(blocks: &[Self], x: &[f32], stride: usize, out: &mut [f32]) {
            crate::formats::kquants::simd_dot_tokens(blocks, x, stride, out)
        }
    };
}

mod float;
pub mod int8;
mod iq;
mod kquants;
mod legacy;
mod mxfp4;
mod q8_0;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

pub use float::{BlockBF16, BlockF16, BlockF32};
pub use iq::{BlockIQ4NL, BlockIQ4XS, IQ4_LEVELS};
pub use kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, QK_K};
pub use legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1};
pub use mxfp4::{BlockMXFP4, MXFP4_LEVELS};
pub use q8_0::BlockQ8_0;

use crate::gguf::GgmlType;
use int8::{Codes, Q8Lanes, Q8Row};

/// An f16 as stored in a block: two little-endian bytes (alignment 1).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct F16Bits(pub [u8; 2]);

impl F16Bits {
    /// The value as f32 (exact: every f16 is an f32). Written out rather than through
    /// `half`, whose conversion asks the CPU for F16C on every call: for a block of 32
    /// values the call cost as much as decoding them. Normal values move their exponent,
    /// subnormals scale their integer mantissa, infinities and NaNs keep theirs.
    #[inline]
    pub fn get(self) -> f32 {
        let h = u16::from_le_bytes(self.0) as u32;
        let sign = (h & 0x8000) << 16;
        let magnitude = h & 0x7FFF;
        let bits = if magnitude >= 0x7C00 {
            (magnitude << 13) | 0x7F80_0000
        } else if magnitude >= 0x0400 {
            (magnitude << 13) + ((127 - 15) << 23)
        } else {
            (magnitude as f32 * (1.0 / (1 << 24) as f32)).to_bits()
        };
        f32::from_bits(bits | sign)
    }

    /// Round to nearest even, as ggml's `GGML_FP32_TO_FP16`.
    pub fn from_f32(v: f32) -> F16Bits {
        F16Bits(half::f16::from_f32(v).to_bits().to_le_bytes())
    }
}

/// One block of a format. Implemented by the `#[repr(C)]` structs of this module.
pub trait Block: bytemuck::Pod + Send + Sync {
    const TYPE: GgmlType;
    /// Values one block holds (a divisor of [`GROUP`]).
    const VALUES: usize;
    /// How the GPU keeps this format; `None`: the GPU cannot compute with it yet.
    const GPU: Option<GpuLayout>;

    /// `out` (length [`Self::VALUES`]) = the block's values, bit for bit as ggml decodes them.
    fn dequantize(&self, out: &mut [f32]);

    /// Encodes [`Self::VALUES`] values. Legacy formats round as ggml's `quantize_row_*_ref`;
    /// the K-quants choose their scales more simply than llama.cpp (any encoding decodes
    /// exactly, which is all the engine relies on).
    fn quantize(values: &[f32]) -> Self;

    /// Decodes a row of blocks: block by block, or a hand-vectorised version that gives the
    /// same bits (the batched CPU forward decodes every weight row it multiplies).
    #[inline]
    fn dequantize_blocks(blocks: &[Self], out: &mut [f32]) {
        for (b, o) in blocks.iter().zip(out.chunks_exact_mut(Self::VALUES)) {
            b.dequantize(o);
        }
    }

    /// Dot product of a row of blocks with `x`: the hand-vectorised version where a format has
    /// one and the CPU supports it, otherwise [`dot_scalar`].
    #[inline]
    fn dot(blocks: &[Self], x: &[f32]) -> f32 {
        dot_scalar(blocks, x)
    }

    /// Whether [`Block::dot_tokens`] has a version for this format on this CPU (else the
    /// batched forward decodes a row once and multiplies it).
    #[inline]
    fn has_dot_tokens() -> bool {
        false
    }

    /// [`Block::dot`] of one row with up to [`DOT_TOKENS`] activation rows at once,
    /// `x[t * stride..]` for `out[t]`, each weight decoded once for all of them: the batched
    /// forward's products with an expert's few tokens. Called only where
    /// [`Block::has_dot_tokens`]; this default is the plain dot per row.
    #[inline]
    fn dot_tokens(blocks: &[Self], x: &[f32], stride: usize, out: &mut [f32]) {
        let n = blocks.len() * Self::VALUES;
        for (t, o) in out.iter_mut().enumerate() {
            *o = Self::dot(blocks, &x[t * stride..][..n]);
        }
    }

    /// How the CPU's 8-bit mode reads a block as integer codes (`int8`); `None`: the format
    /// multiplies in f32 in that mode too.
    const CODES: Option<Codes> = None;

    /// The block as [`Codes`]: unsigned `codes` (one per value), and per group its `scale`
    /// and `min`. Called only where [`Block::CODES`] is set.
    fn codes(&self, _codes: &mut [u8], _scale: &mut [f32], _min: &mut [f32]) {
        unreachable!("{} has no 8-bit codes", Self::TYPE)
    }

    /// The 8-bit mode's dot of a row with activations in 8 bits ([`Block::dot_q8_tokens`]
    /// of one row).
    #[inline]
    fn dot_q8(blocks: &[Self], x: Q8Row) -> f32 {
        let mut out = [0f32];
        Self::dot_q8_tokens(blocks, &[x], &mut out);
        out[0]
    }

    /// Whether [`Block::dot_q8_wide`] has a kernel for this format on this CPU.
    #[inline]
    fn has_dot_q8_wide() -> bool {
        false
    }

    /// The 8-bit mode's product of whole weight rows (`blocks`) with many activation rows at
    /// once, the tokens as vector lanes: `out[r * x.padded() + t]`, each block's integer sum
    /// exactly [`int8::dot_scalar`]'s. Called only where [`Block::has_dot_q8_wide`].
    fn dot_q8_wide(_blocks: &[Self], _x: &Q8Lanes, _out: &mut [f32]) {
        unreachable!("{} has no many-row 8-bit product", Self::TYPE)
    }

    /// The 8-bit dot of one row with up to [`int8::DOT_Q8_TOKENS`] activation rows at once:
    /// [`int8::dot_rows`] where a format has vectorised kernels ([`int8::IntKernels`]), each
    /// weight decoded once for all the rows; this default, [`int8::dot_scalar`] per row.
    #[inline]
    fn dot_q8_tokens(blocks: &[Self], xs: &[Q8Row], out: &mut [f32]) {
        for (x, o) in xs.iter().zip(out.iter_mut()) {
            *o = int8::dot_scalar(blocks, *x);
        }
    }
}

/// Activation rows [`Block::dot_tokens`] takes at most.
pub const DOT_TOKENS: usize = 8;

/// Values decoded at a time by the scalar dot (one K-quant super-block).
pub const GROUP: usize = 256;

/// The reference dot: `Σ dequantized value · x` in f32, each group of [`GROUP`] values decoded
/// into a buffer and multiplied into 8 independent sums (which the compiler vectorises).
pub fn dot_scalar<B: Block>(blocks: &[B], x: &[f32]) -> f32 {
    dot_decoded(blocks, x, |group, out| {
        for (b, out) in group.iter().zip(out.chunks_exact_mut(B::VALUES)) {
            b.dequantize(out);
        }
    })
}

/// [`dot_scalar`]'s sums, each group of [`GROUP`] values decoded by `decode` (blocks, out).
pub(crate) fn dot_decoded<B: Block>(
    blocks: &[B],
    x: &[f32],
    decode: impl Fn(&[B], &mut [f32]),
) -> f32 {
    let per_group = GROUP / B::VALUES;
    let mut buf = [0f32; GROUP];
    let mut acc = [0f32; 8];
    let mut tail = 0f32;
    for (group, xs) in blocks.chunks(per_group).zip(x.chunks(GROUP)) {
        let n = group.len() * B::VALUES;
        decode(group, &mut buf[..n]);
        let (w, x) = (&buf[..n], &xs[..n]);
        for (w8, x8) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
            for k in 0..8 {
                acc[k] += w8[k] * x8[k];
            }
        }
        let whole = n / 8 * 8;
        tail += w[whole..]
            .iter()
            .zip(&x[whole..])
            .map(|(a, b)| a * b)
            .sum::<f32>();
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// How the GPU keeps a matrix. Each layout is packed by [`GpuLayout::pack_row`] into at most
/// two arrays per row chunk, `quants` and `scales` (each bound as a storage buffer, padded to
/// 4 bytes), and read by one WGSL library (`src/gpu/kernels/lib/weights_<name>.wgsl`,
/// appended to a kernel when its pipeline is created). The packed bytes stay within a few
/// percent of the file's: decoding is bound by memory bandwidth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpuLayout {
    /// f32 values (`quants` only): F32 tensors, and the rows of different layouts read
    /// together, decoded at upload.
    F32,
    /// The file's f16 values as they are, two per u32 (`quants` only).
    F16,
    /// The file's bf16 values as they are, two per u32 (`quants` only).
    BF16,
    /// Q8_0 blocks split in two arrays: the int8 quants (4 per u32, row-major) and the f16
    /// block scales (2 per u32, row-major).
    Q8_0,
    /// `quants`: each block's 16 bytes of nibbles; `scales`: the f16 `d`, 2 per u32.
    Q4_0,
    /// `quants`: the nibbles; `scales`: one u32 per block, `d` and `m` as f16 (low, high).
    Q4_1,
    /// `quants`: the nibbles; `scales`: two u32 per block, `d` as f32 and the fifth bits `qh`.
    Q5_0,
    /// `quants`: the nibbles; `scales`: two u32 per block, `d | m` as f16 and `qh`.
    Q5_1,
    /// The file's 84-byte blocks as they are (`quants` only; 21 u32 each).
    Q2K,
    /// `quants`: `hmask` and `qs` (96 bytes per block); `scales`: the 12 scale bytes and `d`
    /// as f32 (4 u32 per block).
    Q3K,
    /// The file's 144-byte blocks as they are (`quants` only; 9 vec4 each: `d | dmin`, the
    /// 12 scale bytes, then the 128 bytes of nibbles).
    Q4K,
    /// The file's 176-byte blocks as they are (`quants` only; 11 vec4 each: the 16-byte
    /// header as Q4K's, `qh`, then `qs`).
    Q5K,
    /// `quants`: `ql` then `qh` (192 bytes, 12 vec4 per block); `scales`: the 16 signed
    /// scale bytes and `d` as f32 (5 u32 per block).
    Q6K,
    /// `quants`: each block's 16 bytes of codes; `scales`: the f16 `d`, 2 per u32 (as Q4_0).
    IQ4NL,
    /// `quants`: the 128 bytes of codes (8 vec4 per super-block); `scales`: the block's first
    /// 8 bytes as they are (`d | scales_h`, then `scales_l`; 2 u32 per super-block).
    IQ4XS,
    /// `quants`: each block's 16 bytes of codes; `scales`: the E8M0 exponent byte, 4 per u32.
    MXFP4,
}

impl GpuLayout {
    /// Every layout (the tests and the WGSL checks walk them).
    pub const ALL: [GpuLayout; 16] = [
        GpuLayout::F32,
        GpuLayout::F16,
        GpuLayout::BF16,
        GpuLayout::Q8_0,
        GpuLayout::Q4_0,
        GpuLayout::Q4_1,
        GpuLayout::Q5_0,
        GpuLayout::Q5_1,
        GpuLayout::Q2K,
        GpuLayout::Q3K,
        GpuLayout::Q4K,
        GpuLayout::Q5K,
        GpuLayout::Q6K,
        GpuLayout::IQ4NL,
        GpuLayout::IQ4XS,
        GpuLayout::MXFP4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GpuLayout::F32 => "F32",
            GpuLayout::F16 => "F16",
            GpuLayout::BF16 => "BF16",
            GpuLayout::Q8_0 => "Q8_0",
            GpuLayout::Q4_0 => "Q4_0",
            GpuLayout::Q4_1 => "Q4_1",
            GpuLayout::Q5_0 => "Q5_0",
            GpuLayout::Q5_1 => "Q5_1",
            GpuLayout::Q2K => "Q2_K",
            GpuLayout::Q3K => "Q3_K",
            GpuLayout::Q4K => "Q4_K",
            GpuLayout::Q5K => "Q5_K",
            GpuLayout::Q6K => "Q6_K",
            GpuLayout::IQ4NL => "IQ4_NL",
            GpuLayout::IQ4XS => "IQ4_XS",
            GpuLayout::MXFP4 => "MXFP4",
        }
    }

    pub fn is_f32(self) -> bool {
        self == GpuLayout::F32
    }

    /// The format whose blocks this layout holds (None: F32, which holds any decoded).
    fn ty(self) -> Option<GgmlType> {
        Some(match self {
            GpuLayout::F32 => return None,
            GpuLayout::F16 => GgmlType::F16,
            GpuLayout::BF16 => GgmlType::BF16,
            GpuLayout::Q8_0 => GgmlType::Q8_0,
            GpuLayout::Q4_0 => GgmlType::Q4_0,
            GpuLayout::Q4_1 => GgmlType::Q4_1,
            GpuLayout::Q5_0 => GgmlType::Q5_0,
            GpuLayout::Q5_1 => GgmlType::Q5_1,
            GpuLayout::Q2K => GgmlType::Q2_K,
            GpuLayout::Q3K => GgmlType::Q3_K,
            GpuLayout::Q4K => GgmlType::Q4_K,
            GpuLayout::Q5K => GgmlType::Q5_K,
            GpuLayout::Q6K => GgmlType::Q6_K,
            GpuLayout::IQ4NL => GgmlType::IQ4_NL,
            GpuLayout::IQ4XS => GgmlType::IQ4_XS,
            GpuLayout::MXFP4 => GgmlType::MXFP4,
        })
    }

    /// Values the layout groups together: a row's length must be a multiple.
    pub fn block_values(self) -> usize {
        match self.ty() {
            None => 1,
            Some(ty) => of(ty).map_or(1, |f| f.block_values),
        }
    }

    /// Values in one unit of a row, the share the batched mat-mul decodes at a time: 16 times
    /// the layout library's `UNIT_RUNS` (`tests/gpu_wgsl.rs` checks the two agree).
    pub fn unit_values(self) -> usize {
        16 * match self {
            GpuLayout::F32 | GpuLayout::F16 | GpuLayout::BF16 | GpuLayout::Q8_0 => 1,
            GpuLayout::Q2K | GpuLayout::Q3K => 4,
            _ => 2,
        }
    }

    /// Values in one dot unit of a row, the share one invocation of the mat-vecs reads at a
    /// time: one run of 16 where the layout's library dots run by run (`run_dot`: Q4_K, Q6_K;
    /// `kernels/lib/dot_runs.wgsl`), else the whole unit (`unit_dot`;
    /// `kernels/lib/dot_whole_units.wgsl`).
    pub fn dot_values(self) -> usize {
        match self {
            GpuLayout::Q4K | GpuLayout::Q6K => 16,
            _ => self.unit_values(),
        }
    }

    /// Bytes per block in (`quants`, `scales`).
    fn block_arrays(self) -> (u64, u64) {
        match self {
            GpuLayout::F32 => (4, 0),
            GpuLayout::F16 | GpuLayout::BF16 => (2, 0),
            GpuLayout::Q8_0 => (32, 2),
            GpuLayout::Q4_0 => (16, 2),
            GpuLayout::Q4_1 => (16, 4),
            GpuLayout::Q5_0 | GpuLayout::Q5_1 => (16, 8),
            GpuLayout::Q2K => (84, 0),
            GpuLayout::Q3K => (96, 16),
            GpuLayout::Q4K => (144, 0),
            GpuLayout::Q5K => (176, 0),
            GpuLayout::Q6K => (192, 20),
            GpuLayout::IQ4NL => (16, 2),
            GpuLayout::IQ4XS => (128, 8),
            GpuLayout::MXFP4 => (16, 1),
        }
    }

    /// Bytes one row of `cols` values occupies in the largest array (what bounds a binding).
    pub fn row_bytes(self, cols: usize) -> u64 {
        let (q, s) = self.block_arrays();
        (cols / self.block_values()) as u64 * q.max(s)
    }

    /// Bytes of a `[rows][cols]` matrix in all its arrays.
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> u64 {
        let (q, s) = self.block_arrays();
        rows as u64 * (cols / self.block_values()) as u64 * (q + s)
    }

    /// Appends one stored row (`bytes`, in `format`: the layout's own, or Q4_0 and Q5_0
    /// widened into Q8_0's, [`gpu_layout`]) to the layout's arrays. `scratch` is reused
    /// between rows by the caller.
    pub fn pack_row(
        self,
        format: &WeightFormat,
        bytes: &[u8],
        arrays: &mut [Vec<u8>; 2],
        scratch: &mut Vec<f32>,
    ) {
        let [quants, scales] = arrays;
        if self == GpuLayout::F32 {
            scratch.resize(bytes.len() / format.block_bytes * format.block_values, 0.0);
            format.dequantize(bytes, scratch);
            quants.extend_from_slice(bytemuck::cast_slice(scratch));
            return;
        }
        let widened =
            self == GpuLayout::Q8_0 && matches!(format.ty, GgmlType::Q4_0 | GgmlType::Q5_0);
        assert!(
            Some(format.ty) == self.ty() || widened,
            "{} rows do not pack as {}",
            format.ty,
            self.name()
        );
        match self {
            GpuLayout::F32 => unreachable!("handled above"),
            GpuLayout::Q8_0 => match format.ty {
                GgmlType::Q4_0 => legacy::pack_widened::<BlockQ4_0>(bytes, quants, scales),
                GgmlType::Q5_0 => legacy::pack_widened::<BlockQ5_0>(bytes, quants, scales),
                _ => q8_0::pack_split(bytes, quants, scales),
            },
            GpuLayout::Q4_0 | GpuLayout::Q4_1 | GpuLayout::Q5_0 | GpuLayout::Q5_1 => {
                legacy::pack_gpu(self, bytes, quants, scales)
            }
            GpuLayout::F16 | GpuLayout::BF16 | GpuLayout::Q2K | GpuLayout::Q4K | GpuLayout::Q5K => {
                quants.extend_from_slice(bytes)
            }
            GpuLayout::Q3K => kquants::pack_gpu_q3_k(bytes, quants, scales),
            GpuLayout::Q6K => kquants::pack_gpu_q6_k(bytes, quants, scales),
            GpuLayout::IQ4NL => iq::pack_gpu_iq4_nl(bytes, quants, scales),
            GpuLayout::IQ4XS => iq::pack_gpu_iq4_xs(bytes, quants, scales),
            GpuLayout::MXFP4 => mxfp4::pack_gpu(bytes, quants, scales),
        }
    }
}

/// A format's [`WeightFormat::dot_q8_tokens`].
type DotQ8Tokens = fn(&[u8], &[Q8Row], &mut [f32]);

/// One row of [`FORMATS`]: a format's geometry and its row functions.
pub struct WeightFormat {
    pub ty: GgmlType,
    /// Values per block.
    pub block_values: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// How the GPU keeps this format; `None`: not on the GPU yet.
    pub gpu: Option<GpuLayout>,
    dequantize: fn(&[u8], &mut [f32]),
    dot: fn(&[u8], &[f32]) -> f32,
    has_dot_tokens: fn() -> bool,
    dot_tokens: fn(&[u8], &[f32], usize, &mut [f32]),
    dot_scalar: fn(&[u8], &[f32]) -> f32,
    dot_q8: Option<fn(&[u8], Q8Row) -> f32>,
    dot_q8_tokens: Option<DotQ8Tokens>,
    q8_integer_rows: usize,
    has_dot_q8_wide: fn() -> bool,
    dot_q8_wide: fn(&[u8], &Q8Lanes, &mut [f32]),
    dot_q8_scalar: Option<fn(&[u8], Q8Row) -> f32>,
    quantize: fn(&[f32], &mut Vec<u8>),
}

impl std::fmt::Debug for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.ty)
    }
}

impl WeightFormat {
    /// Bytes of `n` values, or None when `n` is not a whole number of blocks.
    pub fn bytes_for(&self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_values)
            .then(|| n / self.block_values * self.block_bytes)
    }

    /// Decodes `bytes` (whole blocks) into `out` (their values).
    pub fn dequantize(&self, bytes: &[u8], out: &mut [f32]) {
        (self.dequantize)(bytes, out)
    }

    /// `Σ value · x` over a row (`bytes`, whole blocks, holding `x.len()` values).
    #[inline]
    pub fn dot(&self, bytes: &[u8], x: &[f32]) -> f32 {
        (self.dot)(bytes, x)
    }

    /// Whether [`Self::dot_tokens`] decodes each weight once for several activation rows
    /// here (a hand-vectorised version for this format and CPU).
    pub fn has_dot_tokens(&self) -> bool {
        (self.has_dot_tokens)()
    }

    /// `out[t] = Σ value · x[t * stride + i]` over a row (`bytes`, whole blocks), for up to
    /// [`DOT_TOKENS`] rows of `x`, each holding as many values as the row.
    #[inline]
    pub fn dot_tokens(&self, bytes: &[u8], x: &[f32], stride: usize, out: &mut [f32]) {
        (self.dot_tokens)(bytes, x, stride, out)
    }

    /// [`Self::dot`] without hand-vectorised code, as on a CPU without the features.
    pub fn dot_scalar(&self, bytes: &[u8], x: &[f32]) -> f32 {
        (self.dot_scalar)(bytes, x)
    }

    /// Whether the CPU's 8-bit mode multiplies this format in integers ([`Self::dot_q8`]).
    pub fn has_dot_q8(&self) -> bool {
        self.dot_q8.is_some()
    }

    /// Activation rows up to which the 8-bit mode multiplies this format in integers
    /// ([`Codes::integer_rows`]; 0 without codes).
    pub fn q8_integer_rows(&self) -> usize {
        self.q8_integer_rows
    }

    /// `Σ value · x` over a row with `x` in 8 bits (`int8`). Only where [`Self::has_dot_q8`].
    #[inline]
    pub fn dot_q8(&self, bytes: &[u8], x: Q8Row) -> f32 {
        (self.dot_q8.expect("dot_q8 of a format without codes"))(bytes, x)
    }

    /// `out[t]` = [`Self::dot_q8`] with `xs[t]`, for up to [`int8::DOT_Q8_TOKENS`] rows.
    #[inline]
    pub fn dot_q8_tokens(&self, bytes: &[u8], xs: &[Q8Row], out: &mut [f32]) {
        (self
            .dot_q8_tokens
            .expect("dot_q8 of a format without codes"))(bytes, xs, out)
    }

    /// Whether [`Self::dot_q8_wide`] has a kernel for this format on this CPU.
    pub fn has_dot_q8_wide(&self) -> bool {
        (self.has_dot_q8_wide)()
    }

    /// The 8-bit product of whole weight rows (`bytes`) with the activation rows of `x`:
    /// `out[r * x.padded() + t]` = [`Self::dot_q8`] of row `r` and token `t` (summed in
    /// another order). Only where [`Self::has_dot_q8_wide`].
    pub fn dot_q8_wide(&self, bytes: &[u8], x: &Q8Lanes, out: &mut [f32]) {
        (self.dot_q8_wide)(bytes, x, out)
    }

    /// [`Self::dot_q8`] by its definition, [`int8::dot_scalar`].
    pub fn dot_q8_scalar(&self, bytes: &[u8], x: Q8Row) -> f32 {
        (self
            .dot_q8_scalar
            .expect("dot_q8 of a format without codes"))(bytes, x)
    }

    /// Appends the encoding of `values` (a whole number of blocks) to `out`.
    pub fn quantize(&self, values: &[f32], out: &mut Vec<u8>) {
        (self.quantize)(values, out)
    }
}

fn blocks<B: Block>(bytes: &[u8], values: usize) -> &[B] {
    let blocks: &[B] = bytemuck::cast_slice(bytes);
    assert_eq!(
        blocks.len() * B::VALUES,
        values,
        "{} bytes of {} for {values} values",
        bytes.len(),
        B::TYPE
    );
    blocks
}

fn dequantize_row<B: Block>(bytes: &[u8], out: &mut [f32]) {
    B::dequantize_blocks(blocks::<B>(bytes, out.len()), out)
}

fn dot_row<B: Block>(bytes: &[u8], x: &[f32]) -> f32 {
    B::dot(blocks::<B>(bytes, x.len()), x)
}

fn dot_tokens_row<B: Block>(bytes: &[u8], x: &[f32], stride: usize, out: &mut [f32]) {
    let blocks: &[B] = bytemuck::cast_slice(bytes);
    let n = blocks.len() * B::VALUES;
    assert!(
        !out.is_empty()
            && out.len() <= DOT_TOKENS
            && x.len() >= (out.len() - 1) * stride + n
            && std::mem::size_of_val(blocks) == bytes.len(),
        "dot_tokens: {} rows of {n} values {stride} apart in {} values",
        out.len(),
        x.len()
    );
    B::dot_tokens(blocks, x, stride, out)
}

fn dot_scalar_row<B: Block>(bytes: &[u8], x: &[f32]) -> f32 {
    dot_scalar(blocks::<B>(bytes, x.len()), x)
}

fn dot_q8_row<B: Block>(bytes: &[u8], x: Q8Row) -> f32 {
    B::dot_q8(blocks::<B>(bytes, x.qs.len()), x)
}

fn dot_q8_tokens_row<B: Block>(bytes: &[u8], xs: &[Q8Row], out: &mut [f32]) {
    let blocks: &[B] = bytemuck::cast_slice(bytes);
    assert_eq!(
        std::mem::size_of_val(blocks),
        bytes.len(),
        "dot_q8_tokens: part of a block"
    );
    int8::check_rows(blocks.len() * B::VALUES, xs, out);
    B::dot_q8_tokens(blocks, xs, out)
}

fn dot_q8_wide_rows<B: Block>(bytes: &[u8], x: &Q8Lanes, out: &mut [f32]) {
    let blocks: &[B] = bytemuck::cast_slice(bytes);
    assert_eq!(
        std::mem::size_of_val(blocks),
        bytes.len(),
        "dot_q8_wide: part of a block"
    );
    B::dot_q8_wide(blocks, x, out)
}

fn dot_q8_scalar_row<B: Block>(bytes: &[u8], x: Q8Row) -> f32 {
    int8::dot_scalar(blocks::<B>(bytes, x.qs.len()), x)
}

fn quantize_row<B: Block>(values: &[f32], out: &mut Vec<u8>) {
    assert!(
        values.len().is_multiple_of(B::VALUES),
        "{} values of {}",
        values.len(),
        B::TYPE
    );
    out.reserve(values.len() / B::VALUES * std::mem::size_of::<B>());
    for chunk in values.chunks_exact(B::VALUES) {
        out.extend_from_slice(bytemuck::bytes_of(&B::quantize(chunk)));
    }
}

const fn entry<B: Block>() -> WeightFormat {
    assert!(GROUP.is_multiple_of(B::VALUES));
    WeightFormat {
        ty: B::TYPE,
        block_values: B::VALUES,
        block_bytes: std::mem::size_of::<B>(),
        gpu: B::GPU,
        dequantize: dequantize_row::<B>,
        dot: dot_row::<B>,
        has_dot_tokens: B::has_dot_tokens,
        dot_tokens: dot_tokens_row::<B>,
        dot_scalar: dot_scalar_row::<B>,
        dot_q8: match B::CODES {
            Some(_) => Some(dot_q8_row::<B>),
            None => None,
        },
        dot_q8_tokens: match B::CODES {
            Some(_) => Some(dot_q8_tokens_row::<B>),
            None => None,
        },
        q8_integer_rows: match B::CODES {
            Some(c) => c.integer_rows,
            None => 0,
        },
        has_dot_q8_wide: B::has_dot_q8_wide,
        dot_q8_wide: dot_q8_wide_rows::<B>,
        dot_q8_scalar: match B::CODES {
            Some(_) => Some(dot_q8_scalar_row::<B>),
            None => None,
        },
        quantize: quantize_row::<B>,
    }
}

/// Every format the engine computes with.
pub static FORMATS: [WeightFormat; 16] = [
    entry::<BlockF32>(),
    entry::<BlockF16>(),
    entry::<BlockBF16>(),
    entry::<BlockQ8_0>(),
    entry::<BlockQ4_0>(),
    entry::<BlockQ4_1>(),
    entry::<BlockQ5_0>(),
    entry::<BlockQ5_1>(),
    entry::<BlockQ2K>(),
    entry::<BlockQ3K>(),
    entry::<BlockQ4K>(),
    entry::<BlockQ5K>(),
    entry::<BlockQ6K>(),
    entry::<BlockIQ4NL>(),
    entry::<BlockIQ4XS>(),
    entry::<BlockMXFP4>(),
];

/// The format of a ggml type, or None when the engine cannot compute with it.
#[inline]
pub fn of(ty: GgmlType) -> Option<&'static WeightFormat> {
    FORMATS.iter().find(|f| f.ty == ty)
}

/// What a tensor of type `ty` with GGUF dims `dims` (innermost first) becomes on the GPU,
/// judged by its own type: its layout and bytes. Vectors (norms, biases) go up as f32.
/// None: the GPU cannot compute with the type yet.
pub fn gpu_form(ty: GgmlType, dims: &[u64]) -> Option<(GpuLayout, u64)> {
    let cols = dims.first().copied().unwrap_or(1) as usize;
    if dims.len() <= 1 {
        return Some((GpuLayout::F32, 4 * cols as u64));
    }
    let rows = dims[1..].iter().product::<u64>() as usize;
    let layout = gpu_layout(ty, cols)?;
    Some((layout, layout.matrix_bytes(rows, cols)))
}

/// Rows shorter than this many values of the 32-value formats without a minimum (Q4_0,
/// Q5_0) go to the GPU widened into the Q8_0 layout, exactly: each block's codes less their
/// offset as int8, with the same scale. A short row keeps few of a mat-vec's invocations
/// busy with 32-value units where Q8_0's are 16 (`attn_k_b`'s rows of 192 values in the
/// Q4_K_M files; BENCHMARKS.md has the measurement); it costs 0.375 byte per value more.
pub const WIDEN_BELOW: usize = 512;

/// The layout a matrix of `ty` with rows of `cols` values takes on the GPU: its format's own,
/// or Q8_0's for short rows of Q4_0 and Q5_0 ([`WIDEN_BELOW`]).
pub fn gpu_layout(ty: GgmlType, cols: usize) -> Option<GpuLayout> {
    let own = of(ty)?.gpu?;
    Some(match own {
        GpuLayout::Q4_0 | GpuLayout::Q5_0 if cols < WIDEN_BELOW => GpuLayout::Q8_0,
        _ => own,
    })
}

/// "F32, F16, ..." for error messages.
pub fn supported_names() -> String {
    names(FORMATS.iter())
}

/// The formats the GPU computes with, for error messages.
pub fn gpu_supported_names() -> String {
    names(FORMATS.iter().filter(|f| f.gpu.is_some()))
}

fn names<'a>(formats: impl Iterator<Item = &'a WeightFormat>) -> String {
    formats.map(|f| f.ty.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
