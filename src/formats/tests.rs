use super::*;
use crate::sampler::SplitMix64;

fn uniform(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

/// `blocks` random blocks of `f` as raw bytes: random bits, a block kept only when all its
/// values decode finite (an f16 scale with the all-ones exponent is inf or NaN) and below
/// 1e12 (random f32 bits reach 3e38, whose products overflow).
fn random_blocks(f: &WeightFormat, blocks: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * f.block_bytes);
    let mut vals = vec![0f32; f.block_values];
    while out.len() < blocks * f.block_bytes {
        let block: Vec<u8> = (0..f.block_bytes).map(|_| rng.next_u64() as u8).collect();
        f.dequantize(&block, &mut vals);
        if vals.iter().all(|v| v.abs() < 1e12) {
            out.extend_from_slice(&block);
        }
    }
    out
}

/// Every f16 bit pattern decodes as `half` decodes it (NaNs as NaNs).
#[test]
fn f16_bits_decode_as_half() {
    for bits in 0..=u16::MAX {
        let got = F16Bits(bits.to_le_bytes()).get();
        let want = half::f16::from_bits(bits).to_f32();
        if want.is_nan() {
            assert!(got.is_nan(), "{bits:#06x}: {got}");
        } else {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{bits:#06x}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn table_agrees_with_the_container() {
    assert_eq!(FORMATS.len(), 16);
    for f in &FORMATS {
        assert_eq!(f.ty.block_elems(), f.block_values as u64, "{}", f.ty);
        assert_eq!(f.ty.block_bytes(), f.block_bytes as u64, "{}", f.ty);
        assert!(std::ptr::eq(of(f.ty).unwrap(), f));
    }
    assert!(of(GgmlType(16)).is_none(), "IQ2_XXS is not computed with");
    assert_eq!(
        supported_names(),
        "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4"
    );
    assert_eq!(gpu_supported_names(), supported_names());
}

/// `got` against the f64 sum of `w · x`: within 1e-5 of `Σ |w·x|` (f32 rounding of a few
/// thousand products).
fn assert_dot(got: f32, w: &[f32], x: &[f32], what: &str) {
    let want: f64 = w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
    let scale: f64 = w
        .iter()
        .zip(x)
        .map(|(&a, &b)| (a as f64 * b as f64).abs())
        .sum();
    assert!(
        (got as f64 - want).abs() <= 1e-5 * scale,
        "{what}: {got} vs {want} (sum of |products| {scale})"
    );
}

/// The dot of every format, vectorised or not, against the f64 sum of the decoded values
/// times x ([`assert_dot`]).
#[test]
fn dot_matches_the_decoded_values_and_the_scalar_path() {
    let mut rng = SplitMix64(11);
    for f in &FORMATS {
        for n_values in [256, 2048, 4096 + 512] {
            let bytes = random_blocks(f, n_values / f.block_values, &mut rng);
            let x: Vec<f32> = (0..n_values).map(|_| uniform(&mut rng)).collect();
            let mut w = vec![0f32; n_values];
            f.dequantize(&bytes, &mut w);
            for (label, got) in [
                ("dot", f.dot(&bytes, &x)),
                ("dot_scalar", f.dot_scalar(&bytes, &x)),
            ] {
                assert_dot(got, &w, &x, &format!("{} {label} of {n_values}", f.ty));
            }
        }
    }
}

/// The multi-row dot of every format (hand-vectorised where the format and CPU have one,
/// the per-row dot elsewhere) against the f64 sums, for 1 to DOT_TOKENS rows of x that
/// are longer than the weight row (a stride past its length), with the same bound.
#[test]
fn dot_tokens_matches_the_decoded_values_for_every_row_count() {
    let mut rng = SplitMix64(12);
    for f in &FORMATS {
        let n_values = 2048 + 256;
        let stride = n_values + 64;
        let bytes = random_blocks(f, n_values / f.block_values, &mut rng);
        let mut w = vec![0f32; n_values];
        f.dequantize(&bytes, &mut w);
        for tokens in 1..=DOT_TOKENS {
            let x: Vec<f32> = (0..(tokens - 1) * stride + n_values)
                .map(|_| uniform(&mut rng))
                .collect();
            let mut got = vec![f32::NAN; tokens];
            f.dot_tokens(&bytes, &x, stride, &mut got);
            for (t, &g) in got.iter().enumerate() {
                let xt = &x[t * stride..][..n_values];
                let what = format!("{} dot_tokens, {tokens} rows, row {t}", f.ty);
                assert_dot(g, &w, xt, &what);
            }
        }
    }
}

/// Each vectorised K-quant dot this CPU runs (AVX2 and AVX-512 where both exist, whichever
/// the engine picks), for 1 to 4 activation rows, against the f64 sums of the decoded
/// values, as above.
#[test]
fn every_vectorised_k_quant_dot_matches_the_decoded_values() {
    fn check<B: Block>(variants: &[(&str, kquants::SimdRows<B>)], rng: &mut SplitMix64) {
        let f = of(B::TYPE).unwrap();
        let n_values = 4 * B::VALUES;
        let stride = n_values + 32;
        let bytes = random_blocks(f, 4, rng);
        let blocks: &[B] = bytemuck::cast_slice(&bytes);
        let mut w = vec![0f32; n_values];
        f.dequantize(&bytes, &mut w);
        let x: Vec<f32> = (0..4 * stride).map(|_| uniform(rng)).collect();
        for (name, rows) in variants {
            for tokens in 1..=4 {
                let mut got = vec![f32::NAN; tokens];
                // SAFETY: the variant is one this CPU runs; `x` holds 4 rows of n_values.
                unsafe { rows(blocks, &x, stride, &mut got) };
                for (t, &g) in got.iter().enumerate() {
                    let xt = &x[t * stride..][..n_values];
                    let what = format!("{} {name}, {tokens} rows, row {t}", B::TYPE);
                    assert_dot(g, &w, xt, &what);
                }
            }
        }
    }
    let mut rng = SplitMix64(13);
    check::<BlockQ4K>(&kquants::simd_variants(), &mut rng);
    check::<BlockQ5K>(&kquants::simd_variants(), &mut rng);
    check::<BlockIQ4XS>(&kquants::simd_variants(), &mut rng);
    check::<BlockIQ4NL>(&kquants::simd_variants(), &mut rng);
    check::<BlockMXFP4>(&kquants::simd_variants(), &mut rng);
    check::<BlockQ4_0>(&kquants::simd_variants(), &mut rng);
    check::<BlockQ4_1>(&kquants::simd_variants(), &mut rng);
    check::<BlockQ5_0>(&kquants::simd_variants(), &mut rng);
    check::<BlockQ5_1>(&kquants::simd_variants(), &mut rng);
    check::<BlockQ2K>(&kquants::simd_variants(), &mut rng);
    check::<BlockQ3K>(&kquants::simd_variants(), &mut rng);
    check::<BlockQ6K>(&kquants::simd_variants(), &mut rng);
}

/// A row's decode (`dequantize_blocks`, vectorised for some formats) gives exactly the bits
/// of the block-by-block reference decode, for every format with random blocks.
#[test]
fn row_decode_equals_the_block_decode_bit_for_bit() {
    fn check<B: Block>(rng: &mut SplitMix64) {
        let f = of(B::TYPE).unwrap();
        let bytes = random_blocks(f, 64, rng);
        let blocks: &[B] = bytemuck::cast_slice(&bytes);
        let mut row = vec![f32::NAN; 64 * B::VALUES];
        B::dequantize_blocks(blocks, &mut row);
        let mut one = vec![0f32; B::VALUES];
        for (b, got) in blocks.iter().zip(row.chunks_exact(B::VALUES)) {
            b.dequantize(&mut one);
            let same = got
                .iter()
                .zip(&one)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{}: {got:?} vs {one:?}", B::TYPE);
        }
    }
    let mut rng = SplitMix64(14);
    check::<BlockF32>(&mut rng);
    check::<BlockF16>(&mut rng);
    check::<BlockBF16>(&mut rng);
    check::<BlockQ8_0>(&mut rng);
    check::<BlockQ4_0>(&mut rng);
    check::<BlockQ4_1>(&mut rng);
    check::<BlockQ5_0>(&mut rng);
    check::<BlockQ5_1>(&mut rng);
    check::<BlockQ2K>(&mut rng);
    check::<BlockQ3K>(&mut rng);
    check::<BlockQ4K>(&mut rng);
    check::<BlockQ5K>(&mut rng);
    check::<BlockQ6K>(&mut rng);
    check::<BlockIQ4NL>(&mut rng);
    check::<BlockIQ4XS>(&mut rng);
    check::<BlockMXFP4>(&mut rng);
    check::<BlockQ2K>(&mut rng);
    check::<BlockQ3K>(&mut rng);
}

/// Quantizing and decoding gives the values back within what the bits allow: relative RMS
/// error per format on normal-ish data (a wrong bit layout gives errors of order 1).
#[test]
fn quantize_then_dequantize_is_close() {
    let mut rng = SplitMix64(5);
    let n = 4096;
    // Sums of uniforms: roughly normal, with a few blocks of a larger scale.
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let s = if (i / 256) % 5 == 0 { 8.0 } else { 1.0 };
            s * (0..4).map(|_| uniform(&mut rng)).sum::<f32>()
        })
        .collect();
    let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    for f in &FORMATS {
        let mut bytes = Vec::new();
        f.quantize(&values, &mut bytes);
        assert_eq!(bytes.len(), f.bytes_for(n).unwrap(), "{}", f.ty);
        let mut back = vec![0f32; n];
        f.dequantize(&bytes, &mut back);
        let err: Vec<f32> = values.iter().zip(&back).map(|(a, b)| a - b).collect();
        let rel = rms(&err) / rms(&values);
        let bound = match f.ty {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 1e-3,
            GgmlType::BF16 => 5e-3,
            GgmlType::Q8_0 => 0.01,
            GgmlType::Q6_K => 0.03,
            GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.06,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 0.12,
            GgmlType::IQ4_NL | GgmlType::IQ4_XS => 0.12,
            GgmlType::MXFP4 => 0.2,
            GgmlType::Q3_K => 0.25,
            GgmlType::Q2_K => 0.45,
            other => panic!("no bound for {other}"),
        };
        assert!(rel <= bound, "{}: relative RMS error {rel} > {bound}", f.ty);
        // Zeros stay zeros.
        let mut zeros = Vec::new();
        f.quantize(&vec![0.0; f.block_values], &mut zeros);
        let mut back = vec![1f32; f.block_values];
        f.dequantize(&zeros, &mut back);
        assert!(
            back.iter().all(|&v| v == 0.0),
            "{}: zeros decode to {back:?}",
            f.ty
        );
    }
}

/// ggml's Q8_0 rounding: d = amax / 127, q = round(x / d).
#[test]
fn q8_0_quantizes_as_ggml() {
    let vals: Vec<f32> = (0..32).map(|i| (i as f32 - 10.0) * 0.25).collect();
    let b = BlockQ8_0::quantize(&vals);
    let d = 5.25f32 / 127.0;
    assert_eq!(b.d, F16Bits::from_f32(d));
    for (q, v) in b.qs.iter().zip(&vals) {
        assert_eq!(*q as f32, (v * (1.0 / d)).round());
    }
}

#[test]
fn gpu_layouts_pack_and_count_bytes() {
    let mut rng = SplitMix64(3);
    let q8 = of(GgmlType::Q8_0).unwrap();
    let bytes = random_blocks(q8, 4, &mut rng);
    let mut arrays = [Vec::new(), Vec::new()];
    let mut scratch = Vec::new();
    GpuLayout::Q8_0.pack_row(q8, &bytes, &mut arrays, &mut scratch);
    assert_eq!(
        arrays[0].len() + arrays[1].len(),
        GpuLayout::Q8_0.matrix_bytes(1, 128) as usize
    );
    for (i, block) in bytes.chunks_exact(34).enumerate() {
        assert_eq!(arrays[1][2 * i..2 * i + 2], block[..2]);
        assert_eq!(arrays[0][32 * i..32 * i + 32], block[2..]);
    }
    let f16 = of(GgmlType::F16).unwrap();
    let bytes = random_blocks(f16, 64, &mut rng);
    let mut arrays = [Vec::new(), Vec::new()];
    GpuLayout::F32.pack_row(f16, &bytes, &mut arrays, &mut scratch);
    let mut want = vec![0f32; 64];
    f16.dequantize(&bytes, &mut want);
    assert_eq!(arrays[0], bytemuck::cast_slice::<f32, u8>(&want));
    assert_eq!(GpuLayout::F32.matrix_bytes(3, 64), 3 * 256);

    // F16 and BF16 keep the file's bytes: half of f32's.
    for (ty, layout) in [
        (GgmlType::F16, GpuLayout::F16),
        (GgmlType::BF16, GpuLayout::BF16),
    ] {
        let f = of(ty).unwrap();
        assert_eq!(f.gpu, Some(layout));
        let bytes = random_blocks(f, 64, &mut rng);
        let mut arrays = [Vec::new(), Vec::new()];
        layout.pack_row(f, &bytes, &mut arrays, &mut scratch);
        assert_eq!(arrays, [bytes, Vec::new()], "{ty}");
        assert_eq!(layout.matrix_bytes(3, 64), 3 * 128);
    }
}

/// Every GPU layout packs a row into exactly the bytes it counts, each array a whole number
/// of u32 per row (so rows stack in a binding), the larger within `row_bytes`.
#[test]
fn every_gpu_layout_packs_the_bytes_it_counts() {
    let mut rng = SplitMix64(4);
    for f in FORMATS.iter().filter(|f| f.gpu.is_some()) {
        let layout = f.gpu.unwrap();
        let cols = 512;
        let bytes = random_blocks(f, cols / f.block_values, &mut rng);
        let mut arrays = [Vec::new(), Vec::new()];
        layout.pack_row(f, &bytes, &mut arrays, &mut Vec::new());
        let [q, s] = &arrays;
        assert_eq!(
            (q.len() + s.len()) as u64,
            layout.matrix_bytes(1, cols),
            "{}",
            f.ty
        );
        assert!(
            q.len().max(s.len()) as u64 <= layout.row_bytes(cols),
            "{}",
            f.ty
        );
        if !matches!(
            layout,
            GpuLayout::Q8_0 | GpuLayout::Q4_0 | GpuLayout::IQ4NL | GpuLayout::MXFP4
        ) {
            // Their f16 scales pair (and MXFP4's exponent bytes group by four) across rows;
            // the kernels index them globally.
            assert!(q.len() % 4 == 0 && s.len() % 4 == 0, "{}", f.ty);
        }
        // Within 10% of the file's bytes (f32 aside).
        if !layout.is_f32() {
            assert!((q.len() + s.len()) * 10 <= bytes.len() * 11, "{}", f.ty);
        }
    }
}

/// Every GPU layout is the format of one [`FORMATS`] row (F32 aside, which holds any), and
/// every format has a layout.
#[test]
fn every_format_has_a_gpu_layout() {
    for layout in GpuLayout::ALL.into_iter().filter(|l| !l.is_f32()) {
        let f = FORMATS.iter().find(|f| f.gpu == Some(layout)).unwrap();
        assert_eq!(Some(f.ty), layout.ty(), "{}", layout.name());
        assert_eq!(f.ty.name(), layout.name());
    }
    assert!(FORMATS.iter().all(|f| f.gpu.is_some()));
}

/// The layouts of the non-linear formats keep the file's bytes: the codes as they are in
/// `quants`, the scale bytes as they are in `scales`.
#[test]
fn iq4_and_mxfp4_layouts_hold_the_file_bytes() {
    let mut rng = SplitMix64(6);
    for (ty, head) in [
        (GgmlType::IQ4_NL, 2),
        (GgmlType::IQ4_XS, 8),
        (GgmlType::MXFP4, 1),
    ] {
        let f = of(ty).unwrap();
        let bytes = random_blocks(f, 3, &mut rng);
        let mut arrays = [Vec::new(), Vec::new()];
        f.gpu
            .unwrap()
            .pack_row(f, &bytes, &mut arrays, &mut Vec::new());
        let codes = f.block_bytes - head;
        for (i, block) in bytes.chunks_exact(f.block_bytes).enumerate() {
            assert_eq!(arrays[1][head * i..head * (i + 1)], block[..head], "{ty}");
            assert_eq!(arrays[0][codes * i..codes * (i + 1)], block[head..], "{ty}");
        }
        assert_eq!(arrays[0].len() + arrays[1].len(), bytes.len(), "{ty}");
    }
}

/// The GPU computes IQ4 levels as a rounded quartic in the code (`levels_iq4.wgsl`): its
/// coefficients, read from the WGSL source and evaluated in f32 with and without fused
/// multiply-adds, round to ggml's table at every code, at least 0.05 from a rounding edge.
#[test]
fn wgsl_iq4_polynomial_rounds_to_the_table() {
    let src = include_str!("../gpu/kernels/lib/levels_iq4.wgsl");
    let body = &src[src.find("fn iq4_levels4").unwrap()..];
    let body = &body[..body.find("\n}").unwrap()];
    let coefficients: Vec<f32> = body
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter(|t| t.contains('.') && t.len() > 3)
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(coefficients.len(), 5, "{coefficients:?}");
    for fused in [true, false] {
        for (code, &level) in IQ4_LEVELS.iter().enumerate() {
            let c = code as f32;
            let p = coefficients[1..].iter().fold(coefficients[0], |p, &a| {
                if fused {
                    p.mul_add(c, a)
                } else {
                    p * c + a
                }
            });
            assert_eq!(p.round(), level as f32, "code {code}, fused {fused}: {p}");
            assert!((p - level as f32).abs() < 0.45, "code {code}: {p}");
        }
    }
}

/// The formats the CPU's 8-bit mode multiplies in integers: the types of the Q8_0, Q4_0,
/// Q2_K, Q4_K_M, Q5_K_M, Q6_K, IQ4_NL, IQ4_XS and MXFP4_MOE files (the Q4_K_M file's
/// `attn_k_b` is Q5_0).
#[test]
fn the_8_bit_mode_covers_the_common_file_types() {
    let with_codes: Vec<String> = FORMATS
        .iter()
        .filter(|f| f.has_dot_q8())
        .map(|f| f.ty.name())
        .collect();
    assert_eq!(
        with_codes,
        [
            "Q8_0", "Q4_0", "Q5_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
            "MXFP4"
        ]
    );
}

/// Activations in 8 bits: each value within half a step of its code times the block's
/// scale (amax / 127), the largest exactly ±127, the stored sums those of the codes.
#[test]
fn activations_round_to_8_bits_per_block_of_32() {
    use int8::{Q8Rows, ACT_BLOCK, SUM_GROUP};
    let mut rng = SplitMix64(5);
    let cols = 256;
    let mut x: Vec<f32> = (0..3 * cols).map(|_| uniform(&mut rng)).collect();
    x[cols..2 * cols].iter_mut().for_each(|v| *v *= 1e-6); // a tiny row
    x[2 * cols + 40..2 * cols + 64].fill(0.0); // part of a block zero
    x[2 * cols + 64..2 * cols + 96].fill(0.0); // a whole block zero
    let rows = Q8Rows::quantize(&x, cols);
    assert_eq!(rows.len(), 3);
    for t in 0..3 {
        let row = rows.row(t);
        let back = row.dequantize();
        for (b, (xs, qs)) in x[t * cols..][..cols]
            .chunks_exact(ACT_BLOCK)
            .zip(row.qs.chunks_exact(ACT_BLOCK))
            .enumerate()
        {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(row.d[b], amax / 127.0);
            if amax > 0.0 {
                assert!(qs.iter().any(|&q| q.abs() == 127), "row {t} block {b}");
            }
            for (i, &v) in xs.iter().enumerate() {
                let err = (back[b * ACT_BLOCK + i] - v).abs();
                assert!(err <= 0.5001 * row.d[b], "row {t} value {i}: {err}");
            }
        }
        for (s, q) in row.qs.chunks_exact(SUM_GROUP).enumerate() {
            assert_eq!(row.sums[s], q.iter().map(|&q| q as i32).sum::<i32>());
        }
    }
}

/// A block read as codes (`scale · (code - offset) - min`) gives the decoded values bit for
/// bit, for every format with codes, on random blocks.
#[test]
fn codes_decode_to_the_same_values() {
    let mut rng = SplitMix64(9);
    for f in FORMATS.iter().filter(|f| f.has_dot_q8()) {
        let bytes = random_blocks(f, 64 * 256 / f.block_values, &mut rng);
        let (mut want, mut got) = (vec![0f32; 64 * 256], vec![0f32; 64 * 256]);
        f.dequantize(&bytes, &mut want);
        decode_codes(f, &bytes, &mut got);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w.to_bits(), g.to_bits(), "{} value {i}: {w} vs {g}", f.ty);
        }
    }
}

