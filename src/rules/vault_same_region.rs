//! CVMB007 vault-same-region: a Recovery Services vault exists in the VM's region (and the
//! protecting vault, if any, is there).

use super::{sh, Cx, Finding, Rule, RuleMeta, Severity};
use crate::estate::{Protection, Vm};

pub struct VaultSameRegion;

static META: RuleMeta = RuleMeta {
    reference: "CVMB007",
    name: "vault-same-region",
    severity: Severity::Error,
    summary: "The VM's subscription has a Recovery Services vault in the VM's region (and the protecting vault is there).",
    docs: "\
Azure Backup protects a VM only into a Recovery Services vault of the same region. The rule \
passes when the VM's subscription has a vault whose location equals the VM's (lower-cased, spaces \
removed); when the VM is already protected, the protecting vault must be that region's.

A vault found in the region passes even when the vault list was only partly readable (the vault \
exists); the absence of a vault is only trusted when the list was read completely, else the rule \
is `unknown`.

Fix: create a vault in the VM's region, e.g. \
`az backup vault create --resource-group <rg> --name <vault> --location <region>`.",
    docs_url: "https://learn.microsoft.com/azure/backup/backup-create-recovery-services-vault",
    subscription_scoped: false,
};

pub(crate) fn create_vault(vm: &Vm) -> Vec<String> {
    vec![format!(
        "az backup vault create --resource-group {} --name {} --location {} --subscription {}",
        sh(&vm.resource_group),
        sh(&format!("rsv-cvm-{}", vm.location)),
        sh(&vm.location),
        sh(&vm.subscription_id)
    )]
}

/// What the vault rules' findings depend on: the VM's subscription, region and resource group
/// (named in the fix) and how it is protected (by which vault, not at all, or unknown why).
pub(crate) fn vault_key(cx: &Cx, vm: &Vm) -> String {
    let protection = match cx.estate.protection(vm) {
        Protection::Protected { vault_key, .. } => format!("protected by {vault_key}"),
        Protection::NotProtected => String::from("not protected"),
        Protection::Unknown(r) => format!("unknown: {r}"),
    };
    format!(
        "{}\n{}\n{}\n{protection}",
        vm.subscription_id, vm.location, vm.resource_group
    )
}

impl Rule for VaultSameRegion {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    fn shared_by(&self, cx: &Cx, vm: &Vm) -> Option<String> {
        Some(vault_key(cx, vm))
    }

    fn check_vm(&self, cx: &Cx, vm: &Vm) -> Finding {
        let Some(sub) = cx.estate.subscription(&vm.subscription_id) else {
            return Finding::unknown(format!("subscription {} was not read", vm.subscription_id));
        };
        let in_region = sub.vaults_in(&vm.location);
        let names: Vec<String> = in_region.iter().map(|v| v.id.clone()).collect();
        let no_vault = || {
            Finding::fail(format!(
                "no Recovery Services vault in {} in subscription {}",
                vm.location, vm.subscription_id
            ))
            .fix(
                format!(
                    "Create a Recovery Services vault in {} (cross-region restore stays off by default, as CVM backup needs).",
                    vm.location
                ),
                create_vault(vm),
            )
        };
        let f = match cx.estate.protection(vm) {
            Protection::Protected { vault, vault_key, .. } => match vault {
                Some(v) if v.location == vm.location => {
                    Finding::pass(format!("protected by vault {} in {}", v.name, v.location))
                        .with("protecting_vault", v.id.clone())
                }
                Some(v) => Finding::fail(format!(
                    "protected by vault {} in {}, but the VM is in {}",
                    v.name, v.location, vm.location
                ))
                .with("protecting_vault", v.id.clone())
                .with("protecting_vault_location", v.location.clone())
                .fix(
                    "Stop protection in the other region's vault and protect the VM with a vault in its own region.",
                    create_vault(vm),
                ),
                None => Finding::unknown(format!(
                    "the VM is protected by vault {vault_key}, whose location could not be read"
                ))
                .with("protecting_vault", vault_key.to_string()),
            },
            Protection::NotProtected => {
                if !in_region.is_empty() {
                    Finding::pass(format!(
                        "{} vault(s) in {}: {}",
                        in_region.len(),
                        vm.location,
                        in_region
                            .iter()
                            .map(|v| v.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                } else {
                    no_vault()
                }
            }
            Protection::Unknown(reason) => {
                let all_here = sub.vaults.is_complete()
                    && sub.vaults.items.iter().all(|v| v.location == vm.location);
                if !in_region.is_empty() && all_here {
                    // Whatever vault protects the VM, it is in the VM's region.
                    Finding::pass(format!(
                        "every vault of the subscription is in {}",
                        vm.location
                    ))
                } else if in_region.is_empty() && sub.vaults.is_complete() {
                    no_vault()
                } else if in_region.is_empty() {
                    Finding::unknown(format!(
                        "could not read the vaults of subscription {}: {reason}",
                        vm.subscription_id
                    ))
                } else {
                    Finding::unknown(format!(
                        "a vault exists in {}, but whether the VM is protected by a vault elsewhere could not be read: {reason}",
                        vm.location
                    ))
                }
            }
        };
        f.with("location", vm.location.clone())
            .with("vaults_in_region", names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&VaultSameRegion) >= 3);
    }
}
