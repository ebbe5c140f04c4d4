//! Progress reporting: the library says what it is doing through a [`Progress`] callback, and
//! the caller decides how to show it (the CLI draws bars and prints lines, a library user logs
//! or stays silent). Training phases report every step and epoch through [`ProgressHook`], one
//! more hook in the training loop's list.

use std::ops::ControlFlow;

use super::hooks::{StepInfo, TrainHook};
use super::run::EpochRecord;
use crate::error::Result;
use crate::model::Model;

/// What long work reports. Every method has a do-nothing default.
pub trait Progress {
    /// A line about what happened (a phase's result, a measurement).
    fn message(&mut self, _text: &str) {}
    /// Something to look at before trusting the result; shown even when messages are not.
    fn warning(&mut self, _text: &str) {}
    /// A training step of `phase` is done (`loss` its training loss on `samples` samples).
    fn step(&mut self, _phase: &str, _info: &StepInfo, _loss: f64, _samples: usize) {}
    /// An epoch of `phase` is done (of `epochs` in the run).
    fn epoch(&mut self, _phase: &str, _record: &EpochRecord, _epochs: usize) {}
    /// Work other than training (BatchNorm re-estimation, latency measurement, profiling):
    /// `done` of `total` units of `task` are done; `done == total` ends it.
    fn work(&mut self, _task: &str, _done: usize, _total: usize) {}
}

/// Reports nothing.
pub struct Silent;
impl Progress for Silent {}

/// Forwards a training run's steps and epochs to a [`Progress`] under a phase name.
pub struct ProgressHook<'a> {
    pub phase: &'a str,
    pub progress: &'a mut dyn Progress,
    epochs: usize,
}

impl<'a> ProgressHook<'a> {
    pub fn new(phase: &'a str, progress: &'a mut dyn Progress) -> Self {
        ProgressHook {
            phase,
            progress,
            epochs: 0,
        }
    }
}

impl TrainHook for ProgressHook<'_> {
    fn step_done(&mut self, info: &StepInfo, loss: f64, samples: usize) {
        self.epochs = info.epochs;
        self.progress.step(self.phase, info, loss, samples);
    }
    fn after_epoch(&mut self, record: &EpochRecord, _model: &Model) -> Result<ControlFlow<()>> {
        self.progress.epoch(self.phase, record, self.epochs);
        Ok(ControlFlow::Continue(()))
    }
}
