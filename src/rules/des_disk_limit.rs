//! CVMB009 des-disk-limit: the VM's confidential DES encrypts fewer disks and snapshots than the limit.

use super::{sh, Cx, Finding, Rule, RuleMeta, Severity};
use crate::estate::{Avail, Lookup, Vm};

pub struct DesDiskLimit;

static META: RuleMeta = RuleMeta {
    reference: "CVMB009",
    name: "des-disk-limit",
    severity: Severity::Warning,
    summary: "The VM's confidential disk encryption set encrypts fewer disks and snapshots than the ruleset's limit.",
    docs: "\
Known issue of the preview: when many disks with restore points share one disk encryption set \
(DES), key rotation may fail or be slow. Snapshots taken outside Azure Backup on the same DES lower \
the threshold. The ruleset holds the limit (`2026-01`: 40, `2026-07`: 6000); \
`[limits] des_disk_limit` overrides it.

The rule counts the managed disks and snapshots whose `encryption.diskEncryptionSetId` or \
`securityProfile.secureVMDiskEncryptionSetId` is the VM's confidential DES, across every \
subscription read. It passes below the limit. A VM with no confidential DES (platform-managed \
keys) is `skipped`; one whose OS disk could not be read to tell is `unknown`. When a disk or \
snapshot list could not be read the count is only a lower bound: the rule fails if that bound \
already reaches the limit, else it is `unknown`.

Fix: keep disks per DES minimal, e.g. create another confidential DES for new VMs, and delete \
snapshots of those disks that are no longer needed.",
    docs_url: "https://learn.microsoft.com/azure/backup/confidential-vm-backup",
    subscription_scoped: false,
};

/// The VM's confidential DES: from the VM payload, else from its OS disk resource. `Known(None)`
/// only when the VM has no confidential DES (platform-managed key); `Unknown` when the disk that
/// would name one could not be read.
pub(crate) fn cvm_des(cx: &Cx, vm: &Vm) -> Avail<Option<String>> {
    if let Some(des) = &vm.cvm_des_id {
        return Avail::Known(Some(des.clone()));
    }
    let Some(disk) = vm.os_disk_id.as_deref() else {
        return Avail::Known(None);
    };
    match cx.estate.disk(disk) {
        Lookup::Found(d) => Avail::Known(d.secure_des_id.clone()),
        Lookup::NotFound => Avail::Unknown(format!(
            "the OS disk {disk} is not in its subscription's disk list"
        )),
        Lookup::Unknown(r) => Avail::Unknown(format!("could not read the OS disk {disk}: {r}")),
    }
}

/// The part of a shared-finding key that stands for [`cvm_des`].
pub(crate) fn cvm_des_key(cx: &Cx, vm: &Vm) -> String {
    match cvm_des(cx, vm) {
        Avail::Known(Some(des)) => format!("des {des}"),
        Avail::Known(None) => String::from("platform-managed"),
        Avail::Unknown(r) => format!("unknown: {r}"),
    }
}

impl Rule for DesDiskLimit {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    /// The VM's confidential DES, subscription and region (the fix names the last two).
    fn shared_by(&self, cx: &Cx, vm: &Vm) -> Option<String> {
        let des = cvm_des_key(cx, vm);
        Some(format!("{des}\n{}\n{}", vm.subscription_id, vm.location))
    }

    fn check_vm(&self, cx: &Cx, vm: &Vm) -> Finding {
        let des = match cvm_des(cx, vm) {
            Avail::Known(Some(des)) => des,
            Avail::Known(None) => {
                return Finding::skipped(
                    "no confidential disk encryption set (platform-managed key)",
                )
            }
            Avail::Unknown(r) => {
                return Finding::unknown(format!(
                    "could not tell which disk encryption set the VM uses: {r}"
                ))
            }
        };
        let limit = cx.settings.des_disk_limit;
        let (count, missing) = cx.estate.des_usage(&des);
        let count_u = count as u64;
        let f = if count_u >= limit {
            let des_name = crate::armid::name_of(&des);
            let rg = crate::armid::resource_group_of(&des).unwrap_or_default();
            Finding::fail(format!(
                "disk encryption set {des_name} encrypts {count}{} disks and snapshots, at or over the limit of {limit}: key rotation may fail or be slow",
                if missing.is_some() { " or more" } else { "" }
            ))
            .fix(
                "Spread confidential disks over more disk encryption sets (new VMs on a new confidential DES) and delete snapshots on this DES that are no longer needed.",
                vec![
                    format!(
                        "az snapshot list --subscription {} --query \"[?encryption.diskEncryptionSetId=='{des}'].id\" --output tsv",
                        sh(&vm.subscription_id)
                    ),
                    format!(
                        "az disk-encryption-set create --resource-group {} --name {} --location {} --encryption-type ConfidentialVmEncryptedWithCustomerKey --key-url <key-url> --source-vault <key-vault-id> --subscription {}",
                        sh(rg),
                        sh(&format!("{des_name}-2")),
                        sh(&vm.location),
                        sh(&vm.subscription_id)
                    ),
                ],
            )
        } else if let Some(r) = missing {
            Finding::unknown(format!(
                "at least {count} disks and snapshots use the disk encryption set, but a disk or snapshot list could not be read: {r}"
            ))
        } else {
            Finding::pass(format!(
                "{count} disks and snapshots use the disk encryption set (limit: fewer than {limit})"
            ))
        };
        f.with("disk_encryption_set", des)
            .with("disks_and_snapshots", count)
            .with("limit", limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&DesDiskLimit) >= 3);
    }
}
