//! Flags several subcommands share, declared once and flattened into each that uses them.

use std::path::PathBuf;

use serde::Serialize;

/// Where the data sets are read from.
#[derive(clap::Args, Debug, Clone, Default, Serialize)]
pub struct DataDirFlag {
    /// Folder holding the data set files (default: the run's, then LOPPER_DATA_DIR).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// How much of the data to use.
#[derive(clap::Args, Debug, Clone, Default, Serialize)]
pub struct LimitFlags {
    /// Use a seeded, class-balanced subset of N training samples (quick trials).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// Use a seeded, class-balanced subset of N test samples (quick trials).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_limit: Option<usize>,
}

/// The seed of everything random.
#[derive(clap::Args, Debug, Clone, Default, Serialize)]
pub struct SeedFlag {
    /// Seed of initialisation, splits, data order, augmentation, masks and random scores
    /// (default: the run's; 0 for a new one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The device to compute on.
#[derive(clap::Args, Debug, Clone, Default, Serialize)]
pub struct DeviceFlag {
    /// cpu (Burn flex), cuda or wgpu when compiled in (default: the run's; cpu for a new one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Progress output.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct QuietFlag {
    /// No progress bars or progress lines (warnings and errors are still printed).
    #[arg(long)]
    pub quiet: bool,
}

/// Machine-readable output.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct JsonFlag {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
