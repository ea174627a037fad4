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

pub(crate) struct TieredStorage {
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
    /// The disk files stay for a later process or a later topology.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.memory.clear();
    }

    fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
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
        let in_memory = self.memory.put(id, Arc::clone(&stored));
        if let Some(disk) = &self.disk {
            let written = tokio::task::spawn_blocking(move || disk.write(id, &stored));
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
        let _ = self.memory.put(id, Arc::clone(&stored));
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
        Ok(Box::new(Fill {
            storage: self,
            id: EntryId::of(key),
            internal,
            head,
            body: BytesMut::new(),
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
        if let Some(disk) = &self.disk {
            tokio::task::spawn_blocking(move || disk.write(id, &stored));
        }
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
    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let stored = Stored::new(self.internal, self.head, self.body.freeze());
        let weight = stored.weight();
        self.storage.store(self.id, stored).await;
        Ok(MissFinishType::Created(weight))
    }
}
