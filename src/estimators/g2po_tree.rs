//! G2PO on the history tree (SPEC 8; the rollout-tree reading, arXiv
//! 2604.11037): a node is a state together with the path of states that led
//! to it, so two rollouts share a node only while they share a prefix and the
//! graph of a group is a tree (no cycles, no self-loops: a revisited state is
//! a new node). The value and advantage formulas are G2PO's, on that tree.
//!
//! Histories are never materialised: each row's node key is a rolling hash of
//! its path, `h_t = mix(h_{t-1}, key_t)` from a fixed root, computed in one
//! pass in row order (a trajectory's previous step always comes earlier).
//! `mix` is a bijection in `key_t` for every `h_{t-1}`, so two paths that
//! first differ at step t get different keys at t (and, with 64-bit keys,
//! later collisions are as unlikely as key collisions themselves).

use super::engine::GroupContext;
use crate::rollout::NO_NEXT;

/// Key of the empty path.
const ROOT: u64 = 0x6a09_e667_f3bc_c908;

/// The path key of a path ending in `state` whose prefix has key `prefix`.
fn extend(prefix: u64, state: u64) -> u64 {
    // murmur3's finaliser (a bijection) over an order-dependent combination.
    let mut h = prefix.rotate_left(31).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ state;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Turns `keys` (the state key of each row of the group, in block order) into
/// path keys in place.
pub(super) fn path_keys(ctx: &GroupContext<'_>, rows: &[u32], keys: &mut [u64]) {
    let b = ctx.batch;
    let start = rows[0];
    for (i, &r) in rows.iter().enumerate() {
        let r = r as usize;
        if b.steps()[r] == 0 {
            keys[i] = extend(ROOT, keys[i]);
        }
        // Position i is final here: its predecessor (earlier in row order) set it.
        let next = b.next_rows()[r];
        if next != NO_NEXT {
            let j = ctx.pos(next, start);
            keys[j] = extend(keys[i], keys[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_depends_on_order_and_prefix() {
        let (a, b) = (11u64, 22u64);
        assert_ne!(extend(extend(ROOT, a), b), extend(extend(ROOT, b), a));
        assert_ne!(extend(ROOT, a), extend(extend(ROOT, a), a));
        assert_eq!(extend(extend(ROOT, a), b), extend(extend(ROOT, a), b));
    }
}
