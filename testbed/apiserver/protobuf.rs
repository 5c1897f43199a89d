//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed commands send (`kubectl create serviceaccount|configmap|namespace|role|
//! rolebinding|clusterrole|clusterrolebinding|token`, `kubectl create secret generic|tls`, `kubectl auth can-i|whoami`): read into the
//! JSON the same object has, for the kinds those commands send. Answers stay JSON, which every
//! client accepts. Other kinds and fields are refused with 415, saying to send JSON.

use serde_json::{Map, Value, json};

/// The content type of protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The prefix of every protobuf body: `k8s` and a zero byte.
const MAGIC: &[u8] = b"k8s\0";

/// How a field's value reads.
#[derive(Clone, Copy)]
enum Kind {
    String,
    Int,
    Bool,
    Message(&'static Message),
    /// `map<string, string>`.
    StringMap,
    /// `map<string, bytes>`: base64 strings in JSON.
    BytesMap,
    /// `map<string, ExtraValue>`: a user's extras, each a list of strings.
    ExtraMap,
    /// Known and not needed (server-set or read-only): skipped.
    Skip,
}

/// One field of a message: its number, JSON name, kind, and whether it repeats.
struct Field(u64, &'static str, Kind, bool);

/// A message's fields; with `omit_empty`, empty strings and zeros are left out of the JSON (as
/// Go's `omitempty` leaves them out of the JSON the same client would send).
struct Message {
    fields: &'static [Field],
    omit_empty: bool,
}

const fn message(fields: &'static [Field]) -> Message {
    Message {
        fields,
        omit_empty: false,
    }
}

use Kind::{Bool, BytesMap, ExtraMap, Int, Skip, StringMap};

const S: Kind = Kind::String;

static OWNER_REFERENCE: Message = message(&[
    Field(5, "apiVersion", S, false),
    Field(1, "kind", S, false),
    Field(3, "name", S, false),
    Field(4, "uid", S, false),
    Field(6, "controller", Bool, false),
    Field(7, "blockOwnerDeletion", Bool, false),
]);

static OBJECT_META: Message = Message {
    fields: &[
        Field(1, "name", S, false),
        Field(2, "generateName", S, false),
        Field(3, "namespace", S, false),
        Field(4, "selfLink", Skip, false),
        Field(5, "uid", S, false),
        Field(6, "resourceVersion", S, false),
        Field(7, "generation", Int, false),
        Field(8, "creationTimestamp", Skip, false),
        Field(9, "deletionTimestamp", Skip, false),
        Field(10, "deletionGracePeriodSeconds", Int, false),
        Field(11, "labels", StringMap, false),
        Field(12, "annotations", StringMap, false),
        Field(13, "ownerReferences", Kind::Message(&OWNER_REFERENCE), true),
        Field(14, "finalizers", S, true),
        Field(17, "managedFields", Skip, true),
    ],
    omit_empty: true,
};

static LABEL_SELECTOR_REQUIREMENT: Message = message(&[
    Field(1, "key", S, false),
    Field(2, "operator", S, false),
    Field(3, "values", S, true),
]);

static LABEL_SELECTOR: Message = message(&[
    Field(1, "matchLabels", StringMap, false),
    Field(
        2,
        "matchExpressions",
        Kind::Message(&LABEL_SELECTOR_REQUIREMENT),
        true,
    ),
]);

const METADATA: Field = Field(1, "metadata", Kind::Message(&OBJECT_META), false);

// authorization.k8s.io/v1
static RESOURCE_ATTRIBUTES: Message = message(&[
    Field(1, "namespace", S, false),
    Field(2, "verb", S, false),
    Field(3, "group", S, false),
    Field(4, "version", S, false),
    Field(5, "resource", S, false),
    Field(6, "subresource", S, false),
    Field(7, "name", S, false),
    Field(8, "fieldSelector", Skip, false),
    Field(9, "labelSelector", Skip, false),
]);
static NON_RESOURCE_ATTRIBUTES: Message =
    message(&[Field(1, "path", S, false), Field(2, "verb", S, false)]);
static SELF_SUBJECT_ACCESS_REVIEW_SPEC: Message = message(&[
    Field(
        1,
        "resourceAttributes",
        Kind::Message(&RESOURCE_ATTRIBUTES),
        false,
    ),
    Field(
        2,
        "nonResourceAttributes",
        Kind::Message(&NON_RESOURCE_ATTRIBUTES),
        false,
    ),
]);
static SUBJECT_ACCESS_REVIEW_SPEC: Message = message(&[
    Field(
        1,
        "resourceAttributes",
        Kind::Message(&RESOURCE_ATTRIBUTES),
        false,
    ),
    Field(
        2,
        "nonResourceAttributes",
        Kind::Message(&NON_RESOURCE_ATTRIBUTES),
        false,
    ),
    Field(3, "user", S, false),
    Field(4, "groups", S, true),
    Field(5, "extra", ExtraMap, false),
    Field(6, "uid", S, false),
]);
static SELF_SUBJECT_RULES_REVIEW_SPEC: Message = message(&[Field(1, "namespace", S, false)]);
static SELF_SUBJECT_ACCESS_REVIEW: Message = message(&[
    METADATA,
    Field(
        2,
        "spec",
        Kind::Message(&SELF_SUBJECT_ACCESS_REVIEW_SPEC),
        false,
    ),
    Field(3, "status", Skip, false),
]);
static SUBJECT_ACCESS_REVIEW: Message = message(&[
    METADATA,
    Field(2, "spec", Kind::Message(&SUBJECT_ACCESS_REVIEW_SPEC), false),
    Field(3, "status", Skip, false),
]);
static SELF_SUBJECT_RULES_REVIEW: Message = message(&[
    METADATA,
    Field(
        2,
        "spec",
        Kind::Message(&SELF_SUBJECT_RULES_REVIEW_SPEC),
        false,
    ),
    Field(3, "status", Skip, false),
]);

// authentication.k8s.io/v1
static BOUND_OBJECT_REFERENCE: Message = message(&[
    Field(1, "kind", S, false),
    Field(2, "apiVersion", S, false),
    Field(3, "name", S, false),
    Field(4, "uid", S, false),
]);
static TOKEN_REQUEST_SPEC: Message = message(&[
    Field(1, "audiences", S, true),
    Field(4, "expirationSeconds", Int, false),
    Field(
        3,
        "boundObjectRef",
        Kind::Message(&BOUND_OBJECT_REFERENCE),
        false,
    ),
]);
static TOKEN_REQUEST: Message = message(&[
    METADATA,
    Field(2, "spec", Kind::Message(&TOKEN_REQUEST_SPEC), false),
    Field(3, "status", Skip, false),
]);
static TOKEN_REVIEW_SPEC: Message =
    message(&[Field(1, "token", S, false), Field(2, "audiences", S, true)]);
static TOKEN_REVIEW: Message = message(&[
    METADATA,
    Field(2, "spec", Kind::Message(&TOKEN_REVIEW_SPEC), false),
    Field(3, "status", Skip, false),
]);
static SELF_SUBJECT_REVIEW: Message = message(&[METADATA, Field(2, "status", Skip, false)]);

// rbac.authorization.k8s.io/v1
static POLICY_RULE: Message = message(&[
    Field(1, "verbs", S, true),
    Field(2, "apiGroups", S, true),
    Field(3, "resources", S, true),
    Field(4, "resourceNames", S, true),
    Field(5, "nonResourceURLs", S, true),
]);
static AGGREGATION_RULE: Message = message(&[Field(
    1,
    "clusterRoleSelectors",
    Kind::Message(&LABEL_SELECTOR),
    true,
)]);
static SUBJECT: Message = message(&[
    Field(1, "kind", S, false),
    Field(2, "apiGroup", S, false),
    Field(3, "name", S, false),
    Field(4, "namespace", S, false),
]);
static ROLE_REF: Message = message(&[
    Field(1, "apiGroup", S, false),
    Field(2, "kind", S, false),
    Field(3, "name", S, false),
]);
static ROLE: Message = message(&[
    METADATA,
    Field(2, "rules", Kind::Message(&POLICY_RULE), true),
]);
static CLUSTER_ROLE: Message = message(&[
    METADATA,
    Field(2, "rules", Kind::Message(&POLICY_RULE), true),
    Field(
        3,
        "aggregationRule",
        Kind::Message(&AGGREGATION_RULE),
        false,
    ),
]);
static ROLE_BINDING: Message = message(&[
    METADATA,
    Field(2, "subjects", Kind::Message(&SUBJECT), true),
    Field(3, "roleRef", Kind::Message(&ROLE_REF), false),
]);

// v1
static LOCAL_OBJECT_REFERENCE: Message = message(&[Field(1, "name", S, false)]);
static SERVICE_ACCOUNT: Message = message(&[
    METADATA,
    Field(2, "secrets", Skip, true),
    Field(
        3,
        "imagePullSecrets",
        Kind::Message(&LOCAL_OBJECT_REFERENCE),
        true,
    ),
    Field(4, "automountServiceAccountToken", Bool, false),
]);
static CONFIG_MAP: Message = message(&[
    METADATA,
    Field(2, "data", StringMap, false),
    Field(3, "binaryData", BytesMap, false),
    Field(4, "immutable", Bool, false),
]);
static SECRET: Message = message(&[
    METADATA,
    Field(2, "data", BytesMap, false),
    Field(3, "type", S, false),
    Field(4, "stringData", StringMap, false),
    Field(5, "immutable", Bool, false),
]);
static NAMESPACE_SPEC: Message = message(&[Field(1, "finalizers", S, true)]);
static NAMESPACE: Message = message(&[
    METADATA,
    Field(2, "spec", Kind::Message(&NAMESPACE_SPEC), false),
    Field(3, "status", Skip, false),
]);

/// The kinds read from protobuf, by apiVersion and kind.
static KINDS: &[(&str, &str, &Message)] = &[
    (
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        &SELF_SUBJECT_ACCESS_REVIEW,
    ),
    (
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        &SUBJECT_ACCESS_REVIEW,
    ),
    (
        "authorization.k8s.io/v1",
        "LocalSubjectAccessReview",
        &SUBJECT_ACCESS_REVIEW,
    ),
    (
        "authorization.k8s.io/v1",
        "SelfSubjectRulesReview",
        &SELF_SUBJECT_RULES_REVIEW,
    ),
    ("authentication.k8s.io/v1", "TokenRequest", &TOKEN_REQUEST),
    ("authentication.k8s.io/v1", "TokenReview", &TOKEN_REVIEW),
    (
        "authentication.k8s.io/v1",
        "SelfSubjectReview",
        &SELF_SUBJECT_REVIEW,
    ),
    ("rbac.authorization.k8s.io/v1", "Role", &ROLE),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", &CLUSTER_ROLE),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", &ROLE_BINDING),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        &ROLE_BINDING,
    ),
    ("v1", "ServiceAccount", &SERVICE_ACCOUNT),
    ("v1", "ConfigMap", &CONFIG_MAP),
    ("v1", "Secret", &SECRET),
    ("v1", "Namespace", &NAMESPACE),
];

