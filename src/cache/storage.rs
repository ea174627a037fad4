//! The storage pingora's cache reads and fills: the memory tier in front of the
//! optional disk tier.
//!
//! A lookup tries memory, then disk (a disk hit is copied into memory). A fill
//! is buffered (pingora stops it past `max_object`) and, once complete, stored
//! in memory at once and written to disk in the background, so neither a slow
//! nor a full disk delays or fails the request.

use super::disk::DiskTier;
use super::entry::{BodyReader, EntryId, Stored};
use super::memory::MemoryTier;
use super::tier::TierMetrics;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::storage::{
    HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
    Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::http::ResponseHeader;
use pingora::Result;
use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The most a fill reserves up front for the body its Content-Length announces.
const MAX_RESERVED_BODY: usize = 64 << 20;

pub(crate) struct TieredStorage {
    /// The cache's name: the `cache` label.
    name: String,
    memory: MemoryTier,
    disk: Option<DiskTier>,
    /// Set when the cache left the topology: nothing more is stored or found.
    retired: AtomicBool,
}

impl TieredStorage {
    /// Storage of cache `name`: `memory` bytes in memory and, with `disk`, that
    /// directory bounded at its size.
    pub(crate) fn new(name: &str, memory: usize, disk: Option<(&Path, usize)>) -> TieredStorage {
        TieredStorage {
            name: name.to_string(),
            memory: MemoryTier::new(memory, TierMetrics::new(name, "memory")),
            disk: disk.map(|(root, size)| DiskTier::new(name, root, size)),
            retired: AtomicBool::new(false),
        }
    }

    pub(crate) fn disk_root(&self) -> Option<&Path> {
        self.disk.as_ref().map(DiskTier::root)
    }

    /// New bounds, applied at once (entries past them are evicted).
    pub(crate) fn set_limits(&self, memory: usize, disk: Option<usize>) {
        self.memory.set_limit(memory);
        if let (Some(tier), Some(size)) = (&self.disk, disk) {
            tier.set_limit(size);
        }
    }

    /// The cache left the topology: frees the memory tier and stops storing.
    /// The disk files stay for a later process or a later topology. The memory
    /// gauges go to 0 when `publish` (no live cache has the same name).
    pub(crate) fn retire(&self, publish: bool) {
        self.retired.store(true, Ordering::Release);
        self.memory.clear(publish);
    }

    /// The cache is back in the topology (same name and directory), with
    /// these bounds. Its metric handles are made again: the series of a cache
    /// that left every topology are removed (take the cache's
    /// [`crate::metrics::Lease`] first).
    pub(crate) fn revive(&self, memory: usize, disk: Option<usize>) {
        self.retired.store(false, Ordering::Release);
        self.memory
            .renew_metrics(TierMetrics::new(&self.name, "memory"));
        if let Some(tier) = &self.disk {
            tier.renew_metrics();
        }
        self.set_limits(memory, disk);
    }

    fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Keeps `stored` in memory under `id`, unless the storage is retired
    /// (checked again after, so a retirement meanwhile leaves nothing behind).
    fn keep_in_memory(&self, id: EntryId, stored: &Arc<Stored>) -> bool {
        if self.retired() {
            return false;
        }
        let kept = self.memory.put(id, Arc::clone(stored));
        if kept && self.retired() {
            self.memory.remove(id);
            return false;
        }
        kept
    }

    /// Writes `stored` to disk in the background, when there is a disk tier
    /// and room in its queue; the handle to await the write.
    fn write_to_disk(
        &'static self,
        id: EntryId,
        stored: Arc<Stored>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let disk = self.disk.as_ref()?;
        let ticket = disk.schedule()?;
        Some(tokio::task::spawn_blocking(move || {
            disk.write(id, &stored, ticket)
        }))
    }

    fn hit(stored: &Stored) -> Result<(CacheMeta, HitHandler)> {
        Ok((
            stored.meta()?,
            Box::new(BodyReader::new(stored.body.clone())),
        ))
    }

    /// Stores a completed fill: in memory now and on disk in the background;
    /// an answer too large for memory is written to disk before this returns,
    /// so the requests waiting for it find it.
    async fn store(&'static self, id: EntryId, stored: Stored) {
        if self.retired() {
            return;
        }
        let stored = Arc::new(stored);
        let in_memory = self.keep_in_memory(id, &stored);
        if let Some(written) = self.write_to_disk(id, stored) {
            if !in_memory {
                let _ = written.await;
            }
        }
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if self.retired() {
            return Ok(None);
        }
        let id = EntryId::of(key);
        if let Some(stored) = self.memory.get(id) {
            return Self::hit(&stored).map(Some);
        }
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        disk.index_once();
        let read = tokio::task::spawn_blocking(move || disk.read(id)).await;
        let Ok(Some(stored)) = read else {
            return Ok(None);
        };
        let stored = Arc::new(stored);
        let _ = self.keep_in_memory(id, &stored);
        Self::hit(&stored).map(Some)
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        if let Some(disk) = &self.disk {
            disk.index_once();
        }
        let (internal, head) = Stored::parts_of(meta)?;
        // pingora refuses a Content-Length over max_object before this.
        let announced = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        Ok(Box::new(Fill {
            storage: self,
            id: EntryId::of(key),
            internal,
            head,
            body: BytesMut::with_capacity(announced.min(MAX_RESERVED_BODY)),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let id = EntryId::of(target.key());
        let in_memory = self.memory.remove(id);
        let on_disk = match &self.disk {
            Some(disk) => tokio::task::spawn_blocking(move || disk.remove(id))
                .await
                .unwrap_or(false),
            None => false,
        };
        Ok(if in_memory || on_disk {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    /// Replaces the stored head after a revalidation (the body stays), in
    /// memory and, in the background, on disk.
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        if self.retired() {
            return Ok(false);
        }
        let id = EntryId::of(key);
        let body = match self.memory.get(id) {
            Some(stored) => Some(stored.body.clone()),
            None => match &self.disk {
                Some(disk) => tokio::task::spawn_blocking(move || disk.read(id))
                    .await
                    .ok()
                    .flatten()
                    .map(|stored| stored.body),
                None => None,
            },
        };
        let Some(body) = body else {
            return Ok(false);
        };
        let stored = Arc::new(Stored::from_meta(meta, body)?);
        self.memory.replace(id, Arc::clone(&stored));
        let _ = self.write_to_disk(id, stored);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// One answer being stored: what is kept of its metadata, and its body as it
/// arrives.
struct Fill {
    storage: &'static TieredStorage,
    id: EntryId,
    internal: Vec<u8>,
    head: ResponseHeader,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    /// Stores the complete answer. (Dropped without this, the fill is lost.)
    /// A body that grew past what was reserved for it is copied into a
    /// buffer of its size, so the memory tier holds what it counts.
    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let body = if self.body.capacity() > self.body.len() + self.body.len() / 8 {
            Bytes::copy_from_slice(&self.body)
        } else {
            self.body.freeze()
        };
        let stored = Stored::new(self.internal, self.head, body);
        let weight = stored.weight();
        self.storage.store(self.id, stored).await;
        Ok(MissFinishType::Created(weight))
    }
}
