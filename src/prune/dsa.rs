//! DSA, differentiable sparsity allocation (ALGORITHMS.md "DSA").
//!
//! One keep ratio `a_g = sigmoid(s_g)` per channel group is learned by gradient descent on a
//! held-out validation split while the weights train on the training split, under a resource
//! budget enforced by ADMM. Channels are kept with probability
//! `p_i = sigmoid(beta2 (ln I_i - ln beta1))`, `beta1` solved so that `mean p = a_g`. It plugs
//! into the one training loop as a [`TrainHook`]: masks in every forward pass, a ratio step
//! every `k` weight steps, a log line and schedule update every epoch.

use std::ops::ControlFlow;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::admm::{Admm, AdmmMetric, metric_weights, normalised_weights, ratio_bounds};
use super::allocation::CostModel;
use super::groups::ChannelGroup;
use super::importance::{Criterion, channel_scores};
use super::mask::ChannelMasks;
use crate::data::{BatchIter, Batcher};
use crate::error::{LopperError, Result};
use crate::graph::{Graph, Node};
use crate::model::{Model, NodeHook, Value};
use crate::train::loss::cross_entropy;
use crate::train::{EpochRecord, OptimizerState, StepInfo, TrainHook};

/// The knobs of DSA; the defaults are the ones marked "design choice" in ALGORITHMS.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DsaConfig {
    /// Epochs of joint weight and ratio training (the allocation phase).
    pub epochs: usize,
    /// One ratio step every `ratio_every` weight steps.
    pub ratio_every: usize,
    /// Step size `eta` of the linearised ADMM update of the keep ratios (1 suits the Fisher
    /// signal, normalised to mean magnitude 1: the ratios reach the ADMM optimum in a few
    /// dozen steps; the sampled signal's noise wants a small one such as 0.05).
    pub ratio_lr: f64,
    /// Hardness `beta2`, scheduled linearly from `beta2_start` to `beta2_end` over the ratio
    /// steps of the allocation phase (per step, not per epoch: with one allocation epoch a
    /// per-epoch schedule never leaves `beta2_start`, the sampled masks stay nearly uniform
    /// and the weights never train under the hard masks evaluation and hardening use).
    pub beta2_start: f64,
    pub beta2_end: f64,
    /// ADMM penalty at the start and its growth factor per epoch.
    pub rho: f64,
    pub rho_growth: f64,
    /// Initial logit of every keep ratio (5: a = 0.9933).
    pub init_logit: f64,
    /// Share of the allocation phase over which the budget the projection uses falls
    /// linearly from the dense cost to the target (design choice): the ratios then approach
    /// the budget gradually and the loss gradient has time to shape them, instead of the dual
    /// variable slamming every ratio down in the first few steps.
    pub budget_ramp: f64,
    /// The metric of the ADMM penalty and projection (Euclidean as in ALGORITHMS.md, or
    /// weighted by each group's share of the cost).
    #[serde(default)]
    pub metric: AdmmMetric,
    /// What stands for dL/dp of a channel in the ratio gradient.
    #[serde(default)]
    pub signal: RatioSignal,
    /// Share of the allocation phase's weight steps, at its end, that train under the
    /// deterministic top-k masks of the feasible ADMM iterate `z` instead of sampled ones, so
    /// that the weights adapt to the network that is about to be kept (hardening cuts to `z`;
    /// the ratios `a` approach it, but with a noisy signal they can end a third of the budget
    /// away from it). The ratio steps still sample from `a`.
    #[serde(default)]
    pub hard_tail: f64,
    /// Which channels of a group a keep ratio keeps (the importance `I_i` of the keep
    /// probabilities and of hardening).
    #[serde(default)]
    pub channel_rank: ChannelRank,
    /// How much of the Fisher estimate a ratio step carries into the next: 1 sums every
    /// step's squared gradients since the start; below 1 the estimate is an exponential
    /// moving average over about 1/(1 - decay) steps, so that it follows the channels' loss
    /// as the network around them is thinned (a channel is worth more once its neighbours
    /// are gone) instead of remembering the dense network.
    #[serde(default = "no_fisher_decay")]
    pub fisher_decay: f64,
}