/// Decodes `bytes` of `f` through [`Block::codes`].
fn decode_codes(f: &WeightFormat, bytes: &[u8], out: &mut [f32]) {
    fn run<B: Block>(bytes: &[u8], out: &mut [f32]) {
        let form = B::CODES.unwrap();
        let groups = B::VALUES / form.group;
        let (mut codes, mut scale, mut min) = (vec![0u8; B::VALUES], [0f32; 16], [0f32; 16]);
        for (block, out) in bytemuck::cast_slice::<u8, B>(bytes)
            .iter()
            .zip(out.chunks_exact_mut(B::VALUES))
        {
            block.codes(&mut codes, &mut scale[..groups], &mut min[..groups]);
            for (i, o) in out.iter_mut().enumerate() {
                let g = i / form.group;
                *o = scale[g] * (codes[i] as i32 - form.offset as i32) as f32 - min[g];
            }
        }
    }
    match f.ty {
        GgmlType::Q8_0 => run::<BlockQ8_0>(bytes, out),
        GgmlType::Q4_0 => run::<BlockQ4_0>(bytes, out),
        GgmlType::Q5_0 => run::<BlockQ5_0>(bytes, out),
        GgmlType::Q2_K => run::<BlockQ2K>(bytes, out),
        GgmlType::Q3_K => run::<BlockQ3K>(bytes, out),
        GgmlType::Q4_K => run::<BlockQ4K>(bytes, out),
        GgmlType::Q5_K => run::<BlockQ5K>(bytes, out),
        GgmlType::Q6_K => run::<BlockQ6K>(bytes, out),
        GgmlType::IQ4_NL => run::<BlockIQ4NL>(bytes, out),
        GgmlType::IQ4_XS => run::<BlockIQ4XS>(bytes, out),
        GgmlType::MXFP4 => run::<BlockMXFP4>(bytes, out),
        other => panic!("{other} has no codes"),
    }
}

