//! The one interface between the collector and Azure.
//!
//! Everything the collector reads (ARM, Microsoft Graph, the Managed HSM data plane, Azure
//! Resource Graph) goes through [`AzureApi`]: a GET of one resource, a paged list, or a POST of a
//! query. The implementation over azure_core 0.21's pipeline is in `http.rs`; the traffic plan
//! (`plan.rs`) only sees this trait, so the frozen 0.21 crates can be swapped without touching
//! the plan or the rules.
//!
//! Payloads stay JSON text ([`Item`]): a page is validated and split into its items, never built
//! into a value tree, and the snapshot keeps them exactly as they were returned.

use bytes::Bytes;
use serde_json::value::RawValue;
use url::Url;

use crate::snapshot::{ErrorRecord, ListRead, SingleRead};

/// One resource (or response) as the JSON text Azure returned.
pub type Item = Box<RawValue>;

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
    /// Other reads wait for this one (a vault list, a DES list, …): it goes ahead of new reads.
    pub unlocks: bool,
    /// Continues a chain under way (a query's next page): it goes ahead of new reads too.
    pub continues: bool,
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
#[derive(Debug, Default)]
pub struct ListOutcome {
    pub items: Vec<Item>,
    /// How many pages were read successfully.
    pub pages: usize,
    pub error: Option<Failure>,
}

impl ListOutcome {
    /// The snapshot form: `{"value": …}`, `{"value": …, "error": …}` or `{"error": …}`.
    pub fn into_list_read(self) -> ListRead<Item> {
        match self.error {
            None => ListRead {
                value: Some(self.items),
                error: None,
            },
            Some(f) if self.pages == 0 => ListRead {
                value: None,
                error: Some(f.record),
            },
            Some(f) => ListRead {
                value: Some(self.items),
                error: Some(f.record),
            },
        }
    }
}

/// The result of one GET: the response body, validated as JSON.
pub type GetOutcome = Result<Item, Failure>;

/// Snapshot form of a GET. A 404 is an error here; only the Graph lookup turns it into
/// `not_found` (see `plan.rs`).
pub fn into_single_read(outcome: GetOutcome) -> SingleRead<Item> {
    match outcome {
        Ok(v) => SingleRead {
            value: Some(v),
            ..Default::default()
        },
        Err(f) => SingleRead {
            error: Some(f.record),
            ..Default::default()
        },
    }
}

/// The answer to a POST: its body and headers (names lower-cased).
#[derive(Debug, Clone, Default)]
pub struct Posted {
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
}

impl Posted {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub type PostOutcome = Result<Posted, Failure>;

/// Read access to Azure. Implementations retry, throttle, page and time out; callers only see
/// the outcome.
#[async_trait::async_trait]
pub trait AzureApi: Send + Sync {
    /// One GET; the raw JSON body on success.
    async fn get(&self, read: &Read) -> GetOutcome;
    /// A paged list: every page's `value` items, following `nextLink` while it stays on the
    /// same scheme, host and port as the request it came from.
    async fn list(&self, read: &Read) -> ListOutcome;
    /// One POST of a JSON body (a read: a Resource Graph query), retried like a GET.
    async fn post(&self, read: &Read, body: Bytes) -> PostOutcome;
}
