//! [`AzureApi`] over azure_core 0.21's `Pipeline`, with the policies the crate lacks.
//!
//! Pipeline: telemetry → custom headers → [`RetryPolicy`] (ours, in place of azure_core's) →
//! [`AttemptPolicy`] (token, throttle, per-request timeout, log line) → reqwest transport.
//!
//! - Retries: 408, 429 and 5xx (not 501/505) and I/O errors; `retry-after-ms`,
//!   `x-ms-retry-after-ms` and `Retry-After` (seconds or HTTP date) are honoured on any of them,
//!   capped exponential backoff with jitter otherwise; never a sleep past the overall deadline.
//!   401, 403, 404, 409 and every other status are final.
//! - Bounds: `--concurrency` request slots and a token bucket per subscription (and per host for
//!   tenant-level, Graph, HSM and Resource Graph reads) sized under ARM's 250-burst /
//!   25-per-second read bucket. A freed slot goes first to a request that continues a chain
//!   already under way (the next page of a list, a retry), so long lists are not starved by the
//!   many one-page reads queued behind them and the run's length stays near its longest chain.
//! - Paging: `nextLink` until absent, followed only on the same scheme, host and port. Pages are
//!   validated and split into their items as JSON text; no value tree is built.
//! - The bearer token is inserted per attempt and never logged (azure_core's own debug output,
//!   which prints it, is kept off by the log filter in `app.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::auth::TokenCredential;
use azure_core::error::{Error, ErrorKind};
use azure_core::headers::Headers;
use azure_core::{
    BytesStream, ClientOptions, Context, Method, Pipeline, Policy, PolicyResult, Request, Response,
    RetryOptions, TransportOptions,
};
use bytes::Bytes;
use rand::Rng;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tracing::{debug, info};
use url::Url;

use super::api::{
    Audience, AzureApi, Failure, FailureKind, GetOutcome, ListOutcome, PostOutcome, Posted, Read,
};
use crate::endpoint;
use crate::snapshot::ErrorRecord;

/// Retries after the first attempt.
pub const MAX_RETRIES: u32 = 4;
/// First backoff step when the server gives no `Retry-After`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(400);
/// Largest backoff step.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Token bucket per subscription: 80% of ARM's read bucket (250, refilled at 25/s), leaving
/// headroom for other tools using the same identity.
pub const BUCKET_BURST: f64 = 200.0;
pub const BUCKET_RATE: f64 = 20.0;
/// A list longer than this many pages is treated as a server loop.
const MAX_PAGES: usize = 10_000;

/// Everything the HTTP layer needs; built once per run.
pub struct HttpSettings {
    pub arm_endpoint: Url,
    pub graph_endpoint: Url,
    pub concurrency: usize,
    pub request_timeout: Duration,
    pub overall_timeout: Duration,
    pub deadline: Instant,
}

/// Secrets that must never appear in a message: the static token and every token obtained.
#[derive(Default, Clone)]
pub struct Redactor(Arc<Mutex<Vec<String>>>);

impl Redactor {
    pub fn add(&self, secret: &str) {
        if secret.len() < 4 {
            return;
        }
        if let Ok(mut v) = self.0.lock() {
            if !v.iter().any(|s| s == secret) {
                v.push(secret.to_string());
            }
        }
    }
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        if let Ok(v) = self.0.lock() {
            for s in v.iter() {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        out
    }
}

// ---- Retry-After and backoff ---------------------------------------------------------------

/// The wait a response asks for: `retry-after-ms`, `x-ms-retry-after-ms`, then `Retry-After`
/// (delay-seconds or an HTTP date). `get` looks a header up case-insensitively.
pub fn retry_after<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    now: OffsetDateTime,
) -> Option<Duration> {
    for h in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = get(h).and_then(|v| v.trim().parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let v = get("retry-after")?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = azure_core::date::parse_rfc1123(v).ok()?;
    let d = when - now;
    Some(if d.is_negative() {
        Duration::ZERO
    } else {
        d.try_into().unwrap_or(Duration::ZERO)
    })
}

/// Capped exponential backoff with "equal jitter": half the step, plus a random half.
pub fn backoff(retry: u32, base: Duration, cap: Duration) -> Duration {
    let step = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(cap);
    let half = step / 2;
    let jitter_ms = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

/// Statuses worth another try: request timeout, throttling and transient server errors.
pub fn is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429) || ((500..=599).contains(&status) && !matches!(status, 501 | 505))
}

