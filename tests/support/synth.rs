//! Deterministic synthetic estates for the scale benchmark and the tests: `vms` VMs over
//! `subscriptions` subscriptions, the same seed giving the same estate byte for byte.
//!
//! The mix (shapes copied from `fixtures/demo.json`, about 2 KB of JSON per VM and 1.5 KB per
//! disk, as ARM returns them):
//! - 70% confidential VMs (80% v6 sizes, 20% v5; 90% `DiskWithVMGuestState`), the rest Trusted
//!   Launch and standard VMs; every VM in one of its subscription's two regions (of `uaenorth`,
//!   `koreacentral`, `westeurope`, `eastus`: two supported, two not).
//! - An OS disk per VM, a data disk on 40%, an unattached disk per 50 VMs, a snapshot per 33.
//! - Confidential DESs: one per subscription and region, keyed in the platform subscription's
//!   Key Vaults (access policies for even subscriptions, RBAC for odd ones), plus shared platform
//!   DESs per region (Key Vault, RBAC Key Vault) and one behind the platform's Managed HSM; 60%
//!   of the confidential VMs with a full-disk encryption type use a confidential DES.
//! - Recovery Services vaults: two in a subscription's primary region, one in its secondary;
//!   three policies each (V1, V2, V2 crash-consistent only); 55% of the VMs protected, mostly in
//!   a vault of their region; 20% of the vaults with cross-region restore on.
//! - The preview feature registered in 85% of the subscriptions.
//!
//! The first subscription is the platform subscription: it holds the shared Key Vaults, the
//! shared DESs and the Managed HSM, besides its own VMs.

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use cvm_backup::snapshot::{
    Endpoints, HsmRbac, ListRead, SingleRead, Snapshot, SubscriptionSnapshot, ToolInfo,
    VaultChildren, SNAPSHOT_SCHEMA,
};

pub type Raw = Box<RawValue>;

pub const BACKUP_PRINCIPAL: &str = "4f6c2a8e-1b3d-4e7f-9a05-c8d2e6b1f374";
pub const PREVIEW_FEATURE: &str = "Microsoft.Compute/RestorePointSupportForConfidentialVMV2";
const TENANT: &str = "72f988bf-5c1e-4d2b-9a6f-3e4c1b0d8a27";
const REGIONS: [&str; 4] = ["uaenorth", "koreacentral", "westeurope", "eastus"];
const CRYPTO_USER: &str = "12338af0-0e69-4776-bea7-57ae8d297424";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const HSM_CRYPTO_USER: &str = "21dbd100-6940-42c2-9190-5d6cb909625b";
const HSM_CRYPTO_OFFICER: &str = "515eb02d-2335-4d2d-92f2-b1cbdf9c3778";

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub vms: usize,
    pub subscriptions: usize,
    pub seed: u64,
    /// Recovery Services vaults per subscription: up to 3 (two in its primary region, one in
    /// its secondary); fewer keeps an estate of many subscriptions cheap to read.
    pub vaults_per_subscription: usize,
}

impl Spec {
    pub fn new(vms: usize, subscriptions: usize) -> Spec {
        Spec {
            vms,
            subscriptions: subscriptions.max(1),
            seed: 0x5ca1_ab1e,
            vaults_per_subscription: 3,
        }
    }
}

/// SplitMix64: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// 0..100
    fn pct(&mut self) -> u64 {
        self.next() % 100
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(n);
        s
    }
    fn guid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

fn raw(v: Value) -> Raw {
    RawValue::from_string(v.to_string()).unwrap()
}

fn list(items: Vec<Raw>) -> Option<ListRead<Raw>> {
    Some(ListRead {
        value: Some(items),
        error: None,
    })
}

fn single(v: Value) -> SingleRead<Raw> {
    SingleRead {
        value: Some(raw(v)),
        not_found: false,
        error: None,
    }
}

/// The subscription ids of an estate of `n` subscriptions (deterministic, GUID-shaped).
pub fn subscription_id(i: usize) -> String {
    format!(
        "{:08x}-5ca1-4e00-8000-{:012x}",
        0x5c00_0000u32 + i as u32,
        0xabc0_0000_0000u64 + i as u64
    )
}

fn tags(app: &str) -> Value {
    json!({"owner": "platform-team", "costCenter": "CC-4410", "env": "prod", "app": app})
}

struct Des {
    id: String,
    region: &'static str,
}

