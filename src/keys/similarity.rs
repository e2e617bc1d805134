//! Similarity of observation texts with the exact semantics of Python's
//! `difflib.SequenceMatcher(None, a, b).ratio()`, which GiGPO's similarity
//! mode uses, and GiGPO's greedy clustering built on it.
//!
//! Exactness matters more than elegance here: a threshold of 0.95 sits close
//! to typical ratios, so every detail of difflib is kept — sequences of
//! Unicode code points; the "autojunk" rule (when `b` has 200 or more
//! elements, an element occurring more than `len(b) / 100 + 1` times is
//! "popular" and cannot start a match, though matches may still be extended
//! over it); the longest match chosen with the smallest `i`, then the smallest
//! `j`; and the recursion on both sides of each match. The ratio is
//! `2 * M / (len(a) + len(b))` with `M` the total size of the matching blocks.
//!
//! # Clustering at scale
//!
//! [`cluster`] gives exactly the assignment of the plain greedy loop
//! ([`cluster_unpruned`]: each text joins the first cluster whose first
//! member has `ratio(text, member) >= threshold`), but compares far less:
//! - A text seen before gets the earlier copy's answer: the ratios against
//!   every representative before its cluster are the same.
//! - Before the full ratio, three upper bounds of `M` are tried, cheapest
//!   first; a pair whose bound gives a ratio below the threshold cannot match.
//!   All three hold whatever autojunk removes, because matching blocks pair
//!   equal code points, in order, without overlap: the shorter length
//!   (difflib's `real_quick_ratio`), the overlap of the two character
//!   histograms (its `quick_ratio`; non-ASCII code points share 64 buckets,
//!   which can only raise the overlap), and the longest common subsequence
//!   (bit-parallel, 64 positions per machine word). Each bound is divided by
//!   `len(a) + len(b)` in the same floating-point expression as the ratio, so
//!   "bound < threshold" implies "ratio < threshold" exactly.
//! - Texts are taken in blocks. Each new text of a block looks for its first
//!   match among the representatives that existed before the block, in
//!   parallel across the block's texts; then, in order, a text without such a
//!   match is compared with the representatives opened earlier in the same
//!   block. A match found in the first pass is always the first match: every
//!   representative opened in the block comes after it.

use std::cell::OnceCell;

use ahash::AHashMap;
use rayon::prelude::*;

/// A prepared second sequence `b`, reusable against many `a`.
///
/// ```
/// use g2po::keys::similarity::Matcher;
/// let m = Matcher::new("abcd");
/// assert_eq!(m.ratio("abcd"), 1.0);
/// assert_eq!(m.ratio("bcde"), 0.75);
/// ```
#[derive(Debug, Clone)]
pub struct Matcher {
    b: Vec<char>,
    b2j: AHashMap<char, Vec<usize>>,
}

impl Matcher {
    /// Indexes `b` (difflib's `set_seq2` with autojunk on, no junk function).
    ///
    /// ```
    /// let m = g2po::keys::similarity::Matcher::new("");
    /// assert_eq!(m.ratio(""), 1.0);
    /// ```
    pub fn new(b: &str) -> Self {
        Self::from_chars(b.chars().collect())
    }

    fn from_chars(b: Vec<char>) -> Self {
        let mut b2j: AHashMap<char, Vec<usize>> = AHashMap::new();
        for (j, &c) in b.iter().enumerate() {
            b2j.entry(c).or_default().push(j);
        }
        let n = b.len();
        if n >= 200 {
            let ntest = n / 100 + 1;
            b2j.retain(|_, positions| positions.len() <= ntest);
        }
        Self { b, b2j }
    }

    /// difflib's `ratio()` of `a` against the prepared `b`.
    ///
    /// ```
    /// let m = g2po::keys::similarity::Matcher::new("kitten");
    /// assert!((m.ratio("sitting") - 8.0 / 13.0).abs() < 1e-12);
    /// ```
    pub fn ratio(&self, a: &str) -> f64 {
        let a: Vec<char> = a.chars().collect();
        self.ratio_chars(&a)
    }

