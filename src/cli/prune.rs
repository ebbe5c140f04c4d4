//! `lopper prune`: flags (and a recipe file) into a [`PrunePlan`], the library's session, the
//! report printed. Every flag is a recipe field of the same name with `_` for `-`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use lopper::data::DatasetName;
use lopper::prune::admm::AdmmMetric;
use lopper::prune::dsa::{ChannelRank, RatioSignal};
use lopper::prune::session::RECIPE_FILE;
use lopper::prune::{Criterion, PrunePlan, PruneSession};
use lopper::train::ScheduleKind;

use super::common::{DataDirFlag, DeviceFlag, JsonFlag, LimitFlags, QuietFlag, SeedFlag};
use super::progress::Terminal;

/// The methods, as `--method` and a recipe's `method` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
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
    /// HALP: channels by an exact knapsack on Taylor importance under cost targets falling
    /// while training (latency with --profile), then fine-tuning
    Halp,
    /// Weights: one shot by |w| to a sparsity or N:M budget, then fine-tuning
    Magnitude,
    /// Weights: gradual magnitude pruning (cubic schedule) while training, then fine-tuning
    Gmp,
    /// Weights or channels: PDP's parameter-free soft masks while training, hardened, then
    /// fine-tuning (a weight budget zeroes weights, a channel budget removes channels)
    Pdp,
    /// Weights: RigL's sparse training (drop by magnitude, grow by gradient), then fine-tuning
    Rigl,
    /// Weights or channels: IEE, exploitation and exploration around a criterion, then
    /// fine-tuning (a weight budget zeroes weights, a channel budget removes channels)
    Iee,
}

/// How a budget is shared out: between channel groups (uniform, global) or, for weight
/// budgets, between layers (uniform, global, erk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AllocationFlag {
    Uniform,
    Global,
    /// Erdős–Rényi-Kernel layer densities (weight budgets only)
    Erk,
}

/// The prune's flags. Those that describe the prune are serialised into recipe fields (only
/// the ones given), over the `--recipe` file's; the library fills in the rest.
#[derive(clap::Args, Debug, Serialize)]
pub struct PruneArgs {
    /// A recipe (TOML): every flag below as a field, `_` for `-`; flags given here override it.
    #[arg(long)]
    #[serde(skip)]
    pub recipe: Option<PathBuf>,
    /// Output run folder for the pruned model.
    #[arg(long)]
    #[serde(skip)]
    pub out: PathBuf,
    /// Continue an interrupted prune in --out with the recipe saved there (DSA goes on from its
    /// last allocation epoch, fine-tuning from its last epoch).
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,

    /// The trained (dense) run to prune.
    #[arg(long, conflicts_with = "from_scratch")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<PathBuf>,
    /// DSA, GMP and PDP: learn what to keep while training a new model from random weights.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_scratch: bool,
    /// With --from-scratch: the zoo model to train.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// With --from-scratch: the data set (default: the model's usual one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetName>,
    /// How the pruned widths are found.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodName>,
    /// Resource budget: macs=0.5 (fraction of the dense model), macs=20M, params=0.3,
    /// params=100K, latency=2.5ms or latency=0.6 (with --profile) for channel methods and
    /// pdp; sparsity=0.9 (share of the pruned layers' weights that are zero) or nm=2:4 for
    /// magnitude, gmp, pdp and rigl (sparsity only).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Latency profile from `lopper profile`, for latency budgets.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<PathBuf>,
    /// Fine-tuning epochs after pruning, 0 for none [default: the model's recipe, 1 for
    /// lenet5 and mlp, 2 for the others].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune_epochs: Option<usize>,
    /// Fine-tuning learning rate (cosine schedule) [default: a tenth of the source run's
    /// training rate].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Nodes whose channels must stay, comma-separated; with a weight budget, layers whose
    /// weights stay dense (the first layer and the classifier always do).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protect: Vec<String>,
    /// Keep channel counts a multiple of this (hardware-friendly widths) [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_to: Option<usize>,
    /// Training batches to re-estimate the BatchNorm statistics on after the widths are cut
    /// (forward passes only; 0: keep the unpruned network's statistics) [default: 32].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn_batches: Option<usize>,

