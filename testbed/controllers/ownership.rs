//! Who owns what, as kube-controller-manager decides it: label selectors, controller
//! references, and upstream's `ControllerRefManager` claim rules (adopt matching orphans,
//! release owned objects that stopped matching, never touch another controller's objects).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

/// Whether `selector` selects `labels` (`metav1.LabelSelectorAsSelector`). An empty selector
/// selects everything; an expression with an unknown operator selects nothing.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let get = |key: &str| labels.and_then(|l| l.get(key));
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// Whether the selector has neither labels nor expressions (it would select every object).
pub fn selects_everything(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// `metav1.NewControllerRef`: a controlling, deletion-blocking reference to the owner.
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: owner.name.clone()?,
        uid: owner.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The object's controlling owner reference, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// What the owner's `ControllerRefManager` does with one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Already ours and still selected.
    Owned,
    /// An orphan the selector picks: ours once these owner references are written.
    Adopt(Vec<OwnerReference>),
    /// Ours but no longer selected: let go by writing these owner references.
    Release(Vec<OwnerReference>),
    /// Someone else's, or nothing to do with the owner.
    Ignore,
}

/// `ClaimObject`: how `owner` (with controller reference `reference`) treats `object`.
pub fn claim(
    owner: &ObjectMeta,
    reference: &OwnerReference,
    selector: &LabelSelector,
    object: &ObjectMeta,
) -> Claim {
    let matches =
        !selects_everything(selector) && selector_matches(selector, object.labels.as_ref());
    let owner_deleting = owner.deletion_timestamp.is_some();
    let references = object.owner_references.clone().unwrap_or_default();
    match controller_of(object) {
        Some(controller) if controller.uid != reference.uid => Claim::Ignore,
        Some(_) if matches => Claim::Owned,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release(
            references
                .into_iter()
                .filter(|r| r.uid != reference.uid)
                .collect(),
        ),
        None => {
            let adoptable = matches
                && !owner_deleting
                && object.deletion_timestamp.is_none()
                && owner.namespace == object.namespace;
            if !adoptable {
                return Claim::Ignore;
            }
            let mut references: Vec<OwnerReference> = references
                .into_iter()
                .filter(|r| r.uid != reference.uid)
                .collect();
            references.push(reference.clone());
            Claim::Adopt(references)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        }
    }

    fn meta(name: &str, uid: &str, pairs: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            uid: Some(uid.into()),
            namespace: Some("default".into()),
            labels: Some(labels(pairs)),
            ..Default::default()
        }
    }

    #[test]
    fn expressions_follow_label_selector_semantics() {
        let requirement = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        let with = |r: LabelSelectorRequirement| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![r]),
        };
        assert!(selector_matches(
            &with(requirement("tier", "In", &["front", "back"])),
            Some(&pod)
        ));
        assert!(!selector_matches(
            &with(requirement("tier", "NotIn", &["front"])),
            Some(&pod)
        ));
        assert!(selector_matches(
            &with(requirement("zone", "NotIn", &["a"])),
            Some(&pod)
        ));
        assert!(selector_matches(
            &with(requirement("app", "Exists", &[])),
            Some(&pod)
        ));
        assert!(selector_matches(
            &with(requirement("zone", "DoesNotExist", &[])),
            Some(&pod)
        ));
        assert!(!selector_matches(
            &with(requirement("app", "Gt", &["1"])),
            Some(&pod)
        ));
        assert!(selector_matches(&selector(&[("app", "web")]), Some(&pod)));
        assert!(!selector_matches(&selector(&[("app", "db")]), Some(&pod)));
        assert!(!selector_matches(&selector(&[("app", "web")]), None));
    }

    #[test]
    fn adopts_matching_orphans_and_releases_owned_objects_that_stopped_matching() {
        let owner = meta("web", "owner-uid", &[]);
        let reference = controller_ref("apps/v1", "ReplicaSet", &owner).unwrap();
        let select = selector(&[("app", "web")]);

        let orphan = meta("p", "p-uid", &[("app", "web")]);
        assert_eq!(
            claim(&owner, &reference, &select, &orphan),
            Claim::Adopt(vec![reference.clone()])
        );

        let mut ours = orphan.clone();
        ours.owner_references = Some(vec![reference.clone()]);
        assert_eq!(claim(&owner, &reference, &select, &ours), Claim::Owned);

        ours.labels = Some(labels(&[("app", "other")]));
        assert_eq!(
            claim(&owner, &reference, &select, &ours),
            Claim::Release(vec![])
        );

        let mut deleting_owner = owner.clone();
        deleting_owner.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            claim(&deleting_owner, &reference, &select, &ours),
            Claim::Ignore
        );
        assert_eq!(
            claim(&deleting_owner, &reference, &select, &orphan),
            Claim::Ignore
        );
    }

    #[test]
    fn never_touches_objects_another_controller_owns_or_that_are_being_deleted() {
        let owner = meta("web", "owner-uid", &[]);
        let reference = controller_ref("apps/v1", "ReplicaSet", &owner).unwrap();
        let select = selector(&[("app", "web")]);
        let other = controller_ref("apps/v1", "ReplicaSet", &meta("x", "x-uid", &[])).unwrap();

        let mut taken = meta("p", "p-uid", &[("app", "web")]);
        taken.owner_references = Some(vec![other]);
        assert_eq!(claim(&owner, &reference, &select, &taken), Claim::Ignore);

        let mut leaving = meta("q", "q-uid", &[("app", "web")]);
        leaving.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(claim(&owner, &reference, &select, &leaving), Claim::Ignore);

        let mut elsewhere = meta("r", "r-uid", &[("app", "web")]);
        elsewhere.namespace = Some("other".into());
        assert_eq!(
            claim(&owner, &reference, &select, &elsewhere),
            Claim::Ignore
        );

        let everything = LabelSelector::default();
        let orphan = meta("s", "s-uid", &[("app", "web")]);
        assert_eq!(
            claim(&owner, &reference, &everything, &orphan),
            Claim::Ignore
        );
    }
}
