//! Azure Resource Graph as the inventory source (`--source resource-graph`).
//!
//! VMs, disks, snapshots, DESs, Recovery Services vaults, Key Vaults and Managed HSMs come from
//! `POST {arm}/providers/Microsoft.ResourceGraph/resources?api-version=2024-04-01`, one query per
//! resource type and batch of at most [`BATCH`] subscriptions (or per set of management groups),
//! `$top` 1000, following `$skipToken`. Rows are split back into the per-subscription lists of the
//! snapshot, so the estate and the rules never know which source was used.
//!
//! Throttling: Resource Graph counts queries per user in a window and says how many are left
//! (`x-ms-user-quota-remaining`) and when the window ends (`x-ms-user-quota-resets-after`,
//! `hh:mm:ss`). [`QuotaGate`] keeps no more queries in flight than are left and, at zero, waits
//! for the window to end. A 429 is retried after its `Retry-After` by the HTTP layer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tracing::debug;

use super::api::{AzureApi, Failure, FailureKind, Item, Posted, Read};
use crate::snapshot::ErrorRecord;

pub const API_RESOURCE_GRAPH: &str = "2024-04-01";
pub const PATH: &str = "/providers/Microsoft.ResourceGraph/resources";
/// Subscriptions per query (azqr's batch; Resource Graph's guidance: a few hundred at most).
pub const BATCH: usize = 300;
/// Rows per page: Resource Graph's maximum.
pub const TOP: u64 = 1000;
/// A query longer than this many pages is treated as a server loop.
const MAX_PAGES: usize = 10_000;

/// Every field the estate reads (ids, name, location, `properties.*`, `managedBy`), plus the
/// subscription the row belongs to.
pub const COLUMNS: &str =
    "id, name, type, location, subscriptionId, resourceGroup, managedBy, properties";

/// The query for one resource type (ARM type, any case: Resource Graph's are lower-case).
pub fn resources_query(arm_type: &str) -> String {
    format!(
        "resources | where type =~ '{}' | project {COLUMNS}",
        arm_type.to_ascii_lowercase()
    )
}

/// The subscriptions under the management groups given.
pub const SUBSCRIPTIONS_QUERY: &str =
    "resourcecontainers | where type =~ 'microsoft.resources/subscriptions' | project id, name, subscriptionId, properties";

/// What a query ranges over.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Subscriptions(&'a [String]),
    ManagementGroups(&'a [String]),
}

/// The request body of one page.
pub fn body(scope: Scope<'_>, query: &str, skip_token: Option<&str>) -> Bytes {
    let mut options = json!({"$top": TOP, "resultFormat": "objectArray"});
    if let Some(t) = skip_token {
        options["$skipToken"] = Value::String(t.to_string());
    }
    let mut b = json!({"query": query, "options": options});
    match scope {
        Scope::Subscriptions(s) => b["subscriptions"] = json!(s),
        Scope::ManagementGroups(m) => b["managementGroups"] = json!(m),
    }
    Bytes::from(b.to_string())
}

/// `hh:mm:ss` (fractions of a second allowed) as a duration.
pub fn parse_resets_after(s: &str) -> Option<Duration> {
    let mut parts = s.trim().split(':');
    let h: u64 = parts.next()?.trim().parse().ok()?;
    let m: u64 = parts.next()?.trim().parse().ok()?;
    let sec: f64 = parts.next()?.trim().parse().ok()?;
    if parts.next().is_some() || !sec.is_finite() || sec < 0.0 {
        return None;
    }
    Some(Duration::from_secs(h * 3600 + m * 60) + Duration::from_secs_f64(sec))
}

/// Queries in flight before any answer has reported the quota: Resource Graph's documented
/// default is 15 per 5-second window.
pub const ASSUMED_QUOTA: u64 = 15;

#[derive(Debug, Default)]
struct GateState {
    /// Queries left in the window, as last reported.
    remaining: Option<u64>,
    /// When the window ends.
    resets_at: Option<Instant>,
    /// Queries sent and not yet answered.
    in_flight: u64,
}

/// Resource Graph's per-user quota, as its answers report it: no more queries in flight than
/// are left in the window, and none while it is spent.
#[derive(Debug, Default)]
pub struct QuotaGate {
    state: Mutex<GateState>,
    answered: Notify,
}