/// The code and message of an ARM, Graph or data-plane error body: `{"error": {"code",
/// "message"}}` or a bare `{"code", "message"}` (either capitalisation).
pub fn parse_envelope(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    fn get<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
        let o = v.as_object()?;
        o.get(k).or_else(|| {
            o.iter()
                .find(|(x, _)| x.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        })
    }
    fn text(v: Option<&Value>) -> Option<String> {
        match v? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Object(o) => o.get("value").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    }
    let inner = get(&v, "error").filter(|e| e.is_object());
    let (mut code, mut msg) = match inner {
        Some(e) => (text(get(e, "code")), text(get(e, "message"))),
        None => (None, None),
    };
    if code.is_none() {
        code = text(get(&v, "code"));
    }
    if msg.is_none() {
        msg = text(get(&v, "message"));
    }
    (code, msg)
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A URL for logs and messages: no query string (it may hold skip tokens or filters).
pub fn shown(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

// ---- Throttle ------------------------------------------------------------------------------

/// How soon a request should get a slot, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// Other reads wait for its answer (a vault list, the principal, …).
    Unlocks = 0,
    /// Continues a chain under way: a list's next page, a retry.
    Continues = 1,
    /// Starts something new.
    New = 2,
}

/// `--concurrency` request slots. A freed slot goes to the oldest waiter of the most urgent
/// [`Rank`].
pub struct Slots {
    state: Mutex<SlotState>,
}

struct SlotState {
    free: usize,
    waiting: [VecDeque<oneshot::Sender<SlotPermit>>; 3],
}

/// One slot, given back when dropped.
pub struct SlotPermit {
    slots: Arc<Slots>,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl Slots {
    pub fn new(n: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(SlotState {
                free: n.max(1),
                waiting: Default::default(),
            }),
        })
    }

    fn release(self: &Arc<Self>) {
        loop {
            let next = match self.state.lock() {
                Ok(mut st) => match st.waiting.iter_mut().find_map(VecDeque::pop_front) {
                    Some(tx) => tx,
                    None => {
                        st.free += 1;
                        return;
                    }
                },
                Err(_) => return,
            };
            match next.send(SlotPermit {
                slots: self.clone(),
            }) {
                Ok(()) => return,
                // That waiter gave up (its deadline passed): hand the slot to the next one,
                // without releasing it a second time.
                Err(permit) => std::mem::forget(permit),
            }
        }
    }

    /// A slot, at once when one is free, else in turn (most urgent rank first).
    pub async fn acquire(self: &Arc<Self>, rank: Rank) -> Option<SlotPermit> {
        let rx = {
            let mut st = self.state.lock().ok()?;
            if st.free > 0 {
                st.free -= 1;
                return Some(SlotPermit {
                    slots: self.clone(),
                });
            }
            let (tx, rx) = oneshot::channel();
            st.waiting[rank as usize].push_back(tx);
            rx
        };
        rx.await.ok()
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// In-flight bound plus a read budget per subscription.
pub struct Limiter {
    slots: Arc<Slots>,
    buckets: Mutex<HashMap<String, Bucket>>,
    burst: f64,
    rate: f64,
}

impl Limiter {
    pub fn new(concurrency: usize, burst: f64, rate: f64) -> Self {
        Limiter {
            slots: Slots::new(concurrency),
            buckets: Mutex::new(HashMap::new()),
            burst,
            rate,
        }
    }

    /// The bucket a URL draws from: its origin, plus the subscription for ARM paths.
    pub fn bucket_key(url: &Url) -> String {
        let origin = url.origin().ascii_serialization();
        let mut segs = url.path_segments().into_iter().flatten();
        while let Some(s) = segs.next() {
            if s.eq_ignore_ascii_case("subscriptions") {
                if let Some(id) = segs.next() {
                    return format!("{origin}/subscriptions/{}", id.to_ascii_lowercase());
                }
            }
        }
        origin
    }

    /// Waits for a token in the URL's bucket, then for a free slot in turn of its rank. `None`
    /// when the deadline comes first.
    async fn acquire(&self, url: &Url, deadline: Instant, rank: Rank) -> Option<SlotPermit> {
        let key = Self::bucket_key(url);
        loop {
            let wait = {
                let mut map = self.buckets.lock().ok()?;
                let now = Instant::now();
                let b = map.entry(key.clone()).or_insert(Bucket {
                    tokens: self.burst,
                    last: now,
                });
                let refill = now.duration_since(b.last).as_secs_f64() * self.rate;
                b.tokens = (b.tokens + refill).min(self.burst);
                b.last = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    None
                } else {
                    Some(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
                }
            };
            match wait {
                None => break,
                Some(w) => {
                    if Instant::now() + w >= deadline {
                        return None;
                    }
                    debug!("read budget for {key} spent; waiting {} ms", w.as_millis());
                    tokio::time::sleep(w).await;
                }
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(remaining, self.slots.acquire(rank))
            .await
            .ok()?
    }
}

// ---- Policies ------------------------------------------------------------------------------

/// What happened to one logical request across its attempts.
#[derive(Debug, Default)]
struct Trace {
    attempts: u32,
    gave_up: Option<String>,
    deadline: bool,
}

/// Per-request data handed down the pipeline through the `Context`.
struct ReqMeta {
    token_scope: String,
    trace: Arc<Mutex<Trace>>,
    /// How soon it should get a slot (a retry is moved up to `Continues`).
    rank: Rank,
}

fn with_trace(ctx: &Context, f: impl FnOnce(&mut Trace)) {
    if let Some(m) = ctx.get::<ReqMeta>() {
        if let Ok(mut t) = m.trace.lock() {
            f(&mut t);
        }
    }
}

/// Our retry policy (replaces azure_core's, which has no deadline and sleeps uncapped).
#[derive(Debug)]
pub struct RetryPolicy {
    max_retries: u32,
    base: Duration,
    cap: Duration,
    deadline: Instant,
}

#[async_trait::async_trait]
impl Policy for RetryPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            with_trace(ctx, |t| t.attempts = attempt);
            let result = next[0].send(ctx, request, &next[1..]).await;
            let asked = match &result {
                Ok(rsp) if rsp.status().is_success() => return result,
                Ok(rsp) => {
                    let status = u16::from(rsp.status());
                    if !is_retryable(status) {
                        return result;
                    }
                    retry_after(|h| header(rsp.headers(), h), OffsetDateTime::now_utc())
                }
                Err(e) if *e.kind() == ErrorKind::Io => None,
                Err(_) => return result,
            };
            if attempt > self.max_retries {
                with_trace(ctx, |t| {
                    t.gave_up = Some(format!("gave up after {attempt} attempts"))
                });
                return result;
            }
            let wait = asked.unwrap_or_else(|| backoff(attempt, self.base, self.cap));
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if wait >= remaining {
                let why = match asked {
                    Some(a) => format!(
                        "gave up after {attempt} attempt(s): the server asked to wait {} s, beyond the overall --timeout",
                        a.as_secs_f64().ceil()
                    ),
                    None => format!(
                        "gave up after {attempt} attempt(s): the overall --timeout leaves no time to retry"
                    ),
                };
                with_trace(ctx, |t| t.gave_up = Some(why));
                return result;
            }
            debug!(
                "retrying {} in {} ms (attempt {} of {})",
                shown(request.url()),
                wait.as_millis(),
                attempt + 1,
                self.max_retries + 1
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// One attempt: token, throttle, timeout, body, log line.
pub struct AttemptPolicy {
    credential: Arc<dyn TokenCredential>,
    limiter: Arc<Limiter>,
    request_timeout: Duration,
    deadline: Instant,
    redactor: Redactor,
}

impl std::fmt::Debug for AttemptPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptPolicy").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Policy for AttemptPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let deadline_error = || {
            with_trace(ctx, |t| t.deadline = true);
            Error::message(ErrorKind::Other, "the overall --timeout was reached")
        };
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(deadline_error());
        }
        let scope = ctx
            .get::<ReqMeta>()
            .map(|m| m.token_scope.clone())
            .unwrap_or_default();
        let token = match tokio::time::timeout(
            self.request_timeout.min(remaining),
            self.credential.get_token(&[scope.as_str()]),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                return Err(Error::full(
                    ErrorKind::Credential,
                    e,
                    format!("could not get an access token for {scope}"),
                ))
            }
            Err(_) => {
                return Err(Error::message(
                    ErrorKind::Credential,
                    format!(
                        "getting an access token for {scope} took longer than {} s",
                        self.request_timeout.min(remaining).as_secs_f64()
                    ),
                ))
            }
        };
        self.redactor.add(token.token.secret());
        request.insert_header(
            azure_core::headers::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        );
        let url = shown(request.url());
        // A retry is as urgent as the next page: something already waits on it.
        let rank = ctx.get::<ReqMeta>().map_or(Rank::New, |m| {
            let retry = m.trace.lock().map(|t| t.attempts > 1).unwrap_or(false);
            if retry {
                m.rank.min(Rank::Continues)
            } else {
                m.rank
            }
        });
        let Some(_permit) = self
            .limiter
            .acquire(request.url(), self.deadline, rank)
            .await
        else {
            return Err(deadline_error());
        };
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(deadline_error());
        }
        let limit = self.request_timeout.min(remaining);
        let start = Instant::now();
        let exchange = async {
            let rsp = next[0].send(ctx, request, &next[1..]).await?;
            let (status, headers, body) = rsp.deconstruct();
            let bytes: Bytes = body.collect().await?;
            Ok::<_, Error>((status, headers, bytes))
        };
        let result = tokio::time::timeout(limit, exchange).await;
        let ms = start.elapsed().as_millis();
        let method = request.method().to_string();
        match result {
            Ok(Ok((status, headers, bytes))) => {
                let id = header(&headers, "x-ms-request-id")
                    .or_else(|| header(&headers, "request-id"))
                    .unwrap_or("-");
                info!(
                    target: "cvm_backup::http",
                    "{method} {url} {} {ms} ms request-id={id}",
                    u16::from(status)
                );
                Ok(Response::new(
                    status,
                    headers,
                    Box::pin(BytesStream::new(bytes)),
                ))
            }
            Ok(Err(e)) => {
                info!(target: "cvm_backup::http", "{method} {url} failed after {ms} ms: {}", self.redactor.scrub(&chain(&e)));
                Err(e)
            }
            Err(_) => {
                let hit_deadline = limit < self.request_timeout;
                if hit_deadline {
                    with_trace(ctx, |t| t.deadline = true);
                }
                info!(target: "cvm_backup::http", "{method} {url} timed out after {ms} ms");
                Err(Error::message(
                    ErrorKind::Io,
                    format!("no response within {} s", limit.as_secs_f64()),
                ))
            }
        }
    }
}

