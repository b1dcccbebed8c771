//! The object store: where bundles, signed manifests, reports and the leader
//! lease live (DESIGN.md "Object storage layout").
//!
//! Storage is dumb and untrusted: this module moves bytes and does
//! compare-and-swap on them, nothing more. Whatever it returns is checked by
//! `schemas::verify` before anyone acts on it.
//!
//! One URL names a store:
//! - `file:///abs/path`: a directory on this machine (created if missing);
//! - `s3://bucket/prefix`: S3 or an S3-compatible store, configured from the
//!   usual `AWS_*` variables (`AWS_ENDPOINT_URL` for a non-AWS endpoint; plain
//!   http is allowed only to a loopback host);
//! - `memory://`: in this process only (tests, dry runs).
//!
//! Conditional writes. S3 and memory stores do them natively (`If-None-Match:
//! *` to create, `If-Match: <etag>` to update). `LocalFileSystem` has no
//! `PutMode::Update` in object_store 0.12, so for `file://` an update takes an
//! exclusive `flock` on a lock file next to the object (`<key>#0`, a name
//! `LocalFileSystem` never lists nor serves), reads the object, compares, and
//! writes it by atomic rename. The etag of a `file://` object is the sha256 of
//! its bytes, so a compare can never mistake one content for another, whatever
//! the filesystem's timestamp granularity. The guarantee holds between
//! processes on one machine using this code, not across machines sharing a
//! network filesystem: use S3 for that.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, ObjectMeta, ObjectStore, PutMode, PutPayload, UpdateVersion};

use crate::metrics::{Request, StoreCount, StoreCounts, StoreLatency};

/// How many times `put_create` re-reads an object that is reported to exist
/// yet cannot be read, before giving up.
const CREATE_ATTEMPTS: usize = 3;

/// Ranges of a split listing requested at once.
const LIST_CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store url `{url}` {reason}")]
    Url { url: String, reason: &'static str },
    #[error("creating the store directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening object store `{url}`")]
    Open {
        url: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("invalid object key `{key}` in `{url}`")]
    Key {
        url: String,
        key: String,
        #[source]
        source: object_store::path::Error,
    },
    #[error("{op} `{key}` in `{url}`")]
    Request {
        op: &'static str,
        url: String,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("`{key}` in `{url}` answered 304 not modified to an unconditional get")]
    NotModified { url: String, key: String },
    #[error("`{key}` in `{url}` is {size} bytes, over the {max} expected at most")]
    TooLarge {
        url: String,
        key: String,
        size: u64,
        max: u64,
    },
    #[error("`{key}` in `{url}` has no etag")]
    NoETag { url: String, key: String },
    #[error("`{key}` in `{url}` exists but cannot be read, {attempts} times in a row")]
    Vanishing {
        url: String,
        key: String,
        attempts: usize,
    },
    #[error("writing `{key}` of `{url}` out")]
    WriteOut {
        url: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An object's version as the store reports it: the S3 or memory etag, or
/// `sha256:<hex>` of the bytes for `file://`. Only meaningful to the store
/// that returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ETag(String);

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object's bytes and the version they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub bytes: Bytes,
    pub etag: ETag,
}

/// The answer to a conditional GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// The object still has the etag we had.
    NotModified,
    Found(Object),
    Missing,
}

/// The result of a create-only put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    Created,
    /// Something was there already; `identical` if it has the same bytes,
    /// which for a content-addressed bundle means the upload was done before.
    Exists {
        identical: bool,
    },
}

/// The result of a compare-and-swap put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    Updated {
        etag: ETag,
    },
    /// The object was not in the expected version (or exists, for a
    /// create-only put): someone else wrote first.
    Conflict,
}

/// An object store and the key prefix everything lives under.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The URL the store was opened from, for messages.
    url: String,
    /// Set for `file://`: conditional updates are done here under a lock.
    local: Option<Arc<LocalFileSystem>>,
    /// How long requests take; shared by clones.
    latency: Arc<StoreLatency>,
    /// How many requests of each kind, and bytes; shared by clones.
    counts: Arc<StoreCounts>,
    /// A read-only HTTP mirror ([`Store::open_mirror`]): an object without
    /// an etag is versioned by its bytes.
    mirror: bool,
}

/// One key of a listing, with what the listing says of its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    /// Changes whenever the object is rewritten (its etag, size and time
    /// as the listing gives them): an unchanged version need not be read.
    pub version: String,
    /// When the store last wrote it (the store's clock, not a node's).
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

