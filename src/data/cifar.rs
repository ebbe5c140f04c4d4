//! CIFAR-10 in the official binary layout: records of 1 label byte + 3072 pixel bytes
//! (planes R, G, B, each 32x32 row-major).

use std::path::Path;

use super::Dataset;
use crate::error::{LopperError, Result};
use crate::fsutil;

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const RECORD: usize = 1 + 3 * 32 * 32;

/// Reads `data_batch_1.bin` ... `data_batch_5.bin` (train) or `test_batch.bin` from `dir`.
pub fn read_cifar10_binary(dir: &Path, train: bool) -> Result<Dataset> {
    let files: Vec<String> = if train {
        (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
    } else {
        vec!["test_batch.bin".into()]
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let path = dir.join(&f);
        if !path.exists() {
            return Err(LopperError::bad_file(
                &path,
                "CIFAR-10 binary batch not found (expected data_batch_1..5.bin and test_batch.bin)",
            ));
        }
        let bytes = fsutil::read(&path)?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(LopperError::bad_file(
                &path,
                format!(
                    "wrong size for CIFAR-10 binary: {} bytes is not a whole number of {RECORD}-byte records",
                    bytes.len()
                ),
            ));
        }
        for (r, rec) in bytes.chunks_exact(RECORD).enumerate() {
            if rec[0] > 9 {
                return Err(LopperError::bad_file(
                    &path,
                    format!("record {r} has label {} (expected 0-9)", rec[0]),
                ));
            }
            labels.push(rec[0]);
            images.extend_from_slice(&rec[1..]);
        }
    }
    Ok(Dataset {
        images,
        labels,
        shape: [3, 32, 32],
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}
