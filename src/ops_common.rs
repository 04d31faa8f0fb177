//! What every backend computes the same way, whatever runs it: the greedy choice (one NaN
//! rule for the CPU, the GPU kernel and the sampler), the RoPE angles and the latent cache's
//! storage type. (The checks every feed makes are beside the `Backend` trait.)

/// The index of the largest value, ties to the lowest index. NaN never wins; values that
/// are all NaN (or none) give 0. The GPU's argmax kernel follows the same rule.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if !x.is_nan() && best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

/// The RoPE angle of pair `i` of a `dims`-wide vector at `pos`: `pos * base^(-2i/dims)`, in
/// f64 (positions run to 200K).
pub fn rope_angle(pos: usize, i: usize, dims: usize, base: f32) -> f64 {
    pos as f64 * (base as f64).powf(-2.0 * i as f64 / dims as f64)
}

/// How a backend stores its latent cache: each position's `[kv_cmpr | k_pe]` row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    /// Half the memory and half the bytes attention reads; each value rounded to the
    /// nearest f16 as its row is stored. The GPU backend's default.
    #[default]
    F16,
    /// Exact: what the f32 parity tests use, and the CPU reference's default.
    F32,
}

impl CacheType {
    /// Bytes of one stored value.
    pub fn bytes(self) -> usize {
        match self {
            CacheType::F16 => 2,
            CacheType::F32 => 4,
        }
    }

    /// "f16" / "f32", as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            CacheType::F16 => "f16",
            CacheType::F32 => "f32",
        }
    }

    /// A row as the cache keeps it: every value rounded to nearest-even f16 for an f16
    /// cache (what the GPU's `pack2x16float` stores), unchanged for f32. Every backend
    /// stores its rows through this, so attention reads the same values on all of them.
    pub fn round(self, row: &mut [f32]) {
        if self == CacheType::F16 {
            row.iter_mut()
                .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
        }
    }

    /// Bytes of a cache of `positions` positions over all `layers` with rows of `row` values.
    pub fn cache_bytes(self, layers: usize, positions: usize, row: usize) -> u64 {
        (layers * positions * row * self.bytes()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_largest_and_never_nan() {
        let nan = f32::NAN;
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[nan, 1.0, 2.0]), 2, "NaN first");
        assert_eq!(argmax(&[1.0, nan, 0.0, 5.0]), 3, "NaN between");
        assert_eq!(argmax(&[-1.0, -2.0, nan]), 0, "NaN last");
        assert_eq!(argmax(&[nan, nan]), 0, "all NaN");
        assert_eq!(argmax(&[]), 0, "empty");
        assert_eq!(argmax(&[f32::NEG_INFINITY, nan, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[-0.0, 0.0]), 0, "zeros are equal");
    }

    #[test]
    fn an_f16_cache_rounds_to_nearest_even_and_f32_keeps_values() {
        // 1 + 2^-11 lies halfway between 1 and the next f16 (1 + 2^-10): even wins.
        let halfway = 1.0 + 2f32.powi(-11);
        let above = 1.0 + 3.0 * 2f32.powi(-12);
        let mut row = [halfway, above, 0.1, -70000.0, 3.0];
        CacheType::F32.round(&mut row);
        assert_eq!(row[..3], [halfway, above, 0.1]);
        CacheType::F16.round(&mut row);
        assert_eq!(row[..2], [1.0, 1.0 + 2f32.powi(-10)]);
        assert_eq!(row[2], 0.099975586, "0.1 to its nearest f16");
        assert_eq!(row[3], f32::NEG_INFINITY, "past the f16 range");
        assert_eq!(row[4], 3.0, "exact values stay");
    }
}
