//! Live collection end to end: the real binary against the ARM emulator of `tests/support`,
//! serving the same snapshots `check --from` reads. Only 127.0.0.1 is ever contacted.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;
use support::emulator::{Config, Emulator, Fault};
use support::{outcomes, run, Run, NOW};

const TOKEN: &str = "test-token-5f0c9a1e77d2";
const DEMO: &str = "fixtures/demo.json";
const SUB1: &str = "6f1a2b3c-8d4e-4b7a-9c21-5e0f3d7a6b18";
const SUB2: &str = "9b2e4c61-7a3f-4d58-b0e9-2c6a8f1d5e47";
/// vm-under-test's subscription in every per-rule fixture.
const FIXTURE_SUB: &str = "5e7c1a2b-3d4f-4e6a-9b8c-7d6e5f4a3b21";
const VIABLE: &str = "tests/fixtures/rules/vm-size-v6/pass.json";
const OPT_OUT: &str = "Microsoft.Compute/ExampleCvmV2OptOut";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn abs(rel: &str) -> String {
    root().join(rel).display().to_string()
}

fn bare() -> Command {
    support::bare_cvm()
}

fn cvm() -> Command {
    let mut c = bare();
    // Belt and braces: even a test that forgot --access-token only reaches a missing `az`.
    c.env("AZURE_CREDENTIAL_KIND", "azurecli");
    c
}

fn conn(emu: &Emulator) -> Vec<String> {
    vec![
        "--arm-endpoint".into(),
        emu.arm(),
        "--graph-endpoint".into(),
        emu.graph(),
        "--access-token".into(),
        TOKEN.into(),
    ]
}

/// `check --format json` live against the emulator, plus `extra`.
fn live(emu: &Emulator, extra: &[&str]) -> Run {
    let mut c = cvm();
    c.arg("check")
        .args(conn(emu))
        .args(["--format", "json"])
        .args(extra);
    run(c)
}

/// `check --from FILE --format json`, plus `extra`.
fn offline(file: &str, extra: &[&str]) -> Run {
    let mut c = cvm();
    c.args(["check", "--from", &abs(file), "--format", "json"])
        .args(extra);
    run(c)
}

