//! Token-level broadcast: every response token of a row receives the row's
//! advantage; prompt and padding tokens receive 0.
//!
//! Two layouts are offered because trainers want both: a flat ragged array
//! with offsets (no padding; what a fused kernel or a packed-sequence trainer
//! consumes) and a padded `[rows x max_len]` matrix with a response mask (what
//! verl-style trainers multiply with their log-prob tensors).
//!
//! The padded layout is the one token layout of the crate: the trainer, the
//! learner and the policies take their advantages, masks and per-token inputs
//! from the functions here ([`padded`], [`padded_rows`], [`pad_ragged`],
//! [`response_mask`]), as [`ndarray::Array2`] in standard (row-major) order, so
//! `as_slice()` is always `Some` and the Python package hands the same memory
//! to numpy. Responses are right-padded (they start at column 0, as in verl).

use ndarray::Array2;

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
    /// # Panics
    /// If `row` is not below the number of rows (as slice indexing does).
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

/// A padded `[rows x max_len]` advantage matrix with its response mask.
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::Grpo))?.estimate(&batch)?;
/// let p = g2po::broadcast::padded(&adv, &batch, None)?;
/// assert_eq!((p.rows(), p.max_len()), (4, 4));
/// assert_eq!(p.mask.row(1).to_vec(), vec![1.0, 1.0, 0.0, 0.0]);
/// assert_eq!(p.values[[1, 1]], adv.advantage[1]);
/// assert_eq!(p.values[[1, 2]], 0.0);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Padded {
    /// Advantages, 0 outside the response.
    pub values: Array2<f32>,
    /// 1 on response tokens, 0 on padding.
    pub mask: Array2<f32>,
}

impl Padded {
    /// Number of rows.
    ///
    /// ```
    /// let p = g2po::broadcast::padded_rows(&[1.0, 2.0], &[1, 3], None)?;
    /// assert_eq!(p.rows(), 2);
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn rows(&self) -> usize {
        self.values.nrows()
    }

    /// The padded width.
    ///
    /// ```
    /// let p = g2po::broadcast::padded_rows(&[1.0, 2.0], &[1, 3], Some(5))?;
    /// assert_eq!(p.max_len(), 5);
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn max_len(&self) -> usize {
        self.values.ncols()
    }
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

/// Broadcasts row advantages to a padded matrix with its mask. `max_len`
/// defaults to the longest response; a response longer than a given `max_len`
/// is an error, never silently cut.
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
    padded_rows(&adv.advantage, batch.response_lens(), max_len)
}

/// [`padded`] from plain columns: row `r` gets `row_values[r]` on its first
/// `lens[r]` tokens. For callers that hold advantages without a
/// [`RolloutBatch`] (a learner's mini-batch, a trainer's rows).
///
/// ```
/// let p = g2po::broadcast::padded_rows(&[0.5, -1.0], &[2, 1], None)?;
/// assert_eq!(p.values.as_slice().unwrap(), &[0.5, 0.5, -1.0, 0.0]);
/// assert_eq!(p.mask.as_slice().unwrap(), &[1.0, 1.0, 1.0, 0.0]);
/// assert!(g2po::broadcast::padded_rows(&[0.5], &[2, 1], None).is_err()); // lengths disagree
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn padded_rows(row_values: &[f32], lens: &[u32], max_len: Option<usize>) -> Result<Padded> {
    if row_values.len() != lens.len() {
        return Err(Error::LengthMismatch { field: "advantage", expected: lens.len(), found: row_values.len() });
    }
    let mask = response_mask(lens, max_len)?;
    let mut values = Array2::<f32>::zeros(mask.raw_dim());
    for ((mut row, &a), &len) in values.rows_mut().into_iter().zip(row_values).zip(lens) {
        row.slice_mut(ndarray::s![..len as usize]).fill(a);
    }
    Ok(Padded { values, mask })
}

/// The `[rows x max_len]` response mask of rows with these response lengths.
///
/// ```
/// let m = g2po::broadcast::response_mask(&[1, 0, 2], None)?;
/// assert_eq!(m.as_slice().unwrap(), &[1.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
/// // Widths too large to address are a typed error, not an overflow.
/// assert!(g2po::broadcast::response_mask(&[1, 1], Some(usize::MAX)).is_err());
/// assert!(g2po::broadcast::response_mask(&[1, 1], Some(1 << 60)).is_err());
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn response_mask(lens: &[u32], max_len: Option<usize>) -> Result<Array2<f32>> {
    let width = layout_width(lens.iter().map(|&l| l as usize), max_len)?;
    let mut mask = zeros(lens.len(), width)?;
    for (mut row, &len) in mask.rows_mut().into_iter().zip(lens) {
        row.slice_mut(ndarray::s![..len as usize]).fill(1.0);
    }
    Ok(mask)
}

/// Right-pads ragged per-token rows (old log-probs, token rewards, token ids,
/// ...) into a `[rows x max_len]` matrix, `T::default()` (0) outside each row.
///
/// ```
/// let rows: [&[f32]; 2] = [&[-0.1, -0.2], &[-0.3]];
/// let x = g2po::broadcast::pad_ragged(rows, None)?;
/// assert_eq!(x.as_slice().unwrap(), &[-0.1, -0.2, -0.3, 0.0]);
/// assert!(g2po::broadcast::pad_ragged(rows, Some(1)).is_err()); // never cut silently
/// let ids: [&[u32]; 2] = [&[7], &[8, 9]];
/// assert_eq!(g2po::broadcast::pad_ragged(ids, None)?.as_slice().unwrap(), &[7, 0, 8, 9]);
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn pad_ragged<'a, T, I>(rows: I, max_len: Option<usize>) -> Result<Array2<T>>
where
    T: Copy + Default + 'a,
    I: IntoIterator<Item = &'a [T]>,
    I::IntoIter: Clone,
{
    let rows = rows.into_iter();
    let width = layout_width(rows.clone().map(<[T]>::len), max_len)?;
    let mut out = zeros(rows.clone().count(), width)?;
    for (mut dst, src) in out.rows_mut().into_iter().zip(rows) {
        dst.slice_mut(ndarray::s![..src.len()]).assign(&ndarray::ArrayView1::from(src));
    }
    Ok(out)
}

/// The width of a padded layout: `max_len`, or the longest row; checks that
/// every row fits.
fn layout_width(lens: impl Iterator<Item = usize> + Clone, max_len: Option<usize>) -> Result<usize> {
    let longest = lens.clone().max().unwrap_or(0);
    let width = max_len.unwrap_or(longest);
    if let Some((row, len)) = lens.enumerate().find(|&(_, len)| len > width) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        return Err(Error::ResponseTooLong { row, len, max_len: width });
    }
    Ok(width)
}

/// A zeroed matrix, or a typed error when `rows * max_len` cannot be addressed
/// or allocated (ndarray would panic on the overflow, the allocator abort).
fn zeros<T: Copy + Default>(rows: usize, max_len: usize) -> Result<Array2<T>> {
    let too_large = || Error::LayoutTooLarge { rows, max_len };
    let len = rows.checked_mul(max_len).ok_or_else(too_large)?;
    let mut data = Vec::new();
    data.try_reserve_exact(len).map_err(|_| too_large())?;
    data.resize(len, T::default());
    Array2::from_shape_vec((rows, max_len), data).map_err(|_| too_large())
}
