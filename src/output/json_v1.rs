//! `cvm-backup/check/v1`: the frozen JSON document of CONTRACT.md section 4.
//!
//! These types are the contract. They are built from the report, never by serialising internal
//! structs, so internal changes cannot break consumers. They borrow from the report and the
//! per-VM parts are produced while writing, so a large report is streamed, not copied. The schema
//! is `docs/check-v1.schema.json`.

use std::io::Write;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;

use crate::report::{Report, RuleResult, SubscriptionReport, VmReport};
use crate::rules::RuleMeta;
use crate::snapshot::ErrorRecord;

pub const SCHEMA: &str = "cvm-backup/check/v1";

#[derive(Serialize)]
struct CheckV1<'a> {
    schema: &'static str,
    tool: Tool,
    ruleset: Ruleset,
    generated_at: String,
    complete: bool,
    summary: Summary,
    #[serde(serialize_with = "subscriptions")]
    subscriptions: &'a [SubscriptionReport],
    #[serde(serialize_with = "vms")]
    vms: &'a [VmReport],
    #[serde(serialize_with = "errors")]
    errors: &'a [ErrorRecord],
}

#[derive(Serialize)]
struct Tool {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
pub struct Ruleset {
    pub name: String,
    pub as_of: String,
}

#[derive(Serialize)]
struct Summary {
    vms: usize,
    not_applicable: usize,
    viable: usize,
    viable_with_warnings: usize,
    not_viable: usize,
    unknown: usize,
}

#[derive(Serialize)]
struct SubscriptionV1<'a> {
    id: &'a str,
    #[serde(serialize_with = "results")]
    results: &'a [RuleResult],
}

#[derive(Serialize)]
struct VmV1<'a> {
    id: &'a str,
    name: &'a str,
    subscription_id: &'a str,
    resource_group: &'a str,
    location: &'a str,
    size: Option<&'a str>,
    verdict: &'static str,
    #[serde(serialize_with = "results")]
    results: &'a [RuleResult],
}

#[derive(Serialize)]
struct ResultV1<'a> {
    rule: &'static str,
    #[serde(rename = "ref")]
    reference: &'static str,
    severity: &'static str,
    outcome: &'static str,
    message: &'a str,
    evidence: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    remediation: Option<RemediationV1<'a>>,
    docs_url: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiver: Option<WaiverV1<'a>>,
}

#[derive(Serialize)]
struct RemediationV1<'a> {
    text: &'a str,
    commands: &'a [String],
}

#[derive(Serialize)]
struct WaiverV1<'a> {
    reason: &'a str,
    expires: &'a str,
    original: &'static str,
}

#[derive(Serialize)]
struct ErrorV1<'a> {
    scope: &'a str,
    operation: &'a str,
    status: Option<u16>,
    code: Option<&'a str>,
    message: &'a str,
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

fn result(r: &RuleResult) -> ResultV1<'_> {
    ResultV1 {
        rule: r.meta.name,
        reference: r.meta.reference,
        severity: r.severity.as_str(),
        outcome: r.outcome.as_str(),
        message: &r.message,
        evidence: &r.evidence,
        remediation: r.remediation.as_ref().map(|x| RemediationV1 {
            text: &x.text,
            commands: &x.commands,
        }),
        docs_url: r.meta.docs_url,
        waiver: r.waiver.as_ref().map(|w| WaiverV1 {
            reason: &w.reason,
            expires: &w.expires,
            original: w.original.as_str(),
        }),
    }
}

fn results<S: Serializer>(rs: &&[RuleResult], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(rs.iter().map(result))
}

fn subscriptions<S: Serializer>(subs: &&[SubscriptionReport], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(subs.iter().map(|x| SubscriptionV1 {
        id: &x.id,
        results: &x.results,
    }))
}

fn vms<S: Serializer>(vms: &&[VmReport], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(vms.iter().map(|v| VmV1 {
        id: &v.id,
        name: &v.name,
        subscription_id: &v.subscription_id,
        resource_group: &v.resource_group,
        location: &v.location,
        size: v.size.as_deref(),
        verdict: v.verdict.as_str(),
        results: &v.results,
    }))
}

fn errors<S: Serializer>(es: &&[ErrorRecord], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(es.iter().map(|e| ErrorV1 {
        scope: &e.scope,
        operation: &e.operation,
        status: e.status,
        code: e.code.as_deref(),
        message: &e.message,
    }))
}

fn document(report: &Report) -> CheckV1<'_> {
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
        subscriptions: &report.subscriptions,
        vms: &report.vms,
        errors: &report.errors,
    }
}

/// Streams the document (pretty-printed, with a final newline) to `w`.
pub fn write(report: &Report, w: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, &document(report))?;
    w.write_all(b"\n")
}

/// The document as a string (small reports, tests).
pub fn render(report: &Report) -> String {
    let mut buf = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write(report, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
