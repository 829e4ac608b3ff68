//! `cvm-backup.toml` (CONTRACT.md section 6): discovery, parsing with spans, validation, and
//! the waiver lints that run after evaluation.
//!
//! The file is parsed with `toml_edit` (the parser behind `toml`), which keeps the byte span of
//! every key and value, and then validated key by key, so every error names the file, the line
//! and column, the key, what is wrong and what to write instead. All errors of a file are
//! reported at once.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use time::macros::format_description;
use time::Date;
use toml_edit::{ImDocument, Item, Key, TableLike, Value};

use crate::engine::{RuleOverride, Waiver};
use crate::report::FailOn;
use crate::rules::{self, Settings, Severity};
use crate::ruleset;

/// The file looked for in the current directory.
pub const DEFAULT_FILE: &str = "cvm-backup.toml";

/// A validated config file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it was read from, as given (for messages).
    pub file: String,
    pub ruleset: Option<String>,
    pub fail_on: Option<FailOn>,
    pub opt_out_features: Vec<String>,
    /// `[limits] regions`, normalised (lower case, no spaces).
    pub regions: Option<Vec<String>>,
    pub des_disk_limit: Option<u64>,
    /// By rule ref.
    pub overrides: HashMap<&'static str, RuleOverride>,
    pub waivers: Vec<Waiver>,
}

impl Config {
    /// Applies `[limits]` and `opt_out_features` to the ruleset's settings.
    pub fn apply_to(&self, settings: &mut Settings) {
        if let Some(r) = &self.regions {
            settings.regions = r.clone();
        }
        if let Some(l) = self.des_disk_limit {
            settings.des_disk_limit = l;
        }
        settings.opt_out_features = self.opt_out_features.clone();
    }
}

/// One problem in a config file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why no config could be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read (missing explicit file, permissions, not UTF-8).
    Read(String),
    /// The file was read but is invalid: every problem found.
    Invalid {
        file: String,
        errors: Vec<ConfigError>,
    },
}

/// The environment variable naming the config file (the `--config` flag wins over it).
pub const ENV_VAR: &str = "CVM_BACKUP_CONFIG";

/// Finds and loads the config. `--no-config` ignores every config; otherwise the `--config`
/// flag, else `CVM_BACKUP_CONFIG` (when set and not empty), names a file that must exist; else
/// `./cvm-backup.toml` is used when present.
pub fn load(flag: Option<&Path>, no_config: bool) -> Result<Option<Config>, LoadError> {
    if no_config {
        return Ok(None);
    }
    let from_env = std::env::var_os(ENV_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let explicit = flag.map(Path::to_path_buf).or(from_env);
    let path: PathBuf = match &explicit {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from(DEFAULT_FILE);
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    let file = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let hint = if explicit.is_some() {
            format!(
                "check --config / CVM_BACKUP_CONFIG, create one with `cvm-backup init --output {file}`, or pass --no-config"
            )
        } else {
            "fix its permissions, or pass --no-config to ignore it".to_string()
        };
        LoadError::Read(format!("cannot read config file {file}: {e}; {hint}"))
    })?;
    parse(&text, &file)
        .map(Some)
        .map_err(|errors| LoadError::Invalid { file, errors })
}

/// Parses and validates the text of a config file; `file` names it in messages and waiver
/// origins.
pub fn parse(text: &str, file: &str) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator {
        text,
        file,
        errors: Vec::new(),
    };
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.message().trim_end().replace('\n', "; ");
            v.error(e.span(), format!("not valid TOML: {msg}"));
            return Err(v.errors);
        }
    };
    let cfg = v.document(doc.as_table());
    if v.errors.is_empty() {
        Ok(cfg)
    } else {
        v.errors.sort_by_key(|e| (e.line, e.column));
        Err(v.errors)
    }
}

const TOP_KEYS: &[&str] = &[
    "ruleset",
    "fail_on",
    "opt_out_features",
    "limits",
    "rules",
    "waiver",
];
const LIMIT_KEYS: &[&str] = &["regions", "des_disk_limit"];
const RULE_KEYS: &[&str] = &["severity", "enabled"];
const WAIVER_KEYS: &[&str] = &["rule", "scope", "reason", "expires"];

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => value_type_name(v),
    }
}

fn value_type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date/time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "an inline table",
    }
}

