//! Shared by the CI-gate tests (`ci_formats.rs`, `config.rs`): the binary with a scrubbed
//! environment, a fixed clock and a private working directory, and a small snapshot ("mini")
//! whose verdicts are known by construction.
//!
//! mini (ruleset 2026-01, one Recovery Services vault per used region, nothing protected):
//!
//! | subscription | VM | location | size | verdict | why |
//! |---|---|---|---|---|---|
//! | A | vm-ok | uaenorth | DC4as_v6 | viable | |
//! | A | vm-v5 | uaenorth | DC4as_v5 | not_viable | CVMB002 fails |
//! | A | vm-weu | westeurope | DC2as_v6 | not_viable | CVMB003 fails (a vault exists there) |
//! | A | vm-plain | uaenorth | D2s_v5 | not_applicable | TrustedLaunch |
//! | B | vm-crr | koreacentral | DC2es_v6 | viable_with_warnings | CVMB011: the vault has CRR on |
//! | C | vm-unk | koreacentral | DC2as_v6 | unknown | CVMB004: the feature read got a 403 |
//!
//! Subscription A also has the feature `Microsoft.Compute/OptOutX` read as `NotRegistered`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::{json, Value};

pub const NOW: &str = "2026-11-28T20:00:00Z";
pub const SUB_A: &str = "00000000-0000-0000-0000-0000000000a1";
pub const SUB_B: &str = "00000000-0000-0000-0000-0000000000b2";
pub const SUB_C: &str = "00000000-0000-0000-0000-0000000000c3";
const PREVIEW: &str = "Microsoft.Compute/RestorePointSupportForConfidentialVMV2";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn demo() -> String {
    root().join("fixtures/demo.json").display().to_string()
}

/// The binary: no AZURE_*, CVM_BACKUP_*, NO_COLOR or GITHUB_* from the caller, the clock fixed at
/// [`NOW`], and `cwd` as working directory (so no stray ./cvm-backup.toml is found).
pub fn cvm(cwd: &Path) -> Command {
    let mut c = Command::cargo_bin("cvm-backup").expect("the binary is built");
    for (k, _) in std::env::vars() {
        if k.starts_with("AZURE_")
            || k.starts_with("CVM_BACKUP_")
            || k.starts_with("GITHUB_")
            || k == "NO_COLOR"
        {
            c.env_remove(k);
        }
    }
    c.env("CVM_BACKUP_NOW", NOW).current_dir(cwd);
    c
}

pub fn vm_id(sub: &str, rg: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}")
}

/// A raw ARM VM; `confidential` false makes it TrustedLaunch.
pub fn vm(
    sub: &str,
    rg: &str,
    name: &str,
    location: &str,
    size: &str,
    confidential: bool,
) -> Value {
    let mut v = json!({
        "id": vm_id(sub, rg, name),
        "name": name,
        "location": location,
        "type": "Microsoft.Compute/virtualMachines",
        "properties": {
            "hardwareProfile": {"vmSize": size},
            "securityProfile": {"securityType": "TrustedLaunch"},
            "storageProfile": {"osDisk": {"managedDisk": {
                "id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}-os")
            }}}
        }
    });
    if confidential {
        v["properties"]["securityProfile"]["securityType"] = json!("ConfidentialVM");
        v["properties"]["storageProfile"]["osDisk"]["managedDisk"]["securityProfile"] =
            json!({"securityEncryptionType": "DiskWithVMGuestState"});
    }
    v
}

fn vault(sub: &str, name: &str, location: &str, crr: bool) -> Value {
    json!({
        "id": format!("/subscriptions/{sub}/resourceGroups/rg-backup/providers/Microsoft.RecoveryServices/vaults/{name}"),
        "name": name,
        "location": location,
        "type": "Microsoft.RecoveryServices/vaults",
        "properties": {"redundancySettings": {"crossRegionRestore": if crr { "Enabled" } else { "Disabled" }}}
    })
}

fn feature(name: &str, state: &str) -> Value {
    json!({"value": {"name": name, "properties": {"state": state}}})
}

/// The OS disk ARM lists for a VM made by [`vm`] (platform-managed keys).
fn os_disk(vm: &Value) -> Value {
    let id = vm["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"].clone();
    let confidential = vm["properties"]["securityProfile"]["securityType"] == "ConfidentialVM";
    let mut props = json!({"encryption": {"type": "EncryptionAtRestWithPlatformKey"}});
    if confidential {
        props["securityProfile"] =
            json!({"securityType": "ConfidentialVM_DiskEncryptedWithPlatformKey"});
    }
    json!({
        "id": id,
        "name": id.as_str().and_then(|i| i.rsplit('/').next()).unwrap_or_default(),
        "type": "Microsoft.Compute/disks",
        "location": vm["location"].clone(),
        "managedBy": vm["id"].clone(),
        "properties": props
    })
}

