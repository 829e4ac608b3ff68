//! `cvm-backup/check/v1`: the frozen JSON document of CONTRACT.md section 4.
//!
//! These types are the contract. They are built from the report, never by serialising internal
//! structs, so internal changes cannot break consumers. They borrow from the report and the
//! per-VM parts are produced while writing, so a large report is streamed, not copied. The schema
//! is `docs/check-v1.schema.json`.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Serialize, Serializer};
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
    evidence: EvidenceText<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remediation: Option<RemediationV1<'a>>,
    docs_url: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiver: Option<WaiverV1<'a>>,
}

/// Evidence is compact JSON object text (`Finding::evidence`), written as it is.
struct EvidenceText<'a>(&'a str);

impl Serialize for EvidenceText<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&serde_json::value::RawValue>(self.0) {
            Ok(raw) => raw.serialize(s),
            Err(_) => serde::ser::SerializeMap::end(s.serialize_map(Some(0))?),
        }
    }
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
        message: r.message(),
        evidence: EvidenceText(r.evidence()),
        remediation: r.remediation().map(|x| RemediationV1 {
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

fn vm_v1(v: &VmReport) -> VmV1<'_> {
    VmV1 {
        id: &v.id,
        name: &v.name,
        subscription_id: &v.subscription_id,
        resource_group: &v.resource_group,
        location: &v.location,
        size: v.size.as_deref(),
        verdict: v.verdict.as_str(),
        results: &v.results,
    }
}

fn vms<S: Serializer>(vms: &&[VmReport], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(vms.iter().map(vm_v1))
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

/// From this many VMs on, the `vms` array is rendered on every core, in batches.
const PARALLEL_FROM: usize = 4096;
/// VMs rendered per batch: bounds the memory held by rendered text.
const BATCH: usize = 512;

/// Streams the document (pretty-printed, with a final newline) to `w`.
pub fn write(report: &Report, w: &mut dyn Write) -> std::io::Result<()> {
    write_with(report, w, PARALLEL_FROM)
}

/// Pretty JSON of `v`, every line after the first indented by `indent` more spaces — exactly
/// what `to_writer_pretty` writes for `v` nested at that depth (JSON strings hold no raw
/// newlines, so only structural line breaks are touched).
fn nested<T: Serialize>(v: &T, indent: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(v)?;
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
            out.extend_from_slice(indent);
        }
        out.extend_from_slice(line);
    }
    Ok(())
}

fn write_with(report: &Report, w: &mut dyn Write, parallel_from: usize) -> std::io::Result<()> {
    let doc = document(report);
    if report.vms.is_empty() || report.vms.len() < parallel_from {
        serde_json::to_writer_pretty(&mut *w, &doc)?;
        return w.write_all(b"\n");
    }
    // The same bytes as `to_writer_pretty`, with the `vms` array rendered in parallel batches.
    let mut head = Vec::new();
    head.extend_from_slice(b"{\n");
    let field = |out: &mut Vec<u8>, key: &str, v: &dyn erased::Ser| -> std::io::Result<()> {
        out.extend_from_slice(format!("  \"{key}\": ").as_bytes());
        v.nested(b"  ", out)?;
        out.extend_from_slice(b",\n");
        Ok(())
    };
    field(&mut head, "schema", &doc.schema)?;
    field(&mut head, "tool", &doc.tool)?;
    field(&mut head, "ruleset", &doc.ruleset)?;
    field(&mut head, "generated_at", &doc.generated_at)?;
    field(&mut head, "complete", &doc.complete)?;
    field(&mut head, "summary", &doc.summary)?;
    field(&mut head, "subscriptions", &Subs(doc.subscriptions))?;
    head.extend_from_slice(b"  \"vms\": [\n");
    w.write_all(&head)?;

    // Batches are rendered by a worker per core while this thread writes them out in order:
    // writing (a copy into the kernel, slow for a file) overlaps rendering. Written buffers go
    // back to the workers to be filled again.
    let threads = crate::par::threads();
    let batches: Vec<&[VmReport]> = report.vms.chunks(BATCH).collect();
    let next = AtomicUsize::new(0);
    let (parts_tx, parts_rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(2 * threads);
    let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let spare = Mutex::new(spare_rx);
    std::thread::scope(|s| -> std::io::Result<()> {
        for _ in 0..threads {
            let parts = parts_tx.clone();
            let (batches, next, spare) = (&batches, &next, &spare);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(i) else { break };
                let reused = spare.lock().ok().and_then(|r| r.try_recv().ok());
                let mut out = reused.unwrap_or_default();
                out.clear();
                // About 5.6 KB per VM: no regrowth while rendering.
                out.reserve(batch.len() * 6 * 1024);
                for (k, v) in batch.iter().enumerate() {
                    if k > 0 {
                        out.extend_from_slice(b",\n");
                    }
                    pretty::vm(v, &mut out);
                }
                // The writer stopped (on an error it returns): stop rendering.
                if parts.send((i, out)).is_err() {
                    break;
                }
            });
        }
        drop(parts_tx);
        let mut waiting = std::collections::BTreeMap::new();
        let mut due = 0;
        for (i, part) in parts_rx {
            waiting.insert(i, part);
            while let Some(part) = waiting.remove(&due) {
                if due > 0 {
                    w.write_all(b",\n")?;
                }
                w.write_all(&part)?;
                let _ = spare_tx.send(part);
                due += 1;
            }
        }
        Ok(())
    })?;
    let mut tail = Vec::new();
    tail.extend_from_slice(b"\n  ],\n  \"errors\": ");
    nested(&Errs(doc.errors), b"  ", &mut tail)?;
    tail.extend_from_slice(b"\n}\n");
    w.write_all(&tail)
}