/// The estate as a snapshot whose items are JSON text.
pub fn estate(spec: &Spec) -> Snapshot<Raw> {
    let mut rng = Rng(spec.seed);
    let nsubs = spec.subscriptions.max(1);
    let subs: Vec<String> = (0..nsubs).map(subscription_id).collect();
    let plat = subs[0].clone();
    let sec_rg = format!("/subscriptions/{plat}/resourceGroups/rg-platform-security");

    // The platform's key stores.
    let kv_name = |region: &str, rbac: bool| {
        if rbac {
            format!("kv-plat-{region}-rbac")
        } else {
            format!("kv-plat-{region}")
        }
    };
    let kv_id = |name: &str| format!("{sec_rg}/providers/Microsoft.KeyVault/vaults/{name}");
    let hsm_name = "hsm-plat";
    let hsm_id = format!("{sec_rg}/providers/Microsoft.KeyVault/managedHSMs/{hsm_name}");

    let mut snap: Snapshot<Raw> = Snapshot {
        schema: SNAPSHOT_SCHEMA.into(),
        tool: Some(ToolInfo {
            name: "cvm-backup-synth".into(),
            version: "1".into(),
        }),
        collected_at: Some("2026-11-28T20:00:00Z".into()),
        source: Some("fixture".into()),
        endpoints: Some(Endpoints::default()),
        subscriptions: Vec::with_capacity(nsubs),
        backup_principal: Some(single(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#servicePrincipals(id,appId,displayName)/$entity",
            "id": BACKUP_PRINCIPAL,
            "appId": "262044b1-e2ce-469f-a196-69ab7ada62d3",
            "displayName": "Backup Management Service"
        }))),
        vaults: BTreeMap::new(),
        key_vault_role_assignments: BTreeMap::new(),
        role_definitions: BTreeMap::new(),
        managed_hsms: BTreeMap::new(),
        errors: Vec::new(),
    };

    // Role definitions the RBAC Key Vaults' assignments name.
    let role_def_id = |guid: &str| {
        format!("/subscriptions/{plat}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
    };
    snap.role_definitions.insert(
        role_def_id(CRYPTO_USER),
        single(json!({
            "properties": {"roleName": "Key Vault Crypto User", "type": "BuiltInRole",
                "description": "Perform cryptographic operations using keys. Only works for key vaults that use the 'Azure role-based access control' permission model.",
                "assignableScopes": ["/"],
                "permissions": [{"actions": [], "notActions": [], "dataActions": [
                    "Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/update/action",
                    "Microsoft.KeyVault/vaults/keys/backup/action", "Microsoft.KeyVault/vaults/keys/encrypt/action",
                    "Microsoft.KeyVault/vaults/keys/decrypt/action", "Microsoft.KeyVault/vaults/keys/wrap/action",
                    "Microsoft.KeyVault/vaults/keys/unwrap/action", "Microsoft.KeyVault/vaults/keys/sign/action",
                    "Microsoft.KeyVault/vaults/keys/verify/action"], "notDataActions": []}],
                "createdOn": "2020-05-19T17:52:46.2349235Z", "updatedOn": "2024-11-07T16:20:35.8471094Z"},
            "id": role_def_id(CRYPTO_USER),
            "type": "Microsoft.Authorization/roleDefinitions",
            "name": CRYPTO_USER
        })),
    );
    snap.role_definitions.insert(
        role_def_id(READER),
        single(json!({
            "properties": {"roleName": "Reader", "type": "BuiltInRole",
                "description": "View all resources, but does not allow you to make any changes.",
                "assignableScopes": ["/"],
                "permissions": [{"actions": ["*/read"], "notActions": [], "dataActions": [], "notDataActions": []}]},
            "id": role_def_id(READER),
            "type": "Microsoft.Authorization/roleDefinitions",
            "name": READER
        })),
    );

    // Platform Key Vaults: access policies (the Backup Management Service may back up keys in
    // the two supported regions only) and RBAC (Crypto User in the supported regions, Reader
    // elsewhere).
    let mut platform_kvs: Vec<Raw> = Vec::new();
    for region in REGIONS {
        let supported = region == "uaenorth" || region == "koreacentral";
        let name = kv_name(region, false);
        let backup_keys: Vec<&str> = if supported {
            vec!["Get", "List", "Backup", "WrapKey", "UnwrapKey"]
        } else {
            vec!["Get", "List", "WrapKey", "UnwrapKey"]
        };
        platform_kvs.push(raw(json!({
            "id": kv_id(&name), "name": name, "type": "Microsoft.KeyVault/vaults", "location": region,
            "tags": tags("cvm"),
            "systemData": {"createdBy": "secops@contoso.com", "createdByType": "User", "createdAt": "2026-02-11T10:22:03.118Z",
                "lastModifiedBy": "secops@contoso.com", "lastModifiedByType": "User", "lastModifiedAt": "2026-09-30T15:40:47.902Z"},
            "properties": {"sku": {"family": "A", "name": "premium"}, "tenantId": TENANT,
                "accessPolicies": [
                    {"tenantId": TENANT, "objectId": "0e7b4d19-6c2a-4a85-b3f1-8d9e2c5a7f60",
                     "permissions": {"keys": ["Get", "List", "Update", "Create", "Import", "Delete", "Recover", "Rotate"], "secrets": ["Get", "List"], "certificates": []}},
                    {"tenantId": TENANT, "objectId": BACKUP_PRINCIPAL,
                     "permissions": {"keys": backup_keys, "secrets": [], "certificates": []}}],
                "enabledForDeployment": false, "enabledForDiskEncryption": true, "enabledForTemplateDeployment": false,
                "enableSoftDelete": true, "softDeleteRetentionInDays": 90, "enablePurgeProtection": true,
                "vaultUri": format!("https://{name}.vault.azure.net/"), "provisioningState": "Succeeded", "publicNetworkAccess": "Enabled"}
        })));
        let name = kv_name(region, true);
        platform_kvs.push(raw(json!({
            "id": kv_id(&name), "name": name, "type": "Microsoft.KeyVault/vaults", "location": region,
            "tags": tags("cvm"),
            "properties": {"sku": {"family": "A", "name": "premium"}, "tenantId": TENANT, "accessPolicies": [],
                "enabledForDeployment": false, "enabledForDiskEncryption": true, "enabledForTemplateDeployment": false,
                "enableSoftDelete": true, "softDeleteRetentionInDays": 90, "enableRbacAuthorization": true,
                "enablePurgeProtection": true, "vaultUri": format!("https://{name}.vault.azure.net/"),
                "provisioningState": "Succeeded", "publicNetworkAccess": "Enabled"}
        })));
        let role = if supported { CRYPTO_USER } else { READER };
        let scope = kv_id(&name);
        let mut assignments = vec![raw(json!({
            "properties": {"roleDefinitionId": role_def_id(role), "principalId": BACKUP_PRINCIPAL,
                "principalType": "ServicePrincipal", "scope": scope, "condition": null, "conditionVersion": null,
                "createdOn": "2026-05-06T12:40:18.1184273Z", "updatedOn": "2026-05-06T12:40:18.1184273Z",
                "createdBy": "ca742ed9-7d4d-5297-b0a3-7ebcf6f96d34", "updatedBy": "ca742ed9-7d4d-5297-b0a3-7ebcf6f96d34",
                "delegatedManagedIdentityResourceId": null, "description": null},
            "id": format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{}", rng.guid()),
            "type": "Microsoft.Authorization/roleAssignments",
            "name": rng.guid()
        }))];
        if supported {
            assignments.push(raw(json!({
                "properties": {"roleDefinitionId": role_def_id(READER), "principalId": BACKUP_PRINCIPAL,
                    "principalType": "ServicePrincipal", "scope": format!("/subscriptions/{plat}")},
                "id": format!("/subscriptions/{plat}/providers/Microsoft.Authorization/roleAssignments/{}", rng.guid()),
                "type": "Microsoft.Authorization/roleAssignments",
                "name": rng.guid()
            })));
        }
        snap.key_vault_role_assignments.insert(
            kv_id(&name),
            ListRead {
                value: Some(assignments),
                error: None,
            },
        );
    }
    let platform_hsm = raw(json!({
        "id": hsm_id, "name": hsm_name, "type": "Microsoft.KeyVault/managedHSMs", "location": "uaenorth",
        "sku": {"family": "B", "name": "Standard_B1"}, "tags": tags("cvm"),
        "properties": {"tenantId": TENANT, "hsmUri": format!("https://{hsm_name}.managedhsm.azure.net/"),
            "initialAdminObjectIds": ["b81c3f5e-0a7d-4e29-96b4-2f8d1c6e3a95"], "enableSoftDelete": true,
            "softDeleteRetentionInDays": 90, "enablePurgeProtection": true, "provisioningState": "Succeeded",
            "statusMessage": "The Managed HSM is provisioned and ready to use.",
            "securityDomainProperties": {"activationStatus": "Active", "activationStatusMessage": "Your HSM has been activated and can be used for cryptographic operations."},
            "publicNetworkAccess": "Enabled",
            "networkAcls": {"bypass": "AzureServices", "defaultAction": "Allow", "ipRules": [], "virtualNetworkRules": []}, "regions": []}
    }));
    let hsm_role = |guid: &str| {
        format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{guid}")
    };
    snap.managed_hsms.insert(
        hsm_id.clone(),
        HsmRbac {
            role_assignments: list(vec![
                raw(json!({"id": format!("/providers/Microsoft.Authorization/roleAssignments/{}", rng.guid()),
                    "name": rng.guid(), "type": "Microsoft.Authorization/roleAssignments",
                    "properties": {"scope": "/keys", "roleDefinitionId": hsm_role(HSM_CRYPTO_USER), "principalId": BACKUP_PRINCIPAL}})),
                raw(json!({"id": format!("/providers/Microsoft.Authorization/roleAssignments/{}", rng.guid()),
                    "name": rng.guid(), "type": "Microsoft.Authorization/roleAssignments",
                    "properties": {"scope": "/", "roleDefinitionId": hsm_role(HSM_CRYPTO_OFFICER), "principalId": "b81c3f5e-0a7d-4e29-96b4-2f8d1c6e3a95"}})),
            ]),
            role_definitions: list(vec![
                raw(json!({"id": hsm_role(HSM_CRYPTO_USER), "name": HSM_CRYPTO_USER, "type": "Microsoft.Authorization/roleDefinitions",
                    "properties": {"assignableScopes": ["/"], "description": "", "roleName": "Managed HSM Crypto User", "type": "AKVBuiltInRole",
                        "permissions": [{"actions": [], "notActions": [], "dataActions": [
                            "Microsoft.KeyVault/managedHsm/keys/read/action", "Microsoft.KeyVault/managedHsm/keys/write/action",
                            "Microsoft.KeyVault/managedHsm/keys/backup/action", "Microsoft.KeyVault/managedHsm/keys/encrypt/action",
                            "Microsoft.KeyVault/managedHsm/keys/decrypt/action", "Microsoft.KeyVault/managedHsm/keys/wrap/action",
                            "Microsoft.KeyVault/managedHsm/keys/unwrap/action"], "notDataActions": []}]}})),
                raw(json!({"id": hsm_role(HSM_CRYPTO_OFFICER), "name": HSM_CRYPTO_OFFICER, "type": "Microsoft.Authorization/roleDefinitions",
                    "properties": {"assignableScopes": ["/"], "description": "", "roleName": "Managed HSM Crypto Officer", "type": "AKVBuiltInRole",
                        "permissions": [{"actions": [], "notActions": [], "dataActions": [
                            "Microsoft.KeyVault/managedHsm/keys/deletedKeys/read/action", "Microsoft.KeyVault/managedHsm/roleAssignments/read/action"],
                            "notDataActions": []}]}})),
            ]),
        },
    );

    // Shared platform DESs.
    let des_item = |id: &str,
                    name: &str,
                    region: &str,
                    key_url: String,
                    source: Option<String>,
                    rng: &mut Rng| {
        let mut active = json!({"keyUrl": key_url});
        if let Some(s) = source {
            active["sourceVault"] = json!({"id": s});
        }
        raw(json!({
            "name": name, "id": id, "type": "Microsoft.Compute/diskEncryptionSets", "location": region,
            "tags": tags("cvm"),
            "identity": {"type": "SystemAssigned", "principalId": rng.guid(), "tenantId": TENANT},
            "properties": {"activeKey": active, "encryptionType": "ConfidentialVmEncryptedWithCustomerKey",
                "rotationToLatestKeyVersionEnabled": false, "provisioningState": "Succeeded"}
        }))
    };
    let mut platform_des: Vec<Raw> = Vec::new();
    let mut shared_des: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for region in REGIONS {
        for rbac in [false, true] {
            let name = format!("des-plat-{region}-{}", if rbac { "rbac" } else { "kv" });
            let id = format!("{sec_rg}/providers/Microsoft.Compute/diskEncryptionSets/{name}");
            let kv = kv_name(region, rbac);
            let url = format!("https://{kv}.vault.azure.net/keys/cvm-key/{}", rng.hex(32));
            platform_des.push(des_item(
                &id,
                &name,
                region,
                url,
                Some(kv_id(&kv)),
                &mut rng,
            ));
            shared_des.entry(region).or_default().push(id);
        }
    }
    {
        let name = "des-plat-uaenorth-hsm";
        let id = format!("{sec_rg}/providers/Microsoft.Compute/diskEncryptionSets/{name}");
        let url = format!(
            "https://{hsm_name}.managedhsm.azure.net/keys/cvm-hsm-key/{}",
            rng.hex(32)
        );
        platform_des.push(des_item(&id, name, "uaenorth", url, None, &mut rng));
        shared_des.entry("uaenorth").or_default().push(id);
    }

    let per_sub = spec.vms / nsubs;
    let extra = spec.vms % nsubs;
    for (s, sub) in subs.iter().enumerate() {
        let n = per_sub + usize::from(s < extra);
        let primary = REGIONS[s % REGIONS.len()];
        let secondary = REGIONS[(s + 1) % REGIONS.len()];
        let sub_rg = |rg: &str| format!("/subscriptions/{sub}/resourceGroups/{rg}");

        // This subscription's confidential DESs, one per region, keyed in the platform's vaults.
        let rbac_kv = s % 2 == 1;
        let mut des_items: Vec<Raw> = Vec::new();
        let mut own_des: Vec<Des> = Vec::new();
        for region in [primary, secondary] {
            let name = format!("des-{s:03}-{region}");
            let id = format!(
                "{}/providers/Microsoft.Compute/diskEncryptionSets/{name}",
                sub_rg("rg-security")
            );
            let kv = kv_name(region, rbac_kv);
            let url = format!(
                "https://{kv}.vault.azure.net/keys/cvm-key-{s:03}/{}",
                rng.hex(32)
            );
            // Half name their vault, half leave it to the key URL's host.
            let source = (rng.pct() < 50).then(|| kv_id(&kv));
            des_items.push(des_item(&id, &name, region, url, source, &mut rng));
            own_des.push(Des { id, region });
        }
        if s == 0 {
            des_items.extend(platform_des.iter().cloned());
        }

        // Recovery Services vaults: two in the primary region, one in the secondary.
        let mut vaults: Vec<(String, &'static str)> = Vec::new();
        let mut vault_items: Vec<Raw> = Vec::new();
        for (region, k) in [(primary, 1), (secondary, 1), (primary, 2)]
            .into_iter()
            .take(spec.vaults_per_subscription)
        {
            let name = format!("rsv-{s:03}-{region}-{k}");
            let id = format!(
                "{}/providers/Microsoft.RecoveryServices/vaults/{name}",
                sub_rg("rg-backup")
            );
            let crr = rng.pct() < 20;
            vault_items.push(raw(json!({
                "location": region, "name": name,
                "etag": format!("W/\"datetime'2026-10-12T08%3A41%3A09.{}Z'\"", rng.hex(7)),
                "tags": {"owner": "platform-team", "costCenter": "CC-4410", "env": "prod"},
                "identity": {"type": "SystemAssigned", "principalId": rng.guid(), "tenantId": TENANT},
                "properties": {"provisioningState": "Succeeded", "privateEndpointStateForBackup": "None",
                    "privateEndpointStateForSiteRecovery": "None",
                    "redundancySettings": {"standardTierStorageRedundancy": "GeoRedundant",
                        "crossRegionRestore": if crr { "Enabled" } else { "Disabled" }},
                    "securitySettings": {"immutabilitySettings": {"state": "Disabled"},
                        "softDeleteSettings": {"softDeleteState": "Enabled", "softDeleteRetentionPeriodInDays": 14, "enhancedSecurityState": "Enabled"},
                        "multiUserAuthorization": "Disabled"},
                    "secureScore": "Minimum", "bcdrSecurityLevel": "Fair", "publicNetworkAccess": "Enabled",
                    "restoreSettings": {"crossSubscriptionRestoreSettings": {"crossSubscriptionRestoreState": "Enabled"}}},
                "id": id, "type": "Microsoft.RecoveryServices/vaults", "sku": {"name": "RS0", "tier": "Standard"}
            })));
            let policy = |pname: &str, v2: bool, crash: bool| {
                let mut p = json!({
                    "id": format!("{id}/backupPolicies/{pname}"), "name": pname,
                    "type": "Microsoft.RecoveryServices/vaults/backupPolicies",
                    "properties": {"backupManagementType": "AzureIaasVM", "instantRPDetails": {},
                        "schedulePolicy": if v2 {
                            json!({"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Daily",
                                   "dailySchedule": {"scheduleRunTimes": ["2026-01-15T20:00:00Z"]}})
                        } else {
                            json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily",
                                   "scheduleRunTimes": ["2026-01-15T21:30:00Z"], "scheduleWeeklyFrequency": 0})
                        },
                        "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy",
                            "dailySchedule": {"retentionTimes": ["2026-01-15T20:00:00Z"], "retentionDuration": {"count": 30, "durationType": "Days"}}},
                        "tieringPolicy": {"ArchivedRP": {"tieringMode": "DoNotTier", "duration": 0, "durationType": "Invalid"}},
                        "instantRpRetentionRangeInDays": if v2 { 7 } else { 2 }, "timeZone": "UTC",
                        "policyType": if v2 { "V2" } else { "V1" }}
                });
                if crash {
                    p["properties"]["snapshotConsistencyType"] = json!("OnlyCrashConsistent");
                }
                raw(p)
            };
            snap.vaults.insert(
                id.clone(),
                VaultChildren {
                    storage_config: Some(single(json!({
                        "id": format!("{id}/backupstorageconfig/vaultstorageconfig"), "name": "vaultstorageconfig",
                        "type": "Microsoft.RecoveryServices/vaults/backupstorageconfig",
                        "properties": {"storageModelType": "GeoRedundant", "storageType": "GeoRedundant",
                            "storageTypeState": "Locked", "dedupState": "Disabled", "xcoolState": "Disabled",
                            "crossRegionRestoreFlag": crr}
                    }))),
                    policies: list(vec![
                        policy("DefaultPolicy", false, false),
                        policy("EnhancedPolicy-Daily", true, false),
                        policy("EnhancedPolicy-CrashOnly", true, true),
                    ]),
                    protected_items: list(Vec::new()),
                },
            );
            vaults.push((id, region));
        }

        let mut vm_items: Vec<Raw> = Vec::with_capacity(n);
        let mut disk_items: Vec<Raw> = Vec::with_capacity(n * 3 / 2);
        let mut snap_items: Vec<Raw> = Vec::new();
        for i in 0..n {
            let name = format!("vm-{s:03}-{i:05}");
            let rg = format!("rg-app-{}", i % 8);
            let vm_id = format!(
                "{}/providers/Microsoft.Compute/virtualMachines/{name}",
                sub_rg(&rg)
            );
            let region = if rng.pct() < 70 { primary } else { secondary };
            let kind = rng.pct();
            let cvm = kind < 70;
            let trusted = (70..85).contains(&kind);
            let size = if cvm {
                if rng.pct() < 80 {
                    *rng.pick(&[
                        "Standard_DC2as_v6",
                        "Standard_DC4as_v6",
                        "Standard_DC8ads_v6",
                        "Standard_EC4as_v6",
                        "Standard_EC16eds_v6",
                        "Standard_DC16es_v6",
                    ])
                } else {
                    *rng.pick(&[
                        "Standard_DC4as_v5",
                        "Standard_EC8ads_v5",
                        "Standard_DC2ads_v5",
                    ])
                }
            } else {
                *rng.pick(&[
                    "Standard_D4s_v5",
                    "Standard_E8s_v5",
                    "Standard_B2s",
                    "Standard_D2as_v5",
                ])
            };
            let full_disk = cvm && rng.pct() < 90;
            let des: Option<String> = if full_disk && rng.pct() < 60 {
                if rng.pct() < 70 {
                    own_des
                        .iter()
                        .find(|d| d.region == region)
                        .map(|d| d.id.clone())
                } else {
                    shared_des.get(region).map(|v| rng.pick(v).clone())
                }
            } else {
                None
            };
            let os_disk_name = format!("{name}_OsDisk_1_{}", rng.hex(32));
            let os_disk_id = format!(
                "{}/providers/Microsoft.Compute/disks/{os_disk_name}",
                sub_rg(&rg)
            );
            let mut md = json!({"storageAccountType": "Premium_LRS", "id": os_disk_id});
            if cvm {
                let mut sp = json!({"securityEncryptionType": if full_disk { "DiskWithVMGuestState" } else { "VMGuestStateOnly" }});
                if let Some(d) = &des {
                    sp["diskEncryptionSet"] = json!({"id": d});
                }
                md["securityProfile"] = sp;
            }
            let has_data = rng.pct() < 40;
            let data_name = format!("{name}-data01");
            let data_id = format!(
                "{}/providers/Microsoft.Compute/disks/{data_name}",
                sub_rg(&rg)
            );
            let data_disks = if has_data {
                json!([{"lun": 0, "name": data_name, "createOption": "Attach", "caching": "ReadOnly",
                    "writeAcceleratorEnabled": false,
                    "managedDisk": {"storageAccountType": "Premium_LRS", "id": data_id},
                    "deleteOption": "Detach", "diskSizeGB": 256, "toBeDetached": false}])
            } else {
                json!([])
            };
            let mut props = json!({
                "hardwareProfile": {"vmSize": size}, "provisioningState": "Succeeded", "vmId": rng.guid(),
                "storageProfile": {
                    "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": if cvm { "cvm" } else { "server" },
                        "version": "latest", "exactVersion": "24.04.202610220"},
                    "osDisk": {"osType": "Linux", "name": os_disk_name, "createOption": "FromImage", "caching": "ReadWrite",
                        "managedDisk": md, "deleteOption": "Delete", "diskSizeGB": 30},
                    "dataDisks": data_disks, "diskControllerType": "SCSI"},
                "osProfile": {"computerName": name, "adminUsername": "azureuser",
                    "linuxConfiguration": {"disablePasswordAuthentication": true,
                        "ssh": {"publicKeys": [{"path": "/home/azureuser/.ssh/authorized_keys",
                            "keyData": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixtureOnlyNotARealKeyContosoOps ops@contoso"}]},
                        "provisionVMAgent": true, "patchSettings": {"patchMode": "ImageDefault", "assessmentMode": "ImageDefault"}},
                    "secrets": [], "allowExtensionOperations": true, "requireGuestProvisionSignal": true},
                "networkProfile": {"networkInterfaces": [{"id": format!("{}/providers/Microsoft.Network/networkInterfaces/{name}-nic01", sub_rg(&rg)),
                    "properties": {"deleteOption": "Delete"}}]},
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": true}},
                "timeCreated": "2026-03-02T09:14:27.5512345+00:00"
            });
            if cvm {
                props["securityProfile"] = json!({"uefiSettings": {"secureBootEnabled": true, "vTpmEnabled": true}, "securityType": "ConfidentialVM"});
            } else if trusted {
                props["securityProfile"] = json!({"uefiSettings": {"secureBootEnabled": true, "vTpmEnabled": true}, "securityType": "TrustedLaunch"});
            }
            vm_items.push(raw(json!({
                "name": name, "id": vm_id, "type": "Microsoft.Compute/virtualMachines", "location": region,
                "tags": tags("orders"), "zones": [format!("{}", 1 + i % 3)], "etag": "\"4\"",
                "properties": props
            })));

            // Disks.
            let disk_security = if cvm {
                match (&des, full_disk) {
                    (Some(d), _) => {
                        json!({"securityType": "ConfidentialVM_DiskEncryptedWithCustomerKey", "secureVMDiskEncryptionSetId": d})
                    }
                    (None, true) => {
                        json!({"securityType": "ConfidentialVM_DiskEncryptedWithPlatformKey"})
                    }
                    (None, false) => {
                        json!({"securityType": "ConfidentialVM_VMGuestStateOnlyEncryptedWithPlatformKey"})
                    }
                }
            } else if trusted {
                json!({"securityType": "TrustedLaunch"})
            } else {
                Value::Null
            };
            let disk = |id: &str,
                        dname: &str,
                        managed_by: Option<&str>,
                        os: bool,
                        security: &Value,
                        rng: &mut Rng| {
                let mut props = json!({
                    "osType": "Linux", "hyperVGeneration": "V2",
                    "supportedCapabilities": {"diskControllerTypes": "SCSI, NVMe", "acceleratedNetwork": true, "architecture": "x64"},
                    "creationData": if os {
                        json!({"createOption": "FromImage", "imageReference": {"id": format!("/Subscriptions/{sub}/Providers/Microsoft.Compute/Locations/{region}/Publishers/canonical/ArtifactTypes/VMImage/Offers/ubuntu-24_04-lts/Skus/cvm/Versions/24.04.202610220")}})
                    } else {
                        json!({"createOption": "Empty"})
                    },
                    "diskSizeGB": if os { 30 } else { 256 }, "diskIOPSReadWrite": 120, "diskMBpsReadWrite": 25,
                    "encryption": {"type": "EncryptionAtRestWithPlatformKey"},
                    "networkAccessPolicy": "AllowAll", "publicNetworkAccess": "Enabled",
                    "timeCreated": "2026-03-02T09:14:29.0132241+00:00", "provisioningState": "Succeeded",
                    "diskState": if managed_by.is_some() { "Attached" } else { "Unattached" },
                    "diskSizeBytes": if os { 32212254720u64 } else { 274877906944u64 }, "uniqueId": rng.guid(), "tier": "P4"
                });
                if os && !security.is_null() {
                    props["securityProfile"] = security.clone();
                }
                let mut d = json!({
                    "name": dname, "id": id, "type": "Microsoft.Compute/disks", "location": region,
                    "tags": tags("orders"), "sku": {"name": "Premium_LRS", "tier": "Premium"}, "zones": ["1"],
                    "properties": props
                });
                if let Some(m) = managed_by {
                    d["managedBy"] = json!(m);
                }
                raw(d)
            };
            disk_items.push(disk(
                &os_disk_id,
                &os_disk_name,
                Some(&vm_id),
                true,
                &disk_security,
                &mut rng,
            ));
            if has_data {
                disk_items.push(disk(
                    &data_id,
                    &data_name,
                    Some(&vm_id),
                    false,
                    &Value::Null,
                    &mut rng,
                ));
            }
            if i % 50 == 49 {
                let dname = format!("{name}-orphan-os");
                let did = format!("{}/providers/Microsoft.Compute/disks/{dname}", sub_rg(&rg));
                disk_items.push(disk(&did, &dname, None, true, &disk_security, &mut rng));
            }
            if i % 33 == 32 {
                let sname = format!("snap-{name}-os-2026-11-20");
                let mut sp = json!({
                    "osType": "Linux", "hyperVGeneration": "V2",
                    "creationData": {"createOption": "Copy", "sourceResourceId": os_disk_id, "sourceUniqueId": rng.guid()},
                    "diskSizeGB": 30, "encryption": {"type": "EncryptionAtRestWithPlatformKey"}, "incremental": true,
                    "networkAccessPolicy": "AllowAll", "publicNetworkAccess": "Enabled",
                    "timeCreated": "2026-11-20T01:15:02.5530112+00:00", "provisioningState": "Succeeded",
                    "diskState": "Unattached", "diskSizeBytes": 32212254720u64, "uniqueId": rng.guid()
                });
                if !disk_security.is_null() {
                    sp["securityProfile"] = disk_security.clone();
                }
                snap_items.push(raw(json!({
                    "name": sname, "id": format!("{}/providers/Microsoft.Compute/snapshots/{sname}", sub_rg(&rg)),
                    "type": "Microsoft.Compute/snapshots", "location": region,
                    "sku": {"name": "Standard_ZRS", "tier": "Standard"}, "properties": sp
                })));
            }

            // Protection: 55%, mostly in a vault of the VM's region.
            if rng.pct() < 55 && !vaults.is_empty() {
                let here: Vec<&(String, &'static str)> =
                    vaults.iter().filter(|(_, r)| *r == region).collect();
                let (vault_id, _) = if rng.pct() < 95 && !here.is_empty() {
                    *rng.pick(&here)
                } else {
                    rng.pick(&vaults)
                };
                let p = rng.pct();
                let policy = if p < 60 {
                    "EnhancedPolicy-Daily"
                } else if p < 85 {
                    "DefaultPolicy"
                } else {
                    "EnhancedPolicy-CrashOnly"
                };
                let container = format!("iaasvmcontainerv2;{rg};{name}");
                let item = raw(json!({
                    "id": format!("{vault_id}/backupFabrics/Azure/protectionContainers/IaasVMContainer;{container}/protectedItems/VM;{container}"),
                    "name": format!("VM;{container}"),
                    "type": "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems",
                    "properties": {"friendlyName": name, "protectionStatus": "Healthy", "protectionState": "Protected",
                        "healthStatus": "Passed", "lastBackupStatus": "Completed", "lastBackupTime": "2026-11-28T02:31:07.1198043Z",
                        "protectedItemDataId": format!("{}", rng.next() % 100_000_000_000_000),
                        "protectedItemType": "Microsoft.Compute/virtualMachines", "backupManagementType": "AzureIaasVM",
                        "workloadType": "VM", "containerName": container,
                        "virtualMachineId": vm_id, "sourceResourceId": vm_id,
                        "policyId": format!("{vault_id}/backupPolicies/{policy}"), "policyName": policy,
                        "lastRecoveryPoint": "2026-11-28T02:33:41.0000000Z", "isArchiveEnabled": false,
                        "softDeleteRetentionPeriodInDays": 14, "vaultId": vault_id}
                }));
                if let Some(ch) = snap.vaults.get_mut(vault_id) {
                    if let Some(l) = ch.protected_items.as_mut() {
                        l.value.get_or_insert_with(Vec::new).push(item);
                    }
                }
            }
        }

        let state = match rng.pct() {
            0..=84 => "Registered",
            85..=94 => "NotRegistered",
            _ => "Registering",
        };
        let state = if s == 0 { "Registered" } else { state };
        let mut features = BTreeMap::new();
        features.insert(
            PREVIEW_FEATURE.to_string(),
            single(json!({
                "properties": {"state": state},
                "id": format!("/subscriptions/{sub}/providers/Microsoft.Features/providers/Microsoft.Compute/features/RestorePointSupportForConfidentialVMV2"),
                "type": "Microsoft.Features/providers/features",
                "name": PREVIEW_FEATURE
            })),
        );
        snap.subscriptions.push(SubscriptionSnapshot {
            subscription_id: sub.clone(),
            display_name: Some(format!("synth-{s:03}")),
            error: None,
            virtual_machines: list(vm_items),
            disks: list(disk_items),
            snapshots: list(snap_items),
            disk_encryption_sets: list(des_items),
            recovery_services_vaults: list(vault_items),
            key_vaults: list(if s == 0 {
                platform_kvs.clone()
            } else {
                Vec::new()
            }),
            managed_hsms: list(if s == 0 {
                vec![platform_hsm.clone()]
            } else {
                Vec::new()
            }),
            features,
        });
    }
    snap
}

/// Writes the estate as a snapshot file.
pub fn write(snap: &Snapshot<Raw>, path: &std::path::Path) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    serde_json::to_writer(&mut w, snap).unwrap();
    std::io::Write::flush(&mut w).unwrap();
}

/// Items of one kind over every subscription.
pub fn count(
    snap: &Snapshot<Raw>,
    f: impl Fn(&SubscriptionSnapshot<Raw>) -> Option<&ListRead<Raw>>,
) -> usize {
    snap.subscriptions
        .iter()
        .map(|s| f(s).map(|l| l.items().len()).unwrap_or(0))
        .sum()
}
