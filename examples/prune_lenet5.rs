//! Prune a zoo model through the library alone: train LeNet-5 on MNIST for one epoch, prune it
//! to half its MACs by Taylor importance with global allocation, fine-tune, and print the
//! report. Progress goes to a small logger of our own.
//!
//!   LOPPER_DATA_DIR=../shared/data cargo run --release --example prune_lenet5 -- /tmp/lenet5-example
//!
//! The argument is a folder to write into (it must not hold a run yet).

use std::path::PathBuf;

use lopper::data::DatasetName;
use lopper::model::Model;
use lopper::prune::methods::one_shot::OneShotPlan;
use lopper::prune::{Allocation, MethodPlan, PrunePlan, PruneSession};
use lopper::train::{
    EpochRecord, Progress, ProgressHook, RunDir, StepInfo, TrainConfig, Trainer, prepare_data,
};

/// Prints messages, warnings and one line per epoch (no bars).
struct Log;

impl Progress for Log {
    fn message(&mut self, text: &str) {
        println!("{text}");
    }
    fn warning(&mut self, text: &str) {
        println!("warning: {text}");
    }
    fn step(&mut self, phase: &str, info: &StepInfo, loss: f64, _samples: usize) {
        if info.step_in_epoch.is_multiple_of(200) {
            println!(
                "{phase}: step {}/{} loss {loss:.3}",
                info.global_step + 1,
                info.total_steps()
            );
        }
    }
    fn epoch(&mut self, phase: &str, record: &EpochRecord, epochs: usize) {
        println!("{phase}: {}", record.summary(epochs));
    }
}

fn main() -> lopper::Result<()> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "runs/prune-example".into()),
    );
    // 1. A dense model to prune: LeNet-5, one epoch on MNIST (the README's recipe).
    let dense_run = RunDir::new(root.join("dense"));
    let cfg = TrainConfig {
        model: "lenet5".into(),
        dataset: DatasetName::Mnist,
        epochs: 1,
        batch_size: 64,
        lr: 0.05,
        data_dir: std::env::var_os("LOPPER_DATA_DIR").map(PathBuf::from),
        ..TrainConfig::default()
    };
    let data = prepare_data(&cfg)?;
    let trainer = Trainer::new(cfg.clone(), Some(dense_run.clone()))?;
    let graph = lopper::zoo::build("lenet5", &DatasetName::Mnist.input_shape(), 10)?;
    let model = Model::init(graph, cfg.seed, &trainer.device)?;
    let mut log = Log;
    trainer.fit(
        model,
        &data,
        &mut [&mut ProgressHook::new("training", &mut log)],
    )?;

    // 2. The prune: a plan (what the recipe file holds), a session, a report.
    let mut plan = PrunePlan::new(
        &dense_run.root,
        MethodPlan::Taylor(OneShotPlan {
            allocation: Allocation::Global,
            ..OneShotPlan::default()
        }),
        "macs=0.5",
    );
    plan.finetune_epochs = Some(1);
    println!("recipe:\n{}", plan.to_toml()?);
    let report = PruneSession::new(plan, root.join("pruned"))?.run(&mut log)?;
    print!("{}", report.markdown());
    Ok(())
}
