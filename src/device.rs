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

/// Runs one small operation on a GPU device, so that a missing driver or adapter is a clear
/// error here instead of a panic in the backend's worker thread at the first tensor op (the
/// backends report it only by panicking). The panic messages are silenced while it runs.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn probe(name: &str, device: Device, hint: &str) -> Result<Device> {
    use burn::tensor::Tensor;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Tensor::<1>::zeros([1], &device).into_data()
    }));
    std::panic::set_hook(hook);
    match ran {
        Ok(_) => Ok(device),
        Err(_) => Err(LopperError::Config(format!(
            "device '{name}' has no usable GPU here: {hint}"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device> {
    probe(
        "cuda",
        Device::cuda(0),
        "it needs an NVIDIA GPU and its driver (libcuda)",
    )
}
#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device> {
    Err(not_compiled("cuda"))
}

#[cfg(feature = "wgpu")]
fn wgpu() -> Result<Device> {
    probe(
        "wgpu",
        Device::wgpu(Default::default()),
        "no adapter was found; on Linux wgpu needs the Vulkan loader (libvulkan1) and the GPU vendor's Vulkan driver (README, \"Backends\")",
    )
}
#[cfg(not(feature = "wgpu"))]
fn wgpu() -> Result<Device> {
    Err(not_compiled("wgpu"))
}

/// The same device with autodiff, for training.
pub fn training_device(name: &str) -> Result<Device> {
    Ok(device(name)?.autodiff())
}
