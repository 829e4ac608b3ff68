//! An ARM emulator for the end-to-end tests: serves, on 127.0.0.1, the estate held in a snapshot
//! file (the same fixtures `check --from` reads), at the exact paths the collector reads.
//!
//! - Lists are paged (`page_size`), with absolute `nextLink`s and, optionally, an empty first page
//!   that still carries a `nextLink`.
//! - A read recorded as `{"error": ERROR}` in the snapshot is answered with that HTTP status and
//!   an ARM error envelope (status `null`: the connection is dropped); a list with items *and* an
//!   error fails on the page after its items.
//! - Managed HSM `hsmUri`s that may be contacted are rewritten to `http://127.0.0.1:PORT/hsm/<name>/`
//!   and their data plane is served there; Graph is served under `/graph`; a token endpoint for
//!   the service-principal flow under `/<tenant>/oauth2/v2.0/token`.
//! - Faults can be injected per path (substring, case-insensitive): an HTTP error, a slow answer,
//!   a dropped connection, a `nextLink` to another host.
//! - Every request is recorded with its `Authorization` header.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use cvm_backup::snapshot::{ErrorRecord, HsmRbac, ListRead, SingleRead, Snapshot};

/// One request the emulator saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Percent-decoded path, as sent (case kept).
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: String,
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
    pub kind: FaultKind,
    /// How many requests it applies to; `None`: all.
    pub times: Option<usize>,
}

impl Fault {
    pub fn status(path: &str, status: u16, code: &str) -> Fault {
        Fault {
            path: path.into(),
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
            kind: FaultKind::Slow(d),
            times: None,
        }
    }
    pub fn drop_connection(path: &str) -> Fault {
        Fault {
            path: path.into(),
            kind: FaultKind::Drop,
            times: None,
        }
    }
    pub fn next_link_to(path: &str, base: &str) -> Fault {
        Fault {
            path: path.into(),
            kind: FaultKind::NextLinkTo(base.into()),
            times: None,
        }
    }
    pub fn times(mut self, n: usize) -> Fault {
        self.times = Some(n);
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            page_size: 1000,
            empty_first_page: false,
        }
    }
}

/// The estate, indexed by lower-cased path.
#[derive(Default)]
struct Served {
    subscriptions: Vec<Value>,
    sub_errors: HashMap<String, ErrorRecord>,
    lists: HashMap<String, ListRead>,
    singles: HashMap<String, SingleRead>,
    hsms: HashMap<String, HsmRbac>,
    principal: Option<SingleRead>,
}

