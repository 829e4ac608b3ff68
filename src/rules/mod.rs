//! The rule catalogue (CONTRACT.md section 3). One file per rule; each is a pure function of the
//! estate, the settings and one VM, declared once with its metadata. No I/O here.

use std::borrow::Cow;

use serde::Serialize;

use crate::estate::{Estate, Vm};

mod backup_policy;
mod confidential_vm;
mod cvm_v2_opt_out;
mod des_disk_limit;
mod key_access;
mod os_disk_encryption;
mod preview_feature_registered;
mod region_supported;
mod vault_cross_region_restore;
mod vault_same_region;
mod vm_size_v6;

pub use vm_size_v6::{parse_vm_size, SizeClass};

/// Application id of the "Backup Management Service" in the public cloud.
pub const BACKUP_MANAGEMENT_APP_ID: &str = "262044b1-e2ce-469f-a196-69ab7ada62d3";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Precondition,
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Precondition => "precondition",
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Unknown,
    Skipped,
    Waived,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
            Outcome::Skipped => "skipped",
            Outcome::Waived => "waived",
        }
    }
}

/// What a rule is, declared once per rule file.
#[derive(Debug)]
pub struct RuleMeta {
    pub reference: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
    /// Longer text shown by `explain`: what, why, how to fix (Markdown-ish plain text).
    pub docs: &'static str,
    pub docs_url: &'static str,
    /// Evaluated once per subscription (CVMB004, CVMB005) and copied to each VM.
    pub subscription_scoped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Remediation {
    pub text: String,
    pub commands: Vec<String>,
}

/// What one rule found for one VM (or subscription).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub outcome: Outcome,
    /// Fixed texts are borrowed, so most results allocate nothing for their message.
    pub message: Cow<'static, str>,
    /// The values the rule looked at: a compact JSON object, written straight from the values
    /// (so no map is built per result) and copied into the output as it is.
    pub evidence: String,
    pub remediation: Option<Remediation>,
}

impl Finding {
    fn new(outcome: Outcome, message: impl Into<Cow<'static, str>>) -> Self {
        Finding {
            outcome,
            message: message.into(),
            evidence: String::from("{}"),
            remediation: None,
        }
    }
    pub fn pass(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Outcome::Pass, message)
    }
    pub fn fail(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Outcome::Fail, message)
    }
    pub fn unknown(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Outcome::Unknown, message)
    }
    pub fn skipped(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Outcome::Skipped, message)
    }
    /// Adds one evidence value. Keys are unique per finding (tested over every fixture).
    pub fn with(mut self, key: &'static str, value: impl Serialize) -> Self {
        let mut text = std::mem::take(&mut self.evidence).into_bytes();
        text.pop(); // the closing brace
        if text.len() > 1 {
            text.push(b',');
        }
        // Serialising strings, numbers, lists and string-keyed maps into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut text, key);
        text.push(b':');
        let _ = serde_json::to_writer(&mut text, &value);
        text.push(b'}');
        // serde_json writes UTF-8 only.
        self.evidence = String::from_utf8(text).unwrap_or_else(|_| String::from("{}"));
        self
    }
    /// Adds an optional evidence value (null when absent, so the reader sees it was looked at).
    pub fn with_opt(self, key: &'static str, value: Option<impl Serialize>) -> Self {
        self.with(key, value)
    }
    pub fn fix(mut self, text: impl Into<String>, commands: Vec<String>) -> Self {
        self.remediation = Some(Remediation {
            text: text.into(),
            commands,
        });
        self
    }
}

/// The limits a run applies: the ruleset's, possibly overridden by the config file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ruleset_name: String,
    pub ruleset_as_of: String,
    pub regions: Vec<String>,
    pub des_disk_limit: u64,
    pub preview_feature: String,
    /// CVMB005: "Namespace/Name" of opt-out features; empty means the rule is skipped.
    pub opt_out_features: Vec<String>,
}

impl Settings {
    pub fn from_ruleset(r: &crate::ruleset::Ruleset) -> Settings {
        Settings {
            ruleset_name: r.name.clone(),
            ruleset_as_of: r.as_of.clone(),
            regions: r.regions.clone(),
            des_disk_limit: r.des_disk_limit,
            preview_feature: r.preview_feature.clone(),
            opt_out_features: Vec::new(),
        }
    }
}

/// What every rule sees.
pub struct Cx<'a> {
    pub estate: &'a Estate,
    pub settings: &'a Settings,
}

pub trait Rule: Sync {
    fn meta(&self) -> &'static RuleMeta;
    /// Evaluate for one VM. Subscription-scoped rules evaluate the VM's subscription.
    fn check_vm(&self, cx: &Cx, vm: &Vm) -> Finding {
        self.check_subscription(cx, &vm.subscription_id)
    }
    /// When the finding for `vm` depends on less than the whole VM: a key such that every VM
    /// with the same key gets the same finding (given the estate and settings), so the engine
    /// evaluates the rule once per key. `None` (the default): once per VM.
    fn shared_by(&self, cx: &Cx, vm: &Vm) -> Option<String> {
        let _ = (cx, vm);
        None
    }
    /// Evaluate for one subscription (only subscription-scoped rules).
    fn check_subscription(&self, cx: &Cx, subscription_id: &str) -> Finding {
        let _ = (cx, subscription_id);
        Finding::skipped("this rule is evaluated per VM")
    }
}

/// Every rule, in ref order.
pub fn all() -> &'static [&'static dyn Rule] {
    static ALL: [&dyn Rule; 11] = [
        &confidential_vm::ConfidentialVm,
        &vm_size_v6::VmSizeV6,
        &region_supported::RegionSupported,
        &preview_feature_registered::PreviewFeatureRegistered,
        &cvm_v2_opt_out::CvmV2OptOut,
        &os_disk_encryption::OsDiskEncryption,
        &vault_same_region::VaultSameRegion,
        &key_access::KeyAccess,
        &des_disk_limit::DesDiskLimit,
        &backup_policy::BackupPolicy,
        &vault_cross_region_restore::VaultCrossRegionRestore,
    ];
    &ALL
}

/// A rule by name or ref, case-insensitive.
pub fn find(name_or_ref: &str) -> Option<&'static dyn Rule> {
    all().iter().copied().find(|r| {
        let m = r.meta();
        m.name.eq_ignore_ascii_case(name_or_ref) || m.reference.eq_ignore_ascii_case(name_or_ref)
    })
}

/// Quote a value for a shell command line (POSIX sh), only when needed.
pub fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The CLI's usual ` --subscription X` suffix.
pub fn sub_arg(subscription_id: &str) -> String {
    format!("--subscription {}", sh(subscription_id))
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_names_are_unique_and_in_order() {
        let refs: Vec<_> = all().iter().map(|r| r.meta().reference).collect();
        let expected: Vec<String> = (1..=11).map(|i| format!("CVMB{i:03}")).collect();
        assert_eq!(refs, expected);
        let mut names: Vec<_> = all().iter().map(|r| r.meta().name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 11);
    }

    #[test]
    fn find_accepts_name_or_ref_in_any_case() {
        assert_eq!(find("key-access").unwrap().meta().reference, "CVMB008");
        assert_eq!(find("cvmb008").unwrap().meta().name, "key-access");
        assert!(find("nope").is_none());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh("rg-1"), "rg-1");
        assert_eq!(sh("Managed HSM Crypto User"), "'Managed HSM Crypto User'");
        assert_eq!(sh("it's"), r"'it'\''s'");
    }
}
