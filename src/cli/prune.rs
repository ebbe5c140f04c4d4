//! `lopper prune`: a trained run and a budget in, a smaller fine-tuned run and a report out.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;

use lopper::count::count;
use lopper::data::DatasetName;
use lopper::fsutil::write_atomic;
use lopper::model::Model;
use lopper::model::NoHook;
use lopper::prune::admm::AdmmMetric;
use lopper::prune::allocation::Amount;
use lopper::prune::dsa::{ChannelRank, Dsa, DsaConfig, RatioSignal};
use lopper::prune::iterative::{IterativeConfig, iterative_prune, width_ratios};
use lopper::prune::latency::{
    LatencyMeter, LatencyProfile, MODEL_REPS, model_latency_ms, relative_latency,
};
use lopper::prune::measured::{LatencyRound, Surgery, meet_latency};
use lopper::prune::report::{BeforeAfter, GroupReport, PruneReport};
use lopper::prune::{
    Allocation, Budget, Criterion, Metric, Selection, allocate, channel_groups, channel_scores,
    collapsed_streams, harden,
};
use lopper::train::{
    NoTrainHook, RunDir, ScheduleKind, TrainConfig, TrainData, Trainer, batch_data, evaluate,
    has_batch_norm, load_data, recalibrate_batch_norm,
};

/// How the pruned widths are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// One shot by the sum of |w| of each output filter (Li et al. 2017)
    L1,
    /// One shot by the L2 norm of each output filter
    L2,
    /// One shot by BatchNorm |γ| (network slimming)
    Bn,
    /// One shot by first-order Taylor on BatchNorm (Molchanov 2019)
    Taylor,
    /// One shot by random scores (a control)
    Random,
    /// Differentiable sparsity allocation: keep ratios learned under the budget (ADMM)
    Dsa,
    /// Iterative budgeted pruning: remove a little, fine-tune briefly, repeat
    Iterative,
}

