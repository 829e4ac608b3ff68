//! CVMB006 os-disk-encryption: the OS disk uses confidential OS disk encryption.

use super::{sh, Cx, Finding, Rule, RuleMeta, Severity};
use crate::estate::{Lookup, Vm};

pub struct OsDiskEncryption;

static META: RuleMeta = RuleMeta {
    reference: "CVMB006",
    name: "os-disk-encryption",
    severity: Severity::Error,
    summary: "The OS disk uses confidential OS disk encryption (securityEncryptionType DiskWithVMGuestState).",
    docs: "\
The preview backs up only confidential VMs with OS disk encryption: \
`storageProfile.osDisk.managedDisk.securityProfile.securityEncryptionType` must be \
`DiskWithVMGuestState`. `VMGuestStateOnly` encrypts only the VM guest state blob, and \
`NonPersistedTPM` (Intel TDX) keeps no persisted state; both fail.

When the VM payload lacks the field, the OS disk resource is consulted: a disk \
`securityProfile.securityType` of `ConfidentialVM_DiskEncryptedWithPlatformKey` or \
`ConfidentialVM_DiskEncryptedWithCustomerKey` passes. If neither can be read the rule is `unknown`.

The encryption type is fixed when the VM is created: recreate the VM (or restore its disks to a new \
VM) with `--os-disk-security-encryption-type DiskWithVMGuestState`.",
    docs_url: "https://learn.microsoft.com/azure/confidential-computing/confidential-vm-overview#confidential-os-disk-encryption",
    subscription_scoped: false,
};

fn recreate(vm: &Vm) -> Finding {
    Finding::fail("").fix(
        "The OS disk encryption type cannot be changed in place. Recreate the VM with confidential OS disk encryption (DiskWithVMGuestState), keeping the size and image.",
        vec![format!(
            "az vm create --resource-group {} --name {} --location {} --size {} --security-type ConfidentialVM --os-disk-security-encryption-type DiskWithVMGuestState --enable-secure-boot true --enable-vtpm true --image <image> --subscription {}",
            sh(&vm.resource_group),
            sh(&format!("{}-v2", vm.name)),
            sh(&vm.location),
            sh(vm.size.as_deref().unwrap_or("Standard_DC4as_v6")),
            sh(&vm.subscription_id)
        )],
    )
}

impl Rule for OsDiskEncryption {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    fn check_vm(&self, cx: &Cx, vm: &Vm) -> Finding {
        if let Some(t) = vm.os_encryption_type.as_deref() {
            let base = if t.eq_ignore_ascii_case("DiskWithVMGuestState") {
                return Finding::pass("the OS disk is encrypted (DiskWithVMGuestState)")
                    .with("security_encryption_type", t);
            } else if t.eq_ignore_ascii_case("VMGuestStateOnly") {
                "only the VM guest state is encrypted (VMGuestStateOnly); backup needs OS disk encryption (DiskWithVMGuestState)".to_string()
            } else if t.eq_ignore_ascii_case("NonPersistedTPM") {
                "the VM has no persisted state (NonPersistedTPM); backup needs OS disk encryption (DiskWithVMGuestState)".to_string()
            } else {
                format!("securityEncryptionType {t} is not DiskWithVMGuestState")
            };
            let mut f = recreate(vm);
            f.message = base.into();
            return f.with("security_encryption_type", t);
        }
        // Fall back to the disk resource.
        let Some(disk_id) = vm.os_disk_id.as_deref() else {
            return Finding::unknown(
                "the VM payload has neither securityEncryptionType nor an OS disk id",
            )
            .with("security_encryption_type", serde_json::Value::Null);
        };
        match cx.estate.disk(disk_id) {
            Lookup::Found(d) => match d.security_type.as_deref() {
                Some(t)
                    if t.to_ascii_lowercase()
                        .starts_with("confidentialvm_diskencrypted") =>
                {
                    Finding::pass(format!("the OS disk is encrypted ({t})"))
                        .with("disk_security_type", t)
                        .with("os_disk_id", disk_id)
                }
                Some(t) => {
                    let mut f = recreate(vm);
                    f.message = format!(
                        "the OS disk's securityType is {t}: the OS disk is not confidentially encrypted"
                    )
                    .into();
                    f.with("disk_security_type", t).with("os_disk_id", disk_id)
                }
                None => Finding::unknown(
                    "neither the VM nor its OS disk says how the OS disk is encrypted",
                )
                .with("os_disk_id", disk_id),
            },
            Lookup::NotFound => Finding::unknown(format!(
                "the VM has no securityEncryptionType and its OS disk {disk_id} was not found"
            ))
            .with("os_disk_id", disk_id),
            Lookup::Unknown(r) => Finding::unknown(format!(
                "the VM has no securityEncryptionType and its OS disk could not be read: {r}"
            ))
            .with("os_disk_id", disk_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&OsDiskEncryption) >= 3);
    }
}
