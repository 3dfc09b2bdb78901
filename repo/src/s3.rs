//! Reaching an association's bucket: credentials as S3 tools find them, and one
//! object_store client per association, with every wait bounded.
//!
//! Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN`), else from the credentials file (`AWS_SHARED_CREDENTIALS_FILE`, or
//! `~/.aws/credentials`), profile `AWS_PROFILE` or `default`. They are kept in memory only:
//! never stored with the association, never logged, never printed.

use std::sync::Arc;
use std::time::Duration;

use nacre::meta::repo::Association;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use crate::error::RepoError;
use crate::limits::{
    S3_CONNECT_TIMEOUT_MS, S3_MAX_RETRIES, S3_REQUEST_TIMEOUT_MS, S3_RETRY_TIMEOUT_MS,
    S3_UPLOAD_RETRY_TIMEOUT_MS, S3_UPLOAD_TIMEOUT_MS,
};

/// What a client of a bucket is for: its timeouts differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Listings, HEADs, GETs of chunks, deletes: each bounded by [`S3_REQUEST_TIMEOUT_MS`]
    /// (a reader may be waiting).
    Requests,
    /// PUTs of files and parts: bounded by [`S3_UPLOAD_TIMEOUT_MS`] in all (reqwest's read
    /// timeout runs from the request's start, body upload included, so it cannot bound a
    /// stall alone); a slow server takes a part longer than a request's bound.
    Uploads,
}

/// The region when neither the association nor the environment names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// S3 credentials.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    // Never the secret, nor the key id.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The credentials of this process's environment or credentials file.
pub fn credentials() -> Result<Credentials, RepoError> {
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: env("AWS_SESSION_TOKEN"),
        });
    }
    let file = env("AWS_SHARED_CREDENTIALS_FILE")
        .or_else(|| env("HOME").map(|home| format!("{home}/.aws/credentials")));
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let shown = file.clone().unwrap_or_else(|| "~/.aws/credentials".into());
    let none = || RepoError::Credentials {
        reason: format!(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give \
             profile {profile:?} in the credentials file ({shown})"
        ),
    };
    let Some(file) = file else {
        return Err(none());
    };
    let ini = match ini::Ini::load_from_file(&file) {
        Ok(ini) => ini,
        Err(ini::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(none()),
        Err(e) => {
            return Err(RepoError::Credentials {
                reason: format!("the credentials file {file} cannot be read: {e}"),
            });
        }
    };
    let section = ini.section(Some(profile.as_str())).ok_or_else(none)?;
    let get = |k: &str| section.get(k).map(str::to_owned).filter(|v| !v.is_empty());
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => Ok(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: get("aws_session_token"),
        }),
        _ => Err(RepoError::Credentials {
            reason: format!(
                "profile {profile:?} of {file} lacks aws_access_key_id or aws_secret_access_key"
            ),
        }),
    }
}

/// The association's region, or the environment's, or [`DEFAULT_REGION`].
pub fn region_of(assoc: &Association) -> String {
    assoc
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| DEFAULT_REGION.into())
}

/// A client of the association's bucket, for `purpose`.
pub fn store_for(
    assoc: &Association,
    creds: &Credentials,
    purpose: Purpose,
) -> Result<Arc<AmazonS3>, RepoError> {
    let (timeout, retry_timeout) = match purpose {
        Purpose::Requests => (S3_REQUEST_TIMEOUT_MS, S3_RETRY_TIMEOUT_MS),
        Purpose::Uploads => (S3_UPLOAD_TIMEOUT_MS, S3_UPLOAD_RETRY_TIMEOUT_MS),
    };
    let options = ClientOptions::new()
        .with_timeout(Duration::from_millis(timeout))
        .with_connect_timeout(Duration::from_millis(S3_CONNECT_TIMEOUT_MS))
        .with_allow_http(
            assoc
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
        );
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: S3_MAX_RETRIES,
        retry_timeout: Duration::from_millis(retry_timeout),
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&assoc.bucket)
        .with_region(region_of(assoc))
        .with_access_key_id(&creds.access_key_id)
        .with_secret_access_key(&creds.secret_access_key)
        .with_client_options(options)
        .with_retry(retry);
    if let Some(token) = &creds.session_token {
        builder = builder.with_token(token);
    }
    if let Some(endpoint) = &assoc.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    let store = builder.build().map_err(|e| RepoError::S3 {
        what: assoc.url(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(store))
}

/// Whether an S3 error says the object changed (a failed `If-Match`) or is gone.
pub fn is_lost(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::NotFound { .. } | object_store::Error::Precondition { .. }
    )
}
