//! The training loop: learning on real data, resume equivalence, divergence handling, hooks,
//! schedules and the loss.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use lopper::data::{Batcher, DatasetName};
use lopper::model::{Layer, Model};
use lopper::train::schedule::learning_rate;
use lopper::train::{
    EpochRecord, LoadedData, OptimizerState, RunDir, ScheduleKind, StepInfo, TrainConfig,
    TrainData, TrainHook, Trainer, batch_data, prepare_data,
};

mod common;
use common::synthetic_mnist;

fn synthetic_data(batch: usize) -> TrainData {
    let pre = DatasetName::Mnist.preprocess();
    TrainData {
        train: Batcher::new(Arc::new(synthetic_mnist(96, 1)), batch, pre.clone(), true),
        val: None,
        test: Some(Batcher::new(
            Arc::new(synthetic_mnist(64, 2)),
            64,
            pre,
            false,
        )),
    }
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        model: "lenet5".into(),
        dataset: DatasetName::Mnist,
        epochs,
        batch_size: 16,
        lr: 0.05,
        schedule: ScheduleKind::Cosine,
        warmup_epochs: 0.5,
        seed: 11,
        ..TrainConfig::default()
    }
}

fn lenet(seed: u64) -> Model {
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    Model::init(g, seed, &Device::flex()).unwrap()
}

fn weights(m: &Model) -> Vec<(String, Vec<f32>)> {
    m.named_tensors()
        .into_iter()
        .map(|(n, d)| (n, d.try_to_vec::<f32>().unwrap()))
        .collect()
}

