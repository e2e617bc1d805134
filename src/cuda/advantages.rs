//! Host side of the G2PO advantage-stage kernels (`kernels/advantages.cu`).
//!
//! The host assigns ids (task group, dense node index, next node or terminal) because that
//! needs hashing of observations; the GPU does the arithmetic, which dominates for very large
//! batches. [`StagePlan`] validates the ids and lays rows out in CSR order by node and by
//! group with a stable counting sort, so segment sums on the device run in row order and are
//! deterministic.

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use super::{CudaError, GpuContext};

/// Per-row inputs of the G2PO stages (all per-row slices have one entry per step row).
#[derive(Debug, Clone, Copy)]
pub struct StageInputs<'a> {
    /// Task-group id of each row (dense, `0..num_groups`).
    pub group: &'a [u32],
    /// Global dense node index of the row's anchor state (`0..num_nodes`); a node belongs to
    /// one task group.
    pub node: &'a [u32],
    /// Global node index of the next step's anchor, or -1 (success terminal) / -2 (failure
    /// terminal) after the last step.
    pub next_node: &'a [i32],
    /// Value of the terminal a last step leads to: the episode reward R of the row's
    /// trajectory (read only where `next_node < 0`).
    pub terminal_value: &'a [f32],
    /// The visit's contribution to its node value, `gamma^(T - t) * R`.
    pub visit_value: &'a [f32],
    /// 1 where the step's action was invalid.
    pub invalid: &'a [u8],
    /// Episode score of the row, `R - p * invalid`.
    pub score: &'a [f32],
    /// Token ranges of the rows in the flat token array: row r owns
    /// `token_offsets[r]..token_offsets[r + 1]`; `rows + 1` entries starting at 0.
    pub token_offsets: &'a [u64],
}

/// Parameters of the G2PO stages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageParams {
    /// `eps` of the standardisation (1e-6 by default).
    pub epsilon: f32,
    /// `mean_norm` (subtract the mean only) instead of `mean_std_norm`.
    pub mean_norm: bool,
    /// Weight `w` of the graph terms: `A = episode + w * (node_centric + edge_centric)`.
    pub weight: f32,
    /// Invalid-action penalty `p` in the node-centric `x = V(next) - p * invalid`.
    pub invalid_penalty: f32,
}

impl Default for StageParams {
    fn default() -> Self {
        Self { epsilon: 1e-6, mean_norm: false, weight: 1.0, invalid_penalty: 0.1 }
    }
}

/// Results of the G2PO stages: per row, per node, and per token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageOutputs {
    /// Final advantage per row.
    pub advantage: Vec<f32>,
    /// Episode (GRPO) term per row.
    pub episode: Vec<f32>,
    /// Node-centric term per row.
    pub node_centric: Vec<f32>,
    /// Edge-centric term per row.
    pub edge_centric: Vec<f32>,
    /// Value of every node.
    pub node_value: Vec<f32>,
    /// The row advantages broadcast to the flat token array.
    pub token_advantage: Vec<f32>,
}

/// Validated ids and the CSR layouts of rows by node and by group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    /// Number of nodes (`max node id + 1`).
    pub num_nodes: usize,
    /// Number of task groups (`max group id + 1`).
    pub num_groups: usize,
    /// Row indices grouped by node, in row order within a node.
    pub node_rows: Vec<u32>,
    /// `node_rows[node_offsets[k]..node_offsets[k + 1]]` are the rows of node k.
    pub node_offsets: Vec<u32>,
    /// Row indices grouped by task group, in row order within a group.
    pub group_rows: Vec<u32>,
    /// `group_rows[group_offsets[g]..group_offsets[g + 1]]` are the rows of group g.
    pub group_offsets: Vec<u32>,
}

/// Stable counting sort of row indices by key.
fn csr(keys: &[u32], buckets: usize) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; buckets + 1];
    for &k in keys {
        offsets[k as usize + 1] += 1;
    }
    for i in 0..buckets {
        offsets[i + 1] += offsets[i];
    }
    let mut next = offsets.clone();
    let mut rows = vec![0u32; keys.len()];
    for (r, &k) in keys.iter().enumerate() {
        rows[next[k as usize] as usize] = r as u32;
        next[k as usize] += 1;
    }
    (rows, offsets)
}

