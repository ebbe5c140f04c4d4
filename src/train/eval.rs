//! Evaluation: top-1, top-5 and mean cross-entropy over a data set, computed from the logits.

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::Batcher;
use crate::error::{LopperError, Result};
use crate::model::{Model, NodeHook, Value};

/// Metrics of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub top1: f64,
    pub top5: f64,
    /// Mean cross-entropy; NaN (`null` in JSON) when some outputs were not finite.
    pub loss: f64,
    pub samples: usize,
    /// Samples whose outputs held a NaN or an infinity: never counted as correct.
    #[serde(default)]
    pub non_finite: usize,
}

impl EvalMetrics {
    /// A warning when some outputs were not finite, for every place that shows metrics.
    pub fn non_finite_warning(&self, what: &str) -> Option<String> {
        (self.non_finite > 0).then(|| {
            format!(
                "{what}: {} of {} samples gave non-finite outputs (NaN or infinity); they count as wrong, and the loss is undefined",
                self.non_finite, self.samples
            )
        })
    }
}

/// Running sums of loss and hits over batches of logits.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    loss_sum: f64,
    top1: usize,
    top5: usize,
    n: usize,
    non_finite: usize,
}

impl Tally {
    /// Adds a batch: `logits` row-major `[labels.len(), classes]`.
    pub fn add(&mut self, logits: &[f32], labels: &[u8]) {
        let classes = logits.len() / labels.len().max(1);
        for (row, &y) in logits.chunks_exact(classes).zip(labels) {
            let y = y as usize;
            // A NaN compares false with everything, so it would "beat" no logit and rank the
            // true class first: a model of NaNs would score 100%. Non-finite rows are wrong.
            if row.iter().any(|z| !z.is_finite()) {
                self.non_finite += 1;
                self.loss_sum = f64::NAN;
                self.n += 1;
                continue;
            }
            // A label the model has no output for is wrong (data sets are checked against the
            // model's classes when loaded; this only keeps a bad one from panicking).
            if y >= row.len() {
                self.loss_sum = f64::NAN;
                self.n += 1;
                continue;
            }
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&z| (z as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            self.loss_sum += lse - row[y] as f64;
            // Rank of the true class: how many logits beat it (ties count against it).
            let better = row
                .iter()
                .enumerate()
                .filter(|&(j, &z)| j != y && (z > row[y] || (z == row[y] && j < y)))
                .count();
            self.top1 += (better == 0) as usize;
            self.top5 += (better < 5) as usize;
            self.n += 1;
        }
    }

    /// Fraction of samples whose true class has the highest logit, so far.
    pub fn top1(&self) -> f64 {
        self.top1 as f64 / self.n.max(1) as f64
    }

    pub fn finish(&self) -> EvalMetrics {
        let n = self.n.max(1) as f64;
        EvalMetrics {
            top1: self.top1 as f64 / n,
            top5: self.top5 as f64 / n,
            loss: self.loss_sum / n,
            samples: self.n,
            non_finite: self.non_finite,
        }
    }
}

/// Evaluates `model` (switched to inference mode) on every batch of `batcher`, on the plain
/// (non-autodiff) `device`.
pub fn evaluate(
    model: &Model,
    batcher: &Batcher,
    hook: &dyn NodeHook,
    device: &Device,
) -> Result<EvalMetrics> {
    let model = model.valid();
    let mut tally = Tally::default();
    for batch in batcher.epoch(0, 0, 0) {
        let (x, _) = batch.to_tensors(device);
        let out = model.forward_hooked(Value::Spatial(x), false, hook)?;
        let Value::Flat(logits) = out else {
            return Err(LopperError::Graph(
                "the model's output is not [N, classes]".into(),
            ));
        };
        let values = logits
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| LopperError::Graph(format!("{e:?}")))?;
        tally.add(&values, &batch.labels);
    }
    Ok(tally.finish())
}
