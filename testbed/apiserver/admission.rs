//! What a write goes through after authorization, in upstream's order: a custom resource is
//! decoded (unknown fields pruned per `fieldValidation`, defaults applied) and validated against
//! its CRD version's schema and CEL rules; a CRD's rules must compile; RBAC objects must be
//! readable by the authorizer; then every ValidatingAdmissionPolicy binding that matches runs,
//! with the `authorizer` library answered by RBAC for the requesting user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::access::{self, RBAC_GROUP};
use super::admission_policy::{AdmissionPolicies, AdmissionRequest, Operation};
use super::error::ApiError;
use super::rbac::{Rbac, UserInfo};
use super::resources::ResourceType;
use super::schema::{self, CompiledSchema, FieldValidation};
use super::store::{self, Store};

/// The admission policies' API group.
pub const ADMISSION_GROUP: &str = "admissionregistration.k8s.io";
/// The store key of CustomResourceDefinitions.
const CRD_KEY: &str = "apiextensions.k8s.io/customresourcedefinitions";

/// What the server keeps between requests for admission: each CRD's schemas with their rules
/// compiled (per CRD generation), and the admission policies (rebuilt when one changes).
#[derive(Default)]
pub struct Admissions {
    schemas: Mutex<HashMap<String, Arc<CrdSchemas>>>,
    policies: Mutex<Option<(u64, Arc<Policies>)>>,
}

/// One generation of a CRD: the schema of each version.
struct CrdSchemas {
    uid: String,
    generation: i64,
    versions: HashMap<String, Arc<CompiledSchema>>,
}

/// The stored ValidatingAdmissionPolicies and their bindings.
#[derive(Default)]
pub struct Policies {
    policies: Vec<Value>,
    bindings: Vec<Value>,
}

impl Admissions {
    /// The schema custom resources of `rt` are validated against, if `rt` is one with a schema.
    pub fn schema(&self, store: &Store, rt: &ResourceType) -> Option<Arc<CompiledSchema>> {
        if !rt.custom {
            return None;
        }
        let name = format!("{}.{}", rt.plural, rt.group);
        let (uid, generation) = store.identity(CRD_KEY, None, &name)?;
        let mut schemas = self.schemas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cached) = schemas.get(&name)
            && cached.uid == uid
            && cached.generation == generation
        {
            return cached.versions.get(&rt.version).cloned();
        }
        let crd = store.get_by_key(CRD_KEY, None, &name)?;
        let versions = crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let version = v["name"].as_str()?;
                let schema = schema::version_schema(&crd, version)?;
                Some((
                    version.to_string(),
                    Arc::new(CompiledSchema::new(schema.clone())),
                ))
            })
            .collect();
        let compiled = Arc::new(CrdSchemas {
            uid: crd["metadata"]["uid"].as_str().unwrap_or_default().into(),
            generation: crd["metadata"]["generation"].as_i64().unwrap_or(0),
            versions,
        });
        let schema = compiled.versions.get(&rt.version).cloned();
        schemas.insert(name, compiled);
        schema
    }

    /// The admission policies and bindings stored now.
    pub fn policies(&self, store: &Store) -> Arc<Policies> {
        let mut cached = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        let generation = store.group_generation(ADMISSION_GROUP);
        if let Some((built, policies)) = cached.as_ref()
            && *built == generation
        {
            return policies.clone();
        }
        let (generation, objects) = store.group_objects(ADMISSION_GROUP);
        let (policies, bindings) = objects
            .into_iter()
            .partition(|o| o["kind"] == "ValidatingAdmissionPolicy");
        let policies = Arc::new(Policies { policies, bindings });
        *cached = Some((generation, policies.clone()));
        policies
    }
}

impl Policies {
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

/// One write request's decoding, validation and admission, and the warnings they produce.
pub struct RequestAdmission<'a> {
    pub rt: &'a ResourceType,
    pub subresource: &'a str,
    /// The request's namespace and name (empty for cluster-scoped resources and creates).
    pub namespace: &'a str,
    pub name: &'a str,
    /// Who the request acts as, and what that user may do.
    pub user: &'a UserInfo,
    pub authorizer: Arc<Rbac>,
    /// The custom resource's schema, if it is one.
    pub schema: Option<Arc<CompiledSchema>>,
    pub field_validation: FieldValidation,
    pub policies: Arc<Policies>,
    /// The request's Namespace object, for policies' namespaceSelector and `namespaceObject`.
    pub namespace_object: Option<Value>,
    pub dry_run: bool,
    /// Sent back as `Warning` headers, with the answer or the refusal.
    pub warnings: Vec<String>,
}