/// The JSON object a protobuf body holds, or why it cannot be read.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("a protobuf body must start with the k8s magic number")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for entry in Reader(envelope) {
        match entry? {
            (1, Wire::Bytes(type_meta)) => {
                for entry in Reader(type_meta) {
                    match entry? {
                        (1, Wire::Bytes(v)) => api_version = text(v)?,
                        (2, Wire::Bytes(k)) => kind = text(k)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(bytes)) => raw = bytes,
            _ => {}
        }
    }
    let (_, _, message) = KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .ok_or_else(|| {
            format!("{kind} ({api_version}) is not read from protobuf by the test API server")
        })?;
    let mut object = decode(message, raw)?;
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(serde_json::Value::Object(object))
}

/// A field's raw value on the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of an encoded message, in order.
struct Reader<'a>(&'a [u8]);

impl<'a> Iterator for Reader<'a> {
    type Item = Result<(u64, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        Some(self.field())
    }
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or("truncated varint")?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated field".into());
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn field(&mut self) -> Result<(u64, Wire<'a>), String> {
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            wire => return Err(format!("unsupported wire type {wire}")),
        };
        Ok((tag >> 3, value))
    }
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// The JSON object of one message.
fn decode(message: &Message, bytes: &[u8]) -> Result<Map<String, serde_json::Value>, String> {
    let mut object = Map::new();
    for entry in Reader(bytes) {
        let (number, value) = entry?;
        let Field(_, name, kind, repeated) = message
            .fields
            .iter()
            .find(|f| f.0 == number)
            .ok_or_else(|| format!("field {number} is not read from protobuf"))?;
        let decoded = match (kind, value) {
            (Skip, _) => continue,
            (Kind::String, Wire::Bytes(b)) => json!(text(b)?),
            (Int, Wire::Varint(v)) => json!(v as i64),
            (Bool, Wire::Varint(v)) => json!(v != 0),
            (Kind::Message(inner), Wire::Bytes(b)) => serde_json::Value::Object(decode(inner, b)?),
            (StringMap | ExtraMap | BytesMap, Wire::Bytes(b)) => {
                let (key, value) = map_entry(b, *kind)?;
                let map = object.entry(*name).or_insert_with(|| json!({}));
                map[key] = value;
                continue;
            }
            _ => return Err(format!("field {name} has an unexpected wire type")),
        };
        let empty = match &decoded {
            serde_json::Value::String(s) => s.is_empty(),
            serde_json::Value::Number(n) => n.as_i64() == Some(0),
            serde_json::Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if *repeated {
            if let Some(items) = object
                .entry(*name)
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                items.push(decoded);
            }
        } else if !(message.omit_empty && empty) {
            object.insert((*name).into(), decoded);
        }
    }
    Ok(object)
}

