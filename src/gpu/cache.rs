//! The latent caches on the GPU: per layer one buffer of `[positions][kv_lora + rope]` rows,
//! f16 (two values per u32, the lower index in the low half, as `pack2x16float` writes
//! them) or f32. Sized and checked before anything is allocated, and allocated before the
//! weights, so a context that does not fit is refused at once, naming the largest that does.
//! Those refusals are `Error::Input`: the request is at fault, not the device, so the
//! engine's `auto` reports them instead of falling back to the CPU.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::upload::storage_zeroed;
use crate::ops_common::CacheType;

/// Each layer's buffer holds whole tiles of this many positions (the zeros past the last
/// one included): the cooperative attention reads whole tiles of keys, masking the ones
/// past the context, and must not read past the buffer.
pub const POSITION_TILE: usize = 128;

/// Every layer's latent cache.
pub struct LatentCaches {
    pub layers: Vec<wgpu::Buffer>,
    pub cache_type: CacheType,
    pub positions: usize,
    /// Bytes of all layers together.
    pub bytes: u64,
}

/// Bytes of one layer's cache row.
fn row_bytes(cfg: &Config, t: CacheType) -> u64 {
    (cfg.cache_row() * t.bytes()) as u64
}

/// Bytes of one layer's buffer for `positions` positions (whole tiles).
fn layer_bytes(cfg: &Config, positions: usize, t: CacheType) -> u64 {
    positions.next_multiple_of(POSITION_TILE) as u64 * row_bytes(cfg, t)
}

/// Bytes of every layer's cache of `positions` positions, as [`LatentCaches::allocate`]
/// takes them.
pub fn planned_bytes(cfg: &Config, positions: usize, t: CacheType) -> u64 {
    layer_bytes(cfg, positions, t) * cfg.n_layers as u64
}

/// The most positions one layer's buffer may hold on this device (its binding and buffer
/// limits).
pub fn max_positions(ctx: &GpuContext, cfg: &Config, t: CacheType) -> usize {
    let rows = (ctx.max_binding.min(ctx.max_buffer) / row_bytes(cfg, t)) as usize;
    rows / POSITION_TILE * POSITION_TILE
}

/// "11.0 GB", "12.3 MB", "54.1 kB", "768 B".
pub fn human_bytes(b: u64) -> String {
    let f = b as f64;
    match f {
        _ if f >= 1e9 => format!("{:.1} GB", f / 1e9),
        _ if f >= 1e6 => format!("{:.1} MB", f / 1e6),
        _ if f >= 1e4 => format!("{:.1} kB", f / 1e3),
        _ => format!("{b} B"),
    }
}

impl LatentCaches {
    /// Caches of `positions` positions for every layer of `cfg`, zeroed.
    pub fn allocate(
        ctx: &GpuContext,
        cfg: &Config,
        positions: usize,
        t: CacheType,
    ) -> Result<LatentCaches> {
        let per_layer = layer_bytes(cfg, positions, t);
        let bytes = planned_bytes(cfg, positions, t);
        let fits = max_positions(ctx, cfg, t);
        let what = || {
            format!(
                "a {} latent cache of {positions} positions takes {} ({} per layer)",
                t.name(),
                human_bytes(bytes),
                human_bytes(per_layer)
            )
        };
        if positions > fits {
            return Err(Error::Input(format!(
                "{}; {} allows {} per buffer, so at most {fits} positions fit: use --ctx {fits}{}",
                what(),
                ctx.describe(),
                human_bytes(ctx.max_binding.min(ctx.max_buffer)),
                if t == CacheType::F32 {
                    " or --cache-type f16"
                } else {
                    ""
                }
            )));
        }
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let label = format!("blk.{l}.kv_cache");
            // In u32 words: an f16 row of an even width is whole words (checked by the
            // attention kernel's launcher).
            let words = (per_layer as usize).div_ceil(4);
            match storage_zeroed(ctx, &label, words) {
                Ok(b) => layers.push(b),
                Err(e) => {
                    // wgpu does not say how much memory a device has: what fitted before
                    // running out is the estimate (before the weights, which come next).
                    let estimate = positions * l / cfg.n_layers;
                    return Err(Error::Input(format!(
                        "{}: layer {l}'s cache did not fit ({e}); caches of at most about \
                         {estimate} positions fit, before the weights: use a smaller --ctx",
                        what()
                    )));
                }
            }
        }
        Ok(LatentCaches {
            layers,
            cache_type: t,
            positions,
            bytes,
        })
    }

    /// "f16 latent cache 12.1 MB (4096 positions)"
    pub fn describe(&self) -> String {
        format!(
            "{} latent cache {} ({} positions)",
            self.cache_type.name(),
            human_bytes(self.bytes),
            self.positions
        )
    }

    /// Benchmarks only: positions `0..positions` of every layer hold the rows of `block`
    /// (`[rows][cache_row]`, repeated). One staging upload, then GPU copies.
    pub fn fill(&self, ctx: &GpuContext, cfg: &Config, block: &[f32], positions: usize) {
        let row = row_bytes(cfg, self.cache_type);
        let bytes = encode_rows(self.cache_type, block);
        let rows = (bytes.len() as u64 / row) as usize;
        let staging = crate::gpu::upload::storage_init(ctx, "cache fill block", &bytes);
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        for layer in &self.layers {
            for start in (0..positions).step_by(rows) {
                let n = rows.min(positions - start) as u64;
                enc.copy_buffer_to_buffer(&staging, 0, layer, start as u64 * row, n * row);
            }
        }
        ctx.queue.submit([enc.finish()]);
    }
}

/// Rows of f32 values as an f16 or f32 cache stores them (f16: rounded to nearest even,
/// two per little-endian u32, the lower index in the low half).
pub fn encode_rows(t: CacheType, values: &[f32]) -> Vec<u8> {
    match t {
        CacheType::F32 => bytemuck::cast_slice(values).to_vec(),
        CacheType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
    }
}

/// The values of cache bytes (the inverse of [`encode_rows`]).
pub fn decode_rows(t: CacheType, bytes: &[u8]) -> Vec<f32> {
    match t {
        CacheType::F32 => bytemuck::pod_collect_to_vec(bytes),
        CacheType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}