    /// One-shot methods: how channels are shared out between groups; magnitude and gmp: how
    /// a sparsity is shared out between layers (uniform, global or erk) [default: uniform];
    /// pdp: layers (default global) or, for a channel budget, groups (default uniform);
    /// rigl: layers (default erk); iee: layers (default erk) or, for a channel budget, the
    /// starting widths (default uniform; the halp criterion starts from its knapsack).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationFlag>,
    /// Taylor and the iterative method: batches of training data for the Taylor criterion
    /// [default: 16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taylor_batches: Option<usize>,

    /// DSA: epochs of joint weight and keep-ratio training; a fraction (0.5, 1.5) runs
    /// ceil(x) passes over a random x/ceil(x) share of the training split [default: 1.5 from
    /// a trained run, 3 from scratch].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsa_epochs: Option<f64>,
    /// DSA: weight learning rate during allocation [default: --lr from a trained run, the
    /// model's recipe rate from scratch].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsa_lr: Option<f64>,
    /// DSA: the allocation phase's weight-rate schedule from a trained run: constant (the
    /// default) or cosine (decays to 0 by its end). From scratch it is always cosine after a
    /// warm-up.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsa_schedule: Option<ScheduleKind>,
    /// DSA: one keep-ratio step every this many weight steps [default: 5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_every: Option<usize>,
    /// DSA: step size of the linearised ADMM update of the keep ratios [default: 1 with the
    /// fisher signal, whose scale is normalised; 0.05 with the sampled one].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_lr: Option<f64>,
    /// DSA: initial ADMM penalty (it grows ×1.05 per epoch). Large next to the normalised
    /// Fisher signal keeps the budget projection local [default: 10 from a trained run, 1
    /// from scratch].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// DSA: metric of the ADMM penalty and budget projection: euclidean (ALGORITHMS.md),
    /// cost-share (each group weighted by its share of the cost) or fisher (weighted by the
    /// mean squared loss gradient of its ratio) [default: cost-share from a trained run,
    /// euclidean from scratch].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admm_metric: Option<AdmmMetric>,
    /// DSA: the channel signal of the keep-ratio gradient: fisher (the expected loss
    /// increase of dropping the channel) or sampled (the straight-through gradient of one
    /// batch, ALGORITHMS.md) [default: fisher].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_signal: Option<RatioSignal>,
    /// DSA: share of the allocation phase, at its end, whose weight steps train under the
    /// masks of the widths that will be kept [default: 0.5 from a trained run, 0 from
    /// scratch].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_tail: Option<f64>,
    /// DSA: which channels a group's keep ratio keeps: gamma (the BatchNorm scales, as in the
    /// paper) or fisher (the channels whose removal the ratio steps measured to cost most)
    /// [default: gamma].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_rank: Option<ChannelRank>,
    /// DSA: share of the Fisher estimate kept from one ratio step to the next (1: the mean
    /// since the start) [default: 0.8 from a trained run, 1 from scratch].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fisher_decay: Option<f64>,
    /// DSA: share of the training data held out for the keep-ratio steps [default: 0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,

    /// GMP: epochs of the pruning phase, before fine-tuning [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gmp_epochs: Option<usize>,
    /// GMP: where in the phase (share of its steps) the sparsity starts rising [default: 0
    /// from a trained run, 0.2 from scratch].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gmp_start: Option<f64>,
    /// GMP: where in the phase the sparsity reaches the budget [default: 0.75].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gmp_end: Option<f64>,
    /// GMP: steps between mask updates [default: 50].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gmp_every: Option<usize>,
    /// GMP: weight learning rate in the phase [default: --lr, constant, from a trained run;
    /// the model's recipe rate with a warm-up and a cosine from scratch].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gmp_lr: Option<f64>,

    /// PDP: epochs of training under the soft masks, before fine-tuning [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdp_epochs: Option<usize>,
    /// PDP: where in the phase (share of its steps) the targets start rising [default: 0
    /// from a trained run, 0.16 from scratch].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdp_start: Option<f64>,
    /// PDP: where in the phase the targets reach the budget [default: 0.75].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdp_end: Option<f64>,
    /// PDP: the temperature, relative to each threshold's t² (τ = k t²) [default: 0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdp_tau: Option<f64>,
    /// PDP: --pdp-tau is an absolute τ (public ports use 1e-4 to 1e-5).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pdp_tau_absolute: bool,
    /// PDP: let gradients flow into the threshold t through its two boundary weights (or
    /// channels) [default: off, t detached].
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pdp_t_grad: bool,
    /// PDP: weight learning rate in the phase [default: as --gmp-lr].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdp_lr: Option<f64>,

