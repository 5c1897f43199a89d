//! CustomResourceDefinition structural schemas as the API server applies them to custom
//! resources: decoding (pruning unknown fields per `fieldValidation`, then defaulting), then
//! validation (types, bounds, enums, patterns, formats, list types, and CEL
//! `x-kubernetes-validations` with transition rules), with upstream's field paths and messages so
//! that a 422 built from them reads as a real server's. Schemas are `JSONSchemaProps` as JSON.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Value, json};

use super::cel::{Activation, CelError, Declarations, Expression, FieldLookup};
use super::error::ApiError;

/// The `fieldValidation` query parameter: what decoding does with unknown fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn (the server's default).
    #[default]
    Warn,
    /// Refuse the request with 400 (kubectl's default).
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter (absent: `Warn`); unknown values are a 400 upstream.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", \"Strict\" but got {other:?}"
            )),
        }
    }
}

/// The kind of a field error (`field.ErrorType` upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorType {
    Required,
    Invalid,
    TypeInvalid,
    NotSupported,
    Duplicate,
    Forbidden,
    TooLong,
    TooMany,
}

impl FieldErrorType {
    /// The cause `reason` in a Status (`FieldValueInvalid`, ...).
    pub fn cause(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::TypeInvalid => "FieldValueTypeInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Duplicate => "Duplicate value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
        }
    }
}

/// One invalid field (`field.Error` upstream).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub error_type: FieldErrorType,
    /// `spec.containers[0].name`.
    pub field: String,
    /// The offending value; `None` when upstream omits it.
    pub bad_value: Option<Value>,
    pub detail: String,
}

impl FieldError {
    fn new(
        error_type: FieldErrorType,
        field: &str,
        bad_value: Option<Value>,
        detail: String,
    ) -> Self {
        Self {
            error_type,
            field: field.to_string(),
            bad_value,
            detail,
        }
    }

    /// The message without the field (`Invalid value: 0: ...`), as in a Status cause.
    pub fn body(&self) -> String {
        let mut body = match (self.error_type, &self.bad_value) {
            (FieldErrorType::Required | FieldErrorType::Forbidden | FieldErrorType::TooLong, _)
            | (_, None) => self.error_type.text().to_string(),
            (_, Some(value)) => format!("{}: {}", self.error_type.text(), go_value(value, false)),
        };
        if !self.detail.is_empty() {
            body.push_str(": ");
            body.push_str(&self.detail);
        }
        body
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A value as Go's `%v`/`%q`/`%#v` print unstructured JSON in field errors.
fn go_value(value: &Value, nested: bool) -> String {
    match value {
        Value::Null if nested => "interface {}(nil)".into(),
        Value::Null => "\"null\"".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        },
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| go_value(v, true)).collect();
            format!("[]interface {{}}{{{}}}", items.join(", "))
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(k, _)| *k);
            let entries: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", go_value(&json!(k), true), go_value(v, true)))
                .collect();
            format!("map[string]interface {{}}{{{}}}", entries.join(", "))
        }
    }
}

/// The 422 `Invalid` answer for these errors on object `name` of `kind` in `group`, with one
/// cause per error and upstream's message (`Kind.group "name" is invalid: [e1, e2]`).
pub fn invalid_status(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> ApiError {
    let mut messages: Vec<String> = Vec::new();
    for error in errors {
        let message = error.to_string();
        if !messages.contains(&message) {
            messages.push(message);
        }
    }
    let summary = match messages.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes = errors
        .iter()
        .map(|e| json!({"reason": e.error_type.cause(), "message": e.body(), "field": e.field}))
        .collect();
    ApiError::invalid_fields(group, kind, name, &summary, causes)
}

/// The 400 message for unknown fields under `fieldValidation=Strict`.
pub fn strict_decoding_message(kind: &str, version: &str, unknown_fields: &[String]) -> String {
    let fields: Vec<String> = unknown_fields
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        fields.join(", ")
    )
}

/// The warning for one unknown field under `fieldValidation=Warn`.
pub fn unknown_field_warning(field: &str) -> String {
    format!("unknown field {field:?}")
}

/// The `openAPIV3Schema` of `version` in a CRD (JSON), if it has one.
pub fn version_schema<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == version)
        .map(|v| &v["schema"]["openAPIV3Schema"])
        .filter(|s| s.is_object())
}

/// Decodes a custom resource as the API server does: drops unknown fields (per `mode`), then
/// applies defaults. Returns the warnings to send, or under `Strict` the unknown fields (400).
pub fn decode(
    schema: &Value,
    object: &mut Value,
    mode: FieldValidation,
) -> Result<Vec<String>, Vec<String>> {
    let mut unknown = Vec::new();
    prune(schema, object, "", true, &mut unknown);
    default(schema, object);
    match mode {
        FieldValidation::Strict if !unknown.is_empty() => Err(unknown),
        FieldValidation::Warn => Ok(unknown.iter().map(|f| unknown_field_warning(f)).collect()),
        _ => Ok(Vec::new()),
    }
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema[name].as_bool().unwrap_or(false)
}

/// Removes fields the schema does not know, collecting their paths.
fn prune(schema: &Value, value: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            let keeps_unknown = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let metadata = (root || embedded)
                    && matches!(key.as_str(), "apiVersion" | "kind" | "metadata");
                let field_path = child(path, &key);
                let Some(field) = map.get_mut(&key) else {
                    continue;
                };
                if metadata {
                    // Kept as is: the envelope is the store's to check.
                } else if let Some(property) = properties.and_then(|p| p.get(&key)) {
                    prune(property, field, &field_path, false, unknown);
                } else if additional.is_object() {
                    prune(additional, field, &field_path, false, unknown);
                } else if !(keeps_unknown || additional == &Value::Bool(true)) {
                    unknown.push(field_path);
                    map.remove(&key);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                prune(
                    &schema["items"],
                    item,
                    &format!("{path}[{i}]"),
                    false,
                    unknown,
                );
            }
        }
        _ => {}
    }
}

