//! Export of a (pruned) model to files other tools load: ONNX for inference engines, and
//! safetensors in PyTorch's layout for PyTorch and friends.

mod onnx;
mod protobuf;

pub use onnx::{INPUT_NAME, OPSET, OUTPUT_NAME, to_onnx};

use crate::error::{LopperError, Result};
use crate::graph::Op;
use crate::model::Model;
use crate::model::safetensors_bytes;

/// An export file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// ONNX, opset 13, symbolic batch axis; input `input`, output `logits`.
    Onnx,
    /// safetensors with PyTorch's names and layouts (linear weights as [out, in]), loadable
    /// with `load_state_dict` into the matching torch module.
    Safetensors,
}

/// The model as the bytes of a file in `format`.
pub fn export(model: &Model, format: Format) -> Result<Vec<u8>> {
    match format {
        Format::Onnx => to_onnx(model),
        Format::Safetensors => to_torch_safetensors(model),
    }
}

/// Weights in PyTorch's layout: lopper keeps linear weights as [in, out] (what `x·W` wants),
/// PyTorch as [out, in], so those are transposed; everything else is already PyTorch's.
pub fn to_torch_safetensors(model: &Model) -> Result<Vec<u8>> {
    let linear: Vec<&str> = model
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Linear { .. }))
        .map(|n| n.name.as_str())
        .collect();
    let mut tensors = vec![];
    for (name, data) in model.named_tensors() {
        let mut shape = data.shape().to_vec();
        let mut values = data
            .try_to_vec::<f32>()
            .map_err(|e| LopperError::Export(format!("tensor '{name}': {e:?}")))?;
        let is_linear_weight = name
            .strip_suffix(".weight")
            .is_some_and(|n| linear.contains(&n));
        if is_linear_weight && shape.len() == 2 {
            let (rows, cols) = (shape[0], shape[1]);
            values = (0..cols)
                .flat_map(|c| (0..rows).map(move |r| (r, c)))
                .map(|(r, c)| values[r * cols + c])
                .collect();
            shape = vec![cols, rows];
        }
        tensors.push((name, shape, values));
    }
    safetensors_bytes(
        &tensors,
        &[
            ("format", "pt"),
            ("producer", "lopper"),
            ("graph", model.graph.name.as_str()),
        ],
    )
}
