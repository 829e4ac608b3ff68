//! CVMB002 vm-size-v6: the VM size is a v6 confidential size.

use super::{sh, Cx, Finding, Rule, RuleMeta, Severity};
use crate::estate::Vm;

pub struct VmSizeV6;

static META: RuleMeta = RuleMeta {
    reference: "CVMB002",
    name: "vm-size-v6",
    severity: Severity::Error,
    summary:
        "The VM size is a v6 confidential size (DCas/DCads/DCes/DCeds/ECas/ECads/ECes/ECeds v6).",
    docs: "\
Only the v6 confidential series are supported by the preview; the v5 series are not. A size \
passes when it reads `Standard_` + `DC` or `EC` + vCPUs + `as`, `ads`, `es` or `eds` + `_v6` \
(case-insensitive), e.g. `Standard_DC4as_v6`, `Standard_EC16ads_v6`, `Standard_DC2es_v6`.

A v5 confidential size (`Standard_DC4as_v5`, …) fails with \"v5 series is not supported\"; the \
fix is to resize to the v6 size of the same shape, which needs the VM deallocated. Any other size \
fails as \"not a v6 confidential size\". When the size is missing from the VM payload the rule is \
`unknown`.",
    docs_url: "https://learn.microsoft.com/azure/backup/confidential-vm-backup",
    subscription_scoped: false,
};

/// What a `vmSize` string is, for this rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeClass {
    /// A v6 confidential size; `series` like "DCasv6".
    V6 {
        series: String,
    },
    /// A v5 confidential size; `v6_equivalent` is the same shape in v6 when one exists.
    V5 {
        series: String,
        v6_equivalent: Option<String>,
    },
    Other,
}

/// Parses `Standard_(DC|EC)<n>(as|ads|es|eds|ies|ieds)(_cc)?_v<k>` case-insensitively, and the
/// confidential GPU size `Standard_NCC<n>ads_H100_v5`. Never panics, on any input.
pub fn parse_vm_size(size: &str) -> SizeClass {
    let lower = size.trim().to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("standard_") else {
        return SizeClass::Other;
    };
    if rest.starts_with("ncc") && rest.ends_with("ads_h100_v5") {
        let digits = &rest[3..rest.len() - "ads_h100_v5".len()];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return SizeClass::V5 {
                series: "NCCadsH100v5".into(),
                v6_equivalent: None,
            };
        }
        return SizeClass::Other;
    }
    let family = if rest.starts_with("dc") {
        "DC"
    } else if rest.starts_with("ec") {
        "EC"
    } else {
        return SizeClass::Other;
    };
    let rest = &rest[2..];
    let ndigits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if ndigits == 0 || ndigits > 4 {
        return SizeClass::Other;
    }
    let (vcpus, rest) = rest.split_at(ndigits);
    let Some((features, version)) = rest.split_once("_v") else {
        return SizeClass::Other;
    };
    if features.ends_with("_cc")
        || version.is_empty()
        || !version.bytes().all(|b| b.is_ascii_digit())
    {
        return SizeClass::Other;
    }
    let series = format!("{family}{features}v{version}");
    match (features, version) {
        ("as" | "ads" | "es" | "eds", "6") => SizeClass::V6 { series },
        ("as" | "ads" | "es" | "eds", "5") => SizeClass::V5 {
            series,
            v6_equivalent: Some(format!("Standard_{family}{vcpus}{features}_v6")),
        },
        ("ies" | "ieds", "5") => SizeClass::V5 {
            series,
            v6_equivalent: None,
        },
        _ => SizeClass::Other,
    }
}

