//! Where tokens come from: `--access-token` as-is, or a chain of azure_identity 0.21 sources
//! (environment service principal, workload identity, managed identity, Azure CLI).
//!
//! The chain is ours rather than `DefaultAzureCredential` so that it picks one source once
//! (the first that works), never probes the others again, and, when nothing works, says in one
//! message what was tried and how to log in. `AZURE_CREDENTIAL_KIND` (azure_identity's own
//! switch) selects one specific source instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::{AccessToken, TokenCredential};
use azure_core::error::{Error, ErrorKind};
use azure_identity::{
    AppServiceManagedIdentityCredential, AzureCliCredential, ClientSecretCredential,
    TokenCredentialOptions, VirtualMachineManagedIdentityCredential, WorkloadIdentityCredential,
};
use time::OffsetDateTime;
use tracing::debug;

/// How to get a working credential, appended to every authentication error.
pub const LOGIN_HELP: &str = "Log in with `az login` (then `az account set --subscription ID`), \
or set a service principal in AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or use \
workload identity (AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE, as set by \
GitHub Actions' azure/login with OIDC), or pass --access-token. See docs/authentication.md.";

/// `--access-token`: one bearer token for every audience.
pub struct StaticToken(String);

impl StaticToken {
    pub fn new(token: &str) -> Self {
        StaticToken(token.trim().to_string())
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(&self, _scopes: &[&str]) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.0.clone(),
            OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
    async fn clear_cache(&self) -> azure_core::Result<()> {
        Ok(())
    }
}

/// One place a token may come from.
pub struct Source {
    pub name: &'static str,
    /// `Err(why)` when the source is not configured on this machine.
    pub credential: Result<Arc<dyn TokenCredential>, String>,
    /// How long the first attempt may take before the source counts as absent.
    pub probe_timeout: Duration,
}

#[derive(Default)]
struct ChainState {
    chosen: Option<usize>,
    cache: HashMap<String, AccessToken>,
}

/// Tries each source once, in order, and sticks to the first that works.
pub struct ChainCredential {
    sources: Vec<Source>,
    state: tokio::sync::Mutex<ChainState>,
    /// Limit for a token request once a source is chosen.
    request_timeout: Duration,
}

impl std::fmt::Debug for ChainCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sources.iter().map(|s| s.name).collect();
        f.debug_struct("ChainCredential")
            .field("sources", &names)
            .finish()
    }
}

