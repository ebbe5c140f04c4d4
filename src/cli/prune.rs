//! `lopper prune`: a trained run and a budget in, a smaller fine-tuned run and a report out.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;

use lopper::count::count;
use lopper::fsutil::write_atomic;
use lopper::model::NoHook;
use lopper::prune::latency::{LatencyProfile, model_latency_ms};
use lopper::prune::report::{BeforeAfter, GroupReport, PruneReport};
use lopper::prune::{
    Allocation, Budget, Criterion, Metric, allocate, channel_groups, channel_scores, keep_ratios,
    prune_model,
};
use lopper::train::{NoTrainHook, RunDir, ScheduleKind, Trainer, evaluate, prepare_data};

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The trained (dense) run to prune.
    #[arg(long)]
    pub run: PathBuf,
    /// Channel importance criterion.
    #[arg(long, value_enum)]
    pub method: Criterion,
    /// How channels are shared out between groups.
    #[arg(long, value_enum, default_value = "uniform")]
    pub allocation: Allocation,
    /// Resource budget: macs=0.5 (fraction of the dense model), macs=20M, params=0.3,
    /// params=100K, latency=2.5ms or latency=0.6 (with --profile).
    #[arg(long)]
    pub budget: Budget,
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
    /// Batches of training data for the Taylor criterion.
    #[arg(long, default_value_t = 16)]
    pub taylor_batches: usize,
    /// Print the report's JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: PruneArgs) -> Result<()> {
    let started = Instant::now();
    let src = RunDir::new(&a.run);
    let out = RunDir::new(&a.out);
    if out.config_path().exists() {
        bail!(
            "{} already holds a run; choose another --out",
            a.out.display()
        );
    }
    let mut cfg = src
        .read_config()
        .with_context(|| format!("cannot prune {}", a.run.display()))?;
    if let Some(d) = &a.data_dir {
        cfg.data_dir = Some(d.clone());
    }
    let device = lopper::device::device(&cfg.device)?;
    let dense = src
        .load_model(&device)
        .with_context(|| format!("cannot load the model of {}", a.run.display()))?;
    let data = prepare_data(&cfg).context("cannot load the data set")?;
    let test = data.test.as_ref().context("the test split is empty")?;
    let say = |m: String| {
        if !a.quiet {
            eprintln!("{m}");
        }
    };

    let top1_dense = evaluate(&dense, test, &NoHook, &device)?.top1;
    say(format!(
        "dense model: test top-1 {:.2}%",
        100.0 * top1_dense
    ));
    let groups = channel_groups(&dense.graph, &a.protect)?;
    let scores = channel_scores(
        a.method,
        &dense,
        &groups,
        Some((&data.train, a.taylor_batches)),
        &device,
        cfg.seed,
    )?;
    let profile = match &a.profile {
        Some(p) => Some(LatencyProfile::load(p)?),
        None => None,
    };
    let cost_model = a
        .budget
        .cost_model(&dense.graph, &groups, profile.as_ref())?;
    let selection = allocate(
        &groups,
        &scores,
        &a.budget,
        cost_model.as_ref(),
        a.allocation,
        a.round_to,
    )?;
    let pruned = prune_model(&dense, &groups, &selection, &device)?;
    let (before, after) = (count(&dense.graph), count(&pruned.graph));
    let limit = a.budget.limit(cost_model.dense_cost());
    // MACs and parameters are counted on the pruned graph; latency is the profile's prediction.
    let cost = match a.budget.resource {
        Metric::Macs => after.macs as f64,
        Metric::Params => after.params as f64,
        Metric::Latency => cost_model.cost(&keep_ratios(&groups, &selection)),
    };
    let top1_pruned = evaluate(&pruned, test, &NoHook, &device)?.top1;
    say(format!(
        "pruned to {} MACs, {} parameters: test top-1 {:.2}% before fine-tuning",
        lopper::count::human(after.macs),
        lopper::count::human(after.params),
        100.0 * top1_pruned
    ));

    let mut ft_cfg = cfg.clone();
    ft_cfg.epochs = a.finetune_epochs.max(1);
    ft_cfg.lr = a.lr;
    ft_cfg.schedule = ScheduleKind::Cosine;
    ft_cfg.warmup_epochs = 0.0;
    let (final_model, finetuned) = if a.finetune_epochs > 0 {
        let mut trainer = Trainer::new(ft_cfg, Some(out.clone()))?;
        trainer.progress = !a.quiet;
        let outcome = trainer.fit(pruned, &data, &mut NoTrainHook)?;
        let t = outcome.history.last().and_then(|r| r.test);
        (outcome.model, t)
    } else {
        out.write_config(&ft_cfg)?;
        out.write_model_and_metrics(&pruned, &[])?;
        (pruned, None)
    };

    // Latency is measured in inference mode, off the autodiff device.
    let final_model = final_model.valid();
    let latency = |batch: usize| BeforeAfter {
        before: model_latency_ms(&dense, batch, 10, &device),
        after: model_latency_ms(&final_model, batch, 10, &device),
    };
    let report = PruneReport {
        model: dense.graph.name.clone(),
        method: format!("{:?}", a.method).to_lowercase(),
        allocation: format!("{:?}", a.allocation).to_lowercase(),
        budget: a.budget.to_string(),
        budget_limit: limit,
        budget_cost: cost,
        budget_met: cost <= limit,
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
        latency_ms_batch1: latency(1),
        latency_ms_batch64: latency(64),
        groups: groups
            .iter()
            .filter(|g| g.is_prunable())
            .map(|g| GroupReport {
                id: g.id,
                producers: g.label(&dense.graph),
                before: g.channels,
                after: selection.kept(&groups, g.id).len(),
            })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
    };
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
        bail!("internal error: the pruned model misses the budget ({cost} > {limit})");
    }
    Ok(())
}
