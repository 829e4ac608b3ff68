//! Rulesets: the preview's support matrix as data, compiled into the binary.

use serde::Deserialize;

/// One dated version of the support matrix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ruleset {
    pub name: String,
    pub as_of: String,
    pub source: String,
    pub regions: Vec<String>,
    pub des_disk_limit: u64,
    pub preview_feature: String,
}

const SOURCES: &[(&str, &str)] = &[
    ("2026-01", include_str!("../rulesets/2026-01.toml")),
    ("2026-07", include_str!("../rulesets/2026-07.toml")),
];

pub const DEFAULT: &str = "2026-01";

/// Names of every ruleset compiled in.
pub fn names() -> Vec<&'static str> {
    SOURCES.iter().map(|(n, _)| *n).collect()
}

/// The ruleset of that name, or an error listing the valid ones.
pub fn load(name: &str) -> Result<Ruleset, String> {
    let (_, text) = SOURCES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            format!(
                "unknown ruleset {name:?}; valid rulesets: {}",
                names().join(", ")
            )
        })?;
    toml::from_str(text).map_err(|e| format!("built-in ruleset {name} is malformed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_ruleset_parses_and_matches_its_name() {
        for n in names() {
            let r = load(n).unwrap();
            assert_eq!(r.name, n);
            assert!(r
                .regions
                .iter()
                .all(|x| x == &x.to_lowercase() && !x.contains(' ')));
        }
        assert_eq!(load("2026-01").unwrap().des_disk_limit, 40);
        assert_eq!(load("2026-07").unwrap().regions.len(), 9);
        assert!(load("1999-01").unwrap_err().contains("2026-01, 2026-07"));
    }
}
