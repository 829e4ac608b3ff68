//! Azure Resource Graph as the inventory source, and the collector at scale: the real binary
//! against the emulator of `tests/support` (which answers the exact Resource Graph queries the
//! tool sends and refuses any other), on the demo estate and on generated estates of hundreds of
//! subscriptions. Only 127.0.0.1 is ever contacted.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;
use support::emulator::{Config, Emulator, Fault, Seen};
use support::synth::{self, Spec};
use support::{outcomes, run, Run};

const TOKEN: &str = "test-token-7d1e0c9b3a55";
const DEMO: &str = "fixtures/demo.json";
const SUB1: &str = "6f1a2b3c-8d4e-4b7a-9c21-5e0f3d7a6b18";
const SUB2: &str = "9b2e4c61-7a3f-4d58-b0e9-2c6a8f1d5e47";

/// The scrubbed binary, and even a forgotten `--access-token` only reaches a missing `az`.
fn cvm() -> Command {
    let mut c = support::bare_cvm();
    c.env("AZURE_CREDENTIAL_KIND", "azurecli");
    c
}

/// `check --format json` against the emulator, plus `extra`.
fn check(emu: &Emulator, extra: &[&str]) -> Run {
    let mut c = cvm();
    c.arg("check")
        .args(["--arm-endpoint", &emu.arm()])
        .args(["--graph-endpoint", &emu.graph()])
        .args(["--access-token", TOKEN])
        .args(["--no-config", "--format", "json"])
        .args(extra);
    run(c)
}

fn offline(file: &Path) -> Run {
    let mut c = cvm();
    c.args(["check", "--no-config", "--format", "json", "--from"])
        .arg(file);
    run(c)
}

fn assert_same_outcomes(a: &Value, b: &Value, what: &str) {
    let (x, y) = (outcomes(a), outcomes(b));
    assert!(!x.is_empty(), "{what}: no results");
    let diff: Vec<String> = x
        .iter()
        .filter(|(k, v)| y.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} vs {:?}", y.get(k)))
        .chain(
            y.keys()
                .filter(|k| !x.contains_key(*k))
                .map(|k| format!("{k}: only in the second")),
        )
        .collect();
    assert!(diff.is_empty(), "{what}:\n{}", diff.join("\n"));
    assert_eq!(a["summary"], b["summary"], "{what}: summary");
}

fn queries(emu: &Emulator) -> Vec<Value> {
    emu.resource_graph_queries()
        .iter()
        .map(|s: &Seen| serde_json::from_str(&s.body).unwrap())
        .collect()
}

/// The `type =~ '…'` of a query body.
fn query_type(body: &Value) -> String {
    let q = body["query"].as_str().unwrap();
    let at = q.find("type =~ '").unwrap() + "type =~ '".len();
    q[at..].split('\'').next().unwrap().to_string()
}

