//! Renderers: one report, many formats. Renderers never decide outcomes.

pub mod github;
pub mod json_v1;
pub mod junit;
pub mod markdown;
pub mod sarif;
pub mod table;

use std::io::Write;
use std::path::Path;

/// Writes a rendered document to `--output FILE` or stdout.
pub fn emit(text: &str, output: Option<&Path>) -> std::io::Result<()> {
    match output {
        Some(p) => std::fs::write(p, text),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        }
    }
}

/// Streams a document to `--output FILE` or stdout through a buffer.
pub fn emit_with(
    output: Option<&Path>,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match output {
        Some(p) => {
            let mut w = std::io::BufWriter::new(std::fs::File::create(p)?);
            write(&mut w)?;
            w.flush()
        }
        None => {
            let mut w = std::io::BufWriter::new(std::io::stdout().lock());
            write(&mut w)?;
            w.flush()
        }
    }
}

/// A one-line diagnostic on stderr ("warning: ...", "error: ...").
pub fn diag(level: &str, msg: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{level}: {msg}");
}

use crate::rules::RuleMeta;

/// `cvm-backup rules` as a table.
pub fn rules_table(rs: &crate::ruleset::Ruleset) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .force_no_tty()
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(vec!["REF", "NAME", "SEVERITY", "SUMMARY"]);
    for r in crate::rules::all() {
        let m = r.meta();
        t.add_row(vec![m.reference, m.name, m.severity.as_str(), m.summary]);
    }
    let mut out = format!(
        "Ruleset {} (support matrix of {}): regions {}; DES limit {}\n\n",
        rs.name,
        rs.as_of,
        rs.regions.join(", "),
        rs.des_disk_limit
    );
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `cvm-backup explain RULE`.
pub fn explain(m: &RuleMeta) -> String {
    format!(
        "{} {} ({})\n\n{}\n\n{}\n\nMore: {}\n",
        m.reference,
        m.name,
        m.severity.as_str(),
        m.summary,
        m.docs,
        m.docs_url
    )
}

/// What `cvm-backup init` writes.
pub const CONFIG_TEMPLATE: &str = include_str!("../../docs/cvm-backup.example.toml");

use crate::report::RuleResult;
use crate::rules::{Outcome, Severity};

/// How loudly a CI format reports one result: SARIF `level`, GitHub annotation command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Note,
}

/// The level of a result that is a problem, `None` for the rest. Only `fail` and `unknown` are
/// problems, and a failed precondition (not a confidential VM) is not one. A `fail` keeps its
/// effective severity; an `unknown` is one step lower (it could not be decided).
pub fn problem_level(r: &RuleResult) -> Option<Level> {
    match (r.outcome, r.severity) {
        (Outcome::Fail, Severity::Precondition) => None,
        (Outcome::Fail, Severity::Error) => Some(Level::Error),
        (Outcome::Fail, Severity::Warning) => Some(Level::Warning),
        (Outcome::Unknown, Severity::Error | Severity::Precondition) => Some(Level::Warning),
        (Outcome::Unknown, Severity::Warning) => Some(Level::Note),
        (Outcome::Pass | Outcome::Skipped | Outcome::Waived, _) => None,
    }
}

/// A fix as plain text lines: "Fix: <text>" then one "  $ <command>" per command.
pub fn fix_text(fix: &crate::rules::Remediation) -> String {
    let mut s = format!("Fix: {}", fix.text);
    for c in &fix.commands {
        s.push_str("\n  $ ");
        s.push_str(c);
    }
    s
}
