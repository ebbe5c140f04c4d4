//! Saving and loading models: bit-exact round trip and clear errors on bad files.

use burn::tensor::{Device, Tensor, TensorData};
use lopper::model::{Model, load_model, read_architecture, save_model};

fn tensors_equal(a: &Model, b: &Model) {
    let (ta, tb) = (a.named_tensors(), b.named_tensors());
    assert_eq!(ta.len(), tb.len());
    for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert_eq!(da.shape(), db.shape(), "{na}");
        let (va, vb) = (
            da.try_to_vec::<f32>().unwrap(),
            db.try_to_vec::<f32>().unwrap(),
        );
        assert!(
            va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na} differs"
        );
    }
}

#[test]
fn round_trip_is_bit_exact_for_every_zoo_model() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::flex();
    for name in lopper::zoo::MODEL_NAMES {
        let shape = if matches!(*name, "mlp" | "lenet5") {
            [1, 28, 28]
        } else {
            [3, 32, 32]
        };
        let g = lopper::zoo::build(name, &shape, 10).unwrap();
        let m = Model::init(g, 3, &dev).unwrap();
        let (a, w) = (
            dir.path().join(format!("{name}.json")),
            dir.path().join(format!("{name}.safetensors")),
        );
        save_model(&m, &a, &w).unwrap();
        let back = load_model(&a, &w, &dev).unwrap();
        assert_eq!(back.graph, m.graph);
        tensors_equal(&m, &back);
        if *name == "resnet20" {
            let x = Tensor::<4>::from_data(
                TensorData::new(vec![0.25f32; 2 * 3 * 32 * 32], [2, 3, 32, 32]),
                &dev,
            );
            let (y1, y2) = (m.forward(x.clone(), false), back.forward(x, false));
            assert_eq!(
                y1.into_data().try_to_vec::<f32>().unwrap(),
                y2.into_data().try_to_vec::<f32>().unwrap()
            );
        }
    }
}

#[test]
fn trained_batchnorm_statistics_are_saved() {
    // A training forward pass updates running statistics; saving must write the new values.
    let dir = tempfile::tempdir().unwrap();
    let ad = Device::flex().autodiff();
    let g = lopper::zoo::build("resnet20", &[3, 32, 32], 10).unwrap();
    let m = Model::init(g, 0, &ad).unwrap();
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![1.5f32; 4 * 3 * 32 * 32], [4, 3, 32, 32]),
        &ad,
    );
    let _ = m.forward(x, true);
    let (a, w) = (dir.path().join("m.json"), dir.path().join("m.safetensors"));
    save_model(&m, &a, &w).unwrap();
    let back = load_model(&a, &w, &Device::flex()).unwrap();
    let mean = back
        .named_tensors()
        .into_iter()
        .find(|(n, _)| n == "stem.bn.running_mean")
        .unwrap()
        .1
        .try_to_vec::<f32>()
        .unwrap();
    assert!(
        mean.iter().any(|v| *v != 0.0),
        "running mean was not updated: {mean:?}"
    );
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::flex();
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let m = Model::init(g, 0, &dev).unwrap();
    let (a, w) = (dir.path().join("m.json"), dir.path().join("m.safetensors"));
    save_model(&m, &a, &w).unwrap();

    // Unknown format version.
    let text = std::fs::read_to_string(&a).unwrap();
    let v99 = dir.path().join("v99.json");
    std::fs::write(
        &v99,
        text.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    let e = read_architecture(&v99).unwrap_err().to_string();
    assert!(e.contains("v99.json") && e.contains("version 99"), "{e}");

    // Not JSON at all.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, b"\x00\x01garbage").unwrap();
    let e = read_architecture(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.json") && e.contains("JSON"), "{e}");

    // Architecture and weights that disagree: a consistent graph with a wider fc1.
    let mut g = m.graph.clone();
    let fc1 = g.node_index("fc1").unwrap();
    if let lopper::graph::Op::Linear { out_features, .. } = &mut g.nodes[fc1].op {
        *out_features = 121;
    }
    g.nodes[fc1].shape = vec![121];
    g.nodes[fc1 + 1].shape = vec![121];
    if let lopper::graph::Op::Linear { in_features, .. } = &mut g.nodes[fc1 + 2].op {
        *in_features = 121;
    }
    g.validate().unwrap();
    let wide_path = dir.path().join("wide.json");
    lopper::model::write_architecture(&g, &wide_path).unwrap();
    let e = load_model(&wide_path, &w, &dev).unwrap_err().to_string();
    assert!(
        e.contains("m.safetensors") && e.contains("fc1.weight") && e.contains("shape"),
        "{e}"
    );
    // A stored shape that contradicts the wiring is caught when reading the architecture.
    let mut lie: serde_json::Value = serde_json::from_str(&text).unwrap();
    lie["graph"]["nodes"][fc1]["shape"] = serde_json::json!([7]);
    let lie = serde_json::to_string(&lie).unwrap();
    let lie_path = dir.path().join("lie.json");
    std::fs::write(&lie_path, lie).unwrap();
    let e = read_architecture(&lie_path).unwrap_err().to_string();
    assert!(e.contains("lie.json") && e.contains("fc1"), "{e}");

    // Truncated weights.
    let bytes = std::fs::read(&w).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_model(&a, &cut, &dev).unwrap_err().to_string();
    assert!(
        e.contains("cut.safetensors") && e.contains("safetensors"),
        "{e}"
    );

    // A weight that is not finite (a diverged run's, or a tampered file) is named on load.
    let tensors = m.named_tensors();
    let nan = Model::from_tensors(m.graph.clone(), &dev, |node, name, _| {
        let full = format!("{}.{name}", node.name);
        let d = tensors.iter().find(|(n, _)| *n == full).unwrap().1.clone();
        if full != "conv2.weight" {
            return Ok(d);
        }
        let mut v = d.try_to_vec::<f32>().unwrap();
        v[7] = f32::NAN;
        Ok(burn::tensor::TensorData::new(v, d.shape().clone()))
    })
    .unwrap();
    let (na, nw) = (
        dir.path().join("nan.json"),
        dir.path().join("nan.safetensors"),
    );
    save_model(&nan, &na, &nw).unwrap();
    let e = load_model(&na, &nw, &dev).unwrap_err().to_string();
    assert!(
        e.contains("nan.safetensors") && e.contains("conv2.weight") && e.contains("non-finite"),
        "{e}"
    );

    // Missing file.
    let e = load_model(&dir.path().join("nope.json"), &w, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.json"), "{e}");
}
