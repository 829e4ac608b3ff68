//! The estate: the typed, normalised model the rules read, built once from a snapshot.
//!
//! Everything is indexed by normalised ARM id (lower-case), so each rule's lookups are O(1) per
//! VM. "Could not be read" is explicit everywhere ([`Avail::Unknown`], [`Listing::missing`]):
//! a failed read is never an empty list.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::armid::{self, norm, norm_location};
use crate::snapshot::{
    ErrorRecord, ListRead, SingleRead, Snapshot, SubscriptionSnapshot, VaultChildren,
};

/// A value that was read, or the reason it could not be.
#[derive(Debug, Clone, PartialEq)]
pub enum Avail<T> {
    Known(T),
    Unknown(String),
}

impl<T> Avail<T> {
    pub fn as_ref(&self) -> Avail<&T> {
        match self {
            Avail::Known(t) => Avail::Known(t),
            Avail::Unknown(r) => Avail::Unknown(r.clone()),
        }
    }
}

/// The items of a list read. `missing` is `Some(reason)` when the list is incomplete: the items
/// present exist, but absence proves nothing.
#[derive(Debug, Clone)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub missing: Option<String>,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            items: Vec::new(),
            missing: None,
        }
    }
}

impl<T> Listing<T> {
    pub fn is_complete(&self) -> bool {
        self.missing.is_none()
    }
}

impl SubscriptionData {
    /// The Recovery Services vaults read in this subscription at a (normalised) location.
    pub fn vaults_in(&self, location: &str) -> Vec<&RsVault> {
        self.vaults
            .items
            .iter()
            .filter(|v| v.location == location)
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub id: String,
    pub key: String,
    pub name: String,
    pub subscription_id: String,
    pub resource_group: String,
    /// Normalised location (lower-case, no spaces).
    pub location: String,
    pub size: Option<String>,
    pub security_type: Option<String>,
    pub os_disk_id: Option<String>,
    pub os_encryption_type: Option<String>,
    /// The confidential DES of the OS disk (`managedDisk.securityProfile.diskEncryptionSet.id`).
    pub cvm_des_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub id: String,
    pub managed_by: Option<String>,
    /// Every DES that encrypts this disk or snapshot (SSE and confidential).
    pub des_ids: Vec<String>,
    pub security_type: Option<String>,
    pub secure_des_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Des {
    pub id: String,
    pub name: String,
    pub encryption_type: Option<String>,
    pub key_url: Option<String>,
    pub source_vault_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RsVault {
    pub id: String,
    pub name: String,
    pub resource_group: String,
    pub subscription_id: String,
    pub location: String,
    /// `properties.redundancySettings.crossRegionRestore` when present.
    pub crr_property: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct AccessPolicy {
    pub object_id: String,
    pub application_id: Option<String>,
    pub key_permissions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct KeyVault {
    pub id: String,
    pub name: String,
    pub rbac: bool,
    /// `None` when the payload carries no `accessPolicies` at all (ARM always sends the list,
    /// possibly empty; an inventory source might not): then who may use the key is unknown.
    pub access_policies: Option<Vec<AccessPolicy>>,
}

#[derive(Debug, Clone)]
pub struct Hsm {
    pub id: String,
    pub name: String,
    pub hsm_uri: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub id: String,
    pub name: String,
    pub policy_type: Option<String>,
    pub snapshot_consistency: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ProtectedItem {
    pub id: String,
    pub vm_id: String,
    pub policy_id: Option<String>,
    pub policy_name: Option<String>,
    pub protection_state: Option<String>,
}

#[derive(Debug, Clone)]
pub struct VaultDetail {
    /// Cross-region restore from `backupstorageconfig` (`crossRegionRestoreFlag`).
    pub storage_crr: Avail<Option<bool>>,
    pub policies: Listing<Policy>,
    pub items: Listing<ProtectedItem>,
}

#[derive(Debug, Clone)]
pub struct RoleAssignment {
    pub id: String,
    pub principal_id: String,
    pub scope: String,
    pub role_definition_id: String,
}

#[derive(Debug, Clone)]
pub struct Permission {
    pub data_actions: Vec<String>,
    pub not_data_actions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RoleDefinition {
    pub guid: String,
    pub name: String,
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone)]
pub struct HsmRbac {
    pub assignments: Listing<RoleAssignment>,
    pub definitions: Listing<RoleDefinition>,
}

/// The Backup Management Service principal in the tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Known(String),
    /// Graph answered 404: the tenant has no such service principal.
    Absent,
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct SubscriptionData {
    pub id: String,
    pub key: String,
    pub display_name: Option<String>,
    /// Why the VM list is incomplete, if it is.
    pub vm_list_missing: Option<String>,
    pub disks: Listing<Disk>,
    pub snapshots: Listing<Disk>,
    pub des: Listing<Des>,
    pub vaults: Listing<RsVault>,
    pub key_vaults: Listing<KeyVault>,
    pub hsms: Listing<Hsm>,
    /// Feature state by lower-case "namespace/name".
    pub features: HashMap<String, Avail<String>>,
}

#[derive(Debug, Clone)]
pub struct Estate {
    pub subscriptions: Vec<SubscriptionData>,
    pub vms: Vec<Vm>,
    pub errors: Vec<ErrorRecord>,
    pub principal: Principal,
    sub_index: HashMap<String, usize>,
    /// Vault key -> index in `vault_detail_list` (the last of ids that differ only in case).
    vault_details: HashMap<String, usize>,
    vault_detail_list: Vec<VaultDetail>,
    kv_role_assignments: HashMap<String, Listing<RoleAssignment>>,
    role_definitions: HashMap<String, Avail<RoleDefinition>>,
    hsm_rbac: HashMap<String, HsmRbac>,
    /// DES key -> disks and snapshots encrypted with it.
    /// DES key -> how many distinct disks and snapshots it encrypts.
    des_usage: HashMap<String, usize>,
    /// VM key -> (vault key, item).
    /// VM key -> (vault key, index in `vault_detail_list`, index in that vault's items).
    protection: HashMap<String, (String, usize, usize)>,
    /// Normalised id (or lower-case name) -> (subscription index, item index), per kind.
    disk_index: Index,
    des_index: Index,
    vault_index: Index,
    kv_index: Index,
    kv_names: Index,
    hsm_names: Index,
    /// Why some disk or snapshot list is incomplete, if one is.
    disk_lists_missing: Option<String>,
}

type Index = HashMap<String, (usize, usize)>;

/// Indexes one kind of resource of every subscription by a key.
fn index_of<T>(
    subs: &[SubscriptionData],
    pick: impl Fn(&SubscriptionData) -> &Listing<T>,
    key: impl Fn(&T) -> String,
) -> Index {
    let mut idx = HashMap::new();
    for (si, s) in subs.iter().enumerate() {
        for (i, t) in pick(s).items.iter().enumerate() {
            idx.entry(key(t)).or_insert((si, i));
        }
    }
    idx
}

/// Result of looking up one resource by id.
#[derive(Debug, Clone)]
pub enum Lookup<'a, T> {
    Found(&'a T),
    /// The list it would be in was read completely and it is not there.
    NotFound,
    Unknown(String),
}

/// Whether a VM is protected by Azure Backup.
#[derive(Debug, Clone)]
pub enum Protection<'a> {
    Protected {
        vault_key: &'a str,
        vault: Option<&'a RsVault>,
        item: &'a ProtectedItem,
    },
    NotProtected,
    Unknown(String),
}

// ---- Raw ARM payloads -> typed records -----------------------------------------------------
//
// Each raw item is parsed on its own into a lenient serde struct (every field optional,
// unknown fields skipped), so one odd resource never loses its page and no JSON value tree is
// built for the whole snapshot.

/// How a raw item is held in a snapshot: a JSON value or borrowed JSON text.
pub trait RawItem: Sync {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, String>;
}

impl RawItem for Value {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        T::deserialize(self).map_err(|e| e.to_string())
    }
}

impl RawItem for &RawValue {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(self.get()).map_err(|e| e.to_string())
    }
}

/// An item's JSON text, as bytes (the streaming loader's form).
#[derive(Debug, Clone, Copy)]
pub struct ItemText<'a>(pub &'a [u8]);

impl RawItem for ItemText<'_> {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(self.0).map_err(|e| e.to_string())
    }
}

