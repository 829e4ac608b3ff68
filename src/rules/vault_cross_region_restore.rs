//! CVMB011 vault-cross-region-restore: the vault has cross-region restore off.

use super::{Cx, Finding, Rule, RuleMeta, Severity};
use crate::estate::{Avail, Protection, Vm};

pub struct VaultCrossRegionRestore;

static META: RuleMeta = RuleMeta {
    reference: "CVMB011",
    name: "vault-cross-region-restore",
    severity: Severity::Warning,
    summary: "The protecting vault (or one vault in the VM's region) has cross-region restore off.",
    docs: "\
Cross-region restore (CRR) is not supported for confidential VMs: the v6 sizes are not generally \
available in the paired regions. What happens to a CVM in a CRR-enabled vault is not documented, \
so this is a warning, not an error.

The rule looks at the protecting vault, or, for an unprotected VM, at the vaults in its region: \
it passes when at least one of them has CRR off. CRR is read from the vault's \
`properties.redundancySettings.crossRegionRestore` and from its backup storage config \
(`crossRegionRestoreFlag`); either saying enabled counts as enabled. No vault in the region: \
`skipped` (see vault-same-region). When protection or the vaults cannot be read: `unknown`.

Fix: protect CVMs with a vault that has CRR disabled (a new vault has it off by default).",
    docs_url: "https://learn.microsoft.com/azure/backup/backup-create-recovery-services-vault#set-cross-region-restore",
    subscription_scoped: false,
};

impl Rule for VaultCrossRegionRestore {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    fn shared_by(&self, cx: &Cx, vm: &Vm) -> Option<String> {
        Some(super::vault_same_region::vault_key(cx, vm))
    }

    fn check_vm(&self, cx: &Cx, vm: &Vm) -> Finding {
        let new_vault = || super::vault_same_region::create_vault(vm);
        match cx.estate.protection(vm) {
            Protection::Unknown(r) => {
                Finding::unknown(format!("could not tell whether the VM is protected: {r}"))
            }
            Protection::Protected {
                vault, vault_key, ..
            } => {
                let Some(v) = vault else {
                    return Finding::unknown(format!(
                        "the protecting vault {vault_key} is not in the vault list"
                    ));
                };
                let f = match cx.estate.vault_crr(v) {
                    Avail::Known(false) => Finding::pass(format!(
                        "the protecting vault {} has cross-region restore off",
                        v.name
                    )),
                    Avail::Known(true) => Finding::fail(format!(
                        "the protecting vault {} has cross-region restore enabled, which confidential VMs do not support",
                        v.name
                    ))
                    .fix(
                        "Protect the VM with a vault whose cross-region restore is off (a new vault has it off by default); CRR cannot be turned off on a vault once enabled.",
                        new_vault(),
                    ),
                    Avail::Unknown(r) => Finding::unknown(format!(
                        "could not read cross-region restore of vault {}: {r}",
                        v.name
                    )),
                };
                f.with("vault", v.id.clone())
            }
            Protection::NotProtected => {
                let Some(sub) = cx.estate.subscription(&vm.subscription_id) else {
                    return Finding::unknown("the subscription was not read");
                };
                let in_region = sub.vaults_in(&vm.location);
                if in_region.is_empty() {
                    return match &sub.vaults.missing {
                        Some(r) => Finding::unknown(format!("could not read the vaults: {r}")),
                        None => Finding::skipped(format!(
                            "no vault in {} (see vault-same-region)",
                            vm.location
                        )),
                    };
                }
                let mut states = serde_json::Map::new();
                let mut off = Vec::new();
                let mut unknown = Vec::new();
                for v in &in_region {
                    match cx.estate.vault_crr(v) {
                        Avail::Known(b) => {
                            states.insert(v.id.clone(), b.into());
                            if !b {
                                off.push(v.name.clone());
                            }
                        }
                        Avail::Unknown(r) => {
                            states.insert(v.id.clone(), serde_json::Value::Null);
                            unknown.push(r);
                        }
                    }
                }
                let f = if !off.is_empty() {
                    Finding::pass(format!(
                        "vault(s) in {} with cross-region restore off: {}",
                        vm.location,
                        off.join(", ")
                    ))
                } else if !unknown.is_empty() {
                    Finding::unknown(format!(
                        "could not read cross-region restore: {}",
                        unknown.join("; ")
                    ))
                } else {
                    Finding::fail(format!(
                        "every vault in {} has cross-region restore enabled, which confidential VMs do not support",
                        vm.location
                    ))
                    .fix(
                        format!(
                            "Create a vault in {} with cross-region restore off (the default) for the VM; CRR cannot be turned off on a vault once enabled.",
                            vm.location
                        ),
                        new_vault(),
                    )
                };
                f.with("cross_region_restore", states)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&VaultCrossRegionRestore) >= 3);
    }
}
