//! Required node affinity as kube-scheduler and the DaemonSet controller match it
//! (`nodeaffinity.GetRequiredNodeAffinity`): the pod's `nodeSelector` and its
//! `requiredDuringSchedulingIgnoredDuringExecution` terms, including `matchFields` on
//! `metadata.name`, which is how a DaemonSet pod names its node.

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec,
};

/// The only field `matchFields` may name.
const NODE_NAME_FIELD: &str = "metadata.name";

/// Whether `node` satisfies the pod's `nodeSelector` and required node affinity.
pub fn fits_node(spec: Option<&PodSpec>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let selector_fits = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| {
            sel.iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        });
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_fits && required.is_none_or(|selector| selector_fits_node(selector, node))
}

/// The terms are ORed; a term needs all its requirements, and an empty term matches nothing.
fn selector_fits_node(selector: &NodeSelector, node: &Node) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|term| term_fits_node(term, node))
}

fn term_fits_node(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    let name = node.metadata.name.as_deref().unwrap_or_default();
    expressions
        .iter()
        .all(|r| requirement_holds(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == NODE_NAME_FIELD
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_holds(r, Some(name))
        })
}

/// `NodeSelectorRequirement` against the value of its key on the node (None: absent).
fn requirement_holds(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let as_int = |text: &str| text.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(actual), [bound]) = (value.and_then(as_int), values) else {
                return false;
            };
            let Some(bound) = as_int(bound) else {
                return false;
            };
            if requirement.operator == "Gt" {
                actual > bound
            } else {
                actual < bound
            }
        }
        _ => false,
    }
}

/// `util.GetTargetNodeName`: the node the pod is bound to, or the single node its required
/// affinity names through `matchFields` (a DaemonSet pod not yet scheduled).
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(node.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|term| {
        term.match_fields.iter().flatten().find_map(|r| {
            match (r.key.as_str(), r.operator.as_str(), r.values.as_deref()) {
                (NODE_NAME_FIELD, "In", Some([node])) => Some(node.clone()),
                _ => None,
            }
        })
    })
}

/// `util.ReplaceDaemonSetPodNodeNameNodeAffinity`: the affinity with its required node terms
/// replaced by one that selects exactly `node`; everything else is kept.
pub fn with_node_name_affinity(affinity: Option<Affinity>, node: &str) -> Affinity {
    let selector = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: NODE_NAME_FIELD.into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
        }],
    };
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(selector);
    affinity
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn requiring(terms: Vec<NodeSelectorTerm>) -> PodSpec {
        PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn term(expressions: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(expressions),
            match_fields: None,
        }
    }

    #[test]
    fn daemon_pod_affinity_selects_exactly_its_node() {
        let affinity = with_node_name_affinity(None, "node-2");
        let spec = PodSpec {
            affinity: Some(affinity),
            ..Default::default()
        };
        assert!(fits_node(Some(&spec), &node("node-2", &[])));
        assert!(!fits_node(Some(&spec), &node("node-1", &[])));
        let pod = Pod {
            spec: Some(spec),
            ..Default::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("node-2"));
    }

    #[test]
    fn terms_are_ored_and_requirements_anded() {
        let spec = requiring(vec![
            term(vec![
                expression("zone", "In", &["a", "b"]),
                expression("disk", "Exists", &[]),
            ]),
            term(vec![expression("cpus", "Gt", &["8"])]),
        ]);
        assert!(fits_node(
            Some(&spec),
            &node("n", &[("zone", "a"), ("disk", "ssd")])
        ));
        assert!(!fits_node(Some(&spec), &node("n", &[("zone", "a")])));
        assert!(fits_node(Some(&spec), &node("n", &[("cpus", "16")])));
        assert!(!fits_node(Some(&spec), &node("n", &[("cpus", "4")])));
        assert!(!fits_node(Some(&spec), &node("n", &[("cpus", "many")])));
        assert!(!fits_node(
            Some(&requiring(vec![term(vec![])])),
            &node("n", &[])
        ));
        assert!(fits_node(None, &node("n", &[])));
    }

    #[test]
    fn node_selector_and_affinity_must_both_hold() {
        let mut spec = requiring(vec![term(vec![expression("zone", "NotIn", &["c"])])]);
        spec.node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
        assert!(fits_node(Some(&spec), &node("n", &[("disk", "ssd")])));
        assert!(!fits_node(
            Some(&spec),
            &node("n", &[("disk", "ssd"), ("zone", "c")])
        ));
        assert!(!fits_node(Some(&spec), &node("n", &[])));
    }

    #[test]
    fn replacing_the_node_affinity_keeps_other_affinity() {
        let mut affinity = requiring(vec![term(vec![expression("zone", "In", &["a"])])])
            .affinity
            .unwrap();
        affinity.pod_anti_affinity = Some(Default::default());
        let replaced = with_node_name_affinity(Some(affinity), "node-1");
        assert!(replaced.pod_anti_affinity.is_some());
        let terms = &replaced
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert_eq!(terms[0].match_expressions, None);
    }
}
