//! The memory store's snapshot: sessions kept across restarts, sealed with AES-256-GCM
//! (the format is in [`sealed`]).
//!
//! Writes are atomic: a temporary file (`<file>.tmp`, mode 0600) in the same directory,
//! `fsync`, `rename` over the target, `fsync` of the directory, all on a blocking thread.
//! A crash leaves the old snapshot or the new one, never a partial file. The periodic
//! writer skips a write when no session changed; the final write (after the drain) always
//! writes. Writes never overlap: the runtime awaits the periodic writer before the final.
//!
//! Load: a missing file is an empty start. An unreadable file (damaged, wrong key,
//! unknown version, I/O error) refuses the start, or with `snapshot_on_error = "empty"`
//! is renamed aside to `<file>.unreadable-<unix time>` (kept for the operator, never
//! overwritten) and the store starts empty. Sessions past their absolute end are dropped;
//! idle expiry stays with the session layer, so `last_seen` is kept. The directory is
//! probed at load, so a snapshot that could never be written stops the start instead of
//! failing at shutdown.

mod sealed;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::{SessionStore, Store};
use crate::config::{SnapshotConfig, SnapshotOnError, StoreConfig};
use crate::secret::EncryptionKey;
use sealed::{open, seal, Entry, Unreadable};

/// The shortest interval the writer accepts (a zero interval would spin).
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Loads the snapshot into `store` at start, as `config.snapshot` says.
pub fn load_into(store: &Store, config: &StoreConfig) -> Result<(), String> {
    let Some(snapshot) = &config.snapshot else { return Ok(()) };
    let file = snapshot.file.display();
    // Fail now, not at shutdown, if the directory cannot take a write.
    probe_directory(&snapshot.file)
        .map_err(|error| format!("store.snapshot_file {file}: the directory cannot be written: {error}"))?;
    let started = Instant::now();
    let bytes = match read_file(&snapshot.file) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            tracing::info!(file = %file, "no snapshot file yet: starting with no sessions");
            return Ok(());
        }
        Err(error) => return unreadable(snapshot, &Unreadable::Io(error)),
    };
    let opened = match open(bytes, &snapshot.keys, now_secs()) {
        Ok(opened) => opened,
        Err(error) => return unreadable(snapshot, &error),
    };
    let found = opened.sessions.len();
    let imported = store
        .import(opened.sessions)
        .map_err(|error| format!("store.snapshot_file {file}: this store cannot load a snapshot: {error}"))?;
    if imported < found {
        tracing::warn!(
            dropped = found - imported,
            "the snapshot holds more sessions than session.max_sessions: the least recently used were left out"
        );
    }
    tracing::info!(
        file = %file,
        sessions = imported,
        expired = opened.expired,
        key = opened.key_index + 1,
        written_at = opened.written_at,
        elapsed_ms = millis(started.elapsed()),
        "snapshot loaded"
    );
    Ok(())
}

/// Writes the snapshot every `interval` until `shutdown`, skipping a write when no
/// session changed since the last one. A failed write is logged and retried next time.
pub fn spawn_writer(
    store: Arc<Store>,
    config: &StoreConfig,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let snapshot = config.snapshot.as_ref()?;
    let target = Arc::new(Target::new(snapshot)?);
    let interval = snapshot.interval.max(MIN_INTERVAL);
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => return,
            }
            // Not cancelled mid-write: a write in progress finishes before the final one.
            match write(Arc::clone(&store), Arc::clone(&target), last).await {
                Ok(Some(fingerprint)) => last = Some(fingerprint),
                Ok(None) => tracing::trace!("no session changed: snapshot not rewritten"),
                Err(error) => tracing::warn!(%error, "snapshot write failed; retrying at the next interval"),
            }
        }
    }))
}

/// Writes the snapshot once more after the last request has finished.
pub async fn write_final(store: &Arc<Store>, config: &StoreConfig) -> Result<(), String> {
    let Some(snapshot) = &config.snapshot else { return Ok(()) };
    let target = Target::new(snapshot).ok_or("store.snapshot_file: no encryption key to seal with")?;
    write(Arc::clone(store), Arc::new(target), None).await.map(|_| ())
}

/// Where and with what the writer seals.
#[derive(Debug)]
struct Target {
    file: PathBuf,
    key: EncryptionKey,
}

impl Target {
    fn new(snapshot: &SnapshotConfig) -> Option<Target> {
        Some(Target { file: snapshot.file.clone(), key: snapshot.keys.first()?.clone() })
    }
}

