//! Thread pools: `num_threads=None` runs on rayon's global pool (sized by
//! `RAYON_NUM_THREADS`, else the number of cores); an explicit count runs on a
//! pool of that size, built once and kept for later calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::errors::{Failure, Fallible};

static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();

/// Runs `f` on `num_threads` threads (`None`: the global pool).
pub fn run<T: Send>(num_threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Fallible<T> {
    let Some(n) = num_threads else {
        return Ok(f());
    };
    if n == 0 {
        return Err(Failure::config("num_threads", "must be at least 1 (or None for RAYON_NUM_THREADS / all cores)"));
    }
    let pool = {
        let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        match pools.get(&n) {
            Some(p) => p.clone(),
            None => {
                let p = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("g2po-rs-{i}"))
                    .build()
                    .map_err(|e| Failure::internal(format!("cannot start {n} threads: {e}")))?;
                let p = Arc::new(p);
                pools.insert(n, p.clone());
                p
            }
        }
    };
    Ok(pool.install(f))
}

/// The number of threads a call with `num_threads` uses.
pub fn effective(num_threads: Option<usize>) -> usize {
    num_threads.unwrap_or_else(rayon::current_num_threads)
}
