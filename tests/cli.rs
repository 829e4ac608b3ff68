//! The binary as a user meets it: exit codes, bad input, output formats, rules and explain.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

const NOW: &str = "2026-11-28T20:00:00Z";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn demo() -> String {
    root().join("fixtures/demo.json").display().to_string()
}

/// The binary with a scrubbed environment and a fixed clock.
fn cvm() -> Command {
    let mut c = Command::cargo_bin("cvm-backup").unwrap();
    for (k, _) in std::env::vars() {
        if k.starts_with("AZURE_") || k.starts_with("CVM_BACKUP_") || k == "NO_COLOR" {
            c.env_remove(k);
        }
    }
    // An empty working directory of our own: no stray ./cvm-backup.toml is picked up.
    let cwd = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    c.env("CVM_BACKUP_NOW", NOW).current_dir(cwd);
    c
}

fn json_of(args: &[&str]) -> (Value, i32) {
    let out = cvm().args(args).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (v, out.status.code().unwrap())
}

/// `check --from fixtures/demo.json --format json` plus `extra`.
fn demo_json(extra: &[&str]) -> (Value, i32) {
    let d = demo();
    let mut args = vec!["check", "--from", &d, "--format", "json"];
    args.extend_from_slice(extra);
    json_of(&args)
}

