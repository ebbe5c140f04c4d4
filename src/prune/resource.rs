//! Resource models: MACs and parameters as functions of the per-group keep ratios.
//!
//! Each node's output channel count is a linear function of the keep ratios (a group's ratio
//! for its producers, carried through pass-through ops, a weighted sum after a concat). A
//! layer's cost is its dense cost times its output fraction, times its input fraction where
//! both axes are pruned (dense convolutions, linear layers), so the total is the quadratic
//! form `c + b·a + aᵀ A a` of ALGORITHMS.md, with gradient `(A + Aᵀ) a + b`. Evaluated at the
//! integer channel counts of a pruned network it gives exactly the counts of that network.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::groups::{ChannelGroup, is_pass_through, producer_groups};
use super::mask::Selection;
use crate::count::node_macs;
use crate::graph::{Graph, Op};

/// The resources lopper budgets (latency has its own, measured model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Macs,
    Params,
}

/// `c + Σ w_g a_g`: a node's channel fraction as a function of the keep ratios.
#[derive(Debug, Clone, Default)]
pub struct Affine {
    pub c: f64,
    pub terms: BTreeMap<usize, f64>,
}

impl Affine {
    fn constant(c: f64) -> Affine {
        Affine {
            c,
            terms: BTreeMap::new(),
        }
    }
    fn var(g: usize) -> Affine {
        Affine {
            c: 0.0,
            terms: BTreeMap::from([(g, 1.0)]),
        }
    }
    /// The value at keep ratios `a`.
    pub fn eval(&self, a: &[f64]) -> f64 {
        self.c + self.terms.iter().map(|(&g, &w)| w * a[g]).sum::<f64>()
    }
    fn add_scaled(&mut self, other: &Affine, s: f64) {
        self.c += s * other.c;
        for (&g, &w) in &other.terms {
            *self.terms.entry(g).or_default() += s * w;
        }
    }
}

/// The output channel fraction of every node as an affine function of the keep ratios: a
/// group's ratio at its producers, carried through pass-through ops, a channel-weighted sum
/// after a concat.
pub fn channel_fractions(graph: &Graph, groups: &[ChannelGroup]) -> Vec<Affine> {
    let producer_group = producer_groups(groups);
    let mut frac: Vec<Affine> = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let f = match &node.op {
            Op::Input { .. } => Affine::constant(1.0),
            Op::Conv2d { .. } if is_pass_through(&node.op) => frac[node.inputs[0]].clone(),
            Op::Conv2d { .. } | Op::Linear { .. } => producer_group
                .get(&i)
                .map_or(Affine::constant(1.0), |&g| Affine::var(g)),
            Op::Concat => {
                let total = node.shape[0] as f64;
                let mut f = Affine::default();
                for &j in &node.inputs {
                    f.add_scaled(&frac[j], graph.nodes[j].shape[0] as f64 / total);
                }
                f
            }
            _ => frac[node.inputs[0]].clone(),
        };
        frac.push(f);
    }
    frac
}

/// `c + b·a + Σ A_gh a_g a_h` over the keep ratios of all groups.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceModel {
    pub resource: Resource,
    pub constant: f64,
    pub linear: Vec<f64>,
    /// Upper-triangular entries `(g, h, A_gh)` with `g <= h`.
    pub quadratic: Vec<(usize, usize, f64)>,
}

impl ResourceModel {
    /// Builds the model of `resource` for `graph` and its channel groups.
    pub fn new(resource: Resource, graph: &Graph, groups: &[ChannelGroup]) -> ResourceModel {
        let frac = channel_fractions(graph, groups);
        let mut constant = 0.0;
        let mut linear = vec![0.0; groups.len()];
        let mut quad: BTreeMap<(usize, usize), f64> = BTreeMap::new();
        // Adds `k * x` (`y` = None) or `k * x * y`.
        let mut add = |k: f64, x: &Affine, y: Option<&Affine>| match y {
            None => {
                constant += k * x.c;
                for (&g, &w) in &x.terms {
                    linear[g] += k * w;
                }
            }
            Some(y) => {
                constant += k * x.c * y.c;
                for (&g, &w) in &x.terms {
                    linear[g] += k * w * y.c;
                }
                for (&h, &v) in &y.terms {
                    linear[h] += k * v * x.c;
                }
                for (&g, &w) in &x.terms {
                    for (&h, &v) in &y.terms {
                        *quad.entry((g.min(h), g.max(h))).or_default() += k * w * v;
                    }
                }
            }
        };
        for (i, node) in graph.nodes.iter().enumerate() {
            let fo = &frac[i];
            // The input fraction counts only where both axes are pruned (not pass-through).
            let fi = node
                .inputs
                .first()
                .map(|&j| &frac[j])
                .filter(|_| !is_pass_through(&node.op));
            match resource {
                Resource::Macs => {
                    let m = node_macs(graph, i) as f64;
                    if m > 0.0 {
                        add(m, fo, fi);
                    }
                }
                Resource::Params => {
                    for (name, shape) in node.op.param_shapes() {
                        if name.starts_with("running_") {
                            continue;
                        }
                        let n = shape.iter().product::<usize>() as f64;
                        let weight_of_two_axes = name == "weight"
                            && matches!(node.op, Op::Conv2d { .. } | Op::Linear { .. });
                        add(n, fo, if weight_of_two_axes { fi } else { None });
                    }
                }
            }
        }
        ResourceModel {
            resource,
            constant,
            linear,
            quadratic: quad.into_iter().map(|((g, h), v)| (g, h, v)).collect(),
        }
    }

    /// `R(a)`.
    pub fn eval(&self, a: &[f64]) -> f64 {
        let mut r = self.constant;
        for (g, b) in self.linear.iter().enumerate() {
            r += b * a[g];
        }
        for &(g, h, v) in &self.quadratic {
            r += v * a[g] * a[h];
        }
        r
    }

    /// `∂R/∂a`.
    pub fn grad(&self, a: &[f64]) -> Vec<f64> {
        let mut d = self.linear.clone();
        for &(g, h, v) in &self.quadratic {
            d[g] += v * a[h];
            d[h] += v * a[g];
        }
        d
    }

    /// The dense model's cost (all ratios 1).
    pub fn dense(&self) -> f64 {
        self.eval(&vec![1.0; self.linear.len()])
    }
}

/// The keep ratio of every group under `selection`.
pub fn keep_ratios(groups: &[ChannelGroup], selection: &Selection) -> Vec<f64> {
    groups
        .iter()
        .map(|g| {
            selection.keep[g.id]
                .as_ref()
                .map_or(1.0, |k| k.len() as f64 / g.channels as f64)
        })
        .collect()
}