    fn ratio_chars(&self, a: &[char]) -> f64 {
        ratio_of(self.matching_size(a), a.len(), self.b.len())
    }

    /// Total size of difflib's matching blocks between `a` and `b`.
    fn matching_size(&self, a: &[char]) -> usize {
        // Each element's positions in b, looked up once rather than once per
        // recursive call.
        let positions: Vec<&[usize]> = a.iter().map(|c| self.b2j.get(c).map_or(&[][..], Vec::as_slice)).collect();
        let mut scratch = Scratch {
            j2len: vec![0; self.b.len() + 1],
            new_j2len: vec![0; self.b.len() + 1],
            touched: Vec::new(),
            new_touched: Vec::new(),
        };
        let mut queue = vec![(0, a.len(), 0, self.b.len())];
        let mut matched = 0;
        while let Some((alo, ahi, blo, bhi)) = queue.pop() {
            let (i, j, k) = self.longest_match(a, &positions, alo, ahi, blo, bhi, &mut scratch);
            if k > 0 {
                matched += k;
                if alo < i && blo < j {
                    queue.push((alo, i, blo, j));
                }
                if i + k < ahi && j + k < bhi {
                    queue.push((i + k, ahi, j + k, bhi));
                }
            }
        }
        matched
    }

    /// difflib's `find_longest_match` with no junk function: the b2j scan over
    /// non-popular elements, then extension over equal elements on both sides.
    #[allow(clippy::too_many_arguments)]
    fn longest_match(
        &self,
        a: &[char],
        positions: &[&[usize]],
        alo: usize,
        ahi: usize,
        blo: usize,
        bhi: usize,
        s: &mut Scratch,
    ) -> (usize, usize, usize) {
        let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
        // j2len[j + 1] = length of the match ending at a[i - 1], b[j].
        for &t in &s.touched {
            s.j2len[t] = 0;
        }
        s.touched.clear();
        for (i, js) in positions.iter().enumerate().take(ahi).skip(alo) {
            s.new_touched.clear();
            for &j in *js {
                if j < blo {
                    continue;
                }
                if j >= bhi {
                    break;
                }
                let k = s.j2len[j] + 1;
                s.new_j2len[j + 1] = k;
                s.new_touched.push(j + 1);
                if k > bestsize {
                    besti = i + 1 - k;
                    bestj = j + 1 - k;
                    bestsize = k;
                }
            }
            for &t in &s.touched {
                s.j2len[t] = 0;
            }
            std::mem::swap(&mut s.j2len, &mut s.new_j2len);
            std::mem::swap(&mut s.touched, &mut s.new_touched);
        }
        for &t in &s.touched {
            s.j2len[t] = 0;
        }
        s.touched.clear();
        while besti > alo && bestj > blo && a[besti - 1] == self.b[bestj - 1] {
            besti -= 1;
            bestj -= 1;
            bestsize += 1;
        }
        while besti + bestsize < ahi && bestj + bestsize < bhi && a[besti + bestsize] == self.b[bestj + bestsize] {
            bestsize += 1;
        }
        (besti, bestj, bestsize)
    }
}

struct Scratch {
    j2len: Vec<usize>,
    new_j2len: Vec<usize>,
    touched: Vec<usize>,
    new_touched: Vec<usize>,
}

/// difflib's ratio for `matched` elements out of `len_a + len_b`: the one
/// expression every bound below also goes through, so that comparing bounds
/// and ratios with a threshold agrees exactly.
fn ratio_of(matched: usize, len_a: usize, len_b: usize) -> f64 {
    let total = len_a + len_b;
    if total == 0 {
        return 1.0;
    }
    2.0 * matched as f64 / total as f64
}

