//! The state-overlap graph of one task group, as a petgraph `DiGraph`.
//!
//! The estimators never build this graph: they work on flat node ids, which is
//! what makes them fast. This module turns those ids (the G2PO output columns
//! `node`, `next_node`, `node_value`) into an explicit graph so that a user can
//! see what the engine saw: one node per distinct state with its visits and
//! pooled value, one edge per distinct transition with its count and the rows
//! that took it, and the success and failure terminals. Statistics and DOT /
//! JSON exports sit on top.

use ahash::AHashMap;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeFiltered;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::estimators::{Advantages, FAILURE_TERMINAL, SUCCESS_TERMINAL};
use crate::rollout::{Anchor, RolloutBatch};

/// What a graph node stands for.
///
/// ```
/// use g2po::graph::NodeKind;
/// assert_ne!(NodeKind::State, NodeKind::Success);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A fused environment state.
    State,
    /// The success terminal.
    Success,
    /// The failure / truncation terminal.
    Failure,
}

/// A node of the state graph.
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
/// let g = g2po::graph::StateGraph::build(&batch, &adv, 0)?;
/// let hall = &g.graph[g.state_index(0).unwrap()];
/// assert_eq!((hall.visits, hall.label.as_str()), (2, "hall"));
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateNode {
    /// The engine's node id (-1 success, -2 failure terminal).
    pub id: i32,
    /// State or terminal.
    pub kind: NodeKind,
    /// Rows that act from this state (0 for terminals).
    pub visits: u32,
    /// Pooled value V (terminals: the value the estimator gave them, averaged over the
    /// steps entering them: the episode reward or the fixed terminal value).
    pub value: f64,
    /// Anchor text of the first visit (or the key in hex), for display.
    pub label: String,
}

/// An edge: one distinct transition between two nodes.
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
/// let g = g2po::graph::StateGraph::build(&batch, &adv, 0)?;
/// assert!(g.graph.edge_weights().all(|e| e.count as usize == e.rows.len()));
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// How many rows took it.
    pub count: u32,
    /// The batch rows that took it.
    pub rows: Vec<u32>,
    /// Mean advantage of those rows.
    pub mean_advantage: f64,
}

/// Summary statistics of one group's graph.
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
/// let s = g2po::graph::StateGraph::build(&batch, &adv, 0)?.stats();
/// assert_eq!((s.states, s.rows, s.edges), (3, 4, 4));
/// assert!((s.single_visit_fraction - 0.5).abs() < 1e-12);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphStats {
    /// State nodes (terminals excluded).
    pub states: usize,
    /// Terminal nodes present.
    pub terminals: usize,
    /// Distinct transitions, terminals included.
    pub edges: usize,
    /// Rows (visits) in the group.
    pub rows: usize,
    /// Rows per state node.
    pub mean_visits_per_node: f64,
    /// Fraction of rows whose state was visited only once.
    pub single_visit_fraction: f64,
    /// Distinct self-loop transitions (an action that changed nothing).
    pub self_loops: usize,
    /// Whether the graph has a cycle through two or more states.
    pub has_cycles: bool,
}

/// The state graph of one task group.
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
/// let g = g2po::graph::StateGraph::build(&batch, &adv, 0)?;
/// assert!(g.to_dot().starts_with("digraph"));
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct StateGraph {
    /// The task group's id.
    pub group: String,
    /// The graph itself.
    pub graph: DiGraph<StateNode, Transition>,
    states: Vec<NodeIndex>,
}

