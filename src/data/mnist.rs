//! MNIST in the IDX format (LeCun's), gzip-compressed or raw.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::Dataset;
use crate::error::{LopperError, Result};
use crate::fsutil;

/// Reads a file, transparently gunzipping it when it starts with the gzip magic.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = fsutil::read(path)?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| LopperError::bad_file(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads an IDX3 image file: returns (pixels, count, rows, cols).
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let b = read_maybe_gz(path)?;
    if b.len() < 16 || be_u32(&b, 0) != 0x0803 {
        return Err(LopperError::bad_file(
            path,
            "not an IDX image file (expected magic 0x00000803 and a 16-byte header)",
        ));
    }
    let (n, rows, cols) = (
        be_u32(&b, 4) as usize,
        be_u32(&b, 8) as usize,
        be_u32(&b, 12) as usize,
    );
    // Checked: a corrupt header's sizes can multiply past usize.
    let expected = n
        .checked_mul(rows)
        .and_then(|x| x.checked_mul(cols))
        .and_then(|x| x.checked_add(16));
    if expected != Some(b.len()) {
        let expected =
            expected.map_or_else(|| "more than can be addressed".into(), |e| e.to_string());
        return Err(LopperError::bad_file(
            path,
            format!(
                "truncated or oversized IDX image file: header says {n} images of {rows}x{cols} \
                 ({expected} bytes), file has {} bytes",
                b.len()
            ),
        ));
    }
    Ok((b[16..].to_vec(), n, rows, cols))
}

/// Reads an IDX1 label file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let b = read_maybe_gz(path)?;
    if b.len() < 8 || be_u32(&b, 0) != 0x0801 {
        return Err(LopperError::bad_file(
            path,
            "not an IDX label file (expected magic 0x00000801 and an 8-byte header)",
        ));
    }
    let n = be_u32(&b, 4) as usize;
    if b.len() != 8 + n {
        return Err(LopperError::bad_file(
            path,
            format!(
                "truncated or oversized IDX label file: header says {n} labels, file has {} bytes of labels",
                b.len() - 8
            ),
        ));
    }
    if let Some(bad) = b[8..].iter().find(|&&l| l > 9) {
        return Err(LopperError::bad_file(
            path,
            format!("label {bad} is not a digit 0-9"),
        ));
    }
    Ok(b[8..].to_vec())
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(LopperError::bad_file(
        dir.join(format!("{stem}.gz")),
        format!("MNIST file not found (expected {stem} or {stem}.gz in this folder)"),
    ))
}

/// Reads the MNIST training (`train = true`) or test split from `dir`.
pub fn read_mnist(dir: &Path, train: bool) -> Result<Dataset> {
    let prefix = if train { "train" } else { "t10k" };
    let img_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lbl_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (images, n, rows, cols) = read_idx_images(&img_path)?;
    let labels = read_idx_labels(&lbl_path)?;
    if labels.len() != n {
        return Err(LopperError::bad_file(
            &lbl_path,
            format!(
                "{} labels for {n} images in {}",
                labels.len(),
                img_path.display()
            ),
        ));
    }
    Ok(Dataset {
        images,
        labels,
        shape: [1, rows, cols],
        classes: (0..10).map(|d| d.to_string()).collect(),
    })
}
