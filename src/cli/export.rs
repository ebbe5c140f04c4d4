//! `lopper export`: a run's model to ONNX or PyTorch-layout safetensors.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;

use lopper::export::{Format, export};
use lopper::fsutil::write_atomic;
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
    let format = a
        .format
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned());
    eprintln!(
        "wrote {} ({format}, {} bytes)",
        a.out.display(),
        bytes.len()
    );
    Ok(())
}
