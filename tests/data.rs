//! Every loader on small files the test writes, corrupt ones included; split and batcher.

use std::path::Path;
use std::sync::Arc;

mod common;
use common::{gz, idx, png};

use lopper::data::{
    Batcher, Dataset, DatasetName, Preprocess, read_cifar10_binary, read_image_folder,
    read_image_folder_archive, read_mnist,
};

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    idx(3, &[n, rows, cols], pixels)
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    idx(1, &[labels.len() as u32], labels)
}

fn write_mnist(dir: &Path, compress: bool) {
    let pixels: Vec<u8> = (0..3 * 4).map(|i| i as u8 * 10).collect();
    let files = [
        ("train-images-idx3-ubyte", idx_images(3, 2, 2, &pixels)),
        ("train-labels-idx1-ubyte", idx_labels(&[7, 0, 9])),
        ("t10k-images-idx3-ubyte", idx_images(1, 2, 2, &[1, 2, 3, 4])),
        ("t10k-labels-idx1-ubyte", idx_labels(&[5])),
    ];
    for (name, bytes) in files {
        if compress {
            std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn mnist_gz_and_raw() {
    for compress in [true, false] {
        let d = tempfile::tempdir().unwrap();
        write_mnist(d.path(), compress);
        let train = read_mnist(d.path(), true).unwrap();
        assert_eq!(train.len(), 3);
        assert_eq!(train.shape, [1, 2, 2]);
        assert_eq!(train.labels, vec![7, 0, 9]);
        assert_eq!(train.image(1), &[40, 50, 60, 70]);
        let test = read_mnist(d.path(), false).unwrap();
        assert_eq!((test.len(), test.labels[0]), (1, 5));
    }
}

#[test]
fn mnist_corrupt_files_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    write_mnist(d.path(), false);
    let img = d.path().join("train-images-idx3-ubyte");
    // Bad magic.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[3] = 1;
    std::fs::write(&img, &bytes).unwrap();
    let e = read_mnist(d.path(), true).unwrap_err().to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("magic"),
        "{e}"
    );
    // Truncated.
    bytes[3] = 3;
    std::fs::write(&img, &bytes[..bytes.len() - 1]).unwrap();
    let e = read_mnist(d.path(), true).unwrap_err().to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("truncated"),
        "{e}"
    );
    // Label count that disagrees with the images.
    std::fs::write(&img, &bytes).unwrap();
    std::fs::write(
        d.path().join("train-labels-idx1-ubyte"),
        idx_labels(&[1, 2]),
    )
    .unwrap();
    let e = read_mnist(d.path(), true).unwrap_err().to_string();
    assert!(e.contains("2 labels for 3 images"), "{e}");
    // Corrupt gzip.
    std::fs::write(
        d.path().join("t10k-images-idx3-ubyte.gz"),
        [0x1f, 0x8b, 8, 0, 1, 2, 3],
    )
    .unwrap();
    let e = read_mnist(d.path(), false).unwrap_err().to_string();
    assert!(
        e.contains("t10k-images-idx3-ubyte.gz") && e.contains("gzip"),
        "{e}"
    );
    // Missing.
    let empty = tempfile::tempdir().unwrap();
    let e = read_mnist(empty.path(), true).unwrap_err().to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("not found"),
        "{e}"
    );
}

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    // Planes R, G, B: R = fill, G = fill + 1, B = fill + 2.
    for c in 0..3 {
        r.extend(std::iter::repeat_n(fill + c, 1024));
    }
    r
}

#[test]
fn cifar_binary_reader() {
    let d = tempfile::tempdir().unwrap();
    for i in 1..=5u8 {
        let mut b = cifar_record(i, 10 * i);
        b.extend(cifar_record(9, 0));
        std::fs::write(d.path().join(format!("data_batch_{i}.bin")), b).unwrap();
    }
    std::fs::write(d.path().join("test_batch.bin"), cifar_record(3, 100)).unwrap();
    let train = read_cifar10_binary(d.path(), true).unwrap();
    assert_eq!(train.len(), 10);
    assert_eq!(train.shape, [3, 32, 32]);
    assert_eq!(&train.labels[..4], &[1, 9, 2, 9]);
    let img = train.image(2);
    assert_eq!((img[0], img[1024], img[2048]), (20, 21, 22));
    let test = read_cifar10_binary(d.path(), false).unwrap();
    assert_eq!((test.len(), test.labels[0]), (1, 3));
    // The same files found through the data set name.
    let nested = tempfile::tempdir().unwrap();
    let bin = nested.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&bin).unwrap();
    for f in std::fs::read_dir(d.path()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, bin.join(f.file_name().unwrap())).unwrap();
    }
    let (tr, te) = DatasetName::Cifar10.load(nested.path()).unwrap();
    assert_eq!((tr.len(), te.len()), (10, 1));

    // Wrong record size and a bad label.
    std::fs::write(d.path().join("test_batch.bin"), vec![0u8; 3072]).unwrap();
    let e = read_cifar10_binary(d.path(), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test_batch.bin") && e.contains("3073-byte records"),
        "{e}"
    );
    std::fs::write(d.path().join("test_batch.bin"), cifar_record(12, 0)).unwrap();
    let e = read_cifar10_binary(d.path(), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test_batch.bin") && e.contains("label 12"),
        "{e}"
    );
}