impl Method {
    fn criterion(self) -> Option<Criterion> {
        match self {
            Method::L1 => Some(Criterion::L1),
            Method::L2 => Some(Criterion::L2),
            Method::Bn => Some(Criterion::Bn),
            Method::Taylor => Some(Criterion::Taylor),
            Method::Random => Some(Criterion::Random),
            Method::Dsa | Method::Iterative => None,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The trained (dense) run to prune.
    #[arg(
        long,
        required_unless_present_any = ["from_scratch", "resume"],
        conflicts_with = "from_scratch"
    )]
    pub run: Option<PathBuf>,
    /// Continue an interrupted prune in --out with the flags it was started with (DSA goes on
    /// from its last allocation epoch, fine-tuning from its last epoch).
    #[arg(long)]
    pub resume: bool,
    /// DSA only: learn the widths while training a new model from random weights.
    #[arg(long, requires = "model")]
    pub from_scratch: bool,
    /// With --from-scratch: the zoo model to train.
    #[arg(long)]
    pub model: Option<String>,
    /// With --from-scratch: the data set (default: the model's usual one).
    #[arg(long)]
    pub dataset: Option<DatasetName>,
    /// How the pruned widths are found.
    #[arg(long, value_enum, required_unless_present = "resume")]
    pub method: Option<Method>,
    /// One-shot methods: how channels are shared out between groups.
    #[arg(long, value_enum, default_value = "uniform")]
    pub allocation: Allocation,
    /// Resource budget: macs=0.5 (fraction of the dense model), macs=20M, params=0.3,
    /// params=100K, latency=2.5ms or latency=0.6 (with --profile).
    #[arg(long, required_unless_present = "resume")]
    pub budget: Option<Budget>,
    /// Latency profile from `lopper profile`, for latency budgets.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Fine-tuning epochs after pruning (0: none).
    #[arg(long, default_value_t = 0)]
    pub finetune_epochs: usize,
    /// Fine-tuning learning rate (cosine schedule).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Output run folder for the pruned model.
    #[arg(long)]
    pub out: PathBuf,
    /// Override the data directory recorded in the run.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Nodes whose channels must stay, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub protect: Vec<String>,
    /// Keep channel counts a multiple of this (hardware-friendly widths).
    #[arg(long, default_value_t = 1)]
    pub round_to: usize,
    /// Training batches to re-estimate the BatchNorm statistics on after the widths are cut
    /// (forward passes only; 0: keep the unpruned network's statistics).
    #[arg(long, default_value_t = 32)]
    pub bn_batches: usize,
    /// Batches of training data for the Taylor criterion.
    #[arg(long, default_value_t = 16)]
    pub taylor_batches: usize,
    /// DSA: epochs of joint weight and keep-ratio training; a fraction (0.5, 1.5) runs
    /// ceil(x) passes over a random x/ceil(x) share of the training split [default: 1.5 from
    /// a trained run, 3 from scratch].
    #[arg(long)]
    pub dsa_epochs: Option<f64>,
    /// DSA: weight learning rate during allocation; default --lr from a trained run, 0.1 from
    /// scratch.
    #[arg(long)]
    pub dsa_lr: Option<f64>,
    /// DSA: the weight learning-rate schedule of the allocation phase from a trained run:
    /// constant (the rate throughout, as the iterative method's brief fine-tuning has it; the
    /// default) or cosine (decays to 0 by its end). From scratch it is always cosine after a
    /// warm-up.
    #[arg(long, value_enum)]
    pub dsa_schedule: Option<ScheduleKind>,
    /// DSA: one keep-ratio step every this many weight steps.
    #[arg(long, default_value_t = 5)]
    pub ratio_every: usize,
    /// DSA: step size of the linearised ADMM update of the keep ratios (default 1 with the
    /// fisher signal, whose scale is normalised; 0.05 with the sampled one).
    #[arg(long)]
    pub ratio_lr: Option<f64>,
    /// DSA: initial ADMM penalty (it grows ×1.05 per epoch). Large next to the normalised
    /// Fisher signal keeps the budget projection local, so the widths do not jump between
    /// far-apart ways of meeting the budget [default: 10 from a trained run, 1 from scratch].
    #[arg(long)]
    pub rho: Option<f64>,
    /// DSA: metric of the ADMM penalty and budget projection: euclidean (ALGORITHMS.md) or
    /// cost-share (each group weighted by its share of the cost: a uniform prior) or fisher
    /// (weighted by the mean squared loss gradient of its ratio: a second-order model)
    /// [default: cost-share from a trained run, euclidean from scratch].
    #[arg(long, value_enum)]
    pub admm_metric: Option<AdmmMetric>,
    /// DSA: the channel signal of the keep-ratio gradient: fisher (minus half the running
    /// mean square of the straight-through gradient: the expected loss increase of dropping
    /// the channel) or sampled (the straight-through gradient of one batch, ALGORITHMS.md).
    #[arg(long, value_enum, default_value = "fisher")]
    pub ratio_signal: RatioSignal,
    /// DSA: share of the allocation phase, at its end, whose weight steps train under the
    /// deterministic masks of the widths that will be kept instead of sampled ones [default:
    /// 0.5 from a trained run, 0 from scratch].
    #[arg(long)]
    pub hard_tail: Option<f64>,
    /// DSA: which channels a group's keep ratio keeps: gamma (the BatchNorm scales, as in the
    /// paper) or fisher (the channels whose removal the ratio steps measured to cost most).
    #[arg(long, value_enum, default_value = "gamma")]
    pub channel_rank: ChannelRank,
    /// DSA: share of the Fisher estimate kept from one ratio step to the next (1: the mean
    /// since the start; 0.8: a moving average over about 5 steps, which follows the loss as
    /// the network thins) [default: 0.8 from a trained run, 1 from scratch].
    #[arg(long)]
    pub fisher_decay: Option<f64>,
    /// DSA: share of the training data held out for the keep-ratio steps.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Iterative: importance criterion.
    #[arg(long, value_enum, default_value = "taylor")]
    pub criterion: Criterion,
    /// Iterative: share of the remaining budget gap closed per step.
    #[arg(long, default_value_t = 0.3)]
    pub step_share: f64,
    /// Iterative: training batches of brief fine-tuning after each step.
    #[arg(long, default_value_t = 100)]
    pub step_batches: usize,
    /// Seed of DSA's held-out split, masks and data order, the fine-tuning's data order and
    /// the random criterion (default: the dense run's; from scratch, also the initial
    /// weights). Rerun with other seeds to see how much of a difference between methods is
    /// noise. Taylor scores always come from the first --taylor-batches batches.
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda or wgpu (when compiled in); default: the device the dense run trained on
    /// (cpu from scratch).
    #[arg(long)]
    pub device: Option<String>,
    /// Use only the first N training samples (quick trials).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N test samples (quick trials).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Print the report's JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

/// The widths a method chose: the pruned model and what to report about how.
struct Pruned {
    model: Model,
    /// For latency budgets: the pruned model's measured latency at the profile's batch.
    measured_ms: Option<f64>,
    allocation: String,
    /// Per-epoch keep ratios (DSA only), for the line plot.
    ratio_history: Vec<(usize, Vec<f64>)>,
}

/// The argument list a prune started with, kept in its folder for `--resume`.
const COMMAND_FILE: &str = "prune_command.json";
/// The pruned model before fine-tuning, and how it was found (`allocation.json`).
const PRUNED_DIR: &str = "pruned";
/// DSA's allocation phase: its own run folder with per-epoch checkpoints.
const ALLOCATION_DIR: &str = "allocation";
/// Fewer keep-ratio steps than this and DSA warns: g's quarter epoch on ResNet-20 (17 steps)
/// let the budget projection cut a residual stream to one channel (BENCHMARKS.md g).
const MIN_RATIO_STEPS: usize = 20;

/// DSA's settings with the flow's defaults filled in. From a trained run the defaults are the
/// best setting benchmarked against the iterative method (BENCHMARKS.md i–l): 1.5 epochs at a
/// constant rate, the cost-share metric, the last half under the kept widths' masks, a Fisher
/// estimate that forgets (0.8 per ratio step) and an ADMM penalty of 10, large next to the
/// normalised signal (with 1 the widths jumped between far-apart ways of meeting the budget,
/// BENCHMARKS.md l). From scratch that setting has been run on ResNet-20 with one seed only
/// (2.6 points ahead, BENCHMARKS.md m), so the defaults stay the earlier ones until more seeds
/// agree: 3 epochs, ALGORITHMS.md's Euclidean metric, sampled masks throughout, the Fisher
/// mean since the start, a penalty of 1, a cosine after a warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DsaSettings {
    epochs: f64,
    schedule: ScheduleKind,
    metric: AdmmMetric,
    hard_tail: f64,
    fisher_decay: f64,
    rho: f64,
}

