//! Every per-rule fixture under tests/fixtures/rules/<rule>/<outcome>[-variant].json gives the
//! outcome its file name says, for the VM `vm-under-test`, evaluated through the library.

use std::path::{Path, PathBuf};

use cvm_backup::engine::{evaluate, Policy, Scope};
use cvm_backup::estate::Estate;
use cvm_backup::rules::{self, Settings};
use cvm_backup::snapshot::Snapshot;
use time::macros::datetime;

const OPT_OUT: &str = "Microsoft.Compute/ExampleCvmV2OptOut";

fn fixture_files() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).expect("tests/fixtures/rules") {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let rule = dir.file_name().unwrap().to_string_lossy().to_string();
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "json") {
                out.push((rule.clone(), f));
            }
        }
    }
    out.sort();
    out
}

fn outcome_of(rule: &str, path: &Path) -> String {
    let snap = Snapshot::load(path).unwrap_or_else(|e| panic!("{e}"));
    let estate = Estate::from_snapshot(&snap, None);
    let mut settings = Settings::from_ruleset(&cvm_backup::ruleset::load("2026-01").unwrap());
    if rule == "cvm-v2-opt-out" && !path.ends_with("skipped.json") {
        settings.opt_out_features = vec![OPT_OUT.to_string()];
    }
    let policy = Policy::new(datetime!(2026-11-28 20:00 UTC).date());
    let eval = evaluate(
        &estate,
        &settings,
        &policy,
        &Scope::default(),
        datetime!(2026-11-28 20:00 UTC),
    );
    let vm = eval
        .report
        .vms
        .iter()
        .find(|v| v.name == "vm-under-test")
        .unwrap_or_else(|| panic!("{}: no vm-under-test", path.display()));
    let r = vm
        .results
        .iter()
        .find(|r| r.meta.name == rule)
        .unwrap_or_else(|| panic!("{}: no result for {rule}", path.display()));
    r.outcome.as_str().to_string()
}

#[test]
fn every_rule_fixture_gives_the_outcome_in_its_name() {
    let files = fixture_files();
    assert!(
        files.len() >= 33,
        "expected fixtures for every rule, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for (rule, path) in &files {
        let stem = path.file_stem().unwrap().to_string_lossy();
        let expected = stem.split('-').next().unwrap();
        let got = outcome_of(rule, path);
        if got != expected {
            failures.push(format!(
                "{}: expected {expected}, got {got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_rule_has_pass_fail_and_unknown_or_a_documented_reason() {
    let files = fixture_files();
    for r in rules::all() {
        let name = r.meta().name;
        let has = |o: &str| {
            files.iter().any(|(rule, p)| {
                rule == name
                    && p.file_stem().unwrap().to_string_lossy().split('-').next() == Some(o)
            })
        };
        assert!(has("pass"), "{name} has no pass fixture");
        assert!(has("fail"), "{name} has no fail fixture");
        // confidential-vm and region-supported decide from the VM payload alone: never unknown.
        if !matches!(name, "confidential-vm" | "region-supported") {
            assert!(has("unknown"), "{name} has no unknown fixture");
        }
    }
}
