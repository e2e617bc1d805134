//! CUDA kernels for the fused GRPO loss and the G2PO advantage stages.
//!
//! # Design
//!
//! * **Run-time compilation.** The kernels in `kernels/*.cu` are embedded in the binary
//!   (`include_str!`) and compiled to PTX by NVRTC when first needed. The `nvrtc` feature
//!   therefore needs no CUDA toolkit to *build*: cudarc loads `libnvrtc` dynamically, and
//!   [`compile_kernels`] runs on any machine that has the library, GPU or not (CI uses that to
//!   check that the kernels compile). The PTX targets no particular architecture beyond
//!   NVRTC's default, so the driver JIT-compiles it for whatever GPU is present.
//! * **No GPU is an error, not a crash.** [`GpuContext::new`] checks that the driver library
//!   can be loaded before touching it and turns every driver failure into
//!   [`CudaError::NoDevice`], so callers (and the GPU tests) can fall back or skip.
//! * **Determinism.** Every reduction runs in a fixed order (two-pass block reductions, warp
//!   shuffle trees, no floating-point atomics), and launch shapes depend only on the problem
//!   size, so results are bitwise reproducible run to run and across GPUs of one architecture.
//! * **Bandwidth first.** Both kernels are memory-bound: the loss reads each input once and
//!   writes the gradient once; the advantage stages touch each row a small constant number of
//!   times, with node and group segments laid out by the host in CSR order.
//! * **candle integration.** Under the `cuda` feature, the learner's one fused-loss op
//!   (`crate::learner::FusedGrpoLoss`) has a `cuda_fwd` that runs the loss kernel on candle's
//!   own CUDA stream through the launch code here, and returns the fused gradient in the
//!   backward pass. This module depends only on [`crate::loss`] (the options, inputs and CPU
//!   reference), never on the learner.
//!
//! The mathematics is SPEC sections 3 (G2PO) and 4 (GRPO loss); the CPU reference of the loss
//! is [`crate::loss::grpo_loss_cpu`].

mod advantages;
mod loss;
mod stage_host;

pub use advantages::{StageInputs, StageOutputs, StageParams, StagePlan};
pub use loss::validate_loss_inputs;
#[cfg(feature = "cuda")]
pub(crate) use loss::{DeviceLossInputs, LossFunctions, finish, run_loss};
pub use stage_host::StageHost;

use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaContext, CudaModule, CudaStream};
use cudarc::nvrtc::{CompileOptions, Ptx};

/// Errors of the CUDA path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    /// `libnvrtc` could not be loaded (not installed or not on the loader's search path).
    #[error("NVRTC is not available: {0}")]
    NvrtcUnavailable(String),
    /// NVRTC rejected a kernel source.
    #[error("NVRTC failed to compile kernel {kernel}: {log}")]
    Compile {
        /// Kernel file name.
        kernel: &'static str,
        /// NVRTC's log or error.
        log: String,
    },
    /// No usable GPU: no driver library, no device with that ordinal, or the driver failed
    /// to initialise.
    #[error("no usable CUDA device: {0}")]
    NoDevice(String),
    /// A CUDA driver call failed after initialisation.
    #[error("CUDA driver error: {0}")]
    Driver(String),
    /// The loss's inputs or options are invalid (the same rules as on the CPU).
    #[error(transparent)]
    Loss(#[from] crate::loss::LossError),
    /// The inputs violate the documented contract.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A configuration the GPU path does not implement (e.g. G2PO episode statistics over
    /// trajectories); use the CPU engine for it.
    #[error("not supported on the GPU: {0}")]
    Unsupported(String),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(format!("{e:?}"))
    }
}

/// One kernel source file and the entry points it must export.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `kernels/`.
    pub name: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
    /// `extern "C"` kernels the PTX must contain.
    pub entry_points: &'static [&'static str],
}

/// The fused GRPO loss kernels.
pub const GRPO_LOSS: KernelSource = KernelSource {
    name: "grpo_loss.cu",
    source: include_str!("../../kernels/grpo_loss.cu"),
    entry_points: &["grpo_row_counts", "grpo_total_count", "grpo_loss_fwd_bwd", "grpo_reduce_partials"],
};

/// The G2PO advantage-stage kernels.
pub const ADVANTAGES: KernelSource = KernelSource {
    name: "advantages.cu",
    source: include_str!("../../kernels/advantages.cu"),
    entry_points: &["g2po_node_value", "g2po_row_terms", "g2po_node_centric", "g2po_group_terms", "g2po_broadcast"],
};

/// Every kernel source of the crate.
pub const KERNELS: [KernelSource; 2] = [GRPO_LOSS, ADVANTAGES];

/// A kernel source compiled to PTX.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    /// The source it came from.
    pub source: KernelSource,
    /// PTX text.
    pub ptx: String,
}

/// Whether `libnvrtc` can be loaded in this process.
///
/// With the `nvrtc` feature alone cudarc opens the library at run time, by bare name
/// (`libnvrtc.so`, `libnvrtc.so.13`, ...), so it must be on the dynamic loader's search path
/// (`LD_LIBRARY_PATH`, see `scripts/cuda-toolchain.sh --nvrtc-only`). Under the `cuda` feature
/// it is linked, so a running binary always has it.
///
/// ```
/// let available: bool = g2po::cuda::nvrtc_available();
/// # let _ = available;
/// ```
pub fn nvrtc_available() -> bool {
    #[cfg(not(feature = "cuda"))]
    {
        // SAFETY: only tries to dlopen the library by name and closes it again.
        unsafe { cudarc::nvrtc::sys::is_culib_present() }
    }
    #[cfg(feature = "cuda")]
    {
        true
    }
}

