//! Token-level arrays ([rows, L]): row sums of token rewards and the
//! broadcast of row advantages over a response mask. Both read any strides
//! (verl's response mask is a strided view when batch balancing is off) and
//! any common dtype, in parallel without the GIL.

use ndarray::{Array2, ArrayView2};
use numpy::{PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use rayon::prelude::*;

use crate::errors::{Failure, Fallible, no_panic};
use crate::threads;

fn array2<'py>(obj: &Bound<'py, PyAny>, argument: &str) -> Fallible<Bound<'py, PyUntypedArray>> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        Failure::type_(argument, None, format!("expected a 2-D numpy array or torch tensor, got {ty}"))
    })?;
    if arr.ndim() != 2 {
        return Err(Failure::type_(argument, None, format!("expected shape [rows, L], got {:?}", arr.shape())));
    }
    Ok(arr.clone())
}

/// Evaluates `$body` with `$view` a 2-D view of `$arr` and `$conv` its
/// element-wise conversion to f32, for each supported dtype.
macro_rules! with_view {
    ($arr:expr, $argument:expr, |$view:ident, $conv:ident| $body:expr) => {{
        let arr = $arr;
        macro_rules! branch {
            ($t:ty, $c:expr, $else:expr) => {
                if let Ok(typed) = arr.cast::<numpy::PyArray2<$t>>() {
                    let ro = typed.readonly();
                    let $view: ArrayView2<'_, $t> = ro.as_array();
                    let $conv = $c;
                    $body
                } else {
                    $else
                }
            };
        }
        branch!(
            f32,
            |x: f32| x,
            branch!(
                i64,
                |x: i64| x as f32,
                branch!(
                    bool,
                    |x: bool| if x { 1.0f32 } else { 0.0 },
                    branch!(
                        f64,
                        |x: f64| x as f32,
                        branch!(
                            i32,
                            |x: i32| x as f32,
                            branch!(
                                u8,
                                |x: u8| x as f32,
                                branch!(
                                    i8,
                                    |x: i8| x as f32,
                                    branch!(i16, |x: i16| x as f32, {
                                        let dtype =
                                            arr.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
                                        Err(Failure::type_($argument, None, format!("unsupported dtype {dtype}")))
                                    })
                                )
                            )
                        )
                    )
                )
            )
        )
    }};
}

/// `advantage[r] * mask[r, j]` in float32 (NaN * 0 stays NaN, as in torch).
pub fn broadcast<'py>(
    py: Python<'py>,
    advantage: &[f32],
    mask: &Bound<'py, PyAny>,
    argument: &str,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let arr = array2(mask, argument)?;
    let (rows, width) = (arr.shape()[0], arr.shape()[1]);
    if rows != advantage.len() {
        return Err(Failure::input(
            argument,
            None,
            format!("has {rows} rows but there are {} advantages", advantage.len()),
        )
        .into());
    }
    fn fill<T: Copy + Sync>(
        view: ArrayView2<'_, T>,
        conv: impl Fn(T) -> f32 + Sync,
        advantage: &[f32],
        width: usize,
        num_threads: Option<usize>,
    ) -> Fallible<Vec<f32>> {
        let total = advantage.len() * width;
        let mut out: Vec<f32> = Vec::with_capacity(total);
        threads::run(num_threads, || {
            if width == 0 {
                return;
            }
            // Every element is written below, so the buffer is not zeroed first.
            let spare = &mut out.spare_capacity_mut()[..total];
            let contiguous = view.as_slice();
            spare.par_chunks_mut(width).with_min_len(256).enumerate().for_each(|(r, dst)| {
                let a = advantage[r];
                match contiguous {
                    Some(m) => {
                        for (d, &x) in dst.iter_mut().zip(&m[r * width..(r + 1) * width]) {
                            d.write(a * conv(x));
                        }
                    }
                    None => {
                        for (d, &x) in dst.iter_mut().zip(view.row(r).iter()) {
                            d.write(a * conv(x));
                        }
                    }
                }
            });
        })?;
        // SAFETY: the loop above initialised all `total` elements (rows * width).
        unsafe { out.set_len(total) };
        Ok(out)
    }
    let values: Fallible<Vec<f32>> = with_view!(&arr, argument, |view, conv| py.detach(|| no_panic(|| fill(
        view,
        conv,
        advantage,
        width,
        num_threads
    ))));
    let values = values?;
    let array = Array2::from_shape_vec((rows, width), values).expect("rows * width values");
    Ok(numpy::PyArray2::from_owned_array(py, array))
}

/// Row sums of a [rows, L] token array, accumulated in f64.
pub fn row_sums(
    py: Python<'_>,
    tokens: &Bound<'_, PyAny>,
    argument: &str,
    num_threads: Option<usize>,
) -> PyResult<Vec<f64>> {
    let arr = array2(tokens, argument)?;
    fn sums<T: Copy + Sync>(
        view: ArrayView2<'_, T>,
        conv: impl Fn(T) -> f32 + Sync,
        num_threads: Option<usize>,
    ) -> Fallible<Vec<f64>> {
        threads::run(num_threads, || {
            let width = view.ncols();
            let contiguous = view.as_slice();
            (0..view.nrows())
                .into_par_iter()
                .with_min_len(256)
                .map(|r| match contiguous {
                    Some(m) => m[r * width..(r + 1) * width].iter().map(|&x| conv(x) as f64).sum::<f64>(),
                    None => view.row(r).iter().map(|&x| conv(x) as f64).sum::<f64>(),
                })
                .collect()
        })
    }
    let out: Fallible<Vec<f64>> =
        with_view!(&arr, argument, |view, conv| py.detach(|| no_panic(|| sums(view, conv, num_threads))));
    Ok(out?)
}
