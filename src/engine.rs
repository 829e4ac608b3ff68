//! The rule engine: estate + settings + config policy -> report. Pure; no I/O.

use std::collections::HashMap;
use std::sync::Arc;

use time::{Date, OffsetDateTime};

use crate::armid;
use crate::estate::{Estate, Vm};
use crate::report::{verdict, Report, RuleResult, Said, SubscriptionReport, VmReport, WaiverInfo};
use crate::rules::{self, Cx, Outcome, RuleMeta, Settings, Severity};

/// From this many VMs on, evaluation uses every core.
const PARALLEL_FROM: usize = 2048;

/// A rule's settings from the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleOverride {
    pub severity: Option<Severity>,
    pub enabled: bool,
}

impl Default for RuleOverride {
    fn default() -> Self {
        RuleOverride {
            severity: None,
            enabled: true,
        }
    }
}

/// An accepted risk: a `fail` or `unknown` of one rule at or under `scope`, until `expires`.
#[derive(Debug, Clone)]
pub struct Waiver {
    pub rule: &'static RuleMeta,
    /// A VM id, resource group id or subscription id (`/subscriptions/<id>` or the bare GUID).
    pub scope: String,
    pub reason: String,
    pub expires: Date,
    /// Where it was declared, for messages ("cvm-backup.toml:12").
    pub origin: String,
}

impl Waiver {
    fn scope_path(&self) -> String {
        if self.scope.contains('/') {
            self.scope.clone()
        } else {
            format!("/subscriptions/{}", self.scope)
        }
    }

    pub fn is_expired(&self, today: Date) -> bool {
        today >= self.expires
    }
}

/// Config decisions that shape results: severity overrides, disabled rules, waivers.
#[derive(Debug, Clone)]
pub struct Policy {
    /// By rule ref.
    pub overrides: HashMap<&'static str, RuleOverride>,
    pub waivers: Vec<Waiver>,
    pub today: Date,
}

impl Policy {
    pub fn new(today: Date) -> Self {
        Policy {
            overrides: HashMap::new(),
            waivers: Vec::new(),
            today,
        }
    }
}

/// Which VMs the report covers (the estate around them is always used in full).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub subscriptions: Vec<String>,
    pub resource_groups: Vec<String>,
    pub vms: Vec<String>,
}

impl Scope {
    fn subscription_in(&self, id: &str) -> bool {
        self.subscriptions.is_empty()
            || self
                .subscriptions
                .iter()
                .any(|s| s.trim().eq_ignore_ascii_case(id))
    }

    fn vm_in(&self, vm: &Vm) -> bool {
        self.subscription_in(&vm.subscription_id)
            && (self.resource_groups.is_empty()
                || self
                    .resource_groups
                    .iter()
                    .any(|g| g.eq_ignore_ascii_case(&vm.resource_group)))
            && (self.vms.is_empty()
                || self.vms.iter().any(|v| {
                    if v.contains('/') {
                        armid::same_id(v, &vm.id)
                    } else {
                        v.eq_ignore_ascii_case(&vm.name)
                    }
                }))
    }
}

/// The report, plus which waivers matched something (by index in `policy.waivers`).
pub struct Evaluation {
    pub report: Report,
    pub waiver_used: Vec<bool>,
}

struct Applier<'a> {
    policy: &'a Policy,
    used: Vec<bool>,
}

impl Applier<'_> {
    fn result(
        &mut self,
        meta: &'static RuleMeta,
        (outcome, said): (Outcome, Arc<Said>),
        target_id: &str,
    ) -> RuleResult {
        let ov = self
            .policy
            .overrides
            .get(meta.reference)
            .copied()
            .unwrap_or_default();
        let severity = ov.severity.unwrap_or(meta.severity);
        if !ov.enabled {
            return RuleResult {
                meta,
                severity,
                outcome: Outcome::Skipped,
                said: Arc::new(Said {
                    message: "disabled in config".into(),
                    evidence: Box::from("{}"),
                    remediation: None,
                }),
                waiver: None,
            };
        }
        let mut r = RuleResult {
            meta,
            severity,
            outcome,
            said,
            waiver: None,
        };
        if matches!(r.outcome, Outcome::Fail | Outcome::Unknown) {
            for (i, w) in self.policy.waivers.iter().enumerate() {
                if std::ptr::eq(w.rule, meta)
                    && !w.is_expired(self.policy.today)
                    && armid::scope_covers(&w.scope_path(), target_id)
                {
                    self.used[i] = true;
                    r.waiver = Some(WaiverInfo {
                        reason: w.reason.clone(),
                        expires: w.expires.to_string(),
                        original: r.outcome,
                    });
                    r.outcome = Outcome::Waived;
                    break;
                }
            }
        }
        r
    }
}