/// GETs of the inventory lists ARM serves per subscription.
fn inventory_gets(emu: &Emulator) -> usize {
    emu.requests()
        .iter()
        .filter(|s| {
            let p = s.path.to_ascii_lowercase();
            s.method == "GET"
                && [
                    "/providers/microsoft.compute/virtualmachines",
                    "/providers/microsoft.compute/disks",
                    "/providers/microsoft.compute/snapshots",
                    "/providers/microsoft.compute/diskencryptionsets",
                    "/providers/microsoft.recoveryservices/vaults",
                    "/providers/microsoft.keyvault/vaults",
                    "/providers/microsoft.keyvault/managedhsms",
                ]
                .iter()
                .any(|t| p.ends_with(t))
        })
        .count()
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
        .unwrap()["outcome"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---- the same report through either source --------------------------------------------------

#[test]
fn the_demo_estate_reads_the_same_through_resource_graph_and_arm() {
    // ARM pages by 2, Resource Graph by 3 rows: both sources page.
    let config = Config {
        page_size: 2,
        arg_page_size: 3,
        ..Config::default()
    };
    let arm_emu = Emulator::with_config(DEMO, config.clone());
    let arm = check(&arm_emu, &[]);
    let arg_emu = Emulator::with_config(DEMO, config);
    let arg = check(&arg_emu, &["--source", "resource-graph"]);
    assert_eq!(arm.code, 1, "{}", arm.stderr);
    assert_eq!(arg.code, arm.code, "{}", arg.stderr);
    // The whole document: verdicts, evidence, messages, errors, `complete`.
    assert_eq!(arg.json(), arm.json());

    // The inventory came from Resource Graph only, the rest from ARM as before.
    assert_eq!(inventory_gets(&arg_emu), 0);
    // ARM pages by 2: 40 pages of subscription 1's lists, 11 of subscription 2's.
    assert_eq!(inventory_gets(&arm_emu), 51);
    assert_eq!(
        arg_emu.count("/backupProtectedItems"),
        arm_emu.count("/backupProtectedItems")
    );
    assert_eq!(arg_emu.count("/providers/Microsoft.Features/"), 2);
    assert_eq!(arg_emu.count("/hsm/"), arm_emu.count("/hsm/"));
    let qs = queries(&arg_emu);
    let types: BTreeSet<String> = qs.iter().map(query_type).collect();
    assert_eq!(
        types,
        [
            "microsoft.compute/diskencryptionsets",
            "microsoft.compute/disks",
            "microsoft.compute/snapshots",
            "microsoft.compute/virtualmachines",
            "microsoft.keyvault/managedhsms",
            "microsoft.keyvault/vaults",
            "microsoft.recoveryservices/vaults",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    );
    for q in &qs {
        assert_eq!(q["subscriptions"], serde_json::json!([SUB1, SUB2]), "{q}");
        assert_eq!(q["options"]["$top"], 1000);
        assert_eq!(q["options"]["resultFormat"], "objectArray");
        let text = q["query"].as_str().unwrap();
        for col in [
            "id",
            "name",
            "location",
            "subscriptionId",
            "managedBy",
            "properties",
        ] {
            assert!(text.contains(col), "{text} does not project {col}");
        }
    }
    // $skipToken paging: 41 + 5 disks at 3 rows a page are 16 queries, each after the first
    // carrying the token of the page before.
    let disks: Vec<&Value> = qs
        .iter()
        .filter(|q| query_type(q) == "microsoft.compute/disks")
        .collect();
    assert_eq!(disks.len(), 16);
    assert!(disks[0]["options"].get("$skipToken").is_none());
    assert!(disks[1..]
        .iter()
        .all(|q| q["options"]["$skipToken"].is_string()));
}

#[test]
fn collect_records_resource_graph_as_the_source() {
    let emu = Emulator::start(DEMO);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("estate.json");
    let mut c = cvm();
    c.arg("collect")
        .args(["--arm-endpoint", &emu.arm()])
        .args(["--graph-endpoint", &emu.graph()])
        .args([
            "--access-token",
            TOKEN,
            "--no-config",
            "--source",
            "resource-graph",
        ])
        .arg("--output")
        .arg(&snap);
    let col = run(c);
    assert_eq!(col.code, 3, "{}", col.stderr);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&snap).unwrap()).unwrap();
    assert_eq!(doc["source"], "resource-graph");
    // Rows split back per subscription, as Resource Graph returned them.
    let vms = doc["subscriptions"][0]["virtual_machines"]["value"]
        .as_array()
        .unwrap();
    assert_eq!(vms.len(), 11);
    assert!(vms.iter().all(|v| v["subscriptionId"] == SUB1), "{vms:?}");
    assert_eq!(vms[0]["type"], "microsoft.compute/virtualmachines");
    // And the snapshot evaluates to the live report.
    let from = offline(&snap);
    let live = check(&emu, &["--source", "resource-graph"]);
    assert_eq!(from.json(), live.json());
}

#[test]
fn a_200_subscription_estate_gets_the_same_verdicts_through_resource_graph() {
    let mut spec = Spec::new(600, 200);
    spec.vaults_per_subscription = 1;
    let estate = synth::estate(&spec);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("estate.json");
    synth::write(&estate, &file);
    let config = Config {
        page_size: 100,
        ..Config::default()
    };
    let arm_emu = Emulator::from_snapshot(&estate, config.clone());
    let arg_emu = Emulator::from_snapshot(&estate, config);
    let arm = check(&arm_emu, &[]);
    let arg = check(&arg_emu, &["--source", "resource-graph"]);
    let from = offline(&file);
    assert_eq!(arm.code, 1, "{}", arm.stderr);
    assert_eq!(arg.code, 1, "{}", arg.stderr);
    let (a, g) = (arm.json(), arg.json());
    assert_eq!(a["summary"]["vms"], 600);
    assert_eq!(a["complete"], true);
    assert_eq!(g, a, "Resource Graph and ARM reports differ");
    assert_same_outcomes(&a, &from.json(), "live and --from");
    // Every verdict occurs: the mix is not trivially uniform.
    for v in [
        "not_applicable",
        "viable",
        "not_viable",
        "viable_with_warnings",
    ] {
        assert!(
            a["summary"][v].as_u64().unwrap() > 0,
            "no {v} VM: {}",
            a["summary"]
        );
    }
    // 200 subscriptions are one batch: one query per type, no per-subscription list.
    assert_eq!(queries(&arg_emu).len(), 7);
    assert_eq!(inventory_gets(&arg_emu), 0);
    assert_eq!(inventory_gets(&arm_emu), 200 * 7);
}

#[test]
fn queries_cover_at_most_300_subscriptions_each() {
    let mut spec = Spec::new(650, 650);
    spec.vaults_per_subscription = 0;
    let estate = synth::estate(&spec);
    let emu = Emulator::from_snapshot(&estate, Config::default());
    let r = check(&emu, &["--source", "resource-graph"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let doc = r.json();
    assert_eq!(doc["summary"]["vms"], 650);
    assert_eq!(doc["complete"], true, "{}", doc["errors"]);
    let all: BTreeSet<String> = (0..650).map(synth::subscription_id).collect();
    let qs = queries(&emu);
    // 650 subscriptions: batches of 300, 300 and 50, for each of the 7 types; one page each.
    assert_eq!(qs.len(), 21);
    let mut by_type: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for q in &qs {
        let subs: Vec<String> = q["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert!(
            subs.len() <= 300,
            "a query over {} subscriptions",
            subs.len()
        );
        by_type.entry(query_type(q)).or_default().push(subs);
    }
    assert_eq!(by_type.len(), 7);
    for (ty, batches) in &by_type {
        let mut sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![50, 300, 300], "{ty}");
        let covered: BTreeSet<String> = batches.iter().flatten().cloned().collect();
        assert_eq!(covered, all, "{ty}: not every subscription asked once");
    }
}

// ---- throttling -----------------------------------------------------------------------------

#[test]
fn a_spent_resource_graph_quota_is_waited_for_not_exceeded() {
    // 8 queries a second; 10 rows a page make the demo estate 13 queries.
    let emu = Emulator::with_config(
        DEMO,
        Config {
            arg_page_size: 10,
            arg_quota: Some((8, Duration::from_secs(1))),
            ..Config::default()
        },
    );
    let r = check(&emu, &["--source", "resource-graph"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(queries(&emu).len(), 13);
    // The quota ran out, the tool was told so, and it sent nothing until the window reset.
    assert!(emu.arg_exhausted_answers() >= 1);
    assert_eq!(emu.arg_throttled(), 0, "a query was sent past the quota");
    let arm = check(&Emulator::start(DEMO), &[]);
    assert_eq!(r.json(), arm.json());
}

#[test]
fn throttled_resource_graph_queries_are_retried_after_retry_after() {
    let emu = Emulator::start(DEMO);
    emu.fault(Fault::throttle(
        "/providers/Microsoft.ResourceGraph/resources",
        3,
        "Retry-After",
        "1",
    ));
    let r = check(&emu, &["--source", "resource-graph"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let doc = r.json();
    assert_eq!(doc["complete"], false, "the demo's one forbidden read");
    assert_eq!(
        doc["errors"].as_array().unwrap().len(),
        1,
        "{}",
        doc["errors"]
    );
    assert_eq!(queries(&emu).len(), 7 + 3);
    assert_eq!(
        emu.resource_graph_queries()
            .iter()
            .filter(|s| s.status == 429)
            .count(),
        3
    );
}

#[test]
fn arms_read_bucket_answering_429_is_survived_and_the_run_completes() {
    // A bucket far smaller than the tool's own budget: ARM answers 429 with Retry-After.
    let estate = synth::estate(&Spec::new(200, 2));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("estate.json");
    synth::write(&estate, &file);
    let emu = Emulator::from_snapshot(
        &estate,
        Config {
            page_size: 20,
            arm_bucket: Some((15.0, 25.0)),
            ..Config::default()
        },
    );
    let r = check(&emu, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let doc = r.json();
    assert!(emu.throttled() > 0, "the bucket never ran out");
    assert_eq!(doc["complete"], true, "{}", doc["errors"]);
    assert_same_outcomes(&doc, &offline(&file).json(), "throttled live and --from");
}

// ---- failures -------------------------------------------------------------------------------

#[test]
fn a_failed_query_leaves_the_rules_that_need_it_unknown_never_pass() {
    let arm = check(&Emulator::start(DEMO), &[]).json();
    assert_eq!(outcome_of(&arm, "vm-app-01", "vault-same-region"), "pass");

    let emu = Emulator::start(DEMO);
    emu.fault(
        Fault::status(
            "/providers/Microsoft.ResourceGraph/resources",
            403,
            "AuthorizationFailed",
        )
        .when_body("microsoft.recoveryservices/vaults"),
    );
    let r = check(&emu, &["--source", "resource-graph"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let doc = r.json();
    assert_eq!(doc["complete"], false);
    for vm in doc["vms"].as_array().unwrap() {
        if vm["verdict"] == "not_applicable" {
            continue;
        }
        let name = vm["name"].as_str().unwrap();
        assert_eq!(
            outcome_of(&doc, name, "vault-same-region"),
            "unknown",
            "{name}"
        );
        assert_eq!(outcome_of(&doc, name, "backup-policy"), "unknown", "{name}");
    }
    // One error per subscription whose vault list is missing, naming the query.
    let errors: Vec<&Value> = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "query recovery services vaults in Resource Graph")
        .collect();
    assert_eq!(errors.len(), 2, "{}", doc["errors"]);
    for (e, sub) in errors.iter().zip([SUB1, SUB2]) {
        assert_eq!(e["status"], 403);
        assert_eq!(e["code"], "AuthorizationFailed");
        assert_eq!(
            e["scope"],
            format!("/subscriptions/{sub}/providers/Microsoft.RecoveryServices/vaults")
        );
    }
    // No vault is known, so none of their contents was read.
    assert_eq!(emu.count("/backupProtectedItems"), 0);
}

// ---- management groups ----------------------------------------------------------------------

#[test]
fn a_management_group_scopes_the_run_through_resource_graph() {
    let emu = Emulator::start(DEMO);
    emu.management_group("mg-uae", &[SUB1.to_string()]);
    let r = check(&emu, &["--management-group", "mg-uae"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let doc = r.json();
    let subs: Vec<&str> = doc["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(subs, vec![SUB1]);
    // No ARM subscription list: the group's subscriptions, then the inventory, from Resource
    // Graph over the management group.
    assert!(!emu
        .requests()
        .iter()
        .any(|s| s.path.trim_end_matches('/') == "/subscriptions"));
    assert_eq!(inventory_gets(&emu), 0);
    let qs = queries(&emu);
    assert_eq!(qs.len(), 8);
    for q in &qs {
        assert_eq!(q["managementGroups"], serde_json::json!(["mg-uae"]), "{q}");
        assert!(q.get("subscriptions").is_none(), "{q}");
    }
    assert!(qs
        .iter()
        .any(|q| q["query"].as_str().unwrap().starts_with(
            "resourcecontainers | where type =~ 'microsoft.resources/subscriptions'"
        )));
    // The same verdicts as ARM on that subscription.
    let arm = check(&Emulator::start(DEMO), &["--subscription", SUB1]).json();
    assert_same_outcomes(&doc, &arm, "management group and --subscription");

    // With --subscription too, a subscription must be in both.
    let emu = Emulator::start(DEMO);
    emu.management_group("mg-all", &[SUB1.to_string(), SUB2.to_string()]);
    let r = check(
        &emu,
        &["--management-group", "mg-all", "--subscription", SUB2],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let doc = r.json();
    assert_eq!(doc["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(doc["subscriptions"][0]["id"], SUB2);
}

#[test]
fn an_unknown_management_group_ends_the_run_with_exit_4() {
    let emu = Emulator::start(DEMO);
    let r = check(&emu, &["--management-group", "mg-nowhere"]);
    r.failed(4, &["mg-nowhere", "ManagementGroupNotFound"]);
}

#[test]
fn management_group_usage_errors_exit_2_before_any_connection() {
    let emu = Emulator::empty();
    for args in [
        vec!["--management-group", "mg-1", "--source", "arm"],
        vec!["--management-group", "mg 1"],
        vec!["--management-group", ""],
    ] {
        let r = check(&emu, &args);
        r.failed(2, &[]);
    }
    let mut c = cvm();
    c.args(["check", "--no-config", "--from"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(DEMO))
        .args(["--management-group", "mg-1"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--management-group"), "{}", r.stderr);
    let r = check(&emu, &["--source", "graph"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(emu.requests().is_empty(), "{:#?}", emu.requests());
}
