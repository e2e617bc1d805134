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
//!   histograms (its `quick_ratio`; non-ASCII code points share the 32
//!   control-character buckets, which can only raise the overlap), and the
//!   longest common subsequence (bit-parallel, restricted to the diagonal
//!   band a matching of the needed size must stay in, after the texts'
//!   common prefix and suffix, abandoned once it can no longer reach that
//!   size; at GiGPO's thresholds the band fits one or two machine words,
//!   which slide along the diagonal, a few instructions per column). The
//!   bounds' results are memoised per query where they repeat (the needed
//!   size per representative length). Each bound is
//!   compared with the fewest matches whose ratio, in the same floating-point
//!   expression, reaches the threshold, so "bound too small" implies
//!   "ratio < threshold" exactly.
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

/// The fewest matched code points with which `len_a` and `len_b` reach
/// `threshold` (`None` if even `min(len_a, len_b)` does not). Every bound
/// below is compared with it: `ratio_of` grows with the matched count, so
/// "bound < need" is exactly "ratio from the bound < threshold".
fn needed_matches(len_a: usize, len_b: usize, threshold: f64) -> Option<usize> {
    let most = len_a.min(len_b);
    let guess = (threshold * (len_a + len_b) as f64 / 2.0).ceil();
    let mut need = if guess.is_nan() { most + 1 } else { guess.clamp(0.0, (most + 1) as f64) as usize };
    while need > 0 && ratio_of(need - 1, len_a, len_b) >= threshold {
        need -= 1;
    }
    while need <= most && ratio_of(need, len_a, len_b) < threshold {
        need += 1;
    }
    (need <= most).then_some(need)
}

/// Histogram buckets: one per ASCII code point; the rest share the 32
/// control-character buckets, which can only raise an overlap.
const BUCKETS: usize = 128;

fn bucket(c: char) -> usize {
    let c = c as usize;
    if c < 128 { c } else { c % 32 }
}

/// Code-point counts by bucket, in bytes when every count fits (the common
/// case, and four times cheaper to compare), else in `u16`. Absent for texts
/// so long that a count could overflow `u16`; those pairs skip this bound.
#[derive(Debug, Clone)]
enum Histogram {
    /// Inline, so that a scan over representatives reads them in sequence.
    Narrow([u8; BUCKETS]),
    Wide(Box<[u16; BUCKETS]>),
}

impl Histogram {
    fn of(chars: &[char]) -> Option<Self> {
        if chars.len() > u16::MAX as usize {
            return None;
        }
        let mut counts = Box::new([0u16; BUCKETS]);
        for &c in chars {
            counts[bucket(c)] += 1;
        }
        if counts.iter().all(|&n| n <= u16::from(u8::MAX)) {
            Some(Histogram::Narrow(counts.map(|n| n as u8)))
        } else {
            Some(Histogram::Wide(counts))
        }
    }

    fn wide(&self) -> [u16; BUCKETS] {
        match self {
            Histogram::Narrow(counts) => counts.map(u16::from),
            Histogram::Wide(counts) => **counts,
        }
    }

    /// An upper bound of the number of code points the two texts can match
    /// (difflib's `quick_ratio` numerator, for ASCII exactly).
    fn overlap(&self, other: &Self) -> usize {
        match (self, other) {
            // 128 counts of at most 255 fit a u16 sum, which vectorises
            // better than a u32 one.
            (Histogram::Narrow(x), Histogram::Narrow(y)) => {
                x.iter().zip(y.iter()).map(|(&x, &y)| u16::from(x.min(y))).sum::<u16>() as usize
            }
            _ => {
                let (x, y) = (self.wide(), other.wide());
                x.iter().zip(y.iter()).map(|(&x, &y)| u32::from(x.min(y))).sum::<u32>() as usize
            }
        }
    }
}

/// Zero words stored before each row of position masks: a band window may
/// start up to 127 positions before position 0.
const PAD_WORDS: usize = 2;
const PAD_BITS: usize = 64 * PAD_WORDS;
/// Zero words stored after each row: a window starts before position
/// `len_a` (at column `j < len_b` it starts at `j - below < need <= len_a`)
/// and reads at most 192 bits from there.
const TAIL_WORDS: usize = 4;

