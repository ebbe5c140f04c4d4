//! The prune session: a [`PrunePlan`] in, a pruned, fine-tuned run folder and a
//! [`PruneReport`] out. It runs the phases every method shares:
//!
//! 1. the source model (a trained run, or a zoo model from random weights) and the data;
//! 2. the method ([`super::methods`]) finds what to keep under the budget and makes it physical;
//! 3. BatchNorm statistics re-estimated on the pruned widths, then an evaluation;
//! 4. fine-tuning; 5. latency measurement, the report and its plots.
//!
//! Each phase's result is on disk before the next starts, so an interrupted prune resumes
//! where it stopped ([`PruneSession::resume`]): the method's widths are not searched again,
//! fine-tuning goes on from its last epoch, and DSA's allocation from its last epoch. The plan
//! is saved in the run folder as a recipe with every default spelled out (`recipe.toml`), so a
//! resumed prune runs with the settings it started with even if a later lopper changes a
//! default. Progress goes to a [`Progress`] callback: the CLI draws bars, a library user logs.
//!
//! ```text
//! OUT/
//!   recipe.toml            the resolved plan
//!   allocation/            the method's own files (DSA: the allocation phase's run folder)
//!   dsa_log.jsonl          DSA's per-epoch keep ratios
//!   pruned/                the pruned model before fine-tuning; allocation.json marks it done
//!   config.toml, model.*, metrics.jsonl, checkpoint/    the fine-tuning run (as `lopper train`)
//!   prune_report.{json,md}, keep_ratios.{svg,png} or weight_sparsity.{svg,png},
//!                          keep_ratio_history.{svg,png} (DSA), sparsity_history.{svg,png} (PDP)
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::allocation::{Metric, Target};
use super::groups::{ChannelGroup, channel_groups, collapsed_streams};
use super::latency::{
    LatencyMeter, LatencyProfile, MODEL_REPS, model_latency_ms, relative_latency,
};
use super::methods::iterative::width_ratios;
use super::methods::{ChannelBudget, Flow, History, MethodContext, MethodOutcome, MethodPlan};
use super::report::{BeforeAfter, GroupReport, PruneReport};
use super::weights::{WeightBudget, WeightMasks, kept_for, measure, weight_layers};
use crate::count::{count, human};
use crate::data::DatasetName;
use crate::error::{LopperError, Result};
use crate::fsutil::{FolderLock, write_atomic};
use crate::model::{Model, NoHook};
use crate::train::{
    Progress, ProgressHook, RunDir, ScheduleKind, TrainConfig, TrainHook, Trainer, batch_data,
    check_input, evaluate, has_batch_norm, load_data, recalibrate_batch_norm,
};

/// The resolved plan in a prune's run folder.
pub const RECIPE_FILE: &str = "recipe.toml";
/// The pruned model before fine-tuning, and how it was found (`allocation.json`).
const PRUNED_DIR: &str = "pruned";
/// The sidecar of a weight-pruned run: per-layer sparsity and pattern (see
/// [`super::weights::SparsityReport`]); `lopper export` writes it beside the exported weights.
pub const SPARSITY_FILE: &str = "sparsity.json";
/// The folder a method's own training run writes (DSA's allocation phase, GMP's pruning
/// phase, with per-epoch checkpoints); its presence marks a prune in progress.
pub(crate) const METHOD_DIR: &str = "allocation";

