//! The GPU figures of `scripts/gpu-check.sh`, one part per argument:
//!
//! * `device`: name, compute capability, multiprocessors, memory, the memory bandwidth the
//!   device is rated for (a datasheet table keyed by name; else what the driver's memory clock
//!   and bus width give) and a measured device-to-device copy (bytes read + written).
//! * `loss`: the fused GRPO loss (`learner::FusedGrpoLoss`, its `cuda_fwd`) at 16M tokens,
//!   forward alone and forward + backward, against the same loss as separate candle ops with
//!   autograd on the same GPU; bytes moved are derived from what each kernel reads and writes
//!   (below), bandwidth as a fraction of the rated and of the copy bandwidth. The fused result
//!   is compared with the CPU reference `loss::grpo_loss_cpu` at the same size.
//! * `stages`: the G2PO advantage stages on the GPU (upload, kernels, download) against the
//!   CPU engine (`Estimator::estimate_into`) at about 1M and 10M rows of the shared synthetic
//!   workload, with the largest difference of the advantages.
//!
//! Each figure is one JSON line on stdout (`{"part": ..., ...}`) and one markdown table row on
//! stderr (a line starting with `|`), so the script can collect both. Times are medians of
//! synchronised repetitions after warm-up, on the wall clock: what a caller pays, launch and
//! host work included.
//!
//! Without a GPU each part prints `{"part": ..., "skipped": "no GPU: ..."}` and the program
//! exits 0; with `G2PO_REQUIRE_GPU=1` it exits 1 instead.
//!
//! Run: `cargo bench --features cuda --bench gpu -- device loss stages` (all three by default).

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use cudarc::driver::sys::CUdevice_attribute;
use g2po::cuda::{GpuContext, StageHost};
use g2po::learner::{FusedGrpoLoss, LossConstants};
use g2po::loss::LossBuffers;
use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind};
use serde_json::{Value, json};

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/gpu.rs"]
mod gpu_support;
#[path = "common/grpo_loss.rs"]
mod grpo_loss;

type Error = Box<dyn std::error::Error>;

/// 16M tokens: 8192 rows of 2048.
const LOSS_ROWS: usize = 8192;
const LOSS_MAX_LEN: usize = 2048;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; anything starting with `--` is not a part.
    let mut parts: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if parts.is_empty() {
        parts = ["device", "loss", "stages"].map(String::from).to_vec();
    }
    if let Some(bad) = parts.iter().find(|p| !matches!(p.as_str(), "device" | "loss" | "stages")) {
        eprintln!("unknown part {bad:?} (expected device, loss or stages)");
        return ExitCode::from(2);
    }
    let gpu = match GpuContext::new(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            if gpu_support::gpu_required() {
                eprintln!("{}", gpu_support::required_message(&e));
                return ExitCode::FAILURE;
            }
            for part in &parts {
                println!("{}", json!({ "part": part, "skipped": format!("no GPU: {e}") }));
            }
            return ExitCode::SUCCESS;
        }
    };
    for part in &parts {
        let result = match part.as_str() {
            "device" => device(&gpu),
            "loss" => loss(&gpu),
            _ => stages(&gpu),
        };
        if let Err(e) = result {
            println!("{}", json!({ "part": part, "error": e.to_string() }));
            eprintln!("{part} FAILED: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Median wall time in seconds of `runs` calls of `f` after `warmup` calls; `f` must return
/// only when its device work has finished.
fn median_secs(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<(), Error>) -> Result<f64, Error> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

// ---------------------------------------------------------------------------------------
// device
// ---------------------------------------------------------------------------------------

/// Rated memory bandwidth in bytes/s by device name (vendor datasheets), most specific first.
const RATED_BANDWIDTH: &[(&str, f64)] = &[
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12), // SXM5 80 GB HBM3
    ("A100-SXM4-80GB", 2.039e12),
    ("A100-PCIE-80GB", 1.935e12),
    ("A100", 1.555e12), // 40 GB
];

/// What the figures divide by: the device's rated bandwidth and the copy bandwidth measured
/// here.
struct Ceilings {
    rated: f64,
    copy: f64,
}

/// The device's memory bandwidth from the driver: memory clock x bus width x 2 (double data
/// rate), `None` where the driver does not report them.
fn driver_bandwidth(gpu: &GpuContext) -> Option<f64> {
    let ctx = gpu.stream().context();
    let clock_khz = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE).ok()?;
    let bus_bits = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH).ok()?;
    (clock_khz > 0 && bus_bits > 0).then(|| 2.0 * f64::from(clock_khz) * 1e3 * f64::from(bus_bits) / 8.0)
}

