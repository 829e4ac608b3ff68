//! The traffic plan: which reads, in which order, and how their outcomes become a snapshot.
//!
//! Per subscription: one list each of VMs, disks, snapshots, disk encryption sets, Recovery
//! Services vaults, Key Vaults and Managed HSMs — from ARM, or (`--source resource-graph`) from
//! Azure Resource Graph in batches of subscriptions — plus one GET per feature: never a request
//! per VM. Then, once each: per vault its storage config, policies and protected items; per RBAC
//! Key Vault behind a confidential DES its role assignments, then each role definition they name;
//! per Managed HSM behind a confidential DES its local role assignments and definitions.
//! Microsoft Graph is asked once for the Backup Management Service.
//!
//! Nothing waits for more than it needs: every read is a task of one set, and a dependent read
//! starts as soon as its inputs are in — a vault's children when its subscription's vault list
//! has arrived, a role definition when the role assignments naming it have, the key stores' RBAC
//! when every DES, Key Vault and HSM list has (a DES that only a VM or disk names as confidential
//! adds its key store once the VM and disk lists are in too). The HTTP layer bounds what is in
//! flight and serves continuing chains (next pages, retries) first. A subscription whose lists
//! and features are all in, and a vault whose three reads are, can be handed over at once
//! ([`run_with`]) while the other reads go on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tracing::debug;
use url::Url;

use super::api::{
    into_single_read, Audience, AzureApi, Failure, FailureKind, GetOutcome, Item, ListOutcome, Read,
};
use super::credential::LOGIN_HELP;
use super::progress::Progress;
use super::resource_graph::{self as arg, QuotaGate, Scope};
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

/// Where the inventory lists come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// One ARM list per subscription and resource type.
    #[default]
    Arm,
    /// Azure Resource Graph queries over batches of subscriptions (or management groups).
    ResourceGraph,
}

impl Source {
    /// As recorded in the snapshot's `source`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Arm => "arm",
            Source::ResourceGraph => "resource-graph",
        }
    }
}

/// What to read, decided from flags before any connection.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub arm: Url,
    pub graph: Url,
    pub arm_shown: String,
    pub graph_shown: String,
    /// Explicit subscriptions; empty: list them (or, with management groups, ask Resource Graph).
    pub subscriptions: Vec<String>,
    pub principal_override: Option<String>,
    /// Features to read per subscription ("Namespace/Name"), the preview feature first.
    pub features: Vec<String>,
    /// `--access-token` was given (changes the advice on a 401).
    pub static_token: bool,
    pub source: Source,
    /// `--management-group`: the scope of the Resource Graph queries.
    pub management_groups: Vec<String>,
    /// The overall `--timeout`: no wait for a quota may run past it.
    pub deadline: Instant,
}

/// The seven inventory lists of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Vms,
    Disks,
    Snapshots,
    Des,
    Vaults,
    KeyVaults,
    Hsms,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Vms,
        Kind::Disks,
        Kind::Snapshots,
        Kind::Des,
        Kind::Vaults,
        Kind::KeyVaults,
        Kind::Hsms,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The ARM resource type.
    pub fn provider(self) -> &'static str {
        match self {
            Kind::Vms => "Microsoft.Compute/virtualMachines",
            Kind::Disks => "Microsoft.Compute/disks",
            Kind::Snapshots => "Microsoft.Compute/snapshots",
            Kind::Des => "Microsoft.Compute/diskEncryptionSets",
            Kind::Vaults => "Microsoft.RecoveryServices/vaults",
            Kind::KeyVaults => "Microsoft.KeyVault/vaults",
            Kind::Hsms => "Microsoft.KeyVault/managedHSMs",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Vms => API_COMPUTE_VMS,
            Kind::Disks | Kind::Snapshots | Kind::Des => API_COMPUTE_DISKS,
            Kind::Vaults => API_RECOVERY_SERVICES,
            Kind::KeyVaults | Kind::Hsms => API_KEY_VAULT,
        }
    }

    /// "virtual machines", … as in "list virtual machines".
    pub fn what(self) -> &'static str {
        match self {
            Kind::Vms => "virtual machines",
            Kind::Disks => "disks",
            Kind::Snapshots => "snapshots",
            Kind::Des => "disk encryption sets",
            Kind::Vaults => "recovery services vaults",
            Kind::KeyVaults => "key vaults",
            Kind::Hsms => "managed HSMs",
        }
    }

    /// A list that says which key stores exist and which DESs are confidential.
    fn locates_keys(self) -> bool {
        matches!(self, Kind::Des | Kind::KeyVaults | Kind::Hsms)
    }

    /// A list that may name a DES as confidential (a VM's OS disk, a disk).
    fn names_des(self) -> bool {
        matches!(self, Kind::Vms | Kind::Disks)
    }
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

