//! State keys: 64-bit identities of anchor observations.
//!
//! Two rows are the same state when their keys are equal. Keys come from the
//! anchor text, first passed through a chain of [`Canonicalize`] steps (real
//! environments print move counters and turn numbers that would otherwise make
//! every state unique), then hashed.
//!
//! ## The key function
//!
//! `key(text) = XXH3_64(canonical(text).as_bytes(), seed = 0)`: the 64-bit
//! XXH3 hash (xxHash's published specification, `XXH3_64bits`) of the UTF-8
//! bytes of the canonicalised text, with the default secret and seed 0. It
//! does not depend on the build, the target's CPU features, the process or
//! the platform's endianness, so the workers of a distributed trainer agree,
//! and any language with an XXH3 binding computes the same key (in Python:
//! `xxhash.xxh3_64_intdigest(text.encode("utf-8"))`, pinned in this module's
//! tests and in the Python package's). ahash is used only for in-memory hash
//! maps, whose values never leave a process. Callers that know their states
//! exactly can skip all this and supply keys themselves
//! ([`crate::Anchor::Key`]).
//!
//! For near-identical observations GiGPO also offers similarity grouping,
//! implemented in [`similarity`] with the semantics of Python's
//! `difflib.SequenceMatcher.ratio`.

pub mod similarity;

use std::borrow::Cow;

use rayon::prelude::*;

use crate::rollout::{Anchor, RolloutBatch};

/// Rewrites observation text into a canonical form before hashing.
///
/// Implementations must be pure: the same input always gives the same output.
///
/// ```
/// use std::borrow::Cow;
/// use g2po::keys::Canonicalize;
/// struct Lowercase;
/// impl Canonicalize for Lowercase {
///     fn canonicalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
///         Cow::Owned(text.to_lowercase())
///     }
/// }
/// assert_eq!(Lowercase.canonicalize("Kitchen"), "kitchen");
/// ```
pub trait Canonicalize: Send + Sync {
    /// The canonical form of `text` (borrowed when nothing changes).
    fn canonicalize<'a>(&self, text: &'a str) -> Cow<'a, str>;
}

/// Collapses every run of whitespace into one space and trims both ends.
///
/// ```
/// use g2po::keys::{Canonicalize, CollapseWhitespace};
/// assert_eq!(CollapseWhitespace.canonicalize("  a \n\t b "), "a b");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CollapseWhitespace;

impl Canonicalize for CollapseWhitespace {
    fn canonicalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let already = !text.starts_with(char::is_whitespace)
            && !text.ends_with(char::is_whitespace)
            && !text.as_bytes().windows(2).any(|w| w[0].is_ascii_whitespace() && w[1].is_ascii_whitespace())
            && !text.chars().any(|c| c.is_whitespace() && c != ' ');
        if already {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        for word in text.split_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
        Cow::Owned(out)
    }
}

/// Removes an "At turn N" / "Turn N:" prefix (AgentGym, BabyAI-style prompts).
///
/// ```
/// use g2po::keys::{Canonicalize, StripTurnPrefix};
/// assert_eq!(StripTurnPrefix.canonicalize("At turn 12, you see a door."), "you see a door.");
/// assert_eq!(StripTurnPrefix.canonicalize("Turn 3: a key"), "a key");
/// assert_eq!(StripTurnPrefix.canonicalize("no prefix"), "no prefix");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct StripTurnPrefix;

impl Canonicalize for StripTurnPrefix {
    fn canonicalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let trimmed = text.trim_start();
        let rest = trimmed
            .strip_prefix("At turn ")
            .or_else(|| trimmed.strip_prefix("at turn "))
            .or_else(|| trimmed.strip_prefix("Turn "));
        let Some(rest) = rest else {
            return Cow::Borrowed(text);
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Cow::Borrowed(text);
        }
        let rest = rest[digits..].trim_start_matches([',', ':', '.']).trim_start();
        Cow::Borrowed(rest)
    }
}

