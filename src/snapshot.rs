//! Snapshot format v1: what `collect` writes and `check --from` reads.
//!
//! The snapshot keeps ARM payloads exactly as they were returned (`serde_json::Value`), and adds
//! only the structure around them: which read, in which scope, and whether it succeeded.
//! See `docs/snapshot.md`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

pub const SNAPSHOT_SCHEMA: &str = "cvm-backup/snapshot/v1";

/// One error met while reading Azure. Also the shape of the report's `errors[]` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub scope: String,
    pub operation: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: String,
}

impl ErrorRecord {
    /// A short human form: "list disks in /subscriptions/x: 403 AuthorizationFailed".
    pub fn short(&self) -> String {
        let mut s = format!("{} at {}", self.operation, self.scope);
        match (self.status, &self.code) {
            (Some(st), Some(c)) => s.push_str(&format!(": {st} {c}")),
            (Some(st), None) => s.push_str(&format!(": HTTP {st}")),
            (None, Some(c)) => s.push_str(&format!(": {c}")),
            (None, None) => {
                if !self.message.is_empty() {
                    s.push_str(&format!(": {}", self.message));
                }
            }
        }
        s
    }
}

/// A paged ARM list: all pages concatenated. `error` set means incomplete.
///
/// `I` is how a raw item is held: a `serde_json::Value` (built by the collector and tests) or a
/// borrowed `&RawValue` (the fast path of `check --from`, which never builds a value tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListRead<I = Value> {
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub value: Option<Vec<I>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRecord>,
}

fn none<T>() -> Option<T> {
    None
}

impl<I> Default for ListRead<I> {
    fn default() -> Self {
        ListRead {
            value: None,
            error: None,
        }
    }
}

impl<I> ListRead<I> {
    pub fn items(&self) -> &[I] {
        self.value.as_deref().unwrap_or(&[])
    }
    /// The same read with every item turned into another form.
    pub fn map_items<J>(self, f: &mut impl FnMut(I) -> J) -> ListRead<J> {
        ListRead {
            value: self.value.map(|v| v.into_iter().map(f).collect()),
            error: self.error,
        }
    }
}

impl ListRead {
    pub fn ok(items: Vec<Value>) -> Self {
        ListRead {
            value: Some(items),
            error: None,
        }
    }
    pub fn failed(error: ErrorRecord) -> Self {
        ListRead {
            value: None,
            error: Some(error),
        }
    }
}

/// One GET.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SingleRead<I = Value> {
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub value: Option<I>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_found: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRecord>,
}

impl<I> Default for SingleRead<I> {
    fn default() -> Self {
        SingleRead {
            value: None,
            not_found: false,
            error: None,
        }
    }
}

impl<I> SingleRead<I> {
    /// The same read with its value turned into another form.
    pub fn map_items<J>(self, f: &mut impl FnMut(I) -> J) -> SingleRead<J> {
        SingleRead {
            value: self.value.map(f),
            not_found: self.not_found,
            error: self.error,
        }
    }
}