/// Everything a prune needs to know. Its fields are the recipe's (`lopper prune --recipe`),
/// and with `-` for `_` the CLI's flags; the method's settings sit beside them, tagged by
/// `method`. `Option` fields left `None` take a default from the source run (seed, device,
/// data directory) or from the flow ([`PrunePlan::resolve`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrunePlan {
    /// The trained run to prune.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<PathBuf>,
    /// DSA only: learn the widths while training a new model from random weights.
    #[serde(default)]
    pub from_scratch: bool,
    /// From scratch: the zoo model to train, and its data set (default: the model's usual).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetName>,
    /// The data directory (default: the source run's, then `LOPPER_DATA_DIR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Use a seeded, class-balanced subset of N training / test samples (quick trials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_limit: Option<usize>,
    /// Seed of data order, held-out splits, masks and the random criterion (default: the
    /// source run's; from scratch, also the initial weights).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// cpu, cuda or wgpu (default: the source run's; cpu from scratch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Resource budget: `macs=0.5`, `macs=20M`, `params=0.3`, `latency=2.5ms`, ... for
    /// channel methods; `sparsity=0.9` or `nm=2:4` for weight methods.
    pub budget: String,
    /// Latency profile from `lopper profile`, for latency budgets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<PathBuf>,
    /// Nodes whose channels must stay.
    #[serde(default)]
    pub protect: Vec<String>,
    /// Keep channel counts a multiple of this (hardware-friendly widths), in every method.
    #[serde(default = "one")]
    pub round_to: usize,
    /// Training batches the BatchNorm statistics are re-estimated on after the cut (0: keep
    /// the unpruned network's).
    #[serde(default = "bn_batches")]
    pub bn_batches: usize,
    /// Fine-tuning epochs after pruning (0: none; default: the model's recipe, 1 for
    /// LeNet-5 and the MLP, 2 for the others, see [`crate::zoo::recipe`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune_epochs: Option<usize>,
    /// Fine-tuning learning rate (cosine schedule); by default a tenth of the source run's
    /// training rate (from scratch: of the model's recipe rate), so that a LeNet-5 trained at
    /// 0.05 and a ResNet-20 trained at 0.1 are each fine-tuned at their own scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// The method and its settings.
    #[serde(flatten)]
    pub method: MethodPlan,
}

fn one() -> usize {
    1
}
fn bn_batches() -> usize {
    32
}
/// The fine-tuning rate is the source's training rate over this (Torch-Pruning's examples,
/// and lopper before the rate followed the source, fine-tune a ResNet trained at 0.1 at 0.01).
const FINETUNE_LR_DIVISOR: f64 = 10.0;

impl PrunePlan {
    /// A plan with every default: prune `run` by `method` to `budget`.
    pub fn new(run: impl Into<PathBuf>, method: MethodPlan, budget: &str) -> PrunePlan {
        PrunePlan {
            run: Some(run.into()),
            from_scratch: false,
            model: None,
            dataset: None,
            data_dir: None,
            train_limit: None,
            test_limit: None,
            seed: None,
            device: None,
            budget: budget.into(),
            profile: None,
            protect: vec![],
            round_to: one(),
            bn_batches: bn_batches(),
            finetune_epochs: None,
            lr: None,
            method,
        }
    }

    /// The budget, parsed: a channel budget or a weight budget.
    pub fn target(&self) -> Result<Target> {
        self.budget.parse()
    }

