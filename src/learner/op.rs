//! The fused GRPO loss as one candle op: [`FusedGrpoLoss`], with a CPU forward
//! (the slice reference [`crate::loss::grpo_loss_cpu`]) and, under the `cuda`
//! feature, a CUDA forward (the NVRTC kernel of `kernels/grpo_loss.cu` on
//! candle's own stream), in candle's pattern of one `CustomOp1` with
//! `cpu_fwd` and `cuda_fwd`. The learner applies it without knowing the
//! device.
//!
//! Both forwards compute the gradient with respect to `logp` in the same pass
//! and leave it for the backward pass, so backward costs no second
//! evaluation. That saved gradient belongs to one application: every
//! [`FusedGrpoLoss::apply`] builds a fresh internal op with its own slot, and
//! the public type is not itself a candle op, so a gradient can never be
//! returned for a tensor other than the one it was computed on.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::error::{LearnerError, Result};
use crate::loss::{LossBuffers, LossConfig, LossDiagnostics, LossInputs, grpo_loss_cpu, validate_config};

/// The inputs of the loss other than `logp`, as `[rows, max_len]` tensors on
/// one device (any float dtype; they are used as f32). They are constants of
/// the op: no gradient flows into them.
#[derive(Debug, Clone)]
pub struct LossConstants {
    /// Log-probabilities under the sampling policy.
    pub logp_old: Tensor,
    /// Log-probabilities under the reference policy (required with a KL term).
    pub logp_ref: Option<Tensor>,
    /// Per-token advantages.
    pub advantages: Tensor,
    /// Per-token entropy (required when `entropy_coef != 0`; also feeds the
    /// entropy diagnostics). Constant here: a bonus that should train the
    /// entropy is added outside the op, see [`crate::learner::tensor::aggregate`].
    pub entropy: Option<Tensor>,
    /// Response mask (0/1).
    pub mask: Tensor,
}

/// Where the constants live: host slices for the CPU forward, device tensors
/// for the CUDA forward.
#[derive(Debug)]
enum Constants {
    Host(LossBuffers),
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Device(LossConstants),
}

#[derive(Debug)]
struct Shared {
    rows: usize,
    max_len: usize,
    device: Device,
    config: LossConfig,
    constants: Constants,
}

/// The fused GRPO loss on candle tensors, on the CPU or (feature `cuda`) a
/// CUDA device.
///
/// [`FusedGrpoLoss::apply`] returns the scalar loss, differentiable with
/// respect to `logp`, and the diagnostics. Cloning shares the immutable
/// constants only; each application keeps its own gradient.
///
/// ```
/// use candle_core::{Device, Var};
/// use g2po::learner::FusedGrpoLoss;
/// use g2po::loss::{LossBuffers, LossConfig};
/// let logp = Var::new(&[[-1.0f32, -2.0]], &Device::Cpu)?;
/// let op = FusedGrpoLoss::from_buffers(LossBuffers { rows: 1, max_len: 2, logp_old: vec![-1.0, -2.0],
///     advantages: vec![1.0, 1.0], mask: vec![1.0, 0.0], ..Default::default() }, LossConfig::default())?;
/// let (loss, diagnostics) = op.apply(logp.as_tensor())?;
/// let g = loss.backward()?.get(&logp).unwrap().to_vec2::<f32>()?;
/// assert_eq!(g, vec![vec![-1.0, 0.0]]);
/// assert_eq!(diagnostics.clip_fraction, 0.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FusedGrpoLoss {
    shared: Arc<Shared>,
}

