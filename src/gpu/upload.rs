//! Weights on the GPU: repacked once at load into the layout the kernels read, split into
//! row chunks so that no binding exceeds the device's limit.
//!
//! Each weight format names its GPU layout (`crate::formats::GpuLayout`: how its rows are
//! packed into a chunk's two arrays; the WGSL library of each reads them). A matrix stacked
//! from tensors of different formats is split by format: each chunk holds rows of one layout,
//! chunk boundaries fall on the tensors' boundaries, and the kernels dispatch per chunk with
//! that layout's pipeline. Only rows of different layouts that interleave (a gate/up pair of
//! two formats, which the expert kernel reads as neighbouring rows) cannot be split: that
//! matrix goes up as f32, exact but larger, and the load log says so. A format without a
//! GPU layout is refused by name. Activations, norms and small vectors are plain f32 buffers.

use std::time::Instant;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::formats;
use crate::gguf::{GgmlType, TensorInfo};
use crate::gpu::context::GpuContext;
use crate::weights::{Matrix, Weights};

/// How a matrix is stored on the GPU: its format's layout.
pub use crate::formats::GpuLayout as Format;

/// The error for a matrix whose format the GPU cannot compute with.
fn unsupported(m: &Matrix) -> Error {
    Error::Gpu(format!(
        "tensor {} has type {}, which the GPU backend cannot compute with yet (GPU types: {}); use --backend cpu",
        m.name,
        m.ty,
        formats::gpu_supported_names()
    ))
}

/// Refuses a model holding a matrix the GPU cannot compute with, before anything is uploaded.
pub fn check_formats(w: &Weights) -> Result<()> {
    match w
        .matrices()
        .iter()
        .find(|m| formats::of(m.ty).and_then(|f| f.gpu).is_none())
    {
        Some(m) => Err(unsupported(m)),
        None => Ok(()),
    }
}

/// The GPU layout of a matrix: its type's own, or the widened one of short rows
/// (`formats::gpu_layout`).
fn layout_of(m: &Matrix) -> Result<Format> {
    formats::gpu_layout(m.ty, m.cols).ok_or_else(|| unsupported(m))
}

/// What each tensor of a file becomes on the GPU (in file order): its layout and bytes, or
/// None where the GPU cannot compute with its type. Vectors go up as f32. Each matrix keeps
/// its own type's layout (stacks are split by format), except the gate and up of one FFN
/// (`ffn_gate*` / `ffn_up*` with the same suffix) when their layouts differ: the expert
/// kernel reads their rows interleaved, so both go up as f32 (see [`GpuMatrix::build`]).
pub fn planned_forms(tensors: &[TensorInfo]) -> Vec<Option<(Format, u64)>> {
    let own = |ty: GgmlType, dims: &[u64]| formats::gpu_form(ty, dims);
    let layout = |name: &str| {
        tensors
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| own(t.ggml_type, &t.dims))
            .map(|(l, _)| l)
    };
    tensors
        .iter()
        .map(|t| {
            let form = own(t.ggml_type, &t.dims)?;
            let partner = if t.name.contains(".ffn_gate_inp") {
                None
            } else if let Some(i) = t.name.find(".ffn_gate") {
                Some(format!("{}.ffn_up{}", &t.name[..i], &t.name[i + 9..]))
            } else {
                t.name
                    .find(".ffn_up")
                    .map(|i| format!("{}.ffn_gate{}", &t.name[..i], &t.name[i + 7..]))
            };
            match partner.and_then(|p| layout(&p)) {
                Some(other) if other != form.0 && t.dims.len() > 1 => {
                    let cols = t.dims[0] as usize;
                    let rows = t.dims[1..].iter().product::<u64>() as usize;
                    Some((Format::F32, Format::F32.matrix_bytes(rows, cols)))
                }
                _ => Some(form),
            }
        })
        .collect()
}

