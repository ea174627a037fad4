//! What the ACME service keeps under `server.acme.storage`, in a directory
//! of each ACME server's own (named from a hash of its directory URL, so a
//! switch from a staging server to a production one starts afresh): the
//! account (`account.json`) and each name's key and chain in one file
//! (`certs/NAME.pem`). Files are written whole (a temporary file of a name
//! of its own, synced and renamed into place, the directory synced), mode
//! 0600, so a crash leaves the old file or the new one, never a mix.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct Storage {
    /// `storage/<server>`.
    root: PathBuf,
}

impl Storage {
    /// The storage of the ACME server at `directory` under `storage`.
    pub(crate) fn new(storage: &Path, directory: &str) -> Storage {
        let digest = Sha256::digest(directory.as_bytes());
        let server: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Storage {
            root: storage.join(server),
        }
    }

    /// Makes the directories (mode 0700) and checks that they can be written.
    pub(crate) fn prepare(&self) -> Result<(), String> {
        let certs = self.root.join("certs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&certs)
            .map_err(|e| format!("cannot make {}: {e}", certs.display()))?;
        let probe = certs.join(".tollgate-write-check");
        write_private(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| format!("cannot write in {}: {e}", certs.display()))
    }

    pub(crate) fn account(&self) -> PathBuf {
        self.root.join("account.json")
    }

    /// The file holding the key and chain of `name`.
    pub(crate) fn cert_file(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(format!("{name}.pem"))
    }
}

/// Writes `bytes` to `path` whole, mode 0600.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let temporary = PathBuf::from(format!(
        "{}.{}-{}.tmp",
        path.display(),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