    /// Reads a plan from recipe fields. A field the plan does not have, or one the chosen
    /// method does not use, is an error naming it (a typo must not be silently ignored).
    pub fn from_table(table: toml::Table) -> Result<PrunePlan> {
        if !table.contains_key("method") {
            return Err(LopperError::Config(
                "the recipe names no method (method = \"l1\", \"taylor\", \"iterative\", \"dsa\", ...)".into(),
            ));
        }
        let plan: PrunePlan =
            toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    LopperError::Config(format!("invalid recipe: {}", e.message()))
                })?;
        let known = plan.to_table()?;
        if let Some(key) = table.keys().find(|k| !known.contains_key(*k)) {
            return Err(LopperError::Config(format!(
                "recipe field '{key}' is unknown or not used by method {} (flags: --{})",
                plan.method.name(),
                key.replace('_', "-")
            )));
        }
        Ok(plan)
    }

    /// Reads a recipe file (see [`PrunePlan::from_table`]).
    pub fn from_toml_file(path: &Path) -> Result<PrunePlan> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LopperError::bad_file(path, format!("cannot read the recipe: {e}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| LopperError::bad_file(path, e.message().to_owned()))?;
        Self::from_table(table).map_err(|e| LopperError::bad_file(path, e.to_string()))
    }

    /// The plan as recipe fields.
    pub fn to_table(&self) -> Result<toml::Table> {
        toml::Table::try_from(self)
            .map_err(|e| LopperError::Config(format!("cannot write the recipe: {e}")))
    }

    /// The plan as a recipe file's text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self)
            .map_err(|e| LopperError::Config(format!("cannot write the recipe: {e}")))
    }

    /// The flow this plan prunes in (from a trained run or from scratch), before the source
    /// is read.
    pub fn flow(&self) -> Flow {
        Flow {
            from_scratch: self.from_scratch,
            lr: self.lr,
            source_lr: None,
        }
    }

    /// Fills the defaults that follow the source (its training rate, the model's recipe),
    /// once it is read.
    pub(crate) fn resolve_source(&mut self, source: &TrainConfig) -> Result<()> {
        self.lr.get_or_insert(source.lr / FINETUNE_LR_DIVISOR);
        self.finetune_epochs
            .get_or_insert(crate::zoo::recipe(&source.model).finetune_epochs);
        let flow = Flow {
            source_lr: Some(source.lr),
            ..self.flow()
        };
        let target = self.target()?;
        self.method.resolve(&flow, &target)
    }

    /// Checks the plan and fills every default that does not need the source run, so that
    /// the saved recipe spells them out. Bad settings are one error, before any data is read.
    pub fn resolve(&mut self) -> Result<()> {
        let target = self.target()?;
        let weights = matches!(target, Target::Weights(_));
        if !self.method.accepts(&target) {
            return Err(LopperError::Config(if weights {
                format!(
                    "method {} removes channels; a weight budget ({target}) needs --method magnitude, gmp, pdp, rigl or iee",
                    self.method.name()
                )
            } else {
                format!(
                    "method {} zeroes weights; it takes a weight budget (sparsity=0.9, nm=2:4), not {target}",
                    self.method.name()
                )
            }));
        }
        if let Some(allocation) = self.method.weight_allocation() {
            match target {
                Target::Weights(WeightBudget::NM { .. }) if allocation.is_some() => {
                    return Err(LopperError::Config(format!(
                        "allocation (--allocation) spreads a sparsity over the layers; the budget {target} puts every pruned layer at its pattern"
                    )));
                }
                Target::Weights(WeightBudget::Sparsity(_)) => {
                    allocation.get_or_insert_default();
                }
                _ => {}
            }
        }
        if weights && self.round_to != 1 {
            return Err(LopperError::Config(
                "round_to (--round-to) rounds channel counts; a weight budget removes no channels"
                    .into(),
            ));
        }
        match (&self.run, self.from_scratch, &self.model) {
            (Some(_), true, _) => {
                return Err(LopperError::Config(
                    "a prune starts from a trained run (run) or from scratch (from_scratch with model), not both".into(),
                ));
            }
            (None, false, _) => {
                return Err(LopperError::Config(
                    "nothing to prune: give a trained run (--run DIR) or --from-scratch --model NAME".into(),
                ));
            }
            (None, true, None) => {
                return Err(LopperError::Config(
                    "pruning from scratch needs a zoo model (--model NAME)".into(),
                ));
            }
            _ => {}
        }
        if self.from_scratch && self.dataset.is_none() {
            let model = self.model.as_deref().unwrap_or_default();
            self.dataset = Some(DatasetName::default_for_model(model));
        }
        if self.lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
            return Err(LopperError::Config("lr (--lr) must be positive".into()));
        }
        let flow = self.flow();
        self.method.resolve(&flow, &target)
    }

    /// Relative paths (run, data, profile) made absolute against `base`, so a saved recipe
    /// means the same from any directory.
    pub fn absolute(mut self, base: &Path) -> PrunePlan {
        for p in [&mut self.run, &mut self.data_dir, &mut self.profile]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        self
    }
}

/// A new prune may write into `out`: it does not hold a prune's progress already (a folder
/// where a prune failed before any phase finished may be reused) nor someone else's files.
fn check_fresh(out: &Path) -> Result<()> {
    let progress = [METHOD_DIR, PRUNED_DIR, "config.toml"]
        .iter()
        .any(|p| out.join(p).exists());
    if progress {
        return Err(LopperError::Config(format!(
            "{} already holds a prune run; resume it (--resume), or choose another output folder",
            out.display()
        )));
    }
    crate::fsutil::check_run_folder(out, &[RECIPE_FILE])
}

/// What the method found, saved with the pruned model so a resumed run skips the search.
#[derive(Serialize, Deserialize)]
struct AllocationRecord {
    allocation: String,
    measured_ms: Option<f64>,
    #[serde(default)]
    history: Option<History>,
    seconds: f64,
    #[serde(default)]
    cost: Option<f64>,
    #[serde(default)]
    collapse: Option<String>,
}

/// A prune in a run folder: started fresh from a plan, or resumed from the folder's recipe.
pub struct PruneSession {
    plan: PrunePlan,
    out: PathBuf,
    resume: bool,
}

