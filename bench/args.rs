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