impl DsaSettings {
    fn resolve(a: &PruneArgs) -> Result<Self> {
        let s = if a.from_scratch {
            if a.dsa_schedule.is_some_and(|k| k != ScheduleKind::Cosine) {
                bail!(
                    "--dsa-schedule applies to a prune from a trained run; from scratch the allocation phase trains the new weights with a warm-up and a cosine"
                );
            }
            DsaSettings {
                epochs: a.dsa_epochs.unwrap_or(3.0),
                schedule: ScheduleKind::Cosine,
                metric: a.admm_metric.unwrap_or(AdmmMetric::Euclidean),
                hard_tail: a.hard_tail.unwrap_or(0.0),
                fisher_decay: a.fisher_decay.unwrap_or(1.0),
                rho: a.rho.unwrap_or(1.0),
            }
        } else {
            DsaSettings {
                epochs: a.dsa_epochs.unwrap_or(1.5),
                schedule: a.dsa_schedule.unwrap_or(ScheduleKind::Constant),
                metric: a.admm_metric.unwrap_or(AdmmMetric::CostShare),
                hard_tail: a.hard_tail.unwrap_or(0.5),
                fisher_decay: a.fisher_decay.unwrap_or(0.8),
                rho: a.rho.unwrap_or(10.0),
            }
        };
        if !(s.epochs > 0.0 && s.epochs.is_finite()) {
            bail!("--dsa-epochs must be positive");
        }
        if !(s.rho > 0.0 && s.rho.is_finite()) {
            bail!("--rho, the ADMM penalty, must be positive");
        }
        if !(0.0..=1.0).contains(&s.hard_tail) {
            bail!("--hard-tail is a share of the allocation phase, from 0 to 1");
        }
        Ok(s)
    }

    /// The flags a prune left to their defaults, spelled out, so the command saved for
    /// `--resume` goes on with the settings it started with even if a later lopper changes
    /// the defaults.
    fn defaulted_flags(&self, a: &PruneArgs) -> Vec<String> {
        let flags = [
            (
                a.dsa_epochs.is_some(),
                "--dsa-epochs",
                self.epochs.to_string(),
            ),
            (
                a.admm_metric.is_some(),
                "--admm-metric",
                flag_value(&self.metric),
            ),
            (
                a.hard_tail.is_some(),
                "--hard-tail",
                self.hard_tail.to_string(),
            ),
            (
                a.fisher_decay.is_some(),
                "--fisher-decay",
                self.fisher_decay.to_string(),
            ),
            (a.rho.is_some(), "--rho", self.rho.to_string()),
            // From scratch the schedule is not a choice (and a flag for it is refused).
            (
                a.dsa_schedule.is_some() || a.from_scratch,
                "--dsa-schedule",
                flag_value(&self.schedule),
            ),
        ];
        flags
            .into_iter()
            .filter(|(given, _, _)| !given)
            .flat_map(|(_, name, value)| [name.to_owned(), value])
            .collect()
    }
}

/// How a value is spelled on the command line (`cost-share`, not `CostShare`).
fn flag_value<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_owned())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedCommand {
    cwd: PathBuf,
    args: Vec<String>,
}

/// What the allocation phase found, saved with the pruned model so a resumed run skips it.
#[derive(serde::Serialize, serde::Deserialize)]
struct AllocationRecord {
    allocation: String,
    measured_ms: Option<f64>,
    ratio_history: Vec<(usize, Vec<f64>)>,
    seconds: f64,
}

