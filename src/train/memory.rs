//! The process's allocator, tuned for training.
//!
//! Why. glibc's `malloc` serves every block above its mmap threshold (128 KiB,
//! raised dynamically to at most 32 MiB) with a fresh `mmap` and hands it back
//! with `munmap` on free, and it trims the top of the heap past 128 KiB. The
//! learner's backward allocates and frees tensors of several MiB per
//! mini-batch, so each of them is zero-filled page by page by the kernel
//! again: in the household ablation setting this was 167 s of system time in
//! a 240 s run (2-core VM; `docs/ablation.md`). Keeping freed memory in the
//! process removes that cost and changes no result.

/// Makes `malloc` keep freed memory for reuse instead of returning it to the
/// operating system: the mmap threshold at glibc's maximum (32 MiB, so that
/// blocks below it come from the heap) and heap trimming off. Memory use
/// stays at the peak of the run instead of falling back between steps.
/// Call it once, at the start of a training process; a library should leave
/// it to its binary. Returns whether the setting took (only glibc has it;
/// elsewhere this does nothing and returns `false`).
///
/// ```
/// let tuned = g2po::train::retain_freed_memory();
/// assert_eq!(tuned, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MAX_MMAP_THRESHOLD: libc::c_int = 32 << 20;
        // SAFETY: mallopt only sets allocator parameters (under the arena
        // lock); it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
