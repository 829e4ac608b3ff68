//! The human table (default format).

use comfy_table::{presets, Cell, Color, ContentArrangement, Table};

use crate::report::{Report, Verdict};
use crate::rules::{Outcome, Severity};

const RESET: &str = "\x1b[0m";

fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("\x1b[{code}m{s}{RESET}")
    } else {
        s.to_string()
    }
}

/// Text read from Azure or a snapshot on one line: a line break inside a cell would make the
/// table two lines high and shift every following VM's problems under the wrong VM.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn verdict_color(v: Verdict) -> Color {
    match v {
        Verdict::Viable => Color::Green,
        Verdict::ViableWithWarnings => Color::Yellow,
        Verdict::NotViable => Color::Red,
        Verdict::Unknown => Color::Magenta,
        Verdict::NotApplicable => Color::DarkGrey,
    }
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Viable => "viable",
        Verdict::ViableWithWarnings => "viable (warnings)",
        Verdict::NotViable => "NOT VIABLE",
        Verdict::Unknown => "unknown",
        Verdict::NotApplicable => "not confidential",
    }
}

pub fn render(report: &Report, color: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "cvm-backup {} · ruleset {} (support matrix of {})\n\n",
        env!("CARGO_PKG_VERSION"),
        report.ruleset_name,
        report.ruleset_as_of
    ));
    if report.vms.is_empty() {
        out.push_str("No VMs in scope.\n");
    } else {
        let mut table = Table::new();
        table
            .load_preset(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled);
        if color {
            table.enforce_styling();
        } else {
            table.force_no_tty();
        }
        table.set_header(vec!["VM", "RESOURCE GROUP", "LOCATION", "SIZE", "VERDICT"]);
        for vm in &report.vms {
            table.add_row(vec![
                Cell::new(one_line(&vm.name)),
                Cell::new(one_line(&vm.resource_group)),
                Cell::new(one_line(&vm.location)),
                Cell::new(one_line(vm.size.as_deref().unwrap_or("-"))),
                Cell::new(verdict_text(vm.verdict)).fg(verdict_color(vm.verdict)),
            ]);
        }
        let lines: Vec<String> = table.lines().collect();
        // With the NOTHING preset and no wrapping: line 0 is the header, then one line per VM.
        let mut it = lines.into_iter();
        if let Some(h) = it.next() {
            out.push_str(&paint(color, "1", h.trim_end()));
            out.push('\n');
        }
        for (vm, line) in report.vms.iter().zip(it) {
            out.push_str(line.trim_end());
            out.push('\n');
            if vm.verdict == Verdict::NotApplicable {
                continue;
            }
            for r in &vm.results {
                let (mark, code) = match (r.outcome, r.severity) {
                    (Outcome::Fail, Severity::Warning) => ("!", "33"),
                    (Outcome::Fail, _) => ("✗", "31"),
                    (Outcome::Unknown, Severity::Warning) => ("?", "33"),
                    (Outcome::Unknown, _) => ("?", "35"),
                    (Outcome::Waived, _) => ("~", "2"),
                    _ => continue,
                };
                out.push_str(&format!(
                    "   {} {} {}: {}\n",
                    paint(color, code, mark),
                    r.meta.reference,
                    r.meta.name,
                    one_line(r.message())
                ));
                if let Some(w) = &r.waiver {
                    out.push_str(&format!(
                        "       waived until {} ({} before): {}\n",
                        w.expires,
                        w.original.as_str(),
                        one_line(&w.reason)
                    ));
                    continue;
                }
                if let Some(fix) = r.remediation() {
                    out.push_str(&format!("       fix: {}\n", one_line(&fix.text)));
                    for c in &fix.commands {
                        out.push_str(&format!("         {} {}\n", paint(color, "2", "$"), c));
                    }
                }
            }
        }
    }
    let unreadable: Vec<_> = report.unreadable_vm_lists().collect();
    if !unreadable.is_empty() {
        out.push('\n');
        for s in unreadable {
            out.push_str(&format!(
                "{} subscription {}: the VM list could not be read completely, so VMs may be missing from this report: {}\n",
                paint(color, "35", "?"),
                s.id,
                s.vm_list_missing.as_deref().unwrap_or("")
            ));
        }
    }
    if !report.errors.is_empty() {
        out.push_str(&format!(
            "\n{} read error{} (the report is incomplete; affected rules are unknown):\n",
            report.errors.len(),
            if report.errors.len() == 1 { "" } else { "s" }
        ));
        for e in &report.errors {
            out.push_str(&format!("  - {}", e.short()));
            if !e.message.is_empty() && e.status.is_some() {
                out.push_str(&format!(" — {}", e.message));
            }
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(&paint(color, "1", &report.summary_line()));
    out.push('\n');
    out
}
