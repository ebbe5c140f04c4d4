//! Extension points of the one training loop, and how several of them compose.
//!
//! A pruning method, a mask, an importance criterion that accumulates from gradients and a
//! progress logger are each a [`TrainHook`]; [`Trainer::fit`](super::Trainer::fit) takes a
//! list of them and calls each in order at every point of a step. Node hooks (masks in the
//! forward pass) chain: each sees the value the previous one left. Every hook sees the step's
//! place in the whole run ([`StepInfo`]: steps per epoch, total steps) and, after the
//! optimiser's step, can reach its per-parameter state ([`OptimizerState`]) to reset the
//! moments of weights it regrows.

use std::ops::ControlFlow;

use burn::module::ParamId;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Tensor, TensorData};

use super::run::EpochRecord;
use crate::error::{LopperError, Result};
use crate::graph::Node;
use crate::model::{Model, NodeHook, Value, Weight};

/// Where the loop is, passed to the hooks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based step within the epoch.
    pub step_in_epoch: usize,
    /// 0-based step over the whole run.
    pub global_step: usize,
    /// The learning rate of this step.
    pub lr: f64,
    /// Steps in every epoch of this run.
    pub steps_per_epoch: usize,
    /// Epochs of the whole run (as configured, from the first, also when resumed).
    pub epochs: usize,
}

impl StepInfo {
    /// Steps of the whole run.
    pub fn total_steps(&self) -> usize {
        self.steps_per_epoch * self.epochs
    }

    /// The share of the run done before this step, in [0, 1).
    pub fn progress(&self) -> f64 {
        self.global_step as f64 / self.total_steps().max(1) as f64
    }
}

/// Extension points of the training loop. Every method has a do-nothing default.
pub trait TrainHook {
    /// Rewrites node outputs in every forward pass, training and evaluation (channel masks).
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        None
    }
    /// Before the forward pass of a step, with the model that will run it (on the training
    /// device: masks computed from its weights carry their gradient).
    fn before_step(&mut self, _info: &StepInfo, _model: &Model) -> Result<()> {
        Ok(())
    }
    /// After the backward pass, before the optimiser uses the gradients (importance
    /// accumulation, gradient masking).
    fn after_backward(
        &mut self,
        _info: &StepInfo,
        _model: &Model,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        Ok(grads)
    }
    /// After the optimiser step; may rewrite the model (re-apply a hard mask, say) and the
    /// optimiser's state of given parameters (reset the moments of regrown weights).
    fn after_step(
        &mut self,
        _info: &StepInfo,
        model: Model,
        _optim: &mut OptimizerState,
    ) -> Result<Model> {
        Ok(model)
    }
    /// Once a step is done: its training loss and batch size (progress, logging).
    fn step_done(&mut self, _info: &StepInfo, _loss: f64, _samples: usize) {}
    /// After each epoch's evaluation, before its checkpoint. `Break` ends training early
    /// (the checkpoint is still written).
    fn after_epoch(&mut self, _record: &EpochRecord, _model: &Model) -> Result<ControlFlow<()>> {
        Ok(ControlFlow::Continue(()))
    }
    /// The hook's own state, saved in every checkpoint (after `after_epoch`) so that a resumed
    /// run continues it. `None`: stateless.
    fn state(&self) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }
    /// Restores what [`TrainHook::state`] saved, before a resumed run continues.
    fn restore(&mut self, _state: serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// The hook that changes nothing.
pub struct NoTrainHook;
impl TrainHook for NoTrainHook {}

/// Several node hooks applied in order, each to the value the one before left.
pub struct NodeChain<'a>(pub Vec<&'a dyn NodeHook>);

impl NodeHook for NodeChain<'_> {
    /// The product of the hooks' factors.
    fn channel_scale(&self, index: usize, node: &Node, autodiff: bool) -> Option<Tensor<1>> {
        self.0
            .iter()
            .filter_map(|h| h.channel_scale(index, node, autodiff))
            .reduce(|a, b| a * b)
    }
    fn after_node(&self, index: usize, node: &Node, value: Value) -> Value {
        self.0
            .iter()
            .fold(value, |v, h| h.after_node(index, node, v))
    }
    fn reads_output(&self, index: usize, node: &Node) -> bool {
        self.0.iter().any(|h| h.reads_output(index, node))
    }
    fn weight(&self, index: usize, node: &Node, weight: Weight) -> Weight {
        self.0.iter().fold(weight, |w, h| h.weight(index, node, w))
    }
}

/// The node hooks of a list of training hooks, chained.
pub fn node_chain<'a>(hooks: &'a [&mut dyn TrainHook]) -> NodeChain<'a> {
    NodeChain(hooks.iter().filter_map(|h| h.node_hook()).collect())
}

