//! ARM id and location helpers. ARM ids are case-insensitive; these helpers never allocate
//! more than one normalised copy.

/// The normalised form used for lookups: lower-case, without a trailing slash.
pub fn norm(id: &str) -> String {
    id.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Locations are compared lower-cased with spaces removed ("UAE North" == "uaenorth").
pub fn norm_location(loc: &str) -> String {
    loc.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Case-insensitive value of the segment that follows `key` in an ARM id.
fn segment_after<'a>(id: &'a str, key: &str) -> Option<&'a str> {
    let mut it = id.split('/').filter(|s| !s.is_empty());
    while let Some(seg) = it.next() {
        if seg.eq_ignore_ascii_case(key) {
            return it.next();
        }
    }
    None
}

pub fn subscription_of(id: &str) -> Option<&str> {
    segment_after(id, "subscriptions")
}

pub fn resource_group_of(id: &str) -> Option<&str> {
    segment_after(id, "resourceGroups")
}

/// The last segment of an id: the resource name.
pub fn name_of(id: &str) -> &str {
    id.trim_end_matches('/').rsplit('/').next().unwrap_or(id)
}

/// The trailing GUID of a role definition id, lower-cased. Handles Managed HSM ids without a
/// leading slash.
pub fn role_guid(role_definition_id: &str) -> String {
    name_of(role_definition_id).to_ascii_lowercase()
}

/// Is `scope` the resource `id` itself or one of its ancestors (resource group, subscription,
/// `/`)? Management-group scopes are ancestors of every resource that ARM returned them for.
pub fn scope_covers(scope: &str, id: &str) -> bool {
    let s = norm(scope);
    if s.is_empty() || s.starts_with("/providers/microsoft.management/managementgroups/") {
        return true;
    }
    let i = norm(id);
    i == s || i.starts_with(&format!("{s}/"))
}

/// Case-insensitive equality of two ARM ids.
pub fn same_id(a: &str, b: &str) -> bool {
    a.trim()
        .trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_segments_case_insensitively() {
        let id = "/subscriptions/AbC/resourcegroups/RG-1/providers/Microsoft.Compute/virtualMachines/vm1";
        assert_eq!(subscription_of(id), Some("AbC"));
        assert_eq!(resource_group_of(id), Some("RG-1"));
        assert_eq!(name_of(id), "vm1");
    }

    #[test]
    fn locations_fold_case_and_spaces() {
        assert_eq!(norm_location("UAE North"), "uaenorth");
        assert_eq!(norm_location("koreacentral"), "koreacentral");
    }

    #[test]
    fn scope_prefix_respects_segments() {
        let key =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv/keys/k";
        assert!(scope_covers("/subscriptions/S/resourcegroups/RG", key));
        assert!(scope_covers("/", key));
        assert!(scope_covers(
            "/providers/Microsoft.Management/managementGroups/root",
            key
        ));
        assert!(!scope_covers("/subscriptions/s/resourceGroups/r", key));
        assert!(!scope_covers("/subscriptions/s/resourceGroups/rg2", key));
    }

    #[test]
    fn hsm_role_ids_without_leading_slash() {
        assert_eq!(
            role_guid("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/21DBD100-6940-42c2-9190-5d6cb909625b"),
            "21dbd100-6940-42c2-9190-5d6cb909625b"
        );
    }
}
