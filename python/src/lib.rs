//! `g2po_rs._native`: the Rust half of the Python package `g2po_rs`.
//!
//! The Python modules (`g2po_rs`, `g2po_rs.compat.*`) normalise their inputs
//! (torch tensors to numpy views, lists to arrays) and call in here. Every
//! function reads numpy buffers in place, releases the GIL while the engine or
//! a per-row loop runs, hands its results to numpy without copying
//! (`PyArray1::from_vec`) and reports bad input as a typed exception from
//! `g2po_rs.errors` naming the argument and row, never as a panic.

use pyo3::prelude::*;

mod compat;
mod convert;
mod errors;
mod native;
mod threads;
mod tokens;

/// The number of threads a call with `num_threads` would use.
#[pyfunction]
#[pyo3(signature = (num_threads=None))]
fn threads_used(num_threads: Option<usize>) -> usize {
    threads::effective(num_threads)
}

#[pymodule(name = "_native")]
fn g2po_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<native::Batch>()?;
    m.add_class::<native::Graph>()?;
    m.add_class::<compat::AnchorCache>()?;
    m.add_function(wrap_pyfunction!(native::estimate, m)?)?;
    m.add_function(wrap_pyfunction!(native::keys, m)?)?;
    m.add_function(wrap_pyfunction!(native::canonical, m)?)?;
    m.add_function(wrap_pyfunction!(native::broadcast, m)?)?;
    m.add_function(wrap_pyfunction!(native::graph, m)?)?;
    m.add_function(wrap_pyfunction!(threads_used, m)?)?;
    m.add_function(wrap_pyfunction!(compat::factorize, m)?)?;
    m.add_function(wrap_pyfunction!(compat::pair_ids, m)?)?;
    m.add_function(wrap_pyfunction!(compat::text_keys, m)?)?;
    m.add_function(wrap_pyfunction!(compat::group_stats, m)?)?;
    m.add_function(wrap_pyfunction!(compat::row_sums, m)?)?;
    m.add_function(wrap_pyfunction!(compat::discounted_returns, m)?)?;
    m.add_function(wrap_pyfunction!(compat::g2po_phase_one, m)?)?;
    m.add_function(wrap_pyfunction!(compat::similarity_groups, m)?)?;
    m.add_function(wrap_pyfunction!(compat::truth, m)?)?;
    m.add_function(wrap_pyfunction!(compat::grouped_norm, m)?)?;
    m.add_function(wrap_pyfunction!(compat::g2po_step, m)?)?;
    m.add("ENGINE_VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
