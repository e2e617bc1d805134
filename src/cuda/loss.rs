//! Host side of the fused GRPO loss kernel (`kernels/grpo_loss.cu`): launches
//! on slices ([`GpuContext::grpo_loss`]) and, for the candle op
//! `crate::learner::FusedGrpoLoss` (feature `cuda`), on device views.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg};

use super::{CudaError, GpuContext};
use crate::loss::{KlEstimator, LossConfig, LossDiagnostics, LossError, LossInputs, LossOutput};

/// Threads per block; must match `BLOCK` in the kernel.
const BLOCK: u32 = 256;
/// Number of partial sums per block; must match `NSTAT` in the kernel.
const NSTAT: usize = 8;
/// Upper bound on the loss grid: enough blocks to saturate any current GPU, few enough that
/// the final single-block reduction of the partials stays negligible. The grid depends only on
/// the problem size, so results do not depend on the GPU model.
const MAX_BLOCKS: u64 = 2048;

/// Checks `inputs` and `config` with exactly the rules of every loss
/// implementation ([`crate::loss::validate_inputs`]), plus what the GPU
/// needs: `rows` and `max_len` each fit in `u32`.
///
/// # Errors
/// [`CudaError::Loss`] naming the first violation.
///
/// ```
/// use g2po::loss::{LossConfig, LossInputs};
/// let v = [0.0f32; 4];
/// let mask = [1.0f32, 1.0, 0.0, 1.0];
/// let inputs = LossInputs { rows: 2, max_len: 2, logp: &v, logp_old: &v, logp_ref: &[],
///     advantages: &v, entropy: &[], mask: &mask };
/// assert!(g2po::cuda::validate_loss_inputs(&inputs, &LossConfig::default()).is_ok());
/// let short = LossInputs { logp: &v[..3], ..inputs };
/// assert!(g2po::cuda::validate_loss_inputs(&short, &LossConfig::default()).is_err());
/// ```
pub fn validate_loss_inputs(inputs: &LossInputs<'_>, config: &LossConfig) -> Result<(), CudaError> {
    if u32::try_from(inputs.rows).is_err() || u32::try_from(inputs.max_len).is_err() {
        return Err(LossError::TooLarge { rows: inputs.rows, max_len: inputs.max_len }.into());
    }
    Ok(crate::loss::validate_inputs(inputs, config)?)
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

fn aggregation(config: &LossConfig, max_len: usize) -> (i32, f64) {
    use crate::loss::LossAggregation;
    match config.aggregation {
        LossAggregation::TokenMean => (0, 1.0),
        LossAggregation::SeqMeanTokenSum => (1, 1.0),
        LossAggregation::SeqMeanTokenMean => (2, 1.0),
        LossAggregation::SeqMeanTokenSumNorm { length } => (3, length.unwrap_or(max_len as f64)),
    }
}

/// Runs the four loss kernels on `stream` and copies the statistics back.
pub(crate) fn run_loss(
    stream: &Arc<CudaStream>,
    f: &LossFunctions,
    x: &DeviceLossInputs<'_>,
    config: &LossConfig,
) -> Result<RawLoss, CudaError> {
    crate::loss::validate_config(config)?;
    let too_large = || CudaError::Loss(LossError::TooLarge { rows: x.rows, max_len: x.max_len });
    let n = (x.rows as u64) * (x.max_len as u64);
    let rows = u32::try_from(x.rows).map_err(|_| too_large())?;
    let max_len = u32::try_from(x.max_len).map_err(|_| too_large())?;
    if n == 0 {
        return Err(LossError::EmptyMask.into());
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
    let (agg, norm_length) = aggregation(config, x.max_len);
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
        return Err(LossError::EmptyMask.into());
    }
    let [pg, kl, ent_agg, clip, dual, approx, ent, approx_k3] = *stats;
    // Same assembly as crate::loss::grpo_loss_cpu: both fractions are over ALL masked tokens
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
        approx_kl_old_k3: approx_k3 / tokens,
        kl_ref: kl,
        entropy: if has_entropy { ent / tokens } else { 0.0 },
        entropy_loss: ent_agg,
    };
    crate::loss::check_result(loss, &[])?;
    Ok((loss, diagnostics))
}

impl GpuContext {
    /// The fused GRPO loss on the GPU: copies the slices to the device, runs forward and
    /// backward in one pass and copies the loss, the gradient with respect to `logp` and the
    /// diagnostics back. Same contract and results as [`crate::loss::grpo_loss_cpu`] (to
    /// float rounding).
    ///
    /// # Errors
    /// [`CudaError::Loss`] from [`validate_loss_inputs`] or for a non-finite result,
    /// [`CudaError::Driver`] when a launch or copy fails.
    ///
    /// ```no_run
    /// use g2po::loss::{LossConfig, LossInputs};
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
        crate::loss::check_result(loss, &grad_logp)?;
        Ok(LossOutput { loss, grad_logp, diagnostics })
    }
}
