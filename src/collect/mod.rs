//! Live collection from Azure: ARM, Microsoft Graph and the Managed HSM data plane.
//!
//! Produces a [`Snapshot`]: the live `check` and `collect` share this one function, and
//! `check` evaluates its result exactly as `check --from` evaluates a file.

pub mod api;
pub mod credential;
pub mod http;
pub mod plan;
pub mod progress;
pub mod resource_graph;

use std::time::{Duration, Instant};

use crate::endpoint;
use crate::snapshot::Snapshot;

pub use plan::Source;

/// Everything the collector needs to know. Built by the binary from flags, env and config.
#[derive(Clone)]
pub struct CollectOptions {
    pub arm_endpoint: String,
    pub graph_endpoint: String,
    /// Used as-is for every request when present. Never printed (see `Debug`).
    pub access_token: Option<String>,
    /// Explicit subscriptions; empty means `GET /subscriptions`. With management groups: the
    /// subscriptions Resource Graph finds under them, narrowed to these when given.
    pub subscriptions: Vec<String>,
    /// Where the inventory lists come from.
    pub source: Source,
    /// `--management-group`: scope of the Resource Graph queries (needs `Source::ResourceGraph`).
    pub management_groups: Vec<String>,
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
            .field("source", &self.source)
            .field("management_groups", &self.management_groups)
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

/// Collect the estate: every read of the plan (see `plan.rs`), through the HTTP layer (see
/// `http.rs`). Partial failures are inside the snapshot; `Err` only when the options are
/// unusable (exit 2) or nothing could be read (exit 4).
pub async fn collect(opts: &CollectOptions) -> Result<Snapshot<api::Item>, CollectError> {
    collect_with(opts, None).await
}

/// [`collect`], handing each subscription and each vault's children to `sink` as soon as they
/// are complete (see [`plan::run_with`]): the snapshot returned then holds neither.
pub async fn collect_with(
    opts: &CollectOptions,
    sink: Option<plan::Sink<'_>>,
) -> Result<Snapshot<api::Item>, CollectError> {
    // Everything a user can get wrong is decided here, before any connection.
    let arm = endpoint::check("--arm-endpoint", &opts.arm_endpoint).map_err(CollectError::Usage)?;
    let graph =
        endpoint::check("--graph-endpoint", &opts.graph_endpoint).map_err(CollectError::Usage)?;
    for s in &opts.subscriptions {
        if s.trim().is_empty() || s.contains(['/', '?', '#']) || s.chars().any(char::is_whitespace)
        {
            return Err(CollectError::Usage(format!(
                "--subscription {s:?} is not a subscription id (expected a GUID such as 00000000-0000-0000-0000-000000000000)"
            )));
        }
    }
    for mg in &opts.management_groups {
        if mg.trim().is_empty()
            || mg.contains(['/', '\'', '"'])
            || mg.chars().any(char::is_whitespace)
        {
            return Err(CollectError::Usage(format!(
                "--management-group {mg:?} is not a management group id (expected a name such as mg-prod or a GUID)"
            )));
        }
    }
    if !opts.management_groups.is_empty() && opts.source != Source::ResourceGraph {
        return Err(CollectError::Usage(
            "--management-group reads Azure Resource Graph; it cannot be combined with --source arm"
                .into(),
        ));
    }
    if opts
        .access_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        return Err(CollectError::Usage(
            "--access-token (or CVM_BACKUP_ACCESS_TOKEN) is empty".into(),
        ));
    }
    if opts.concurrency == 0 {
        return Err(CollectError::Usage(
            "--concurrency must be at least 1".into(),
        ));
    }
    if opts.timeout.is_zero() || opts.request_timeout.is_zero() {
        return Err(CollectError::Usage(
            "--timeout and --request-timeout must be at least 1 second".into(),
        ));
    }
    let start = Instant::now();
    let deadline = start + opts.timeout;

    let redactor = http::Redactor::default();
    if let Some(t) = &opts.access_token {
        redactor.add(t.trim());
    }
    let credential = credential::build(opts.access_token.as_deref(), opts.request_timeout)
        .map_err(CollectError::Auth)?;
    if opts.access_token.is_none() {
        // Find a working credential once, up front: no login means one clear message now,
        // not a failed read per subscription.
        let scope = http::default_scope(&arm);
        let limit = opts.timeout.min(Duration::from_secs(120));
        match tokio::time::timeout(limit, credential.get_token(&[scope.as_str()])).await {
            Ok(Ok(t)) => redactor.add(t.token.secret()),
            Ok(Err(e)) => {
                let msg = redactor.scrub(&e.to_string());
                return Err(CollectError::Auth(if msg.contains("az login") {
                    msg
                } else {
                    format!("{msg}\n{}", credential::LOGIN_HELP)
                }));
            }
            Err(_) => {
                return Err(CollectError::Auth(format!(
                    "no credential produced a token for {scope} within {} s.\n{}",
                    limit.as_secs(),
                    credential::LOGIN_HELP
                )))
            }
        }
    }

    let settings = http::HttpSettings {
        arm_endpoint: arm.clone(),
        graph_endpoint: graph.clone(),
        concurrency: opts.concurrency,
        request_timeout: opts.request_timeout,
        overall_timeout: opts.timeout,
        deadline,
    };
    let api = http::PipelineApi::new(&settings, credential, redactor)
        .map_err(CollectError::Unreachable)?;

    let mut features = vec![plan::PREVIEW_FEATURE.to_string()];
    for f in &opts.extra_features {
        if !features.iter().any(|x| x.eq_ignore_ascii_case(f)) {
            features.push(f.clone());
        }
    }
    let cfg = plan::PlanConfig {
        arm,
        graph,
        arm_shown: opts.arm_endpoint.trim().to_string(),
        graph_shown: opts.graph_endpoint.trim().to_string(),
        subscriptions: opts
            .subscriptions
            .iter()
            .map(|s| s.trim().to_string())
            .collect(),
        principal_override: opts
            .backup_principal_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        features,
        static_token: opts.access_token.is_some(),
        source: opts.source,
        management_groups: opts
            .management_groups
            .iter()
            .map(|m| m.trim().to_string())
            .collect(),
        deadline,
    };
    let progress = progress::Progress::new(opts.show_progress);
    let result = plan::run_with(&api, &cfg, &progress, sink).await;
    progress.finish();
    tracing::debug!("collection finished in {} ms", start.elapsed().as_millis());
    result
}