/// Stops training after `n` epochs, as a kill would, and counts the calls it sees.
struct StopAfter {
    n: usize,
    steps: usize,
}
impl TrainHook for StopAfter {
    fn before_step(&mut self, _: &StepInfo, _: &Model) -> lopper::Result<()> {
        self.steps += 1;
        Ok(())
    }
    fn after_epoch(&mut self, r: &EpochRecord, _: &Model) -> lopper::Result<ControlFlow<()>> {
        Ok(if r.epoch >= self.n {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}

#[test]
fn resume_reaches_the_same_weights() {
    let data = synthetic_data(16);
    let full_dir = tempfile::tempdir().unwrap();
    let t = Trainer::new(config(3), Some(RunDir::new(full_dir.path()))).unwrap();
    let full = t.fit(lenet(4), &data, &mut []).unwrap();
    assert_eq!(full.history.len(), 3);

    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let t = Trainer::new(config(3), Some(run.clone())).unwrap();
    let mut stop = StopAfter { n: 1, steps: 0 };
    let part = t.fit(lenet(4), &data, &mut [&mut stop]).unwrap();
    assert!(part.stopped_early);
    assert_eq!(
        stop.steps, 6,
        "96 samples in batches of 16 is 6 steps per epoch"
    );
    // A fresh trainer, as after a restart of the process.
    let t = Trainer::new(run.read_config().unwrap(), Some(run.clone())).unwrap();
    let resumed = t.resume(&data, &mut []).unwrap();
    assert_eq!(resumed.history.len(), 3);
    for (a, b) in full.history.iter().zip(&resumed.history) {
        assert_eq!(
            (a.epoch, a.lr, a.train_loss, a.train_top1, a.test),
            (b.epoch, b.lr, b.train_loss, b.train_top1, b.test)
        );
    }
    let (a, b) = (weights(&full.model), weights(&resumed.model));
    for ((na, va), (_, vb)) in a.iter().zip(&b) {
        let max = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max <= 1e-6, "{na} differs after resume by {max}");
    }
    // The run folder's model is the final one and loads back.
    let loaded = run.load_model(&Device::flex()).unwrap();
    assert_eq!(weights(&loaded).len(), b.len());
}

/// Poisons a weight after a given step, to check the divergence guard.
struct Poison {
    at_step: usize,
}
impl TrainHook for Poison {
    fn after_step(
        &mut self,
        info: &StepInfo,
        model: Model,
        _: &mut OptimizerState,
    ) -> lopper::Result<Model> {
        if info.global_step != self.at_step {
            return Ok(model);
        }
        let tensors = model.named_tensors();
        Model::from_tensors(
            model.graph.clone(),
            &Device::flex().autodiff(),
            |node, name, _| {
                let full = format!("{}.{name}", node.name);
                let mut d = tensors.iter().find(|(n, _)| *n == full).unwrap().1.clone();
                if full == "fc3.bias" {
                    d = TensorData::new(vec![f32::NAN; 10], [10]);
                }
                Ok(d)
            },
        )
    }
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_checkpoint() {
    let data = synthetic_data(16);
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let t = Trainer::new(config(3), Some(run.clone())).unwrap();
    // Step 8 is in the second epoch (6 steps per epoch): epoch 1's checkpoint exists.
    let err = t
        .fit(lenet(0), &data, &mut [&mut Poison { at_step: 8 }])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("diverged") && err.contains("NaN") && err.contains("epoch 2"),
        "{err}"
    );
    assert!(err.contains("last good checkpoint (epoch 1)"), "{err}");
    let (state, _, _) = run.read_checkpoint(&Device::flex()).unwrap();
    assert_eq!(state.epochs_done, 1);
}

/// Holds conv1's first filter at zero after every step: a hard mask applied through the hook.
struct ZeroFilter;
impl TrainHook for ZeroFilter {
    fn after_step(
        &mut self,
        _: &StepInfo,
        mut model: Model,
        _: &mut OptimizerState,
    ) -> lopper::Result<Model> {
        if let Some(Some(Layer::Conv(c))) = model.layers.get_mut(1) {
            let w = c.weight.val();
            let o = w.dims()[0];
            let mut mask = vec![1f32; o];
            mask[0] = 0.0;
            let m = Tensor::<1>::from_data(TensorData::new(mask, [o]), &w.device());
            let w = (w * m.reshape([o, 1, 1, 1])).detach().require_grad();
            c.weight = burn::module::Param::initialized(c.weight.id, w);
        }
        Ok(model)
    }
}

#[test]
fn hooks_can_rewrite_the_model_every_step() {
    let data = synthetic_data(16);
    let t = Trainer::new(config(1), None).unwrap();
    let out = t.fit(lenet(0), &data, &mut [&mut ZeroFilter]).unwrap();
    let w = weights(&out.model)
        .into_iter()
        .find(|(n, _)| n == "conv1.weight")
        .unwrap()
        .1;
    assert!(w[..25].iter().all(|v| *v == 0.0));
    assert!(w[25..50].iter().any(|v| *v != 0.0));
}

#[test]
fn synthetic_task_is_learned() {
    let data = synthetic_data(16);
    let t = Trainer::new(config(10), None).unwrap();
    let out = t.fit(lenet(1), &data, &mut []).unwrap();
    let (first, last) = (&out.history[0], out.history.last().unwrap());
    assert!(
        last.train_loss < 0.5 * first.train_loss,
        "{} -> {}",
        first.train_loss,
        last.train_loss
    );
    assert!(last.test.unwrap().top1 > 0.8, "{:?}", last.test);
}

fn data_dir() -> Option<PathBuf> {
    match std::env::var_os("LOPPER_DATA_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!("LOPPER_DATA_DIR is not set: skipping the real-data test");
            None
        }
    }
}

#[test]
fn short_mnist_run_loss_falls() {
    let Some(dir) = data_dir() else { return };
    let cfg = TrainConfig {
        model: "mlp".into(),
        dataset: DatasetName::Mnist,
        data_dir: Some(dir),
        epochs: 3,
        batch_size: 32,
        lr: 0.05,
        schedule: ScheduleKind::Constant,
        train_limit: Some(640),
        test_limit: Some(500),
        seed: 3,
        ..TrainConfig::default()
    };
    let data = prepare_data(&cfg).unwrap();
    assert_eq!(data.train.dataset().len(), 640);
    let g = lopper::zoo::build("mlp", &[1, 28, 28], 10).unwrap();
    let t = Trainer::new(cfg, None).unwrap();
    let out = t
        .fit(Model::init(g, 0, &Device::flex()).unwrap(), &data, &mut [])
        .unwrap();
    let losses: Vec<f64> = out.history.iter().map(|r| r.train_loss).collect();
    assert!(losses[2] < 0.6 * losses[0], "{losses:?}");
    assert!(
        out.history[2].test.unwrap().top1 > 0.75,
        "{:?}",
        out.history[2].test
    );
}

#[test]
fn schedules() {
    let mut c = TrainConfig {
        lr: 0.1,
        epochs: 10,
        warmup_epochs: 0.0,
        ..TrainConfig::default()
    };
    c.schedule = ScheduleKind::Cosine;
    assert!((learning_rate(&c, 0, 100) - 0.1).abs() < 1e-12);
    assert!((learning_rate(&c, 500, 100) - 0.05).abs() < 1e-12);
    assert!(learning_rate(&c, 999, 100) < 1e-4);
    c.schedule = ScheduleKind::Step;
    c.step_every = 3;
    c.step_gamma = 0.5;
    assert!((learning_rate(&c, 299, 100) - 0.1).abs() < 1e-12);
    assert!((learning_rate(&c, 300, 100) - 0.05).abs() < 1e-12);
    assert!((learning_rate(&c, 650, 100) - 0.025).abs() < 1e-12);
    c.warmup_epochs = 2.0;
    c.schedule = ScheduleKind::Constant;
    assert!((learning_rate(&c, 0, 100) - 0.1 / 200.0).abs() < 1e-12);
    assert!((learning_rate(&c, 99, 100) - 0.05).abs() < 1e-12);
    assert!((learning_rate(&c, 200, 100) - 0.1).abs() < 1e-12);
}

#[test]
fn cross_entropy_with_label_smoothing() {
    let dev = Device::flex();
    let logits = Tensor::<2>::from_data(
        TensorData::new(vec![2.0f32, 0.0, -1.0, 0.5, 0.5, 0.5], [2, 3]),
        &dev,
    );
    let lse0 = (2f64.exp() + 1.0 + (-1f64).exp()).ln();
    let lse1 = (3.0 * 0.5f64.exp()).ln();
    let logp = [[2.0 - lse0, -lse0, -1.0 - lse0], [0.5 - lse1; 3]];
    let labels = [0u8, 2];
    for eps in [0.0, 0.1] {
        let got = lopper::train::loss::cross_entropy(logits.clone(), &labels, eps, &dev);
        let got = got.into_data().try_to_vec::<f32>().unwrap()[0] as f64;
        let mut want = 0.0;
        for (row, &y) in logp.iter().zip(&labels) {
            for (j, lp) in row.iter().enumerate() {
                let t = if j == y as usize {
                    1.0 - eps + eps / 3.0
                } else {
                    eps / 3.0
                };
                want -= t * lp;
            }
        }
        want /= 2.0;
        assert!((got - want).abs() < 1e-5, "eps {eps}: {got} vs {want}");
    }
}

#[test]
fn bad_configurations_are_rejected() {
    let e = |c: TrainConfig| c.validate().unwrap_err().to_string();
    assert!(
        e(TrainConfig {
            epochs: 0,
            ..TrainConfig::default()
        })
        .contains("epochs")
    );
    assert!(
        e(TrainConfig {
            lr: -1.0,
            ..TrainConfig::default()
        })
        .contains("lr")
    );
    assert!(
        e(TrainConfig {
            model: "resnet7".into(),
            ..TrainConfig::default()
        })
        .contains("resnet20")
    );
    assert!(
        e(TrainConfig {
            device: "tpu".into(),
            ..TrainConfig::default()
        })
        .contains("tpu")
    );
    assert!(
        e(TrainConfig {
            warmup_epochs: 20.0,
            ..TrainConfig::default()
        })
        .contains("warmup")
    );
}

/// BatchNorm recalibration replaces the running statistics by the plain average of the
/// batches' own (mean, unbiased variance), whatever they were, and leaves the rest alone.
#[test]
fn batch_norm_recalibration_averages_the_batches_statistics() {
    use lopper::graph::{GraphBuilder, Op};
    use lopper::train::recalibrate_batch_norm;
    let mut b = GraphBuilder::new("bn-first", &[1, 28, 28]);
    let bn = b.op(
        "bn",
        Op::BatchNorm2d {
            channels: 1,
            eps: 1e-5,
            momentum: 0.1,
        },
        0,
    );
    let p = b.op("gap", Op::GlobalAvgPool, bn);
    let fc = b.linear("fc", p, 10, true);
    let graph = b.finish(fc).unwrap();
    // Running statistics far from the data's: mean within ±0.1, variance 0.5–1.5.
    let model = common::randomised(&graph, 3);
    let dev = Device::flex();
    let data = synthetic_data(16).train;
    let stats = |m: &Model| -> (f32, f32) {
        let Some(Layer::Norm(n)) = &m.layers[1] else {
            panic!("node 1 is the BatchNorm")
        };
        let r = n.running.as_ref().unwrap();
        let one = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap()[0];
        (one(r.mean.value_sync()), one(r.var.value_sync()))
    };
    let before = stats(&model);
    let batches = 4;
    // The re-estimation reports each batch it folds in, then its end.
    #[derive(Default)]
    struct Seen(Vec<(usize, usize)>);
    impl lopper::train::Progress for Seen {
        fn work(&mut self, _task: &str, done: usize, total: usize) {
            self.0.push((done, total));
        }
    }
    let mut seen = Seen::default();
    let after_model = recalibrate_batch_norm(&model, &data, batches, &dev, &mut seen).unwrap();
    assert_eq!(seen.0, vec![(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]);
    let after = stats(&after_model);
    // The expectation, from the same batches.
    let (mut mean, mut var) = (0.0f64, 0.0f64);
    for batch in data.epoch(0, 0, 0).take(batches) {
        let (x, _) = batch.to_tensors(&dev);
        let v = common::host_f64(x);
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        mean += m / batches as f64;
        var += v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0) / batches as f64;
    }
    assert!(
        (after.0 as f64 - mean).abs() < 1e-4 * mean.abs().max(1.0),
        "running mean {} vs the batches' {mean} (was {})",
        after.0,
        before.0
    );
    assert!(
        (after.1 as f64 - var).abs() < 1e-4 * var,
        "running variance {} vs the batches' {var} (was {})",
        after.1,
        before.1
    );
    assert!((before.0 as f64 - mean).abs() > 1e-2 || (before.1 as f64 - var).abs() > 1e-2);
    // The graph keeps its momentum, the weights are untouched, and 0 batches changes nothing.
    assert!(matches!(
        after_model.graph.nodes[1].op,
        Op::BatchNorm2d { momentum, .. } if momentum == 0.1
    ));
    let w = |m: &Model| {
        weights(m)
            .into_iter()
            .filter(|(n, _)| !n.contains("running"))
            .collect::<Vec<_>>()
    };
    assert_eq!(w(&model), w(&after_model));
    assert_eq!(
        stats(&recalibrate_batch_norm(&model, &data, 0, &dev, &mut lopper::train::Silent).unwrap()),
        before
    );
}

/// `lopper prune --method dsa` reads the data set once and cuts it twice: a held-out split for
/// the keep ratios, then the whole training set back for fine-tuning.
#[test]
fn one_load_cuts_into_a_held_out_split_and_back_into_the_whole_set() {
    let loaded = LoadedData {
        train: synthetic_mnist(100, 1),
        test: Arc::new(synthetic_mnist(20, 2)),
    };
    let mut cfg = config(1);
    cfg.val_fraction = 0.1;
    let dsa = batch_data(&cfg, &loaded).unwrap();
    cfg.val_fraction = 0.0;
    let full = batch_data(&cfg, &loaded).unwrap();

    let val = dsa.val.as_ref().expect("a validation split");
    assert_eq!((dsa.train.dataset().len(), val.dataset().len()), (90, 10));
    assert!(full.val.is_none());
    assert_eq!(full.train.dataset().len(), 100);
    assert_eq!(full.test.as_ref().unwrap().dataset().len(), 20);
    // The two parts of the held-out cut are the whole set, each sample once.
    let sample = |d: &lopper::data::Dataset, i: usize| (d.image(i).to_vec(), d.labels[i]);
    let mut parts: Vec<_> = (0..90)
        .map(|i| sample(dsa.train.dataset(), i))
        .chain((0..10).map(|i| sample(val.dataset(), i)))
        .collect();
    let mut whole: Vec<_> = (0..100).map(|i| sample(full.train.dataset(), i)).collect();
    parts.sort();
    whole.sort();
    assert_eq!(parts, whole);
}

/// Zeroes every optimiser moment after every step, half through `scale` with zero masks and
/// half through `reset`.
struct ForgetMoments;
impl TrainHook for ForgetMoments {
    fn after_step(
        &mut self,
        _: &StepInfo,
        model: Model,
        optim: &mut OptimizerState,
    ) -> lopper::Result<Model> {
        let mut masks = vec![];
        let mut ids = vec![];
        for layer in model.layers.iter().flatten() {
            match layer {
                Layer::Conv(c) => {
                    let n = c.weight.val().dims().iter().product();
                    masks.push((c.weight.id, vec![0.0; n]));
                    ids.extend(c.bias.as_ref().map(|b| b.id));
                }
                Layer::Linear(l) => {
                    ids.push(l.weight.id);
                    ids.extend(l.bias.as_ref().map(|b| b.id));
                }
                Layer::Norm(n) => ids.extend([n.weight.id, n.bias.id]),
            }
        }
        optim.scale(&masks)?;
        optim.reset(&ids)?;
        Ok(model)
    }
}

/// A hook reaches the optimiser's state: SGD with momentum whose moments are zeroed after every
/// step trains exactly as SGD without momentum.
#[test]
fn hooks_can_reset_the_optimiser_moments() {
    let data = synthetic_data(16);
    let plain = TrainConfig {
        momentum: 0.0,
        ..config(1)
    };
    let train = |cfg: TrainConfig, hooks: &mut [&mut dyn TrainHook]| {
        weights(
            &Trainer::new(cfg, None)
                .unwrap()
                .fit(lenet(2), &data, hooks)
                .unwrap()
                .model,
        )
    };
    let without = train(plain, &mut []);
    let forgotten = train(config(1), &mut [&mut ForgetMoments]);
    let with = train(config(1), &mut []);
    let gap = |a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]| {
        a.iter()
            .zip(b)
            .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0f32, f32::max)
    };
    assert!(
        gap(&forgotten, &without) < 1e-6,
        "{}",
        gap(&forgotten, &without)
    );
    // Momentum does change the result, so the equality above is the reset's doing.
    assert!(gap(&with, &without) > 1e-4, "{}", gap(&with, &without));
}

