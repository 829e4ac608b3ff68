//! Live collection from Azure: ARM, Microsoft Graph and the Managed HSM data plane.
//!
//! Produces a [`Snapshot`]: the live `check` and `collect` share this one function, and
//! `check` evaluates its result exactly as `check --from` evaluates a file.

use std::time::Duration;

use crate::snapshot::Snapshot;

/// Everything the collector needs to know. Built by the binary from flags, env and config.
#[derive(Clone)]
pub struct CollectOptions {
    pub arm_endpoint: String,
    pub graph_endpoint: String,
    /// Used as-is for every request when present. Never printed (see `Debug`).
    pub access_token: Option<String>,
    /// Explicit subscriptions; empty means `GET /subscriptions`.
    pub subscriptions: Vec<String>,
    /// Object id of the Backup Management Service; skips the Graph lookup when set.
    pub backup_principal_id: Option<String>,
    /// Feature names ("Namespace/Name") to read per subscription besides the preview feature.
    pub extra_features: Vec<String>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub request_timeout: Duration,
    pub show_progress: bool,
}

impl std::fmt::Debug for CollectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectOptions")
            .field("arm_endpoint", &self.arm_endpoint)
            .field("graph_endpoint", &self.graph_endpoint)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("subscriptions", &self.subscriptions)
            .field("backup_principal_id", &self.backup_principal_id)
            .field("extra_features", &self.extra_features)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Why collection could not produce a snapshot at all. Partial failures are not errors: they
/// are recorded inside the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// Bad endpoint or option: exit 2, decided before any connection.
    #[error("{0}")]
    Usage(String),
    /// No credential worked, or every request was refused as unauthenticated: exit 4.
    #[error("{0}")]
    Auth(String),
    /// Azure could not be reached at all: exit 4.
    #[error("{0}")]
    Unreachable(String),
}

/// Collect the estate. Not yet implemented: see issue 3.
pub async fn collect(opts: &CollectOptions) -> Result<Snapshot, CollectError> {
    let _ = opts;
    Err(CollectError::Unreachable(
        "live collection is not implemented yet; use --from SNAPSHOT".into(),
    ))
}
