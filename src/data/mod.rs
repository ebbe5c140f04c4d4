//! Data sets: readers for MNIST IDX, CIFAR-10 binary and image folders (plain or in a
//! `.tar.gz`), a seeded train/validation split, normalisation, augmentation and a batcher that
//! prepares batches on a worker thread while the training step runs.

mod batcher;
mod cifar;
mod folder;
mod mnist;

pub use batcher::{Batch, BatchIter, Batcher, mix as seed_mix};
pub use cifar::{CIFAR10_CLASSES, read_cifar10_binary};
pub use folder::{read_image_folder, read_image_folder_archive, read_image_folder_splits};
pub use mnist::{read_idx_images, read_idx_labels, read_mnist};

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::{LopperError, Result};

/// An in-memory labelled image set: `u8` pixels, `[N, C, H, W]` row-major.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    /// Per-sample `[C, H, W]`.
    pub shape: [usize; 3],
    pub classes: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.sample_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.sample_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
            classes: self.classes.clone(),
        }
    }

    /// A seeded, class-balanced subset of `n` samples (all of them if there are fewer): each
    /// class's samples in a seeded order, taken from the classes in turn, so every class has
    /// `n / classes` samples give or take one (fewer only where a class runs out). The samples
    /// keep their order in the data set. A prefix would not do: archives stored in class order
    /// (CIFAR-10's image folders) would give a single class.
    pub fn limit(&self, n: usize, seed: u64) -> Dataset {
        if n >= self.len() {
            return self.clone();
        }
        let mut per_class: Vec<Vec<usize>> = vec![vec![]; self.classes.len().max(1)];
        for (i, &y) in self.labels.iter().enumerate() {
            let y = (y as usize).min(per_class.len() - 1);
            per_class[y].push(i);
        }
        let mut rng = StdRng::seed_from_u64(seed ^ LIMIT_SALT);
        for c in &mut per_class {
            c.shuffle(&mut rng);
        }
        let mut idx = Vec::with_capacity(n);
        let mut round = 0;
        while idx.len() < n {
            for c in &per_class {
                if idx.len() < n
                    && let Some(&i) = c.get(round)
                {
                    idx.push(i);
                }
            }
            round += 1;
        }
        idx.sort_unstable();
        self.subset(&idx)
    }

    /// Seeded random split into (train, validation) with `round(fraction * N)` validation
    /// samples. The same seed always gives the same split.
    pub fn split(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(LopperError::Config(format!(
                "the validation fraction must be in [0, 1), got {fraction}"
            )));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut StdRng::seed_from_u64(seed ^ SPLIT_SALT));
        let n_val = (fraction * self.len() as f64).round() as usize;
        let (val, train) = idx.split_at(n_val);
        let (mut train, mut val) = (train.to_vec(), val.to_vec());
        train.sort_unstable();
        val.sort_unstable();
        Ok((self.subset(&train), self.subset(&val)))
    }
}

/// A salt so the split's stream differs from the shuffling stream of the same seed.
const SPLIT_SALT: u64 = 0x5EED_5B11;
/// The same for the sample limits' subsets.
const LIMIT_SALT: u64 = 0x11A1_7ED5;

/// The data sets lopper knows by name, with their normalisation and augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    Mnist,
    Cifar10,
}

pub const DATASET_NAMES: &str = "mnist, cifar10";

impl std::str::FromStr for DatasetName {
    type Err = LopperError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mnist" => Ok(DatasetName::Mnist),
            "cifar10" | "cifar-10" => Ok(DatasetName::Cifar10),
            _ => Err(LopperError::Unknown {
                kind: "data set",
                name: s.into(),
                known: DATASET_NAMES.into(),
            }),
        }
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatasetName::Mnist => "mnist",
            DatasetName::Cifar10 => "cifar10",
        })
    }
}

/// Per-channel normalisation and the augmentation a data set trains with.
#[derive(Debug, Clone)]
pub struct Preprocess {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Random crop after zero padding by this many pixels (0: none).
    pub crop_padding: usize,
    pub horizontal_flip: bool,
}

impl DatasetName {
    /// The data set a zoo model is sized for when none is named: MNIST for the MLP and
    /// LeNet-5, CIFAR-10 for the rest.
    pub fn default_for_model(model: &str) -> DatasetName {
        match model {
            "mlp" | "lenet5" => DatasetName::Mnist,
            _ => DatasetName::Cifar10,
        }
    }