/// The bandwidth the figures divide by and where it comes from: the datasheet table by name,
/// else the driver's figure, else (never seen) the measured copy bandwidth.
fn rated_bandwidth(gpu: &GpuContext, copy: f64) -> (f64, &'static str) {
    let name = gpu.device_name();
    match (RATED_BANDWIDTH.iter().find(|(key, _)| name.contains(key)), driver_bandwidth(gpu)) {
        (Some((_, rated)), _) => (*rated, "datasheet table"),
        (None, Some(driver)) => (driver, "driver (memory clock x bus width)"),
        (None, None) => (copy, "measured copy (no table entry, no driver figure)"),
    }
}

/// Device-to-device copy of 1 GiB, timed with events on the stream: bytes read + written per
/// second, the practical ceiling of a streaming kernel.
fn copy_bandwidth(gpu: &GpuContext) -> Result<f64, Error> {
    let stream = gpu.stream();
    let n = 1usize << 28; // f32 elements: 1 GiB
    let src = stream.alloc_zeros::<f32>(n)?;
    let mut dst = stream.alloc_zeros::<f32>(n)?;
    let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = Vec::new();
    for i in 0..13 {
        let start = stream.record_event(timing)?;
        stream.memcpy_dtod(&src, &mut dst)?;
        let end = stream.record_event(timing)?;
        end.synchronize()?;
        if i >= 3 {
            times.push(f64::from(start.elapsed_ms(&end)?) / 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * (n * 4) as f64 / times[times.len() / 2])
}

fn ceilings(gpu: &GpuContext) -> Result<Ceilings, Error> {
    let copy = copy_bandwidth(gpu)?;
    Ok(Ceilings { rated: rated_bandwidth(gpu, copy).0, copy })
}

fn device(gpu: &GpuContext) -> Result<(), Error> {
    let ctx = gpu.stream().context();
    let (major, minor) = ctx.compute_capability()?;
    let sms = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let memory = ctx.total_mem()?;
    let copy = copy_bandwidth(gpu)?;
    let (rated, source) = rated_bandwidth(gpu, copy);
    let from_driver = driver_bandwidth(gpu);
    let name = gpu.device_name();
    println!(
        "{}",
        json!({
            "part": "device", "name": name, "compute_capability": format!("{major}.{minor}"),
            "multiprocessors": sms, "memory_gib": memory as f64 / (1u64 << 30) as f64,
            "rated_bandwidth_gbs": rated / 1e9, "rated_source": source,
            "driver_bandwidth_gbs": from_driver.map(|b| b / 1e9), "copy_bandwidth_gbs": copy / 1e9,
            "cpu_threads": rayon::current_num_threads(),
        })
    );
    let driver = from_driver.map_or("not reported".to_string(), |b| format!("{:.0} GB/s", b / 1e9));
    eprintln!(
        "| device: {name}, compute capability {major}.{minor}, {sms} SMs, {:.0} GiB | rated {:.0} GB/s ({source}); \
         driver clock x bus {driver}; measured copy {:.0} GB/s ({:.0}% of rated); {} CPU threads |",
        memory as f64 / (1u64 << 30) as f64,
        rated / 1e9,
        copy / 1e9,
        100.0 * copy / rated,
        rayon::current_num_threads()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// loss
// ---------------------------------------------------------------------------------------

/// Bytes per token that the loss kernels of `kernels/grpo_loss.cu` read and write:
/// `grpo_row_counts` reads the mask; `grpo_loss_fwd_bwd` reads logp, logp_old, advantages and
/// the mask, logp_ref with a KL term and entropy when given, and writes d loss / d logp once.
/// Per-row counts and per-block partials are negligible at this size.
fn kernel_bytes_per_token(b: &LossBuffers, kl: bool) -> usize {
    let inputs = 4 + usize::from(kl) + usize::from(!b.entropy.is_empty());
    4 * (1 + inputs + 1)
}

/// The fewest bytes per token a fused forward + backward can move: each input once, the
/// gradient once.
fn minimum_bytes_per_token(b: &LossBuffers, kl: bool) -> usize {
    kernel_bytes_per_token(b, kl) - 4
}

/// What the backward pass adds per token as the op is wired into candle: the saved gradient is
/// copied out (read + write), scaled by d loss (read + write), and candle's autograd adds it
/// to a fresh zero tensor for the leaf (write, then read + read + write).
const BACKWARD_BYTES_PER_TOKEN: usize = 8 + 8 + 4 + 12;

fn loss(gpu: &GpuContext) -> Result<(), Error> {
    let ceil = ceilings(gpu)?;
    let dev = Device::new_cuda(0)?;
    let cfg = grpo_loss::bench_config();
    let kl = cfg.kl.is_some();
    let b = grpo_loss::random_buffers(LOSS_ROWS, LOSS_MAX_LEN);
    let n = LOSS_ROWS * LOSS_MAX_LEN;
    let t = |v: &[f32]| Tensor::from_slice(v, (LOSS_ROWS, LOSS_MAX_LEN), &dev);
    let logp = Var::from_tensor(&t(&b.logp)?)?;
    let (old, rf, adv, mask) = (t(&b.logp_old)?, t(&b.logp_ref)?, t(&b.advantages)?, t(&b.mask)?);
    let op = FusedGrpoLoss::new(
        LossConstants {
            logp_old: old.clone(),
            logp_ref: kl.then(|| rf.clone()),
            advantages: adv.clone(),
            entropy: None,
            mask: mask.clone(),
        },
        cfg,
    )?;

    // Agreement at this size: the fused GPU result against the CPU reference.
    let want = g2po::loss::grpo_loss_cpu(&b.view(), &cfg)?;
    let (value, _) = op.apply(logp.as_tensor())?;
    let grads = value.backward()?;
    let got: Vec<f32> = grads.get(logp.as_tensor()).ok_or("no gradient for logp")?.flatten_all()?.to_vec1()?;
    let loss_rel = (f64::from(value.to_scalar::<f32>()?) - want.loss).abs() / want.loss.abs().max(1e-30);
    let grad_max_abs = got.iter().zip(&want.grad_logp).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);

    let (warmup, runs) = (3, 20);
    let forward = median_secs(warmup, runs, || {
        let (l, _) = op.apply(logp.as_tensor())?;
        drop(l);
        dev.synchronize()?;
        Ok(())
    })?;
    let fused = median_secs(warmup, runs, || {
        let (l, _) = op.apply(logp.as_tensor())?;
        let g = l.backward()?;
        g.get(logp.as_tensor()).ok_or("no gradient for logp")?;
        dev.synchronize()?;
        Ok(())
    })?;
    let unfused = median_secs(warmup, runs, || {
        grpo_loss::loss_candle_ops(&logp, &old, &rf, &adv, &mask, &cfg)?;
        dev.synchronize()?;
        Ok(())
    })?;

    let kernel_bytes = (n * kernel_bytes_per_token(&b, kl)) as f64;
    let op_bytes = (n * (kernel_bytes_per_token(&b, kl) + BACKWARD_BYTES_PER_TOKEN)) as f64;
    let minimum_bytes = (n * minimum_bytes_per_token(&b, kl)) as f64;
    let bw = |bytes: f64, secs: f64| bytes / secs;
    let fwd_bwd_bw = bw(kernel_bytes, fused);
    println!(
        "{}",
        json!({
            "part": "loss", "tokens": n, "rows": LOSS_ROWS, "max_len": LOSS_MAX_LEN, "config": format!("{cfg:?}"),
            "fused_forward_ms": forward * 1e3, "fused_forward_backward_ms": fused * 1e3,
            "unfused_forward_backward_ms": unfused * 1e3, "fused_speedup": unfused / fused,
            "kernel_bytes_per_token": kernel_bytes_per_token(&b, kl),
            "backward_bytes_per_token": BACKWARD_BYTES_PER_TOKEN,
            "minimum_bytes_per_token": minimum_bytes_per_token(&b, kl),
            "forward_bandwidth_gbs": bw(kernel_bytes, forward) / 1e9,
            "forward_fraction_of_rated": bw(kernel_bytes, forward) / ceil.rated,
            "forward_backward_bandwidth_gbs": fwd_bwd_bw / 1e9,
            "forward_backward_fraction_of_rated": fwd_bwd_bw / ceil.rated,
            "forward_backward_fraction_of_copy": fwd_bwd_bw / ceil.copy,
            "forward_backward_all_bytes_fraction_of_rated": bw(op_bytes, fused) / ceil.rated,
            "forward_backward_minimum_bytes_fraction_of_rated": bw(minimum_bytes, fused) / ceil.rated,
            "rated_bandwidth_gbs": ceil.rated / 1e9, "copy_bandwidth_gbs": ceil.copy / 1e9,
            "vs_cpu_loss_rel_diff": loss_rel, "vs_cpu_grad_max_abs_diff": grad_max_abs,
        })
    );
    eprintln!(
        "| fused GRPO loss, {}M tokens | forward {:.3} ms ({:.0}% of rated, kernel bytes); forward+backward {:.3} ms \
         ({:.0}% of rated by the kernels' {} B/token, {:.0}% of copy; {:.0}% counting the backward's {} B/token too); \
         unfused candle ops {:.3} ms: fused {:.1}x faster; vs CPU reference: loss rel {:.1e}, grad max abs {:.1e} |",
        n >> 20,
        forward * 1e3,
        100.0 * bw(kernel_bytes, forward) / ceil.rated,
        fused * 1e3,
        100.0 * fwd_bwd_bw / ceil.rated,
        kernel_bytes_per_token(&b, kl),
        100.0 * fwd_bwd_bw / ceil.copy,
        100.0 * bw(op_bytes, fused) / ceil.rated,
        BACKWARD_BYTES_PER_TOKEN,
        unfused * 1e3,
        unfused / fused,
        loss_rel,
        grad_max_abs
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// stages
// ---------------------------------------------------------------------------------------

fn stages(gpu: &GpuContext) -> Result<(), Error> {
    let keyer = g2po::keys::StateKeyer::new();
    let config = EstimatorConfig::new(EstimatorKind::G2po);
    let estimator = Estimator::new(config)?;
    // 2,560 and 25,600 groups x 8 rollouts x 50 steps: 1.02M and 10.2M rows.
    for groups in [2_560usize, 25_600] {
        let built = Instant::now();
        let batch = common::synthetic(groups, true, &keyer);
        let build_s = built.elapsed().as_secs_f64();
        let mut cpu_out = estimator.estimate(&batch)?;
        let cpu = median_secs(1, 5, || Ok(estimator.estimate_into(&batch, &mut cpu_out)?))?;
        let prep = Instant::now();
        let host = StageHost::from_batch(&batch, &cpu_out, &config)?;
        let prep_s = prep.elapsed().as_secs_f64();
        let mut out = gpu.g2po_stages(&host.inputs(), &host.params)?;
        let gpu_s = median_secs(1, 5, || {
            out = gpu.g2po_stages(&host.inputs(), &host.params)?;
            Ok(())
        })?;
        let max_diff = out.advantage.iter().zip(&cpu_out.advantage).map(|(g, c)| (g - c).abs()).fold(0.0f32, f32::max);
        let rows = batch.len();
        let fig: Value = json!({
            "part": "stages", "rows": rows, "groups": groups, "cpu_engine_ms": cpu * 1e3,
            "gpu_stages_with_copies_ms": gpu_s * 1e3, "gpu_speedup": cpu / gpu_s,
            "stage_host_prep_ms": prep_s * 1e3, "batch_build_s": build_s,
            "advantage_max_abs_diff": max_diff, "cpu_threads": rayon::current_num_threads(),
        });
        println!("{fig}");
        eprintln!(
            "| G2PO stages, {:.2}M rows | CPU engine {:.1} ms ({} threads); GPU stages with copies {:.1} ms: {:.1}x; \
             host-side StageHost {:.1} ms (not in the GPU time); max |adv GPU - CPU| {:.1e} |",
            rows as f64 / 1e6,
            cpu * 1e3,
            rayon::current_num_threads(),
            gpu_s * 1e3,
            cpu / gpu_s,
            prep_s * 1e3,
            max_diff
        );
    }
    Ok(())
}