/// The 8-bit dot, by its definition and hand-vectorised (where this CPU has AVX-512 VNNI),
/// against the f64 sum of the decoded weights times the activations the codes stand for
/// (within 1e-5 of `Σ |w·x|`: only f32 scaling and summing differ); rows of 1 to 18
/// blocks of 32 (odd counts too) and extreme activation scales.
#[test]
fn dot_q8_matches_the_decoded_values() {
    use int8::Q8Rows;
    let mut rng = SplitMix64(13);
    for f in FORMATS.iter().filter(|f| f.has_dot_q8()) {
        for n_values in [f.block_values, 192, 2048, 4096 + 512] {
            if !n_values.is_multiple_of(f.block_values) {
                continue;
            }
            for scale in [1.0f32, 1e-7, 3e4] {
                let bytes = random_blocks(f, n_values / f.block_values, &mut rng);
                let x: Vec<f32> = (0..n_values).map(|_| scale * uniform(&mut rng)).collect();
                let xq = Q8Rows::quantize(&x, n_values);
                let mut w = vec![0f32; n_values];
                f.dequantize(&bytes, &mut w);
                let xd = xq.row(0).dequantize();
                for (label, got) in [
                    ("dot_q8", f.dot_q8(&bytes, xq.row(0))),
                    ("dot_q8_scalar", f.dot_q8_scalar(&bytes, xq.row(0))),
                ] {
                    assert!(got.is_finite(), "{} {label}: {got}", f.ty);
                    let what = format!("{} {label} of {n_values} at scale {scale}", f.ty);
                    assert_dot(got, &w, &xd, &what);
                }
            }
        }
    }
}