/// `difflib.SequenceMatcher(None, a, b).ratio()`.
///
/// ```
/// use g2po::keys::similarity::ratio;
/// assert_eq!(ratio("abc", "abc"), 1.0);
/// assert_eq!(ratio("abc", "xyz"), 0.0);
/// ```
pub fn ratio(a: &str, b: &str) -> f64 {
    Matcher::new(b).ratio(a)
}

/// `difflib.SequenceMatcher(None, a, b).quick_ratio()`: the ratio if every
/// code point of `a` could be matched with an equal one of `b`, order
/// ignored. An upper bound of [`ratio`].
///
/// ```
/// use g2po::keys::similarity::{quick_ratio, ratio};
/// assert_eq!(quick_ratio("abcd", "dcba"), 1.0);
/// assert!(ratio("abcd", "dcba") <= quick_ratio("abcd", "dcba"));
/// ```
pub fn quick_ratio(a: &str, b: &str) -> f64 {
    let mut counts: AHashMap<char, usize> = AHashMap::new();
    for c in b.chars() {
        *counts.entry(c).or_default() += 1;
    }
    let mut matched = 0;
    for c in a.chars() {
        if let Some(n) = counts.get_mut(&c)
            && *n > 0
        {
            *n -= 1;
            matched += 1;
        }
    }
    ratio_of(matched, a.chars().count(), b.chars().count())
}

/// `difflib.SequenceMatcher(None, a, b).real_quick_ratio()`: the ratio if
/// all of the shorter text matched. An upper bound of [`quick_ratio`].
///
/// ```
/// use g2po::keys::similarity::real_quick_ratio;
/// assert_eq!(real_quick_ratio("ab", "abcd"), 2.0 * 2.0 / 6.0);
/// ```
pub fn real_quick_ratio(a: &str, b: &str) -> f64 {
    let (la, lb) = (a.chars().count(), b.chars().count());
    ratio_of(la.min(lb), la, lb)
}

/// Histogram buckets: one per ASCII code point, 64 shared by the rest.
const BUCKETS: usize = 128 + 64;

fn bucket(c: char) -> usize {
    let c = c as usize;
    if c < 128 { c } else { 128 + c % 64 }
}

/// Code-point counts by bucket. Absent for texts so long that a count could
/// overflow `u16`; those pairs skip this bound.
#[derive(Debug, Clone)]
struct Histogram(Box<[u16; BUCKETS]>);

impl Histogram {
    fn of(chars: &[char]) -> Option<Self> {
        if chars.len() > u16::MAX as usize {
            return None;
        }
        let mut counts = Box::new([0u16; BUCKETS]);
        for &c in chars {
            counts[bucket(c)] += 1;
        }
        Some(Self(counts))
    }

    /// An upper bound of the number of code points the two texts can match.
    fn overlap(&self, other: &Self) -> usize {
        self.0.iter().zip(other.0.iter()).map(|(&x, &y)| u32::from(x.min(y))).sum::<u32>() as usize
    }
}

/// Bit masks of a text's positions per code point, for the bit-parallel
/// longest common subsequence (Allison and Dix; Hyyrö's formulation).
struct PositionMasks {
    words: usize,
    /// Row of masks per code point; row 0 is all zeros (code points absent
    /// from the text).
    masks: Vec<u64>,
    ascii: [u32; 128],
    other: AHashMap<char, u32>,
}

impl PositionMasks {
    fn of(chars: &[char]) -> Self {
        let words = chars.len().div_ceil(64);
        let mut table = Self { words, masks: vec![0; words], ascii: [0; 128], other: AHashMap::new() };
        for (i, &c) in chars.iter().enumerate() {
            let row = match table.row(c) {
                0 => {
                    let next = (table.masks.len() / words.max(1)) as u32;
                    table.masks.resize(table.masks.len() + words, 0);
                    if (c as usize) < 128 {
                        table.ascii[c as usize] = next;
                    } else {
                        table.other.insert(c, next);
                    }
                    next
                }
                row => row,
            };
            table.masks[row as usize * words + i / 64] |= 1 << (i % 64);
        }
        table
    }