impl Validator<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    fn line_of(&self, span: Option<Range<usize>>) -> usize {
        self.position(span.map_or(0, |s| s.start)).0
    }

    fn error(&mut self, span: Option<Range<usize>>, message: String) {
        let (line, column) = self.position(span.map_or(0, |s| s.start));
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message,
        });
    }

    /// An error about `key` (a dotted path) at `span`.
    fn key_error(&mut self, span: Option<Range<usize>>, key: &str, what: impl fmt::Display) {
        self.error(span, format!("key `{key}`: {what}"));
    }

    /// Every key of `table` not in `allowed` is an error; `place` says where ("in [limits]").
    fn unknown_keys(&mut self, table: &dyn TableLike, prefix: &str, place: &str, allowed: &[&str]) {
        for (name, _) in table.iter() {
            if allowed.contains(&name) {
                continue;
            }
            let span = table.key(name).and_then(Key::span);
            let path = join(prefix, name);
            self.key_error(
                span,
                &path,
                format!("unknown key {place}; valid keys: {}", allowed.join(", ")),
            );
        }
    }

    fn string<'i>(
        &mut self,
        table: &'i dyn TableLike,
        name: &str,
        path: &str,
    ) -> Option<(&'i str, Option<Range<usize>>)> {
        let item = table.get(name)?;
        match item.as_str() {
            Some(s) => Some((s, item.span())),
            None => {
                let span = item.span().or_else(|| table.key(name).and_then(Key::span));
                self.key_error(
                    span,
                    path,
                    format!("expected a string, found {}", type_name(item)),
                );
                None
            }
        }
    }

    fn string_array(
        &mut self,
        table: &dyn TableLike,
        name: &str,
        path: &str,
    ) -> Option<Vec<(String, Option<Range<usize>>)>> {
        let item = table.get(name)?;
        let Some(arr) = item.as_array() else {
            self.key_error(
                item.span(),
                path,
                format!("expected an array of strings, found {}", type_name(item)),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for v in arr.iter() {
            match v.as_str() {
                Some(s) => out.push((s.to_string(), v.span())),
                None => {
                    ok = false;
                    self.key_error(
                        v.span(),
                        path,
                        format!(
                            "expected an array of strings, found {} in it",
                            value_type_name(v)
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn table<'i>(&mut self, item: &'i Item, path: &str) -> Option<&'i dyn TableLike> {
        match item.as_table_like() {
            Some(t) => Some(t),
            None => {
                self.key_error(
                    item.span(),
                    path,
                    format!("expected a table, found {}", type_name(item)),
                );
                None
            }
        }
    }

    fn document(&mut self, root: &toml_edit::Table) -> Config {
        let mut cfg = Config {
            file: self.file.to_string(),
            ..Config::default()
        };
        self.unknown_keys(root, "", "at the top level", TOP_KEYS);

        if let Some((name, span)) = self.string(root, "ruleset", "ruleset") {
            if ruleset::load(name).is_ok() {
                cfg.ruleset = Some(name.to_string());
            } else {
                self.key_error(
                    span,
                    "ruleset",
                    format!(
                        "unknown ruleset {name:?}; valid rulesets: {}",
                        ruleset::names().join(", ")
                    ),
                );
            }
        }

        if let Some((s, span)) = self.string(root, "fail_on", "fail_on") {
            cfg.fail_on = match s {
                "error" => Some(FailOn::Error),
                "warning" => Some(FailOn::Warning),
                "never" => Some(FailOn::Never),
                other => {
                    self.key_error(
                        span,
                        "fail_on",
                        format!(
                            "{other:?} is not a level; write \"error\", \"warning\" or \"never\""
                        ),
                    );
                    None
                }
            };
        }

        if let Some(features) = self.string_array(root, "opt_out_features", "opt_out_features") {
            for (f, span) in features {
                let mut parts = f.split('/');
                let well_formed = matches!(
                    (parts.next(), parts.next(), parts.next()),
                    (Some(ns), Some(name), None)
                        if !ns.trim().is_empty() && !name.trim().is_empty() && !f.contains(char::is_whitespace)
                );
                if well_formed {
                    cfg.opt_out_features.push(f);
                } else {
                    self.key_error(
                        span,
                        "opt_out_features",
                        format!(
                            "{f:?} is not a feature name; write \"Namespace/Name\", e.g. \"Microsoft.Compute/SomeOptOutFlag\""
                        ),
                    );
                }
            }
        }

        if let Some(item) = root.get("limits") {
            if let Some(t) = self.table(item, "limits") {
                self.limits(t, &mut cfg);
            }
        }
        if let Some(item) = root.get("rules") {
            if let Some(t) = self.table(item, "rules") {
                self.rules(t, &mut cfg);
            }
        }
        if let Some(item) = root.get("waiver") {
            self.waivers(item, &mut cfg);
        }
        cfg
    }

    fn limits(&mut self, t: &dyn TableLike, cfg: &mut Config) {
        self.unknown_keys(t, "limits", "in [limits]", LIMIT_KEYS);
        if let Some(regions) = self.string_array(t, "regions", "limits.regions") {
            let mut out = Vec::new();
            let mut bad = false;
            for (r, span) in regions {
                let n = crate::armid::norm_location(&r);
                if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric()) {
                    bad = true;
                    self.key_error(
                        span,
                        "limits.regions",
                        format!(
                            "{r:?} is not an Azure location; write ARM location names such as \"uaenorth\""
                        ),
                    );
                } else {
                    out.push(n);
                }
            }
            if bad {
                // Reported above.
            } else if out.is_empty() {
                let span = t.get("regions").and_then(Item::span);
                self.key_error(
                    span,
                    "limits.regions",
                    "the list is empty, so every VM would fail CVMB003; list at least one region or remove the key to use the ruleset's",
                );
            } else {
                cfg.regions = Some(out);
            }
        }
        if let Some(item) = t.get("des_disk_limit") {
            match item.as_integer() {
                Some(n) if n >= 1 => cfg.des_disk_limit = Some(n as u64),
                Some(n) => self.key_error(
                    item.span(),
                    "limits.des_disk_limit",
                    format!("{n} is not a limit; write a whole number of at least 1, e.g. 40"),
                ),
                None => self.key_error(
                    item.span(),
                    "limits.des_disk_limit",
                    format!(
                        "expected a whole number of at least 1, found {}",
                        type_name(item)
                    ),
                ),
            }
        }
    }

    fn rules(&mut self, t: &dyn TableLike, cfg: &mut Config) {
        let mut seen: HashMap<&'static str, (String, usize)> = HashMap::new();
        for (name, item) in t.iter() {
            let path = format!("rules.{name}");
            let key_span = t.key(name).and_then(Key::span);
            let Some(rule) = rules::find(name) else {
                self.key_error(
                    key_span,
                    &path,
                    format!("unknown rule {name:?}; {}", valid_rules()),
                );
                continue;
            };
            let meta = rule.meta();
            let line = self.line_of(key_span.clone());
            if let Some((other, other_line)) = seen.get(meta.reference) {
                self.key_error(
                    key_span,
                    &path,
                    format!(
                        "{} {} is already configured as [rules.{other}] on line {other_line}; keep one of them",
                        meta.reference, meta.name
                    ),
                );
                continue;
            }
            seen.insert(meta.reference, (name.to_string(), line));
            let Some(rt) = self.table(item, &path) else {
                continue;
            };
            self.unknown_keys(rt, &path, &format!("in [{path}]"), RULE_KEYS);
            let mut ov = RuleOverride::default();
            if let Some(sev) = rt.get("severity") {
                let sp = format!("{path}.severity");
                match sev.as_str() {
                    Some(s) if meta.severity == Severity::Precondition => self.key_error(
                        sev.span(),
                        &sp,
                        format!(
                            "{} {} is the precondition (is the VM confidential?); its severity cannot be changed to {s:?}: remove the key",
                            meta.reference, meta.name
                        ),
                    ),
                    Some("error") => ov.severity = Some(Severity::Error),
                    Some("warning") => ov.severity = Some(Severity::Warning),
                    Some(other) => self.key_error(
                        sev.span(),
                        &sp,
                        format!("{other:?} is not a severity; write \"error\" or \"warning\""),
                    ),
                    None => self.key_error(
                        sev.span(),
                        &sp,
                        format!(
                            "expected \"error\" or \"warning\", found {}",
                            type_name(sev)
                        ),
                    ),
                }
            }
            if let Some(en) = rt.get("enabled") {
                let sp = format!("{path}.enabled");
                match en.as_bool() {
                    Some(false) if meta.severity == Severity::Precondition => self.key_error(
                        en.span(),
                        &sp,
                        format!(
                            "{} {} is the precondition (is the VM confidential?) and cannot be turned off: remove the key",
                            meta.reference, meta.name
                        ),
                    ),
                    Some(b) => ov.enabled = b,
                    None => self.key_error(
                        en.span(),
                        &sp,
                        format!("expected true or false, found {}", type_name(en)),
                    ),
                }
            }
            cfg.overrides.insert(meta.reference, ov);
        }
    }

    fn waivers(&mut self, item: &Item, cfg: &mut Config) {
        // [[waiver]] tables, or `waiver = [{...}, ...]` inline.
        let mut entries: Vec<(&dyn TableLike, Option<Range<usize>>)> = Vec::new();
        match item {
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    entries.push((t, t.span()));
                }
            }
            Item::Value(Value::Array(a)) => {
                for v in a.iter() {
                    match v.as_inline_table() {
                        Some(t) => entries.push((t, v.span())),
                        None => self.key_error(
                            v.span(),
                            "waiver",
                            format!(
                                "expected a table with rule, scope, reason and expires, found {}",
                                value_type_name(v)
                            ),
                        ),
                    }
                }
            }
            other => {
                self.key_error(
                    other.span(),
                    "waiver",
                    format!(
                        "expected [[waiver]] tables, found {}; write each waiver as a [[waiver]] table",
                        type_name(other)
                    ),
                );
                return;
            }
        }
        for (i, (t, span)) in entries.into_iter().enumerate() {
            let n = i + 1;
            let line = self.line_of(span.clone());
            let origin = format!("{}:{line}", self.file);
            let prefix = format!("waiver[{n}]");
            self.unknown_keys(t, &prefix, &format!("in [[waiver]] #{n}"), WAIVER_KEYS);
            let errors_before = self.errors.len();
            let mut missing = Vec::new();
            for k in WAIVER_KEYS {
                if t.get(k).is_none() {
                    missing.push(*k);
                }
            }
            if !missing.is_empty() {
                let list = missing
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    span.clone(),
                    format!(
                        "[[waiver]] #{n}: missing required key{} {list}; every waiver needs rule, scope, reason (why the risk is accepted) and expires (YYYY-MM-DD)",
                        if missing.len() == 1 { "" } else { "s" }
                    ),
                );
            }
            let rule = self
                .string(t, "rule", &format!("{prefix}.rule"))
                .and_then(|(name, sp)| match rules::find(name) {
                    Some(r) if r.meta().severity == Severity::Precondition => {
                        self.key_error(
                            sp,
                            &format!("{prefix}.rule"),
                            format!(
                                "{} {} is the precondition (is the VM confidential?) and cannot be waived",
                                r.meta().reference,
                                r.meta().name
                            ),
                        );
                        None
                    }
                    Some(r) => Some(r.meta()),
                    None => {
                        self.key_error(
                            sp,
                            &format!("{prefix}.rule"),
                            format!("unknown rule {name:?}; {}", valid_rules()),
                        );
                        None
                    }
                });
            let scope = self
                .string(t, "scope", &format!("{prefix}.scope"))
                .and_then(|(s, sp)| match check_scope(s) {
                    Ok(()) => Some(s.trim().to_string()),
                    Err(why) => {
                        self.key_error(sp, &format!("{prefix}.scope"), why);
                        None
                    }
                });
            let reason = self
                .string(t, "reason", &format!("{prefix}.reason"))
                .and_then(|(s, sp)| {
                    if s.trim().is_empty() {
                        self.key_error(
                            sp,
                            &format!("{prefix}.reason"),
                            "is empty; say why the risk is accepted (e.g. a ticket)",
                        );
                        None
                    } else {
                        Some(s.trim().to_string())
                    }
                });
            let expires = t
                .get("expires")
                .and_then(|e| self.date(e, &format!("{prefix}.expires")));
            if self.errors.len() != errors_before {
                continue;
            }
            if let (Some(rule), Some(scope), Some(reason), Some(expires)) =
                (rule, scope, reason, expires)
            {
                cfg.waivers.push(Waiver {
                    rule,
                    scope,
                    reason,
                    expires,
                    origin,
                });
            }
        }
    }

    /// A date: a TOML local date (`2027-03-31`) or a string ("2027-03-31").
    fn date(&mut self, item: &Item, path: &str) -> Option<Date> {
        let text = match item.as_value() {
            Some(Value::String(s)) => s.value().clone(),
            Some(Value::Datetime(d)) => {
                let d = d.value();
                if d.time.is_some() || d.offset.is_some() {
                    self.key_error(
                        item.span(),
                        path,
                        format!("{d} has a time; write a date only, YYYY-MM-DD"),
                    );
                    return None;
                }
                d.to_string()
            }
            _ => {
                self.key_error(
                    item.span(),
                    path,
                    format!("expected a date \"YYYY-MM-DD\", found {}", type_name(item)),
                );
                return None;
            }
        };
        match Date::parse(text.trim(), format_description!("[year]-[month]-[day]")) {
            Ok(d) => Some(d),
            Err(_) => {
                self.key_error(
                    item.span(),
                    path,
                    format!("{text:?} is not a valid date; write YYYY-MM-DD, e.g. \"2027-03-31\""),
                );
                None
            }
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn valid_rules() -> String {
    let names: Vec<String> = rules::all()
        .iter()
        .map(|r| format!("{} ({})", r.meta().name, r.meta().reference))
        .collect();
    format!("valid rules: {}", names.join(", "))
}

/// A waiver scope: a subscription id (bare or `/subscriptions/<id>`), a resource group id, or a
/// VM id.
fn check_scope(s: &str) -> Result<(), String> {
    let hint = "write a subscription id (\"/subscriptions/<id>\"), a resource group id \
(\"/subscriptions/<id>/resourceGroups/<rg>\") or a VM id";
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("is empty; {hint}"));
    }
    if !s.contains('/') {
        return if s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            Ok(())
        } else {
            Err(format!("{s:?} is not a subscription id; {hint}"))
        };
    }
    let segs: Vec<&str> = s.trim_end_matches('/').split('/').collect();
    let ok = segs.first() == Some(&"")
        && segs.iter().skip(1).all(|x| !x.is_empty())
        && segs
            .get(1)
            .is_some_and(|x| x.eq_ignore_ascii_case("subscriptions"))
        && match segs.len() {
            3 => true,
            5 => segs[3].eq_ignore_ascii_case("resourceGroups"),
            9 => {
                segs[3].eq_ignore_ascii_case("resourceGroups")
                    && segs[5].eq_ignore_ascii_case("providers")
                    && segs[6].eq_ignore_ascii_case("Microsoft.Compute")
                    && segs[7].eq_ignore_ascii_case("virtualMachines")
            }
            _ => false,
        };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a subscription, resource group or VM id; {hint}"
        ))
    }
}

