//! cvm-backup.toml as a CI gate meets it (CONTRACT.md sections 5 and 6): discovery, overrides,
//! limits, fail_on, waivers and their lints, and errors that point at file, line and key.
//! Every run uses the mini snapshot (see `ci_support`) and a fixed clock.

mod ci_support;

use ci_support::*;
use serde_json::Value;

fn vm_v5_id() -> String {
    vm_id(SUB_A, "rg-legacy", "vm-v5")
}

fn waiver(rule: &str, scope: &str, expires: &str) -> String {
    format!(
        "[[waiver]]\nrule = \"{rule}\"\nscope = \"{scope}\"\nreason = \"resize booked, ticket OPS-42\"\nexpires = \"{expires}\"\n"
    )
}

/// `check --from mini --vm vm-v5 --format json --config cfg` plus `extra`, at `now`.
fn vm_v5_with(cfg: &str, now: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let snap = mini(dir.path());
    let c = write(dir.path(), "gate.toml", cfg);
    let mut args = vec![
        "check", "--from", &snap, "--vm", "vm-v5", "--format", "json", "--config", &c,
    ];
    args.extend_from_slice(extra);
    run_env(dir.path(), &args, &[("CVM_BACKUP_NOW", now)])
}

#[test]
fn a_waiver_turns_the_gate_green_and_keeps_the_original_outcome_visible() {
    let dir = tempfile::tempdir().unwrap();
    let snap = mini(dir.path());
    // Without a config the VM is not viable: exit 1.
    let (code, out, _) = run(
        dir.path(),
        &[
            "check", "--from", &snap, "--vm", "vm-v5", "--format", "json",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(
        result(&json(&out), "vm-v5", "vm-size-v6")["outcome"],
        "fail"
    );

    let (code, out, err) = vm_v5_with(&waiver("vm-size-v6", &vm_v5_id(), "2027-03-31"), NOW, &[]);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(err.is_empty(), "a used waiver is silent: {err}");
    let doc = json(&out);
    assert_eq!(
        verdicts(&doc),
        vec![("vm-v5".to_string(), "viable".to_string())]
    );
    let r = result(&doc, "vm-v5", "vm-size-v6");
    assert_eq!(r["outcome"], "waived");
    assert_eq!(r["waiver"]["reason"], "resize booked, ticket OPS-42");
    assert_eq!(r["waiver"]["expires"], "2027-03-31");
    assert_eq!(r["waiver"]["original"], "fail");
    // The finding itself is still there.
    assert!(r["message"]
        .as_str()
        .unwrap()
        .contains("v5 series is not supported"));
    assert_eq!(doc["summary"]["viable"], 1);
    assert_eq!(doc["summary"]["not_viable"], 0);

    // The waived document is valid against the published JSON schema.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/check-v1.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn waiver_scopes_cover_vms_at_or_under_them() {
    for scope in [
        vm_v5_id().to_uppercase(),
        format!("/subscriptions/{SUB_A}/resourceGroups/rg-legacy"),
        format!("/subscriptions/{SUB_A}"),
        SUB_A.to_string(),
    ] {
        let (code, out, err) = vm_v5_with(&waiver("CVMB002", &scope, "2027-03-31"), NOW, &[]);
        assert_eq!(code, 0, "scope {scope}: {err}");
        assert_eq!(
            result(&json(&out), "vm-v5", "vm-size-v6")["outcome"],
            "waived"
        );
    }
    // A sibling resource group does not cover it, and the waiver is reported as unused.
    let (code, out, err) = vm_v5_with(
        &waiver(
            "CVMB002",
            &format!("/subscriptions/{SUB_A}/resourceGroups/rg-legacy2"),
            "2027-03-31",
        ),
        NOW,
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(
        result(&json(&out), "vm-v5", "vm-size-v6")["outcome"],
        "fail"
    );
    assert!(err.contains("matched no fail or unknown result"), "{err}");
}

#[test]
fn waivers_cover_only_their_rule() {
    let (code, out, err) = vm_v5_with(
        &waiver("region-supported", &vm_v5_id(), "2027-03-31"),
        NOW,
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(
        result(&json(&out), "vm-v5", "vm-size-v6")["outcome"],
        "fail"
    );
    assert!(
        err.contains("gate.toml:1: waiver for CVMB003 region-supported"),
        "{err}"
    );
}

#[test]
fn a_waiver_applies_until_the_day_before_it_expires_then_the_gate_is_red_again() {
    let cfg = waiver("vm-size-v6", &vm_v5_id(), "2027-03-31");
    let (code, _, err) = vm_v5_with(&cfg, "2027-03-30T23:59:59Z", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty());

    // From the expiry day on it no longer applies, with a warning naming file:line.
    let (code, out, err) = vm_v5_with(&cfg, "2027-03-31T00:00:00Z", &[]);
    assert_eq!(code, 1);
    let doc = json(&out);
    let r = result(&doc, "vm-v5", "vm-size-v6");
    assert_eq!(r["outcome"], "fail");
    assert!(r.get("waiver").is_none());
    assert!(err.starts_with("warning: "), "{err}");
    assert!(
        err.contains("gate.toml:1: waiver for CVMB002 vm-size-v6"),
        "{err}"
    );
    assert!(
        err.contains("expired on 2027-03-31 (today is 2027-03-31)"),
        "{err}"
    );
    assert!(
        !err.contains("matched no"),
        "an expired waiver is reported once: {err}"
    );

    // --strict: exit 2, nothing on stdout.
    let (code, out, err) = vm_v5_with(&cfg, "2027-04-01T08:00:00Z", &["--strict"]);
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert!(
        err.lines().any(|l| l.starts_with("error: ")
            && l.contains("gate.toml:1: waiver for CVMB002 vm-size-v6")),
        "{err}"
    );
    assert!(err.contains("--strict"), "{err}");
}

#[test]
fn an_unused_waiver_warns_and_strict_makes_it_an_error() {
    let cfg = format!(
        "{}\n{}",
        waiver("vm-size-v6", &vm_v5_id(), "2027-03-31"),
        waiver(
            "key-access",
            &format!("/subscriptions/{SUB_A}"),
            "2027-03-31"
        )
    );
    let (code, out, err) = vm_v5_with(&cfg, NOW, &[]);
    assert_eq!(code, 0, "a lint does not change the verdicts");
    assert_eq!(
        result(&json(&out), "vm-v5", "vm-size-v6")["outcome"],
        "waived"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("warning: ")
            && lines[0].contains("gate.toml:7: waiver for CVMB008 key-access"),
        "{err}"
    );
    assert!(
        lines[0].contains("matched no fail or unknown result"),
        "{err}"
    );

    let (code, out, err) = vm_v5_with(&cfg, NOW, &["--strict"]);
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert!(
        err.lines().any(|l| l.starts_with("error: ")
            && l.contains("gate.toml:7: waiver for CVMB008 key-access")),
        "{err}"
    );

    // -q silences the warning, not the result.
    let (code, _, err) = vm_v5_with(&cfg, NOW, &["-q"]);
    assert_eq!(code, 0);
    assert_eq!(err, "");
}

#[test]
fn no_waivers_re_audits_everything() {
    let cfg = waiver("vm-size-v6", &vm_v5_id(), "2027-03-31");
    let (code, out, err) = vm_v5_with(&cfg, NOW, &["--no-waivers"]);
    assert_eq!(code, 1);
    let doc = json(&out);
    let r = result(&doc, "vm-v5", "vm-size-v6");
    assert_eq!(r["outcome"], "fail");
    assert!(r.get("waiver").is_none());
    assert_eq!(err, "", "ignored waivers are not linted");
    // --strict has nothing to complain about either.
    let (code, _, _) = vm_v5_with(&cfg, NOW, &["--no-waivers", "--strict"]);
    assert_eq!(code, 1);
}

/// Runs `check` with a config text and returns (code, stdout, stderr).
fn with_config(cfg: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let snap = mini(dir.path());
    write(dir.path(), "cvm-backup.toml", cfg);
    let mut args = vec!["check", "--from", &snap, "--format", "json"];
    args.extend_from_slice(extra);
    run(dir.path(), &args)
}

fn assert_config_error(cfg: &str, expected: &[&str]) {
    let (code, out, err) = with_config(cfg, &[]);
    assert_eq!(code, 2, "stderr: {err}");
    assert_eq!(out, "", "stdout is empty at exit 2");
    for e in expected {
        assert!(err.contains(e), "stderr lacks {e:?}:\n{err}");
    }
    assert!(err.contains("--no-config"), "says what to do: {err}");
}

#[test]
fn waiver_input_errors_exit_2_naming_file_line_and_key() {
    // Missing reason: points at the [[waiver]] header.
    assert_config_error(
        "# gate\n\n[[waiver]]\nrule = \"vm-size-v6\"\nscope = \"/subscriptions/x\"\nexpires = \"2027-03-31\"\n",
        &["cvm-backup.toml:3:1: [[waiver]] #1: missing required key `reason`"],
    );
    // Missing expires.
    assert_config_error(
        "[[waiver]]\nrule = \"vm-size-v6\"\nscope = \"/subscriptions/x\"\nreason = \"r\"\n",
        &["cvm-backup.toml:1:1: [[waiver]] #1: missing required key `expires`"],
    );
    // Bad date: points at the value.
    assert_config_error(
        "[[waiver]]\nrule = \"vm-size-v6\"\nscope = \"/subscriptions/x\"\nreason = \"r\"\nexpires = \"31/03/2027\"\n",
        &["cvm-backup.toml:5:11: key `waiver[1].expires`: \"31/03/2027\" is not a valid date; write YYYY-MM-DD"],
    );
    // Unknown rule.
    assert_config_error(
        "[[waiver]]\nrule = \"vm-size-v7\"\nscope = \"/subscriptions/x\"\nreason = \"r\"\nexpires = \"2027-03-31\"\n",
        &["cvm-backup.toml:2:8: key `waiver[1].rule`: unknown rule \"vm-size-v7\"; valid rules:", "vm-size-v6 (CVMB002)"],
    );
    // Unknown key in a waiver.
    assert_config_error(
        "[[waiver]]\nrule = \"vm-size-v6\"\nscope = \"/subscriptions/x\"\nreason = \"r\"\nexpires = \"2027-03-31\"\nowner = \"me\"\n",
        &["cvm-backup.toml:6:1: key `waiver[1].owner`: unknown key in [[waiver]] #1; valid keys: rule, scope, reason, expires"],
    );
}

#[test]
fn config_input_errors_exit_2_and_all_are_reported() {
    assert_config_error(
        "ruleset = \"2026-01\"\nfail_on = \"always\"\n[limits]\ndes_disk_limit = 0\nregion = [\"uaenorth\"]\n[rules.no-such-rule]\nenabled = false\n",
        &[
            "cvm-backup.toml:2:11: key `fail_on`: \"always\" is not a level",
            "cvm-backup.toml:4:18: key `limits.des_disk_limit`: 0 is not a limit",
            "cvm-backup.toml:5:1: key `limits.region`: unknown key in [limits]; valid keys: regions, des_disk_limit",
            "cvm-backup.toml:6:8: key `rules.no-such-rule`: unknown rule",
            "4 errors in the config file",
        ],
    );
    assert_config_error(
        "[rules.confidential-vm]\nenabled = false\n",
        &["cvm-backup.toml:2:11: key `rules.confidential-vm.enabled`: CVMB001 confidential-vm is the precondition"],
    );
    assert_config_error(
        "[rules.des-disk-limit]\nseverity = \"fatal\"\n",
        &["cvm-backup.toml:2:12: key `rules.des-disk-limit.severity`: \"fatal\" is not a severity"],
    );
    assert_config_error("ruleset = [\n", &["cvm-backup.toml:", "not valid TOML"]);
}

#[test]
fn a_disabled_rule_reports_skipped_disabled_in_config() {
    let (code, out, _) = with_config("[rules.vm-size-v6]\nenabled = false\n", &["--vm", "vm-v5"]);
    assert_eq!(code, 0);
    let doc = json(&out);
    let r = result(&doc, "vm-v5", "vm-size-v6");
    assert_eq!(r["outcome"], "skipped");
    assert_eq!(r["message"], "disabled in config");
    assert_eq!(verdicts(&doc)[0].1, "viable");
    // Every confidential VM still has eleven results.
    assert_eq!(doc["vms"][0]["results"].as_array().unwrap().len(), 11);
}

#[test]
fn a_severity_override_changes_the_verdict_and_the_reported_severity() {
    let (code, out, _) = with_config("", &["--vm", "vm-crr"]);
    assert_eq!(code, 0);
    assert_eq!(verdicts(&json(&out))[0].1, "viable_with_warnings");

    let (code, out, _) = with_config(
        "[rules.vault-cross-region-restore]\nseverity = \"error\"\n",
        &["--vm", "vm-crr"],
    );
    assert_eq!(code, 1);
    let doc = json(&out);
    assert_eq!(verdicts(&doc)[0].1, "not_viable");
    assert_eq!(
        result(&doc, "vm-crr", "vault-cross-region-restore")["severity"],
        "error"
    );

    // And the other way: an error rule lowered to a warning.
    let (code, out, _) = with_config(
        "[rules.CVMB002]\nseverity = \"warning\"\n",
        &["--vm", "vm-v5"],
    );
    assert_eq!(code, 0);
    assert_eq!(verdicts(&json(&out))[0].1, "viable_with_warnings");
}

#[test]
fn limits_regions_replace_the_rulesets_list() {
    let (code, _, _) = with_config("", &["--vm", "vm-weu"]);
    assert_eq!(code, 1);
    let (code, out, _) = with_config(
        "[limits]\nregions = [\"UAE North\", \"koreacentral\", \"westeurope\"]\n",
        &["--vm", "vm-weu"],
    );
    assert_eq!(code, 0);
    let doc = json(&out);
    let r = result(&doc, "vm-weu", "region-supported");
    assert_eq!(r["outcome"], "pass");
    assert_eq!(
        r["evidence"]["supported_regions"],
        serde_json::json!(["uaenorth", "koreacentral", "westeurope"])
    );
    // Replaced, not added to: uaenorth is no longer supported when left out.
    let (code, out, _) = with_config("[limits]\nregions = [\"westeurope\"]\n", &["--vm", "vm-ok"]);
    assert_eq!(code, 1);
    assert_eq!(
        result(&json(&out), "vm-ok", "region-supported")["outcome"],
        "fail"
    );
}

#[test]
fn ruleset_and_fail_on_come_from_the_file_unless_a_flag_gives_them() {
    let (code, out, _) = with_config("ruleset = \"2026-07\"\n", &["--vm", "vm-weu"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["ruleset"]["name"], "2026-07");
    let (code, out, _) = with_config(
        "ruleset = \"2026-07\"\n",
        &["--vm", "vm-weu", "--ruleset", "2026-01"],
    );
    assert_eq!(code, 1);
    assert_eq!(json(&out)["ruleset"]["name"], "2026-01");

    let (code, _, _) = with_config("fail_on = \"warning\"\n", &["--vm", "vm-crr"]);
    assert_eq!(code, 1);
    let (code, _, _) = with_config(
        "fail_on = \"warning\"\n",
        &["--vm", "vm-crr", "--fail-on", "error"],
    );
    assert_eq!(code, 0);
    let (code, _, _) = with_config("fail_on = \"never\"\n", &[]);
    assert_eq!(code, 0);
    let (code, _, _) = with_config("fail_on = \"never\"\n", &["--fail-on", "error"]);
    assert_eq!(code, 1);
}

#[test]
fn fail_on_flag_follows_section_5() {
    let cases: &[(&[&str], i32)] = &[
        (&[], 1),
        (&["--fail-on", "never"], 0),
        (&["--fail-on", "warning"], 1),
        (&["--vm", "vm-crr"], 0),
        (&["--vm", "vm-crr", "--fail-on", "warning"], 1),
        (&["--vm", "vm-crr", "--fail-on", "never"], 0),
        (&["--vm", "vm-unk"], 3),
        (&["--vm", "vm-unk", "--fail-on", "warning"], 3),
        (&["--vm", "vm-unk", "--fail-on", "never"], 0),
        (&["--vm", "vm-ok"], 0),
        (&["--vm", "vm-plain"], 0),
    ];
    for (extra, expected) in cases {
        let (code, _, err) = with_config("", extra);
        assert_eq!(code, *expected, "{extra:?}: {err}");
    }
}

#[test]
fn opt_out_features_reach_cvmb005() {
    let (_, out, _) = with_config("", &["--vm", "vm-ok"]);
    assert_eq!(
        result(&json(&out), "vm-ok", "cvm-v2-opt-out")["outcome"],
        "skipped"
    );
    let cfg = "opt_out_features = [\"Microsoft.Compute/OptOutX\"]\n";
    let (code, out, _) = with_config(cfg, &["--vm", "vm-ok"]);
    assert_eq!(code, 0);
    assert_eq!(
        result(&json(&out), "vm-ok", "cvm-v2-opt-out")["outcome"],
        "pass"
    );
    // Subscription B's snapshot did not read that feature: unknown, so exit 3.
    let (code, out, _) = with_config(cfg, &["--vm", "vm-crr"]);
    assert_eq!(code, 3);
    assert_eq!(
        result(&json(&out), "vm-crr", "cvm-v2-opt-out")["outcome"],
        "unknown"
    );
}

#[test]
fn discovery_flag_then_env_then_current_directory_and_no_config_ignores_all() {
    let dir = tempfile::tempdir().unwrap();
    let snap = mini(dir.path());
    let disable = "[rules.vm-size-v6]\nenabled = false\n";
    let args = [
        "check",
        "--from",
        snap.as_str(),
        "--vm",
        "vm-v5",
        "--format",
        "json",
    ];
    let outcome = |out: &str| result(&json(out), "vm-v5", "vm-size-v6")["outcome"].clone();

    // No file anywhere: defaults.
    let (code, out, _) = run(dir.path(), &args);
    assert_eq!((code, outcome(&out)), (1, "fail".into()));

    // ./cvm-backup.toml is found.
    write(dir.path(), "cvm-backup.toml", disable);
    let (code, out, _) = run(dir.path(), &args);
    assert_eq!((code, outcome(&out)), (0, "skipped".into()));

    // CVM_BACKUP_CONFIG wins over the current directory.
    let broken = write(dir.path(), "broken.toml", "ruleset = 7\n");
    let (code, _, err) = run_env(dir.path(), &args, &[("CVM_BACKUP_CONFIG", &broken)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("broken.toml:1:11: key `ruleset`: expected a string, found an integer"),
        "{err}"
    );

    // --config wins over the env.
    let plain = write(dir.path(), "plain.toml", "");
    let mut with_flag = args.to_vec();
    with_flag.extend(["--config", &plain]);
    let (code, out, _) = run_env(dir.path(), &with_flag, &[("CVM_BACKUP_CONFIG", &broken)]);
    assert_eq!((code, outcome(&out)), (1, "fail".into()));

    // --no-config ignores the env and the current directory.
    let mut no_config = args.to_vec();
    no_config.push("--no-config");
    let (code, out, _) = run_env(dir.path(), &no_config, &[("CVM_BACKUP_CONFIG", &broken)]);
    assert_eq!((code, outcome(&out)), (1, "fail".into()));

    // An empty CVM_BACKUP_CONFIG is unset.
    let (code, out, _) = run_env(dir.path(), &args, &[("CVM_BACKUP_CONFIG", "")]);
    assert_eq!((code, outcome(&out)), (0, "skipped".into()));

    // A named file must exist.
    let mut missing = args.to_vec();
    missing.extend(["--config", "nope.toml"]);
    let (code, out, err) = run(dir.path(), &missing);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("cannot read config file nope.toml"), "{err}");
    assert!(err.contains("cvm-backup init --output nope.toml"), "{err}");
}

#[test]
fn init_writes_a_template_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let snap = mini(dir.path());
    let (code, _, err) = run(dir.path(), &["init"]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(dir.path().join("cvm-backup.toml")).unwrap();
    assert!(text.contains("[[waiver]]"));
    // Found in the current directory, parsed, and changes nothing.
    let (code, out, err) = run(dir.path(), &["check", "--from", &snap, "--format", "json"]);
    assert_eq!(code, 1);
    assert_eq!(err, "");
    let (_, plain, _) = run(
        dir.path(),
        &["check", "--from", &snap, "--format", "json", "--no-config"],
    );
    assert_eq!(verdicts(&json(&out)), verdicts(&json(&plain)));
    // A second init does not overwrite it.
    let (code, _, err) = run(dir.path(), &["init"]);
    assert_eq!(code, 2);
    assert!(err.contains("already exists; use --force"), "{err}");
}

#[test]
fn collect_rejects_a_bad_config_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "cvm-backup.toml",
        "opt_out_features = [\"no-namespace\"]\n",
    );
    let (code, out, err) = run(
        dir.path(),
        &[
            "collect",
            "--subscription",
            SUB_A,
            "--access-token",
            "t",
            "--arm-endpoint",
            "http://127.0.0.1:9",
            "--output",
            "snap.json",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    assert!(
        err.contains(
            "cvm-backup.toml:1:21: key `opt_out_features`: \"no-namespace\" is not a feature name"
        ),
        "{err}"
    );
    assert!(!dir.path().join("snap.json").exists());
}