struct State {
    served: Served,
    config: Config,
    port: u16,
    faults: Vec<Fault>,
    seen: Vec<Seen>,
    request_counter: u64,
    in_flight: usize,
    max_in_flight: usize,
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

fn build(snap: &Snapshot, port: u16) -> Served {
    let mut s = Served {
        principal: snap.backup_principal.clone(),
        ..Default::default()
    };
    let hsm_names: HashMap<String, String> = snap
        .subscriptions
        .iter()
        .filter_map(|x| x.managed_hsms.as_ref())
        .flat_map(|l| l.items().iter())
        .filter_map(|h| Some((lc(h.get("id")?.as_str()?), lc(h.get("name")?.as_str()?))))
        .collect();
    for sub in &snap.subscriptions {
        let id = &sub.subscription_id;
        s.subscriptions.push(json!({
            "id": format!("/subscriptions/{id}"),
            "subscriptionId": id,
            "displayName": sub.display_name.clone().unwrap_or_else(|| id.clone()),
            "state": "Enabled",
        }));
        if let Some(e) = &sub.error {
            s.sub_errors.insert(lc(id), e.clone());
        }
        let base = format!("/subscriptions/{}/providers/", lc(id));
        let mut put = |p: &str, l: &Option<ListRead>| {
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
            let mut l = l.clone();
            if let Some(items) = l.value.as_mut() {
                for h in items.iter_mut() {
                    let name = h
                        .get("name")
                        .and_then(Value::as_str)
                        .map(lc)
                        .unwrap_or_default();
                    if let Some(uri) = h.pointer_mut("/properties/hsmUri") {
                        if uri.as_str().is_some_and(contactable) {
                            *uri = Value::String(format!("http://127.0.0.1:{port}/hsm/{name}/"));
                        }
                    }
                }
            }
            s.lists
                .insert(format!("{base}microsoft.keyvault/managedhsms"), l);
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
    Json(u16, Value, Vec<(String, String)>),
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
    Reply::Json(status, body, headers)
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

impl State {
    fn page(&self, list: &ListRead, path: &str, query: &str, next_base: Option<&str>) -> Reply {
        let pairs = query_pairs(query);
        let page: usize = pairs
            .iter()
            .find(|(k, _)| k == "$skiptoken")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut pages: Vec<Vec<Value>> = Vec::new();
        if self.config.empty_first_page {
            pages.push(Vec::new());
        }
        if let Some(items) = &list.value {
            for chunk in items.chunks(self.config.page_size.max(1)) {
                pages.push(chunk.to_vec());
            }
            if items.is_empty() && pages.is_empty() {
                pages.push(Vec::new());
            }
        }
        if page >= pages.len() {
            return match &list.error {
                Some(e) => error_reply(e),
                None if page == 0 => Reply::Json(200, json!({"value": []}), Vec::new()),
                None => not_here(path),
            };
        }
        let more = page + 1 < pages.len() || list.error.is_some();
        let mut body = json!({"value": pages[page]});
        if more || next_base.is_some() {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs.iter().filter(|(k, _)| k != "$skiptoken") {
                q.append_pair(k, v);
            }
            q.append_pair("$skiptoken", &(page + 1).to_string());
            let base = next_base
                .map(str::to_string)
                .unwrap_or_else(|| format!("http://127.0.0.1:{}", self.port));
            body["nextLink"] = Value::String(format!("{base}{path}?{}", q.finish()));
        }
        Reply::Json(200, body, Vec::new())
    }

    fn single(&self, r: &SingleRead, graph: bool) -> Reply {
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
            Some(v) => Reply::Json(200, v.clone(), Vec::new()),
            None => envelope(404, "ResourceNotFound", "emulated: no value", false),
        }
    }

    fn route(&self, path: &str, query: &str, next_base: Option<&str>) -> Reply {
        let lp = trim_slash(&lc(path));
        if lp == "/subscriptions" {
            let l = ListRead::ok(self.served.subscriptions.clone());
            return self.page(&l, path, query, next_base);
        }
        if let Some(rest) = lp.strip_prefix("/graph/") {
            let want = "v1.0/serviceprincipals(appid='262044b1-e2ce-469f-a196-69ab7ada62d3')";
            if rest != want {
                return not_here(path);
            }
            return match &self.served.principal {
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
            let Some(rbac) = self.served.hsms.get(name) else {
                return not_here(path);
            };
            let l = match tail {
                "providers/microsoft.authorization/roleassignments" => &rbac.role_assignments,
                "providers/microsoft.authorization/roledefinitions" => &rbac.role_definitions,
                _ => return not_here(path),
            };
            return match l {
                Some(l) => self.page(l, path, query, next_base),
                None => not_here(path),
            };
        }
        if let Some(rest) = lp.strip_prefix("/subscriptions/") {
            let sub = rest.split('/').next().unwrap_or_default();
            if let Some(e) = self.served.sub_errors.get(sub) {
                return error_reply(e);
            }
        }
        if let Some(l) = self.served.lists.get(&lp) {
            return self.page(l, path, query, next_base);
        }
        if let Some(r) = self.served.singles.get(&lp) {
            return self.single(r, false);
        }
        not_here(path)
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
    let body = axum::body::to_bytes(Body::new(req.into_body()), 1 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();

    // Record, then pick a fault.
    let (fault, request_id) = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            authorization,
            body: body.clone(),
        });
        st.request_counter += 1;
        let id = st.request_counter;
        let lp = lc(&path);
        let mut picked = None;
        for f in st.faults.iter_mut() {
            if lp.contains(&lc(&f.path)) && f.times.is_none_or(|n| n > 0) {
                if let Some(n) = f.times.as_mut() {
                    *n -= 1;
                }
                picked = Some(f.kind.clone());
                break;
            }
        }
        (picked, id)
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
    let reply = match reply {
        Some(r) => r,
        None if method == "POST" && path.ends_with("/oauth2/v2.0/token") => Reply::Json(
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                   "access_token": "emulated-sp-token-0123456789"}),
            Vec::new(),
        ),
        None => state
            .lock()
            .unwrap()
            .route(&path, &query, next_base.as_deref()),
    };
    match reply {
        Reply::Drop => {
            let _ = drop_tx.send(()).await;
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Json(status, body, headers) => {
            let mut b = Response::builder()
                .status(status)
                .header("content-type", "application/json; charset=utf-8")
                .header("x-ms-request-id", format!("emu-{request_id}"));
            for (k, v) in headers {
                b = b.header(k, v);
            }
            Ok(b.body(Body::from(body.to_string())).unwrap())
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
        Self::serve(Some(&snap), config)
    }

    /// A listener that answers 404 to everything and records what it got (a "foreign host").
    pub fn empty() -> Emulator {
        Self::serve(None, Config::default())
    }

    fn serve(snap: Option<&Snapshot>, config: Config) -> Emulator {
        // Bound before the binary starts: no waiting for the server.
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = snap.map(|s| build(s, port)).unwrap_or_default();
        let state = Arc::new(Mutex::new(State {
            served,
            config,
            port,
            faults: Vec::new(),
            seen: Vec::new(),
            request_counter: 0,
            in_flight: 0,
            max_in_flight: 0,
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

    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// Requests whose decoded path contains `part` (case-insensitive).
    pub fn count(&self, part: &str) -> usize {
        let p = lc(part);
        self.requests()
            .iter()
            .filter(|s| lc(&s.path).contains(&p))
            .count()
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
