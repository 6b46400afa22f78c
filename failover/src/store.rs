//! Opening the base object store: a local directory or an S3-compatible bucket, with the client
//! settings the drain and `verify-base` rely on. One place, so the daemon and the tools agree.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;

/// How to reach an S3-compatible bucket.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// The endpoint (`http://10.0.0.5:9000`); `None` = AWS.
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The region; `None` = `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Access key id; `None` = `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret; `None` = `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
}

/// A local directory as the base (it must exist).
pub fn open_directory(directory: &Path) -> Result<Arc<dyn ObjectStore>, String> {
    if !directory.is_dir() {
        return Err(format!(
            "the base directory {} does not exist or is not a directory",
            directory.display()
        ));
    }
    let store = object_store::local::LocalFileSystem::new_with_prefix(directory)
        .map_err(|error| format!("base directory {}: {error}", directory.display()))?;
    Ok(Arc::new(store))
}

/// An S3 bucket as the base. Credentials come from `settings` or the environment; missing ones
/// are an error here rather than a confusing failure at the first upload.
pub fn open_s3(settings: &S3Settings) -> Result<Arc<dyn ObjectStore>, String> {
    let bucket = &settings.bucket;
    // Client options first: `with_client_options` replaces them all, `with_allow_http` among them.
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_client_options(object_store::ClientOptions::new().with_connect_timeout(Duration::from_secs(10)))
        .with_bucket_name(bucket)
        .with_retry(object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
            ..object_store::RetryConfig::default()
        });
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
    }
    match &settings.region {
        Some(region) => builder = builder.with_region(region),
        None if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none() =>
        {
            builder = builder.with_region("us-east-1")
        }
        None => {}
    }
    let has_environment_keys = std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
        && std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some();
    let has_given_keys = settings.access_key_id.is_some() && settings.secret_access_key.is_some();
    if !has_environment_keys && !has_given_keys {
        return Err("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned());
    }
    if let Some(id) = &settings.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &settings.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    let endpoint = settings.endpoint.as_deref().unwrap_or("AWS");
    let store = builder.build().map_err(|error| format!("S3 store {endpoint} bucket {bucket}: {error}"))?;
    Ok(Arc::new(store))
}