impl QuotaGate {
    /// Waits until a query may be sent. `false` when the deadline comes first.
    pub async fn enter(&self, deadline: Instant) -> bool {
        loop {
            // Registered before the state is read, so an answer in between still wakes us.
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let (wake_at, nothing_in_flight) = {
                let Ok(mut st) = self.state.lock() else {
                    return true;
                };
                let now = Instant::now();
                if st.resets_at.is_some_and(|t| now >= t) {
                    st.remaining = None;
                    st.resets_at = None;
                }
                if st.in_flight < st.remaining.unwrap_or(ASSUMED_QUOTA) {
                    st.in_flight += 1;
                    return true;
                }
                // Nothing in flight will report back and no reset was given: try again in a
                // second (a 429 would say how long to wait).
                let reset = st.resets_at.unwrap_or(now + Duration::from_secs(1));
                (reset, st.in_flight == 0)
            };
            if nothing_in_flight && wake_at >= deadline {
                return false;
            }
            debug!(
                "Resource Graph quota spent; waiting up to {} ms",
                wake_at
                    .saturating_duration_since(Instant::now())
                    .as_millis()
            );
            let until = tokio::time::Instant::from_std(wake_at.min(deadline));
            tokio::select! {
                _ = &mut answered => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// A query was answered (`None`: it failed without an answer): what it says about the
    /// quota.
    pub fn leave(&self, answer: Option<&Posted>) {
        if let Ok(mut st) = self.state.lock() {
            st.in_flight = st.in_flight.saturating_sub(1);
            let remaining = answer
                .and_then(|p| p.header("x-ms-user-quota-remaining"))
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(r) = remaining {
                let now = Instant::now();
                let resets = answer
                    .and_then(|p| p.header("x-ms-user-quota-resets-after"))
                    .and_then(parse_resets_after)
                    .unwrap_or(Duration::from_secs(1));
                let reset = now + resets;
                match (st.remaining, st.resets_at) {
                    // The same window (reset times are rounded to seconds): answers may arrive
                    // out of order, so the lowest count is the true one.
                    (Some(cur), Some(t)) if t > now && reset <= t + Duration::from_secs(1) => {
                        st.remaining = Some(cur.min(r));
                        st.resets_at = Some(t.max(reset));
                    }
                    _ => {
                        st.remaining = Some(r);
                        st.resets_at = Some(reset);
                    }
                }
            }
        }
        self.answered.notify_waiters();
    }
}

/// Every row of a query, as JSON text, or as many as could be read before `error`.
#[derive(Debug, Default)]
pub struct QueryOutcome {
    pub rows: Vec<Item>,
    pub pages: usize,
    pub error: Option<Failure>,
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "$skipToken")]
    skip_token: Option<String>,
}

fn malformed(read: &Read, msg: String) -> Failure {
    Failure {
        kind: FailureKind::Malformed,
        record: ErrorRecord {
            scope: read.scope.clone(),
            operation: read.operation.clone(),
            status: Some(200),
            code: Some("MalformedResponse".into()),
            message: msg,
        },
    }
}

/// Runs one query to its last page. `read.url` is the Resource Graph endpoint.
pub async fn query_all(
    api: &dyn AzureApi,
    gate: &QuotaGate,
    read: &Read,
    scope: Scope<'_>,
    query: &str,
    deadline: Instant,
) -> QueryOutcome {
    let mut out = QueryOutcome::default();
    let mut token: Option<String> = None;
    loop {
        if out.pages >= MAX_PAGES {
            out.error = Some(Failure {
                kind: FailureKind::Refused,
                record: ErrorRecord {
                    scope: read.scope.clone(),
                    operation: read.operation.clone(),
                    status: None,
                    code: Some("SkipTokenLoop".into()),
                    message: format!("the query ran past {MAX_PAGES} pages; paging stopped"),
                },
            });
            return out;
        }
        if !gate.enter(deadline).await {
            out.error = Some(Failure {
                kind: FailureKind::Deadline,
                record: ErrorRecord {
                    scope: read.scope.clone(),
                    operation: read.operation.clone(),
                    status: None,
                    code: None,
                    message: "the overall --timeout would pass before Resource Graph's quota resets; the query was not sent".into(),
                },
            });
            return out;
        }
        let page_read;
        let this = if out.pages > 0 {
            // The next page continues a chain under way.
            page_read = Read {
                continues: true,
                ..read.clone()
            };
            &page_read
        } else {
            read
        };
        let answer = api.post(this, body(scope, query, token.as_deref())).await;
        gate.leave(answer.as_ref().ok());
        let posted = match answer {
            Ok(p) => p,
            Err(f) => {
                out.error = Some(f);
                return out;
            }
        };
        let page: Answer<'_> = match serde_json::from_slice(&posted.body) {
            Ok(a) => a,
            Err(e) => {
                out.error = Some(malformed(
                    read,
                    format!("page {} is not a Resource Graph answer: {e}", out.pages + 1),
                ));
                return out;
            }
        };
        let rows: Option<Vec<&RawValue>> =
            page.data.and_then(|d| serde_json::from_str(d.get()).ok());
        let Some(rows) = rows else {
            out.error = Some(malformed(
                read,
                format!(
                    "page {} has no `data` array of rows (objectArray)",
                    out.pages + 1
                ),
            ));
            return out;
        };
        out.rows.extend(rows.into_iter().map(RawValue::to_owned));
        out.pages += 1;
        match page.skip_token.filter(|t| !t.is_empty()) {
            Some(t) if token.as_deref() == Some(t.as_str()) => {
                out.error = Some(malformed(
                    read,
                    format!("page {} repeats its $skipToken; paging stopped", out.pages),
                ));
                return out;
            }
            Some(t) => {
                debug!("{}: page {} has a $skipToken", read.operation, out.pages);
                token = Some(t);
            }
            None => return out,
        }
    }
}