/// What the 8-bit mode costs against the exact dot on typical values (weights of a
/// trained-looking spread, activations of mixed size): the relative error over many rows
/// stays near the rounding of the activations (8 bits: about 0.3% per value, averaging
/// down over a row).
#[test]
fn dot_q8_error_against_the_exact_dot_is_small() {
    use int8::Q8Rows;
    let mut rng = SplitMix64(17);
    let n = 2048;
    for f in FORMATS.iter().filter(|f| f.has_dot_q8()) {
        let (mut err2, mut ref2) = (0f64, 0f64);
        for _ in 0..32 {
            let values: Vec<f32> = (0..n).map(|_| 0.05 * uniform(&mut rng)).collect();
            let mut bytes = Vec::new();
            f.quantize(&values, &mut bytes);
            let x: Vec<f32> = (0..n)
                .map(|i| uniform(&mut rng) * if i % 7 == 0 { 8.0 } else { 1.0 })
                .collect();
            let exact = f.dot(&bytes, &x) as f64;
            let q8 = f.dot_q8(&bytes, Q8Rows::quantize(&x, n).row(0)) as f64;
            err2 += (q8 - exact).powi(2);
            ref2 += exact.powi(2);
        }
        let rel = (err2 / ref2).sqrt();
        assert!(rel < 2e-2, "{}: rel L2 {rel:e}", f.ty);
    }
}

