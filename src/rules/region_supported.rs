//! CVMB003 region-supported: the VM's region is in the ruleset's list.

use super::{Cx, Finding, Rule, RuleMeta, Severity};
use crate::estate::Vm;

pub struct RegionSupported;

static META: RuleMeta = RuleMeta {
    reference: "CVMB003",
    name: "region-supported",
    severity: Severity::Error,
    summary: "The VM's region is one where the preview supports CVM backup.",
    docs: "\
The preview supports confidential VM backup only in some regions. The list is data in the \
ruleset (`2026-01`: uaenorth, koreacentral; `2026-07`: nine regions) and can be replaced with \
`[limits] regions` in cvm-backup.toml. Locations are compared lower-cased with spaces removed, so \
`UAE North` and `uaenorth` are the same region.

A VM cannot be moved to another region in place: recreate it (or restore a copy) in a supported \
region, or wait for the support matrix to grow and pin the newer ruleset with `--ruleset`.",
    docs_url: "https://learn.microsoft.com/azure/backup/confidential-vm-backup",
    subscription_scoped: false,
};

impl Rule for RegionSupported {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    /// Only the VM's region matters.
    fn shared_by(&self, _cx: &Cx, vm: &Vm) -> Option<String> {
        Some(vm.location.clone())
    }

    fn check_vm(&self, cx: &Cx, vm: &Vm) -> Finding {
        let regions = &cx.settings.regions;
        let supported = regions
            .iter()
            .any(|r| crate::armid::norm_location(r) == vm.location);
        let f = if supported {
            Finding::pass(format!("region {} is supported", vm.location))
        } else {
            Finding::fail(format!(
                "region {} is not supported by the preview (ruleset {}: {})",
                vm.location,
                cx.settings.ruleset_name,
                regions.join(", ")
            ))
            .fix(
                format!(
                    "Recreate the VM in a supported region ({}), or check whether a newer ruleset \
                     supports {} (`cvm-backup rules --ruleset 2026-07`).",
                    regions.join(", "),
                    vm.location
                ),
                vec![format!(
                    "az vm list-skus --location {} --size Standard_DC --output table",
                    super::sh(regions.first().map(String::as_str).unwrap_or("uaenorth"))
                )],
            )
        };
        f.with("location", vm.location.clone())
            .with("supported_regions", regions.clone())
            .with("ruleset", cx.settings.ruleset_name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&RegionSupported) >= 3);
    }
}
