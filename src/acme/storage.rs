//! What the ACME service keeps under `server.acme.storage`: the account
//! (`account.json`) and each name's certificate chain and key
//! (`certs/NAME.crt`, `certs/NAME.key`). Files are written whole (a
//! temporary file renamed into place), keys and the account mode 0600, so a
//! crash leaves the old file or the new one, never half of one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub(crate) struct Storage {
    root: PathBuf,
}

impl Storage {
    pub(crate) fn new(root: &Path) -> Storage {
        Storage {
            root: root.to_path_buf(),
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

    /// The chain and key files of `name`.
    pub(crate) fn cert_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let certs = self.root.join("certs");
        (
            certs.join(format!("{name}.crt")),
            certs.join(format!("{name}.key")),
        )
    }
}

/// Writes `bytes` to `path` whole, mode 0600.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = PathBuf::from(format!("{}.tmp", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
