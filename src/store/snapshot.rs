//! The memory store's snapshot: sessions kept across restarts, sealed with AES-256-GCM.
//!
//! (Stub: the implementation lands with issue 4. Until then a configured snapshot file is
//! reported as unsupported at startup.)

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Store;
use crate::config::StoreConfig;

/// Loads the snapshot into `store` at start, as `config.snapshot` says.
pub fn load_into(store: &Store, config: &StoreConfig) -> Result<(), String> {
    let _ = store;
    match &config.snapshot {
        None => Ok(()),
        Some(_) => Err("store.snapshot_file: snapshots are not supported by this build yet".into()),
    }
}

/// Writes the snapshot every `interval` until `shutdown`.
pub fn spawn_writer(
    store: Arc<Store>,
    config: &StoreConfig,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let _ = (store, config, shutdown);
    None
}

/// Writes the snapshot once more after the last request has finished.
pub async fn write_final(store: &Arc<Store>, config: &StoreConfig) -> Result<(), String> {
    let _ = (store, config);
    Ok(())
}