fn outcome_of(doc: &Value, vm_name: &str, rule: &str) -> String {
    let vm = doc["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vm_name)
        .unwrap_or_else(|| panic!("no VM {vm_name}"));
    vm["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule)
        .unwrap_or_else(|| panic!("no {rule} for {vm_name}"))["outcome"]
        .as_str()
        .unwrap()
        .to_string()
}

fn errors_of(doc: &Value) -> Vec<Value> {
    doc["errors"].as_array().cloned().unwrap_or_default()
}

/// The error entry for this operation (and scope suffix), if any.
fn error_for(doc: &Value, operation: &str, scope_ends: &str) -> Option<Value> {
    errors_of(doc).into_iter().find(|e| {
        e["operation"] == operation
            && e["scope"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .ends_with(&scope_ends.to_ascii_lowercase())
    })
}

fn assert_same_outcomes(live: &Value, offline: &Value, what: &str) {
    let (l, o) = (outcomes(live), outcomes(offline));
    assert!(!o.is_empty(), "{what}: offline report has no results");
    let diff: Vec<String> = o
        .iter()
        .filter(|(k, v)| l.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: offline {v}, live {:?}", l.get(k)))
        .chain(
            l.keys()
                .filter(|k| !o.contains_key(*k))
                .map(|k| format!("{k}: only live")),
        )
        .collect();
    assert!(
        diff.is_empty(),
        "{what}: live differs:\n{}",
        diff.join("\n")
    );
    assert_eq!(live["summary"], offline["summary"], "{what}: summary");
}

// ---- equivalence with check --from ----------------------------------------------------------

#[test]
fn live_check_of_the_demo_estate_equals_check_from_the_snapshot() {
    // Paged in twos, each list starting with an empty page that carries a nextLink.
    let emu = Emulator::with_config(
        DEMO,
        Config {
            page_size: 2,
            empty_first_page: true,
            ..Config::default()
        },
    );
    let l = live(&emu, &[]);
    let o = offline(DEMO, &[]);
    assert_eq!(l.code, 1, "{}", l.stderr);
    assert_eq!(o.code, 1);
    let (lj, oj) = (l.json(), o.json());
    assert_same_outcomes(&lj, &oj, "demo");
    assert_eq!(lj["summary"]["vms"], 15);
    assert_eq!(lj["complete"], oj["complete"]);
    // The one unreadable read of the estate is reported the same way.
    let strip = |v: &Value| -> Vec<(Value, Value, Value, Value)> {
        errors_of(v)
            .iter()
            .map(|e| {
                (
                    e["scope"].clone(),
                    e["operation"].clone(),
                    e["status"].clone(),
                    e["code"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&lj), strip(&oj));
    // Paging really happened: the 28 unattached disks of subscription 1 alone take 15+ pages.
    assert!(
        emu.count(&format!(
            "/subscriptions/{SUB1}/providers/Microsoft.Compute/disks"
        )) > 15
    );
}

#[test]
fn the_demo_estate_costs_exactly_38_requests_and_none_per_vm() {
    let emu = Emulator::start(DEMO);
    let l = live(&emu, &[]);
    assert_eq!(l.code, 1, "{}", l.stderr);
    let seen = emu.requests();
    let mut per_path: BTreeMap<String, usize> = BTreeMap::new();
    for s in &seen {
        *per_path.entry(s.path.to_ascii_lowercase()).or_default() += 1;
    }
    // 1 subscription list; per subscription 7 lists + 1 feature (x2); 1 Graph lookup;
    // 3 reads per vault (x4); 2 RBAC Key Vaults; 2 role definitions; 2 reads per HSM (x2).
    assert_eq!(seen.len(), 1 + 16 + 1 + 12 + 2 + 2 + 4, "{per_path:#?}");
    assert!(
        per_path.values().all(|&n| n == 1),
        "a path was read twice: {per_path:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.path.to_ascii_lowercase().contains("/virtualmachines/")),
        "a per-VM request was made"
    );
    assert_eq!(emu.count("/backupProtectedItems"), 4);
    assert_eq!(emu.count("/providers/Microsoft.Features/"), 2);
    assert_eq!(emu.count("/hsm/"), 4);
    // The role assignments of RBAC vaults are filtered on the Backup Management Service.
    let ra: Vec<_> = seen
        .iter()
        .filter(|s| {
            s.path.contains(
                "/vaults/kv-contoso-kr-rbac/providers/Microsoft.Authorization/roleAssignments",
            )
        })
        .collect();
    assert_eq!(ra.len(), 1);
    assert!(
        ra[0]
            .query
            .contains("principalId+eq+%274f6c2a8e-1b3d-4e7f-9a05-c8d2e6b1f374%27"),
        "{}",
        ra[0].query
    );
}

#[test]
fn collect_then_check_from_is_byte_identical_to_live_check() {
    let emu = Emulator::start(DEMO);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("estate.json");
    let mut c = cvm();
    c.arg("collect")
        .args(conn(&emu))
        .args(["--output", snap.to_str().unwrap()]);
    let col = run(c);
    // The demo estate has one forbidden read: an incomplete snapshot, exit 3.
    assert_eq!(col.code, 3, "{}", col.stderr);
    assert!(col.stdout.is_empty(), "collect printed: {}", col.stdout);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&snap).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "snapshot mode {mode:o}");
    }
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&snap).unwrap()).unwrap();
    assert_eq!(doc["schema"], "cvm-backup/snapshot/v1");
    assert_eq!(doc["source"], "arm");
    assert_eq!(doc["collected_at"], NOW);
    assert_eq!(doc["endpoints"]["arm"], emu.arm());

    let from = {
        let mut c = cvm();
        c.args([
            "check",
            "--from",
            snap.to_str().unwrap(),
            "--format",
            "json",
        ]);
        run(c)
    };
    let l = live(&emu, &[]);
    assert_eq!(from.code, l.code);
    assert_eq!(
        from.stdout, l.stdout,
        "check --from the collected snapshot differs from live check"
    );
    // And both agree with the fixture the emulator served.
    assert_same_outcomes(&l.json(), &offline(DEMO, &[]).json(), "demo");
}

#[test]
fn the_collected_snapshot_keeps_raw_payloads() {
    let emu = Emulator::start(DEMO);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("s.json");
    let mut c = cvm();
    c.arg("collect")
        .args(conn(&emu))
        .args(["-o", snap.to_str().unwrap()]);
    run(c);
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&snap).unwrap()).unwrap();
    let want: Value = serde_json::from_str(&std::fs::read_to_string(abs(DEMO)).unwrap()).unwrap();
    // VM payloads come back exactly as served, fields the rules ignore included.
    assert_eq!(
        got["subscriptions"][0]["virtual_machines"],
        want["subscriptions"][0]["virtual_machines"]
    );
    assert_eq!(
        got["subscriptions"][1]["disks"],
        want["subscriptions"][1]["disks"]
    );
    assert_eq!(got["backup_principal"], want["backup_principal"]);
    assert_eq!(got["role_definitions"], want["role_definitions"]);
}

// ---- every rule's fixtures, live -------------------------------------------------------------

fn rule_fixtures(rule: &str) -> Vec<String> {
    let dir = root().join("tests/fixtures/rules").join(rule);
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures for {rule}");
    v
}