/// Bit masks of a text's positions per code point, for a bit-parallel
/// longest common subsequence (Allison and Dix; Hyyrö's formulation) kept to
/// the diagonal band that any matching of the needed size must stay in.
struct PositionMasks {
    /// Words covering the text's positions.
    words: usize,
    /// Words per row: the positions with their zero padding on both sides.
    stride: usize,
    /// Row of masks per code point; row 0 is all zeros (code points absent
    /// from the text).
    masks: Vec<u64>,
    ascii: [u32; 128],
    other: AHashMap<char, u32>,
}

impl PositionMasks {
    fn of(chars: &[char]) -> Self {
        let words = chars.len().div_ceil(64);
        let stride = PAD_WORDS + words + TAIL_WORDS;
        let mut table = Self { words, stride, masks: vec![0; stride], ascii: [0; 128], other: AHashMap::new() };
        for (i, &c) in chars.iter().enumerate() {
            let row = match table.row(c) {
                0 => {
                    let next = (table.masks.len() / stride) as u32;
                    table.masks.resize(table.masks.len() + stride, 0);
                    if (c as usize) < 128 {
                        table.ascii[c as usize] = next;
                    } else {
                        table.other.insert(c, next);
                    }
                    next
                }
                row => row,
            };
            let bit = PAD_BITS + i;
            table.masks[row as usize * stride + bit / 64] |= 1 << (bit % 64);
        }
        table
    }

    #[inline]
    fn row(&self, c: char) -> u32 {
        if (c as usize) < 128 { self.ascii[c as usize] } else { self.other.get(&c).copied().unwrap_or(0) }
    }

    /// The padded row of code point `c`'s positions (bit `PAD_BITS + i` is
    /// position `i`).
    #[inline]
    fn padded_row(&self, c: char) -> &[u64] {
        let row = self.row(c) as usize;
        &self.masks[row * self.stride..(row + 1) * self.stride]
    }

    /// An upper bound of difflib's matches between the masked text `a` and
    /// `b`, or some value below `need` as soon as the bound can no longer
    /// reach `need`.
    ///
    /// The bound is the longest common subsequence kept to the band that any
    /// matching of `need` or more stays in (see [`Self::banded_lcs`]),
    /// computed after taking away the texts' common prefix and suffix: an
    /// LCS matches a common prefix diagonally, so the state after it is
    /// known, and each of the last `suffix` columns adds at most one. The
    /// band is one or two machine words wide at the thresholds GiGPO uses
    /// (under 64 positions at 0.9 for texts of 300 code points), so it is
    /// kept in a window that slides down one position per column, a few
    /// instructions each; wider bands take the word-by-word form.
    fn lcs_bound(&self, a: &[char], b: &[char], need: usize, work: &mut Vec<u64>) -> usize {
        let (la, lb) = (a.len(), b.len());
        let most = la.min(lb);
        let prefix = common_prefix(a, b);
        let suffix = common_suffix(&a[prefix..], &b[prefix..]);
        if prefix + suffix >= need {
            return most;
        }
        let (above, below) = (la - need, lb - need);
        let bound = match above + below + 1 {
            w if w <= 64 => self.windowed_lcs::<u64>(b, above, below, prefix, lb - suffix, need - suffix) + suffix,
            w if w <= 128 => self.windowed_lcs::<u128>(b, above, below, prefix, lb - suffix, need - suffix) + suffix,
            _ => self.banded_lcs(la, b, above, below, need, work),
        };
        bound.min(most)
    }

