//! `cargo bench --bench cpu_dot`: one CPU core's row dot of every weight format, the
//! hand-vectorised path (where a format has one) against the scalar reference, as GB/s of
//! weights read from cache-warm rows of 2048 values; and for the formats with 8-bit codes
//! the dot of `--matmul q8` (activations in 8 bits), vectorised and by its definition.

use std::time::Instant;

use glm_flash::formats::int8::{self, Q8Rows};
use glm_flash::formats::FORMATS;
use glm_flash::sampler::SplitMix64;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs it without, only to keep it building.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    const ROWS: usize = 512;
    const COLS: usize = 2048;
    let mut rng = SplitMix64(1);
    let mut uniform = || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    let values: Vec<f32> = (0..ROWS * COLS).map(|_| uniform()).collect();
    let x: Vec<f32> = (0..COLS).map(|_| uniform()).collect();
    let x8 = Q8Rows::quantize(&x, COLS);
    println!(
        "8-bit dots: {}",
        int8::vectorised().unwrap_or("the portable definition only")
    );
    println!(
        "{:<6} {:>12} {:>12} {:>8} {:>12} {:>12}",
        "format", "dot GB/s", "scalar GB/s", "speedup", "q8 GB/s", "q8 def GB/s"
    );
    for f in &FORMATS {
        let mut bytes = Vec::new();
        f.quantize(&values, &mut bytes);
        let row_bytes = bytes.len() / ROWS;
        let time = |dot: &dyn Fn(&[u8]) -> f32| {
            let mut best = f64::MAX;
            let mut sink = 0f32;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..4 {
                    for row in bytes.chunks_exact(row_bytes) {
                        sink += dot(row);
                    }
                }
                best = best.min(t.elapsed().as_secs_f64() / 4.0);
            }
            std::hint::black_box(sink);
            bytes.len() as f64 / best / 1e9
        };
        let fast = time(&|row| f.dot(row, &x));
        let scalar = time(&|row| f.dot_scalar(row, &x));
        let q8 = if f.has_dot_q8() {
            let fast = time(&|row| f.dot_q8(row, x8.row(0)));
            let def = time(&|row| f.dot_q8_scalar(row, x8.row(0)));
            format!("{fast:>12.2} {def:>12.2}")
        } else {
            format!("{:>12} {:>12}", "-", "-")
        };
        println!(
            "{:<6} {fast:>12.2} {scalar:>12.2} {:>7.2}x {q8}",
            f.ty.name(),
            fast / scalar
        );
    }
}
