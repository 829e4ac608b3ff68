//! CVMB005 cvm-v2-opt-out: none of the configured CVM v2 opt-out features is Registered.

use super::{sh, sub_arg, Cx, Finding, Rule, RuleMeta, Severity};
use crate::estate::Avail;

pub struct CvmV2OptOut;

static META: RuleMeta = RuleMeta {
    reference: "CVMB005",
    name: "cvm-v2-opt-out",
    severity: Severity::Error,
    summary: "No configured \"CVM v2 opt-out\" feature flag is registered on the subscription.",
    docs: "\
The support matrix says backup and restore fail if the \"CVM v2 opt-out feature flag\" is enabled \
for the subscription, but Microsoft has not published the flag's name. cvm-backup therefore does \
not guess: list the names you know in cvm-backup.toml as \
`opt_out_features = [\"Namespace/Name\"]`; each is read through Microsoft.Features and the rule \
fails when any of them is `Registered`.

With no name configured the rule is `skipped`. A feature whose state could not be read makes the \
rule `unknown` unless another configured feature is already Registered.",
    docs_url: "https://learn.microsoft.com/azure/backup/backup-support-matrix-iaas",
    subscription_scoped: true,
};

impl Rule for CvmV2OptOut {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    fn check_subscription(&self, cx: &Cx, subscription_id: &str) -> Finding {
        let names = &cx.settings.opt_out_features;
        if names.is_empty() {
            return Finding::skipped(
                "no opt-out feature names configured (opt_out_features in cvm-backup.toml); Microsoft has not published the flag's name",
            )
            .with("opt_out_features", Vec::<String>::new());
        }
        let mut states = serde_json::Map::new();
        let mut registered = Vec::new();
        let mut unknown = Vec::new();
        for f in names {
            match cx.estate.feature(subscription_id, f) {
                Avail::Known(s) => {
                    if s.eq_ignore_ascii_case("Registered") {
                        registered.push(f.clone());
                    }
                    states.insert(f.clone(), s.into());
                }
                Avail::Unknown(r) => {
                    states.insert(f.clone(), serde_json::Value::Null);
                    unknown.push(format!("{f}: {r}"));
                }
            }
        }
        let f = if !registered.is_empty() {
            let cmds = registered
                .iter()
                .map(|f| {
                    let (ns, name) = f.split_once('/').unwrap_or(("Microsoft.Compute", f));
                    format!(
                        "az feature unregister --namespace {} --name {} {}",
                        sh(ns),
                        sh(name),
                        sub_arg(subscription_id)
                    )
                })
                .collect();
            Finding::fail(format!(
                "opt-out feature {} is Registered: CVM backup and restore fail while it is",
                registered.join(", ")
            ))
            .fix(
                "Unregister the opt-out feature (check with your Microsoft contact first that nothing else depends on it).",
                cmds,
            )
        } else if !unknown.is_empty() {
            Finding::unknown(format!(
                "could not read opt-out feature state: {}",
                unknown.join("; ")
            ))
        } else {
            Finding::pass("no configured opt-out feature is Registered")
        };
        f.with("opt_out_features", names.clone())
            .with("feature_states", states)
            .with("subscription_id", subscription_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&CvmV2OptOut) >= 3);
    }
}
