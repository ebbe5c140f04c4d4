//! Image folders: one subfolder per class (`root/<class>/<file>.jpg|png`), read from disk or
//! straight from a `.tar.gz` archive. Classes are the subfolder names in sorted order.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::Dataset;
use crate::error::{LopperError, Result};
use crate::fsutil;

/// One encoded image waiting to be decoded: where it came from, its class, its bytes.
struct Encoded {
    origin: PathBuf,
    class: String,
    bytes: Vec<u8>,
}

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e))
}

/// Decodes images on all cores into one data set; every image must have the first one's size.
fn decode_all(items: Vec<Encoded>, classes: &[String], what: &Path) -> Result<Dataset> {
    if items.is_empty() {
        return Err(LopperError::bad_file(
            what,
            "no images found (expected <class>/<name>.jpg or .png)",
        ));
    }
    let decode = |e: &Encoded| -> Result<image::DynamicImage> {
        image::load_from_memory(&e.bytes)
            .map_err(|err| LopperError::bad_file(&e.origin, format!("cannot decode image: {err}")))
    };
    let first = decode(&items[0])?;
    let channels = if first.color().has_color() { 3 } else { 1 };
    let (w, h) = (first.width() as usize, first.height() as usize);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads);
    let parts: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::with_capacity(part.len() * channels * h * w);
                    for e in part {
                        let img = decode(e)?;
                        if img.width() as usize != w || img.height() as usize != h {
                            return Err(LopperError::bad_file(
                                &e.origin,
                                format!(
                                    "image is {}x{}, expected {w}x{h} like the others",
                                    img.width(),
                                    img.height()
                                ),
                            ));
                        }
                        // Interleaved HWC to planar CHW.
                        let raw = if channels == 3 {
                            img.to_rgb8().into_raw()
                        } else {
                            img.to_luma8().into_raw()
                        };
                        for c in 0..channels {
                            out.extend(raw.iter().skip(c).step_by(channels));
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LopperError::Graph("decoder thread panicked".into())))
            })
            .collect()
    });
    let mut images = Vec::with_capacity(items.len() * channels * h * w);
    for p in parts {
        images.extend(p?);
    }
    let labels = items
        .iter()
        .map(|e| classes.iter().position(|c| *c == e.class).unwrap_or(0) as u8)
        .collect();
    Ok(Dataset {
        images,
        labels,
        shape: [channels, h, w],
        classes: classes.to_vec(),
    })
}

/// Reads `root/<class>/*.{jpg,png}`.
pub fn read_image_folder(root: &Path) -> Result<Dataset> {
    let read_dir = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| LopperError::io(d, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let classes: Vec<PathBuf> = read_dir(root)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.len() > 256 {
        return Err(LopperError::bad_file(root, "more than 256 class folders"));
    }
    let names: Vec<String> = classes
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let mut items = vec![];
    for (dir, class) in classes.iter().zip(&names) {
        for f in read_dir(dir)? {
            if f.is_file() && is_image(&f.to_string_lossy()) {
                items.push(Encoded {
                    bytes: fsutil::read(&f)?,
                    origin: f,
                    class: class.clone(),
                });
            }
        }
    }
    decode_all(items, &names, root)
}

/// Reads image folders straight from a `.tar.gz`: for each split name (e.g. `train`), the
/// entries `…/<split>/<class>/<file>` form one data set. Classes are shared by all splits.
pub fn read_image_folder_archive(archive: &Path, splits: &[&str]) -> Result<Vec<Dataset>> {
    let file = std::fs::File::open(archive).map_err(|e| LopperError::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let corrupt = |e: std::io::Error| {
        LopperError::bad_file(archive, format!("corrupt or truncated tar.gz archive: {e}"))
    };
    let mut per_split: BTreeMap<usize, Vec<Encoded>> = BTreeMap::new();
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(corrupt)?.into_owned();
        let parts: Vec<String> = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.len() < 3 || !is_image(&parts[parts.len() - 1]) {
            continue;
        }
        let (split, class) = (&parts[parts.len() - 3], &parts[parts.len() - 2]);
        let Some(s) = splits.iter().position(|x| x == split) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(corrupt)?;
        per_split.entry(s).or_default().push(Encoded {
            origin: archive.join(&path),
            class: class.clone(),
            bytes,
        });
    }
    let mut classes: Vec<String> = per_split
        .values()
        .flatten()
        .map(|e| e.class.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    classes.dedup();
    let mut out = vec![];
    for (s, name) in splits.iter().enumerate() {
        let mut items = per_split.remove(&s).unwrap_or_default();
        if items.is_empty() {
            return Err(LopperError::bad_file(
                archive,
                format!("no images under a '{name}/<class>/' folder in the archive"),
            ));
        }
        // Archive order is arbitrary; sort so the data set is the same for every packing.
        items.sort_by(|a, b| (&a.class, &a.origin).cmp(&(&b.class, &b.origin)));
        out.push(decode_all(items, &classes, archive)?);
    }
    Ok(out)
}