/// A waiver that did not do its job in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaiverProblem {
    Expired(String),
    Unused(String),
}

impl WaiverProblem {
    pub fn message(&self) -> &str {
        match self {
            WaiverProblem::Expired(m) | WaiverProblem::Unused(m) => m,
        }
    }
}

/// Expired waivers (they no longer apply) and waivers that matched no `fail` or `unknown`
/// result. `used[i]` says whether `waivers[i]` covered a result (from the engine).
pub fn waiver_problems(waivers: &[Waiver], used: &[bool], today: Date) -> Vec<WaiverProblem> {
    let mut out = Vec::new();
    for (i, w) in waivers.iter().enumerate() {
        let what = format!(
            "{}: waiver for {} {} at {}",
            w.origin, w.rule.reference, w.rule.name, w.scope
        );
        if w.is_expired(today) {
            out.push(WaiverProblem::Expired(format!(
                "{what} expired on {} (today is {today}) and no longer applies; set a later `expires` if the risk is still accepted, or remove the waiver",
                w.expires
            )));
        } else if !used.get(i).copied().unwrap_or(false) {
            out.push(WaiverProblem::Unused(format!(
                "{what} matched no fail or unknown result; remove it if the problem is fixed, or check its `rule` and `scope`"
            )));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        parse(text, "c.toml")
            .expect_err("should be invalid")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_init_template_parses_and_sets_nothing() {
        let cfg = parse(crate::output::CONFIG_TEMPLATE, "t.toml").expect("template parses");
        assert!(cfg.ruleset.is_none() && cfg.fail_on.is_none() && cfg.waivers.is_empty());
        assert!(cfg.overrides.is_empty() && cfg.regions.is_none());
    }

    #[test]
    fn the_template_with_its_examples_uncommented_parses() {
        // Every example line in the template is valid when uncommented.
        let text: String = crate::output::CONFIG_TEMPLATE
            .lines()
            .map(|l| {
                let rest = l.strip_prefix("# ").unwrap_or(l);
                let key = rest.split(" = ").next().unwrap_or("");
                let is_example = rest.starts_with('[')
                    || (rest.contains(" = ")
                        && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
                if is_example {
                    rest.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(cfg.ruleset.as_deref(), Some("2026-01"));
        assert_eq!(cfg.fail_on, Some(FailOn::Error));
        assert_eq!(cfg.des_disk_limit, Some(40));
        assert_eq!(cfg.waivers.len(), 1);
        assert_eq!(cfg.waivers[0].rule.reference, "CVMB009");
        assert_eq!(
            cfg.overrides.get("CVMB009").and_then(|o| o.severity),
            Some(Severity::Error)
        );
    }

    #[test]
    fn full_example_from_the_contract() {
        let text = r#"
ruleset = "2026-07"
fail_on = "warning"
opt_out_features = ["Microsoft.Compute/SomeOptOutFlag"]
[limits]
regions = ["UAE North", "koreacentral"]
des_disk_limit = 12
[rules.des-disk-limit]
severity = "error"
[rules.CVMB011]
enabled = false
[[waiver]]
rule = "des-disk-limit"
scope = "/subscriptions/0000/resourceGroups/rg1"
reason = "DES split planned, ticket OPS-123"
expires = "2027-03-31"
[[waiver]]
rule = "CVMB008"
scope = "00000000-0000-0000-0000-000000000001"
reason = "HSM role pending"
expires = 2027-01-01
"#;
        let cfg = parse(text, "c.toml").unwrap();
        assert_eq!(cfg.ruleset.as_deref(), Some("2026-07"));
        assert_eq!(cfg.fail_on, Some(FailOn::Warning));
        assert_eq!(
            cfg.regions.as_deref(),
            Some(&["uaenorth".to_string(), "koreacentral".to_string()][..])
        );
        assert_eq!(cfg.des_disk_limit, Some(12));
        assert_eq!(cfg.overrides["CVMB009"].severity, Some(Severity::Error));
        assert!(!cfg.overrides["CVMB011"].enabled);
        assert_eq!(cfg.waivers.len(), 2);
        assert_eq!(cfg.waivers[0].origin, "c.toml:12");
        assert_eq!(cfg.waivers[1].rule.name, "key-access");
        assert_eq!(cfg.waivers[1].expires.to_string(), "2027-01-01");
    }

    #[test]
    fn unknown_keys_name_file_line_column_and_key() {
        let e = errs("ruleset = \"2026-01\"\n[limits]\nregion = [\"uaenorth\"]\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("c.toml:3:1: key `limits.region`: unknown key in [limits]; valid keys: regions, des_disk_limit"),
            "{}",
            e[0]
        );
        let e = errs("\n\ncolour = true\n");
        assert!(
            e[0].starts_with("c.toml:3:1: key `colour`: unknown key at the top level"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let e = errs("[limits]\ndes_disk_limit = \"forty\"\n");
        assert_eq!(
            e[0],
            "c.toml:2:18: key `limits.des_disk_limit`: expected a whole number of at least 1, found a string"
        );
        let e = errs("fail_on = \"sometimes\"\n");
        assert!(
            e[0].starts_with("c.toml:1:11: key `fail_on`: \"sometimes\" is not a level"),
            "{}",
            e[0]
        );
        let e = errs("ruleset = \"1999-01\"\n");
        assert!(e[0].contains("unknown ruleset \"1999-01\"; valid rulesets: 2026-01, 2026-07"));
        let e = errs("opt_out_features = [\"NoSlash\"]\n");
        assert!(e[0].contains("key `opt_out_features`: \"NoSlash\" is not a feature name"));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = errs("ruleset = \"2026-01\"\nfail_on = \n");
        assert!(e[0].starts_with("c.toml:2:"), "{}", e[0]);
        assert!(e[0].contains("not valid TOML"));
    }

    #[test]
    fn precondition_cannot_be_disabled_reseveritied_or_waived() {
        let e = errs(
            "[rules.confidential-vm]\nenabled = false\n[rules.CVMB001]\nseverity = \"warning\"\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("c.toml:2:11: key `rules.confidential-vm.enabled`"),
            "{}",
            e[0]
        );
        assert!(e[1].contains("already configured as [rules.confidential-vm] on line 1"));
        let e = errs("[[waiver]]\nrule = \"CVMB001\"\nscope = \"/subscriptions/s\"\nreason = \"r\"\nexpires = \"2030-01-01\"\n");
        assert!(e[0].contains("cannot be waived"), "{}", e[0]);
    }

    #[test]
    fn unknown_rules_are_errors() {
        let e = errs("[rules.no-such-rule]\nenabled = false\n");
        assert!(
            e[0].starts_with("c.toml:1:8: key `rules.no-such-rule`: unknown rule"),
            "{}",
            e[0]
        );
        assert!(e[0].contains("des-disk-limit (CVMB009)"));
    }

    #[test]
    fn waiver_errors() {
        let e = errs("ruleset = \"2026-01\"\n\n[[waiver]]\nrule = \"des-disk-limit\"\nscope = \"/subscriptions/s\"\nexpires = \"2027-03-31\"\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("c.toml:3:1: [[waiver]] #1: missing required key `reason`"),
            "{}",
            e[0]
        );
        let e = errs("[[waiver]]\nrule = \"des-disk-limit\"\nscope = \"/subscriptions/s\"\nreason = \"x\"\nexpires = \"2027-02-30\"\n");
        assert!(
            e[0].starts_with(
                "c.toml:5:11: key `waiver[1].expires`: \"2027-02-30\" is not a valid date"
            ),
            "{}",
            e[0]
        );
        let e = errs("[[waiver]]\nrule = \"des-disk-limit\"\nscope = \"rg-prod\"\nreason = \"x\"\nexpires = \"2027-02-03\"\nowner = \"me\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e
            .iter()
            .any(|m| m.contains("key `waiver[1].owner`: unknown key")));
        assert!(e
            .iter()
            .any(|m| m.contains("\"rg-prod\" is not a subscription id")));
        let e = errs("[[waiver]]\nrule = \"des-disk-limit\"\nscope = \"/subscriptions/s/resourcegroups/rg/providers/Microsoft.KeyVault/vaults/kv\"\nreason = \"x\"\nexpires = 2027-02-03T10:00:00Z\n");
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn scopes() {
        assert!(check_scope("00000000-0000-0000-0000-000000000001").is_ok());
        assert!(check_scope("/subscriptions/x").is_ok());
        assert!(check_scope("/subscriptions/x/resourceGroups/rg/").is_ok());
        assert!(check_scope(
            "/subscriptions/x/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm"
        )
        .is_ok());
        assert!(check_scope(
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/disks/d"
        )
        .is_err());
        assert!(check_scope("/providers/Microsoft.Management/managementGroups/root").is_err());
        assert!(check_scope("subscriptions/x").is_err());
    }

    #[test]
    fn expired_and_unused_waivers_are_reported_with_their_origin() {
        let text = "[[waiver]]\nrule = \"des-disk-limit\"\nscope = \"/subscriptions/s\"\nreason = \"x\"\nexpires = \"2027-01-01\"\n\n[[waiver]]\nrule = \"key-access\"\nscope = \"/subscriptions/s\"\nreason = \"y\"\nexpires = \"2030-01-01\"\n";
        let cfg = parse(text, "c.toml").unwrap();
        let today = Date::parse("2027-01-01", format_description!("[year]-[month]-[day]")).unwrap();
        let p = waiver_problems(&cfg.waivers, &[false, false], today);
        assert_eq!(p.len(), 2);
        assert!(
            matches!(&p[0], WaiverProblem::Expired(m) if m.starts_with("c.toml:1: waiver for CVMB009 des-disk-limit") && m.contains("expired on 2027-01-01"))
        );
        assert!(
            matches!(&p[1], WaiverProblem::Unused(m) if m.starts_with("c.toml:7: waiver for CVMB008 key-access"))
        );
        assert!(waiver_problems(&cfg.waivers, &[false, true], today).len() == 1);
    }
}