/// The checkpoint's record of a hook list: one entry per hook, `null` for stateless ones.
pub(crate) fn hooks_state(hooks: &[&mut dyn TrainHook]) -> Result<Option<serde_json::Value>> {
    let states = hooks
        .iter()
        .map(|h| h.state().map(|s| s.unwrap_or(serde_json::Value::Null)))
        .collect::<Result<Vec<_>>>()?;
    Ok(states
        .iter()
        .any(|s| !s.is_null())
        .then_some(serde_json::Value::Array(states)))
}

/// Hands each hook that keeps state its entry of a saved hook list (see [`hooks_state`]),
/// in order; stateless hooks (progress displays, loggers) may differ between the interrupted
/// run and the resumed one. A checkpoint written before hooks composed holds one object: it
/// belongs to the one hook that keeps state.
pub(crate) fn restore_hooks(
    hooks: &mut [&mut dyn TrainHook],
    saved: serde_json::Value,
) -> Result<()> {
    let saved: Vec<serde_json::Value> = match saved {
        serde_json::Value::Array(states) => states.into_iter().filter(|s| !s.is_null()).collect(),
        single => vec![single],
    };
    let mut stateful = vec![];
    for (i, h) in hooks.iter().enumerate() {
        if h.state()?.is_some() {
            stateful.push(i);
        }
    }
    if stateful.len() != saved.len() {
        return Err(LopperError::Config(format!(
            "the checkpoint holds the state of {} training hook(s), this run has {}",
            saved.len(),
            stateful.len()
        )));
    }
    for (i, s) in stateful.into_iter().zip(saved) {
        hooks[i].restore(s)?;
    }
    Ok(())
}

/// `grads` with each listed parameter's gradient multiplied elementwise by its mask (with the
/// parameter's shape, row-major; 0 keeps an element out of this step's update, though weight
/// decay still moves it). Parameters without a gradient this step are skipped.
pub fn mask_gradients(
    mut grads: GradientsParams,
    masks: &[(ParamId, Vec<usize>, Vec<f32>)],
) -> Result<GradientsParams> {
    use burn::tensor::Tensor;
    fn scaled<const D: usize>(
        grads: &mut GradientsParams,
        id: ParamId,
        shape: &[usize],
        m: &[f32],
    ) -> Result<()> {
        let Some(g) = grads.remove::<D>(id) else {
            return Ok(());
        };
        if g.dims().as_slice() != shape {
            return Err(LopperError::Config(format!(
                "a gradient mask of shape {shape:?} for a gradient of {:?}",
                g.dims()
            )));
        }
        let mask = Tensor::<D>::from_data(TensorData::new(m.to_vec(), shape), &g.device());
        grads.register(id, g * mask);
        Ok(())
    }
    for (id, shape, m) in masks {
        match shape.len() {
            1 => scaled::<1>(&mut grads, *id, shape, m)?,
            2 => scaled::<2>(&mut grads, *id, shape, m)?,
            4 => scaled::<4>(&mut grads, *id, shape, m)?,
            r => {
                return Err(LopperError::Config(format!(
                    "no gradient mask for a parameter of rank {r}"
                )));
            }
        }
    }
    Ok(grads)
}

/// Optimiser state as host values: `(parameter id, values, shape)` per state tensor.
pub type HostState = Vec<(u64, Vec<f32>, Vec<usize>)>;

/// The optimiser's per-parameter state (SGD's momentum, Adam's moments), as the hooks may
/// touch it after a step. Burn keeps the states private and type-erased; they are edited
/// through the optimiser's own serialised record (tensors named `{param id}.{field}`), so an
/// edit costs a copy of the state: fine every few hundred steps (a mask update), not every
/// step.
pub struct OptimizerState<'a> {
    optim: &'a mut ModuleOptimizer,
}

impl<'a> OptimizerState<'a> {
    pub(crate) fn new(optim: &'a mut ModuleOptimizer) -> Self {
        OptimizerState { optim }
    }

