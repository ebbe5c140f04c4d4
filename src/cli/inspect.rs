//! `lopper inspect`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use lopper::count::count;
use lopper::data::DatasetName;
use lopper::train::RunDir;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A zoo model name.
    #[arg(long, conflicts_with = "run")]
    pub model: Option<String>,
    /// A run folder: inspect its (possibly pruned) model.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Size the zoo model for this data set (default: mnist for mlp/lenet5, else cifar10).
    #[arg(long, conflicts_with = "input_shape")]
    pub dataset: Option<DatasetName>,
    /// Size the zoo model for this per-sample input shape, e.g. 3,32,32.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pub input_shape: Option<Vec<usize>>,
    /// Number of classes of the zoo model.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// List the zoo's models.
    #[arg(long)]
    pub list: bool,
    /// Print the counts as JSON (totals under "macs" and "params").
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    if a.list {
        for m in lopper::zoo::MODEL_NAMES {
            println!("{m}");
        }
        return Ok(());
    }
    let graph = match (&a.model, &a.run) {
        (Some(name), None) => {
            let shape = match (&a.input_shape, a.dataset) {
                (Some(s), _) => s.clone(),
                (None, Some(d)) => d.input_shape().to_vec(),
                (None, None) if matches!(name.as_str(), "mlp" | "lenet5") => {
                    DatasetName::Mnist.input_shape().to_vec()
                }
                (None, None) => DatasetName::Cifar10.input_shape().to_vec(),
            };
            lopper::zoo::build(name, &shape, a.classes)?
        }
        (None, Some(dir)) => {
            let run = RunDir::new(dir);
            lopper::model::read_architecture(&run.arch_path())
                .with_context(|| format!("cannot inspect {}", dir.display()))?
        }
        _ => bail!("give --model NAME or --run DIR (or --list)"),
    };
    let counts = count(&graph);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&counts)?);
    } else {
        println!("model {} ({} nodes)", graph.name, graph.nodes.len());
        print!("{}", counts.table());
    }
    Ok(())
}
