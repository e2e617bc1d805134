//! A fast path for the common shape of a JSONL row: one flat object whose
//! strings have no escapes.
//!
//! serde_json reads such a line through the generic `deserialize_any`
//! machinery the row needs (ids may be strings or integers, `null` means
//! absent, unknown fields are skipped): about 0.45 µs a 400-byte line on the
//! 2-core VM. This scanner takes 0.69-0.77 of that into the same fields
//! (`docs/benchmarks.md`): the row's own keys are matched in place, strings
//! end eight bytes at a time (SWAR) or, when long, by `memchr` and one
//! vectorised pass for control bytes, and numbers are cut by the JSON
//! grammar; decimals within Clinger's exact fast path are converted there,
//! others by the standard library's correctly rounded parser (the value
//! serde_json's `float_roundtrip` gives too).
//!
//! It never decides anything serde_json would decide differently: whatever
//! falls outside the subset it reads (an escape, a nested value, a
//! duplicate field, malformed JSON, a number out of range, trailing text)
//! makes it give up (`None`), and the caller parses the line with
//! serde_json, which also writes every error message. The unit tests check
//! the two against each other on generated rows.

use std::borrow::Cow;

use super::{Field, RawRow, Scalar};

/// The fields of `line` if it is a flat JSON object in the fast subset;
/// `None` means "ask serde_json".
pub(super) fn scan_row(line: &str) -> Option<RawRow<'_>> {
    let bytes = line.as_bytes();
    let mut at = skip_space(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_space(bytes, at + 1);
    let mut row = RawRow::default();
    let mut seen = 0u16;
    if bytes.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            if bytes.get(at) != Some(&b'"') {
                return None;
            }
            let (field, after) = key(line, at)?;
            at = skip_space(bytes, after);
            if bytes.get(at) != Some(&b':') {
                return None;
            }
            at = skip_space(bytes, at + 1);
            let (value, after) = scalar(line, at)?;
            match field {
                Field::Other => {}
                field => {
                    let index = field as usize;
                    // serde_json's path reports the duplicate.
                    if seen & (1 << index) != 0 {
                        return None;
                    }
                    seen |= 1 << index;
                    row.fields[index] = match value {
                        Scalar::Null => None,
                        value => Some(value),
                    };
                }
            }
            at = skip_space(bytes, after);
            match bytes.get(at) {
                Some(b',') => at = skip_space(bytes, at + 1),
                Some(b'}') => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_space(bytes, at) == bytes.len()).then_some(row)
}

/// The field named by the key whose opening quote is at `at`, and the
/// position after its closing quote. The row's own names are matched in
/// place (one comparison of a few bytes); any other key is read as a string.
#[inline]
fn key(line: &str, at: usize) -> Option<(Field, usize)> {
    let rest = &line.as_bytes()[at + 1..];
    let known: &[(&[u8], Field)] = match rest.first()? {
        b'g' => &[(b"group\"", Field::Group)],
        b't' => &[(b"traj\"", Field::Traj)],
        b's' => &[(b"step\"", Field::Step)],
        b'o' => &[(b"obs\"", Field::Obs)],
        b'k' => &[(b"key\"", Field::Key)],
        b'r' => &[(b"reward\"", Field::Reward), (b"response_len\"", Field::ResponseLen)],
        b'e' => &[(b"episode_reward\"", Field::EpisodeReward)],
        b'i' => &[(b"is_action_valid\"", Field::Valid)],
        _ => &[],
    };
    for &(name, field) in known {
        if rest.starts_with(name) {
            return Some((field, at + 1 + name.len()));
        }
    }
    let (name, after) = string(line, at + 1)?;
    Some((Field::named(name), after))
}

/// JSON's whitespace (serde_json skips exactly these four).
fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// The string whose body starts at `start` (after its opening quote) and
/// the position after its closing quote; `None` if it holds an escape or a
/// control byte, or does not close.
#[inline]
fn string(line: &str, start: usize) -> Option<(&str, usize)> {
    let bytes = line.as_bytes();
    // Keys and ids are short: eight bytes at a time (SWAR) ends them with one
    // well-predicted branch per word, where a byte loop mispredicts its exit
    // and memchr's set-up would not pay off.
    let mut at = start;
    let mut end = None;
    for _ in 0..4 {
        let Some(word) = bytes.get(at..at + 8) else { break };
        let special = special_bytes(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        if special != 0 {
            end = Some(at + (special.trailing_zeros() / 8) as usize);
            break;
        }
        at += 8;
    }
    let end = match end {
        Some(end) => end,
        None => {
            // A long text (an observation): memchr finds its end, then one
            // pass without an early exit (so it vectorises) checks for
            // control bytes.
            let end = at + memchr::memchr2(b'"', b'\\', &bytes[at..])?;
            if bytes[at..end].iter().fold(false, |found, &b| found | (b < 0x20)) {
                return None;
            }
            end
        }
    };
    // Both ends are ASCII quotes, so the slice is on character boundaries.
    (bytes[end] == b'"').then(|| (&line[start..end], end + 1))
}

/// The high bit of every byte of `word` that is a quote, a backslash or a
/// control byte. Bits above the lowest one may be false alarms (borrows);
/// the lowest is exact, which is all the caller reads.
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero_byte(word ^ (ONES * b'"' as u64));
    let backslash = zero_byte(word ^ (ONES * b'\\' as u64));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control
}

