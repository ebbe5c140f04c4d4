//! Saving and loading models: architecture JSON (versioned) + weights in safetensors.
//!
//! Tensor names are `<node>.<param>` (`stage1.block0.conv1.weight`, `...bn.running_mean`), all
//! little-endian f32, in lopper's layout (see [`crate::graph::Op::param_shapes`]).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::Model;
use crate::error::{LopperError, Result};
use crate::fsutil;
use crate::graph::Graph;

/// Version of the architecture JSON. Bump on any incompatible change.
pub const ARCH_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct ArchitectureFile {
    format: String,
    format_version: u32,
    graph: Graph,
}

/// Writes the architecture JSON of `graph`.
pub fn write_architecture(graph: &Graph, path: &Path) -> Result<()> {
    let file = ArchitectureFile {
        format: "lopper-architecture".into(),
        format_version: ARCH_FORMAT_VERSION,
        graph: graph.clone(),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| LopperError::Config(e.to_string()))?;
    fsutil::write_atomic(path, &json)
}

/// Reads and validates an architecture JSON.
pub fn read_architecture(path: &Path) -> Result<Graph> {
    let bytes = fsutil::read(path)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        LopperError::bad_file(path, format!("expected lopper architecture JSON: {e}"))
    })?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == ARCH_FORMAT_VERSION as u64 => {}
        Some(v) => {
            return Err(LopperError::bad_file(
                path,
                format!(
                    "architecture format version {v} is not supported (this lopper reads version {ARCH_FORMAT_VERSION})"
                ),
            ));
        }
        None => {
            return Err(LopperError::bad_file(
                path,
                "expected lopper architecture JSON with a \"format_version\" field",
            ));
        }
    }
    let file: ArchitectureFile = serde_json::from_value(value)
        .map_err(|e| LopperError::bad_file(path, format!("invalid architecture: {e}")))?;
    file.graph
        .validate()
        .map_err(|e| LopperError::bad_file(path, e.to_string()))?;
    Ok(file.graph)
}

/// Serialises the model's weights as safetensors bytes.
pub fn weights_bytes(model: &Model) -> Result<Vec<u8>> {
    let mut tensors = vec![];
    for (name, data) in model.named_tensors() {
        let shape = data.shape().to_vec();
        let values = data
            .try_to_vec_as::<f32>()
            .map_err(|e| LopperError::Graph(format!("{e:?}")))?;
        tensors.push((name, shape, values));
    }
    safetensors_bytes(
        &tensors,
        &[("format", "lopper"), ("graph", model.graph.name.as_str())],
    )
}

/// Named f32 tensors `(name, shape, values)` and metadata as safetensors bytes.
pub fn safetensors_bytes(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    meta: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| LopperError::Graph(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| LopperError::Graph(e.to_string()))
}

/// Writes architecture JSON and weights.
pub fn save_model(model: &Model, arch_path: &Path, weights_path: &Path) -> Result<()> {
    write_architecture(&model.graph, arch_path)?;
    fsutil::write_atomic(weights_path, &weights_bytes(model)?)
}

/// Builds a model of `graph` with the weights in a safetensors file. Every tensor the graph
/// needs must be present with the right shape, and no other tensor may be.
pub fn load_weights(graph: Graph, path: &Path, device: &Device) -> Result<Model> {
    let bytes = fsutil::read(path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| LopperError::bad_file(path, format!("expected a safetensors file: {e}")))?;
    let mismatch = |what: String| {
        LopperError::bad_file(
            path,
            format!("weights do not match the architecture: {what}"),
        )
    };
    let mut used = 0usize;
    let model = Model::from_tensors(graph, device, |node, name, shape| {
        let full = format!("{}.{name}", node.name);
        let view = st
            .tensor(&full)
            .map_err(|_| mismatch(format!("tensor '{full}' is missing")))?;
        if view.shape() != shape {
            return Err(mismatch(format!(
                "tensor '{full}' has shape {:?}, the architecture says {shape:?}",
                view.shape()
            )));
        }
        if view.dtype() != Dtype::F32 {
            return Err(mismatch(format!(
                "tensor '{full}' is {:?}, expected F32",
                view.dtype()
            )));
        }
        used += 1;
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(LopperError::bad_file(
                path,
                format!(
                    "tensor '{full}' holds a non-finite value ({} at index {i}): the weights are corrupt or came from a diverged run",
                    values[i]
                ),
            ));
        }
        Ok(TensorData::new(values, shape.to_vec()))
    })?;
    if used != st.len() {
        let expected: std::collections::HashSet<String> = model
            .graph
            .nodes
            .iter()
            .flat_map(|n| {
                n.op.param_shapes()
                    .into_iter()
                    .map(move |(p, _)| format!("{}.{p}", n.name))
            })
            .collect();
        let extra: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| !expected.contains(*n))
            .collect();
        return Err(mismatch(format!("unexpected tensors {extra:?}")));
    }
    Ok(model)
}

/// Loads a model saved by [`save_model`].
pub fn load_model(arch_path: &Path, weights_path: &Path, device: &Device) -> Result<Model> {
    let graph = read_architecture(arch_path)?;
    load_weights(graph, weights_path, device)
}
