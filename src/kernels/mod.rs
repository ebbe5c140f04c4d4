//! Hand-written CPU kernels for the training step on the default (`flex`) backend: the
//! convolutions and BatchNorm that take most of a ResNet-20 step there (issue 26). [`conv`] and
//! [`norm`] work on plain
//! NCHW `f32` slices, so they can be tested against Burn's composed ops and measured alone;
//! [`backend`] plugs it into Burn through `burn-backend-extension`, forward and backward.

pub mod backend;
pub mod conv;
pub mod denormal;
pub mod direct;
pub mod norm;

pub use backend::{MIN_POSITIONS, batch_norm_train, conv2d, enabled, kernel_calls, set_enabled};