impl StagePlan {
    /// Validates `inputs` and builds the CSR layouts.
    ///
    /// # Errors
    /// [`CudaError::InvalidInput`] for mismatched lengths, non-finite values, bad token
    /// offsets, a next id below -2 or past the last node, a next node without visits, or a
    /// node or edge that crosses task groups.
    ///
    /// ```
    /// use g2po::cuda::{StageInputs, StagePlan};
    /// // One group, two trajectories through node 0 -> node 1 -> terminal.
    /// let inputs = StageInputs {
    ///     group: &[0, 0, 0, 0], node: &[0, 1, 0, 1], next_node: &[1, -1, 1, -2],
    ///     terminal_value: &[10.0, 10.0, 0.0, 0.0], visit_value: &[9.025, 9.5, 0.0, 0.0],
    ///     invalid: &[0, 0, 0, 0], score: &[10.0, 10.0, 0.0, 0.0], token_offsets: &[0, 2, 4, 6, 8],
    /// };
    /// let plan = StagePlan::new(&inputs)?;
    /// assert_eq!(plan.node_rows, vec![0, 2, 1, 3]);
    /// assert_eq!(plan.node_offsets, vec![0, 2, 4]);
    /// # Ok::<(), g2po::cuda::CudaError>(())
    /// ```
    pub fn new(inputs: &StageInputs<'_>) -> Result<Self, CudaError> {
        let bad = |m: String| Err(CudaError::InvalidInput(m));
        let n = inputs.group.len();
        if n == 0 {
            return bad("no rows".into());
        }
        if u32::try_from(n).is_err() {
            return bad("more than u32::MAX rows".into());
        }
        let lens = [
            ("node", inputs.node.len()),
            ("next_node", inputs.next_node.len()),
            ("terminal_value", inputs.terminal_value.len()),
            ("visit_value", inputs.visit_value.len()),
            ("invalid", inputs.invalid.len()),
            ("score", inputs.score.len()),
        ];
        for (name, len) in lens {
            if len != n {
                return bad(format!("{name} has {len} entries, expected {n} (one per row)"));
            }
        }
        if inputs.token_offsets.len() != n + 1 {
            return bad(format!(
                "token_offsets has {} entries, expected rows + 1 = {}",
                inputs.token_offsets.len(),
                n + 1
            ));
        }
        if inputs.token_offsets[0] != 0 {
            return bad("token_offsets must start at 0".into());
        }
        if let Some(w) = inputs.token_offsets.windows(2).position(|w| w[1] < w[0]) {
            return bad(format!("token_offsets decrease at row {w}"));
        }
        for (name, s) in
            [("terminal_value", inputs.terminal_value), ("visit_value", inputs.visit_value), ("score", inputs.score)]
        {
            if let Some(i) = s.iter().position(|v| !v.is_finite()) {
                return bad(format!("{name}[{i}] = {} is not finite", s[i]));
            }
        }
        let num_nodes = *inputs.node.iter().max().unwrap_or(&0) as usize + 1;
        let num_groups = *inputs.group.iter().max().unwrap_or(&0) as usize + 1;
        if u32::try_from(num_nodes).is_err() || u32::try_from(num_groups).is_err() {
            return bad("node or group ids exceed u32".into());
        }
        // The group of each node, from its first visit; every visit must agree.
        let mut node_group = vec![u32::MAX; num_nodes];
        for r in 0..n {
            let (k, g) = (inputs.node[r] as usize, inputs.group[r]);
            if node_group[k] == u32::MAX {
                node_group[k] = g;
            } else if node_group[k] != g {
                return bad(format!(
                    "node {k} is visited in task groups {} and {g}; nodes never cross groups",
                    node_group[k]
                ));
            }
        }
        for r in 0..n {
            let nx = inputs.next_node[r];
            if nx < -2 {
                return bad(format!("next_node[{r}] = {nx}; terminals are -1 and -2"));
            }
            if nx >= 0 {
                let k = nx as usize;
                if k >= num_nodes || node_group[k] == u32::MAX {
                    return bad(format!("next_node[{r}] = {nx} is a node without visits"));
                }
                if node_group[k] != inputs.group[r] {
                    return bad(format!("row {r} leads to node {nx} of another task group"));
                }
            }
        }
        let (node_rows, node_offsets) = csr(inputs.node, num_nodes);
        let (group_rows, group_offsets) = csr(inputs.group, num_groups);
        Ok(Self { num_nodes, num_groups, node_rows, node_offsets, group_rows, group_offsets })
    }
}

fn check_params(p: &StageParams) -> Result<(), CudaError> {
    if !(p.epsilon.is_finite() && p.epsilon >= 0.0) {
        return Err(CudaError::InvalidInput(format!("epsilon = {} must be finite and >= 0", p.epsilon)));
    }
    if !p.weight.is_finite() || !p.invalid_penalty.is_finite() {
        return Err(CudaError::InvalidInput("weight and invalid_penalty must be finite".into()));
    }
    Ok(())
}