/// The 8-bit dot of one row with 1 to DOT_Q8_TOKENS activation rows at once equals the
/// one-row dot of each (the same integer sums; within 1e-6 of `Σ |w·x|` for the order of
/// the f32 scaling), on rows of odd block counts too.
#[test]
fn dot_q8_tokens_matches_one_row_at_a_time() {
    let mut rng = SplitMix64(19);
    for f in FORMATS.iter().filter(|f| f.has_dot_q8()) {
        check_q8_rows(
            f,
            &[192, 2304, 2336],
            &mut rng,
            &f.ty.name(),
            |bytes, xs, out| f.dot_q8_tokens(bytes, xs, out),
            |bytes, x| f.dot_q8(bytes, x),
        );
    }
}

/// For rows of `f` of each size in `sizes` (random blocks; sizes that are not whole blocks
/// skipped) and 1 to DOT_Q8_TOKENS activation rows: every sum of `many` equals `one` of its
/// row within 1e-6 of `Σ |w·x|` (the same integer sums, scaled and added in another order).
fn check_q8_rows(
    f: &WeightFormat,
    sizes: &[usize],
    rng: &mut SplitMix64,
    label: &str,
    many: impl Fn(&[u8], &[int8::Q8Row], &mut [f32]),
    one: impl Fn(&[u8], int8::Q8Row) -> f32,
) {
    use int8::{Q8Rows, DOT_Q8_TOKENS};
    for &n_values in sizes {
        if !n_values.is_multiple_of(f.block_values) {
            continue;
        }
        let bytes = random_blocks(f, n_values / f.block_values, rng);
        let x: Vec<f32> = (0..DOT_Q8_TOKENS * n_values)
            .map(|_| uniform(rng))
            .collect();
        let xq = Q8Rows::quantize(&x, n_values);
        let mut w = vec![0f32; n_values];
        f.dequantize(&bytes, &mut w);
        for rows in 1..=DOT_Q8_TOKENS {
            let xs: Vec<_> = (0..rows).map(|t| xq.row(t)).collect();
            let mut out = vec![f32::NAN; rows];
            many(&bytes, &xs, &mut out);
            for (t, &got) in out.iter().enumerate() {
                let want = one(&bytes, xq.row(t));
                let scale: f32 = w
                    .iter()
                    .zip(xq.row(t).dequantize())
                    .map(|(a, b)| (a * b).abs())
                    .sum();
                assert!(
                    (got - want).abs() <= 1e-6 * scale,
                    "{label} row {t} of {rows}, {n_values} values: {got} vs {want}"
                );
            }
        }
    }
}