fn same_outcomes_live_and_offline(rule: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cvm-backup.toml");
    std::fs::write(&config, format!("opt_out_features = [\"{OPT_OUT}\"]\n")).unwrap();
    let mut checked = 0;
    for file in rule_fixtures(rule) {
        let mut extra: Vec<&str> = Vec::new();
        let cfg = config.to_str().unwrap();
        if rule == "cvm-v2-opt-out" && !file.ends_with("skipped.json") {
            extra.extend(["--config", cfg]);
        } else {
            extra.push("--no-config");
        }
        let emu = Emulator::with_config(
            &file,
            Config {
                page_size: 3,
                empty_first_page: false,
                ..Config::default()
            },
        );
        let l = live(&emu, &extra);
        let o = offline(&file, &extra);
        assert_eq!(
            l.code, o.code,
            "{file}: exit code live {} offline {}\n{}",
            l.code, o.code, l.stderr
        );
        let (lj, oj) = (l.json(), o.json());
        assert_same_outcomes(&lj, &oj, &file);
        // The rule under test gives the outcome its file name says.
        let stem = Path::new(&file)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let expected = stem.split('-').next().unwrap();
        if rule != "cvm-v2-opt-out" || extra.len() == 2 || expected == "skipped" {
            assert_eq!(
                outcome_of(&lj, "vm-under-test", rule),
                outcome_of(&oj, "vm-under-test", rule)
            );
        }
        // Every request carried the token, and only that token.
        assert!(emu
            .requests()
            .iter()
            .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))));
        checked += 1;
    }
    assert!(checked > 0);
}

macro_rules! rule_tests {
    ($($name:ident => $rule:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                same_outcomes_live_and_offline($rule);
            }
        )*
    };
}

rule_tests! {
    fixtures_confidential_vm_live => "confidential-vm",
    fixtures_vm_size_v6_live => "vm-size-v6",
    fixtures_region_supported_live => "region-supported",
    fixtures_preview_feature_registered_live => "preview-feature-registered",
    fixtures_cvm_v2_opt_out_live => "cvm-v2-opt-out",
    fixtures_os_disk_encryption_live => "os-disk-encryption",
    fixtures_vault_same_region_live => "vault-same-region",
    fixtures_key_access_live => "key-access",
    fixtures_des_disk_limit_live => "des-disk-limit",
    fixtures_backup_policy_live => "backup-policy",
    fixtures_vault_cross_region_restore_live => "vault-cross-region-restore",
}

// ---- exit codes ---------------------------------------------------------------------------

#[test]
fn exit_0_when_every_vm_is_viable_and_the_read_is_complete() {
    let emu = Emulator::start(VIABLE);
    let l = live(&emu, &[]);
    assert_eq!(l.code, 0, "{}", l.stderr);
    let doc = l.json();
    assert_eq!(doc["complete"], true);
    assert!(errors_of(&doc).is_empty());
}

#[test]
fn exit_3_when_a_vm_is_unknown() {
    let emu = Emulator::start("tests/fixtures/rules/key-access/unknown-rbac-forbidden.json");
    let l = live(&emu, &[]);
    assert_eq!(l.code, 3, "{}", l.stderr);
    assert_eq!(
        outcome_of(&l.json(), "vm-under-test", "key-access"),
        "unknown"
    );
}

#[test]
fn exit_4_when_every_call_is_unauthenticated() {
    let emu = Emulator::start(DEMO);
    emu.fault(Fault::status("", 401, "InvalidAuthenticationToken"));
    let l = live(&emu, &[]);
    l.failed(4, &["401 InvalidAuthenticationToken", "--access-token"]);
    // The subscription list failed: nothing else was tried, and a 401 is not retried.
    assert_eq!(emu.requests().len(), 1);

    // Same with explicit subscriptions: every list is refused, nothing readable.
    let emu = Emulator::start(DEMO);
    emu.fault(Fault::status("", 401, "InvalidAuthenticationToken"));
    let l = live(&emu, &["--subscription", SUB1, "--subscription", SUB2]);
    l.failed(4, &[]);
    // Phase one only (7 lists + 1 feature per subscription, and Graph); no vault or key reads.
    assert_eq!(emu.requests().len(), 2 * 8 + 1, "{:#?}", emu.requests());
}

#[test]
fn exit_4_when_the_endpoint_refuses_connections() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // bound, then dropped: nothing listens there now
    let mut c = cvm();
    c.args([
        "check",
        "--arm-endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--graph-endpoint",
        &format!("http://127.0.0.1:{port}/graph"),
        "--access-token",
        TOKEN,
        "--timeout",
        "3",
    ]);
    let r = run(c);
    r.failed(4, &["cannot reach Azure Resource Manager"]);
}

#[test]
fn exit_2_for_a_plain_http_endpoint_before_any_connection() {
    let emu = Emulator::start(DEMO);
    let mut c = cvm();
    c.args([
        "check",
        "--arm-endpoint",
        "http://example.com",
        "--graph-endpoint",
        &emu.graph(),
        "--access-token",
        TOKEN,
    ]);
    let r = run(c);
    r.failed(2, &["https://"]);
    // Graph is an allowed loopback endpoint, but nothing was sent anywhere.
    let mut c = cvm();
    c.args([
        "collect",
        "--arm-endpoint",
        &emu.arm(),
        "--graph-endpoint",
        "http://graph.example.com",
        "--access-token",
        TOKEN,
        "--output",
        "/nonexistent/never-written.json",
    ]);
    assert_eq!(run(c).code, 2);
    assert!(emu.requests().is_empty(), "{:#?}", emu.requests());
}

