//! The traffic plan: which reads, in which order, and how their outcomes become a snapshot.
//!
//! Per subscription: one list each of VMs, disks, snapshots, disk encryption sets, Recovery
//! Services vaults, Key Vaults and Managed HSMs, plus one GET per feature — never a request per
//! VM. Then, once each: per vault its storage config, policies and protected items; per RBAC Key
//! Vault behind a confidential DES its role assignments, then each role definition they name; per
//! Managed HSM behind a confidential DES its local role assignments and definitions. Microsoft
//! Graph is asked once for the Backup Management Service. Everything independent runs
//! concurrently; the HTTP layer bounds what is in flight.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures::future::join_all;
use serde_json::{json, Value};
use tracing::debug;
use url::Url;

use super::api::{
    to_single_read, Audience, AzureApi, Failure, FailureKind, GetOutcome, ListOutcome, Read,
};
use super::credential::LOGIN_HELP;
use super::progress::Progress;
use super::CollectError;
use crate::endpoint;
use crate::snapshot::{
    Endpoints, ErrorRecord, HsmRbac, ListRead, SingleRead, Snapshot, SubscriptionSnapshot,
    VaultChildren,
};

pub const PREVIEW_FEATURE: &str = "Microsoft.Compute/RestorePointSupportForConfidentialVMV2";
pub const BACKUP_MANAGEMENT_APP_ID: &str = "262044b1-e2ce-469f-a196-69ab7ada62d3";

pub const API_SUBSCRIPTIONS: &str = "2022-12-01";
pub const API_COMPUTE_VMS: &str = "2024-07-01";
pub const API_COMPUTE_DISKS: &str = "2024-03-02";
pub const API_RECOVERY_SERVICES: &str = "2024-04-01";
pub const API_KEY_VAULT: &str = "2023-07-01";
pub const API_FEATURES: &str = "2021-07-01";
pub const API_AUTHORIZATION: &str = "2022-04-01";
pub const API_HSM_DATA_PLANE: &str = "7.5";
const HSM_SCOPE: &str = "https://managedhsm.azure.net/.default";

/// What to read, decided from flags before any connection.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub arm: Url,
    pub graph: Url,
    pub arm_shown: String,
    pub graph_shown: String,
    /// Explicit subscriptions; empty: list them.
    pub subscriptions: Vec<String>,
    pub principal_override: Option<String>,
    /// Features to read per subscription ("Namespace/Name"), the preview feature first.
    pub features: Vec<String>,
    /// `--access-token` was given (changes the advice on a 401).
    pub static_token: bool,
}

// ---- small JSON helpers (case-insensitive like the estate) ---------------------------------

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(key).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn str_at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in keys {
        cur = field(cur, k)?;
    }
    cur.as_str().map(str::trim).filter(|s| !s.is_empty())
}