impl PruneSession {
    /// A new prune of `plan` into `out`, which must not hold a prune's progress already (a
    /// folder where a prune failed before any phase finished may be reused).
    pub fn new(mut plan: PrunePlan, out: impl Into<PathBuf>) -> Result<PruneSession> {
        let out = out.into();
        check_fresh(&out)?;
        plan.resolve()?;
        Ok(PruneSession {
            plan,
            out,
            resume: false,
        })
    }

    /// Continues the interrupted prune in `out` with the plan saved there.
    pub fn resume(out: impl Into<PathBuf>) -> Result<PruneSession> {
        let out = out.into();
        let path = out.join(RECIPE_FILE);
        if !path.exists() {
            return Err(LopperError::bad_file(
                &path,
                "no saved recipe: not a folder a prune started",
            ));
        }
        let mut plan = PrunePlan::from_toml_file(&path)?;
        plan.resolve()?;
        Ok(PruneSession {
            plan,
            out,
            resume: true,
        })
    }

    /// The plan (resolved: every default filled in).
    pub fn plan(&self) -> &PrunePlan {
        &self.plan
    }

    /// Replaces where the data is read from (a resumed prune on another machine).
    pub fn set_data_dir(&mut self, dir: PathBuf) {
        self.plan.data_dir = Some(dir);
    }

    /// Replaces the device (a resumed prune on another machine).
    pub fn set_device(&mut self, device: String) {
        self.plan.device = Some(device);
    }