#[test]
fn image_folder_and_archive() {
    let d = tempfile::tempdir().unwrap();
    for split in ["train", "test"] {
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            let dir = d.path().join("cifar10").join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..2u8 {
                std::fs::write(dir.join(format!("{i}.png")), png(3, 2, 50 * c as u8 + i)).unwrap();
            }
        }
    }
    let train = read_image_folder(&d.path().join("cifar10/train")).unwrap();
    assert_eq!(train.shape, [3, 2, 3]);
    assert_eq!(train.classes, vec!["cat", "dog"]);
    assert_eq!(train.labels, vec![0, 0, 1, 1]);
    // Planar CHW: R plane constant (the seed), G = x, B = y.
    assert_eq!(
        train.image(3),
        &[51, 51, 51, 51, 51, 51, 0, 1, 2, 0, 1, 2, 0, 0, 0, 1, 1, 1]
    );

    // The same folders in a .tar.gz, read without extracting.
    let archive = d.path().join("cifar10-jpg.tar.gz");
    tar_gz(&d.path().join("cifar10"), &archive);
    let sets = read_image_folder_archive(&archive, &["train", "test"]).unwrap();
    assert_eq!(sets[0].images, train.images);
    assert_eq!(sets[0].labels, train.labels);
    assert_eq!(sets[1].len(), 4);

    // An undecodable image is named.
    let bad = d.path().join("cifar10/train/dog/broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let e = read_image_folder(&d.path().join("cifar10/train"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.png") && e.contains("decode"), "{e}");
    // A truncated archive is one clear error.
    let bytes = std::fs::read(&archive).unwrap();
    let cut = d.path().join("cut.tar.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_image_folder_archive(&cut, &["train", "test"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.tar.gz"), "{e}");
}

/// Packs the folder `from` into the `.tar.gz` `to`.
fn tar_gz(from: &Path, to: &Path) {
    let f = std::fs::File::create(to).unwrap();
    let mut t = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::fast(),
    ));
    t.append_dir_all(".", from).unwrap();
    t.into_inner().unwrap().finish().unwrap();
}

