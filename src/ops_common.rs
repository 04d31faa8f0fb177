//! What every backend computes the same way, whatever runs it: the greedy choice (one NaN
//! rule for the CPU, the GPU kernel and the sampler) and the RoPE angles. (The checks every
//! feed makes are beside the `Backend` trait.)

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
}
