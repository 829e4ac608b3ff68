//! CVMB010 backup-policy: a protected VM uses an Enhanced (V2) policy that is not crash-consistent-only.

use super::{sh, Cx, Finding, Rule, RuleMeta, Severity};
use crate::armid;
use crate::estate::{Protection, Vm};

pub struct BackupPolicy;

static META: RuleMeta = RuleMeta {
    reference: "CVMB010",
    name: "backup-policy",
    severity: Severity::Error,
    summary:
        "A protected VM's backup policy is Enhanced (policyType V2) and not crash-consistent-only.",
    docs: "\
Confidential VMs can only be protected with an Enhanced backup policy (`policyType: V2`); the \
Standard (V1) policy does not support them. Multi-disk crash-consistent backup \
(`snapshotConsistencyType: OnlyCrashConsistent`) is not supported for CVMs either.

The rule looks at the protected item of the VM in the Recovery Services vaults of its \
subscription and at the policy it names. Not protected: `skipped` (choose an Enhanced policy \
when you enable protection). When the protected items or the policies could not be read: \
`unknown`.

Fix: create an Enhanced policy (`az backup policy create --policy-sub-type Enhanced ...`) and \
move the item to it (`az backup item set-policy ...`).",
    docs_url: "https://learn.microsoft.com/azure/backup/backup-azure-vms-enhanced-policy",
    subscription_scoped: false,
};

impl Rule for BackupPolicy {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    fn check_vm(&self, cx: &Cx, vm: &Vm) -> Finding {
        let (vault_key, vault, item) = match cx.estate.protection(vm) {
            Protection::NotProtected => {
                return Finding::skipped(
                    "the VM is not protected yet; choose an Enhanced (V2) policy when you enable backup",
                )
            }
            Protection::Unknown(r) => {
                return Finding::unknown(format!("could not tell whether the VM is protected: {r}"))
            }
            Protection::Protected {
                vault_key,
                vault,
                item,
            } => (vault_key, vault, item),
        };
        let vault_name =
            vault.map_or_else(|| armid::name_of(vault_key).to_string(), |v| v.name.clone());
        let vault_rg = vault.map_or_else(
            || {
                armid::resource_group_of(vault_key)
                    .unwrap_or_default()
                    .to_string()
            },
            |v| v.resource_group.clone(),
        );
        let base = |f: Finding| {
            f.with("vault", vault_key.to_string())
                .with_opt("policy_id", item.policy_id.clone())
                .with_opt("policy_name", item.policy_name.clone())
        };
        let Some(detail) = cx.estate.vault_detail(vault_key) else {
            return base(Finding::unknown(
                "the vault's policies are not in the snapshot",
            ));
        };
        let policy = detail.policies.items.iter().find(|p| {
            item.policy_id
                .as_deref()
                .is_some_and(|id| armid::same_id(id, &p.id))
                || item
                    .policy_name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&p.name))
        });
        let Some(p) = policy else {
            let why = match &detail.policies.missing {
                Some(r) => format!("the vault's policies could not be read: {r}"),
                None => format!(
                    "policy {} is not among the vault's AzureIaasVM policies",
                    item.policy_name
                        .as_deref()
                        .or(item.policy_id.as_deref())
                        .unwrap_or("(unnamed)")
                ),
            };
            return base(Finding::unknown(why));
        };
        let v2 = p
            .policy_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("V2"));
        let crash_only = p
            .snapshot_consistency
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("OnlyCrashConsistent"));
        let f = if v2 && !crash_only {
            Finding::pass(format!("policy {} is Enhanced (V2)", p.name))
        } else {
            let msg = if !v2 {
                format!(
                    "policy {} is {} (Standard); confidential VMs need an Enhanced (V2) policy",
                    p.name,
                    p.policy_type.as_deref().unwrap_or("of no policyType")
                )
            } else {
                format!(
                    "policy {} takes only crash-consistent snapshots (OnlyCrashConsistent), which is not supported for confidential VMs",
                    p.name
                )
            };
            let new_policy = "EnhancedPolicy-CVM";
            Finding::fail(msg).fix(
                "Create an Enhanced policy with the default (application-consistent) snapshot consistency and move the VM to it. Export an existing Enhanced policy as a template with `az backup policy show`.",
                vec![
                    format!(
                        "az backup policy create --resource-group {} --vault-name {} --name {} --backup-management-type AzureIaasVM --policy-sub-type Enhanced --policy @enhanced-policy.json --subscription {}",
                        sh(&vault_rg), sh(&vault_name), new_policy, sh(&vm.subscription_id)
                    ),
                    format!(
                        "az backup item set-policy --resource-group {} --vault-name {} --container-name {} --name {} --backup-management-type AzureIaasVM --policy-name {} --subscription {}",
                        sh(&vault_rg), sh(&vault_name), sh(&vm.name), sh(&vm.name), new_policy, sh(&vm.subscription_id)
                    ),
                ],
            )
        };
        base(f)
            .with_opt("policy_type", p.policy_type.clone())
            .with_opt("snapshot_consistency_type", p.snapshot_consistency.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&BackupPolicy) >= 3);
    }
}