fn toy(n: usize) -> Dataset {
    Dataset {
        images: (0..n * 3 * 4 * 4).map(|i| (i % 251) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
        shape: [3, 4, 4],
        classes: (0..10).map(|i| i.to_string()).collect(),
    }
}

#[test]
fn split_is_seeded_and_disjoint() {
    let data = toy(100);
    let (a, va) = data.split(0.1, 1).unwrap();
    let (b, vb) = data.split(0.1, 1).unwrap();
    let (_, vc) = data.split(0.1, 2).unwrap();
    assert_eq!((a.len(), va.len()), (90, 10));
    assert_eq!(va.images, vb.images);
    assert_eq!(a.images, b.images);
    assert_ne!(va.images, vc.images);
    assert!(data.split(1.0, 0).is_err());
}

#[test]
fn batches_are_normalised_deterministic_and_augmented() {
    let data = Arc::new(toy(10));
    let pre = Preprocess {
        mean: vec![0.5, 0.5, 0.5],
        std: vec![0.25, 0.25, 0.25],
        crop_padding: 1,
        horizontal_flip: true,
    };
    let eval = Batcher::new(data.clone(), 4, pre.clone(), false);
    let batches: Vec<_> = eval.epoch(0, 0, 0).collect();
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    // No augmentation in evaluation: pixel p becomes (p/255 - 0.5)/0.25, in order.
    let expect: Vec<f32> = data
        .image(0)
        .iter()
        .map(|&p| (p as f32 / 255.0 - 0.5) / 0.25)
        .collect();
    let got = &batches[0].images[..48];
    assert!(got.iter().zip(&expect).all(|(a, b)| (a - b).abs() < 1e-5));

    let train = Batcher::new(data.clone(), 4, pre, true);
    assert_eq!(train.num_batches(), 2); // the last partial batch is dropped
    let e0: Vec<_> = train.epoch(5, 0, 0).collect();
    let again: Vec<_> = train.epoch(5, 0, 0).collect();
    let e1: Vec<_> = train.epoch(5, 1, 0).collect();
    assert_eq!(e0[0].images, again[0].images);
    assert_eq!(e0[1].labels, again[1].labels);
    assert_ne!(e0[0].images, e1[0].images);
    // Skipping batches (resume) gives the same later batches.
    let skipped: Vec<_> = train.epoch(5, 0, 1).collect();
    assert_eq!(skipped[0].images, e0[1].images);
    // Augmentation moved pixels: some training image differs from its plain version.
    let plain: Vec<f32> = (0..10)
        .flat_map(|i| {
            data.image(i)
                .iter()
                .map(|&p| (p as f32 / 255.0 - 0.5) / 0.25)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        e0[0]
            .images
            .chunks(48)
            .any(|img| !plain.chunks(48).any(|p| p == img))
    );
}

/// Sample limits take a seeded, class-balanced subset: a data set stored in class order (as
/// CIFAR-10's image folders are) still gives every class, each about equally.
#[test]
fn limits_are_seeded_and_class_balanced() {
    let n_per = 50;
    let ordered = Dataset {
        // Each sample's two pixels spell its index.
        images: (0..10 * n_per)
            .flat_map(|i| [(i / 256) as u8, (i % 256) as u8])
            .collect(),
        labels: (0..10 * n_per).map(|i| (i / n_per) as u8).collect(),
        shape: [1, 1, 2],
        classes: (0..10).map(|i| i.to_string()).collect(),
    };
    let count = |d: &Dataset| {
        let mut c = [0usize; 10];
        for &y in &d.labels {
            c[y as usize] += 1;
        }
        c
    };
    let a = ordered.limit(105, 7);
    assert_eq!(a.len(), 105);
    let c = count(&a);
    assert!(c.iter().all(|&k| k == 10 || k == 11), "{c:?}");
    // The same seed picks the same samples; another seed others; the order is kept.
    assert_eq!(a.images, ordered.limit(105, 7).images);
    assert_ne!(a.images, ordered.limit(105, 8).images);
    let index: Vec<usize> = a
        .images
        .chunks(2)
        .map(|p| 256 * p[0] as usize + p[1] as usize)
        .collect();
    assert!(index.windows(2).all(|w| w[0] < w[1]), "{index:?}");
    // A class with few samples gives what it has and the others fill in.
    let skewed = ordered.subset(&(0..(9 * n_per + 3)).collect::<Vec<_>>());
    let c = count(&skewed.limit(100, 1));
    assert_eq!(c[9], 3, "{c:?}");
    assert_eq!(c.iter().sum::<usize>(), 100);
    // A limit at or over the size keeps everything.
    assert_eq!(ordered.limit(10_000, 3).len(), ordered.len());
}

/// The CIFAR-10 archive is stored in class order: a limited load still has all ten classes.
#[test]
fn limited_cifar10_has_every_class() {
    let Some(dir) = std::env::var_os("LOPPER_DATA_DIR") else {
        eprintln!("LOPPER_DATA_DIR is not set: skipping the real-data test");
        return;
    };
    let cfg = lopper::train::TrainConfig {
        dataset: DatasetName::Cifar10,
        data_dir: Some(dir.into()),
        train_limit: Some(200),
        test_limit: Some(100),
        ..lopper::train::TrainConfig::default()
    };
    let data = lopper::train::load_data(&cfg).unwrap();
    for (split, d) in [("train", &data.train), ("test", &*data.test)] {
        let mut c = [0usize; 10];
        for &y in &d.labels {
            c[y as usize] += 1;
        }
        assert!(c.iter().all(|&k| k == d.len() / 10), "{split}: {c:?}");
    }
}

/// Image folders: one class list for both splits. A class folder in one split only is one
/// clear error at load time (an extra one in train used to panic after an epoch, a missing one
/// in test shifted its labels); so is a class count the data set does not have.
#[test]
fn image_folder_splits_share_their_classes() {
    let d = tempfile::tempdir().unwrap();
    let write = |split: &str, class: &str| {
        let dir = d.path().join("cifar10").join(split).join(class);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.png"), png(3, 2, 7)).unwrap();
    };
    let classes = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for c in classes {
        write("train", c);
        write("test", c);
    }
    let (train, test) = DatasetName::Cifar10.load(d.path()).unwrap();
    assert_eq!(train.classes, test.classes);
    assert_eq!(test.labels, (0..10).collect::<Vec<u8>>());

    // A class the test split lacks: an error naming it, not shifted labels.
    std::fs::remove_dir_all(d.path().join("cifar10/test/c")).unwrap();
    let e = DatasetName::Cifar10.load(d.path()).unwrap_err().to_string();
    assert!(e.contains("'c'") && e.contains("test"), "{e}");
    write("test", "c");
    // An extra class in the training split only.
    write("train", "k");
    let e = DatasetName::Cifar10.load(d.path()).unwrap_err().to_string();
    assert!(e.contains("'k'") && e.contains("test"), "{e}");
    // Eleven classes in both: CIFAR-10 has ten.
    write("test", "k");
    let e = DatasetName::Cifar10.load(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("11 class folders") && e.contains("10 classes"),
        "{e}"
    );

    // The same checks on the archive form.
    std::fs::remove_dir_all(d.path().join("cifar10/test/k")).unwrap();
    let archive = d.path().join("cifar10-jpg.tar.gz");
    tar_gz(&d.path().join("cifar10"), &archive);
    let e = read_image_folder_archive(&archive, &["train", "test"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("'k'") && e.contains("test"), "{e}");
}
