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
