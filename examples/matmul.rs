//! Times weight matrices multiplied by a prompt chunk or a token's input, in one process: what
//! BENCHMARKS.md quotes in GFLOP/s for the prompt products of each format, and in GB/s of
//! weights read for the token step's.
//!
//!     cargo run --release --example matmul -- FORMAT INPUTS   (FORMAT: f32, f16, q8, q5 or q4)
//!
//! Up to 8 inputs (products read from memory: the token step's, and a few-token prompt's)
//! cycle over copies of the matrix filling 512 MB (`MB=N` for another size: `MB=8` stays in
//! cache), so the weights come from memory as a model's do; more inputs multiply one matrix,
//! in cache, as a prompt chunk's products are bound by arithmetic. `RWKV_CHAT_SIMD=portable`
//! or `=avx2` picks the kernels, as for the app. `COLS=N` sets the row length (2048 by
//! default): `COLS=96` is one of RWKV-7's LoRA up-projections.

use std::process::ExitCode;
use std::time::Instant;

use half::f16;
use rwkv_chat::model::gemv::{GEMV_MAX_ROWS, Q4, Q5, Q8, Rows, matmul};

const ROWS: usize = 2048;

/// The matrix in one of the formats.
#[derive(Clone)]
enum Matrix {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Q8(Q8),
    Q5(Q5),
    Q4(Q4),
}

impl Matrix {
    fn rows(&self) -> Rows<'_> {
        match self {
            Matrix::F32(w) => Rows::F32(w),
            Matrix::F16(w) => Rows::F16(w),
            Matrix::Q8(q) => Rows::Q8(q),
            Matrix::Q5(q) => Rows::Q5(q),
            Matrix::Q4(q) => Rows::Q4(q),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Matrix::F32(w) => size_of_val(&w[..]),
            Matrix::F16(w) => size_of_val(&w[..]),
            Matrix::Q8(q) => q.quants.len() + 2 * q.scales.len(),
            Matrix::Q5(q) => q.quants.len() + 2 * (q.scales.len() + q.mins.len()),
            Matrix::Q4(q) => q.quants.len() + 2 * q.scales.len(),
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let format = args.next().unwrap_or_else(|| "q4".into());
    let inputs = match args.next().map(|n| n.parse::<usize>()) {
        None => 256,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("INPUTS must be a whole number above 0");
            return ExitCode::FAILURE;
        }
    };
    let Some(cols) = env_count("COLS", 2048) else {
        return ExitCode::FAILURE;
    };
    let w: Vec<f32> = (0..ROWS * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x: Vec<f32> = (0..inputs * cols)
        .map(|i| ((i * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let matrix = match format.as_str() {
        "f32" => Matrix::F32(w),
        "f16" => Matrix::F16(w.iter().map(|&v| f16::from_f32(v)).collect()),
        "q8" => Matrix::Q8(Q8::quantize(&w, cols)),
        "q5" => Matrix::Q5(Q5::quantize(&w, cols)),
        "q4" => Matrix::Q4(Q4::quantize(&w, cols)),
        other => {
            eprintln!("`{other}` is not a format here; expected f32, f16, q8, q5 or q4");
            return ExitCode::FAILURE;
        }
    };
    let mut out = vec![0f32; inputs * ROWS];
    if inputs <= GEMV_MAX_ROWS {
        let Some(mb) = env_count("MB", 512) else {
            return ExitCode::FAILURE;
        };
        let copies = (mb << 20).div_ceil(matrix.bytes());
        let all: Vec<Matrix> = vec![matrix.clone(); copies];
        // Once over every copy first, so the pages are in place.
        for m in &all {
            matmul(m.rows(), ROWS, cols, &x, 1.0, &mut out);
        }
        let reps = (8usize << 30).div_ceil(copies * matrix.bytes()).max(8);
        let start = Instant::now();
        // On one of rayon's threads, as the app's token step runs: called from outside the
        // pool, every product would wait for a thread to wake.
        rayon::scope(|_| {
            for _ in 0..reps {
                for m in &all {
                    matmul(m.rows(), ROWS, cols, &x, 1.0, &mut out);
                }
            }
        });
        let seconds = start.elapsed().as_secs_f64();
        let bytes = (reps * copies * matrix.bytes()) as f64;
        println!(
            "{format} x {inputs} inputs over {copies} matrices: {:.1} GB/s of weights",
            bytes / seconds / 1e9
        );
        return ExitCode::SUCCESS;
    }
    // About 1.3 TFLOP whatever the chunk, so each figure takes a few seconds.
    let reps = (60 * 256 / inputs).max(1);
    let start = Instant::now();
    for _ in 0..reps {
        matmul(matrix.rows(), ROWS, cols, &x, 1.0, &mut out);
    }
    let flops = 2.0 * (ROWS * cols * inputs * reps) as f64;
    println!(
        "{format} x {inputs} inputs: {:.1} GFLOP/s",
        flops / start.elapsed().as_secs_f64() / 1e9
    );
    ExitCode::SUCCESS
}

/// The whole number above 0 in the environment variable `name`, or `default` where it is not
/// set; `None` (with the message printed) where it is something else.
fn env_count(name: &str, default: usize) -> Option<usize> {
    match std::env::var(name).map(|v| v.parse::<usize>()) {
        Err(_) => Some(default),
        Ok(Ok(n)) if n > 0 => Some(n),
        Ok(_) => {
            eprintln!("{name} must be a whole number above 0");
            None
        }
    }
}