    fn row(&self, c: char) -> u32 {
        if (c as usize) < 128 { self.ascii[c as usize] } else { self.other.get(&c).copied().unwrap_or(0) }
    }

    /// Length of the longest common subsequence of the masked text and `b`.
    fn lcs(&self, len: usize, b: &[char], v: &mut Vec<u64>) -> usize {
        if self.words == 0 {
            return 0;
        }
        v.clear();
        v.resize(self.words, !0);
        for &c in b {
            let row = self.row(c) as usize;
            if row == 0 {
                continue;
            }
            let m = &self.masks[row * self.words..(row + 1) * self.words];
            let mut carry = 0u64;
            for (vw, &mw) in v.iter_mut().zip(m) {
                let u = *vw & mw;
                let (sum, c1) = vw.overflowing_add(u);
                let (sum, c2) = sum.overflowing_add(carry);
                carry = u64::from(c1 | c2);
                *vw = sum | (*vw & !mw);
            }
        }
        // Zero bits among the text's positions are the matched ones.
        let ones: usize = v.iter().map(|w| w.count_ones() as usize).sum();
        len - (ones - (self.words * 64 - len))
    }
}

/// A text ready to be compared with representatives.
struct Query {
    chars: Vec<char>,
    histogram: Option<Histogram>,
}

impl Query {
    fn new(text: &str) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let histogram = Histogram::of(&chars);
        Self { chars, histogram }
    }
}

/// The first member of a cluster.
struct Representative {
    matcher: Matcher,
    histogram: Option<Histogram>,
}

/// Per-thread state of a scan: the query's position masks (built on the first
/// pair that needs them) and a work vector.
struct ScanState {
    masks: OnceCell<PositionMasks>,
    lcs_work: Vec<u64>,
}

impl ScanState {
    fn new() -> Self {
        Self { masks: OnceCell::new(), lcs_work: Vec::new() }
    }
}

/// Whether `ratio(query, rep) >= threshold`, trying the bounds first.
fn matches(query: &Query, rep: &Representative, threshold: f64, state: &mut ScanState) -> bool {
    let (la, lb) = (query.chars.len(), rep.matcher.b.len());
    if ratio_of(la.min(lb), la, lb) < threshold {
        return false;
    }
    if let (Some(q), Some(r)) = (&query.histogram, &rep.histogram)
        && ratio_of(q.overlap(r), la, lb) < threshold
    {
        return false;
    }
    let masks = state.masks.get_or_init(|| PositionMasks::of(&query.chars));
    if ratio_of(masks.lcs(la, &rep.matcher.b, &mut state.lcs_work), la, lb) < threshold {
        return false;
    }
    rep.matcher.ratio_chars(&query.chars) >= threshold
}

/// The first of `reps[from..]` that `query` matches.
fn first_match(query: &Query, reps: &[Representative], from: usize, threshold: f64) -> Option<usize> {
    let mut state = ScanState::new();
    (from..reps.len()).find(|&c| matches(query, &reps[c], threshold, &mut state))
}

/// What is known about an exact text after its first occurrence.
#[derive(Clone, Copy)]
enum Seen {
    /// It joined this cluster: every later copy does too.
    Joined(u32),
    /// It opened this cluster: a later copy joins it if the text matches
    /// itself at the threshold, else looks further.
    Opened(u32),
}

