//! GitHub Actions workflow commands: one `::error` / `::warning` / `::notice` annotation per
//! failing or unknown VM × rule (level as in [`super::problem_level`]), one per unreadable VM list
//! and read error, then the human table inside a `::stop-commands::` block (text read from Azure
//! can never become a workflow command).
//!
//! Escaping follows the runner's rules (actions/toolkit `command.ts`): in the message `%`, `\r` and
//! `\n` become `%25`, `%0D` and `%0A`; in property values `:` and `,` also become `%3A` and `%2C`.
//! There is no file to point at, so annotations carry only a `title` (`CVMB008 key-access`).

use std::hash::{Hash, Hasher};

use super::{problem_level, Level};
use crate::report::Report;
use crate::rules::Outcome;

/// Escapes the message of a workflow command.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property value of a workflow command.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn command(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warning => "warning",
        Level::Note => "notice",
    }
}

fn annotation(level: Level, title: &str, message: &str) -> String {
    format!(
        "::{} title={}::{}\n",
        command(level),
        escape_property(title),
        escape_data(message)
    )
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for vm in &report.vms {
        for r in &vm.results {
            let Some(level) = problem_level(r) else {
                continue;
            };
            let what = if r.outcome == Outcome::Unknown {
                "could not be decided"
            } else {
                "fails"
            };
            let mut msg = format!("VM {} ({}) {what}: {}", vm.name, vm.id, r.message());
            if let Some(fix) = r.remediation() {
                msg.push('\n');
                msg.push_str(&super::fix_text(fix));
            }
            msg.push_str("\nRule: ");
            msg.push_str(r.meta.docs_url);
            out.push_str(&annotation(
                level,
                &format!("{} {}", r.meta.reference, r.meta.name),
                &msg,
            ));
        }
    }
    for s in report.unreadable_vm_lists() {
        out.push_str(&annotation(
            Level::Error,
            "incomplete: VM list",
            &format!(
                "subscription {}: the VM list could not be read completely, so VMs may be missing from this report: {}",
                s.id,
                s.vm_list_missing.as_deref().unwrap_or("")
            ),
        ));
    }
    for e in &report.errors {
        out.push_str(&annotation(
            Level::Warning,
            "incomplete: read error",
            &format!("{} (affected rules are unknown)", e.short()),
        ));
    }
    // The table carries text read from Azure (or a snapshot): run it inside a stop-commands
    // block so no line of it can be taken for a workflow command. The token is derived from the
    // table itself, so the output stays deterministic and the table cannot contain its own end.
    let table = super::table::render(report, false);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    let token = format!("cvm-backup-{:016x}", h.finish());
    out.push_str(&format!("::stop-commands::{token}\n"));
    out.push_str(&table);
    out.push_str(&format!("::{token}::\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_the_runner() {
        assert_eq!(
            escape_data("50% done\r\nnext: a,b"),
            "50%25 done%0D%0Anext: a,b"
        );
        assert_eq!(
            escape_property("CVMB008 key: a,b%\n"),
            "CVMB008 key%3A a%2Cb%25%0A"
        );
        assert_eq!(
            annotation(Level::Note, "t:1", "m\nn"),
            "::notice title=t%3A1::m%0An\n"
        );
    }
}
