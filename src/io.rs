//! File-system helpers at the bottom of the crate (they import nothing above `error`): files
//! written atomically (a temporary file beside the target, renamed), JSON read and written
//! with errors that name the file, output folders staged beside their target and renamed into
//! place, and the registry of what a signal must clean up (temporary files and staging folders
//! of the running command).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use serde::Serialize;

use crate::error::{Error, Result};

/// Held shared while a file or folder is created in an output (or renamed into it); the
/// signal handler takes it exclusively before it removes the run's staging folders and
/// temporary files, and after that every creation fails: no worker thread can recreate a
/// staging folder the handler has just removed.
static WRITE_GATE: RwLock<()> = RwLock::new(());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Permission to create files in an output, for as long as the guard lives; an error once
/// the process is being interrupted.
pub(crate) fn write_gate() -> Result<RwLockReadGuard<'static, ()>> {
    let guard = WRITE_GATE.read().unwrap_or_else(|e| e.into_inner());
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Error::data("interrupted: no more files are written"));
    }
    Ok(guard)
}

/// Writes a file atomically: `write` fills a temporary file beside `path`, which is then
/// flushed and renamed over `path`. On error the temporary file is removed.
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let _gate = write_gate()?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    write(tmp.as_file_mut())?;
    tmp.as_file_mut().flush().map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    // Temporary files are created 0600; artifacts are ordinary readable files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Pretty JSON with sorted keys (serde_json's map is ordered), written atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let v = serde_json::to_value(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let mut text = serde_json::to_string_pretty(&v).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write_atomic(path, |f| {
        f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
    })
}

/// Reads a JSON file into `T`; an empty file or bad JSON is an error naming the file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if text.trim().is_empty() {
        return Err(Error::content(path, "file is empty"));
    }
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Paths to remove if the process is interrupted (SIGINT/SIGTERM) before it finishes them.
static IN_PROGRESS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves the list usable.
    IN_PROGRESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `path` (a temporary file or a staging folder) for removal on interruption; the
/// registration ends when the guard drops.
pub(crate) fn in_progress(path: &Path) -> InProgress {
    registry().push(path.to_path_buf());
    InProgress {
        path: path.to_path_buf(),
    }
}

/// A registration made by [`in_progress`].
#[derive(Debug)]
pub(crate) struct InProgress {
    path: PathBuf,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut r = registry();
        if let Some(i) = r.iter().rposition(|p| *p == self.path) {
            r.remove(i);
        }
    }
}

/// Removes every registered path (the signal handler's job); returns how many were removed.
/// Waits for files being created to be done and refuses any later one ([`write_gate`]).
pub(crate) fn remove_in_progress() -> usize {
    let _gate = WRITE_GATE.write().unwrap_or_else(|e| e.into_inner());
    INTERRUPTED.store(true, Ordering::SeqCst);
    let paths = std::mem::take(&mut *registry());
    let mut n = 0;
    for p in paths.iter().rev() {
        let removed = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
        n += usize::from(removed.is_ok());
    }
    n
}

/// An output folder built in `.NAME.staging-PID` beside its target and renamed onto it by
/// [`StagedDir::commit`]: until then the target is untouched (absent, or the previous complete
/// result). Dropped without a commit (an error) or interrupted (a signal, through
/// [`remove_in_progress`]), the staging folder is removed; one left by `kill -9` is removed by
/// the next run for the same target.
#[derive(Debug)]
pub struct StagedDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
    _registration: InProgress,
}

impl StagedDir {
    /// Creates the staging folder for `target`, removing stale ones of dead processes. The
    /// target must be absent, empty, or a previous result of the same command (it holds
    /// `marker`): a folder of anything else is never replaced.
    pub fn begin(target: &Path, marker: &str) -> Result<Self> {
        Self::begin_with(target, &[marker], false)
    }

