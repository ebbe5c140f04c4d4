//! The terminal's view of the library's progress: a bar per training epoch on a terminal, a
//! progress line at least every 30 seconds in a log (an epoch can take 13 minutes), a line
//! per epoch and per message, warnings always.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use lopper::train::{EpochRecord, Progress, StepInfo};

/// Progress on stderr; `quiet` keeps only the warnings.
pub struct Terminal {
    quiet: bool,
    /// Bars on a terminal; lines every [`LOG_EVERY`] otherwise.
    tty: bool,
    bar: Option<ProgressBar>,
    images: usize,
    started: Instant,
    last_line: Instant,
}

/// How often a log gets a progress line during training.
const LOG_EVERY: Duration = Duration::from_secs(30);

impl Terminal {
    pub fn new(quiet: bool) -> Terminal {
        Terminal {
            quiet,
            tty: std::io::stderr().is_terminal(),
            bar: None,
            images: 0,
            started: Instant::now(),
            last_line: Instant::now(),
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
            self.last_line = Instant::now();
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
        if !self.tty {
            if info.step_in_epoch == 0 {
                self.images = 0;
                self.started = Instant::now();
            }
            self.images += samples;
            if self.last_line.elapsed() >= LOG_EVERY {
                self.last_line = Instant::now();
                let secs = self.started.elapsed().as_secs_f64().max(1e-9);
                eprintln!(
                    "{phase}: epoch {}/{}, step {}/{}, loss {loss:.4}, {:.0} img/s",
                    info.epoch + 1,
                    info.epochs,
                    info.step_in_epoch + 1,
                    info.steps_per_epoch,
                    self.images as f64 / secs
                );
            }
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

    fn work(&mut self, task: &str, done: usize, total: usize) {
        if self.quiet {
            return;
        }
        if done >= total {
            self.clear();
            return;
        }
        if !self.tty {
            // A log gets the task's start, then a line at least every LOG_EVERY.
            if done == 0 {
                self.started = Instant::now();
                self.last_line = Instant::now();
                eprintln!("{task}: 0/{total}");
                return;
            }
            if self.last_line.elapsed() >= LOG_EVERY {
                self.last_line = Instant::now();
                eprintln!(
                    "{task}: {done}/{total}, {:.0} s so far",
                    self.started.elapsed().as_secs_f64()
                );
            }
            return;
        }
        if done == 0 || self.bar.is_none() {
            self.clear();
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} (ETA {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(task.to_owned());
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
        }
    }

    fn epoch(&mut self, phase: &str, record: &EpochRecord, epochs: usize) {
        if !self.quiet {
            self.clear();
            self.last_line = Instant::now();
            let line = record.summary(epochs);
            if phase == "training" {
                eprintln!("{line}");
            } else {
                eprintln!("{phase}: {line}");
            }
        }
    }
}
