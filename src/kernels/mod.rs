//! Hand-written CPU kernels for the training step on the default (`flex`) backend: the
//! convolutions and BatchNorm that take 98% of a ResNet-20 step there (issue 26). They work on
//! plain NCHW `f32` slices, so they can be tested against Burn's composed ops and measured
//! alone before they are plugged into the backend through `burn-backend-extension`.

pub mod conv;