    /// Runs every phase (skipping those a resumed prune finished) and writes the report.
    pub fn run(self, progress: &mut dyn Progress) -> Result<PruneReport> {
        let started = Instant::now();
        let PruneSession {
            mut plan,
            out,
            resume,
        } = self;
        let target = plan.target()?;
        let channel_budget = match target {
            Target::Channels(b) => Some(b),
            Target::Weights(_) => None,
        };
        // The source is read before the folder is touched: a wrong --run leaves nothing.
        let (mut cfg, dense) = source(&plan)?;
        plan.resolve_source(&cfg)?;
        let mut method = plan.method.build();
        // Held until the report is written; checked again under the lock, since another
        // process may have started here after this session was set up.
        let _lock = FolderLock::acquire(&out)?;
        if !resume {
            check_fresh(&out)?;
        }
        let source_val_fraction = cfg.val_fraction;
        if let Some(share) = method.held_out() {
            cfg.val_fraction = share;
        }
        // The plan with the source's seed and device is what the run folder keeps.
        let finetune_epochs = plan.finetune_epochs.unwrap_or_default();
        let finetune_lr = plan.lr.unwrap_or_default();
        let mut saved = plan.clone();
        saved.seed = Some(cfg.seed);
        saved.device = Some(cfg.device.clone());
        let device = crate::device::device(&cfg.device)?;
        let loaded = load_data(&cfg)?;
        let data = batch_data(&cfg, &loaded)?;
        check_input(
            &dense.graph,
            cfg.dataset.input_shape(),
            &cfg.dataset.to_string(),
        )?;
        let test = data
            .test
            .as_ref()
            .ok_or_else(|| LopperError::Config("the test split is empty".into()))?;
        if !resume {
            write_atomic(&out.join(RECIPE_FILE), saved.to_toml()?.as_bytes())?;
        }

        let dense_eval = evaluate(&dense, test, &NoHook, &device)?;
        let top1_dense = dense_eval.top1;
        let mut output_warnings: Vec<String> = dense_eval
            .non_finite_warning(if plan.from_scratch {
                "the initial model"
            } else {
                "the dense model"
            })
            .into_iter()
            .collect();
        progress.message(&format!(
            "{} model: test top-1 {:.2}%",
            if plan.from_scratch {
                "initial"
            } else {
                "dense"
            },
            100.0 * top1_dense
        ));
        let groups = channel_groups(&dense.graph, &plan.protect)?;
        let profile = match &plan.profile {
            Some(p) => Some(LatencyProfile::load(p)?),
            None => None,
        };
        // A channel budget's cost model and limit; a weight budget is counted on the weights.
        let cost_model = channel_budget
            .map(|b| b.cost_model(&dense.graph, &groups, profile.as_ref()))
            .transpose()?;
        let limit = match (channel_budget, &cost_model) {
            (Some(b), Some(c)) => b.limit(c.dense_cost()),
            _ => 0.0,
        };
        // Latency budgets are checked by timing candidates against the dense model, off the
        // autodiff device.
        let dense_inference = dense.valid();
        let meter = match (&profile, channel_budget.map(|b| b.resource)) {
            (Some(p), Some(Metric::Latency)) => {
                Some(LatencyMeter::for_profile(&dense_inference, p, &device))
            }
            _ => None,
        };
        let weight_layers = match target {
            Target::Weights(w) => Some(weight_layers(&dense.graph, &plan.protect, w.pattern())?),
            Target::Channels(_) => None,
        };

        // Phase 2: the method.
        let pruned_dir = RunDir::new(out.join(PRUNED_DIR));
        let record_path = pruned_dir.root.join("allocation.json");
        let (found, allocation_seconds) = if resume && record_path.exists() {
            let rec: AllocationRecord = serde_json::from_slice(&crate::fsutil::read(&record_path)?)
                .map_err(|e| LopperError::bad_file(&record_path, e.to_string()))?;
            let model = pruned_dir.load_model(&device)?;
            progress.message(&format!(
                "resuming: the widths were found before ({}), fine-tuning goes on",
                rec.allocation
            ));
            let found = MethodOutcome {
                model,
                measured_ms: rec.measured_ms,
                allocation: rec.allocation,
                history: rec.history,
                cost: rec.cost,
                collapse: rec.collapse,
            };
            (found, rec.seconds)
        } else {
            let alloc_started = Instant::now();
            let mut cx = MethodContext {
                dense: &dense,
                cfg: &cfg,
                data: &data,
                groups: &groups,
                target,
                channels: match (channel_budget, &cost_model) {
                    (Some(budget), Some(cost)) => Some(ChannelBudget {
                        budget,
                        cost: cost.as_ref(),
                        limit,
                        profile: profile.as_ref(),
                        meter: meter.as_ref(),
                    }),
                    _ => None,
                },
                protect: &plan.protect,
                round_to: plan.round_to,
                flow: Flow {
                    source_lr: Some(cfg.lr),
                    ..plan.flow()
                },
                device: &device,
                work_dir: &out,
                resume,
                progress: &mut *progress,
            };
            let found = method.prune(&mut cx)?;
            let seconds = alloc_started.elapsed().as_secs_f64();
            // The pruned model first, then the record that marks the phase complete.
            pruned_dir.write_model_and_metrics(&found.model, &[])?;
            let rec = AllocationRecord {
                allocation: found.allocation.clone(),
                measured_ms: found.measured_ms,
                history: found.history.clone(),
                seconds,
                cost: found.cost,
                collapse: found.collapse.clone(),
            };
            write_atomic(&record_path, &to_json(&rec)?)?;
            (found, seconds)
        };

        let after_groups = channel_groups(&found.model.graph, &plan.protect)?;
        let mut warnings = collapse_warnings(&dense, &groups, &after_groups);
        let ratios = width_ratios(&groups, &after_groups);
        let (before, after) = (count(&dense.graph), count(&found.model.graph));
        // MACs and parameters are counted on the pruned graph; latency is measured (or, where
        // no measurement was taken, the profile's prediction).
        // (A weight budget is counted on the weights after fine-tuning, below.)
        let channel_cost = match (channel_budget, &cost_model) {
            (Some(b), Some(cm)) => Some(found.cost.unwrap_or_else(|| match b.resource {
                Metric::Macs => after.macs as f64,
                Metric::Params => after.params as f64,
                Metric::Latency => found.measured_ms.unwrap_or_else(|| cm.cost(&ratios)),
            })),
            _ => None,
        };

        // Phase 3: BatchNorm statistics of the pruned widths.
        let bn_started = Instant::now();
        // Models without BatchNorm have nothing to re-estimate; the report then says 0 batches.
        // (The report says how many batches there were, not how many were asked for.)
        let bn_used = if has_batch_norm(&found.model.graph) {
            plan.bn_batches.min(data.train.num_batches())
        } else {
            0
        };
        let pruned =
            recalibrate_batch_norm(&found.model, &data.train, bn_used, &device, &mut *progress)?;
        let bn_seconds = bn_started.elapsed().as_secs_f64();
        let pruned_eval = evaluate(&pruned, test, &NoHook, &device)?;
        let top1_pruned = pruned_eval.top1;
        output_warnings.extend(pruned_eval.non_finite_warning("the pruned model"));
        let reached = match (&weight_layers, target) {
            (Some(layers), Target::Weights(w)) => {
                let r = measure(&pruned, layers, w.pattern())?;
                format!(
                    "pruned to {:.2}% sparsity ({}, {} of {} weights of the pruned layers non-zero)",
                    100.0 * r.sparsity,
                    w.pattern(),
                    human(r.prunable_nonzero),
                    human(r.prunable)
                )
            }
            _ => format!(
                "pruned to {} MACs, {} parameters",
                human(after.macs),
                human(after.params)
            ),
        };
        progress.message(&format!(
            "{reached}: test top-1 {:.2}% before fine-tuning{}",
            100.0 * top1_pruned,
            if bn_used > 0 {
                format!(
                    " (BatchNorm statistics re-estimated on {bn_used} batches in {bn_seconds:.1} s)"
                )
            } else {
                String::new()
            }
        ));

        // Phase 4: fine-tuning, in the run folder itself (it resumes as `lopper train` does).
        let ft_started = Instant::now();
        let mut ft_cfg = cfg.clone();
        ft_cfg.epochs = finetune_epochs.max(1);
        ft_cfg.lr = finetune_lr;
        ft_cfg.schedule = ScheduleKind::Cosine;
        ft_cfg.warmup_epochs = 0.0;
        // A method that held a validation split out gives it back: fine-tuning trains on the
        // whole training set, as the other methods have it.
        ft_cfg.val_fraction = source_val_fraction;
        let full_data;
        let ft_data = if ft_cfg.val_fraction != cfg.val_fraction && finetune_epochs > 0 {
            full_data = batch_data(&ft_cfg, &loaded)?;
            &full_data
        } else {
            &data
        };
        let run_dir = RunDir::new(&out);
        let (final_model, finetuned) = if finetune_epochs > 0 {
            let trainer = Trainer::new(ft_cfg, Some(run_dir.clone()))?;
            let resuming = resume && run_dir.has_checkpoint();
            if resuming {
                progress.message("fine-tuning resumes from its last completed epoch");
            }
            let mut extra = method.finetune_hooks();
            // Weight masks stay as the method left them: what it zeroed is not regrown.
            if let Some(layers) = &weight_layers {
                extra.push(Box::new(WeightMasks::from_zeros(
                    &pruned,
                    layers.clone(),
                    &device,
                )?));
            }
            let mut shown = ProgressHook::new("fine-tuning", &mut *progress);
            let mut hooks: Vec<&mut dyn TrainHook> = extra
                .iter_mut()
                .map(|h| h.as_mut() as &mut dyn TrainHook)
                .collect();
            hooks.push(&mut shown);
            let outcome = if resuming {
                trainer.resume(ft_data, &mut hooks)?
            } else {
                trainer.fit(pruned, ft_data, &mut hooks)?
            };
            let t = outcome.history.last().and_then(|r| r.test);
            (outcome.model, t)
        } else {
            run_dir.write_config(&ft_cfg)?;
            run_dir.write_model_and_metrics(&pruned, &[])?;
            (pruned, None)
        };
        let finetune_seconds = ft_started.elapsed().as_secs_f64();
        output_warnings.extend(
            finetuned
                .as_ref()
                .and_then(|m| m.non_finite_warning("the fine-tuned model")),
        );
        warnings.extend(output_warnings);
        let classes: usize = dense.graph.output_shape().iter().product();
        let final_top1 = finetuned.map_or(top1_pruned, |m| m.top1);
        let collapsed = found.collapse.clone().or_else(|| {
            (final_top1 <= 1.5 / classes as f64).then(|| {
                format!(
                    "the result's test top-1 is {:.2}%, chance level for {classes} classes (the dense model had {:.2}%)",
                    100.0 * final_top1,
                    100.0 * top1_dense
                )
            })
        });
        for w in &warnings {
            progress.warning(w);
        }

        // Phase 5: latency (inference mode, off the autodiff device), the report, the plots.
        let final_model = final_model.valid();
        // The dense time alone, the pruned one as the dense time times their paired ratio
        // (the statistic the latency search uses). Four timings: each reports its progress.
        const LATENCY_TASK: &str = "measuring the dense and pruned latency at batch 1 and 64";
        let mut latency = |batch: usize, first: usize| {
            progress.work(LATENCY_TASK, first, 4);
            let before = model_latency_ms(&dense_inference, batch, MODEL_REPS, &device);
            progress.work(LATENCY_TASK, first + 1, 4);
            BeforeAfter {
                before,
                after: before
                    * relative_latency(&final_model, &dense_inference, batch, MODEL_REPS, &device),
            }
        };
        let latency_ms_batch1 = latency(1, 0);
        let latency_ms_batch64 = latency(64, 2);
        progress.work(LATENCY_TASK, 4, 4);
        // A weight budget holds on the weights as they are saved, after fine-tuning.
        let sparsity = match (&weight_layers, target) {
            (Some(layers), Target::Weights(w)) => Some(measure(&final_model, layers, w.pattern())?),
            _ => None,
        };
        let (cost, limit) = match (&sparsity, target, channel_cost) {
            (Some(r), Target::Weights(WeightBudget::Sparsity(s)), _) => (
                r.prunable_nonzero as f64,
                kept_for(r.prunable as usize, s) as f64,
            ),
            (Some(r), Target::Weights(WeightBudget::NM { n, .. }), _) => {
                (r.max_nonzero_per_group.unwrap_or(0) as f64, n as f64)
            }
            (_, _, Some(c)) => (c, limit),
            _ => {
                return Err(LopperError::Config(
                    "internal error: the budget was not counted".into(),
                ));
            }
        };
        if sparsity.is_some() {
            warnings.push(
                "the latency above is measured with dense kernels, which gain nothing from zero weights: a sparse model runs faster only on a sparse kernel or on hardware for its pattern (2:4 on sparse tensor cores)".into(),
            );
        }
        let report = PruneReport {
            model: dense.graph.name.clone(),
            method: plan.method.name().into(),
            allocation: found.allocation,
            budget: target.to_string(),
            budget_limit: limit,
            budget_cost: cost,
            budget_met: cost <= limit,
            from_scratch: plan.from_scratch,
            resumed: resume,
            macs: BeforeAfter {
                before: before.macs as f64,
                after: after.macs as f64,
            },
            params: BeforeAfter {
                before: before.params as f64,
                after: after.params as f64,
            },
            top1_dense,
            top1_pruned,
            top1_finetuned: finetuned.map(|m| m.top1),
            finetune_epochs,
            bn_batches: bn_used,
            latency_ms_batch1,
            latency_ms_batch64,
            warnings,
            collapsed,
            groups: groups
                .iter()
                .zip(&after_groups)
                .filter(|(g, _)| g.is_prunable())
                .map(|(g, p)| GroupReport {
                    id: g.id,
                    producers: g.label(&dense.graph),
                    before: g.channels,
                    after: p.channels,
                })
                .collect(),
            sparsity,
            allocation_seconds,
            finetune_seconds,
            seconds: started.elapsed().as_secs_f64(),
        };
        report.write_plots(&out, found.history.as_ref())?;
        write_atomic(&out.join("prune_report.json"), &to_json(&report)?)?;
        if let Some(r) = &report.sparsity {
            write_atomic(&out.join(SPARSITY_FILE), &to_json(r)?)?;
        }
        write_atomic(&out.join("prune_report.md"), report.markdown().as_bytes())?;
        if let Some(m) = finetuned {
            write_atomic(&run_dir.eval_path(), &to_json(&m)?)?;
        }
        if !report.budget_met {
            if channel_budget.is_some_and(|b| b.resource == Metric::Latency) {
                progress.warning(&format!(
                    "the measured latency {cost:.3} ms is over the budget {limit:.3} ms (latency measurements vary run to run; see BENCHMARKS.md)"
                ));
            } else {
                return Err(LopperError::Config(format!(
                    "internal error: the pruned model misses the budget ({cost} > {limit})"
                )));
            }
        }
        Ok(report)
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| LopperError::Config(e.to_string()))
}

