//! A fuzz harness for every parser of user files, on stable Rust: each target starts from
//! valid seed files this test writes, mutates them (bit flips, interesting values, cuts,
//! splices, repeated chunks; tokens for the text formats) and feeds them to the loader, which
//! must answer with a value or an error, never a panic, a hang or an unbounded allocation.
//!
//! CI runs each target for a couple of seconds. A long run:
//!
//!   LOPPER_FUZZ_SECONDS=600 cargo test --test fuzz -- --nocapture --test-threads 2
//!
//! prints each target's count of inputs. A panicking input is copied to
//! `target/fuzz/crashes/`; an input being parsed when the process aborts (a huge allocation
//! or the 30-second hang watchdog) is left in `target/fuzz/<target>/`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

mod common;
use common::{gz, idx, png};

/// Refuses single allocations over 2 GiB: a loader that trusts a length field in a file would
/// otherwise take the machine's memory. The process aborts with the input left on disk.
struct Guarded;

const MAX_ALLOCATION: usize = 2 << 30;

unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            let _ = writeln!(
                std::io::stderr(),
                "fuzz: an allocation of {} bytes was requested: unbounded allocation",
                layout.size()
            );
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            let _ = writeln!(
                std::io::stderr(),
                "fuzz: a reallocation to {new_size} bytes was requested: unbounded allocation"
            );
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Guarded = Guarded;

fn seconds() -> f64 {
    std::env::var("LOPPER_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

/// Mutates `data` with 1 to 8 random edits; `tokens` are spliced into text formats.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, tokens: &[&str]) {
    const INTERESTING: [u32; 8] = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF];
    for _ in 0..rng.random_range(1..=8) {
        let len = data.len();
        match rng.random_range(0..10) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            2 if len >= 4 => {
                let i = rng.random_range(0..=len - 4);
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let b = if rng.random() {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                data[i..i + 4].copy_from_slice(&b);
            }
            3 if len > 0 => data.truncate(rng.random_range(0..len)),
            4 => {
                let n = rng.random_range(1..64);
                let at = rng.random_range(0..=len);
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(at..at, junk);
            }
            5 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..len.min(a + 256));
                let chunk = data[a..=b].to_vec();
                let at = rng.random_range(0..=len);
                data.splice(at..at, chunk);
            }
            6 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..len.min(a + 64) + 1).min(len);
                data.drain(a..b);
            }
            7 | 8 if !tokens.is_empty() => {
                let t = tokens[rng.random_range(0..tokens.len())].as_bytes();
                let at = rng.random_range(0..=len);
                data.splice(at..at, t.iter().copied());
            }
            _ if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = INTERESTING[rng.random_range(0..INTERESTING.len())] as u8;
            }
            _ => data.push(rng.random()),
        }
    }
}

/// The files of one input: (file name in the target's folder, bytes).
type Files = Vec<(String, Vec<u8>)>;

/// Runs a target for the configured time: each round mutates one file of a seed input (or of
/// an earlier input that was accepted: mutations of valid-looking files go deeper), writes the
/// input into the target's folder and calls `parse` on it. Returns the inputs tried.
fn fuzz(
    name: &str,
    seeds: Vec<Files>,
    tokens: &[&str],
    transform: impl Fn(&str, Vec<u8>) -> Vec<u8>,
    parse: impl Fn(&Path) -> bool,
) -> u64 {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz");
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = StdRng::seed_from_u64(
        name.bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
    );
    let deadline = Instant::now() + Duration::from_secs_f64(seconds());
    // The hang watchdog: a parse running over 30 s aborts the process, its input on disk.
    let started = std::sync::Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    {
        let started = started.clone();
        let name = name.to_owned();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let s = started.load(Ordering::Relaxed);
                if s > 0 && (epoch.elapsed().as_millis() as u64).saturating_sub(s) > 30_000 {
                    eprintln!("fuzz {name}: one input took over 30 s: a hang");
                    std::process::abort();
                }
            }
        });
    }
    let mut corpus = seeds.clone();
    let mut crashes = vec![];
    let mut count = 0u64;
    while Instant::now() < deadline {
        let mut input = corpus[rng.random_range(0..corpus.len())].clone();
        let which = rng.random_range(0..input.len());
        mutate(&mut rng, &mut input[which].1, tokens);
        for (file, bytes) in &input {
            std::fs::write(dir.join(file), transform(file, bytes.clone())).unwrap();
        }
        started.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&dir)));
        started.store(0, Ordering::Relaxed);
        count += 1;
        match result {
            Ok(true) if corpus.len() < 64 => corpus.push(input),
            Ok(_) => {}
            Err(_) => {
                let keep = root.join("crashes").join(format!("{name}-{count}"));
                std::fs::create_dir_all(&keep).unwrap();
                for (file, bytes) in &input {
                    std::fs::write(keep.join(file), transform(file, bytes.clone())).unwrap();
                }
                crashes.push(keep);
            }
        }
    }
    eprintln!(
        "fuzz {name}: {count} inputs in {:.0} s, {} panics",
        seconds(),
        crashes.len()
    );
    assert!(crashes.is_empty(), "{name} panicked on: {crashes:?}");
    count
}

