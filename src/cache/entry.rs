//! One stored answer: its metadata as pingora serializes it, and its body; the
//! file format the disk tier keeps it in; the hit handler that reads it out.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{HandleHit, Storage};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::{Error, ErrorType, Result};
use std::any::Any;

/// What an entry is stored under: the key's combined (primary and variance) hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct EntryId(pub(super) u128);

impl EntryId {
    pub(super) fn of(key: &impl CacheHashKey) -> EntryId {
        EntryId(u128::from_be_bytes(key.combined_bin()))
    }

    /// 32 lower-case hex digits, the entry's file name.
    pub(super) fn hex(self) -> String {
        format!("{:032x}", self.0)
    }

    pub(super) fn from_hex(name: &str) -> Option<EntryId> {
        (name.len() == 32)
            .then(|| u128::from_str_radix(name, 16).ok())
            .flatten()
            .map(EntryId)
    }
}

/// Bytes an entry costs beyond its parts: map slot, LRU node, `Arc` header.
const ENTRY_OVERHEAD: usize = 160;

/// The file format: magic, then the three lengths, then the three parts.
const MAGIC: &[u8; 4] = b"TGC1";
const HEAD_LEN: usize = 4 + 4 + 4 + 8;

/// A stored answer.
pub(super) struct Stored {
    /// `CacheMeta::serialize`'s two parts.
    internal: Vec<u8>,
    header: Vec<u8>,
    pub(super) body: Bytes,
}

impl Stored {
    pub(super) fn new(internal: Vec<u8>, header: Vec<u8>, body: Bytes) -> Stored {
        Stored {
            internal,
            header,
            body,
        }
    }

    /// `meta` with `body`.
    pub(super) fn from_meta(meta: &CacheMeta, body: Bytes) -> Result<Stored> {
        let (internal, header) = meta.serialize()?;
        Ok(Stored::new(internal, header, body))
    }

    pub(super) fn meta(&self) -> Result<CacheMeta> {
        CacheMeta::deserialize(&self.internal, &self.header)
    }

    /// What the entry costs the memory tier.
    pub(super) fn weight(&self) -> usize {
        self.internal.len() + self.header.len() + self.body.len() + ENTRY_OVERHEAD
    }

    /// The entry as one file: magic, lengths, metadata, body.
    pub(super) fn file_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.file_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.internal.len() as u32).to_be_bytes());
        out.extend_from_slice(&(self.header.len() as u32).to_be_bytes());
        out.extend_from_slice(&(self.body.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.internal);
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.body);
        out
    }

    pub(super) fn file_len(&self) -> usize {
        HEAD_LEN + self.internal.len() + self.header.len() + self.body.len()
    }

    /// Reads a file written by [`Stored::file_bytes`]; `None` when it is not
    /// one whole such file (torn, truncated, foreign).
    pub(super) fn from_file_bytes(bytes: Vec<u8>) -> Option<Stored> {
        let head = bytes.get(..HEAD_LEN)?;
        if &head[..4] != MAGIC {
            return None;
        }
        let internal_len = u32::from_be_bytes(head[4..8].try_into().ok()?) as usize;
        let header_len = u32::from_be_bytes(head[8..12].try_into().ok()?) as usize;
        let body_len = usize::try_from(u64::from_be_bytes(head[12..20].try_into().ok()?)).ok()?;
        let total = HEAD_LEN
            .checked_add(internal_len)?
            .checked_add(header_len)?
            .checked_add(body_len)?;
        if bytes.len() != total {
            return None;
        }
        let internal = bytes[HEAD_LEN..HEAD_LEN + internal_len].to_vec();
        let header = bytes[HEAD_LEN + internal_len..HEAD_LEN + internal_len + header_len].to_vec();
        let body = Bytes::from(bytes).slice(total - body_len..);
        Some(Stored::new(internal, header, body))
    }
}

/// Reads a stored body out: whole, or the ranges pingora seeks to.
pub(super) struct BodyReader {
    body: Bytes,
    /// What the next read gives: all of `body`, or the range sought last.
    next: Bytes,
    done: bool,
}

impl BodyReader {
    pub(super) fn new(body: Bytes) -> BodyReader {
        BodyReader {
            next: body.clone(),
            body,
            done: false,
        }
    }
}

#[async_trait]
impl HandleHit for BodyReader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(None);
        }
        Ok(Some(self.next.clone()))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    /// Makes the next read give `start..end` of the body (`end` exclusive and
    /// capped at the body's end, the whole rest when `None`); each seek starts
    /// from the whole body, so one reader serves every part of a multipart
    /// range. An error when `start` is not inside the body.
    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.map_or(len, |e| e.min(len));
        if start >= len || start > end {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("range {start}..{end} outside a body of {len}"),
            );
        }
        self.next = self.body.slice(start..end);
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_reads_back_whole_and_a_torn_one_not_at_all() {
        let stored = Stored::new(
            b"meta".to_vec(),
            b"head".to_vec(),
            Bytes::from_static(b"body!"),
        );
        let bytes = stored.file_bytes();
        assert_eq!(bytes.len(), stored.file_len());
        let back = Stored::from_file_bytes(bytes.clone()).unwrap();
        assert_eq!(back.internal, b"meta");
        assert_eq!(back.header, b"head");
        assert_eq!(&back.body[..], b"body!");
        for cut in [0, 3, HEAD_LEN, bytes.len() - 1] {
            assert!(
                Stored::from_file_bytes(bytes[..cut].to_vec()).is_none(),
                "{cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Stored::from_file_bytes(longer).is_none());
        let mut foreign = bytes;
        foreign[0] = b'X';
        assert!(Stored::from_file_bytes(foreign).is_none());
    }

    #[test]
    fn ids_round_trip_through_their_file_names() {
        let id = EntryId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(EntryId::from_hex(&id.hex()), Some(id));
        assert_eq!(EntryId::from_hex("tmp"), None);
    }

    #[tokio::test]
    async fn the_reader_gives_the_body_or_the_range_sought() {
        let mut reader = BodyReader::new(Bytes::from_static(b"0123456789"));
        assert_eq!(
            &reader.read_body().await.unwrap().unwrap()[..],
            b"0123456789"
        );
        assert!(reader.read_body().await.unwrap().is_none());
        let mut ranged = BodyReader::new(Bytes::from_static(b"0123456789"));
        ranged.seek(2, Some(5)).unwrap();
        assert_eq!(&ranged.read_body().await.unwrap().unwrap()[..], b"234");
        assert!(ranged.read_body().await.unwrap().is_none());
        ranged.seek(8, Some(20)).unwrap();
        assert_eq!(&ranged.read_body().await.unwrap().unwrap()[..], b"89");
        assert!(ranged.seek(10, None).is_err());
    }
}