/// Removes TextWorld-style status counters: `Moves: N`, `Score: N`,
/// `Score: N/M`, and the `N/M` score on a `-= Room =-` header line, wherever
/// they appear.
///
/// ```
/// use g2po::keys::{Canonicalize, StripMoveCounter};
/// let a = StripMoveCounter.canonicalize("-= Kitchen =-  0/3\nScore: 0  Moves: 7\nYou see a fridge.");
/// let b = StripMoveCounter.canonicalize("-= Kitchen =-  0/3\nScore: 0  Moves: 12\nYou see a fridge.");
/// assert_eq!(a, b);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct StripMoveCounter;

impl StripMoveCounter {
    /// Length of a `N` or `N/M` number at the start of `s` (0 if none).
    fn counter_len(s: &str) -> usize {
        let bytes = s.as_bytes();
        let mut i = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        if i > 0 && bytes.get(i) == Some(&b'/') {
            let more = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if more > 0 {
                i += 1 + more;
            }
        }
        i
    }
}

impl Canonicalize for StripMoveCounter {
    fn canonicalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
        const LABELS: [&str; 3] = ["Moves:", "Score:", "=-"];
        if !LABELS.iter().any(|l| text.contains(l)) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some((pos, label)) =
            LABELS.iter().filter_map(|l| rest.find(l).map(|p| (p, *l))).min_by_key(|&(p, _)| p)
        {
            out.push_str(&rest[..pos + label.len()]);
            let after = &rest[pos + label.len()..];
            let spaces = after.len() - after.trim_start_matches([' ', '\t']).len();
            let n = Self::counter_len(&after[spaces..]);
            if n > 0 {
                out.push_str(" #");
                rest = &after[spaces + n..];
            } else {
                rest = after;
            }
        }
        out.push_str(rest);
        Cow::Owned(out)
    }
}

/// Turns anchor text into state keys: a chain of canonicalisers, then XXH3-64
/// of the UTF-8 bytes (see the [module docs](self) for the exact function).
///
/// ```
/// use g2po::keys::{StateKeyer, StripTurnPrefix};
/// let plain = StateKeyer::new();
/// assert_eq!(plain.key("a room"), plain.key("a room"));
/// assert_ne!(plain.key("At turn 1, a room"), plain.key("At turn 2, a room"));
/// let keyer = StateKeyer::new().with(StripTurnPrefix);
/// assert_eq!(keyer.key("At turn 1, a room"), keyer.key("At turn 2, a room"));
/// ```
pub struct StateKeyer {
    steps: Vec<Box<dyn Canonicalize>>,
}

impl Default for StateKeyer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StateKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateKeyer").field("canonicalizers", &self.steps.len()).finish()
    }
}

impl StateKeyer {
    /// A keyer that hashes text as it is.
    ///
    /// ```
    /// let k = g2po::keys::StateKeyer::new();
    /// assert_ne!(k.key("a"), k.key("b"));
    /// ```
    pub fn new() -> Self {
        Self { steps: Vec::new() }
    }

    /// The keyer for text environments: turn prefixes and move counters
    /// stripped, whitespace collapsed.
    ///
    /// ```
    /// let k = g2po::keys::StateKeyer::text_env();
    /// assert_eq!(k.key("At turn 3:  Moves: 4 hall"), k.key("At turn 9: Moves: 10 hall"));
    /// ```
    pub fn text_env() -> Self {
        Self::new().with(StripTurnPrefix).with(StripMoveCounter).with(CollapseWhitespace)
    }

    /// Appends a canonicalisation step (steps run in the order added).
    ///
    /// ```
    /// use g2po::keys::{CollapseWhitespace, StateKeyer};
    /// let k = StateKeyer::new().with(CollapseWhitespace);
    /// assert_eq!(k.key("a  b"), k.key("a b"));
    /// ```
    pub fn with(mut self, step: impl Canonicalize + 'static) -> Self {
        self.steps.push(Box::new(step));
        self
    }

