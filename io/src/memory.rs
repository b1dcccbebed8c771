//! The `memory://` store: object_store's in-memory store, with an index
//! of its keys so that a listing from a key (S3's `start-after`) costs
//! what it returns, as on S3, rather than a scan from the first key (the
//! in-memory store's own `list_with_offset` lists everything and filters).
//! Split listings over 100,000 keys would otherwise measure the stand-in,
//! not the code under test.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// [`InMemory`] and the metadata of every object it holds, by key.
#[derive(Debug, Default)]
pub struct IndexedMemory {
    inner: InMemory,
    index: Arc<RwLock<BTreeMap<Path, ObjectMeta>>>,
    /// Held across a write and its reindex, so the index takes writes in
    /// the order the store did.
    writes: tokio::sync::Mutex<()>,
}

/// Keys a listing takes from the index at a time: a listing read only in
/// part (stopped at a range's end) copies little more than it used.
const CHUNK: usize = 1000;

impl fmt::Display for IndexedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IndexedMemory")
    }
}

impl IndexedMemory {
    pub fn new() -> Self {
        IndexedMemory::default()
    }

    /// Index `location` as the store now has it.
    async fn reindex(&self, location: &Path) {
        let meta = self.inner.head(location).await.ok();
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        match meta {
            Some(meta) => {
                index.insert(location.clone(), meta);
            }
            None => {
                index.remove(location);
            }
        }
    }

    /// The indexed objects under `prefix` after `from` (excluded), in key
    /// order, taken from the index a chunk at a time as the stream is read.
    fn range(
        &self,
        prefix: Option<&Path>,
        from: Option<&Path>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let prefix = prefix.cloned().unwrap_or_default();
        let index = Arc::clone(&self.index);
        let after = from.filter(|a| a.as_ref() >= prefix.as_ref()).cloned();
        futures::stream::unfold(Some(after), move |state| {
            let index = Arc::clone(&index);
            let prefix = prefix.clone();
            async move {
                let after = state?;
                let chunk: Vec<ObjectMeta> = {
                    let index = index.read().unwrap_or_else(|p| p.into_inner());
                    let start = match &after {
                        Some(a) => Bound::Excluded(a),
                        None => Bound::Included(&prefix),
                    };
                    index
                        .range::<Path, _>((start, Bound::Unbounded))
                        .take_while(|(key, _)| key.as_ref().starts_with(prefix.as_ref()))
                        .filter(|(key, _)| {
                            key.prefix_match(&prefix)
                                .is_some_and(|mut x| x.next().is_some())
                        })
                        .take(CHUNK)
                        .map(|(_, meta)| meta.clone())
                        .collect()
                };
                let next = (chunk.len() == CHUNK).then(|| chunk.last().map(|m| m.location.clone()));
                Some((futures::stream::iter(chunk.into_iter().map(Ok)), next))
            }
        })
        .flatten()
        .boxed()
    }
}

#[async_trait]
impl ObjectStore for IndexedMemory {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let _write = self.writes.lock().await;
        let result = self.inner.put_opts(location, payload, opts).await;
        self.reindex(location).await;
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // Not indexed: listings miss an object written in parts (gitfleet
        // writes whole objects only).
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        let _write = self.writes.lock().await;
        let result = self.inner.delete(location).await;
        self.reindex(location).await;
        result
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.range(prefix, None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.range(prefix, Some(offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        let _write = self.writes.lock().await;
        let result = self.inner.copy(from, to).await;
        self.reindex(to).await;
        result
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        let _write = self.writes.lock().await;
        let result = self.inner.copy_if_not_exists(from, to).await;
        self.reindex(to).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listings_from_a_key_and_whole_agree_with_the_store() {
        let store = IndexedMemory::new();
        for key in ["a/1", "a/2", "a/3", "ab/1", "b/1"] {
            store
                .put(&Path::from(key), PutPayload::from_static(b"x"))
                .await
                .unwrap();
        }
        store.delete(&Path::from("a/2")).await.unwrap();
        let keys = |metas: Vec<Result<ObjectMeta>>| -> Vec<String> {
            metas
                .into_iter()
                .map(|m| m.unwrap().location.to_string())
                .collect()
        };
        let a = Path::from("a");
        assert_eq!(keys(store.list(Some(&a)).collect().await), ["a/1", "a/3"]);
        assert_eq!(
            keys(
                store
                    .list_with_offset(Some(&a), &Path::from("a/1"))
                    .collect()
                    .await
            ),
            ["a/3"]
        );
        assert_eq!(
            keys(store.list(None).collect().await),
            ["a/1", "a/3", "ab/1", "b/1"]
        );
        let got = store
            .get(&Path::from("a/3"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], b"x");
    }
}