impl RawItem for Box<RawValue> {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(self.get()).map_err(|e| e.to_string())
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IdOnly {
    id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ref {
    id: Option<String>,
}

/// `true`/`false`, also as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
    Other(serde::de::IgnoredAny),
}

impl Flag {
    fn get(&self) -> Option<bool> {
        match self {
            Flag::Bool(b) => Some(*b),
            Flag::Text(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Flag::Text(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawVm {
    id: Option<String>,
    name: Option<String>,
    location: Option<String>,
    properties: Option<RawVmProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawVmProps {
    hardware_profile: Option<RawHardware>,
    security_profile: Option<RawSecurity>,
    storage_profile: Option<RawStorage>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawHardware {
    vm_size: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawSecurity {
    security_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawStorage {
    os_disk: Option<RawOsDisk>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawOsDisk {
    managed_disk: Option<RawManagedDisk>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawManagedDisk {
    id: Option<String>,
    security_profile: Option<RawVmDiskSecurity>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawVmDiskSecurity {
    security_encryption_type: Option<String>,
    disk_encryption_set: Option<Ref>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawDisk {
    id: Option<String>,
    managed_by: Option<String>,
    properties: Option<RawDiskProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawDiskProps {
    encryption: Option<RawDiskEncryption>,
    security_profile: Option<RawDiskSecurity>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawDiskEncryption {
    disk_encryption_set_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawDiskSecurity {
    security_type: Option<String>,
    #[serde(rename = "secureVMDiskEncryptionSetId")]
    secure_vm_disk_encryption_set_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawDes {
    id: Option<String>,
    name: Option<String>,
    properties: Option<RawDesProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawDesProps {
    encryption_type: Option<String>,
    active_key: Option<RawActiveKey>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawActiveKey {
    key_url: Option<String>,
    source_vault: Option<Ref>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawRsVault {
    id: Option<String>,
    name: Option<String>,
    location: Option<String>,
    properties: Option<RawRsVaultProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawRsVaultProps {
    redundancy_settings: Option<RawRedundancy>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawRedundancy {
    cross_region_restore: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawKeyVault {
    id: Option<String>,
    name: Option<String>,
    properties: Option<RawKeyVaultProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawKeyVaultProps {
    enable_rbac_authorization: Option<Flag>,
    access_policies: Option<Vec<RawAccessPolicy>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawAccessPolicy {
    object_id: Option<String>,
    application_id: Option<String>,
    permissions: Option<RawPermissions>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPermissions {
    keys: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawHsm {
    id: Option<String>,
    name: Option<String>,
    properties: Option<RawHsmProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawHsmProps {
    hsm_uri: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawPolicy {
    id: Option<String>,
    name: Option<String>,
    properties: Option<RawPolicyProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawPolicyProps {
    policy_type: Option<String>,
    snapshot_consistency_type: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawItemRecord {
    id: Option<String>,
    properties: Option<RawItemProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawItemProps {
    virtual_machine_id: Option<String>,
    source_resource_id: Option<String>,
    policy_id: Option<String>,
    policy_name: Option<String>,
    protection_state: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawAssignment {
    id: Option<String>,
    properties: Option<RawAssignmentProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawAssignmentProps {
    principal_id: Option<String>,
    scope: Option<String>,
    role_definition_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawRoleDefinition {
    id: Option<String>,
    name: Option<String>,
    properties: Option<RawRoleDefinitionProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawRoleDefinitionProps {
    role_name: Option<String>,
    permissions: Option<Vec<RawRolePermission>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawRolePermission {
    data_actions: Option<Vec<String>>,
    not_data_actions: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawFeature {
    properties: Option<RawFeatureProps>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawFeatureProps {
    state: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawStorageConfig {
    properties: Option<RawStorageConfigProps>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawStorageConfigProps {
    cross_region_restore_flag: Option<Flag>,
}

/// Empty strings count as absent.
fn text(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

fn malformed(scope: &str, what: &str, msg: String) -> ErrorRecord {
    ErrorRecord {
        scope: scope.to_string(),
        operation: format!("read {what}"),
        status: None,
        code: Some("MalformedResource".into()),
        message: msg,
    }
}

/// Builds a listing from a list read, parsing each raw item with `parse`. Unusable items are
/// recorded as errors and make the listing incomplete.
fn listing<I: RawItem, R: DeserializeOwned, T>(
    read: Option<&ListRead<I>>,
    scope: &str,
    what: &str,
    errors: &mut Vec<ErrorRecord>,
    convert: impl Fn(R) -> Result<T, String>,
) -> Listing<T> {
    let Some(read) = read else {
        let e = ErrorRecord {
            scope: scope.to_string(),
            operation: format!("list {what}"),
            status: None,
            code: Some("NotCollected".into()),
            message: format!("the snapshot holds no {what} list for this scope"),
        };
        let reason = e.short();
        errors.push(e);
        return Listing {
            items: Vec::new(),
            missing: Some(reason),
        };
    };
    let mut out = Listing {
        items: Vec::with_capacity(read.items().len()),
        missing: None,
    };
    if let Some(e) = &read.error {
        out.missing = Some(e.short());
        errors.push(e.clone());
    }
    for (i, raw) in read.items().iter().enumerate() {
        match raw.parse::<R>().and_then(&convert) {
            Ok(t) => out.items.push(t),
            Err(msg) => {
                let id = raw
                    .parse::<IdOnly>()
                    .ok()
                    .and_then(|x| text(x.id))
                    .unwrap_or_else(|| format!("{scope} item {i}"));
                let e = malformed(&id, what, msg);
                if out.missing.is_none() {
                    out.missing = Some(e.short());
                }
                errors.push(e);
            }
        }
    }
    out
}

fn need_id(id: Option<String>) -> Result<String, String> {
    text(id).ok_or_else(|| "the resource has no `id`".to_string())
}

fn name_or_last(name: Option<String>, id: &str) -> String {
    text(name).unwrap_or_else(|| armid::name_of(id).to_string())
}

fn vm_from(raw: RawVm) -> Result<Vm, String> {
    let id = need_id(raw.id)?;
    let subscription_id = armid::subscription_of(&id)
        .ok_or_else(|| format!("id {id} has no subscription segment"))?
        .to_string();
    let location = text(raw.location).ok_or("the VM has no `location`")?;
    let props = raw.properties.unwrap_or_default();
    let md = props
        .storage_profile
        .and_then(|s| s.os_disk)
        .and_then(|d| d.managed_disk)
        .unwrap_or_default();
    let sec = md.security_profile.unwrap_or_default();
    Ok(Vm {
        key: norm(&id),
        name: name_or_last(raw.name, &id),
        resource_group: armid::resource_group_of(&id)
            .unwrap_or_default()
            .to_string(),
        subscription_id,
        location: norm_location(&location),
        size: props.hardware_profile.and_then(|h| text(h.vm_size)),
        security_type: props.security_profile.and_then(|s| text(s.security_type)),
        os_disk_id: text(md.id),
        os_encryption_type: text(sec.security_encryption_type),
        cvm_des_id: sec.disk_encryption_set.and_then(|d| text(d.id)),
        id,
    })
}

fn disk_from(raw: RawDisk) -> Result<Disk, String> {
    let id = need_id(raw.id)?;
    let props = raw.properties.unwrap_or_default();
    let sec = props.security_profile.unwrap_or_default();
    let secure = text(sec.secure_vm_disk_encryption_set_id);
    let mut des_ids: Vec<String> = Vec::new();
    for d in [
        props
            .encryption
            .and_then(|e| text(e.disk_encryption_set_id)),
        secure.clone(),
    ]
    .into_iter()
    .flatten()
    {
        if !des_ids.iter().any(|x| armid::same_id(x, &d)) {
            des_ids.push(d);
        }
    }
    Ok(Disk {
        managed_by: text(raw.managed_by),
        security_type: text(sec.security_type),
        secure_des_id: secure,
        des_ids,
        id,
    })
}

fn des_from(raw: RawDes) -> Result<Des, String> {
    let id = need_id(raw.id)?;
    let props = raw.properties.unwrap_or_default();
    let key = props.active_key.unwrap_or_default();
    Ok(Des {
        name: name_or_last(raw.name, &id),
        encryption_type: text(props.encryption_type),
        key_url: text(key.key_url),
        source_vault_id: key.source_vault.and_then(|v| text(v.id)),
        id,
    })
}

fn rs_vault_from(raw: RawRsVault) -> Result<RsVault, String> {
    let id = need_id(raw.id)?;
    let location = text(raw.location).ok_or("the vault has no `location`")?;
    let crr = raw
        .properties
        .and_then(|p| p.redundancy_settings)
        .and_then(|r| text(r.cross_region_restore))
        .map(|s| s.eq_ignore_ascii_case("enabled"));
    Ok(RsVault {
        name: name_or_last(raw.name, &id),
        resource_group: armid::resource_group_of(&id)
            .unwrap_or_default()
            .to_string(),
        subscription_id: armid::subscription_of(&id).unwrap_or_default().to_string(),
        location: norm_location(&location),
        crr_property: crr,
        id,
    })
}

fn key_vault_from(raw: RawKeyVault) -> Result<KeyVault, String> {
    let id = need_id(raw.id)?;
    let props = raw.properties.unwrap_or_default();
    let access_policies = props.access_policies.map(|list| {
        list.into_iter()
            .filter_map(|p| {
                Some(AccessPolicy {
                    object_id: text(p.object_id)?,
                    application_id: text(p.application_id),
                    key_permissions: p.permissions.and_then(|x| x.keys).unwrap_or_default(),
                })
            })
            .collect()
    });
    Ok(KeyVault {
        name: name_or_last(raw.name, &id),
        rbac: props
            .enable_rbac_authorization
            .and_then(|f| f.get())
            .unwrap_or(false),
        access_policies,
        id,
    })
}

fn hsm_from(raw: RawHsm) -> Result<Hsm, String> {
    let id = need_id(raw.id)?;
    Ok(Hsm {
        name: name_or_last(raw.name, &id),
        hsm_uri: raw.properties.and_then(|p| text(p.hsm_uri)),
        id,
    })
}

fn policy_from(raw: RawPolicy) -> Result<Policy, String> {
    let id = need_id(raw.id)?;
    let props = raw.properties.unwrap_or_default();
    Ok(Policy {
        name: name_or_last(raw.name, &id),
        policy_type: text(props.policy_type),
        snapshot_consistency: text(props.snapshot_consistency_type),
        id,
    })
}

fn item_from(raw: RawItemRecord) -> Result<ProtectedItem, String> {
    let id = need_id(raw.id)?;
    let props = raw.properties.unwrap_or_default();
    let vm_id = text(props.virtual_machine_id)
        .or_else(|| text(props.source_resource_id))
        .ok_or("the protected item has neither `virtualMachineId` nor `sourceResourceId`")?;
    Ok(ProtectedItem {
        vm_id,
        policy_id: text(props.policy_id),
        policy_name: text(props.policy_name),
        protection_state: text(props.protection_state),
        id,
    })
}

fn assignment_from(raw: RawAssignment) -> Result<RoleAssignment, String> {
    let props = raw.properties.unwrap_or_default();
    Ok(RoleAssignment {
        principal_id: text(props.principal_id).ok_or("the role assignment has no `principalId`")?,
        scope: text(props.scope).ok_or("the role assignment has no `scope`")?,
        role_definition_id: text(props.role_definition_id)
            .ok_or("the role assignment has no `roleDefinitionId`")?,
        id: raw.id.unwrap_or_default(),
    })
}

fn role_definition_from(raw: RawRoleDefinition) -> Result<RoleDefinition, String> {
    let id = text(raw.id)
        .or_else(|| text(raw.name))
        .ok_or("the role definition has neither `id` nor `name`")?;
    let props = raw.properties.unwrap_or_default();
    let perms = props
        .permissions
        .ok_or("the role definition has no `permissions`")?;
    Ok(RoleDefinition {
        guid: armid::role_guid(&id),
        name: text(props.role_name).unwrap_or_else(|| armid::role_guid(&id)),
        permissions: perms
            .into_iter()
            .map(|p| Permission {
                data_actions: p.data_actions.unwrap_or_default(),
                not_data_actions: p.not_data_actions.unwrap_or_default(),
            })
            .collect(),
    })
}

fn single<I: RawItem, R: DeserializeOwned, T>(
    read: Option<&SingleRead<I>>,
    errors: &mut Vec<ErrorRecord>,
    convert: impl Fn(R) -> Result<T, String>,
    scope: &str,
    what: &str,
) -> Avail<T> {
    match read {
        None => Avail::Unknown(format!("{what} of {scope} is not in the snapshot")),
        Some(r) => {
            if let Some(e) = &r.error {
                errors.push(e.clone());
                return Avail::Unknown(e.short());
            }
            match &r.value {
                Some(v) => match v.parse::<R>().and_then(convert) {
                    Ok(t) => Avail::Known(t),
                    Err(msg) => {
                        let e = malformed(scope, what, msg);
                        let reason = e.short();
                        errors.push(e);
                        Avail::Unknown(reason)
                    }
                },
                None => Avail::Unknown(format!("{what} of {scope}: not found")),
            }
        }
    }
}

/// Disks and snapshots per DES over the whole estate, each disk (by its first occurrence in
/// `disk_index`) and snapshot counted once.
fn count_des_usage(subs: &[SubscriptionData], disk_index: &Index) -> HashMap<String, usize> {
    let mut des_usage: HashMap<String, usize> = HashMap::new();
    let mut seen_snapshots = HashSet::new();
    for (si, s) in subs.iter().enumerate() {
        let disks = (s.disks.items.iter().enumerate())
            .filter(|(di, d)| disk_index.get(&norm(&d.id)) == Some(&(si, *di)));
        let snapshots = (s.snapshots.items.iter()).filter(|d| seen_snapshots.insert(norm(&d.id)));
        for d in disks.map(|(_, d)| d).chain(snapshots) {
            for des in &d.des_ids {
                *des_usage.entry(norm(des)).or_default() += 1;
            }
        }
    }
    des_usage
}

/// One subscription's lists turned into typed records, on their own: what the streaming loader
/// builds on every core while it reads the next subscription.
struct SubscriptionPart {
    data: SubscriptionData,
    vms: Vec<Vm>,
    errors: Vec<ErrorRecord>,
    /// Normalised ids of `data.disks`, in order.
    disk_keys: Vec<String>,
    /// Normalised ids of `data.snapshots`, each once.
    snapshot_keys: HashSet<String>,
    /// Disks and snapshots per DES in this subscription, each disk and snapshot counted once.
    des_usage: HashMap<String, usize>,
}

impl SubscriptionPart {
    fn build<I: RawItem>(s: &SubscriptionSnapshot<I>) -> SubscriptionPart {
        let mut errors = Vec::new();
        let (data, vms) = Estate::build_subscription(s, &mut errors);
        let disk_keys: Vec<String> = data.disks.items.iter().map(|d| norm(&d.id)).collect();
        let mut des_usage: HashMap<String, usize> = HashMap::new();
        let mut seen_disks = HashSet::with_capacity(disk_keys.len());
        let mut snapshot_keys = HashSet::new();
        let disks = (data.disks.items.iter().zip(&disk_keys))
            .filter(|(_, k)| seen_disks.insert(k.as_str()))
            .map(|(d, _)| d);
        let snapshots = (data.snapshots.items.iter()).filter(|d| snapshot_keys.insert(norm(&d.id)));
        for d in disks.chain(snapshots) {
            for des in &d.des_ids {
                *des_usage.entry(norm(des)).or_default() += 1;
            }
        }
        drop(seen_disks);
        SubscriptionPart {
            data,
            vms,
            errors,
            disk_keys,
            snapshot_keys,
            des_usage,
        }
    }
}

/// Subscriptions and vaults built on their own, on any thread and in any order (the streaming
/// loader and the live collector), then put in the snapshot's order for [`Estate::from_parts`].
#[derive(Default)]
pub struct Parts {
    subscriptions: Vec<(usize, SubscriptionPart)>,
    vaults: Vec<(String, VaultPart)>,
}

impl Parts {
    /// `subscriptions[i]` of the snapshot.
    pub fn subscription<I: RawItem>(&mut self, i: usize, s: &SubscriptionSnapshot<I>) {
        self.subscriptions.push((i, SubscriptionPart::build(s)));
    }

    /// `vaults[id]` of the snapshot.
    pub fn vault<I: RawItem>(&mut self, id: String, children: &VaultChildren<I>) {
        let part = VaultPart::build(&id, children);
        self.vaults.push((id, part));
    }

    /// The estate of these parts and the rest of the snapshot (whose own subscriptions and vaults
    /// are ignored): subscriptions in index order, vaults by id as in the snapshot's map.
    pub fn into_estate<I: RawItem>(
        all: Vec<Parts>,
        rest: &Snapshot<I>,
        principal_override: Option<&str>,
    ) -> Estate {
        let (mut subscriptions, mut vaults) = (Vec::new(), Vec::new());
        for p in all {
            subscriptions.extend(p.subscriptions);
            vaults.extend(p.vaults);
        }
        subscriptions.sort_unstable_by_key(|(i, _)| *i);
        vaults.sort_by(|a, b| a.0.cmp(&b.0));
        let subscriptions = subscriptions.into_iter().map(|(_, p)| p).collect();
        let vaults = vaults.into_iter().map(|(_, p)| p).collect();
        Estate::from_parts(subscriptions, Some(vaults), rest, principal_override)
    }
}

/// One vault's children as typed records, with the VMs it protects (`(VM key, item index)`).
struct VaultPart {
    key: String,
    detail: VaultDetail,
    protects: Vec<(String, usize)>,
    errors: Vec<ErrorRecord>,
}

impl VaultPart {
    fn build<I: RawItem>(vault_id: &str, children: &VaultChildren<I>) -> VaultPart {
        let mut errors = Vec::new();
        let storage_crr = single(
            children.storage_config.as_ref(),
            &mut errors,
            |c: RawStorageConfig| {
                Ok(c.properties
                    .and_then(|p| p.cross_region_restore_flag)
                    .and_then(|f| f.get()))
            },
            vault_id,
            "backup storage config",
        );
        let policies = listing(
            children.policies.as_ref(),
            vault_id,
            "backup policies",
            &mut errors,
            policy_from,
        );
        let items = listing(
            children.protected_items.as_ref(),
            vault_id,
            "protected items",
            &mut errors,
            item_from,
        );
        let protects = (items.items.iter().enumerate())
            .map(|(i, item)| (norm(&item.vm_id), i))
            .collect();
        VaultPart {
            key: norm(vault_id),
            detail: VaultDetail {
                storage_crr,
                policies,
                items,
            },
            protects,
            errors,
        }
    }
}

impl Estate {
    /// Builds the estate. `principal_override` is `--backup-principal-id`.
    pub fn from_snapshot<I: RawItem>(
        snap: &Snapshot<I>,
        principal_override: Option<&str>,
    ) -> Estate {
        let parts = snap
            .subscriptions
            .iter()
            .map(SubscriptionPart::build)
            .collect();
        Self::from_parts(parts, None, snap, principal_override)
    }

    /// Builds the estate from subscriptions built on their own (in the snapshot's order; the
    /// snapshot's own list is ignored), vaults built on their own if given (else from
    /// `snap.vaults`), and the rest of the snapshot: role data, HSMs, errors.
    fn from_parts<I: RawItem>(
        parts: Vec<SubscriptionPart>,
        vault_parts: Option<Vec<VaultPart>>,
        snap: &Snapshot<I>,
        principal_override: Option<&str>,
    ) -> Estate {
        let mut errors: Vec<ErrorRecord> = Vec::new();
        let mut subscriptions = Vec::with_capacity(parts.len());
        let mut vms = Vec::with_capacity(parts.iter().map(|p| p.vms.len()).sum());
        // Disks are indexed by id, first occurrence first; each is counted once per DES. The
        // parts counted their own disks; a disk or snapshot listed in two subscriptions (not
        // something ARM returns) makes the counts be redone over the whole estate.
        let mut disk_index: Index =
            HashMap::with_capacity(parts.iter().map(|p| p.disk_keys.len()).sum());
        let mut seen_snapshots: HashSet<String> = HashSet::new();
        let mut des_usage: HashMap<String, usize> = HashMap::new();
        let mut counted_twice = false;
        for (si, p) in parts.into_iter().enumerate() {
            errors.extend(p.errors);
            subscriptions.push(p.data);
            vms.extend(p.vms);
            for (i, k) in p.disk_keys.into_iter().enumerate() {
                match disk_index.entry(k) {
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert((si, i));
                    }
                    std::collections::hash_map::Entry::Occupied(e) => {
                        counted_twice |= e.get().0 != si;
                    }
                }
            }
            for k in p.snapshot_keys {
                counted_twice |= !seen_snapshots.insert(k);
            }
            for (des, n) in p.des_usage {
                *des_usage.entry(des).or_default() += n;
            }
        }
        drop(seen_snapshots);
        if counted_twice {
            des_usage = count_des_usage(&subscriptions, &disk_index);
        }
        let sub_index = subscriptions
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.clone(), i))
            .collect();

        // Vault children on every core (unless built already), merged in the snapshot's order
        // (the first vault that protects a VM is the one reported).
        let built = vault_parts.unwrap_or_else(|| {
            let vault_list: Vec<(&String, &VaultChildren<I>)> = snap.vaults.iter().collect();
            let chunks = crate::par::map_chunks(&vault_list, crate::par::threads(), |chunk| {
                (chunk.iter())
                    .map(|(id, children)| VaultPart::build(id, children))
                    .collect::<Vec<_>>()
            });
            chunks.into_iter().flatten().collect()
        });
        let mut vault_details = HashMap::with_capacity(built.len());
        let mut vault_detail_list = Vec::with_capacity(built.len());
        let mut protection: HashMap<String, (String, usize, usize)> = HashMap::new();
        for (vi, v) in built.into_iter().enumerate() {
            errors.extend(v.errors);
            for (vm_key, i) in v.protects {
                protection
                    .entry(vm_key)
                    .or_insert_with(|| (v.key.clone(), vi, i));
            }
            vault_details.insert(v.key, vi);
            vault_detail_list.push(v.detail);
        }

        let mut kv_role_assignments = HashMap::new();
        for (kv, read) in &snap.key_vault_role_assignments {
            kv_role_assignments.insert(
                norm(kv),
                listing(
                    Some(read),
                    kv,
                    "role assignments",
                    &mut errors,
                    assignment_from,
                ),
            );
        }
        let mut role_definitions = HashMap::new();
        for (rid, read) in &snap.role_definitions {
            let def = single(
                Some(read),
                &mut errors,
                role_definition_from,
                rid,
                "role definition",
            );
            role_definitions.insert(armid::role_guid(rid), def);
        }
        let mut hsm_rbac = HashMap::new();
        for (hsm, data) in &snap.managed_hsms {
            let assignments = listing(
                data.role_assignments.as_ref(),
                hsm,
                "Managed HSM role assignments",
                &mut errors,
                assignment_from,
            );
            let definitions = listing(
                data.role_definitions.as_ref(),
                hsm,
                "Managed HSM role definitions",
                &mut errors,
                role_definition_from,
            );
            hsm_rbac.insert(
                norm(hsm),
                HsmRbac {
                    assignments,
                    definitions,
                },
            );
        }

        let principal = match principal_override {
            Some(p) if !p.trim().is_empty() => Principal::Known(p.trim().to_string()),
            _ => match &snap.backup_principal {
                None => Principal::Unknown(
                    "the Backup Management Service principal was not looked up".into(),
                ),
                Some(r) if r.not_found => Principal::Absent,
                Some(r) => match (&r.error, &r.value) {
                    (Some(e), _) => {
                        errors.push(e.clone());
                        Principal::Unknown(e.short())
                    }
                    (None, Some(v)) => match v.parse::<IdOnly>().ok().and_then(|x| text(x.id)) {
                        Some(id) => Principal::Known(id),
                        None => Principal::Unknown(
                            "the Graph answer for the Backup Management Service has no `id`".into(),
                        ),
                    },
                    (None, None) => Principal::Unknown(
                        "the Backup Management Service lookup has no answer in the snapshot".into(),
                    ),
                },
            },
        };

        errors.extend(snap.errors.iter().cloned());

        let des_index = index_of(&subscriptions, |s| &s.des, |d| norm(&d.id));
        let vault_index = index_of(&subscriptions, |s| &s.vaults, |v| norm(&v.id));
        let kv_index = index_of(&subscriptions, |s| &s.key_vaults, |k| norm(&k.id));
        let kv_names = index_of(
            &subscriptions,
            |s| &s.key_vaults,
            |k| k.name.to_ascii_lowercase(),
        );
        let hsm_names = index_of(&subscriptions, |s| &s.hsms, |h| h.name.to_ascii_lowercase());
        let disk_lists_missing = subscriptions.iter().find_map(|s| {
            s.disks
                .missing
                .clone()
                .or_else(|| s.snapshots.missing.clone())
        });

        // Deduplicate errors while keeping their first order.
        let mut seen = BTreeSet::new();
        errors.retain(|e| {
            seen.insert((
                e.scope.to_ascii_lowercase(),
                e.operation.clone(),
                e.status,
                e.code.clone(),
                e.message.clone(),
            ))
        });

        Estate {
            subscriptions,
            vms,
            errors,
            principal,
            sub_index,
            vault_details,
            vault_detail_list,
            kv_role_assignments,
            role_definitions,
            hsm_rbac,
            des_usage,
            protection,
            disk_index,
            des_index,
            vault_index,
            kv_index,
            kv_names,
            hsm_names,
            disk_lists_missing,
        }
    }

    fn build_subscription<I: RawItem>(
        s: &SubscriptionSnapshot<I>,
        errors: &mut Vec<ErrorRecord>,
    ) -> (SubscriptionData, Vec<Vm>) {
        let scope = format!("/subscriptions/{}", s.subscription_id);
        let key = s.subscription_id.trim().to_ascii_lowercase();
        if let Some(e) = &s.error {
            // The subscription itself is unreadable: every list is missing for that reason.
            errors.push(e.clone());
            let reason = e.short();
            fn missing<T>(reason: &str) -> Listing<T> {
                Listing {
                    items: Vec::new(),
                    missing: Some(reason.to_string()),
                }
            }
            let data = SubscriptionData {
                id: s.subscription_id.clone(),
                key,
                display_name: s.display_name.clone(),
                vm_list_missing: Some(reason.clone()),
                disks: missing(&reason),
                snapshots: missing(&reason),
                des: missing(&reason),
                vaults: missing(&reason),
                key_vaults: missing(&reason),
                hsms: missing(&reason),
                features: HashMap::new(),
            };
            return (data, Vec::new());
        }
        let vm_listing = listing(
            s.virtual_machines.as_ref(),
            &scope,
            "virtual machines",
            errors,
            vm_from,
        );
        let features = s
            .features
            .iter()
            .map(|(name, read)| {
                let state = single(
                    Some(read),
                    errors,
                    |f: RawFeature| {
                        f.properties
                            .and_then(|p| text(p.state))
                            .ok_or_else(|| "the feature has no `properties.state`".to_string())
                    },
                    &format!("{scope}/providers/Microsoft.Features/providers/{name}"),
                    "feature registration",
                );
                (name.to_ascii_lowercase(), state)
            })
            .collect();
        let data = SubscriptionData {
            id: s.subscription_id.clone(),
            key,
            display_name: s.display_name.clone(),
            vm_list_missing: vm_listing.missing.clone(),
            disks: listing(s.disks.as_ref(), &scope, "disks", errors, disk_from),
            snapshots: listing(s.snapshots.as_ref(), &scope, "snapshots", errors, disk_from),
            des: listing(
                s.disk_encryption_sets.as_ref(),
                &scope,
                "disk encryption sets",
                errors,
                des_from,
            ),
            vaults: listing(
                s.recovery_services_vaults.as_ref(),
                &scope,
                "recovery services vaults",
                errors,
                rs_vault_from,
            ),
            key_vaults: listing(
                s.key_vaults.as_ref(),
                &scope,
                "key vaults",
                errors,
                key_vault_from,
            ),
            hsms: listing(
                s.managed_hsms.as_ref(),
                &scope,
                "managed HSMs",
                errors,
                hsm_from,
            ),
            features,
        };
        (data, vm_listing.items)
    }

    // ---- lookups used by the rules ---------------------------------------------------------

    pub fn subscription(&self, id: &str) -> Option<&SubscriptionData> {
        self.sub_index
            .get(&id.trim().to_ascii_lowercase())
            .map(|&i| &self.subscriptions[i])
    }

    /// Finds a resource by id through `index`; a miss is `NotFound` only when the listing of
    /// its subscription (chosen by `pick`) was read completely.
    fn lookup<'a, T>(
        &'a self,
        id: &str,
        what: &str,
        index: &Index,
        pick: impl Fn(&'a SubscriptionData) -> &'a Listing<T>,
    ) -> Lookup<'a, T> {
        if let Some(&(si, i)) = index.get(&norm(id)) {
            return Lookup::Found(&pick(&self.subscriptions[si]).items[i]);
        }
        let Some(sub) = armid::subscription_of(id).and_then(|s| self.subscription(s)) else {
            return Lookup::Unknown(format!(
                "{what} {id} is in a subscription that was not read"
            ));
        };
        match &pick(sub).missing {
            Some(r) => Lookup::Unknown(r.clone()),
            None => Lookup::NotFound,
        }
    }

    pub fn des(&self, id: &str) -> Lookup<'_, Des> {
        self.lookup(id, "disk encryption set", &self.des_index, |s| &s.des)
    }

    pub fn disk(&self, id: &str) -> Lookup<'_, Disk> {
        self.lookup(id, "disk", &self.disk_index, |s| &s.disks)
    }

    pub fn key_vault_by_id(&self, id: &str) -> Lookup<'_, KeyVault> {
        self.lookup(id, "key vault", &self.kv_index, |s| &s.key_vaults)
    }

    /// A Key Vault by name, searched in every subscription read.
    pub fn key_vault_by_name(&self, name: &str) -> Lookup<'_, KeyVault> {
        self.by_name(name, "key vault", &self.kv_names, |s| &s.key_vaults)
    }

    pub fn hsm_by_name(&self, name: &str) -> Lookup<'_, Hsm> {
        self.by_name(name, "managed HSM", &self.hsm_names, |s| &s.hsms)
    }

    fn by_name<'a, T>(
        &'a self,
        name: &str,
        what: &str,
        index: &Index,
        pick: impl Fn(&'a SubscriptionData) -> &'a Listing<T>,
    ) -> Lookup<'a, T> {
        if let Some(&(si, i)) = index.get(&name.to_ascii_lowercase()) {
            return Lookup::Found(&pick(&self.subscriptions[si]).items[i]);
        }
        match self.subscriptions.iter().find_map(|s| pick(s).missing.clone()) {
            Some(r) => Lookup::Unknown(r),
            None => Lookup::Unknown(format!(
                "{what} {name} is not in any subscription read (it may be in a subscription outside the scope)"
            )),
        }
    }

    /// Disks and snapshots encrypted with a DES, and whether every disk and snapshot list
    /// was read completely (else the count is a lower bound).
    pub fn des_usage(&self, des_id: &str) -> (usize, Option<String>) {
        let n = self.des_usage.get(&norm(des_id)).copied().unwrap_or(0);
        (n, self.disk_lists_missing.clone())
    }

    pub fn vault_detail(&self, vault_id: &str) -> Option<&VaultDetail> {
        (self.vault_details.get(&norm(vault_id))).and_then(|&i| self.vault_detail_list.get(i))
    }

    /// The vault with this id, from its subscription's vault list.
    pub fn rs_vault(&self, id: &str) -> Lookup<'_, RsVault> {
        self.lookup(id, "recovery services vault", &self.vault_index, |s| {
            &s.vaults
        })
    }

    pub fn protection(&self, vm: &Vm) -> Protection<'_> {
        let found = (self.protection.get(&vm.key)).and_then(|(vkey, vi, i)| {
            let item = self.vault_detail_list.get(*vi)?.items.items.get(*i)?;
            Some((vkey, item))
        });
        if let Some((vkey, item)) = found {
            let vault = match self.rs_vault(vkey) {
                Lookup::Found(v) => Some(v),
                _ => None,
            };
            return Protection::Protected {
                vault_key: vkey,
                vault,
                item,
            };
        }
        let Some(sub) = self.subscription(&vm.subscription_id) else {
            return Protection::Unknown(format!(
                "subscription {} was not read",
                vm.subscription_id
            ));
        };
        if let Some(r) = &sub.vaults.missing {
            return Protection::Unknown(r.clone());
        }
        for v in &sub.vaults.items {
            match self.vault_detail(&v.id) {
                None => {
                    return Protection::Unknown(format!(
                        "the protected items of vault {} are not in the snapshot",
                        v.name
                    ))
                }
                Some(d) => {
                    if let Some(r) = &d.items.missing {
                        return Protection::Unknown(r.clone());
                    }
                }
            }
        }
        Protection::NotProtected
    }

    /// Cross-region restore of a vault: enabled when any source says so.
    pub fn vault_crr(&self, v: &RsVault) -> Avail<bool> {
        let storage = self.vault_detail(&v.id).map(|d| &d.storage_crr);
        match (v.crr_property, storage) {
            (Some(true), _) | (_, Some(Avail::Known(Some(true)))) => Avail::Known(true),
            (Some(false), _) | (None, Some(Avail::Known(Some(false)))) => Avail::Known(false),
            (None, Some(Avail::Unknown(r))) => Avail::Unknown(r.clone()),
            (None, Some(Avail::Known(None))) => Avail::Unknown(format!(
                "vault {} reports no cross-region restore setting",
                v.name
            )),
            (None, None) => Avail::Unknown(format!(
                "the storage config of vault {} is not in the snapshot",
                v.name
            )),
        }
    }

    pub fn key_vault_role_assignments(&self, kv_id: &str) -> Option<&Listing<RoleAssignment>> {
        self.kv_role_assignments.get(&norm(kv_id))
    }

    pub fn role_definition(&self, role_definition_id: &str) -> Option<&Avail<RoleDefinition>> {
        self.role_definitions
            .get(&armid::role_guid(role_definition_id))
    }

    pub fn hsm_rbac(&self, hsm_id: &str) -> Option<&HsmRbac> {
        self.hsm_rbac.get(&norm(hsm_id))
    }

    /// Feature state in a subscription: `None` when the subscription was not read.
    pub fn feature(&self, subscription_id: &str, feature: &str) -> Avail<String> {
        match self.subscription(subscription_id) {
            None => Avail::Unknown(format!("subscription {subscription_id} was not read")),
            Some(s) => s
                .features
                .get(&feature.to_ascii_lowercase())
                .cloned()
                .unwrap_or_else(|| {
                    Avail::Unknown(format!(
                        "the state of feature {feature} in subscription {subscription_id} was not read"
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two vault entries whose ids differ only in case: the VM is protected by the item the
    /// first one lists, even though the second one's details are kept under the shared key.
    #[test]
    fn protection_points_at_the_vault_that_lists_the_item() {
        let vm =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
        let vaults =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults";
        let text = serde_json::json!({
            "schema": "cvm-backup/snapshot/v1",
            "subscriptions": [{
                "subscription_id": "s",
                "virtual_machines": {"value": [{"id": vm, "name": "vm1", "location": "uaenorth"}]},
            }],
            "vaults": {
                format!("{vaults}/V"): {"protected_items": {"value": [{
                    "id": format!("{vaults}/V/backupFabrics/Azure/protectionContainers/c/protectedItems/i"),
                    "properties": {"virtualMachineId": vm, "policyName": "p"}
                }]}},
                format!("{vaults}/v"): {"protected_items": {"value": []}},
            }
        })
        .to_string();
        let snap = Snapshot::from_slice(text.as_bytes(), "x.json").unwrap();
        let estate = Estate::from_snapshot(&snap, None);
        match estate.protection(&estate.vms[0]) {
            Protection::Protected { item, .. } => {
                assert_eq!(item.policy_name.as_deref(), Some("p"))
            }
            other => panic!("{other:?}"),
        }
    }
}