#[derive(Deserialize)]
struct RowSubscription {
    #[serde(rename = "subscriptionId")]
    subscription_id: Option<String>,
}

/// The subscription a row belongs to (lower-cased): its `subscriptionId` column.
pub fn row_subscription(row: &RawValue) -> Option<String> {
    serde_json::from_str::<RowSubscription>(row.get())
        .ok()?
        .subscription_id
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_reset_times_parse() {
        assert_eq!(parse_resets_after("00:00:03"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_resets_after("01:02:03"),
            Some(Duration::from_secs(3723))
        );
        assert_eq!(
            parse_resets_after("00:00:00.5"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_resets_after("3"), None);
        assert_eq!(parse_resets_after("a:b:c"), None);
    }

    #[test]
    fn queries_project_what_the_estate_reads() {
        let q = resources_query("Microsoft.Compute/virtualMachines");
        assert_eq!(
            q,
            "resources | where type =~ 'microsoft.compute/virtualmachines' | project id, name, type, location, subscriptionId, resourceGroup, managedBy, properties"
        );
        let subs = vec!["s1".to_string(), "s2".to_string()];
        let b: Value =
            serde_json::from_slice(&body(Scope::Subscriptions(&subs), &q, Some("tok"))).unwrap();
        assert_eq!(b["subscriptions"], json!(["s1", "s2"]));
        assert_eq!(b["options"]["$top"], 1000);
        assert_eq!(b["options"]["$skipToken"], "tok");
        assert_eq!(b["options"]["resultFormat"], "objectArray");
        let b: Value =
            serde_json::from_slice(&body(Scope::ManagementGroups(&subs), &q, None)).unwrap();
        assert!(b.get("subscriptions").is_none());
        assert_eq!(b["managementGroups"], json!(["s1", "s2"]));
        assert!(b["options"].get("$skipToken").is_none());
    }

    fn quota(remaining: &str, resets: &str) -> Posted {
        Posted {
            body: Bytes::new(),
            headers: vec![
                ("x-ms-user-quota-remaining".into(), remaining.into()),
                ("x-ms-user-quota-resets-after".into(), resets.into()),
            ],
        }
    }

    #[tokio::test]
    async fn the_gate_keeps_in_flight_queries_within_the_quota() {
        let gate = QuotaGate::default();
        let far = Instant::now() + Duration::from_secs(60);
        let soon = || Instant::now() + Duration::from_millis(200);
        // Before any answer: at most the documented default in flight.
        for _ in 0..ASSUMED_QUOTA {
            assert!(gate.enter(far).await);
        }
        assert!(!gate.enter(soon()).await);
        for _ in 0..ASSUMED_QUOTA {
            gate.leave(None);
        }
        // Two left in a 5 s window: two may be in flight, the third waits past `soon`.
        assert!(gate.enter(far).await);
        gate.leave(Some(&quota("2", "00:00:05")));
        assert!(gate.enter(far).await);
        assert!(gate.enter(far).await);
        assert!(!gate.enter(soon()).await);
        // An answer of the same window that arrives late cannot raise the count.
        gate.leave(Some(&quota("5", "00:00:05")));
        gate.leave(Some(&quota("0", "00:00:05")));
        assert!(!gate.enter(soon()).await);
        // A window that has ended: go.
        let gate = QuotaGate::default();
        assert!(gate.enter(far).await);
        gate.leave(Some(&quota("0", "00:00:00")));
        assert!(gate.enter(soon()).await);
    }

    #[tokio::test]
    async fn a_waiting_query_goes_when_an_answer_frees_the_quota() {
        let gate = std::sync::Arc::new(QuotaGate::default());
        let far = Instant::now() + Duration::from_secs(60);
        assert!(gate.enter(far).await);
        gate.leave(Some(&quota("1", "00:01:00")));
        assert!(gate.enter(far).await);
        // One left and one in flight: the next waits until that one's answer reports.
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.enter(far).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        gate.leave(Some(&quota("1", "00:01:00")));
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn rows_name_their_subscription() {
        let r: Box<RawValue> =
            serde_json::from_str(r#"{"id":"/x","subscriptionId":"AbC","properties":{}}"#).unwrap();
        assert_eq!(row_subscription(&r).as_deref(), Some("abc"));
        let r: Box<RawValue> = serde_json::from_str(r#"{"id":"/x"}"#).unwrap();
        assert_eq!(row_subscription(&r), None);
    }
}