/// Records the steps it sees.
#[derive(Default)]
struct Steps(Vec<StepInfo>);
impl TrainHook for Steps {
    fn step_done(&mut self, info: &StepInfo, loss: f64, samples: usize) {
        assert!(loss.is_finite() && samples > 0);
        self.0.push(*info);
    }
}

/// Every hook of the list sees every step with its place in the whole run.
#[test]
fn hooks_in_a_list_each_see_the_whole_run() {
    let data = synthetic_data(16);
    let (mut a, mut b) = (Steps::default(), Steps::default());
    let mut stop = StopAfter { n: 9, steps: 0 };
    Trainer::new(config(2), None)
        .unwrap()
        .fit(lenet(0), &data, &mut [&mut a, &mut stop, &mut b])
        .unwrap();
    assert_eq!(a.0, b.0);
    assert_eq!(a.0.len(), 12);
    assert_eq!(stop.steps, 12);
    for (i, s) in a.0.iter().enumerate() {
        assert_eq!((s.global_step, s.steps_per_epoch, s.epochs), (i, 6, 2));
        assert_eq!(s.total_steps(), 12);
        assert!((s.progress() - i as f64 / 12.0).abs() < 1e-12);
    }
}

/// Rewrites the logits (node `.0`) by `.1`.
struct MapLogits(usize, fn(Tensor<2>) -> Tensor<2>);
impl lopper::model::NodeHook for MapLogits {
    fn after_node(
        &self,
        i: usize,
        _: &lopper::graph::Node,
        v: lopper::model::Value,
    ) -> lopper::model::Value {
        match v {
            lopper::model::Value::Flat(t) if i == self.0 => lopper::model::Value::Flat((self.1)(t)),
            v => v,
        }
    }
}

