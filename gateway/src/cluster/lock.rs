//! SQLite serves one gateway process: at start a gateway takes an exclusive lock on
//! `<database>.lock` beside the SQLite file and keeps it until it exits (the kernel
//! drops it on `kill -9` too), so a second process on the same file refuses to
//! start and says why. Gateways built in one process (tests) share the lock.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

/// Locks held by this process, by lock file (kept until the process exits).
static HELD: LazyLock<Mutex<HashMap<PathBuf, Arc<File>>>> = LazyLock::new(Mutex::default);

/// The SQLite database file a store URL names; `None` for PostgreSQL and for
/// in-memory databases.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
}

/// Takes the exclusive lock of the SQLite store at `url` for this process (a
/// no-op for PostgreSQL); an error names the file and what to do.
pub fn lock_sqlite(url: &str) -> Result<(), String> {
    let Some(db) = sqlite_path(url) else {
        return Ok(());
    };
    let path = lock_path(&db);
    let mut held = HELD.lock();
    if held.contains_key(&path) {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            held.insert(path, Arc::new(file));
            Ok(())
        }
        Err(TryLockError::WouldBlock) => Err(format!(
            "another gateway process uses the SQLite store {} (lock {}): SQLite serves one gateway; \
             stop the other one, give this one its own --data-dir, or run several replicas on \
             PostgreSQL (store.url)",
            db.display(),
            path.display()
        )),
        Err(TryLockError::Error(e)) => Err(format!("locking {}: {e}", path.display())),
    }
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite:///d/gateway.db?mode=rwc"),
            Some(PathBuf::from("/d/gateway.db"))
        );
        assert_eq!(sqlite_path("sqlite:g.db"), Some(PathBuf::from("g.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
        assert_eq!(
            lock_path(Path::new("/d/gateway.db")),
            PathBuf::from("/d/gateway.db.lock")
        );
    }

    /// A second process is simulated by a second open file description: the lock
    /// this process took refuses it.
    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The data directory is made here if needed (the store opens after).
        let db = dir.path().join("data").join("gateway.db");
        let url = format!("sqlite://{}", db.display());
        lock_sqlite(&url).unwrap();
        lock_sqlite(&url).unwrap();
        let other = File::options().write(true).open(lock_path(&db)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
    }
}
