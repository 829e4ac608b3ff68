//! The one interface between the collector and Azure.
//!
//! Everything the collector reads (ARM, Microsoft Graph, the Managed HSM data plane) goes through
//! [`AzureApi`]: a GET of one resource or a paged list. The implementation over azure_core 0.21's
//! pipeline is in `http.rs`; the traffic plan (`plan.rs`) only sees this trait, so the frozen 0.21
//! crates can be swapped without touching the plan or the rules.

use serde_json::Value;
use url::Url;

use crate::snapshot::{ErrorRecord, ListRead, SingleRead};

/// Which token a request needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Azure Resource Manager.
    Arm,
    /// Microsoft Graph.
    Graph,
    /// A Managed HSM data plane; the value is the token scope (`https://managedhsm.azure.net/.default`).
    ManagedHsm(String),
}

/// One read: where, with which token, and how to name it in `errors[]`.
#[derive(Debug, Clone)]
pub struct Read {
    pub url: Url,
    pub audience: Audience,
    /// ARM scope or URL path, as reported in an [`ErrorRecord`].
    pub scope: String,
    /// What was being done, e.g. "list disks".
    pub operation: String,
}

/// Why a read failed, for the collector's own decisions (exit 4 or an incomplete snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server answered with this HTTP status.
    Http(u16),
    /// No token could be obtained.
    Credential,
    /// No answer: connection refused, DNS, reset, request timeout.
    Network,
    /// The overall `--timeout` was reached.
    Deadline,
    /// The answer could not be used (not JSON, no `value` array).
    Malformed,
    /// The collector refused to follow it (a `nextLink` to another host, a loop).
    Refused,
}

impl FailureKind {
    /// 401 or no token: the credential is the problem.
    pub fn is_auth(self) -> bool {
        matches!(self, FailureKind::Http(401) | FailureKind::Credential)
    }
    /// Nothing answered.
    pub fn is_unreachable(self) -> bool {
        matches!(self, FailureKind::Network | FailureKind::Deadline)
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub record: ErrorRecord,
}

/// All pages of a list, or as many as could be read before `error`.
#[derive(Debug, Clone, Default)]
pub struct ListOutcome {
    pub items: Vec<Value>,
    /// How many pages were read successfully.
    pub pages: usize,
    pub error: Option<Failure>,
}

impl ListOutcome {
    /// The snapshot form: `{"value": …}`, `{"value": …, "error": …}` or `{"error": …}`.
    pub fn to_list_read(&self) -> ListRead {
        match &self.error {
            None => ListRead::ok(self.items.clone()),
            Some(f) if self.pages == 0 => ListRead::failed(f.record.clone()),
            Some(f) => ListRead {
                value: Some(self.items.clone()),
                error: Some(f.record.clone()),
            },
        }
    }
}

/// The result of one GET.
pub type GetOutcome = Result<Value, Failure>;

/// Snapshot form of a GET. A 404 is an error here; only the Graph lookup turns it into
/// `not_found` (see `plan.rs`).
pub fn to_single_read(outcome: &GetOutcome) -> SingleRead {
    match outcome {
        Ok(v) => SingleRead::ok(v.clone()),
        Err(f) => SingleRead::failed(f.record.clone()),
    }
}

/// Read access to Azure. Implementations retry, throttle, page and time out; callers only see
/// the outcome.
#[async_trait::async_trait]
pub trait AzureApi: Send + Sync {
    /// One GET; the raw JSON body on success.
    async fn get(&self, read: &Read) -> GetOutcome;
    /// A paged list: every page's `value` items, following `nextLink` while it stays on the
    /// same scheme, host and port as the request it came from.
    async fn list(&self, read: &Read) -> ListOutcome;
}