impl StateGraph {
    /// Builds the graph of group `group` (dense index) from G2PO output.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when a G2PO column is missing or of the wrong length,
    /// [`Error::UnknownGroup`] for a group index out of range, [`Error::BadAdvantages`]
    /// when a hand-built [`Advantages`] has node ids that are negative, not dense in
    /// first-seen row order, or a next node outside the group.
    ///
    /// ```
    /// # use g2po::AdvantageEstimator;
    /// let batch = g2po::doc_batch();
    /// let grpo = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::Grpo))?.estimate(&batch)?;
    /// assert!(g2po::graph::StateGraph::build(&batch, &grpo, 0).is_err()); // needs G2PO columns
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn build(batch: &RolloutBatch, adv: &Advantages, group: usize) -> Result<Self> {
        let n = batch.len();
        for (column, len) in [
            ("advantage", adv.advantage.len()),
            ("node", adv.node.len()),
            ("next_node", adv.next_node.len()),
            ("node_value", adv.node_value.len()),
            ("next_value", adv.next_value.len()),
        ] {
            if len != n {
                return Err(Error::InvalidParameter {
                    name: "advantages",
                    reason: format!(
                        "the state graph needs G2PO output (node, next_node, node_value, next_value) for every \
                         row: column {column} has {len} entries for {n} rows"
                    ),
                });
            }
        }
        let group_id = batch.group_ids().get(group).ok_or_else(|| Error::UnknownGroup(group.to_string()))?.clone();
        let rows = batch.group_rows(group);
        let bad =
            |row: u32, column: &'static str, reason: String| Error::BadAdvantages { row: row as usize, column, reason };
        let mut graph = DiGraph::new();
        let mut states: Vec<NodeIndex> = Vec::new();
        let mut terminal: AHashMap<i32, (NodeIndex, f64, u32)> = AHashMap::new();
        for &r in rows {
            let id = adv.node[r as usize];
            let Ok(id) = usize::try_from(id) else {
                return Err(bad(r, "node", format!("node id {id} is negative")));
            };
            if id > states.len() {
                return Err(bad(
                    r,
                    "node",
                    format!(
                        "node id {id} skips ids: ids are dense per task group in first-seen row order, next is {}",
                        states.len()
                    ),
                ));
            }
            if id == states.len() {
                let label = match batch.anchor(r as usize) {
                    Anchor::Text(t) => t.to_owned(),
                    Anchor::Key(k) => format!("{k:#018x}"),
                };
                states.push(graph.add_node(StateNode {
                    id: id as i32,
                    kind: NodeKind::State,
                    visits: 0,
                    value: adv.node_value[r as usize] as f64,
                    label,
                }));
            }
            graph[states[id]].visits += 1;
        }
        let mut edges: AHashMap<(NodeIndex, NodeIndex), petgraph::graph::EdgeIndex> = AHashMap::new();
        for &r in rows {
            let r_usize = r as usize;
            let from = states[adv.node[r_usize] as usize];
            let next = adv.next_node[r_usize];
            let to = match next {
                0.. => *states.get(next as usize).ok_or_else(|| {
                    bad(
                        r,
                        "next_node",
                        format!("next node {next} is not a node of group {group_id:?} ({} nodes)", states.len()),
                    )
                })?,
                SUCCESS_TERMINAL | FAILURE_TERMINAL => {
                    // The terminal's value as the estimator used it (episode reward or fixed value).
                    let value = adv.next_value[r_usize] as f64;
                    let entry = terminal.entry(next).or_insert_with(|| {
                        let (kind, label) = if next == SUCCESS_TERMINAL {
                            (NodeKind::Success, "success")
                        } else {
                            (NodeKind::Failure, "failure")
                        };
                        let index =
                            graph.add_node(StateNode { id: next, kind, visits: 0, value: 0.0, label: label.into() });
                        (index, 0.0, 0)
                    });
                    entry.1 += value;
                    entry.2 += 1;
                    entry.0
                }
                _ => {
                    return Err(bad(
                        r,
                        "next_node",
                        format!("{next} is neither a node (>= 0) nor a terminal (-1, -2)"),
                    ));
                }
            };
            let edge = *edges.entry((from, to)).or_insert_with(|| {
                graph.add_edge(from, to, Transition { count: 0, rows: Vec::new(), mean_advantage: 0.0 })
            });
            let t = &mut graph[edge];
            t.count += 1;
            t.rows.push(r);
            t.mean_advantage += adv.advantage[r_usize] as f64;
        }
        for t in graph.edge_weights_mut() {
            t.mean_advantage /= t.count as f64;
        }
        for (index, sum, count) in terminal.into_values() {
            graph[index].value = sum / count as f64;
        }
        Ok(Self { group: group_id, graph, states })
    }

