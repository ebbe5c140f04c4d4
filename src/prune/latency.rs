//! Latency: a per-layer lookup table measured on the target device (`lopper profile`), and a
//! latency model that interpolates it as a function of the keep ratios.
//!
//! Every node is timed alone, on its own input shape at the profiled batch size, for a grid
//! of input and output channel fractions (every count on axes of up to 8 channels; one axis
//! for ops whose input and output channels are the same), and the whole model is timed
//! dense and at its narrowest (every prunable group at 1/8). The model evaluates each node's table bilinearly at the node's channel
//! fractions (piecewise linear, so it has a gradient), sums them, and maps the sum linearly
//! onto the two whole-model measurements (nodes alone miss the overhead between ops, and
//! their sum does not shrink in step with the model's time).
//!
//! Measured latency of a pruned model (`LatencyMeter`) is its time relative to the dense
//! model in alternating calls, in milliseconds of the profile's dense time.

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
    /// Measured latency of the whole dense model.
    pub dense_ms: f64,
    /// Measured latency of the whole model with every prunable group cut to
    /// [`FLOOR_FRACTION`] of its channels (absent in profiles from before it was measured).
    /// The latency model maps the per-node sum onto the dense and floor measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_ms: Option<f64>,
    pub nodes: Vec<NodeTable>,
}

/// The narrow end of the whole-model measurement: every prunable group at this share of its
/// channels (the grid's smallest fraction).
pub const FLOOR_FRACTION: f64 = GRID[0];

/// Keep ratios of the floor model: each prunable group at [`FLOOR_FRACTION`] of its channels
/// (rounded up, at least one), the rest whole.
fn floor_ratios(groups: &[ChannelGroup]) -> Vec<f64> {
    groups
        .iter()
        .map(|g| {
            if g.is_prunable() {
                floor_width(g.channels) as f64 / g.channels as f64
            } else {
                1.0
            }
        })
        .collect()
}

