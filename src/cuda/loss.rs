//! Host side of the fused GRPO loss kernel (`kernels/grpo_loss.cu`).

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg};

use super::{CudaError, GpuContext};
use crate::learner::{KlEstimator, LossAggregation, LossConfig, LossDiagnostics, LossInputs, LossOutput};

/// Threads per block; must match `BLOCK` in the kernel.
const BLOCK: u32 = 256;
/// Number of partial sums per block; must match `NSTAT` in the kernel.
const NSTAT: usize = 7;
/// Upper bound on the loss grid: enough blocks to saturate any current GPU, few enough that
/// the final single-block reduction of the partials stays negligible. The grid depends only on
/// the problem size, so results do not depend on the GPU model.
const MAX_BLOCKS: u64 = 2048;

/// Checks `inputs` and `config` with exactly the rules of
/// `crate::learner::fused::grpo_loss_cpu`, so that both paths accept and reject the same
/// inputs: option ranges (`learner::fused::validate_config`), slice lengths (`logp_ref` when a
/// KL term is configured or it is non-empty, `entropy` when `entropy_coef != 0` or it is
/// non-empty), finite values everywhere (padding included), a 0/1 mask with at least one
/// token. The GPU additionally needs `rows` and `max_len` to fit in `u32`.
///
/// # Errors
/// [`CudaError::InvalidInput`] naming the first violation.
///
/// ```
/// use g2po::learner::{LossConfig, LossInputs};
/// let v = [0.0f32; 4];
/// let mask = [1.0f32, 1.0, 0.0, 1.0];
/// let inputs = LossInputs { rows: 2, max_len: 2, logp: &v, logp_old: &v, logp_ref: &[],
///     advantages: &v, entropy: &[], mask: &mask };
/// assert!(g2po::cuda::validate_loss_inputs(&inputs, &LossConfig::default()).is_ok());
/// let short = LossInputs { logp: &v[..3], ..inputs };
/// assert!(g2po::cuda::validate_loss_inputs(&short, &LossConfig::default()).is_err());
/// ```
pub fn validate_loss_inputs(inputs: &LossInputs<'_>, config: &LossConfig) -> Result<(), CudaError> {
    let bad = |m: String| Err(CudaError::InvalidInput(m));
    let n = inputs
        .rows
        .checked_mul(inputs.max_len)
        .ok_or_else(|| CudaError::InvalidInput("rows * max_len overflows".into()))?;
    if n == 0 {
        return bad("empty batch (rows * max_len == 0)".into());
    }
    if u32::try_from(inputs.rows).is_err() || u32::try_from(inputs.max_len).is_err() {
        return bad("rows and max_len must each fit in u32".into());
    }
    validate_config(config)?;
    let mut named: Vec<(&str, &[f32])> = vec![
        ("logp", inputs.logp),
        ("logp_old", inputs.logp_old),
        ("advantages", inputs.advantages),
        ("mask", inputs.mask),
    ];
    if config.kl.is_some() || !inputs.logp_ref.is_empty() {
        named.push(("logp_ref", inputs.logp_ref));
    }
    if config.entropy_coef != 0.0 || !inputs.entropy.is_empty() {
        named.push(("entropy", inputs.entropy));
    }
    for (name, s) in &named {
        if s.len() != n {
            return bad(format!("{name} has {} values, expected rows * max_len = {n}", s.len()));
        }
        if let Some(i) = s.iter().position(|v| !v.is_finite()) {
            return bad(format!("{name}[{i}] = {} is not finite", s[i]));
        }
    }
    if let Some(i) = inputs.mask.iter().position(|&m| m != 0.0 && m != 1.0) {
        return bad(format!("mask[{i}] = {}; the mask must be 0 or 1", inputs.mask[i]));
    }
    if !inputs.mask.contains(&1.0) {
        return bad("the mask selects no token".into());
    }
    Ok(())
}

