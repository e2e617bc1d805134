//! `estimate_into` allocates nothing on the second call with the same shapes
//! (one worker thread; exact keys, precomputed or hashed from text), counted
//! by a global allocator. One test in its own binary, so no other test's
//! allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use g2po::{AdvantageEstimator, Advantages, Anchor, Estimator, EstimatorConfig, EstimatorKind, RolloutBatch, StepRow};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `groups` task groups x 4 rollouts x 6 steps over 5 states per group;
/// `interleaved` pushes the groups' rows round-robin (non-contiguous groups,
/// so the scatter into row order runs too).
fn batch(groups: usize, as_keys: bool, interleaved: bool) -> RolloutBatch {
    let mut b = RolloutBatch::builder();
    let mut rows = Vec::new();
    for g in 0..groups {
        for r in 0..4 {
            for t in 0..6 {
                rows.push((g, r, t));
            }
        }
    }
    if interleaved {
        rows.sort_by_key(|&(g, r, t)| (r, t, g));
    }
    for (g, r, t) in rows {
        let text = format!("group {g} room {}", (r * 7 + t * 3) % 5);
        let reward = if r % 2 == 0 { 10.0 } else { 0.0 };
        let key = (g as u64) << 8 | ((r * 7 + t * 3) % 5) as u64;
        b.push_step(StepRow {
            group: &format!("g{g}"),
            traj: &format!("g{g}/{r}"),
            step: t as u32,
            anchor: if as_keys { Anchor::Key(key) } else { Anchor::Text(&text) },
            reward: if t == 5 { reward } else { 0.0 },
            episode_reward: reward,
            valid: t != 2 || r != 1,
            response_len: 3,
        })
        .unwrap();
    }
    b.build().unwrap()
}

#[test]
fn second_call_with_the_same_shapes_allocates_nothing() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    // 200 groups x 24 rows = 4800 rows: more than one sequential chunk, so the
    // parallel split runs too.
    let batches = [
        ("keys", batch(200, true, false)),
        ("text", batch(200, false, false)),
        ("keys, interleaved groups", batch(200, true, true)),
        ("text, interleaved groups", batch(200, false, true)),
    ];
    let mut report = Vec::new();
    for kind in EstimatorKind::FROM_BATCH {
        let estimator = Estimator::new(EstimatorConfig::new(kind)).unwrap();
        for (what, batch) in &batches {
            let mut out = Advantages::default();
            let counted = pool.install(|| {
                // The counter works: the first call, into empty buffers, allocates.
                ALLOCATIONS.store(0, Ordering::Relaxed);
                COUNTING.store(true, Ordering::Relaxed);
                estimator.estimate_into(batch, &mut out).unwrap();
                COUNTING.store(false, Ordering::Relaxed);
                assert!(ALLOCATIONS.load(Ordering::Relaxed) > 0, "{kind} {what}: first call counted nothing");
                let first = out.clone();
                ALLOCATIONS.store(0, Ordering::Relaxed);
                COUNTING.store(true, Ordering::Relaxed);
                estimator.estimate_into(batch, &mut out).unwrap();
                COUNTING.store(false, Ordering::Relaxed);
                assert_eq!(out, first, "{kind} {what}: the second call must give the same result");
                ALLOCATIONS.load(Ordering::Relaxed)
            });
            report.push(format!("{kind} {what}: {counted}"));
        }
    }
    assert!(report.iter().all(|r| r.ends_with(": 0")), "allocations on the second call:\n{}", report.join("\n"));
}