impl FusedGrpoLoss {
    /// The op over constant tensors (all `[rows, max_len]` on one device).
    /// On the CPU they are copied to host slices once, here.
    ///
    /// Errors: an invalid configuration, shapes that disagree, tensors on two
    /// devices, a KL term without `logp_ref` or an entropy bonus without
    /// `entropy`, a device other than the CPU or (with `cuda`) CUDA.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use g2po::learner::{FusedGrpoLoss, LossConstants};
    /// use g2po::loss::{KlEstimator, LossConfig};
    /// let z = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu)?;
    /// let c = LossConstants { logp_old: z.clone(), logp_ref: None, advantages: z.clone(), entropy: None,
    ///     mask: z.ones_like()? };
    /// assert!(FusedGrpoLoss::new(c.clone(), LossConfig::default()).is_ok());
    /// let kl = LossConfig { kl: Some((KlEstimator::K3, 0.01)), ..LossConfig::default() };
    /// assert!(FusedGrpoLoss::new(c, kl).is_err()); // KL needs logp_ref
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(constants: LossConstants, config: LossConfig) -> Result<Self> {
        validate_config(&config)?;
        let (rows, max_len) = constants.mask.dims2()?;
        let device = constants.mask.device().clone();
        let named = [
            ("logp_old", Some(&constants.logp_old)),
            ("logp_ref", constants.logp_ref.as_ref()),
            ("advantages", Some(&constants.advantages)),
            ("entropy", constants.entropy.as_ref()),
        ];
        for (name, t) in named {
            let Some(t) = t else { continue };
            if t.dims() != [rows, max_len] {
                return Err(LearnerError::BadInput(format!(
                    "`{name}` has shape {:?}, the mask [{rows}, {max_len}]",
                    t.dims()
                )));
            }
            if !t.device().same_device(&device) {
                return Err(LearnerError::BadInput(format!("`{name}` is on another device than the mask")));
            }
        }
        if config.kl.is_some() && constants.logp_ref.is_none() {
            return Err(LearnerError::BadInput("the loss has a KL term but no logp_ref was given".into()));
        }
        if config.entropy_coef != 0.0 && constants.entropy.is_none() {
            return Err(LearnerError::BadInput("entropy_coef != 0 but no entropy was given".into()));
        }
        let constants = match &device {
            Device::Cpu => {
                let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?) };
                let opt = |t: &Option<Tensor>| -> Result<Vec<f32>> { t.as_ref().map_or(Ok(Vec::new()), host) };
                Constants::Host(LossBuffers {
                    rows,
                    max_len,
                    logp: Vec::new(),
                    logp_old: host(&constants.logp_old)?,
                    logp_ref: opt(&constants.logp_ref)?,
                    advantages: host(&constants.advantages)?,
                    entropy: opt(&constants.entropy)?,
                    mask: host(&constants.mask)?,
                })
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => {
                let f32c = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.contiguous()?) };
                let opt = |t: &Option<Tensor>| -> Result<Option<Tensor>> { t.as_ref().map(f32c).transpose() };
                Constants::Device(LossConstants {
                    logp_old: f32c(&constants.logp_old)?,
                    logp_ref: opt(&constants.logp_ref)?,
                    advantages: f32c(&constants.advantages)?,
                    entropy: opt(&constants.entropy)?,
                    mask: f32c(&constants.mask)?,
                })
            }
            other => {
                return Err(LearnerError::BadInput(format!(
                    "the fused loss runs on the CPU or (feature `cuda`) CUDA, not on {:?}",
                    other.location()
                )));
            }
        };
        Ok(Self { shared: Arc::new(Shared { rows, max_len, device, config, constants }) })
    }

    /// The op over host buffers (`logp` in them is ignored: it is the op's
    /// argument), for CPU tensors.
    ///
    /// Errors: an invalid configuration (the inputs are checked when the op
    /// runs, against `logp`).
    ///
    /// ```
    /// use g2po::learner::FusedGrpoLoss;
    /// use g2po::loss::{LossBuffers, LossConfig};
    /// let bad = LossConfig { clip_low: -0.1, ..LossConfig::default() };
    /// assert!(FusedGrpoLoss::from_buffers(LossBuffers::default(), bad).is_err());
    /// ```
    pub fn from_buffers(mut buffers: LossBuffers, config: LossConfig) -> Result<Self> {
        validate_config(&config)?;
        buffers.logp = Vec::new();
        let (rows, max_len) = (buffers.rows, buffers.max_len);
        let constants = Constants::Host(buffers);
        Ok(Self { shared: Arc::new(Shared { rows, max_len, device: Device::Cpu, config, constants }) })
    }

    /// The configuration.
    pub fn config(&self) -> &LossConfig {
        &self.shared.config
    }

    /// Applies the loss to `logp` (`[rows, max_len]`, f32 or f64 on the CPU,
    /// f32 on CUDA, on the constants' device): the scalar loss (same dtype,
    /// differentiable with respect to `logp`) and the diagnostics.
    ///
    /// Errors: a `logp` of another shape or device, and every input error of
    /// [`crate::loss::validate_inputs`] as [`LearnerError::Loss`] (on CUDA the
    /// inputs' values are not copied back to be checked: a mask entry other
    /// than 1 counts as 0 there, and a non-finite result is the error).
    pub fn apply(&self, logp: &Tensor) -> Result<(Tensor, LossDiagnostics)> {
        let s = &self.shared;
        if logp.dims() != [s.rows, s.max_len] {
            return Err(LearnerError::BadInput(format!(
                "logp has shape {:?}, expected [{}, {}]",
                logp.dims(),
                s.rows,
                s.max_len
            )));
        }
        if !logp.device().same_device(&s.device) {
            return Err(LearnerError::BadInput("logp is on another device than the loss's constants".into()));
        }
        let slot = Arc::new(Mutex::new(Slot::default()));
        let op = Application { shared: Arc::clone(&self.shared), slot: Arc::clone(&slot) };
        let result = logp.apply_op1(op);
        let mut saved = lock(&slot);
        if let Some(e) = saved.error.take() {
            return Err(e);
        }
        let loss = result?;
        let diagnostics = saved.diagnostics.ok_or_else(|| LearnerError::BadInput("the loss op did not run".into()))?;
        Ok((loss, diagnostics))
    }
}