/// Warnings for residual streams cut to one channel: the model is likely to be useless.
fn collapse_warnings(
    dense: &Model,
    groups: &[ChannelGroup],
    after: &[ChannelGroup],
) -> Vec<String> {
    collapsed_streams(groups, after)
        .into_iter()
        .map(|id| {
            let g = &groups[id];
            format!(
                "group {id} ({}) keeps 1 of {} channels; {} layers write it (a residual stream), and all they carry now passes through that channel. Fine-tuning seldom recovers from this. For DSA, more allocation epochs (--dsa-epochs) or --admm-metric cost-share kept such a group whole on ResNet-20; --protect keeps it whole with any method",
                g.label(&dense.graph),
                g.channels,
                g.producers()
            )
        })
        .collect()
}

/// The dense model and the configuration to train with: a trained run's, or a fresh model for
/// pruning from scratch; the plan's seed, device, data directory and limits replace the
/// configuration's.
fn source(plan: &PrunePlan) -> Result<(TrainConfig, Model)> {
    let with_plan = |mut cfg: TrainConfig| {
        cfg.seed = plan.seed.unwrap_or(cfg.seed);
        if let Some(d) = &plan.device {
            cfg.device = d.clone();
        }
        cfg.data_dir =
            crate::data::data_dir_for_run(plan.data_dir.as_deref(), cfg.data_dir.as_deref());
        if plan.train_limit.is_some() {
            cfg.train_limit = plan.train_limit;
        }
        if plan.test_limit.is_some() {
            cfg.test_limit = plan.test_limit;
        }
        cfg
    };
    if let Some(run) = &plan.run {
        let src = RunDir::new(run);
        let cfg = with_plan(src.read_config()?);
        let device = crate::device::device(&cfg.device)?;
        let dense = src.load_model(&device)?;
        return Ok((cfg, dense));
    }
    let name = plan
        .model
        .as_deref()
        .ok_or_else(|| LopperError::Config("pruning from scratch needs --model".into()))?;
    let dataset = plan
        .dataset
        .unwrap_or_else(|| DatasetName::default_for_model(name));
    // From scratch the model's recipe stands in for the source run's configuration.
    let recipe = crate::zoo::recipe(name);
    let cfg = with_plan(TrainConfig {
        model: name.into(),
        dataset,
        lr: recipe.lr,
        batch_size: recipe.batch_size,
        ..TrainConfig::default()
    });
    let device = crate::device::device(&cfg.device)?;
    let graph = crate::zoo::build(name, &dataset.input_shape(), dataset.num_classes())?;
    Ok((cfg.clone(), Model::init(graph, cfg.seed, &device)?))
}