/// Applies `default`s inside objects that exist; a null in a non-nullable field is defaulted
/// when a default exists and dropped otherwise, as upstream.
fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    let nullable = flag(property, "nullable");
                    let is_null = map.get(name).is_some_and(Value::is_null);
                    if is_null && !nullable && property.get("default").is_none() {
                        map.remove(name);
                    } else if let Some(default) = property.get("default")
                        && (!map.contains_key(name) || (is_null && !nullable))
                    {
                        map.insert(name.clone(), default.clone());
                    }
                }
            }
            for (name, field) in map.iter_mut() {
                match schema["properties"].get(name) {
                    Some(property) => default(property, field),
                    None if schema["additionalProperties"].is_object() => {
                        default(&schema["additionalProperties"], field)
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            let item_schema = &schema["items"];
            for item in items.iter_mut() {
                if item.is_null()
                    && !flag(item_schema, "nullable")
                    && let Some(default) = item_schema.get("default")
                {
                    *item = default.clone();
                }
                default(item_schema, item);
            }
        }
        _ => {}
    }
}

/// What validation found: errors make a 422; warnings are sent with a successful answer
/// (ratcheted CEL errors on unchanged values).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Validation {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<String>,
}

/// Compiles a rule or message expression found on a schema node.
type Compile<'c> = dyn Fn(&Value, &str, &Declarations) -> Result<Arc<Expression>, CelError> + 'c;

/// Validates a decoded custom resource against its schema and CEL rules; `old` is the stored
/// object on update (transition rules, and ratcheting: errors on values unchanged from `old`
/// are not reported, as with upstream's CRDValidationRatcheting). Compiles every rule it runs;
/// [`CompiledSchema`] compiles each once.
#[cfg(test)]
pub fn validate(schema: &Value, object: &Value, old: Option<&Value>) -> Validation {
    let compile = |_: &Value, source: &str, declarations: &Declarations| {
        Expression::compile(source, declarations).map(Arc::new)
    };
    validate_with(schema, object, old, &compile)
}

fn validate_with(
    schema: &Value,
    object: &Value,
    old: Option<&Value>,
    compile: &Compile,
) -> Validation {
    let mut openapi = Validation::default();
    let mut rules = Validation::default();
    walk(
        schema,
        object,
        old,
        "",
        true,
        &mut openapi,
        &mut rules,
        compile,
    );
    openapi.errors.extend(rules.errors);
    openapi.warnings.extend(rules.warnings);
    openapi
}

/// The compiled rules of a [`CompiledSchema`], by the address of the schema node each sits on and
/// its source.
type RuleCache = HashMap<(usize, String), Result<Arc<Expression>, CelError>>;

/// A schema whose CEL rules and message expressions compile once, on first use, however many
/// objects they validate: what the server keeps per CRD version and generation.
pub struct CompiledSchema {
    /// Never changed once built, so the addresses of its nodes identify them in `rules`.
    schema: Value,
    rules: Mutex<RuleCache>,
}

impl CompiledSchema {
    pub fn new(schema: Value) -> Self {
        Self {
            schema,
            rules: Mutex::default(),
        }
    }

    /// The `openAPIV3Schema`.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// [`validate`] with the rules compiled once.
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Validation {
        let compile = |node: &Value, source: &str, declarations: &Declarations| {
            let key = (std::ptr::from_ref(node) as usize, source.to_string());
            let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
            rules
                .entry(key)
                .or_insert_with(|| Expression::compile(source, declarations).map(Arc::new))
                .clone()
        };
        validate_with(&self.schema, object, old, &compile)
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(wanted: &str, value: &Value) -> bool {
    let actual = json_type(value);
    match wanted {
        "" => true,
        "integer" => {
            actual == "integer"
                || value
                    .as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && actual == "number")
        }
        "number" => actual == "integer" || actual == "number",
        "integer,string" => actual == "integer" || actual == "string",
        other => other == actual,
    }
}

#[allow(clippy::too_many_arguments)]
fn walk(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    root: bool,
    openapi: &mut Validation,
    rules: &mut Validation,
    compile: &Compile,
) {
    // Ratcheting: an unchanged value keeps passing even if the schema got stricter.
    let unchanged = old == Some(value);
    let mut errors = Vec::new();
    check_openapi(schema, value, path, &mut errors);
    if !unchanged {
        openapi.errors.extend(errors);
    }
    if !value.is_null() {
        check_rules(schema, value, old, path, root, unchanged, rules, compile);
    }
    match value {
        Value::Object(map) => {
            let properties = schema["properties"].as_object();
            for (key, field) in map {
                let field_schema = match properties.and_then(|p| p.get(key)) {
                    Some(s) => s,
                    None if schema["additionalProperties"].is_object() => {
                        &schema["additionalProperties"]
                    }
                    None => continue,
                };
                let old_field = old.and_then(|o| o.get(key));
                let field_path = if properties.is_some() {
                    child(path, key)
                } else {
                    format!("{path}[{key}]")
                };
                walk(
                    field_schema,
                    field,
                    old_field,
                    &field_path,
                    false,
                    openapi,
                    rules,
                    compile,
                );
            }
        }
        Value::Array(items) => {
            let item_schema = &schema["items"];
            for (i, item) in items.iter().enumerate() {
                let old_item = old.and_then(|o| correlated_item(schema, item, o));
                walk(
                    item_schema,
                    item,
                    old_item,
                    &format!("{path}[{i}]"),
                    false,
                    openapi,
                    rules,
                    compile,
                );
            }
        }
        _ => {}
    }
}

/// The old list item a new one corresponds to: by key for `map` lists, by value for `set` lists;
/// items of atomic lists have none.
fn correlated_item<'a>(schema: &Value, item: &Value, old: &'a Value) -> Option<&'a Value> {
    let old_items = old.as_array()?;
    match schema["x-kubernetes-list-type"].as_str() {
        Some("set") => old_items.iter().find(|o| *o == item),
        Some("map") => {
            let keys = list_map_keys(schema);
            old_items
                .iter()
                .find(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
        }
        _ => None,
    }
}