    /// The banded LCS of `a` and `b[..end]` (pairs with
    /// `j - below <= i <= j + above`) given that `a[..prefix] == b[..prefix]`,
    /// with the band in one window word `W`; or, once the count can no longer
    /// reach `need`, some value below `need`.
    ///
    /// Window bit `k` at column `j` is position `j - below + k`. A position
    /// leaving the bottom of the window never changes again (no later column
    /// may pair it, and nothing below it carries), so it is counted then; the
    /// bits above the band are ones (no pair yet), and a carry into them
    /// passes out of the top as in the full-width form.
    fn windowed_lcs<W: BandWord>(
        &self,
        b: &[char],
        above: usize,
        below: usize,
        prefix: usize,
        end: usize,
        need: usize,
    ) -> usize {
        // A window starts before `len_a` (see `TAIL_WORDS`): `end <= len_a + below`.
        debug_assert!(above + below < W::BITS as usize && below < PAD_BITS && prefix <= end);
        let band = W::low_ones(above + below + 1);
        // After the prefix's columns the LCS table holds min(i, prefix): the
        // prefix's positions are matches, the rest not. Those below the
        // window are already counted.
        let mut settled = prefix.saturating_sub(below);
        let mut window = W::ONES & !(W::low_ones(below) & !W::low_ones(below.saturating_sub(prefix)));
        // Rows are read from the whole table: bit `row * stride * 64 + PAD_BITS + i`
        // is position `i` of that row's code point.
        let row_bits = 64 * self.stride;
        for (j, &c) in b.iter().enumerate().take(end).skip(prefix) {
            let bit = self.row(c) as usize * row_bits + PAD_BITS + j - below;
            let matches = W::read(&self.masks, bit) & band;
            let u = window & matches;
            window = window.wrapping_add(u) | (window & !matches);
            settled += usize::from(window.low_bit_clear());
            window = window.shift_in_one();
            // Each remaining column adds at most one.
            if j % 8 == 7 && settled + window.zeros() + (end - 1 - j) < need {
                return 0;
            }
        }
        settled + window.zeros()
    }

    /// The longest common subsequence of the masked text `a` (of `len_a`
    /// code points) and `b` that pairs `a[i]` with `b[j]` only for
    /// `j - below <= i <= j + above`; or, as soon as the count can no longer
    /// reach `need`, some value below `need`.
    ///
    /// Why the band: in a common subsequence of size `m`, the `r`-th pair
    /// `(i, j)` has `i - r` unmatched positions of `a` before it and `j - r`
    /// of `b`, so `-(len_b - m) <= i - j <= len_a - m`. With `m >= need`,
    /// `above = len_a - need` and `below = len_b - need` keep every pair, so
    /// the banded count still bounds difflib's matches from above.
    ///
    /// Only the words under the band are updated. Below it, bits no longer
    /// change (no match, and no carry comes up from further below); above
    /// it, bits are still all ones, so a carry leaving the band passes
    /// through them and out of the top, leaving them as they were.
    fn banded_lcs(&self, len_a: usize, b: &[char], above: usize, below: usize, need: usize, v: &mut Vec<u64>) -> usize {
        if len_a == 0 || b.is_empty() {
            return 0;
        }
        v.clear();
        v.resize(self.words, !0);
        let lcs_in = |v: &[u64], from: usize, to: usize| -> usize {
            v[from..=to].iter().map(|w| w.count_zeros() as usize).sum::<usize>()
        };
        // Matches in the words that have left the band.
        let mut settled = 0;
        let mut settled_words = 0;
        for (j, &c) in b.iter().enumerate() {
            let first = j.saturating_sub(below);
            if first >= len_a {
                break;
            }
            let last = (j + above).min(len_a - 1);
            let (lo, hi) = (first / 64, last / 64);
            while settled_words < lo {
                settled += v[settled_words].count_zeros() as usize;
                settled_words += 1;
            }
            if self.row(c) != 0 {
                let masks = &self.padded_row(c)[PAD_WORDS..PAD_WORDS + self.words];
                let mut carry = 0u64;
                for w in lo..=hi {
                    let band = band_mask(w, first, last);
                    let m = masks[w] & band;
                    let vw = v[w];
                    let u = vw & m;
                    let (sum, c1) = vw.overflowing_add(u);
                    let (sum, c2) = sum.overflowing_add(carry);
                    carry = u64::from(c1 | c2);
                    v[w] = sum | (vw & !m);
                }
            }
            // Each remaining column adds at most one.
            if j % 16 == 15 && settled + lcs_in(v, lo, hi) + (b.len() - 1 - j) < need {
                return 0;
            }
        }
        // Padding bits above `len_a` stay ones: zeros are matches.
        settled + lcs_in(v, settled_words, self.words - 1)
    }
}

