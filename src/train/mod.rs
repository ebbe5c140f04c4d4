//! Training: configuration, the loop with its hooks, schedules, optimisers, evaluation,
//! checkpoints and the run folder.

pub mod batch_norm;
pub mod config;
pub mod eval;
pub mod hooks;
pub mod loss;
pub mod optim;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod trainer;

pub use batch_norm::{has_batch_norm, recalibrate_batch_norm};
pub use config::{OptimizerKind, ScheduleKind, TrainConfig};
pub use eval::{EvalMetrics, evaluate};
pub use hooks::{
    HostState, NoTrainHook, NodeChain, OptimizerState, StepInfo, TrainHook, mask_gradients,
};
pub use progress::{Progress, ProgressHook, Silent};
pub use run::{EpochRecord, RunDir};
pub use trainer::{TrainData, TrainOutcome, Trainer};

use std::sync::Arc;

use crate::data::{Batcher, Dataset, resolve_data_dir};
use crate::error::{LopperError, Result};
use crate::graph::Graph;

/// The configured data set as read from disk, with the sample limits applied (seeded,
/// class-balanced subsets), before it is cut
/// into batchers. Reading it (decoding 60,000 images for CIFAR-10) is the expensive part, so a
/// command that needs two cuts of the same data (DSA's held-out split, then fine-tuning on the
/// whole training set) reads it once.
pub struct LoadedData {
    pub train: Dataset,
    /// Shared by every cut's test batcher as it is.
    pub test: Arc<Dataset>,
}

/// Reads the configured data set (`cfg.dataset`, `cfg.data_dir`, the sample limits).
pub fn load_data(cfg: &TrainConfig) -> Result<LoadedData> {
    let dir = resolve_data_dir(cfg.data_dir.as_deref())?;
    let (train, test) = cfg.dataset.load(&dir)?;
    let train = match cfg.train_limit {
        Some(n) => train.limit(n, cfg.seed),
        None => train,
    };
    let test = match cfg.test_limit {
        Some(n) => test.limit(n, cfg.seed),
        None => test,
    };
    Ok(LoadedData {
        train,
        test: Arc::new(test),
    })
}

/// Cuts loaded data into train / validation / test batchers by `cfg` (validation fraction,
/// seed, batch size, the data set's preprocessing).
pub fn batch_data(cfg: &TrainConfig, data: &LoadedData) -> Result<TrainData> {
    let (train, val) = data.train.split(cfg.val_fraction, cfg.seed)?;
    let pre = cfg.dataset.preprocess();
    let eval_batch = cfg.batch_size.max(256);
    let test = &data.test;
    Ok(TrainData {
        train: Batcher::new(Arc::new(train), cfg.batch_size, pre.clone(), true),
        val: (!val.is_empty()).then(|| Batcher::new(Arc::new(val), eval_batch, pre.clone(), false)),
        test: (!test.is_empty()).then(|| Batcher::new(Arc::clone(test), eval_batch, pre, false)),
    })
}

/// Loads the configured data set and cuts it into train / validation / test batchers.
pub fn prepare_data(cfg: &TrainConfig) -> Result<TrainData> {
    batch_data(cfg, &load_data(cfg)?)
}

/// Fails clearly when a model's input does not fit the data set's samples.
pub fn check_input(graph: &Graph, shape: [usize; 3], dataset: &str) -> Result<()> {
    if graph.input_shape() != shape {
        return Err(LopperError::Config(format!(
            "model '{}' takes inputs of shape {:?} but {dataset} samples are {shape:?}",
            graph.name,
            graph.input_shape()
        )));
    }
    Ok(())
}
