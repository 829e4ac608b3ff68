//! One model of results, rendered by every output format. Outcomes, verdicts and the exit code
//! are decided here and in the engine, never in a renderer.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;

use crate::rules::{Outcome, Remediation, RuleMeta, Severity};
use crate::snapshot::ErrorRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    NotApplicable,
    NotViable,
    Unknown,
    ViableWithWarnings,
    Viable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NotApplicable => "not_applicable",
            Verdict::NotViable => "not_viable",
            Verdict::Unknown => "unknown",
            Verdict::ViableWithWarnings => "viable_with_warnings",
            Verdict::Viable => "viable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaiverInfo {
    pub reason: String,
    pub expires: String,
    pub original: Outcome,
}

#[derive(Debug, Clone)]
pub struct RuleResult {
    pub meta: &'static RuleMeta,
    /// Effective severity after the config.
    pub severity: Severity,
    pub outcome: Outcome,
    /// What the rule said: shared by every VM it was said for (see `Rule::shared_by`).
    pub said: Arc<Said>,
    pub waiver: Option<WaiverInfo>,
}

/// The words of a finding: message, evidence and fix.
#[derive(Debug, PartialEq)]
pub struct Said {
    pub message: Cow<'static, str>,
    /// The values the rule looked at: a compact JSON object (see `Finding::evidence`).
    pub evidence: Box<str>,
    pub remediation: Option<Remediation>,
}

impl Said {
    /// What a rule said, apart from its outcome.
    pub fn of(f: crate::rules::Finding) -> (Outcome, Arc<Said>) {
        let said = Said {
            message: f.message,
            evidence: f.evidence.into_boxed_str(),
            remediation: f.remediation,
        };
        (f.outcome, Arc::new(said))
    }
}

impl RuleResult {
    pub fn message(&self) -> &str {
        &self.said.message
    }
    pub fn evidence(&self) -> &str {
        &self.said.evidence
    }
    pub fn remediation(&self) -> Option<&Remediation> {
        self.said.remediation.as_ref()
    }
}

#[derive(Debug, Clone)]
pub struct VmReport {
    pub id: String,
    pub name: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub location: String,
    pub size: Option<String>,
    pub verdict: Verdict,
    pub results: Vec<RuleResult>,
}

#[derive(Debug, Clone)]
pub struct SubscriptionReport {
    pub id: String,
    pub display_name: Option<String>,
    /// Why this subscription's VM list could not be read completely (fail closed: exit 3).
    pub vm_list_missing: Option<String>,
    pub results: Vec<RuleResult>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub vms: usize,
    pub not_applicable: usize,
    pub viable: usize,
    pub viable_with_warnings: usize,
    pub not_viable: usize,
    pub unknown: usize,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub ruleset_name: String,
    pub ruleset_as_of: String,
    pub generated_at: OffsetDateTime,
    pub complete: bool,
    pub subscriptions: Vec<SubscriptionReport>,
    pub vms: Vec<VmReport>,
    pub errors: Vec<ErrorRecord>,
}

/// The verdict of a VM from its results (CONTRACT.md section 3).
pub fn verdict(results: &[RuleResult]) -> Verdict {
    let is = |sev: Severity, out: Outcome| {
        results
            .iter()
            .any(|r| r.severity == sev && r.outcome == out)
    };
    if is(Severity::Precondition, Outcome::Fail) {
        Verdict::NotApplicable
    } else if is(Severity::Error, Outcome::Fail) {
        Verdict::NotViable
    } else if is(Severity::Error, Outcome::Unknown) || is(Severity::Precondition, Outcome::Unknown)
    {
        Verdict::Unknown
    } else if is(Severity::Warning, Outcome::Fail) || is(Severity::Warning, Outcome::Unknown) {
        Verdict::ViableWithWarnings
    } else {
        Verdict::Viable
    }
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            vms: self.vms.len(),
            ..Summary::default()
        };
        for vm in &self.vms {
            match vm.verdict {
                Verdict::NotApplicable => s.not_applicable += 1,
                Verdict::Viable => s.viable += 1,
                Verdict::ViableWithWarnings => s.viable_with_warnings += 1,
                Verdict::NotViable => s.not_viable += 1,
                Verdict::Unknown => s.unknown += 1,
            }
        }
        s
    }

    /// "12 VMs: 7 viable, 2 with warnings, 2 not viable, 1 unknown, 3 not confidential".
    pub fn summary_line(&self) -> String {
        let s = self.summary();
        format!(
            "{} VM{}: {} viable, {} with warnings, {} not viable, {} unknown, {} not confidential",
            s.vms,
            if s.vms == 1 { "" } else { "s" },
            s.viable,
            s.viable_with_warnings,
            s.not_viable,
            s.unknown,
            s.not_applicable
        )
    }

    /// Subscriptions whose VM list could not be read completely.
    pub fn unreadable_vm_lists(&self) -> impl Iterator<Item = &SubscriptionReport> {
        self.subscriptions
            .iter()
            .filter(|s| s.vm_list_missing.is_some())
    }
}

/// `--fail-on` (CONTRACT.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailOn {
    #[default]
    Error,
    Warning,
    Never,
}

/// Exit code of `check` for a report (0, 1 or 3; 2 and 4 are decided before a report exists).
pub fn exit_code(report: &Report, fail_on: FailOn) -> i32 {
    if fail_on == FailOn::Never {
        return 0;
    }
    let failed = report.vms.iter().any(|v| {
        v.verdict == Verdict::NotViable
            || (fail_on == FailOn::Warning && v.verdict == Verdict::ViableWithWarnings)
    });
    if failed {
        return 1;
    }
    let incomplete = report.vms.iter().any(|v| v.verdict == Verdict::Unknown)
        || report.unreadable_vm_lists().next().is_some();
    if incomplete {
        3
    } else {
        0
    }
}
