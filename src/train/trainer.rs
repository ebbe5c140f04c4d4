//! The one training loop. Pruning methods plug into it through [`TrainHook`] instead of
//! copying it: a forward hook (masks), a look at the gradients, a rewrite of the model after
//! each step, and a decision after each epoch.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device};
use indicatif::{ProgressBar, ProgressStyle};

use super::config::TrainConfig;
use super::eval::{Tally, evaluate};
use super::loss::cross_entropy;
use super::optim::build_optimizer;
use super::run::{CheckpointState, EpochRecord, RunDir};
use super::schedule::learning_rate;
use crate::data::Batcher;
use crate::error::{LopperError, Result};
use crate::model::{Model, NoHook, NodeHook, Value};

/// Where the loop is, passed to the hooks.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based step within the epoch.
    pub step_in_epoch: usize,
    /// 0-based step over the whole run.
    pub global_step: usize,
    pub lr: f64,
}

/// Extension points of the training loop. Every method has a do-nothing default.
pub trait TrainHook {
    /// Rewrites node outputs in every forward pass, training and evaluation (channel masks).
    fn node_hook(&self) -> Option<&dyn NodeHook> {
        None
    }
    /// Before the forward pass of a step.
    fn before_step(&mut self, _info: &StepInfo) {}
    /// After the backward pass, before the optimiser uses the gradients (importance
    /// accumulation, gradient masking).
    fn after_backward(
        &mut self,
        _info: &StepInfo,
        _model: &Model,
        grads: GradientsParams,
    ) -> GradientsParams {
        grads
    }
    /// After the optimiser step; may rewrite the model (re-apply a hard mask, say).
    fn after_step(&mut self, _info: &StepInfo, model: Model) -> Result<Model> {
        Ok(model)
    }
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

/// Training and evaluation data.
pub struct TrainData {
    pub train: Batcher,
    pub val: Option<Batcher>,
    pub test: Option<Batcher>,
}

/// What a finished (or stopped) run returns.
pub struct TrainOutcome {
    pub model: Model,
    pub history: Vec<EpochRecord>,
    /// True when a hook ended training before the configured number of epochs.
    pub stopped_early: bool,
}

/// Runs the loop for a configuration, optionally writing into a run folder.
pub struct Trainer {
    pub cfg: TrainConfig,
    /// The autodiff device for training.
    pub device: Device,
    /// The same device without autodiff, for evaluation.
    pub plain: Device,
    pub run: Option<RunDir>,
    pub progress: bool,
}

impl Trainer {
    pub fn new(cfg: TrainConfig, run: Option<RunDir>) -> Result<Trainer> {
        cfg.validate()?;
        let plain = crate::device::device(&cfg.device)?;
        Ok(Trainer {
            device: plain.clone().autodiff(),
            plain,
            cfg,
            run,
            progress: true,
        })
    }

    /// Trains `model` from the start (it is moved to the training device).
    pub fn fit(
        &self,
        model: Model,
        data: &TrainData,
        hook: &mut dyn TrainHook,
    ) -> Result<TrainOutcome> {
        let model = model.fork(&self.device).train();
        if let Some(run) = &self.run {
            run.write_config(&self.cfg)?;
            run.write_model_and_metrics(&model, &[])?;
        }
        let optim = build_optimizer(&self.cfg);
        self.run_epochs(model, optim, 0, 0, vec![], data, hook)
    }

