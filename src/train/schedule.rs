//! Learning-rate schedules, as a pure function of the position in training, so a resumed run
//! picks up exactly where it stopped.

use super::config::{ScheduleKind, TrainConfig};

/// The learning rate for step `step` (0-based, counted over the whole run) with
/// `steps_per_epoch` steps in each epoch.
pub fn learning_rate(cfg: &TrainConfig, step: usize, steps_per_epoch: usize) -> f64 {
    let spe = steps_per_epoch.max(1) as f64;
    let t = step as f64 / spe; // epochs done, fractional
    let warm = cfg.warmup_epochs;
    if warm > 0.0 && t < warm {
        return cfg.lr * (step as f64 + 1.0) / (warm * spe);
    }
    match cfg.schedule {
        ScheduleKind::Constant => cfg.lr,
        ScheduleKind::Step => {
            let k = (t / cfg.step_every.max(1) as f64).floor() as i32;
            cfg.lr * cfg.step_gamma.powi(k)
        }
        ScheduleKind::Cosine => {
            let span = (cfg.epochs as f64 - warm).max(1e-9);
            let progress = ((t - warm) / span).clamp(0.0, 1.0);
            0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}
