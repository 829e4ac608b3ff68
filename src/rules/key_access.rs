//! CVMB008 key-access: the Backup Management Service can read and back up the CVM's key.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use url::Url;

use super::{sh, Cx, Finding, Rule, RuleMeta, Severity, BACKUP_MANAGEMENT_APP_ID};
use crate::armid;
use crate::estate::{
    Avail, Des, Hsm, KeyVault, Listing, Lookup, Principal, RoleAssignment, RoleDefinition, Vm,
};

pub struct KeyAccess;

static META: RuleMeta = RuleMeta {
    reference: "CVMB008",
    name: "key-access",
    severity: Severity::Error,
    summary: "The Backup Management Service may read and back up the customer-managed key (Key Vault or Managed HSM).",
    docs: "\
VM backup uses the \"Backup Management Service\" service principal (application id \
262044b1-e2ce-469f-a196-69ab7ada62d3; its object id differs per tenant) to back up the key of a \
confidential VM with a customer-managed key (CMK). The portal grants this automatically; \
PowerShell, CLI and REST do not, so a CVM protected by script may lack it.

* No confidential DES on the OS disk: platform-managed key, `pass`. When the VM payload names \
no DES and its OS disk could not be read, `unknown`.
* Key Vault with access policies: the service's access policy must have key permissions `get`, \
`list` and `backup` (`all` counts; case-insensitive).
* Key Vault with RBAC (`enableRbacAuthorization: true`; access policies then count for nothing): \
role assignments for the service at the key's scope or above (key, vault, resource group, \
subscription, management group) whose roles' dataActions, minus the same role's notDataActions, \
cover `Microsoft.KeyVault/vaults/keys/read` and `Microsoft.KeyVault/vaults/keys/backup/action` \
(wildcards count). Key Vault Crypto User, Crypto Officer and Administrator do; Crypto Service \
Encryption User does not.
* Managed HSM: local role assignments at `/`, `/keys` or `/keys/<key>` covering \
`Microsoft.KeyVault/managedHsm/keys/read/action` and `.../keys/backup/action`. The built-in \
\"Managed HSM Crypto User\" does; \"Managed HSM Crypto Officer\" does NOT.

The service principal's object id comes from `--backup-principal-id` or Microsoft Graph. If the \
tenant has no such principal (Graph 404) the rule fails. If Graph could not be read the rule is \
`unknown`, unless no principal at all holds the needed access (then it fails). Role assignments \
through group membership are not expanded.",
    docs_url: "https://learn.microsoft.com/azure/backup/confidential-vm-backup",
    subscription_scoped: false,
};

const KV_ACTIONS: [&str; 2] = [
    "Microsoft.KeyVault/vaults/keys/read",
    "Microsoft.KeyVault/vaults/keys/backup/action",
];
const HSM_ACTIONS: [&str; 2] = [
    "Microsoft.KeyVault/managedHsm/keys/read/action",
    "Microsoft.KeyVault/managedHsm/keys/backup/action",
];
const KV_PERMISSIONS: [&str; 3] = ["get", "list", "backup"];

