//! One stored answer: its metadata as pingora serializes it, and its body; the
//! file format the disk tier keeps it in; the hit handler that reads it out.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{HandleHit, Storage};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::LazyLock;
use std::time::SystemTime;

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
/// What one parsed header field costs beyond its name and value.
const FIELD_OVERHEAD: usize = 48;

/// The file format: magic, a CRC-32 of what follows the head, the three
/// lengths, then the three parts.
const MAGIC: &[u8; 4] = b"TGC2";
const HEAD_LEN: usize = 4 + 4 + 4 + 4 + 8;

/// pingora's serialized form of a response head with no fields: what a stored
/// entry's metadata is read with before its parsed head is put in, so a hit
/// does not decompress and parse the head again.
static BARE_HEADER: LazyLock<Option<Vec<u8>>> = LazyLock::new(|| {
    let bare = ResponseHeader::build(200, Some(0)).ok()?;
    let now = SystemTime::now();
    let (_, header) = CacheMeta::new(now, now, 0, 0, bare).serialize().ok()?;
    Some(header)
});

/// A stored answer.
pub(super) struct Stored {
    /// The first part of `CacheMeta::serialize`: freshness, times, variance.
    internal: Vec<u8>,
    /// The response head, parsed.
    head: ResponseHeader,
    pub(super) body: Bytes,
    /// What the entry costs the memory tier.
    weight: usize,
}

impl Stored {
    /// `meta` with `body`.
    pub(super) fn from_meta(meta: &CacheMeta, body: Bytes) -> Result<Stored> {
        let (internal, head) = Stored::parts_of(meta)?;
        Ok(Stored::new(internal, head, body))
    }

    /// What is kept of `meta`: its serialized internal part, and its head.
    pub(super) fn parts_of(meta: &CacheMeta) -> Result<(Vec<u8>, ResponseHeader)> {
        let (internal, _) = meta.serialize()?;
        Ok((internal, meta.response_header_copy()))
    }

    pub(super) fn new(internal: Vec<u8>, head: ResponseHeader, body: Bytes) -> Stored {
        let fields: usize = head
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
            .sum();
        let weight = internal.len() + fields + body.len() + ENTRY_OVERHEAD;
        Stored {
            internal,
            head,
            body,
            weight,
        }
    }

    /// The entry's metadata, for a hit.
    pub(super) fn meta(&self) -> Result<CacheMeta> {
        let bare = BARE_HEADER.as_deref().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "cannot serialize a bare head")
        })?;
        let mut meta = CacheMeta::deserialize(&self.internal, bare)?;
        *meta.response_header_mut() = self.head.clone();
        Ok(meta)
    }

    /// What the entry costs the memory tier.
    pub(super) fn weight(&self) -> usize {
        self.weight
    }

    /// The entry as one file: magic, checksum, lengths, metadata (the head
    /// serialized as pingora does), body.
    pub(super) fn file_bytes(&self) -> Result<Vec<u8>> {
        let (internal, header) = self.meta()?.serialize()?;
        let mut out =
            Vec::with_capacity(HEAD_LEN + internal.len() + header.len() + self.body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(internal.len() as u32).to_be_bytes());
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&(self.body.len() as u64).to_be_bytes());
        out.extend_from_slice(&internal);
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.body);
        let crc = crc32fast::hash(&out[HEAD_LEN..]);
        out[4..8].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }

    /// Reads a file written by [`Stored::file_bytes`]; `None` when it is not
    /// one whole such file (torn, truncated, foreign, or not what its checksum
    /// says).
    pub(super) fn from_file_bytes(bytes: Vec<u8>) -> Option<Stored> {
        let head = bytes.get(..HEAD_LEN)?;
        if &head[..4] != MAGIC {
            return None;
        }
        let field = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(head.get(at..at + 4)?.try_into().ok()?))
        };
        let crc = field(4)?;
        let internal_len = field(8)? as usize;
        let header_len = field(12)? as usize;
        let body_len = usize::try_from(u64::from_be_bytes(head[16..24].try_into().ok()?)).ok()?;
        let total = HEAD_LEN
            .checked_add(internal_len)?
            .checked_add(header_len)?
            .checked_add(body_len)?;
        if bytes.len() != total || crc32fast::hash(&bytes[HEAD_LEN..]) != crc {
            return None;
        }
        let internal = &bytes[HEAD_LEN..HEAD_LEN + internal_len];
        let header = &bytes[HEAD_LEN + internal_len..HEAD_LEN + internal_len + header_len];
        let meta = CacheMeta::deserialize(internal, header).ok()?;
        let internal = internal.to_vec();
        let head = meta.response_header_copy();
        let body = Bytes::from(bytes).slice(total - body_len..);
        Some(Stored::new(internal, head, body))
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
pub(super) mod tests {
    use super::*;

    /// An entry of a 200 with `x-test: yes` and `body`, fresh for a minute.
    pub(crate) fn entry(body: &'static [u8]) -> Stored {
        entry_with(Bytes::from_static(body))
    }

    pub(crate) fn entry_with(body: Bytes) -> Stored {
        let mut head = ResponseHeader::build(200, None).unwrap();
        head.insert_header("x-test", "yes").unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + std::time::Duration::from_secs(60), now, 5, 9, head);
        Stored::from_meta(&meta, body).unwrap()
    }

    #[test]
    fn a_hit_gets_the_metadata_and_head_that_were_stored() {
        let meta = entry(b"body").meta().unwrap();
        assert!(meta.is_fresh(SystemTime::now()));
        assert_eq!(
            (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec()),
            (5, 9)
        );
        assert_eq!(meta.response_header().status, 200);
        assert_eq!(meta.headers()["x-test"], "yes");
    }

    #[test]
    fn a_file_reads_back_whole_and_a_torn_one_not_at_all() {
        let stored = entry(b"body!");
        let bytes = stored.file_bytes().unwrap();
        let back = Stored::from_file_bytes(bytes.clone()).unwrap();
        assert_eq!(back.internal, stored.internal);
        assert_eq!(back.meta().unwrap().headers()["x-test"], "yes");
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
        let mut foreign = bytes.clone();
        foreign[0] = b'X';
        assert!(Stored::from_file_bytes(foreign).is_none());
        // The right length, a byte of the body wrong: refused by its checksum.
        let mut flipped = bytes;
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(Stored::from_file_bytes(flipped).is_none());
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