/// Rounding a row in place gives exactly the values its 8-bit codes stand for.
#[test]
fn rounding_in_place_equals_the_codes_values() {
    let mut rng = SplitMix64(23);
    let mut x: Vec<f32> = (0..512).map(|_| uniform(&mut rng) * 3.0).collect();
    x[64..96].fill(0.0);
    let want = int8::Q8Rows::quantize(&x, 512).row(0).dequantize();
    int8::round_to_8_bits(&mut x);
    assert!(x.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// The Q4_K/Q5_K scale unpacking, four bytes at a time, equals ggml's `get_scale_min_k4`
/// byte by byte on random scale bytes.
#[test]
fn k4_scales_unpack_as_ggml() {
    let mut rng = SplitMix64(29);
    for _ in 0..10_000 {
        let s: [u8; 12] = std::array::from_fn(|_| rng.next_u64() as u8);
        let (sc, m) = kquants::scales_and_mins(&s);
        for j in 0..8 {
            let (want_sc, want_m) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                (
                    (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
                    (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                )
            };
            assert_eq!((sc[j], m[j]), (want_sc, want_m), "{s:?} sub-block {j}");
        }
    }
}

/// A non-finite activation makes its block's values, and the 8-bit dots with them, NaN
/// (as the f32 products would be), instead of vanishing into a code of 0.
#[test]
fn non_finite_activations_stay_nan_in_8_bits() {
    let mut x = vec![0.5f32; 64];
    x[40] = f32::INFINITY;
    let rows = int8::Q8Rows::quantize(&x, 64);
    let back = rows.row(0).dequantize();
    assert!(
        back[..32].iter().all(|v| (v - 0.5).abs() < 1e-6),
        "{:?}",
        &back[..32]
    );
    assert!(back[32..].iter().all(|v| v.is_nan()), "{:?}", &back[32..]);
    let mut rounded = x.clone();
    int8::round_to_8_bits(&mut rounded);
    assert!(rounded[32..].iter().all(|v| v.is_nan()));
    for f in FORMATS.iter().filter(|f| f.has_dot_q8()) {
        let mut rng = SplitMix64(3);
        let bytes = random_blocks(f, 256 / f.block_values, &mut rng);
        let mut x = vec![0.25f32; 256];
        x[200] = f32::NAN;
        let xq = int8::Q8Rows::quantize(&x, 256);
        assert!(f.dot_q8(&bytes, xq.row(0)).is_nan(), "{}", f.ty);
        assert!(f.dot_q8_scalar(&bytes, xq.row(0)).is_nan(), "{}", f.ty);
    }
}

/// Every hand-vectorised 8-bit dot this CPU can run (AVX-512 VNNI and AVX2 alike, whichever
/// the dispatch would pick), called directly, equals the definition within 1e-6 of
/// `Σ |w·x|` for 1 to DOT_Q8_TOKENS rows, on rows of odd block counts too.
#[cfg(target_arch = "x86_64")]
#[test]
fn every_vectorised_8_bit_dot_matches_the_definition() {
    use int8::{avx2, avx512, IntKernels};
    fn check<B: IntKernels>(rng: &mut SplitMix64) {
        let f = of(B::TYPE).unwrap();
        let isas = [
            ("AVX-512 VNNI", avx512::available()),
            ("AVX2", avx2::available()),
        ];
        for ((isa, runs), kernel) in isas.into_iter().zip(B::KERNELS) {
            if !runs {
                continue;
            }
            check_q8_rows(
                f,
                &[256, 2304, 2336],
                rng,
                &format!("{isa} {}", f.ty),
                |bytes, xs, out| {
                    int8::check_rows(f.block_values * bytes.len() / f.block_bytes, xs, out);
                    // SAFETY: the CPU has the kernel's features (`runs`); rows checked.
                    unsafe { kernel(bytemuck::cast_slice(bytes), xs, out) }
                },
                |bytes, x| f.dot_q8_scalar(bytes, x),
            );
        }
    }
    println!(
        "8-bit dots tested: AVX-512 VNNI {}, AVX2 {}",
        avx512::available(),
        avx2::available()
    );
    let mut rng = SplitMix64(37);
    check::<BlockQ8_0>(&mut rng);
    check::<BlockQ4_0>(&mut rng);
    check::<BlockQ5_0>(&mut rng);
    check::<BlockQ2K>(&mut rng);
    check::<BlockQ3K>(&mut rng);
    check::<BlockQ4K>(&mut rng);
    check::<BlockQ5K>(&mut rng);
    check::<BlockQ6K>(&mut rng);
    check::<BlockIQ4NL>(&mut rng);
    check::<BlockIQ4XS>(&mut rng);
    check::<BlockMXFP4>(&mut rng);
}

/// The many-row 8-bit product, where this CPU runs one, equals the one-row 8-bit dot of
/// every (row, token) within 1e-6 of `Σ |w·x|` (the same integer sums, scaled and added in
/// another order): row counts that are not whole groups, token counts from one vector to
/// several slabs with a partial last vector, rows of odd block counts; a non-finite
/// activation gives NaN for its token only, and the padding lanes hold no NaN.
#[test]
fn many_row_8_bit_product_matches_the_one_row_dot() {
    use int8::{Q8Lanes, Q8Rows};
    let mut rng = SplitMix64(31);
    let formats: Vec<_> = FORMATS.iter().filter(|f| f.has_dot_q8_wide()).collect();
    assert_eq!(formats.is_empty(), !int8::wide_available());
    for f in formats {
        for (rows, blocks, tokens) in [(1, 1, 1), (7, 3, 9), (5, 64, 16), (9, 7, 33), (13, 2, 70)] {
            let cols = blocks * f.block_values;
            let bytes = random_blocks(f, rows * cols / f.block_values, &mut rng);
            let mut x: Vec<f32> = (0..tokens * cols)
                .map(|i| uniform(&mut rng) * if i % 11 == 0 { 6.0 } else { 1.0 })
                .collect();
            let nan_token = tokens / 2;
            if tokens > 1 {
                x[nan_token * cols + cols - 1] = f32::NAN;
            }
            let lanes = Q8Lanes::quantize(&x, cols);
            let rows8 = Q8Rows::quantize(&x, cols);
            for t in 0..tokens {
                let want = rows8.row(t).dequantize();
                for (i, w) in want.iter().enumerate() {
                    let got = lanes.value(t, i);
                    assert!(
                        got.to_bits() == w.to_bits() || (got.is_nan() && w.is_nan()),
                        "{} lanes value {i} of token {t}: {got} vs {w}",
                        f.ty
                    );
                }
                for i in (0..cols).step_by(int8::SUM_GROUP) {
                    let want = rows8.row(t).code_sum(i, int8::SUM_GROUP);
                    assert_eq!(lanes.code_sum(t, i), want, "code sum {i} of token {t}");
                }
            }
            let padded = lanes.padded();
            let mut out = vec![f32::NAN; rows * padded];
            let row_bytes = bytes.len() / rows;
            f.dot_q8_wide(&bytes, &lanes, &mut out);
            for r in 0..rows {
                let row = &bytes[r * row_bytes..][..row_bytes];
                let mut w = vec![0f32; cols];
                f.dequantize(row, &mut w);
                for t in 0..padded {
                    let got = out[r * padded + t];
                    let label = format!(
                        "{} row {r} of {rows}, token {t} of {tokens}, {cols} values",
                        f.ty
                    );
                    if t >= tokens {
                        assert!(got.is_finite(), "{label}: padding {got}");
                        continue;
                    }
                    let want = f.dot_q8_scalar(row, rows8.row(t));
                    if tokens > 1 && t == nan_token {
                        assert!(got.is_nan() && want.is_nan(), "{label}: {got} vs {want}");
                        continue;
                    }
                    let scale: f32 = w
                        .iter()
                        .zip(rows8.row(t).dequantize())
                        .map(|(a, b)| (a * b).abs())
                        .sum();
                    assert!(
                        (got - want).abs() <= 1e-6 * scale,
                        "{label}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// Each format's vectorised unpacking for the many-row 8-bit product gives exactly the codes,
/// scales and mins of its definition (`Block::codes`) on random blocks.
#[cfg(target_arch = "x86_64")]
#[test]
fn wide_unpacking_equals_the_codes_definition() {
    use int8::WideCodes;
    fn check<B: WideCodes>(rng: &mut SplitMix64) {
        let f = of(B::TYPE).unwrap();
        let groups = B::VALUES / B::CODES.unwrap().group;
        let bytes = random_blocks(f, 64, rng);
        for block in bytemuck::cast_slice::<u8, B>(&bytes) {
            let (mut codes, mut scale, mut min) = ([0u8; 256], [0f32; 16], [0f32; 16]);
            block.codes(&mut codes[..B::VALUES], &mut scale, &mut min);
            let (mut got_codes, mut got_scale, mut got_min) = ([0u8; 256], [0f32; 16], [0f32; 16]);
            // SAFETY: the CPU has AVX2 and F16C (checked below).
            unsafe { block.unpack(&mut got_codes, &mut got_scale, &mut got_min) };
            assert_eq!(
                &got_codes[..B::VALUES],
                &codes[..B::VALUES],
                "{} codes",
                B::TYPE
            );
            for g in 0..groups {
                assert_eq!(
                    got_scale[g].to_bits(),
                    scale[g].to_bits(),
                    "{} scale {g}",
                    B::TYPE
                );
                assert_eq!(
                    got_min[g].to_bits(),
                    min[g].to_bits(),
                    "{} min {g}",
                    B::TYPE
                );
            }
        }
    }
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
        return;
    }
    let mut rng = SplitMix64(37);
    check::<BlockQ8_0>(&mut rng);
    check::<BlockQ4K>(&mut rng);
    check::<BlockQ5K>(&mut rng);
    check::<BlockQ6K>(&mut rng);
    check::<BlockQ4_0>(&mut rng);
    check::<BlockQ5_0>(&mut rng);
    check::<BlockIQ4NL>(&mut rng);
    check::<BlockIQ4XS>(&mut rng);
    check::<BlockMXFP4>(&mut rng);
}

/// Short rows of Q4_0 and Q5_0 go to the GPU widened into the Q8_0 layout, and every value
/// decodes from it to the same bits as from the block (extreme scales included); longer
/// rows and other formats keep their own layout.
#[test]
fn widened_rows_decode_exactly() {
    assert_eq!(gpu_layout(GgmlType::Q5_0, 192), Some(GpuLayout::Q8_0));
    assert_eq!(gpu_layout(GgmlType::Q4_0, 32), Some(GpuLayout::Q8_0));
    assert_eq!(
        gpu_layout(GgmlType::Q5_0, WIDEN_BELOW),
        Some(GpuLayout::Q5_0)
    );
    assert_eq!(gpu_layout(GgmlType::Q5_1, 192), Some(GpuLayout::Q5_1));
    assert_eq!(gpu_layout(GgmlType::Q4_K, 256), Some(GpuLayout::Q4K));
    let mut rng = SplitMix64(41);
    for ty in [GgmlType::Q4_0, GgmlType::Q5_0] {
        let f = of(ty).unwrap();
        let bytes = random_blocks(f, 64, &mut rng);
        let mut want = vec![0f32; 64 * 32];
        f.dequantize(&bytes, &mut want);
        let mut arrays = [Vec::new(), Vec::new()];
        GpuLayout::Q8_0.pack_row(f, &bytes, &mut arrays, &mut Vec::new());
        let [quants, scales] = arrays;
        assert_eq!((quants.len(), scales.len()), (64 * 32, 64 * 2), "{ty}");
        for (i, w) in want.iter().enumerate() {
            let d = F16Bits([scales[2 * (i / 32)], scales[2 * (i / 32) + 1]]).get();
            let got = d * quants[i] as i8 as f32;
            assert_eq!(got.to_bits(), w.to_bits(), "{ty} value {i}: {got} vs {w}");
        }
    }
}