/// Case-insensitive glob match with `*`.
pub(crate) fn action_matches(pattern: &str, action: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let a: Vec<char> = action.to_ascii_lowercase().chars().collect();
    // Iterative wildcard matching with backtracking on the last star.
    let (mut pi, mut ai) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ai < a.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ai));
            pi += 1;
        } else if pi < p.len() && p[pi] == a[ai] {
            pi += 1;
            ai += 1;
        } else if let Some((sp, sa)) = star {
            pi = sp + 1;
            ai = sa + 1;
            star = Some((sp, sa + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Does this role grant `action` (its dataActions minus its own notDataActions)?
pub(crate) fn role_grants(def: &RoleDefinition, action: &str) -> bool {
    let allowed = def
        .permissions
        .iter()
        .flat_map(|p| &p.data_actions)
        .any(|d| action_matches(d, action));
    let denied = def
        .permissions
        .iter()
        .flat_map(|p| &p.not_data_actions)
        .any(|d| action_matches(d, action));
    allowed && !denied
}

enum Coverage {
    Covered(Vec<String>),
    Missing(Vec<&'static str>),
    Unknown(String),
}

/// Union over the assignments of what their roles grant.
fn coverage<'a>(
    assignments: &[&'a RoleAssignment],
    resolve: &dyn Fn(&'a RoleAssignment) -> Avail<Option<&'a RoleDefinition>>,
    required: &[&'static str],
) -> Coverage {
    let mut covered = vec![false; required.len()];
    let mut roles = Vec::new();
    let mut unresolved = None;
    for a in assignments {
        match resolve(a) {
            Avail::Known(Some(def)) => {
                let mut useful = false;
                for (i, act) in required.iter().enumerate() {
                    if role_grants(def, act) {
                        covered[i] = true;
                        useful = true;
                    }
                }
                if useful && !roles.contains(&def.name) {
                    roles.push(def.name.clone());
                }
            }
            Avail::Known(None) => {}
            Avail::Unknown(r) => {
                unresolved.get_or_insert(r);
            }
        }
    }
    if covered.iter().all(|c| *c) {
        Coverage::Covered(roles)
    } else if let Some(r) = unresolved {
        Coverage::Unknown(r)
    } else {
        Coverage::Missing(
            required
                .iter()
                .zip(&covered)
                .filter(|(_, c)| !**c)
                .map(|(a, _)| *a)
                .collect(),
        )
    }
}

/// Decide an RBAC question for the Backup principal, given every assignment that applies to
/// the key. Returns the finding's outcome part; the caller adds evidence and the fix.
fn decide_rbac<'a>(
    principal: &Principal,
    applicable: &[&'a RoleAssignment],
    listing_missing: Option<&String>,
    resolve: &dyn Fn(&'a RoleAssignment) -> Avail<Option<&'a RoleDefinition>>,
    required: &[&'static str],
    what: &str,
) -> (Finding, Vec<Value>) {
    let shown: Vec<Value> = applicable
        .iter()
        .map(|a| json!({"principal_id": a.principal_id, "scope": a.scope, "role_definition_id": a.role_definition_id}))
        .collect();
    match principal {
        Principal::Absent => (absent(), shown),
        Principal::Known(oid) => {
            let mine: Vec<&RoleAssignment> = applicable
                .iter()
                .copied()
                .filter(|a| a.principal_id.eq_ignore_ascii_case(oid))
                .collect();
            let f = match coverage(&mine, resolve, required) {
                Coverage::Covered(roles) => Finding::pass(format!(
                    "the Backup Management Service holds {} on {what}",
                    roles.join(", ")
                ))
                .with("roles", roles),
                Coverage::Unknown(r) => Finding::unknown(format!(
                    "a role assigned to the Backup Management Service could not be resolved: {r}"
                )),
                Coverage::Missing(missing) => match listing_missing {
                    Some(r) => Finding::unknown(format!(
                        "the role assignments on {what} could not be read completely: {r}"
                    )),
                    None => Finding::fail(format!(
                        "the Backup Management Service lacks {} on {what}",
                        missing.join(" and ")
                    ))
                    .with("missing_data_actions", missing),
                },
            };
            (f, shown)
        }
        Principal::Unknown(reason) => {
            // Group the assignments by principal: if nobody is covered, the answer does not
            // depend on who the Backup principal is.
            let mut by_principal: BTreeMap<String, Vec<&RoleAssignment>> = BTreeMap::new();
            for a in applicable {
                by_principal
                    .entry(a.principal_id.to_ascii_lowercase())
                    .or_default()
                    .push(a);
            }
            let mut someone = false;
            for list in by_principal.values() {
                match coverage(list, resolve, required) {
                    Coverage::Missing(_) => {}
                    _ => someone = true,
                }
            }
            let f = if someone || listing_missing.is_some() {
                Finding::unknown(format!(
                    "the Backup Management Service's object id could not be looked up ({reason}); pass --backup-principal-id"
                ))
            } else {
                Finding::fail(format!(
                    "no role assignment on {what} grants {} to anyone",
                    required.join(" and ")
                ))
            };
            (f, shown)
        }
    }
}

/// `az` command that prints the Backup Management Service's object id in the tenant.
fn lookup_principal() -> String {
    format!("az ad sp show --id {BACKUP_MANAGEMENT_APP_ID} --query id --output tsv")
}

/// Adds the fix to a finding that did not pass: what to grant when it failed; when it is
/// unknown, what to read first, then what to grant if it turns out to be missing.
fn fix_unless_pass(f: Finding, grant: &str, to_read: &str, commands: Vec<String>) -> Finding {
    match f.outcome {
        super::Outcome::Pass => f,
        super::Outcome::Unknown => f.fix(
            format!("cvm-backup could not confirm the grant: {to_read}, or pass --backup-principal-id when Graph was unreadable. If the grant is missing: {grant}"),
            commands,
        ),
        _ => f.fix(grant, commands),
    }
}

fn absent() -> Finding {
    Finding::fail(
        "the Backup Management Service principal does not exist in this tenant (Microsoft Graph: not found)",
    )
}

fn principal_value(p: &Principal) -> Value {
    match p {
        Principal::Known(id) => Value::String(id.clone()),
        Principal::Absent => Value::String("absent".into()),
        Principal::Unknown(_) => Value::Null,
    }
}

/// `--object-id X` when known, else the app id form the az command accepts.
fn assignee(p: &Principal) -> String {
    match p {
        Principal::Known(id) => id.clone(),
        _ => BACKUP_MANAGEMENT_APP_ID.to_string(),
    }
}

/// The key URL's parts: host's first label, whether it is a Managed HSM, and the key name.
struct KeyRef {
    store: String,
    hsm: bool,
    key: String,
}

fn parse_key_url(key_url: &str) -> Result<KeyRef, String> {
    let u = Url::parse(key_url).map_err(|e| format!("key URL {key_url:?} is not a URL: {e}"))?;
    let host = u
        .host_str()
        .ok_or_else(|| format!("key URL {key_url:?} has no host"))?
        .to_ascii_lowercase();
    let mut labels = host.split('.');
    let store = labels.next().unwrap_or_default().to_string();
    let rest: Vec<&str> = labels.collect();
    let hsm = rest.first().is_some_and(|l| *l == "managedhsm");
    let vault = rest.first().is_some_and(|l| *l == "vault");
    if !hsm && !vault {
        return Err(format!(
            "key URL host {host} is neither a Key Vault (*.vault.*) nor a Managed HSM (*.managedhsm.*)"
        ));
    }
    let mut segs = u
        .path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty());
    let key = match (segs.next(), segs.next()) {
        (Some(k), Some(name)) if k.eq_ignore_ascii_case("keys") => name.to_string(),
        _ => return Err(format!("key URL {key_url:?} has no /keys/<name> path")),
    };
    Ok(KeyRef { store, hsm, key })
}

impl Rule for KeyAccess {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    /// The VM's confidential DES; the VM's subscription and resource group only stand in
    /// for a Key Vault's in a fix when its id lacks them.
    fn shared_by(&self, cx: &Cx, vm: &Vm) -> Option<String> {
        let des = super::des_disk_limit::cvm_des_key(cx, vm);
        Some(format!(
            "{des}\n{}\n{}",
            vm.subscription_id, vm.resource_group
        ))
    }

    fn check_vm(&self, cx: &Cx, vm: &Vm) -> Finding {
        let des_id = match super::des_disk_limit::cvm_des(cx, vm) {
            Avail::Known(Some(des)) => des,
            Avail::Known(None) => {
                return Finding::pass("platform-managed key: no customer-managed key to grant")
                    .with("key_type", "platform-managed")
            }
            Avail::Unknown(r) => {
                return Finding::unknown(format!(
                    "could not tell which disk encryption set holds the VM's key: {r}"
                ))
                .with_opt("os_disk_id", vm.os_disk_id.as_deref())
            }
        };
        let des = match cx.estate.des(&des_id) {
            Lookup::Found(d) => d,
            Lookup::NotFound => {
                return Finding::unknown(format!(
                    "the disk encryption set {des_id} was not found in its subscription"
                ))
                .with("disk_encryption_set", des_id)
            }
            Lookup::Unknown(r) => {
                return Finding::unknown(format!(
                    "could not read the disk encryption set {des_id}: {r}"
                ))
                .with("disk_encryption_set", des_id)
            }
        };
        let f = self.check_des(cx, vm, des);
        f.with("disk_encryption_set", des.id.clone())
            .with_opt("des_encryption_type", des.encryption_type.clone())
            .with("backup_principal", principal_value(&cx.estate.principal))
    }
}

impl KeyAccess {
    fn check_des(&self, cx: &Cx, vm: &Vm, des: &Des) -> Finding {
        let Some(key_url) = des.key_url.as_deref() else {
            return Finding::unknown("the disk encryption set has no activeKey.keyUrl");
        };
        let key = match parse_key_url(key_url) {
            Ok(k) => k,
            Err(e) => return Finding::unknown(e).with("key_url", key_url),
        };
        let f = if key.hsm {
            match cx.estate.hsm_by_name(&key.store) {
                Lookup::Found(h) => self.check_hsm(cx, h, &key),
                Lookup::NotFound => {
                    Finding::unknown(format!("Managed HSM {} was not found", key.store))
                }
                Lookup::Unknown(r) => {
                    Finding::unknown(format!("could not find Managed HSM {}: {r}", key.store))
                }
            }
        } else {
            let lookup = match des.source_vault_id.as_deref() {
                Some(id) => cx.estate.key_vault_by_id(id),
                None => cx.estate.key_vault_by_name(&key.store),
            };
            match lookup {
                Lookup::Found(kv) => self.check_key_vault(cx, vm, kv, &key),
                Lookup::NotFound => Finding::unknown(format!(
                    "Key Vault {} was not found in its subscription",
                    des.source_vault_id.as_deref().unwrap_or(&key.store)
                )),
                Lookup::Unknown(r) => {
                    Finding::unknown(format!("could not read Key Vault {}: {r}", key.store))
                }
            }
        };
        f.with("key_url", key_url)
    }

    fn check_key_vault(&self, cx: &Cx, vm: &Vm, kv: &KeyVault, key: &KeyRef) -> Finding {
        let principal = &cx.estate.principal;
        let f = if !kv.rbac {
            self.access_policies(vm, kv, principal)
        } else {
            let key_scope = format!("{}/keys/{}", kv.id, key.key);
            let Some(listing) = cx.estate.key_vault_role_assignments(&kv.id) else {
                return Finding::unknown(format!(
                    "the role assignments of Key Vault {} are not in the snapshot",
                    kv.name
                ))
                .with("key_vault", kv.id.clone())
                .with("permission_model", "rbac");
            };
            let applicable: Vec<&RoleAssignment> = listing
                .items
                .iter()
                .filter(|a| armid::scope_covers(&a.scope, &key_scope))
                .collect();
            let resolve =
                |a: &RoleAssignment| match cx.estate.role_definition(&a.role_definition_id) {
                    Some(Avail::Known(d)) => Avail::Known(Some(d)),
                    Some(Avail::Unknown(r)) => Avail::Unknown(r.clone()),
                    None => Avail::Unknown(format!(
                        "role definition {} is not in the snapshot",
                        a.role_definition_id
                    )),
                };
            let (f, shown) = decide_rbac(
                principal,
                &applicable,
                listing.missing.as_ref(),
                &resolve,
                &KV_ACTIONS,
                &format!("key {} of Key Vault {}", key.key, kv.name),
            );
            let f = fix_unless_pass(
                f,
                "Assign the Backup Management Service a role with keys/read and keys/backup/action on the key (Key Vault Crypto User is the smallest built-in role that has both).",
                "the identity running cvm-backup needs Microsoft.Authorization/roleAssignments/read and roleDefinitions/read on the vault (Reader includes both)",
                vec![format!(
                        "az role assignment create --role {} {} --scope {}",
                        sh("Key Vault Crypto User"),
                        assignee_args(principal),
                        sh(&key_scope)
                    )],
            );
            f.with("permission_model", "rbac")
                .with("role_assignments", shown)
        };
        f.with("key_vault", kv.id.clone())
    }

    fn access_policies(&self, vm: &Vm, kv: &KeyVault, principal: &Principal) -> Finding {
        let Some(policies) = kv.access_policies.as_deref() else {
            return Finding::unknown(format!(
                "the payload of Key Vault {} carries no accessPolicies, so who may use the key is unknown (read it through ARM: --source arm)",
                kv.name
            ))
            .with("permission_model", "access-policy");
        };
        let grants_all = |perms: &[String]| {
            let has = |p: &str| {
                perms
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(p) || x.eq_ignore_ascii_case("all"))
            };
            KV_PERMISSIONS.iter().all(|p| has(p))
        };
        let fix_cmd = || {
            let who = match principal {
                Principal::Known(id) => format!("--object-id {}", sh(id)),
                _ => format!("--spn {BACKUP_MANAGEMENT_APP_ID}"),
            };
            vec![format!(
                "az keyvault set-policy --name {} --resource-group {} --subscription {} {who} --key-permissions get list backup",
                sh(&kv.name),
                sh(armid::resource_group_of(&kv.id).unwrap_or(&vm.resource_group)),
                sh(armid::subscription_of(&kv.id).unwrap_or(&vm.subscription_id)),
            )]
        };
        let text = "Give the Backup Management Service the key permissions get, list and backup in the Key Vault's access policies (the portal does this when you enable backup there; CLI and REST do not).";
        let f = match principal {
            Principal::Absent => absent().fix(
                "Create the Backup Management Service principal in the tenant, then grant it the key permissions.",
                std::iter::once(format!("az ad sp create --id {BACKUP_MANAGEMENT_APP_ID}"))
                    .chain(fix_cmd())
                    .collect(),
            ),
            Principal::Known(oid) => {
                let perms: Vec<String> = policies
                    .iter()
                    .filter(|p| p.object_id.eq_ignore_ascii_case(oid))
                    .flat_map(|p| p.key_permissions.iter().cloned())
                    .collect();
                if grants_all(&perms) {
                    Finding::pass(format!(
                        "the Backup Management Service has key permissions get, list and backup on Key Vault {}",
                        kv.name
                    ))
                    .with("key_permissions", perms)
                } else {
                    let missing: Vec<&str> = KV_PERMISSIONS
                        .iter()
                        .copied()
                        .filter(|p| !perms.iter().any(|x| x.eq_ignore_ascii_case(p) || x.eq_ignore_ascii_case("all")))
                        .collect();
                    Finding::fail(format!(
                        "the Backup Management Service lacks key permission(s) {} on Key Vault {}",
                        missing.join(", "),
                        kv.name
                    ))
                    .with("key_permissions", perms)
                    .with("missing_permissions", missing)
                    .fix(text, fix_cmd())
                }
            }
            Principal::Unknown(reason) => {
                if policies.iter().any(|p| grants_all(&p.key_permissions)) {
                    Finding::unknown(format!(
                        "an access policy grants get, list and backup, but the Backup Management Service's object id could not be looked up ({reason}); pass --backup-principal-id"
                    ))
                    .fix(
                        "Look up the service principal's object id once and pass it with --backup-principal-id (or grant the identity running cvm-backup read access to service principals in Microsoft Graph).",
                        vec![lookup_principal()],
                    )
                } else {
                    Finding::fail(format!(
                        "no access policy on Key Vault {} grants get, list and backup to anyone",
                        kv.name
                    ))
                    .fix(text, fix_cmd())
                }
            }
        };
        f.with("permission_model", "access-policy")
    }

    fn check_hsm(&self, cx: &Cx, hsm: &Hsm, key: &KeyRef) -> Finding {
        let principal = &cx.estate.principal;
        let base = |f: Finding| {
            f.with("managed_hsm", hsm.id.clone())
                .with("permission_model", "managed-hsm-local-rbac")
        };
        let Some(uri) = hsm.hsm_uri.as_deref() else {
            return base(Finding::unknown(format!(
                "Managed HSM {} has no properties.hsmUri",
                hsm.name
            )));
        };
        if let Err(e) = crate::endpoint::check("hsmUri", uri) {
            return base(Finding::unknown(format!(
                "{e}; its role assignments were not read"
            )));
        }
        let Some(rbac) = cx.estate.hsm_rbac(&hsm.id) else {
            return base(Finding::unknown(format!(
                "the local role assignments of Managed HSM {} are not in the snapshot",
                hsm.name
            )));
        };
        let key_scope = format!("/keys/{}", key.key);
        let applicable: Vec<&RoleAssignment> = rbac
            .assignments
            .items
            .iter()
            .filter(|a| {
                let s = a.scope.trim();
                let s = if s.len() > 1 {
                    s.trim_end_matches('/')
                } else {
                    s
                };
                s == "/" || s.eq_ignore_ascii_case("/keys") || s.eq_ignore_ascii_case(&key_scope)
            })
            .collect();
        let defs: &Listing<RoleDefinition> = &rbac.definitions;
        let resolve = |a: &RoleAssignment| {
            let guid = armid::role_guid(&a.role_definition_id);
            match defs.items.iter().find(|d| d.guid == guid) {
                Some(d) => Avail::Known(Some(d)),
                None => match &defs.missing {
                    Some(r) => Avail::Unknown(r.clone()),
                    None => Avail::Known(None),
                },
            }
        };
        let (f, shown) = decide_rbac(
            principal,
            &applicable,
            rbac.assignments.missing.as_ref(),
            &resolve,
            &HSM_ACTIONS,
            &format!("key {} of Managed HSM {}", key.key, hsm.name),
        );
        let f = fix_unless_pass(
                f,
                "Grant the Backup Management Service the local RBAC role \"Managed HSM Crypto User\" on the key or on all keys (\"Managed HSM Crypto Officer\" is not enough).",
                "the identity running cvm-backup needs a Managed HSM local role that reads role assignments and definitions at / (e.g. Managed HSM Crypto Auditor)",
                vec![format!(
                    "az keyvault role assignment create --hsm-name {} --role {} --assignee {} --scope /keys",
                    sh(&hsm.name),
                    sh("Managed HSM Crypto User"),
                    sh(&assignee(principal))
                )],
            );
        base(f).with("role_assignments", shown)
    }
}

/// `az role assignment create` arguments naming the Backup Management Service.
fn assignee_args(p: &Principal) -> String {
    match p {
        Principal::Known(id) => format!(
            "--assignee-object-id {} --assignee-principal-type ServicePrincipal",
            sh(id)
        ),
        _ => format!("--assignee {BACKUP_MANAGEMENT_APP_ID}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&KeyAccess) >= 3);
    }

    use super::*;

    #[test]
    fn wildcards() {
        assert!(action_matches(
            "Microsoft.KeyVault/vaults/*",
            "Microsoft.KeyVault/vaults/keys/read"
        ));
        assert!(action_matches(
            "microsoft.keyvault/VAULTS/keys/*",
            "Microsoft.KeyVault/vaults/keys/backup/action"
        ));
        assert!(action_matches("*", "x"));
        assert!(action_matches(
            "Microsoft.KeyVault/managedHsm/keys/*/action",
            "Microsoft.KeyVault/managedHsm/keys/read/action"
        ));
        assert!(!action_matches(
            "Microsoft.KeyVault/vaults/secrets/*",
            "Microsoft.KeyVault/vaults/keys/read"
        ));
        assert!(!action_matches(
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/read/extra"
        ));
    }

    #[test]
    fn not_data_actions_subtract_within_a_role() {
        let def = RoleDefinition {
            guid: "g".into(),
            name: "custom".into(),
            permissions: vec![crate::estate::Permission {
                data_actions: vec!["Microsoft.KeyVault/vaults/keys/*".into()],
                not_data_actions: vec!["Microsoft.KeyVault/vaults/keys/backup/action".into()],
            }],
        };
        assert!(role_grants(&def, KV_ACTIONS[0]));
        assert!(!role_grants(&def, KV_ACTIONS[1]));
    }

    #[test]
    fn key_urls() {
        let k = parse_key_url("https://kv-1.vault.azure.net/keys/cvm-key/0123").unwrap();
        assert!(!k.hsm);
        assert_eq!((k.store.as_str(), k.key.as_str()), ("kv-1", "cvm-key"));
        let k = parse_key_url("https://HSM1.managedhsm.azure.net/keys/k").unwrap();
        assert!(k.hsm);
        assert_eq!(k.store, "hsm1");
        assert!(parse_key_url("https://example.com/keys/x").is_err());
        assert!(parse_key_url("https://kv.vault.azure.net/secrets/x").is_err());
        assert!(parse_key_url("nonsense").is_err());
    }
}
