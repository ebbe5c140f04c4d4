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

fn sorted_entries(d: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .map_err(|e| LopperError::io(d, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// The class folders of `root`, by name, sorted.
fn class_names(root: &Path) -> Result<Vec<String>> {
    let names: Vec<String> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    if names.len() > 256 {
        return Err(LopperError::bad_file(root, "more than 256 class folders"));
    }
    Ok(names)
}

/// Reads `root/<class>/*.{jpg,png}` with the labels of `classes` (a class folder not in the
/// list is an error).
fn read_classes(root: &Path, classes: &[String]) -> Result<Dataset> {
    let mut items = vec![];
    for class in class_names(root)? {
        if !classes.contains(&class) {
            return Err(LopperError::bad_file(
                root.join(&class),
                "a class folder the other split does not have",
            ));
        }
        for f in sorted_entries(&root.join(&class))? {
            if f.is_file() && is_image(&f.to_string_lossy()) {
                items.push(Encoded {
                    bytes: fsutil::read(&f)?,
                    origin: f,
                    class: class.clone(),
                });
            }
        }
    }
    decode_all(items, classes, root)
}

/// Reads `root/<class>/*.{jpg,png}`; the classes are its folders in sorted order.
pub fn read_image_folder(root: &Path) -> Result<Dataset> {
    read_classes(root, &class_names(root)?)
}

/// The same classes in every split, or an error naming the first class a split lacks: each
/// split listing its own classes would shift the labels of the one with a class missing.
fn same_classes(per_split: &[(String, Vec<String>)], origin: &Path) -> Result<Vec<String>> {
    let all: std::collections::BTreeSet<&String> =
        per_split.iter().flat_map(|(_, c)| c.iter()).collect();
    for (split, classes) in per_split {
        if let Some(missing) = all.iter().find(|c| !classes.contains(c)) {
            return Err(LopperError::bad_file(
                origin,
                format!(
                    "class '{missing}' is in another split but not in '{split}': every split needs the same class folders"
                ),
            ));
        }
    }
    Ok(all.into_iter().cloned().collect())
}

/// Reads `root/<split>/<class>/*` for each split with one class list: every split must have
/// the same class folders.
pub fn read_image_folder_splits(root: &Path, splits: &[&str]) -> Result<Vec<Dataset>> {
    let per_split = splits
        .iter()
        .map(|s| Ok((s.to_string(), class_names(&root.join(s))?)))
        .collect::<Result<Vec<_>>>()?;
    let classes = same_classes(&per_split, root)?;
    splits
        .iter()
        .map(|s| read_classes(&root.join(s), &classes))
        .collect()
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
    let listed = splits
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let classes: std::collections::BTreeSet<String> = per_split
                .get(&i)
                .into_iter()
                .flatten()
                .map(|e| e.class.clone())
                .collect();
            (
                name.to_string(),
                classes.into_iter().collect::<Vec<String>>(),
            )
        })
        .collect::<Vec<_>>();
    let classes = if listed.iter().all(|(_, c)| !c.is_empty()) {
        same_classes(&listed, archive)?
    } else {
        vec![]
    };
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
