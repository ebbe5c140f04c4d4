//! `lopper train`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use lopper::data::DatasetName;
use lopper::model::Model;
use lopper::train::{
    OptimizerKind, ProgressHook, RunDir, ScheduleKind, TrainConfig, Trainer, check_input,
    prepare_data,
};

use super::common::{DataDirFlag, DeviceFlag, JsonFlag, LimitFlags, QuietFlag, SeedFlag};
use super::progress::Terminal;

#[derive(clap::Args, Debug, Default)]
pub struct TrainArgs {
    /// Run configuration in TOML (the fields below); flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run folder to write (config, model, metrics, checkpoints).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Zoo model: mlp, lenet5, vgg11, vgg16, resnet20, resnet32, resnet56, mobilenet_v1, mobilenet_v2.
    #[arg(long)]
    pub model: Option<String>,
    /// Data set: mnist or cifar10.
    #[arg(long)]
    pub dataset: Option<DatasetName>,
    #[command(flatten)]
    pub data: DataDirFlag,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Base learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Linear warm-up length in epochs.
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Step schedule: decay every N epochs.
    #[arg(long)]
    pub step_every: Option<usize>,
    /// Step schedule: decay factor.
    #[arg(long)]
    pub step_gamma: Option<f64>,
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Share of the training data held out for validation.
    #[arg(long)]
    pub val_fraction: Option<f64>,
    #[command(flatten)]
    pub seed: SeedFlag,
    #[command(flatten)]
    pub device: DeviceFlag,
    #[command(flatten)]
    pub limits: LimitFlags,
    #[command(flatten)]
    pub quiet: QuietFlag,
    #[command(flatten)]
    pub json: JsonFlag,
}

impl TrainArgs {
    /// Applies the flags that were given on top of `cfg`.
    fn apply(&self, cfg: &mut TrainConfig) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { cfg.$f = v.clone().into(); } )* };
        }
        set!(
            model,
            dataset,
            epochs,
            batch_size,
            optimizer,
            lr,
            momentum,
            weight_decay,
            schedule,
            warmup_epochs,
            step_every,
            step_gamma,
            label_smoothing,
            val_fraction
        );
        if let Some(s) = self.seed.seed {
            cfg.seed = s;
        }
        if let Some(d) = &self.device.device {
            cfg.device = d.clone();
        }
        if self.data.data_dir.is_some() {
            cfg.data_dir = self.data.data_dir.clone();
        }
        if self.limits.train_limit.is_some() {
            cfg.train_limit = self.limits.train_limit;
        }
        if self.limits.test_limit.is_some() {
            cfg.test_limit = self.limits.test_limit;
        }
        if self.nesterov {
            cfg.nesterov = true;
        }
    }

    /// Flags that would change a run's recipe, which `--resume` must not accept.
    fn recipe_flags(&self) -> Vec<&'static str> {
        let mut v = vec![];
        macro_rules! check {
            ($($f:ident => $name:literal),*) => { $( if self.$f.is_some() { v.push($name); } )* };
        }
        check!(config => "--config", model => "--model", dataset => "--dataset",
               epochs => "--epochs", batch_size => "--batch-size", optimizer => "--optimizer",
               lr => "--lr", momentum => "--momentum", weight_decay => "--weight-decay",
               schedule => "--schedule", warmup_epochs => "--warmup-epochs",
               step_every => "--step-every", step_gamma => "--step-gamma",
               label_smoothing => "--label-smoothing", val_fraction => "--val-fraction");
        for (given, name) in [
            (self.seed.seed.is_some(), "--seed"),
            (self.limits.train_limit.is_some(), "--train-limit"),
            (self.limits.test_limit.is_some(), "--test-limit"),
        ] {
            if given {
                v.push(name);
            }
        }
        if self.nesterov {
            v.push("--nesterov");
        }
        v
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let run = RunDir::new(&a.out);
    lopper::fsutil::check_run_folder(&a.out, &["config.toml"])?;
    // Held until training ends: a second process on the same folder is refused.
    let _lock = lopper::fsutil::FolderLock::acquire(&a.out)?;
    let cfg = if a.resume {
        let flags = a.recipe_flags();
        if !flags.is_empty() {
            bail!(
                "{} cannot be changed when resuming: the run continues with the configuration in {}",
                flags.join(", "),
                run.config_path().display()
            );
        }
        let mut cfg = run
            .read_config()
            .with_context(|| format!("cannot resume {}", a.out.display()))?;
        cfg.data_dir =
            lopper::data::data_dir_for_run(a.data.data_dir.as_deref(), cfg.data_dir.as_deref());
        if let Some(d) = &a.device.device {
            cfg.device = d.clone();
        }
        cfg
    } else {
        if run.config_path().exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it, or choose another --out",
                a.out.display()
            );
        }
        let (mut cfg, in_file) = match &a.config {
            Some(p) => TrainConfig::from_toml_file_with_fields(p)?,
            None => (TrainConfig::default(), vec![]),
        };
        if a.config.is_none() && (a.model.is_none() || a.dataset.is_none()) {
            bail!("give --model and --dataset (or a --config file that sets them)");
        }
        a.apply(&mut cfg);
        // What neither the file nor a flag set comes from the model's own recipe.
        let recipe = lopper::zoo::recipe(&cfg.model);
        if a.lr.is_none() && !in_file.iter().any(|k| k == "lr") {
            cfg.lr = recipe.lr;
        }
        if a.batch_size.is_none() && !in_file.iter().any(|k| k == "batch_size") {
            cfg.batch_size = recipe.batch_size;
        }
        if cfg.data_dir.is_none() {
            cfg.data_dir = lopper::data::env_data_dir();
        }
        // Stored absolute, so the run reads the same folder from any directory.
        if let Some(d) = &cfg.data_dir {
            cfg.data_dir = Some(
                std::path::absolute(d)
                    .with_context(|| format!("cannot resolve {}", d.display()))?,
            );
        }
        cfg
    };
    cfg.validate()?;
    let data = prepare_data(&cfg).context("cannot load the data set")?;
    let shape = data.train.dataset().shape;
    let trainer = Trainer::new(cfg.clone(), Some(run.clone()))?;
    let mut terminal = Terminal::new(a.quiet.quiet);
    let mut shown = ProgressHook::new("training", &mut terminal);
    // A run killed before its first epoch finished has its configuration but no checkpoint:
    // resuming it starts it over.
    let restart = a.resume && !run.has_checkpoint();
    if restart {
        shown
            .progress
            .message("no epoch had finished: training starts over with the saved configuration");
    }
    let outcome = if a.resume && !restart {
        trainer.resume(&data, &mut [&mut shown])?
    } else {
        let graph = lopper::zoo::build(&cfg.model, &shape, cfg.dataset.num_classes())?;
        check_input(&graph, shape, &cfg.dataset.to_string())?;
        let model = Model::init(graph, cfg.seed, &trainer.device)?;
        trainer.fit(model, &data, &mut [&mut shown])?
    };
    if let Some(t) = outcome.history.last().and_then(|last| last.test) {
        lopper::fsutil::write_atomic(
            &run.eval_path(),
            serde_json::to_string_pretty(&t)?.as_bytes(),
        )?;
        if let Some(w) = t.non_finite_warning("the trained model") {
            eprintln!("warning: {w}");
        }
        if a.json.json {
            println!("{}", serde_json::to_string(&t)?);
        }
        if !a.quiet.quiet {
            eprintln!(
                "done: test top-1 {:.2}%, model in {}",
                100.0 * t.top1,
                a.out.display()
            );
        }
    }
    Ok(())
}
