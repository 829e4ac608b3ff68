//! An ARM emulator for the end-to-end tests and the scale benchmark: serves, on 127.0.0.1, the
//! estate held in a snapshot (the same fixtures `check --from` reads, or a generated estate), at
//! the exact paths the collector reads.
//!
//! - Lists are paged (`page_size`), with absolute `nextLink`s and, optionally, an empty first page
//!   that still carries a `nextLink`.
//! - A read recorded as `{"error": ERROR}` in the snapshot is answered with that HTTP status and
//!   an ARM error envelope (status `null`: the connection is dropped); a list with items *and* an
//!   error fails on the page after its items.
//! - Managed HSM `hsmUri`s that may be contacted are rewritten to `http://127.0.0.1:PORT/hsm/<name>/`
//!   and their data plane is served there; Graph is served under `/graph`; a token endpoint for
//!   the service-principal flow under `/<tenant>/oauth2/v2.0/token`.
//! - Azure Resource Graph: `POST /providers/Microsoft.ResourceGraph/resources` answers the queries
//!   the collector sends (`resources | where type =~ '…' | project …` and the subscriptions of
//!   `resourcecontainers`) over `subscriptions` or `managementGroups`, paged with `$skipToken`,
//!   projected to the requested columns, with the user-quota headers when a quota is set.
//! - Optional realism (see [`Config`]): a fixed latency per answer, and ARM's read bucket per
//!   subscription (tenant-level reads share one) answering 429 with `Retry-After` once empty.
//! - Faults can be injected per path (substring, case-insensitive) and, optionally, request body:
//!   an HTTP error, a slow answer, a dropped connection, a `nextLink` to another host.
//! - Every request is recorded with its `Authorization` header and body.
//!
//! Items are held as JSON text (`Box<RawValue>`), so a 50k-VM estate is served from about the
//! size of its JSON and a page costs one copy of its items.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use cvm_backup::snapshot::{ErrorRecord, HsmRbac, ListRead, SingleRead, Snapshot};

/// An item as JSON text.
pub type Raw = Box<RawValue>;

/// One request the emulator saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Percent-decoded path, as sent (case kept).
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: String,
    /// The HTTP status it was answered with (0: the connection was dropped).
    pub status: u16,
    /// When it arrived, from the emulator's start.
    pub at: Duration,
}

#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer with this status and an ARM error envelope (`bare`: `{code, message}` without the
    /// `error` wrapper), plus extra headers.
    Status {
        status: u16,
        code: String,
        message: String,
        headers: Vec<(String, String)>,
        bare: bool,
    },
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Close the connection without an answer.
    Drop,
    /// Answer normally, but the page's `nextLink` points at this base URL (another host).
    NextLinkTo(String),
}

#[derive(Debug, Clone)]
pub struct Fault {
    /// Matches when the decoded path contains this (case-insensitive); "" matches everything.
    pub path: String,
    /// And, when set, the request body contains this (case-insensitive).
    pub body: Option<String>,
    pub kind: FaultKind,
    /// How many requests it applies to; `None`: all.
    pub times: Option<usize>,
}

