//! Repositories on S3-compatible object storage (feature `s3`), through the `object_store`
//! crate: `s3://BUCKET[/PREFIX]`, configured like the AWS tools from the environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint such as a test server on 127.0.0.1).
//! Path-style requests are used unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`, so that
//! S3-compatible servers work as they are. Each call blocks on a small runtime of its own:
//! the rest of the release layer is synchronous.

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// A bucket and a key prefix.
#[derive(Debug)]
pub(crate) struct S3 {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl S3 {
    /// `rest` is what follows `s3://`: `BUCKET` or `BUCKET/PREFIX`.
    pub(crate) fn open(rest: &str) -> Result<S3> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/').to_string();
        let bad = |d: String| Error::Repository {
            repo: format!("s3://{rest}"),
            detail: d,
        };
        if bucket.is_empty() {
            return Err(bad("no bucket name".into()));
        }
        // reqwest's rustls takes the process-wide provider: ring (an error means one is set).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if std::env::var("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_err() {
            b = b.with_virtual_hosted_style_request(false);
        }
        if let Ok(e) = std::env::var("AWS_ENDPOINT_URL") {
            b = b.with_endpoint(e);
        }
        let store = b
            .build()
            .map_err(|e| bad(format!("cannot configure S3 access: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the I/O runtime: {e}")))?;
        Ok(S3 {
            store,
            bucket: bucket.to_string(),
            prefix,
            rt,
        })
    }

    pub(crate) fn name(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn err(&self, key: &str, e: object_store::Error) -> Error {
        Error::Repository {
            repo: self.name(),
            detail: format!("{key}: {e}"),
        }
    }

    pub(crate) fn get(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let p = self.path(key);
        self.rt.block_on(async {
            let r = match self.store.get(&p).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.err(key, e)),
            };
            if r.meta.size > cap {
                return Err(Error::Repository {
                    repo: self.name(),
                    detail: format!("{key} is {} bytes, more than {cap}", r.meta.size),
                });
            }
            let b = r.bytes().await.map_err(|e| self.err(key, e))?;
            Ok(Some(b.to_vec()))
        })
    }

    pub(crate) fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let p = self.path(key);
        self.rt
            .block_on(self.store.put(&p, PutPayload::from(bytes.to_vec())))
            .map(|_| ())
            .map_err(|e| self.err(key, e))
    }

    pub(crate) fn len(&self, key: &str) -> Result<Option<u64>> {
        let p = self.path(key);
        match self.rt.block_on(self.store.head(&p)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    #[cfg_attr(not(feature = "diff"), allow(dead_code))] // publishing's
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let p = self.path(prefix.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(Some(&p)).try_collect())
            .map_err(|e| self.err(prefix, e))?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let k = m.location.to_string();
                k.strip_prefix(&strip).map_or(k.clone(), str::to_string)
            })
            .collect())
    }

    #[cfg_attr(not(feature = "diff"), allow(dead_code))] // publishing's
    pub(crate) fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match self.rt.block_on(self.store.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }
}
