//! The run folder: everything a run writes, under one directory.
//!
//! ```text
//! runs/NAME/
//!   config.toml            resolved run configuration
//!   model.json             architecture (versioned JSON)
//!   model.safetensors      weights after the last completed epoch
//!   metrics.jsonl          one JSON object per epoch
//!   eval.json              final test metrics
//!   checkpoint/state.json  last completed epoch, step count and metric history
//!   checkpoint/epoch-N.safetensors, checkpoint/epoch-N.optim   weights + optimiser state
//! ```

use std::path::PathBuf;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::eval::EvalMetrics;
use crate::error::{LopperError, Result};
use crate::fsutil;
use crate::model::{self, Model};

/// What one epoch did: one line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_top1: f64,
    pub val: Option<EvalMetrics>,
    pub test: Option<EvalMetrics>,
    pub seconds: f64,
    pub images_per_sec: f64,
}

impl EpochRecord {
    /// One line for a log or a terminal: `epoch 2/5: train loss …, test top-1 …`.
    pub fn summary(&self, epochs: usize) -> String {
        let mut s = format!(
            "epoch {}/{epochs}: train loss {:.4}, train top-1 {:.2}%",
            self.epoch,
            self.train_loss,
            100.0 * self.train_top1
        );
        if let Some(v) = &self.val {
            s += &format!(", val top-1 {:.2}%", 100.0 * v.top1);
        }
        if let Some(t) = &self.test {
            s += &format!(", test top-1 {:.2}% (loss {:.4})", 100.0 * t.top1, t.loss);
        }
        s += &format!(", {:.0} img/s, {:.1}s", self.images_per_sec, self.seconds);
        s
    }
}

/// The checkpoint's index, written last so it only ever names complete files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Epochs completed (the checkpoint's files are `epoch-{epochs_done}.*`).
    pub epochs_done: usize,
    /// Optimiser steps taken so far.
    pub steps_done: usize,
    pub history: Vec<EpochRecord>,
    /// The training hook's state (DSA's keep ratios and ADMM variables, say).
    #[serde(default)]
    pub hook: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn arch_path(&self) -> PathBuf {
        self.root.join("model.json")
    }
    pub fn weights_path(&self) -> PathBuf {
        self.root.join("model.safetensors")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn eval_path(&self) -> PathBuf {
        self.root.join("eval.json")
    }
    fn checkpoint_dir(&self) -> PathBuf {
        self.root.join("checkpoint")
    }
    fn state_path(&self) -> PathBuf {
        self.checkpoint_dir().join("state.json")
    }
    fn checkpoint_weights(&self, epoch: usize) -> PathBuf {
        self.checkpoint_dir()
            .join(format!("epoch-{epoch}.safetensors"))
    }
    fn checkpoint_optim(&self, epoch: usize) -> PathBuf {
        self.checkpoint_dir().join(format!("epoch-{epoch}.optim"))
    }

    /// Whether a checkpoint (at least one completed epoch) is there to resume from.
    pub fn has_checkpoint(&self) -> bool {
        self.state_path().exists()
    }

    /// Whether the folder holds a lopper run (a model and its configuration).
    pub fn exists(&self) -> bool {
        self.arch_path().exists() && self.weights_path().exists()
    }

    pub fn write_config(&self, cfg: &TrainConfig) -> Result<()> {
        fsutil::write_atomic(&self.config_path(), cfg.to_toml().as_bytes())
    }

    pub fn read_config(&self) -> Result<TrainConfig> {
        let p = self.config_path();
        if !p.exists() {
            return Err(LopperError::bad_file(
                &p,
                "not a lopper run folder (config.toml is missing)",
            ));
        }
        TrainConfig::from_toml_file(&p)
    }

    /// Loads the run's current model on `device`.
    pub fn load_model(&self, device: &Device) -> Result<Model> {
        for p in [self.arch_path(), self.weights_path()] {
            if !p.exists() {
                return Err(LopperError::bad_file(
                    &p,
                    "not found: is this a lopper run folder?",
                ));
            }
        }
        model::load_model(&self.arch_path(), &self.weights_path(), device)
    }

    /// Writes the model (architecture + weights) and the metric history.
    pub fn write_model_and_metrics(&self, model: &Model, history: &[EpochRecord]) -> Result<()> {
        model::save_model(model, &self.arch_path(), &self.weights_path())?;
        let mut lines = String::new();
        for r in history {
            lines += &serde_json::to_string(r).map_err(|e| LopperError::Config(e.to_string()))?;
            lines.push('\n');
        }
        fsutil::write_atomic(&self.metrics_path(), lines.as_bytes())
    }

    /// Writes a checkpoint: weights and optimiser state under epoch-numbered names, then the
    /// index that points at them, then removes the previous epoch's files.
    pub fn write_checkpoint(
        &self,
        model: &Model,
        optim_bytes: &[u8],
        state: &CheckpointState,
    ) -> Result<()> {
        let e = state.epochs_done;
        fsutil::write_atomic(&self.checkpoint_weights(e), &model::weights_bytes(model)?)?;
        fsutil::write_atomic(&self.checkpoint_optim(e), optim_bytes)?;
        let json =
            serde_json::to_vec_pretty(state).map_err(|err| LopperError::Config(err.to_string()))?;
        fsutil::write_atomic(&self.state_path(), &json)?;
        if let Ok(entries) = std::fs::read_dir(self.checkpoint_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let keep = format!("epoch-{e}.");
                if name.starts_with("epoch-") && !name.starts_with(&keep) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// The last checkpoint: its index, model (graph from `model.json`) and optimiser bytes.
    pub fn read_checkpoint(&self, device: &Device) -> Result<(CheckpointState, Model, Vec<u8>)> {
        let sp = self.state_path();
        if !sp.exists() {
            return Err(LopperError::bad_file(
                &sp,
                "no checkpoint to resume from (the run has not completed an epoch)",
            ));
        }
        let state: CheckpointState = serde_json::from_slice(&fsutil::read(&sp)?)
            .map_err(|e| LopperError::bad_file(&sp, format!("invalid checkpoint index: {e}")))?;
        let graph = model::read_architecture(&self.arch_path())?;
        let m = model::load_weights(graph, &self.checkpoint_weights(state.epochs_done), device)?;
        let optim = fsutil::read(&self.checkpoint_optim(state.epochs_done))?;
        Ok((state, m, optim))
    }
}
