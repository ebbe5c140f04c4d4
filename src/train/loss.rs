//! The training loss.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

/// Mean cross-entropy of `logits` `[N, K]` against `labels`, with label smoothing `eps`
/// (the target puts `1 - eps + eps/K` on the label and `eps/K` elsewhere).
pub fn cross_entropy(logits: Tensor<2>, labels: &[u8], eps: f64, device: &Device) -> Tensor<1> {
    let [n, k] = logits.dims();
    let off = (eps / k as f64) as f32;
    let on = (1.0 - eps) as f32 + off;
    let mut target = vec![off; n * k];
    for (i, &y) in labels.iter().enumerate() {
        target[i * k + y as usize] = on;
    }
    let target = Tensor::<2>::from_data(TensorData::new(target, [n, k]), device);
    (log_softmax(logits, 1) * target)
        .sum()
        .neg()
        .div_scalar(n as f64)
}