#[cfg(test)]
mod tests {
    use super::PrunePlan;
    use crate::prune::methods::MethodPlan;
    use crate::prune::methods::dsa::DsaPlan;
    use crate::train::TrainConfig;

    fn dsa_lrs(mut plan: PrunePlan, source: &TrainConfig) -> (Option<f64>, Option<f64>) {
        plan.resolve().unwrap();
        plan.resolve_source(source).unwrap();
        match plan.method {
            MethodPlan::Dsa(d) => (plan.lr, d.dsa_lr),
            _ => unreachable!(),
        }
    }

    #[test]
    fn rates_follow_the_source_run() {
        let lenet = TrainConfig {
            model: "lenet5".into(),
            lr: 0.05,
            ..TrainConfig::default()
        };
        let from_run = PrunePlan::new("r", MethodPlan::Dsa(DsaPlan::default()), "macs=0.3");
        // A tenth of the training rate fine-tunes; DSA's weights train at the fine-tuning rate.
        assert_eq!(
            dsa_lrs(from_run.clone(), &lenet),
            (Some(0.005), Some(0.005))
        );
        let resnet = TrainConfig {
            model: "resnet20".into(),
            lr: 0.1,
            ..TrainConfig::default()
        };
        let (lr, dsa_lr) = dsa_lrs(from_run.clone(), &resnet);
        assert!((lr.unwrap() - 0.01).abs() < 1e-12 && dsa_lr == lr);
        // Given rates win.
        let mut given = from_run;
        given.lr = Some(0.02);
        assert_eq!(dsa_lrs(given, &lenet), (Some(0.02), Some(0.02)));
        // From scratch DSA trains at the source's (the recipe's) rate.
        let mut scratch = PrunePlan::new("r", MethodPlan::Dsa(DsaPlan::default()), "macs=0.3");
        scratch.run = None;
        scratch.from_scratch = true;
        scratch.model = Some("lenet5".into());
        assert_eq!(dsa_lrs(scratch, &lenet), (Some(0.005), Some(0.05)));
    }
}
