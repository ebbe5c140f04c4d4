//! The run configuration: every field of `lopper train`, also readable from a TOML file.
//! The resolved configuration is written to the run folder, so a run can be resumed,
//! evaluated and reproduced from the folder alone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DatasetName;
use crate::error::{LopperError, Result};
use crate::fsutil;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// The base learning rate throughout.
    Constant,
    /// Multiply by `step_gamma` every `step_every` epochs.
    Step,
    /// Cosine decay to zero over the epochs after warm-up.
    Cosine,
}

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A zoo model name (see `lopper inspect --list`).
    pub model: String,
    pub dataset: DatasetName,
    /// Where the data set files are; `LOPPER_DATA_DIR` when absent.
    pub data_dir: Option<PathBuf>,
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub schedule: ScheduleKind,
    /// Linear warm-up from 0 to `lr` over this many epochs (may be fractional).
    pub warmup_epochs: f64,
    pub step_every: usize,
    pub step_gamma: f64,
    pub label_smoothing: f64,
    /// Share of the training data held out for validation (seeded split).
    pub val_fraction: f64,
    pub seed: u64,
    /// `cpu` (Burn flex), `cuda` or `wgpu` when compiled in.
    pub device: String,
    /// Use a seeded, class-balanced subset of N training samples (before the split); for
    /// quick runs and tests.
    pub train_limit: Option<usize>,
    /// Use a seeded, class-balanced subset of N test samples.
    pub test_limit: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "resnet20".into(),
            dataset: DatasetName::Cifar10,
            data_dir: None,
            epochs: 10,
            batch_size: 128,
            optimizer: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            schedule: ScheduleKind::Cosine,
            warmup_epochs: 0.0,
            step_every: 30,
            step_gamma: 0.1,
            label_smoothing: 0.0,
            val_fraction: 0.0,
            seed: 0,
            device: "cpu".into(),
            train_limit: None,
            test_limit: None,
        }
    }
}

impl TrainConfig {
    /// Checks values a user can get wrong, with a message saying which and why.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LopperError::Config(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if self.nesterov && self.momentum == 0.0 {
            return bad("nesterov needs a momentum above 0".into());
        }
        if self.nesterov && self.optimizer != OptimizerKind::Sgd {
            return bad("nesterov applies to the sgd optimizer only".into());
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!(
                "val_fraction must be in [0, 1), got {}",
                self.val_fraction
            ));
        }
        if !(self.warmup_epochs >= 0.0 && self.warmup_epochs < self.epochs as f64) {
            return bad(format!(
                "warmup_epochs must be in [0, epochs), got {} with {} epochs",
                self.warmup_epochs, self.epochs
            ));
        }
        if self.schedule == ScheduleKind::Step && self.step_every == 0 {
            return bad("step_every must be at least 1 with the step schedule".into());
        }
        if !crate::zoo::MODEL_NAMES.contains(&self.model.as_str()) {
            return Err(LopperError::Unknown {
                kind: "model",
                name: self.model.clone(),
                known: crate::zoo::MODEL_NAMES.join(", "),
            });
        }
        crate::device::device(&self.device)?;
        Ok(())
    }

    /// Reads a TOML run configuration.
    pub fn from_toml_file(path: &Path) -> Result<TrainConfig> {
        Self::from_toml_file_with_fields(path).map(|(cfg, _)| cfg)
    }

    /// Reads a TOML run configuration, with the names of the fields the file sets (the others
    /// take defaults, which may then depend on the model).
    pub fn from_toml_file_with_fields(path: &Path) -> Result<(TrainConfig, Vec<String>)> {
        let text = String::from_utf8(fsutil::read(path)?)
            .map_err(|_| LopperError::bad_file(path, "expected a UTF-8 TOML file"))?;
        let invalid = |e: toml::de::Error| {
            LopperError::bad_file(path, format!("invalid run configuration: {}", e.message()))
        };
        let table: toml::Table = text.parse().map_err(invalid)?;
        let fields = table.keys().cloned().collect();
        Ok((toml::from_str(&text).map_err(invalid)?, fields))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}