/// The length of the common prefix, compared eight code points at a time.
fn common_prefix(a: &[char], b: &[char]) -> usize {
    let most = a.len().min(b.len());
    let mut n = 0;
    while n + 8 <= most && a[n..n + 8] == b[n..n + 8] {
        n += 8;
    }
    while n < most && a[n] == b[n] {
        n += 1;
    }
    n
}

/// The length of the common suffix.
fn common_suffix(a: &[char], b: &[char]) -> usize {
    a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count()
}

/// A machine word that holds the band window of [`PositionMasks::windowed_lcs`].
trait BandWord:
    Copy + std::ops::BitAnd<Output = Self> + std::ops::BitOr<Output = Self> + std::ops::Not<Output = Self>
{
    const BITS: u32;
    const ONES: Self;
    /// The `n` lowest bits set (`n <= BITS`).
    fn low_ones(n: usize) -> Self;
    /// Bits `bit..bit + BITS` of a row of words.
    fn read(row: &[u64], bit: usize) -> Self;
    fn wrapping_add(self, other: Self) -> Self;
    fn low_bit_clear(self) -> bool;
    /// Shifted down one position, a one entering at the top.
    fn shift_in_one(self) -> Self;
    fn zeros(self) -> usize;
}

/// Bits `bit..bit + 64` of a row of words (one double-word shift, no branch).
#[inline]
fn read_u64(row: &[u64], bit: usize) -> u64 {
    let k = bit / 64;
    let pair = u128::from(row[k]) | (u128::from(row[k + 1]) << 64);
    (pair >> (bit % 64)) as u64
}

/// The two window words differ only in width and in how a window is read.
macro_rules! band_word {
    ($word:ty, $read:expr) => {
        impl BandWord for $word {
            const BITS: u32 = <$word>::BITS;
            const ONES: Self = !0;
            fn low_ones(n: usize) -> Self {
                if n >= Self::BITS as usize { !0 } else { (1 << n) - 1 }
            }
            fn read(row: &[u64], bit: usize) -> Self {
                $read(row, bit)
            }
            fn wrapping_add(self, other: Self) -> Self {
                <$word>::wrapping_add(self, other)
            }
            fn low_bit_clear(self) -> bool {
                self & 1 == 0
            }
            fn shift_in_one(self) -> Self {
                (self >> 1) | (1 << (Self::BITS - 1))
            }
            fn zeros(self) -> usize {
                self.count_zeros() as usize
            }
        }
    };
}

band_word!(u64, read_u64);
band_word!(u128, |row: &[u64], bit: usize| u128::from(read_u64(row, bit))
    | (u128::from(read_u64(row, bit + 64)) << 64));

/// Ones at the positions `first..=last` that fall in word `w`.
fn band_mask(w: usize, first: usize, last: usize) -> u64 {
    let (lo, hi) = (first.max(w * 64) - w * 64, last.min(w * 64 + 63) - w * 64);
    let upto = if hi == 63 { !0 } else { (1u64 << (hi + 1)) - 1 };
    upto & !((1u64 << lo) - 1)
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
    /// `needed_matches` for the query and each representative length (the
    /// threshold is fixed for a scan): [`NEED_UNKNOWN`], [`NEED_NONE`] or the
    /// count.
    need_by_len: Vec<u32>,
}

const NEED_UNKNOWN: u32 = u32::MAX;
const NEED_NONE: u32 = u32::MAX - 1;

impl ScanState {
    fn new() -> Self {
        Self { masks: OnceCell::new(), lcs_work: Vec::new(), need_by_len: Vec::new() }
    }