pub fn evaluate(
    estate: &Estate,
    settings: &Settings,
    policy: &Policy,
    scope: &Scope,
    generated_at: OffsetDateTime,
) -> Evaluation {
    let cx = Cx { estate, settings };
    let all = rules::all();
    let mut ap = Applier {
        policy,
        used: vec![false; policy.waivers.len()],
    };

    // Subscription-scoped rules: once per subscription, shared by every VM.
    type Said2 = (Outcome, Arc<Said>);
    let mut sub_findings: HashMap<String, Vec<(usize, Said2)>> = HashMap::new();
    let mut subscriptions = Vec::new();
    for s in estate
        .subscriptions
        .iter()
        .filter(|s| scope.subscription_in(&s.id))
    {
        let findings: Vec<(usize, Said2)> = all
            .iter()
            .enumerate()
            .filter(|(_, r)| r.meta().subscription_scoped)
            .map(|(i, r)| (i, Said::of(r.check_subscription(&cx, &s.id))))
            .collect();
        let target = format!("/subscriptions/{}", s.id);
        let results = findings
            .iter()
            .map(|(i, f)| ap.result(all[*i].meta(), f.clone(), &target))
            .collect();
        sub_findings.insert(s.key.clone(), findings);
        subscriptions.push(SubscriptionReport {
            id: s.id.clone(),
            display_name: s.display_name.clone(),
            vm_list_missing: s.vm_list_missing.clone(),
            results,
        });
    }

    let in_scope: Vec<&Vm> = estate.vms.iter().filter(|v| scope.vm_in(v)).collect();
    // A rule that says its finding depends on less than the whole VM (`Rule::shared_by`) is
    // evaluated once per distinct key and thread; the VMs share the words.
    let evaluate_vm = |ap: &mut Applier, memo: &mut HashMap<(usize, String), Said2>, vm: &Vm| {
        let pre = Said::of(all[0].check_vm(&cx, vm));
        let mut results = Vec::with_capacity(all.len());
        let applicable = pre.0 == Outcome::Pass;
        results.push(ap.result(all[0].meta(), pre, &vm.id));
        if applicable {
            let cached = sub_findings.get(&vm.subscription_id.to_ascii_lowercase());
            for (i, rule) in all.iter().enumerate().skip(1) {
                let meta = rule.meta();
                let sub = cached
                    .filter(|_| meta.subscription_scoped)
                    .and_then(|c| c.iter().find(|(j, _)| *j == i));
                let f = match (sub, rule.shared_by(&cx, vm)) {
                    (Some((_, f)), _) => f.clone(),
                    (None, Some(key)) => memo
                        .entry((i, key))
                        .or_insert_with(|| Said::of(rule.check_vm(&cx, vm)))
                        .clone(),
                    (None, None) => Said::of(rule.check_vm(&cx, vm)),
                };
                results.push(ap.result(meta, f, &vm.id));
            }
        }
        VmReport {
            verdict: verdict(&results),
            id: vm.id.clone(),
            name: vm.name.clone(),
            subscription_id: vm.subscription_id.clone(),
            resource_group: vm.resource_group.clone(),
            location: vm.location.clone(),
            size: vm.size.clone(),
            results,
        }
    };
    // Rules are pure, so VMs are evaluated in parallel chunks (each with its own waiver
    // bookkeeping), then joined in order. Small estates stay on one thread.
    let threads = if in_scope.len() < PARALLEL_FROM {
        1
    } else {
        crate::par::threads()
    };
    let parts = crate::par::map_chunks(&in_scope, threads, |part| {
        let mut ap = Applier {
            policy,
            used: vec![false; policy.waivers.len()],
        };
        let mut memo = HashMap::new();
        let out: Vec<VmReport> = (part.iter())
            .map(|vm| evaluate_vm(&mut ap, &mut memo, vm))
            .collect();
        (out, ap.used)
    });
    let mut vms = Vec::with_capacity(in_scope.len());
    for (part, used) in parts {
        vms.extend(part);
        for (u, p) in ap.used.iter_mut().zip(used) {
            *u |= p;
        }
    }
    vms.sort_by_cached_key(|v| v.id.to_ascii_lowercase());

    let errors: Vec<_> = estate
        .errors
        .iter()
        .filter(|e| match armid::subscription_of(&e.scope) {
            Some(s) => scope.subscription_in(s) || estate.subscription(s).is_none(),
            None => true,
        })
        .cloned()
        .collect();

    Evaluation {
        report: Report {
            ruleset_name: settings.ruleset_name.clone(),
            ruleset_as_of: settings.ruleset_as_of.clone(),
            generated_at,
            complete: errors.is_empty(),
            subscriptions,
            vms,
            errors,
        },
        waiver_used: ap.used,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A finding shared by several VMs (`Rule::shared_by`) is the one the rule gives each.
    #[test]
    fn shared_findings_are_what_each_vm_would_get() {
        let settings = Settings::from_ruleset(&crate::ruleset::load("2026-01").unwrap());
        let now = time::macros::datetime!(2026-11-28 20:00 UTC);
        let policy = Policy::new(now.date());
        let mut shared = 0;
        for f in crate::rules::testutil::every_snapshot_file() {
            let estate = crate::load::whole(&f, None).unwrap();
            let cx = Cx {
                estate: &estate,
                settings: &settings,
            };
            let report = evaluate(&estate, &settings, &policy, &Scope::default(), now).report;
            for vr in &report.vms {
                let vm = estate.vms.iter().find(|v| v.id == vr.id).unwrap();
                for r in &vr.results {
                    let rule = rules::find(r.meta.name).unwrap();
                    let (outcome, said) = Said::of(rule.check_vm(&cx, vm));
                    assert_eq!(
                        (r.outcome, &*r.said),
                        (outcome, &*said),
                        "{}: {} for {}",
                        f.display(),
                        r.meta.name,
                        vm.name
                    );
                    shared += usize::from(Arc::strong_count(&r.said) > 1);
                }
            }
        }
        assert!(shared > 50, "only {shared} shared findings");
    }
}