/// A fresh prune's arguments as given (its folder must be new), or for `--resume` the ones
/// saved in the folder, with the output options of this invocation.
fn resolve(a: PruneArgs) -> Result<PruneArgs> {
    let saved = a.out.join(COMMAND_FILE);
    if !a.resume {
        // A folder with only the saved command made no progress worth keeping (the prune
        // stopped on an error before any phase finished): it may be reused.
        let progress = [ALLOCATION_DIR, PRUNED_DIR, "config.toml"]
            .iter()
            .any(|p| a.out.join(p).exists());
        if progress {
            bail!(
                "{} already holds a prune run; pass --resume to continue it, or choose another --out",
                a.out.display()
            );
        }
        return Ok(a);
    }
    if a.run.is_some() || a.method.is_some() || a.budget.is_some() || a.from_scratch {
        bail!(
            "--resume continues with the flags saved in {}: give only --out (and --data-dir, --device, --quiet, --json)",
            saved.display()
        );
    }
    let text = std::fs::read_to_string(&saved).with_context(|| {
        format!(
            "cannot resume {}: {} is missing (not a folder `lopper prune` started)",
            a.out.display(),
            saved.display()
        )
    })?;
    let cmd: SavedCommand = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a saved prune command", saved.display()))?;
    let parsed = <super::Cli as clap::Parser>::try_parse_from(&cmd.args)
        .with_context(|| format!("the command saved in {} no longer parses", saved.display()))?;
    let super::Command::Prune(mut p) = parsed.command else {
        bail!("{} holds no prune command", saved.display());
    };
    // Relative paths were relative to where the prune started.
    let abs = |p: &mut Option<PathBuf>| {
        if let Some(x) = p.as_mut().filter(|x| x.is_relative()) {
            *x = cmd.cwd.join(&*x);
        }
    };
    abs(&mut p.run);
    abs(&mut p.profile);
    abs(&mut p.data_dir);
    p.resume = true;
    p.out = a.out;
    p.quiet = a.quiet;
    p.json = a.json;
    if a.data_dir.is_some() {
        p.data_dir = a.data_dir;
    }
    if a.device.is_some() {
        p.device = a.device;
    }
    Ok(*p)
}