impl Rule for VmSizeV6 {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    fn check_vm(&self, _cx: &Cx, vm: &Vm) -> Finding {
        let Some(size) = vm.size.as_deref() else {
            return Finding::unknown("the VM payload has no hardwareProfile.vmSize")
                .with("size", serde_json::Value::Null);
        };
        let resize = |target: &str| {
            vec![
                format!(
                    "az vm deallocate --resource-group {} --name {} --subscription {}",
                    sh(&vm.resource_group),
                    sh(&vm.name),
                    sh(&vm.subscription_id)
                ),
                format!(
                    "az vm resize --resource-group {} --name {} --size {} --subscription {}",
                    sh(&vm.resource_group),
                    sh(&vm.name),
                    sh(target),
                    sh(&vm.subscription_id)
                ),
                format!(
                    "az vm start --resource-group {} --name {} --subscription {}",
                    sh(&vm.resource_group),
                    sh(&vm.name),
                    sh(&vm.subscription_id)
                ),
            ]
        };
        match parse_vm_size(size) {
            SizeClass::V6 { series } => Finding::pass(format!("{size} is a v6 confidential size"))
                .with("size", size)
                .with("series", series),
            SizeClass::V5 {
                series,
                v6_equivalent,
            } => {
                let f = Finding::fail(format!(
                    "{size}: v5 series is not supported; resize to a v6 confidential size"
                ))
                .with("size", size)
                .with("series", series)
                .with_opt("suggested_size", v6_equivalent.clone());
                match v6_equivalent {
                    Some(t) => f.fix(
                        format!("Resize the VM to {t} (the v6 size of the same shape); the VM must be deallocated, and the size must be offered in its region."),
                        resize(&t),
                    ),
                    None => f.fix(
                        "Recreate the VM on a v6 confidential size (DCasv6, DCadsv6, DCesv6, DCedsv6, ECasv6, ECadsv6, ECesv6, ECedsv6).",
                        vec![],
                    ),
                }
            }
            SizeClass::Other => Finding::fail(format!("{size} is not a v6 confidential size"))
                .with("size", size)
                .fix(
                    "Resize to a v6 confidential size such as Standard_DC4as_v6 (the VM must be deallocated; a change between confidential families may require recreating the VM).",
                    resize("Standard_DC4as_v6"),
                ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&VmSizeV6) >= 3);
    }

    use super::*;

    #[test]
    fn v6_sizes() {
        for s in [
            "Standard_DC4as_v6",
            "Standard_DC96ads_v6",
            "Standard_EC16ads_v6",
            "Standard_DC2es_v6",
            "Standard_DC128eds_v6",
            "standard_ec64ES_V6",
        ] {
            assert!(matches!(parse_vm_size(s), SizeClass::V6 { .. }), "{s}");
        }
    }

    #[test]
    fn v5_sizes_suggest_v6() {
        assert_eq!(
            parse_vm_size("Standard_DC4as_v5"),
            SizeClass::V5 {
                series: "DCasv5".into(),
                v6_equivalent: Some("Standard_DC4as_v6".into())
            }
        );
        assert!(matches!(
            parse_vm_size("Standard_EC128ieds_v5"),
            SizeClass::V5 {
                v6_equivalent: None,
                ..
            }
        ));
        assert!(matches!(
            parse_vm_size("Standard_NCC40ads_H100_v5"),
            SizeClass::V5 { .. }
        ));
    }

    #[test]
    fn lookalikes_are_other() {
        for s in [
            "Standard_DC4as_cc_v5",
            "Standard_DC2s_v3",
            "Standard_DC1s_v2",
            "Standard_D4s_v5",
            "Standard_DCas_v6",
            "Standard_DC4as_v",
            "Standard_DC4as_v6x",
            "DC4as_v6",
            "",
            "Standard_",
            "Standard_DC99999as_v6",
        ] {
            assert_eq!(parse_vm_size(s), SizeClass::Other, "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse_vm_size(&s);
        }

        #[test]
        fn grammar_roundtrip(fam in "(DC|EC|dc|ec)", n in 1u32..200, feat in "(as|ads|es|eds)") {
            let s = format!("Standard_{fam}{n}{feat}_v6");
            let is_v6 = matches!(parse_vm_size(&s), SizeClass::V6 { .. });
            proptest::prop_assert!(is_v6);
        }
    }
}