    /// Continues the run in `self.run` from its last checkpoint.
    pub fn resume(&self, data: &TrainData, hook: &mut dyn TrainHook) -> Result<TrainOutcome> {
        let run = self
            .run
            .as_ref()
            .ok_or_else(|| LopperError::Config("resuming needs a run folder".into()))?;
        let (state, model, optim_bytes) = run.read_checkpoint(&self.device)?;
        let optim = build_optimizer(&self.cfg)
            .from_bytes(Bytes::from_bytes_vec(optim_bytes))
            .map_err(|e| {
                LopperError::Config(format!("cannot read the optimiser checkpoint: {e:?}"))
            })?;
        if let Some(h) = state.hook.clone() {
            hook.restore(h)?;
        }
        if state.epochs_done >= self.cfg.epochs {
            return Ok(TrainOutcome {
                model,
                history: state.history,
                stopped_early: false,
            });
        }
        self.run_epochs(
            model,
            optim,
            state.epochs_done,
            state.steps_done,
            state.history,
            data,
            hook,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn run_epochs(
        &self,
        mut model: Model,
        mut optim: ModuleOptimizer,
        first_epoch: usize,
        mut global_step: usize,
        mut history: Vec<EpochRecord>,
        data: &TrainData,
        hook: &mut dyn TrainHook,
    ) -> Result<TrainOutcome> {
        let cfg = &self.cfg;
        let steps_per_epoch = data.train.num_batches();
        if steps_per_epoch == 0 {
            return Err(LopperError::Config("the training set is empty".into()));
        }
        for epoch in first_epoch..cfg.epochs {
            // Dropout draws from the backend's generator: reseed per epoch so a resumed run
            // draws what the uninterrupted one drew.
            self.device
                .seed(crate::data::seed_mix(&[cfg.seed, epoch as u64, 3]));
            let bar = self.progress_bar(steps_per_epoch, epoch);
            let started = Instant::now();
            let mut tally = Tally::default();
            let mut loss_sum = 0.0;
            let mut images = 0usize;
            let mut lr = cfg.lr;
            for (step_in_epoch, batch) in data.train.epoch(cfg.seed, epoch, 0).enumerate() {
                lr = learning_rate(cfg, global_step, steps_per_epoch);
                let info = StepInfo {
                    epoch,
                    step_in_epoch,
                    global_step,
                    lr,
                };
                hook.before_step(&info);
                let (x, _) = batch.to_tensors(&self.device);
                let node_hook: &dyn NodeHook = hook.node_hook().unwrap_or(&NoHook);
                let Value::Flat(logits) =
                    model.forward_hooked(Value::Spatial(x), true, node_hook)?
                else {
                    return Err(LopperError::Graph(
                        "the model's output is not [N, classes]".into(),
                    ));
                };
                let loss = cross_entropy(
                    logits.clone(),
                    &batch.labels,
                    cfg.label_smoothing,
                    &self.device,
                );
                let loss_value = loss.clone().into_scalar::<f32>() as f64;
                if !loss_value.is_finite() {
                    bar.abandon();
                    let kept = match (&self.run, epoch) {
                        (Some(run), e) if e > 0 => format!(
                            "; the last good checkpoint (epoch {e}) is kept in {}",
                            run.root.join("checkpoint").display()
                        ),
                        _ => String::new(),
                    };
                    return Err(LopperError::Diverged(format!(
                        "training diverged: the loss is {loss_value} at epoch {}, step {}{kept}. \
                         Try a lower learning rate (--lr) or a warm-up (--warmup-epochs).",
                        epoch + 1,
                        step_in_epoch + 1
                    )));
                }
                if let Ok(values) = logits.detach().into_data().try_into_vec_as::<f32>() {
                    tally.add(&values, &batch.labels);
                }
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let grads = hook.after_backward(&info, &model, grads);
                model = optim.step(lr, model, grads);
                model = hook.after_step(&info, model)?;
                loss_sum += loss_value;
                images += batch.len();
                global_step += 1;
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "loss {loss_value:.4}  {:.0} img/s",
                    images as f64 / secs
                ));
                bar.inc(1);
            }
            bar.finish_and_clear();
            let train_secs = started.elapsed().as_secs_f64();
            let node_hook: &dyn NodeHook = hook.node_hook().unwrap_or(&NoHook);
            let val = match &data.val {
                Some(b) => Some(evaluate(&model, b, node_hook, &self.plain)?),
                None => None,
            };
            let test = match &data.test {
                Some(b) => Some(evaluate(&model, b, node_hook, &self.plain)?),
                None => None,
            };
            let record = EpochRecord {
                epoch: epoch + 1,
                lr,
                train_loss: loss_sum / steps_per_epoch as f64,
                train_top1: tally.top1(),
                val,
                test,
                seconds: started.elapsed().as_secs_f64(),
                images_per_sec: images as f64 / train_secs.max(1e-9),
            };
            if self.progress {
                eprintln!("{}", describe(&record, cfg.epochs));
            }
            history.push(record.clone());
            let flow = hook.after_epoch(&record, &model)?;
            if let Some(run) = &self.run {
                let optim_bytes = optim.into_bytes().map_err(|e| {
                    LopperError::Config(format!("cannot serialise the optimiser: {e:?}"))
                })?;
                run.write_checkpoint(
                    &model,
                    &optim_bytes,
                    &CheckpointState {
                        epochs_done: epoch + 1,
                        steps_done: global_step,
                        history: history.clone(),
                        hook: hook.state()?,
                    },
                )?;
                run.write_model_and_metrics(&model, &history)?;
            }
            if flow.is_break() {
                return Ok(TrainOutcome {
                    model,
                    history,
                    stopped_early: epoch + 1 < cfg.epochs,
                });
            }
        }
        Ok(TrainOutcome {
            model,
            history,
            stopped_early: false,
        })
    }

    fn progress_bar(&self, steps: usize, epoch: usize) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(steps as u64);
        let style =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, self.cfg.epochs));
        bar
    }
}

/// One line per epoch for the terminal.
fn describe(r: &EpochRecord, epochs: usize) -> String {
    let mut s = format!(
        "epoch {}/{epochs}: train loss {:.4}, train top-1 {:.2}%",
        r.epoch,
        r.train_loss,
        100.0 * r.train_top1
    );
    if let Some(v) = &r.val {
        s += &format!(", val top-1 {:.2}%", 100.0 * v.top1);
    }
    if let Some(t) = &r.test {
        s += &format!(", test top-1 {:.2}% (loss {:.4})", 100.0 * t.top1, t.loss);
    }
    s += &format!(", {:.0} img/s, {:.1}s", r.images_per_sec, r.seconds);
    s
}
