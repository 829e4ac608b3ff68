//! The CI formats (junit, sarif, markdown, github) parsed back and checked against the JSON report
//! of the same run, the exit code being the same for every format, completions, and the example
//! pipelines in docs/ci.

mod ci_support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use ci_support::*;
use serde_json::Value;

const FORMATS: [&str; 6] = ["table", "json", "junit", "sarif", "markdown", "github"];

/// `check --from SNAPSHOT --format FORMAT` plus `extra`, in a private directory.
fn check(snapshot: &str, format: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["check", "--from", snapshot, "--format", format];
    args.extend_from_slice(extra);
    run(dir.path(), &args)
}

fn demo_doc() -> Value {
    let (code, out, _) = check(&demo(), "json", &[]);
    assert_eq!(code, 1);
    json(&out)
}

/// Every (vm, result) pair of a JSON report.
fn results(doc: &Value) -> Vec<(&Value, &Value)> {
    let mut v = Vec::new();
    for vm in doc["vms"].as_array().unwrap() {
        for r in vm["results"].as_array().unwrap() {
            v.push((vm, r));
        }
    }
    v
}

/// Is this result a problem for the CI formats? fail or unknown, except a failed precondition.
fn is_problem(r: &Value) -> bool {
    (r["outcome"] == "fail" && r["severity"] != "precondition") || r["outcome"] == "unknown"
}

/// The level the CI formats give a problem: fail keeps its severity, unknown is one step lower.
fn expected_level(r: &Value) -> &'static str {
    match (
        r["outcome"].as_str().unwrap(),
        r["severity"].as_str().unwrap(),
    ) {
        ("fail", "error") => "error",
        ("fail", "warning") => "warning",
        ("unknown", "warning") => "note",
        ("unknown", _) => "warning",
        other => panic!("not a problem: {other:?}"),
    }
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
}

/// What the JUnit counts of one subscription must be, from the JSON.
fn expected_counts(doc: &Value, sub: &str) -> Counts {
    let mut c = Counts::default();
    for (vm, r) in results(doc) {
        if !vm["subscription_id"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(sub)
        {
            continue;
        }
        c.tests += 1;
        match (
            r["outcome"].as_str().unwrap(),
            r["severity"].as_str().unwrap(),
        ) {
            ("fail", "precondition") | ("skipped", _) | ("waived", _) => c.skipped += 1,
            ("fail", _) => c.failures += 1,
            ("unknown", _) => c.errors += 1,
            _ => {}
        }
    }
    c
}

fn attr_usize(n: roxmltree::Node, name: &str) -> usize {
    n.attribute(name)
        .unwrap_or_else(|| panic!("no {name} on {n:?}"))
        .parse()
        .unwrap()
}

fn prop<'a>(n: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    n.children()
        .find(|c| c.has_tag_name("properties"))?
        .children()
        .find(|p| p.has_tag_name("property") && p.attribute("name") == Some(name))?
        .attribute("value")
}

