//! File helpers shared by every writer: atomic writes, so an interrupted run never leaves a
//! half-written checkpoint, model or report behind.

use std::io::Write;
use std::path::Path;

use crate::error::{LopperError, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| LopperError::io(dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(LopperError::io(path, e));
    }
    Ok(())
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| LopperError::io(path, e))
}

/// The lock file in a run folder.
pub const LOCK_FILE: &str = ".lopper.lock";

/// An exclusive lock on a run folder, held while a process trains or prunes into it (released
/// when dropped, or by the system when the process dies): two processes writing one folder
/// would leave it mixing two runs.
pub struct FolderLock {
    _file: std::fs::File,
}

impl FolderLock {
    /// Takes the lock of `dir` (creating the folder), or fails at once if another process
    /// holds it.
    pub fn acquire(dir: &Path) -> Result<FolderLock> {
        std::fs::create_dir_all(dir).map_err(|e| LopperError::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LopperError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(FolderLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(LopperError::Config(format!(
                "{} is in use by another lopper process; wait for it to finish, or choose another folder",
                dir.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(LopperError::io(&path, e)),
        }
    }
}

/// Refuses to write a run into `dir` when it holds files but none of `markers` (the files a
/// lopper run of that kind leaves first): a typo in `--out` must not scatter a run among
/// someone's files.
pub fn check_run_folder(dir: &Path, markers: &[&str]) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let foreign = entries
        .filter_map(|e| e.ok())
        .any(|e| e.file_name() != LOCK_FILE);
    if foreign && !markers.iter().any(|m| dir.join(m).exists()) {
        return Err(LopperError::Config(format!(
            "{} is not empty and holds no lopper run; choose a new or empty folder",
            dir.display()
        )));
    }
    Ok(())
}

/// Writes `items` as JSON lines to `path` (atomically): a method's log.
pub fn write_jsonl<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<()> {
    let mut lines = String::new();
    for item in items {
        lines += &serde_json::to_string(item).map_err(|e| LopperError::Config(e.to_string()))?;
        lines.push('\n');
    }
    write_atomic(path, lines.as_bytes())
}