impl store::Admission for RequestAdmission<'_> {
    fn decode(&mut self, object: &mut Value) -> Result<(), ApiError> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        match schema::decode(schema.schema(), object, self.field_validation) {
            Ok(warnings) => {
                self.warnings.extend(warnings);
                Ok(())
            }
            Err(unknown) => Err(ApiError::bad_request(&schema::strict_decoding_message(
                &self.rt.kind,
                &self.rt.version,
                &unknown,
            ))),
        }
    }

    fn admit(&mut self, object: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
        if let Some(object) = object {
            self.validate(object, old)?;
        }
        self.run_policies(object, old)
    }
}

impl RequestAdmission<'_> {
    /// Admission of a request whose body is not stored (reviews, TokenRequests, bindings).
    pub fn admit_create(&mut self, body: &Value) -> Result<(), ApiError> {
        self.run_policies(Some(body), None)
    }

    /// ValidatingAdmissionPolicies for an update through a subresource whose object is not the
    /// resource itself (the `scale` subresource: `object` and `oldObject` are Scales, carrying
    /// only name, namespace, UID, resourceVersion and creation time as upstream's do).
    pub fn admit_subresource_update(
        &mut self,
        object: &Value,
        old: &Value,
    ) -> Result<(), ApiError> {
        self.run_policies(Some(object), Some(old))
    }

    /// The resource's own validation: schema and CEL rules of custom resources, compiling rules
    /// of CRDs, readable RBAC objects.
    fn validate(&mut self, object: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let rt = self.rt;
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        if let Some(schema) = &self.schema {
            let validation = schema.validate(object, old);
            self.warnings.extend(validation.warnings);
            if !validation.errors.is_empty() {
                return Err(schema::invalid_status(
                    &rt.group,
                    &rt.kind,
                    name,
                    &validation.errors,
                ));
            }
        }
        if rt.key() == CRD_KEY {
            let errors = schema::check_crd_rules(object);
            if !errors.is_empty() {
                let summary = match errors.as_slice() {
                    [one] => one.clone(),
                    many => format!("[{}]", many.join(", ")),
                };
                let causes = errors
                    .iter()
                    .map(|e| {
                        let (field, message) = e.split_once(": ").unwrap_or(("", e));
                        json!({"reason": "FieldValueInvalid", "message": message, "field": field})
                    })
                    .collect();
                return Err(ApiError::invalid_fields(
                    &rt.group, &rt.kind, name, &summary, causes,
                ));
            }
        }
        if rt.group == RBAC_GROUP {
            access::check_rbac_object(rt, object, old)?;
        }
        Ok(())
    }

    /// Every ValidatingAdmissionPolicy binding that matches: a Deny refuses, a Warn warns.
    fn run_policies(
        &mut self,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if self.policies.is_empty() {
            return Ok(());
        }
        let (operation, options) = match (object, old) {
            (Some(_), None) => (Operation::Create, "CreateOptions"),
            (None, _) => (Operation::Delete, "DeleteOptions"),
            (Some(_), Some(_)) => (Operation::Update, "UpdateOptions"),
        };
        let mut options = json!({"kind": options, "apiVersion": "meta.k8s.io/v1"});
        if self.dry_run {
            options["dryRun"] = json!(["All"]);
        }
        let request = AdmissionRequest {
            operation,
            group: self.rt.group.clone(),
            version: self.rt.version.clone(),
            resource: self.rt.plural.clone(),
            subresource: self.subresource.to_string(),
            kind: self.rt.kind.clone(),
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            object: object.cloned(),
            old_object: old.cloned(),
            user: self.user.clone(),
            dry_run: self.dry_run,
            options: Some(options),
        };
        let namespace_object = self.namespace_object.clone();
        let lookup = |_: &str| namespace_object.clone();
        let outcome = AdmissionPolicies {
            policies: &self.policies.policies,
            bindings: &self.policies.bindings,
            namespace: &lookup,
            authorizer: self.authorizer.clone(),
        }
        .admit(&request);
        self.warnings.extend(outcome.warnings);
        match outcome.denial {
            Some(denial) => Err(denial.to_api_error(&request)),
            None => Ok(()),
        }
    }
}