/// One entry of a map field: its key and value.
fn map_entry(bytes: &[u8], kind: Kind) -> Result<(String, serde_json::Value), String> {
    let mut key = String::new();
    let mut value = match kind {
        ExtraMap => json!([]),
        _ => json!(""),
    };
    for entry in Reader(bytes) {
        match (entry?, kind) {
            ((1, Wire::Bytes(k)), _) => key = text(k)?,
            ((2, Wire::Bytes(v)), ExtraMap) => {
                let items = decode(&message(&[Field(1, "items", S, true)]), v)?;
                value = items.get("items").cloned().unwrap_or_else(|| json!([]));
            }
            ((2, Wire::Bytes(v)), BytesMap) => {
                use base64::Engine;
                value = json!(base64::engine::general_purpose::STANDARD.encode(v));
            }
            ((2, Wire::Bytes(v)), _) => value = json!(text(v)?),
            _ => return Err("a map entry has an unexpected field".into()),
        }
    }
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kubectl 1.32 sends for `kubectl create serviceaccount bot`.
    const SERVICE_ACCOUNT_BODY: &[u8] = b"k8s\x00\n\x14\n\x02v1\x12\x0eServiceAccount\x12\x15\n\x13\n\x03bot\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x1a\x00\"\x00";

    /// What kubectl 1.32 sends for `kubectl auth can-i --list` in namespace `default`.
    const RULES_REVIEW_BODY: &[u8] = b"k8s\x00\n1\n\x17authorization.k8s.io/v1\x12\x16SelfSubjectRulesReview\x12#\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\t\n\x07default\x1a\x04\x18\x00\"\x00\x1a\x00\"\x00";

    #[test]
    fn kubectls_protobuf_bodies_read_as_their_json() {
        assert_eq!(
            to_json(SERVICE_ACCOUNT_BODY).unwrap(),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot"}})
        );
        assert_eq!(
            to_json(RULES_REVIEW_BODY).unwrap(),
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                   "metadata": {}, "spec": {"namespace": "default"}})
        );
    }

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn body(api_version: &[u8], kind: &[u8], raw: &[u8]) -> Vec<u8> {
        let type_meta = [field(1, api_version), field(2, kind)].concat();
        [MAGIC.to_vec(), field(1, &type_meta), field(2, raw)].concat()
    }

    #[test]
    fn maps_repeated_fields_and_nested_messages_are_read() {
        let label = [field(1, b"a"), field(2, b"b")].concat();
        let metadata = [field(1, b"rb"), field(11, &label)].concat();
        let subject = |name: &[u8]| [field(1, b"User"), field(3, name)].concat();
        let role_ref = [field(2, b"Role"), field(3, b"r")].concat();
        let raw = [
            field(1, &metadata),
            field(2, &subject(b"u1")),
            field(2, &subject(b"u2")),
            field(3, &role_ref),
        ]
        .concat();
        assert_eq!(
            to_json(&body(b"rbac.authorization.k8s.io/v1", b"RoleBinding", &raw)).unwrap(),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "rb", "labels": {"a": "b"}},
                "subjects": [{"kind": "User", "name": "u1"}, {"kind": "User", "name": "u2"}],
                "roleRef": {"kind": "Role", "name": "r"}})
        );
    }

    #[test]
    fn secret_data_reads_as_base64() {
        let mut entry = field(1, b"tls.key");
        entry.extend(field(2, &[0, 255, b'k']));
        let mut raw = field(1, &field(1, b"tls"));
        raw.extend(field(2, &entry));
        raw.extend(field(3, b"kubernetes.io/tls"));
        let json = to_json(&body(b"v1", b"Secret", &raw)).unwrap();
        assert_eq!(json["kind"], "Secret");
        assert_eq!(json["metadata"]["name"], "tls");
        assert_eq!(json["data"]["tls.key"], "AP9r");
        assert_eq!(json["type"], "kubernetes.io/tls");
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused() {
        let endpoint = body(b"v1", b"Endpoints", &[]);
        assert!(to_json(&endpoint).unwrap_err().contains("Endpoints (v1)"));
        let unknown = field(9, &[field(1, b"k"), field(2, b"\x00")].concat());
        let config_map = body(b"v1", b"ConfigMap", &unknown);
        assert_eq!(
            to_json(&config_map).unwrap_err(),
            "field 9 is not read from protobuf"
        );
        assert!(to_json(b"{}").is_err());
    }
}
