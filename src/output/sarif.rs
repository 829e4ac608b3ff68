//! SARIF 2.1.0 for code-scanning tools (GitHub code scanning, Azure DevOps SARIF viewers).
//!
//! - `tool.driver.rules`: one reporting descriptor per CVMB ref, in ref order, with the summary
//!   (`shortDescription`), the first paragraph of the rule's docs (`fullDescription`), the whole
//!   docs (`help`) and the docs link (`helpUri`); `defaultConfiguration.level` from the rule's
//!   severity (precondition: `note`).
//! - `results`: one per VM × rule whose outcome is `fail` or `unknown` (waived, skipped and passed
//!   results, and the failed precondition of a VM that is not confidential, are not problems).
//!   `level`: see [`super::problem_level`] (fail: its effective severity; unknown: one step lower).
//!   `properties.outcome` says whether it failed or could not be decided.
//! - Locations. There is no file: the VM is the location. Each result has one location whose
//!   `logicalLocations[0].fullyQualifiedName` is the VM's ARM id (`kind: "resource"`). GitHub code
//!   scanning rejects results without a location that has a `physicalLocation` with an
//!   `artifactLocation.uri` (cargo-deny #820), so the location also has a `physicalLocation`
//!   whose `uri` is the ARM id without its leading slash (a relative URI reference, percent-encoded
//!   where needed, e.g. `subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<vm>`)
//!   and `region.startLine` 1. No such file exists in the repository; GitHub shows the alert with
//!   that path and no code snippet. `partialFingerprints` (`cvmBackup/v1` = ref + lower-cased VM id)
//!   keeps one alert per VM × rule across runs.
//! - Read errors and unreadable VM lists are `toolExecutionNotifications` of the invocation.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{problem_level, Level};
use crate::report::{Report, RuleResult, VmReport};
use crate::rules::{self, Outcome, RuleMeta, Severity};

pub const SCHEMA_URI: &str = "https://json.schemastore.org/sarif-2.1.0.json";
const INFORMATION_URI: &str = "https://learn.microsoft.com/azure/backup/confidential-vm-backup";