#[test]
fn junit_has_a_suite_per_subscription_and_counts_that_match_the_json() {
    let doc = demo_doc();
    let (code, xml, _) = check(&demo(), "junit", &[]);
    assert_eq!(code, 1);
    let tree = roxmltree::Document::parse(&xml).expect("well-formed XML");
    let root = tree.root_element();
    assert!(root.has_tag_name("testsuites"));
    let suites: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    let subs: Vec<&str> = doc["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(suites.len(), subs.len());
    assert_eq!(subs.len(), 2);

    let mut total = Counts::default();
    for (suite, sub) in suites.iter().zip(&subs) {
        assert_eq!(prop(*suite, "subscription_id"), Some(*sub));
        assert!(suite.attribute("name").unwrap().contains(sub));
        let expected = expected_counts(&doc, sub);
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let with = |tag: &str| {
            cases
                .iter()
                .filter(|c| c.children().any(|x| x.has_tag_name(tag)))
                .count()
        };
        let got = Counts {
            tests: cases.len(),
            failures: with("failure"),
            errors: with("error"),
            skipped: with("skipped"),
        };
        assert_eq!(got, expected, "suite {sub}");
        // The attributes agree with the elements.
        assert_eq!(attr_usize(*suite, "tests"), got.tests);
        assert_eq!(attr_usize(*suite, "failures"), got.failures);
        assert_eq!(attr_usize(*suite, "errors"), got.errors);
        total.tests += got.tests;
        total.failures += got.failures;
        total.errors += got.errors;
        total.skipped += got.skipped;
    }
    // Not vacuous: the demo has failures, an unknown and skips.
    assert_eq!(total.tests, results(&doc).len());
    assert!(
        total.failures >= 5 && total.errors >= 1 && total.skipped >= 3,
        "{total:?}"
    );
    assert_eq!(attr_usize(root, "tests"), total.tests);
    assert_eq!(attr_usize(root, "failures"), total.failures);
    assert_eq!(attr_usize(root, "errors"), total.errors);

    // Content: one testcase per VM × rule, named after both, classname the VM id.
    let find = |vm: &str, rule: &str| {
        tree.descendants()
            .find(|n| {
                n.has_tag_name("testcase")
                    && n.attribute("name")
                        .is_some_and(|x| x.starts_with(&format!("{vm}: ")) && x.ends_with(rule))
            })
            .unwrap_or_else(|| panic!("no testcase {vm} {rule}"))
    };
    let erp = find("vm-erp-01", "CVMB010 backup-policy");
    let erp_json = doc["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vm-erp-01")
        .unwrap();
    assert_eq!(erp.attribute("classname"), erp_json["id"].as_str());
    let failure = erp.children().find(|n| n.has_tag_name("failure")).unwrap();
    assert_eq!(failure.attribute("type"), Some("error"));
    assert!(failure
        .attribute("message")
        .unwrap()
        .contains("DefaultPolicy is V1"));
    let body = failure.text().unwrap();
    assert!(body.contains("Fix: Create an Enhanced policy"), "{body}");
    assert!(body.contains("$ az backup policy create"), "{body}");

    let batch = find("vm-batch-01", "CVMB009 des-disk-limit");
    let f = batch
        .children()
        .find(|n| n.has_tag_name("failure"))
        .unwrap();
    assert_eq!(f.attribute("type"), Some("warning"));

    let cache = find("vm-kr-cache-01", "CVMB008 key-access");
    let err = cache.children().find(|n| n.has_tag_name("error")).unwrap();
    assert!(err
        .attribute("message")
        .unwrap()
        .contains("could not be read"));

    let jump = find("vm-jump-01", "CVMB001 confidential-vm");
    let skipped = jump.children().find(|n| n.has_tag_name("skipped")).unwrap();
    assert!(skipped
        .attribute("message")
        .unwrap()
        .starts_with("not applicable: "));

    let ok = find("vm-app-01", "CVMB002 vm-size-v6");
    assert!(ok.children().all(|n| !n.has_tag_name("failure")
        && !n.has_tag_name("error")
        && !n.has_tag_name("skipped")));
}

#[test]
fn junit_shows_a_waived_result_as_skipped_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let snap = mini(dir.path());
    let cfg = write(
        dir.path(),
        "w.toml",
        &format!(
            "[[waiver]]\nrule = \"vm-size-v6\"\nscope = \"/subscriptions/{SUB_A}\"\nreason = \"resize <booked> & planned\"\nexpires = \"2027-03-31\"\n"
        ),
    );
    let (code, xml, _) = run(
        dir.path(),
        &[
            "check", "--from", &snap, "--vm", "vm-v5", "--format", "junit", "--config", &cfg,
        ],
    );
    assert_eq!(code, 0);
    let tree = roxmltree::Document::parse(&xml).unwrap();
    let case = tree
        .descendants()
        .find(|n| n.attribute("name") == Some("vm-v5: CVMB002 vm-size-v6"))
        .unwrap();
    let s = case.children().find(|n| n.has_tag_name("skipped")).unwrap();
    assert_eq!(s.attribute("type"), Some("waived"));
    assert_eq!(
        s.attribute("message"),
        Some("waived until 2027-03-31 (fail before): resize <booked> & planned")
    );
    assert!(s.text().unwrap().contains("v5 series is not supported"));
    assert_eq!(
        tree.descendants()
            .filter(|n| n.has_tag_name("failure"))
            .count(),
        0
    );
}

