//! The one training loop. Pruning methods, masks, criteria and progress displays plug into
//! it as a list of [`TrainHook`]s instead of copying it: forward hooks (masks), a look at the
//! gradients, a rewrite of the model and the optimiser state after each step, and a decision
//! after each epoch.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device};

use super::config::TrainConfig;
use super::eval::{Tally, evaluate};
use super::hooks::{OptimizerState, StepInfo, TrainHook, hooks_state, node_chain, restore_hooks};
use super::loss::cross_entropy;
use super::optim::build_optimizer;
use super::run::{CheckpointState, EpochRecord, RunDir};
use super::schedule::learning_rate;
use crate::data::Batcher;
use crate::error::{LopperError, Result};
use crate::model::{Model, Value};

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
        })
    }

    /// Trains `model` from the start (it is moved to the training device), calling `hooks` in
    /// order at every point of every step.
    pub fn fit(
        &self,
        model: Model,
        data: &TrainData,
        hooks: &mut [&mut dyn TrainHook],
    ) -> Result<TrainOutcome> {
        let model = model.fork(&self.device).train();
        if let Some(run) = &self.run {
            run.write_config(&self.cfg)?;
            run.write_model_and_metrics(&model, &[])?;
        }
        let optim = build_optimizer(&self.cfg);
        self.run_epochs(model, optim, 0, 0, vec![], data, hooks)
    }

    /// Continues the run in `self.run` from its last checkpoint, with the same hooks in the
    /// same order as the interrupted run (each gets back the state it saved).
    pub fn resume(
        &self,
        data: &TrainData,
        hooks: &mut [&mut dyn TrainHook],
    ) -> Result<TrainOutcome> {
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
            restore_hooks(hooks, h)?;
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
            hooks,
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
        hooks: &mut [&mut dyn TrainHook],
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
                    steps_per_epoch,
                    epochs: cfg.epochs,
                };
                for h in hooks.iter_mut() {
                    h.before_step(&info, &model)?;
                }
                let (x, _) = batch.to_tensors(&self.device);
                let Value::Flat(logits) =
                    model.forward_hooked(Value::Spatial(x), true, &node_chain(hooks))?
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
                let mut grads = GradientsParams::from_grads(loss.backward(), &model);
                for h in hooks.iter_mut() {
                    grads = h.after_backward(&info, &model, grads)?;
                }
                model = optim.step(lr, model, grads);
                for h in hooks.iter_mut() {
                    model = h.after_step(&info, model, &mut OptimizerState::new(&mut optim))?;
                }
                loss_sum += loss_value;
                images += batch.len();
                global_step += 1;
                for h in hooks.iter_mut() {
                    h.step_done(&info, loss_value, batch.len());
                }
            }
            let train_secs = started.elapsed().as_secs_f64();
            let chain = node_chain(hooks);
            let val = match &data.val {
                Some(b) => Some(evaluate(&model, b, &chain, &self.plain)?),
                None => None,
            };
            let test = match &data.test {
                Some(b) => Some(evaluate(&model, b, &chain, &self.plain)?),
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
            history.push(record.clone());
            let mut stop = false;
            for h in hooks.iter_mut() {
                stop |= h.after_epoch(&record, &model)?.is_break();
            }
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
                        hook: hooks_state(hooks)?,
                    },
                )?;
                run.write_model_and_metrics(&model, &history)?;
            }
            if stop {
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
}
