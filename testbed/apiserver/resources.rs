//! The resources the test API server serves: the built-in ones relaunch and kubectl use, plus
//! every CustomResourceDefinition created through the API.

use serde_json::{Value, json};

/// One served resource (a group/version/plural).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource whose writes touch only `.status`.
    pub status: bool,
    /// Field selectors accepted besides `metadata.name` and `metadata.namespace`, as JSON paths.
    pub selectable_fields: Vec<String>,
    /// Created from a CRD (JSON merge patch only, no strategic merge).
    pub custom: bool,
    /// Only `create`: a review the server answers without storing it (TokenReview,
    /// SubjectAccessReview, ...).
    pub review: bool,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            status: false,
            selectable_fields: Vec::new(),
            custom: false,
            review: false,
        }
    }

    fn review(mut self) -> Self {
        self.review = true;
        self
    }

    fn with_status(mut self) -> Self {
        self.status = true;
        self
    }

    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    fn fields(mut self, fields: &[&str]) -> Self {
        self.selectable_fields = fields.iter().map(|s| s.to_string()).collect();
        self
    }

    fn all(mut self) -> Self {
        self.categories = vec!["all".into()];
        self
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Key of this resource's objects in the store (`group/plural`; versions share objects).
    pub fn key(&self) -> String {
        // events.k8s.io/v1 Events share storage with core v1 Events, as upstream.
        if self.group == "events.k8s.io" && self.plural == "events" {
            return "/events".into();
        }
        format!("{}/{}", self.group, self.plural)
    }

    /// The discovery entries (`APIResource`) for this resource and its subresources.
    pub fn discovery_entries(&self) -> Vec<Value> {
        let verbs: Vec<&str> = if self.review {
            vec!["create"]
        } else {
            vec![
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        };
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut entries = vec![main];
        if self.status {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if matches!(
            self.plural.as_str(),
            "statefulsets" | "deployments" | "replicasets"
        ) && !self.custom
        {
            entries.push(json!({"name": format!("{}/scale", self.plural), "singularName": "", "namespaced": true, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        if self.key() == "/pods" {
            entries.push(json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]}));
        }
        if self.key() == "/serviceaccounts" {
            entries.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
        }
        entries
    }

    /// Builds the served resource of a CRD's version, or says what is wrong with the CRD.
    pub fn from_crd(crd: &Value) -> Result<Vec<Self>, String> {
        let spec = crd.get("spec").ok_or("spec is required")?;
        let group = spec["group"].as_str().ok_or("spec.group is required")?;
        let names = &spec["names"];
        let plural = names["plural"]
            .as_str()
            .ok_or("spec.names.plural is required")?;
        let kind = names["kind"]
            .as_str()
            .ok_or("spec.names.kind is required")?;
        let singular = names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let namespaced = spec["scope"].as_str().unwrap_or("Namespaced") == "Namespaced";
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let versions = spec["versions"]
            .as_array()
            .ok_or("spec.versions is required")?;
        let mut out = Vec::new();
        for version in versions {
            if version["served"].as_bool() == Some(false) {
                continue;
            }
            let name = version["name"]
                .as_str()
                .ok_or("spec.versions[].name is required")?;
            let selectable = version["selectableFields"]
                .as_array()
                .map(|fields| {
                    fields
                        .iter()
                        .filter_map(|f| f["jsonPath"].as_str())
                        .map(|p| p.trim_start_matches('.').to_string())
                        .collect()
                })
                .unwrap_or_default();
            out.push(Self {
                group: group.into(),
                version: name.into(),
                plural: plural.into(),
                singular: singular.clone(),
                kind: kind.into(),
                namespaced,
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                status: version["subresources"]["status"].is_object(),
                selectable_fields: selectable,
                custom: true,
                review: false,
            });
        }
        if out.is_empty() {
            return Err("spec.versions must contain a served version".into());
        }
        Ok(out)
    }
}

/// The built-in resources served from the start.
pub fn builtin() -> Vec<ResourceType> {
    use ResourceType as R;
    vec![
        R::builtin("", "v1", "namespaces", "Namespace", false)
            .with_status()
            .short(&["ns"]),
        R::builtin("", "v1", "pods", "Pod", true)
            .with_status()
            .short(&["po"])
            .all()
            .fields(&[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ]),
        R::builtin("", "v1", "events", "Event", true)
            .short(&["ev"])
            .fields(&[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ]),
        R::builtin("events.k8s.io", "v1", "events", "Event", true).short(&["ev"]),
        R::builtin("", "v1", "nodes", "Node", false)
            .with_status()
            .short(&["no"])
            .fields(&["spec.unschedulable"]),
        R::builtin(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
        )
        .with_status()
        .short(&["pvc"]),
        R::builtin("", "v1", "serviceaccounts", "ServiceAccount", true).short(&["sa"]),
        R::builtin("", "v1", "services", "Service", true)
            .with_status()
            .short(&["svc"])
            .all(),
        R::builtin("", "v1", "endpoints", "Endpoints", true).short(&["ep"]),
        R::builtin(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
        ),
        R::builtin("", "v1", "configmaps", "ConfigMap", true).short(&["cm"]),
        R::builtin("", "v1", "secrets", "Secret", true).fields(&["type"]),
        R::builtin("apps", "v1", "statefulsets", "StatefulSet", true)
            .with_status()
            .short(&["sts"])
            .all(),
        R::builtin("apps", "v1", "deployments", "Deployment", true)
            .with_status()
            .short(&["deploy"])
            .all(),
        R::builtin("apps", "v1", "replicasets", "ReplicaSet", true)
            .with_status()
            .short(&["rs"])
            .all(),
        R::builtin("apps", "v1", "daemonsets", "DaemonSet", true)
            .with_status()
            .short(&["ds"])
            .all(),
        R::builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
        )
        .with_status()
        .short(&["pdb"]),
        // Stored, never enforced: what a cluster whose network plugin ignores NetworkPolicy does.
        R::builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
        )
        .short(&["netpol"]),
        R::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
        R::builtin(
            "authentication.k8s.io",
            "v1",
            "tokenreviews",
            "TokenReview",
            false,
        )
        .review(),
        R::builtin(
            "authentication.k8s.io",
            "v1",
            "selfsubjectreviews",
            "SelfSubjectReview",
            false,
        )
        .review(),
        R::builtin(
            "authorization.k8s.io",
            "v1",
            "subjectaccessreviews",
            "SubjectAccessReview",
            false,
        )
        .review(),
        R::builtin(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
        )
        .review(),
        R::builtin(
            "authorization.k8s.io",
            "v1",
            "localsubjectaccessreviews",
            "LocalSubjectAccessReview",
            true,
        )
        .review(),
        R::builtin(
            "authorization.k8s.io",
            "v1",
            "selfsubjectrulesreviews",
            "SelfSubjectRulesReview",
            false,
        )
        .review(),
        R::builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
        R::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
        ),
        R::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
        ),
        R::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
        ),
        R::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicies",
            "ValidatingAdmissionPolicy",
            false,
        )
        .with_status(),
        R::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicybindings",
            "ValidatingAdmissionPolicyBinding",
            false,
        ),
        R::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        )
        .with_status()
        .short(&["crd", "crds"]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_versions_become_served_resources() {
        let crd = json!({
            "spec": {
                "group": "relaunch.dev",
                "scope": "Namespaced",
                "names": {"plural": "containerrecreaterequests", "kind": "ContainerRecreateRequest", "shortNames": ["crr"]},
                "versions": [{
                    "name": "v1alpha1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "selectableFields": [{"jsonPath": ".spec.podName"}]
                }]
            }
        });
        let served = ResourceType::from_crd(&crd).unwrap();
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].api_version(), "relaunch.dev/v1alpha1");
        assert!(served[0].status && served[0].custom && served[0].namespaced);
        assert_eq!(served[0].short_names, vec!["crr"]);
        assert_eq!(served[0].selectable_fields, vec!["spec.podName"]);
        assert_eq!(served[0].singular, "containerrecreaterequest");
    }

    #[test]
    fn crd_without_group_is_rejected_with_the_field_to_fix() {
        let err = ResourceType::from_crd(&json!({"spec": {}})).unwrap_err();
        assert!(err.contains("spec.group"));
    }
}
