//! Training: configuration, the loop with its hooks, schedules, optimisers, evaluation,
//! checkpoints and the run folder.

pub mod batch_norm;
pub mod config;
pub mod eval;
pub mod loss;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod trainer;

pub use batch_norm::{has_batch_norm, recalibrate_batch_norm};
pub use config::{OptimizerKind, ScheduleKind, TrainConfig};
pub use eval::{EvalMetrics, evaluate};
pub use run::{EpochRecord, RunDir};
pub use trainer::{NoTrainHook, StepInfo, TrainData, TrainHook, TrainOutcome, Trainer};

use std::sync::Arc;

use crate::data::{Batcher, resolve_data_dir};
use crate::error::{LopperError, Result};
use crate::graph::Graph;

/// Loads the configured data set and cuts it into train / validation / test batchers.
pub fn prepare_data(cfg: &TrainConfig) -> Result<TrainData> {
    let dir = resolve_data_dir(cfg.data_dir.as_deref())?;
    let (train, test) = cfg.dataset.load(&dir)?;
    let train = match cfg.train_limit {
        Some(n) => train.take(n),
        None => train,
    };
    let test = match cfg.test_limit {
        Some(n) => test.take(n),
        None => test,
    };
    let (train, val) = train.split(cfg.val_fraction, cfg.seed)?;
    let pre = cfg.dataset.preprocess();
    let eval_batch = cfg.batch_size.max(256);
    Ok(TrainData {
        train: Batcher::new(Arc::new(train), cfg.batch_size, pre.clone(), true),
        val: (!val.is_empty()).then(|| Batcher::new(Arc::new(val), eval_batch, pre.clone(), false)),
        test: (!test.is_empty()).then(|| Batcher::new(Arc::new(test), eval_batch, pre, false)),
    })
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