    /// The petgraph index of state node `id`.
    ///
    /// ```
    /// # use g2po::AdvantageEstimator;
    /// # let batch = g2po::doc_batch();
    /// # let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
    /// let g = g2po::graph::StateGraph::build(&batch, &adv, 0)?;
    /// assert!(g.state_index(99).is_none());
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn state_index(&self, id: usize) -> Option<NodeIndex> {
        self.states.get(id).copied()
    }

    /// Summary statistics.
    ///
    /// ```
    /// # use g2po::AdvantageEstimator;
    /// # let batch = g2po::doc_batch();
    /// # let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
    /// let s = g2po::graph::StateGraph::build(&batch, &adv, 0)?.stats();
    /// assert!(!s.has_cycles && s.self_loops == 0);
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn stats(&self) -> GraphStats {
        let g = &self.graph;
        let rows: u32 = self.states.iter().map(|&i| g[i].visits).sum();
        let single: u32 = self.states.iter().map(|&i| g[i].visits).filter(|&v| v == 1).sum();
        let self_loops = g.edge_indices().filter(|&e| g.edge_endpoints(e).is_some_and(|(a, b)| a == b)).count();
        let without_loops = EdgeFiltered::from_fn(g, |e| {
            use petgraph::visit::EdgeRef;
            e.source() != e.target()
        });
        GraphStats {
            states: self.states.len(),
            terminals: g.node_count() - self.states.len(),
            edges: g.edge_count(),
            rows: rows as usize,
            mean_visits_per_node: rows as f64 / self.states.len().max(1) as f64,
            single_visit_fraction: single as f64 / rows.max(1) as f64,
            self_loops,
            has_cycles: petgraph::algo::is_cyclic_directed(&without_loops),
        }
    }

    /// Graphviz DOT: states as ellipses labelled with value and visits,
    /// terminals as boxes, edges labelled with count and mean advantage.
    ///
    /// ```
    /// # use g2po::AdvantageEstimator;
    /// # let batch = g2po::doc_batch();
    /// # let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
    /// let dot = g2po::graph::StateGraph::build(&batch, &adv, 0)?.to_dot();
    /// assert!(dot.contains("success") && dot.contains("->"));
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn to_dot(&self) -> String {
        use std::fmt::Write;
        let escape = |s: &str| {
            let short: String = s.chars().take(60).collect();
            short.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
        };
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", escape(&self.group));
        let _ = writeln!(out, "  rankdir=LR;");
        for i in self.graph.node_indices() {
            let n = &self.graph[i];
            let (shape, text) = match n.kind {
                NodeKind::State => ("ellipse", format!("{}\\nV={:.3} n={}", escape(&n.label), n.value, n.visits)),
                _ => ("box", format!("{}\\nV={:.3}", n.label, n.value)),
            };
            let _ = writeln!(out, "  n{} [shape={shape}, label=\"{text}\"];", i.index());
        }
        for e in self.graph.edge_indices() {
            let (a, b) = self.graph.edge_endpoints(e).expect("edge of this graph");
            let t = &self.graph[e];
            let _ =
                writeln!(out, "  n{} -> n{} [label=\"x{} A={:.3}\"];", a.index(), b.index(), t.count, t.mean_advantage);
        }
        out.push_str("}\n");
        out
    }

    /// JSON with the group id, the statistics, the nodes and the edges.
    ///
    /// ```
    /// # use g2po::AdvantageEstimator;
    /// # let batch = g2po::doc_batch();
    /// # let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
    /// let json = g2po::graph::StateGraph::build(&batch, &adv, 0)?.to_json();
    /// assert_eq!(json["nodes"].as_array().unwrap().len(), 5); // 3 states, 2 terminals
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<_> = self.graph.node_indices().map(|i| &self.graph[i]).collect();
        let edges: Vec<_> = self
            .graph
            .edge_indices()
            .map(|e| {
                let (a, b) = self.graph.edge_endpoints(e).expect("edge of this graph");
                serde_json::json!({
                    "from": self.graph[a].id,
                    "to": self.graph[b].id,
                    "count": self.graph[e].count,
                    "rows": self.graph[e].rows,
                    "mean_advantage": self.graph[e].mean_advantage,
                })
            })
            .collect();
        serde_json::json!({ "group": self.group, "stats": self.stats(), "nodes": nodes, "edges": edges })
    }
}