/// An error and its sources, without repeats and without the wrappers that only restate the
/// URL (the error record names the scope already).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        let wrapper = s.starts_with("failed to execute `reqwest` request")
            || s.starts_with("error sending request for url")
            || s.starts_with("error converting `reqwest` request into a byte stream");
        if !s.is_empty() && !wrapper && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

// ---- The API -------------------------------------------------------------------------------

/// [`AzureApi`] over one azure_core pipeline shared by every audience. Cheap to clone (the
/// pipeline is a list of shared policies): each read runs as its own runtime task on a clone,
/// so answers are received and split on every worker thread, not on the thread that plans.
#[derive(Clone)]
pub struct PipelineApi {
    pipeline: Pipeline,
    arm_scope: String,
    graph_scope: String,
    overall_timeout: Duration,
    redactor: Redactor,
}

/// `https://host[:port]/.default` for an endpoint.
pub fn default_scope(endpoint: &Url) -> String {
    format!("{}/.default", endpoint.origin().ascii_serialization())
}

impl PipelineApi {
    pub fn new(
        settings: &HttpSettings,
        credential: Arc<dyn TokenCredential>,
        redactor: Redactor,
    ) -> Result<PipelineApi, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let limiter = Arc::new(Limiter::new(
            settings.concurrency,
            BUCKET_BURST,
            BUCKET_RATE,
        ));
        let attempt: Arc<dyn Policy> = Arc::new(AttemptPolicy {
            credential,
            limiter,
            request_timeout: settings.request_timeout,
            deadline: settings.deadline,
            redactor: redactor.clone(),
        });
        let retry: Arc<dyn Policy> = Arc::new(RetryPolicy {
            max_retries: MAX_RETRIES,
            base: BACKOFF_BASE,
            cap: BACKOFF_CAP,
            deadline: settings.deadline,
        });
        let options =
            ClientOptions::new(TransportOptions::new(Arc::new(http))).retry(RetryOptions::none());
        let mut pipeline = Pipeline::new(
            Some("cvm-backup"),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            vec![attempt],
        );
        // Put our retry policy where azure_core's no-op one is, so that we see raw responses.
        let at = pipeline
            .policies()
            .iter()
            .position(|p| format!("{p:?}").starts_with("NoRetryPolicy"))
            .ok_or("internal: azure_core's pipeline has no retry slot")?;
        pipeline.replace_policy(retry, at);
        Ok(PipelineApi {
            pipeline,
            arm_scope: default_scope(&settings.arm_endpoint),
            graph_scope: default_scope(&settings.graph_endpoint),
            overall_timeout: settings.overall_timeout,
            redactor,
        })
    }

    fn token_scope(&self, a: &Audience) -> String {
        match a {
            Audience::Arm => self.arm_scope.clone(),
            Audience::Graph => self.graph_scope.clone(),
            Audience::ManagedHsm(s) => s.clone(),
        }
    }

    fn record(
        &self,
        read: &Read,
        status: Option<u16>,
        code: Option<String>,
        msg: String,
    ) -> ErrorRecord {
        ErrorRecord {
            scope: read.scope.clone(),
            operation: read.operation.clone(),
            status,
            code,
            message: self.redactor.scrub(&msg),
        }
    }

    /// One request with retries: the body and headers of a 2xx, or why not.
    async fn fetch(
        &self,
        url: &Url,
        read: &Read,
        post: Option<Bytes>,
        rank: Rank,
    ) -> Result<(Bytes, Headers), Failure> {
        let trace = Arc::new(Mutex::new(Trace::default()));
        let mut ctx = Context::new();
        ctx.insert(ReqMeta {
            token_scope: self.token_scope(&read.audience),
            trace: trace.clone(),
            rank,
        });
        let method = if post.is_some() {
            Method::Post
        } else {
            Method::Get
        };
        let mut req = Request::new(url.clone(), method);
        req.insert_header("accept", "application/json");
        if let Some(body) = post {
            req.insert_header("content-type", "application/json");
            req.set_body(body);
        }
        let result = self.pipeline.send(&ctx, &mut req).await;
        let (gave_up, deadline) = match trace.lock() {
            Ok(t) => (t.gave_up.clone(), t.deadline),
            Err(_) => (None, false),
        };
        let note = |m: String| match &gave_up {
            Some(g) => format!("{m} ({g})"),
            None => m,
        };
        match result {
            Ok(rsp) => {
                let status = u16::from(rsp.status());
                let (_, headers, body) = rsp.deconstruct();
                let body = body.collect().await.unwrap_or_default();
                if (200..300).contains(&status) {
                    return Ok((body, headers));
                }
                let (code, msg) = parse_envelope(&body);
                let msg = msg.unwrap_or_else(|| format!("HTTP {status} without an error message"));
                Err(Failure {
                    kind: FailureKind::Http(status),
                    record: self.record(read, Some(status), code, note(msg)),
                })
            }
            Err(e) => {
                if let Some(h) = e.as_http_error() {
                    let status = u16::from(h.status());
                    return Err(Failure {
                        kind: FailureKind::Http(status),
                        record: self.record(
                            read,
                            Some(status),
                            h.error_code().map(str::to_string),
                            note(h.error_message().unwrap_or("").to_string()),
                        ),
                    });
                }
                if deadline {
                    return Err(Failure {
                        kind: FailureKind::Deadline,
                        record: self.record(
                            read,
                            None,
                            None,
                            format!(
                                "the overall --timeout of {} s was reached before this read finished",
                                self.overall_timeout.as_secs()
                            ),
                        ),
                    });
                }
                let kind = match e.kind() {
                    ErrorKind::Credential => FailureKind::Credential,
                    _ => FailureKind::Network,
                };
                Err(Failure {
                    kind,
                    record: self.record(read, None, None, note(chain(&e))),
                })
            }
        }
    }

    /// One page of a list: fetched and split into its items.
    async fn page(
        &self,
        url: &Url,
        read: &Read,
        rank: Rank,
        number: usize,
    ) -> Result<(Vec<Box<RawValue>>, Option<String>), Failure> {
        let (body, _) = self.fetch(url, read, None, rank).await?;
        let page: Page<'_> = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let msg = if serde_json::from_slice::<&RawValue>(&body).is_ok() {
                    format!("page {number} has no `value` array")
                } else {
                    format!("page {number} is not JSON: {e}")
                };
                return Err(self.malformed(read, msg));
            }
        };
        let Some(items) = &page.value else {
            return Err(self.malformed(read, format!("page {number} has no `value` array")));
        };
        Ok((
            items.iter().map(|i| RawValue::to_owned(i)).collect(),
            next_link(&page),
        ))
    }

    fn malformed(&self, read: &Read, msg: String) -> Failure {
        Failure {
            kind: FailureKind::Malformed,
            record: self.record(read, Some(200), Some("MalformedResponse".into()), msg),
        }
    }
}

