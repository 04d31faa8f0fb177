//! What the generation loop needs from a backend; the CPU and GPU backends implement it.

use crate::error::Result;

/// Work of one token (or summed over tokens) on a GPU: what the design targets count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TokenStats {
    pub dispatches: u64,
    pub compute_passes: u64,
    pub submits: u64,
    pub bytes_read_back: u64,
}

impl std::ops::AddAssign for TokenStats {
    fn add_assign(&mut self, o: TokenStats) {
        self.dispatches += o.dispatches;
        self.compute_passes += o.compute_passes;
        self.submits += o.submits;
        self.bytes_read_back += o.bytes_read_back;
    }
}

/// GPU time of each dispatch of one token, in recording order.
#[derive(Clone, Debug)]
pub struct TokenProfile {
    pub dispatches: Vec<(&'static str, f64)>,
}

impl TokenProfile {
    /// (kernel name, dispatches, seconds) summed per kernel, slowest first.
    pub fn by_kernel(&self) -> Vec<(&'static str, usize, f64)> {
        let mut sums: Vec<(&'static str, usize, f64)> = Vec::new();
        for &(name, t) in &self.dispatches {
            match sums.iter_mut().find(|s| s.0 == name) {
                Some(s) => {
                    s.1 += 1;
                    s.2 += t;
                }
                None => sums.push((name, 1, t)),
            }
        }
        sums.sort_by(|a, b| b.2.total_cmp(&a.2));
        sums
    }

    pub fn total(&self) -> f64 {
        self.dispatches.iter().map(|d| d.1).sum()
    }
}

pub trait Backend {
    /// A one-line description ("cpu, 2 threads", "gpu: NVIDIA H100 (Vulkan)").
    fn describe(&self) -> String;

    /// Feed `tokens` at positions `start_pos..`, appending them to the cache. Returns the
    /// logits of the last position, or of every position (row-major `[tokens][vocab]`)
    /// when `all_logits`. Prefill and teacher forcing both go through here.
    fn forward(&mut self, tokens: &[u32], start_pos: usize, all_logits: bool) -> Result<Vec<f32>>;

    /// Feed tokens and return only the argmax of the last position's logits (greedy
    /// decoding; the GPU reads back a single id).
    fn forward_argmax(&mut self, tokens: &[u32], start_pos: usize) -> Result<u32> {
        let logits = self.forward(tokens, start_pos, false)?;
        Ok(crate::ops_common::argmax(&logits))
    }

    /// Greedy decoding: feeds `token` at `pos`, then each chosen id after it, and calls
    /// `on_token` with every chosen id until it returns false or `n` ids were chosen. The
    /// last id passed to `on_token` has not been fed (as with [`Backend::forward_argmax`]):
    /// the cache then holds positions up to `pos` + the number of ids. The GPU backend feeds
    /// its own argmax without a round trip and keeps the next token computing while
    /// `on_token` runs; it may compute one position more than is kept, which the next feed
    /// overwrites.
    fn decode_greedy(
        &mut self,
        token: u32,
        pos: usize,
        n: usize,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<()> {
        let mut token = token;
        for i in 0..n {
            if i > 0 && pos + i >= self.max_context() {
                break;
            }
            token = self.forward_argmax(&[token], pos + i)?;
            if !on_token(token) {
                break;
            }
        }
        Ok(())
    }

    /// Positions the cache can hold.
    fn max_context(&self) -> usize;

    /// Dispatches, passes, submits and bytes read back by the last token (GPU backends).
    fn last_token_stats(&self) -> Option<TokenStats> {
        None
    }

    /// One greedy decode step with the GPU time of every dispatch (None where the backend
    /// cannot time its work).
    fn profile_token(&mut self, _token: u32, _pos: usize) -> Result<Option<TokenProfile>> {
        Ok(None)
    }
}