/// The scalar value at `at` and the position after it; `None` for an
/// object, an array, or anything serde_json would reject or read otherwise.
#[inline]
fn scalar(line: &str, at: usize) -> Option<(Scalar<'_>, usize)> {
    let bytes = line.as_bytes();
    match *bytes.get(at)? {
        b'"' => string(line, at + 1).map(|(s, after)| (Scalar::Str(Cow::Borrowed(s)), after)),
        b't' => literal(bytes, at, b"true", Scalar::Bool(true)),
        b'f' => literal(bytes, at, b"false", Scalar::Bool(false)),
        b'n' => literal(bytes, at, b"null", Scalar::Null),
        b'-' | b'0'..=b'9' => number(line, at),
        _ => None,
    }
}

fn literal<'a>(bytes: &[u8], at: usize, word: &[u8], value: Scalar<'a>) -> Option<(Scalar<'a>, usize)> {
    bytes[at..].starts_with(word).then_some((value, at + word.len()))
}

/// A JSON number, typed as serde_json types it for `deserialize_any`: a
/// non-negative integer as `Uint`, a negative one as `Int`, `-0` and
/// anything with a fraction or an exponent as `Float`. Integers beyond 64
/// bits and floats out of range are left to serde_json.
fn number(line: &str, start: usize) -> Option<(Scalar<'static>, usize)> {
    let bytes = line.as_bytes();
    // The digits from `at` on, accumulated while they fit a u64 (`None` on
    // overflow, which is left to the slow path), and where they end.
    let digits = |mut at: usize, mut value: Option<u64>| {
        let from = at;
        while let Some(&d) = bytes.get(at).filter(|b| b.is_ascii_digit()) {
            value = value.and_then(|v| v.checked_mul(10)?.checked_add(u64::from(d - b'0')));
            at += 1;
        }
        (at > from).then_some((at, value))
    };
    let negative = bytes[start] == b'-';
    let int_start = start + usize::from(negative);
    // One leading zero at most: "01" is not JSON.
    let (int_end, integer) = match bytes.get(int_start)? {
        b'0' => (int_start + 1, Some(0)),
        b'1'..=b'9' => digits(int_start, Some(0))?,
        _ => return None,
    };
    let (mut end, mut mantissa, mut exponent, mut is_float) = (int_end, integer, 0i64, false);
    if bytes.get(end) == Some(&b'.') {
        let (frac_end, value) = digits(end + 1, mantissa)?;
        exponent -= (frac_end - end - 1) as i64;
        (end, mantissa, is_float) = (frac_end, value, true);
    }
    if let Some(b'e' | b'E') = bytes.get(end) {
        let mut at = end + 1;
        let exp_negative = bytes.get(at) == Some(&b'-');
        if let Some(b'+' | b'-') = bytes.get(at) {
            at += 1;
        }
        let (exp_end, value) = digits(at, Some(0))?;
        // An absurd exponent goes to the slow path, which judges its range.
        let value = value.filter(|&v| v < 10_000).map_or(i64::MAX / 2, |v| v as i64);
        exponent += if exp_negative { -value } else { value };
        (end, is_float) = (exp_end, true);
    }
    if !is_float {
        let value = match (negative, integer?) {
            (false, m) => Scalar::Uint(m),
            (true, 0) => Scalar::Float(-0.0),
            (true, m) if m <= 1 << 63 => Scalar::Int((m as i64).wrapping_neg()),
            (true, _) => return None,
        };
        return Some((value, end));
    }
    // Clinger's fast path: a mantissa and a power of ten that are both exact
    // doubles give the correctly rounded value with one rounding, so this
    // equals the full parse (the standard library's, and serde_json's with
    // `float_roundtrip`), which handles everything else.
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
        1e20, 1e21, 1e22,
    ];
    let value = match mantissa {
        Some(m) if m <= 1 << 53 && exponent.unsigned_abs() <= 22 => {
            let (m, power) = (m as f64, POW10[exponent.unsigned_abs() as usize]);
            let magnitude = if exponent >= 0 { m * power } else { m / power };
            if negative { -magnitude } else { magnitude }
        }
        _ => line[start..end].parse().ok()?,
    };
    value.is_finite().then_some((Scalar::Float(value), end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// serde_json's reading of a line, through the same row type.
    fn by_serde(line: &str) -> Option<RawRow<'_>> {
        serde_json::from_str::<RawRow<'_>>(line).ok()
    }

    fn same(a: &RawRow<'_>, b: &RawRow<'_>) -> bool {
        a.fields.iter().zip(&b.fields).all(|(x, y)| match (x, y) {
            (None, None) => true,
            (Some(Scalar::Str(x)), Some(Scalar::Str(y))) => x == y,
            (Some(Scalar::Int(x)), Some(Scalar::Int(y))) => x == y,
            (Some(Scalar::Uint(x)), Some(Scalar::Uint(y))) => x == y,
            (Some(Scalar::Float(x)), Some(Scalar::Float(y))) => x.to_bits() == y.to_bits(),
            (Some(Scalar::Bool(x)), Some(Scalar::Bool(y))) => x == y,
            (Some(Scalar::Array), Some(Scalar::Array)) | (Some(Scalar::Object), Some(Scalar::Object)) => true,
            _ => false,
        })
    }

    /// The scanner either agrees with serde_json field for field or leaves
    /// the line to it; it never accepts a line serde_json rejects.
    fn agrees(line: &str) -> std::result::Result<bool, String> {
        match (scan_row(line), by_serde(line)) {
            (None, _) => Ok(false),
            (Some(fast), Some(slow)) if same(&fast, &slow) => Ok(true),
            (Some(_), Some(_)) => Err(format!("different fields for {line:?}")),
            (Some(_), None) => Err(format!("accepted what serde_json rejects: {line:?}")),
        }
    }

    #[test]
    fn reads_the_common_rows() {
        for line in [
            r#"{"group":"g0","traj":"g0/r0","step":0,"obs":"a room","reward":0.0,"episode_reward":10.0,"is_action_valid":true,"response_len":46}"#,
            r#"{ "group" : 3 , "traj": 7, "step": 2, "key": 18446744073709551615, "reward": -1.5e-3, "episode_reward": -0, "is_action_valid": false, "response_len": 1 }"#,
            r#"{"group": "g", "traj": "t", "extra": [1, 2], "obs": "s"}"#,
            r#"{"group": null, "note": "x", "n": 1E+2, "reward": 2.5E-400, "step": -9223372036854775808}"#,
            "{}",
            "\t{\"obs\": \"caf\u{e9} \u{1F600}\"}\r",
        ] {
            // The third line has a nested value: serde_json's, by design.
            let read = agrees(line).unwrap();
            assert_eq!(read, !line.contains('['), "{line}");
        }
    }

    #[test]
    fn leaves_everything_unusual_to_serde_json() {
        for line in [
            r#"{"obs": "a \"quoted\" word"}"#,
            r#"{"obs": "tab	inside"}"#,
            r#"{"group": "g", "group": "h"}"#,
            r#"{"step": 01}"#,
            r#"{"step": 1.}"#,
            r#"{"step": .5}"#,
            r#"{"step": +1}"#,
            r#"{"step": 1e}"#,
            r#"{"reward": 1e400}"#,
            r#"{"key": 18446744073709551616}"#,
            r#"{"step": -9223372036854775809}"#,
            r#"{"valid": tru}"#,
            r#"{"obs": "s"} x"#,
            r#"{"obs": "s",}"#,
            r#"{"obs" "s"}"#,
            r#"{"obs": "s""#,
            r#"["obs", "s"]"#,
            r#"{"obs": {"text": "s"}}"#,
        ] {
            assert!(scan_row(line).is_none(), "{line}");
        }
    }

    /// A JSON scalar in many spellings, a few of them not JSON or outside
    /// the fast subset.
    fn scalar_text() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,3})?",
            1 => "[-+.0-9eE]{1,6}",
            4 => "\"[a-z /é😀]{0,12}\"",
            2 => "\"[a-z /é😀]{20,80}\"",
            1 => "\"[a-z /é\\\\\"\t]{30,60}\"",
            1 => "\"[a-z\\\\\"\t]{0,6}\"",
            1 => prop::sample::select(vec!["true", "false", "null", "nul", "[1]", "{}"]).prop_map(str::to_owned),
        ]
    }

    fn key_text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(super::super::FIELD_NAMES.to_vec()).prop_map(|k| format!("\"{k}\"")),
            1 => "\"[a-z_\\\\]{0,6}\"",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// The fast float path gives the correctly rounded value, bit for
        /// bit what serde_json reads, in every spelling a writer produces.
        #[test]
        fn numbers_read_like_serde_json(value in any::<f64>().prop_filter("finite", |v| v.is_finite()), digits in 0usize..20) {
            for text in [format!("{value}"), format!("{value:.digits$}"), format!("{:.digits$}", value as f32)] {
                agrees(&format!("{{\"reward\": {text}}}")).map_err(TestCaseError::fail)?;
            }
            // With an exponent the scanner reads every value itself.
            let line = format!("{{\"reward\": {value:e}}}");
            prop_assert!(agrees(&line).map_err(TestCaseError::fail)?, "{line}");
        }

        #[test]
        fn agrees_with_serde_json(
            members in prop::collection::vec((key_text(), scalar_text(), "[ \t]{0,2}", "[ \t]{0,2}"), 0..6),
            tail in prop_oneof![3 => Just(""), 1 => Just(" "), 1 => Just(","), 1 => Just("x")],
        ) {
            let body: Vec<String> = members.iter().map(|(k, v, a, b)| format!("{a}{k}{b}:{a}{v}{b}")).collect();
            let line = format!("{{{}}}{tail}", body.join(","));
            agrees(&line).map_err(TestCaseError::fail)?;
        }
    }
}