/// Inputs mutated before compression are gzipped as they are written; gzip streams stay.
fn gzip_unless_gzipped(_: &str, b: Vec<u8>) -> Vec<u8> {
    if b.starts_with(&[0x1f, 0x8b]) {
        b
    } else {
        gz(&b)
    }
}

/// Both MNIST splits of `dir`; whether either read.
fn read_mnist_splits(dir: &Path) -> bool {
    lopper::data::read_mnist(dir, true).is_ok() | lopper::data::read_mnist(dir, false).is_ok()
}

fn mnist_seed() -> Files {
    let pixels: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
    vec![
        (
            "train-images-idx3-ubyte".into(),
            idx(3, &[4, 3, 3], &pixels),
        ),
        (
            "train-labels-idx1-ubyte".into(),
            idx(1, &[4], &[1, 0, 9, 3]),
        ),
        (
            "t10k-images-idx3-ubyte".into(),
            idx(3, &[1, 3, 3], &pixels[..9]),
        ),
        ("t10k-labels-idx1-ubyte".into(), idx(1, &[1], &[5])),
    ]
}

#[test]
fn fuzz_mnist_idx_raw() {
    fuzz(
        "mnist-raw",
        vec![mnist_seed()],
        &[],
        |_, b| b,
        read_mnist_splits,
    );
}

#[test]
fn fuzz_mnist_idx_gzipped() {
    let seed: Files = mnist_seed()
        .into_iter()
        .map(|(n, b)| (format!("{n}.gz"), b))
        .collect();
    // Half the inputs mutate the decompressed bytes (then gzip them), half the gzip stream.
    fuzz(
        "mnist-gz",
        vec![
            seed.clone(),
            seed.iter().map(|(n, b)| (n.clone(), gz(b))).collect(),
        ],
        &[],
        gzip_unless_gzipped,
        read_mnist_splits,
    );
}

#[test]
fn fuzz_cifar10_binary() {
    let record = |label: u8, fill: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|i| fill.wrapping_add(i as u8)));
        r
    };
    let mut seed: Files = (1..=5)
        .map(|i| (format!("data_batch_{i}.bin"), record(i, i * 20)))
        .collect();
    seed.push((
        "test_batch.bin".into(),
        [record(3, 1), record(9, 2)].concat(),
    ));
    fuzz(
        "cifar-binary",
        vec![seed],
        &[],
        |_, b| b,
        |dir| {
            lopper::data::read_cifar10_binary(dir, true).is_ok()
                | lopper::data::read_cifar10_binary(dir, false).is_ok()
        },
    );
}

/// Image folders on disk: `{split}__{class}__{n}.png` names are laid out as folders.
#[test]
fn fuzz_image_folders() {
    let mut seed: Files = vec![];
    for split in ["train", "test"] {
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            seed.push((format!("{split}__{class}__0.png"), png(3, 2, 40 * c as u8)));
        }
    }
    let tree = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz/folder-tree");
    fuzz(
        "image-folder",
        vec![seed],
        &[],
        |_, b| b,
        |dir| {
            let _ = std::fs::remove_dir_all(&tree);
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let parts: Vec<&str> = name.split("__").collect();
                let to = tree.join(parts[0]).join(parts[1]);
                std::fs::create_dir_all(&to).unwrap();
                std::fs::copy(e.path(), to.join(parts[2])).unwrap();
            }
            lopper::data::read_image_folder_splits(&tree, &["train", "test"]).is_ok()
        },
    );
}

#[test]
fn fuzz_image_folder_archive() {
    let mut tar_bytes = vec![];
    {
        let mut t = tar::Builder::new(&mut tar_bytes);
        for split in ["train", "test"] {
            for (c, class) in ["cat", "dog"].iter().enumerate() {
                let body = png(3, 2, 40 * c as u8);
                let mut h = tar::Header::new_gnu();
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                t.append_data(&mut h, format!("cifar10/{split}/{class}/0.png"), &body[..])
                    .unwrap();
            }
        }
        t.finish().unwrap();
    }
    // Mutations of the tar (gzipped after) and of the gzip stream itself.
    let seeds = vec![
        vec![("a.tar.gz".to_owned(), tar_bytes.clone())],
        vec![("a.tar.gz".to_owned(), gz(&tar_bytes))],
    ];
    fuzz("image-archive", seeds, &[], gzip_unless_gzipped, |dir| {
        lopper::data::read_image_folder_archive(&dir.join("a.tar.gz"), &["train", "test"]).is_ok()
    });
}