/// What one forward pass leaves for its backward pass and for `apply`.
#[derive(Default)]
struct Slot {
    grad: Option<SavedGrad>,
    diagnostics: Option<LossDiagnostics>,
    /// A typed error of the forward pass (candle ops can only return
    /// candle's error type, so the typed one travels here).
    error: Option<LearnerError>,
}

enum SavedGrad {
    Host(Vec<f32>),
    #[cfg(feature = "cuda")]
    Device(cudarc::driver::CudaSlice<f32>),
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // A poisoned slot only means another thread panicked mid-update; the data
    // is plain values, still usable.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One application of the loss to one `logp`: the candle op proper.
struct Application {
    shared: Arc<Shared>,
    slot: Arc<Mutex<Slot>>,
}

impl Application {
    /// Records a typed error for `apply` and hands candle its own form.
    fn fail(&self, e: LearnerError) -> candle_core::Error {
        let msg = e.to_string();
        lock(&self.slot).error = Some(e);
        candle_core::Error::Msg(msg)
    }
}

impl CustomOp1 for Application {
    fn name(&self) -> &'static str {
        "g2po-fused-grpo-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Constants::Host(host) = &self.shared.constants else {
            return Err(self.fail(LearnerError::BadInput("CPU logp but device constants".into())));
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| self.fail(LearnerError::BadInput("the fused loss needs a contiguous logp".into())))?;
        let (logp, is_f64): (Vec<f32>, bool) = match storage {
            CpuStorage::F32(v) => (v[start..end].to_vec(), false),
            // The reference takes f32 inputs, like the kernel.
            CpuStorage::F64(v) => (v[start..end].iter().map(|&x| x as f32).collect(), true),
            other => return Err(candle_core::Error::UnsupportedDTypeForOp(other.dtype(), "g2po-fused-grpo-loss")),
        };
        let out = grpo_loss_cpu(&LossInputs { logp: &logp, ..host.view() }, &self.shared.config)
            .map_err(|e| self.fail(e.into()))?;
        let mut slot = lock(&self.slot);
        slot.grad = Some(SavedGrad::Host(out.grad_logp));
        slot.diagnostics = Some(out.diagnostics);
        let storage = if is_f64 { CpuStorage::F64(vec![out.loss]) } else { CpuStorage::F32(vec![out.loss as f32]) };
        Ok((storage, Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let Constants::Device(constants) = &self.shared.constants else {
            return Err(self.fail(LearnerError::BadInput("CUDA logp but host constants".into())));
        };
        let (loss, grad, diagnostics) =
            cuda_forward::run(storage, layout, constants, &self.shared.config).map_err(|e| self.fail(e))?;
        let mut slot = lock(&self.slot);
        slot.grad = Some(SavedGrad::Device(grad));
        slot.diagnostics = Some(diagnostics);
        Ok((loss, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let host = match &lock(&self.slot).grad {
            Some(SavedGrad::Host(g)) => Some(Tensor::from_slice(g, arg.shape(), arg.device())?),
            #[cfg(feature = "cuda")]
            Some(SavedGrad::Device(_)) => None,
            None => return Err(candle_core::Error::Msg("fused GRPO loss: backward before forward".into())),
        };
        let grad = match host {
            Some(g) => g,
            #[cfg(feature = "cuda")]
            None => arg.apply_op1_no_bwd(&cuda_forward::StoredGrad { slot: Arc::clone(&self.slot) })?,
            #[cfg(not(feature = "cuda"))]
            None => return Err(candle_core::Error::Msg("fused GRPO loss: no host gradient".into())),
        };
        let grad = grad.to_dtype(arg.dtype())?;
        Ok(Some(grad.broadcast_mul(&grad_res.to_dtype(arg.dtype())?)?))
    }
}

#[cfg(feature = "cuda")]
mod cuda_forward {
    use std::sync::{Arc, Mutex};

    use candle_core::backend::BackendStorage;
    use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Shape, Storage};
    use cudarc::driver::{CudaSlice, CudaView};

    use super::{LossConstants, SavedGrad, Slot, lock};
    use crate::cuda::{CudaError, DeviceLossInputs, GRPO_LOSS, LossFunctions, cached_ptx, finish, run_loss};
    use crate::learner::LearnerError;
    use crate::loss::{LossConfig, LossDiagnostics};

    /// Module name under which candle caches our PTX on its device.
    const MODULE: &str = "g2po_grpo_loss";

    fn cerr(e: impl std::fmt::Display) -> candle_core::Error {
        candle_core::Error::Cuda(e.to_string().into())
    }

    fn learner_error(e: CudaError) -> LearnerError {
        match e {
            CudaError::Loss(e) => LearnerError::Loss(e),
            other => LearnerError::Candle(cerr(other)),
        }
    }

    /// A contiguous f32 view of a CUDA storage with the expected element count.
    fn view<'a>(s: &'a CudaStorage, l: &Layout, n: usize, name: &str) -> Result<CudaView<'a, f32>, LearnerError> {
        let (a, b) =
            l.contiguous_offsets().ok_or_else(|| LearnerError::BadInput(format!("`{name}` must be contiguous")))?;
        if b - a != n {
            return Err(LearnerError::BadInput(format!("`{name}` has {} elements, expected {n}", b - a)));
        }
        if s.dtype() != DType::F32 {
            return Err(LearnerError::BadInput(format!("`{name}` must be f32 on CUDA, not {:?}", s.dtype())));
        }
        Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
    }