impl Fault {
    pub fn status(path: &str, status: u16, code: &str) -> Fault {
        Fault {
            path: path.into(),
            body: None,
            kind: FaultKind::Status {
                status,
                code: code.into(),
                message: format!("emulated {status} {code}"),
                headers: Vec::new(),
                bare: false,
            },
            times: None,
        }
    }
    /// `n` answers 429 with `header: value` (e.g. `Retry-After: 1`, `retry-after-ms: 20`).
    pub fn throttle(path: &str, n: usize, header: &str, value: &str) -> Fault {
        Fault {
            path: path.into(),
            body: None,
            kind: FaultKind::Status {
                status: 429,
                code: "TooManyRequests".into(),
                message: "The request is being throttled.".into(),
                headers: vec![(header.into(), value.into())],
                bare: false,
            },
            times: Some(n),
        }
    }
    pub fn slow(path: &str, d: Duration) -> Fault {
        Fault {
            path: path.into(),
            body: None,
            kind: FaultKind::Slow(d),
            times: None,
        }
    }
    pub fn drop_connection(path: &str) -> Fault {
        Fault {
            path: path.into(),
            body: None,
            kind: FaultKind::Drop,
            times: None,
        }
    }
    pub fn next_link_to(path: &str, base: &str) -> Fault {
        Fault {
            path: path.into(),
            body: None,
            kind: FaultKind::NextLinkTo(base.into()),
            times: None,
        }
    }
    pub fn times(mut self, n: usize) -> Fault {
        self.times = Some(n);
        self
    }
    /// Only requests whose body contains `part` (case-insensitive), e.g. one Resource Graph type.
    pub fn when_body(mut self, part: &str) -> Fault {
        self.body = Some(part.into());
        self
    }
    pub fn bare(mut self) -> Fault {
        if let FaultKind::Status { bare, .. } = &mut self.kind {
            *bare = true;
        }
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Fault {
        if let FaultKind::Status { headers, .. } = &mut self.kind {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub page_size: usize,
    /// Start every list with an empty page that carries a nextLink.
    pub empty_first_page: bool,
    /// Every answer waits this long before it is sent.
    pub latency: Duration,
    /// ARM's read bucket per subscription and principal, `(burst, refill per second)`; reads
    /// outside a subscription share one bucket. Past it: 429 with `Retry-After`.
    pub arm_bucket: Option<(f64, f64)>,
    /// Resource Graph's per-user quota: this many queries per window. Past it: 429.
    pub arg_quota: Option<(u32, Duration)>,
    /// Resource Graph rows per page at most, whatever `$top` asks (to exercise `$skipToken`).
    pub arg_page_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            page_size: 1000,
            empty_first_page: false,
            latency: Duration::ZERO,
            arm_bucket: None,
            arg_quota: None,
            arg_page_size: 1000,
        }
    }
}

impl Config {
    /// The benchmark's ARM: 20 ms per answer, pages of 100, the 250/25 read bucket.
    pub fn azure_like() -> Config {
        Config {
            page_size: 100,
            empty_first_page: false,
            latency: Duration::from_millis(20),
            arm_bucket: Some((250.0, 25.0)),
            arg_quota: None,
            arg_page_size: 1000,
        }
    }
}

/// The estate, indexed by lower-cased path. Read-only once built.
#[derive(Default)]
struct Served {
    /// Subscription ids (case kept), in snapshot order, with their display names.
    subscriptions: Vec<(String, String)>,
    sub_errors: HashMap<String, ErrorRecord>,
    lists: HashMap<String, ListRead<Raw>>,
    singles: HashMap<String, SingleRead<Raw>>,
    hsms: HashMap<String, HsmRbac<Raw>>,
    principal: Option<SingleRead<Raw>>,
    /// Resource Graph rows of one list and set of columns, projected once.
    projected: Mutex<HashMap<(String, String), Rows>>,
}

/// Rows as Resource Graph returns them, as JSON text.
type Rows = Arc<Vec<Raw>>;

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct State {
    served: Arc<Served>,
    config: Config,
    port: u16,
    started: Instant,
    faults: Vec<Fault>,
    seen: Vec<Seen>,
    request_counter: u64,
    in_flight: usize,
    max_in_flight: usize,
    buckets: HashMap<String, Bucket>,
    /// 429s answered because a bucket was empty.
    throttled: usize,
    /// Resource Graph quota window: its start and the queries counted in it.
    arg_window: Option<(Instant, u32)>,
    /// 429s answered because the Resource Graph quota was spent.
    arg_throttled: usize,
    /// Resource Graph answers that said the quota is spent (`x-ms-user-quota-remaining: 0`).
    arg_exhausted_answers: usize,
    management_groups: HashMap<String, Vec<String>>,
}

/// Counts a request as in flight until its handler ends (or is dropped with its connection).
struct InFlight(Arc<Mutex<State>>);

impl InFlight {
    fn enter(state: &Arc<Mutex<State>>) -> InFlight {
        let mut st = state.lock().unwrap();
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.lock() {
            st.in_flight -= 1;
        }
    }
}

pub struct Emulator {
    pub port: u16,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lc(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn trim_slash(s: &str) -> String {
    s.trim_end_matches('/').to_string()
}

/// Would the collector contact this `hsmUri`? (https, or http to a loopback host.)
fn contactable(uri: &str) -> bool {
    cvm_backup::endpoint::check("hsmUri", uri).is_ok()
}

fn raw(v: &Value) -> Raw {
    RawValue::from_string(v.to_string()).unwrap()
}

fn parse(r: &RawValue) -> Value {
    serde_json::from_str(r.get()).unwrap_or(Value::Null)
}

/// A snapshot of values as a snapshot of JSON text (what the emulator serves from).
pub fn to_raw(snap: &Snapshot) -> Snapshot<Raw> {
    let text = serde_json::to_string(snap).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn build(snap: &Snapshot<Raw>, port: u16) -> Served {
    let mut s = Served {
        principal: snap.backup_principal.clone(),
        ..Default::default()
    };
    let mut hsm_names: HashMap<String, String> = HashMap::new();
    for sub in &snap.subscriptions {
        let id = &sub.subscription_id;
        s.subscriptions.push((
            id.clone(),
            sub.display_name.clone().unwrap_or_else(|| id.clone()),
        ));
        if let Some(e) = &sub.error {
            s.sub_errors.insert(lc(id), e.clone());
        }
        let base = format!("/subscriptions/{}/providers/", lc(id));
        let mut put = |p: &str, l: &Option<ListRead<Raw>>| {
            if let Some(l) = l {
                s.lists.insert(format!("{base}{p}"), l.clone());
            }
        };
        put("microsoft.compute/virtualmachines", &sub.virtual_machines);
        put("microsoft.compute/disks", &sub.disks);
        put("microsoft.compute/snapshots", &sub.snapshots);
        put(
            "microsoft.compute/diskencryptionsets",
            &sub.disk_encryption_sets,
        );
        put(
            "microsoft.recoveryservices/vaults",
            &sub.recovery_services_vaults,
        );
        put("microsoft.keyvault/vaults", &sub.key_vaults);
        // HSMs: point the data plane at this emulator.
        if let Some(l) = &sub.managed_hsms {
            let mut out: ListRead<Raw> = ListRead {
                value: None,
                error: l.error.clone(),
            };
            if let Some(items) = &l.value {
                let mut v = Vec::with_capacity(items.len());
                for item in items {
                    let mut h = parse(item);
                    let name = h
                        .get("name")
                        .and_then(Value::as_str)
                        .map(lc)
                        .unwrap_or_default();
                    if let Some(id) = h.get("id").and_then(Value::as_str) {
                        hsm_names.insert(lc(id), name.clone());
                    }
                    if let Some(uri) = h.pointer_mut("/properties/hsmUri") {
                        if uri.as_str().is_some_and(contactable) {
                            *uri = Value::String(format!("http://127.0.0.1:{port}/hsm/{name}/"));
                        }
                    }
                    v.push(raw(&h));
                }
                out.value = Some(v);
            }
            s.lists
                .insert(format!("{base}microsoft.keyvault/managedhsms"), out);
        }
        for (name, read) in &sub.features {
            if let Some((ns, f)) = name.split_once('/') {
                s.singles.insert(
                    lc(&format!(
                        "{base}Microsoft.Features/providers/{ns}/features/{f}"
                    )),
                    read.clone(),
                );
            }
        }
    }
    for (vault, ch) in &snap.vaults {
        let v = trim_slash(&lc(vault));
        if let Some(r) = &ch.storage_config {
            s.singles.insert(
                format!("{v}/backupstorageconfig/vaultstorageconfig"),
                r.clone(),
            );
        }
        if let Some(l) = &ch.policies {
            s.lists.insert(format!("{v}/backuppolicies"), l.clone());
        }
        if let Some(l) = &ch.protected_items {
            s.lists
                .insert(format!("{v}/backupprotecteditems"), l.clone());
        }
    }
    for (kv, l) in &snap.key_vault_role_assignments {
        s.lists.insert(
            format!(
                "{}/providers/microsoft.authorization/roleassignments",
                trim_slash(&lc(kv))
            ),
            l.clone(),
        );
    }
    for (rid, r) in &snap.role_definitions {
        s.singles.insert(trim_slash(&lc(rid)), r.clone());
    }
    for (hsm, rbac) in &snap.managed_hsms {
        let name = hsm_names
            .get(&lc(hsm))
            .cloned()
            .unwrap_or_else(|| lc(hsm.rsplit('/').next().unwrap_or(hsm)));
        s.hsms.insert(name, rbac.clone());
    }
    // The rows of the columns the tool asks for, projected up front: a Resource Graph page then
    // costs a copy of its rows, as it would on the real service.
    let columns: Vec<String> = cvm_backup::collect::resource_graph::COLUMNS
        .split(',')
        .map(|c| c.trim().to_string())
        .collect();
    let mut projected = HashMap::new();
    for (path, list) in &s.lists {
        if !path.starts_with("/subscriptions/") || !path.contains("/providers/") {
            continue;
        }
        let rows: Vec<Raw> = list
            .items()
            .iter()
            .filter_map(|it| serde_json::from_str::<Map<String, Value>>(it.get()).ok())
            .map(|m| raw(&project(&m, &columns)))
            .collect();
        projected.insert((path.clone(), columns.join(",")), Arc::new(rows));
    }
    s.projected = Mutex::new(projected);
    s
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

enum Reply {
    /// Status, JSON body text, extra headers.
    Json(u16, String, Vec<(String, String)>),
    Drop,
}

fn envelope(status: u16, code: &str, message: &str, bare: bool) -> Reply {
    let body = if bare {
        json!({"code": code, "message": message})
    } else {
        json!({"error": {"code": code, "message": message}})
    };
    let mut headers = Vec::new();
    if status == 429 || status >= 500 {
        // Keeps retries of recorded failures fast; the collector honours it.
        headers.push(("retry-after-ms".to_string(), "1".to_string()));
    }
    Reply::Json(status, body.to_string(), headers)
}

fn error_reply(e: &ErrorRecord) -> Reply {
    match e.status {
        None => Reply::Drop,
        Some(st) => envelope(st, e.code.as_deref().unwrap_or("Error"), &e.message, false),
    }
}

fn not_here(path: &str) -> Reply {
    envelope(
        404,
        "ResourceNotFound",
        &format!("emulator: {path} is not in the snapshot"),
        false,
    )
}

fn bad_request(msg: &str) -> Reply {
    envelope(400, "BadRequest", &format!("emulator: {msg}"), false)
}

/// `[a,b,…]` from items as text.
fn join_items<'a>(items: impl Iterator<Item = &'a str>, out: &mut String) {
    out.push('[');
    for (i, it) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(it);
    }
    out.push(']');
}

/// `hh:mm:ss`, rounded up to the second (Resource Graph's `x-ms-user-quota-resets-after`).
pub fn hhmmss(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// A Resource Graph query as the collector writes it: the table, the `type =~ '…'` filter and
/// the projected columns. Anything else is refused, so the tests see the exact query shape.
#[derive(Debug, PartialEq)]
pub struct ParsedQuery {
    pub table: String,
    pub type_filter: String,
    pub columns: Vec<String>,
}

pub fn parse_query(q: &str) -> Result<ParsedQuery, String> {
    let mut parts = q.split('|').map(str::trim);
    let table = parts.next().unwrap_or_default().to_ascii_lowercase();
    if table != "resources" && table != "resourcecontainers" {
        return Err(format!("unsupported table {table:?}"));
    }
    let mut type_filter = None;
    let mut columns = None;
    for p in parts {
        let low = p.to_ascii_lowercase();
        if let Some(rest) = low.strip_prefix("where ") {
            let rest = rest.trim();
            let Some(v) = rest.strip_prefix("type =~ ") else {
                return Err(format!("unsupported filter {p:?}"));
            };
            let v = v.trim();
            if !(v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'')) {
                return Err(format!("unquoted type in {p:?}"));
            }
            type_filter = Some(v[1..v.len() - 1].to_string());
        } else if let Some(cols) = p.strip_prefix("project ") {
            columns = Some(
                cols.split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect::<Vec<_>>(),
            );
        } else if low.starts_with("order by ") {
            // Ordering does not change which rows come back.
        } else {
            return Err(format!("unsupported operator {p:?}"));
        }
    }
    let type_filter = type_filter.ok_or("no `where type =~ '…'` filter")?;
    let columns = columns.ok_or("no `project` (paging needs `id`)")?;
    if !columns.iter().any(|c| c == "id") {
        return Err("`id` is not projected; Resource Graph cannot page without it".into());
    }
    Ok(ParsedQuery {
        table,
        type_filter,
        columns,
    })
}

/// Segment after `name` in an ARM id (case-insensitive), e.g. the resource group.
fn id_segment(id: &str, name: &str) -> Option<String> {
    let mut it = id.split('/');
    while let Some(s) = it.next() {
        if s.eq_ignore_ascii_case(name) {
            return it.next().map(str::to_string);
        }
    }
    None
}

/// One resource row as Resource Graph returns it: the projected columns only.
fn project(item: &Map<String, Value>, columns: &[String]) -> Value {
    let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
    let mut row = Map::new();
    for c in columns {
        let v = match c.as_str() {
            "subscriptionId" => id_segment(id, "subscriptions").map(Value::String),
            "resourceGroup" => id_segment(id, "resourceGroups").map(|g| Value::String(lc(&g))),
            "type" => item
                .get("type")
                .and_then(Value::as_str)
                .map(|t| Value::String(lc(t))),
            other => item.get(other).cloned(),
        };
        row.insert(c.clone(), v.unwrap_or(Value::Null));
    }
    Value::Object(row)
}

impl Served {
    fn page(
        &self,
        config: &Config,
        list: &ListRead<Raw>,
        path: &str,
        query: &str,
        next_base: Option<&str>,
        port: u16,
    ) -> Reply {
        let pairs = query_pairs(query);
        let page: usize = pairs
            .iter()
            .find(|(k, _)| k == "$skiptoken")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let size = config.page_size.max(1);
        let lead = usize::from(config.empty_first_page);
        let mut n = lead;
        if let Some(items) = &list.value {
            n += items.len().div_ceil(size);
            if items.is_empty() && n == 0 {
                n = 1;
            }
        }
        if page >= n {
            return match &list.error {
                Some(e) => error_reply(e),
                None if page == 0 => Reply::Json(200, r#"{"value":[]}"#.into(), Vec::new()),
                None => not_here(path),
            };
        }
        let items = list.items();
        let (a, b) = if page < lead {
            (0, 0)
        } else {
            let k = page - lead;
            (
                (k * size).min(items.len()),
                ((k + 1) * size).min(items.len()),
            )
        };
        let more = page + 1 < n || list.error.is_some();
        let mut body = String::with_capacity(
            64 + items[a..b].iter().map(|i| i.get().len() + 1).sum::<usize>(),
        );
        body.push_str(r#"{"value":"#);
        join_items(items[a..b].iter().map(|i| i.get()), &mut body);
        if more || next_base.is_some() {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs.iter().filter(|(k, _)| k != "$skiptoken") {
                q.append_pair(k, v);
            }
            q.append_pair("$skiptoken", &(page + 1).to_string());
            let base = next_base
                .map(str::to_string)
                .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
            let link = format!("{base}{path}?{}", q.finish());
            body.push_str(r#","nextLink":"#);
            body.push_str(&Value::String(link).to_string());
        }
        body.push('}');
        Reply::Json(200, body, Vec::new())
    }

    fn single(&self, r: &SingleRead<Raw>, graph: bool) -> Reply {
        if let Some(e) = &r.error {
            return error_reply(e);
        }
        if r.not_found {
            let code = if graph {
                "Request_ResourceNotFound"
            } else {
                "ResourceNotFound"
            };
            return envelope(404, code, "emulated: not found", false);
        }
        match &r.value {
            Some(v) => Reply::Json(200, v.get().to_string(), Vec::new()),
            None => envelope(404, "ResourceNotFound", "emulated: no value", false),
        }
    }

    fn subscription_list(&self) -> ListRead<Raw> {
        ListRead {
            value: Some(
                self.subscriptions
                    .iter()
                    .map(|(id, name)| {
                        raw(&json!({
                            "id": format!("/subscriptions/{id}"),
                            "subscriptionId": id,
                            "displayName": name,
                            "state": "Enabled",
                        }))
                    })
                    .collect(),
            ),
            error: None,
        }
    }

    fn route(
        &self,
        config: &Config,
        port: u16,
        path: &str,
        query: &str,
        next_base: Option<&str>,
    ) -> Reply {
        let lp = trim_slash(&lc(path));
        if lp == "/subscriptions" {
            let l = self.subscription_list();
            return self.page(config, &l, path, query, next_base, port);
        }
        if let Some(rest) = lp.strip_prefix("/graph/") {
            let want = "v1.0/serviceprincipals(appid='262044b1-e2ce-469f-a196-69ab7ada62d3')";
            if rest != want {
                return not_here(path);
            }
            return match &self.principal {
                Some(r) => self.single(r, true),
                None => envelope(
                    403,
                    "Authorization_RequestDenied",
                    "emulated: no principal in the snapshot",
                    false,
                ),
            };
        }
        if let Some(rest) = lp.strip_prefix("/hsm/") {
            let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let Some(rbac) = self.hsms.get(name) else {
                return not_here(path);
            };
            let l = match tail {
                "providers/microsoft.authorization/roleassignments" => &rbac.role_assignments,
                "providers/microsoft.authorization/roledefinitions" => &rbac.role_definitions,
                _ => return not_here(path),
            };
            return match l {
                Some(l) => self.page(config, l, path, query, next_base, port),
                None => not_here(path),
            };
        }
        if let Some(rest) = lp.strip_prefix("/subscriptions/") {
            let sub = rest.split('/').next().unwrap_or_default();
            if let Some(e) = self.sub_errors.get(sub) {
                return error_reply(e);
            }
        }
        if let Some(l) = self.lists.get(&lp) {
            return self.page(config, l, path, query, next_base, port);
        }
        if let Some(r) = self.singles.get(&lp) {
            return self.single(r, false);
        }
        not_here(path)
    }

    /// `POST /providers/Microsoft.ResourceGraph/resources`.
    fn resource_graph(
        &self,
        config: &Config,
        query: &str,
        body: &str,
        management_groups: &HashMap<String, Vec<String>>,
    ) -> Reply {
        if !query_pairs(query)
            .iter()
            .any(|(k, v)| k == "api-version" && v == "2024-04-01")
        {
            return bad_request("Resource Graph expects api-version=2024-04-01");
        }
        let Ok(req) = serde_json::from_str::<Value>(body) else {
            return bad_request("the request body is not JSON");
        };
        let Some(q) = req.get("query").and_then(Value::as_str) else {
            return bad_request("no `query` in the request body");
        };
        let parsed = match parse_query(q) {
            Ok(p) => p,
            Err(e) => return bad_request(&format!("query {q:?}: {e}")),
        };
        let opts = req.get("options").cloned().unwrap_or(Value::Null);
        if opts.get("resultFormat").and_then(Value::as_str) != Some("objectArray") {
            return bad_request("expected options.resultFormat objectArray");
        }
        let top = opts
            .get("$top")
            .and_then(Value::as_u64)
            .unwrap_or(100)
            .clamp(1, 1000) as usize;
        let top = top.min(config.arg_page_size.max(1));
        let offset = match opts.get("$skipToken").and_then(Value::as_str) {
            None => 0,
            Some(t) => match t.strip_prefix("emu:").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => n,
                None => return bad_request(&format!("unknown $skipToken {t:?}")),
            },
        };
        // The scope: subscriptions, or management groups.
        let known: HashMap<String, &String> = self
            .subscriptions
            .iter()
            .map(|(id, _)| (lc(id), id))
            .collect();
        let mut scope: Vec<String> = Vec::new();
        let strings = |k: &str| -> Option<Vec<String>> {
            req.get(k)?.as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
        };
        match (strings("subscriptions"), strings("managementGroups")) {
            (Some(subs), None) => {
                for s in subs {
                    // A subscription Resource Graph does not know (or may not see) has no rows.
                    if known.contains_key(&lc(&s)) && !scope.contains(&lc(&s)) {
                        scope.push(lc(&s));
                    }
                }
            }
            (None, Some(mgs)) => {
                for mg in mgs {
                    let Some(subs) = management_groups.get(&lc(&mg)) else {
                        return envelope(
                            404,
                            "ManagementGroupNotFound",
                            &format!("emulator: no management group {mg}"),
                            false,
                        );
                    };
                    for s in subs {
                        if !scope.contains(&lc(s)) {
                            scope.push(lc(s));
                        }
                    }
                }
            }
            _ => return bad_request("give either `subscriptions` or `managementGroups`"),
        }
        // The rows of the query in scope order: per list, projected once and kept.
        let mut chunks: Vec<Rows> = Vec::new();
        match (parsed.table.as_str(), lc(&parsed.type_filter).as_str()) {
            ("resourcecontainers", "microsoft.resources/subscriptions") => {
                let mut rows = Vec::new();
                for s in &scope {
                    let name = self
                        .subscriptions
                        .iter()
                        .find(|(id, _)| lc(id) == *s)
                        .map(|(_, n)| n.clone())
                        .unwrap_or_default();
                    let item = json!({
                        "id": format!("/subscriptions/{}", known[s]),
                        "name": name,
                        "type": "microsoft.resources/subscriptions",
                        "properties": {"state": "Enabled"},
                    });
                    if let Value::Object(m) = item {
                        rows.push(raw(&project(&m, &parsed.columns)));
                    }
                }
                chunks.push(Arc::new(rows));
            }
            ("resources", ty) => {
                let columns = parsed.columns.join(",");
                for s in &scope {
                    if self.sub_errors.contains_key(s) {
                        continue;
                    }
                    let path = format!("/subscriptions/{s}/providers/{ty}");
                    let Some(list) = self.lists.get(&path) else {
                        continue;
                    };
                    if let Some(e) = &list.error {
                        // A read that failed in the snapshot fails the whole query.
                        return match error_reply(e) {
                            Reply::Drop => envelope(500, "InternalServerError", &e.message, false),
                            r => r,
                        };
                    }
                    let key = (path, columns.clone());
                    let cached = self.projected.lock().unwrap().get(&key).cloned();
                    let rows = match cached {
                        Some(r) => r,
                        None => {
                            let rows: Vec<Raw> = list
                                .items()
                                .iter()
                                .filter_map(|it| {
                                    serde_json::from_str::<Map<String, Value>>(it.get()).ok()
                                })
                                .map(|m| raw(&project(&m, &parsed.columns)))
                                .collect();
                            let rows = Arc::new(rows);
                            self.projected.lock().unwrap().insert(key, rows.clone());
                            rows
                        }
                    };
                    chunks.push(rows);
                }
            }
            (t, ty) => return bad_request(&format!("no rows of type {ty} in table {t}")),
        }
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        let end = (offset + top).min(total);
        let start = offset.min(total);
        let page = chunks
            .iter()
            .flat_map(|c| c.iter())
            .skip(start)
            .take(end - start)
            .map(|r| r.get());
        let mut body = format!(
            r#"{{"totalRecords":{total},"count":{},"resultTruncated":"false","facets":[],"data":"#,
            end - start
        );
        join_items(page, &mut body);
        if end < total {
            body.push_str(&format!(r#","$skipToken":"emu:{end}""#));
        }
        body.push('}');
        Reply::Json(200, body, Vec::new())
    }
}

/// Which ARM bucket a path draws from: its subscription, or the tenant's.
fn bucket_key(lp: &str) -> String {
    lp.strip_prefix("/subscriptions/")
        .and_then(|r| r.split('/').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| "tenant".into())
}

impl State {
    /// Takes a token from the path's ARM bucket; `Some(wait)` when it is empty.
    fn spend(&mut self, lp: &str) -> Option<Duration> {
        let (burst, rate) = self.config.arm_bucket?;
        let now = Instant::now();
        let b = self.buckets.entry(bucket_key(lp)).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Counts a Resource Graph query against the quota: the quota headers, or `Err` with the
    /// wait when it is spent.
    fn quota(&mut self) -> Result<Vec<(String, String)>, Duration> {
        let Some((quota, window)) = self.config.arg_quota else {
            return Ok(Vec::new());
        };
        let now = Instant::now();
        let (start, used) = match self.arg_window {
            Some((s, u)) if now < s + window => (s, u),
            _ => (now, 0),
        };
        let resets = (start + window).saturating_duration_since(now);
        if used >= quota {
            self.arg_window = Some((start, used));
            return Err(resets);
        }
        self.arg_window = Some((start, used + 1));
        let remaining = quota - used - 1;
        if remaining == 0 {
            self.arg_exhausted_answers += 1;
        }
        Ok(vec![
            ("x-ms-user-quota-remaining".into(), remaining.to_string()),
            ("x-ms-user-quota-resets-after".into(), hhmmss(resets)),
        ])
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    drop_tx: tokio::sync::mpsc::Sender<()>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let _in_flight = InFlight::enter(&state);
    let method = req.method().to_string();
    let raw_path = req.uri().path().to_string();
    let path = decode(&raw_path);
    let query = req.uri().query().unwrap_or_default().to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(Body::new(req.into_body()), 1 << 24)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lp = trim_slash(&lc(&path));
    let is_arg = lp == "/providers/microsoft.resourcegraph/resources";
    let is_token = method == "POST" && path.ends_with("/oauth2/v2.0/token");
    let is_arm = !is_arg && !is_token && !lp.starts_with("/graph/") && !lp.starts_with("/hsm/");

    // Record, then pick a fault, then the budget.
    let (fault, request_id, served, config, port, seen_at, mgs, early, mut quota_headers) = {
        let mut st = state.lock().unwrap();
        let at = st.started.elapsed();
        st.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            authorization,
            body: body.clone(),
            status: 0,
            at,
        });
        let seen_at = st.seen.len() - 1;
        st.request_counter += 1;
        let id = st.request_counter;
        let lbody = lc(&body);
        let mut picked = None;
        for f in st.faults.iter_mut() {
            if lp.contains(&lc(&f.path))
                && f.body.as_ref().is_none_or(|b| lbody.contains(&lc(b)))
                && f.times.is_none_or(|n| n > 0)
            {
                if let Some(n) = f.times.as_mut() {
                    *n -= 1;
                }
                picked = Some(f.kind.clone());
                break;
            }
        }
        let mut early: Option<Reply> = None;
        let mut quota_headers = Vec::new();
        if is_arm {
            if let Some(wait) = st.spend(&lp) {
                st.throttled += 1;
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                early = Some(Reply::Json(
                    429,
                    json!({"error": {"code": "SubscriptionRequestsThrottled",
                        "message": format!("Number of 'read' requests for subscription exceeded. Please try again after '{secs}' seconds.")}})
                    .to_string(),
                    vec![("retry-after".into(), secs.to_string())],
                ));
            }
        } else if is_arg && method == "POST" && picked.is_none() {
            match st.quota() {
                Ok(headers) => quota_headers = headers,
                Err(wait) => {
                    st.arg_throttled += 1;
                    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                    early = Some(Reply::Json(
                        429,
                        json!({"error": {"code": "RateLimiting",
                            "message": "Please provide below info when asking for support: too many requests."}})
                        .to_string(),
                        vec![
                            ("retry-after".into(), secs.to_string()),
                            ("x-ms-user-quota-remaining".into(), "0".into()),
                            ("x-ms-user-quota-resets-after".into(), hhmmss(wait)),
                        ],
                    ));
                }
            }
        }
        (
            picked,
            id,
            st.served.clone(),
            st.config.clone(),
            st.port,
            seen_at,
            if is_arg {
                st.management_groups.clone()
            } else {
                HashMap::new()
            },
            early,
            quota_headers,
        )
    };

    let mut next_base = None;
    let reply = match fault {
        Some(FaultKind::Status {
            status,
            code,
            message,
            headers,
            bare,
        }) => {
            let mut r = envelope(status, &code, &message, bare);
            if let Reply::Json(_, _, h) = &mut r {
                // The test's own headers replace the default fast retry hint.
                if !headers.is_empty() {
                    *h = headers;
                }
            }
            Some(r)
        }
        Some(FaultKind::Drop) => Some(Reply::Drop),
        Some(FaultKind::Slow(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        Some(FaultKind::NextLinkTo(base)) => {
            next_base = Some(base);
            None
        }
        None => None,
    };
    let reply = match (reply, early) {
        (Some(r), _) => r,
        (None, Some(r)) => r,
        (None, None) if is_token => Reply::Json(
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                   "access_token": "emulated-sp-token-0123456789"})
            .to_string(),
            Vec::new(),
        ),
        (None, None) if is_arg => {
            if method != "POST" {
                envelope(
                    405,
                    "MethodNotAllowed",
                    "emulator: Resource Graph takes POST",
                    false,
                )
            } else {
                served.resource_graph(&config, &query, &body, &mgs)
            }
        }
        (None, None) => served.route(&config, port, &path, &query, next_base.as_deref()),
    };
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    let status = match &reply {
        Reply::Json(s, _, _) => *s,
        Reply::Drop => 0,
    };
    if let Ok(mut st) = state.lock() {
        if let Some(s) = st.seen.get_mut(seen_at) {
            s.status = status;
        }
    }
    match reply {
        Reply::Drop => {
            let _ = drop_tx.send(()).await;
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Json(status, body, mut headers) => {
            if status == 200 {
                // Resource Graph's quota headers ride on its answers.
                headers.append(&mut quota_headers);
            }
            let mut b = Response::builder()
                .status(status)
                .header("content-type", "application/json; charset=utf-8")
                .header("x-ms-request-id", format!("emu-{request_id}"));
            for (k, v) in headers {
                b = b.header(k, v);
            }
            Ok(b.body(Body::from(body)).unwrap())
        }
    }
}

impl Emulator {
    /// Serves the snapshot at `path` (relative to the crate root or absolute).
    pub fn start(path: &str) -> Emulator {
        Self::with_config(path, Config::default())
    }

    pub fn with_config(path: &str, config: Config) -> Emulator {
        let full = if Path::new(path).is_absolute() {
            Path::new(path).to_path_buf()
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
        };
        let snap = Snapshot::load(&full).unwrap_or_else(|e| panic!("{e}"));
        Self::serve(Some(&to_raw(&snap)), config)
    }

    /// Serves an estate held as JSON text (e.g. a generated one).
    pub fn from_snapshot(snap: &Snapshot<Raw>, config: Config) -> Emulator {
        Self::serve(Some(snap), config)
    }

    /// A listener that answers 404 to everything and records what it got (a "foreign host").
    pub fn empty() -> Emulator {
        Self::serve(None, Config::default())
    }

    fn serve(snap: Option<&Snapshot<Raw>>, config: Config) -> Emulator {
        // Bound before the binary starts: no waiting for the server.
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = snap.map(|s| build(s, port)).unwrap_or_default();
        let state = Arc::new(Mutex::new(State {
            served: Arc::new(served),
            config,
            port,
            started: Instant::now(),
            faults: Vec::new(),
            seen: Vec::new(),
            request_counter: 0,
            in_flight: 0,
            max_in_flight: 0,
            buckets: HashMap::new(),
            throttled: 0,
            arg_window: None,
            arg_throttled: 0,
            arg_exhausted_answers: 0,
            management_groups: HashMap::new(),
        }));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        acc = listener.accept() => {
                            let Ok((stream, _)) = acc else { continue };
                            let _ = stream.set_nodelay(true);
                            let st = st.clone();
                            tokio::spawn(async move {
                                let (drop_tx, mut drop_rx) = tokio::sync::mpsc::channel::<()>(1);
                                let svc = hyper::service::service_fn(move |req| {
                                    handle(st.clone(), drop_tx.clone(), req)
                                });
                                let conn = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc);
                                tokio::select! {
                                    _ = conn => {}
                                    _ = drop_rx.recv() => {}
                                }
                            });
                        }
                    }
                }
            });
        });
        Emulator {
            port,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn arm(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn graph(&self) -> String {
        format!("http://127.0.0.1:{}/graph", self.port)
    }

    pub fn fault(&self, f: Fault) -> &Self {
        self.state.lock().unwrap().faults.push(f);
        self
    }

    /// Management group `name` holds these subscriptions (for Resource Graph scopes).
    pub fn management_group(&self, name: &str, subscriptions: &[String]) -> &Self {
        self.state
            .lock()
            .unwrap()
            .management_groups
            .insert(lc(name), subscriptions.to_vec());
        self
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// When the emulator started (every [`Seen::at`] counts from here).
    pub fn started(&self) -> Instant {
        self.state.lock().unwrap().started
    }

    /// How many requests were answered so far.
    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// 429s answered because a subscription's (or the tenant's) ARM bucket was empty.
    pub fn throttled(&self) -> usize {
        self.state.lock().unwrap().throttled
    }

    /// 429s answered because the Resource Graph quota was spent.
    pub fn arg_throttled(&self) -> usize {
        self.state.lock().unwrap().arg_throttled
    }

    /// Resource Graph answers that told the client the quota is spent.
    pub fn arg_exhausted_answers(&self) -> usize {
        self.state.lock().unwrap().arg_exhausted_answers
    }

    /// Requests whose decoded path contains `part` (case-insensitive).
    pub fn count(&self, part: &str) -> usize {
        let p = lc(part);
        self.requests()
            .iter()
            .filter(|s| lc(&s.path).contains(&p))
            .count()
    }

    /// Resource Graph queries received (every POST to its path, retries included).
    pub fn resource_graph_queries(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| {
                s.method == "POST"
                    && lc(&s.path).trim_end_matches('/')
                        == "/providers/microsoft.resourcegraph/resources"
            })
            .collect()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Environment variables a test or benchmark must not pass to the binary: anything that could
/// pick a real credential, a proxy or another endpoint, or change logging and colour.
pub fn ambient_vars() -> Vec<String> {
    std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| {
            let u = k.to_ascii_uppercase();
            u.starts_with("AZURE_")
                || u.starts_with("CVM_BACKUP_")
                || u.starts_with("IDENTITY_")
                || u.starts_with("MSI_")
                || u.ends_with("_PROXY")
                || u == "NO_COLOR"
                || u == "RUST_LOG"
        })
        .collect()
}