fn verdicts(doc: &Value) -> Vec<(String, String)> {
    doc["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn write_tmp(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn demo_gives_each_vm_the_expected_verdict() {
    let (doc, code) = demo_json(&[]);
    assert_eq!(code, 1, "a not-viable VM gives exit 1");
    let mut got = verdicts(&doc);
    got.sort();
    let expected = [
        ("vm-app-01", "viable"),
        ("vm-app-02", "viable"),
        ("vm-batch-01", "viable_with_warnings"),
        ("vm-build-01", "not_applicable"),
        ("vm-erp-01", "not_viable"),
        ("vm-guest-01", "not_viable"),
        ("vm-jump-01", "not_applicable"),
        ("vm-kr-analytics-01", "viable_with_warnings"),
        ("vm-kr-api-01", "viable"),
        ("vm-kr-cache-01", "unknown"),
        ("vm-kr-db-01", "not_viable"),
        ("vm-kr-sgx-01", "not_applicable"),
        ("vm-legacy-01", "not_viable"),
        ("vm-sql-01", "viable"),
        ("vm-web-01", "not_viable"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(doc["summary"]["vms"], 15);
    assert_eq!(doc["summary"]["not_applicable"], 3);
    assert_eq!(doc["summary"]["viable"], 4);
    assert_eq!(doc["summary"]["viable_with_warnings"], 2);
    assert_eq!(doc["summary"]["not_viable"], 5);
    assert_eq!(doc["summary"]["unknown"], 1);
    assert_eq!(doc["complete"], false);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 1);
    assert_eq!(doc["errors"][0]["status"], 403);
    assert_eq!(doc["errors"][0]["code"], "AuthorizationFailed");
}

#[test]
fn json_follows_the_contract_shape() {
    let (doc, _) = demo_json(&[]);
    assert_eq!(doc["schema"], "cvm-backup/check/v1");
    assert_eq!(doc["tool"]["name"], "cvm-backup");
    assert_eq!(doc["ruleset"]["name"], "2026-01");
    assert_eq!(doc["ruleset"]["as_of"], "2026-01-28");
    assert_eq!(doc["generated_at"], NOW);
    // vms sorted by id, case-insensitively; results by ref.
    let ids: Vec<String> = doc["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_ascii_lowercase())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    for vm in doc["vms"].as_array().unwrap() {
        let results = vm["results"].as_array().unwrap();
        let refs: Vec<&str> = results.iter().map(|r| r["ref"].as_str().unwrap()).collect();
        if vm["verdict"] == "not_applicable" {
            assert_eq!(refs, ["CVMB001"]);
            assert_eq!(results[0]["outcome"], "fail");
        } else {
            let expected: Vec<String> = (1..=11).map(|i| format!("CVMB{i:03}")).collect();
            assert_eq!(refs, expected, "{}", vm["name"]);
            assert_eq!(results[0]["outcome"], "pass");
        }
        for r in results {
            if r["outcome"] == "fail" && r["severity"] != "precondition" {
                assert!(
                    r["remediation"]["commands"].is_array(),
                    "fail without remediation: {r}"
                );
            }
        }
    }
    // Subscription-scoped rules, one entry per subscription.
    let subs = doc["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    for s in subs {
        let refs: Vec<&str> = s["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["ref"].as_str().unwrap())
            .collect();
        assert_eq!(refs, ["CVMB004", "CVMB005"]);
    }
}

#[test]
fn json_validates_against_the_published_schema() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/check-v1.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for extra in [
        &[][..],
        &["--ruleset", "2026-07"][..],
        &["--vm", "vm-app-01"][..],
    ] {
        let mut args = vec!["check", "--from"];
        let d = demo();
        args.push(&d);
        args.extend(["--format", "json"]);
        args.extend(extra);
        let (doc, _) = json_of(&args);
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
    // And the schema is not vacuous: a broken document fails it.
    let (mut doc, _) = demo_json(&[]);
    doc["vms"][0]["verdict"] = "great".into();
    assert!(!validator.is_valid(&doc));
}

#[test]
fn exit_codes_follow_section_5() {
    let d = demo();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--vm", "vm-app-01"], 0, "a viable VM only"),
        (&["--vm", "vm-jump-01"], 0, "not-applicable VMs only"),
        (&[], 1, "a VM is not viable"),
        (&["--vm", "vm-kr-cache-01"], 3, "unknown and nothing failed"),
        (&["--vm", "vm-batch-01"], 0, "warnings pass by default"),
        (
            &["--vm", "vm-batch-01", "--fail-on", "warning"],
            1,
            "--fail-on warning",
        ),
        (&["--fail-on", "never"], 0, "--fail-on never turns 1 into 0"),
        (
            &["--vm", "vm-kr-cache-01", "--fail-on", "never"],
            0,
            "--fail-on never turns 3 into 0",
        ),
        (
            &["--vm", "vm-kr-cache-01", "--fail-on", "warning"],
            3,
            "unknown stays 3 with --fail-on warning",
        ),
    ];
    for (extra, code, why) in cases {
        let out = cvm()
            .args(["check", "--from", &d])
            .args(*extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(*code), "{why}: {extra:?}");
    }
}

#[test]
fn an_unreadable_vm_list_fails_closed_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let snap = r#"{"schema":"cvm-backup/snapshot/v1","subscriptions":[{"subscription_id":"00000000-0000-0000-0000-000000000001",
      "virtual_machines":{"error":{"scope":"/subscriptions/00000000-0000-0000-0000-000000000001","operation":"list virtual machines","status":403,"code":"AuthorizationFailed","message":"no"}},
      "disks":{"value":[]},"snapshots":{"value":[]},"disk_encryption_sets":{"value":[]},"recovery_services_vaults":{"value":[]},"key_vaults":{"value":[]},"managed_hsms":{"value":[]}}]}"#;
    let p = write_tmp(dir.path(), "s.json", snap);
    let out = cvm()
        .args(["check", "--from", &p, "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["summary"]["vms"], 0);
    assert_eq!(doc["complete"], false);
    assert_eq!(doc["errors"][0]["operation"], "list virtual machines");
    // The table says so too.
    cvm()
        .args(["check", "--from", &p])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("VM list could not be read"));
}