/// The option ranges of the CPU reference, as a [`CudaError`].
fn validate_config(config: &LossConfig) -> Result<(), CudaError> {
    crate::learner::fused::validate_config(config).map_err(|e| CudaError::InvalidInput(e.to_string()))
}

/// Handles of the four loss kernels in one loaded module.
pub(crate) struct LossFunctions {
    row_counts: CudaFunction,
    total_count: CudaFunction,
    fwd_bwd: CudaFunction,
    reduce: CudaFunction,
}

impl LossFunctions {
    pub(crate) fn load(mut get: impl FnMut(&str) -> Result<CudaFunction, CudaError>) -> Result<Self, CudaError> {
        Ok(Self {
            row_counts: get("grpo_row_counts")?,
            total_count: get("grpo_total_count")?,
            fwd_bwd: get("grpo_loss_fwd_bwd")?,
            reduce: get("grpo_reduce_partials")?,
        })
    }
}

/// Device views of the loss inputs, each `rows * max_len` long (absent optional inputs are
/// replaced by `logp`, which the kernel then never reads).
pub(crate) struct DeviceLossInputs<'a> {
    pub rows: usize,
    pub max_len: usize,
    pub logp: CudaView<'a, f32>,
    pub logp_old: CudaView<'a, f32>,
    pub logp_ref: Option<CudaView<'a, f32>>,
    pub advantages: CudaView<'a, f32>,
    pub entropy: Option<CudaView<'a, f32>>,
    pub mask: CudaView<'a, f32>,
}

/// The raw result of one launch: gradient on the device, the reduced statistics and the
/// number of masked tokens.
pub(crate) struct RawLoss {
    pub grad: CudaSlice<f32>,
    pub stats: [f64; NSTAT],
    pub tokens: f64,
}

// The options travel to the kernel as f64, unrounded, so that clip bounds, beta and the
// normalising length are the very values the CPU reference uses.
fn kl_mode(config: &LossConfig) -> (i32, f64) {
    match config.kl {
        None => (0, 0.0),
        Some((KlEstimator::K1, b)) => (1, b),
        Some((KlEstimator::K2, b)) => (2, b),
        Some((KlEstimator::K3, b)) => (3, b),
    }
}

fn aggregation(config: &LossConfig) -> (i32, f64) {
    match config.aggregation {
        LossAggregation::TokenMean => (0, 1.0),
        LossAggregation::SeqMeanTokenSum => (1, 1.0),
        LossAggregation::SeqMeanTokenMean => (2, 1.0),
        LossAggregation::SeqMeanTokenSumNorm { length } => (3, length),
    }
}

