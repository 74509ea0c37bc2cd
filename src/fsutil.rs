//! File handling shared by every piece of state (tokens, poll checkpoints, journals, job records,
//! saved messages): crash-safe writes, private directories, advisory locks and waiting for them,
//! and reading a file that may not exist.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically with mode 0600: temp file in the same directory, fsync,
/// rename over the target, fsync of the directory so the rename itself survives a power cut.
/// Leftover temp files from a process killed mid-write are removed first (callers hold the lock
/// that makes them the only writer).
///
/// # Errors
/// Any filesystem failure, naming the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.tmp.");
    remove_stale_temp_files(dir, &prefix);
    let tmp = dir.join(format!("{prefix}{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("failed to create {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("failed to fsync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("failed to rename {} to {}", tmp.display(), path.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("failed to fsync directory {}", dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn remove_stale_temp_files(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Creates `dir` (and missing parents) with mode 0700; existing directories keep their mode.
///
/// # Errors
/// The directory cannot be created, naming it.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create directory {}", dir.display()))
}

/// Opens `path` (0600, in a 0700 directory) and takes an exclusive advisory lock on it if nobody
/// holds one; `None` when another process does. Dropping the file, or the process dying, releases
/// the lock.
///
/// # Errors
/// The file cannot be created or locked for a reason other than contention.
pub fn try_lock(path: &Path) -> Result<Option<File>> {
    private_dir(path.parent().unwrap_or(Path::new(".")))?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to open lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("failed to lock {}", path.display()))
        }
    }
}

/// Tries `try_lock` until it yields a lock, every `poll`, for at most `wait` (`None`: as long as
/// it takes). `None` when the wait ran out; the caller says who holds it and what to do.
///
/// # Errors
/// What `try_lock` fails with.
pub async fn wait_for_lock<L>(
    mut try_lock: impl FnMut() -> Result<Option<L>>,
    wait: Option<Duration>,
    poll: Duration,
) -> Result<Option<L>> {
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    loop {
        if let Some(lock) = try_lock()? {
            return Ok(Some(lock));
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ok(None);
        }
        tokio::time::sleep(poll).await;
    }
}

/// The contents of the regular file `path`, at most `max` bytes. Anything else — a FIFO (which
/// would block), a device (`/dev/zero` never ends), a directory — is refused before it is opened.
///
/// # Errors
/// The file is missing, not a regular file, unreadable, or larger than `max`, naming the path.
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("failed to read {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .with_context(|| format!("failed to read {}", path.display()))?;
    if bytes.len() as u64 > max {
        anyhow::bail!(
            "{} is larger than {} KiB; refusing to read it",
            path.display(),
            max / 1024
        );
    }
    Ok(bytes)
}

/// The contents of the small state file `path` (at most [`MAX_STATE_FILE`]), or `None` when there
/// is no such file.
///
/// # Errors
/// Any other read failure, naming the path.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::symlink_metadata(path) {
        Ok(_) => read_limited(path, MAX_STATE_FILE).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// The names in `dir` that end in `suffix`, without it, sorted; none when `dir` does not exist.
/// Hidden names (a writer's temp files) are left out.
///
/// # Errors
/// The directory cannot be read.
pub fn names_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(suffix).filter(|s| !s.starts_with('.')) {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// The largest small state file read (tokens, checkpoints, job records): they are a few hundred
/// bytes.
pub const MAX_STATE_FILE: u64 = 1024 * 1024;