#[derive(Serialize)]
struct Log {
    #[serde(rename = "$schema")]
    schema: &'static str,
    version: &'static str,
    runs: Vec<Run>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Run {
    tool: Tool,
    invocations: Vec<Invocation>,
    results: Vec<SarifResult>,
    properties: RunProperties,
}

#[derive(Serialize)]
struct Tool {
    driver: Driver,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Driver {
    name: &'static str,
    version: &'static str,
    semantic_version: &'static str,
    information_uri: &'static str,
    rules: Vec<Descriptor>,
}

#[derive(Serialize)]
struct Text {
    text: String,
}

#[derive(Serialize)]
struct MultiText {
    text: String,
    markdown: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    id: &'static str,
    name: &'static str,
    short_description: Text,
    full_description: Text,
    help: MultiText,
    help_uri: &'static str,
    default_configuration: Configuration,
    properties: DescriptorProperties,
}

#[derive(Serialize)]
struct Configuration {
    level: &'static str,
}

#[derive(Serialize)]
struct DescriptorProperties {
    tags: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult {
    rule_id: &'static str,
    rule_index: usize,
    level: &'static str,
    message: Text,
    locations: Vec<Location>,
    partial_fingerprints: BTreeMap<&'static str, String>,
    properties: ResultProperties,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    physical_location: PhysicalLocation,
    logical_locations: Vec<LogicalLocation>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PhysicalLocation {
    artifact_location: ArtifactLocation,
    region: Region,
}

#[derive(Serialize)]
struct ArtifactLocation {
    uri: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Region {
    start_line: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogicalLocation {
    name: String,
    fully_qualified_name: String,
    kind: &'static str,
}

#[derive(Serialize)]
struct ResultProperties {
    outcome: &'static str,
    severity: &'static str,
    verdict: &'static str,
    vm: String,
    subscription_id: String,
    resource_group: String,
    location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    remediation: Option<Remediation>,
}

#[derive(Serialize)]
struct Remediation {
    text: String,
    commands: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Invocation {
    execution_successful: bool,
    tool_execution_notifications: Vec<Notification>,
}

#[derive(Serialize)]
struct Notification {
    level: &'static str,
    message: Text,
}

#[derive(Serialize)]
struct RunProperties {
    ruleset: String,
    ruleset_as_of: String,
    complete: bool,
    summary: BTreeMap<&'static str, usize>,
}

fn level_str(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warning => "warning",
        Level::Note => "note",
    }
}

fn descriptor(m: &RuleMeta) -> Descriptor {
    let first_paragraph = m.docs.split("\n\n").next().unwrap_or(m.docs).to_string();
    Descriptor {
        id: m.reference,
        name: m.name,
        short_description: Text {
            text: m.summary.to_string(),
        },
        full_description: Text {
            text: first_paragraph,
        },
        help: MultiText {
            text: format!("{}\n\n{}\n\nMore: {}", m.summary, m.docs, m.docs_url),
            markdown: format!(
                "**{} {}**: {}\n\n{}\n\n[Microsoft Learn]({})",
                m.reference, m.name, m.summary, m.docs, m.docs_url
            ),
        },
        help_uri: m.docs_url,
        default_configuration: Configuration {
            level: match m.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Precondition => "note",
            },
        },
        properties: DescriptorProperties {
            tags: vec!["azure", "backup", "confidential-vm", m.severity.as_str()],
        },
    }
}

/// The ARM id as a relative URI reference: no leading slash, percent-encoded outside RFC 3986
/// `pchar` and `/`.
fn id_as_uri(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.trim_start_matches('/').bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn result(vm: &VmReport, r: &RuleResult, level: Level) -> SarifResult {
    let rule_index = rules::all()
        .iter()
        .position(|x| std::ptr::eq(x.meta(), r.meta))
        .unwrap_or(0);
    let what = if r.outcome == Outcome::Unknown {
        "could not be decided"
    } else {
        "fails"
    };
    let mut text = format!(
        "{} {} {what} for VM {}: {}",
        r.meta.reference,
        r.meta.name,
        vm.name,
        r.message()
    );
    if let Some(fix) = r.remediation() {
        text.push_str("\nFix: ");
        text.push_str(&fix.text);
    }
    let mut fp = BTreeMap::new();
    fp.insert(
        "cvmBackup/v1",
        format!("{}:{}", r.meta.reference, vm.id.to_ascii_lowercase()),
    );
    SarifResult {
        rule_id: r.meta.reference,
        rule_index,
        level: level_str(level),
        message: Text { text },
        locations: vec![Location {
            physical_location: PhysicalLocation {
                artifact_location: ArtifactLocation {
                    uri: id_as_uri(&vm.id),
                },
                region: Region { start_line: 1 },
            },
            logical_locations: vec![LogicalLocation {
                name: vm.name.clone(),
                fully_qualified_name: vm.id.clone(),
                kind: "resource",
            }],
        }],
        partial_fingerprints: fp,
        properties: ResultProperties {
            outcome: r.outcome.as_str(),
            severity: r.severity.as_str(),
            verdict: vm.verdict.as_str(),
            vm: vm.name.clone(),
            subscription_id: vm.subscription_id.clone(),
            resource_group: vm.resource_group.clone(),
            location: vm.location.clone(),
            remediation: r.remediation().map(|f| Remediation {
                text: f.text.clone(),
                commands: f.commands.clone(),
            }),
        },
    }
}

pub fn render(report: &Report) -> String {
    let results = report
        .vms
        .iter()
        .flat_map(|vm| {
            vm.results
                .iter()
                .filter_map(move |r| problem_level(r).map(|l| result(vm, r, l)))
        })
        .collect();

    let mut notifications = Vec::new();
    for s in report.unreadable_vm_lists() {
        notifications.push(Notification {
            level: "error",
            message: Text {
                text: format!(
                    "subscription {}: the VM list could not be read completely, so VMs may be missing from this report: {}",
                    s.id,
                    s.vm_list_missing.as_deref().unwrap_or("")
                ),
            },
        });
    }
    for e in &report.errors {
        notifications.push(Notification {
            level: "warning",
            message: Text {
                text: format!("read error (affected rules are unknown): {}", e.short()),
            },
        });
    }

    let s = report.summary();
    let summary = BTreeMap::from([
        ("vms", s.vms),
        ("not_applicable", s.not_applicable),
        ("viable", s.viable),
        ("viable_with_warnings", s.viable_with_warnings),
        ("not_viable", s.not_viable),
        ("unknown", s.unknown),
    ]);

    let log = Log {
        schema: SCHEMA_URI,
        version: "2.1.0",
        runs: vec![Run {
            tool: Tool {
                driver: Driver {
                    name: "cvm-backup",
                    version: env!("CARGO_PKG_VERSION"),
                    semantic_version: env!("CARGO_PKG_VERSION"),
                    information_uri: INFORMATION_URI,
                    rules: rules::all().iter().map(|r| descriptor(r.meta())).collect(),
                },
            },
            invocations: vec![Invocation {
                execution_successful: true,
                tool_execution_notifications: notifications,
            }],
            results,
            properties: RunProperties {
                ruleset: report.ruleset_name.clone(),
                ruleset_as_of: report.ruleset_as_of.clone(),
                complete: report.complete,
                summary,
            },
        }],
    };
    let mut out = serde_json::to_string_pretty(&log).unwrap_or_default();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::id_as_uri;

    #[test]
    fn ids_become_relative_uri_references() {
        assert_eq!(
            id_as_uri("/subscriptions/s/resourceGroups/rg (1)/providers/Microsoft.Compute/virtualMachines/vm.a"),
            "subscriptions/s/resourceGroups/rg%20(1)/providers/Microsoft.Compute/virtualMachines/vm.a"
        );
        assert_eq!(id_as_uri("/x/ü"), "x/%C3%BC");
    }
}