fn list_map_keys(schema: &Value) -> Vec<String> {
    schema["x-kubernetes-list-map-keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The OpenAPI checks of one node (not its children).
fn check_openapi(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let nullable = flag(schema, "nullable");
    if value.is_null() && nullable {
        return;
    }
    let mut wanted = schema["type"].as_str().unwrap_or_default().to_string();
    if wanted.is_empty() && flag(schema, "x-kubernetes-int-or-string") {
        wanted = "integer,string".into();
    }
    if !type_matches(&wanted, value) {
        let actual = json_type(value);
        errors.push(FieldError::new(
            FieldErrorType::TypeInvalid,
            path,
            Some(json!(actual)),
            format!(
                "{} in body must be of type {wanted}: {actual:?}",
                display_path(path)
            ),
        ));
        return;
    }
    let invalid = |detail: String| {
        FieldError::new(FieldErrorType::Invalid, path, Some(value.clone()), detail)
    };
    let name = display_path(path);
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.iter().any(|a| json_equal(a, value))
    {
        let supported: Vec<String> = allowed
            .iter()
            .map(|a| {
                let text = a.as_str().map_or_else(|| a.to_string(), String::from);
                serde_json::to_string(&text).unwrap_or_default()
            })
            .collect();
        errors.push(FieldError::new(
            FieldErrorType::NotSupported,
            path,
            Some(value.clone()),
            format!("supported values: {}", supported.join(", ")),
        ));
    }
    match value {
        Value::String(s) => {
            let length = s.chars().count() as u64;
            if let Some(min) = schema["minLength"].as_u64()
                && length < min
            {
                errors.push(invalid(format!(
                    "{name} in body should be at least {min} chars long"
                )));
            }
            if let Some(max) = schema["maxLength"].as_u64()
                && length > max
            {
                let unit = if max == 1 { "byte" } else { "bytes" };
                errors.push(FieldError::new(
                    FieldErrorType::TooLong,
                    path,
                    None,
                    format!("may not be more than {max} {unit}"),
                ));
            }
            if let Some(pattern) = schema["pattern"].as_str()
                && regex_match(pattern, s) == Some(false)
            {
                errors.push(invalid(format!("{name} in body should match '{pattern}'")));
            }
            if let Some(format) = schema["format"].as_str()
                && !format_valid(format, s)
            {
                errors.push(FieldError::new(
                    FieldErrorType::TypeInvalid,
                    path,
                    Some(value.clone()),
                    format!("{name} in body must be of type {format}: {s:?}"),
                ));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = schema["minimum"].as_f64() {
                let exclusive = flag(schema, "exclusiveMinimum");
                if (exclusive && x <= min) || (!exclusive && x < min) {
                    let relation = if exclusive {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    errors.push(invalid(format!(
                        "{name} in body should be {relation} {min}"
                    )));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                let exclusive = flag(schema, "exclusiveMaximum");
                if (exclusive && x >= max) || (!exclusive && x > max) {
                    let relation = if exclusive {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    errors.push(invalid(format!(
                        "{name} in body should be {relation} {max}"
                    )));
                }
            }
            if let Some(factor) = schema["multipleOf"].as_f64()
                && factor > 0.0
                && (x / factor).fract() != 0.0
            {
                errors.push(invalid(format!(
                    "{name} in body should be a multiple of {factor}"
                )));
            }
        }
        Value::Array(items) => {
            let size = items.len() as u64;
            if let Some(min) = schema["minItems"].as_u64()
                && size < min
            {
                errors.push(FieldError::new(
                    FieldErrorType::Invalid,
                    path,
                    Some(json!(size)),
                    format!("{name} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema["maxItems"].as_u64()
                && size > max
            {
                errors.push(too_many(path, size, max));
            }
            errors.extend(list_type_duplicates(schema, items, path));
        }
        Value::Object(map) => {
            for required in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(required) {
                    errors.push(FieldError::new(
                        FieldErrorType::Required,
                        &child(path, required),
                        None,
                        String::new(),
                    ));
                }
            }
            if flag(schema, "x-kubernetes-embedded-resource") {
                for envelope in ["kind", "apiVersion"] {
                    if !map.contains_key(envelope) {
                        errors.push(FieldError::new(
                            FieldErrorType::Required,
                            &child(path, envelope),
                            None,
                            "must not be empty".into(),
                        ));
                    }
                }
            }
            let size = map.len() as u64;
            if let Some(min) = schema["minProperties"].as_u64()
                && size < min
            {
                errors.push(FieldError::new(
                    FieldErrorType::Invalid,
                    path,
                    Some(json!(min)),
                    format!("{name} in body should have at least {min} properties"),
                ));
            }
            if let Some(max) = schema["maxProperties"].as_u64()
                && size > max
            {
                errors.push(too_many(path, size, max));
            }
        }
        _ => {}
    }
}

fn too_many(path: &str, size: u64, max: u64) -> FieldError {
    let unit = if max == 1 { "item" } else { "items" };
    FieldError::new(
        FieldErrorType::TooMany,
        path,
        Some(json!(size)),
        format!("must have at most {max} {unit}"),
    )
}

/// kube-openapi names the root `body`'s fields without a leading dot.
fn display_path(path: &str) -> &str {
    if path.is_empty() { "body" } else { path }
}

/// JSON equality where `1` and `1.0` are the same number.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Duplicates in `set` lists (by value) and `map` lists (by key fields), as upstream reports them.
fn list_type_duplicates(schema: &Value, items: &[Value], path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match schema["x-kubernetes-list-type"].as_str() {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].iter().any(|earlier| json_equal(earlier, item)) {
                    errors.push(FieldError::new(
                        FieldErrorType::Duplicate,
                        &format!("{path}[{i}]"),
                        Some(item.clone()),
                        String::new(),
                    ));
                }
            }
        }
        Some("map") => {
            let keys = list_map_keys(schema);
            let key_of = |item: &Value| -> Value {
                let mut key = serde_json::Map::new();
                for k in &keys {
                    if let Some(v) = item.get(k) {
                        key.insert(k.clone(), v.clone());
                    }
                }
                Value::Object(key)
            };
            for (i, item) in items.iter().enumerate() {
                let key = key_of(item);
                if items[..i].iter().any(|earlier| key_of(earlier) == key) {
                    errors.push(FieldError::new(
                        FieldErrorType::Duplicate,
                        &format!("{path}[{i}]"),
                        Some(key),
                        String::new(),
                    ));
                }
            }
        }
        _ => {}
    }
    errors
}

/// The string formats upstream validates; others (and `int32`, `int64`, `float`, `double`,
/// `password`) pass.
fn format_valid(format: &str, s: &str) -> bool {
    let matches = |pattern: &str| regex_match(pattern, s) == Some(true);
    match format {
        "date-time" | "datetime" => {
            matches(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$")
        }
        "date" => matches(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"),
        "uuid" => {
            matches(r"^(?i)[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
        }
        "uuid3" | "uuid4" | "uuid5" => {
            let version = &format[4..];
            matches(&format!(
                r"^(?i)[0-9a-f]{{8}}-?[0-9a-f]{{4}}-?{version}[0-9a-f]{{3}}-?[0-9a-f]{{4}}-?[0-9a-f]{{12}}$"
            ))
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::IpAddr>().is_ok_and(|ip| {
                bits.parse::<u8>()
                    .is_ok_and(|b| b <= if ip.is_ipv4() { 32 } else { 128 })
            })
        }),
        "hostname" => {
            s.len() <= 255
                && matches(
                    r"^([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$",
                )
        }
        "mac" => matches(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$"),
        "byte" => matches(r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"),
        "duration" => matches(r"^[-+]?(\d+(\.\d*)?(ns|us|µs|ms|s|m|h|d|w))+$"),
        "email" => matches(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
        _ => true,
    }
}

/// Whether `s` matches `pattern`; `None` when the pattern does not compile. Each pattern is
/// compiled once per process, as upstream keeps its validators with the schema: compiling the
/// `date-time` pattern for every timestamp made a status update with a dozen of them take 7 ms.
/// The cache is cleared when it is full, so CRDs with ever new patterns cannot grow it unbounded.
fn regex_match(pattern: &str, s: &str) -> Option<bool> {
    const KEPT: usize = 1024;
    static COMPILED: LazyLock<Mutex<HashMap<String, Option<regex::Regex>>>> =
        LazyLock::new(Mutex::default);
    let compiled = {
        let mut cache = COMPILED.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(pattern) {
            Some(compiled) => compiled.clone(),
            None => {
                if cache.len() >= KEPT {
                    cache.clear();
                }
                let compiled = regex::Regex::new(pattern).ok();
                cache.insert(pattern.to_string(), compiled.clone());
                compiled
            }
        }
    };
    compiled.map(|re| re.is_match(s))
}

/// CEL names for object properties: reserved words and characters CEL cannot spell are escaped
/// (`x-y` → `x__dash__y`) as upstream does; `None` for names CEL cannot reach.
pub fn escape_property(name: &str) -> Option<String> {
    const RESERVED: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || "_.-/".contains(c));
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
    {
        return None;
    }
    Some(
        name.replace("__", "__underscores__")
            .replace('.', "__dot__")
            .replace('-', "__dash__")
            .replace('/', "__slash__"),
    )
}

/// A value as a CRD rule sees it: property names escaped, `number` fields as doubles, and at the
/// root only `apiVersion`, `kind`, `metadata.name` and `metadata.generateName` of the envelope.
fn rule_value(schema: &Value, value: &Value, root: bool) -> Value {
    match value {
        Value::Object(map) => {
            let properties = schema["properties"].as_object();
            let mut out = serde_json::Map::new();
            for (key, field) in map {
                if (root || flag(schema, "x-kubernetes-embedded-resource"))
                    && matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
                {
                    let kept = if key == "metadata" {
                        let mut metadata = serde_json::Map::new();
                        for k in ["name", "generateName"] {
                            if let Some(v) = field.get(k) {
                                metadata.insert(k.into(), v.clone());
                            }
                        }
                        Value::Object(metadata)
                    } else {
                        field.clone()
                    };
                    out.insert(key.clone(), kept);
                    continue;
                }
                match properties.and_then(|p| p.get(key)) {
                    Some(property) => {
                        if let Some(name) = escape_property(key) {
                            out.insert(name, rule_value(property, field, false));
                        }
                    }
                    None => {
                        let additional = &schema["additionalProperties"];
                        out.insert(
                            key.clone(),
                            if additional.is_object() {
                                rule_value(additional, field, false)
                            } else {
                                field.clone()
                            },
                        );
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| rule_value(&schema["items"], i, false))
                .collect(),
        ),
        Value::Number(n) if schema["type"] == "number" => {
            n.as_f64().map_or_else(|| value.clone(), |f| json!(f))
        }
        _ => value.clone(),
    }
}

/// The first field of `path` that `schema` (a rule's node) does not define, for CEL compiling.
fn undefined_field(schema: &Value, root: bool, path: &[&str]) -> Option<String> {
    let mut node = schema;
    let mut at_root = root;
    for field in path {
        if at_root && matches!(*field, "apiVersion" | "kind") {
            return None;
        }
        if at_root && *field == "metadata" {
            return None;
        }
        let properties = node["properties"].as_object()?;
        if flag(node, "x-kubernetes-preserve-unknown-fields")
            || node["additionalProperties"].is_object()
        {
            return None;
        }
        match properties
            .iter()
            .find(|(name, _)| escape_property(name).as_deref() == Some(field))
        {
            Some((_, property)) => node = property,
            None => return Some(field.to_string()),
        }
        at_root = false;
    }
    None
}

/// One `x-kubernetes-validations` entry.
struct Rule<'a> {
    rule: &'a str,
    message: &'a str,
    message_expression: &'a str,
    reason: &'a str,
    field_path: &'a str,
    optional_old_self: bool,
}

impl<'a> Rule<'a> {
    fn from_json(rule: &'a Value) -> Self {
        let text = |k: &str| rule[k].as_str().unwrap_or_default();
        Self {
            rule: text("rule"),
            message: text("message"),
            message_expression: text("messageExpression"),
            reason: text("reason"),
            field_path: text("fieldPath"),
            optional_old_self: flag(rule, "optionalOldSelf"),
        }
    }

    fn message_or_default(&self) -> String {
        if self.message.trim().is_empty() {
            format!("failed rule: {}", self.rule.trim())
        } else {
            self.message.trim().to_string()
        }
    }

    fn error_string(&self) -> String {
        if self.message.trim().is_empty() {
            self.rule.trim().to_string()
        } else {
            self.message.trim().to_string()
        }
    }
}

fn rule_declarations<'a>(lookup: &'a FieldLookup<'a>) -> Declarations<'a> {
    Declarations {
        variables: vec!["self".into(), "oldSelf".into()],
        authorizer: false,
        undefined_field: Some(lookup),
    }
}

/// `.spec.replicas` or `['x'].y` relative to a rule's node, as a field path from `path`.
fn rule_field_path(path: &str, field_path: &str) -> String {
    let mut out = path.to_string();
    let mut rest = field_path;
    while !rest.is_empty() {
        if let Some(tail) = rest.strip_prefix('.') {
            let end = tail.find(['.', '[']).unwrap_or(tail.len());
            out = child(&out, &tail[..end]);
            rest = &tail[end..];
        } else if let Some(tail) = rest.strip_prefix("['") {
            let end = tail.find("']").unwrap_or(tail.len());
            out = child(&out, &tail[..end]);
            rest = tail.get(end + 2..).unwrap_or_default();
        } else {
            out = child(&out, rest);
            break;
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn check_rules(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    root: bool,
    unchanged: bool,
    out: &mut Validation,
    compile: &Compile,
) {
    let Some(rules) = schema["x-kubernetes-validations"].as_array() else {
        return;
    };
    let type_name = schema["type"].as_str().unwrap_or_default();
    let lookup = |var: &str, fields: &[&str]| {
        (var == "self" || var == "oldSelf")
            .then(|| undefined_field(schema, root, fields))
            .flatten()
    };
    let declarations = rule_declarations(&lookup);
    let self_value = rule_value(schema, value, root);
    let mut activation = Activation::default();
    activation.bind_json("self", &self_value);
    let old_value = old.map(|o| rule_value(schema, o, root));
    if let Some(old) = &old_value {
        activation.bind_json("oldSelf", old);
    }
    let invalid = |detail: String| {
        FieldError::new(
            FieldErrorType::Invalid,
            path,
            Some(json!(type_name)),
            detail,
        )
    };
    for rule in rules.iter().map(Rule::from_json) {
        let expression = match compile(schema, rule.rule, &declarations) {
            Ok(e) => e,
            Err(e) => {
                out.errors.push(invalid(format!("rule compile error: {e}")));
                continue;
            }
        };
        let uses_old_self = expression.uses("oldSelf");
        let mut rule_activation = activation.clone();
        if uses_old_self && old_value.is_none() {
            if !rule.optional_old_self {
                continue;
            }
            // With optionalOldSelf, oldSelf is an optional: none on create.
            rule_activation.bind("oldSelf", cel_optional_none());
        }
        let result = match expression.evaluate_bool(&rule_activation) {
            Ok(result) => result,
            Err(CelError::Evaluation(e)) if e.starts_with("no such overload") => {
                out.errors.push(invalid(format!(
                    "'{e}': call arguments did not match a supported operator, function or macro signature for rule: {}",
                    rule.error_string()
                )));
                continue;
            }
            Err(e) => {
                out.errors.push(invalid(format!(
                    "{e} evaluating rule: {}",
                    rule.error_string()
                )));
                continue;
            }
        };
        if result {
            continue;
        }
        let detail = message_expression(schema, &rule, &declarations, &activation, compile)
            .unwrap_or_else(|| rule.message_or_default());
        let field = if rule.field_path.is_empty() {
            path.to_string()
        } else {
            rule_field_path(path, rule.field_path)
        };
        let bad_value = (!matches!(type_name, "object" | "array")).then(|| value.clone());
        let error = match rule.reason {
            "FieldValueForbidden" => {
                FieldError::new(FieldErrorType::Forbidden, &field, None, detail)
            }
            "FieldValueRequired" => FieldError::new(FieldErrorType::Required, &field, None, detail),
            "FieldValueDuplicate" => {
                FieldError::new(FieldErrorType::Duplicate, &field, bad_value, String::new())
            }
            _ => FieldError::new(FieldErrorType::Invalid, &field, bad_value, detail),
        };
        if unchanged && !uses_old_self {
            out.warnings.push(error.to_string());
        } else {
            out.errors.push(error);
        }
    }
}

/// The message a rule's `messageExpression` gives, if it evaluates to a usable string.
fn message_expression(
    schema: &Value,
    rule: &Rule,
    declarations: &Declarations,
    activation: &Activation,
    compile: &Compile,
) -> Option<String> {
    if rule.message_expression.is_empty() {
        return None;
    }
    let expression = compile(schema, rule.message_expression, declarations).ok()?;
    match expression.evaluate(activation).ok()? {
        ::cel::Value::String(s) => {
            let s = s.trim();
            (!s.is_empty() && !s.contains('\n')).then(|| s.to_string())
        }
        _ => None,
    }
}

fn cel_optional_none() -> ::cel::Value {
    // Evaluating `optional.none()` yields the crate's optional none value.
    Expression::compile("optional.none()", &Declarations::default())
        .ok()
        .and_then(|e| e.evaluate(&Activation::default()).ok())
        .unwrap_or(::cel::Value::Null)
}

/// What the API server refuses a CRD for in its CEL rules: every rule and messageExpression
/// must compile against its node's schema (messages as upstream prints them at CRD creation).
pub fn check_crd_rules(crd: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, version) in crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let schema = &version["schema"]["openAPIV3Schema"];
        if schema.is_object() {
            check_schema_rules(
                schema,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                true,
                &mut errors,
            );
        }
    }
    errors
}

fn check_schema_rules(schema: &Value, path: &str, root: bool, errors: &mut Vec<String>) {
    let lookup = |var: &str, fields: &[&str]| {
        (var == "self" || var == "oldSelf")
            .then(|| undefined_field(schema, root, fields))
            .flatten()
    };
    let declarations = rule_declarations(&lookup);
    for (i, rule_json) in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let rule = Rule::from_json(rule_json);
        let value = format!(
            "apiextensions.ValidationRule{{Rule:{:?}, Message:{:?}, MessageExpression:{:?}, Reason:{}, FieldPath:{:?}, OptionalOldSelf:{}}}",
            rule.rule,
            rule.message,
            rule.message_expression,
            if rule.reason.is_empty() {
                "(*apiextensions.FieldValueErrorReason)(nil)".to_string()
            } else {
                format!("{:?}", rule.reason)
            },
            rule.field_path,
            if rule_json.get("optionalOldSelf").is_some() {
                rule.optional_old_self.to_string()
            } else {
                "(*bool)(nil)".into()
            },
        );
        let at = format!("{path}.x-kubernetes-validations[{i}]");
        if rule.rule.trim().is_empty() {
            errors.push(format!("{at}.rule: Required value"));
            continue;
        }
        if let Err(e) = Expression::compile(rule.rule, &declarations) {
            errors.push(format!("{at}.rule: Invalid value: {value}: {e}"));
        }
        if !rule.message_expression.is_empty()
            && let Err(e) = Expression::compile(rule.message_expression, &declarations)
        {
            errors.push(format!(
                "{at}.messageExpression: Invalid value: {:?}: messageExpression {e}",
                rule.message_expression
            ));
        }
        if !rule.reason.is_empty()
            && ![
                "FieldValueInvalid",
                "FieldValueForbidden",
                "FieldValueRequired",
                "FieldValueDuplicate",
            ]
            .contains(&rule.reason)
        {
            errors.push(format!(
                "{at}.reason: Unsupported value: {:?}: supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\"",
                rule.reason
            ));
        }
        if !rule.field_path.is_empty() && !field_path_exists(schema, rule.field_path) {
            errors.push(format!(
                "{at}.fieldPath: Invalid value: {:?}: fieldPath must be a valid path",
                rule.field_path
            ));
        }
    }
    if let Some(properties) = schema["properties"].as_object() {
        let sorted: BTreeMap<&String, &Value> = properties.iter().collect();
        for (name, property) in sorted {
            check_schema_rules(
                property,
                &format!("{path}.properties[{name}]"),
                false,
                errors,
            );
        }
    }
    for key in ["items", "additionalProperties"] {
        if schema[key].is_object() {
            check_schema_rules(&schema[key], &format!("{path}.{key}"), false, errors);
        }
    }
}

fn field_path_exists(schema: &Value, field_path: &str) -> bool {
    let full = rule_field_path("", field_path);
    let mut node = schema;
    for part in full.split('.') {
        match node["properties"].get(part) {
            Some(next) => node = next,
            None if node["additionalProperties"].is_object() => {
                node = &node["additionalProperties"]
            }
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": {
                    "type": "object",
                    "required": ["podName", "containers"],
                    "x-kubernetes-validations": [
                        {"rule": "self == oldSelf", "message": "spec is immutable"},
                        {"rule": "!has(self.shutdown) || has(self.shutdown.exec) != has(self.shutdown.httpGet)",
                         "message": "exactly one of exec and httpGet", "fieldPath": ".shutdown", "reason": "FieldValueForbidden"},
                    ],
                    "properties": {
                        "podName": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                        "activeDeadlineSeconds": {"type": "integer", "format": "int64", "minimum": 1, "maximum": 3600},
                        "strategy": {"type": "string", "enum": ["Recreate", "InPlace"], "default": "Recreate"},
                        "note": {"type": "string", "maxLength": 3, "nullable": true},
                        "port": {"x-kubernetes-int-or-string": true},
                        "notAfter": {"type": "string", "format": "date-time"},
                        "ratio": {"type": "number", "exclusiveMinimum": true, "minimum": 0},
                        "labels": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "shutdown": {"type": "object", "properties": {
                            "exec": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}},
                            "httpGet": {"type": "object", "properties": {"path": {"type": "string"}}},
                        }},
                        "containers": {
                            "type": "array", "minItems": 1, "maxItems": 2,
                            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                            "items": {"type": "object", "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "grace": {"type": "integer", "default": 30},
                                    "x-y": {"type": "string"},
                                },
                                "x-kubernetes-validations": [
                                    {"rule": "self.grace <= 300", "messageExpression": "'grace ' + string(self.grace) + ' is over 300'"},
                                    {"rule": "!has(self.x__dash__y) || self.x__dash__y != 'bad'"},
                                ]},
                        },
                        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                    },
                },
            },
        })
    }

    fn object(spec: Value) -> Value {
        json!({"apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
            "metadata": {"name": "r", "namespace": "ns"}, "spec": spec})
    }

    fn valid_spec() -> Value {
        json!({"podName": "web-0", "containers": [{"name": "app"}]})
    }

    fn errors_of(spec: Value) -> Vec<String> {
        let mut object = object(spec);
        decode(&schema(), &mut object, FieldValidation::Ignore).unwrap();
        validate(&schema(), &object, None)
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn decoded(spec: Value) -> Value {
        let mut object = object(spec);
        decode(&schema(), &mut object, FieldValidation::Ignore).unwrap();
        object
    }

    fn with(change: Value) -> Value {
        let mut spec = valid_spec();
        for (k, v) in change.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    }

    #[test]
    fn valid_object_passes() {
        assert_eq!(errors_of(valid_spec()), Vec::<String>::new());
    }

    #[test]
    fn bounds_read_as_upstream() {
        assert_eq!(
            errors_of(with(json!({"activeDeadlineSeconds": 0}))),
            [
                "spec.activeDeadlineSeconds: Invalid value: 0: spec.activeDeadlineSeconds in body should be greater than or equal to 1"
            ]
        );
        assert_eq!(
            errors_of(with(json!({"activeDeadlineSeconds": 3601}))),
            [
                "spec.activeDeadlineSeconds: Invalid value: 3601: spec.activeDeadlineSeconds in body should be less than or equal to 3600"
            ]
        );
        assert_eq!(
            errors_of(with(json!({"ratio": 0}))),
            ["spec.ratio: Invalid value: 0: spec.ratio in body should be greater than 0"]
        );
    }

    #[test]
    fn enum_required_and_type_errors_read_as_upstream() {
        assert_eq!(
            errors_of(with(json!({"strategy": "Never"}))),
            [
                r#"spec.strategy: Unsupported value: "Never": supported values: "Recreate", "InPlace""#
            ]
        );
        assert_eq!(
            errors_of(json!({"containers": [{"name": "a"}]})),
            ["spec.podName: Required value"]
        );
        assert_eq!(
            errors_of(with(json!({"activeDeadlineSeconds": "10"}))),
            [
                r#"spec.activeDeadlineSeconds: Invalid value: "string": spec.activeDeadlineSeconds in body must be of type integer: "string""#
            ]
        );
        assert_eq!(
            errors_of(with(json!({"activeDeadlineSeconds": 10.0}))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn compiled_patterns_give_the_same_answers_before_and_after_the_cache_is_cleared() {
        // More patterns than the cache keeps: it is cleared on the way, and compiles again.
        for round in 0..2 {
            for n in 0..1_100 {
                let pattern = format!("^a{{{n}}}$");
                let matching = "a".repeat(n);
                assert_eq!(regex_match(&pattern, &matching), Some(true), "{round} {n}");
                assert_eq!(regex_match(&pattern, "b"), Some(false), "{round} {n}");
            }
        }
        // A pattern that does not compile checks nothing, each time it is asked.
        assert_eq!(regex_match("([", "x"), None);
        assert_eq!(regex_match("([", "x"), None);
    }

    #[test]
    fn string_limits_count_code_points_and_match_patterns() {
        assert_eq!(
            errors_of(with(json!({"note": "äöü"}))),
            Vec::<String>::new()
        );
        assert_eq!(
            errors_of(with(json!({"note": "abcd"}))),
            ["spec.note: Too long: may not be more than 3 bytes"]
        );
        assert_eq!(
            errors_of(with(json!({"podName": "Web_0"}))),
            [
                r#"spec.podName: Invalid value: "Web_0": spec.podName in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"#
            ]
        );
        assert_eq!(
            errors_of(with(json!({"notAfter": "tomorrow"}))),
            [
                r#"spec.notAfter: Invalid value: "tomorrow": spec.notAfter in body must be of type date-time: "tomorrow""#
            ]
        );
        assert_eq!(
            errors_of(with(json!({"notAfter": "2026-01-02T03:04:05Z"}))),
            Vec::<String>::new()
        );
        assert_eq!(
            errors_of(with(json!({"labels": {"a": ""}}))),
            [
                r#"spec.labels[a]: Invalid value: "": spec.labels[a] in body should be at least 1 chars long"#
            ]
        );
    }

    #[test]
    fn nullable_and_int_or_string_accept_what_upstream_accepts() {
        assert_eq!(
            errors_of(with(json!({"note": null, "port": 8080}))),
            Vec::<String>::new()
        );
        assert_eq!(
            errors_of(with(json!({"port": "http"}))),
            Vec::<String>::new()
        );
        assert_eq!(
            errors_of(with(json!({"port": true}))),
            [
                r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#
            ]
        );
    }

    #[test]
    fn list_sizes_and_list_types_read_as_upstream() {
        assert_eq!(
            errors_of(with(
                json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]})
            )),
            ["spec.containers: Too many: 3: must have at most 2 items"]
        );
        assert_eq!(
            errors_of(with(json!({"containers": []}))),
            [
                "spec.containers: Invalid value: 0: spec.containers in body should have at least 1 items"
            ]
        );
        assert_eq!(
            errors_of(with(json!({"containers": [{"name": "a"}, {"name": "a"}]}))),
            [r#"spec.containers[1]: Duplicate value: map[string]interface {}{"name":"a"}"#]
        );
        assert_eq!(
            errors_of(with(json!({"tags": ["x", "x"]}))),
            [r#"spec.tags[1]: Duplicate value: "x""#]
        );
        assert_eq!(
            errors_of(with(json!({"containers": [{}]}))),
            ["spec.containers[0].name: Required value"]
        );
    }

    #[test]
    fn defaults_apply_inside_existing_objects_only() {
        let mut decoded = object(valid_spec());
        decode(&schema(), &mut decoded, FieldValidation::Strict).unwrap();
        assert_eq!(decoded["spec"]["strategy"], "Recreate");
        assert_eq!(decoded["spec"]["containers"][0]["grace"], 30);
        assert!(decoded["spec"].get("shutdown").is_none());
        let mut nulls = object(with(json!({"strategy": null, "podName": null})));
        decode(&schema(), &mut nulls, FieldValidation::Strict).unwrap();
        assert_eq!(nulls["spec"]["strategy"], "Recreate", "null defaulted");
        assert!(
            nulls["spec"].get("podName").is_none(),
            "null without default dropped"
        );
    }

    #[test]
    fn unknown_fields_are_pruned_and_reported_per_field_validation() {
        let spec = with(
            json!({"bogus": 1, "containers": [{"name": "a", "extra": true}], "extra": {"anything": {"goes": 1}}}),
        );
        let mut strict = object(spec.clone());
        assert_eq!(
            decode(&schema(), &mut strict, FieldValidation::Strict),
            Err(vec![
                "spec.bogus".to_string(),
                "spec.containers[0].extra".to_string()
            ])
        );
        let mut warn = object(spec.clone());
        assert_eq!(
            decode(&schema(), &mut warn, FieldValidation::Warn),
            Ok(vec![
                r#"unknown field "spec.bogus""#.to_string(),
                r#"unknown field "spec.containers[0].extra""#.to_string()
            ])
        );
        assert!(warn["spec"].get("bogus").is_none());
        assert_eq!(warn["spec"]["extra"]["anything"]["goes"], 1, "preserved");
        assert_eq!(
            warn["metadata"]["namespace"], "ns",
            "metadata is the store's"
        );
        let mut ignore = object(spec);
        assert_eq!(
            decode(&schema(), &mut ignore, FieldValidation::Ignore),
            Ok(Vec::new())
        );
        assert_eq!(
            strict_decoding_message(
                "ContainerRecreateRequest",
                "v1alpha1",
                &["spec.bogus".into()]
            ),
            r#"ContainerRecreateRequest in version "v1alpha1" cannot be handled as a ContainerRecreateRequest: strict decoding error: unknown field "spec.bogus""#
        );
    }

    #[test]
    fn cel_rules_report_message_reason_and_field_path() {
        assert_eq!(
            errors_of(with(
                json!({"shutdown": {"exec": {"command": ["x"]}, "httpGet": {"path": "/"}}})
            )),
            ["spec.shutdown: Forbidden: exactly one of exec and httpGet"]
        );
        assert_eq!(
            errors_of(with(json!({"containers": [{"name": "a", "grace": 301}]}))),
            ["spec.containers[0]: Invalid value: grace 301 is over 300"]
        );
        assert_eq!(
            errors_of(with(json!({"containers": [{"name": "a", "x-y": "bad"}]}))),
            [
                "spec.containers[0]: Invalid value: failed rule: !has(self.x__dash__y) || self.x__dash__y != 'bad'"
            ]
        );
    }

    #[test]
    fn transition_rules_run_only_on_update_with_an_old_value() {
        let old = decoded(valid_spec());
        let changed = decoded(with(json!({"podName": "web-1"})));
        assert!(
            validate(&schema(), &changed, None).errors.is_empty(),
            "create: no oldSelf"
        );
        let errors: Vec<String> = validate(&schema(), &changed, Some(&old))
            .errors
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors, ["spec: Invalid value: spec is immutable"]);
        assert!(validate(&schema(), &old, Some(&old)).errors.is_empty());
    }

    #[test]
    fn unchanged_invalid_values_are_ratcheted_on_update() {
        let mut stricter = schema();
        stricter["properties"]["spec"]["x-kubernetes-validations"] = json!([]);
        let old = decoded(with(json!({"activeDeadlineSeconds": 0})));
        let mut new = old.clone();
        new["spec"]["strategy"] = json!("InPlace");
        assert!(validate(&stricter, &new, Some(&old)).errors.is_empty());
        assert_eq!(validate(&stricter, &new, None).errors.len(), 1);
    }

    #[test]
    fn invalid_status_carries_causes_as_kubectl_expects() {
        let errors = [
            FieldError::new(
                FieldErrorType::Required,
                "spec.podName",
                None,
                String::new(),
            ),
            FieldError::new(
                FieldErrorType::Invalid,
                "spec.x",
                Some(json!(0)),
                "too small".into(),
            ),
        ];
        let status =
            invalid_status("relaunch.dev", "ContainerRecreateRequest", "r", &errors).to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(
            status["message"],
            r#"ContainerRecreateRequest.relaunch.dev "r" is invalid: [spec.podName: Required value, spec.x: Invalid value: 0: too small]"#
        );
        assert_eq!(
            status["details"]["causes"],
            json!([
                {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.podName"},
                {"reason": "FieldValueInvalid", "message": "Invalid value: 0: too small", "field": "spec.x"},
            ])
        );
        assert_eq!(status["details"]["kind"], "ContainerRecreateRequest");
    }

    fn crd(rules: Value) -> Value {
        json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "x-kubernetes-validations": rules,
                "properties": {"replicas": {"type": "integer"}, "x-y": {"type": "string"}}}},
        }}}]}})
    }

    #[test]
    fn crd_rules_must_compile_against_their_schema() {
        assert!(
            check_crd_rules(&crd(
                json!([{"rule": "self.replicas > 0 && self.x__dash__y != ''"}])
            ))
            .is_empty()
        );
        let errors = check_crd_rules(&crd(json!([{"rule": "self.replica > 0"}])));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(r#"spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:"self.replica > 0""#),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].contains("compilation failed: ERROR: <input>:1:5: undefined field 'replica'"),
            "{}",
            errors[0]
        );
        assert_eq!(
            check_crd_rules(&crd(json!([{"rule": "self.replicas >"}]))).len(),
            1
        );
        assert_eq!(
            check_crd_rules(&crd(json!([{"rule": "true", "reason": "Nope"}]))).len(),
            1
        );
        assert_eq!(
            check_crd_rules(&crd(json!([{"rule": "true", "fieldPath": ".nothing"}]))).len(),
            1
        );
    }

    #[test]
    fn embedded_resources_keep_their_envelope_and_need_kind_and_api_version() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}}}}}}});
        let mut object = json!({"spec": {"template": {"apiVersion": "v1", "metadata": {"name": "t"}, "spec": {"x": "a", "y": 1}}}});
        assert_eq!(
            decode(&schema, &mut object, FieldValidation::Strict),
            Err(vec!["spec.template.spec.y".to_string()])
        );
        assert_eq!(object["spec"]["template"]["metadata"]["name"], "t");
        let errors: Vec<String> = validate(&schema, &object, None)
            .errors
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            ["spec.template.kind: Required value: must not be empty"]
        );
    }

    #[test]
    fn field_validation_parses_the_query_parameter() {
        assert_eq!(FieldValidation::parse(None), Ok(FieldValidation::Warn));
        assert_eq!(
            FieldValidation::parse(Some("Strict")),
            Ok(FieldValidation::Strict)
        );
        assert!(FieldValidation::parse(Some("strict")).is_err());
    }
}