    /// [`StagedDir::begin`], the target recognised by any of `markers`; with
    /// `keep_previous`, the staging folder starts as the previous result, its files hard-linked
    /// (so a command that reuses earlier work, such as `build-dataset`'s spec cache, finds it;
    /// files are only ever replaced by rename, never written in place, so the previous result
    /// is not touched).
    pub fn begin_with(target: &Path, markers: &[&str], keep_previous: bool) -> Result<Self> {
        let mut previous = false;
        if target.exists() {
            let empty = std::fs::read_dir(target)
                .map_err(|e| Error::io(target, e))?
                .next()
                .is_none();
            if !empty && !markers.iter().any(|m| target.join(m).exists()) {
                return Err(Error::content(
                    target,
                    format!(
                        "exists and is not a previous result of this command (none of \
                         {markers:?}): the output folder is replaced whole, so give a new or \
                         empty folder"
                    ),
                ));
            }
            previous = !empty;
        }
        let name = target
            .file_name()
            .ok_or_else(|| Error::config("output folder", format!("{target:?} has no name")))?
            .to_string_lossy()
            .into_owned();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        remove_stale(&parent, &name);
        let staging = parent.join(format!(".{name}.staging-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
        let staged = StagedDir {
            target: target.to_path_buf(),
            _registration: in_progress(&staging),
            staging,
            committed: false,
        };
        if previous && keep_previous {
            link_tree(target, &staged.staging)?;
        }
        Ok(staged)
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Puts the staging folder in the target's place (a previous result is replaced whole).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            let old = self.staging.with_extension("old");
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            std::fs::rename(&self.staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            std::fs::rename(&self.staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Recreates the folder tree under `from` in `to` (which exists), every file hard-linked
/// (copied where the file system refuses a link).
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(|e| Error::io(&src, e))?;
        if kind.is_dir() {
            std::fs::create_dir(&dst).map_err(|e| Error::io(&dst, e))?;
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
        }
    }
    Ok(())
}

/// Removes `.NAME.staging-PID*` folders in `parent` whose process is gone (Linux: no
/// `/proc/PID`; elsewhere only this process's own).
fn remove_stale(parent: &Path, name: &str) {
    let prefix = format!(".{name}.staging-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
        let alive = match pid {
            Some(pid) if cfg!(target_os = "linux") => Path::new(&format!("/proc/{pid}")).exists(),
            Some(pid) => pid == std::process::id(),
            None => true,
        };
        if !alive {
            // A run killed between commit's two renames left the previous result as
            // `….old` and no target: put it back rather than lose it.
            let target = parent.join(name);
            if file.ends_with(".old") && !target.exists() {
                tracing::info!(folder = %e.path().display(), "restoring the previous result a killed run had moved aside");
                if std::fs::rename(e.path(), &target).is_ok() {
                    continue;
                }
            }
            tracing::info!(folder = %e.path().display(), "removing a staging folder left by a killed run");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_output_replaces_the_target_only_on_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("old.txt"), "previous").unwrap();
        // Dropped without commit: the previous result stays, no staging left.
        {
            let s = StagedDir::begin(&target, "old.txt").unwrap();
            std::fs::write(s.path().join("new.txt"), "half").unwrap();
        }
        let names = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(tmp.path()), ["out"]);
        assert_eq!(names(&target), ["old.txt"]);
        // Committed: the new folder replaces the old one whole.
        let s = StagedDir::begin(&target, "old.txt").unwrap();
        std::fs::write(s.path().join("new.txt"), "done").unwrap();
        s.commit().unwrap();
        assert_eq!(names(tmp.path()), ["out"]);
        assert_eq!(names(&target), ["new.txt"]);
        // Killed between commit's renames: the previous result was moved aside (`.old`) and the
        // target is gone; the next run puts it back before staging.
        let aside = tmp.path().join(".out.staging-4000000001.old");
        std::fs::rename(&target, &aside).unwrap();
        std::fs::create_dir(tmp.path().join(".out.staging-4000000001")).unwrap();
        let s = StagedDir::begin(&target, "new.txt").unwrap();
        assert!(target.join("new.txt").exists(), "previous result restored");
        drop(s);
        assert_eq!(names(tmp.path()), ["out"]);
        // A staging folder of a dead process (no pid reaches 4e9 on Linux) is cleaned.
        let stale = tmp.path().join(".out.staging-4000000000");
        std::fs::create_dir(&stale).unwrap();
        let s = StagedDir::begin(&target, "new.txt").unwrap();
        assert!(!stale.exists());
        // Registered while in progress (the signal handler removes it; tests/shards.rs sends
        // the signal), unregistered once done.
        let p = s.path().to_path_buf();
        assert!(registry().contains(&p));
        drop(s);
        assert!(!registry().contains(&p) && !p.exists());
        // A folder of something else is never replaced.
        let e = StagedDir::begin(tmp.path(), "metrics.parquet").unwrap_err();
        assert!(e.to_string().contains("not a previous result"), "{e}");
    }
}