const BLOCK: u32 = 256;

/// Launch shape with one warp per item.
fn warp_per_item(items: usize) -> LaunchConfig {
    let warps_per_block = (BLOCK / 32) as usize;
    LaunchConfig {
        grid_dim: (items.div_ceil(warps_per_block).max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl GpuContext {
    /// Runs the G2PO advantage stages on the GPU: node values, TD errors, node-centric and
    /// edge-centric terms, the episode term, the final advantage and its broadcast to tokens.
    ///
    /// # Errors
    /// [`CudaError::InvalidInput`] from [`StagePlan::new`] or bad parameters,
    /// [`CudaError::Driver`] when a launch or copy fails.
    ///
    /// ```no_run
    /// use g2po::cuda::{GpuContext, StageInputs, StageParams};
    /// let gpu = GpuContext::new(0)?;
    /// let inputs = StageInputs {
    ///     group: &[0, 0], node: &[0, 0], next_node: &[-1, -2],
    ///     terminal_value: &[10.0, 0.0], visit_value: &[9.5, 0.0],
    ///     invalid: &[0, 0], score: &[10.0, 0.0], token_offsets: &[0, 3, 5],
    /// };
    /// let out = gpu.g2po_stages(&inputs, &StageParams::default())?;
    /// assert_eq!(out.token_advantage.len(), 5);
    /// # Ok::<(), g2po::cuda::CudaError>(())
    /// ```
    pub fn g2po_stages(&self, inputs: &StageInputs<'_>, params: &StageParams) -> Result<StageOutputs, CudaError> {
        check_params(params)?;
        let plan = StagePlan::new(inputs)?;
        let n = inputs.group.len();
        let n32 = n as u32;
        let nodes = plan.num_nodes as u32;
        let groups = plan.num_groups as u32;
        let tokens = inputs.token_offsets[n] as usize;
        let s = &self.stream;
        let f = |name: &str| -> Result<CudaFunction, CudaError> { Ok(self.advantages.load_function(name)?) };
        let node = s.clone_htod(inputs.node)?;
        let next_node = s.clone_htod(inputs.next_node)?;
        let terminal_value = s.clone_htod(inputs.terminal_value)?;
        let visit_value = s.clone_htod(inputs.visit_value)?;
        let invalid = s.clone_htod(inputs.invalid)?;
        let score = s.clone_htod(inputs.score)?;
        let token_offsets = s.clone_htod(inputs.token_offsets)?;
        let node_rows = s.clone_htod(&plan.node_rows)?;
        let node_offsets = s.clone_htod(&plan.node_offsets)?;
        let group_rows = s.clone_htod(&plan.group_rows)?;
        let group_offsets = s.clone_htod(&plan.group_offsets)?;
        let mut node_value = s.alloc_zeros::<f32>(plan.num_nodes)?;
        let mut x = s.alloc_zeros::<f32>(n)?;
        let mut td = s.alloc_zeros::<f32>(n)?;
        let mut node_centric = s.alloc_zeros::<f32>(n)?;
        let mut edge_centric = s.alloc_zeros::<f32>(n)?;
        let mut episode = s.alloc_zeros::<f32>(n)?;
        let mut advantage = s.alloc_zeros::<f32>(n)?;
        let mut token_advantage = s.alloc_zeros::<f32>(tokens.max(1))?;
        let eps = params.epsilon;
        let mean_norm = i32::from(params.mean_norm);
        let per_row = LaunchConfig {
            grid_dim: (n.div_ceil(BLOCK as usize) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (k_value, k_terms, k_nc, k_group, k_bcast) = (
            f("g2po_node_value")?,
            f("g2po_row_terms")?,
            f("g2po_node_centric")?,
            f("g2po_group_terms")?,
            f("g2po_broadcast")?,
        );
        // SAFETY: argument lists match kernels/advantages.cu; StagePlan::new checked every id
        // and offset the kernels dereference.
        unsafe {
            s.launch_builder(&k_value)
                .arg(&visit_value)
                .arg(&node_rows)
                .arg(&node_offsets)
                .arg(&nodes)
                .arg(&mut node_value)
                .launch(warp_per_item(plan.num_nodes))?;
            s.launch_builder(&k_terms)
                .arg(&node)
                .arg(&next_node)
                .arg(&terminal_value)
                .arg(&invalid)
                .arg(&node_value)
                .arg(&n32)
                .arg(&params.invalid_penalty)
                .arg(&mut x)
                .arg(&mut td)
                .launch(per_row)?;
            s.launch_builder(&k_nc)
                .arg(&x)
                .arg(&node_rows)
                .arg(&node_offsets)
                .arg(&nodes)
                .arg(&eps)
                .arg(&mean_norm)
                .arg(&mut node_centric)
                .launch(warp_per_item(plan.num_nodes))?;
            s.launch_builder(&k_group)
                .arg(&td)
                .arg(&score)
                .arg(&node_centric)
                .arg(&group_rows)
                .arg(&group_offsets)
                .arg(&groups)
                .arg(&eps)
                .arg(&mean_norm)
                .arg(&params.weight)
                .arg(&mut edge_centric)
                .arg(&mut episode)
                .arg(&mut advantage)
                .launch(warp_per_item(plan.num_groups))?;
            s.launch_builder(&k_bcast)
                .arg(&advantage)
                .arg(&token_offsets)
                .arg(&n32)
                .arg(&mut token_advantage)
                .launch(warp_per_item(n))?;
        }
        let mut token_advantage = s.clone_dtoh(&token_advantage)?;
        token_advantage.truncate(tokens);
        Ok(StageOutputs {
            advantage: s.clone_dtoh(&advantage)?,
            episode: s.clone_dtoh(&episode)?,
            node_centric: s.clone_dtoh(&node_centric)?,
            edge_centric: s.clone_dtoh(&edge_centric)?,
            node_value: s.clone_dtoh(&node_value)?,
            token_advantage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// group, node, next_node, values, invalid, token_offsets.
    type Case = (Vec<u32>, Vec<u32>, Vec<i32>, Vec<f32>, Vec<u8>, Vec<u64>);

    fn base() -> Case {
        (
            vec![0, 0, 1, 0],
            vec![0, 1, 2, 0],
            vec![1, -1, -2, -1],
            vec![1.0, 2.0, 3.0, 4.0],
            vec![0, 1, 0, 0],
            vec![0, 1, 3, 3, 7],
        )
    }

    fn inputs<'a>(b: &'a Case) -> StageInputs<'a> {
        StageInputs {
            group: &b.0,
            node: &b.1,
            next_node: &b.2,
            terminal_value: &b.3,
            visit_value: &b.3,
            invalid: &b.4,
            score: &b.3,
            token_offsets: &b.5,
        }
    }

    #[test]
    fn plan_is_stable_csr() {
        let b = base();
        let p = StagePlan::new(&inputs(&b)).unwrap();
        assert_eq!((p.num_nodes, p.num_groups), (3, 2));
        assert_eq!(p.node_rows, vec![0, 3, 1, 2]);
        assert_eq!(p.node_offsets, vec![0, 2, 3, 4]);
        assert_eq!(p.group_rows, vec![0, 1, 3, 2]);
        assert_eq!(p.group_offsets, vec![0, 3, 4]);
    }

    #[test]
    fn plan_rejects_bad_ids() {
        let mut b = base();
        b.2[0] = 2; // node 2 belongs to group 1, row 0 to group 0
        assert!(StagePlan::new(&inputs(&b)).is_err());
        let mut b = base();
        b.2[0] = -3;
        assert!(StagePlan::new(&inputs(&b)).is_err());
        let mut b = base();
        b.2[0] = 7;
        assert!(StagePlan::new(&inputs(&b)).is_err());
        let mut b = base();
        b.0[2] = 0;
        b.0[1] = 1; // node 1 now in group 1 but row 0 (group 0) leads to it
        assert!(StagePlan::new(&inputs(&b)).is_err());
        let mut b = base();
        b.1[3] = 2; // node 2 visited from groups 1 and 0
        assert!(StagePlan::new(&inputs(&b)).is_err());
    }

    #[test]
    fn plan_rejects_bad_shapes_and_values() {
        let mut b = base();
        b.5[2] = 0;
        assert!(StagePlan::new(&inputs(&b)).is_err());
        let mut b = base();
        b.5.pop();
        assert!(StagePlan::new(&inputs(&b)).is_err());
        let mut b = base();
        b.3[1] = f32::NAN;
        assert!(StagePlan::new(&inputs(&b)).is_err());
        let mut b = base();
        b.4.pop();
        assert!(StagePlan::new(&inputs(&b)).is_err());
        let empty: Case = (vec![], vec![], vec![], vec![], vec![], vec![0]);
        assert!(StagePlan::new(&inputs(&empty)).is_err());
    }

    #[test]
    fn params_are_checked() {
        assert!(check_params(&StageParams::default()).is_ok());
        let p = StageParams { epsilon: -1.0, ..StageParams::default() };
        assert!(check_params(&p).is_err());
        let p = StageParams { weight: f32::INFINITY, ..StageParams::default() };
        assert!(check_params(&p).is_err());
    }
}