fn subscription(id: &str, name: &str, vms: Vec<Value>, vaults: &[Value], features: Value) -> Value {
    let ok = |v: Value| json!({ "value": v });
    let disks: Vec<Value> = vms.iter().map(os_disk).collect();
    json!({
        "subscription_id": id,
        "display_name": name,
        "virtual_machines": ok(Value::Array(vms)),
        "disks": ok(Value::Array(disks)),
        "snapshots": ok(json!([])),
        "disk_encryption_sets": ok(json!([])),
        "recovery_services_vaults": ok(Value::Array(vaults.to_vec())),
        "key_vaults": ok(json!([])),
        "managed_hsms": ok(json!([])),
        "features": features
    })
}

/// The mini snapshot, with `extra_a` added to subscription A's VMs.
pub fn mini_with(extra_a: Vec<Value>) -> Value {
    let va = [
        vault(SUB_A, "rsv-a-uae", "uaenorth", false),
        vault(SUB_A, "rsv-a-weu", "westeurope", false),
    ];
    let vb = [vault(SUB_B, "rsv-b-krc", "koreacentral", true)];
    let vc = [vault(SUB_C, "rsv-c-krc", "koreacentral", false)];
    let mut a_vms = vec![
        vm(
            SUB_A,
            "rg-app",
            "vm-ok",
            "uaenorth",
            "Standard_DC4as_v6",
            true,
        ),
        vm(
            SUB_A,
            "rg-legacy",
            "vm-v5",
            "uaenorth",
            "Standard_DC4as_v5",
            true,
        ),
        vm(
            SUB_A,
            "rg-web",
            "vm-weu",
            "westeurope",
            "Standard_DC2as_v6",
            true,
        ),
        vm(
            SUB_A,
            "rg-app",
            "vm-plain",
            "uaenorth",
            "Standard_D2s_v5",
            false,
        ),
    ];
    a_vms.extend(extra_a);
    let forbidden = json!({"error": {
        "scope": format!("/subscriptions/{SUB_C}/providers/Microsoft.Features/providers/Microsoft.Compute/features/RestorePointSupportForConfidentialVMV2"),
        "operation": "read feature", "status": 403, "code": "AuthorizationFailed", "message": "no access"
    }});
    let mut vaults = serde_json::Map::new();
    for v in va.iter().chain(&vb).chain(&vc) {
        let crr = v["properties"]["redundancySettings"]["crossRegionRestore"] == "Enabled";
        vaults.insert(
            v["id"].as_str().unwrap_or_default().to_string(),
            json!({
                "storage_config": {"value": {"properties": {"crossRegionRestoreFlag": crr}}},
                "policies": {"value": []},
                "protected_items": {"value": []}
            }),
        );
    }
    json!({
        "schema": "cvm-backup/snapshot/v1",
        "source": "fixture",
        "collected_at": NOW,
        "subscriptions": [
            subscription(SUB_A, "ci-sub-a", a_vms, &va, json!({
                PREVIEW: feature(PREVIEW, "Registered"),
                "Microsoft.Compute/OptOutX": feature("Microsoft.Compute/OptOutX", "NotRegistered")
            })),
            subscription(SUB_B, "ci-sub-b",
                vec![vm(SUB_B, "rg-krc", "vm-crr", "koreacentral", "Standard_DC2es_v6", true)],
                &vb, json!({ PREVIEW: feature(PREVIEW, "Registered") })),
            subscription(SUB_C, "ci-sub-c",
                vec![vm(SUB_C, "rg-krc", "vm-unk", "koreacentral", "Standard_DC2as_v6", true)],
                &vc, json!({ PREVIEW: forbidden })),
        ],
        "backup_principal": {"value": {
            "id": "11111111-2222-3333-4444-555555555555",
            "appId": "262044b1-e2ce-469f-a196-69ab7ada62d3",
            "displayName": "Backup Management Service"
        }},
        "vaults": vaults
    })
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a test file");
    p.display().to_string()
}

/// Writes the mini snapshot into `dir` and returns its path.
pub fn mini(dir: &Path) -> String {
    write(
        dir,
        "mini.json",
        &serde_json::to_string_pretty(&mini_with(vec![])).expect("serialise"),
    )
}

/// Runs the binary in `cwd` and returns (exit code, stdout, stderr).
pub fn run(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    run_env(cwd, args, &[])
}

pub fn run_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = cvm(cwd);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.args(args).output().expect("run the binary");
    (
        out.status.code().expect("an exit code, not a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// stdout parsed as JSON, with a readable panic when it is not.
pub fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `(vm name, verdict)` for every VM of a JSON report.
pub fn verdicts(doc: &Value) -> Vec<(String, String)> {
    doc["vms"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap_or_default().to_string(),
                        v["verdict"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The result of `rule` (name) for VM `vm` (name).
pub fn result<'a>(doc: &'a Value, vm: &str, rule: &str) -> &'a Value {
    doc["vms"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == vm))
        .and_then(|v| v["results"].as_array())
        .and_then(|r| r.iter().find(|x| x["rule"] == rule))
        .unwrap_or_else(|| panic!("no result {rule} for {vm}"))
}
