//! Times one weight matrix multiplied by a prompt chunk, in one process: what BENCHMARKS.md
//! quotes in GFLOP/s for the prompt products of each format.
//!
//!     cargo run --release --example matmul -- FORMAT INPUTS   (FORMAT: f32, q8, q5 or q4)
//!
//! `RWKV_CHAT_SIMD=portable` or `=avx2` picks the kernels, as for the app.

use std::process::ExitCode;
use std::time::Instant;

use rwkv_chat::model::gemv::{Q4, Q5, Q8, Rows, matmul};

const ROWS: usize = 2048;
const COLS: usize = 2048;

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
    let w: Vec<f32> = (0..ROWS * COLS)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x: Vec<f32> = (0..inputs * COLS)
        .map(|i| ((i * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let (q8, q5, q4);
    let rows = match format.as_str() {
        "f32" => Rows::F32(&w),
        "q8" => {
            q8 = Q8::quantize(&w, COLS);
            Rows::Q8(&q8)
        }
        "q5" => {
            q5 = Q5::quantize(&w, COLS);
            Rows::Q5(&q5)
        }
        "q4" => {
            q4 = Q4::quantize(&w, COLS);
            Rows::Q4(&q4)
        }
        other => {
            eprintln!("`{other}` is not a format here; expected f32, q8, q5 or q4");
            return ExitCode::FAILURE;
        }
    };
    let mut out = vec![0f32; inputs * ROWS];
    // About 1.3 TFLOP whatever the chunk, so each figure takes a few seconds.
    let reps = (60 * 256 / inputs).max(1);
    let start = Instant::now();
    for _ in 0..reps {
        matmul(rows, ROWS, COLS, &x, 1.0, &mut out);
    }
    let flops = 2.0 * (ROWS * COLS * inputs * reps) as f64;
    println!(
        "{format} x {inputs} inputs: {:.1} GFLOP/s",
        flops / start.elapsed().as_secs_f64() / 1e9
    );
    ExitCode::SUCCESS
}