/// Exports, seals and writes, off the async threads. `Ok(None)`: nothing changed since
/// the write whose fingerprint is `last`.
async fn write(
    store: Arc<Store>,
    target: Arc<Target>,
    last: Option<[u8; 32]>,
) -> Result<Option<[u8; 32]>, String> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let now = now_secs();
        let mut entries = store.export().map_err(|error| format!("snapshot: {error}"))?;
        entries.retain(|(_, record, _)| record.absolute_expires_at > now);
        entries.sort_unstable_by_key(|entry| entry.0 .0);
        let fingerprint = fingerprint(&entries);
        if last == Some(fingerprint) {
            return Ok(None);
        }
        let file = target.file.display();
        let sealed = seal(&entries, &target.key, now).map_err(|error| format!("snapshot {file}: {error}"))?;
        write_atomically(&target.file, &sealed)
            .map_err(|error| format!("snapshot {file}: cannot write it: {error}"))?;
        tracing::info!(
            file = %file,
            sessions = entries.len(),
            bytes = sealed.len(),
            elapsed_ms = millis(started.elapsed()),
            "snapshot written"
        );
        Ok(Some(fingerprint))
    })
    .await
    .map_err(|error| format!("snapshot write task failed: {error}"))?
}

/// Changes whenever a session is added, removed, re-tokened or used.
fn fingerprint(entries: &[Entry]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for (key, record, last_seen) in entries {
        hash.update(key.0);
        for number in [record.generation, record.access_expires_at, record.absolute_expires_at, *last_seen] {
            hash.update(number.to_be_bytes());
        }
        hash.update([record.kind as u8]);
    }
    hash.finalize().into()
}

/// Refuses the start, or moves the file aside and starts empty, as configured.
fn unreadable(snapshot: &SnapshotConfig, reason: &Unreadable) -> Result<(), String> {
    let file = snapshot.file.display();
    match snapshot.on_error {
        SnapshotOnError::Fail => Err(format!(
            "store.snapshot_file {file}: {reason}. Refusing to start rather than lose every session \
             (fix the key or the file, or set store.snapshot_on_error = \"empty\" to start without them)"
        )),
        SnapshotOnError::Empty => {
            let aside = move_aside(&snapshot.file).map_err(|error| {
                format!("store.snapshot_file {file}: {reason}; cannot move it aside to start empty: {error}")
            })?;
            tracing::error!(
                file = %file,
                moved_to = %aside.display(),
                reason = %reason,
                "snapshot unreadable: moved aside, starting with no sessions (snapshot_on_error = \"empty\")"
            );
            Ok(())
        }
    }
}

/// Renames `file` to `<file>.unreadable-<unix time>[-n]`, never over an existing file.
fn move_aside(file: &Path) -> io::Result<PathBuf> {
    let base = format!("{}.unreadable-{}", file.display(), now_secs());
    for attempt in 0..100 {
        let aside = PathBuf::from(if attempt == 0 { base.clone() } else { format!("{base}-{attempt}") });
        if fs::symlink_metadata(&aside).is_err() {
            fs::rename(file, &aside)?;
            return Ok(aside);
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "too many unreadable snapshots kept aside"))
}

