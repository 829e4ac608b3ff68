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

/// The clock of every test run (`CVM_BACKUP_NOW`).
pub const NOW: &str = "2026-11-28T20:00:00Z";

/// The binary with a scrubbed environment (no Azure, proxy or identity variables), the clock
/// fixed at `NOW`, and an empty directory as PATH (no `az`): no credential source
/// can leave the machine.
pub fn bare_cvm() -> assert_cmd::Command {
    let path = std::env::temp_dir().join("cvm-backup-tests-empty-path");
    std::fs::create_dir_all(&path).unwrap();
    let mut c = assert_cmd::Command::cargo_bin("cvm-backup").unwrap();
    for k in emulator::ambient_vars() {
        c.env_remove(k);
    }
    c.env("CVM_BACKUP_NOW", NOW)
        .env("PATH", path)
        .current_dir(std::env::temp_dir());
    c
}

/// What one run of the binary printed and returned.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The run ended with `code`, printed nothing on stdout, and said each of `phrases` on
    /// stderr.
    pub fn failed(&self, code: i32, phrases: &[&str]) {
        assert_eq!(self.code, code, "{}", self.stderr);
        assert!(self.stdout.is_empty(), "stdout: {}", self.stdout);
        for p in phrases {
            assert!(self.stderr.contains(p), "no {p:?} in: {}", self.stderr);
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the binary to completion (a hung run fails the test after 3 minutes).
pub fn run(mut c: assert_cmd::Command) -> Run {
    let out = c
        .timeout(std::time::Duration::from_secs(180))
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
