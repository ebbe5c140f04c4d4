//! `lopper profile`: the per-layer latency table latency budgets are measured with.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use lopper::data::DatasetName;
use lopper::prune::latency::profile;
use lopper::train::{Progress, RunDir};

use super::common::{DeviceFlag, QuietFlag};
use super::progress::Terminal;

#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    /// A zoo model name.
    #[arg(long, conflicts_with = "run")]
    pub model: Option<String>,
    /// A run folder: profile its model.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Size the zoo model for this data set (default: mnist for mlp/lenet5, else cifar10).
    #[arg(long)]
    pub dataset: Option<DatasetName>,
    /// Where to write the profile (JSON).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceFlag,
    /// Batch size the latency is measured at.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed repetitions per node measurement, in three blocks (the smallest block median is
    /// kept).
    #[arg(long, default_value_t = 9)]
    pub reps: usize,
    #[command(flatten)]
    pub quiet: QuietFlag,
}

pub fn run(a: ProfileArgs) -> Result<()> {
    let graph = match (&a.model, &a.run) {
        (Some(name), None) => {
            let d = a
                .dataset
                .unwrap_or_else(|| DatasetName::default_for_model(name));
            lopper::zoo::build(name, &d.input_shape(), d.num_classes())?
        }
        (None, Some(dir)) => lopper::model::read_architecture(&RunDir::new(dir).arch_path())
            .with_context(|| format!("cannot profile {}", dir.display()))?,
        _ => bail!("give --model NAME or --run DIR"),
    };
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    // Measuring takes a while: find out first that the result can be written.
    if a.out.is_dir() {
        bail!(
            "{} is a folder; --out takes the profile's file name",
            a.out.display()
        );
    }
    let existed = a.out.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&a.out)
        .with_context(|| format!("cannot write the profile to {}", a.out.display()))?;
    if !existed {
        let _ = std::fs::remove_file(&a.out);
    }
    // A zoo model has no run to take a device from: the CPU unless told otherwise.
    let device_name = a.device.device.clone().unwrap_or_else(|| "cpu".into());
    let device = lopper::device::device(&device_name)?;
    let mut progress = Terminal::new(a.quiet.quiet);
    let task = format!("profiling {}'s nodes", graph.name);
    let p = profile(&graph, &device, &device_name, a.batch, a.reps, |i, n| {
        progress.work(&task, i, n)
    })?;
    progress.work(&task, 1, 1);
    p.save(&a.out)?;
    if !a.quiet.quiet {
        eprintln!(
            "profiled {} nodes of {} at batch {} on {}: dense latency {:.3} ms{}; wrote {}",
            p.nodes.len(),
            p.model,
            p.batch,
            p.device,
            p.dense_ms,
            p.floor_ms
                .map(|f| format!(", {f:.3} ms with every prunable group at 1/8 of its channels"))
                .unwrap_or_default(),
            a.out.display()
        );
    }
    Ok(())
}
