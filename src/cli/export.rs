//! `lopper export`: a run's model to ONNX or PyTorch-layout safetensors.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;

use lopper::export::{Format, export};
use lopper::fsutil::write_atomic;
use lopper::prune::weights::SparsityReport;
use lopper::train::RunDir;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The run folder whose model to export (from `lopper train` or `lopper prune`).
    #[arg(long)]
    pub run: PathBuf,
    /// File format.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ExportArgs) -> Result<()> {
    // Export reads weights only; the CPU device is always there.
    let device = lopper::device::device("cpu")?;
    let model = RunDir::new(&a.run)
        .load_model(&device)
        .with_context(|| format!("cannot load the model of {}", a.run.display()))?;
    let bytes =
        export(&model, a.format).with_context(|| format!("cannot export {}", a.run.display()))?;
    write_atomic(&a.out, &bytes)?;
    // A weight-pruned run's sidecar goes beside the file, counted on the exported weights.
    let record = a.run.join(lopper::prune::session::SPARSITY_FILE);
    let sidecar = if record.exists() {
        let counted = SparsityReport::read(&record)?
            .recount(&model)
            .with_context(|| format!("cannot count the zeros of {}", a.run.display()))?;
        let path = a.out.with_extension("sparsity.json");
        write_atomic(&path, &serde_json::to_vec_pretty(&counted)?)?;
        format!(
            "; {} with its sparsity ({}, {:.2}% of the pruned layers' weights zero)",
            path.display(),
            counted.pattern,
            100.0 * counted.sparsity
        )
    } else {
        String::new()
    };
    let format = a
        .format
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned());
    eprintln!(
        "wrote {} ({format}, {} bytes){sidecar}",
        a.out.display(),
        bytes.len()
    );
    Ok(())
}
