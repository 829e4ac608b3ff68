//! CVMB001 confidential-vm: the VM is a confidential VM.

use super::{Cx, Finding, Rule, RuleMeta, Severity};
use crate::estate::Vm;

pub struct ConfidentialVm;

static META: RuleMeta = RuleMeta {
    reference: "CVMB001",
    name: "confidential-vm",
    severity: Severity::Precondition,
    summary: "The VM is a confidential VM (securityType ConfidentialVM).",
    docs: "\
Azure Backup for confidential VMs applies only to VMs whose \
`properties.securityProfile.securityType` is `ConfidentialVM`. Whether a VM is confidential is \
decided from that field alone, never from the size name: SGX sizes (DCsv2/DCsv3) and \
confidential-container hosts (`_cc_` sizes) carry `DC` in their name but are not CVMs.

When this precondition fails the VM's verdict is `not_applicable` and no other rule is reported \
for it. Nothing needs fixing: ordinary and Trusted Launch VMs are backed up with the standard \
Azure VM backup.",
    docs_url: "https://learn.microsoft.com/azure/confidential-computing/confidential-vm-overview",
    subscription_scoped: false,
};

impl Rule for ConfidentialVm {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    fn check_vm(&self, _cx: &Cx, vm: &Vm) -> Finding {
        match vm.security_type.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("ConfidentialVM") => {
                Finding::pass("the VM is a confidential VM").with("security_type", t)
            }
            Some(t) => Finding::fail(format!(
                "not a confidential VM (securityType {t}); the CVM backup rules do not apply"
            ))
            .with("security_type", t),
            None => Finding::fail(
                "not a confidential VM (no securityType); the CVM backup rules do not apply",
            )
            .with("security_type", serde_json::Value::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&ConfidentialVm) >= 3);
    }

    use super::*;
    use crate::rules::testutil::*;
    use crate::rules::Outcome;

    #[test]
    fn case_insensitive_security_type() {
        let e =
            estate_with_vm(cvm("Standard_DC4as_v6", "uaenorth").security_type("confidentialvm"));
        assert_eq!(run(&ConfidentialVm, &e).outcome, Outcome::Pass);
        let e = estate_with_vm(cvm("Standard_DC4as_v6", "uaenorth").security_type("TrustedLaunch"));
        assert_eq!(run(&ConfidentialVm, &e).outcome, Outcome::Fail);
        let e = estate_with_vm(cvm("Standard_DC2s_v3", "uaenorth").no_security_profile());
        assert_eq!(run(&ConfidentialVm, &e).outcome, Outcome::Fail);
    }
}
