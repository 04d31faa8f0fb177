//! What every backend computes the same way, whatever runs it: the input checks, the
//! greedy choice (one NaN rule for the CPU, the GPU kernel and the sampler), the RoPE
//! angles.

use crate::error::{Error, Result};

/// Errors shared by every backend: positions past the context, ids past the vocabulary.
pub fn check_positions(
    tokens: &[u32],
    start_pos: usize,
    max_context: usize,
    vocab: usize,
) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::Input("no tokens to process".into()));
    }
    if start_pos + tokens.len() > max_context {
        return Err(Error::Input(format!(
            "positions {}..{} exceed the context of {max_context} tokens",
            start_pos,
            start_pos + tokens.len()
        )));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::Input(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}

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