fn bool_at(v: &Value, keys: &[&str]) -> bool {
    let mut cur = v;
    for k in keys {
        match field(cur, k) {
            Some(x) => cur = x,
            None => return false,
        }
    }
    match cur {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// An ARM id we are willing to put in a URL path.
fn arm_id(id: &str) -> bool {
    id.starts_with('/') && !id.contains(['?', '#']) && !id.chars().any(char::is_whitespace)
}

/// `base` + `path` (any path prefix of the endpoint kept) + query.
pub fn join(base: &Url, path: &str, query: &[(&str, &str)]) -> Url {
    let mut u = base.clone();
    let prefix = base.path().trim_end_matches('/').to_string();
    u.set_path(&format!("{prefix}{path}"));
    u.set_query(None);
    u.set_fragment(None);
    if !query.is_empty() {
        let mut q = u.query_pairs_mut();
        for (k, v) in query {
            q.append_pair(k, v);
        }
    }
    u
}

/// Token scope of a Managed HSM data plane, from its host (`x.managedhsm.azure.net` →
/// `https://managedhsm.azure.net/.default`; other clouds alike).
pub fn hsm_token_scope(uri: &Url) -> String {
    let host = uri.host_str().unwrap_or_default().to_ascii_lowercase();
    match host.split_once('.') {
        Some((_, rest)) if rest.starts_with("managedhsm.") => format!("https://{rest}/.default"),
        _ => HSM_SCOPE.to_string(),
    }
}

fn guid_like(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

// ---- which key stores need their RBAC read --------------------------------------------------

/// A Managed HSM behind a confidential DES.
#[derive(Debug, Clone, PartialEq)]
pub struct HsmTarget {
    pub id: String,
    pub name: String,
    pub hsm_uri: Option<String>,
}

/// The Key Vaults (RBAC ones only) and Managed HSMs that hold the key of a confidential DES:
/// a DES whose `encryptionType` is confidential, or that a VM's OS disk or a disk names as its
/// confidential DES. Key locations follow CONTRACT.md section 1.
pub fn key_stores(subs: &[SubscriptionSnapshot]) -> (Vec<String>, Vec<HsmTarget>) {
    let items = |pick: fn(&SubscriptionSnapshot) -> Option<&ListRead>| -> Vec<&Value> {
        subs.iter()
            .filter_map(pick)
            .flat_map(|l| l.items().iter())
            .collect()
    };
    let vms = items(|s| s.virtual_machines.as_ref());
    let disks = items(|s| s.disks.as_ref());
    let des_list = items(|s| s.disk_encryption_sets.as_ref());
    let kvs = items(|s| s.key_vaults.as_ref());
    let hsms = items(|s| s.managed_hsms.as_ref());

    let mut named: HashSet<String> = HashSet::new();
    for vm in &vms {
        if let Some(id) = str_at(
            vm,
            &[
                "properties",
                "storageProfile",
                "osDisk",
                "managedDisk",
                "securityProfile",
                "diskEncryptionSet",
                "id",
            ],
        ) {
            named.insert(crate::armid::norm(id));
        }
    }
    for d in &disks {
        if let Some(id) = str_at(
            d,
            &[
                "properties",
                "securityProfile",
                "secureVMDiskEncryptionSetId",
            ],
        ) {
            named.insert(crate::armid::norm(id));
        }
    }

    let mut kv_out: Vec<String> = Vec::new();
    let mut hsm_out: Vec<HsmTarget> = Vec::new();
    for des in &des_list {
        let Some(id) = str_at(des, &["id"]) else {
            continue;
        };
        let confidential = str_at(des, &["properties", "encryptionType"])
            .is_some_and(|t| t.eq_ignore_ascii_case("ConfidentialVmEncryptedWithCustomerKey"));
        if !confidential && !named.contains(&crate::armid::norm(id)) {
            continue;
        }
        let Some(key_url) = str_at(des, &["properties", "activeKey", "keyUrl"]) else {
            continue;
        };
        let Some(host) = Url::parse(key_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        else {
            continue;
        };
        let mut labels = host.split('.');
        let store = labels.next().unwrap_or_default().to_string();
        match labels.next() {
            Some("vault") => {
                let found = match str_at(des, &["properties", "activeKey", "sourceVault", "id"]) {
                    Some(src) => kvs.iter().find(|k| {
                        str_at(k, &["id"]).is_some_and(|i| crate::armid::same_id(i, src))
                    }),
                    None => kvs.iter().find(|k| {
                        str_at(k, &["name"]).is_some_and(|n| n.eq_ignore_ascii_case(&store))
                    }),
                };
                if let Some(kv) = found {
                    if bool_at(kv, &["properties", "enableRbacAuthorization"]) {
                        if let Some(kv_id) = str_at(kv, &["id"]) {
                            if !kv_out.iter().any(|x| crate::armid::same_id(x, kv_id)) {
                                kv_out.push(kv_id.to_string());
                            }
                        }
                    }
                }
            }
            Some("managedhsm") => {
                let found = hsms
                    .iter()
                    .find(|h| str_at(h, &["name"]).is_some_and(|n| n.eq_ignore_ascii_case(&store)));
                if let Some(h) = found {
                    if let Some(hid) = str_at(h, &["id"]) {
                        if !hsm_out.iter().any(|x| crate::armid::same_id(&x.id, hid)) {
                            hsm_out.push(HsmTarget {
                                id: hid.to_string(),
                                name: store.clone(),
                                hsm_uri: str_at(h, &["properties", "hsmUri"]).map(str::to_string),
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (kv_out, hsm_out)
}

// ---- the run -------------------------------------------------------------------------------

/// What ARM answered so far, to tell "nothing could be read" apart from "some reads failed".
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    auth: AtomicUsize,
    unreachable: AtomicUsize,
    other: AtomicUsize,
    first_auth: Mutex<Option<ErrorRecord>>,
    first_unreachable: Mutex<Option<ErrorRecord>>,
}

impl Tally {
    fn failure(&self, f: &Failure) {
        let (count, first) = if f.kind.is_auth() {
            (&self.auth, Some(&self.first_auth))
        } else if f.kind.is_unreachable() {
            (&self.unreachable, Some(&self.first_unreachable))
        } else {
            (&self.other, None)
        };
        count.fetch_add(1, Ordering::SeqCst);
        if let Some(m) = first {
            if let Ok(mut g) = m.lock() {
                g.get_or_insert_with(|| f.record.clone());
            }
        }
    }
    fn first(m: &Mutex<Option<ErrorRecord>>) -> Option<ErrorRecord> {
        m.lock().ok().and_then(|g| g.clone())
    }
}

struct Plan<'a> {
    api: &'a dyn AzureApi,
    cfg: &'a PlanConfig,
    progress: &'a Progress,
    tally: Tally,
}

fn read(url: Url, audience: Audience, scope: String, operation: &str) -> Read {
    Read {
        url,
        audience,
        scope,
        operation: operation.to_string(),
    }
}

impl Plan<'_> {
    async fn list(&self, r: Read) -> ListOutcome {
        let o = self.api.list(&r).await;
        if r.audience == Audience::Arm {
            if o.pages > 0 {
                self.tally.ok.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(f) = &o.error {
                self.tally.failure(f);
            }
        }
        self.progress.inc();
        o
    }

    async fn get(&self, r: Read) -> GetOutcome {
        let o = self.api.get(&r).await;
        if r.audience == Audience::Arm {
            match &o {
                Ok(_) => {
                    self.tally.ok.fetch_add(1, Ordering::SeqCst);
                }
                Err(f) => self.tally.failure(f),
            }
        }
        self.progress.inc();
        o
    }

    fn arm(&self, path: &str, query: &[(&str, &str)]) -> Url {
        join(&self.cfg.arm, path, query)
    }

    fn auth_error(&self, r: &ErrorRecord) -> CollectError {
        let what = match (r.status, &r.code) {
            (Some(s), Some(c)) => format!("answered {s} {c}"),
            (Some(s), None) => format!("answered {s}"),
            _ => "could not be used".to_string(),
        };
        let advice = if self.cfg.static_token {
            "The token given with --access-token (or CVM_BACKUP_ACCESS_TOKEN) was refused: get a fresh one with `az account get-access-token --query accessToken -o tsv`, or leave it out to use the credential chain.".to_string()
        } else if r.message.contains("az login") {
            String::new()
        } else {
            LOGIN_HELP.to_string()
        };
        CollectError::Auth(
            format!(
                "authentication failed: Azure Resource Manager ({}) {what} for {} ({}): {}\n{advice}",
                self.cfg.arm_shown, r.scope, r.operation, r.message
            )
            .trim_end()
            .to_string(),
        )
    }

    fn unreachable_error(&self, r: &ErrorRecord) -> CollectError {
        CollectError::Unreachable(format!(
            "cannot reach Azure Resource Manager at {}: {} ({} {}). Check --arm-endpoint, the network and any proxy settings (HTTPS_PROXY, NO_PROXY).",
            self.cfg.arm_shown, r.message, r.operation, r.scope
        ))
    }

    /// Nothing read from ARM at all, and every failure was authentication (or no answer)?
    fn nothing_readable(&self) -> Option<CollectError> {
        if self.tally.ok.load(Ordering::SeqCst) > 0 || self.tally.other.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if self.tally.auth.load(Ordering::SeqCst) > 0 {
            return Tally::first(&self.tally.first_auth).map(|r| self.auth_error(&r));
        }
        if self.tally.unreachable.load(Ordering::SeqCst) > 0 {
            return Tally::first(&self.tally.first_unreachable).map(|r| self.unreachable_error(&r));
        }
        None
    }

    /// `--subscription` values, or every subscription the identity can list.
    async fn subscriptions(
        &self,
        errors: &mut Vec<ErrorRecord>,
    ) -> Result<Vec<(String, Option<String>)>, CollectError> {
        if !self.cfg.subscriptions.is_empty() {
            let mut out: Vec<(String, Option<String>)> = Vec::new();
            for s in &self.cfg.subscriptions {
                if !out.iter().any(|(x, _)| x.eq_ignore_ascii_case(s)) {
                    out.push((s.clone(), None));
                }
            }
            return Ok(out);
        }
        self.progress.phase("listing subscriptions");
        let o = self
            .list(read(
                self.arm("/subscriptions", &[("api-version", API_SUBSCRIPTIONS)]),
                Audience::Arm,
                "/subscriptions".into(),
                "list subscriptions",
            ))
            .await;
        if let Some(f) = &o.error {
            if o.pages == 0 {
                return Err(match f.kind {
                    FailureKind::Http(401 | 403) | FailureKind::Credential => {
                        self.auth_error(&f.record)
                    }
                    _ => self.unreachable_error(&f.record),
                });
            }
            errors.push(f.record.clone());
        }
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        for item in &o.items {
            let id = str_at(item, &["subscriptionId"])
                .map(str::to_string)
                .or_else(|| str_at(item, &["id"]).map(|i| crate::armid::name_of(i).to_string()));
            if let Some(id) = id {
                if !out.iter().any(|(x, _)| x.eq_ignore_ascii_case(&id)) {
                    out.push((id, str_at(item, &["displayName"]).map(str::to_string)));
                }
            }
        }
        if out.is_empty() && o.error.is_none() {
            return Err(CollectError::Auth(format!(
                "the identity can list no subscription at {}: nothing to check. Grant it Reader on the subscriptions to check, or name them with --subscription ID.",
                self.cfg.arm_shown
            )));
        }
        Ok(out)
    }

    async fn feature(&self, sub: &str, name: &str) -> (String, SingleRead) {
        let scope = format!("/subscriptions/{sub}/providers/Microsoft.Features/providers/{name}");
        let Some((ns, feat)) = name
            .split_once('/')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
        else {
            return (
                name.to_string(),
                SingleRead::failed(ErrorRecord {
                    scope,
                    operation: "read feature registration".into(),
                    status: None,
                    code: Some("InvalidFeatureName".into()),
                    message: format!(
                        "feature {name:?} is not of the form Namespace/Name; not read"
                    ),
                }),
            );
        };
        let url = self.arm(
            &format!(
                "/subscriptions/{sub}/providers/Microsoft.Features/providers/{ns}/features/{feat}"
            ),
            &[("api-version", API_FEATURES)],
        );
        let o = self
            .get(read(url, Audience::Arm, scope, "read feature registration"))
            .await;
        (name.to_string(), to_single_read(&o))
    }

    async fn subscription(&self, id: &str, display_name: Option<String>) -> SubscriptionSnapshot {
        let list = |provider: &str, api: &'static str, op: &'static str| {
            let path = format!("/subscriptions/{id}/providers/{provider}");
            let url = self.arm(&path, &[("api-version", api)]);
            self.list(read(url, Audience::Arm, path, op))
        };
        let lists = futures::future::join5(
            list(
                "Microsoft.Compute/virtualMachines",
                API_COMPUTE_VMS,
                "list virtual machines",
            ),
            list("Microsoft.Compute/disks", API_COMPUTE_DISKS, "list disks"),
            list(
                "Microsoft.Compute/snapshots",
                API_COMPUTE_DISKS,
                "list snapshots",
            ),
            list(
                "Microsoft.Compute/diskEncryptionSets",
                API_COMPUTE_DISKS,
                "list disk encryption sets",
            ),
            list(
                "Microsoft.RecoveryServices/vaults",
                API_RECOVERY_SERVICES,
                "list recovery services vaults",
            ),
        );
        let more = futures::future::join(
            list(
                "Microsoft.KeyVault/vaults",
                API_KEY_VAULT,
                "list key vaults",
            ),
            list(
                "Microsoft.KeyVault/managedHSMs",
                API_KEY_VAULT,
                "list managed HSMs",
            ),
        );
        let feats = join_all(self.cfg.features.iter().map(|f| self.feature(id, f)));
        let ((vms, disks, snaps, des, vaults), (kvs, hsms), feats) =
            futures::future::join3(lists, more, feats).await;

        // A subscription ARM does not know is one unreadable scope, not seven failed lists.
        let all = [&vms, &disks, &snaps, &des, &vaults, &kvs, &hsms];
        let gone = all
            .iter()
            .filter_map(|o| o.error.as_ref())
            .map(|f| &f.record)
            .chain(feats.iter().filter_map(|(_, r)| r.error.as_ref()))
            .find(|r| {
                r.code.as_deref().is_some_and(|c| {
                    c.eq_ignore_ascii_case("SubscriptionNotFound")
                        || c.eq_ignore_ascii_case("InvalidSubscriptionId")
                })
            })
            .cloned();
        // So is one that refuses every list (no Reader role on it at all).
        let refused = all.iter().all(|o| {
            o.pages == 0
                && o.error
                    .as_ref()
                    .is_some_and(|f| matches!(f.kind, FailureKind::Http(401 | 403)))
        });
        let gone = gone.or_else(|| {
            refused
                .then(|| vms.error.as_ref().map(|f| f.record.clone()))
                .flatten()
        });
        if let Some(mut e) = gone {
            e.scope = format!("/subscriptions/{id}");
            e.operation = "read subscription".into();
            return SubscriptionSnapshot {
                subscription_id: id.to_string(),
                display_name,
                error: Some(e),
                ..Default::default()
            };
        }
        SubscriptionSnapshot {
            subscription_id: id.to_string(),
            display_name,
            error: None,
            virtual_machines: Some(vms.to_list_read()),
            disks: Some(disks.to_list_read()),
            snapshots: Some(snaps.to_list_read()),
            disk_encryption_sets: Some(des.to_list_read()),
            recovery_services_vaults: Some(vaults.to_list_read()),
            key_vaults: Some(kvs.to_list_read()),
            managed_hsms: Some(hsms.to_list_read()),
            features: feats.into_iter().collect(),
        }
    }

    /// The Backup Management Service's object id: the flag, else Graph.
    async fn principal(&self) -> (SingleRead, Option<String>) {
        if let Some(oid) = &self.cfg.principal_override {
            // Recorded so that `check --from` on this snapshot sees the same principal.
            return (
                SingleRead::ok(json!({
                    "id": oid,
                    "appId": BACKUP_MANAGEMENT_APP_ID,
                    "source": "--backup-principal-id"
                })),
                Some(oid.clone()),
            );
        }
        let path = format!("/v1.0/servicePrincipals(appId='{BACKUP_MANAGEMENT_APP_ID}')");
        let url = join(
            &self.cfg.graph,
            &path,
            &[("$select", "id,appId,displayName")],
        );
        let r = read(
            url.clone(),
            Audience::Graph,
            super::http::shown(&url),
            "look up the Backup Management Service in Microsoft Graph",
        );
        match self.get(r).await {
            Ok(v) => {
                let id = str_at(&v, &["id"]).map(str::to_string);
                (SingleRead::ok(v), id)
            }
            // Graph's "no such service principal": an answer, not an error. A 404 without a
            // Graph error body (a wrong --graph-endpoint) stays an error.
            Err(f) if f.kind == FailureKind::Http(404) && f.record.code.is_some() => {
                (SingleRead::not_found(), None)
            }
            Err(f) => (SingleRead::failed(f.record), None),
        }
    }

    async fn vault(&self, id: String) -> (String, VaultChildren) {
        let storage = self.get(read(
            self.arm(
                &format!("{id}/backupstorageconfig/vaultstorageconfig"),
                &[("api-version", API_RECOVERY_SERVICES)],
            ),
            Audience::Arm,
            format!("{id}/backupstorageconfig/vaultstorageconfig"),
            "read backup storage config",
        ));
        let policies = self.list(read(
            self.arm(
                &format!("{id}/backupPolicies"),
                &[
                    ("api-version", API_RECOVERY_SERVICES),
                    ("$filter", "backupManagementType eq 'AzureIaasVM'"),
                ],
            ),
            Audience::Arm,
            format!("{id}/backupPolicies"),
            "list backup policies",
        ));
        let items = self.list(read(
            self.arm(
                &format!("{id}/backupProtectedItems"),
                &[
                    ("api-version", API_RECOVERY_SERVICES),
                    (
                        "$filter",
                        "backupManagementType eq 'AzureIaasVM' and itemType eq 'VM'",
                    ),
                ],
            ),
            Audience::Arm,
            format!("{id}/backupProtectedItems"),
            "list protected items",
        ));
        let (storage, policies, items) = futures::future::join3(storage, policies, items).await;
        (
            id,
            VaultChildren {
                storage_config: Some(to_single_read(&storage)),
                policies: Some(policies.to_list_read()),
                protected_items: Some(items.to_list_read()),
            },
        )
    }

    async fn key_vault_rbac(
        &self,
        kv_ids: Vec<String>,
        principal: Option<String>,
    ) -> (BTreeMap<String, ListRead>, BTreeMap<String, SingleRead>) {
        let filter = principal
            .filter(|p| guid_like(p))
            .map(|p| format!("principalId eq '{p}'"));
        let lists = join_all(kv_ids.into_iter().filter(|id| arm_id(id)).map(|id| {
            let path = format!("{id}/providers/Microsoft.Authorization/roleAssignments");
            let mut q = vec![("api-version", API_AUTHORIZATION)];
            if let Some(f) = &filter {
                q.push(("$filter", f.as_str()));
            }
            let url = self.arm(&path, &q);
            async move {
                debug!("Key Vault {id} uses RBAC: reading its role assignments");
                let o = self
                    .list(read(url, Audience::Arm, path, "list role assignments"))
                    .await;
                (id, o)
            }
        }))
        .await;
        let mut role_ids: Vec<String> = Vec::new();
        for (_, o) in &lists {
            for a in &o.items {
                if let Some(r) = str_at(a, &["properties", "roleDefinitionId"]) {
                    if !role_ids.iter().any(|x| x.eq_ignore_ascii_case(r)) {
                        role_ids.push(r.to_string());
                    }
                }
            }
        }
        let defs = join_all(role_ids.into_iter().map(|rid| async move {
            if !arm_id(&rid) {
                let rec = ErrorRecord {
                    scope: rid.clone(),
                    operation: "read role definition".into(),
                    status: None,
                    code: Some("InvalidRoleDefinitionId".into()),
                    message: "the role assignment names a role definition that is not an ARM id; not read".into(),
                };
                return (rid, SingleRead::failed(rec));
            }
            let url = self.arm(&rid, &[("api-version", API_AUTHORIZATION)]);
            let o = self
                .get(read(url, Audience::Arm, rid.clone(), "read role definition"))
                .await;
            (rid, to_single_read(&o))
        }))
        .await;
        (
            lists
                .into_iter()
                .map(|(id, o)| (id, o.to_list_read()))
                .collect(),
            defs.into_iter().collect(),
        )
    }

    /// Local RBAC of one Managed HSM, from its data plane. `Err` when its `hsmUri` may not be
    /// contacted.
    async fn hsm(&self, t: HsmTarget) -> Result<(String, HsmRbac), ErrorRecord> {
        let Some(raw) = t.hsm_uri.as_deref() else {
            return Err(ErrorRecord {
                scope: t.id.clone(),
                operation: "read Managed HSM local RBAC".into(),
                status: None,
                code: Some("MissingHsmUri".into()),
                message: format!(
                    "Managed HSM {} has no properties.hsmUri; its data plane was not contacted",
                    t.name
                ),
            });
        };
        let base = endpoint::check("hsmUri", raw).map_err(|e| ErrorRecord {
            scope: t.id.clone(),
            operation: "read Managed HSM local RBAC".into(),
            status: None,
            code: Some("InsecureHsmUri".into()),
            message: format!("{e}; the Managed HSM was not contacted"),
        })?;
        let audience = Audience::ManagedHsm(hsm_token_scope(&base));
        let list = |what: &str, op: &str| {
            let url = join(
                &base,
                &format!("/providers/Microsoft.Authorization/{what}"),
                &[("api-version", API_HSM_DATA_PLANE)],
            );
            self.list(read(
                url.clone(),
                audience.clone(),
                super::http::shown(&url),
                op,
            ))
        };
        let (ra, rd) = futures::future::join(
            list("roleAssignments", "list Managed HSM role assignments"),
            list("roleDefinitions", "list Managed HSM role definitions"),
        )
        .await;
        Ok((
            t.id,
            HsmRbac {
                role_assignments: Some(ra.to_list_read()),
                role_definitions: Some(rd.to_list_read()),
            },
        ))
    }
}

/// Runs the whole plan. `Err` only when nothing could be read (exit 4).
pub async fn run(
    api: &dyn AzureApi,
    cfg: &PlanConfig,
    progress: &Progress,
) -> Result<Snapshot, CollectError> {
    let plan = Plan {
        api,
        cfg,
        progress,
        tally: Tally::default(),
    };
    let mut errors: Vec<ErrorRecord> = Vec::new();
    let subs = plan.subscriptions(&mut errors).await?;

    progress.phase("reading subscriptions");
    let (subs, (principal_read, principal)) = futures::future::join(
        join_all(
            subs.iter()
                .map(|(id, name)| plan.subscription(id, name.clone())),
        ),
        plan.principal(),
    )
    .await;
    if let Some(e) = plan.nothing_readable() {
        return Err(e);
    }

    progress.phase("reading vaults and keys");
    let mut vault_ids: Vec<String> = Vec::new();
    for s in &subs {
        for v in s
            .recovery_services_vaults
            .as_ref()
            .map(ListRead::items)
            .unwrap_or_default()
        {
            if let Some(id) = str_at(v, &["id"]).filter(|i| arm_id(i)) {
                if !vault_ids.iter().any(|x| crate::armid::same_id(x, id)) {
                    vault_ids.push(id.to_string());
                }
            }
        }
    }
    let (kv_ids, hsm_targets) = key_stores(&subs);
    let (vaults, (kv_ra, role_defs), hsms) = futures::future::join3(
        join_all(vault_ids.into_iter().map(|id| plan.vault(id))),
        plan.key_vault_rbac(kv_ids, principal),
        join_all(hsm_targets.into_iter().map(|t| plan.hsm(t))),
    )
    .await;

    let mut snap = Snapshot::new(subs);
    snap.source = Some("arm".into());
    snap.endpoints = Some(Endpoints {
        arm: Some(cfg.arm_shown.clone()),
        graph: Some(cfg.graph_shown.clone()),
    });
    snap.backup_principal = Some(principal_read);
    snap.vaults = vaults.into_iter().collect();
    snap.key_vault_role_assignments = kv_ra;
    snap.role_definitions = role_defs;
    for h in hsms {
        match h {
            Ok((id, rbac)) => {
                snap.managed_hsms.insert(id, rbac);
            }
            Err(e) => errors.push(e),
        }
    }
    snap.errors = errors;
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(v: Value) -> SubscriptionSnapshot {
        serde_json::from_value(v).unwrap()
    }

    /// An in-memory [`AzureApi`]: the plan runs against anything that implements the trait.
    struct FakeApi {
        /// Answer for every read: `None` = an empty list / `{}`; `Some(status)` = that error.
        status: Option<u16>,
        reads: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl AzureApi for FakeApi {
        async fn get(&self, r: &Read) -> GetOutcome {
            self.reads.lock().unwrap().push(r.url.path().to_string());
            match self.status {
                None => Ok(json!({"id": "x", "properties": {"state": "Registered"}})),
                Some(st) => Err(self.failure(r, st)),
            }
        }
        async fn list(&self, r: &Read) -> ListOutcome {
            self.reads.lock().unwrap().push(r.url.path().to_string());
            match self.status {
                None => ListOutcome {
                    items: Vec::new(),
                    pages: 1,
                    error: None,
                },
                Some(st) => ListOutcome {
                    error: Some(self.failure(r, st)),
                    ..Default::default()
                },
            }
        }
    }

    impl FakeApi {
        fn new(status: Option<u16>) -> Self {
            FakeApi {
                status,
                reads: std::sync::Mutex::new(Vec::new()),
            }
        }
        fn failure(&self, r: &Read, st: u16) -> Failure {
            Failure {
                kind: FailureKind::Http(st),
                record: ErrorRecord {
                    scope: r.scope.clone(),
                    operation: r.operation.clone(),
                    status: Some(st),
                    code: Some(
                        if st == 401 {
                            "InvalidAuthenticationToken"
                        } else {
                            "AuthorizationFailed"
                        }
                        .into(),
                    ),
                    message: "fake".into(),
                },
            }
        }
    }

    fn cfg(subs: &[&str]) -> PlanConfig {
        PlanConfig {
            arm: Url::parse("https://management.azure.com").unwrap(),
            graph: Url::parse("https://graph.microsoft.com").unwrap(),
            arm_shown: "https://management.azure.com".into(),
            graph_shown: "https://graph.microsoft.com".into(),
            subscriptions: subs.iter().map(|s| s.to_string()).collect(),
            principal_override: None,
            features: vec![PREVIEW_FEATURE.into()],
            static_token: true,
        }
    }

    #[tokio::test]
    async fn the_plan_runs_against_any_api_and_reads_each_list_once() {
        let api = FakeApi::new(None);
        let snap = run(&api, &cfg(&["s1", "S1", "s2"]), &Progress::hidden())
            .await
            .unwrap();
        assert_eq!(
            snap.subscriptions.len(),
            2,
            "duplicate --subscription read twice"
        );
        assert_eq!(snap.source.as_deref(), Some("arm"));
        let s = &snap.subscriptions[0];
        assert!(s.virtual_machines.is_some() && s.managed_hsms.is_some());
        assert!(s.features.contains_key(PREVIEW_FEATURE));
        // 7 lists + 1 feature per subscription, plus the Graph lookup.
        assert_eq!(api.reads.lock().unwrap().len(), 2 * 8 + 1);
    }

    #[tokio::test]
    async fn only_401s_everywhere_is_an_authentication_error() {
        let api = FakeApi::new(Some(401));
        let e = run(&api, &cfg(&["s1"]), &Progress::hidden())
            .await
            .unwrap_err();
        assert!(
            matches!(e, CollectError::Auth(ref m) if m.contains("401 InvalidAuthenticationToken")),
            "{e}"
        );
        // 403s everywhere are answers: an incomplete snapshot, one unreadable scope.
        let api = FakeApi::new(Some(403));
        let snap = run(&api, &cfg(&["s1"]), &Progress::hidden()).await.unwrap();
        let err = snap.subscriptions[0].error.as_ref().unwrap();
        assert_eq!(
            (err.status, err.scope.as_str()),
            (Some(403), "/subscriptions/s1")
        );
    }

    #[test]
    fn urls_keep_the_endpoint_prefix_and_encode_the_filter() {
        let base = Url::parse("http://127.0.0.1:9/graph/").unwrap();
        let u = join(
            &base,
            "/v1.0/servicePrincipals(appId='x')",
            &[("$select", "id,appId")],
        );
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9/graph/v1.0/servicePrincipals(appId='x')?%24select=id%2CappId"
        );
        let arm = Url::parse("https://management.azure.com").unwrap();
        let u = join(
            &arm,
            "/subscriptions/s/providers/Microsoft.Compute/disks",
            &[("api-version", "2024-03-02")],
        );
        assert_eq!(
            u.as_str(),
            "https://management.azure.com/subscriptions/s/providers/Microsoft.Compute/disks?api-version=2024-03-02"
        );
    }

    #[test]
    fn hsm_scopes_follow_the_cloud() {
        let u = Url::parse("https://h1.managedhsm.azure.net/").unwrap();
        assert_eq!(hsm_token_scope(&u), "https://managedhsm.azure.net/.default");
        let u = Url::parse("https://h1.managedhsm.usgovcloudapi.net/").unwrap();
        assert_eq!(
            hsm_token_scope(&u),
            "https://managedhsm.usgovcloudapi.net/.default"
        );
        let u = Url::parse("http://127.0.0.1:5/hsm/h1/").unwrap();
        assert_eq!(hsm_token_scope(&u), HSM_SCOPE);
    }

    #[test]
    fn only_rbac_vaults_and_hsms_behind_a_confidential_des_are_read() {
        let s = sub(json!({
            "subscription_id": "s",
            "virtual_machines": {"value": [{
                "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
                "properties": {"storageProfile": {"osDisk": {"managedDisk": {"securityProfile": {
                    "diskEncryptionSet": {"id": "/subscriptions/s/resourceGroups/RG/providers/Microsoft.Compute/diskEncryptionSets/named"}}}}}}
            }]},
            "disk_encryption_sets": {"value": [
                {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/diskEncryptionSets/named",
                 "properties": {"activeKey": {"keyUrl": "https://kv-rbac.vault.azure.net/keys/k/1"}}},
                {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/diskEncryptionSets/cvm",
                 "properties": {"encryptionType": "confidentialVmEncryptedWithCustomerKey",
                   "activeKey": {"keyUrl": "https://HSM1.managedhsm.azure.net/keys/k/1"}}},
                {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/diskEncryptionSets/src",
                 "properties": {"encryptionType": "ConfidentialVmEncryptedWithCustomerKey",
                   "activeKey": {"keyUrl": "https://kv-policy.vault.azure.net/keys/k/1",
                     "sourceVault": {"id": "/subscriptions/s/resourcegroups/rg/providers/microsoft.keyvault/vaults/kv-rbac2"}}}},
                {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/diskEncryptionSets/sse",
                 "properties": {"encryptionType": "EncryptionAtRestWithCustomerKey",
                   "activeKey": {"keyUrl": "https://kv-sse.vault.azure.net/keys/k/1"}}}
            ]},
            "key_vaults": {"value": [
                {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-rbac", "name": "kv-rbac",
                 "properties": {"enableRbacAuthorization": true}},
                {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-rbac2", "name": "kv-rbac2",
                 "properties": {"enableRbacAuthorization": "true"}},
                {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-policy", "name": "kv-policy",
                 "properties": {"enableRbacAuthorization": true}},
                {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-sse", "name": "kv-sse",
                 "properties": {"enableRbacAuthorization": true}}
            ]},
            "managed_hsms": {"value": [
                {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/managedHSMs/hsm1", "name": "hsm1",
                 "properties": {"hsmUri": "https://hsm1.managedhsm.azure.net/"}}
            ]}
        }));
        let (kvs, hsms) = key_stores(&[s]);
        // kv-rbac: named by the VM; kv-rbac2: the sourceVault wins over the key URL's host;
        // kv-sse: behind an ordinary (non-confidential) DES, not read.
        assert_eq!(
            kvs,
            vec![
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-rbac",
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-rbac2"
            ]
        );
        assert_eq!(hsms.len(), 1);
        assert_eq!(hsms[0].name, "hsm1");
        assert_eq!(
            hsms[0].hsm_uri.as_deref(),
            Some("https://hsm1.managedhsm.azure.net/")
        );
    }
}