    pub fn input_shape(self) -> [usize; 3] {
        match self {
            DatasetName::Mnist => [1, 28, 28],
            DatasetName::Cifar10 => [3, 32, 32],
        }
    }

    pub fn num_classes(self) -> usize {
        10
    }

    /// Standard statistics; augmentation only where the usual recipe has it (CIFAR).
    pub fn preprocess(self) -> Preprocess {
        match self {
            DatasetName::Mnist => Preprocess {
                mean: vec![0.1307],
                std: vec![0.3081],
                crop_padding: 0,
                horizontal_flip: false,
            },
            DatasetName::Cifar10 => Preprocess {
                mean: vec![0.4914, 0.4822, 0.4465],
                std: vec![0.2470, 0.2435, 0.2616],
                crop_padding: 4,
                horizontal_flip: true,
            },
        }
    }

    /// Loads (train, test) from `dir`. MNIST: the four IDX files, gzipped or not. CIFAR-10, in
    /// order of preference: `cifar-10-batches-bin/` (official binary), `cifar10-jpg.tar.gz`
    /// (image folders in an archive, read without extracting), or `cifar10/{train,test}/`
    /// image folders (also accepted directly as `train/` and `test/` under `dir`).
    /// Image folders name their own classes: they must be as many as the data set has (the
    /// models are built for that many outputs), or a label would fall outside the model.
    fn check_classes(self, origin: &Path, sets: (Dataset, Dataset)) -> Result<(Dataset, Dataset)> {
        let found = sets.0.classes.len();
        if found != self.num_classes() {
            return Err(LopperError::bad_file(
                origin,
                format!(
                    "{found} class folders ({}), but {self} has {} classes",
                    sets.0.classes.join(", "),
                    self.num_classes()
                ),
            ));
        }
        Ok(sets)
    }

    pub fn load(self, dir: &Path) -> Result<(Dataset, Dataset)> {
        if !dir.is_dir() {
            return Err(LopperError::bad_file(
                dir,
                "data directory not found (set --data-dir or LOPPER_DATA_DIR)",
            ));
        }
        match self {
            DatasetName::Mnist => {
                let sub = dir.join("mnist");
                let base = if sub.is_dir() { sub } else { dir.to_path_buf() };
                Ok((read_mnist(&base, true)?, read_mnist(&base, false)?))
            }
            DatasetName::Cifar10 => {
                let bin = [dir.join("cifar-10-batches-bin"), dir.to_path_buf()]
                    .into_iter()
                    .find(|d| d.join("test_batch.bin").exists());
                if let Some(bin) = bin {
                    return Ok((
                        read_cifar10_binary(&bin, true)?,
                        read_cifar10_binary(&bin, false)?,
                    ));
                }
                let archive = dir.join("cifar10-jpg.tar.gz");
                if archive.exists() {
                    let mut sets = read_image_folder_archive(&archive, &["train", "test"])?;
                    let test = sets.pop().expect("two splits");
                    let train = sets.pop().expect("two splits");
                    return self.check_classes(&archive, (train, test));
                }
                for root in [dir.join("cifar10"), dir.to_path_buf()] {
                    if root.join("train").is_dir() && root.join("test").is_dir() {
                        let mut sets = read_image_folder_splits(&root, &["train", "test"])?;
                        let test = sets.pop().expect("two splits");
                        let train = sets.pop().expect("two splits");
                        return self.check_classes(&root, (train, test));
                    }
                }
                Err(LopperError::bad_file(
                    dir,
                    "no CIFAR-10 found: expected cifar-10-batches-bin/ (official binary), \
                     cifar10-jpg.tar.gz, or cifar10/train and cifar10/test image folders",
                ))
            }
        }
    }
}

/// The data directory: the given one, else `LOPPER_DATA_DIR`.
/// The data directory the environment names (`LOPPER_DATA_DIR`), if any.
pub fn env_data_dir() -> Option<PathBuf> {
    std::env::var_os("LOPPER_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Where a run that stored `stored` reads its data now: `given` (a flag), else the
/// environment's `LOPPER_DATA_DIR`, else the stored folder (a run moved to another machine,
/// or evaluated from another directory, finds its data where the user says it is now).
pub fn data_dir_for_run(given: Option<&Path>, stored: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(env_data_dir)
        .or_else(|| stored.map(Path::to_path_buf))
}

pub fn resolve_data_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_path_buf());
    }
    match std::env::var_os("LOPPER_DATA_DIR") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => Err(LopperError::Config(
            "no data directory: pass --data-dir DIR or set LOPPER_DATA_DIR".into(),
        )),
    }
}