/// The Fisher decay of configurations saved before it existed: the mean since the start.
fn no_fisher_decay() -> f64 {
    1.0
}

/// The within-group importance `I_i` that orders a group's channels for the keep
/// probabilities and for hardening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelRank {
    /// |gamma| of the group's BatchNorms (L1 of the filters without one), ALGORITHMS.md's.
    #[default]
    Gamma,
    /// The square root of the channel's Fisher estimate (the mean squared straight-through
    /// mask gradient the Fisher ratio signal also uses, see `fisher_decay`): the loss increase
    /// of dropping the channel, measured on the validation batches of the ratio steps, in
    /// place of a magnitude that says nothing about what the following layers do with the
    /// channel. |gamma| until the first ratio step has measured it.
    Fisher,
}

/// The per-channel loss signal fed to the implicit ratio gradient (ALGORITHMS.md step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RatioSignal {
    /// The straight-through gradient of the sampled mask on one validation batch, as
    /// ALGORITHMS.md states it. From a trained model its mean is near zero (the BatchNorm
    /// scales sit at a minimum of the loss, so the first-order change of removing a channel
    /// averages out) and its spread is large: with a short allocation phase the ADMM
    /// projection's geometry, not the loss, decides the widths.
    Sampled,
    /// The second-order estimate of the same quantity: `dL/dp_i = -F_i / 2`, with `F_i` the
    /// running mean of the squared straight-through gradient (the Fisher information of the
    /// channel's mask, Theis et al. 2018's pruning signal). It is the expected loss increase
    /// of dropping the channel where the first-order term vanishes, always says "more
    /// channels lower the loss", and by the ADMM optimality condition equalises the
    /// boundary channels' loss per unit of cost across groups (what Taylor-per-cost does
    /// for the iterative method). Normalised to a mean magnitude of 1 per ratio step.
    #[default]
    Fisher,
}