#[test]
fn bad_snapshots_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(String, &str)> = vec![
        (dir.path().join("missing.json").display().to_string(), "cannot read snapshot"),
        (write_tmp(dir.path(), "garbage.json", "this is not json"), "is not valid JSON at line 1, column 2"),
        (write_tmp(dir.path(), "trunc.json", "{\"schema\": \"cvm-backup/snapshot/v1\",\n \"subscriptions\": [{\"subscription_id\""), "is truncated: the JSON ends early at line 2"),
        (write_tmp(dir.path(), "schema.json", r#"{"schema":"cvm-backup/snapshot/v9","subscriptions":[]}"#), "wrong schema \"cvm-backup/snapshot/v9\""),
        (write_tmp(dir.path(), "noschema.json", r#"{"subscriptions":[]}"#), "missing required field `schema`"),
        (write_tmp(dir.path(), "nosubs.json", r#"{"schema":"cvm-backup/snapshot/v1"}"#), "missing field `subscriptions`"),
        (write_tmp(dir.path(), "noid.json", r#"{"schema":"cvm-backup/snapshot/v1","subscriptions":[{"display_name":"x"}]}"#), "missing field `subscription_id`"),
        (write_tmp(dir.path(), "array.json", "[1,2]"), "top level is not a JSON object"),
        (write_tmp(dir.path(), "emptylist.json", r#"{"schema":"cvm-backup/snapshot/v1","subscriptions":[{"subscription_id":"a","disks":{}}]}"#), "subscriptions[0].disks has neither `value` nor `error`"),
    ];
    for (path, needle) in cases {
        let out = cvm().args(["check", "--from", &path]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{path}: stdout must be empty at exit 2"
        );
        assert!(
            stderr.contains(needle),
            "{path}: {stderr:?} lacks {needle:?}"
        );
        assert!(
            stderr.contains(&path),
            "{path}: the message names the file: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn unknown_extra_fields_are_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(demo()).unwrap()).unwrap();
    v["future_field"] = serde_json::json!({"x": 1});
    v["subscriptions"][0]["another"] = serde_json::json!([1, 2, 3]);
    let p = write_tmp(dir.path(), "extra.json", &v.to_string());
    let (doc, code) = json_of(&["check", "--from", &p, "--format", "json"]);
    assert_eq!(code, 1);
    assert_eq!(doc["summary"]["vms"], 15);
}

#[test]
fn usage_errors_exit_2() {
    cvm()
        .args(["check", "--from", &demo(), "--ruleset", "1999-01"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(
            "unknown ruleset \"1999-01\"; valid rulesets: 2026-01, 2026-07",
        ));
    cvm()
        .args(["check", "--format", "yaml"])
        .assert()
        .code(2)
        .stdout("");
    cvm().args(["check", "--bogus"]).assert().code(2).stdout("");
    cvm().args(["frobnicate"]).assert().code(2).stdout("");
}

#[test]
fn ruleset_2026_07_supports_westeurope() {
    let (doc, _) = demo_json(&["--ruleset", "2026-07"]);
    assert_eq!(doc["ruleset"]["name"], "2026-07");
    let web = verdicts(&doc)
        .into_iter()
        .find(|(n, _)| n == "vm-web-01")
        .unwrap();
    assert_eq!(web.1, "viable");
    // The DES limit is 6000 there, so vm-batch-01's 40 disks are fine.
    let batch = verdicts(&doc)
        .into_iter()
        .find(|(n, _)| n == "vm-batch-01")
        .unwrap();
    assert_eq!(batch.1, "viable");
}

#[test]
fn scope_flags_narrow_the_report() {
    let (doc, _) = demo_json(&["--resource-group", "RG-PROD-LEGACY"]);
    let mut names: Vec<String> = verdicts(&doc).into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["vm-guest-01", "vm-legacy-01"]);
    // --vm by ARM id, in another case; both flags must match.
    let (all, _) = demo_json(&[]);
    let id = all["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vm-sql-01")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_ascii_uppercase();
    let (doc, _) = demo_json(&["--vm", &id]);
    assert_eq!(
        verdicts(&doc),
        [("vm-sql-01".to_string(), "viable".to_string())]
    );
    let (doc, _) = demo_json(&["--vm", "vm-sql-01", "--resource-group", "rg-prod-app"]);
    assert!(verdicts(&doc).is_empty());
    // --subscription narrows VMs and the subscription entries, not the estate.
    let sub = all["subscriptions"][1]["id"].as_str().unwrap().to_string();
    let (doc, _) = demo_json(&["--subscription", &sub]);
    assert_eq!(doc["subscriptions"].as_array().unwrap().len(), 1);
    assert!(doc["vms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["subscription_id"] == sub.as_str()));
}

#[test]
fn a_vm_filter_that_matches_nothing_is_said() {
    cvm()
        .args(["check", "--from", &demo(), "--vm", "no-such-vm"])
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "no VM matched --vm/--resource-group",
        ));
}

#[test]
fn output_file_leaves_stdout_empty() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    cvm()
        .args(["check", "--from", &demo(), "--format", "json", "--output"])
        .arg(&out)
        .assert()
        .code(1)
        .stdout("");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["summary"]["vms"], 15);
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let d = demo();
    let plain = cvm().args(["check", "--from", &d]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains('\x1b'),
        "no colour off a terminal"
    );
    let forced = cvm()
        .args(["check", "--from", &d, "--color", "always"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&forced.stdout).contains("\x1b["));
    let never = cvm()
        .args(["check", "--from", &d, "--color", "never"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&never.stdout).contains('\x1b'));
    // JSON is never coloured.
    let json = cvm()
        .args([
            "check", "--from", &d, "--color", "always", "--format", "json",
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&json.stdout).contains('\x1b'));
}

#[test]
fn table_lists_problems_under_each_vm_and_a_summary() {
    let out = cvm().args(["check", "--from", &demo()]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains(
            "15 VMs: 4 viable, 2 with warnings, 5 not viable, 1 unknown, 3 not confidential"
        ),
        "{s}"
    );
    let legacy = s.lines().position(|l| l.contains("vm-legacy-01")).unwrap();
    let next: Vec<&str> = s.lines().skip(legacy + 1).take(3).collect();
    assert!(
        next[0].contains("CVMB002 vm-size-v6") && next[0].contains("v5 series is not supported"),
        "{next:?}"
    );
    assert!(
        next.iter().any(|l| l.contains("az vm deallocate")),
        "{next:?}"
    );
}

#[test]
fn rules_and_explain() {
    let out = cvm().args(["rules", "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ruleset"]["name"], "2026-01");
    assert_eq!(v["ruleset"]["as_of"], "2026-01-28");
    let rules = v["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 11);
    assert_eq!(rules[7]["ref"], "CVMB008");
    assert_eq!(rules[7]["name"], "key-access");
    assert_eq!(rules[7]["severity"], "error");
    assert_eq!(rules[8]["severity"], "warning");
    for r in rules {
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["ref", "name", "severity", "summary", "docs_url"]);
    }
    cvm()
        .args(["rules"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("CVMB011"));
    for q in ["key-access", "CVMB008", "cvmb008"] {
        cvm().args(["explain", q]).assert().code(0).stdout(
            predicate::str::contains("CVMB008 key-access")
                .and(predicate::str::contains("Managed HSM Crypto User")),
        );
    }
    cvm()
        .args(["explain", "nope"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(
            predicate::str::contains("unknown rule \"nope\"")
                .and(predicate::str::contains("des-disk-limit (CVMB009)")),
        );
}

#[test]
fn table_snapshot() {
    let out = cvm().args(["check", "--from", &demo()]).output().unwrap();
    insta::assert_snapshot!("demo_table", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn json_snapshot() {
    let (doc, _) = demo_json(&[]);
    insta::assert_json_snapshot!("demo_json", doc, {".tool.version" => "[version]"});
}