    /// HALP: epochs of the pruning phase, before fine-tuning [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halp_epochs: Option<usize>,
    /// HALP: pruning steps, the targets falling geometrically to the budget [default: 10].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halp_steps: Option<usize>,
    /// HALP: where in the phase (share of its steps) the last pruning step falls [default:
    /// 0.5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halp_end: Option<f64>,
    /// HALP: channels per block; widths move by whole blocks [default: 2].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halp_block: Option<usize>,
    /// HALP: weight learning rate in the phase [default: --lr, constant].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halp_lr: Option<f64>,

    /// IEE: epochs of the phase, before fine-tuning [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iee_epochs: Option<usize>,
    /// IEE: steps training the active set before each prune [default: 50].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iee_h: Option<usize>,
    /// IEE: steps training the active set after each prune [default: 50].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iee_j: Option<usize>,
    /// IEE: steps training only the exploration set, the active set frozen [default: 50].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iee_q: Option<usize>,
    /// IEE: share of each layer's active weights (each group's active channels) swapped in
    /// the first cycle, decaying along a cosine [default: 0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iee_swap: Option<f64>,
    /// IEE: where in the phase (share of its steps) the last cycle must end [default: 0.75].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iee_end: Option<f64>,
    /// IEE: weight learning rate in the phase [default: as --gmp-lr].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iee_lr: Option<f64>,

    /// RigL: epochs of sparse training with mask updates, before fine-tuning [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rigl_epochs: Option<usize>,
    /// RigL: steps between mask updates [default: 100].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rigl_every: Option<usize>,
    /// RigL: share of each layer's active weights swapped at the first update, decaying
    /// along a cosine [default: 0.3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rigl_fraction: Option<f64>,
    /// RigL: where in the phase (share of its steps) the swaps stop [default: 0.75].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rigl_end: Option<f64>,
    /// RigL: weight learning rate in the phase [default: as --gmp-lr].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rigl_lr: Option<f64>,

    /// Iterative and IEE: importance criterion. Iterative: l1, l2, bn, taylor or random
    /// [default: taylor]. IEE on weights: l1 (also spelled magnitude: |w|) or taylor (|w dL/dw|)
    /// [default: l1]; on channels: any, halp growing by a knapsack under the budget
    /// [default: taylor].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub criterion: Option<Criterion>,
    /// Iterative: share of the remaining budget gap closed per step [default: 0.3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_share: Option<f64>,
    /// Iterative: training batches of brief fine-tuning after each step [default: 100].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_batches: Option<usize>,

    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataDirFlag,
    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitFlags,
    #[command(flatten)]
    #[serde(flatten)]
    pub seed: SeedFlag,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceFlag,
    #[command(flatten)]
    #[serde(skip)]
    pub quiet: QuietFlag,
    #[command(flatten)]
    #[serde(skip)]
    pub json: JsonFlag,
}

/// The recipe fields the flags given on this command line set.
fn given_fields(a: &PruneArgs) -> Result<toml::Table> {
    toml::Table::try_from(a).context("cannot read the flags as recipe fields")
}

/// The plan: the recipe file's fields, the flags given over them, paths made absolute.
fn plan(a: &PruneArgs) -> Result<PrunePlan> {
    let mut fields = match &a.recipe {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the recipe {}", path.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("{} is not a TOML recipe", path.display()))?
        }
        None => toml::Table::new(),
    };
    fields.extend(given_fields(a)?);
    for (field, flag) in [("method", "--method"), ("budget", "--budget")] {
        if !fields.contains_key(field) {
            bail!("give {flag} (or a --recipe that sets {field})");
        }
    }
    let from = a
        .recipe
        .as_ref()
        .map_or(String::new(), |p| format!(" (recipe {})", p.display()));
    let plan =
        PrunePlan::from_table(fields).with_context(|| format!("bad prune settings{from}"))?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(plan.absolute(&cwd))
}