#[test]
fn exit_1_with_not_viable_vms() {
    let emu = Emulator::start("tests/fixtures/rules/vm-size-v6/fail.json");
    let l = live(&emu, &[]);
    assert_eq!(l.code, 1, "{}", l.stderr);
    assert_eq!(l.json()["complete"], true);
}

// ---- throttling, retries, faults -------------------------------------------------------------

#[test]
fn throttled_reads_are_retried_and_the_run_stays_complete() {
    let emu = Emulator::start(VIABLE);
    emu.fault(Fault::throttle(
        "/providers/Microsoft.Compute/virtualMachines",
        2,
        "retry-after-ms",
        "20",
    ));
    emu.fault(Fault::throttle(
        "/providers/Microsoft.Compute/disks",
        1,
        "Retry-After",
        "1",
    ));
    emu.fault(Fault::throttle(
        "/backupPolicies",
        1,
        "x-ms-retry-after-ms",
        "10",
    ));
    emu.fault(
        Fault::status(
            "/providers/Microsoft.Compute/snapshots",
            503,
            "ServiceUnavailable",
        )
        .times(1),
    );
    emu.fault(
        Fault::status("/backupstorageconfig", 500, "InternalServerError")
            .bare()
            .times(2),
    );
    // Retry-After as an HTTP date, one second ahead.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    emu.fault(Fault::throttle(
        "/backupProtectedItems",
        1,
        "Retry-After",
        &soon.format(&fmt).unwrap(),
    ));
    let l = live(&emu, &[]);
    assert_eq!(l.code, 0, "{}", l.stderr);
    let doc = l.json();
    assert_eq!(doc["complete"], true, "{doc:#}");
    assert!(errors_of(&doc).is_empty());
    assert_eq!(emu.count("/providers/Microsoft.Compute/virtualMachines"), 3);
    assert_eq!(emu.count("/providers/Microsoft.Compute/disks"), 2);
    assert_eq!(emu.count("/backupPolicies"), 2);
    assert_eq!(emu.count("/providers/Microsoft.Compute/snapshots"), 2);
    assert_eq!(emu.count("/backupProtectedItems"), 2);
    assert_eq!(emu.count("/backupstorageconfig"), 3);
}

#[test]
fn a_retry_after_beyond_the_overall_timeout_is_not_waited_for() {
    let emu = Emulator::start(VIABLE);
    emu.fault(Fault::throttle(
        "/providers/Microsoft.Compute/disks",
        1,
        "Retry-After",
        "3600",
    ));
    let started = std::time::Instant::now();
    let l = live(&emu, &[]);
    assert!(started.elapsed() < Duration::from_secs(60));
    let doc = l.json();
    let e = error_for(&doc, "list disks", "/providers/Microsoft.Compute/disks")
        .unwrap_or_else(|| panic!("{:#}", doc["errors"]));
    assert_eq!(e["status"], 429);
    assert_eq!(e["code"], "TooManyRequests");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("3600 s, beyond the overall --timeout"),
        "{e}"
    );
    assert_eq!(emu.count("/providers/Microsoft.Compute/disks"), 1);
}

#[test]
fn exit_4_when_nothing_answers_before_the_overall_timeout() {
    let emu = Emulator::start(VIABLE);
    emu.fault(Fault::slow("/subscriptions", Duration::from_secs(60)));
    let started = std::time::Instant::now();
    let l = live(&emu, &["--timeout", "2"]);
    assert!(started.elapsed() < Duration::from_secs(30));
    l.failed(4, &["overall --timeout of 2 s was reached"]);
}

#[test]
fn when_retries_run_out_the_read_is_missing_and_named() {
    let emu = Emulator::start(VIABLE);
    emu.fault(Fault::status(
        "/providers/Microsoft.RecoveryServices/vaults",
        503,
        "ServiceUnavailable",
    ));
    let l = live(&emu, &[]);
    assert_eq!(l.code, 3, "{}", l.stderr);
    let doc = l.json();
    assert_eq!(doc["complete"], false);
    let e = error_for(
        &doc,
        "list recovery services vaults",
        &format!("/subscriptions/{FIXTURE_SUB}/providers/Microsoft.RecoveryServices/vaults"),
    )
    .unwrap_or_else(|| panic!("no error entry: {:#}", doc["errors"]));
    assert_eq!(e["status"], 503);
    assert_eq!(e["code"], "ServiceUnavailable");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("gave up after 5 attempts"),
        "{e}"
    );
    for rule in [
        "vault-same-region",
        "backup-policy",
        "vault-cross-region-restore",
    ] {
        assert_eq!(outcome_of(&doc, "vm-under-test", rule), "unknown", "{rule}");
    }
    // The rest was read and reported.
    assert_eq!(outcome_of(&doc, "vm-under-test", "vm-size-v6"), "pass");
    assert_eq!(emu.count("/providers/Microsoft.RecoveryServices/vaults"), 5);
}