impl SingleRead {
    pub fn ok(value: Value) -> Self {
        SingleRead {
            value: Some(value),
            ..Default::default()
        }
    }
    pub fn not_found() -> Self {
        SingleRead {
            not_found: true,
            ..Default::default()
        }
    }
    pub fn failed(error: ErrorRecord) -> Self {
        SingleRead {
            error: Some(error),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot<I = Value> {
    pub schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    pub subscriptions: Vec<SubscriptionSnapshot<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub backup_principal: Option<SingleRead<I>>,
    #[serde(default = "BTreeMap::new", skip_serializing_if = "BTreeMap::is_empty")]
    pub vaults: BTreeMap<String, VaultChildren<I>>,
    #[serde(default = "BTreeMap::new", skip_serializing_if = "BTreeMap::is_empty")]
    pub key_vault_role_assignments: BTreeMap<String, ListRead<I>>,
    #[serde(default = "BTreeMap::new", skip_serializing_if = "BTreeMap::is_empty")]
    pub role_definitions: BTreeMap<String, SingleRead<I>>,
    #[serde(default = "BTreeMap::new", skip_serializing_if = "BTreeMap::is_empty")]
    pub managed_hsms: BTreeMap<String, HsmRbac<I>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionSnapshot<I = Value> {
    pub subscription_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRecord>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub virtual_machines: Option<ListRead<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub disks: Option<ListRead<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<ListRead<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub disk_encryption_sets: Option<ListRead<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub recovery_services_vaults: Option<ListRead<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub key_vaults: Option<ListRead<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub managed_hsms: Option<ListRead<I>>,
    #[serde(default = "BTreeMap::new", skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, SingleRead<I>>,
}

impl<I> Default for SubscriptionSnapshot<I> {
    fn default() -> Self {
        SubscriptionSnapshot {
            subscription_id: String::new(),
            display_name: None,
            error: None,
            virtual_machines: None,
            disks: None,
            snapshots: None,
            disk_encryption_sets: None,
            recovery_services_vaults: None,
            key_vaults: None,
            managed_hsms: None,
            features: BTreeMap::new(),
        }
    }
}

impl<I> SubscriptionSnapshot<I> {
    /// The same subscription with every item turned into another form.
    pub fn map_items<J>(self, mut f: impl FnMut(I) -> J) -> SubscriptionSnapshot<J> {
        let f = &mut f;
        SubscriptionSnapshot {
            subscription_id: self.subscription_id,
            display_name: self.display_name,
            error: self.error,
            virtual_machines: self.virtual_machines.map(|l| l.map_items(f)),
            disks: self.disks.map(|l| l.map_items(f)),
            snapshots: self.snapshots.map(|l| l.map_items(f)),
            disk_encryption_sets: self.disk_encryption_sets.map(|l| l.map_items(f)),
            recovery_services_vaults: self.recovery_services_vaults.map(|l| l.map_items(f)),
            key_vaults: self.key_vaults.map(|l| l.map_items(f)),
            managed_hsms: self.managed_hsms.map(|l| l.map_items(f)),
            features: (self.features.into_iter())
                .map(|(k, v)| (k, v.map_items(f)))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaultChildren<I = Value> {
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub storage_config: Option<SingleRead<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub policies: Option<ListRead<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub protected_items: Option<ListRead<I>>,
}

impl<I> Default for VaultChildren<I> {
    fn default() -> Self {
        VaultChildren {
            storage_config: None,
            policies: None,
            protected_items: None,
        }
    }
}

impl<I> VaultChildren<I> {
    /// The same children with every item turned into another form.
    pub fn map_items<J>(self, mut f: impl FnMut(I) -> J) -> VaultChildren<J> {
        let f = &mut f;
        VaultChildren {
            storage_config: self.storage_config.map(|r| r.map_items(f)),
            policies: self.policies.map(|l| l.map_items(f)),
            protected_items: self.protected_items.map(|l| l.map_items(f)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HsmRbac<I = Value> {
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub role_assignments: Option<ListRead<I>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub role_definitions: Option<ListRead<I>>,
}

impl<I> Default for HsmRbac<I> {
    fn default() -> Self {
        HsmRbac {
            role_assignments: None,
            role_definitions: None,
        }
    }
}

/// Why a snapshot could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {path} is not valid JSON at line {line}, column {column}: {msg}")]
    Json {
        path: String,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("snapshot {path} is truncated: the JSON ends early at line {line}, column {column}")]
    Truncated {
        path: String,
        line: usize,
        column: usize,
    },
    #[error("snapshot {path} has the wrong schema {found:?}: expected \"{SNAPSHOT_SCHEMA}\"")]
    WrongSchema { path: String, found: String },
    #[error("snapshot {path} is not a cvm-backup snapshot: {msg}")]
    Invalid { path: String, msg: String },
}

impl<I> Snapshot<I> {
    pub fn new(subscriptions: Vec<SubscriptionSnapshot<I>>) -> Self {
        Snapshot {
            schema: SNAPSHOT_SCHEMA.to_string(),
            tool: Some(ToolInfo {
                name: "cvm-backup".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            collected_at: None,
            source: None,
            endpoints: None,
            subscriptions,
            backup_principal: None,
            vaults: BTreeMap::new(),
            key_vault_role_assignments: BTreeMap::new(),
            role_definitions: BTreeMap::new(),
            managed_hsms: BTreeMap::new(),
            errors: Vec::new(),
        }
    }
}

impl<I: Serialize> Snapshot<I> {
    /// Serialise for `collect --output`. Items held as JSON text are written as they are.
    pub fn to_json_pretty(&self) -> String {
        // Serialising plain data structures cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| String::from("{}"))
    }
}

impl Snapshot {
    /// Parse a snapshot from bytes into owned values. `path` only names the source in errors.
    pub fn from_slice(bytes: &[u8], path: &str) -> Result<Snapshot, SnapshotError> {
        parse(bytes, path)
    }

    pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
        let bytes = read(path)?;
        Snapshot::from_slice(&bytes, &path.display().to_string())
    }
}

impl<'a> Snapshot<&'a RawValue> {
    /// The fast path of `check --from`: items stay borrowed JSON text, no value tree is built.
    pub fn parse_borrowed(bytes: &'a [u8], path: &str) -> Result<Self, SnapshotError> {
        parse(bytes, path)
    }
}

/// Reads a snapshot file's bytes, naming the file in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    std::fs::read(path).map_err(|source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Only the `schema` field; everything else is skipped (but still checked for JSON syntax).
#[derive(Deserialize)]
struct SchemaProbe {
    #[serde(default)]
    schema: Option<Value>,
}

fn parse<'a, I: Deserialize<'a>>(
    bytes: &'a [u8],
    path: &str,
) -> Result<Snapshot<I>, SnapshotError> {
    let invalid = |msg: String| SnapshotError::Invalid {
        path: path.to_string(),
        msg,
    };
    // One pass in the usual case; only a failure pays for a second pass that names the first
    // problem a person should fix (syntax, then the top level, then the schema, then structure).
    let snap: Snapshot<I> = match serde_json::from_slice(bytes) {
        Ok(s) => s,
        Err(e) => {
            diagnose(bytes, path)?;
            return Err(invalid(e.to_string()));
        }
    };
    if snap.schema != SNAPSHOT_SCHEMA {
        return Err(SnapshotError::WrongSchema {
            path: path.to_string(),
            found: snap.schema,
        });
    }
    validate(&snap, path)?;
    Ok(snap)
}

/// Why a document that failed to parse as a snapshot is wrong, in the order a person would
/// fix it. Returns `Ok(())` when only the structure is wrong.
fn diagnose(bytes: &[u8], path: &str) -> Result<(), SnapshotError> {
    let invalid = |msg: String| SnapshotError::Invalid {
        path: path.to_string(),
        msg,
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| json_error(&e, path))?;
        return Err(invalid("the top level is not a JSON object".into()));
    }
    let probe: SchemaProbe = serde_json::from_slice(bytes).map_err(|e| json_error(&e, path))?;
    match probe.schema {
        None => Err(invalid("missing required field `schema`".into())),
        Some(Value::String(s)) if s == SNAPSHOT_SCHEMA => Ok(()),
        Some(other) => Err(SnapshotError::WrongSchema {
            path: path.to_string(),
            found: match other {
                Value::String(s) => s,
                v => v.to_string(),
            },
        }),
    }
}

fn validate<I>(snap: &Snapshot<I>, path: &str) -> Result<(), SnapshotError> {
    for (i, s) in snap.subscriptions.iter().enumerate() {
        validate_subscription(i, s, path)?;
    }
    Ok(())
}

/// The checks serde cannot make on `subscriptions[i]`.
pub fn validate_subscription<I>(
    i: usize,
    s: &SubscriptionSnapshot<I>,
    path: &str,
) -> Result<(), SnapshotError> {
    let invalid = |msg: String| SnapshotError::Invalid {
        path: path.to_string(),
        msg,
    };
    if s.subscription_id.trim().is_empty() {
        return Err(invalid(format!(
            "subscriptions[{i}].subscription_id is empty"
        )));
    }
    let lists = [
        ("virtual_machines", &s.virtual_machines),
        ("disks", &s.disks),
        ("snapshots", &s.snapshots),
        ("disk_encryption_sets", &s.disk_encryption_sets),
        ("recovery_services_vaults", &s.recovery_services_vaults),
        ("key_vaults", &s.key_vaults),
        ("managed_hsms", &s.managed_hsms),
    ];
    for (name, l) in lists {
        if let Some(l) = l {
            if l.value.is_none() && l.error.is_none() {
                return Err(invalid(format!(
                    "subscriptions[{i}].{name} has neither `value` nor `error`"
                )));
            }
        }
    }
    Ok(())
}

fn json_error(e: &serde_json::Error, path: &str) -> SnapshotError {
    if e.is_eof() {
        SnapshotError::Truncated {
            path: path.to_string(),
            line: e.line(),
            column: e.column(),
        }
    } else {
        let full = e.to_string();
        // serde_json appends " at line X column Y"; we print position ourselves.
        let msg = match full.rfind(" at line ") {
            Some(i) => full[..i].to_string(),
            None => full,
        };
        SnapshotError::Json {
            path: path.to_string(),
            line: e.line(),
            column: e.column(),
            msg,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_schema() {
        let e = Snapshot::from_slice(br#"{"schema":"other/v2","subscriptions":[]}"#, "x.json")
            .unwrap_err();
        assert!(matches!(e, SnapshotError::WrongSchema { .. }), "{e}");
    }

    #[test]
    fn truncated_is_reported_with_position() {
        let e = Snapshot::from_slice(br#"{"schema":"cvm-backup/snapshot/v1","subs"#, "x.json")
            .unwrap_err();
        assert!(matches!(e, SnapshotError::Truncated { line: 1, .. }), "{e}");
    }

    #[test]
    fn missing_subscriptions_is_named() {
        let e =
            Snapshot::from_slice(br#"{"schema":"cvm-backup/snapshot/v1"}"#, "x.json").unwrap_err();
        assert!(e.to_string().contains("subscriptions"), "{e}");
    }

    #[test]
    fn tolerates_unknown_fields() {
        let s = Snapshot::from_slice(
            br#"{"schema":"cvm-backup/snapshot/v1","extra":1,"subscriptions":[{"subscription_id":"a","zzz":true}]}"#,
            "x.json",
        )
        .unwrap();
        assert_eq!(s.subscriptions.len(), 1);
    }
}
