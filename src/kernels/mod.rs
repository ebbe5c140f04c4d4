//! Hand-written CPU kernels for the training step on the default (`flex`) backend: the
//! convolutions and BatchNorm that take most of a ResNet-20 step there (issue 26). BatchNorm
//! also applies the channel mask and the ReLU that follow it (the model's executor hands them
//! over, see `NodeHook::channel_scale`). [`conv`], [`direct`] and [`norm`] work on plain NCHW
//! `f32` slices, so they can be tested against Burn's composed ops and measured alone;
//! [`backend`] plugs them into Burn through `burn-backend-extension`, forward and backward.

pub mod backend;
pub mod conv;
pub mod denormal;
pub mod direct;
pub mod isa;
pub mod norm;

pub use norm::Rectifier;

pub use backend::{
    MIN_POSITIONS, NormEpilogue, batch_norm_train, conv2d, enabled, kernel_calls, set_enabled,
};
