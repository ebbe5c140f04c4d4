//! The terminal's view of the library's progress: a bar per training epoch (drawn only on a
//! terminal), a line per epoch and per message, warnings always.

use indicatif::{ProgressBar, ProgressStyle};

use lopper::train::{EpochRecord, Progress, StepInfo};

/// Progress on stderr; `quiet` keeps only the warnings.
pub struct Terminal {
    quiet: bool,
    bar: Option<ProgressBar>,
    images: usize,
    started: std::time::Instant,
}

impl Terminal {
    pub fn new(quiet: bool) -> Terminal {
        Terminal {
            quiet,
            bar: None,
            images: 0,
            started: std::time::Instant::now(),
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Terminal {
    fn message(&mut self, text: &str) {
        if !self.quiet {
            self.clear();
            eprintln!("{text}");
        }
    }

    fn warning(&mut self, text: &str) {
        self.clear();
        eprintln!("warning: {text}");
    }

    fn step(&mut self, phase: &str, info: &StepInfo, loss: f64, samples: usize) {
        if self.quiet {
            return;
        }
        if info.step_in_epoch == 0 || self.bar.is_none() {
            self.clear();
            let bar = ProgressBar::new(info.steps_per_epoch as u64);
            let style =
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("{phase}: epoch {}/{}", info.epoch + 1, info.epochs));
            bar.set_position(info.step_in_epoch as u64);
            self.bar = Some(bar);
            self.images = 0;
            self.started = std::time::Instant::now();
        }
        self.images += samples;
        if let Some(bar) = &self.bar {
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {loss:.4}  {:.0} img/s",
                self.images as f64 / secs
            ));
            bar.inc(1);
        }
    }

    fn epoch(&mut self, phase: &str, record: &EpochRecord, epochs: usize) {
        if !self.quiet {
            self.clear();
            let line = record.summary(epochs);
            if phase == "training" {
                eprintln!("{line}");
            } else {
                eprintln!("{phase}: {line}");
            }
        }
    }
}