fn floor_width(channels: usize) -> usize {
    ((channels as f64 * FLOOR_FRACTION).ceil() as usize).clamp(1, channels)
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

/// Channel counts up to this are profiled at every count, not only at the grid's fractions:
/// on flex a convolution's time is not monotone in small channel counts (LeNet-5's conv1 at
/// 4 of its 6 channels ran slower than at all 6 at batch 64), and a grid of five fractions
/// over a handful of channels would interpolate over such a step.
pub const EVERY_COUNT_UP_TO: usize = 8;

/// The fractions to profile an axis of `channels` at: the grid, or for a small axis every
/// count (k / channels, the fractions pruning can produce there).
fn axis_grid(channels: usize) -> Vec<f64> {
    if channels <= EVERY_COUNT_UP_TO {
        (1..=channels).map(|k| k as f64 / channels as f64).collect()
    } else {
        GRID.to_vec()
    }
}

/// The channel count of `shape` (axis 0 of an image, the last axis of a flat value).
fn channels_of(shape: &[usize]) -> usize {
    if shape.len() == 3 {
        shape[0]
    } else {
        shape[shape.len() - 1]
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

/// Repetitions of a whole-model measurement: calls of `model_latency_ms` (the profile's and
/// the report's dense times) and pairs of `relative_latency` (every pruned model).
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

/// One eval-mode forward pass, waited for.
fn forward_once(model: &Model, x: &Value) {
    if let Ok(v) = model.forward_hooked(x.clone(), false, &NoHook) {
        sync_value(v);
    }
}

/// Forward latency in ms of a whole model at `batch` (eval mode), by the one timing
/// statistic (see `time_ms`) over `reps` calls ([`MODEL_REPS`] in the product).
pub fn model_latency_ms(model: &Model, batch: usize, reps: usize, device: &Device) -> f64 {
    let x = input_value(&model.graph, batch, device);
    time_ms(reps, || forward_once(model, &x))
}

/// Latency of `model` as a share of `reference`'s at `batch`, timed in alternating calls so
/// that a slow phase of a shared machine hits both alike: the median of the per-pair ratios,
/// over at least `reps` pairs and 0.25 s. Timing the two in separate blocks (even interleaved
/// blocks) moved the same model by ±25% against itself at batch 1 on a 2-core VM; per-call
/// pairs hold it within a few percent (BENCHMARKS.md f, `--example width_sweep`).
pub fn relative_latency(
    model: &Model,
    reference: &Model,
    batch: usize,
    reps: usize,
    device: &Device,
) -> f64 {
    paired_ratio(model, reference, batch, reps, 0.25, device)
}

/// `relative_latency` over at least `reps` pairs and `min_secs`.
fn paired_ratio(
    model: &Model,
    reference: &Model,
    batch: usize,
    reps: usize,
    min_secs: f64,
    device: &Device,
) -> f64 {
    let xm = input_value(&model.graph, batch, device);
    let xr = input_value(&reference.graph, batch, device);
    let call = |m: &Model, x: &Value| {
        let s = Instant::now();
        forward_once(m, x);
        s.elapsed().as_secs_f64()
    };
    // Warm-up: a freshly built model's first calls can run slower (allocations, caches); at
    // least three pairs and 50 ms.
    let warm = Instant::now();
    let mut calls = 0;
    while calls < 3 || warm.elapsed().as_secs_f64() < 0.05 {
        call(model, &xm);
        call(reference, &xr);
        calls += 1;
    }
    let started = Instant::now();
    let mut ratios = vec![];
    while ratios.len() < reps.max(1)
        || (started.elapsed().as_secs_f64() < min_secs && ratios.len() < 20 * reps.max(1))
    {
        // Alternate which goes first, so neither always runs on the other's warm caches.
        let r = if ratios.len() % 2 == 0 {
            let a = call(model, &xm);
            a / call(reference, &xr)
        } else {
            let b = call(reference, &xr);
            call(model, &xm) / b
        };
        ratios.push(r);
    }
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// How lopper measures a pruned model's latency wherever it checks a latency budget (the
/// calibration, the iterative method's stop, the report): its latency relative to the dense
/// model (`relative_latency`), in milliseconds of the dense model's profiled time. A budget
/// given as a share of the dense latency is then checked on the ratio alone; an absolute one
/// is judged against the dense time the profile measured, not a second noisy reading of it.
pub struct LatencyMeter<'a> {
    pub reference: &'a Model,
    pub reference_ms: f64,
    pub batch: usize,
    pub reps: usize,
    pub device: Device,
}

impl LatencyMeter<'_> {
    /// The meter for `profile`'s batch and dense time, with `dense` as the reference.
    pub fn for_profile<'a>(
        dense: &'a Model,
        profile: &LatencyProfile,
        device: &Device,
    ) -> LatencyMeter<'a> {
        LatencyMeter {
            reference: dense,
            reference_ms: profile.dense_ms,
            batch: profile.batch,
            reps: MODEL_REPS,
            device: device.clone(),
        }
    }

    /// `model`'s latency in ms.
    pub fn ms(&self, model: &Model) -> f64 {
        self.reference_ms
            * relative_latency(model, self.reference, self.batch, self.reps, &self.device)
    }
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
    let dense = Model::init(graph.clone(), 0, device)?;
    // The dense time before and after the nodes, the smaller kept: one slow phase of a shared
    // machine during either measurement would otherwise scale every prediction.
    let dense_before = model_latency_ms(&dense, batch, MODEL_REPS, device);
    // Every node variant is timed against one reference op (the first profiled node at full
    // width) in alternating calls, as whole models are: timed alone, one node's table moved
    // against another's with the machine's slow phases, and two profiles of the same model
    // disagreed by 50% on pruned widths. The reference's own time sets the scale, which the
    // two whole-model measurements below correct anyway.
    let Some(first) = graph.nodes.iter().find(|n| axes(&n.op) != (false, false)) else {
        return Err(LopperError::Config(format!(
            "model '{}' has no layer whose cost depends on channels: nothing to profile",
            graph.name
        )));
    };
    let reference = Model::init(single_op(graph, first, 1.0, 1.0)?, 0, device)?;
    let reference_ms = model_latency_ms(&reference, batch, MODEL_REPS, device);
    let mut nodes = vec![];
    for (i, node) in graph.nodes.iter().enumerate() {
        progress(i, graph.nodes.len());
        let (ain, aout) = axes(&node.op);
        if !ain && !aout {
            continue;
        }
        let in_grid: Vec<f64> = if ain {
            axis_grid(channels_of(&graph.nodes[node.inputs[0]].shape))
        } else {
            vec![1.0]
        };
        let out_grid = axis_grid(channels_of(&node.shape));
        let mut ms = vec![vec![0.0; out_grid.len()]; in_grid.len()];
        for (a, &fi) in in_grid.iter().enumerate() {
            for (b, &fo) in out_grid.iter().enumerate() {
                let g = single_op(graph, node, fi, fo)?;
                let m = Model::init(g, 0, device)?;
                ms[a][b] = reference_ms * paired_ratio(&m, &reference, batch, reps, 0.05, device);
            }
        }
        nodes.push(NodeTable {
            name: node.name.clone(),
            in_grid,
            out_grid,
            ms,
        });
    }
    let dense_ms = dense_before.min(model_latency_ms(&dense, batch, MODEL_REPS, device));
    // Nodes timed alone do not add up to the whole model, and their sum does not shrink in
    // step with the model's time (the plain sum plus a constant mispredicted pruned ResNet-20s
    // at batch 1 by 13–40% on average, BENCHMARKS.md). A second whole-model point, at the
    // narrow end, lets the latency model scale the sum between the two measurements.
    let groups = super::groups::channel_groups(graph, &[])?;
    let floor_ms = if groups.iter().any(|g| g.is_prunable()) {
        let mut sel = super::mask::Selection::all(&groups);
        for g in groups.iter().filter(|g| g.is_prunable()) {
            sel.keep[g.id] = Some((0..floor_width(g.channels)).collect());
        }
        let floor = super::surgery::prune_model(&dense, &groups, &sel, device)?;
        Some(dense_ms * relative_latency(&floor, &dense, batch, MODEL_REPS, device))
    } else {
        None
    };
    Ok(LatencyProfile {
        format_version: PROFILE_FORMAT_VERSION,
        model: graph.name.clone(),
        device: device_name.to_string(),
        batch,
        dense_ms,
        floor_ms,
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
        p.check()
            .map_err(|what| LopperError::bad_file(path, what))?;
        Ok(p)
    }

    /// What a profile must hold for the latency model to use it: positive finite times, and
    /// per node increasing channel-fraction grids in (0, 1] with a time for every pair.
    fn check(&self) -> std::result::Result<(), String> {
        let time = |x: f64| x.is_finite() && x >= 0.0;
        if !(self.dense_ms.is_finite() && self.dense_ms > 0.0) {
            return Err(format!(
                "the dense latency {} ms is not a positive time",
                self.dense_ms
            ));
        }
        if self.floor_ms.is_some_and(|f| !time(f)) {
            return Err("the floor latency is not a time".into());
        }
        if self.batch == 0 {
            return Err("the batch size is 0".into());
        }
        for t in &self.nodes {
            let grid_ok = |g: &[f64]| {
                !g.is_empty()
                    && g.iter().all(|x| x.is_finite() && *x > 0.0 && *x <= 1.0)
                    && g.windows(2).all(|w| w[0] < w[1])
            };
            if !grid_ok(&t.in_grid) || !grid_ok(&t.out_grid) {
                return Err(format!(
                    "node '{}': its channel-fraction grids must increase within (0, 1]",
                    t.name
                ));
            }
            if t.ms.len() != t.in_grid.len()
                || t.ms.iter().any(|row| row.len() != t.out_grid.len())
                || t.ms.iter().flatten().any(|x| !time(*x))
            {
                return Err(format!(
                    "node '{}': its table needs a time for each of {} x {} grid points",
                    t.name,
                    t.in_grid.len(),
                    t.out_grid.len()
                ));
            }
        }
        Ok(())
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

/// Latency as a function of the keep ratios, from a profile: the dense measurement plus the
/// change of the per-node sum, scaled so the model also meets the floor measurement
/// (`dense_ms + scale · (sum(a) − sum(1))`; scale 1, the plain sum plus a constant, for a
/// profile without one).
pub struct LatencyModel {
    /// (table, input fraction, output fraction) per profiled node.
    terms: Vec<(NodeTable, Option<Affine>, Affine)>,
    dense_ms: f64,
    sum_dense: f64,
    scale: f64,
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
            let fin = match (t.in_grid.len() > 1, node.inputs.first()) {
                (false, _) => None,
                (true, Some(&input)) => Some(frac[input].clone()),
                (true, None) => {
                    return Err(LopperError::Config(format!(
                        "the latency profile varies node '{}' with its input's channels, but it has no input",
                        t.name
                    )));
                }
            };
            terms.push((t.clone(), fin, frac[i].clone()));
        }
        let mut model = LatencyModel {
            terms,
            dense_ms: profile.dense_ms,
            sum_dense: 0.0,
            scale: 1.0,
            groups: groups.len(),
        };
        model.sum_dense = model.node_sum(&vec![1.0; groups.len()]);
        // The floor was measured with every group prunable by default cut; `groups` may
        // protect more (`--protect`), so the floor's ratios come from the default groups,
        // which carry the same ids.
        let default_groups = super::groups::channel_groups(graph, &[])?;
        let same = default_groups.len() == groups.len()
            && default_groups
                .iter()
                .zip(groups)
                .all(|(x, y)| x.channels == y.channels);
        if let (Some(floor_ms), true) = (profile.floor_ms, same) {
            let drop = model.sum_dense - model.node_sum(&floor_ratios(&default_groups));
            let scale = (profile.dense_ms - floor_ms) / drop;
            if drop > 0.0 && scale.is_finite() && scale > 0.0 {
                model.scale = scale;
            }
        }
        Ok(model)
    }

    fn node_sum(&self, a: &[f64]) -> f64 {
        self.terms
            .iter()
            .map(|(t, fin, fout)| {
                bilinear(t, fin.as_ref().map_or(1.0, |f| f.eval(a)), fout.eval(a)).0
            })
            .sum()
    }

    /// Predicted latency in ms.
    pub fn eval(&self, a: &[f64]) -> f64 {
        self.dense_ms + self.scale * (self.node_sum(a) - self.sum_dense)
    }

    /// How much the node sum is scaled by to meet the floor measurement (1 without one).
    pub fn scale(&self) -> f64 {
        self.scale
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
        d.iter().map(|x| self.scale * x).collect()
    }

    pub fn dense(&self) -> f64 {
        self.eval(&vec![1.0; self.groups])
    }
}