impl Default for DsaConfig {
    fn default() -> Self {
        DsaConfig {
            epochs: 3,
            ratio_every: 5,
            ratio_lr: 1.0,
            beta2_start: 1.0,
            beta2_end: 20.0,
            rho: 1.0,
            rho_growth: 1.05,
            init_logit: 5.0,
            budget_ramp: 0.5,
            metric: AdmmMetric::Euclidean,
            signal: RatioSignal::Fisher,
            hard_tail: 0.0,
            channel_rank: ChannelRank::Gamma,
            fisher_decay: 1.0,
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Keep probabilities `p_i = sigmoid(beta2 (ln I_i - x))` with `x = ln beta1` solved by
/// bisection so that their mean is `a` (to 1e-9). Returns the probabilities and `x`.
pub fn keep_probabilities(log_importance: &[f64], a: f64, beta2: f64) -> (Vec<f64>, f64) {
    let n = log_importance.len();
    let a = a.clamp(1e-9, 1.0 - 1e-9);
    let probs = |x: f64| -> Vec<f64> {
        log_importance
            .iter()
            .map(|l| sigmoid(beta2 * (l - x)))
            .collect()
    };
    let mean = |x: f64| probs(x).iter().sum::<f64>() / n as f64;
    let (min, max) = log_importance
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &l| (lo.min(l), hi.max(l)));
    // The mean falls monotonically in x; widen until the bracket holds a.
    let mut width = 40.0 / beta2.max(1e-6);
    let (mut lo, mut hi) = (min - width, max + width);
    while mean(lo) < a || mean(hi) > a {
        width *= 2.0;
        (lo, hi) = (min - width, max + width);
        if width > 1e12 {
            break;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mean(mid) > a {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-13 * (1.0 + mid.abs()) {
            break;
        }
    }
    let x = 0.5 * (lo + hi);
    (probs(x), x)
}

/// dL/da of a group from dL/dp of its channels, through the implicit dependence of `beta1`
/// on `a` (ALGORITHMS.md step 4): `C * sum_i dL/dp_i f_i / sum_j f_j`, `f = p (1 - p)`.
pub fn ratio_gradient(dl_dp: &[f64], probs: &[f64]) -> f64 {
    let f: Vec<f64> = probs.iter().map(|p| p * (1.0 - p)).collect();
    let total: f64 = f.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let c = probs.len() as f64;
    c * dl_dp.iter().zip(&f).map(|(g, f)| g * f).sum::<f64>() / total
}

/// The deterministic evaluation mask: the `round(a C)` most important channels (at least one).
pub fn top_k_mask(importance: &[f64], a: f64) -> Vec<f32> {
    let c = importance.len();
    let k = ((a * c as f64).round() as usize).clamp(1, c);
    let mut idx: Vec<usize> = (0..c).collect();
    idx.sort_by(|&x, &y| importance[y].total_cmp(&importance[x]).then(x.cmp(&y)));
    let mut m = vec![0.0; c];
    for &i in &idx[..k] {
        m[i] = 1.0;
    }
    m
}

/// DSA's importance: |gamma| of the BatchNorms carrying the group (L1 of the filters where
/// there is none), floored so its logarithm is finite.
fn log_importance(
    model: &Model,
    groups: &[ChannelGroup],
    device: &Device,
) -> Result<Vec<Vec<f64>>> {
    let scores = channel_scores(Criterion::Bn, model, groups, None, device, 0)?;
    Ok(scores
        .into_iter()
        .map(|s| {
            let max = s.iter().cloned().fold(0.0, f64::max).max(1e-30);
            s.iter().map(|v| v.max(1e-6 * max).ln()).collect()
        })
        .collect())
}

/// The Fisher channel rank's log-importance: half the log of the summed squared mask
/// gradients (the step count is a shift of every log, which `beta1` absorbs), floored like
/// [`log_importance`]. `None` before any ratio step has measured a gradient.
fn log_fisher(chan_sq_sum: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let measured = chan_sq_sum.iter().flatten().any(|&f| f > 0.0);
    measured.then(|| {
        chan_sq_sum
            .iter()
            .map(|f| {
                let max = f.iter().cloned().fold(0.0, f64::max).max(1e-30);
                f.iter().map(|v| 0.5 * v.max(1e-12 * max).ln()).collect()
            })
            .collect()
    })
}

/// One epoch's line of the allocation log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DsaEpoch {
    /// 0 for the state before training.
    pub epoch: usize,
    pub beta2: f64,
    pub rho: f64,
    /// Keep ratios `a` and the feasible ADMM iterate `z`, per group (1 for protected ones).
    pub ratios: Vec<f64>,
    pub z: Vec<f64>,
    /// `R(a) / B - 1`: how far the ratios are over (> 0) or under the budget.
    pub budget_gap: f64,
    pub val_loss: Option<f64>,
    /// Mean dL/da per group over the epoch's ratio steps (the loss's pull on each ratio).
    pub loss_grad: Vec<f64>,
    /// Weights of the ADMM metric per group (all 1 for Euclidean).
    #[serde(default)]
    pub metric_weights: Vec<f64>,
    pub test_top1: Option<f64>,
}

/// What a checkpoint keeps of the allocation phase (between epochs), so that a resumed run
/// continues exactly where the interrupted one was.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DsaState {
    s: Vec<f64>,
    z: Vec<f64>,
    u: Vec<f64>,
    rho: f64,
    limit: f64,
    beta2: f64,
    ratio_steps: usize,
    log_imp: Vec<Vec<f64>>,
    history: Vec<DsaEpoch>,
    #[serde(default)]
    grad_sq_sum: Vec<f64>,
    #[serde(default)]
    chan_sq_sum: Vec<Vec<f64>>,
}

/// Masks for both kinds of forward pass: sampled ones while training (autodiff values), the
/// deterministic top-k ones in evaluation.
struct DsaMasks {
    train: ChannelMasks,
    eval: ChannelMasks,
}

impl NodeHook for DsaMasks {
    fn channel_scale(&self, index: usize, node: &Node, autodiff: bool) -> Option<Tensor<1>> {
        if autodiff {
            self.train.channel_scale(index, node, autodiff)
        } else {
            self.eval.channel_scale(index, node, autodiff)
        }
    }
    fn reads_output(&self, _index: usize, _node: &Node) -> bool {
        false
    }
}

/// The allocation phase as a training hook.
pub struct Dsa {
    graph: Graph,
    groups: Vec<ChannelGroup>,
    cfg: DsaConfig,
    cost: Box<dyn CostModel>,
    limit: f64,
    /// Ratio logits (per group; protected groups stay at +inf in effect: a = 1).
    s: Vec<f64>,
    admm: Admm,
    beta2: f64,
    log_imp: Vec<Vec<f64>>,
    /// Keep probabilities per group (empty for protected groups).
    probs: Vec<Vec<f64>>,
    masks: DsaMasks,
    val: Batcher,
    val_iter: Option<BatchIter>,
    /// Passes over the validation split within the current training epoch; the validation
    /// order and the mask samples restart from seeds of the training epoch, so a resumed run
    /// draws what an uninterrupted one draws.
    val_epoch: usize,
    train_epoch: usize,
    val_loss_sum: f64,
    val_steps: usize,
    grad_sum: Vec<f64>,
    /// Sum of `(dL/da)^2` per group over the whole allocation phase (the Fisher metric's
    /// estimate, up to the step count its normalisation removes).
    grad_sq_sum: Vec<f64>,
    /// Sum of the squared straight-through gradient per channel, each earlier step's term
    /// weighted by `fisher_decay` per step since (the Fisher estimate, up to the step count,
    /// which its uses remove: the signal's normalisation, the rank's logarithm).
    chan_sq_sum: Vec<Vec<f64>>,
    train_device: Device,
    eval_device: Device,
    rng: StdRng,
    seed: u64,
    history: Vec<DsaEpoch>,
    log_path: Option<PathBuf>,
    /// Ratio steps taken, and expected over the whole allocation phase (for the ramp).
    ratio_steps: usize,
    total_ratio_steps: usize,
    /// Weight steps of the whole allocation phase (for the hard tail).
    total_steps: usize,
}

impl Dsa {
    /// Sets up allocation for `model` (on any device). `val` supplies the ratio steps'
    /// batches; `device` is the plain (non-autodiff) device.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &Model,
        groups: Vec<ChannelGroup>,
        cost: Box<dyn CostModel>,
        limit: f64,
        cfg: DsaConfig,
        val: Batcher,
        steps_per_epoch: usize,
        device: &Device,
        seed: u64,
        log_path: Option<PathBuf>,
    ) -> Result<Dsa> {
        if cfg.epochs == 0 || cfg.ratio_every == 0 {
            return Err(LopperError::Config(
                "DSA needs at least one allocation epoch and ratio_every >= 1".into(),
            ));
        }
        if !(cfg.fisher_decay > 0.0 && cfg.fisher_decay <= 1.0) {
            return Err(LopperError::Config(format!(
                "the Fisher decay (the share of the estimate kept per ratio step) must be in (0, 1], not {}",
                cfg.fisher_decay
            )));
        }
        let n = groups.len();
        let groups_channels: Vec<usize> = groups.iter().map(|g| g.channels).collect();
        let (cfg_epochs, ratio_every) = (cfg.epochs, cfg.ratio_every);
        let s: Vec<f64> = groups
            .iter()
            .map(|g| {
                if g.is_prunable() {
                    cfg.init_logit
                } else {
                    50.0
                }
            })
            .collect();
        let a: Vec<f64> = s.iter().map(|&s| sigmoid(s)).collect();
        let (lower, upper) = ratio_bounds(&groups);
        let floor = cost.cost(&lower);
        if floor > limit {
            return Err(LopperError::Config(format!(
                "the budget ({limit:.6e}) is below the smallest reachable cost ({floor:.6e}, one channel per group)"
            )));
        }
        let mut admm = Admm::new(&a, lower, upper, cfg.rho, limit);
        admm.weights = metric_weights(cfg.metric, &groups, cost.as_ref());
        let train_device = device.clone().autodiff();
        let log_imp = log_importance(model, &groups, device)?;
        let empty = ChannelMasks::new(&model.graph, &groups, &vec![None; n], device);
        let empty2 = ChannelMasks::new(&model.graph, &groups, &vec![None; n], device);
        let mut dsa = Dsa {
            graph: model.graph.clone(),
            groups,
            beta2: cfg.beta2_start,
            cfg,
            cost,
            limit,
            s,
            admm,
            log_imp,
            probs: vec![],
            masks: DsaMasks {
                train: empty,
                eval: empty2,
            },
            val,
            val_iter: None,
            val_epoch: 0,
            train_epoch: 0,
            val_loss_sum: 0.0,
            val_steps: 0,
            grad_sum: vec![0.0; n],
            grad_sq_sum: vec![0.0; n],
            chan_sq_sum: groups_channels.iter().map(|&c| vec![0.0; c]).collect(),
            train_device,
            eval_device: device.clone(),
            rng: StdRng::seed_from_u64(crate::data::seed_mix(&[seed, 0xD5A])),
            seed,
            history: vec![],
            log_path,
            ratio_steps: 0,
            total_ratio_steps: (cfg_epochs * steps_per_epoch / ratio_every).max(1),
            total_steps: cfg_epochs * steps_per_epoch,
        };
        dsa.refresh();
        dsa.record(0, None)?;
        Ok(dsa)
    }

    /// Weight steps of the whole allocation phase, and the ratio steps among them.
    pub fn planned_steps(&self) -> (usize, usize) {
        (self.total_steps, self.total_steps / self.cfg.ratio_every)
    }

    /// Current keep ratios, one per group.
    pub fn ratios(&self) -> Vec<f64> {
        self.s.iter().map(|&s| sigmoid(s)).collect()
    }

    /// The feasible ADMM iterate: the ratios the final selection is hardened from.
    pub fn feasible_ratios(&self) -> &[f64] {
        &self.admm.z
    }

    pub fn history(&self) -> &[DsaEpoch] {
        &self.history
    }

    /// The current importance scores (exp of the log-importance), per group.
    pub fn importance(&self) -> Vec<Vec<f64>> {
        self.log_imp
            .iter()
            .map(|l| l.iter().map(|v| v.exp()).collect())
            .collect()
    }

    /// `beta2` after `steps` of the allocation phase's ratio steps.
    fn beta2_after(&self, steps: usize) -> f64 {
        let t = (steps as f64 / self.total_ratio_steps as f64).min(1.0);
        self.cfg.beta2_start + t * (self.cfg.beta2_end - self.cfg.beta2_start)
    }

    /// Re-solves the keep probabilities; they change only with the importance, the ratios
    /// and beta2, so every training step between ratio steps samples the cached ones.
    fn refresh_probabilities(&mut self) {
        self.probs = self
            .groups
            .iter()
            .map(|g| {
                if g.is_prunable() {
                    keep_probabilities(&self.log_imp[g.id], sigmoid(self.s[g.id]), self.beta2).0
                } else {
                    vec![]
                }
            })
            .collect();
    }

    /// Probabilities and evaluation masks after the ratios, importance or beta2 changed.
    fn refresh(&mut self) {
        self.refresh_probabilities();
        self.refresh_eval_masks();
    }

    /// The deterministic top-k masks of `ratios` (one per group), on `device`.
    fn top_k_masks(&self, ratios: &[f64], device: &Device) -> Vec<Option<Tensor<1>>> {
        self.groups
            .iter()
            .map(|g| {
                g.is_prunable().then(|| {
                    let m = top_k_mask(&self.log_imp[g.id], ratios[g.id]);
                    Tensor::from_data(TensorData::new(m, [g.channels]), device)
                })
            })
            .collect()
    }

    fn refresh_eval_masks(&mut self) {
        let masks = self.top_k_masks(&self.ratios(), &self.eval_device);
        self.masks.eval = ChannelMasks::new(&self.graph, &self.groups, &masks, &self.eval_device);
    }

    /// Bernoulli samples of the keep probabilities, as host vectors per prunable group.
    fn sample(&mut self) -> Vec<Option<(Vec<f64>, Vec<f64>)>> {
        (0..self.groups.len())
            .map(|g| {
                self.groups[g].is_prunable().then(|| {
                    let p = self.probs[g].clone();
                    let m = p
                        .iter()
                        .map(|&p| {
                            if self.rng.random::<f64>() < p {
                                1.0
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    (p, m)
                })
            })
            .collect()
    }

    fn next_val_batch(&mut self) -> Result<crate::data::Batch> {
        for _ in 0..2 {
            if let Some(b) = self.val_iter.as_mut().and_then(|it| it.next()) {
                return Ok(b);
            }
            self.val_epoch += 1;
            let seed = crate::data::seed_mix(&[self.seed, 0x5A11, self.train_epoch as u64]);
            self.val_iter = Some(self.val.epoch(seed, self.val_epoch, 0));
        }
        Err(LopperError::Config(
            "the validation split gives no batches for DSA's ratio steps".into(),
        ))
    }

    /// One ratio step on a validation batch: dL/dp by backpropagation through the
    /// straight-through mask, dL/da by the implicit gradient, the linearised ADMM step on a, and
    /// the z and u updates.
    fn ratio_step(&mut self, model: &Model) -> Result<()> {
        let fisher = match self.cfg.channel_rank {
            ChannelRank::Fisher => log_fisher(&self.chan_sq_sum),
            ChannelRank::Gamma => None,
        };
        self.log_imp = match fisher {
            Some(log_imp) => log_imp,
            None => log_importance(model, &self.groups, &self.eval_device)?,
        };
        self.refresh_probabilities();
        let batch = self.next_val_batch()?;
        let dev = self.train_device.clone();
        let (x, _) = batch.to_tensors(&dev);
        let samples = self.sample();
        let mut leaves: Vec<Option<Tensor<1>>> = vec![None; self.groups.len()];
        let masks: Vec<Option<Tensor<1>>> = samples
            .iter()
            .enumerate()
            .map(|(g, s)| {
                s.as_ref().map(|(p, m)| {
                    let c = p.len();
                    let p32: Vec<f32> = p.iter().map(|&v| v as f32).collect();
                    let shift: Vec<f32> = m.iter().zip(p).map(|(m, p)| (m - p) as f32).collect();
                    let leaf =
                        Tensor::<1>::from_data(TensorData::new(p32, [c]), &dev).require_grad();
                    leaves[g] = Some(leaf.clone());
                    // Value m, gradient 1 with respect to p: the straight-through rule.
                    leaf + Tensor::<1>::from_data(TensorData::new(shift, [c]), &dev)
                })
            })
            .collect();
        let hook = ChannelMasks::new(&self.graph, &self.groups, &masks, &dev);
        let Value::Flat(logits) = model.forward_hooked(Value::Spatial(x), true, &hook)? else {
            return Err(LopperError::Graph(
                "the model's output is not [N, classes]".into(),
            ));
        };
        let loss = cross_entropy(logits, &batch.labels, 0.0, &dev);
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        let grads = loss.backward();
        let a = self.ratios();
        let mut dl_da = vec![0.0; self.groups.len()];
        for (g, leaf) in leaves.iter().enumerate() {
            let (Some(leaf), Some((p, _))) = (leaf, &samples[g]) else {
                continue;
            };
            let dl_dp: Vec<f64> = match leaf.grad(&grads) {
                Some(t) => t
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| LopperError::Graph(format!("{e:?}")))?
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                None => vec![0.0; p.len()],
            };
            for (acc, d) in self.chan_sq_sum[g].iter_mut().zip(&dl_dp) {
                *acc = self.cfg.fisher_decay * *acc + d * d;
            }
            dl_da[g] = match self.cfg.signal {
                RatioSignal::Sampled => ratio_gradient(&dl_dp, p),
                RatioSignal::Fisher => {
                    // -F/2 with F the (decayed) mean over the steps so far; the step count
                    // cancels in the normalisation below.
                    let expected: Vec<f64> = self.chan_sq_sum[g].iter().map(|f| -0.5 * f).collect();
                    ratio_gradient(&expected, p)
                }
            };
        }
        if self.cfg.signal == RatioSignal::Fisher {
            // Only the ratios between groups' signals matter at the ADMM optimum (equal loss
            // per unit of cost); its magnitude (squared gradients: anything from 1e-6 to 1 by
            // model and loss) would otherwise set how fast the ratios can follow it against
            // the penalty. Normalised to a mean magnitude of 1 over the prunable groups.
            let prunable = self.groups.iter().filter(|g| g.is_prunable());
            let (sum, count) =
                prunable.fold((0.0, 0usize), |(s, c), g| (s + dl_da[g.id].abs(), c + 1));
            let mean = sum / count.max(1) as f64;
            if mean > 0.0 {
                dl_da.iter_mut().for_each(|g| *g /= mean);
            }
        }
        // The model's own gradients from this pass are dropped with `grads`: weights learn
        // on the training split only.
        drop(grads);
        // Linearised ADMM step on a: minimise <dL/da, a> + rho/2 |a - z + u|^2 +
        // |a - a_prev|^2 / (2 eta). The closed form moves a towards z - u against the loss
        // gradient; it does not wind the dual up the way a plain gradient step with a
        // normalising optimiser would (u grows by a - z on every step).
        for (acc, g) in self.grad_sum.iter_mut().zip(&dl_da) {
            *acc += g;
        }
        for (acc, g) in self.grad_sq_sum.iter_mut().zip(&dl_da) {
            *acc += g * g;
        }
        self.update_metric_weights();
        let eta = self.cfg.ratio_lr;
        for g in self.groups.iter().filter(|g| g.is_prunable()).map(|g| g.id) {
            let target = self.admm.z[g] - self.admm.u[g];
            let rho = self.admm.rho * self.admm.weights[g];
            let next = (a[g] / eta - dl_da[g] + rho * target) / (1.0 / eta + rho);
            // Keep a within (1/(2C), 1): one channel always survives hardening.
            let lo = (0.5 / self.groups[g].channels as f64).max(1e-4);
            let next = next.clamp(lo, 1.0 - 1e-6);
            self.s[g] = (next / (1.0 - next)).ln();
        }
        let a = self.ratios();
        self.ratio_steps += 1;
        let ramp = self.cfg.budget_ramp * self.total_ratio_steps as f64;
        let t = if ramp > 0.0 {
            (self.ratio_steps as f64 / ramp).min(1.0)
        } else {
            1.0
        };
        let dense = self.cost.dense_cost();
        self.admm.limit = dense - t * (dense - self.limit);
        self.admm.update(&a, self.cost.as_ref());
        self.beta2 = self.beta2_after(self.ratio_steps);
        self.val_loss_sum += loss_value;
        self.val_steps += 1;
        self.refresh();
        Ok(())
    }

    /// The Fisher metric's weights follow the squared ratio gradients (a no-op for the other
    /// metrics, whose weights are fixed at set-up).
    fn update_metric_weights(&mut self) {
        if self.cfg.metric == AdmmMetric::Fisher {
            self.admm.weights = normalised_weights(&self.groups, &self.grad_sq_sum, 1e-2);
        }
    }

    /// Rewrites the log from the history (a line per epoch, a few in all), atomically, so it
    /// never holds a partial line or an epoch past the state it belongs to.
    fn write_log(&self) -> Result<()> {
        let Some(path) = &self.log_path else {
            return Ok(());
        };
        let mut text = String::new();
        for e in &self.history {
            text += &serde_json::to_string(e)
                .map_err(|e| LopperError::Config(format!("cannot write the DSA log: {e}")))?;
            text.push('\n');
        }
        crate::fsutil::write_atomic(path, text.as_bytes())
    }

    fn record(&mut self, epoch: usize, test_top1: Option<f64>) -> Result<()> {
        let a = self.ratios();
        let entry = DsaEpoch {
            epoch,
            beta2: self.beta2,
            rho: self.admm.rho,
            budget_gap: self.cost.cost(&a) / self.limit - 1.0,
            ratios: a,
            z: self.admm.z.clone(),
            val_loss: (self.val_steps > 0).then(|| self.val_loss_sum / self.val_steps as f64),
            loss_grad: self
                .grad_sum
                .iter()
                .map(|g| g / self.val_steps.max(1) as f64)
                .collect(),
            metric_weights: self.admm.weights.clone(),
            test_top1,
        };
        self.history.push(entry);
        self.write_log()?;
        self.val_loss_sum = 0.0;
        self.val_steps = 0;
        self.grad_sum.iter_mut().for_each(|g| *g = 0.0);
        Ok(())
    }
}

impl TrainHook for Dsa {
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        Some(&self.masks)
    }

    fn before_step(&mut self, info: &StepInfo, _model: &Model) -> Result<()> {
        if info.step_in_epoch == 0 {
            self.train_epoch = info.epoch;
            self.val_epoch = 0;
            self.val_iter = None;
            self.rng = StdRng::seed_from_u64(crate::data::seed_mix(&[
                self.seed,
                0xD5A,
                info.epoch as u64,
            ]));
        }
        let hard_from =
            ((1.0 - self.cfg.hard_tail.clamp(0.0, 1.0)) * self.total_steps as f64).ceil() as usize;
        let dev = self.train_device.clone();
        let masks: Vec<Option<Tensor<1>>> =
            if self.cfg.hard_tail > 0.0 && info.global_step >= hard_from {
                // The feasible iterate, not the ratios: hardening keeps z's widths, and with
                // a noisy signal the ratios can sit far from z (BENCHMARKS.md l).
                self.top_k_masks(&self.admm.z, &dev)
            } else {
                self.sample()
                    .into_iter()
                    .map(|s| {
                        s.map(|(_, m)| {
                            let c = m.len();
                            let m: Vec<f32> = m.into_iter().map(|v| v as f32).collect();
                            Tensor::from_data(TensorData::new(m, [c]), &dev)
                        })
                    })
                    .collect()
            };
        self.masks.train = ChannelMasks::new(&self.graph, &self.groups, &masks, &dev);
        Ok(())
    }

    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        _optim: &mut OptimizerState,
    ) -> Result<Model> {
        if (info.global_step + 1).is_multiple_of(self.cfg.ratio_every) {
            self.ratio_step(&model)?;
        }
        Ok(model)
    }

    fn after_epoch(&mut self, record: &EpochRecord, _model: &Model) -> Result<ControlFlow<()>> {
        self.record(record.epoch, record.test.map(|t| t.top1))?;
        self.admm.rho *= self.cfg.rho_growth;
        self.refresh();
        Ok(ControlFlow::Continue(()))
    }

    fn state(&self) -> Result<Option<serde_json::Value>> {
        let state = DsaState {
            s: self.s.clone(),
            z: self.admm.z.clone(),
            u: self.admm.u.clone(),
            rho: self.admm.rho,
            limit: self.admm.limit,
            beta2: self.beta2,
            ratio_steps: self.ratio_steps,
            log_imp: self.log_imp.clone(),
            history: self.history.clone(),
            grad_sq_sum: self.grad_sq_sum.clone(),
            chan_sq_sum: self.chan_sq_sum.clone(),
        };
        serde_json::to_value(state)
            .map(Some)
            .map_err(|e| LopperError::Config(format!("cannot save the DSA state: {e}")))
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let st: DsaState = serde_json::from_value(state).map_err(|e| {
            LopperError::Config(format!("the checkpoint's DSA state is unreadable: {e}"))
        })?;
        let n = self.groups.len();
        if st.s.len() != n || st.z.len() != n || st.u.len() != n || st.log_imp.len() != n {
            return Err(LopperError::Config(format!(
                "the checkpoint's DSA state is for {} channel groups, the model has {n}",
                st.s.len()
            )));
        }
        self.s = st.s;
        self.admm.z = st.z;
        self.admm.u = st.u;
        self.admm.rho = st.rho;
        self.admm.limit = st.limit;
        self.beta2 = st.beta2;
        self.ratio_steps = st.ratio_steps;
        self.log_imp = st.log_imp;
        self.history = st.history;
        if st.grad_sq_sum.len() == n {
            self.grad_sq_sum = st.grad_sq_sum;
        }
        if st.chan_sq_sum.len() == n {
            self.chan_sq_sum = st.chan_sq_sum;
        }
        self.update_metric_weights();
        // The log holds what the interrupted run wrote, perhaps an epoch past the checkpoint.
        self.write_log()?;
        self.refresh();
        Ok(())
    }
}