    /// Runs the loss kernel on candle's stream: the scalar loss as a device
    /// storage, the gradient (kept on the device) and the diagnostics.
    pub(super) fn run(
        storage: &CudaStorage,
        layout: &Layout,
        c: &LossConstants,
        config: &LossConfig,
    ) -> Result<(CudaStorage, CudaSlice<f32>, LossDiagnostics), LearnerError> {
        let (rows, max_len) = layout.shape().dims2()?;
        let n = rows * max_len;
        let dev = storage.device().clone();
        let ptx = cached_ptx(&GRPO_LOSS).map_err(learner_error)?;
        let funcs = LossFunctions::load(|name| {
            dev.get_or_load_custom_func(name, MODULE, ptx)
                .map(|f| f.into_cuda_function())
                .map_err(|e| CudaError::Driver(e.to_string()))
        })
        .map_err(learner_error)?;
        // Read guards of the constant inputs for the duration of the launch.
        let guards = [
            Some(c.logp_old.storage_and_layout()),
            c.logp_ref.as_ref().map(|t| t.storage_and_layout()),
            Some(c.advantages.storage_and_layout()),
            c.entropy.as_ref().map(|t| t.storage_and_layout()),
            Some(c.mask.storage_and_layout()),
        ];
        let names = ["logp_old", "logp_ref", "advantages", "entropy", "mask"];
        let mut views: Vec<Option<CudaView<'_, f32>>> = Vec::with_capacity(names.len());
        for (g, name) in guards.iter().zip(names) {
            views.push(match g {
                None => None,
                Some((st, l)) => match &**st {
                    Storage::Cuda(s) => Some(view(s, l, n, name)?),
                    _ => return Err(LearnerError::BadInput(format!("`{name}` must be on the CUDA device"))),
                },
            });
        }
        let missing = |name: &str| LearnerError::BadInput(format!("`{name}` is required"));
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
        let raw = run_loss(&stream, &funcs, &inputs, config).map_err(learner_error)?;
        let (loss, diagnostics) = finish(&raw.stats, raw.tokens, has_entropy, config).map_err(learner_error)?;
        let out = stream.clone_htod(&[loss as f32][..]).map_err(|e| LearnerError::Candle(cerr(format!("{e:?}"))))?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), raw.grad, diagnostics))
    }

    /// Materialises the gradient kept by the forward pass as a tensor shaped
    /// like `logp`.
    pub(super) struct StoredGrad {
        pub(super) slot: Arc<Mutex<Slot>>,
    }

    impl CustomOp1 for StoredGrad {
        fn name(&self) -> &'static str {
            "g2po-fused-grpo-loss-grad"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            Err(cerr("the fused GRPO gradient of this application lives on CUDA"))
        }

        fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
            let slot = lock(&self.slot);
            let Some(SavedGrad::Device(grad)) = &slot.grad else {
                return Err(cerr("backward before forward"));
            };
            if grad.len() != layout.shape().elem_count() {
                return Err(cerr("the stored gradient does not match logp"));
            }
            let dev = storage.device().clone();
            let copy = dev.cuda_stream().clone_dtod(grad).map_err(cerr)?;
            Ok((CudaStorage::wrap_cuda_slice(copy, dev), layout.shape().clone()))
        }
    }
}
