//! Weights on the GPU: repacked once at load into the layout the kernels read, split into
//! row chunks so that no binding exceeds the device's limit.
//!
//! Each weight format names its GPU layout (`crate::formats::GpuLayout`): Q8_0 matrices
//! become two arrays per chunk (int8 quants and f16 scales, see kernels/matvec.wgsl); F32, F16
//! and BF16 matrices become f32. A format without a GPU layout is refused by name.
//! Activations, norms and small vectors are plain f32 buffers.

use std::time::Instant;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::formats;
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

/// The layout of a GPU matrix stacked from the rows of `parts` (one matrix or several).
/// Parts of one layout keep it. Parts of different layouts are all stored as f32, which
/// costs memory: logged with the tensors, their types and the bytes.
pub fn layout_for(label: &str, parts: &[Matrix]) -> Result<Format> {
    let mut layouts = Vec::with_capacity(parts.len());
    for m in parts {
        layouts.push(
            formats::of(m.ty)
                .and_then(|f| f.gpu)
                .ok_or_else(|| unsupported(m))?,
        );
    }
    if layouts.iter().all(|&l| l == layouts[0]) {
        return Ok(layouts[0]);
    }
    let names: Vec<String> = parts
        .iter()
        .map(|m| format!("{} ({})", m.name, m.ty))
        .collect();
    let file: u64 = parts.iter().map(|m| m.data.len() as u64).sum();
    let gpu: u64 = parts
        .iter()
        .map(|m| Format::F32.matrix_bytes(m.rows, m.cols))
        .sum();
    log::info!(
        "{label}: stacks rows of different GPU layouts ({}); all stored as f32: {gpu} bytes on the GPU for {file} in the file",
        names.join(", ")
    );
    Ok(Format::F32)
}

/// Rows `row_start..row_start + rows` of a GPU matrix, each array its own buffer.
pub struct Chunk {
    pub row_start: usize,
    pub rows: usize,
    /// Q8_0: quants; F32: the values.
    pub quants: wgpu::Buffer,
    /// Q8_0: f16 scales; F32: a 4-byte placeholder (bindings cannot be empty).
    pub scales: wgpu::Buffer,
}

/// A `[rows][cols]` matrix in GPU layout, in one or more row chunks.
pub struct GpuMatrix {
    pub format: Format,
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
            "out of GPU memory uploading {label} ({size} bytes) to {}: {e}",
            ctx.describe()
        ))),
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
    /// `row_align` rows (so that groups the kernels read together stay in one chunk).
    #[allow(clippy::too_many_arguments)]
    pub fn build<'a>(
        ctx: &GpuContext,
        label: &str,
        format: Format,
        rows: usize,
        cols: usize,
        row_align: usize,
        up: &mut Uploader,
        row_of: impl Fn(usize) -> RowRef<'a>,
    ) -> Result<GpuMatrix> {
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
        let mut chunks = Vec::new();
        let mut row_start = 0;
        while row_start < rows {
            let n = fit.min(rows - row_start);
            let [q, s] = pack(label, format, cols, (row_start..row_start + n).map(&row_of))?;
            let chunk = Chunk {
                row_start,
                rows: n,
                quants: try_storage_init(ctx, label, &q)?,
                scales: try_storage_init(ctx, label, &s)?,
            };
            up.add((q.len() + s.len()) as u64);
            chunks.push(chunk);
            row_start += n;
        }
        Ok(GpuMatrix {
            format,
            rows,
            cols,
            chunks,
        })
    }

    /// A file matrix as it is.
    pub fn from_matrix(
        ctx: &GpuContext,
        label: &str,
        m: &Matrix,
        up: &mut Uploader,
    ) -> Result<GpuMatrix> {
        let m = *m;
        Self::build(
            ctx,
            label,
            layout_for(label, &[m])?,
            m.rows,
            m.cols,
            1,
            up,
            |r| RowRef {
                m,
                row: r,
                col_start: 0,
            },
        )
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
        let format = layout_for(label, parts)?;
        let rows: usize = parts.iter().map(|m| m.rows).sum();
        let parts = parts.to_vec();
        Self::build(ctx, label, format, rows, cols, 1, up, |mut r| {
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
}

/// Repack rows into the GPU layout's arrays (for Q8_0: quants, f16 scales; for f32: the
/// values and an empty second array).
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
