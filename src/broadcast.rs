//! Token-level broadcast: every response token of a row receives the row's
//! advantage; prompt and padding tokens receive 0.
//!
//! Two layouts are offered because trainers want both: a flat ragged array
//! with offsets (no padding; what a fused kernel or a packed-sequence trainer
//! consumes) and a padded `[rows x max_len]` matrix with a response mask (what
//! verl-style trainers multiply with their log-prob tensors).

use crate::error::{Error, Result};
use crate::estimators::Advantages;
use crate::rollout::RolloutBatch;

/// Flat token advantages: row `r` owns `values[offsets[r]..offsets[r + 1]]`.
///
/// ```
/// use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind};
/// let batch = g2po::doc_batch();
/// let adv = Estimator::new(EstimatorConfig::new(EstimatorKind::Grpo))?.estimate(&batch)?;
/// let t = g2po::broadcast::flat(&adv, &batch)?;
/// assert_eq!(t.offsets, vec![0, 3, 5, 8, 12]);
/// assert_eq!(t.row(1), &[adv.advantage[1]; 2]);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TokenAdvantages {
    /// One value per response token, rows after each other.
    pub values: Vec<f32>,
    /// `rows + 1` offsets into `values`.
    pub offsets: Vec<usize>,
}

impl TokenAdvantages {
    /// The tokens of one row.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// # use g2po::AdvantageEstimator;
    /// # let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::Grpo))?.estimate(&batch)?;
    /// let t = g2po::broadcast::flat(&adv, &batch)?;
    /// assert_eq!(t.row(0).len(), 3);
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn row(&self, row: usize) -> &[f32] {
        &self.values[self.offsets[row]..self.offsets[row + 1]]
    }
}

/// A padded `[rows x max_len]` matrix (row-major) with its response mask.
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::Grpo))?.estimate(&batch)?;
/// let p = g2po::broadcast::padded(&adv, &batch, None)?;
/// assert_eq!((p.rows, p.max_len), (4, 4));
/// assert_eq!(&p.mask[4..8], &[1.0, 1.0, 0.0, 0.0]);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Padded {
    /// Number of rows.
    pub rows: usize,
    /// Width of each row.
    pub max_len: usize,
    /// `rows * max_len` advantages, 0 outside the response.
    pub values: Vec<f32>,
    /// `rows * max_len` mask: 1 on response tokens, 0 on padding.
    pub mask: Vec<f32>,
}

fn check_rows(adv: &Advantages, batch: &RolloutBatch) -> Result<()> {
    if adv.len() != batch.len() {
        return Err(Error::LengthMismatch { field: "advantage", expected: batch.len(), found: adv.len() });
    }
    Ok(())
}

/// Broadcasts row advantages to a flat ragged token array.
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let wrong = g2po::Advantages::default();
/// assert!(g2po::broadcast::flat(&wrong, &batch).is_err());
/// ```
pub fn flat(adv: &Advantages, batch: &RolloutBatch) -> Result<TokenAdvantages> {
    check_rows(adv, batch)?;
    let lens = batch.response_lens();
    let mut offsets = Vec::with_capacity(lens.len() + 1);
    offsets.push(0usize);
    let mut total = 0usize;
    for &len in lens {
        total += len as usize;
        offsets.push(total);
    }
    let mut values = Vec::with_capacity(total);
    for (&a, &len) in adv.advantage.iter().zip(lens) {
        values.extend(std::iter::repeat_n(a, len as usize));
    }
    Ok(TokenAdvantages { values, offsets })
}

/// Broadcasts row advantages to a padded matrix, right-padded (responses start
/// at column 0, as in verl). `max_len` defaults to the longest response; a
/// response longer than a given `max_len` is an error, never silently cut.
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::Grpo))?.estimate(&batch)?;
/// assert!(g2po::broadcast::padded(&adv, &batch, Some(2)).is_err());
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn padded(adv: &Advantages, batch: &RolloutBatch, max_len: Option<usize>) -> Result<Padded> {
    check_rows(adv, batch)?;
    let lens = batch.response_lens();
    let longest = lens.iter().copied().max().unwrap_or(0) as usize;
    let width = max_len.unwrap_or(longest);
    if let Some(row) = lens.iter().position(|&l| l as usize > width) {
        return Err(Error::ResponseTooLong { row, len: lens[row], max_len: width });
    }
    let rows = lens.len();
    let mut values = vec![0f32; rows * width];
    let mut mask = vec![0f32; rows * width];
    for (row, (&a, &len)) in adv.advantage.iter().zip(lens).enumerate() {
        let start = row * width;
        values[start..start + len as usize].fill(a);
        mask[start..start + len as usize].fill(1.0);
    }
    Ok(Padded { rows, max_len: width, values, mask })
}
