//! The `lopper` binary as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn lopper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lopper"))
        .args(args)
        .env_remove("LOPPER_DATA_DIR")
        .output()
        .expect("run lopper")
}

/// `lopper train` of a LeNet-5 on a seeded cut of MNIST, quietly.
fn train_lenet5(
    data: &str,
    out: &str,
    epochs: &str,
    train_limit: &str,
    test_limit: &str,
) -> Output {
    lopper(&[
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "mnist",
        "--data-dir",
        data,
        "--epochs",
        epochs,
        "--train-limit",
        train_limit,
        "--test-limit",
        test_limit,
        "--quiet",
        "--out",
        out,
    ])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn inspect_prints_table_and_json() {
    let o = lopper(&["inspect", "--model", "resnet20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("stage3.block2.conv2") && text.contains("40.81M MACs"),
        "{text}"
    );

    let o = lopper(&["inspect", "--model", "resnet20", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["macs"], 40_813_184);
    assert_eq!(v["params"], 272_474);

    let o = lopper(&[
        "inspect",
        "--model",
        "lenet5",
        "--dataset",
        "cifar10",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["input_shape"], serde_json::json!([3, 32, 32]));
}

#[test]
fn bad_input_is_one_clear_error_line() {
    let o = lopper(&["inspect", "--model", "resnet21"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.starts_with("error:") && e.contains("resnet20") && e.trim().lines().count() == 1,
        "{e}"
    );

    let o = lopper(&[
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "mnist",
        "--out",
        "/tmp/x",
        "--epochs",
        "zero",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--epochs"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = lopper(&[
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "mnist",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("LOPPER_DATA_DIR"), "{e}");

    let o = lopper(&[
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "mnist",
        "--data-dir",
        "/nonexistent",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("/nonexistent"), "{e}");

    let o = lopper(&["eval", "--run", dir.path().to_str().unwrap()]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("config.toml"), "{e}");

    // A flag that cannot apply is refused before any data is read.
    let o = lopper(&[
        "prune",
        "--from-scratch",
        "--model",
        "lenet5",
        "--method",
        "dsa",
        "--budget",
        "macs=0.5",
        "--dsa-schedule",
        "constant",
        "--out",
        dir.path().join("p").to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("--dsa-schedule") && e.trim().lines().count() == 1,
        "{e}"
    );

    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "modle = \"resnet20\"\n").unwrap();
    let o = lopper(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("bad.toml") && e.contains("modle"),
        "{e}"
    );
}

fn data_dir() -> Option<PathBuf> {
    let d = std::env::var_os("LOPPER_DATA_DIR").map(PathBuf::from);
    if d.is_none() {
        eprintln!("LOPPER_DATA_DIR is not set: skipping the real-data CLI test");
    }
    d
}

#[test]
fn train_eval_resume_on_mnist() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp");
    let (out_s, data_s) = (out.to_str().unwrap(), data.to_str().unwrap());
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        "model = \"mlp\"\ndataset = \"mnist\"\nepochs = 1\nbatch_size = 64\nlr = 0.05\ntrain_limit = 1024\ntest_limit = 500\n",
    )
    .unwrap();
    let o = lopper(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data_s,
        "--out",
        out_s,
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "config.toml",
        "model.json",
        "model.safetensors",
        "metrics.jsonl",
        "eval.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        resolved.contains("train_limit = 1024") && resolved.contains("momentum"),
        "{resolved}"
    );

    let o = lopper(&["eval", "--run", out_s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let top1 = v["top1"].as_f64().unwrap();
    assert!(
        top1 > 0.4 && v["top5"].as_f64().unwrap() >= top1 && v["loss"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    // eval agrees with what training recorded for the same model and split.
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert!((recorded["top1"].as_f64().unwrap() - top1).abs() < 1e-9);

    let o = lopper(&["inspect", "--run", out_s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Training into an existing run needs --resume; --resume refuses recipe changes.
    let o = lopper(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data_s,
        "--out",
        out_s,
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("--resume"),
        "{}",
        stderr(&o)
    );
    let o = lopper(&["train", "--out", out_s, "--resume", "--lr", "0.2"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--lr"),
        "{}",
        stderr(&o)
    );
    // Resuming a finished run is a no-op that succeeds.
    let o = lopper(&["train", "--out", out_s, "--resume", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Prune the trained run to half its MACs, fine-tune one epoch, read the report.
    let pruned = dir.path().join("mlp-pruned");
    let p_s = pruned.to_str().unwrap();
    let o = lopper(&[
        "prune",
        "--run",
        out_s,
        "--method",
        "l1",
        "--allocation",
        "global",
        "--budget",
        "macs=0.5",
        "--finetune-epochs",
        "1",
        "--out",
        p_s,
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["budget_met"], true);
    let (before, after) = (
        r["macs"]["before"].as_f64().unwrap(),
        r["macs"]["after"].as_f64().unwrap(),
    );
    assert!(after <= 0.5 * before && after > 0.4 * before, "{r}");
    assert!(r["top1_finetuned"].as_f64().unwrap() > 0.4, "{r}");
    // An MLP has no residual stream to collapse: the report carries an empty warning list.
    assert_eq!(r["warnings"].as_array().map(|w| w.len()), Some(0), "{r}");
    for f in [
        "prune_report.json",
        "prune_report.md",
        "model.json",
        "model.safetensors",
        "eval.json",
        "keep_ratios.svg",
        "keep_ratios.png",
    ] {
        assert!(pruned.join(f).exists(), "{f} missing");
    }
    // The plot is a real picture: a PNG that decodes, an SVG with one bar per group.
    let png = image::open(pruned.join("keep_ratios.png")).unwrap();
    assert!(png.width() >= 600 && png.height() >= 100);
    let svg = std::fs::read_to_string(pruned.join("keep_ratios.svg")).unwrap();
    let groups = r["groups"].as_array().unwrap().len();
    assert!(svg.matches("<rect").count() > groups, "{svg}");
    // Export: ONNX and PyTorch-layout safetensors of the pruned run.
    for (format, file) in [("onnx", "m.onnx"), ("safetensors", "m.safetensors")] {
        let f = dir.path().join(file);
        let o = lopper(&[
            "export",
            "--run",
            p_s,
            "--format",
            format,
            "--out",
            f.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(std::fs::metadata(&f).unwrap().len() > 1000);
    }
    let o = lopper(&[
        "export",
        "--run",
        "/nonexistent",
        "--format",
        "onnx",
        "--out",
        "x.onnx",
    ]);
    assert!(!o.status.success() && stderr(&o).contains("/nonexistent"));
    // The pruned run is a run like any other.
    let o = lopper(&["eval", "--run", p_s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = lopper(&["inspect", "--run", p_s, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["macs"].as_f64().unwrap(), after);
    // DSA from the trained run, the iterative baseline, and DSA from scratch: each meets the
    // budget on the pruned graph and learns something.
    for (name, extra) in [
        (
            "dsa",
            // DSA's defaults from a trained run: 1.5 epochs at a constant rate.
            vec!["--run", out_s],
        ),
        ("iterative", vec!["--run", out_s, "--step-batches", "4"]),
        (
            "dsa",
            vec![
                "--from-scratch",
                "--model",
                "mlp",
                "--dataset",
                "mnist",
                "--data-dir",
                data_s,
                "--dsa-epochs",
                "2",
                "--train-limit",
                "2048",
                "--test-limit",
                "500",
            ],
        ),
    ] {
        let target = dir
            .path()
            .join(format!("{name}-{}", extra[0].trim_start_matches('-')));
        let mut args = vec![
            "prune",
            "--method",
            name,
            "--budget",
            "macs=0.4",
            "--finetune-epochs",
            "1",
            "--out",
            target.to_str().unwrap(),
            "--json",
            "--quiet",
        ];
        args.extend(extra.iter().copied());
        let o = lopper(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(r["budget_met"], true, "{r}");
        let (before, after) = (
            r["macs"]["before"].as_f64().unwrap(),
            r["macs"]["after"].as_f64().unwrap(),
        );
        assert!(after <= 0.4 * before && after > 0.3 * before, "{r}");
        assert!(r["top1_finetuned"].as_f64().unwrap() > 0.4, "{r}");
        // Both DSA runs here take 4-11 ratio steps, too few to learn from: they say so.
        assert_eq!(
            stderr(&o).contains("keep-ratio step(s)"),
            name == "dsa",
            "{name}: {}",
            stderr(&o)
        );
        if name == "dsa" {
            let log = std::fs::read_to_string(target.join("dsa_log.jsonl")).unwrap();
            assert_eq!(log.lines().count(), 3, "{log}");
            let last: serde_json::Value =
                serde_json::from_str(log.lines().last().unwrap()).unwrap();
            assert_eq!(last["epoch"], 2);
            assert!(target.join("keep_ratio_history.svg").exists());
            assert!(target.join("keep_ratio_history.png").exists());
        }
        if name == "dsa" && extra[0] == "--run" {
            // The default schedule from a trained run is constant: the allocation phase's
            // weights train at --lr (by default a tenth of the run's 0.05) to its last step,
            // where a cosine would have reached 0.
            let alloc = std::fs::read_to_string(target.join("allocation/metrics.jsonl")).unwrap();
            let lrs: Vec<f64> = alloc
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"]
                        .as_f64()
                        .unwrap()
                })
                .collect();
            assert_eq!(lrs.len(), 2, "{alloc}");
            assert!(lrs.iter().all(|&lr| (lr - 0.005).abs() < 1e-12), "{alloc}");
            let t = target.to_str().unwrap();
            // A second prune into the same folder is refused and points at --resume.
            let mut again = args.clone();
            again.retain(|x| *x != "--quiet");
            let o = lopper(&again);
            assert!(!o.status.success() && stderr(&o).contains("--resume"));
            // Interrupted after the last allocation checkpoint: the pruned model, the
            // fine-tuning and the report are gone. Resuming redoes only what is missing and
            // finds the same widths.
            std::fs::remove_dir_all(target.join("pruned")).unwrap();
            std::fs::remove_dir_all(target.join("checkpoint")).unwrap();
            std::fs::remove_file(target.join("prune_report.json")).unwrap();
            let o = lopper(&["prune", "--resume", "--out", t, "--json", "--quiet"]);
            assert!(o.status.success(), "resume: {}", stderr(&o));
            let resumed: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
            assert_eq!(resumed["resumed"], true);
            assert_eq!(resumed["budget_met"], true);
            assert_eq!(resumed["groups"], r["groups"]);
            assert_eq!(resumed["macs"], r["macs"]);
            let log = std::fs::read_to_string(target.join("dsa_log.jsonl")).unwrap();
            assert_eq!(log.lines().count(), 3, "{log}");
            // Resuming takes the saved flags, not new ones.
            let o = lopper(&["prune", "--resume", "--out", t, "--method", "l1"]);
            assert!(!o.status.success() && stderr(&o).contains("--resume continues"));
        }
    }
    // An unreachable budget is one clear line.
    let o = lopper(&[
        "prune",
        "--run",
        out_s,
        "--method",
        "l1",
        "--budget",
        "macs=0.0001",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("smallest reachable"),
        "{e}"
    );
    // That folder holds no progress, so a corrected command may use it.
    let o = lopper(&[
        "prune",
        "--run",
        out_s,
        "--method",
        "l1",
        "--budget",
        "macs=0.5",
        "--out",
        dir.path().join("x").to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A run folder is one process's at a time; a folder of someone else's files is not a run
/// folder; a training run killed before its first epoch finished starts over on --resume.
#[test]
fn run_folders_are_locked_and_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("busy");
    let out_s = out.to_str().unwrap();
    let lock = lopper::fsutil::FolderLock::acquire(&out).unwrap();
    let o = lopper(&[
        "train",
        "--model",
        "mlp",
        "--dataset",
        "mnist",
        "--out",
        out_s,
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("in use by another lopper process"),
        "{e}"
    );

    let foreign = dir.path().join("photos");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("holiday.jpg"), b"not lopper's").unwrap();
    let f = foreign.to_str().unwrap();
    for args in [
        &["train", "--model", "mlp", "--dataset", "mnist", "--out", f][..],
        &[
            "prune", "--run", "r", "--method", "l1", "--budget", "macs=0.5", "--out", f,
        ],
    ] {
        let o = lopper(args);
        let e = stderr(&o);
        assert!(
            !o.status.success() && e.contains("holds no lopper run"),
            "{args:?}: {e}"
        );
    }
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);

    // Killed before the first checkpoint: the configuration is there, no checkpoint.
    let Some(data) = data_dir() else { return };
    let early = dir.path().join("early");
    std::fs::create_dir_all(&early).unwrap();
    let cfg = format!(
        "model = \"mlp\"\ndataset = \"mnist\"\ndata_dir = {:?}\nepochs = 1\nbatch_size = 64\nlr = 0.05\ntrain_limit = 256\ntest_limit = 128\n",
        data.to_str().unwrap()
    );
    let e = early.to_str().unwrap();
    let tmp_cfg = dir.path().join("cfg.toml");
    std::fs::write(&tmp_cfg, cfg).unwrap();
    let o = lopper(&[
        "train",
        "--config",
        tmp_cfg.to_str().unwrap(),
        "--out",
        e,
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(early.join("checkpoint")).unwrap();
    let o = lopper(&["train", "--out", e, "--resume"]);
    assert!(
        o.status.success() && stderr(&o).contains("starts over"),
        "{}",
        stderr(&o)
    );
    assert!(early.join("checkpoint").exists());

    // A prune into the locked folder is refused too (after reading its source, before
    // writing anything).
    let o = lopper(&[
        "prune", "--run", e, "--method", "l1", "--budget", "macs=0.5", "--out", out_s,
    ]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("in use by another lopper process"),
        "{err}"
    );
    drop(lock);
    // A wrong --run leaves no folder behind.
    let nothing = dir.path().join("nothing");
    let o = lopper(&[
        "prune",
        "--run",
        "no-such-run",
        "--method",
        "l1",
        "--budget",
        "macs=0.5",
        "--out",
        nothing.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && !nothing.exists(), "{}", stderr(&o));
}

/// A relative --data-dir is stored absolute, so the run evaluates from any directory; eval
/// takes its own --test-limit.
#[test]
fn stored_data_paths_work_from_anywhere() {
    let Some(data) = data_dir() else { return };
    let data = std::path::absolute(data).unwrap();
    let (parent, name) = (data.parent().unwrap(), data.file_name().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp");
    let o = Command::new(env!("CARGO_BIN_EXE_lopper"))
        .current_dir(parent)
        .env_remove("LOPPER_DATA_DIR")
        .args([
            "train",
            "--model",
            "mlp",
            "--dataset",
            "mnist",
            "--epochs",
            "1",
        ])
        .args([
            "--train-limit",
            "256",
            "--test-limit",
            "64",
            "--quiet",
            "--data-dir",
        ])
        .arg(name)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_lopper"))
        .current_dir(dir.path())
        .env_remove("LOPPER_DATA_DIR")
        .args(["eval", "--json", "--test-limit", "100", "--run", "mlp"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(m["samples"], 100);
}

/// A result at chance accuracy is reported as collapsed and the prune exits with an error
/// (the folder keeps the result): here a run whose last layer's weights are zero, so every
/// input gets the same logits and the class-balanced test subset scores exactly 10%.
#[test]
fn a_collapsed_result_is_an_error() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("dead");
    let run_s = run.to_str().unwrap();
    let d = data.to_str().unwrap();
    let o = train_lenet5(d, run_s, "1", "256", "100");
    assert!(o.status.success(), "{}", stderr(&o));
    let dev = burn::tensor::Device::flex();
    let (arch, weights) = (run.join("model.json"), run.join("model.safetensors"));
    let m = lopper::model::load_model(&arch, &weights, &dev).unwrap();
    let tensors = m.named_tensors();
    let dead = lopper::model::Model::from_tensors(m.graph.clone(), &dev, |node, name, _| {
        let full = format!("{}.{name}", node.name);
        let t = tensors.iter().find(|(n, _)| *n == full).unwrap().1.clone();
        Ok(if full == "fc3.weight" {
            burn::tensor::TensorData::zeros::<f32, _>(t.shape().clone())
        } else {
            t
        })
    })
    .unwrap();
    lopper::model::save_model(&dead, &arch, &weights).unwrap();

    let out = dir.path().join("pruned");
    let o = lopper(&[
        "prune",
        "--run",
        run_s,
        "--method",
        "l1",
        "--budget",
        "macs=0.5",
        "--data-dir",
        d,
        "--test-limit",
        "100",
        "--finetune-epochs",
        "0",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("collapsed") && e.contains("10.00%"),
        "{e}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("prune_report.json")).unwrap()).unwrap();
    assert!(
        report["collapsed"].as_str().unwrap().contains("chance"),
        "{report}"
    );
}

/// Each zoo model trains with its own recipe where the user says nothing: LeNet-5 and the MLP
/// (no BatchNorm) with lr 0.05 and batch 64, the others with lr 0.1 and batch 128; a flag or a
/// run configuration's field wins.
#[test]
fn models_train_with_their_own_recipe() {
    let Some(data) = data_dir() else { return };
    let d = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let train = |name: &str, dataset: &str, extra: &[&str]| -> toml::Table {
        let out = dir.path().join(format!("{name}-{}", extra.len()));
        let mut args = vec![
            "train",
            "--model",
            name,
            "--dataset",
            dataset,
            "--data-dir",
            d,
            "--epochs",
            "1",
            "--train-limit",
            "64",
            "--test-limit",
            "32",
            "--quiet",
            "--out",
        ];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        let o = lopper(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        std::fs::read_to_string(out.join("config.toml"))
            .unwrap()
            .parse()
            .unwrap()
    };
    let c = train("lenet5", "mnist", &[]);
    assert_eq!(
        (c["lr"].as_float(), c["batch_size"].as_integer()),
        (Some(0.05), Some(64))
    );
    let c = train("lenet5", "mnist", &["--lr", "0.02"]);
    assert_eq!(
        (c["lr"].as_float(), c["batch_size"].as_integer()),
        (Some(0.02), Some(64))
    );
    let file = dir.path().join("run.toml");
    std::fs::write(&file, "batch_size = 32\n").unwrap();
    let c = train("mlp", "mnist", &["--config", file.to_str().unwrap()]);
    assert_eq!(
        (c["lr"].as_float(), c["batch_size"].as_integer()),
        (Some(0.05), Some(32))
    );
    let c = train("resnet20", "cifar10", &[]);
    assert_eq!(
        (c["lr"].as_float(), c["batch_size"].as_integer()),
        (Some(0.1), Some(128))
    );
}

/// Small frictions: the documented `--input-shape C,H,W` form works, `--protect` without
/// `--groups` is refused instead of ignored, messages name things as users write them, and
/// `profile` checks where it will write before measuring.
#[test]
fn frictions_are_gone() {
    let o = lopper(&[
        "inspect",
        "--model",
        "resnet20",
        "--input-shape",
        "3,32,32",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = lopper(&["inspect", "--model", "resnet20", "--input-shape", "3,32"]);
    assert!(!o.status.success() && stderr(&o).contains("three numbers"));
    let o = lopper(&["inspect", "--model", "resnet20", "--protect", "conv1"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--groups"),
        "{}",
        stderr(&o)
    );
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no/such/folder/p.json");
    let started = std::time::Instant::now();
    let o = lopper(&[
        "profile",
        "--model",
        "resnet20",
        "--out",
        nowhere.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("p.json"),
        "{}",
        stderr(&o)
    );
    assert!(
        started.elapsed().as_secs() < 20,
        "it measured before failing"
    );
}

/// A weight prune to 2:4 from the command line: the budget holds on the exported file (every
/// group of 4 consecutive input features of a pruned layer holds at most 2 non-zeros, read
/// back from the safetensors in PyTorch's [out, in] layout), the sidecar says which layers
/// stayed dense, `inspect --run` counts the zeros, and a channel method refuses the budget.
#[test]
fn weight_pruning_to_two_of_four_holds_on_the_exported_file() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = data.to_str().unwrap();
    let run = dir.path().join("dense");
    let run_s = run.to_str().unwrap();
    let o = train_lenet5(d, run_s, "2", "4096", "200");
    assert!(o.status.success(), "{}", stderr(&o));
    // A channel method with a weight budget, and a layer allocation with an N:M budget, are
    // refused before any data is read.
    let refused = dir.path().join("refused");
    for (method, extra, why) in [
        ("l1", &[][..], "magnitude, gmp, pdp, rigl or iee"),
        ("magnitude", &["--allocation", "erk"][..], "allocation"),
    ] {
        let mut args = vec![
            "prune", "--run", run_s, "--method", method, "--budget", "nm=2:4",
        ];
        args.extend(extra);
        args.extend(["--quiet", "--out", refused.to_str().unwrap()]);
        let o = lopper(&args);
        assert!(
            !o.status.success() && stderr(&o).contains(why),
            "{}",
            stderr(&o)
        );
    }
    let out = dir.path().join("nm");
    let o = lopper(&[
        "prune",
        "--run",
        run_s,
        "--method",
        "magnitude",
        "--budget",
        "nm=2:4",
        "--data-dir",
        d,
        "--quiet",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["budget_met"], true, "{report}");
    assert_eq!(report["sparsity"]["max_nonzero_per_group"], 2, "{report}");
    let exported = dir.path().join("export").join("lenet5.safetensors");
    let o = lopper(&[
        "export",
        "--run",
        out.to_str().unwrap(),
        "--format",
        "safetensors",
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("export").join("lenet5.sparsity.json")).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(&exported).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for layer in sidecar["layers"].as_array().unwrap() {
        let name = layer["name"].as_str().unwrap();
        if layer["pattern"] != "2:4" {
            assert!(layer["dense_reason"].is_string(), "{layer}");
            continue;
        }
        let t = st.tensor(&format!("{name}.weight")).unwrap();
        let w: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        // fc layers: [out, in]; groups of 4 consecutive inputs of each output.
        let fan_in = t.shape()[1];
        for row in w.chunks(fan_in) {
            for group in row.chunks(4) {
                assert!(group.iter().filter(|v| **v != 0.0).count() <= 2, "{name}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 2, "fc1 and fc2 are 2:4; {sidecar}");
    let o = lopper(&["inspect", "--run", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["sparsity"]["sparsity"], 0.5, "{v}");
}

/// PDP's channel mode from the CLI: a MACs budget removes channels physically, from a trained
/// run and from scratch, with the soft channel counts plotted; ERK, a weight allocation, is
/// refused with a channel budget before any data is read. HALP, RigL and IEE on the same run.
#[test]
fn pdp_channels_halp_rigl_and_iee_from_the_cli() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = data.to_str().unwrap();
    let run = dir.path().join("dense");
    let run_s = run.to_str().unwrap();
    let o = train_lenet5(d, run_s, "2", "4096", "200");
    assert!(o.status.success(), "{}", stderr(&o));
    let refused = dir.path().join("refused");
    let o = lopper(&[
        "prune",
        "--run",
        run_s,
        "--method",
        "pdp",
        "--allocation",
        "erk",
        "--budget",
        "macs=0.5",
        "--quiet",
        "--out",
        refused.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("uniform or global"),
        "{}",
        stderr(&o)
    );
    let common = [
        "--data-dir",
        d,
        "--train-limit",
        "2048",
        "--test-limit",
        "200",
    ];
    for (name, source) in [
        ("trained", vec!["--run", run_s]),
        (
            "scratch",
            vec!["--from-scratch", "--model", "lenet5", "--pdp-epochs", "2"],
        ),
    ] {
        let out = dir.path().join(name);
        let mut args = vec![
            "prune",
            "--method",
            "pdp",
            "--budget",
            "macs=0.5",
            "--pdp-t-grad",
            "--finetune-epochs",
            "1",
            "--quiet",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(&source);
        args.extend(common);
        let o = lopper(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(report["budget_met"], true, "{report}");
        let (before, after) = (
            report["macs"]["before"].as_f64().unwrap(),
            report["macs"]["after"].as_f64().unwrap(),
        );
        assert!(after <= 0.5 * before && after > 0.4 * before, "{report}");
        // Channels are gone from the saved graph, not masked.
        let narrowed = report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["after"].as_u64() < g["before"].as_u64())
            .count();
        assert!(narrowed >= 2, "{report}");
        assert!(report["sparsity"].is_null(), "{report}");
        assert!(out.join("sparsity_history.svg").exists(), "{name}");
        assert!(out.join("keep_ratios.svg").exists(), "{name}");
        let recipe = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
        assert!(recipe.contains("allocation = \"uniform\""), "{recipe}");
        assert!(recipe.contains("pdp_t_grad = true"), "{recipe}");
    }
    // HALP to the same budget: its pruning steps' targets fall to the budget, which holds.
    let out = dir.path().join("halp");
    let mut args = vec![
        "prune",
        "--run",
        run_s,
        "--method",
        "halp",
        "--budget",
        "macs=0.5",
        "--halp-steps",
        "4",
        "--finetune-epochs",
        "1",
        "--quiet",
        "--json",
        "--out",
    ];
    args.push(out.to_str().unwrap());
    args.extend(common);
    let o = lopper(&args);
    assert!(o.status.success(), "halp: {}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["budget_met"], true, "{report}");
    let log = std::fs::read_to_string(out.join("halp_log.jsonl")).unwrap();
    let targets: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["target"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(targets.len(), 4, "{log}");
    assert!(targets.windows(2).all(|w| w[0] > w[1]), "{log}");
    let limit = report["budget_limit"].as_f64().unwrap();
    assert!((targets[3] - limit).abs() < 1e-6 * limit, "{log}");
    // RigL to 90%: the budget holds on the saved weights and every update is logged.
    let out = dir.path().join("rigl");
    let mut args = vec![
        "prune",
        "--run",
        run_s,
        "--method",
        "rigl",
        "--budget",
        "sparsity=0.9",
        "--rigl-every",
        "5",
        "--finetune-epochs",
        "1",
        "--quiet",
        "--json",
        "--out",
    ];
    args.push(out.to_str().unwrap());
    args.extend(common);
    let o = lopper(&args);
    assert!(o.status.success(), "rigl: {}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["budget_met"], true, "{report}");
    assert_eq!(report["allocation"], "rigl erk", "{report}");
    let log = std::fs::read_to_string(out.join("rigl_log.jsonl")).unwrap();
    assert!(log.lines().count() >= 3, "{log}");
    // IEE to 90% with the Taylor criterion: the budget holds and every cycle is logged.
    let out = dir.path().join("iee");
    let mut args = vec![
        "prune",
        "--run",
        run_s,
        "--method",
        "iee",
        "--criterion",
        "taylor",
        "--budget",
        "sparsity=0.9",
        "--iee-h",
        "4",
        "--iee-j",
        "4",
        "--iee-q",
        "4",
        "--finetune-epochs",
        "1",
        "--quiet",
        "--json",
        "--out",
    ];
    args.push(out.to_str().unwrap());
    args.extend(common);
    let o = lopper(&args);
    assert!(o.status.success(), "iee: {}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["budget_met"], true, "{report}");
    let log = std::fs::read_to_string(out.join("iee_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    // IEE on channels: halp's knapsack growth from the trained run, taylor from scratch, and
    // on weights at 2:4 (magnitude). Budgets hold, channels are removed, cycles are logged.
    for (name, extra) in [
        (
            "iee-halp",
            vec![
                "--run",
                run_s,
                "--criterion",
                "halp",
                "--budget",
                "macs=0.5",
            ],
        ),
        (
            "iee-scratch",
            vec![
                "--from-scratch",
                "--model",
                "lenet5",
                "--iee-epochs",
                "2",
                "--budget",
                "macs=0.5",
            ],
        ),
        (
            "iee-2of4",
            vec![
                "--run",
                run_s,
                "--criterion",
                "magnitude",
                "--budget",
                "nm=2:4",
            ],
        ),
    ] {
        let out = dir.path().join(name);
        let mut args = vec![
            "prune",
            "--method",
            "iee",
            "--iee-h",
            "4",
            "--iee-j",
            "4",
            "--iee-q",
            "4",
            "--finetune-epochs",
            "1",
            "--quiet",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(&extra);
        args.extend(common);
        let o = lopper(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(report["budget_met"], true, "{name}: {report}");
        let log = std::fs::read_to_string(out.join("iee_log.jsonl")).unwrap();
        assert!(log.lines().count() >= 1, "{name}: {log}");
        let cycle: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        assert!(cycle["swapped"].as_u64().unwrap() > 0, "{name}: {log}");
        if name == "iee-2of4" {
            assert_eq!(report["allocation"], "iee 2:4", "{report}");
            continue;
        }
        let narrowed = report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["after"].as_u64() < g["before"].as_u64())
            .count();
        // (halp's knapsack may take all it cuts from one group: LeNet-5's conv1 is cheap to
        // lose by its norms.)
        assert!(narrowed >= 1, "{name}: {report}");
        let (before, after) = (
            report["macs"]["before"].as_f64().unwrap(),
            report["macs"]["after"].as_f64().unwrap(),
        );
        assert!(
            after <= 0.5 * before && after > 0.4 * before,
            "{name}: {report}"
        );
    }
    // A phase too short for one IEE cycle or one RigL update is refused: it would train
    // fixed masks under the method's name.
    for (method, flags, why) in [
        ("iee", &["--iee-h", "50"][..], "no cycle"),
        ("rigl", &["--rigl-every", "50"][..], "no mask update fits"),
    ] {
        let mut args = vec![
            "prune",
            "--run",
            run_s,
            "--method",
            method,
            "--budget",
            "sparsity=0.9",
            "--quiet",
            "--out",
        ];
        let out = dir.path().join(format!("short-{method}"));
        args.push(out.to_str().unwrap());
        args.extend(flags);
        args.extend(common);
        let o = lopper(&args);
        assert!(
            !o.status.success() && stderr(&o).contains(why),
            "{method}: {}",
            stderr(&o)
        );
    }
    // A channel criterion with a weight budget is refused before any data is read.
    let o = lopper(&[
        "prune",
        "--run",
        run_s,
        "--method",
        "iee",
        "--criterion",
        "halp",
        "--budget",
        "sparsity=0.9",
        "--quiet",
        "--out",
        dir.path().join("refused-iee").to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("l1 (magnitude) or taylor"),
        "{}",
        stderr(&o)
    );
}
