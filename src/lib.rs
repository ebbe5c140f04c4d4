//! lopper: budgeted neural-network pruning.
//!
//! The crate is laid out as the pipeline is: a model [`graph`] (layers, shapes, parameters),
//! its execution on Burn ([`model`]), [`count`]ing of MACs and parameters, [`data`] sets,
//! [`train`]ing with hooks that pruning methods plug into, [`prune`]ing (groups, masks,
//! importance, allocation, surgery), [`export`] to ONNX and safetensors, report [`plot`]s, and
//! the [`device`] choice.

pub mod count;
pub mod data;
pub mod device;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod graph;
pub mod kernels;
pub mod model;
pub mod plot;
pub mod prune;
pub mod train;
pub mod zoo;

pub use error::{LopperError, Result};
