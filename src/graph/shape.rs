//! Shape inference: the per-sample output shape of an op from its inputs' shapes.

use super::Op;

fn spatial_out(
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = size + 2 * pad;
    if kernel == 0 || stride == 0 || padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

fn one_input<'a>(inputs: &[&'a [usize]]) -> Result<&'a [usize], String> {
    match inputs {
        [x] => Ok(x),
        _ => Err(format!("expects one input, got {}", inputs.len())),
    }
}

fn chw(x: &[usize]) -> Result<[usize; 3], String> {
    match x {
        [c, h, w] => Ok([*c, *h, *w]),
        _ => Err(format!("expects a [C, H, W] input, got {x:?}")),
    }
}

/// Infers the output shape of `op` applied to inputs of the given per-sample shapes.
pub fn infer(op: &Op, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
    match op {
        Op::Input { shape } => {
            if !inputs.is_empty() {
                return Err("an input node takes no inputs".into());
            }
            if shape.is_empty() || shape.contains(&0) {
                return Err(format!("invalid input shape {shape:?}"));
            }
            Ok(shape.clone())
        }
        Op::Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            ..
        } => {
            let [c, h, w] = chw(one_input(inputs)?)?;
            if c != *in_channels {
                return Err(format!(
                    "conv expects {in_channels} input channels, got {c}"
                ));
            }
            if *groups == 0 || in_channels % groups != 0 || out_channels % groups != 0 {
                return Err(format!(
                    "groups {groups} must divide in ({in_channels}) and out ({out_channels}) channels"
                ));
            }
            let ho = spatial_out(h, kernel[0], stride[0], padding[0], dilation[0]);
            let wo = spatial_out(w, kernel[1], stride[1], padding[1], dilation[1]);
            match (ho, wo) {
                (Some(ho), Some(wo)) if *out_channels > 0 => Ok(vec![*out_channels, ho, wo]),
                _ => Err(format!("kernel {kernel:?} does not fit input {h}x{w}")),
            }
        }
        Op::BatchNorm2d { channels, .. } => {
            let [c, h, w] = chw(one_input(inputs)?)?;
            if c != *channels {
                return Err(format!("batch norm expects {channels} channels, got {c}"));
            }
            Ok(vec![c, h, w])
        }
        Op::Linear {
            in_features,
            out_features,
            ..
        } => {
            let x = one_input(inputs)?;
            match x.last() {
                Some(f) if f == in_features && (x.len() == 1 || x.len() == 2) => {
                    let mut out = x.to_vec();
                    *out.last_mut().expect("non-empty") = *out_features;
                    Ok(out)
                }
                _ => Err(format!(
                    "linear expects [{in_features}] or [T, {in_features}] input, got {x:?}"
                )),
            }
        }
        Op::Relu | Op::Relu6 | Op::Gelu | Op::Dropout { .. } => Ok(one_input(inputs)?.to_vec()),
        Op::MaxPool2d {
            kernel,
            stride,
            padding,
        }
        | Op::AvgPool2d {
            kernel,
            stride,
            padding,
        } => {
            let [c, h, w] = chw(one_input(inputs)?)?;
            if padding[0] * 2 > kernel[0] || padding[1] * 2 > kernel[1] {
                return Err("pool padding must be at most half the kernel".into());
            }
            let ho = spatial_out(h, kernel[0], stride[0], padding[0], 1);
            let wo = spatial_out(w, kernel[1], stride[1], padding[1], 1);
            match (ho, wo) {
                (Some(ho), Some(wo)) => Ok(vec![c, ho, wo]),
                _ => Err(format!("pool kernel {kernel:?} does not fit input {h}x{w}")),
            }
        }
        Op::GlobalAvgPool => {
            let [c, _, _] = chw(one_input(inputs)?)?;
            Ok(vec![c])
        }
        Op::Add => {
            if inputs.len() < 2 {
                return Err("add needs at least two inputs".into());
            }
            if inputs.iter().any(|s| *s != inputs[0]) {
                return Err(format!("add inputs differ in shape: {inputs:?}"));
            }
            Ok(inputs[0].to_vec())
        }
        Op::Concat => {
            if inputs.len() < 2 {
                return Err("concat needs at least two inputs".into());
            }
            let rest = &inputs[0][1..];
            if inputs.iter().any(|s| s.is_empty() || &s[1..] != rest) {
                return Err(format!(
                    "concat inputs differ beyond the channel axis: {inputs:?}"
                ));
            }
            let mut out = inputs[0].to_vec();
            out[0] = inputs.iter().map(|s| s[0]).sum();
            Ok(out)
        }
        Op::Flatten => {
            let x = one_input(inputs)?;
            Ok(vec![x.iter().product()])
        }
        Op::LayerNorm { dim, .. } => {
            let x = one_input(inputs)?;
            if x.last() != Some(dim) {
                return Err(format!("layer norm over {dim} features, got input {x:?}"));
            }
            Ok(x.to_vec())
        }
    }
}