fn describe(e: &Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string().trim().to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// A token still good for at least two minutes.
fn fresh(t: &AccessToken) -> bool {
    t.expires_on > OffsetDateTime::now_utc() + time::Duration::minutes(2)
}

impl ChainCredential {
    pub fn new(sources: Vec<Source>, request_timeout: Duration) -> Self {
        ChainCredential {
            sources,
            state: tokio::sync::Mutex::new(ChainState::default()),
            request_timeout,
        }
    }

    /// The default chain: environment service principal, workload identity, managed identity
    /// (App Service when `IDENTITY_ENDPOINT` is set, else the VM metadata endpoint), Azure CLI.
    pub fn default_chain(request_timeout: Duration) -> Self {
        let opts = TokenCredentialOptions::default;
        let sp = ClientSecretCredential::create(opts())
            .map(|c| Arc::new(c) as Arc<dyn TokenCredential>)
            .map_err(|_| {
                "not configured (AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET are not all set)"
                    .to_string()
            });
        let wi = if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some()
            || std::env::var_os("AZURE_FEDERATED_TOKEN").is_some()
        {
            WorkloadIdentityCredential::create(opts())
                .map(|c| Arc::new(c) as Arc<dyn TokenCredential>)
                .map_err(|e| format!("misconfigured: {}", describe(&e)))
        } else {
            Err("not configured (AZURE_FEDERATED_TOKEN_FILE is not set)".to_string())
        };
        let (mi, mi_probe) = if std::env::var_os("IDENTITY_ENDPOINT").is_some() {
            (
                AppServiceManagedIdentityCredential::create(opts())
                    .map(|c| Arc::new(c) as Arc<dyn TokenCredential>)
                    .map_err(|e| format!("misconfigured: {}", describe(&e))),
                request_timeout,
            )
        } else {
            (
                Ok(
                    Arc::new(VirtualMachineManagedIdentityCredential::new(opts()))
                        as Arc<dyn TokenCredential>,
                ),
                // The metadata endpoint answers at once on an Azure VM; elsewhere it never does.
                Duration::from_secs(1),
            )
        };
        let sources = vec![
            Source {
                name: "environment service principal",
                credential: sp,
                probe_timeout: request_timeout,
            },
            Source {
                name: "workload identity",
                credential: wi,
                probe_timeout: request_timeout,
            },
            Source {
                name: "managed identity",
                credential: mi,
                probe_timeout: mi_probe,
            },
            Source {
                name: "Azure CLI",
                credential: Ok(Arc::new(AzureCliCredential::new()) as Arc<dyn TokenCredential>),
                probe_timeout: request_timeout.max(Duration::from_secs(20)),
            },
        ];
        ChainCredential::new(sources, request_timeout)
    }

    async fn try_source(
        &self,
        s: &Source,
        scopes: &[&str],
        limit: Duration,
    ) -> Result<AccessToken, String> {
        let cred = s.credential.as_ref().map_err(Clone::clone)?;
        match tokio::time::timeout(limit, cred.get_token(scopes)).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("no answer within {} s", limit.as_secs_f64())),
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for ChainCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let key = scopes.join(" ");
        // One token request at a time: concurrent reads wait for the first and share its token.
        let mut state = self.state.lock().await;
        if let Some(t) = state.cache.get(&key) {
            if fresh(t) {
                return Ok(t.clone());
            }
        }
        if let Some(i) = state.chosen {
            let s = &self.sources[i];
            let t = self
                .try_source(s, scopes, self.request_timeout)
                .await
                .map_err(|why| {
                    Error::message(
                        ErrorKind::Credential,
                        format!("{} could not get a token for {key}: {why}", s.name),
                    )
                })?;
            state.cache.insert(key, t.clone());
            return Ok(t);
        }
        let mut tried = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            match self.try_source(s, scopes, s.probe_timeout).await {
                Ok(t) => {
                    debug!("credential: using {}", s.name);
                    state.chosen = Some(i);
                    state.cache.insert(key, t.clone());
                    return Ok(t);
                }
                Err(why) => tried.push(format!("  - {}: {why}", s.name)),
            }
        }
        Err(Error::message(
            ErrorKind::Credential,
            format!(
                "no Azure credential worked. Tried, in order:\n{}\n{LOGIN_HELP}",
                tried.join("\n")
            ),
        ))
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        self.state.lock().await.cache.clear();
        Ok(())
    }
}

/// azure_identity's `AZURE_CREDENTIAL_KIND` source, with a shared per-scope cache.
pub struct SpecificCredential {
    kind: String,
    inner: Arc<dyn TokenCredential>,
    cache: tokio::sync::Mutex<HashMap<String, AccessToken>>,
}

impl std::fmt::Debug for SpecificCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpecificCredential({})", self.kind)
    }
}

#[async_trait::async_trait]
impl TokenCredential for SpecificCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let key = scopes.join(" ");
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache.get(&key) {
            if fresh(t) {
                return Ok(t.clone());
            }
        }
        let t = self.inner.get_token(scopes).await.map_err(|e| {
            Error::message(
                ErrorKind::Credential,
                format!(
                    "AZURE_CREDENTIAL_KIND={} could not get a token: {}",
                    self.kind,
                    describe(&e)
                ),
            )
        })?;
        cache.insert(key, t.clone());
        Ok(t)
    }
    async fn clear_cache(&self) -> azure_core::Result<()> {
        self.cache.lock().await.clear();
        Ok(())
    }
}