pub fn run(a: PruneArgs) -> Result<()> {
    let session = if a.resume {
        let given = given_fields(&a)?;
        let changed: Vec<String> = given
            .keys()
            .filter(|k| !matches!(k.as_str(), "data_dir" | "device"))
            .map(|k| format!("--{}", k.replace('_', "-")))
            .chain(a.recipe.as_ref().map(|_| "--recipe".to_owned()))
            .collect();
        if !changed.is_empty() {
            bail!(
                "--resume continues with the recipe saved in {}: give only --out (and --data-dir, --device, --quiet, --json), not {}",
                a.out.join(RECIPE_FILE).display(),
                changed.join(", ")
            );
        }
        let mut s = PruneSession::resume(&a.out)
            .with_context(|| format!("cannot resume {}", a.out.display()))?;
        if let Some(d) = &a.data.data_dir {
            s.set_data_dir(std::path::absolute(d)?);
        }
        if let Some(d) = &a.device.device {
            s.set_device(d.clone());
        }
        s
    } else {
        PruneSession::new(plan(&a)?, &a.out)?
    };
    let mut progress = Terminal::new(a.quiet.quiet);
    let report = session.run(&mut progress)?;
    if a.json.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !a.quiet.quiet {
        print!("{}", report.markdown());
    }
    if let Some(why) = report.failure() {
        bail!(
            "{why}; the result is kept in {} with its report",
            a.out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lopper::prune::MethodPlan;
    use lopper::prune::methods::dsa::DsaPlan;

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

    fn dsa(args: &[&str]) -> Result<DsaPlan> {
        let mut p = plan(&parse(args)?)?;
        p.resolve()?;
        match p.method {
            MethodPlan::Dsa(d) => Ok(d),
            other => bail!("not DSA: {other:?}"),
        }
    }

    #[test]
    fn dsa_defaults_depend_on_the_flow() {
        let from_run = dsa(&["--run", "r"]).unwrap();
        assert_eq!(
            (
                from_run.dsa_epochs,
                from_run.dsa_schedule,
                from_run.admm_metric,
                from_run.hard_tail,
                from_run.fisher_decay,
                from_run.rho,
                from_run.dsa_lr
            ),
            (
                Some(1.5),
                Some(ScheduleKind::Constant),
                Some(AdmmMetric::CostShare),
                Some(0.5),
                Some(0.8),
                Some(10.0),
                None // follows the source, once it is read
            )
        );
        let scratch = dsa(&["--from-scratch", "--model", "mlp"]).unwrap();
        assert_eq!(
            (
                scratch.dsa_epochs,
                scratch.dsa_schedule,
                scratch.admm_metric,
                scratch.hard_tail,
                scratch.fisher_decay,
                scratch.rho,
                scratch.dsa_lr
            ),
            (
                Some(3.0),
                Some(ScheduleKind::Cosine),
                Some(AdmmMetric::Euclidean),
                Some(0.0),
                Some(1.0),
                Some(1.0),
                None
            )
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
            let s = dsa(&[flow, &given[..]].concat()).unwrap();
            assert_eq!(
                (
                    s.dsa_epochs,
                    s.admm_metric,
                    s.hard_tail,
                    s.fisher_decay,
                    s.rho
                ),
                (
                    Some(0.5),
                    Some(AdmmMetric::Fisher),
                    Some(0.25),
                    Some(0.5),
                    Some(3.0)
                )
            );
        }
        // The saved recipe spells every default out and reads back to the same plan.
        for flow in [&["--run", "r"][..], &["--from-scratch", "--model", "mlp"]] {
            let mut p = plan(&parse(flow).unwrap()).unwrap();
            p.resolve().unwrap();
            let text = p.to_toml().unwrap();
            for field in ["dsa_epochs", "rho", "admm_metric", "hard_tail", "ratio_lr"] {
                assert!(text.contains(field), "{field} missing from\n{text}");
            }
            let mut back = PrunePlan::from_table(text.parse().unwrap()).unwrap();
            back.resolve().unwrap();
            assert_eq!(back, p, "{text}");
        }
        let cosine = dsa(&["--run", "r", "--dsa-schedule", "cosine"]).unwrap();
        assert_eq!(cosine.dsa_schedule, Some(ScheduleKind::Cosine));
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
            assert!(dsa(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_of_another_method_are_refused() {
        // --step-share belongs to the iterative method: with DSA it would be ignored.
        let e = plan(&parse(&["--run", "r", "--step-share", "0.5"]).unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("step_share"), "{e:#}");
    }
}
