//! What the generation loop needs from a backend; the CPU and GPU backends implement it.
//!
//! The contract is batch-shaped: [`Backend::feed`] appends N tokens to the cache and says
//! which outputs the caller wants (nothing, logits or final hidden states of the last or of
//! every row, or the argmax of the last row). The cache length is explicit: a feed starts
//! exactly at [`Backend::cache_len`], and going back is [`Backend::truncate`], never an
//! overwrite. Instrumentation (GPU dispatch counts and timings) is a separate trait,
//! reached through [`Backend::instrumented`].

use crate::error::{Error, Result};
use crate::ops_common::CacheType;

/// Which rows of a feed an output is wanted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// The last token's row only (generation).
    Last,
    /// One row per token fed, in order (teacher forcing, verification of drafted tokens).
    All,
}

/// What a feed returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Only fill the cache (a prompt chunk nobody reads the outputs of).
    Nothing,
    /// Logits, `[rows][vocab]` row-major.
    Logits(Rows),
    /// The argmax of the last row's logits (greedy decoding; the GPU reads back one id).
    /// Ties go to the lowest id; NaN never wins.
    Argmax,
    /// The final hidden state after the output norm (what the LM head reads),
    /// `[rows][hidden]`: for speculative decoding and embeddings.
    Hidden(Rows),
}

/// The answer to a [`Want`], variant for variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Nothing,
    Logits(Vec<f32>),
    Argmax(u32),
    Hidden(Vec<f32>),
}

impl Output {
    /// The rows of logits or hidden states.
    ///
    /// # Panics
    /// On `Nothing` or `Argmax`: a backend answered a different [`Want`] than it was asked
    /// (a bug in the backend, not bad input).
    pub fn into_rows(self) -> Vec<f32> {
        match self {
            Output::Logits(v) | Output::Hidden(v) => v,
            other => panic!("backend answered {other:?} where rows were asked for"),
        }
    }

    /// The id of [`Want::Argmax`]. Panics like [`Output::into_rows`] on another variant.
    pub fn argmax(&self) -> u32 {
        match self {
            Output::Argmax(id) => *id,
            other => panic!("backend answered {other:?} where an argmax was asked for"),
        }
    }
}

pub trait Backend {
    /// A one-line description ("cpu, 2 threads", "gpu: NVIDIA H100 (Vulkan)").
    fn describe(&self) -> String;

    /// Positions the cache can hold.
    fn max_context(&self) -> usize;

    /// How the latent cache stores its rows.
    fn cache_type(&self) -> CacheType;

    /// Prompt tokens a caller feeding a long prompt in pieces (to notice an interrupt
    /// between them) should feed per call: one batched pass of the backend, since a smaller
    /// piece multiplies each weight by fewer tokens.
    fn prompt_piece(&self) -> usize;

    /// Benchmarks only (`glm-flash bench`): fills positions `0..positions` of every
    /// layer's cache with the rows of `block` (`[rows][kv_lora + rope]`, repeated), stored
    /// as the cache stores rows, as if that many tokens had been fed; the cache length is
    /// then `positions`. Lets decode be timed deep in a context without prefilling it first.
    /// The contents are synthetic: only the time of what follows means anything.
    fn fill_cache_for_bench(&mut self, block: &[f32], positions: usize) -> Result<()>;

    /// Positions the cache holds now: the next feed starts here.
    fn cache_len(&self) -> usize;

    /// Drops the cache positions from `len` on (rollback: a new prompt that shares only a
    /// prefix, rejected draft tokens). `len` above [`Backend::cache_len`] is an error.
    fn truncate(&mut self, len: usize) -> Result<()>;

    /// Feeds `tokens` at positions `pos..`, appending them to the cache, and returns what
    /// `want` asks for. `pos` must equal [`Backend::cache_len`] (truncate first to go
    /// back); prefill, decode steps and teacher forcing all go through here.
    fn feed(&mut self, tokens: &[u32], pos: usize, want: Want) -> Result<Output>;

