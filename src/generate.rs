//! The generation loop: prefill the prompt, then decode one token at a time until a stop
//! token, a stop string, the token limit, the end of the context or an interrupt.
//!
//! Greedy decoding asks the backend for the argmax only (the GPU then reads back one id
//! instead of a 150K-float row); sampling, penalties and log-probabilities ask for the
//! logits. Text is streamed through a callback as whole UTF-8 characters, with each token's
//! log-probability when asked for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::backend::{Backend, Rows, Want};
use crate::error::{Error, Result};
use crate::json_output::{JsonState, JsonValue, TokenMasks};
use crate::sampler::{self, Sampler, SamplerOptions, TokenLogprob};
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampler: SamplerOptions,
    /// Ids that end the reply; they are not returned or printed.
    pub stop_tokens: Vec<u32>,
    /// Texts that end the reply; neither they nor anything after them is streamed. Their
    /// tokens are counted in [`Generation::ids`] (they were generated).
    pub stop_strings: Vec<String>,
    /// Control tokens (`<think>`, `<|assistant|>`...) reach the text as their markup, for a
    /// chat reply's parser; when false they are left out, as plain completion prints text.
    pub special_text: bool,
    /// Stream each generated token's log-probability with this many of the most likely
    /// alternatives ([`Generated::Logprob`]); `None`: none.
    pub logprobs: Option<usize>,
    /// What the answer must start with or be.
    pub answer: AnswerRules,
}

impl GenerateOptions {
    /// A plain greedy choice, which can stay on the backend (its argmax); penalties and
    /// log-probabilities need the logits.
    fn plain_greedy(&self) -> bool {
        self.sampler.is_greedy() && !self.sampler.penalizes() && self.logprobs.is_none()
    }
}

/// Rules for the answer: the part of a reply after its thinking (all of it when it has
/// none). The default has none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnswerRules {
    /// The token that ends the thinking and starts the answer (its first occurrence);
    /// `None`: the answer is the whole reply.
    pub after: Option<u32>,
    /// Tokens the answer starts with, whatever the model would choose. They count as
    /// generated and stream as text like any other, and the model goes on from them: how a
    /// request that requires a tool call gets one (its opening is forced).
    pub starts_with: Vec<u32>,
    /// The answer is one JSON value: each token is chosen among those that keep it JSON
    /// ([`crate::json_output`]), and the reply ends once the value is whole.
    pub json: Option<JsonValue>,
}

/// The answer's rules as generation goes: waiting for the answer to start, then its forced
/// tokens, with its JSON read as it comes.
struct Answer<'a> {
    rules: &'a AnswerRules,
    started: bool,
    forced: VecDeque<u32>,
    json: Option<JsonState>,
    /// The tokens each recent JSON state allows.
    masks: TokenMasks,
}

impl<'a> Answer<'a> {
    /// The rules of a reply that ends at `stop_tokens`.
    fn new(rules: &'a AnswerRules, stop_tokens: &[u32]) -> Self {
        let mut answer = Answer {
            rules,
            started: false,
            forced: VecDeque::new(),
            json: None,
            masks: TokenMasks::new(stop_tokens),
        };
        if rules.after.is_none() {
            answer.start();
        }
        answer
    }

    fn start(&mut self) {
        self.started = true;
        self.forced.extend(&self.rules.starts_with);
        self.json = self.rules.json.map(JsonState::new);
    }

    /// The answer has started and holds the choice of its tokens (forced ones to come, or
    /// JSON): they cannot be chosen by the backend's own argmax.
    fn constrains(&self) -> bool {
        self.started && (!self.forced.is_empty() || self.json.is_some())
    }

    /// Follows the token just generated; says when it completed the answer's JSON value.
    fn generated(&mut self, id: u32, tokenizer: &Tokenizer) -> Option<StopReason> {
        if !self.started {
            if self.rules.after == Some(id) {
                self.start();
            }
            return None;
        }
        let json = self.json.as_mut()?;
        // Tokens were chosen to keep it JSON, so this holds (forced ones aside).
        json.push_all(tokenizer.token_bytes(id).unwrap_or_default());
        json.finished().then_some(StopReason::AnswerComplete)
    }
}