fn first_rank(read: &Read) -> Rank {
    if read.continues {
        Rank::Continues
    } else if read.unlocks {
        Rank::Unlocks
    } else {
        Rank::New
    }
}

/// One page of an ARM (or Graph, or data-plane) list, borrowed from the response body: one
/// pass over the text splits it into its items.
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    value: Option<Vec<&'a RawValue>>,
    #[serde(rename = "nextLink", borrow)]
    next_link: Option<&'a RawValue>,
    #[serde(rename = "@odata.nextLink", borrow)]
    odata_next_link: Option<&'a RawValue>,
}

/// A `nextLink` worth following: a non-empty string.
fn next_link(page: &Page<'_>) -> Option<String> {
    let raw = page.next_link.or(page.odata_next_link)?;
    match serde_json::from_str::<Value>(raw.get()).ok()? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// Runs one read as its own task on the runtime's workers: the caller's thread (which plans
/// the run) never holds up receiving or splitting an answer. A panic in the read is re-raised.
async fn on_worker<T: Send + 'static>(
    read: &Read,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::spawn(work).await {
        Ok(t) => Ok(t),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime shuts down under it.
        Err(e) => Err(Failure {
            kind: FailureKind::Network,
            record: ErrorRecord {
                scope: read.scope.clone(),
                operation: read.operation.clone(),
                status: None,
                code: None,
                message: format!("the read was cancelled: {e}"),
            },
        }),
    }
}