    /// Multiplies every state tensor of each given parameter elementwise by its mask (same
    /// shape as the parameter, row-major): 0 resets an element's moments, 1 keeps them. A
    /// parameter the optimiser has no state for yet is left alone.
    pub fn scale(&mut self, masks: &[(ParamId, Vec<f32>)]) -> Result<()> {
        self.edit(|id, data| {
            let Some((_, mask)) = masks.iter().find(|(p, _)| p.val() == id) else {
                return Ok(None);
            };
            let shape = data.shape().clone();
            let values = data
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| LopperError::Graph(format!("{e:?}")))?;
            if values.len() != mask.len() {
                return Err(LopperError::Config(format!(
                    "an optimiser state mask has {} entries for a state of {}",
                    mask.len(),
                    values.len()
                )));
            }
            let scaled: Vec<f32> = values.iter().zip(mask).map(|(v, m)| v * m).collect();
            Ok(Some(TensorData::new(scaled, shape)))
        })
    }

    /// Forgets the whole state of each given parameter: its next step starts fresh.
    pub fn reset(&mut self, params: &[ParamId]) -> Result<()> {
        self.edit(|id, data| {
            Ok(params
                .iter()
                .any(|p| p.val() == id)
                .then(|| TensorData::zeros::<f32, _>(data.shape().clone())))
        })
    }

    /// A copy of every state tensor of the given parameters, to put back with
    /// [`Self::restore`] (a parameter without state yet has none).
    pub fn snapshot(&mut self, params: &[ParamId]) -> Result<Vec<(u64, TensorData)>> {
        let mut saved = vec![];
        self.edit(|id, data| {
            if params.iter().any(|p| p.val() == id) {
                saved.push((id, data));
            }
            Ok(None)
        })?;
        Ok(saved)
    }

    /// [`Self::snapshot`] as plain host values, `(parameter id, values, shape)`, for a hook's
    /// checkpoint state; [`Self::restore_host`] puts it back.
    pub fn snapshot_host(&mut self, params: &[ParamId]) -> Result<HostState> {
        self.snapshot(params)?
            .into_iter()
            .map(|(id, d)| {
                let shape = d.shape().to_vec();
                d.convert::<f32>()
                    .try_into_vec::<f32>()
                    .map(|v| (id, v, shape))
                    .map_err(|e| LopperError::Graph(format!("{e:?}")))
            })
            .collect()
    }

    /// Puts back a [`Self::snapshot_host`].
    pub fn restore_host(&mut self, saved: HostState) -> Result<()> {
        let saved: Vec<(u64, TensorData)> = saved
            .into_iter()
            .map(|(id, v, shape)| (id, TensorData::new(v, shape)))
            .collect();
        self.restore(&saved)
    }

    /// Puts back the state tensors of a [`Self::snapshot`], each parameter's in the order
    /// they were taken; other state is left alone.
    pub fn restore(&mut self, saved: &[(u64, TensorData)]) -> Result<()> {
        let mut taken: std::collections::HashMap<u64, usize> = Default::default();
        self.edit(|id, _| {
            let n = taken.entry(id).or_insert(0);
            let found = saved
                .iter()
                .filter(|(s, _)| *s == id)
                .nth(*n)
                .map(|(_, d)| d.clone());
            *n += 1;
            Ok(found)
        })
    }

    /// Rewrites the record's state tensors: `f(param id, tensor)` returns a replacement or
    /// `None` to keep the tensor.
    fn edit(
        &mut self,
        mut f: impl FnMut(u64, TensorData) -> Result<Option<TensorData>>,
    ) -> Result<()> {
        let bad = |e: String| LopperError::Config(format!("cannot edit the optimiser state: {e}"));
        let bytes = self.optim.into_bytes().map_err(|e| bad(format!("{e:?}")))?;
        let reader = burn_pack::Reader::from_bytes(bytes).map_err(|e| bad(format!("{e:?}")))?;
        let scalars = reader.scalars().clone();
        let metadata = reader.metadata().clone();
        let mut tensors = vec![];
        for t in reader.into_tensors().map_err(|e| bad(format!("{e:?}")))? {
            let (name, dtype, shape, param_id, bytes) =
                t.into_parts().map_err(|e| bad(format!("{e:?}")))?;
            let data = TensorData::from_bytes(bytes, shape.clone(), dtype);
            let data = match param_id {
                Some(id) => match f(id, data.clone())? {
                    Some(new) => new.convert_dtype(dtype),
                    None => data,
                },
                None => data,
            };
            let (bytes, shape, dtype) = data.into_parts();
            tensors.push(burn_pack::Tensor::new(name, dtype, shape, param_id, bytes));
        }
        let mut writer = burn_pack::Writer::new(tensors);
        for (k, v) in &scalars {
            writer = writer.with_scalar(k, *v);
        }
        for (k, v) in &metadata {
            writer = writer.with_metadata(k, v);
        }
        let bytes: Bytes = writer.into_bytes().map_err(|e| bad(format!("{e:?}")))?;
        *self.optim = self
            .optim
            .clone()
            .from_bytes(bytes)
            .map_err(|e| bad(format!("{e:?}")))?;
        Ok(())
    }
}