/// What [`generate`] streams as it goes.
#[derive(Clone, Copy, Debug)]
pub enum Generated<'a> {
    /// Text that has settled: whole characters, none of a stop string. It lags the tokens
    /// while it may still be the start of one.
    Text(&'a str),
    /// The token just generated, with its log-probability ([`GenerateOptions::logprobs`]);
    /// one per token of [`Generation::ids`], in order, each before any of its text.
    Logprob(&'a TokenLogprob),
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    StopToken(u32),
    /// The text reached `stop_strings[i]`.
    StopString(usize),
    MaxTokens,
    /// The answer's JSON value is whole ([`AnswerRules::json`]).
    AnswerComplete,
    /// The backend's context is full.
    ContextFull,
    Interrupted,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    /// Prompt tokens fed (those already in the cache are not counted).
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    /// Tokens fed one at a time after the prompt (decode passes): the prompt's pass
    /// chooses the first generated token, each decode pass the next one.
    pub decode_tokens: usize,
    pub decode_secs: f64,
    /// Tokens generated ([`Generation::ids`]; a stop token is not one).
    pub generated_tokens: usize,
}

impl Timings {
    /// `prompt: 9 tokens, 0.12 s, 75.0 tok/s | generated: 24 tokens | decode: 23 passes,
    /// 0.50 s, 46.0 tok/s`
    pub fn summary(&self) -> String {
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        format!(
            "prompt: {} tokens, {:.2} s, {:.1} tok/s | generated: {} tokens | decode: {} passes, {:.2} s, {:.1} tok/s",
            self.prompt_tokens,
            self.prompt_secs,
            rate(self.prompt_tokens, self.prompt_secs),
            self.generated_tokens,
            self.decode_tokens,
            self.decode_secs,
            rate(self.decode_tokens, self.decode_secs)
        )
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids, the stop token excluded.
    pub ids: Vec<u32>,
    pub stop: StopReason,
    pub timings: Timings,
    /// Positions the backend's cache now holds: the prompt and the generated tokens that
    /// were fed back (the last generated token never is). A later call can reuse them.
    pub cache_len: usize,
}

/// Generates a continuation of `prompt`. The first `cached` prompt tokens are already in
/// the backend's cache (an earlier turn of a chat) and are not fed again; whatever the
/// cache holds after them is dropped. `on_generated` receives the text as it is produced
/// (and the tokens' log-probabilities when asked for); `interrupt`, when set, stops at the
/// next token.
pub fn generate(
    backend: &mut dyn Backend,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    cached: usize,
    opts: &GenerateOptions,
    interrupt: Option<&AtomicBool>,
    on_generated: &mut dyn FnMut(Generated),
) -> Result<Generation> {
    let ctx = backend.max_context();
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    if prompt.len() > ctx {
        return Err(Error::Input(format!(
            "the prompt has {} tokens but the context holds {ctx} (raise --ctx)",
            prompt.len()
        )));
    }
    opts.sampler.validate().map_err(Error::Input)?;
    let interrupted = || interrupt.is_some_and(|f| f.load(Ordering::Relaxed));
    if cached > backend.cache_len() {
        return Err(Error::Input(format!(
            "{cached} prompt tokens said to be cached, but the cache holds {}",
            backend.cache_len()
        )));
    }
    // At least the last prompt token is fed: its logits choose the first new token.
    let start = cached.min(prompt.len() - 1);
    backend.truncate(start)?;
    let mut sampler = Sampler::new(opts.sampler.clone());
    sampler.remember(prompt);
    let mut answer = Answer::new(&opts.answer, &opts.stop_tokens);
    let mut timings = Timings {
        prompt_tokens: prompt.len() - start,
        ..Default::default()
    };
    let result = |ids, stop, timings, cache_len| -> Result<Generation> {
        Ok(Generation {
            ids,
            stop,
            timings,
            cache_len,
        })
    };

    // Prefill, in chunks; only the last chunk's last row matters.
    let t0 = Instant::now();
    let (mut next, mut logprob) = (0, None);
    let mut pos = start;
    while pos < prompt.len() {
        if interrupted() {
            timings.prompt_tokens = pos - start;
            timings.prompt_secs = t0.elapsed().as_secs_f64();
            return result(Vec::new(), StopReason::Interrupted, timings, pos);
        }
        // A piece per backend call, so an interrupt is noticed during a long prefill.
        let end = (pos + backend.prompt_piece()).min(prompt.len());
        let chunk = &prompt[pos..end];
        if end < prompt.len() {
            backend.feed(chunk, pos, Want::Nothing)?;
        } else {
            let (b, s) = (&mut *backend, &mut sampler);
            (next, logprob) = choose(b, s, opts, &mut answer, tokenizer, chunk, pos)?;
        }
        pos = end;
    }
    timings.prompt_secs = t0.elapsed().as_secs_f64();

    let mut decoder = tokenizer.stream_decoder();
    let mut stop_strings = StopStrings::new(&opts.stop_strings);
    let mut ids = Vec::new();
    let t1 = Instant::now();
    // Takes the chosen token `next` (not yet fed; `pos` is where it would go), or says why
    // generation stops.
    let mut accept = |next: u32, logprob: Option<TokenLogprob>, pos: usize| {
        if opts.max_new_tokens == 0 {
            return Some(StopReason::MaxTokens);
        }
        if opts.stop_tokens.contains(&next) {
            return Some(StopReason::StopToken(next));
        }
        ids.push(next);
        if let Some(logprob) = &logprob {
            on_generated(Generated::Logprob(logprob));
        }
        let piece = if opts.special_text || !tokenizer.is_control(next) {
            decoder.push(next)
        } else {
            String::new()
        };
        let (text, hit) = stop_strings.push(&piece);
        on_generated(Generated::Text(&text));
        if let Some(i) = hit {
            return Some(StopReason::StopString(i));
        }
        if ids.len() >= opts.max_new_tokens {
            return Some(StopReason::MaxTokens);
        }
        if pos >= ctx {
            return Some(StopReason::ContextFull);
        }
        if interrupted() {
            return Some(StopReason::Interrupted);
        }
        None
    };
    let mut stop = accept(next, logprob, pos).or_else(|| answer.generated(next, tokenizer));
    if stop.is_none() && opts.plain_greedy() && !answer.constrains() {
        // The backend chains the argmaxes itself (on the GPU without a round trip), until
        // an answer with rules starts (the thinking before it stays on the backend).
        backend.decode_greedy(next, pos, usize::MAX, &mut |id| {
            (next, pos) = (id, pos + 1);
            timings.decode_tokens += 1;
            stop = accept(id, None, pos).or_else(|| answer.generated(id, tokenizer));
            stop.is_none() && !answer.constrains()
        })?;
    }
    let mut stop = loop {
        if let Some(stop) = stop {
            break stop;
        }
        let (b, s) = (&mut *backend, &mut sampler);
        (next, logprob) = choose(b, s, opts, &mut answer, tokenizer, &[next], pos)?;
        pos += 1;
        timings.decode_tokens += 1;
        stop = accept(next, logprob, pos).or_else(|| answer.generated(next, tokenizer));
    };
    timings.decode_secs = t1.elapsed().as_secs_f64();
    timings.generated_tokens = ids.len();
    if !matches!(stop, StopReason::StopString(_)) {
        let (mut rest, hit) = stop_strings.push(&decoder.flush());
        match hit {
            Some(i) => stop = StopReason::StopString(i),
            None => rest.push_str(&stop_strings.flush()),
        }
        if !rest.is_empty() {
            on_generated(Generated::Text(&rest));
        }
    }
    result(ids, stop, timings, pos)
}

/// Finds stop strings in streamed text. Text that may be the start of a stop string is held
/// back until the next piece settles it, so a stop string split over several tokens never
/// reaches the output, even in part.
pub struct StopStrings<'a> {
    stops: &'a [String],
    pending: String,
}

impl<'a> StopStrings<'a> {
    /// Empty stop strings are ignored.
    pub fn new(stops: &'a [String]) -> Self {
        StopStrings {
            stops,
            pending: String::new(),
        }
    }

    /// Adds text; returns the text now certain to come before any stop string, and the
    /// index of the stop string that completed (the earliest in the text), if one did.
    pub fn push(&mut self, text: &str) -> (String, Option<usize>) {
        self.pending.push_str(text);
        let hit = self
            .stops
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .filter_map(|(i, s)| self.pending.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, i)) = hit {
            self.pending.truncate(at);
            return (std::mem::take(&mut self.pending), Some(i));
        }
        // Hold back the longest tail that a stop string starts with.
        let held = self
            .stops
            .iter()
            .filter_map(|s| {
                s.char_indices()
                    .map(|(at, _)| at)
                    .skip(1)
                    .filter(|&len| self.pending.ends_with(&s[..len]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let certain = self.pending.len() - held;
        (self.pending.drain(..certain).collect(), None)
    }

    /// The held-back text, once no more text will come.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Feeds `tokens` at `pos` and picks the token that follows them: the answer's next forced
/// token if any, else on the backend for a plain greedy choice (and an answer that is not
/// JSON), else from the logits (those that keep the answer JSON, when it must be); with its
/// log-probability when the options ask for it.
fn choose(
    backend: &mut dyn Backend,
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    answer: &mut Answer,
    tokenizer: &Tokenizer,
    tokens: &[u32],
    pos: usize,
) -> Result<(u32, Option<TokenLogprob>)> {
    if let Some(id) = answer.forced.pop_front() {
        sampler.remember(&[id]);
        let Some(top) = opts.logprobs else {
            backend.feed(tokens, pos, Want::Nothing)?;
            return Ok((id, None));
        };
        let logits = backend.feed_logits(tokens, pos, Rows::Last)?;
        return Ok((id, Some(sampler::logprobs(&logits, id, top))));
    }
    if opts.plain_greedy() && answer.json.is_none() {
        return Ok((backend.feed_argmax(tokens, pos)?, None));
    }
    let logits = backend.feed_logits(tokens, pos, Rows::Last)?;
    let id = match &answer.json {
        None => sampler.sample(&logits),
        Some(json) => {
            let mut allowed = logits.clone();
            if answer.masks.mask(json, tokenizer, &mut allowed) == 0 {
                return Err(Error::Input(
                    "no token of the vocabulary continues the JSON answer".into(),
                ));
            }
            sampler.sample(&allowed)
        }
    };
    Ok((
        id,
        opts.logprobs.map(|top| sampler::logprobs(&logits, id, top)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::cpu::CpuBackend;
    use crate::synth::builtin_model;
    use crate::weights::Weights;

    /// The built-in model's continuation of `prompt` on the CPU: the generation, its text
    /// and what it streamed of log-probabilities.
    fn run_with_logprobs(
        prompt: &str,
        ctx: usize,
        opts: &GenerateOptions,
        interrupt: Option<&AtomicBool>,
    ) -> Result<(Generation, String, Vec<TokenLogprob>)> {
        let file = builtin_model();
        let cfg = Config::from_gguf(&file).unwrap();
        let w = Weights::from_gguf(&file, &cfg).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let mut cpu = CpuBackend::new(&cfg, &w, ctx, 1).unwrap();
        let ids = tok.encode(prompt).unwrap();
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let g = generate(&mut cpu, &tok, &ids, 0, opts, interrupt, &mut |g| match g {
            Generated::Text(t) => text.push_str(t),
            Generated::Logprob(l) => logprobs.push(l.clone()),
        })?;
        assert_eq!(
            tok.decode(&g.ids).unwrap(),
            text,
            "streamed text = decode(ids)"
        );
        Ok((g, text, logprobs))
    }

    fn run(
        prompt: &str,
        ctx: usize,
        opts: &GenerateOptions,
        interrupt: Option<&AtomicBool>,
    ) -> Result<(Generation, String)> {
        let (g, text, logprobs) = run_with_logprobs(prompt, ctx, opts, interrupt)?;
        assert!(logprobs.is_empty());
        Ok((g, text))
    }

    /// Collects only the text of what [`generate`] streams.
    fn text_into(text: &mut String) -> impl FnMut(Generated) + '_ {
        |g| {
            if let Generated::Text(t) = g {
                text.push_str(t)
            }
        }
    }

    fn opts(n: usize, sampler: SamplerOptions) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: n,
            sampler,
            stop_tokens: vec![],
            stop_strings: vec![],
            special_text: true,
            logprobs: None,
            answer: Default::default(),
        }
    }

    #[test]
    fn stops_after_n_tokens_and_counts_them() {
        let (g, _) = run("Hello world", 64, &opts(5, SamplerOptions::greedy()), None).unwrap();
        assert_eq!(g.ids.len(), 5);
        assert_eq!(g.stop, StopReason::MaxTokens);
        assert_eq!(
            g.timings.prompt_tokens + g.timings.decode_tokens,
            g.cache_len
        );
        assert_eq!(g.timings.decode_tokens, 4);
        assert_eq!(g.timings.generated_tokens, 5);
        assert!(g
            .timings
            .summary()
            .contains("| generated: 5 tokens | decode: 4 passes, "));
    }

    #[test]
    fn control_tokens_are_left_out_of_plain_text() {
        let file = builtin_model();
        let cfg = Config::from_gguf(&file).unwrap();
        let w = Weights::from_gguf(&file, &cfg).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let ids = tok.encode("Hello there").unwrap();
        let sampler = SamplerOptions {
            seed: 3,
            ..Default::default()
        };
        let mut texts = Vec::new();
        let mut gens = Vec::new();
        for special_text in [true, false] {
            let o = GenerateOptions {
                special_text,
                ..opts(48, sampler.clone())
            };
            let mut cpu = CpuBackend::new(&cfg, &w, 64, 1).unwrap();
            let mut text = String::new();
            gens.push(
                generate(&mut cpu, &tok, &ids, 0, &o, None, &mut text_into(&mut text)).unwrap(),
            );
            texts.push(text);
        }
        // The same tokens (seed 3 draws control tokens here); only the text differs.
        assert_eq!(gens[0].ids, gens[1].ids);
        assert!(
            gens[0].ids.iter().any(|&id| tok.is_control(id)),
            "{:?}",
            gens[0].ids
        );
        assert_eq!(texts[0], tok.decode(&gens[0].ids).unwrap());
        let plain: Vec<u32> = gens[0]
            .ids
            .iter()
            .copied()
            .filter(|&id| !tok.is_control(id))
            .collect();
        assert_eq!(texts[1], tok.decode(&plain).unwrap());
    }

    #[test]
    fn greedy_matches_argmax_of_full_logits_and_sampling_is_seeded() {
        let (greedy, _) = run("The sea", 64, &opts(6, SamplerOptions::greedy()), None).unwrap();
        let s = |seed| SamplerOptions {
            seed,
            ..Default::default()
        };
        let (a, _) = run("The sea", 64, &opts(6, s(1)), None).unwrap();
        let (b, _) = run("The sea", 64, &opts(6, s(1)), None).unwrap();
        assert_eq!(a.ids, b.ids);
        // Teacher-forced logits give the same greedy choices.
        let rows = teacher_forced("The sea", &greedy.ids);
        for (i, (row, &id)) in rows.iter().zip(&greedy.ids).enumerate() {
            assert_eq!(crate::ops_common::argmax(row), id, "token {i}");
        }
    }

    /// The built-in model's logits for `prompt` followed by `ids`, fed in one batch: row i
    /// is the one that chose `ids[i]`.
    fn teacher_forced(prompt: &str, ids: &[u32]) -> Vec<Vec<f32>> {
        let file = builtin_model();
        let cfg = Config::from_gguf(&file).unwrap();
        let w = Weights::from_gguf(&file, &cfg).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let prompt = tok.encode(prompt).unwrap();
        let all: Vec<u32> = prompt.iter().chain(ids).copied().collect();
        let mut cpu = CpuBackend::new(&cfg, &w, 64, 1).unwrap();
        let logits = cpu.feed_logits(&all, 0, Rows::All).unwrap();
        logits
            .chunks(cfg.vocab)
            .skip(prompt.len() - 1)
            .take(ids.len())
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// Asking for log-probabilities changes no choice (greedy leaves the backend's argmax
    /// for the logits), streams one per generated token, and each is the log-softmax of that
    /// token's teacher-forced logits, computed here in f64.
    #[test]
    fn logprobs_are_those_of_the_teacher_forced_logits() {
        let seeded = SamplerOptions {
            seed: 5,
            ..Default::default()
        };
        for sampler in [SamplerOptions::greedy(), seeded] {
            let (plain, _) = run("The sea", 64, &opts(6, sampler.clone()), None).unwrap();
            let o = GenerateOptions {
                logprobs: Some(3),
                ..opts(6, sampler.clone())
            };
            let (g, _, logprobs) = run_with_logprobs("The sea", 64, &o, None).unwrap();
            assert_eq!(g.ids, plain.ids);
            assert_eq!(logprobs.len(), g.ids.len());

            let rows = teacher_forced("The sea", &g.ids);
            for (i, ((lp, &id), row)) in logprobs.iter().zip(&g.ids).zip(&rows).enumerate() {
                let log_z = row.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
                let want = |t: u32| row[t as usize] as f64 - log_z;
                assert_eq!(lp.id, id);
                assert!(
                    (lp.logprob as f64 - want(id)).abs() < 1e-5,
                    "token {i}: {lp:?}"
                );
                assert_eq!(lp.top.len(), 3);
                let mut by_logit: Vec<u32> = (0..row.len() as u32).collect();
                by_logit.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
                for (&(t, l), &want_t) in lp.top.iter().zip(&by_logit) {
                    assert_eq!(t, want_t, "token {i}: {lp:?}");
                    assert!((l as f64 - want(t)).abs() < 1e-5, "token {i}: {lp:?}");
                }
                if sampler.is_greedy() {
                    assert_eq!(lp.top[0].0, id);
                }
            }
        }
    }

    /// Forced tokens come right after their trigger (or first, without one) as generated
    /// tokens, with their text and log-probabilities, and the model goes on from them as it
    /// would from a prompt that ended with them.
    #[test]
    fn forced_tokens_follow_their_trigger_and_the_model_goes_on_from_them() {
        let file = builtin_model();
        let cfg = Config::from_gguf(&file).unwrap();
        let w = Weights::from_gguf(&file, &cfg).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let prompt = tok.encode("The sea").unwrap();
        let forced_ids = tok.encode(" the lighthouse keeper").unwrap();
        let generate_ids = |prompt: &[u32], o: &GenerateOptions| {
            let mut cpu = CpuBackend::new(&cfg, &w, 64, 1).unwrap();
            let (mut text, mut logprobs) = (String::new(), 0);
            let g = generate(&mut cpu, &tok, prompt, 0, o, None, &mut |g| match g {
                Generated::Text(t) => text.push_str(t),
                Generated::Logprob(_) => logprobs += 1,
            })
            .unwrap();
            assert_eq!(tok.decode(&g.ids).unwrap(), text);
            (g.ids, logprobs)
        };
        let (plain, _) = generate_ids(&prompt, &opts(8, SamplerOptions::greedy()));
        let trigger = plain[2];
        let k = plain.iter().position(|&t| t == trigger).unwrap();
        // With log-probabilities every token comes from the logits; without, the thinking
        // before the trigger is chained on the backend and handed back where it starts.
        for (after, logprobs) in [
            (Some(trigger), Some(1)),
            (Some(trigger), None),
            (None, None),
        ] {
            let o = GenerateOptions {
                answer: AnswerRules {
                    after,
                    starts_with: forced_ids.clone(),
                    json: None,
                },
                logprobs,
                ..opts(k + 1 + forced_ids.len() + 4, SamplerOptions::greedy())
            };
            let (ids, streamed) = generate_ids(&prompt, &o);
            assert_eq!(streamed, if logprobs.is_some() { ids.len() } else { 0 });
            let at = if after.is_some() { k + 1 } else { 0 };
            assert_eq!(ids[..at], plain[..at]);
            assert_eq!(ids[at..at + forced_ids.len()], forced_ids[..], "{after:?}");
            let before_rest = at + forced_ids.len();
            let fed: Vec<u32> = prompt.iter().chain(&ids[..before_rest]).copied().collect();
            let (rest, _) = generate_ids(
                &fed,
                &opts(ids.len() - before_rest, SamplerOptions::greedy()),
            );
            assert_eq!(ids[before_rest..], rest[..], "{after:?}");
        }
    }

    /// A JSON answer: what is generated is always JSON or the start of it (whatever the
    /// sampler draws from the random model), whole when the reply ends for it; an answer
    /// whose forced start is a whole object ends right there.
    #[test]
    fn a_json_answer_stays_json_and_ends_when_whole() {
        let file = builtin_model();
        let cfg = Config::from_gguf(&file).unwrap();
        let w = Weights::from_gguf(&file, &cfg).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let prompt = tok.encode("The sea").unwrap();
        let json_reply = |sampler: SamplerOptions, value: JsonValue, starts_with: &str| {
            let o = GenerateOptions {
                answer: AnswerRules {
                    after: None,
                    starts_with: tok.encode(starts_with).unwrap(),
                    json: Some(value),
                },
                stop_tokens: tok.stop_tokens(),
                ..opts(40, sampler)
            };
            let mut cpu = CpuBackend::new(&cfg, &w, 64, 1).unwrap();
            let mut text = String::new();
            let g = generate(
                &mut cpu,
                &tok,
                &prompt,
                0,
                &o,
                None,
                &mut text_into(&mut text),
            );
            (g.unwrap(), text)
        };
        let samplers = (1..4).map(|seed| SamplerOptions {
            seed,
            top_k: 0,
            min_p: 0.0,
            ..Default::default()
        });
        for sampler in samplers.chain([SamplerOptions::greedy()]) {
            for value in [JsonValue::Object, JsonValue::Any] {
                let (g, text) = json_reply(sampler.clone(), value, "");
                let mut state = JsonState::new(value);
                assert!(state.push_all(text.as_bytes()), "{value:?}: {text:?}");
                let parsed = serde_json::from_str::<serde_json::Value>(&text);
                match g.stop {
                    StopReason::AnswerComplete => assert!(parsed.is_ok(), "{text:?}"),
                    StopReason::StopToken(_) => assert!(state.complete(), "{text:?}"),
                    StopReason::MaxTokens => assert_eq!(g.ids.len(), 40),
                    other => panic!("{other:?}: {text:?}"),
                }
            }
        }
        let (g, text) = json_reply(
            SamplerOptions::greedy(),
            JsonValue::Object,
            "{\"a\": [1, 2]}",
        );
        assert_eq!(
            (g.stop, text.as_str()),
            (StopReason::AnswerComplete, "{\"a\": [1, 2]}")
        );
    }

    #[test]
    fn stop_token_ends_without_being_returned() {
        let (g, _) = run("Hello", 64, &opts(4, SamplerOptions::greedy()), None).unwrap();
        let first = g.ids[0];
        let mut o = opts(4, SamplerOptions::greedy());
        o.stop_tokens = vec![first];
        let (g, text) = run("Hello", 64, &o, None).unwrap();
        assert!(g.ids.is_empty() && text.is_empty());
        assert_eq!(g.stop, StopReason::StopToken(first));
    }

    #[test]
    fn context_end_and_too_long_prompt() {
        let prompt = "one two three";
        let (g, _) = run(prompt, 64, &opts(1, SamplerOptions::greedy()), None).unwrap();
        let n_prompt = g.cache_len;
        let (g, _) = run(
            prompt,
            n_prompt + 3,
            &opts(100, SamplerOptions::greedy()),
            None,
        )
        .unwrap();
        assert_eq!(g.stop, StopReason::ContextFull);
        // 3 free positions are filled by fed-back tokens; one more is sampled from the last.
        assert_eq!(g.ids.len(), 4);
        let err = run(
            prompt,
            n_prompt - 1,
            &opts(5, SamplerOptions::greedy()),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("context"), "{err}");
    }

    #[test]
    fn stop_strings_hold_back_partial_matches() {
        let stops = ["</answer>".to_string(), "STOP".to_string(), String::new()];
        let mut s = StopStrings::new(&stops);
        assert_eq!(s.push("Hello </ans"), ("Hello ".to_string(), None));
        assert_eq!(s.push("wer"), (String::new(), None));
        // Not a stop string after all: the held text comes out.
        assert_eq!(s.push("x> ST"), ("</answerx> ".to_string(), None));
        assert_eq!(s.push("OP and more"), (String::new(), Some(1)));
        // Multi-byte characters: only whole prefixes are held.
        let stops = ["é!".to_string()];
        let mut s = StopStrings::new(&stops);
        assert_eq!(s.push("café"), ("caf".to_string(), None));
        assert_eq!(s.flush(), "é");
        // The earliest match wins, whichever stop string it is.
        let stops = ["bb".to_string(), "a".to_string()];
        assert_eq!(
            StopStrings::new(&stops).push("xbbxa"),
            ("x".to_string(), Some(0))
        );
    }

    #[test]
    fn stop_string_ends_the_reply_and_is_not_streamed() {
        let (full, text) = run("The sea", 64, &opts(12, SamplerOptions::greedy()), None).unwrap();
        assert_eq!(full.ids.len(), 12);
        // A stop string from the middle of the greedy text: the reply ends just before it.
        let chars: Vec<char> = text.chars().collect();
        assert!(chars.len() >= 6, "{text:?}");
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
        let cut = text.find(&stop).unwrap();
        let mut o = opts(12, SamplerOptions::greedy());
        o.stop_strings = vec!["never in this text \u{0}".into(), stop.clone()];
        let file = builtin_model();
        let cfg = Config::from_gguf(&file).unwrap();
        let w = Weights::from_gguf(&file, &cfg).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let mut cpu = CpuBackend::new(&cfg, &w, 64, 1).unwrap();
        let ids = tok.encode("The sea").unwrap();
        let mut streamed = String::new();
        let g = generate(
            &mut cpu,
            &tok,
            &ids,
            0,
            &o,
            None,
            &mut text_into(&mut streamed),
        )
        .unwrap();
        assert_eq!(g.stop, StopReason::StopString(1));
        assert_eq!(streamed, text[..cut], "stop {stop:?} in {text:?}");
        assert_eq!(g.ids[..], full.ids[..g.ids.len()]);
        assert!(g.ids.len() < full.ids.len());
    }

    #[test]
    fn interrupt_stops_at_once() {
        let flag = AtomicBool::new(true);
        let (g, _) = run(
            "Hello",
            64,
            &opts(10, SamplerOptions::greedy()),
            Some(&flag),
        )
        .unwrap();
        assert_eq!(g.stop, StopReason::Interrupted);
        assert!(g.ids.is_empty());
    }

    #[test]
    fn reusing_a_cached_prefix_gives_the_same_reply() {
        let file = builtin_model();
        let cfg = Config::from_gguf(&file).unwrap();
        let w = Weights::from_gguf(&file, &cfg).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let o = opts(5, SamplerOptions::greedy());
        let first = tok.encode("The wind came from the north").unwrap();
        let second = tok.encode("The wind came from the south, and").unwrap();
        let shared = first
            .iter()
            .zip(&second)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(shared > 2 && shared < first.len());

        let mut warm = CpuBackend::new(&cfg, &w, 64, 1).unwrap();
        let g = generate(&mut warm, &tok, &first, 0, &o, None, &mut |_| {}).unwrap();
        assert!(g.cache_len >= first.len());
        let reused = generate(&mut warm, &tok, &second, shared, &o, None, &mut |_| {}).unwrap();
        assert_eq!(reused.timings.prompt_tokens, second.len() - shared);

        let mut cold = CpuBackend::new(&cfg, &w, 64, 1).unwrap();
        let fresh = generate(&mut cold, &tok, &second, 0, &o, None, &mut |_| {}).unwrap();
        assert_eq!(reused.ids, fresh.ids);

        // Claiming more cached tokens than the cache holds is an error, not a silent reuse.
        let mut empty = CpuBackend::new(&cfg, &w, 64, 1).unwrap();
        let err = generate(&mut empty, &tok, &second, 3, &o, None, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("cache holds 0"), "{err}");
    }
}