#[test]
fn junit_reports_an_unreadable_vm_list_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let snap = write(
        dir.path(),
        "s.json",
        r#"{"schema":"cvm-backup/snapshot/v1","subscriptions":[{"subscription_id":"00000000-0000-0000-0000-000000000001",
      "virtual_machines":{"error":{"scope":"/subscriptions/00000000-0000-0000-0000-000000000001","operation":"list virtual machines","status":403,"code":"AuthorizationFailed","message":"no"}},
      "disks":{"value":[]},"snapshots":{"value":[]},"disk_encryption_sets":{"value":[]},"recovery_services_vaults":{"value":[]},"key_vaults":{"value":[]},"managed_hsms":{"value":[]}}]}"#,
    );
    let (code, xml, _) = check(&snap, "junit", &[]);
    assert_eq!(code, 3);
    let tree = roxmltree::Document::parse(&xml).unwrap();
    let case = tree
        .descendants()
        .find(|n| n.attribute("name") == Some("VM list"))
        .expect("a VM list testcase");
    assert!(case.children().any(|n| n.has_tag_name("error")));
    // The other formats say so too.
    let (code, sarif, _) = check(&snap, "sarif", &[]);
    assert_eq!(code, 3);
    let n = &json(&sarif)["runs"][0]["invocations"][0]["toolExecutionNotifications"];
    assert!(n.as_array().unwrap().iter().any(|x| x["message"]["text"]
        .as_str()
        .unwrap()
        .contains("VM list could not be read")));
    let (_, md, _) = check(&snap, "markdown", &[]);
    assert!(md.contains("the VM list could not be read completely"));
    let (_, gh, _) = check(&snap, "github", &[]);
    assert!(gh.starts_with("::error title=incomplete%3A VM list::subscription 00000000-0000-0000-0000-000000000001"), "{gh}");
}

fn sarif_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/schemas/sarif-2.1.0.json")).unwrap(),
    )
    .unwrap();
    jsonschema::validator_for(&schema).expect("the SARIF schema compiles")
}

