//! A store whose every request takes at least a fixed time, as S3's do
//! (about 20 ms from a machine in the same region): benchmarks and the
//! simulator put it in front of `memory://` or `file://` to see what a
//! pass or a poll would take against the real thing.
//!
//! A request is one call, except a listing, which pays once per 1,000
//! keys it yields: S3 answers a listing a page of 1,000 keys at a time.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Keys in one listing page.
const PAGE: usize = 1000;

/// `inner`, each request delayed by `by`.
#[derive(Debug)]
pub struct Delayed {
    pub inner: Arc<dyn ObjectStore>,
    pub by: Duration,
}

impl fmt::Display for Delayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Delayed({}, {:?})", self.inner, self.by)
    }
}

impl Delayed {
    async fn wait(&self) {
        tokio::time::sleep(self.by).await;
    }

    /// `stream`, waiting `by` before each page of it (an empty listing
    /// is one page too).
    fn paged(
        by: Duration,
        stream: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        futures::stream::once(async move {
            tokio::time::sleep(by).await;
            stream
        })
        .flatten()
        .enumerate()
        .then(move |(i, item)| async move {
            if i > 0 && i % PAGE == 0 {
                tokio::time::sleep(by).await;
            }
            item
        })
        .boxed()
    }
}

#[async_trait]
impl ObjectStore for Delayed {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.wait().await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.wait().await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.wait().await;
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.wait().await;
        self.inner.get_range(location, range).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.wait().await;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.wait().await;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        Delayed::paged(self.by, self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        Delayed::paged(self.by, self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.wait().await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.wait().await;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.wait().await;
        self.inner.copy_if_not_exists(from, to).await
    }
}
