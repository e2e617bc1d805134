//! Similarity of observation texts with the exact semantics of Python's
//! `difflib.SequenceMatcher(None, a, b).ratio()`, which GiGPO's similarity
//! mode uses.
//!
//! Exactness matters more than elegance here: a threshold of 0.95 sits close
//! to typical ratios, so every detail of difflib is kept — sequences of
//! Unicode code points; the "autojunk" rule (when `b` has 200 or more
//! elements, an element occurring more than `len(b) / 100 + 1` times is
//! "popular" and cannot start a match, though matches may still be extended
//! over it); the longest match chosen with the smallest `i`, then the smallest
//! `j`; and the recursion on both sides of each match. The ratio is
//! `2 * M / (len(a) + len(b))` with `M` the total size of the matching blocks.

use ahash::AHashMap;

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
        let b: Vec<char> = b.chars().collect();
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
        let total = a.len() + self.b.len();
        if total == 0 {
            return 1.0;
        }
        2.0 * self.matching_size(&a) as f64 / total as f64
    }

    /// Total size of difflib's matching blocks between `a` and `b`.
    fn matching_size(&self, a: &[char]) -> usize {
        let mut scratch = Scratch {
            j2len: vec![0; self.b.len() + 1],
            new_j2len: vec![0; self.b.len() + 1],
            touched: Vec::new(),
            new_touched: Vec::new(),
        };
        let mut queue = vec![(0, a.len(), 0, self.b.len())];
        let mut matched = 0;
        while let Some((alo, ahi, blo, bhi)) = queue.pop() {
            let (i, j, k) = self.longest_match(a, alo, ahi, blo, bhi, &mut scratch);
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
    fn longest_match(
        &self,
        a: &[char],
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
        for (i, element) in a.iter().enumerate().take(ahi).skip(alo) {
            s.new_touched.clear();
            if let Some(positions) = self.b2j.get(element) {
                for &j in positions {
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

/// GiGPO's greedy clustering: in order, each text joins the first cluster whose
/// first member `rep` satisfies `ratio(text, rep) >= threshold`, else opens a
/// new cluster. Returns the cluster index of each text (first-seen order) and
/// the number of clusters.
///
/// ```
/// use g2po::keys::similarity::cluster;
/// let (ids, n) = cluster(["the red door", "the red doors", "a blue key"], 0.9);
/// assert_eq!((ids, n), (vec![0, 0, 1], 2));
/// ```
pub fn cluster<'a>(texts: impl IntoIterator<Item = &'a str>, threshold: f64) -> (Vec<u32>, u32) {
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
}
