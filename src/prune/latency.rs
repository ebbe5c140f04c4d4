//! Latency: a per-layer lookup table measured on the target device (`lopper profile`), and a
//! latency model that interpolates it as a function of the keep ratios.
//!
//! Every node is timed alone, on its own input shape at the profiled batch size, for a grid
//! of input and output channel fractions (one axis for ops whose input and output channels
//! are the same). The model evaluates each node's table bilinearly at the node's channel
//! fractions (piecewise linear, so it has a gradient) and adds a constant for what the
//! per-node sum misses at full width (framework overhead between ops).

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use super::groups::ChannelGroup;
use super::resource::{Affine, channel_fractions};
use crate::error::{LopperError, Result};
use crate::fsutil;
use crate::graph::{Graph, GraphBuilder, Node, Op};
use crate::model::{Model, NoHook, Value};

pub const PROFILE_FORMAT_VERSION: u32 = 1;

/// The channel fractions profiled on each axis.
pub const GRID: [f64; 5] = [0.125, 0.25, 0.5, 0.75, 1.0];

/// One node's table: `ms[i][j]` at input fraction `in_grid[i]`, output fraction `out_grid[j]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeTable {
    pub name: String,
    pub in_grid: Vec<f64>,
    pub out_grid: Vec<f64>,
    pub ms: Vec<Vec<f64>>,
}

/// A measured latency profile of one model on one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyProfile {
    pub format_version: u32,
    pub model: String,
    pub device: String,
    pub batch: usize,
    /// Measured dense latency minus the sum of the nodes' full-width times.
    pub overhead_ms: f64,
    /// Measured latency of the whole dense model.
    pub dense_ms: f64,
    pub nodes: Vec<NodeTable>,
}

/// Which axes of a node's cost depend on pruning: (input, output).
fn axes(op: &Op) -> (bool, bool) {
    match op {
        Op::Input { .. } => (false, false),
        Op::Conv2d { .. } if super::groups::is_pass_through(op) => (false, true),
        Op::Conv2d { .. } | Op::Linear { .. } => (true, true),
        // Everything else has as many output channels as input channels (per segment).
        _ => (false, true),
    }
}

/// Scales a channel count by a fraction, keeping at least one.
fn scaled(n: usize, f: f64) -> usize {
    ((n as f64 * f).round() as usize).max(1)
}

/// A one-node graph reproducing `node` of `graph` with input and output channels scaled.
fn single_op(graph: &Graph, node: &Node, fin: f64, fout: f64) -> Result<Graph> {
    let input = &graph.nodes[node.inputs[0]].shape;
    let (ain, aout) = axes(&node.op);
    let fin = if ain { fin } else { fout };
    let mut in_shape = input.clone();
    // Channels are axis 0 of an image, the last axis of a flat value.
    let ch_axis = if in_shape.len() == 3 {
        0
    } else {
        in_shape.len() - 1
    };
    in_shape[ch_axis] = scaled(in_shape[ch_axis], fin);
    let mut op = node.op.clone();
    match &mut op {
        Op::Conv2d {
            in_channels,
            out_channels,
            groups,
            ..
        } => {
            *in_channels = in_shape[0];
            if *groups > 1 {
                *groups = in_shape[0];
                *out_channels = in_shape[0];
            } else {
                *out_channels = scaled(*out_channels, fout);
            }
        }
        Op::Linear {
            in_features,
            out_features,
            ..
        } => {
            *in_features = in_shape[ch_axis];
            *out_features = if aout {
                scaled(*out_features, fout)
            } else {
                *out_features
            };
        }
        Op::BatchNorm2d { channels, .. } => *channels = in_shape[0],
        Op::LayerNorm { dim, .. } => *dim = in_shape[ch_axis],
        Op::Concat => {
            // Time a concat as a copy of its scaled input twice (a fair proxy).
            let mut b = GraphBuilder::new("one", &in_shape);
            let y = b.push(&node.name, Op::Concat, &[0, 0]);
            return b.finish(y);
        }
        _ => {}
    }
    let mut b = GraphBuilder::new("one", &in_shape);
    let inputs = vec![0; node.inputs.len()];
    let y = b.push(&node.name, op, &inputs);
    b.finish(y)
}