#[test]
fn client_errors_are_final_and_both_envelopes_are_understood() {
    let emu = Emulator::start(VIABLE);
    emu.fault(Fault::status(
        "/providers/Microsoft.RecoveryServices/vaults",
        409,
        "MissingSubscriptionRegistration",
    ));
    emu.fault(
        Fault::status(
            "/providers/Microsoft.KeyVault/vaults",
            403,
            "AuthorizationFailed",
        )
        .bare(),
    );
    emu.fault(Fault::status(
        "/providers/Microsoft.Compute/snapshots",
        404,
        "ResourceNotFound",
    ));
    let l = live(&emu, &[]);
    let doc = l.json();
    assert_eq!(doc["complete"], false);
    for (op, status, code, path) in [
        (
            "list recovery services vaults",
            409,
            "MissingSubscriptionRegistration",
            "/providers/Microsoft.RecoveryServices/vaults",
        ),
        (
            "list key vaults",
            403,
            "AuthorizationFailed",
            "/providers/Microsoft.KeyVault/vaults",
        ),
        (
            "list snapshots",
            404,
            "ResourceNotFound",
            "/providers/Microsoft.Compute/snapshots",
        ),
    ] {
        let e = error_for(&doc, op, path).unwrap_or_else(|| panic!("{op}: {:#}", doc["errors"]));
        assert_eq!(e["status"], status, "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["message"], format!("emulated {status} {code}"));
        assert_eq!(emu.count(path), 1, "{path} was retried");
    }
    assert_eq!(
        outcome_of(&doc, "vm-under-test", "vault-same-region"),
        "unknown"
    );
}

#[test]
fn a_forbidden_vault_list_in_one_subscription_does_not_hide_the_other() {
    let emu = Emulator::start(DEMO);
    emu.fault(Fault::status(
        &format!("/subscriptions/{SUB1}/providers/Microsoft.RecoveryServices/vaults"),
        403,
        "AuthorizationFailed",
    ));
    emu.fault(Fault::throttle(
        "/providers/Microsoft.Compute/disks",
        3,
        "retry-after-ms",
        "5",
    ));
    let l = live(&emu, &[]);
    assert_eq!(l.code, 1, "{}", l.stderr);
    let doc = l.json();
    let off = offline(DEMO, &[]).json();
    let e = error_for(
        &doc,
        "list recovery services vaults",
        &format!("/subscriptions/{SUB1}/providers/Microsoft.RecoveryServices/vaults"),
    )
    .expect("the forbidden list is named");
    assert_eq!(
        (e["status"].clone(), e["code"].clone()),
        (Value::from(403), Value::from("AuthorizationFailed"))
    );
    // Subscription 1: the vault rules become unknown.
    assert_eq!(
        outcome_of(&doc, "vm-app-01", "vault-same-region"),
        "unknown"
    );
    // Subscription 2: exactly as offline.
    let (lo, oo) = (outcomes(&doc), outcomes(&off));
    let sub2: Vec<_> = oo
        .iter()
        .filter(|(k, _)| k.contains(&format!("/subscriptions/{SUB2}/")))
        .collect();
    assert!(sub2.len() > 20);
    for (k, v) in sub2 {
        assert_eq!(lo.get(k), Some(v), "{k}");
    }
    // No vault children were read in subscription 1, all of them in subscription 2.
    assert_eq!(
        emu.count(&format!(
            "/subscriptions/{SUB1}/resourceGroups/rg-prod-backup"
        )),
        0
    );
    assert_eq!(emu.count("/vaults/rsv-contoso-platform-kr/"), 3);
}

#[test]
fn an_unknown_subscription_is_an_unreadable_scope_not_a_usage_error() {
    let emu = Emulator::start(VIABLE);
    let bogus = "00000000-0000-0000-0000-0000000000aa";
    emu.fault(Fault::status(
        &format!("/subscriptions/{bogus}/"),
        404,
        "SubscriptionNotFound",
    ));
    let l = live(
        &emu,
        &["--subscription", FIXTURE_SUB, "--subscription", bogus],
    );
    assert_eq!(l.code, 3, "{}", l.stderr);
    let doc = l.json();
    assert_eq!(doc["complete"], false);
    let e = error_for(
        &doc,
        "read subscription",
        &format!("/subscriptions/{bogus}"),
    )
    .unwrap_or_else(|| panic!("{:#}", doc["errors"]));
    assert_eq!(e["status"], 404);
    assert_eq!(e["code"], "SubscriptionNotFound");
    // One entry for the subscription, not one per list.
    assert_eq!(
        errors_of(&doc)
            .iter()
            .filter(|e| e["scope"].as_str().unwrap().contains(bogus))
            .count(),
        1
    );
    assert_eq!(outcome_of(&doc, "vm-under-test", "vm-size-v6"), "pass");
}

#[test]
fn a_slow_answer_times_out_and_only_that_read_is_missing() {
    let emu = Emulator::start(VIABLE);
    emu.fault(Fault::slow(
        "/providers/Microsoft.Compute/snapshots",
        Duration::from_secs(30),
    ));
    let started = std::time::Instant::now();
    let l = live(&emu, &["--request-timeout", "1", "--timeout", "4"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    let doc = l.json();
    assert_eq!(doc["complete"], false, "{}", l.stderr);
    let e = error_for(
        &doc,
        "list snapshots",
        "/providers/Microsoft.Compute/snapshots",
    )
    .unwrap_or_else(|| panic!("{:#}", doc["errors"]));
    assert_eq!(e["status"], Value::Null);
    assert_eq!(e["code"], Value::Null);
    // Everything else was read: the VM is still fully evaluated.
    assert_eq!(
        outcome_of(&doc, "vm-under-test", "vault-same-region"),
        "pass"
    );
    assert_eq!(
        outcome_of(&doc, "vm-under-test", "os-disk-encryption"),
        "pass"
    );
}

#[test]
fn dropped_connections_are_retried() {
    let emu = Emulator::start(VIABLE);
    emu.fault(Fault::drop_connection("/providers/Microsoft.Compute/disks").times(2));
    emu.fault(Fault::drop_connection(
        "/providers/Microsoft.KeyVault/managedHSMs",
    ));
    let l = live(&emu, &["--timeout", "20"]);
    let doc = l.json();
    assert_eq!(emu.count("/providers/Microsoft.Compute/disks"), 3);
    assert!(error_for(&doc, "list disks", "/disks").is_none());
    let e = error_for(
        &doc,
        "list managed HSMs",
        "/providers/Microsoft.KeyVault/managedHSMs",
    )
    .unwrap_or_else(|| panic!("{:#}", doc["errors"]));
    assert_eq!(e["status"], Value::Null);
    assert!(e["message"].as_str().unwrap().contains("attempt"), "{e}");
    assert_eq!(emu.count("/providers/Microsoft.KeyVault/managedHSMs"), 5);
}

#[test]
fn a_next_link_to_another_host_is_not_followed() {
    let other = Emulator::empty();
    let emu = Emulator::start(VIABLE);
    emu.fault(Fault::next_link_to(
        "/providers/Microsoft.Compute/disks",
        &other.arm(),
    ));
    emu.fault(Fault::next_link_to(
        "/providers/Microsoft.Compute/snapshots",
        &format!("http://localhost:{}", emu.port),
    ));
    let l = live(&emu, &[]);
    let doc = l.json();
    assert!(
        other.requests().is_empty(),
        "the token went elsewhere: {:#?}",
        other.requests()
    );
    assert_eq!(doc["complete"], false);
    for (op, path) in [("list disks", "/disks"), ("list snapshots", "/snapshots")] {
        let e = error_for(&doc, op, path).unwrap_or_else(|| panic!("{:#}", doc["errors"]));
        assert_eq!(e["code"], "NextLinkOtherHost", "{e}");
    }
    // The first page was kept; only the following one was refused.
    assert_eq!(emu.count("/providers/Microsoft.Compute/disks"), 1);
    assert_eq!(emu.count("/providers/Microsoft.Compute/snapshots"), 1);
}

#[test]
fn an_insecure_hsm_uri_is_never_contacted() {
    let emu = Emulator::start("tests/fixtures/rules/key-access/unknown-hsm-uri-http.json");
    let l = live(&emu, &[]);
    let doc = l.json();
    assert_eq!(outcome_of(&doc, "vm-under-test", "key-access"), "unknown");
    let e = error_for(&doc, "read Managed HSM local RBAC", "hsm-fixture")
        .unwrap_or_else(|| panic!("{:#}", doc["errors"]));
    assert_eq!(e["code"], "InsecureHsmUri");
    assert_eq!(emu.count("/hsm/"), 0);
    // And the HSM of a good hsmUri is read from its data plane, with the same token.
    let emu = Emulator::start("tests/fixtures/rules/key-access/pass-hsm.json");
    let l = live(&emu, &[]);
    assert_eq!(outcome_of(&l.json(), "vm-under-test", "key-access"), "pass");
    assert_eq!(
        emu.count("/hsm/hsm-fixture/providers/Microsoft.Authorization/roleAssignments"),
        1
    );
    assert_eq!(
        emu.count("/hsm/hsm-fixture/providers/Microsoft.Authorization/roleDefinitions"),
        1
    );
}

#[test]
fn backup_principal_id_skips_graph_and_travels_in_the_snapshot() {
    let emu = Emulator::start("tests/fixtures/rules/key-access/pass-rbac.json");
    emu.fault(Fault::status("/graph/", 500, "ShouldNotBeCalled"));
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("s.json");
    let mut c = cvm();
    c.arg("collect").args(conn(&emu)).args([
        "--backup-principal-id",
        "4f6c2a8e-1b3d-4e7f-9a05-c8d2e6b1f374",
        "-o",
        snap.to_str().unwrap(),
    ]);
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.count("/graph/"), 0);
    let mut c = cvm();
    c.args([
        "check",
        "--from",
        snap.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let doc = run(c).json();
    assert_eq!(outcome_of(&doc, "vm-under-test", "key-access"), "pass");
}

#[test]
fn concurrency_is_bounded_by_the_flag() {
    let emu = Emulator::start(DEMO);
    emu.fault(Fault::slow("", Duration::from_millis(40)));
    let l = live(&emu, &["--concurrency", "2"]);
    assert_eq!(l.code, 1, "{}", l.stderr);
    assert!(
        emu.max_in_flight() <= 2,
        "{} in flight",
        emu.max_in_flight()
    );
    assert_eq!(emu.requests().len(), 38);
    // Without the flag, independent reads do run side by side (16 at most).
    let emu = Emulator::start(DEMO);
    emu.fault(Fault::slow("", Duration::from_millis(40)));
    let l = live(&emu, &[]);
    assert_eq!(l.code, 1, "{}", l.stderr);
    assert!(
        emu.max_in_flight() > 2 && emu.max_in_flight() <= 16,
        "{} in flight",
        emu.max_in_flight()
    );
}

#[test]
fn one_malformed_resource_does_not_lose_its_page() {
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(abs(VIABLE)).unwrap()).unwrap();
    let vms = doc["subscriptions"][0]["virtual_machines"]["value"]
        .as_array_mut()
        .unwrap();
    // A VM without `id` or `location`: azure_mgmt_compute's model would fail the whole page.
    vms.insert(0, serde_json::json!({"name": "broken", "properties": {}}));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("malformed.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let emu = Emulator::with_config(
        file.to_str().unwrap(),
        Config {
            page_size: 2,
            empty_first_page: false,
            ..Config::default()
        },
    );
    let l = live(&emu, &[]);
    let out = l.json();
    assert_eq!(outcome_of(&out, "vm-under-test", "vm-size-v6"), "pass");
    assert_eq!(out["complete"], false);
    assert!(
        errors_of(&out)
            .iter()
            .any(|e| e["code"] == "MalformedResource"),
        "{:#}",
        out["errors"]
    );
}

#[test]
fn a_subscription_that_refuses_every_list_is_one_unreadable_scope() {
    let emu = Emulator::start(DEMO);
    emu.fault(Fault::status(
        &format!("/subscriptions/{SUB2}/"),
        403,
        "AuthorizationFailed",
    ));
    let l = live(&emu, &[]);
    let doc = l.json();
    let sub2: Vec<Value> = errors_of(&doc)
        .into_iter()
        .filter(|e| e["scope"].as_str().unwrap().contains(SUB2))
        .collect();
    assert_eq!(sub2.len(), 1, "{sub2:#?}");
    assert_eq!(sub2[0]["scope"], format!("/subscriptions/{SUB2}"));
    assert_eq!(sub2[0]["status"], 403);
    // Subscription 1 is still reported in full.
    assert_eq!(outcome_of(&doc, "vm-app-01", "vault-same-region"), "pass");
    assert!(!doc["vms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["subscription_id"] == SUB2));
}

// ---- secrets and logs ------------------------------------------------------------------------

#[test]
fn the_token_appears_in_no_output_even_with_debug_logs() {
    let emu = Emulator::start(DEMO);
    emu.fault(Fault::throttle(
        "/providers/Microsoft.Compute/disks",
        1,
        "retry-after-ms",
        "5",
    ));
    emu.fault(Fault::status("/backupPolicies", 403, "AuthorizationFailed"));
    let l = live(&emu, &["-vv"]);
    assert!(!l.stdout.contains(TOKEN));
    assert!(!l.stderr.contains(TOKEN), "token in stderr");
    assert!(
        !l.stderr.to_ascii_lowercase().contains("bearer"),
        "{}",
        l.stderr
    );
    // -v: one line per request with method, path, status, elapsed and request id.
    assert!(
        l.stderr
            .contains(&format!("GET {}/subscriptions 200", emu.arm())),
        "{}",
        l.stderr
    );
    assert!(l.stderr.contains("request-id=emu-"), "{}", l.stderr);
    assert!(l.stderr.contains(" 429 "), "{}", l.stderr);
    assert!(
        !l.stderr.contains("api-version"),
        "query strings are not logged"
    );

    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("s.json");
    let mut c = cvm();
    c.arg("collect")
        .args(conn(&emu))
        .args(["-vv", "-o", snap.to_str().unwrap()]);
    let r = run(c);
    assert!(!r.stdout.contains(TOKEN) && !r.stderr.contains(TOKEN));
    assert!(!std::fs::read_to_string(&snap).unwrap().contains(TOKEN));
    // The token did go to the emulator, on every request, and nowhere else.
    assert!(emu
        .requests()
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))));
}

#[test]
fn the_token_from_the_environment_is_not_printed_either() {
    let emu = Emulator::start(VIABLE);
    let mut c = cvm();
    c.args([
        "check",
        "--arm-endpoint",
        &emu.arm(),
        "--graph-endpoint",
        &emu.graph(),
        "-v",
    ])
    .env("CVM_BACKUP_ACCESS_TOKEN", TOKEN);
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains(TOKEN) && !r.stderr.contains(TOKEN));
    assert!(emu
        .requests()
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))));
}