/// Rows `row_start..row_start + rows` of a GPU matrix, each array its own buffer.
pub struct Chunk {
    pub row_start: usize,
    pub rows: usize,
    /// The layout of these rows (see `crate::formats::GpuLayout` for what each array holds).
    pub format: Format,
    pub quants: wgpu::Buffer,
    /// A 4-byte placeholder where the layout has no second array (bindings cannot be empty).
    pub scales: wgpu::Buffer,
}

/// A `[rows][cols]` matrix in GPU layout, in one or more row chunks (of one or several
/// layouts).
pub struct GpuMatrix {
    pub rows: usize,
    pub cols: usize,
    pub chunks: Vec<Chunk>,
}

/// One row of a GPU matrix: row `row` of `m`, columns `col_start..col_start + cols`.
#[derive(Clone, Copy)]
pub struct RowRef<'a> {
    pub m: Matrix<'a>,
    pub row: usize,
    pub col_start: usize,
}

/// Upload byte counts and time, for progress and the load summary.
pub struct Uploader<'p> {
    pub bytes: u64,
    pub total: u64,
    pub started: Instant,
    progress: Option<&'p mut dyn FnMut(u64, u64)>,
}

impl<'p> Uploader<'p> {
    /// `total`: the bytes expected (for the progress callback, which gets (done, total)).
    pub fn new(total: u64, progress: Option<&'p mut dyn FnMut(u64, u64)>) -> Self {
        Uploader {
            bytes: 0,
            total,
            started: Instant::now(),
            progress,
        }
    }

