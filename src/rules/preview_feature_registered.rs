//! CVMB004 preview-feature-registered: the preview feature is Registered in the subscription.

use super::{sh, sub_arg, Cx, Finding, Rule, RuleMeta, Severity};
use crate::estate::Avail;

pub struct PreviewFeatureRegistered;

static META: RuleMeta = RuleMeta {
    reference: "CVMB004",
    name: "preview-feature-registered",
    severity: Severity::Error,
    summary: "The subscription has the preview feature RestorePointSupportForConfidentialVMV2 registered.",
    docs: "\
Backup of confidential VMs needs the preview feature \
`Microsoft.Compute/RestorePointSupportForConfidentialVMV2` registered on the VM's subscription. \
Its `properties.state` must be `Registered` (compared case-insensitively); `Registering` and \
`Pending` mean the registration is in progress, every other state fails. The registration is \
auto-approved; after it completes, re-register the Microsoft.Compute provider so the flag reaches it.

This rule is evaluated once per subscription and reported both under `subscriptions` and on each \
confidential VM of the subscription. When the feature state could not be read the result is \
`unknown`.",
    docs_url: "https://learn.microsoft.com/azure/backup/confidential-vm-backup",
    subscription_scoped: true,
};

fn split(feature: &str) -> (&str, &str) {
    feature
        .split_once('/')
        .unwrap_or(("Microsoft.Compute", feature))
}

impl Rule for PreviewFeatureRegistered {
    fn meta(&self) -> &'static RuleMeta {
        &META
    }

    fn check_subscription(&self, cx: &Cx, subscription_id: &str) -> Finding {
        let feature = &cx.settings.preview_feature;
        let (ns, name) = split(feature);
        let register = vec![
            format!(
                "az feature register --namespace {} --name {} {}",
                sh(ns),
                sh(name),
                sub_arg(subscription_id)
            ),
            format!(
                "az provider register --namespace {} {}",
                sh(ns),
                sub_arg(subscription_id)
            ),
        ];
        let f = match cx.estate.feature(subscription_id, feature) {
            Avail::Unknown(reason) => Finding::unknown(format!(
                "could not read the state of {feature}: {reason}"
            ))
            .with("feature_state", serde_json::Value::Null)
            .fix(
                "Grant the identity read access to Microsoft.Features on the subscription (Reader), or check the state by hand.",
                vec![format!(
                    "az feature show --namespace {} --name {} {} --query properties.state",
                    sh(ns),
                    sh(name),
                    sub_arg(subscription_id)
                )],
            ),
            Avail::Known(state) if state.eq_ignore_ascii_case("Registered") => {
                Finding::pass(format!("{feature} is Registered")).with("feature_state", state)
            }
            Avail::Known(state)
                if state.eq_ignore_ascii_case("Registering")
                    || state.eq_ignore_ascii_case("Pending") =>
            {
                Finding::fail(format!(
                    "{feature} is {state}: registration in progress; backup will fail until it is Registered"
                ))
                .with("feature_state", state)
                .fix(
                    "Wait for the registration to complete (it is auto-approved), then re-register the provider.",
                    vec![
                        format!(
                            "az feature show --namespace {} --name {} {} --query properties.state",
                            sh(ns),
                            sh(name),
                            sub_arg(subscription_id)
                        ),
                        register[1].clone(),
                    ],
                )
            }
            Avail::Known(state) => Finding::fail(format!(
                "{feature} is {state}, not Registered"
            ))
            .with("feature_state", state)
            .fix(
                "Register the preview feature (auto-approved), then re-register the provider.",
                register,
            ),
        };
        f.with("feature", feature.clone())
            .with("subscription_id", subscription_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures() {
        assert!(crate::rules::testutil::check_fixtures(&PreviewFeatureRegistered) >= 3);
    }
}