fn assert_valid_sarif(validator: &jsonschema::Validator, doc: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn sarif_is_valid_2_1_0_with_one_rule_per_ref_and_one_result_per_problem() {
    let doc = demo_doc();
    let (code, out, _) = check(&demo(), "sarif", &[]);
    assert_eq!(code, 1);
    let sarif = json(&out);
    let validator = sarif_validator();
    assert_valid_sarif(&validator, &sarif);
    // The schema is not vacuous.
    let mut broken = sarif.clone();
    broken["runs"][0]["results"][0]["level"] = "fatal".into();
    assert!(!validator.is_valid(&broken));
    let mut broken = sarif.clone();
    broken["runs"][0]["results"][0]["message"] = Value::Null;
    assert!(!validator.is_valid(&broken));

    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    assert_eq!(sarif["runs"].as_array().unwrap().len(), 1);
    assert_eq!(run["tool"]["driver"]["name"], "cvm-backup");

    // Rules: one per CVMB ref, with the catalogue's name and docs link.
    let (_, catalogue, _) = run_in_tmp(&["rules", "--format", "json"]);
    let catalogue = json(&catalogue);
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 11);
    for (r, c) in rules.iter().zip(catalogue["rules"].as_array().unwrap()) {
        assert_eq!(r["id"], c["ref"]);
        assert_eq!(r["name"], c["name"]);
        assert_eq!(r["shortDescription"]["text"], c["summary"]);
        assert_eq!(r["helpUri"], c["docs_url"]);
        assert!(r["fullDescription"]["text"].as_str().unwrap().len() > 40);
        assert!(r["help"]["text"]
            .as_str()
            .unwrap()
            .contains(c["docs_url"].as_str().unwrap()));
        assert!(!r["help"]["markdown"].as_str().unwrap().is_empty());
        let level = match c["severity"].as_str().unwrap() {
            "error" => "error",
            "warning" => "warning",
            _ => "note",
        };
        assert_eq!(r["defaultConfiguration"]["level"], level);
    }

    // Results: exactly the fail/unknown VM × rule pairs of the JSON, in order.
    let expected: Vec<(String, String, &'static str)> = results(&doc)
        .into_iter()
        .filter(|(_, r)| is_problem(r))
        .map(|(vm, r)| {
            (
                vm["id"].as_str().unwrap().to_string(),
                r["ref"].as_str().unwrap().to_string(),
                expected_level(r),
            )
        })
        .collect();
    let got_results = run["results"].as_array().unwrap();
    let got: Vec<(String, String, &'static str)> = got_results
        .iter()
        .map(|r| {
            let loc = &r["locations"][0];
            (
                loc["logicalLocations"][0]["fullyQualifiedName"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                r["ruleId"].as_str().unwrap().to_string(),
                match r["level"].as_str().unwrap() {
                    "error" => "error",
                    "warning" => "warning",
                    "note" => "note",
                    other => panic!("level {other}"),
                },
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(
        expected.len() >= 8,
        "the demo has problems: {}",
        expected.len()
    );
    assert!(got.iter().any(|g| g.2 == "error") && got.iter().any(|g| g.2 == "warning"));

    let mut fingerprints = HashSet::new();
    for r in got_results {
        // ruleIndex points at the rule.
        let idx = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], r["ruleId"]);
        // GitHub code scanning needs a physical location with a uri and a start line.
        let loc = &r["locations"][0];
        let fqn = loc["logicalLocations"][0]["fullyQualifiedName"]
            .as_str()
            .unwrap();
        assert_eq!(loc["logicalLocations"][0]["kind"], "resource");
        assert_eq!(
            loc["physicalLocation"]["artifactLocation"]["uri"]
                .as_str()
                .unwrap(),
            &fqn[1..]
        );
        assert_eq!(loc["physicalLocation"]["region"]["startLine"], 1);
        assert!(r["message"]["text"]
            .as_str()
            .unwrap()
            .contains(r["ruleId"].as_str().unwrap()));
        assert!(fingerprints.insert(
            r["partialFingerprints"]["cvmBackup/v1"]
                .as_str()
                .unwrap()
                .to_string()
        ));
    }
    // The fix travels with the result.
    let erp = got_results
        .iter()
        .find(|r| r["properties"]["vm"] == "vm-erp-01")
        .unwrap();
    assert!(erp["message"]["text"]
        .as_str()
        .unwrap()
        .contains("Fix: Create an Enhanced policy"));
    assert!(erp["properties"]["remediation"]["commands"][0]
        .as_str()
        .unwrap()
        .starts_with("az backup policy create"));
    let unknown = got_results
        .iter()
        .find(|r| r["properties"]["vm"] == "vm-kr-cache-01")
        .unwrap();
    assert_eq!(unknown["properties"]["outcome"], "unknown");
    // Read errors are notifications.
    let notes = run["invocations"][0]["toolExecutionNotifications"]
        .as_array()
        .unwrap();
    assert_eq!(notes.len(), doc["errors"].as_array().unwrap().len());
    assert_eq!(
        run["properties"]["summary"]["not_viable"],
        doc["summary"]["not_viable"]
    );
}

fn run_in_tmp(args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), args)
}

#[test]
fn sarif_leaves_out_waived_results_and_stays_valid_when_clean() {
    let dir = tempfile::tempdir().unwrap();
    let snap = mini(dir.path());
    let cfg = write(
        dir.path(),
        "w.toml",
        &format!("[[waiver]]\nrule = \"CVMB002\"\nscope = \"{SUB_A}\"\nreason = \"r\"\nexpires = \"2027-03-31\"\n"),
    );
    let (code, out, _) = run(
        dir.path(),
        &[
            "check", "--from", &snap, "--vm", "vm-v5", "--vm", "vm-ok", "--format", "sarif",
            "--config", &cfg,
        ],
    );
    assert_eq!(code, 0);
    let sarif = json(&out);
    assert_valid_sarif(&sarif_validator(), &sarif);
    assert_eq!(sarif["runs"][0]["results"], serde_json::json!([]));
}

#[test]
fn markdown_has_the_counts_the_failing_vms_and_their_fixes() {
    let doc = demo_doc();
    let (code, md, _) = check(&demo(), "markdown", &[]);
    assert_eq!(code, 1);
    let s = &doc["summary"];
    assert!(md.starts_with("## cvm-backup: "), "{md}");
    for (label, key) in [
        ("❌ not viable", "not_viable"),
        ("❔ unknown", "unknown"),
        ("⚠️ viable with warnings", "viable_with_warnings"),
        ("✅ viable", "viable"),
        ("➖ not confidential", "not_applicable"),
    ] {
        assert!(
            md.contains(&format!("| {label} | {} |", s[key])),
            "{label}: {md}"
        );
    }
    assert!(md.contains(&format!("| **total** | **{}** |", s["vms"])));

    let (table, details) = md.split_once("### Details").expect("a details section");
    let table = table
        .split_once("### VMs that are not viable or unknown")
        .expect("a table of blocking VMs")
        .1;
    for vm in doc["vms"].as_array().unwrap() {
        let name = vm["name"].as_str().unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")));
        let blocking = vm["verdict"] == "not_viable" || vm["verdict"] == "unknown";
        assert_eq!(row.is_some(), blocking, "{name} in the table");
        let problems: Vec<&Value> = vm["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| is_problem(r))
            .collect();
        if let Some(row) = row {
            for r in &problems {
                assert!(row.contains(r["ref"].as_str().unwrap()), "{row}");
                // The fix, as a table cell: HTML-escaped, no pipes.
                let fix = r["remediation"]["text"]
                    .as_str()
                    .unwrap()
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('|', "\\|");
                assert!(row.contains(&fix), "{row} lacks {fix}");
            }
        }
        // Collapsed details for each VM with a problem.
        let summary = format!("<details><summary><b>{name}</b>");
        assert_eq!(
            details.contains(&summary),
            !problems.is_empty(),
            "{name} details"
        );
    }
    assert_eq!(
        md.matches("<details>").count(),
        md.matches("</details>").count()
    );
    // Commands are in code blocks, not escaped.
    assert!(details.contains("--key-url <key-url>"));
    // A viable VM with no problem is not detailed.
    assert!(!md.contains("<b>vm-app-01</b>"));
}

#[test]
fn markdown_shows_waivers_in_the_details() {
    let dir = tempfile::tempdir().unwrap();
    let snap = mini(dir.path());
    let cfg = write(
        dir.path(),
        "w.toml",
        &format!("[[waiver]]\nrule = \"CVMB002\"\nscope = \"{SUB_A}\"\nreason = \"ticket | OPS-1\"\nexpires = \"2027-03-31\"\n"),
    );
    let (code, md, _) = run(
        dir.path(),
        &[
            "check", "--from", &snap, "--vm", "vm-v5", "--format", "markdown", "--config", &cfg,
        ],
    );
    assert_eq!(code, 0);
    assert!(!md.contains("### VMs that are not viable or unknown"));
    assert!(md.contains("<b>vm-v5</b>"));
    assert!(
        md.contains("waived until 2027-03-31 (was fail): ticket | OPS-1"),
        "{md}"
    );
}

/// Parses `::level title=T::message`.
fn annotation(line: &str) -> Option<(&str, &str, &str)> {
    let rest = line.strip_prefix("::")?;
    let (cmd, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("title=")?;
    let (title, msg) = rest.split_once("::")?;
    Some((cmd, title, msg))
}

#[test]
fn github_annotates_each_problem_once_then_prints_the_table() {
    let doc = demo_doc();
    let (code, out, _) = check(&demo(), "github", &[]);
    assert_eq!(code, 1);
    let annotations: Vec<(&str, &str, &str)> = out.lines().filter_map(annotation).collect();
    let rule_annotations: Vec<_> = annotations
        .iter()
        .filter(|(_, t, _)| t.starts_with("CVMB"))
        .collect();
    let expected: Vec<(String, &'static str)> = results(&doc)
        .into_iter()
        .filter(|(_, r)| is_problem(r))
        .map(|(vm, r)| {
            (
                format!(
                    "{} {}|{}",
                    r["ref"].as_str().unwrap(),
                    r["rule"].as_str().unwrap(),
                    vm["name"].as_str().unwrap()
                ),
                match expected_level(r) {
                    "note" => "notice",
                    l => l,
                },
            )
        })
        .collect();
    let got: Vec<(String, &'static str)> = rule_annotations
        .iter()
        .map(|(cmd, title, msg)| {
            let vm = msg
                .strip_prefix("VM ")
                .and_then(|m| m.split_once(' '))
                .unwrap()
                .0;
            (
                format!("{title}|{vm}"),
                match *cmd {
                    "error" => "error",
                    "warning" => "warning",
                    "notice" => "notice",
                    other => panic!("command {other}"),
                },
            )
        })
        .collect();
    assert_eq!(got, expected);
    // Read errors are annotated as well, once each.
    assert_eq!(
        annotations.len() - rule_annotations.len(),
        doc["errors"].as_array().unwrap().len()
    );
    // Each annotation is one line: newlines in the message are escaped.
    let erp = rule_annotations
        .iter()
        .find(|(_, t, m)| *t == "CVMB010 backup-policy" && m.contains("vm-erp-01"))
        .unwrap();
    assert!(
        erp.2.contains("%0AFix: Create an Enhanced policy"),
        "{}",
        erp.2
    );
    // Then the table, inside a stop-commands block.
    let stop = out
        .lines()
        .find_map(|l| l.strip_prefix("::stop-commands::"))
        .expect("a stop-commands line");
    let (_, after) = out
        .split_once(&format!("::stop-commands::{stop}\n"))
        .unwrap();
    let (table, tail) = after.split_once(&format!("::{stop}::\n")).unwrap();
    assert_eq!(tail, "");
    assert!(table.contains("VERDICT"));
    assert!(table.contains("vm-erp-01") && table.contains("NOT VIABLE"));
}

#[test]
fn github_escapes_data_so_text_from_azure_cannot_inject_commands() {
    let dir = tempfile::tempdir().unwrap();
    let odd = vm(
        SUB_A,
        "rg-odd",
        "vm-odd",
        "uaenorth",
        "Standard_X%41\r\n::error::injected, a: b",
        true,
    );
    let snap = write(
        dir.path(),
        "odd.json",
        &serde_json::to_string(&mini_with(vec![odd])).unwrap(),
    );
    let (code, out, _) = run(
        dir.path(),
        &[
            "check", "--from", &snap, "--vm", "vm-odd", "--format", "github",
        ],
    );
    assert_eq!(code, 1);
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with("::error title=CVMB002 vm-size-v6::VM vm-odd "),
        "{first}"
    );
    assert!(
        first.contains("Standard_X%2541%0D%0A::error::injected, a: b"),
        "{first}"
    );
    // The only line that starts the injected command is inside the stop-commands block.
    let stop = out
        .lines()
        .find_map(|l| l.strip_prefix("::stop-commands::"))
        .unwrap();
    let before_table = out
        .split(&format!("::stop-commands::{stop}"))
        .next()
        .unwrap();
    assert!(!before_table
        .lines()
        .any(|l| l.starts_with("::error::injected")));
    let after_table = out.split(&format!("::{stop}::")).nth(1).unwrap();
    assert_eq!(after_table, "\n");
}

#[test]
fn every_format_gives_the_same_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let snap = mini(dir.path());
    let waiver = write(
        dir.path(),
        "w.toml",
        &format!("[[waiver]]\nrule = \"CVMB002\"\nscope = \"{SUB_A}\"\nreason = \"r\"\nexpires = \"2027-03-31\"\n"),
    );
    let demo = demo();
    let cases: Vec<(&str, Vec<&str>, i32)> = vec![
        (demo.as_str(), vec![], 1),
        (demo.as_str(), vec!["--fail-on", "never"], 0),
        (demo.as_str(), vec!["--vm", "vm-kr-cache-01"], 3),
        (demo.as_str(), vec!["--vm", "vm-batch-01"], 0),
        (
            demo.as_str(),
            vec!["--vm", "vm-batch-01", "--fail-on", "warning"],
            1,
        ),
        (
            demo.as_str(),
            vec!["--vm", "vm-app-01", "--vm", "vm-jump-01"],
            0,
        ),
        (snap.as_str(), vec![], 1),
        (snap.as_str(), vec!["--vm", "vm-unk"], 3),
        (snap.as_str(), vec!["--vm", "vm-v5"], 1),
        (snap.as_str(), vec!["--vm", "vm-v5", "--config", &waiver], 0),
        (
            snap.as_str(),
            vec!["--vm", "vm-v5", "--config", &waiver, "--no-waivers"],
            1,
        ),
    ];
    for (snapshot, extra, expected) in cases {
        let mut codes = BTreeMap::new();
        for f in FORMATS {
            let (code, out, err) = check(snapshot, f, &extra);
            assert!(!out.is_empty(), "{f} {extra:?}: empty stdout; {err}");
            codes.insert(f, code);
        }
        assert!(
            codes.values().all(|c| *c == expected),
            "{snapshot} {extra:?}: {codes:?}, expected {expected}"
        );
    }
}

#[test]
fn output_file_holds_the_same_document_and_stdout_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["junit", "sarif", "markdown", "github"] {
        let (code, stdout_doc, _) = check(&demo(), f, &[]);
        let path = dir.path().join(format!("report.{f}"));
        let p = path.display().to_string();
        let (code2, out, _) = check(&demo(), f, &["--output", &p]);
        assert_eq!((code, code2), (1, 1));
        assert_eq!(out, "");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), stdout_doc, "{f}");
    }
}

#[test]
fn completions_for_every_shell_mention_check() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let (code, out, err) = run_in_tmp(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.len() > 200, "{shell}: {out}");
        assert!(out.contains("check"), "{shell}");
        assert!(
            out.contains("--fail-on") || out.contains("fail-on"),
            "{shell}"
        );
    }
    let (code, out, _) = run_in_tmp(&["completions", "tcsh"]);
    assert_eq!((code, out.as_str()), (2, ""));
}

