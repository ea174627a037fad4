//! Request buffering, as nginx `proxy_request_buffering on`: a request's body
//! read whole from the client before a backend is chosen, kept in memory up
//! to a bound and in an unnamed temporary file beyond it, then replayed to the
//! backend. A slow uploader then never holds a backend connection, and a body
//! over `max_request_body` never reaches one.

use bytes::{Bytes, BytesMut};
use pingora::protocols::http::HttpTask;
use pingora::protocols::http::ServerSession;
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The size of the pieces a body is read back from its file in.
const REPLAY_CHUNK: usize = 64 << 10;

/// How much of a body is buffered, and where.
#[derive(Debug, Clone)]
pub struct BufferLimits {
    /// Bodies larger than this are refused (413).
    pub max_body: u64,
    /// Bytes of one body kept in memory; the rest goes to a file.
    pub memory: usize,
    /// The directory of those files.
    pub temp_dir: PathBuf,
}

/// Why a body could not be buffered.
#[derive(Debug)]
pub enum BufferError {
    /// The body grew past `max_body`.
    TooLarge,
    /// Its file could not be made or written (a full disk).
    Spill(io::Error),
    /// The client's body could not be read (gone, too slow, malformed).
    Client(Box<pingora::Error>),
}

/// A request body read whole: the first pieces in memory, the rest in a file.
#[derive(Debug)]
pub struct BufferedBody {
    memory: Vec<Bytes>,
    /// Holds the bytes after `memory`, positioned at its start once read.
    file: Option<tokio::fs::File>,
    len: u64,
}

impl BufferedBody {
    /// Reads the rest of the request body of `session` within `limits`.
    pub async fn read(
        session: &mut ServerSession,
        limits: &BufferLimits,
    ) -> Result<BufferedBody, BufferError> {
        let mut body = BufferedBody {
            memory: Vec::new(),
            file: None,
            len: 0,
        };
        let mut in_memory = 0usize;
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| BufferError::Client(e.into_down()))?
        {
            body.len += chunk.len() as u64;
            if body.len > limits.max_body {
                return Err(BufferError::TooLarge);
            }
            if body.file.is_none() && in_memory + chunk.len() <= limits.memory {
                in_memory += chunk.len();
                body.memory.push(chunk);
                continue;
            }
            let file = match &mut body.file {
                Some(file) => file,
                None => body.file.insert(
                    unnamed_file(&limits.temp_dir)
                        .await
                        .map_err(BufferError::Spill)?,
                ),
            };
            file.write_all(&chunk).await.map_err(BufferError::Spill)?;
        }
        if let Some(file) = &mut body.file {
            file.flush().await.map_err(BufferError::Spill)?;
            file.rewind().await.map_err(BufferError::Spill)?;
        }
        Ok(body)
    }

    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body's pieces, when it is all in memory.
    pub fn in_memory(&self) -> Option<&[Bytes]> {
        self.file.is_none().then_some(self.memory.as_slice())
    }

    /// Whether part of the body is in a file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Sends the body into `tx` as body tasks, the last one marked as the end,
    /// then holds `tx` until the receiver is gone: a pingora subrequest takes
    /// a closed input for a client that went away. Stops early, without
    /// error, when the receiver is gone; an error is a file that could not be
    /// read back.
    pub async fn replay(self, tx: mpsc::Sender<HttpTask>) -> io::Result<()> {
        self.send(&tx).await?;
        tx.closed().await;
        Ok(())
    }

    async fn send(self, tx: &mpsc::Sender<HttpTask>) -> io::Result<()> {
        let total = self.len;
        let mut sent = 0u64;
        for chunk in self.memory {
            sent += chunk.len() as u64;
            if tx
                .send(HttpTask::Body(Some(chunk), sent == total))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        let Some(mut file) = self.file else {
            return Ok(());
        };
        while sent < total {
            let mut piece = BytesMut::with_capacity(REPLAY_CHUNK);
            if file.read_buf(&mut piece).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the body's file ended {} bytes early", total - sent),
                ));
            }
            sent += piece.len() as u64;
            let task = HttpTask::Body(Some(piece.freeze()), sent >= total);
            if tx.send(task).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// A file in `dir` that has no name, so it is gone when closed, even after a
/// crash: O_TMPFILE where the file system has it, else a file removed as
/// soon as it is open.
async fn unnamed_file(dir: &Path) -> io::Result<tokio::fs::File> {
    let dir = dir.to_path_buf();
    let file = tokio::task::spawn_blocking(move || open_unnamed(&dir))
        .await
        .map_err(io::Error::other)??;
    Ok(tokio::fs::File::from_std(file))
}

fn open_unnamed(dir: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let unnamed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match unnamed {
        Ok(file) => Ok(file),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
            let path = dir.join(format!(
                "tollgate-body-{}-{:x}",
                std::process::id(),
                rand_suffix()
            ));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(file)
        }
        Err(e) => Err(e),
    }
}

/// A number unlikely to repeat, for a file name.
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Checks at load that bodies can be written to files in `dir`.
pub fn check_temp_dir(dir: &Path) -> Result<(), String> {
    open_unnamed(dir)
        .map(drop)
        .map_err(|e| format!("cannot write request bodies in {}: {e}", dir.display()))
}

/// `server.temp_dir`, or `$TMPDIR`, or `/tmp`.
pub fn temp_dir_or_default(configured: Option<&Path>) -> PathBuf {
    configured.map_or_else(std::env::temp_dir, Path::to_path_buf)
}