/// GiGPO's greedy clustering: in order, each text joins the first cluster whose
/// first member `rep` satisfies `ratio(text, rep) >= threshold`, else opens a
/// new cluster. Returns the cluster index of each text (first-seen order) and
/// the number of clusters.
///
/// The result is that of [`cluster_unpruned`], computed with far fewer full
/// ratios (see the module docs) and in parallel on the rayon pool.
///
/// ```
/// use g2po::keys::similarity::cluster;
/// let (ids, n) = cluster(["the red door", "the red doors", "a blue key"], 0.9);
/// assert_eq!((ids, n), (vec![0, 0, 1], 2));
/// ```
pub fn cluster<'a>(texts: impl IntoIterator<Item = &'a str>, threshold: f64) -> (Vec<u32>, u32) {
    /// Texts per block: large enough to keep the pool busy, small enough
    /// that the in-order pass within a block stays a small share.
    const BLOCK: usize = 256;
    let texts: Vec<&str> = texts.into_iter().collect();
    cluster_in_blocks(&texts, threshold, BLOCK)
}

fn cluster_in_blocks(texts: &[&str], threshold: f64, block_len: usize) -> (Vec<u32>, u32) {
    let mut ids = vec![0u32; texts.len()];
    let mut reps: Vec<Representative> = Vec::new();
    let mut seen: AHashMap<&str, Seen> = AHashMap::new();
    // Whether a representative's own text matches it at the threshold.
    let mut self_match: Vec<Option<bool>> = Vec::new();

    for (block_start, block) in
        (0..texts.len()).step_by(block_len).map(|s| (s, &texts[s..(s + block_len).min(texts.len())]))
    {
        // The block's texts not seen before, first copies only.
        let mut fresh: Vec<usize> = Vec::new();
        {
            let mut in_block: AHashMap<&str, ()> = AHashMap::new();
            for (i, &text) in block.iter().enumerate() {
                if !seen.contains_key(text) && in_block.insert(text, ()).is_none() {
                    fresh.push(i);
                }
            }
        }
        let old = reps.len();
        let found: Vec<(Query, Option<usize>)> = fresh
            .par_iter()
            .map(|&i| {
                let query = Query::new(block[i]);
                let hit = first_match(&query, &reps[..old], 0, threshold);
                (query, hit)
            })
            .collect();
        let mut found: AHashMap<usize, (Query, Option<usize>)> = fresh.into_iter().zip(found).collect();

        for (i, &text) in block.iter().enumerate() {
            let id = match seen.get(text).copied() {
                Some(Seen::Joined(c)) => c,
                Some(Seen::Opened(c)) => {
                    let c = c as usize;
                    let matches_itself = *self_match[c].get_or_insert_with(|| {
                        let query = Query::new(text);
                        matches(&query, &reps[c], threshold, &mut ScanState::new())
                    });
                    if matches_itself {
                        c as u32
                    } else {
                        // Rare (only a threshold above a text's self-ratio):
                        // look past its own cluster like any new text.
                        let query = Query::new(text);
                        match first_match(&query, &reps, c + 1, threshold) {
                            Some(later) => later as u32,
                            None => open(&mut reps, &mut self_match, query),
                        }
                    }
                }
                None => {
                    let (query, hit) = found.remove(&i).expect("every first copy was scanned");
                    let hit = hit.or_else(|| first_match(&query, &reps, old, threshold));
                    match hit {
                        Some(c) => {
                            seen.insert(text, Seen::Joined(c as u32));
                            c as u32
                        }
                        None => {
                            let c = open(&mut reps, &mut self_match, query);
                            seen.insert(text, Seen::Opened(c));
                            c
                        }
                    }
                }
            };
            ids[block_start + i] = id;
        }
    }
    (ids, reps.len() as u32)
}

fn open(reps: &mut Vec<Representative>, self_match: &mut Vec<Option<bool>>, query: Query) -> u32 {
    let id = reps.len() as u32;
    reps.push(Representative { histogram: query.histogram, matcher: Matcher::from_chars(query.chars) });
    self_match.push(None);
    id
}