struct Subs<'a>(&'a [SubscriptionReport]);
impl Serialize for Subs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        subscriptions(&self.0, s)
    }
}

struct Errs<'a>(&'a [ErrorRecord]);
impl Serialize for Errs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        errors(&self.0, s)
    }
}

/// The `vms` entries written by hand: exactly the bytes `to_writer_pretty` writes for `VmV1` at
/// depth 2 (the test below compares the two), without a serializer per value, and with the
/// evidence copied as it is instead of re-parsed. This is most of the document's bytes.
mod pretty {
    use crate::report::{RuleResult, VmReport};

    fn nl(out: &mut Vec<u8>, depth: usize) {
        const SPACES: &[u8] = b"                                ";
        out.push(b'\n');
        out.extend_from_slice(&SPACES[..(2 * depth).min(SPACES.len())]);
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }

    /// `"key": ` on a new line at `depth`, after a comma unless it is the first member.
    fn key(out: &mut Vec<u8>, depth: usize, first: bool, k: &str) {
        if !first {
            out.push(b',');
        }
        nl(out, depth);
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\": ");
    }

    fn field(out: &mut Vec<u8>, depth: usize, first: bool, k: &str, v: &str) {
        key(out, depth, first, k);
        string(out, v);
    }

    fn strings(out: &mut Vec<u8>, depth: usize, items: &[String]) {
        if items.is_empty() {
            out.extend_from_slice(b"[]");
            return;
        }
        out.push(b'[');
        for (i, c) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            nl(out, depth + 1);
            string(out, c);
        }
        nl(out, depth);
        out.push(b']');
    }

    fn result(out: &mut Vec<u8>, depth: usize, r: &RuleResult) {
        let d = depth + 1;
        out.push(b'{');
        field(out, d, true, "rule", r.meta.name);
        field(out, d, false, "ref", r.meta.reference);
        field(out, d, false, "severity", r.severity.as_str());
        field(out, d, false, "outcome", r.outcome.as_str());
        field(out, d, false, "message", r.message());
        key(out, d, false, "evidence");
        out.extend_from_slice(r.evidence().as_bytes());
        if let Some(fix) = r.remediation() {
            key(out, d, false, "remediation");
            out.push(b'{');
            field(out, d + 1, true, "text", &fix.text);
            key(out, d + 1, false, "commands");
            strings(out, d + 1, &fix.commands);
            nl(out, d);
            out.push(b'}');
        }
        field(out, d, false, "docs_url", r.meta.docs_url);
        if let Some(w) = &r.waiver {
            key(out, d, false, "waiver");
            out.push(b'{');
            field(out, d + 1, true, "reason", &w.reason);
            field(out, d + 1, false, "expires", &w.expires);
            field(out, d + 1, false, "original", w.original.as_str());
            nl(out, d);
            out.push(b'}');
        }
        nl(out, depth);
        out.push(b'}');
    }

    /// One entry of `vms`, indented as the array's element (depth 2), without a trailing comma.
    pub fn vm(v: &VmReport, out: &mut Vec<u8>) {
        const DEPTH: usize = 2;
        let d = DEPTH + 1;
        out.extend_from_slice(b"    {");
        field(out, d, true, "id", &v.id);
        field(out, d, false, "name", &v.name);
        field(out, d, false, "subscription_id", &v.subscription_id);
        field(out, d, false, "resource_group", &v.resource_group);
        field(out, d, false, "location", &v.location);
        key(out, d, false, "size");
        match &v.size {
            Some(s) => string(out, s),
            None => out.extend_from_slice(b"null"),
        }
        field(out, d, false, "verdict", v.verdict.as_str());
        key(out, d, false, "results");
        if v.results.is_empty() {
            out.extend_from_slice(b"[]");
        } else {
            out.push(b'[');
            for (i, r) in v.results.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                nl(out, d + 1);
                result(out, d + 1, r);
            }
            nl(out, d);
            out.push(b']');
        }
        nl(out, DEPTH);
        out.push(b'}');
    }
}