    /// The canonical form of `text` after every step.
    ///
    /// ```
    /// let k = g2po::keys::StateKeyer::text_env();
    /// assert_eq!(k.canonical("At turn 2,   go"), "go");
    /// ```
    pub fn canonical<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut current = Cow::Borrowed(text);
        for step in &self.steps {
            current = match current {
                Cow::Borrowed(t) => step.canonicalize(t),
                Cow::Owned(t) => Cow::Owned(step.canonicalize(&t).into_owned()),
            };
        }
        current
    }

    /// The key of one text.
    ///
    /// ```
    /// let k = g2po::keys::StateKeyer::new();
    /// assert_eq!(k.key("same"), g2po::keys::StateKeyer::new().key("same"));
    /// ```
    pub fn key(&self, text: &str) -> u64 {
        if self.steps.is_empty() { hash_text(text) } else { hash_text(self.canonical(text).as_ref()) }
    }

    /// The key of every row of a batch: its own keys, or its texts hashed in
    /// parallel. Borrowed when the batch already holds keys.
    ///
    /// ```
    /// let batch = g2po::doc_batch();
    /// let keys = g2po::keys::StateKeyer::new().batch_keys(&batch);
    /// assert_eq!(keys[0], keys[2]); // both trajectories start in the hall
    /// ```
    pub fn batch_keys<'b>(&self, batch: &'b RolloutBatch) -> Cow<'b, [u64]> {
        if let Some(keys) = batch.keys() {
            return Cow::Borrowed(keys);
        }
        let keys = (0..batch.len())
            .into_par_iter()
            .with_min_len(1024)
            .map(|row| match batch.anchor(row) {
                Anchor::Text(text) => self.key(text),
                Anchor::Key(key) => key,
            })
            .collect();
        Cow::Owned(keys)
    }
}

/// XXH3-64 (seed 0) of the text's UTF-8 bytes: the key of text that needs no
/// canonicalisation.
///
/// ```
/// // The same value as Python's `xxhash.xxh3_64_intdigest(b"hall")`.
/// assert_eq!(g2po::keys::hash_text("hall"), 0xa1c2_97bb_18c8_2007);
/// ```
pub fn hash_text(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_xxh3_of_the_utf8_bytes() {
        // Values from a second implementation (the Python `xxhash` package
        // 4.1.0, `xxh3_64_intdigest(text.encode())`), one per XXH3 length
        // class (0, 4-8, 9-16, 17-128, 129-240, > 240 bytes) plus non-ASCII
        // text. A change here would silently split states between trainers
        // and stored batches.
        let pinned: [(String, u64); 7] = [
            (String::new(), 0x2d06_8005_38d3_94c2),
            ("hall".into(), 0xa1c2_97bb_18c8_2007),
            ("kitchen 12".into(), 0xb8c2_1a63_327b_c0a8),
            ("You are in the kitchen.".into(), 0x857c_d789_cdcf_1096),
            ("Ä café — naïve 🤖".into(), 0xd6e6_29d1_d3a6_bd23),
            ("y".repeat(200), 0x78c5_ae5c_f7b1_237e),
            ("x".repeat(300), 0xa5d1_b460_7dc8_3554),
        ];
        let keyer = StateKeyer::new();
        for (text, key) in &pinned {
            assert_eq!(keyer.key(text), *key, "{text:?}");
        }
        // Canonicalised text hashes like the canonical form itself.
        let env = StateKeyer::new().with(StripTurnPrefix);
        assert_eq!(env.key("At turn 3, hall"), 0xa1c2_97bb_18c8_2007);
        assert_ne!(keyer.key("You are in the kitchen."), keyer.key("You are in the kitchen!"));
    }

    #[test]
    fn move_counter_variants() {
        let c = StripMoveCounter;
        assert_eq!(c.canonicalize("Score: 3/10 Moves: 5"), c.canonicalize("Score: 4/10 Moves: 9"));
        assert_eq!(c.canonicalize("nothing here"), "nothing here");
        // A label without a number is left alone.
        assert_eq!(c.canonicalize("Moves: none"), "Moves: none");
    }

    #[test]
    fn whitespace_borrowed_when_clean() {
        assert!(matches!(CollapseWhitespace.canonicalize("a b c"), Cow::Borrowed(_)));
        assert_eq!(CollapseWhitespace.canonicalize("a\u{a0}\u{a0}b"), "a b");
    }

    #[test]
    fn turn_prefix_needs_digits() {
        assert_eq!(StripTurnPrefix.canonicalize("At turn x, hi"), "At turn x, hi");
    }
}