impl PipelineApi {
    async fn get_here(&self, read: &Read) -> GetOutcome {
        let (body, _) = self.fetch(&read.url, read, None, first_rank(read)).await?;
        serde_json::from_slice::<Box<RawValue>>(&body)
            .map_err(|e| self.malformed(read, format!("the response is not JSON: {e}")))
    }

    async fn post_here(&self, read: &Read, body: Bytes) -> PostOutcome {
        // A query's pages are sent by the caller: each is ranked as a first request.
        let (body, headers) = self
            .fetch(&read.url, read, Some(body), first_rank(read))
            .await?;
        Ok(Posted {
            body,
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.as_str().to_string()))
                .collect(),
        })
    }
}

#[async_trait::async_trait]
impl AzureApi for PipelineApi {
    async fn get(&self, read: &Read) -> GetOutcome {
        let (api, r) = (self.clone(), read.clone());
        on_worker(read, async move { api.get_here(&r).await }).await?
    }

    async fn post(&self, read: &Read, body: Bytes) -> PostOutcome {
        let (api, r) = (self.clone(), read.clone());
        on_worker(read, async move { api.post_here(&r, body).await }).await?
    }

    async fn list(&self, read: &Read) -> ListOutcome {
        let (api, r) = (self.clone(), read.clone());
        on_worker(read, async move { api.list_here(&r).await })
            .await
            .unwrap_or_else(|f| ListOutcome {
                error: Some(f),
                ..Default::default()
            })
    }
}

