//! `x @ W` for a frozen weight `W`, whose backward computes only the
//! gradient of `x`.
//!
//! Why a custom op: candle's matmul backward always computes both operand
//! gradients, also for a weight that is a plain tensor and will never be
//! updated. For the base model that is a `[out, in]` product per projection
//! per step (for the tied 49,152 x 576 output embedding, 113 MB each time),
//! computed and thrown away. Measured on the LoRA backward of this model it
//! doubled the time and memory (see `docs/benchmarks.md`). The op below runs
//! the same backend matmul forward (CPU and, in a `cuda` build, CUDA: one
//! generic function over candle's storage trait) and returns `grad @ W^T`
//! for `x` and nothing for `W`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// The op (see the module docs). Apply it with [`frozen_matmul`].
#[derive(Debug, Clone, Copy)]
struct FrozenMatmul;

/// `x [m, k] @ w [k, n] -> [m, n]` on any backend's storage (any strides
/// the backend's matmul accepts, e.g. a transposed view).
fn forward<S: BackendStorage>(x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
    let (m, k) = xl.shape().dims2()?;
    let (k2, n) = wl.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("frozen matmul: x is [{m}, {k}] but w is [{k2}, {n}]");
    }
    let out = x.matmul(w, (1, m, n, k), xl, wl)?;
    Ok((out, Shape::from((m, n))))
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        forward(x, xl, w, wl)
    }

    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        forward(x, xl, w, wl)
    }

    fn bwd(&self, _x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&w.t()?)?), None))
    }
}

/// `x @ w` for a 2-D `x` (`[m, k]`) and a frozen 2-D weight `w` (`[k, n]`,
/// e.g. a stored `W^T` or a transposed view), differentiable with respect
/// to `x` only.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let x = Var::new(&[[1.0f32, 2.0]], &Device::Cpu).unwrap();
/// let w = Tensor::new(&[[3.0f32, 5.0], [4.0, 6.0]], &Device::Cpu).unwrap();
/// let y = g2po::lm::frozen_matmul(x.as_tensor(), &w).unwrap();
/// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![11.0, 17.0]]);
/// let grads = y.sum_all().unwrap().backward().unwrap();
/// assert_eq!(grads.get(&x).unwrap().to_vec2::<f32>().unwrap(), vec![vec![8.0, 10.0]]);
/// assert!(grads.get(&w).is_none());
/// // A transposed view works too: x @ (w^T)^T.
/// let wt = w.t().unwrap().contiguous().unwrap();
/// let y2 = g2po::lm::frozen_matmul(x.as_tensor(), &wt.t().unwrap()).unwrap();
/// assert_eq!(y2.to_vec2::<f32>().unwrap(), vec![vec![11.0, 17.0]]);
/// ```
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2(w, FrozenMatmul)
}