fn yaml(path: &Path) -> serde_yaml::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// Every `run:` script of a GitHub workflow job, and every `uses:`.
fn steps(doc: &serde_yaml::Value) -> Vec<&serde_yaml::Value> {
    doc["jobs"]
        .as_mapping()
        .unwrap()
        .values()
        .flat_map(|j| j["steps"].as_sequence().unwrap().iter())
        .collect()
}

#[test]
fn the_github_actions_example_is_valid_and_complete() {
    let doc = yaml(&root().join("docs/ci/github-actions.yml"));
    assert_eq!(doc["permissions"]["id-token"], "write");
    let steps = steps(&doc);
    let uses: Vec<&str> = steps.iter().filter_map(|s| s["uses"].as_str()).collect();
    assert!(
        uses.iter().any(|u| u.starts_with("azure/login@")),
        "{uses:?}"
    );
    assert!(
        uses.iter()
            .any(|u| u.starts_with("github/codeql-action/upload-sarif@")),
        "{uses:?}"
    );
    let login = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("azure/login@"))
        })
        .unwrap();
    assert!(login["with"]["client-id"].is_string() && login["with"]["tenant-id"].is_string());
    assert!(
        login["with"].get("client-secret").is_none(),
        "OIDC, no secret"
    );
    let scripts: String = steps
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "--format sarif",
        "--format junit",
        "--format markdown",
        "GITHUB_STEP_SUMMARY",
        "cvm-backup check",
    ] {
        assert!(scripts.contains(needle), "no {needle:?} in the scripts");
    }
    // The gate keeps the exit code of the check.
    assert!(scripts.contains("exit"), "{scripts}");
    // Uploads run even when the gate fails.
    let upload = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("github/codeql-action/upload-sarif@"))
        })
        .unwrap();
    assert!(upload["if"].as_str().unwrap().contains("always()"));
}