/// The definition of GiGPO's greedy clustering, with no pruning, no reuse and
/// no parallelism: every text is compared, in order, with each cluster's first
/// member until one has `ratio(text, member) >= threshold`. [`cluster`]
/// returns the same; this one is the reference it is tested against.
///
/// ```
/// use g2po::keys::similarity::{cluster, cluster_unpruned};
/// let texts = ["the red door", "the red doors", "a blue key", "the red door"];
/// assert_eq!(cluster_unpruned(texts, 0.9), cluster(texts, 0.9));
/// ```
pub fn cluster_unpruned<'a>(texts: impl IntoIterator<Item = &'a str>, threshold: f64) -> (Vec<u32>, u32) {
    let mut reps: Vec<Matcher> = Vec::new();
    let mut ids = Vec::new();
    for text in texts {
        match reps.iter().position(|rep| rep.ratio(text) >= threshold) {
            Some(c) => ids.push(c as u32),
            None => {
                ids.push(reps.len() as u32);
                reps.push(Matcher::new(text));
            }
        }
    }
    (ids, reps.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_like_difflib() {
        // Pinned against CPython 3.11 difflib.
        assert!((ratio("abcd", "bcde") - 0.75).abs() < 1e-12);
        assert!((ratio("ab", "ba") - 0.5).abs() < 1e-12);
    }

    fn naive_lcs(a: &[char], b: &[char]) -> usize {
        let mut row = vec![0usize; b.len() + 1];
        for &x in a {
            let mut diagonal = 0;
            for (j, &y) in b.iter().enumerate() {
                let above = row[j + 1];
                row[j + 1] = if x == y { diagonal + 1 } else { above.max(row[j]) };
                diagonal = above;
            }
        }
        row[b.len()]
    }

    #[test]
    fn bit_parallel_lcs_matches_the_dynamic_programme() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut work = Vec::new();
        for _ in 0..300 {
            let alphabet: Vec<char> = "ab cdé€".chars().take(rng.random_range(1..=7)).collect();
            let (la, lb) = (rng.random_range(0..200), rng.random_range(0..200));
            let mut text =
                |n: usize| -> Vec<char> { (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect() };
            let (a, b) = (text(la), text(lb));
            let masks = PositionMasks::of(&a);
            assert_eq!(masks.lcs(a.len(), &b, &mut work), naive_lcs(&a, &b), "{a:?} / {b:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Small blocks, so that texts find their match both among the
        /// representatives of earlier blocks (the parallel pass) and among
        /// those of their own block (the in-order pass).
        #[test]
        fn any_block_size_gives_the_definition(
            picks in proptest::collection::vec((0..6usize, 0..4usize), 1..30),
            block_len in 1..7usize,
            threshold in proptest::prop_oneof![0.5..1.0f64, proptest::strategy::Just(0.9)],
        ) {
            const WORDS: [&str; 6] = ["the red door", "the red doors", "a red door", "a blue key", "the blue key", "x"];
            let texts: Vec<String> = picks.iter().map(|&(w, n)| format!("{} {}", WORDS[w], "!".repeat(n))).collect();
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            proptest::prop_assert_eq!(
                cluster_in_blocks(&texts, threshold, block_len),
                cluster_unpruned(texts.iter().copied(), threshold)
            );
        }
    }

    #[test]
    fn bounds_are_ordered_and_above_the_ratio() {
        let pairs = [("abcd", "dcba"), ("kitten", "sitting"), ("", "x"), ("ééa", "aéé"), ("ab", "")];
        for (a, b) in pairs {
            let (qa, qb) = (Query::new(a), Query::new(b));
            let m = Matcher::new(b);
            let exact = m.matching_size(&qa.chars);
            let lcs = PositionMasks::of(&qa.chars).lcs(qa.chars.len(), &qb.chars, &mut Vec::new());
            let hist = qa.histogram.as_ref().unwrap().overlap(qb.histogram.as_ref().unwrap());
            assert!(exact <= lcs && lcs <= hist && hist <= qa.chars.len().min(qb.chars.len()), "{a} {b}");
        }
    }
}