/// Runs the four loss kernels on `stream` and copies the statistics back.
pub(crate) fn run_loss(
    stream: &Arc<CudaStream>,
    f: &LossFunctions,
    x: &DeviceLossInputs<'_>,
    config: &LossConfig,
) -> Result<RawLoss, CudaError> {
    validate_config(config)?;
    let n = (x.rows as u64) * (x.max_len as u64);
    let rows = u32::try_from(x.rows).map_err(|_| CudaError::InvalidInput("rows must fit in u32".into()))?;
    let max_len = u32::try_from(x.max_len).map_err(|_| CudaError::InvalidInput("max_len must fit in u32".into()))?;
    if n == 0 {
        return Err(CudaError::InvalidInput("empty batch".into()));
    }
    if config.kl.is_some() && x.logp_ref.is_none() {
        return Err(CudaError::InvalidInput("a KL term needs logp_ref".into()));
    }
    if config.entropy_coef != 0.0 && x.entropy.is_none() {
        return Err(CudaError::InvalidInput("an entropy term needs entropy".into()));
    }
    let block = |g: u32| LaunchConfig { grid_dim: (g, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    let mut row_count = stream.alloc_zeros::<f64>(x.rows)?;
    // [masked tokens, rows with at least one masked token]
    let mut total = stream.alloc_zeros::<f64>(2)?;
    // SAFETY: argument lists match the kernel signatures in kernels/grpo_loss.cu; every view
    // holds rows * max_len elements.
    unsafe {
        stream
            .launch_builder(&f.row_counts)
            .arg(&x.mask)
            .arg(&rows)
            .arg(&max_len)
            .arg(&mut row_count)
            .launch(block(rows))?;
        stream.launch_builder(&f.total_count).arg(&row_count).arg(&rows).arg(&mut total).launch(block(1))?;
    }
    let blocks = n.div_ceil(u64::from(BLOCK) * 4).clamp(1, MAX_BLOCKS) as u32;
    // SAFETY: the kernel writes every one of the n gradient entries before it is read.
    let mut grad = unsafe { stream.alloc::<f32>(n as usize)? };
    let mut partials = stream.alloc_zeros::<f64>(blocks as usize * NSTAT)?;
    let mut out = stream.alloc_zeros::<f64>(NSTAT)?;
    let (kl, beta) = kl_mode(config);
    let (agg, norm_length) = aggregation(config);
    let (use_dual, dual_c) = match config.dual_clip {
        Some(c) => (1i32, c),
        None => (0i32, 0.0f64),
    };
    let (clip_low, clip_high) = (config.clip_low, config.clip_high);
    let has_entropy = i32::from(x.entropy.is_some());
    let logp_ref = x.logp_ref.as_ref().unwrap_or(&x.logp);
    let entropy = x.entropy.as_ref().unwrap_or(&x.logp);
    // SAFETY: as above.
    unsafe {
        stream
            .launch_builder(&f.fwd_bwd)
            .arg(&x.logp)
            .arg(&x.logp_old)
            .arg(logp_ref)
            .arg(&x.advantages)
            .arg(entropy)
            .arg(&x.mask)
            .arg(&row_count)
            .arg(&total)
            .arg(&rows)
            .arg(&max_len)
            .arg(&clip_low)
            .arg(&clip_high)
            .arg(&dual_c)
            .arg(&use_dual)
            .arg(&kl)
            .arg(&beta)
            .arg(&has_entropy)
            .arg(&agg)
            .arg(&norm_length)
            .arg(&mut grad)
            .arg(&mut partials)
            .launch(block(blocks))?;
        stream.launch_builder(&f.reduce).arg(&partials).arg(&blocks).arg(&mut out).launch(block(1))?;
    }
    let stats_v = stream.clone_dtoh(&out)?;
    let total_v = stream.clone_dtoh(&total)?;
    let mut stats = [0.0; NSTAT];
    stats.copy_from_slice(&stats_v);
    Ok(RawLoss { grad, stats, tokens: total_v[0] })
}

/// Turns the reduced statistics into the loss and diagnostics (slot order as in the kernel).
pub(crate) fn finish(
    stats: &[f64; NSTAT],
    tokens: f64,
    has_entropy: bool,
    config: &LossConfig,
) -> Result<(f64, LossDiagnostics), CudaError> {
    if tokens <= 0.0 {
        return Err(CudaError::InvalidInput("the mask selects no token".into()));
    }
    let [pg, kl, ent_agg, clip, dual, approx, ent] = *stats;
    // Same assembly as learner::fused::grpo_loss_cpu: both fractions are over ALL masked tokens
    // (verl's pg_clipfrac / pg_clipfrac_lower), and an absent entropy contributes nothing.
    let beta = config.kl.map_or(0.0, |(_, b)| b);
    let ent_agg = if has_entropy { ent_agg } else { 0.0 };
    let kl = if config.kl.is_some() { kl } else { 0.0 };
    let loss = pg + beta * kl - config.entropy_coef * ent_agg;
    let diagnostics = LossDiagnostics {
        policy_loss: pg,
        clip_fraction: clip / tokens,
        dual_clip_fraction: dual / tokens,
        approx_kl_old: approx / tokens,
        kl_ref: kl,
        entropy: if has_entropy { ent / tokens } else { 0.0 },
    };
    if !loss.is_finite() {
        return Err(CudaError::InvalidInput(format!("the loss is not finite ({loss}); check the inputs")));
    }
    Ok((loss, diagnostics))
}

impl GpuContext {
    /// The fused GRPO loss on the GPU: copies the slices to the device, runs forward and
    /// backward in one pass and copies the loss, the gradient with respect to `logp` and the
    /// diagnostics back. Same contract and results as
    /// `crate::learner::fused::grpo_loss_cpu` (to float rounding).
    ///
    /// # Errors
    /// [`CudaError::InvalidInput`] from [`validate_loss_inputs`], [`CudaError::Driver`] when a
    /// launch or copy fails.
    ///
    /// ```no_run
    /// use g2po::learner::{LossConfig, LossInputs};
    /// let gpu = g2po::cuda::GpuContext::new(0)?;
    /// let v = [0.0f32; 4];
    /// let adv = [1.0f32, -1.0, 0.5, 0.0];
    /// let mask = [1.0f32; 4];
    /// let inputs = LossInputs { rows: 2, max_len: 2, logp: &v, logp_old: &v, logp_ref: &[],
    ///     advantages: &adv, entropy: &[], mask: &mask };
    /// let out = gpu.grpo_loss(&inputs, &LossConfig::default())?;
    /// assert_eq!(out.grad_logp.len(), 4);
    /// # Ok::<(), g2po::cuda::CudaError>(())
    /// ```
    pub fn grpo_loss(&self, inputs: &LossInputs<'_>, config: &LossConfig) -> Result<LossOutput, CudaError> {
        validate_loss_inputs(inputs, config)?;
        let s = &self.stream;
        let logp = s.clone_htod(inputs.logp)?;
        let logp_old = s.clone_htod(inputs.logp_old)?;
        let advantages = s.clone_htod(inputs.advantages)?;
        let mask = s.clone_htod(inputs.mask)?;
        let logp_ref = match config.kl {
            Some(_) => Some(s.clone_htod(inputs.logp_ref)?),
            None => None,
        };
        let entropy = if inputs.entropy.is_empty() { None } else { Some(s.clone_htod(inputs.entropy)?) };
        let funcs = LossFunctions::load(|name| Ok(self.loss.load_function(name)?))?;
        let dev = DeviceLossInputs {
            rows: inputs.rows,
            max_len: inputs.max_len,
            logp: logp.as_view(),
            logp_old: logp_old.as_view(),
            logp_ref: logp_ref.as_ref().map(|x| x.as_view()),
            advantages: advantages.as_view(),
            entropy: entropy.as_ref().map(|x| x.as_view()),
            mask: mask.as_view(),
        };
        let raw = run_loss(s, &funcs, &dev, config)?;
        let grad_logp = s.clone_dtoh(&raw.grad)?;
        let (loss, diagnostics) = finish(&raw.stats, raw.tokens, entropy.is_some(), config)?;
        Ok(LossOutput { loss, grad_logp, diagnostics })
    }
}

#[cfg(feature = "cuda")]
pub use candle_op::FusedGrpoLoss;

#[cfg(feature = "cuda")]
mod candle_op {
    use std::sync::{Arc, Mutex};

    use candle_core::backend::BackendStorage;
    use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Storage, Tensor};
    use cudarc::driver::{CudaSlice, CudaView};

    use super::{DeviceLossInputs, LossFunctions, finish, run_loss};
    use crate::cuda::{CudaError, GRPO_LOSS, cached_ptx};
    use crate::learner::{LossConfig, LossDiagnostics};

    /// Module name under which candle caches our PTX on its device.
    const MODULE: &str = "g2po_grpo_loss";

    #[derive(Default)]
    struct State {
        grad: Option<CudaSlice<f32>>,
        diagnostics: Option<LossDiagnostics>,
    }

    /// The fused GRPO loss as a candle `CustomOp1` on CUDA tensors.
    ///
    /// The op is applied to `logp` (`[rows, max_len]`, f32, contiguous, on a CUDA device) and
    /// returns the scalar loss. The other inputs are held by the op and are constants for
    /// autograd. The forward kernel also computes d loss / d logp, which the op keeps and
    /// returns (scaled by the incoming gradient) in the backward pass, so backward costs no
    /// kernel. Clones share that state, so keep a clone to read [`Self::diagnostics`].
    ///
    /// ```no_run
    /// use candle_core::{Device, Tensor};
    /// use g2po::cuda::FusedGrpoLoss;
    /// use g2po::learner::LossConfig;
    /// let dev = Device::new_cuda(0)?;
    /// let logp = candle_core::Var::from_tensor(&Tensor::zeros((2, 3), candle_core::DType::F32, &dev)?)?;
    /// let c = Tensor::zeros((2, 3), candle_core::DType::F32, &dev)?;
    /// let mask = Tensor::ones((2, 3), candle_core::DType::F32, &dev)?;
    /// let op = FusedGrpoLoss::new(c.clone(), None, c.clone(), None, mask, LossConfig::default())?;
    /// let loss = logp.as_tensor().apply_op1(op.clone())?;
    /// let grads = loss.backward()?;
    /// assert!(grads.get(logp.as_tensor()).is_some());
    /// println!("{:?}", op.diagnostics());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[derive(Clone)]
    pub struct FusedGrpoLoss {
        logp_old: Tensor,
        logp_ref: Option<Tensor>,
        advantages: Tensor,
        entropy: Option<Tensor>,
        mask: Tensor,
        config: LossConfig,
        state: Arc<Mutex<State>>,
    }

    impl std::fmt::Debug for FusedGrpoLoss {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FusedGrpoLoss").field("config", &self.config).finish_non_exhaustive()
        }
    }

    impl FusedGrpoLoss {
        /// Builds the op; every tensor must be `[rows, max_len]` f32 (checked again at launch).
        ///
        /// # Errors
        /// [`CudaError::InvalidInput`] for a bad configuration or a missing tensor that the
        /// configuration needs.
        ///
        /// ```no_run
        /// # use candle_core::{Device, Tensor, DType};
        /// let dev = Device::new_cuda(0)?;
        /// let z = Tensor::zeros((1, 4), DType::F32, &dev)?;
        /// let op = g2po::cuda::FusedGrpoLoss::new(z.clone(), None, z.clone(), None,
        ///     z.ones_like()?, g2po::learner::LossConfig::default())?;
        /// # let _ = op;
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub fn new(
            logp_old: Tensor,
            logp_ref: Option<Tensor>,
            advantages: Tensor,
            entropy: Option<Tensor>,
            mask: Tensor,
            config: LossConfig,
        ) -> Result<Self, CudaError> {
            super::validate_config(&config)?;
            if config.kl.is_some() && logp_ref.is_none() {
                return Err(CudaError::InvalidInput("a KL term needs logp_ref".into()));
            }
            if config.entropy_coef != 0.0 && entropy.is_none() {
                return Err(CudaError::InvalidInput("an entropy term needs entropy".into()));
            }
            Ok(Self { logp_old, logp_ref, advantages, entropy, mask, config, state: Arc::default() })
        }

        /// Diagnostics of the last forward pass (`None` before the first).
        ///
        /// ```no_run
        /// # fn f(op: &g2po::cuda::FusedGrpoLoss) {
        /// if let Some(d) = op.diagnostics() { println!("clip fraction {}", d.clip_fraction); }
        /// # }
        /// ```
        pub fn diagnostics(&self) -> Option<LossDiagnostics> {
            self.state.lock().ok().and_then(|s| s.diagnostics)
        }
    }

    fn cerr(e: impl std::fmt::Display) -> candle_core::Error {
        candle_core::Error::Cuda(e.to_string().into())
    }

    /// A contiguous f32 view of a CUDA storage with the expected element count.
    fn view<'a>(s: &'a CudaStorage, l: &Layout, n: usize, name: &str) -> candle_core::Result<CudaView<'a, f32>> {
        let (a, b) = l.contiguous_offsets().ok_or_else(|| cerr(format!("{name} must be contiguous")))?;
        if b - a != n {
            return Err(cerr(format!("{name} has {} elements, expected {n}", b - a)));
        }
        Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
    }

    impl CustomOp1 for FusedGrpoLoss {
        fn name(&self) -> &'static str {
            "g2po-fused-grpo-loss"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            Err(cerr("FusedGrpoLoss runs on CUDA tensors; on the CPU use learner::fused::grpo_loss_cpu"))
        }

        fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
            let (rows, max_len) = layout.shape().dims2()?;
            let n = rows * max_len;
            let dev = storage.device().clone();
            let ptx = cached_ptx(&GRPO_LOSS).map_err(cerr)?;
            let funcs = LossFunctions::load(|name| {
                dev.get_or_load_custom_func(name, MODULE, ptx)
                    .map(|f| f.into_cuda_function())
                    .map_err(|e| CudaError::Driver(e.to_string()))
            })
            .map_err(cerr)?;
            // Hold read guards of the constant inputs for the duration of the launch.
            let guards = [
                Some(self.logp_old.storage_and_layout()),
                self.logp_ref.as_ref().map(|t| t.storage_and_layout()),
                Some(self.advantages.storage_and_layout()),
                self.entropy.as_ref().map(|t| t.storage_and_layout()),
                Some(self.mask.storage_and_layout()),
            ];
            let names = ["logp_old", "logp_ref", "advantages", "entropy", "mask"];
            let mut views: Vec<Option<CudaView<'_, f32>>> = Vec::with_capacity(5);
            for (g, name) in guards.iter().zip(names) {
                views.push(match g {
                    None => None,
                    Some((st, l)) => match &**st {
                        Storage::Cuda(c) => Some(view(c, l, n, name)?),
                        _ => return Err(cerr(format!("{name} must be on the CUDA device"))),
                    },
                });
            }
            let missing = |name: &str| cerr(format!("{name} is required"));
            let inputs = DeviceLossInputs {
                rows,
                max_len,
                logp: view(storage, layout, n, "logp")?,
                logp_old: views[0].take().ok_or_else(|| missing("logp_old"))?,
                logp_ref: views[1].take(),
                advantages: views[2].take().ok_or_else(|| missing("advantages"))?,
                entropy: views[3].take(),
                mask: views[4].take().ok_or_else(|| missing("mask"))?,
            };
            let has_entropy = inputs.entropy.is_some();
            let stream = dev.cuda_stream();
            let raw = run_loss(&stream, &funcs, &inputs, &self.config).map_err(cerr)?;
            let (loss, diagnostics) = finish(&raw.stats, raw.tokens, has_entropy, &self.config).map_err(cerr)?;
            let host = [loss as f32];
            let out = stream.clone_htod(&host[..]).map_err(cerr)?;
            let mut st = self.state.lock().map_err(|_| cerr("poisoned state"))?;
            st.grad = Some(raw.grad);
            st.diagnostics = Some(diagnostics);
            Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(())))
        }

        fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
            let grad = arg.apply_op1_no_bwd(&StoredGrad { state: self.state.clone() })?;
            Ok(Some(grad.broadcast_mul(grad_res)?))
        }
    }

    /// Materialises the gradient kept by the forward pass as a tensor shaped like `logp`.
    struct StoredGrad {
        state: Arc<Mutex<State>>,
    }

    impl CustomOp1 for StoredGrad {
        fn name(&self) -> &'static str {
            "g2po-fused-grpo-loss-grad"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            Err(cerr("the fused GRPO gradient lives on CUDA"))
        }

        fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
            let st = self.state.lock().map_err(|_| cerr("poisoned state"))?;
            let grad = st.grad.as_ref().ok_or_else(|| cerr("backward before forward"))?;
            if grad.len() != layout.shape().elem_count() {
                return Err(cerr("stored gradient does not match logp"));
            }
            let dev = storage.device().clone();
            let copy = dev.cuda_stream().clone_dtod(grad).map_err(cerr)?;
            Ok((CudaStorage::wrap_cuda_slice(copy, dev), layout.shape().clone()))
        }
    }
}
