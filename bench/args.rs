//! Tiny `--name value` argument reader shared by the benchmark examples.

/// The value after `--name`, parsed, or `default` when absent.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot parse '{v}'")),
        None => default,
    }
}

/// The per-sample input shape a zoo model is benchmarked at (MNIST's for the MNIST models,
/// CIFAR-10's otherwise).
#[allow(dead_code)]
pub fn input_shape(model: &str) -> [usize; 3] {
    if matches!(model, "lenet5" | "mlp") {
        [1, 28, 28]
    } else {
        [3, 32, 32]
    }
}