impl Store {
    /// Opens the store a URL names (see the module documentation).
    pub fn open(url: &str) -> Result<Store, StoreError> {
        if let Some(path) = url.strip_prefix("file://") {
            Store::open_file(url, path)
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let mut builder = AmazonS3Builder::from_env();
            // Both spellings are read by from_env in no particular order;
            // the AWS CLI's name wins.
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                builder = builder.with_endpoint(endpoint);
            }
            Store::open_s3(url, rest, builder)
        } else if let Some(rest) = url.strip_prefix("memory://") {
            let prefix = parse_prefix(url, rest)?;
            Ok(Store {
                inner: Arc::new(crate::memory::IndexedMemory::new()),
                prefix,
                url: url.to_owned(),
                local: None,
                latency: Arc::default(),
                counts: Arc::default(),
                mirror: false,
            })
        } else {
            Err(StoreError::Url {
                url: url.to_owned(),
                reason: "is not file:///abs/path, s3://bucket/prefix or memory://",
            })
        }
    }

    fn open_file(url: &str, path: &str) -> Result<Store, StoreError> {
        if !path.starts_with('/') {
            return Err(StoreError::Url {
                url: url.to_owned(),
                reason: "must name an absolute path on this machine (file:///abs/path)",
            });
        }
        let dir = PathBuf::from(path);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|source| StoreError::Open {
            url: url.to_owned(),
            source: Box::new(source),
        })?;
        let fs = Arc::new(fs);
        Ok(Store {
            inner: fs.clone(),
            prefix: Path::default(),
            url: url.to_owned(),
            local: Some(fs),
            latency: Arc::default(),
            counts: Arc::default(),
            mirror: false,
        })
    }

    /// `rest` is what follows `s3://`; `builder` carries the credentials,
    /// region and endpoint.
    pub(crate) fn open_s3(
        url: &str,
        rest: &str,
        builder: AmazonS3Builder,
    ) -> Result<Store, StoreError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Url {
                url: url.to_owned(),
                reason: "names no bucket (s3://bucket/prefix)",
            });
        }
        let prefix = parse_prefix(url, prefix)?;
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        let allow_http = match endpoint.as_deref() {
            Some(e) if e.starts_with("http://") => {
                if !gitfleet_schemas::net::is_loopback_http(e) {
                    return Err(StoreError::Url {
                        url: url.to_owned(),
                        reason: "has a plain http endpoint (AWS_ENDPOINT_URL) that is not \
                                 a loopback address: use https",
                    });
                }
                true
            }
            _ => false,
        };
        let s3 = builder
            .with_bucket_name(bucket)
            .with_allow_http(allow_http)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()
            .map_err(|source| StoreError::Open {
                url: url.to_owned(),
                source: Box::new(source),
            })?;
        Ok(Store {
            inner: Arc::new(s3),
            prefix,
            url: url.to_owned(),
            local: None,
            latency: Arc::default(),
            counts: Arc::default(),
            mirror: false,
        })
    }

    /// A read-only mirror of a store over HTTP(S): any web server or cache
    /// serving the store's objects under their keys below `url` (plain
    /// `http://` only on a loopback address). Everything read through it is
    /// verified as from the store itself: manifests by their signatures,
    /// bundles by their digests. Conditional GETs send the mirror's
    /// `ETag`; from a server without etags every poll reads the whole
    /// object and compares its bytes.
    pub fn open_mirror(url: &str) -> Result<Store, StoreError> {
        let bad = |reason| StoreError::Url {
            url: url.to_owned(),
            reason,
        };
        let allow_http = if url.starts_with("https://") {
            false
        } else if url.starts_with("http://") {
            if !gitfleet_schemas::net::is_loopback_http(url) {
                return Err(bad(
                    "is a plain http mirror that is not a loopback address: use https",
                ));
            }
            true
        } else {
            return Err(bad("is not an http(s):// mirror url"));
        };
        let http = object_store::http::HttpBuilder::new()
            .with_url(url.trim_end_matches('/'))
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_connect_timeout(std::time::Duration::from_secs(5))
                    .with_timeout(std::time::Duration::from_secs(30)),
            )
            // A mirror that fails is passed over for the next source at
            // once, not retried for minutes.
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                retry_timeout: std::time::Duration::from_secs(5),
                ..object_store::RetryConfig::default()
            })
            .build()
            .map_err(|source| StoreError::Open {
                url: url.to_owned(),
                source: Box::new(source),
            })?;
        Ok(Store {
            inner: Arc::new(http),
            prefix: Path::default(),
            url: url.to_owned(),
            local: None,
            latency: Arc::default(),
            counts: Arc::default(),
            mirror: true,
        })
    }

    /// How long this store's requests have taken (shared by its clones).
    pub fn latency(&self) -> &StoreLatency {
        &self.latency
    }

    /// How many requests of each kind this store (and its clones) made.
    pub fn counts(&self) -> StoreCount {
        self.counts.snapshot()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object at `key`, if there is one.
    pub async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        self.get_at_most(key, u64::MAX).await
    }

    /// The object at `key`, if there is one, unless it is larger than
    /// `max` bytes: then an error, before its body is read.
    pub async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Object>, StoreError> {
        let location = self.location(key)?;
        match self
            .get_opts(key, &location, GetOptions::default(), max)
            .await?
        {
            Fetch::Found(object) => Ok(Some(object)),
            Fetch::Missing => Ok(None),
            Fetch::NotModified => Err(StoreError::NotModified {
                url: self.url.clone(),
                key: key.to_owned(),
            }),
        }
    }

    /// Stream the object at `key` into `out` as it arrives, never holding
    /// it whole: `Some(length)` once written, `None` if there is no such
    /// object, an error if it is larger than `max` bytes (before its body
    /// is read when the store says so, else as soon as it goes over).
    pub async fn get_into(
        &self,
        key: &str,
        max: u64,
        out: &mut impl std::io::Write,
    ) -> Result<Option<u64>, StoreError> {
        use futures::StreamExt as _;
        let location = self.location(key)?;
        let _timer = self.latency.get.start();
        self.counts.count(Request::Get);
        let result = match self.inner.get_opts(&location, GetOptions::default()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(self.request("getting", key, source)),
        };
        let too_large = |size: u64| {
            self.counts.error();
            StoreError::TooLarge {
                url: self.url.clone(),
                key: key.to_owned(),
                size,
                max,
            }
        };
        if result.meta.size > max {
            return Err(too_large(result.meta.size));
        }
        let mut written: u64 = 0;
        let mut body = result.into_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| self.request("reading", key, source))?;
            self.counts.bytes_in(chunk.len());
            written = written.saturating_add(chunk.len() as u64);
            if written > max {
                return Err(too_large(written));
            }
            out.write_all(&chunk)
                .map_err(|source| StoreError::WriteOut {
                    url: self.url.clone(),
                    key: key.to_owned(),
                    source,
                })?;
        }
        Ok(Some(written))
    }

    /// The object at `key` unless it still has `etag`: one conditional GET
    /// (`If-None-Match`), so a poll that finds nothing new costs one request
    /// and no body.
    pub async fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&ETag>,
    ) -> Result<Fetch, StoreError> {
        self.get_if_changed_at_most(key, etag, u64::MAX).await
    }

    /// [`Store::get_if_changed`], refusing an object larger than `max`
    /// bytes before its body is read.
    pub async fn get_if_changed_at_most(
        &self,
        key: &str,
        etag: Option<&ETag>,
        max: u64,
    ) -> Result<Fetch, StoreError> {
        let location = self.location(key)?;
        if self.local.is_some() {
            // Local etags are content digests: read and compare.
            let fetched = self
                .get_opts(key, &location, GetOptions::default(), max)
                .await?;
            return Ok(match fetched {
                Fetch::Found(object) if Some(&object.etag) == etag => Fetch::NotModified,
                other => other,
            });
        }
        let options = GetOptions {
            // A version made from the bytes means nothing to the server.
            if_none_match: etag.filter(|e| !is_content_etag(e)).map(|e| e.0.clone()),
            ..GetOptions::default()
        };
        Ok(match self.get_opts(key, &location, options, max).await? {
            // A mirror without etags: the same bytes are no change.
            Fetch::Found(object) if Some(&object.etag) == etag => Fetch::NotModified,
            other => other,
        })
    }

    /// Writes `bytes` at `key` unless something is there already. An object
    /// already there is read and compared, so re-uploading a content-addressed
    /// bundle is harmless and a different one under the same name is seen.
    pub async fn put_create(&self, key: &str, bytes: Bytes) -> Result<Create, StoreError> {
        let _timer = self.latency.put.start();
        let location = self.location(key)?;
        for _ in 0..CREATE_ATTEMPTS {
            self.counts.count(Request::PutConditional);
            self.counts.bytes_out(bytes.len());
            let put = self
                .inner
                .put_opts(
                    &location,
                    PutPayload::from(bytes.clone()),
                    PutMode::Create.into(),
                )
                .await;
            match put {
                Ok(_) => return Ok(Create::Created),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(source) => return Err(self.request("creating", key, source)),
            }
            if let Some(existing) = self.get(key).await? {
                return Ok(Create::Exists {
                    identical: existing.bytes == bytes,
                });
            }
            // Reported to exist, then not found: deleted in between. Retry.
        }
        Err(StoreError::Vanishing {
            url: self.url.clone(),
            key: key.to_owned(),
            attempts: CREATE_ATTEMPTS,
        })
    }

    /// Writes `bytes` at `key`, replacing whatever is there: for objects
    /// with one writer, such as a node's own status report. Readers see the
    /// old or the new object whole (a `file://` put renames a temporary
    /// file into place).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let _timer = self.latency.put.start();
        let location = self.location(key)?;
        self.counts.count(Request::Put);
        self.counts.bytes_out(bytes.len());
        self.inner
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|source| self.request("writing", key, source))?;
        Ok(())
    }

    /// The size of the object at `key`, without its bytes (a HEAD request,
    /// counted as a get); `None` when there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let _timer = self.latency.get.start();
        let location = self.location(key)?;
        self.counts.count(Request::Get);
        match self.inner.head(&location).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(self.request("looking up", key, source)),
        }
    }

    /// Removes `key`; an object already gone is no error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let _timer = self.latency.put.start();
        let location = self.location(key)?;
        self.counts.count(Request::Delete);
        match self.inner.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.request("removing", key, source)),
        }
    }

    /// Compare-and-swap: writes `bytes` at `key` only if the object is at
    /// `expected` (`None`: only if there is no object yet).
    pub async fn put_if_match(
        &self,
        key: &str,
        bytes: Bytes,
        expected: Option<&ETag>,
    ) -> Result<Update, StoreError> {
        let _timer = self.latency.put.start();
        let location = self.location(key)?;
        self.counts.count(Request::PutConditional);
        self.counts.bytes_out(bytes.len());
        match (expected, &self.local) {
            (None, _) => {
                let put = self
                    .inner
                    .put_opts(
                        &location,
                        PutPayload::from(bytes.clone()),
                        PutMode::Create.into(),
                    )
                    .await;
                match put {
                    Ok(result) => Ok(Update::Updated {
                        etag: self.written_etag(key, &bytes, result.e_tag)?,
                    }),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(Update::Conflict),
                    Err(source) => Err(self.request("creating", key, source)),
                }
            }
            (Some(expected), Some(fs)) => {
                self.local_update(fs, key, &location, bytes, expected).await
            }
            (Some(expected), None) => {
                let mode = PutMode::Update(UpdateVersion {
                    e_tag: Some(expected.0.clone()),
                    version: None,
                });
                let put = self
                    .inner
                    .put_opts(&location, PutPayload::from(bytes.clone()), mode.into())
                    .await;
                match put {
                    Ok(result) => Ok(Update::Updated {
                        etag: self.written_etag(key, &bytes, result.e_tag)?,
                    }),
                    // 412, or 409 from S3 when concurrent If-Match writes
                    // kept conflicting through the retries.
                    Err(
                        object_store::Error::Precondition { .. }
                        | object_store::Error::AlreadyExists { .. },
                    ) => Ok(Update::Conflict),
                    Err(source) => Err(self.request("updating", key, source)),
                }
            }
        }
    }

    /// The keys under `prefix` (whole path segments: `status` or `status/`
    /// lists `status/a.json`, `stat` does not), relative to the store's
    /// prefix, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_versions(prefix)
            .await?
            .into_iter()
            .map(|l| l.key)
            .collect())
    }

    /// As [`Store::list`], with each object's version and write time as
    /// the listing gives them (no request per object). A listing is one
    /// request per 1,000 keys on S3; they are counted as such.
    pub async fn list_versions(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.list_versions_split(prefix, &[]).await
    }

    /// As [`Store::list_versions`], listed in parallel: one listing per
    /// range between the keys of `splits` (sorted keys, such as every
    /// 1,000th key of the last listing), each from the key after its
    /// start (S3's `start-after`) and stopped at its end, so the ranges
    /// cost what one listing costs, at the time of the longest range.
    pub async fn list_versions_split(
        &self,
        prefix: &str,
        splits: &[String],
    ) -> Result<Vec<Listed>, StoreError> {
        let _timer = self.latency.list.start();
        let location = self.location(prefix.trim_end_matches('/'))?;
        // A range stops at its end key, which needs keys in order: a
        // `file://` store lists in directory order, so it lists whole.
        let splits = if self.local.is_some() { &[] } else { splits };
        let mut bounds = Vec::with_capacity(splits.len());
        for key in splits {
            bounds.push(self.location(key)?);
        }
        let ranges = (0..=bounds.len()).map(|i| {
            let start = i.checked_sub(1).map(|j| bounds[j].clone());
            let end = bounds.get(i).cloned();
            let location = location.clone();
            async move {
                let mut stream = match &start {
                    Some(after) => self.inner.list_with_offset(Some(&location), after),
                    None => self.inner.list(Some(&location)),
                };
                let mut metas = Vec::new();
                while let Some(meta) = stream.next().await {
                    let meta = meta?;
                    if end
                        .as_ref()
                        .is_some_and(|e| meta.location.as_ref() > e.as_ref())
                    {
                        break;
                    }
                    let last = end
                        .as_ref()
                        .is_some_and(|e| meta.location.as_ref() == e.as_ref());
                    metas.push(meta);
                    // Stop at the range's end without asking for the
                    // next page.
                    if last {
                        break;
                    }
                }
                Ok::<_, object_store::Error>(metas)
            }
        });
        let ranges: Vec<Vec<ObjectMeta>> = futures::stream::iter(ranges)
            .buffered(LIST_CONCURRENCY)
            .try_collect()
            .await
            .map_err(|source| self.request("listing", prefix, source))?;
        for metas in &ranges {
            for _ in 0..metas.len().div_ceil(1000).max(1) {
                self.counts.count(Request::List);
            }
        }
        let mut out: Vec<Listed> = ranges
            .iter()
            .flatten()
            .filter_map(|meta| {
                let parts = meta.location.prefix_match(&self.prefix)?;
                let key = parts
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                Some(Listed {
                    key,
                    version: format!(
                        "{}|{}|{}",
                        meta.e_tag.as_deref().unwrap_or(""),
                        meta.size,
                        meta.last_modified.timestamp_nanos_opt().unwrap_or_default()
                    ),
                    last_modified: meta.last_modified,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    /// The same objects, with a count of requests of its own: one party's
    /// cost where several share a store (a simulator's agents and the
    /// reconciler in one process).
    pub fn with_own_counts(&self) -> Store {
        Store {
            counts: Arc::default(),
            ..self.clone()
        }
    }

    /// This store with every request taking at least `by` longer (a
    /// listing: per 1,000 keys), as S3's do: for benchmarks and the
    /// simulator. Clones share the counts.
    pub fn with_latency(&self, by: std::time::Duration) -> Store {
        Store {
            inner: Arc::new(crate::delay::Delayed {
                inner: Arc::clone(&self.inner),
                by,
            }),
            ..self.clone()
        }
    }

    /// Read-compare-write under an exclusive lock on `<key>#0`, for
    /// `file://` stores (see the module documentation).
    async fn local_update(
        &self,
        fs: &LocalFileSystem,
        key: &str,
        location: &Path,
        bytes: Bytes,
        expected: &ETag,
    ) -> Result<Update, StoreError> {
        let path = fs
            .path_to_filesystem(location)
            .map_err(|source| self.request("locating", key, source))?;
        let _lock = lock_file(path).await?;
        match self.get(key).await? {
            Some(current) if current.etag == *expected => {}
            _ => return Ok(Update::Conflict),
        }
        self.inner
            .put_opts(
                location,
                PutPayload::from(bytes.clone()),
                PutMode::Overwrite.into(),
            )
            .await
            .map_err(|source| self.request("updating", key, source))?;
        Ok(Update::Updated {
            etag: content_etag(&bytes),
        })
        // _lock is released here, after the rename that published the bytes.
    }

    async fn get_opts(
        &self,
        key: &str,
        location: &Path,
        options: GetOptions,
        max: u64,
    ) -> Result<Fetch, StoreError> {
        let _timer = self.latency.get.start();
        let result = match self.inner.get_opts(location, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                self.counts.count(Request::Get);
                return Ok(Fetch::Missing);
            }
            Err(object_store::Error::NotModified { .. }) => {
                self.counts.count(Request::GetNotModified);
                return Ok(Fetch::NotModified);
            }
            Err(source) => {
                self.counts.count(Request::Get);
                return Err(self.request("getting", key, source));
            }
        };
        self.counts.count(Request::Get);
        if result.meta.size > max {
            self.counts.error();
            return Err(StoreError::TooLarge {
                url: self.url.clone(),
                key: key.to_owned(),
                size: result.meta.size,
                max,
            });
        }
        let etag = result.meta.e_tag.clone();
        let bytes = result
            .bytes()
            .await
            .map_err(|source| self.request("reading", key, source))?;
        self.counts.bytes_in(bytes.len());
        let etag = match etag {
            _ if self.local.is_some() => content_etag(&bytes),
            Some(etag) => ETag(etag),
            None if self.mirror => content_etag(&bytes),
            None => return Err(self.no_etag(key)),
        };
        Ok(Fetch::Found(Object { bytes, etag }))
    }

    /// The etag of what we just wrote.
    fn written_etag(
        &self,
        key: &str,
        bytes: &[u8],
        reported: Option<String>,
    ) -> Result<ETag, StoreError> {
        if self.local.is_some() {
            Ok(content_etag(bytes))
        } else {
            reported.map(ETag).ok_or_else(|| self.no_etag(key))
        }
    }

    fn location(&self, key: &str) -> Result<Path, StoreError> {
        let full = if self.prefix.as_ref().is_empty() {
            key.to_owned()
        } else if key.is_empty() {
            self.prefix.as_ref().to_owned()
        } else {
            format!("{}/{key}", self.prefix.as_ref())
        };
        Path::parse(full).map_err(|source| StoreError::Key {
            url: self.url.clone(),
            key: key.to_owned(),
            source,
        })
    }

    fn request(&self, op: &'static str, key: &str, source: object_store::Error) -> StoreError {
        self.counts.error();
        StoreError::Request {
            op,
            url: self.url.clone(),
            key: key.to_owned(),
            source: Box::new(source),
        }
    }

    fn no_etag(&self, key: &str) -> StoreError {
        StoreError::NoETag {
            url: self.url.clone(),
            key: key.to_owned(),
        }
    }
}

fn parse_prefix(url: &str, prefix: &str) -> Result<Path, StoreError> {
    Path::parse(prefix.trim_matches('/')).map_err(|_| StoreError::Url {
        url: url.to_owned(),
        reason: "has an invalid key prefix (empty, `.` or `..` segments)",
    })
}

/// Whether `etag` is one [`content_etag`] made (a server's etag that looks
/// the same only costs a whole read, compared by its bytes).
fn is_content_etag(etag: &ETag) -> bool {
    etag.0.starts_with("sha256:")
}

fn content_etag(bytes: &[u8]) -> ETag {
    ETag(format!(
        "sha256:{}",
        gitfleet_schemas::verify::sha256_hex(bytes)
    ))
}

/// Takes an exclusive lock on `<path>#0`, held until the file is dropped.
/// `flock` semantics: every open file description is its own holder, so two
/// stores in one process exclude each other as two processes do.
// `File::lock` is std since Rust 1.89; the workspace's rust-version must
// follow (see the report that introduced this).
async fn lock_file(path: PathBuf) -> Result<std::fs::File, StoreError> {
    let mut lock_path = path.into_os_string();
    lock_path.push("#0");
    let lock_path = PathBuf::from(lock_path);
    let task = tokio::task::spawn_blocking(move || {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
        };
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = lock_path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| (lock_path.clone(), source))?;
                }
                open()
            }
            other => other,
        }
        .map_err(|source| (lock_path.clone(), source))?;
        file.lock().map_err(|source| (lock_path.clone(), source))?;
        Ok(file)
    });
    match task.await {
        Ok(result) => result.map_err(|(path, source)| StoreError::Lock { path, source }),
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moto::Moto;

    fn memory() -> Store {
        Store::open("memory://").unwrap()
    }

    fn file(dir: &tempfile::TempDir) -> Store {
        Store::open(&format!("file://{}/store", dir.path().display())).unwrap()
    }

    /// The behaviour every backend must have.
    async fn contract(store: &Store) {
        let key = "channels/prod.json";
        assert_eq!(store.get(key).await.unwrap(), None);
        assert_eq!(
            store.get_if_changed(key, None).await.unwrap(),
            Fetch::Missing
        );

        // Create-only: twice with the same bytes is fine, different is seen.
        let bundle = "bundles/sha256/ab.tar.zst";
        let b1 = Bytes::from_static(b"bundle one");
        assert_eq!(
            store.put_create(bundle, b1.clone()).await.unwrap(),
            Create::Created
        );
        assert_eq!(
            store.put_create(bundle, b1.clone()).await.unwrap(),
            Create::Exists { identical: true }
        );
        assert_eq!(
            store
                .put_create(bundle, Bytes::from_static(b"bundle two"))
                .await
                .unwrap(),
            Create::Exists { identical: false }
        );
        assert_eq!(store.get(bundle).await.unwrap().unwrap().bytes, b1);
        // Streamed out, within its length, over it, or missing.
        let mut out = Vec::new();
        assert_eq!(
            store.get_into(bundle, 10, &mut out).await.unwrap(),
            Some(10)
        );
        assert_eq!(out, b1);
        let over = store.get_into(bundle, 9, &mut Vec::new()).await;
        assert!(
            matches!(
                over,
                Err(StoreError::TooLarge {
                    size: 10,
                    max: 9,
                    ..
                })
            ),
            "{over:?}"
        );
        assert_eq!(
            store
                .get_into("bundles/sha256/cd.tar.zst", 10, &mut Vec::new())
                .await
                .unwrap(),
            None
        );

        // Compare-and-swap.
        let v1 = Bytes::from_static(b"{\"serial\":1}");
        let Update::Updated { etag: e1 } = store.put_if_match(key, v1.clone(), None).await.unwrap()
        else {
            panic!("first create-only write must succeed")
        };
        assert_eq!(
            store.put_if_match(key, v1.clone(), None).await.unwrap(),
            Update::Conflict,
            "create-only over an existing object"
        );
        let got = store.get(key).await.unwrap().unwrap();
        assert_eq!(
            got,
            Object {
                bytes: v1.clone(),
                etag: e1.clone()
            }
        );

        // Conditional GET.
        assert_eq!(
            store.get_if_changed(key, Some(&e1)).await.unwrap(),
            Fetch::NotModified
        );
        assert_eq!(
            store.get_if_changed(key, None).await.unwrap(),
            Fetch::Found(got.clone())
        );

        let v2 = Bytes::from_static(b"{\"serial\":2}");
        let Update::Updated { etag: e2 } = store
            .put_if_match(key, v2.clone(), Some(&e1))
            .await
            .unwrap()
        else {
            panic!("update at the current etag must succeed")
        };
        assert_ne!(e1, e2);
        assert_eq!(
            store
                .put_if_match(key, Bytes::from_static(b"stale"), Some(&e1))
                .await
                .unwrap(),
            Update::Conflict,
            "update with a stale etag"
        );
        assert_eq!(
            store.get_if_changed(key, Some(&e1)).await.unwrap(),
            Fetch::Found(Object {
                bytes: v2.clone(),
                etag: e2.clone()
            })
        );
        assert_eq!(
            store.get_if_changed(key, Some(&e2)).await.unwrap(),
            Fetch::NotModified
        );
        assert_eq!(
            store
                .put_if_match("channels/none.json", v2.clone(), Some(&e2))
                .await
                .unwrap(),
            Update::Conflict,
            "update of a missing object"
        );

        store
            .put_create("status/b.json", Bytes::from_static(b"b"))
            .await
            .unwrap();
        store
            .put_create("status/a.json", Bytes::from_static(b"a"))
            .await
            .unwrap();
        store
            .put_create("statusx/c.json", Bytes::from_static(b"c"))
            .await
            .unwrap();
        assert_eq!(
            store.list("status/").await.unwrap(),
            ["status/a.json", "status/b.json"]
        );
        assert_eq!(store.list("enroll").await.unwrap(), Vec::<String>::new());
        assert_eq!(
            store.list("").await.unwrap(),
            [
                bundle,
                "channels/prod.json",
                "status/a.json",
                "status/b.json",
                "statusx/c.json"
            ]
        );
    }

    #[tokio::test]
    async fn a_split_listing_gives_what_one_listing_gives_for_as_many_requests() {
        let store = memory();
        for i in 0..2500 {
            store
                .put(&format!("status/n{i:05}.json"), Bytes::from_static(b"{}"))
                .await
                .unwrap();
        }
        store.put("other/x.json", Bytes::new()).await.unwrap();
        let before = store.counts();
        let whole = store.list_versions("status/").await.unwrap();
        assert_eq!(store.counts().since(&before).list, 3);
        assert_eq!(whole.len(), 2500);
        let splits: Vec<String> = whole
            .iter()
            .skip(999)
            .step_by(1000)
            .map(|l| l.key.clone())
            .collect();
        assert_eq!(splits.len(), 2);
        let before = store.counts();
        let split = store.list_versions_split("status/", &splits).await.unwrap();
        assert_eq!(split, whole);
        assert_eq!(store.counts().since(&before).list, 3);
        // A split key that is gone, and keys added: nothing lost or twice.
        store.delete(&splits[0]).await.unwrap();
        store
            .put("status/n00999x.json", Bytes::new())
            .await
            .unwrap();
        store.put("status/z.json", Bytes::new()).await.unwrap();
        let whole = store.list_versions("status/").await.unwrap();
        let split = store.list_versions_split("status/", &splits).await.unwrap();
        assert_eq!(split, whole);
    }

    #[tokio::test]
    async fn a_split_listing_of_a_file_store_loses_nothing_to_directory_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        for i in 0..2100 {
            store
                .put(&format!("status/n{i:05}.json"), Bytes::from_static(b"{}"))
                .await
                .unwrap();
        }
        let whole = store.list_versions("status/").await.unwrap();
        assert_eq!(whole.len(), 2100);
        let splits: Vec<String> = whole
            .iter()
            .skip(999)
            .step_by(1000)
            .map(|l| l.key.clone())
            .collect();
        let split = store.list_versions_split("status/", &splits).await.unwrap();
        assert_eq!(split, whole);
    }

    #[tokio::test]
    async fn a_store_with_latency_pays_it_per_request_and_per_page() {
        let store = memory();
        for i in 0..1500 {
            store
                .put(&format!("status/n{i:05}.json"), Bytes::new())
                .await
                .unwrap();
        }
        let slow = store.with_latency(std::time::Duration::from_millis(30));
        let started = std::time::Instant::now();
        assert!(slow.get("status/n00001.json").await.unwrap().is_some());
        let listed = slow.list_versions("status/").await.unwrap();
        // One GET and two pages: at least three waits.
        assert!(started.elapsed() >= std::time::Duration::from_millis(90));
        assert_eq!(listed.len(), 1500);
        // The clone shares the counts and the data.
        assert_eq!(store.counts().list, slow.counts().list);
    }

    #[tokio::test]
    async fn memory_store_keeps_the_contract() {
        contract(&memory()).await;
        contract(&Store::open("memory://fleet/a").unwrap()).await;
    }

    #[tokio::test]
    async fn file_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = file(&dir);
        contract(&store).await;
        // Lock files are neither listed nor addressable as objects.
        assert!(dir.path().join("store/channels/prod.json#0").exists());
        assert!(!store
            .list("")
            .await
            .unwrap()
            .iter()
            .any(|k| k.contains('#')));
        assert!(store.get("channels/prod.json#0").await.is_err());
    }

    #[tokio::test]
    async fn file_store_updates_are_exclusive_between_stores() {
        // Two stores on one directory (two open file descriptions, as two
        // processes would have) race 50 increments each through CAS loops.
        let dir = tempfile::tempdir().unwrap();
        let stores = [Arc::new(file(&dir)), Arc::new(file(&dir))];
        let key = "counter";
        stores[0]
            .put_if_match(key, Bytes::from_static(b"0"), None)
            .await
            .unwrap();
        let tasks: Vec<_> = stores
            .iter()
            .map(|store| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut done = 0;
                    while done < 50 {
                        let current = store.get(key).await.unwrap().unwrap();
                        let n: u32 = std::str::from_utf8(&current.bytes)
                            .unwrap()
                            .parse()
                            .unwrap();
                        let next = Bytes::from((n + 1).to_string());
                        if let Update::Updated { .. } = store
                            .put_if_match(key, next, Some(&current.etag))
                            .await
                            .unwrap()
                        {
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let last = stores[1].get(key).await.unwrap().unwrap();
        assert_eq!(&last.bytes[..], b"100");
    }

    #[tokio::test]
    async fn s3_store_keeps_the_contract() {
        let moto = Moto::start();
        contract(&moto.store("s3://gitfleet/fleet/one")).await;
        // A second prefix in the same bucket is a separate store.
        let other = moto.store("s3://gitfleet/fleet/two");
        assert_eq!(other.list("").await.unwrap(), Vec::<String>::new());
    }

    /// Why opening a store failed; a panic when it did not.
    fn refusal(opened: Result<Store, StoreError>) -> String {
        match opened {
            Err(e) => e.to_string(),
            Ok(store) => panic!("{} opened", store.url()),
        }
    }

    #[test]
    fn mirror_urls_are_https_or_loopback_http() {
        let bad = |url: &str| refusal(Store::open_mirror(url));
        assert_eq!(
            bad("http://cache.example.net/fleet"),
            "object store url `http://cache.example.net/fleet` is a plain http mirror that is not a loopback address: use https"
        );
        assert_eq!(
            bad("s3://bucket/fleet"),
            "object store url `s3://bucket/fleet` is not an http(s):// mirror url"
        );
        for good in [
            "https://cache.example.net/fleet/",
            "http://127.0.0.1:8080/fleet",
            "http://[::1]:8080",
        ] {
            assert_eq!(Store::open_mirror(good).unwrap().url(), good);
        }
    }

    #[test]
    fn urls_are_checked() {
        let bad = |url: &str| refusal(Store::open(url));
        assert_eq!(
            bad("gs://bucket"),
            "object store url `gs://bucket` is not file:///abs/path, s3://bucket/prefix or memory://"
        );
        assert!(bad("file://relative/dir").contains("absolute path"));
        assert!(bad("s3:///prefix").contains("names no bucket"));
        assert!(bad("memory://a//b").contains("invalid key prefix"));

        let s3 = |endpoint: &str| {
            let builder = AmazonS3Builder::new()
                .with_region("us-east-1")
                .with_endpoint(endpoint);
            Store::open_s3("s3://b/p", "b/p", builder).map(|_| ())
        };
        assert!(s3("http://127.0.0.1:5000").is_ok());
        assert!(s3("http://127.8.0.1").is_ok());
        assert!(s3("http://localhost:9000/").is_ok());
        assert!(s3("http://[::1]:9000").is_ok());
        assert!(s3("https://minio.example.com").is_ok());
        let err = s3("http://minio.example.com:9000").unwrap_err().to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        assert!(s3("http://127.0.0.1@evil.example.com").is_err());
        assert!(s3("http://localhost.evil.example.com").is_err());
    }

    #[tokio::test]
    async fn keys_are_checked() {
        let store = memory();
        let err = store.get("a//b").await.unwrap_err().to_string();
        assert_eq!(err, "invalid object key `a//b` in `memory://`");
        assert!(store.get("../escape").await.is_err());
    }
}
