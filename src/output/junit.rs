//! JUnit XML for test reporters (GitHub test-report actions, Azure Pipelines
//! `PublishTestResults@2` with `testResultsFormat: JUnit`, GitLab `artifacts:reports:junit`).
//!
//! One `<testsuite>` per subscription, one `<testcase>` per VM × rule:
//! - `pass` → success;
//! - `fail` → `<failure>` (type = the effective severity), except the precondition CVMB001 on a VM
//!   that is not confidential, which is `<skipped>` (the VM is not applicable, nothing failed);
//! - `unknown` → `<error>`;
//! - `skipped` and `waived` → `<skipped>` (a waived result says its original outcome, the reason
//!   and the expiry).
//!
//! The failure text holds the message, the fix and its commands. A subscription whose VM list could
//! not be read gets one more testcase, `VM list`, as an `<error>`: VMs may be missing.

use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};
use time::format_description::well_known::Rfc3339;

use crate::report::{Report, RuleResult, VmReport};
use crate::rules::{Outcome, Severity};

/// The body of a failure, error or skipped element: message, fix, commands, docs.
fn body(r: &RuleResult) -> String {
    let mut s = r.message().to_string();
    if let Some(w) = &r.waiver {
        s = format!(
            "{} (waived until {}: {})\n\n{}",
            w.original.as_str(),
            w.expires,
            w.reason,
            r.message()
        );
    } else if let Some(fix) = r.remediation() {
        s.push_str("\n\n");
        s.push_str(&super::fix_text(fix));
    }
    s.push_str("\n\nRule: ");
    s.push_str(r.meta.docs_url);
    s
}

fn status(r: &RuleResult) -> TestCaseStatus {
    let mut st = match (r.outcome, r.severity) {
        (Outcome::Pass, _) => return TestCaseStatus::success(),
        (Outcome::Fail, Severity::Precondition) => {
            let mut st = TestCaseStatus::skipped();
            st.set_message(format!("not applicable: {}", r.message()));
            return st;
        }
        (Outcome::Fail, sev) => {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
            st.set_type(sev.as_str());
            st
        }
        (Outcome::Unknown, _) => {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
            st.set_type("unknown");
            st
        }
        (Outcome::Skipped, _) => {
            let mut st = TestCaseStatus::skipped();
            st.set_type("skipped");
            st
        }
        (Outcome::Waived, _) => {
            let mut st = TestCaseStatus::skipped();
            st.set_type("waived");
            st
        }
    };
    let message = match &r.waiver {
        Some(w) => format!(
            "waived until {} ({} before): {}",
            w.expires,
            w.original.as_str(),
            w.reason
        ),
        None => r.message().to_string(),
    };
    st.set_message(message);
    st.set_description(body(r));
    st
}

fn test_case(vm: &VmReport, r: &RuleResult) -> TestCase {
    let mut tc = TestCase::new(
        format!("{}: {} {}", vm.name, r.meta.reference, r.meta.name),
        status(r),
    );
    tc.set_classname(vm.id.as_str());
    tc.add_property(Property::new("severity", r.severity.as_str()));
    tc.add_property(Property::new("outcome", r.outcome.as_str()));
    tc
}

/// Renders the report; fails only if the XML writer fails.
pub fn render(report: &Report) -> Result<String, quick_junit::SerializeError> {
    let mut doc = quick_junit::Report::new("cvm-backup");
    let generated = report.generated_at.format(&Rfc3339).unwrap_or_default();

    // Subscriptions in report order, then any subscription only known from a VM.
    let mut subs: Vec<(String, Option<&crate::report::SubscriptionReport>)> = report
        .subscriptions
        .iter()
        .map(|s| (s.id.clone(), Some(s)))
        .collect();
    for vm in &report.vms {
        if !subs
            .iter()
            .any(|(id, _)| id.eq_ignore_ascii_case(&vm.subscription_id))
        {
            subs.push((vm.subscription_id.clone(), None));
        }
    }

    for (id, sub) in subs {
        let display = sub.and_then(|s| s.display_name.as_deref());
        let name = match display {
            Some(d) => format!("{d} ({id})"),
            None => id.clone(),
        };
        let mut suite = TestSuite::new(name);
        suite.add_property(Property::new("subscription_id", id.as_str()));
        suite.add_property(Property::new("ruleset", report.ruleset_name.as_str()));
        suite.add_property(Property::new("generated_at", generated.as_str()));
        if let Some(why) = sub.and_then(|s| s.vm_list_missing.as_deref()) {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
            st.set_type("unknown");
            st.set_message(
                "the VM list could not be read completely; VMs may be missing from this report",
            );
            st.set_description(why);
            let mut tc = TestCase::new("VM list", st);
            tc.set_classname(format!("/subscriptions/{id}"));
            suite.add_test_case(tc);
        }
        for vm in report
            .vms
            .iter()
            .filter(|v| v.subscription_id.eq_ignore_ascii_case(&id))
        {
            for r in &vm.results {
                suite.add_test_case(test_case(vm, r));
            }
        }
        doc.add_test_suite(suite);
    }
    doc.to_string()
}