/// Repetitions of a whole-model measurement (`model_latency_ms`); every caller (the profile's
/// dense time, the calibration, the iterative method's stop, the report) uses the same count,
/// so they all report the same statistic.
pub const MODEL_REPS: usize = 30;

/// The timing statistic: after a warm-up (at least two calls and 20 ms), `reps` timed calls
/// in three blocks; the result is the smallest of the blocks' medians. A median alone still
/// moved by tens of percent between two measurements of the same model on a shared machine
/// (another process, a frequency change, an allocator warming up during one block); the
/// minimum over blocks keeps the quiet block, which is the model's own cost.
fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    let mut calls = 0;
    while calls < 2 || warm.elapsed().as_secs_f64() < 0.02 {
        f();
        calls += 1;
    }
    let per_block = reps.max(3).div_ceil(3);
    (0..3)
        .map(|_| {
            let mut t: Vec<f64> = (0..per_block)
                .map(|_| {
                    let s = Instant::now();
                    f();
                    s.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .fold(f64::INFINITY, f64::min)
}

fn input_value(graph: &Graph, batch: usize, device: &Device) -> Value {
    let s = graph.input_shape();
    match s.len() {
        3 => Value::Spatial(Tensor::random(
            [batch, s[0], s[1], s[2]],
            Distribution::Normal(0.0, 1.0),
            device,
        )),
        _ => Value::Flat(Tensor::random(
            [batch, s[s.len() - 1]],
            Distribution::Normal(0.0, 1.0),
            device,
        )),
    }
}

fn sync_value(v: Value) {
    let _ = match v {
        Value::Flat(t) => t.sum().into_scalar::<f32>(),
        Value::Seq(t) => t.sum().into_scalar::<f32>(),
        Value::Spatial(t) => t.sum().into_scalar::<f32>(),
    };
}

/// Forward latency in ms of a whole model at `batch` (eval mode), by the one timing
/// statistic (see `time_ms`) over `reps` calls ([`MODEL_REPS`] in the product).
pub fn model_latency_ms(model: &Model, batch: usize, reps: usize, device: &Device) -> f64 {
    let x = input_value(&model.graph, batch, device);
    time_ms(reps, || {
        if let Ok(v) = model.forward_hooked(x.clone(), false, &NoHook) {
            sync_value(v);
        }
    })
}

/// Measures a latency profile of `graph` on `device` (`device_name` is recorded).
pub fn profile(
    graph: &Graph,
    device: &Device,
    device_name: &str,
    batch: usize,
    reps: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<LatencyProfile> {
    let mut nodes = vec![];
    let mut full_sum = 0.0;
    for (i, node) in graph.nodes.iter().enumerate() {
        progress(i, graph.nodes.len());
        let (ain, aout) = axes(&node.op);
        if !ain && !aout {
            continue;
        }
        let in_grid: Vec<f64> = if ain { GRID.to_vec() } else { vec![1.0] };
        let out_grid = GRID.to_vec();
        let mut ms = vec![vec![0.0; out_grid.len()]; in_grid.len()];
        for (a, &fi) in in_grid.iter().enumerate() {
            for (b, &fo) in out_grid.iter().enumerate() {
                let g = single_op(graph, node, fi, fo)?;
                let m = Model::init(g, 0, device)?;
                let x = input_value(&m.graph, batch, device);
                ms[a][b] = time_ms(reps, || {
                    if let Ok(v) = m.forward_hooked(x.clone(), false, &NoHook) {
                        sync_value(v);
                    }
                });
            }
        }
        full_sum += ms[in_grid.len() - 1][out_grid.len() - 1];
        nodes.push(NodeTable {
            name: node.name.clone(),
            in_grid,
            out_grid,
            ms,
        });
    }
    let dense = Model::init(graph.clone(), 0, device)?;
    let dense_ms = model_latency_ms(&dense, batch, MODEL_REPS, device);
    Ok(LatencyProfile {
        format_version: PROFILE_FORMAT_VERSION,
        model: graph.name.clone(),
        device: device_name.to_string(),
        batch,
        overhead_ms: dense_ms - full_sum,
        dense_ms,
        nodes,
    })
}

impl LatencyProfile {
    pub fn save(&self, path: &Path) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| LopperError::Config(e.to_string()))?;
        fsutil::write_atomic(path, &json)
    }

    pub fn load(path: &Path) -> Result<LatencyProfile> {
        let p: LatencyProfile = serde_json::from_slice(&fsutil::read(path)?).map_err(|e| {
            LopperError::bad_file(path, format!("expected a lopper latency profile: {e}"))
        })?;
        if p.format_version != PROFILE_FORMAT_VERSION {
            return Err(LopperError::bad_file(
                path,
                format!(
                    "profile format version {} is not supported",
                    p.format_version
                ),
            ));
        }
        Ok(p)
    }
}

/// Piecewise-linear interpolation on a sorted grid: (value, d value / d x). Clamped outside.
fn interp(grid: &[f64], x: f64) -> (usize, f64) {
    if grid.len() == 1 || x <= grid[0] {
        return (0, 0.0);
    }
    for k in 0..grid.len() - 1 {
        if x <= grid[k + 1] {
            return (k, (x - grid[k]) / (grid[k + 1] - grid[k]));
        }
    }
    (grid.len() - 2, 1.0)
}

/// Bilinear value and partial derivatives of a table at (fin, fout).
fn bilinear(t: &NodeTable, fin: f64, fout: f64) -> (f64, f64, f64) {
    let (i, u) = interp(&t.in_grid, fin);
    let (j, v) = interp(&t.out_grid, fout);
    let i1 = (i + 1).min(t.in_grid.len() - 1);
    let j1 = (j + 1).min(t.out_grid.len() - 1);
    let (a, b, c, d) = (t.ms[i][j], t.ms[i][j1], t.ms[i1][j], t.ms[i1][j1]);
    let value = (1.0 - u) * (1.0 - v) * a + (1.0 - u) * v * b + u * (1.0 - v) * c + u * v * d;
    let span = |g: &[f64], k: usize, k1: usize| if k1 > k { g[k1] - g[k] } else { f64::INFINITY };
    let inside = |g: &[f64], x: f64| g.len() > 1 && x > g[0] && x < g[g.len() - 1];
    let d_in = if inside(&t.in_grid, fin) {
        ((1.0 - v) * (c - a) + v * (d - b)) / span(&t.in_grid, i, i1)
    } else {
        0.0
    };
    let d_out = if inside(&t.out_grid, fout) {
        ((1.0 - u) * (b - a) + u * (d - c)) / span(&t.out_grid, j, j1)
    } else {
        0.0
    };
    (value, d_in, d_out)
}

/// Latency as a function of the keep ratios, from a profile.
pub struct LatencyModel {
    /// (table, input fraction, output fraction) per profiled node.
    terms: Vec<(NodeTable, Option<Affine>, Affine)>,
    overhead_ms: f64,
    groups: usize,
}

impl LatencyModel {
    /// Matches a profile to `graph` by node names; every profiled node must exist.
    pub fn new(
        profile: &LatencyProfile,
        graph: &Graph,
        groups: &[ChannelGroup],
    ) -> Result<LatencyModel> {
        let frac = channel_fractions(graph, groups);
        let mut terms = vec![];
        for t in &profile.nodes {
            let i = graph.node_index(&t.name).ok_or_else(|| {
                LopperError::Config(format!(
                    "the latency profile (of model '{}') has node '{}', which this model lacks: profile this model",
                    profile.model, t.name
                ))
            })?;
            let node = &graph.nodes[i];
            let fin = (t.in_grid.len() > 1).then(|| frac[node.inputs[0]].clone());
            terms.push((t.clone(), fin, frac[i].clone()));
        }
        Ok(LatencyModel {
            terms,
            overhead_ms: profile.overhead_ms,
            groups: groups.len(),
        })
    }

    /// Predicted latency in ms.
    pub fn eval(&self, a: &[f64]) -> f64 {
        self.overhead_ms
            + self
                .terms
                .iter()
                .map(|(t, fin, fout)| {
                    bilinear(t, fin.as_ref().map_or(1.0, |f| f.eval(a)), fout.eval(a)).0
                })
                .sum::<f64>()
    }

    /// Gradient of the predicted latency with respect to the keep ratios.
    pub fn grad(&self, a: &[f64]) -> Vec<f64> {
        let mut d = vec![0.0; self.groups];
        for (t, fin, fout) in &self.terms {
            let (_, di, dout) = bilinear(t, fin.as_ref().map_or(1.0, |f| f.eval(a)), fout.eval(a));
            if let Some(f) = fin {
                for (&g, &w) in &f.terms {
                    d[g] += di * w;
                }
            }
            for (&g, &w) in &fout.terms {
                d[g] += dout * w;
            }
        }
        d
    }

    pub fn dense(&self) -> f64 {
        self.eval(&vec![1.0; self.groups])
    }
}

/// Builds and measures until the measured latency lands in `[0.9 limit, limit]`: the
/// profile only predicts latency (per-layer times do not add up exactly, and a pruned width
/// can run faster or slower than the grid around it suggests), so the limit the build is
/// given (starting at `start`, in the cost model's units) is corrected after each round,
/// aiming at 0.95 of the budget: by budget/measured after the first round, then along the
/// line through two measured rounds (the ones that bracket the budget once there are such),
/// because a fixed cost the profile misses makes the proportional correction crawl. Returns the best model found in
/// `rounds` rounds (within the budget and closest to it; or, if none fits, the fastest) and
/// its measured latency. `log` sees each round's model limit and measurement. A build that
/// fails after the first round (the budget is out of reach at the rescaled limit) ends the
/// search with what was found.
pub fn calibrate<T>(
    limit: f64,
    start: f64,
    rounds: usize,
    mut build: impl FnMut(f64) -> Result<T>,
    measure: impl Fn(&T) -> f64,
    mut log: impl FnMut(usize, f64, f64),
) -> Result<(T, f64)> {
    let mut model_limit = start;
    let mut best: Option<(T, f64)> = None;
    let mut points: Vec<(f64, f64)> = vec![];
    for round in 1..=rounds.max(1) {
        let candidate = match build(model_limit) {
            Ok(m) => m,
            Err(_) if best.is_some() => break,
            Err(e) => return Err(e),
        };
        let measured = measure(&candidate);
        log(round, model_limit, measured);
        let better = match &best {
            None => true,
            Some((_, b)) if *b > limit => measured < *b,
            Some((_, b)) => measured <= limit && measured > *b,
        };
        let done = measured <= limit && measured >= 0.9 * limit;
        if better {
            best = Some((candidate, measured));
        }
        if done {
            break;
        }
        points.push((model_limit, measured));
        model_limit = next_limit(&points, 0.95 * limit);
    }
    Ok(best.expect("at least one round ran"))
}

/// The next model limit of the calibration, aiming the measurement at `aim`, from the
/// (model limit, measured) pairs so far.
fn next_limit(points: &[(f64, f64)], aim: f64) -> f64 {
    let &(x, y) = points.last().expect("one round measured");
    let proportional = x * aim / y.max(f64::MIN_POSITIVE);
    // The two points to interpolate between: the closest ones on each side of `aim` if the
    // rounds bracket it, the last two otherwise.
    let under = points
        .iter()
        .filter(|p| p.1 <= aim)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let over = points
        .iter()
        .filter(|p| p.1 > aim)
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let (p, q) = match (under, over) {
        (Some(u), Some(o)) => (*u, *o),
        _ if points.len() >= 2 => (points[points.len() - 2], (x, y)),
        _ => return proportional,
    };
    let slope = (q.1 - p.1) / (q.0 - p.0);
    if !(slope.is_finite() && slope > 0.0) {
        // Noise or a flat stretch: the line says nothing.
        return proportional;
    }
    let next = p.0 + (aim - p.1) / slope;
    // An extrapolated line is trusted at most a factor 4 away from the last limit.
    next.clamp(0.25 * x, 4.0 * x)
}
