//! Shared test support: the ARM emulator and the synthetic estates.

pub mod emulator;
pub mod synth;

use std::collections::BTreeMap;

use serde_json::Value;

/// Per VM: verdict and each rule's outcome; per subscription: each rule's outcome. Two reports
/// with equal maps agree on every decision.
pub fn outcomes(doc: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for vm in doc["vms"].as_array().unwrap() {
        let id = vm["id"].as_str().unwrap().to_ascii_lowercase();
        m.insert(
            format!("{id} verdict"),
            vm["verdict"].as_str().unwrap().into(),
        );
        for r in vm["results"].as_array().unwrap() {
            m.insert(
                format!("{id} {}", r["rule"].as_str().unwrap()),
                r["outcome"].as_str().unwrap().into(),
            );
        }
    }
    for s in doc["subscriptions"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap().to_ascii_lowercase();
        for r in s["results"].as_array().unwrap() {
            m.insert(
                format!("subscription {id} {}", r["rule"].as_str().unwrap()),
                r["outcome"].as_str().unwrap().into(),
            );
        }
    }
    m
}