impl PipelineApi {
    /// Every page of a list, on the current task.
    async fn list_here(&self, read: &Read) -> ListOutcome {
        let mut out = ListOutcome::default();
        let mut url = read.url.clone();
        let api_version: Option<String> = url
            .query_pairs()
            .find(|(k, _)| k == "api-version")
            .map(|(_, v)| v.into_owned());
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            if out.pages >= MAX_PAGES || !seen.insert(url.as_str().to_string()) {
                out.error = Some(Failure {
                    kind: FailureKind::Refused,
                    record: self.record(
                        read,
                        None,
                        Some("NextLinkLoop".into()),
                        format!(
                            "the list's nextLink repeats or runs past {MAX_PAGES} pages ({}); paging stopped",
                            shown(&url)
                        ),
                    ),
                });
                return out;
            }
            // Every page after the first continues a chain: it goes ahead of new requests.
            let rank = if out.pages > 0 {
                Rank::Continues
            } else {
                first_rank(read)
            };
            let (items, next) = match self.page(&url, read, rank, out.pages + 1).await {
                Ok(p) => p,
                Err(f) => {
                    out.error = Some(f);
                    return out;
                }
            };
            out.items.extend(items);
            out.pages += 1;
            let Some(next) = next else {
                return out;
            };
            let next_url = match url.join(&next) {
                Ok(u) => u,
                Err(e) => {
                    out.error = Some(self.malformed(
                        read,
                        format!("page {} has an unusable nextLink: {e}", out.pages),
                    ));
                    return out;
                }
            };
            if !endpoint::same_origin(&url, &next_url) {
                out.error = Some(Failure {
                    kind: FailureKind::Refused,
                    record: self.record(
                        read,
                        None,
                        Some("NextLinkOtherHost".into()),
                        format!(
                            "page {} links to {}, another host than {}; the link was not followed (the token is only sent to the endpoint it was meant for), so the list is incomplete",
                            out.pages,
                            next_url.origin().ascii_serialization(),
                            url.origin().ascii_serialization()
                        ),
                    ),
                });
                return out;
            }
            url = next_url;
            if let Some(v) = &api_version {
                if !url.query_pairs().any(|(k, _)| k == "api-version") {
                    url.query_pairs_mut().append_pair("api-version", v);
                }
            }
            debug!(
                "following nextLink to page {} of {}",
                out.pages + 1,
                read.scope
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn retry_after_prefers_milliseconds_then_seconds_then_dates() {
        let now = datetime!(2026-11-28 20:00:00 UTC);
        let h = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
        };
        assert_eq!(
            retry_after(h(&[("retry-after-ms", "250"), ("retry-after", "9")]), now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(h(&[("x-ms-retry-after-ms", "30")]), now),
            Some(Duration::from_millis(30))
        );
        assert_eq!(
            retry_after(h(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(h(&[("retry-after", "Sat, 28 Nov 2026 20:00:12 GMT")]), now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            retry_after(h(&[("retry-after", "Sat, 28 Nov 2026 19:00:00 GMT")]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(h(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(h(&[]), now), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(400);
        let cap = Duration::from_secs(10);
        for _ in 0..50 {
            let b1 = backoff(1, base, cap);
            assert!(b1 >= Duration::from_millis(200) && b1 <= base, "{b1:?}");
            let b3 = backoff(3, base, cap);
            assert!(
                b3 >= Duration::from_millis(800) && b3 <= Duration::from_millis(1600),
                "{b3:?}"
            );
            let b20 = backoff(20, base, cap);
            assert!(b20 >= cap / 2 && b20 <= cap, "{b20:?}");
        }
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 501, 505] {
            assert!(!is_retryable(s), "{s}");
        }
    }

    #[test]
    fn both_error_envelopes_parse() {
        let (c, m) = parse_envelope(
            br#"{"error":{"code":"AuthorizationFailed","message":"The client 'x' ..."}}"#,
        );
        assert_eq!(c.as_deref(), Some("AuthorizationFailed"));
        assert_eq!(m.as_deref(), Some("The client 'x' ..."));
        let (c, m) = parse_envelope(
            br#"{"code":"OperationNotAllowed","message":"too many requests","details":[]}"#,
        );
        assert_eq!(c.as_deref(), Some("OperationNotAllowed"));
        assert_eq!(m.as_deref(), Some("too many requests"));
        let (c, m) = parse_envelope(br#"{"Error":{"Code":"X","Message":"y"}}"#);
        assert_eq!((c.as_deref(), m.as_deref()), (Some("X"), Some("y")));
        assert_eq!(parse_envelope(b"<html>bad gateway</html>"), (None, None));
        assert_eq!(parse_envelope(b""), (None, None));
    }

    #[test]
    fn buckets_are_per_subscription_and_host() {
        let a =
            Url::parse("https://management.azure.com/subscriptions/ABC/providers/x?api-version=1")
                .unwrap();
        let b =
            Url::parse("https://management.azure.com/Subscriptions/abc/resourceGroups/r").unwrap();
        let c = Url::parse("https://management.azure.com/subscriptions?api-version=1").unwrap();
        let d = Url::parse("https://graph.microsoft.com/v1.0/servicePrincipals").unwrap();
        assert_eq!(Limiter::bucket_key(&a), Limiter::bucket_key(&b));
        assert_ne!(Limiter::bucket_key(&a), Limiter::bucket_key(&c));
        assert_eq!(Limiter::bucket_key(&c), "https://management.azure.com");
        assert_eq!(Limiter::bucket_key(&d), "https://graph.microsoft.com");
    }

    #[tokio::test]
    async fn the_bucket_spends_its_burst_then_refills() {
        let l = Limiter::new(8, 3.0, 1000.0);
        let u = Url::parse("http://127.0.0.1:1/subscriptions/s/x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..5 {
            assert!(l.acquire(&u, deadline, Rank::New).await.is_some());
        }
        // A budget that cannot refill before the deadline gives up instead of sleeping past it.
        let slow = Limiter::new(4, 1.0, 0.001);
        assert!(slow.acquire(&u, deadline, Rank::New).await.is_some());
        assert!(slow.acquire(&u, deadline, Rank::New).await.is_none());
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_most_urgent_waiter_then_the_oldest() {
        let slots = Slots::new(1);
        let held = slots.acquire(Rank::New).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, rank) in [
            ("new-1", Rank::New),
            ("next-page", Rank::Continues),
            ("new-2", Rank::New),
            ("vault-list", Rank::Unlocks),
        ] {
            let (slots, order) = (slots.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _p = slots.acquire(rank).await.unwrap();
                order.lock().unwrap().push(name);
            }));
            // Each waiter queues before the next one is spawned.
            tokio::task::yield_now().await;
        }
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec!["vault-list", "next-page", "new-1", "new-2"]
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_keep_its_slot() {
        let slots = Slots::new(1);
        let held = slots.acquire(Rank::New).await.unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(10), slots.acquire(Rank::Unlocks)).await;
        assert!(gave_up.is_err());
        drop(held);
        // The slot went past the waiter that left and is free again.
        let again = tokio::time::timeout(Duration::from_secs(5), slots.acquire(Rank::New)).await;
        assert!(matches!(again, Ok(Some(_))));
    }

    #[test]
    fn redactor_scrubs_every_known_secret() {
        let r = Redactor::default();
        r.add("secret-token-1");
        r.add("abc"); // too short to be a token; never scrubbed
        assert_eq!(
            r.scrub("Bearer secret-token-1 and abc"),
            "Bearer <redacted> and abc"
        );
    }

    #[test]
    fn shown_urls_drop_the_query() {
        let u = Url::parse("https://h/a/b?api-version=1&$skiptoken=zzz").unwrap();
        assert_eq!(shown(&u), "https://h/a/b");
    }
}
