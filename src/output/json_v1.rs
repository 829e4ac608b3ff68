//! `cvm-backup/check/v1`: the frozen JSON document of CONTRACT.md section 4.
//!
//! These types are the contract. They are built from the report, never by serialising internal
//! structs, so internal changes cannot break consumers. The schema is `docs/check-v1.schema.json`.

use serde::Serialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;

use crate::report::{Report, RuleResult};
use crate::rules::{Remediation, RuleMeta};

pub const SCHEMA: &str = "cvm-backup/check/v1";

#[derive(Serialize)]
pub struct CheckV1 {
    pub schema: &'static str,
    pub tool: Tool,
    pub ruleset: Ruleset,
    pub generated_at: String,
    pub complete: bool,
    pub summary: Summary,
    pub subscriptions: Vec<Subscription>,
    pub vms: Vec<VmV1>,
    pub errors: Vec<ErrorV1>,
}

#[derive(Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

#[derive(Serialize)]
pub struct Ruleset {
    pub name: String,
    pub as_of: String,
}

#[derive(Serialize)]
pub struct Summary {
    pub vms: usize,
    pub not_applicable: usize,
    pub viable: usize,
    pub viable_with_warnings: usize,
    pub not_viable: usize,
    pub unknown: usize,
}

#[derive(Serialize)]
pub struct Subscription {
    pub id: String,
    pub results: Vec<ResultV1>,
}

#[derive(Serialize)]
pub struct VmV1 {
    pub id: String,
    pub name: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub location: String,
    pub size: Option<String>,
    pub verdict: &'static str,
    pub results: Vec<ResultV1>,
}

#[derive(Serialize)]
pub struct ResultV1 {
    pub rule: &'static str,
    #[serde(rename = "ref")]
    pub reference: &'static str,
    pub severity: &'static str,
    pub outcome: &'static str,
    pub message: String,
    pub evidence: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation: Option<RemediationV1>,
    pub docs_url: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiver: Option<WaiverV1>,
}

#[derive(Serialize)]
pub struct RemediationV1 {
    pub text: String,
    pub commands: Vec<String>,
}

#[derive(Serialize)]
pub struct WaiverV1 {
    pub reason: String,
    pub expires: String,
    pub original: &'static str,
}

#[derive(Serialize)]
pub struct ErrorV1 {
    pub scope: String,
    pub operation: String,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

/// `rules --format json`.
#[derive(Serialize)]
pub struct RulesV1 {
    pub ruleset: Ruleset,
    pub rules: Vec<RuleV1>,
}

#[derive(Serialize)]
pub struct RuleV1 {
    #[serde(rename = "ref")]
    pub reference: &'static str,
    pub name: &'static str,
    pub severity: &'static str,
    pub summary: &'static str,
    pub docs_url: &'static str,
}

impl From<&RuleMeta> for RuleV1 {
    fn from(m: &RuleMeta) -> Self {
        RuleV1 {
            reference: m.reference,
            name: m.name,
            severity: m.severity.as_str(),
            summary: m.summary,
            docs_url: m.docs_url,
        }
    }
}

fn remediation(r: &Remediation) -> RemediationV1 {
    RemediationV1 {
        text: r.text.clone(),
        commands: r.commands.clone(),
    }
}

fn result(r: &RuleResult) -> ResultV1 {
    ResultV1 {
        rule: r.meta.name,
        reference: r.meta.reference,
        severity: r.severity.as_str(),
        outcome: r.outcome.as_str(),
        message: r.message.clone(),
        evidence: r.evidence.clone(),
        remediation: r.remediation.as_ref().map(remediation),
        docs_url: r.meta.docs_url,
        waiver: r.waiver.as_ref().map(|w| WaiverV1 {
            reason: w.reason.clone(),
            expires: w.expires.clone(),
            original: w.original.as_str(),
        }),
    }
}

pub fn document(report: &Report) -> CheckV1 {
    let s = report.summary();
    CheckV1 {
        schema: SCHEMA,
        tool: Tool {
            name: "cvm-backup",
            version: env!("CARGO_PKG_VERSION"),
        },
        ruleset: Ruleset {
            name: report.ruleset_name.clone(),
            as_of: report.ruleset_as_of.clone(),
        },
        generated_at: report
            .generated_at
            .format(&Rfc3339)
            .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z")),
        complete: report.complete,
        summary: Summary {
            vms: s.vms,
            not_applicable: s.not_applicable,
            viable: s.viable,
            viable_with_warnings: s.viable_with_warnings,
            not_viable: s.not_viable,
            unknown: s.unknown,
        },
        subscriptions: report
            .subscriptions
            .iter()
            .map(|s| Subscription {
                id: s.id.clone(),
                results: s.results.iter().map(result).collect(),
            })
            .collect(),
        vms: report
            .vms
            .iter()
            .map(|v| VmV1 {
                id: v.id.clone(),
                name: v.name.clone(),
                subscription_id: v.subscription_id.clone(),
                resource_group: v.resource_group.clone(),
                location: v.location.clone(),
                size: v.size.clone(),
                verdict: v.verdict.as_str(),
                results: v.results.iter().map(result).collect(),
            })
            .collect(),
        errors: report
            .errors
            .iter()
            .map(|e| ErrorV1 {
                scope: e.scope.clone(),
                operation: e.operation.clone(),
                status: e.status,
                code: e.code.clone(),
                message: e.message.clone(),
            })
            .collect(),
    }
}

pub fn render(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(&document(report)).unwrap_or_default();
    s.push('\n');
    s
}