fn read_file(file: &Path) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut bytes = Zeroizing::new(Vec::new());
    match File::open(file) {
        Ok(mut opened) => {
            opened.read_to_end(&mut bytes)?;
            Ok(Some(bytes))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

fn temp_path(file: &Path) -> io::Result<PathBuf> {
    let name = file
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut temp = name.to_os_string();
    temp.push(".tmp");
    Ok(file.with_file_name(temp))
}

fn directory(file: &Path) -> &Path {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates a fresh temporary file, mode 0600 (a stale one from a crash is removed first).
fn create_temp(temp: &Path) -> io::Result<File> {
    match fs::remove_file(temp) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(temp)
}

/// Checks at start that the snapshot's directory takes a new file.
fn probe_directory(file: &Path) -> io::Result<()> {
    let temp = temp_path(file)?;
    drop(create_temp(&temp)?);
    fs::remove_file(&temp)
}

/// Temporary file, fsync, rename, fsync of the directory.
fn write_atomically(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = temp_path(file)?;
    let written = create_temp(&temp).and_then(|mut out| {
        out.write_all(bytes)?;
        out.sync_all()
    });
    if let Err(error) = written.and_then(|()| fs::rename(&temp, file)) {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    File::open(directory(file))?.sync_all()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::sealed::tests::{entry, key, same};
    use super::*;
    use crate::config::StoreKind;
    use crate::store::MemoryStore;

    fn config(file: &Path, on_error: SnapshotOnError) -> StoreConfig {
        StoreConfig {
            kind: StoreKind::Memory,
            snapshot: Some(SnapshotConfig {
                file: file.to_path_buf(),
                keys: vec![key(7)],
                interval: Duration::from_secs(60),
                on_error,
            }),
        }
    }

    #[tokio::test]
    async fn a_written_snapshot_loads_into_a_new_store() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("sessions.bin");
        let config = config(&file, SnapshotOnError::Fail);
        let first = Store::Memory(MemoryStore::new(10));
        let far = now_secs() + 3600;
        first.import(vec![entry(1, far, 40), entry(2, far, 50)]).expect("memory stores import");
        let first = Arc::new(first);
        write_final(&first, &config).await.unwrap_or_else(|e| panic!("{e}"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&file).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
        assert!(!file.with_file_name("sessions.bin.tmp").exists());

        let second = Store::Memory(MemoryStore::new(10));
        load_into(&second, &config).unwrap_or_else(|e| panic!("{e}"));
        let mut loaded = second.export().expect("memory stores export");
        loaded.sort_by_key(|(key, _, _)| key.0);
        assert_eq!(loaded.len(), 2);
        assert!(same(&loaded[0], &entry(1, far, 40)) && same(&loaded[1], &entry(2, far, 50)));
    }

    #[tokio::test]
    async fn an_unchanged_store_is_not_rewritten_by_the_writer() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(Store::Memory(MemoryStore::new(10)));
        let target = Arc::new(Target { file: dir.path().join("s.bin"), key: key(7) });
        let first =
            write(Arc::clone(&store), Arc::clone(&target), None).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(first.is_some());
        let again =
            write(Arc::clone(&store), Arc::clone(&target), first).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, None);
        store.import(vec![entry(1, now_secs() + 60, 1)]).expect("memory stores import");
        let changed = write(Arc::clone(&store), target, first).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(changed.is_some() && changed != first);
    }

    #[test]
    fn a_missing_file_is_an_empty_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::Memory(MemoryStore::new(10));
        load_into(&store, &config(&dir.path().join("none.bin"), SnapshotOnError::Fail))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.export().expect("memory stores export").is_empty());
    }

    #[test]
    fn an_unreadable_file_fails_the_start_or_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("sessions.bin");
        let mut garbage = seal(&[entry(1, now_secs() + 60, 1)], &key(7), 1).unwrap_or_else(|e| panic!("{e}"));
        let last = garbage.len() - 1;
        garbage[last] ^= 0x80;
        fs::write(&file, &garbage).unwrap_or_else(|e| panic!("{e}"));
        let store = Store::Memory(MemoryStore::new(10));

        let error = load_into(&store, &config(&file, SnapshotOnError::Fail)).err().unwrap_or_default();
        assert!(error.contains(&file.display().to_string()), "{error}");
        assert!(error.contains("key is wrong, or the file was damaged"), "{error}");
        assert_eq!(fs::read(&file).ok(), Some(garbage.clone()), "the file must be left alone");

        load_into(&store, &config(&file, SnapshotOnError::Empty)).unwrap_or_else(|e| panic!("{e}"));
        assert!(!file.exists());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert!(aside[0].display().to_string().contains("sessions.bin.unreadable-"));
        assert_eq!(fs::read(&aside[0]).ok(), Some(garbage));
        assert!(store.export().expect("memory stores export").is_empty());
    }

    #[test]
    fn a_file_moved_aside_never_replaces_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("s.bin");
        let mut kept = Vec::new();
        for content in ["first", "second"] {
            fs::write(&file, content).unwrap_or_else(|e| panic!("{e}"));
            kept.push(move_aside(&file).unwrap_or_else(|e| panic!("{e}")));
        }
        assert_ne!(kept[0], kept[1]);
        assert_eq!(fs::read_to_string(&kept[0]).ok().as_deref(), Some("first"));
        assert_eq!(fs::read_to_string(&kept[1]).ok().as_deref(), Some("second"));
    }

    #[test]
    fn the_writer_target_does_not_show_its_key() {
        let target = Target { file: "/var/lib/s.bin".into(), key: key(7) };
        let shown = format!("{target:?}");
        assert!(shown.contains("redacted") && !shown.contains("7, 7"), "{shown}");
    }

    #[test]
    fn a_directory_that_cannot_take_the_file_fails_the_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("missing").join("sessions.bin");
        let store = Store::Memory(MemoryStore::new(10));
        let error = load_into(&store, &config(&file, SnapshotOnError::Empty)).err().unwrap_or_default();
        assert!(error.contains("directory cannot be written"), "{error}");
    }
}