pub fn run(a: PruneArgs) -> Result<()> {
    let started = Instant::now();
    let a = resolve(a)?;
    let out = RunDir::new(&a.out);
    let method = a.method.context("--method is required")?;
    let budget = a.budget.context("--budget is required")?;
    if a.from_scratch && method != Method::Dsa {
        bail!("--from-scratch works with --method dsa only");
    }
    // Checked before any data is read: bad DSA flags are one line, at once.
    let dsa_settings = DsaSettings::resolve(&a)?;
    let (mut cfg, dense) = source(&a)?;
    if let Some(d) = &a.data_dir {
        cfg.data_dir = Some(d.clone());
    }
    if a.train_limit.is_some() {
        cfg.train_limit = a.train_limit;
    }
    if a.test_limit.is_some() {
        cfg.test_limit = a.test_limit;
    }
    let source_val_fraction = cfg.val_fraction;
    if method == Method::Dsa {
        // The keep ratios learn on data the weights do not see.
        cfg.val_fraction = a.val_fraction;
    }
    let device = lopper::device::device(&cfg.device)?;
    let loaded = load_data(&cfg).context("cannot load the data set")?;
    let data = batch_data(&cfg, &loaded)?;
    lopper::train::check_input(
        &dense.graph,
        cfg.dataset.input_shape(),
        &cfg.dataset.to_string(),
    )?;
    let test = data.test.as_ref().context("the test split is empty")?;
    let say = |m: String| {
        if !a.quiet {
            eprintln!("{m}");
        }
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    if !a.resume {
        let mut args: Vec<String> = std::env::args().collect();
        if method == Method::Dsa {
            args.extend(dsa_settings.defaulted_flags(&a));
        }
        let cmd = SavedCommand {
            cwd: std::env::current_dir().context("cannot read the current directory")?,
            args,
        };
        write_atomic(&a.out.join(COMMAND_FILE), &serde_json::to_vec_pretty(&cmd)?)?;
    }

    let top1_dense = evaluate(&dense, test, &NoHook, &device)?.top1;
    say(format!(
        "{} model: test top-1 {:.2}%",
        if a.from_scratch { "initial" } else { "dense" },
        100.0 * top1_dense
    ));
    let groups = channel_groups(&dense.graph, &a.protect)?;
    let profile = match &a.profile {
        Some(p) => Some(LatencyProfile::load(p)?),
        None => None,
    };
    let cost_model = budget.cost_model(&dense.graph, &groups, profile.as_ref())?;
    let limit = budget.limit(cost_model.dense_cost());
    // Latency budgets are checked by timing candidates against the dense model, off the
    // autodiff device.
    let dense_inference = dense.valid();
    let meter = match (&profile, budget.resource) {
        (Some(p), Metric::Latency) => Some(LatencyMeter::for_profile(&dense_inference, p, &device)),
        _ => None,
    };

    let pruned_dir = RunDir::new(a.out.join(PRUNED_DIR));
    let record_path = pruned_dir.root.join("allocation.json");
    let (pruned, allocation_seconds) = if a.resume && record_path.exists() {
        let rec: AllocationRecord = serde_json::from_slice(&lopper::fsutil::read(&record_path)?)
            .with_context(|| format!("{} is unreadable", record_path.display()))?;
        let model = pruned_dir
            .load_model(&device)
            .context("cannot load the pruned model to resume")?;
        say(format!(
            "resuming: the widths were found before ({}), fine-tuning goes on",
            rec.allocation
        ));
        let pruned = Pruned {
            model,
            measured_ms: rec.measured_ms,
            allocation: rec.allocation,
            ratio_history: rec.ratio_history,
        };
        (pruned, rec.seconds)
    } else {
        let alloc_started = Instant::now();
        let pruned = match method {
            Method::Dsa => {
                let ds = dsa_settings;
                let passes = ds.epochs.ceil() as usize;
                let share = ds.epochs / passes as f64;
                let alloc_train = if share < 0.999 {
                    let subset = data.train.dataset().split(share, cfg.seed ^ 0xA110C)?.1;
                    data.train.with_dataset(subset, cfg.batch_size)
                } else {
                    data.train.clone()
                };
                // No evaluation passes between allocation epochs: the ratio steps already report
                // the validation loss, and a test pass per epoch would only add time.
                let alloc_data = TrainData {
                    train: alloc_train,
                    val: None,
                    test: None,
                };
                let dcfg = DsaConfig {
                    epochs: passes,
                    ratio_every: a.ratio_every,
                    ratio_lr: a.ratio_lr.unwrap_or(match a.ratio_signal {
                        RatioSignal::Fisher => 1.0,
                        RatioSignal::Sampled => 0.05,
                    }),
                    rho: ds.rho,
                    metric: ds.metric,
                    signal: a.ratio_signal,
                    hard_tail: ds.hard_tail,
                    channel_rank: a.channel_rank,
                    fisher_decay: ds.fisher_decay,
                    ..DsaConfig::default()
                };
                let val = data
                    .val
                    .as_ref()
                    .context("DSA needs a validation split: use --val-fraction > 0")?
                    .shuffled(cfg.batch_size);
                let log = a.out.join("dsa_log.jsonl");
                let mut dsa = Dsa::new(
                    &dense,
                    groups.clone(),
                    budget.cost_model(&dense.graph, &groups, profile.as_ref())?,
                    limit,
                    dcfg,
                    val,
                    alloc_data.train.num_batches(),
                    &device,
                    cfg.seed,
                    Some(log),
                )?;
                let (weight_steps, ratio_steps) = dsa.planned_steps();
                if ratio_steps < MIN_RATIO_STEPS {
                    // Printed even with --quiet, like the collapsed-stream warning: the widths
                    // will be the budget projection's, not learned.
                    eprintln!(
                        "warning: DSA's allocation phase has only {ratio_steps} keep-ratio step(s) (one every {} weight steps over {weight_steps} batches); the ratios cannot learn from the loss in so few, and the widths will mostly be the budget projection's. Use more --dsa-epochs, a smaller --ratio-every or more training data",
                        a.ratio_every,
                    );
                }
                let mut alloc_cfg = cfg.clone();
                alloc_cfg.epochs = passes;
                alloc_cfg.lr = a.dsa_lr.unwrap_or(if a.from_scratch { 0.1 } else { a.lr });
                alloc_cfg.schedule = ds.schedule;
                alloc_cfg.warmup_epochs = if a.from_scratch { 0.3 } else { 0.0 };
                let alloc_run = RunDir::new(a.out.join(ALLOCATION_DIR));
                let resume_alloc = a.resume && alloc_run.has_checkpoint();
                let mut trainer = Trainer::new(alloc_cfg, Some(alloc_run))?;
                trainer.progress = !a.quiet;
                say(format!(
                    "DSA: {} allocation pass(es) over {:.0}% of the training split, one ratio step every {} weight steps, {} weight lr, {} metric, hard tail {}{}",
                    passes,
                    100.0 * share,
                    a.ratio_every,
                    flag_value(&ds.schedule),
                    flag_value(&ds.metric),
                    ds.hard_tail,
                    if resume_alloc {
                        " (resuming from the last completed epoch)"
                    } else {
                        ""
                    }
                ));
                let outcome = if resume_alloc {
                    trainer.resume(&alloc_data, &mut dsa)?
                } else {
                    trainer.fit(dense.clone(), &alloc_data, &mut dsa)?
                };
                let trained = outcome.model.valid();
                let importance = dsa.importance();
                let surgery = Surgery {
                    source: &trained,
                    groups: &groups,
                    scores: &importance,
                    cost: cost_model.as_ref(),
                    unit: 1,
                    device: &device,
                };
                let (model, measured) =
                    calibrated(a.quiet, limit, meter.as_ref(), &surgery, |lim| {
                        harden(
                            &groups,
                            &importance,
                            dsa.feasible_ratios(),
                            cost_model.as_ref(),
                            lim,
                        )
                    })?;
                Pruned {
                    model,
                    measured_ms: measured,
                    allocation: "dsa".into(),
                    ratio_history: dsa
                        .history()
                        .iter()
                        .map(|e| (e.epoch, e.ratios.clone()))
                        .collect(),
                }
            }
            Method::Iterative => {
                let icfg = IterativeConfig {
                    criterion: a.criterion,
                    step_share: a.step_share,
                    finetune_batches: a.step_batches,
                    taylor_batches: a.taylor_batches,
                };
                let mut ft = cfg.clone();
                ft.lr = a.lr;
                let measure = meter.as_ref().map(|meter| move |m: &Model| meter.ms(m));
                let (model, steps) = iterative_prune(
                    dense.clone(),
                    &a.protect,
                    cost_model.as_ref(),
                    limit,
                    &icfg,
                    &ft,
                    &data.train,
                    &device,
                    measure.as_ref().map(|f| f as _),
                    !a.quiet,
                )?;
                say(format!("iterative: {} pruning step(s)", steps.len()));
                let measured = measure.as_ref().map(|f| f(&model));
                Pruned {
                    model,
                    measured_ms: measured,
                    allocation: format!("iterative ({:?}, {} steps)", a.criterion, steps.len())
                        .to_lowercase(),
                    ratio_history: vec![],
                }
            }
            m => {
                let criterion = m.criterion().expect("one-shot methods have a criterion");
                let scores = channel_scores(
                    criterion,
                    &dense,
                    &groups,
                    Some((&data.train, a.taylor_batches)),
                    &device,
                    cfg.seed,
                )?;
                let surgery = Surgery {
                    source: &dense,
                    groups: &groups,
                    scores: &scores,
                    cost: cost_model.as_ref(),
                    unit: a.round_to.max(1),
                    device: &device,
                };
                let (model, measured) =
                    calibrated(a.quiet, limit, meter.as_ref(), &surgery, |lim| {
                        let budget = Budget {
                            resource: budget.resource,
                            amount: Amount::Absolute(lim),
                        };
                        allocate(
                            &groups,
                            &scores,
                            &budget,
                            cost_model.as_ref(),
                            a.allocation,
                            a.round_to,
                        )
                    })?;
                Pruned {
                    model,
                    measured_ms: measured,
                    allocation: format!("{:?}", a.allocation).to_lowercase(),
                    ratio_history: vec![],
                }
            }
        };
        let seconds = alloc_started.elapsed().as_secs_f64();
        // The pruned model first, then the record that marks the phase complete.
        pruned_dir.write_model_and_metrics(&pruned.model, &[])?;
        let rec = AllocationRecord {
            allocation: pruned.allocation.clone(),
            measured_ms: pruned.measured_ms,
            ratio_history: pruned.ratio_history.clone(),
            seconds,
        };
        write_atomic(&record_path, &serde_json::to_vec_pretty(&rec)?)?;
        (pruned, seconds)
    };

    let after_groups = channel_groups(&pruned.model.graph, &a.protect)?;
    let warnings: Vec<String> = collapsed_streams(&groups, &after_groups)
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
        .collect();
    // Printed even with --quiet: the model below is likely to be useless.
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let ratios = width_ratios(&groups, &after_groups);
    let (before, after) = (count(&dense.graph), count(&pruned.model.graph));
    // MACs and parameters are counted on the pruned graph; latency is measured (or, where no
    // measurement was taken, the profile's prediction).
    let cost = match budget.resource {
        Metric::Macs => after.macs as f64,
        Metric::Params => after.params as f64,
        Metric::Latency => pruned
            .measured_ms
            .unwrap_or_else(|| cost_model.cost(&ratios)),
    };
    let bn_started = Instant::now();
    // Models without BatchNorm have nothing to re-estimate; the report then says 0 batches.
    let bn_batches = if has_batch_norm(&pruned.model.graph) {
        a.bn_batches
    } else {
        0
    };
    let mut pruned = pruned;
    pruned.model = recalibrate_batch_norm(&pruned.model, &data.train, bn_batches, &device)
        .context("cannot re-estimate the BatchNorm statistics")?;
    let bn_seconds = bn_started.elapsed().as_secs_f64();
    let top1_pruned = evaluate(&pruned.model, test, &NoHook, &device)?.top1;
    say(format!(
        "pruned to {} MACs, {} parameters: test top-1 {:.2}% before fine-tuning{}",
        lopper::count::human(after.macs),
        lopper::count::human(after.params),
        100.0 * top1_pruned,
        if bn_batches > 0 {
            format!(
                " (BatchNorm statistics re-estimated on {bn_batches} batches in {bn_seconds:.1} s)"
            )
        } else {
            String::new()
        }
    ));

    let ft_started = Instant::now();
    let mut ft_cfg = cfg.clone();
    ft_cfg.epochs = a.finetune_epochs.max(1);
    ft_cfg.lr = a.lr;
    ft_cfg.schedule = ScheduleKind::Cosine;
    ft_cfg.warmup_epochs = 0.0;
    // DSA held a validation split out for its keep ratios; fine-tuning gets the whole training
    // set back, as the other methods have it.
    ft_cfg.val_fraction = source_val_fraction;
    let full_data;
    let ft_data = if ft_cfg.val_fraction != cfg.val_fraction && a.finetune_epochs > 0 {
        full_data = batch_data(&ft_cfg, &loaded)?;
        &full_data
    } else {
        &data
    };
    let (final_model, finetuned) = if a.finetune_epochs > 0 {
        let mut trainer = Trainer::new(ft_cfg, Some(out.clone()))?;
        trainer.progress = !a.quiet;
        let outcome = if a.resume && out.has_checkpoint() {
            say("fine-tuning resumes from its last completed epoch".into());
            trainer.resume(ft_data, &mut NoTrainHook)?
        } else {
            trainer.fit(pruned.model, ft_data, &mut NoTrainHook)?
        };
        let t = outcome.history.last().and_then(|r| r.test);
        (outcome.model, t)
    } else {
        out.write_config(&ft_cfg)?;
        out.write_model_and_metrics(&pruned.model, &[])?;
        (pruned.model, None)
    };
    let finetune_seconds = ft_started.elapsed().as_secs_f64();

    // Latency is measured in inference mode, off the autodiff device.
    let final_model = final_model.valid();
    // The dense time alone, the pruned one as the dense time times their paired ratio (the
    // statistic prune's own latency checks use).
    let latency = |batch: usize| {
        let before = model_latency_ms(&dense_inference, batch, MODEL_REPS, &device);
        BeforeAfter {
            before,
            after: before
                * relative_latency(&final_model, &dense_inference, batch, MODEL_REPS, &device),
        }
    };
    let report = PruneReport {
        model: dense.graph.name.clone(),
        method: format!("{:?}", method).to_lowercase(),
        allocation: pruned.allocation,
        budget: budget.to_string(),
        budget_limit: limit,
        budget_cost: cost,
        budget_met: cost <= limit,
        from_scratch: a.from_scratch,
        resumed: a.resume,
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
        finetune_epochs: a.finetune_epochs,
        bn_batches,
        latency_ms_batch1: latency(1),
        latency_ms_batch64: latency(64),
        warnings,
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
        allocation_seconds,
        finetune_seconds,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_plots(&a.out, &report, &pruned.ratio_history, &groups, &dense)?;
    let json = serde_json::to_string_pretty(&report)?;
    write_atomic(&a.out.join("prune_report.json"), json.as_bytes())?;
    write_atomic(&a.out.join("prune_report.md"), report.markdown().as_bytes())?;
    if let Some(m) = finetuned {
        write_atomic(
            &out.eval_path(),
            serde_json::to_string_pretty(&m)?.as_bytes(),
        )?;
    }
    if a.json {
        println!("{json}");
    } else if !a.quiet {
        print!("{}", report.markdown());
    }
    if !report.budget_met {
        if budget.resource == Metric::Latency {
            eprintln!(
                "warning: the measured latency {cost:.3} ms is over the budget {limit:.3} ms (latency measurements vary run to run; see BENCHMARKS.md)"
            );
        } else {
            bail!("internal error: the pruned model misses the budget ({cost} > {limit})");
        }
    }
    Ok(())
}

/// The pruned model for the budget `limit` ([`meet_latency`]), its builds reported unless
/// `quiet`.
fn calibrated(
    quiet: bool,
    limit: f64,
    meter: Option<&LatencyMeter>,
    surgery: &Surgery,
    select_at: impl Fn(f64) -> lopper::Result<Selection>,
) -> Result<(Model, Option<f64>)> {
    Ok(meet_latency(limit, meter, surgery, select_at, |r| {
        if quiet {
            return;
        }
        match r {
            LatencyRound::Calibration {
                round,
                model_limit,
                measured,
            } => eprintln!(
                "latency calibration round {round}: predicted limit {model_limit:.3} ms, measured {measured:.3} ms (budget {limit:.3} ms)"
            ),
            LatencyRound::Fill(step) => {
                let paid: Vec<String> = step
                    .removed
                    .iter()
                    .map(|(h, k)| format!("group {h} -{k}"))
                    .collect();
                eprintln!(
                    "latency fill: group {} +{} channel(s){}, measured {:.3} ms (budget {limit:.3} ms){}",
                    step.group,
                    step.added,
                    if paid.is_empty() {
                        String::new()
                    } else {
                        format!(" for {}", paid.join(", "))
                    },
                    step.measured,
                    if step.accepted { "" } else { ": not kept" }
                );
            }
        }
    })?)
}

/// The dense model and the configuration to train with: a trained run's, or a fresh model
/// for pruning from scratch; `--seed` and `--device` replace the configuration's in both.
fn source(a: &PruneArgs) -> Result<(TrainConfig, Model)> {
    let with_flags = |mut cfg: TrainConfig| {
        cfg.seed = a.seed.unwrap_or(cfg.seed);
        if let Some(d) = &a.device {
            cfg.device = d.clone();
        }
        cfg
    };
    if let Some(run) = &a.run {
        let src = RunDir::new(run);
        let cfg = with_flags(
            src.read_config()
                .with_context(|| format!("cannot prune {}", run.display()))?,
        );
        let device = lopper::device::device(&cfg.device)?;
        let dense = src
            .load_model(&device)
            .with_context(|| format!("cannot load the model of {}", run.display()))?;
        return Ok((cfg, dense));
    }
    let name = a.model.as_deref().context("--from-scratch needs --model")?;
    let dataset = a
        .dataset
        .unwrap_or_else(|| DatasetName::default_for_model(name));
    let cfg = with_flags(TrainConfig {
        model: name.into(),
        dataset,
        lr: a.dsa_lr.unwrap_or(0.1),
        ..TrainConfig::default()
    });
    let device = lopper::device::device(&cfg.device)?;
    let graph = lopper::zoo::build(name, &dataset.input_shape(), dataset.num_classes())?;
    Ok((cfg.clone(), Model::init(graph, cfg.seed, &device)?))
}

/// The keep-ratio bar chart, and for DSA the keep ratios over the allocation epochs.
fn write_plots(
    out: &std::path::Path,
    report: &PruneReport,
    history: &[(usize, Vec<f64>)],
    groups: &[lopper::prune::ChannelGroup],
    dense: &Model,
) -> Result<()> {
    lopper::plot::RatioBars {
        title: format!(
            "{}: kept channels per group ({}, {}, {})",
            report.model, report.method, report.allocation, report.budget
        ),
        x_label: "keep ratio (channels after / before)".into(),
        items: report
            .groups
            .iter()
            .map(|g| {
                (
                    format!("g{} {}", g.id, g.producers),
                    g.after as f64 / g.before as f64,
                )
            })
            .collect(),
    }
    .write(&out.join("keep_ratios"))
    .context("cannot write the keep-ratio plot")?;
    if !history.is_empty() {
        lopper::plot::Lines {
            title: format!("{}: DSA keep ratios ({})", report.model, report.budget),
            x_label: "allocation epoch".into(),
            y_label: "keep ratio a = sigmoid(s)".into(),
            series: groups
                .iter()
                .filter(|g| g.is_prunable())
                .map(|g| {
                    (
                        format!("g{} {}", g.id, g.label(&dense.graph)),
                        history.iter().map(|(e, r)| (*e as f64, r[g.id])).collect(),
                    )
                })
                .collect(),
        }
        .write(&out.join("keep_ratio_history"))
        .context("cannot write the keep-ratio history plot")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<PruneArgs> {
        let cli = <super::super::Cli as clap::Parser>::try_parse_from(
            [
                "lopper", "prune", "--method", "dsa", "--budget", "macs=0.5", "--out", "o",
            ]
            .iter()
            .chain(args),
        )?;
        let super::super::Command::Prune(p) = cli.command else {
            unreachable!("a prune command was parsed")
        };
        Ok(*p)
    }

    fn settings(args: &[&str]) -> Result<DsaSettings> {
        DsaSettings::resolve(&parse(args)?)
    }

    #[test]
    fn dsa_defaults_depend_on_the_flow() {
        let from_run = settings(&["--run", "r"]).unwrap();
        assert_eq!(
            from_run,
            DsaSettings {
                epochs: 1.5,
                schedule: ScheduleKind::Constant,
                metric: AdmmMetric::CostShare,
                hard_tail: 0.5,
                fisher_decay: 0.8,
                rho: 10.0,
            }
        );
        let scratch = settings(&["--from-scratch", "--model", "mlp"]).unwrap();
        assert_eq!(
            scratch,
            DsaSettings {
                epochs: 3.0,
                schedule: ScheduleKind::Cosine,
                metric: AdmmMetric::Euclidean,
                hard_tail: 0.0,
                fisher_decay: 1.0,
                rho: 1.0,
            }
        );
        // Flags given win in either flow.
        let given = [
            "--dsa-epochs",
            "0.5",
            "--admm-metric",
            "fisher",
            "--hard-tail",
            "0.25",
            "--fisher-decay",
            "0.5",
            "--rho",
            "3",
        ];
        for flow in [&["--run", "r"][..], &["--from-scratch", "--model", "mlp"]] {
            let s = settings(&[flow, &given[..]].concat()).unwrap();
            assert_eq!(
                (s.epochs, s.metric, s.hard_tail, s.fisher_decay, s.rho),
                (0.5, AdmmMetric::Fisher, 0.25, 0.5, 3.0)
            );
        }
        // The saved command spells the defaults out, and parses back to the same settings.
        for flow in [&["--run", "r"][..], &["--from-scratch", "--model", "mlp"]] {
            let saved = settings(flow).unwrap();
            let spelled: Vec<String> = flow
                .iter()
                .map(|x| x.to_string())
                .chain(saved.defaulted_flags(&parse(flow).unwrap()))
                .collect();
            let spelled: Vec<&str> = spelled.iter().map(String::as_str).collect();
            assert!(spelled.len() >= flow.len() + 10, "{spelled:?}");
            assert_eq!(settings(&spelled).unwrap(), saved, "{spelled:?}");
            let again = parse(&spelled).unwrap();
            assert!(saved.defaulted_flags(&again).is_empty());
        }
        let cosine = settings(&["--run", "r", "--dsa-schedule", "cosine"]).unwrap();
        assert_eq!(cosine.schedule, ScheduleKind::Cosine);
        // A constant rate from scratch and out-of-range values are refused.
        for bad in [
            &[
                "--from-scratch",
                "--model",
                "mlp",
                "--dsa-schedule",
                "constant",
            ][..],
            &["--run", "r", "--dsa-epochs", "0"],
            &["--run", "r", "--hard-tail", "1.5"],
            &["--run", "r", "--rho", "0"],
        ] {
            assert!(settings(bad).is_err(), "{bad:?}");
        }
    }
}