#[derive(Deserialize, Default)]
#[serde(default)]
struct IdRef {
    id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct VmNames {
    properties: Option<VmNamesProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct VmNamesProps {
    storage_profile: Option<VmNamesStorage>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct VmNamesStorage {
    os_disk: Option<VmNamesOsDisk>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct VmNamesOsDisk {
    managed_disk: Option<VmNamesManagedDisk>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct VmNamesManagedDisk {
    security_profile: Option<VmNamesSecurity>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct VmNamesSecurity {
    disk_encryption_set: Option<IdRef>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DiskNames {
    properties: Option<DiskNamesProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct DiskNamesProps {
    security_profile: Option<DiskNamesSecurity>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DiskNamesSecurity {
    #[serde(rename = "secureVMDiskEncryptionSetId")]
    secure_vm_disk_encryption_set_id: Option<String>,
}

fn clean(s: Option<String>) -> Option<String> {
    s.map(|x| x.trim().to_string()).filter(|x| !x.is_empty())
}

/// The DES a VM's OS disk names as its confidential DES (read from the JSON text; only that
/// path is looked at, so a 2 KB VM costs one scan and no value tree).
fn des_named_by_vm(vm: &RawValue) -> Option<String> {
    let v: VmNames = serde_json::from_str(vm.get()).ok()?;
    clean(
        v.properties?
            .storage_profile?
            .os_disk?
            .managed_disk?
            .security_profile?
            .disk_encryption_set?
            .id,
    )
}

/// The DES a disk (or snapshot) names as its confidential DES.
fn des_named_by_disk(disk: &RawValue) -> Option<String> {
    let d: DiskNames = serde_json::from_str(disk.get()).ok()?;
    clean(
        d.properties?
            .security_profile?
            .secure_vm_disk_encryption_set_id,
    )
}

fn value_of(item: &RawValue) -> Value {
    serde_json::from_str(item.get()).unwrap_or(Value::Null)
}

/// A value built here (not read from Azure) as JSON text.
fn item_of(v: &Value) -> Item {
    // Serialising a value cannot fail, and its text is valid JSON.
    RawValue::from_string(v.to_string())
        .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default())
}

fn ok_single(v: Item) -> SingleRead<Item> {
    SingleRead {
        value: Some(v),
        ..Default::default()
    }
}

fn failed_single(e: ErrorRecord) -> SingleRead<Item> {
    SingleRead {
        error: Some(e),
        ..Default::default()
    }
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
    let mut named: HashSet<String> = HashSet::new();
    for vm in items(|s| s.virtual_machines.as_ref()) {
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
    for d in items(|s| s.disks.as_ref()) {
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
    key_stores_of(
        &items(|s| s.disk_encryption_sets.as_ref()),
        &items(|s| s.key_vaults.as_ref()),
        &items(|s| s.managed_hsms.as_ref()),
        &named,
    )
}

/// [`key_stores`] over DESs, Key Vaults and HSMs, with the DES ids (normalised) that a VM or disk
/// names.
fn key_stores_of(
    des_list: &[&Value],
    kvs: &[&Value],
    hsms: &[&Value],
    named: &HashSet<String>,
) -> (Vec<String>, Vec<HsmTarget>) {
    let mut kv_out: Vec<String> = Vec::new();
    let mut hsm_out: Vec<HsmTarget> = Vec::new();
    for des in des_list {
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
    quota: QuotaGate,
}

fn read(url: Url, audience: Audience, scope: String, operation: &str) -> Read {
    Read {
        url,
        audience,
        scope,
        operation: operation.to_string(),
        unlocks: false,
        continues: false,
    }
}

/// A read that other reads wait for: served ahead of reads that start something new.
fn unlocking(mut r: Read) -> Read {
    r.unlocks = true;
    r
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

    /// One Resource Graph query, every page.
    async fn query(
        &self,
        scope: Scope<'_>,
        query: &str,
        operation: &str,
        unlocks: bool,
    ) -> arg::QueryOutcome {
        let url = self.arm(arg::PATH, &[("api-version", arg::API_RESOURCE_GRAPH)]);
        let mut r = read(url, Audience::Arm, arg::PATH.into(), operation);
        r.unlocks = unlocks;
        let o = arg::query_all(self.api, &self.quota, &r, scope, query, self.cfg.deadline).await;
        if o.pages > 0 {
            self.tally.ok.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(f) = &o.error {
            self.tally.failure(f);
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
        if !self.cfg.management_groups.is_empty() {
            return self.management_group_subscriptions().await;
        }
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
        for item in o.items.iter().map(|i| value_of(i)) {
            let item = &item;
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

    /// The subscriptions under `--management-group`, from Resource Graph.
    async fn management_group_subscriptions(
        &self,
    ) -> Result<Vec<(String, Option<String>)>, CollectError> {
        self.progress
            .phase("listing the subscriptions of the management groups");
        let mgs = &self.cfg.management_groups;
        let o = self
            .query(
                Scope::ManagementGroups(mgs),
                arg::SUBSCRIPTIONS_QUERY,
                "list the subscriptions of the management groups (Resource Graph)",
                true,
            )
            .await;
        let shown = mgs.join(", ");
        if let Some(f) = &o.error {
            // A partial list would silently narrow the scope: refuse it.
            let r = &f.record;
            let what = match (r.status, &r.code) {
                (Some(s), Some(c)) => format!("{s} {c}"),
                (Some(s), None) => format!("HTTP {s}"),
                _ => "no answer".to_string(),
            };
            let msg = format!(
                "Azure Resource Graph could not list the subscriptions of management group(s) {shown} ({what}): {}",
                r.message
            );
            return Err(match f.kind {
                FailureKind::Http(401) | FailureKind::Credential => self.auth_error(r),
                FailureKind::Http(403) => CollectError::Auth(format!(
                    "{msg}\nGrant the identity Reader on the management groups, or name subscriptions with --subscription ID."
                )),
                _ => CollectError::Unreachable(msg),
            });
        }
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        for row in o.rows.iter().map(|r| value_of(r)) {
            let id = str_at(&row, &["subscriptionId"])
                .map(str::to_string)
                .or_else(|| str_at(&row, &["id"]).map(|i| crate::armid::name_of(i).to_string()));
            if let Some(id) = id {
                if !out.iter().any(|(x, _)| x.eq_ignore_ascii_case(&id)) {
                    out.push((id, str_at(&row, &["name"]).map(str::to_string)));
                }
            }
        }
        if out.is_empty() {
            return Err(CollectError::Auth(format!(
                "Azure Resource Graph finds no subscription the identity can read under management group(s) {shown}: nothing to check. Check the group ids, or grant the identity Reader on them."
            )));
        }
        // --subscription with --management-group: a subscription must match both.
        let wanted = &self.cfg.subscriptions;
        if !wanted.is_empty() {
            out.retain(|(id, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(id)));
            if out.is_empty() {
                return Err(CollectError::Auth(format!(
                    "none of the subscriptions given with --subscription (or AZURE_SUBSCRIPTION_ID) is under management group(s) {shown}: nothing to check."
                )));
            }
        }
        Ok(out)
    }

    async fn feature(&self, sub: &str, name: &str) -> (String, SingleRead<Item>) {
        let scope = format!("/subscriptions/{sub}/providers/Microsoft.Features/providers/{name}");
        let Some((ns, feat)) = name
            .split_once('/')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
        else {
            return (
                name.to_string(),
                failed_single(ErrorRecord {
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
        (name.to_string(), into_single_read(o))
    }

    /// The Backup Management Service's object id: the flag, else Graph.
    async fn principal(&self) -> (SingleRead<Item>, Option<String>) {
        if let Some(oid) = &self.cfg.principal_override {
            // Recorded so that `check --from` on this snapshot sees the same principal.
            return (
                ok_single(item_of(&json!({
                    "id": oid,
                    "appId": BACKUP_MANAGEMENT_APP_ID,
                    "source": "--backup-principal-id"
                }))),
                Some(oid.clone()),
            );
        }
        let path = format!("/v1.0/servicePrincipals(appId='{BACKUP_MANAGEMENT_APP_ID}')");
        let url = join(
            &self.cfg.graph,
            &path,
            &[("$select", "id,appId,displayName")],
        );
        let r = unlocking(read(
            url.clone(),
            Audience::Graph,
            super::http::shown(&url),
            "look up the Backup Management Service in Microsoft Graph",
        ));
        match self.get(r).await {
            Ok(v) => {
                let id = str_at(&value_of(&v), &["id"]).map(str::to_string);
                (ok_single(v), id)
            }
            // Graph's "no such service principal": an answer, not an error. A 404 without a
            // Graph error body (a wrong --graph-endpoint) stays an error.
            Err(f) if f.kind == FailureKind::Http(404) && f.record.code.is_some() => (
                SingleRead {
                    not_found: true,
                    ..Default::default()
                },
                None,
            ),
            Err(f) => (failed_single(f.record), None),
        }
    }

    async fn vault(&self, id: String) -> (String, VaultChildren<Item>) {
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
        let mut items = read(
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
        );
        // A vault's protected items run to several pages (one per 100 protected VMs): started
        // late, their chain would be the last thing the run waits for.
        items.continues = true;
        let items = self.list(items);
        let (storage, policies, items) = futures::future::join3(storage, policies, items).await;
        (
            id,
            VaultChildren {
                storage_config: Some(into_single_read(storage)),
                policies: Some(policies.into_list_read()),
                protected_items: Some(items.into_list_read()),
            },
        )
    }

    /// One inventory list of one subscription, from ARM.
    async fn arm_list(&self, sub: &str, kind: Kind) -> ListOutcome {
        let path = format!("/subscriptions/{sub}/providers/{}", kind.provider());
        let url = self.arm(&path, &[("api-version", kind.api_version())]);
        let r = read(url, Audience::Arm, path, &format!("list {}", kind.what()));
        // The vault list starts the vaults' reads; the DES, Key Vault and HSM lists the key
        // stores'.
        let unlocks = kind == Kind::Vaults || kind.locates_keys();
        let mut r = if unlocks { unlocking(r) } else { r };
        // VMs and disks are the long lists: their first page starts the run's longest chains,
        // so it queues with the pages that continue chains, not behind one-off reads.
        r.continues = matches!(kind, Kind::Vms | Kind::Disks);
        self.list(r).await
    }

    /// One resource type over a batch of subscriptions (or over the management groups), from
    /// Resource Graph, split back into per-subscription lists. A failed query is an error on the
    /// list of every subscription of the batch, with the rows read before it.
    async fn graph_lists(
        &self,
        kind: Kind,
        batch: Vec<(usize, String)>,
    ) -> Vec<(usize, ListOutcome)> {
        let ids: Vec<String> = batch.iter().map(|(_, id)| id.clone()).collect();
        let scope = if self.cfg.management_groups.is_empty() {
            Scope::Subscriptions(&ids)
        } else {
            Scope::ManagementGroups(&self.cfg.management_groups)
        };
        let op = format!("query {} in Resource Graph", kind.what());
        let o = self
            .query(
                scope,
                &arg::resources_query(kind.provider()),
                &op,
                kind == Kind::Vaults || kind.locates_keys(),
            )
            .await;
        let index: HashMap<String, usize> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| (id.to_ascii_lowercase(), k))
            .collect();
        let mut per: Vec<Vec<Item>> = (0..batch.len()).map(|_| Vec::new()).collect();
        for row in o.rows {
            if let Some(k) = arg::row_subscription(&row).and_then(|s| index.get(&s).copied()) {
                per[k].push(row);
            }
        }
        batch
            .into_iter()
            .zip(per)
            .map(|((i, id), items)| {
                let error = o.error.as_ref().map(|f| Failure {
                    kind: f.kind,
                    record: ErrorRecord {
                        scope: format!("/subscriptions/{id}/providers/{}", kind.provider()),
                        operation: op.clone(),
                        status: f.record.status,
                        code: f.record.code.clone(),
                        message: f.record.message.clone(),
                    },
                });
                (
                    i,
                    ListOutcome {
                        items,
                        pages: o.pages,
                        error,
                    },
                )
            })
            .collect()
    }

    /// The role assignments of one RBAC Key Vault, for the Backup Management Service only when
    /// its object id is known.
    async fn role_assignments(
        &self,
        id: String,
        principal: Option<String>,
    ) -> (String, ListOutcome) {
        let filter = principal
            .filter(|p| guid_like(p))
            .map(|p| format!("principalId eq '{p}'"));
        let path = format!("{id}/providers/Microsoft.Authorization/roleAssignments");
        let mut q = vec![("api-version", API_AUTHORIZATION)];
        if let Some(f) = &filter {
            q.push(("$filter", f.as_str()));
        }
        let url = self.arm(&path, &q);
        debug!("Key Vault {id} uses RBAC: reading its role assignments");
        let o = self
            .list(unlocking(read(
                url,
                Audience::Arm,
                path,
                "list role assignments",
            )))
            .await;
        (id, o)
    }

    /// One role definition, as a role assignment names it.
    async fn role_definition(&self, rid: String) -> (String, SingleRead<Item>) {
        if !arm_id(&rid) {
            let rec = ErrorRecord {
                scope: rid.clone(),
                operation: "read role definition".into(),
                status: None,
                code: Some("InvalidRoleDefinitionId".into()),
                message:
                    "the role assignment names a role definition that is not an ARM id; not read"
                        .into(),
            };
            return (rid, failed_single(rec));
        }
        let url = self.arm(&rid, &[("api-version", API_AUTHORIZATION)]);
        let o = self
            .get(read(
                url,
                Audience::Arm,
                rid.clone(),
                "read role definition",
            ))
            .await;
        (rid, into_single_read(o))
    }

    /// Local RBAC of one Managed HSM, from its data plane. `Err` when its `hsmUri` may not be
    /// contacted.
    async fn hsm(&self, t: HsmTarget) -> HsmRead {
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
                role_assignments: Some(ra.into_list_read()),
                role_definitions: Some(rd.into_list_read()),
            },
        ))
    }
}

/// A read that finished, and what it may start.
enum Event {
    Lists(Kind, Vec<(usize, ListOutcome)>),
    Feature(usize, String, SingleRead<Item>),
    Principal(SingleRead<Item>, Option<String>),
    Vault(String, VaultChildren<Item>),
    RoleAssignments(String, ListOutcome),
    RoleDefinition(String, SingleRead<Item>),
    Hsm(usize, HsmRead),
}

/// A Managed HSM's local RBAC, or why its data plane was not contacted.
type HsmRead = Result<(String, HsmRbac<Item>), ErrorRecord>;

/// What has been read of one subscription.
struct SubState {
    id: String,
    display_name: Option<String>,
    lists: [Option<ListOutcome>; 7],
    features: Vec<(String, SingleRead<Item>)>,
    /// Assembled and handed over already.
    done: bool,
}

impl SubState {
    /// Every list and every feature read (successfully or not).
    fn complete(&self, features: usize) -> bool {
        self.lists.iter().all(Option::is_some) && self.features.len() >= features
    }
}

/// The DESs, Key Vaults and HSMs of one subscription, kept from their lists (they are few) to
/// tell which key stores sit behind a confidential DES.
#[derive(Default)]
struct KeyLists {
    des: Vec<Value>,
    key_vaults: Vec<Value>,
    hsms: Vec<Value>,
}

impl KeyLists {
    fn of(&mut self, kind: Kind) -> Option<&mut Vec<Value>> {
        match kind {
            Kind::Des => Some(&mut self.des),
            Kind::KeyVaults => Some(&mut self.key_vaults),
            Kind::Hsms => Some(&mut self.hsms),
            _ => None,
        }
    }
}

/// The key stores behind the DESs read so far (in subscription order): every confidential
/// DES, plus those in `named`.
fn key_stores_in(subs: &[KeyLists], named: &HashSet<String>) -> (Vec<String>, Vec<HsmTarget>) {
    let all = |pick: fn(&KeyLists) -> &Vec<Value>| -> Vec<&Value> {
        subs.iter().flat_map(|s| pick(s).iter()).collect()
    };
    key_stores_of(
        &all(|s| &s.des),
        &all(|s| &s.key_vaults),
        &all(|s| &s.hsms),
        named,
    )
}

/// Adds the DESs (normalised ids) that the VMs or disks of one list name as confidential.
fn add_named_des(kind: Kind, list: &ListOutcome, named: &mut HashSet<String>) {
    let name_of = match kind {
        Kind::Vms => des_named_by_vm as fn(&RawValue) -> Option<String>,
        Kind::Disks => des_named_by_disk,
        _ => return,
    };
    // Both paths end in a key with "EncryptionSet" in its name. JSON can spell a letter of a
    // key otherwise only as `\uXXXX`: an item with neither text names no DES, and is not parsed
    // (at 10k VMs most are not, which keeps this off the path of the reads).
    let key = memchr::memmem::Finder::new("EncryptionSet");
    let escape = memchr::memmem::Finder::new("\\u");
    for item in &list.items {
        let text = item.get().as_bytes();
        if key.find(text).is_none() && escape.find(text).is_none() {
            continue;
        }
        if let Some(id) = name_of(item) {
            named.insert(crate::armid::norm(&id));
        }
    }
}

fn not_read(sub: &str, kind: Kind) -> ListOutcome {
    ListOutcome {
        items: Vec::new(),
        pages: 0,
        error: Some(Failure {
            kind: FailureKind::Refused,
            record: ErrorRecord {
                scope: format!("/subscriptions/{sub}/providers/{}", kind.provider()),
                operation: format!("list {}", kind.what()),
                status: None,
                code: Some("NotRead".into()),
                message: "internal: this list was never read".into(),
            },
        }),
    }
}

/// The subscription's part of the snapshot, or one unreadable scope.
fn assemble(st: SubState, source: Source) -> SubscriptionSnapshot<Item> {
    let id = st.id;
    let [vms, disks, snaps, des, vaults, kvs, hsms] = {
        let mut k = Kind::ALL.iter();
        st.lists.map(|o| {
            let kind = k.next().copied().unwrap_or(Kind::Vms);
            o.unwrap_or_else(|| not_read(&id, kind))
        })
    };
    let features: BTreeMap<String, SingleRead<Item>> = st.features.into_iter().collect();
    let all = [&vms, &disks, &snaps, &des, &vaults, &kvs, &hsms];
    // A subscription ARM does not know is one unreadable scope, not seven failed lists.
    let gone = all
        .iter()
        .filter_map(|o| o.error.as_ref())
        .map(|f| &f.record)
        .chain(features.values().filter_map(|r| r.error.as_ref()))
        .find(|r| {
            r.code.as_deref().is_some_and(|c| {
                c.eq_ignore_ascii_case("SubscriptionNotFound")
                    || c.eq_ignore_ascii_case("InvalidSubscriptionId")
            })
        })
        .cloned();
    // So is one that refuses every read (no Reader role on it at all). Resource Graph shows
    // such a subscription as one without rows: the feature read from ARM tells them apart.
    let refused = match source {
        Source::Arm => all
            .iter()
            .all(|o| {
                o.pages == 0
                    && o.error
                        .as_ref()
                        .is_some_and(|f| matches!(f.kind, FailureKind::Http(401 | 403)))
            })
            .then(|| vms.error.as_ref().map(|f| f.record.clone()))
            .flatten(),
        Source::ResourceGraph => all
            .iter()
            .all(|o| o.items.is_empty() && o.error.is_none())
            .then(|| {
                features
                    .values()
                    .filter_map(|r| r.error.as_ref())
                    .find(|e| matches!(e.status, Some(401 | 403)))
                    .cloned()
            })
            .flatten(),
    };
    if let Some(mut e) = gone.or(refused) {
        e.scope = format!("/subscriptions/{id}");
        e.operation = "read subscription".into();
        return SubscriptionSnapshot {
            subscription_id: id,
            display_name: st.display_name,
            error: Some(e),
            ..Default::default()
        };
    }
    SubscriptionSnapshot {
        subscription_id: id,
        display_name: st.display_name,
        error: None,
        virtual_machines: Some(vms.into_list_read()),
        disks: Some(disks.into_list_read()),
        snapshots: Some(snaps.into_list_read()),
        disk_encryption_sets: Some(des.into_list_read()),
        recovery_services_vaults: Some(vaults.into_list_read()),
        key_vaults: Some(kvs.into_list_read()),
        managed_hsms: Some(hsms.into_list_read()),
        features,
    }
}

/// Queues the ARM lists of these kinds for every subscription.
fn push_arm_lists<'a>(
    plan: &'a Plan<'a>,
    subs: &[(String, Option<String>)],
    kinds: &[Kind],
    tasks: &mut FuturesUnordered<BoxFuture<'a, Event>>,
) {
    for &kind in kinds {
        for (i, (id, _)) in subs.iter().enumerate() {
            let id = id.clone();
            tasks.push(Box::pin(async move {
                Event::Lists(kind, vec![(i, plan.arm_list(&id, kind).await)])
            }));
        }
    }
}

/// A part of the snapshot that is complete: nothing read later changes it.
pub enum Handed {
    /// A subscription (with its index), once all its lists and features are in.
    Subscription(usize, Box<SubscriptionSnapshot<Item>>),
    /// A vault's children (by the vault's id as listed), once its three reads are in.
    Vault(String, Box<VaultChildren<Item>>),
}

/// Takes each part of the snapshot as soon as it is complete, while the other reads go on.
pub type Sink<'s> = &'s mut (dyn FnMut(Handed) + Send);

/// Where the complete parts go: the sink, or the snapshot being built.
struct Out<'s> {
    sink: Option<Sink<'s>>,
    subscriptions: Vec<Option<SubscriptionSnapshot<Item>>>,
    vaults: BTreeMap<String, VaultChildren<Item>>,
}

impl Out<'_> {
    /// Assembles a complete subscription (once) and hands it over.
    fn subscription(&mut self, i: usize, st: &mut SubState, source: Source) {
        if st.done {
            return;
        }
        let taken = SubState {
            id: st.id.clone(),
            display_name: None,
            lists: Default::default(),
            features: Vec::new(),
            done: true,
        };
        let sub = assemble(std::mem::replace(st, taken), source);
        match self.sink.as_mut() {
            Some(f) => f(Handed::Subscription(i, Box::new(sub))),
            None => {
                if let Some(slot) = self.subscriptions.get_mut(i) {
                    *slot = Some(sub);
                }
            }
        }
    }

    fn vault(&mut self, id: String, children: VaultChildren<Item>) {
        match self.sink.as_mut() {
            Some(f) => f(Handed::Vault(id, Box::new(children))),
            None => {
                self.vaults.insert(id, children);
            }
        }
    }
}

/// Runs the whole plan. `Err` only when nothing could be read (exit 4).
pub async fn run(
    api: &dyn AzureApi,
    cfg: &PlanConfig,
    progress: &Progress,
) -> Result<Snapshot<Item>, CollectError> {
    run_with(api, cfg, progress, None).await
}

/// [`run`], handing each subscription and each vault's children to `sink` as soon as it is
/// complete. With a sink, the snapshot returned holds no subscriptions and no vault children:
/// every one of them went to the sink, in the order they completed.
pub async fn run_with(
    api: &dyn AzureApi,
    cfg: &PlanConfig,
    progress: &Progress,
    sink: Option<Sink<'_>>,
) -> Result<Snapshot<Item>, CollectError> {
    let plan = Plan {
        api,
        cfg,
        progress,
        tally: Tally::default(),
        quota: QuotaGate::default(),
    };
    let plan = &plan;
    let mut errors: Vec<ErrorRecord> = Vec::new();
    let subs = plan.subscriptions(&mut errors).await?;
    progress.phase("reading the estate");

    let mut state: Vec<SubState> = subs
        .iter()
        .map(|(id, name)| SubState {
            id: id.clone(),
            display_name: name.clone(),
            lists: Default::default(),
            features: Vec::new(),
            done: false,
        })
        .collect();
    let mut out = Out {
        sink,
        subscriptions: (0..state.len()).map(|_| None).collect(),
        vaults: BTreeMap::new(),
    };
    let mut key_lists: Vec<KeyLists> = state.iter().map(|_| KeyLists::default()).collect();
    let mut named: HashSet<String> = HashSet::new();
    let mut tasks: FuturesUnordered<BoxFuture<'_, Event>> = FuturesUnordered::new();
    // Queued in this order: the longest lists first, as they are the chains the run waits
    // for; then the lists that dependent reads wait for.
    match cfg.source {
        Source::Arm => push_arm_lists(plan, &subs, &[Kind::Vms, Kind::Disks], &mut tasks),
        Source::ResourceGraph => {
            let all: Vec<(usize, String)> = subs
                .iter()
                .enumerate()
                .map(|(i, (id, _))| (i, id.clone()))
                .collect();
            let batches: Vec<Vec<(usize, String)>> = if cfg.management_groups.is_empty() {
                all.chunks(arg::BATCH).map(<[_]>::to_vec).collect()
            } else {
                vec![all]
            };
            for kind in Kind::ALL {
                for b in &batches {
                    let b = b.clone();
                    tasks.push(Box::pin(async move {
                        Event::Lists(kind, plan.graph_lists(kind, b).await)
                    }));
                }
            }
        }
    }
    tasks.push(Box::pin(async move {
        let (r, id) = plan.principal().await;
        Event::Principal(r, id)
    }));
    if cfg.source == Source::Arm {
        push_arm_lists(
            plan,
            &subs,
            &[
                Kind::Vaults,
                Kind::Des,
                Kind::KeyVaults,
                Kind::Hsms,
                Kind::Snapshots,
            ],
            &mut tasks,
        );
    }
    for (i, (id, _)) in subs.iter().enumerate() {
        for f in &cfg.features {
            let (id, f) = (id.clone(), f.clone());
            tasks.push(Box::pin(async move {
                let (name, r) = plan.feature(&id, &f).await;
                Event::Feature(i, name, r)
            }));
        }
    }

    let mut locating = state.len() * 3;
    let mut naming = state.len() * 2;
    let mut principal: Option<(SingleRead<Item>, Option<String>)> = None;
    // 0: waiting for the DES, Key Vault and HSM lists (and the principal); 1: the key stores of
    // confidential DESs are being read; 2: also those of DESs a VM or disk names.
    let mut key_stage = 0u8;
    let (mut vaults_seen, mut kvs_seen, mut hsms_seen, mut roles_seen) = (
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
    );
    let mut kv_ra: BTreeMap<String, ListRead<Item>> = BTreeMap::new();
    let mut role_defs: BTreeMap<String, SingleRead<Item>> = BTreeMap::new();
    let mut hsms: Vec<(usize, HsmRead)> = Vec::new();
    let mut hsm_count = 0usize;

    while let Some(event) = tasks.next().await {
        match event {
            Event::Lists(kind, lists) => {
                for (i, o) in lists {
                    if kind == Kind::Vaults {
                        // Each vault's children as soon as its vault is known.
                        for v in &o.items {
                            let v = value_of(v);
                            let Some(id) = str_at(&v, &["id"]).filter(|i| arm_id(i)) else {
                                continue;
                            };
                            if vaults_seen.insert(crate::armid::norm(id)) {
                                let id = id.to_string();
                                tasks.push(Box::pin(async move {
                                    let (id, ch) = plan.vault(id).await;
                                    Event::Vault(id, ch)
                                }));
                            }
                        }
                    }
                    if kind.locates_keys() {
                        locating = locating.saturating_sub(1);
                        if let Some(keep) = key_lists.get_mut(i).and_then(|k| k.of(kind)) {
                            keep.extend(o.items.iter().map(|v| value_of(v)));
                        }
                    }
                    if kind.names_des() {
                        naming = naming.saturating_sub(1);
                        add_named_des(kind, &o, &mut named);
                    }
                    if let Some(s) = state.get_mut(i) {
                        s.lists[kind.index()] = Some(o);
                        if s.complete(cfg.features.len()) {
                            out.subscription(i, s, cfg.source);
                        }
                    }
                }
            }
            Event::Feature(i, name, r) => {
                if let Some(s) = state.get_mut(i) {
                    s.features.push((name, r));
                    if s.complete(cfg.features.len()) {
                        out.subscription(i, s, cfg.source);
                    }
                }
            }
            Event::Principal(r, id) => principal = Some((r, id)),
            Event::Vault(id, ch) => out.vault(id, ch),
            Event::RoleAssignments(id, o) => {
                // Each role definition as soon as an assignment names it.
                for a in &o.items {
                    let a = value_of(a);
                    if let Some(rid) = str_at(&a, &["properties", "roleDefinitionId"]) {
                        if roles_seen.insert(rid.to_ascii_lowercase()) {
                            let rid = rid.to_string();
                            tasks.push(Box::pin(async move {
                                let (rid, r) = plan.role_definition(rid).await;
                                Event::RoleDefinition(rid, r)
                            }));
                        }
                    }
                }
                kv_ra.insert(id, o.into_list_read());
            }
            Event::RoleDefinition(rid, r) => {
                role_defs.insert(rid, r);
            }
            Event::Hsm(k, r) => hsms.push((k, r)),
        }

        // The key stores' RBAC as soon as it is known which ones sit behind a confidential DES.
        loop {
            let ready = match key_stage {
                0 => locating == 0 && principal.is_some(),
                1 => naming == 0,
                _ => false,
            };
            if !ready {
                break;
            }
            key_stage += 1;
            // First the confidential DESs only; once every VM and disk list is in, also those
            // a VM or disk names.
            let none = HashSet::new();
            let named = if key_stage == 2 { &named } else { &none };
            let (kv_ids, hsm_targets) = key_stores_in(&key_lists, named);
            let pid = principal.as_ref().and_then(|(_, id)| id.clone());
            for id in kv_ids.into_iter().filter(|id| arm_id(id)) {
                if kvs_seen.insert(crate::armid::norm(&id)) {
                    let pid = pid.clone();
                    tasks.push(Box::pin(async move {
                        let (id, o) = plan.role_assignments(id, pid).await;
                        Event::RoleAssignments(id, o)
                    }));
                }
            }
            for t in hsm_targets {
                if hsms_seen.insert(crate::armid::norm(&t.id)) {
                    let k = hsm_count;
                    hsm_count += 1;
                    tasks.push(Box::pin(async move { Event::Hsm(k, plan.hsm(t).await) }));
                }
            }
        }
    }
    if let Some(e) = plan.nothing_readable() {
        return Err(e);
    }

    for (i, s) in state.iter_mut().enumerate() {
        out.subscription(i, s, cfg.source);
    }
    let mut snap = Snapshot::new(out.subscriptions.into_iter().flatten().collect());
    snap.source = Some(cfg.source.name().into());
    snap.endpoints = Some(Endpoints {
        arm: Some(cfg.arm_shown.clone()),
        graph: Some(cfg.graph_shown.clone()),
    });
    snap.backup_principal = principal.map(|(r, _)| r);
    snap.vaults = out.vaults;
    snap.key_vault_role_assignments = kv_ra;
    snap.role_definitions = role_defs;
    hsms.sort_by_key(|(k, _)| *k);
    for (_, h) in hsms {
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
                None => Ok(item_of(
                    &json!({"id": "x", "properties": {"state": "Registered"}}),
                )),
                Some(st) => Err(self.failure(r, st)),
            }
        }
        async fn post(&self, r: &Read, _body: bytes::Bytes) -> crate::collect::api::PostOutcome {
            self.reads.lock().unwrap().push(r.url.path().to_string());
            match self.status {
                None => Ok(crate::collect::api::Posted {
                    body: bytes::Bytes::from_static(br#"{"data": []}"#),
                    headers: Vec::new(),
                }),
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
            source: Source::Arm,
            management_groups: Vec::new(),
            deadline: Instant::now() + std::time::Duration::from_secs(60),
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

    #[test]
    fn the_des_a_vm_or_disk_names_is_found_even_spelled_with_escapes() {
        let list = |texts: &[&str]| ListOutcome {
            items: texts
                .iter()
                .map(|t| RawValue::from_string(t.to_string()).unwrap())
                .collect(),
            pages: 1,
            error: None,
        };
        let vms = list(&[
            r#"{"properties": {"storageProfile": {"osDisk": {"managedDisk": {"securityProfile": {"diskEncryptionSet": {"id": "/s/A"}}}}}}}"#,
            r#"{"properties": {"storageProfile": {"osDisk": {"managedDisk": {"securityProfile": {"diskEncryption\u0053et": {"id": "/s/B"}}}}}}}"#,
            r#"{"properties": {"storageProfile": {"osDisk": {"managedDisk": {"id": "/s/disk"}}}}}"#,
            r#"{"name": "EncryptionSet", "properties": null}"#,
            r#"{"etag": "\"4\"", "properties": {"storageProfile": {"osDisk": {"managedDisk": {"diskEncryptionSet": {"id": "/s/sse"}}}}}}"#,
        ]);
        let disks = list(&[
            r#"{"properties": {"securityProfile": {"secureVMDiskEncryptionSetId": " /s/C "}}}"#,
        ]);
        let mut named = HashSet::new();
        add_named_des(Kind::Vms, &vms, &mut named);
        add_named_des(Kind::Disks, &disks, &mut named);
        add_named_des(Kind::Des, &disks, &mut named);
        let mut got: Vec<String> = named.into_iter().collect();
        got.sort();
        assert_eq!(got, vec!["/s/a", "/s/b", "/s/c"]);
    }

    /// An API whose VM list answers only once a vault's own reads have started: a plan that
    /// waited for every list before reading vaults would never finish. With `handed`, the
    /// other way round: the vault's storage config answers only once the subscription has been
    /// handed over (and the VM list does not wait).
    struct VaultsFirst {
        vault_read: tokio::sync::Notify,
        handed: Option<tokio::sync::Notify>,
    }

    async fn waited_for(n: &tokio::sync::Notify, what: &str) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), n.notified()).await;
        assert!(waited.is_ok(), "{what}");
    }

    #[async_trait::async_trait]
    impl AzureApi for VaultsFirst {
        async fn get(&self, r: &Read) -> GetOutcome {
            if r.url.path().ends_with("/vaultstorageconfig") {
                self.vault_read.notify_one();
                if let Some(h) = &self.handed {
                    waited_for(h, "the subscription waited for its vault's children").await;
                }
            }
            Ok(item_of(&json!({"properties": {"state": "Registered"}})))
        }
        async fn list(&self, r: &Read) -> ListOutcome {
            let path = r.url.path().to_ascii_lowercase();
            let items = if path.ends_with("/microsoft.recoveryservices/vaults") {
                vec![item_of(&json!({
                    "id": "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v1",
                    "location": "uaenorth"
                }))]
            } else {
                if path.ends_with("/microsoft.compute/virtualmachines") && self.handed.is_none() {
                    waited_for(&self.vault_read, "the vault's reads waited for the VM list").await;
                }
                Vec::new()
            };
            ListOutcome {
                items,
                pages: 1,
                error: None,
            }
        }
        async fn post(&self, r: &Read, _body: bytes::Bytes) -> crate::collect::api::PostOutcome {
            Err(Failure {
                kind: FailureKind::Http(400),
                record: ErrorRecord {
                    scope: r.scope.clone(),
                    operation: r.operation.clone(),
                    status: Some(400),
                    code: None,
                    message: "no Resource Graph here".into(),
                },
            })
        }
    }

    #[tokio::test]
    async fn a_vaults_reads_start_without_waiting_for_the_other_lists() {
        let api = VaultsFirst {
            vault_read: tokio::sync::Notify::new(),
            handed: None,
        };
        let snap = run(&api, &cfg(&["s1"]), &Progress::hidden()).await.unwrap();
        let s = &snap.subscriptions[0];
        assert!(s.error.is_none());
        assert!(s.virtual_machines.as_ref().unwrap().error.is_none());
        assert_eq!(snap.vaults.len(), 1);
    }

    #[tokio::test]
    async fn a_subscription_is_handed_over_while_its_vaults_children_are_read() {
        let api = VaultsFirst {
            vault_read: tokio::sync::Notify::new(),
            handed: Some(tokio::sync::Notify::new()),
        };
        let mut got = Vec::new();
        let mut sink = |h: Handed| match h {
            Handed::Subscription(i, sub) => {
                got.push(format!("{i} {}", sub.subscription_id));
                if let Some(h) = &api.handed {
                    h.notify_one();
                }
            }
            Handed::Vault(id, _) => got.push(id),
        };
        let snap = run_with(&api, &cfg(&["s1"]), &Progress::hidden(), Some(&mut sink))
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                "0 s1",
                "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v1"
            ]
        );
        assert!(
            snap.subscriptions.is_empty() && snap.vaults.is_empty(),
            "handed over, not kept"
        );
    }

    /// The plan's snapshot as JSON text, run with a sink (the parts handed over put back in
    /// their places) and without.
    async fn handed_and_kept(with: &dyn AzureApi, without: &dyn AzureApi, c: &PlanConfig) {
        let kept = run(without, c, &Progress::hidden()).await.unwrap();
        let mut subs: Vec<(usize, Box<SubscriptionSnapshot<Item>>)> = Vec::new();
        let mut vaults = BTreeMap::new();
        let mut sink = |h: Handed| match h {
            Handed::Subscription(i, sub) => subs.push((i, sub)),
            Handed::Vault(id, children) => assert!(vaults.insert(id, *children).is_none()),
        };
        let mut rest = run_with(with, c, &Progress::hidden(), Some(&mut sink))
            .await
            .unwrap();
        assert!(rest.subscriptions.is_empty() && rest.vaults.is_empty());
        subs.sort_by_key(|(i, _)| *i);
        rest.subscriptions = subs.into_iter().map(|(_, s)| *s).collect();
        rest.vaults = vaults;
        assert_eq!(
            serde_json::to_string(&rest).unwrap(),
            serde_json::to_string(&kept).unwrap()
        );
    }

    #[tokio::test]
    async fn with_a_sink_every_part_is_handed_over_once_as_it_would_be_kept() {
        let c = cfg(&["s1", "s2", "s3"]);
        handed_and_kept(&FakeApi::new(None), &FakeApi::new(None), &c).await;
        let api = || VaultsFirst {
            vault_read: tokio::sync::Notify::new(),
            handed: None,
        };
        handed_and_kept(&api(), &api(), &cfg(&["s1"])).await;
    }

    #[tokio::test]
    async fn resource_graph_rows_go_back_to_their_subscriptions() {
        struct Rows;
        #[async_trait::async_trait]
        impl AzureApi for Rows {
            async fn get(&self, _r: &Read) -> GetOutcome {
                Ok(item_of(&json!({"properties": {"state": "Registered"}})))
            }
            async fn list(&self, _r: &Read) -> ListOutcome {
                panic!("an inventory list was read from ARM");
            }
            async fn post(
                &self,
                _r: &Read,
                body: bytes::Bytes,
            ) -> crate::collect::api::PostOutcome {
                let b: Value = serde_json::from_slice(&body).unwrap();
                let q = b["query"].as_str().unwrap();
                let data = if q.contains("'microsoft.compute/virtualmachines'") {
                    json!([
                        {"id": "/subscriptions/S1/x/vm1", "subscriptionId": "S1"},
                        {"id": "/subscriptions/s2/x/vm2", "subscriptionId": "s2"},
                        {"id": "/subscriptions/s9/x/vm9", "subscriptionId": "s9"},
                        {"id": "/subscriptions/s1/x/vm3", "subscriptionId": "s1"}
                    ])
                } else {
                    json!([])
                };
                Ok(crate::collect::api::Posted {
                    body: bytes::Bytes::from(json!({"data": data}).to_string()),
                    headers: Vec::new(),
                })
            }
        }
        let mut c = cfg(&["s1", "s2"]);
        c.source = Source::ResourceGraph;
        let snap = run(&Rows, &c, &Progress::hidden()).await.unwrap();
        assert_eq!(snap.source.as_deref(), Some("resource-graph"));
        let names = |i: usize| -> Vec<String> {
            snap.subscriptions[i]
                .virtual_machines
                .as_ref()
                .unwrap()
                .items()
                .iter()
                .map(|v| value_of(v)["id"].as_str().unwrap().to_string())
                .collect()
        };
        // Case-insensitive subscription ids; a row of a subscription not in scope is dropped.
        assert_eq!(
            names(0),
            vec!["/subscriptions/S1/x/vm1", "/subscriptions/s1/x/vm3"]
        );
        assert_eq!(names(1), vec!["/subscriptions/s2/x/vm2"]);
    }
}