/// The credential for this run. Errors are one message for the user (exit 4).
pub fn build(
    access_token: Option<&str>,
    request_timeout: Duration,
) -> Result<Arc<dyn TokenCredential>, String> {
    if let Some(t) = access_token {
        if t.trim().is_empty() {
            return Err("--access-token is empty".into());
        }
        return Ok(Arc::new(StaticToken::new(t)));
    }
    if let Ok(kind) = std::env::var("AZURE_CREDENTIAL_KIND") {
        let inner = azure_identity::create_credential().map_err(|e| {
            format!(
                "AZURE_CREDENTIAL_KIND={kind}: {}\n{LOGIN_HELP}",
                describe(&e)
            )
        })?;
        return Ok(Arc::new(SpecificCredential {
            kind,
            inner,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }));
    }
    Ok(Arc::new(ChainCredential::default_chain(request_timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Fake {
        ok: bool,
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl TokenCredential for Fake {
        async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.ok {
                Ok(AccessToken::new(
                    format!("tok-{}", scopes.join(",")),
                    OffsetDateTime::now_utc() + time::Duration::hours(1),
                ))
            } else {
                Err(Error::message(ErrorKind::Credential, "refused by fake"))
            }
        }
        async fn clear_cache(&self) -> azure_core::Result<()> {
            Ok(())
        }
    }

    fn fake(ok: bool) -> Arc<Fake> {
        Arc::new(Fake {
            ok,
            calls: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn the_chain_sticks_to_the_first_source_that_works() {
        let bad = fake(false);
        let good = fake(true);
        let chain = ChainCredential::new(
            vec![
                Source {
                    name: "absent",
                    credential: Err("not configured (X is not set)".into()),
                    probe_timeout: Duration::from_secs(1),
                },
                Source {
                    name: "bad",
                    credential: Ok(bad.clone()),
                    probe_timeout: Duration::from_secs(1),
                },
                Source {
                    name: "good",
                    credential: Ok(good.clone()),
                    probe_timeout: Duration::from_secs(1),
                },
            ],
            Duration::from_secs(5),
        );
        let t = chain.get_token(&["arm/.default"]).await.unwrap();
        assert_eq!(t.token.secret(), "tok-arm/.default");
        // Cached per scope; a second scope goes to the chosen source only.
        chain.get_token(&["arm/.default"]).await.unwrap();
        chain.get_token(&["graph/.default"]).await.unwrap();
        assert_eq!(bad.calls.load(Ordering::SeqCst), 1);
        assert_eq!(good.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn when_nothing_works_one_message_lists_every_source_and_how_to_log_in() {
        let chain = ChainCredential::new(
            vec![
                Source {
                    name: "environment service principal",
                    credential: Err("not configured (AZURE_CLIENT_ID is not set)".into()),
                    probe_timeout: Duration::from_secs(1),
                },
                Source {
                    name: "Azure CLI",
                    credential: Ok(fake(false)),
                    probe_timeout: Duration::from_secs(1),
                },
            ],
            Duration::from_secs(5),
        );
        let e = chain.get_token(&["x/.default"]).await.unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("environment service principal: not configured"),
            "{m}"
        );
        assert!(m.contains("Azure CLI: refused by fake"), "{m}");
        assert!(m.contains("az login"), "{m}");
        assert!(m.contains("--access-token"), "{m}");
    }

    #[tokio::test]
    async fn a_static_token_serves_every_audience_and_hides_in_debug() {
        let s = StaticToken::new(" abc.def ");
        for scope in [
            "https://management.azure.com/.default",
            "https://managedhsm.azure.net/.default",
        ] {
            assert_eq!(
                s.get_token(&[scope]).await.unwrap().token.secret(),
                "abc.def"
            );
        }
        assert!(!format!("{s:?}").contains("abc"));
        assert!(build(Some("  "), Duration::from_secs(1)).is_err());
    }
}