    fn add(&mut self, n: u64) {
        self.bytes += n;
        if let Some(p) = self.progress.as_mut() {
            p(self.bytes, self.total);
        }
    }

    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Creates a buffer of `size` bytes with `make`, first checking the size against the
/// device's buffer limit and catching an out-of-memory in an error scope: wgpu would
/// otherwise report either to its default handler, which panics. Both become an
/// [`Error::Gpu`] naming `label`, the bytes and the device (so `--backend auto` can fall
/// back to the CPU).
pub fn create_checked(
    ctx: &GpuContext,
    label: &str,
    size: u64,
    make: impl FnOnce() -> wgpu::Buffer,
) -> Result<wgpu::Buffer> {
    if size > ctx.max_buffer {
        return Err(Error::Gpu(format!(
            "{label} needs a buffer of {size} bytes; {} allows at most {} bytes per buffer",
            ctx.describe(),
            ctx.max_buffer
        )));
    }
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let buffer = make();
    match pollster::block_on(scope.pop()) {
        None => Ok(buffer),
        Some(e) => Err(Error::Gpu(format!(
            "{OUT_OF_MEMORY} uploading {label} ({size} bytes) to {}: {e}",
            ctx.describe()
        ))),
    }
}

/// How an allocation that did not fit begins its error.
const OUT_OF_MEMORY: &str = "out of GPU memory";

/// `e` with `hint` (what took the room, what would leave some) added where the GPU ran out
/// of memory; any other error as it is.
pub fn with_memory_hint(e: Error, hint: impl FnOnce() -> String) -> Error {
    match e {
        Error::Gpu(why) if why.starts_with(OUT_OF_MEMORY) => {
            Error::Gpu(format!("{why} ({})", hint()))
        }
        e => e,
    }
}

/// [`storage_init`], checked: the weights and caches go through here.
pub fn try_storage_init(ctx: &GpuContext, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
    let size = data.len().div_ceil(4).max(1) as u64 * 4;
    create_checked(ctx, label, size, || storage_init(ctx, label, data))
}

pub fn try_storage_f32(ctx: &GpuContext, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
    try_storage_init(ctx, label, bytemuck::cast_slice(data))
}

/// A storage buffer holding `data`, copyable both ways (tests poison and read them).
/// Unchecked: a too-large buffer panics in wgpu (see [`try_storage_init`]).
pub fn storage_init(ctx: &GpuContext, label: &str, data: &[u8]) -> wgpu::Buffer {
    // Bindings must be non-empty and a multiple of 4 bytes.
    let mut padded;
    let contents = if data.is_empty() || !data.len().is_multiple_of(4) {
        padded = data.to_vec();
        padded.resize(data.len().div_ceil(4).max(1) * 4, 0);
        &padded[..]
    } else {
        data
    };
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
}

pub fn storage_f32(ctx: &GpuContext, label: &str, data: &[f32]) -> wgpu::Buffer {
    storage_init(ctx, label, bytemuck::cast_slice(data))
}

/// A zeroed f32 storage buffer of `n` values; errors if it exceeds the binding limit.
pub fn storage_zeroed(ctx: &GpuContext, label: &str, n: usize) -> Result<wgpu::Buffer> {
    let size = (4 * n.max(1)) as u64;
    if size > ctx.max_binding {
        return Err(Error::Gpu(format!(
            "{label} needs a {size}-byte binding; the limit is {} bytes",
            ctx.max_binding
        )));
    }
    create_checked(ctx, label, size, || {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })
}

pub fn uniform<T: bytemuck::Pod>(ctx: &GpuContext, label: &str, value: &T) -> wgpu::Buffer {
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
}

impl GpuMatrix {
    /// Builds a `[rows][cols]` matrix whose row i is `row_of(i)`, in chunks of a multiple of
    /// `row_align` rows (so that groups the kernels read together stay in one chunk). Runs of
    /// rows of one layout become chunks of that layout; a group of `row_align` rows of
    /// different layouts (a gate/up pair of two formats) goes up as f32, and the log says so.
    #[allow(clippy::too_many_arguments)]
    pub fn build<'a>(
        ctx: &GpuContext,
        label: &str,
        rows: usize,
        cols: usize,
        row_align: usize,
        up: &mut Uploader,
        row_of: impl Fn(usize) -> RowRef<'a>,
    ) -> Result<GpuMatrix> {
        // Runs of one layout: (first row, layout). Rows read together (`row_align` of them)
        // whose layouts differ go up as f32.
        let mut runs: Vec<(usize, Format)> = Vec::new();
        let mut mixed: Vec<String> = Vec::new();
        for first in (0..rows).step_by(row_align) {
            let group: Vec<Matrix> = (first..(first + row_align).min(rows))
                .map(|r| row_of(r).m)
                .collect();
            let mut layout = layout_of(&group[0])?;
            for m in &group[1..] {
                if layout_of(m)? != layout {
                    let names: Vec<String> = group
                        .iter()
                        .map(|m| format!("{} ({})", m.name, m.ty))
                        .collect();
                    let names = names.join(" with ");
                    if !mixed.contains(&names) {
                        mixed.push(names);
                    }
                    layout = Format::F32;
                }
            }
            if runs.last().is_none_or(|&(_, l)| l != layout) {
                runs.push((first, layout));
            }
        }
        if !mixed.is_empty() {
            let f32_rows: usize = runs
                .iter()
                .enumerate()
                .filter(|(_, r)| r.1.is_f32())
                .map(|(i, r)| runs.get(i + 1).map_or(rows, |n| n.0) - r.0)
                .sum();
            log::info!(
                "{label}: rows of different GPU layouts are read together ({}); those {f32_rows} rows are stored as f32: {} bytes on the GPU",
                mixed.join(", "),
                Format::F32.matrix_bytes(f32_rows, cols)
            );
        }
        let mut chunks = Vec::new();
        for (i, &(start, format)) in runs.iter().enumerate() {
            let end = runs.get(i + 1).map_or(rows, |&(s, _)| s);
            Self::add_chunks(
                ctx,
                label,
                format,
                start..end,
                cols,
                row_align,
                up,
                &row_of,
                &mut chunks,
            )?;
        }
        Ok(GpuMatrix { rows, cols, chunks })
    }