/// Object-safe "render nested" for the header fields of different types.
mod erased {
    pub trait Ser {
        fn nested(&self, indent: &[u8], out: &mut Vec<u8>) -> std::io::Result<()>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn nested(&self, indent: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
            super::nested(self, indent, out)
        }
    }
}

/// The document as a string (small reports, tests).
pub fn render(report: &Report) -> String {
    let mut buf = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write(report, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_vms_in_parallel_are_the_bytes_serde_writes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/demo.json");
        let snap = crate::snapshot::Snapshot::load(std::path::Path::new(path)).unwrap();
        let estate = crate::estate::Estate::from_snapshot(&snap, None);
        let settings =
            crate::rules::Settings::from_ruleset(&crate::ruleset::load("2026-01").unwrap());
        let now = time::macros::datetime!(2026-11-28 20:00 UTC);
        let policy = crate::engine::Policy::new(now.date());
        let report = crate::engine::evaluate(
            &estate,
            &settings,
            &policy,
            &crate::engine::Scope::default(),
            now,
        )
        .report;
        let mut plain = Vec::new();
        write_with(&report, &mut plain, usize::MAX).unwrap();
        let mut parallel = Vec::new();
        write_with(&report, &mut parallel, 0).unwrap();
        assert_eq!(
            String::from_utf8(parallel).unwrap(),
            String::from_utf8(plain).unwrap()
        );
        // Waivers, fixes without commands and VMs without a size are written alike.
        let mut odd = report.clone();
        let vm = &mut odd.vms[0];
        vm.size = None;
        vm.results[0].waiver = Some(crate::report::WaiverInfo {
            reason: "a \"quoted\" reason\nover two lines".into(),
            expires: "2027-01-01".into(),
            original: crate::rules::Outcome::Fail,
        });
        vm.results[1].said = std::sync::Arc::new(crate::report::Said {
            message: "ünïcode \u{1f}".into(),
            evidence: r#"{"k":[1,null,"\\"]}"#.into(),
            remediation: Some(crate::rules::Remediation {
                text: "résumé".into(),
                commands: Vec::new(),
            }),
        });
        odd.vms[1].results.clear();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_with(&odd, &mut a, usize::MAX).unwrap();
        write_with(&odd, &mut b, 0).unwrap();
        assert_eq!(String::from_utf8(b).unwrap(), String::from_utf8(a).unwrap());
        // Many batches, rendered out of order, written in order.
        let mut many = report.clone();
        while many.vms.len() < 3 * BATCH + 7 {
            many.vms.extend(report.vms.iter().cloned());
        }
        for (i, v) in many.vms.iter_mut().enumerate() {
            v.name = format!("vm-{i}");
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_with(&many, &mut a, usize::MAX).unwrap();
        write_with(&many, &mut b, 0).unwrap();
        assert!(a == b, "{} and {} bytes differ", a.len(), b.len());
        // And with no VMs at all.
        let mut empty = report.clone();
        empty.vms.clear();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_with(&empty, &mut a, usize::MAX).unwrap();
        write_with(&empty, &mut b, 0).unwrap();
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
    }
}
