//! Choosing the Burn device at run time among the backends compiled in.

use burn::tensor::Device;

use crate::error::{LopperError, Result};

/// Device names this build accepts for `--device`.
pub fn available() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    v
}

/// The plain (inference) device for a name: `cpu` is Burn's pure-Rust `flex` backend.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        "cuda" => cuda(),
        "wgpu" => wgpu(),
        _ => Err(LopperError::Unknown {
            kind: "device",
            name: name.into(),
            known: available().join(", "),
        }),
    }
}

#[cfg(not(all(feature = "cuda", feature = "wgpu")))]
fn not_compiled(name: &str) -> LopperError {
    LopperError::Config(format!(
        "device '{name}' is not compiled into this build; rebuild with `--features {name}` (available: {})",
        available().join(", ")
    ))
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device> {
    Ok(Device::cuda(0))
}
#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device> {
    Err(not_compiled("cuda"))
}

#[cfg(feature = "wgpu")]
fn wgpu() -> Result<Device> {
    Ok(Device::wgpu(Default::default()))
}
#[cfg(not(feature = "wgpu"))]
fn wgpu() -> Result<Device> {
    Err(not_compiled("wgpu"))
}

/// The same device with autodiff, for training.
pub fn training_device(name: &str) -> Result<Device> {
    Ok(device(name)?.autodiff())
}
