//! Markdown for `$GITHUB_STEP_SUMMARY` or a pull-request comment: the counts, a table of the VMs
//! that are not viable or unknown with what to fix, then one collapsed `<details>` per VM that has
//! a problem or a waiver.

use time::format_description::well_known::Rfc3339;

use super::{problem_level, Level};
use crate::report::{Report, RuleResult, Verdict, VmReport};
use crate::rules::Outcome;

/// Text outside code: no raw HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text in a table cell: also no pipes and no line breaks.
fn cell(s: &str) -> String {
    esc(s).replace('|', "\\|").replace(['\r', '\n'], " ")
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::NotViable => "❌ not viable",
        Verdict::Unknown => "❔ unknown",
        Verdict::ViableWithWarnings => "⚠️ viable with warnings",
        Verdict::Viable => "✅ viable",
        Verdict::NotApplicable => "➖ not confidential",
    }
}

fn mark(r: &RuleResult) -> &'static str {
    match (r.outcome, problem_level(r)) {
        (Outcome::Waived, _) => "〰️",
        (Outcome::Unknown, _) => "❔",
        (_, Some(Level::Error)) => "❌",
        (_, Some(_)) => "⚠️",
        _ => "•",
    }
}

/// The results worth showing for a VM: problems and waivers.
fn notable(vm: &VmReport) -> Vec<&RuleResult> {
    vm.results
        .iter()
        .filter(|r| problem_level(r).is_some() || r.outcome == Outcome::Waived)
        .collect()
}

pub fn render(report: &Report) -> String {
    let s = report.summary();
    let mut out = String::new();
    out.push_str(&format!(
        "## cvm-backup: {}\n\n",
        esc(&report.summary_line())
    ));
    out.push_str(&format!(
        "Ruleset `{}` (support matrix of {}) · generated {}{}\n\n",
        report.ruleset_name,
        report.ruleset_as_of,
        report.generated_at.format(&Rfc3339).unwrap_or_default(),
        if report.complete {
            ""
        } else {
            " · **incomplete: some reads failed**"
        }
    ));
    out.push_str("| Verdict | VMs |\n|---|---:|\n");
    for (v, n) in [
        (Verdict::NotViable, s.not_viable),
        (Verdict::Unknown, s.unknown),
        (Verdict::ViableWithWarnings, s.viable_with_warnings),
        (Verdict::Viable, s.viable),
        (Verdict::NotApplicable, s.not_applicable),
    ] {
        out.push_str(&format!("| {} | {n} |\n", verdict_label(v)));
    }
    out.push_str(&format!("| **total** | **{}** |\n", s.vms));

    let blocking: Vec<&VmReport> = report
        .vms
        .iter()
        .filter(|v| matches!(v.verdict, Verdict::NotViable | Verdict::Unknown))
        .collect();
    if !blocking.is_empty() {
        out.push_str("\n### VMs that are not viable or unknown\n\n");
        out.push_str("| VM | Resource group | Location | Verdict | Rule | What to do |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for vm in blocking {
            let problems: Vec<&RuleResult> = vm
                .results
                .iter()
                .filter(|r| problem_level(r).is_some())
                .collect();
            let rules = problems
                .iter()
                .map(|r| {
                    format!(
                        "{} `{} {}`: {}",
                        mark(r),
                        r.meta.reference,
                        r.meta.name,
                        cell(r.message())
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>");
            let fixes = problems
                .iter()
                .map(|r| match r.remediation() {
                    Some(f) => format!("{}: {}", r.meta.reference, cell(&f.text)),
                    None => format!("{}: see the rule's docs", r.meta.reference),
                })
                .collect::<Vec<_>>()
                .join("<br>");
            out.push_str(&format!(
                "| {} | {} | {} | {} | {rules} | {fixes} |\n",
                cell(&vm.name),
                cell(&vm.resource_group),
                cell(&vm.location),
                verdict_label(vm.verdict)
            ));
        }
    }

    let detailed: Vec<(&VmReport, Vec<&RuleResult>)> = report
        .vms
        .iter()
        .map(|v| (v, notable(v)))
        .filter(|(_, n)| !n.is_empty())
        .collect();
    if !detailed.is_empty() {
        out.push_str("\n### Details\n");
        for (vm, results) in detailed {
            out.push_str(&format!(
                "\n<details><summary><b>{}</b> ({}, {}) — {}</summary>\n\n",
                esc(&vm.name),
                esc(&vm.resource_group),
                esc(&vm.location),
                verdict_label(vm.verdict)
            ));
            out.push_str(&format!("`{}`\n\n", vm.id));
            for r in results {
                out.push_str(&format!(
                    "- {} **{} {}** ({}, {}): {}\n",
                    mark(r),
                    r.meta.reference,
                    r.meta.name,
                    r.severity.as_str(),
                    r.outcome.as_str(),
                    esc(r.message())
                ));
                if let Some(w) = &r.waiver {
                    out.push_str(&format!(
                        "  - waived until {} (was {}): {}\n",
                        w.expires,
                        w.original.as_str(),
                        esc(&w.reason)
                    ));
                    continue;
                }
                if let Some(f) = r.remediation() {
                    out.push_str(&format!("  - fix: {}\n", esc(&f.text)));
                    if !f.commands.is_empty() {
                        out.push_str("\n    ```sh\n");
                        for c in &f.commands {
                            out.push_str(&format!("    {c}\n"));
                        }
                        out.push_str("    ```\n\n");
                    }
                }
                out.push_str(&format!("  - rule: <{}>\n", r.meta.docs_url));
            }
            out.push_str("\n</details>\n");
        }
    }

    let unreadable: Vec<_> = report.unreadable_vm_lists().collect();
    if !unreadable.is_empty() || !report.errors.is_empty() {
        out.push_str("\n### Incomplete reads\n\n");
        for sub in unreadable {
            out.push_str(&format!(
                "- subscription `{}`: the VM list could not be read completely, so VMs may be missing: {}\n",
                sub.id,
                esc(sub.vm_list_missing.as_deref().unwrap_or(""))
            ));
        }
        for e in &report.errors {
            out.push_str(&format!("- {}\n", esc(&e.short())));
        }
    }
    out
}
