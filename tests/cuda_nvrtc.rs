//! Compiles every CUDA kernel with NVRTC (no GPU needed) and checks the PTX.
//!
//! Without `libnvrtc` the test skips, printing why, unless `G2PO_REQUIRE_NVRTC=1` is set (CI
//! sets it after `eval "$(scripts/cuda-toolchain.sh --nvrtc-only)"`), in which case a missing
//! library is a failure.
//!
//! `gpu_context_fails_cleanly_or_works` accepts a missing GPU (a typed error) unless
//! `G2PO_REQUIRE_GPU=1`, which makes that a failure (`tests/support/gpu.rs`).
#![cfg(feature = "nvrtc")]

#[path = "support/gpu.rs"]
mod gpu_support;

use g2po::cuda::{self, CudaError};

/// NVRTC is required by `G2PO_REQUIRE_NVRTC=1`, and by `G2PO_REQUIRE_GPU=1` (every GPU run
/// compiles the kernels first, so a GPU check must not pass by skipping this).
fn nvrtc_required() -> bool {
    std::env::var("G2PO_REQUIRE_NVRTC").is_ok_and(|v| v == "1") || gpu_support::gpu_required()
}

/// `true` when the test should go on; panics when NVRTC is required but missing.
fn nvrtc_or_skip() -> bool {
    if cuda::nvrtc_available() {
        return true;
    }
    assert!(
        !nvrtc_required(),
        "G2PO_REQUIRE_NVRTC=1 or G2PO_REQUIRE_GPU=1 but libnvrtc cannot be loaded; run \
         `eval \"$(scripts/cuda-toolchain.sh --nvrtc-only)\"` first"
    );
    eprintln!(
        "SKIPPED: libnvrtc cannot be loaded (set it up with \
         `eval \"$(scripts/cuda-toolchain.sh --nvrtc-only)\"`; set G2PO_REQUIRE_NVRTC=1 to fail \
         instead of skipping)"
    );
    false
}

#[test]
fn every_kernel_compiles_with_its_entry_points() {
    if !nvrtc_or_skip() {
        return;
    }
    let compiled = cuda::compile_kernels().expect("NVRTC compiles every kernel");
    assert_eq!(compiled.len(), cuda::KERNELS.len());
    for k in &compiled {
        assert!(k.ptx.contains(".version"), "{} is not PTX", k.source.name);
        for entry in k.source.entry_points {
            let decl = format!(".entry {entry}(");
            assert!(
                k.ptx.contains(&decl),
                "{}: PTX lacks `{decl}` (extern \"C\" kernel missing or renamed)",
                k.source.name
            );
        }
        // A kernel the table does not list would never be checked by the GPU tests.
        let entries = k.ptx.matches(".entry ").count();
        assert_eq!(
            entries,
            k.source.entry_points.len(),
            "{}: PTX has {entries} entry points, the table lists {}",
            k.source.name,
            k.source.entry_points.len()
        );
    }
}

#[test]
fn compile_errors_are_typed_with_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = cuda::KernelSource {
        name: "broken.cu",
        source: "extern \"C\" __global__ void k(float* x) { x[0] = undeclared; }",
        entry_points: &["k"],
    };
    match cuda::compile_kernel(&broken) {
        Err(CudaError::Compile { kernel, log }) => {
            assert_eq!(kernel, "broken.cu");
            assert!(log.contains("undeclared"), "log should name the error: {log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn gpu_context_fails_cleanly_or_works() {
    // On a machine without a GPU this must be a typed error, never a panic.
    match cuda::GpuContext::new(0) {
        Ok(gpu) => eprintln!("GPU present: {}", gpu.device_name()),
        Err(e) => {
            assert!(
                matches!(e, CudaError::NoDevice(_) | CudaError::NvrtcUnavailable(_)),
                "unexpected error kind: {e:?}"
            );
            gpu_support::skip(format!("no GPU (expected on CPU-only machines): {e}"));
        }
    }
}