// ---- credentials -----------------------------------------------------------------------------

#[test]
fn the_default_chain_uses_an_environment_service_principal() {
    let emu = Emulator::start(VIABLE);
    // Graph on another port: another origin, so another token audience.
    let graph = Emulator::start(VIABLE);
    let mut c = bare();
    c.args([
        "check",
        "--arm-endpoint",
        &emu.arm(),
        "--graph-endpoint",
        &graph.graph(),
        "--format",
        "json",
    ])
    .env("AZURE_TENANT_ID", "tenant-1")
    .env("AZURE_CLIENT_ID", "client-1")
    .env("AZURE_CLIENT_SECRET", "client-secret-value-42")
    .env("AZURE_AUTHORITY_HOST", emu.arm());
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("client-secret-value-42"));
    let seen = emu.requests();
    let token_calls: Vec<_> = seen.iter().filter(|s| s.method == "POST").collect();
    assert!(
        token_calls
            .iter()
            .all(|s| s.path == "/tenant-1/oauth2/v2.0/token"),
        "{token_calls:#?}"
    );
    // One token per audience, ARM and Graph, cached whatever the number of reads.
    assert_eq!(token_calls.len(), 2, "{token_calls:#?}");
    for origin in [emu.arm(), format!("http://127.0.0.1:{}", graph.port)] {
        let scope = url::form_urlencoded::byte_serialize(format!("{origin}/.default").as_bytes())
            .collect::<String>();
        assert!(
            token_calls
                .iter()
                .any(|s| s.body.contains(&format!("scope={scope}&"))),
            "no token request for {origin}: {token_calls:#?}"
        );
    }
    let gets: Vec<_> = seen.iter().filter(|s| s.method == "GET").collect();
    assert!(gets.len() > 10);
    let graph_seen = graph.requests();
    assert!(gets
        .iter()
        .copied()
        .chain(graph_seen.iter())
        .all(|s| s.authorization.as_deref() == Some("Bearer emulated-sp-token-0123456789")));
    assert_eq!(graph.count("/graph/v1.0/servicePrincipals"), 1);
    assert!(!r.stdout.contains("emulated-sp-token") && !r.stderr.contains("emulated-sp-token"));
}

