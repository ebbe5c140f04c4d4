//! Subcommands: `train`, `eval`, `inspect`, `profile`, `prune`, `export`.

mod common;
mod export;
mod inspect;
mod profile;
mod progress;
mod prune;
mod train;

use std::path::PathBuf;

use common::{DataDirFlag, DeviceFlag, JsonFlag, LimitFlags};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use lopper::train::{RunDir, evaluate, prepare_data};

#[derive(Parser, Debug)]
#[command(name = "lopper", version, about = "Budgeted neural-network pruning", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a zoo model on a data set into a run folder.
    Train(Box<train::TrainArgs>),
    /// Evaluate a run's model on its data set's test split.
    Eval(EvalArgs),
    /// Show a model's layers, MACs and parameters, or its channel groups.
    Inspect(inspect::InspectArgs),
    /// Measure a model's per-layer latency table for latency budgets.
    Profile(profile::ProfileArgs),
    /// Prune a trained run to a budget, fine-tune, evaluate and report.
    Prune(Box<prune::PruneArgs>),
    /// Export a run's model to ONNX or PyTorch-layout safetensors.
    Export(export::ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The run folder (written by `lopper train`).
    #[arg(long)]
    pub run: PathBuf,
    #[command(flatten)]
    pub data: DataDirFlag,
    #[command(flatten)]
    pub limits: LimitFlags,
    #[command(flatten)]
    pub device: DeviceFlag,
    /// Prints {"top1", "top5", "loss", "samples"}.
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Prune(a) => prune::run(*a),
        Command::Profile(a) => profile::run(a),
        Command::Export(a) => export::run(a),
    }
}

fn eval(a: EvalArgs) -> Result<()> {
    let run = RunDir::new(&a.run);
    let mut cfg = run
        .read_config()
        .with_context(|| format!("cannot evaluate {}", a.run.display()))?;
    cfg.data_dir =
        lopper::data::data_dir_for_run(a.data.data_dir.as_deref(), cfg.data_dir.as_deref());
    if let Some(d) = a.device.device {
        cfg.device = d;
    }
    // Evaluation reads the test split: a test limit given here replaces the run's.
    if a.limits.test_limit.is_some() {
        cfg.test_limit = a.limits.test_limit;
    }
    let device = lopper::device::device(&cfg.device)?;
    let model = run
        .load_model(&device)
        .with_context(|| format!("cannot load the model of {}", a.run.display()))?;
    // Evaluation reads the test split only; the training part is not needed.
    cfg.val_fraction = 0.0;
    let data = prepare_data(&cfg).context("cannot load the data set")?;
    lopper::train::check_input(
        &model.graph,
        data.train.dataset().shape,
        &cfg.dataset.to_string(),
    )?;
    let test = data.test.context("the test split is empty")?;
    let m = evaluate(&model, &test, &lopper::model::NoHook, &device)?;
    if let Some(w) = m.non_finite_warning(&a.run.display().to_string()) {
        eprintln!("warning: {w}");
    }
    if a.json.json {
        println!("{}", serde_json::to_string(&m)?);
    } else {
        println!(
            "{}: test top-1 {:.2}%, top-5 {:.2}%, loss {:.4} ({} samples)",
            a.run.display(),
            100.0 * m.top1,
            100.0 * m.top5,
            m.loss,
            m.samples
        );
    }
    Ok(())
}