const JSON_TOKENS: &[&str] = &[
    "\"",
    ",",
    ":",
    "{",
    "}",
    "[",
    "]",
    "null",
    "true",
    "-1",
    "0",
    "1e309",
    "18446744073709551616",
    "4294967296",
    "\"conv\"",
    "\"shape\"",
    "\"inputs\"",
    "\"op\"",
    "[0]",
    "[]",
    "{}",
    "\\u0000",
];

#[test]
fn fuzz_model_folder() {
    let g = lopper::zoo::build("lenet5", &[1, 28, 28], 10).unwrap();
    let dev = burn::tensor::Device::flex();
    let m = lopper::model::Model::init(g, 0, &dev).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (a, w) = (
        tmp.path().join("model.json"),
        tmp.path().join("model.safetensors"),
    );
    lopper::model::save_model(&m, &a, &w).unwrap();
    let seed = vec![
        ("model.json".to_owned(), std::fs::read(&a).unwrap()),
        ("model.safetensors".to_owned(), std::fs::read(&w).unwrap()),
    ];
    fuzz(
        "model-folder",
        vec![seed],
        JSON_TOKENS,
        |_, b| b,
        |dir| {
            let Ok(graph) = lopper::model::read_architecture(&dir.join("model.json")) else {
                return false;
            };
            // A graph that reads must also be safe to analyse.
            let _ = lopper::count::count(&graph);
            let _ = lopper::prune::channel_groups(&graph, &[]);
            lopper::model::load_weights(graph, &dir.join("model.safetensors"), &dev).is_ok()
        },
    );
}

#[test]
fn fuzz_latency_profile() {
    let g = lopper::zoo::build("mlp", &[1, 28, 28], 10).unwrap();
    let dev = burn::tensor::Device::flex();
    let profile = lopper::prune::latency::profile(&g, &dev, "cpu", 1, 1, |_, _| {}).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p.json");
    profile.save(&p).unwrap();
    let seed = vec![("p.json".to_owned(), std::fs::read(&p).unwrap())];
    let groups = lopper::prune::channel_groups(&g, &[]).unwrap();
    fuzz(
        "latency-profile",
        vec![seed],
        JSON_TOKENS,
        |_, b| b,
        |dir| {
            let Ok(p) = lopper::prune::LatencyProfile::load(&dir.join("p.json")) else {
                return false;
            };
            // A profile that reads must also be safe to build the latency model from and use.
            match lopper::prune::LatencyModel::new(&p, &g, &groups) {
                Ok(m) => {
                    let ones = vec![1.0; groups.len()];
                    let _ = (m.eval(&ones), m.grad(&ones), m.dense());
                    true
                }
                Err(_) => false,
            }
        },
    );
}

const TOML_TOKENS: &[&str] = &[
    "=",
    "\"",
    "'",
    "[",
    "]",
    "\n",
    "#",
    "-1",
    "0",
    "1e400",
    "nan",
    "inf",
    "true",
    "9223372036854775808",
    "epochs",
    "lr",
    "model",
    "batch_size",
    "method",
    "budget",
    "dsa_epochs",
    "rho",
    "\"dsa\"",
    "\"iterative\"",
    "\"macs=1.5\"",
    "\"latency=0ms\"",
    "{",
    "}",
    "[[x]]",
    "\\u0000",
];

#[test]
fn fuzz_run_config() {
    let seed = vec![(
        "run.toml".to_owned(),
        b"model = \"resnet20\"\ndataset = \"cifar10\"\nepochs = 30\nbatch_size = 128\nlr = 0.1\nschedule = \"cosine\"\nwarmup_epochs = 1\noptimizer = \"sgd\"\nseed = 3\n"
            .to_vec(),
    )];
    fuzz(
        "run-config",
        vec![seed],
        TOML_TOKENS,
        |_, b| b,
        |dir| match lopper::train::TrainConfig::from_toml_file(&dir.join("run.toml")) {
            Ok(cfg) => cfg.validate().is_ok(),
            Err(_) => false,
        },
    );
}

#[test]
fn fuzz_recipes() {
    let seeds: Vec<Files> = std::fs::read_dir("recipes")
        .unwrap()
        .flatten()
        .map(|e| vec![("r.toml".to_owned(), std::fs::read(e.path()).unwrap())])
        .collect();
    fuzz(
        "recipe",
        seeds,
        TOML_TOKENS,
        |_, b| b,
        |dir| {
            match lopper::prune::PrunePlan::from_toml_file(&dir.join("r.toml")) {
                Ok(mut plan) => {
                    let ok = plan.resolve().is_ok();
                    // A plan that reads writes back to a recipe that reads the same.
                    if ok {
                        let text = plan.to_toml().unwrap();
                        let again: toml::Table = text.parse().unwrap();
                        let mut back = lopper::prune::PrunePlan::from_table(again).unwrap();
                        back.resolve().unwrap();
                        assert_eq!(back, plan, "{text}");
                    }
                    ok
                }
                Err(_) => false,
            }
        },
    );
}