/// Node hooks chain in list order: each sees what the one before left.
#[test]
fn node_hooks_chain_in_order() {
    let model = lenet(3);
    let last = model.graph.nodes.len() - 1;
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![0.5f32; 2 * 784], [2, 1, 28, 28]),
        &Device::flex(),
    );
    let run = |hook: &dyn lopper::model::NodeHook| -> Vec<f32> {
        match model
            .forward_hooked(lopper::model::Value::Spatial(x.clone()), false, hook)
            .unwrap()
        {
            lopper::model::Value::Flat(t) => t.into_data().try_to_vec::<f32>().unwrap(),
            _ => panic!("logits are flat"),
        }
    };
    let plain = run(&lopper::model::NoHook);
    let (add, double) = (MapLogits(last, |t| t + 1.0), MapLogits(last, |t| t * 2.0));
    let chained = run(&lopper::train::NodeChain(vec![&add, &double]));
    for (p, c) in plain.iter().zip(&chained) {
        assert!((2.0 * (p + 1.0) - c).abs() < 1e-5, "{p} -> {c}");
    }
}

/// A model whose outputs are NaN scores 0%, not 100%: a non-finite logit never counts as
/// correct, and the metrics say how many samples gave one.
#[test]
fn non_finite_outputs_are_never_correct() {
    let model = lenet(0);
    let tensors = model.named_tensors();
    let broken = Model::from_tensors(model.graph.clone(), &Device::flex(), |node, name, _| {
        let full = format!("{}.{name}", node.name);
        let d = tensors.iter().find(|(n, _)| *n == full).unwrap().1.clone();
        Ok(if full == "fc3.bias" {
            TensorData::new(vec![f32::NAN; 10], [10])
        } else {
            d
        })
    })
    .unwrap();
    let data = synthetic_data(16);
    let test = data.test.as_ref().unwrap();
    let m =
        lopper::train::evaluate(&broken, test, &lopper::model::NoHook, &Device::flex()).unwrap();
    assert_eq!(
        (m.top1, m.top5, m.non_finite, m.samples),
        (0.0, 0.0, 64, 64)
    );
    assert!(m.loss.is_nan());
    assert!(m.non_finite_warning("x").unwrap().contains("64 of 64"));
    let fine =
        lopper::train::evaluate(&model, test, &lopper::model::NoHook, &Device::flex()).unwrap();
    assert_eq!(fine.non_finite, 0);
    assert!(fine.non_finite_warning("x").is_none());
}