#[test]
fn when_no_credential_works_one_message_says_what_was_tried() {
    let emu = Emulator::start(VIABLE);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = bare();
    // IDENTITY_ENDPOINT selects App Service managed identity (a dead loopback port), so the
    // VM metadata endpoint is never probed; PATH has no `az`.
    c.args([
        "check",
        "--arm-endpoint",
        &emu.arm(),
        "--graph-endpoint",
        &emu.graph(),
    ])
    .env(
        "IDENTITY_ENDPOINT",
        format!("http://127.0.0.1:{dead}/msi/token"),
    )
    .env("IDENTITY_HEADER", "x");
    let r = run(c);
    r.failed(
        4,
        &[
            "environment service principal",
            "workload identity",
            "managed identity",
            "Azure CLI",
            "az login",
            "--access-token",
        ],
    );
    assert!(emu.requests().is_empty(), "nothing is read without a token");

    // azure_identity's AZURE_CREDENTIAL_KIND picks one source; its failure is exit 4 too.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.json");
    let mut c = cvm();
    c.args([
        "collect",
        "--arm-endpoint",
        &emu.arm(),
        "--graph-endpoint",
        &emu.graph(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let r = run(c);
    r.failed(4, &["AZURE_CREDENTIAL_KIND=azurecli"]);
    assert!(emu.requests().is_empty());
    assert!(
        !out.exists(),
        "no snapshot is written when nothing could be read"
    );

    // A snapshot that cannot be written is refused before Azure is read.
    let mut c = cvm();
    c.arg("collect")
        .args(conn(&emu))
        .args(["-o", "/nonexistent-dir/x.json"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert!(emu.requests().is_empty());
}