    /// Chunks of `format` for rows `range`, each within the binding limit.
    #[allow(clippy::too_many_arguments)]
    fn add_chunks<'a>(
        ctx: &GpuContext,
        label: &str,
        format: Format,
        range: std::ops::Range<usize>,
        cols: usize,
        row_align: usize,
        up: &mut Uploader,
        row_of: &impl Fn(usize) -> RowRef<'a>,
        chunks: &mut Vec<Chunk>,
    ) -> Result<()> {
        if !cols.is_multiple_of(format.block_values()) {
            return Err(Error::Gpu(format!(
                "{label}: {cols} columns is not a multiple of the {} block ({})",
                format.name(),
                format.block_values()
            )));
        }
        if !cols.is_multiple_of(16) {
            return Err(Error::Gpu(format!(
                "{label}: the kernels need a multiple of 16 columns, not {cols}"
            )));
        }
        let row_bytes = format.row_bytes(cols);
        // Multiples of 4 rows keep the kernels' 4-row workgroups in one chunk.
        let align = lcm(row_align, 4);
        let fit = (ctx.max_binding / row_bytes) as usize / align * align;
        if fit == 0 {
            return Err(Error::Gpu(format!(
                "{label}: {align} rows of {row_bytes} bytes exceed the {}-byte binding limit",
                ctx.max_binding
            )));
        }
        let mut row_start = range.start;
        while row_start < range.end {
            let n = fit.min(range.end - row_start);
            let [q, s] = pack(label, format, cols, (row_start..row_start + n).map(row_of))?;
            let chunk = Chunk {
                row_start,
                rows: n,
                format,
                quants: try_storage_init(ctx, label, &q)?,
                scales: try_storage_init(ctx, label, &s)?,
            };
            up.add((q.len() + s.len()) as u64);
            chunks.push(chunk);
            row_start += n;
        }
        Ok(())
    }

    /// A file matrix as it is.
    pub fn from_matrix(
        ctx: &GpuContext,
        label: &str,
        m: &Matrix,
        up: &mut Uploader,
    ) -> Result<GpuMatrix> {
        let m = *m;
        Self::build(ctx, label, m.rows, m.cols, 1, up, |r| RowRef {
            m,
            row: r,
            col_start: 0,
        })
    }

    /// File matrices of equal width stacked into one (rows of the first, then the second...).
    pub fn concat(
        ctx: &GpuContext,
        label: &str,
        parts: &[Matrix],
        up: &mut Uploader,
    ) -> Result<GpuMatrix> {
        let cols = parts[0].cols;
        if let Some(bad) = parts.iter().find(|m| m.cols != cols) {
            return Err(Error::Gpu(format!(
                "{label}: cannot stack a {}-column matrix under {cols}-column ones",
                bad.cols
            )));
        }
        let rows: usize = parts.iter().map(|m| m.rows).sum();
        let parts = parts.to_vec();
        Self::build(ctx, label, rows, cols, 1, up, |mut r| {
            for m in &parts {
                if r < m.rows {
                    return RowRef {
                        m: *m,
                        row: r,
                        col_start: 0,
                    };
                }
                r -= m.rows;
            }
            unreachable!("row index checked against the total")
        })
    }

    /// Bytes on the GPU, all chunks.
    pub fn bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| c.quants.size() + c.scales.size())
            .sum()
    }
}

/// Repack rows into the GPU layout's arrays (`quants`, `scales`; see `GpuLayout`).
fn pack<'a>(
    label: &str,
    format: Format,
    cols: usize,
    rows: impl Iterator<Item = RowRef<'a>>,
) -> Result<[Vec<u8>; 2]> {
    let mut arrays = [Vec::new(), Vec::new()];
    let mut scratch = Vec::new();
    for r in rows {
        let m = r.m;
        let stored = m.format();
        let (Some(start), Some(len)) = (stored.bytes_for(r.col_start), stored.bytes_for(cols))
        else {
            return Err(Error::Gpu(format!(
                "{label}: columns {}..{} of {} ({}) are not whole blocks",
                r.col_start,
                r.col_start + cols,
                m.name,
                m.ty
            )));
        };
        format.pack_row(
            stored,
            &m.row(r.row)[start..start + len],
            &mut arrays,
            &mut scratch,
        );
    }
    Ok(arrays)
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}
