//! Small builders for rule unit tests: an estate with one VM, in ARM's own shapes.

use serde_json::{json, Value};

use super::{Cx, Finding, Rule, Settings};
use crate::estate::Estate;
use crate::snapshot::{ListRead, Snapshot, SubscriptionSnapshot};

pub const SUB: &str = "00000000-0000-0000-0000-00000000000a";

pub struct VmBuilder(pub Value);

pub fn cvm(size: &str, location: &str) -> VmBuilder {
    VmBuilder(json!({
        "id": format!("/subscriptions/{SUB}/resourceGroups/rg-test/providers/Microsoft.Compute/virtualMachines/vm-under-test"),
        "name": "vm-under-test",
        "location": location,
        "properties": {
            "hardwareProfile": {"vmSize": size},
            "securityProfile": {"securityType": "ConfidentialVM"},
            "storageProfile": {"osDisk": {"managedDisk": {
                "id": format!("/subscriptions/{SUB}/resourceGroups/rg-test/providers/Microsoft.Compute/disks/osdisk"),
                "securityProfile": {"securityEncryptionType": "DiskWithVMGuestState"}
            }}}
        }
    }))
}

impl VmBuilder {
    pub fn security_type(mut self, t: &str) -> Self {
        self.0["properties"]["securityProfile"]["securityType"] = json!(t);
        self
    }
    pub fn no_security_profile(mut self) -> Self {
        if let Some(p) = self.0["properties"].as_object_mut() {
            p.remove("securityProfile");
        }
        self
    }
}

pub fn settings() -> Settings {
    Settings::from_ruleset(&crate::ruleset::load("2026-01").unwrap())
}

pub fn estate_with_vm(vm: VmBuilder) -> Estate {
    let empty = || Some(ListRead::ok(vec![]));
    let sub = SubscriptionSnapshot {
        subscription_id: SUB.into(),
        virtual_machines: Some(ListRead::ok(vec![vm.0])),
        disks: empty(),
        snapshots: empty(),
        disk_encryption_sets: empty(),
        recovery_services_vaults: empty(),
        key_vaults: empty(),
        managed_hsms: empty(),
        ..Default::default()
    };
    Estate::from_snapshot(&Snapshot::new(vec![sub]), None)
}

pub fn run(rule: &dyn Rule, e: &Estate) -> Finding {
    let s = settings();
    let cx = Cx {
        estate: e,
        settings: &s,
    };
    rule.check_vm(&cx, &e.vms[0])
}

/// Runs one rule over its fixtures (tests/fixtures/rules/<name>/<outcome>[-variant].json) and
/// asserts each file's outcome for `vm-under-test`; returns how many files were checked.
pub fn check_fixtures(rule: &dyn Rule) -> usize {
    let name = rule.meta().name;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/rules")
        .join(name);
    let mut n = 0;
    let mut seen = std::collections::BTreeSet::new();
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let expected = stem.split('-').next().unwrap().to_string();
        let snap = Snapshot::load(&path).unwrap();
        let estate = Estate::from_snapshot(&snap, None);
        let mut s = settings();
        if name == "cvm-v2-opt-out" && stem != "skipped" {
            s.opt_out_features = vec!["Microsoft.Compute/ExampleCvmV2OptOut".into()];
        }
        let cx = Cx {
            estate: &estate,
            settings: &s,
        };
        let vm = estate
            .vms
            .iter()
            .find(|v| v.name == "vm-under-test")
            .unwrap_or_else(|| panic!("{stem}: no vm-under-test"));
        let f = rule.check_vm(&cx, vm);
        assert_eq!(
            f.outcome.as_str(),
            expected,
            "{name}/{stem}.json: {}",
            f.message
        );
        assert!(!f.message.is_empty(), "{name}/{stem}.json: empty message");
        assert_unique_keys(&f.evidence, &format!("{name}/{stem}.json"));
        if f.outcome == super::Outcome::Fail
            && rule.meta().severity != super::Severity::Precondition
        {
            assert!(
                f.remediation.is_some(),
                "{name}/{stem}.json: a failure without a fix"
            );
        }
        seen.insert(expected);
        n += 1;
    }
    assert!(
        seen.contains("pass") && seen.contains("fail"),
        "{name}: needs pass and fail fixtures"
    );
    n
}

/// The evidence is a JSON object whose keys are unique (it is built as text, so a repeated
/// `with` would otherwise go unnoticed).
pub fn assert_unique_keys(json: &str, what: &str) {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    let Keys(keys) = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("{what}: evidence {json} is not an object: {e}"));
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        keys.len(),
        "{what}: duplicate evidence keys in {json}"
    );
}

/// `fixtures/demo.json` and every per-rule fixture.
pub fn every_snapshot_file() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("fixtures/demo.json")];
    for rule in std::fs::read_dir(root.join("tests/fixtures/rules")).unwrap() {
        let dir = rule.unwrap().path();
        if dir.is_dir() {
            for f in std::fs::read_dir(dir).unwrap() {
                files.push(f.unwrap().path());
            }
        }
    }
    files.sort();
    files
}
