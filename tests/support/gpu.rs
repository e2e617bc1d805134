//! The one place that decides whether a GPU test or benchmark may skip.
//!
//! GPU tests skip, saying why, on machines without a usable CUDA GPU, so that the suite passes
//! on CPU-only machines and in CI. On the GPU machine the same skip would let a broken setup
//! (no driver found, the wrong libraries on the loader path) pass silently, so
//! `G2PO_REQUIRE_GPU=1` (set by `scripts/gpu-check.sh`) turns every skip into a failure that
//! names the reason, as `G2PO_REQUIRE_NVRTC=1` does for the NVRTC compile test.
//!
//! Included with `#[path]` by the GPU test files and the GPU benchmarks, so that there is one
//! definition of the switch and of the skip message (`tests/cuda_gpu.rs` checks both).
#![allow(dead_code)] // each includer uses a subset

use std::fmt::Display;

/// The switch.
pub const REQUIRE_GPU_VAR: &str = "G2PO_REQUIRE_GPU";

/// What every skip prints first; `tests/cuda_gpu.rs` looks for it in the output of its tests.
pub const SKIP_MARKER: &str = "SKIPPED (needs a CUDA GPU)";

/// Whether `G2PO_REQUIRE_GPU=1`.
pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_VAR).is_ok_and(|v| v == "1")
}

/// The message of a skip that the switch turned into a failure.
pub fn required_message(reason: impl Display) -> String {
    format!("{REQUIRE_GPU_VAR}=1 but no usable CUDA GPU: {reason}")
}

/// Records that the caller skips because of `reason`: prints it, or panics when the switch
/// is on. Call it, then return.
pub fn skip(reason: impl Display) {
    assert!(!gpu_required(), "{}", required_message(&reason));
    eprintln!("{SKIP_MARKER}: {reason} (set {REQUIRE_GPU_VAR}=1 to fail instead of skipping)");
}

/// GPU 0 with the kernels loaded, or `None` after [`skip`].
#[cfg(feature = "nvrtc")]
pub fn gpu_or_skip() -> Option<g2po::cuda::GpuContext> {
    match g2po::cuda::GpuContext::new(0) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            skip(e);
            None
        }
    }
}

/// candle's CUDA device 0, or `None` after [`skip`].
#[cfg(feature = "cuda")]
pub fn candle_cuda_or_skip() -> Option<candle_core::Device> {
    match candle_core::Device::new_cuda(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            skip(format!("candle cannot open CUDA device 0: {e}"));
            None
        }
    }
}