    /// Feeds `tokens` and returns logits of the last row or of every row.
    fn feed_logits(&mut self, tokens: &[u32], pos: usize, rows: Rows) -> Result<Vec<f32>> {
        Ok(self.feed(tokens, pos, Want::Logits(rows))?.into_rows())
    }

    /// Feeds `tokens` and returns the argmax of the last row's logits.
    fn feed_argmax(&mut self, tokens: &[u32], pos: usize) -> Result<u32> {
        Ok(self.feed(tokens, pos, Want::Argmax)?.argmax())
    }

    /// Greedy decoding: feeds `token` at `pos` (the cache length), then each chosen id after
    /// it, and calls `on_token` with every chosen id until it returns false or `n` ids were
    /// chosen. The last id passed to `on_token` has not been fed (as with
    /// [`Backend::feed_argmax`]): the cache then holds `pos` + the number of ids. The GPU
    /// backend feeds its own argmax without a round trip and keeps the next token computing
    /// while `on_token` runs (work past the cache length that the next feed overwrites).
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
            token = self.feed_argmax(&[token], pos + i)?;
            if !on_token(token) {
                break;
            }
        }
        Ok(())
    }

    /// Counters and timings of the backend's work, where it keeps any (the GPU backend).
    fn instrumented(&mut self) -> Option<&mut dyn Instrumented> {
        None
    }
}

/// The checks every backend makes before a feed: a non-empty batch that starts at the
/// cache length, fits the context and holds only ids of the vocabulary.
pub fn check_feed(
    tokens: &[u32],
    pos: usize,
    cache_len: usize,
    max_context: usize,
    vocab: usize,
) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::Input("no tokens to process".into()));
    }
    if pos != cache_len {
        return Err(Error::Input(format!(
            "tokens fed at position {pos} but the cache holds {cache_len} positions \
             (feeds append at the cache length; truncate the cache to go back)"
        )));
    }
    if pos + tokens.len() > max_context {
        return Err(Error::Input(format!(
            "positions {}..{} exceed the context of {max_context} tokens",
            pos,
            pos + tokens.len()
        )));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::Input(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// The check of [`Backend::truncate`]: the cache can only get shorter.
pub fn check_truncate(len: usize, cache_len: usize) -> Result<()> {
    if len > cache_len {
        return Err(Error::Input(format!(
            "cannot truncate the cache to {len} positions: it holds only {cache_len}"
        )));
    }
    Ok(())
}

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
    /// The positions the profiled dispatches computed (first, count): the decoded token, or
    /// a batched feed's last chunk.
    pub positions: (usize, usize),
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

/// What a backend can report about its own work, apart from computing (benchmarks and
/// `--verbose` use it).
pub trait Instrumented {
    /// Dispatches, passes, submits and bytes read back by the last token.
    fn last_token_stats(&self) -> TokenStats;

    /// The same for the last chunk of a batched feed (a prompt's), where there was one.
    fn last_chunk_stats(&self) -> Option<TokenStats> {
        None
    }

    /// One greedy decode step of `token` at `pos` (the cache length; the token is appended
    /// like any feed) with the time of every dispatch.
    fn profile_token(&mut self, token: u32, pos: usize) -> Result<TokenProfile>;

    /// A batched feed of `tokens` at `pos` (the cache length; appended like any feed) with
    /// the time of every dispatch of its last chunk (the deepest).
    fn profile_prompt(&mut self, tokens: &[u32], pos: usize) -> Result<TokenProfile>;
}

/// The number of rows in `block` ([`Backend::fill_cache_for_bench`]), or why it cannot fill
/// `positions` positions of a context of `max_context`.
pub fn check_bench_block(
    block: &[f32],
    row: usize,
    positions: usize,
    max_context: usize,
) -> Result<usize> {
    if block.is_empty() || !block.len().is_multiple_of(row) {
        return Err(Error::Input(format!(
            "a block of {} values is not whole cache rows of {row}",
            block.len()
        )));
    }
    if positions > max_context {
        return Err(Error::Input(format!(
            "cannot fill {positions} positions of a context of {max_context}"
        )));
    }
    Ok(block.len() / row)
}
