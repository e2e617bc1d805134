//! The output columns of the estimators, listed once.
//!
//! [`Advantages`] (the public per-row output), the per-group view the engine
//! writes into ([`Block`]), the set of columns an estimator fills
//! ([`ColumnSet`]) and the reordering into row order are all generated from
//! the one list in [`define_columns!`], so adding a column is one line.

/// Id of the success terminal in [`Advantages::next_node`].
pub const SUCCESS_TERMINAL: i32 = -1;
/// Id of the failure/truncation terminal in [`Advantages::next_node`].
pub const FAILURE_TERMINAL: i32 = -2;

macro_rules! define_columns {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty ),* $(,)?) => {
        /// Per-row output of an estimator, one entry per batch row in row order.
        ///
        /// Columns an estimator does not produce are empty: GRPO fills `advantage`
        /// and `episode`; GiGPO adds `step`, `step_return` and `node` (its step
        /// group, numbered in first-seen row order across the batch); G2PO adds
        /// `step` (= node-centric + edge-centric), `node_centric`, `edge_centric`,
        /// `node` (numbered per task group in first-seen row order), `next_node` (a
        /// node, or -1 for the success terminal, -2 for the failure terminal) and
        /// `node_value` and `next_value`. [`COLUMNS`] names every column.
        ///
        /// ```
        /// use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind};
        /// let batch = g2po::doc_batch();
        /// let adv = Estimator::new(EstimatorConfig::new(EstimatorKind::G2po))?.estimate(&batch)?;
        /// assert_eq!(adv.len(), batch.len());
        /// assert_eq!(adv.next_node[1], -1); // the winning trajectory ends in success
        /// # Ok::<(), g2po::Error>(())
        /// ```
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct Advantages {
            $( $(#[doc = $doc])* pub $name: Vec<$ty>, )*
        }

        /// Which columns an estimator fills.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub(crate) struct ColumnSet {
            $( pub(crate) $name: bool, )*
        }

        /// The output columns of one group (CSR order), split off [`Advantages`].
        /// A column the estimator does not fill is an empty slice.
        pub(crate) struct Block<'a> {
            $( pub(crate) $name: &'a mut [$ty], )*
        }

        /// Names of every column of [`Advantages`], in declaration order.
        ///
        /// ```
        /// assert_eq!(g2po::estimators::COLUMNS[0], "advantage");
        /// assert!(g2po::estimators::COLUMNS.contains(&"node_value"));
        /// ```
        pub const COLUMNS: &[&str] = &[$( stringify!($name), )*];

        impl Advantages {
            /// Shapes every column for `n` rows, reusing capacity: the columns in
            /// `on` get `n` entries, the others are emptied. Stale values are left
            /// in place: the estimators overwrite every entry of the columns they fill.
            pub(crate) fn reshape(&mut self, on: ColumnSet, n: usize) {
                $( shape(&mut self.$name, on.$name, n); )*
            }

            /// Every column as one block (all rows).
            pub(crate) fn whole(&mut self) -> Block<'_> {
                Block { $( $name: &mut self.$name, )* }
            }

            /// Reorders every filled column from group (CSR) order into row order,
            /// through the reusable buffers in `tmp`.
            pub(crate) fn scatter_to_rows(&mut self, rows_by_group: &[u32], tmp: &mut ScatterBuffers) {
                $( scatter(&mut self.$name, rows_by_group, ScatterBuffer::<$ty>::buffer(tmp)); )*
            }
        }

        impl ColumnSet {
            /// No column at all.
            pub(crate) const NONE: Self = Self { $( $name: false, )* };
        }

        impl<'a> Block<'a> {
            /// Splits the first `n` rows off this block.
            pub(crate) fn split_off_front(&mut self, n: usize) -> Block<'a> {
                Block { $( $name: take(&mut self.$name, n), )* }
            }
        }
    };
}

define_columns! {
    /// The advantage every response token of the row receives.
    advantage: f32,
    /// Episode (GRPO) part.
    episode: f32,
    /// Step part before weighting (GiGPO step part; G2PO node + edge).
    step: f32,
    /// G2PO node-centric part.
    node_centric: f32,
    /// G2PO edge-centric part.
    edge_centric: f32,
    /// GiGPO discounted return after the invalid penalty.
    step_return: f32,
    /// G2PO node id / GiGPO step group id.
    node: i32,
    /// G2PO node the step leads to (-1 success, -2 failure terminal).
    next_node: i32,
    /// G2PO pooled value V of the row's node.
    node_value: f32,
    /// G2PO value of where the step leads: V of the next node, or the
    /// terminal's value (the episode reward or the fixed terminal value).
    next_value: f32,
}

impl Advantages {
    /// Number of rows.
    ///
    /// ```
    /// assert_eq!(g2po::Advantages::default().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.advantage.len()
    }

    /// Whether there are no rows.
    ///
    /// ```
    /// assert!(g2po::Advantages::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.advantage.is_empty()
    }
}

fn shape<T: Copy + Default>(col: &mut Vec<T>, on: bool, n: usize) {
    if on { col.resize(n, T::default()) } else { col.clear() }
}

fn take<'a, T>(s: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    if s.is_empty() {
        return &mut [];
    }
    let (front, back) = std::mem::take(s).split_at_mut(n);
    *s = back;
    front
}

/// One reusable buffer per column type, for [`Advantages::scatter_to_rows`].
#[derive(Debug, Default)]
pub(crate) struct ScatterBuffers {
    f32s: Vec<f32>,
    i32s: Vec<i32>,
}

/// The buffer of [`ScatterBuffers`] for one column type.
pub(crate) trait ScatterBuffer<T> {
    fn buffer(&mut self) -> &mut Vec<T>;
}

impl ScatterBuffer<f32> for ScatterBuffers {
    fn buffer(&mut self) -> &mut Vec<f32> {
        &mut self.f32s
    }
}

impl ScatterBuffer<i32> for ScatterBuffers {
    fn buffer(&mut self) -> &mut Vec<i32> {
        &mut self.i32s
    }
}

/// `col[i]` belongs to row `order[i]`: move it there. The old column becomes
/// the spare buffer, so nothing is allocated once both have grown.
fn scatter<T: Copy + Default>(col: &mut Vec<T>, order: &[u32], spare: &mut Vec<T>) {
    if col.is_empty() {
        return;
    }
    spare.clear();
    spare.resize(col.len(), T::default());
    for (value, &row) in col.iter().zip(order) {
        spare[row as usize] = *value;
    }
    std::mem::swap(col, spare);
}