fn driver_available() -> bool {
    #[cfg(not(feature = "cuda"))]
    {
        // SAFETY: only tries to dlopen the library by name and closes it again.
        unsafe { cudarc::driver::sys::is_culib_present() }
    }
    #[cfg(feature = "cuda")]
    {
        true
    }
}

/// Compiles one kernel source with NVRTC.
///
/// # Errors
/// [`CudaError::NvrtcUnavailable`] without `libnvrtc`, [`CudaError::Compile`] with NVRTC's log
/// when the source does not compile.
///
/// ```no_run
/// let ptx = g2po::cuda::compile_kernel(&g2po::cuda::GRPO_LOSS)?;
/// assert!(ptx.ptx.contains("grpo_loss_fwd_bwd"));
/// # Ok::<(), g2po::cuda::CudaError>(())
/// ```
pub fn compile_kernel(source: &KernelSource) -> Result<CompiledKernel, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NvrtcUnavailable(
            "libnvrtc.so(.13) not found on the dynamic loader's search path; run \
             `eval \"$(scripts/cuda-toolchain.sh --nvrtc-only)\"`"
                .into(),
        ));
    }
    let opts = CompileOptions {
        name: Some(source.name.to_string()),
        // Exact IEEE division and square root: the GPU must agree with the CPU reference.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source.source, opts)
        .map_err(|e| CudaError::Compile { kernel: source.name, log: format!("{e:?}") })?;
    Ok(CompiledKernel { source: *source, ptx: ptx.to_src() })
}

/// Compiles every kernel source ([`KERNELS`]) with NVRTC and returns the PTX. Needs only
/// `libnvrtc`, no GPU.
///
/// # Errors
/// As [`compile_kernel`].
///
/// ```no_run
/// for k in g2po::cuda::compile_kernels()? {
///     println!("{}: {} bytes of PTX", k.source.name, k.ptx.len());
/// }
/// # Ok::<(), g2po::cuda::CudaError>(())
/// ```
pub fn compile_kernels() -> Result<Vec<CompiledKernel>, CudaError> {
    KERNELS.iter().map(compile_kernel).collect()
}

/// PTX of one kernel source, compiled once per process.
pub(crate) fn cached_ptx(source: &KernelSource) -> Result<&'static str, CudaError> {
    static LOSS: OnceLock<Result<String, CudaError>> = OnceLock::new();
    static ADV: OnceLock<Result<String, CudaError>> = OnceLock::new();
    let cell = if source.name == GRPO_LOSS.name { &LOSS } else { &ADV };
    cell.get_or_init(|| compile_kernel(source).map(|k| k.ptx)).as_ref().map(String::as_str).map_err(Clone::clone)
}

/// A CUDA context on one GPU with both kernel modules loaded.
#[derive(Debug)]
pub struct GpuContext {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    loss: Arc<CudaModule>,
    advantages: Arc<CudaModule>,
}

impl GpuContext {
    /// Opens GPU `ordinal`, compiles (once per process) and loads the kernels.
    ///
    /// # Errors
    /// [`CudaError::NoDevice`] when there is no driver or no such GPU (never panics),
    /// [`CudaError::NvrtcUnavailable`] / [`CudaError::Compile`] from the compilation.
    ///
    /// ```
    /// match g2po::cuda::GpuContext::new(0) {
    ///     Ok(gpu) => println!("running on {}", gpu.device_name()),
    ///     Err(e) => println!("no GPU, using the CPU path: {e}"),
    /// }
    /// ```
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        if !driver_available() {
            return Err(CudaError::NoDevice("the CUDA driver library libcuda.so.1 could not be loaded".into()));
        }
        // cudarc may panic inside the driver loader on exotic failures; keep the promise of
        // a typed error.
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| CudaError::NoDevice("the CUDA driver panicked while opening".into()))?
            .map_err(|e| CudaError::NoDevice(format!("device {ordinal}: {e:?}")))?;
        let stream = ctx.default_stream();
        let loss = ctx.load_module(Ptx::from_src(cached_ptx(&GRPO_LOSS)?))?;
        let advantages = ctx.load_module(Ptx::from_src(cached_ptx(&ADVANTAGES)?))?;
        Ok(Self { ctx, stream, loss, advantages })
    }

    /// The device's name as the driver reports it.
    ///
    /// ```no_run
    /// let gpu = g2po::cuda::GpuContext::new(0)?;
    /// println!("{}", gpu.device_name());
    /// # Ok::<(), g2po::cuda::CudaError>(())
    /// ```
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|e| format!("unknown ({e:?})"))
    }

    /// The stream every launch of this context uses.
    ///
    /// ```no_run
    /// let gpu = g2po::cuda::GpuContext::new(0)?;
    /// gpu.stream().synchronize().map_err(|e| g2po::cuda::CudaError::Driver(format!("{e:?}")))?;
    /// # Ok::<(), g2po::cuda::CudaError>(())
    /// ```
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}
