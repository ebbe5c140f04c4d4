//! Batches: shuffling, augmentation and normalisation done on a worker thread, one batch ahead
//! of the training step. Everything random is seeded by (seed, epoch, batch), so an epoch's
//! batches are the same whatever the thread timing, and a resumed run sees the same data.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{Dataset, Preprocess};

/// One prepared batch: normalised `f32` images `[n, C, H, W]` and labels.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub shape: [usize; 3],
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images as a `[n, C, H, W]` tensor and labels as an `[n]` integer tensor.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let [c, h, w] = self.shape;
        let x = Tensor::from_data(
            TensorData::new(self.images.clone(), [self.len(), c, h, w]),
            device,
        );
        let labels: Vec<i64> = self.labels.iter().map(|&l| l as i64).collect();
        let y = Tensor::from_data(TensorData::new(labels, [self.len()]), device);
        (x, y)
    }
}

/// Cuts a data set into batches, epoch by epoch.
#[derive(Clone)]
pub struct Batcher {
    data: Arc<Dataset>,
    pub batch_size: usize,
    preprocess: Preprocess,
    /// Training mode: shuffle, augment, drop the last incomplete batch.
    train: bool,
}

/// Mixes numbers into one seed (SplitMix64 steps).
pub fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E3779B97F4A7C15;
    for &p in parts {
        h ^= p
            .wrapping_add(0x9E3779B97F4A7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D049BB133111EB);
        h ^= h >> 31;
    }
    h
}

impl Batcher {
    pub fn new(data: Arc<Dataset>, batch_size: usize, preprocess: Preprocess, train: bool) -> Self {
        Batcher {
            data,
            batch_size: batch_size.max(1),
            preprocess,
            train,
        }
    }

    /// The same samples in shuffled training batches of `batch_size` (DSA's ratio steps draw
    /// such batches from the validation split).
    pub fn shuffled(&self, batch_size: usize) -> Batcher {
        Batcher::new(self.data.clone(), batch_size, self.preprocess.clone(), true)
    }

    /// Other samples, prepared the way this batcher prepares its own.
    pub fn with_dataset(&self, data: Dataset, batch_size: usize) -> Batcher {
        Batcher::new(
            Arc::new(data),
            batch_size,
            self.preprocess.clone(),
            self.train,
        )
    }

    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.data.len();
        if self.train && n >= self.batch_size {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The sample order of an epoch.
    fn order(&self, seed: u64, epoch: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.data.len()).collect();
        if self.train {
            idx.shuffle(&mut StdRng::seed_from_u64(mix(&[seed, epoch as u64, 1])));
        }
        idx
    }

    /// Builds batch `b` of an epoch's `order`.
    fn make(&self, order: &[usize], seed: u64, epoch: usize, b: usize) -> Batch {
        let [c, h, w] = self.data.shape;
        let idx = &order[b * self.batch_size..((b + 1) * self.batch_size).min(order.len())];
        let mut rng = StdRng::seed_from_u64(mix(&[seed, epoch as u64, b as u64, 2]));
        let p = &self.preprocess;
        let scale: Vec<f32> = p.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let shift: Vec<f32> = p.mean.iter().zip(&p.std).map(|(m, s)| -m / s).collect();
        let mut images = Vec::with_capacity(idx.len() * c * h * w);
        for &i in idx {
            let img = self.data.image(i);
            let pad = if self.train { p.crop_padding as i64 } else { 0 };
            let (dy, dx) = if pad > 0 {
                (rng.random_range(-pad..=pad), rng.random_range(-pad..=pad))
            } else {
                (0, 0)
            };
            let flip = self.train && p.horizontal_flip && rng.random_bool(0.5);
            for ch in 0..c {
                let (sc, sh) = (scale[ch % scale.len()], shift[ch % shift.len()]);
                let plane = &img[ch * h * w..(ch + 1) * h * w];
                for y in 0..h as isize {
                    for x in 0..w as isize {
                        let sx = if flip { w as isize - 1 - x } else { x } + dx as isize;
                        let sy = y + dy as isize;
                        // Pixels from the zero padding are black, as torchvision pads.
                        let v = if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                            plane[sy as usize * w + sx as usize]
                        } else {
                            0
                        };
                        images.push(v as f32 * sc + sh);
                    }
                }
            }
        }
        Batch {
            images,
            labels: idx.iter().map(|&i| self.data.labels[i]).collect(),
            shape: [c, h, w],
        }
    }

    /// The batches of one epoch, prepared on a worker thread (two batches ahead), starting at
    /// batch `skip`.
    pub fn epoch(&self, seed: u64, epoch: usize, skip: usize) -> BatchIter {
        let (tx, rx) = sync_channel(2);
        let this = self.clone();
        let handle = std::thread::spawn(move || {
            let order = this.order(seed, epoch);
            for b in skip..this.num_batches() {
                if tx.send(this.make(&order, seed, epoch, b)).is_err() {
                    break; // the consumer stopped early
                }
            }
        });
        BatchIter {
            rx: Some(rx),
            handle: Some(handle),
        }
    }
}

/// Iterator over prepared batches; dropping it stops the worker.
pub struct BatchIter {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for BatchIter {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