    /// [`needed_matches`], computed once per representative length.
    fn needed_matches(&mut self, len_a: usize, len_b: usize, threshold: f64) -> Option<usize> {
        if len_b >= self.need_by_len.len() {
            if len_b > u16::MAX as usize {
                return needed_matches(len_a, len_b, threshold);
            }
            self.need_by_len.resize(len_b + 1, NEED_UNKNOWN);
        }
        let memo = &mut self.need_by_len[len_b];
        if *memo == NEED_UNKNOWN {
            *memo = needed_matches(len_a, len_b, threshold).map_or(NEED_NONE, |n| n as u32);
        }
        (*memo != NEED_NONE).then_some(*memo as usize)
    }
}

/// Whether `ratio(query, rep) >= threshold`, trying the bounds first.
fn matches(query: &Query, rep: &Representative, threshold: f64, state: &mut ScanState) -> bool {
    let (la, lb) = (query.chars.len(), rep.matcher.b.len());
    // Also the length bound (difflib's real_quick_ratio).
    let Some(need) = state.needed_matches(la, lb, threshold) else {
        return false;
    };
    if let (Some(q), Some(r)) = (&query.histogram, &rep.histogram)
        && q.overlap(r) < need
    {
        return false;
    }
    let masks = state.masks.get_or_init(|| PositionMasks::of(&query.chars));
    if masks.lcs_bound(&query.chars, &rep.matcher.b, need, &mut state.lcs_work) < need {
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

    /// The longest common subsequence pairing a[i] with b[j] only inside the band.
    fn naive_banded_lcs(a: &[char], b: &[char], above: usize, below: usize) -> usize {
        let mut table = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for i in 0..a.len() {
            for j in 0..b.len() {
                let in_band = i <= j + above && j <= i + below;
                let diagonal = if in_band && a[i] == b[j] { table[i][j] + 1 } else { 0 };
                table[i + 1][j + 1] = diagonal.max(table[i][j + 1]).max(table[i + 1][j]);
            }
        }
        table[a.len()][b.len()]
    }

    #[test]
    fn banded_lcs_matches_the_dynamic_programme_and_bounds_difflib() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut work = Vec::new();
        for case in 0..400 {
            let alphabet: Vec<char> = "ab cdé€xyz".chars().take(rng.random_range(1..=10)).collect();
            let (la, lb) = (rng.random_range(0..300), rng.random_range(0..300));
            let (above, below) = (rng.random_range(0..la.max(1) + 5), rng.random_range(0..lb.max(1) + 5));
            let mut text =
                |n: usize| -> Vec<char> { (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect() };
            let a = text(la);
            // b: a copy of a with a few edits, or an unrelated text.
            let mut b = if case % 2 == 0 { a.clone() } else { text(lb) };
            for _ in 0..rng.random_range(0..6) {
                let i = rng.random_range(0..=b.len());
                if i < b.len() && rng.random_bool(0.5) {
                    b.remove(i);
                } else {
                    b.insert(i, alphabet[rng.random_range(0..alphabet.len())]);
                }
            }
            let masks = PositionMasks::of(&a);
            // need = 0 never stops early: the exact banded count.
            let want = naive_banded_lcs(&a, &b, above, below);
            assert_eq!(masks.banded_lcs(a.len(), &b, above, below, 0, &mut work), want, "case {case}");
            // With the band of a needed size, difflib's matches are never above it.
            let matched = Matcher::from_chars(b.clone()).matching_size(&a);
            for need in [matched / 2, matched, matched + 1] {
                if need > a.len().min(b.len()) {
                    continue;
                }
                let bound = masks.banded_lcs(a.len(), &b, a.len() - need, b.len() - need, need, &mut work);
                if matched >= need {
                    assert!(bound >= matched, "case {case}: need {need}, matched {matched}, bound {bound}");
                }
            }
        }
    }

    #[test]
    fn windowed_lcs_matches_the_dynamic_programme_after_a_common_prefix() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for case in 0..2000 {
            let alphabet: Vec<char> = "ab cdé€xyz".chars().take(rng.random_range(1..=10)).collect();
            let la = rng.random_range(0..260);
            let a: Vec<char> = (0..la).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            // b shares a's first `prefix` code points, then a few edits or
            // unrelated text.
            let prefix = rng.random_range(0..=la);
            let mut b: Vec<char> = a[..prefix].to_vec();
            if case % 2 == 0 {
                b.extend_from_slice(&a[prefix..]);
                for _ in 0..rng.random_range(0..6) {
                    let i = rng.random_range(prefix..=b.len());
                    if i < b.len() && rng.random_bool(0.5) {
                        b.remove(i);
                    } else {
                        b.insert(i, alphabet[rng.random_range(0..alphabet.len())]);
                    }
                }
            } else {
                let extra = rng.random_range(0..200);
                b.extend((0..extra).map(|_| alphabet[rng.random_range(0..alphabet.len())]));
            }
            let prefix = common_prefix(&a, &b).min(prefix);
            let width = rng.random_range(1..=128usize);
            let below = rng.random_range(0..width);
            let above = width - 1 - below;
            // Within the contract: windows start before the end of `a`.
            let end = rng.random_range(prefix..=b.len().min(la + below).max(prefix));
            let masks = PositionMasks::of(&a);
            let want = naive_banded_lcs(&a, &b[..end], above, below);
            let got = if width <= 64 && case % 3 != 0 {
                masks.windowed_lcs::<u64>(&b, above, below, prefix, end, 0)
            } else {
                masks.windowed_lcs::<u128>(&b, above, below, prefix, end, 0)
            };
            assert_eq!(
                got,
                want,
                "case {case}: la {la} lb {} prefix {prefix} end {end} above {above} below {below}",
                b.len()
            );
        }
    }

    #[test]
    fn lcs_bound_bounds_difflib_or_falls_below_need() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut work = Vec::new();
        for case in 0..1500 {
            let alphabet: Vec<char> = "ab cdé€xyz".chars().take(rng.random_range(1..=10)).collect();
            let la = rng.random_range(0..400);
            let a: Vec<char> = (0..la).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let mut b = a.clone();
            for _ in 0..rng.random_range(0..40) {
                let i = rng.random_range(0..=b.len());
                if i < b.len() && rng.random_bool(0.5) {
                    b.remove(i);
                } else {
                    b.insert(i, alphabet[rng.random_range(0..alphabet.len())]);
                }
            }
            let matched = Matcher::from_chars(b.clone()).matching_size(&a);
            let masks = PositionMasks::of(&a);
            // Needs across the three widths: one word, two words, wider.
            for need in [
                matched.saturating_sub(100),
                matched.saturating_sub(40),
                matched.saturating_sub(3),
                matched,
                matched + 1,
            ] {
                if need > la.min(b.len()) {
                    continue;
                }
                let bound = masks.lcs_bound(&a, &b, need, &mut work);
                if matched >= need {
                    assert!(bound >= matched, "case {case}: need {need}, matched {matched}, bound {bound}");
                }
                assert!(bound <= la.min(b.len()), "case {case}");
            }
        }
    }

    #[test]
    fn needed_matches_is_the_exact_threshold_of_the_ratio() {
        for (la, lb) in [(0, 0), (1, 0), (278, 281), (7, 3), (1000, 999)] {
            for t in [0.0, 0.3, 0.9, 0.95, 0.999, 1.0, 1.5, f64::NAN, -1.0] {
                let want = (0..=la.min(lb)).find(|&m| ratio_of(m, la, lb) >= t);
                assert_eq!(needed_matches(la, lb, t), want, "{la} {lb} {t}");
            }
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
            let (la, lb) = (qa.chars.len(), qb.chars.len());
            let lcs = PositionMasks::of(&qa.chars).banded_lcs(la, &qb.chars, la, lb, 0, &mut Vec::new());
            let hist = qa.histogram.as_ref().unwrap().overlap(qb.histogram.as_ref().unwrap());
            assert!(exact <= lcs && lcs <= hist && hist <= la.min(lb), "{a} {b}");
        }
        // Counts over 255 take the wide histogram.
        let long = "a".repeat(300) + "b";
        let (x, y) = (Query::new(&long), Query::new("aab"));
        assert!(matches!(x.histogram, Some(Histogram::Wide(_))));
        assert_eq!(x.histogram.as_ref().unwrap().overlap(y.histogram.as_ref().unwrap()), 3);
    }
}