#[test]
fn the_azure_pipelines_example_is_valid_and_publishes_junit() {
    let doc = yaml(&root().join("docs/ci/azure-pipelines.yml"));
    let steps: Vec<&serde_yaml::Value> = doc["steps"]
        .as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_else(|| {
            doc["jobs"][0]["steps"]
                .as_sequence()
                .unwrap()
                .iter()
                .collect()
        });
    let task = |name: &str| {
        steps
            .iter()
            .find(|s| s["task"].as_str().is_some_and(|t| t.starts_with(name)))
            .copied()
            .unwrap_or_else(|| panic!("no {name} task"))
    };
    let cli = task("AzureCLI@2");
    assert!(cli["inputs"]["azureSubscription"].is_string());
    let script = cli["inputs"]["inlineScript"].as_str().unwrap();
    assert!(
        script.contains("cvm-backup check") && script.contains("--format junit"),
        "{script}"
    );
    let publish = task("PublishTestResults@2");
    assert_eq!(publish["inputs"]["testResultsFormat"], "JUnit");
    assert!(publish["condition"].as_str().unwrap().contains("always()"));
}

#[test]
fn the_table_keeps_each_problem_under_its_vm_when_azure_text_has_line_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let odd = vm(
        SUB_A,
        "rg-app",
        "vm-odd",
        "uaenorth",
        "Standard_X\nsecond line",
        true,
    );
    let snap = write(
        dir.path(),
        "odd.json",
        &serde_json::to_string(&mini_with(vec![odd])).unwrap(),
    );
    let (code, out, _) = run(
        dir.path(),
        &["check", "--from", &snap, "--subscription", SUB_A],
    );
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    let row = |name: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"))
    };
    assert!(
        lines[row("vm-odd")].contains("Standard_X second line"),
        "{out}"
    );
    assert!(
        lines[row("vm-odd") + 1].contains("CVMB002 vm-size-v6: Standard_X second line"),
        "{out}"
    );
    assert!(lines[row("vm-plain") + 1].starts_with(" vm-v5 "), "{out}");
    assert!(
        lines[row("vm-v5") + 1].contains("CVMB002 vm-size-v6: Standard_DC4as_v5"),
        "{out}"
    );
}
