//! CEL as the Kubernetes API server evaluates it, on the `cel` crate: the standard library
//! with its macros (`has`, `all`, `exists`, `exists_one`, `map`, `filter`), the strings, lists
//! and math extensions, the Kubernetes list and regex functions relaunch's rules need, and the
//! Kubernetes authorizer library for admission policies. Compiling checks what the crate's parser
//! does not: undeclared variables and functions, and (given a schema) undefined fields.
//!
//! Kubernetes CEL libraries supported: lists (`isSorted`, `sum`, `min`, `max`), regex (`find`,
//! `findAll`), authz (`authorizer.group/resource/subresource/namespace/name/check`,
//! `authorizer.path`, `authorizer.serviceAccount`, `authorizer.requestResource`, decisions'
//! `allowed/reason/errored/error`); from cel-go's extensions: strings (`lowerAscii`, `upperAscii`,
//! `split`, `join`, `replace`, `substring`, `trim`, `indexOf`, `lastIndexOf`, `charAt`, `format`,
//! `strings.quote`), lists (`flatten`, `distinct`, `sort`, `sortBy`, `lists.range`), `math.*`,
//! optionals, `duration`/`timestamp`. Not supported: `url`, `ip`, `cidr`, `quantity`, `semver`,
//! `format.*` named formats, list `indexOf`/`lastIndexOf`, `authorizer` field/label selectors,
//! cost estimation and runtime cost limits, and static type checking beyond field names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::extractors::This;
use cel::objects::{Key, Opaque};
use cel::{Context, Env, ExecutionError, Program, Value as CelValue};
use serde_json::Value;

use super::rbac::{Attributes, Authorizer, Decision, ResourceAttributes, UserInfo};

/// Why an expression could not be compiled or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CelError {
    /// The expression does not compile; the message is cel-go's (`ERROR: <input>:1:5: ...`).
    #[error("compilation failed: {0}")]
    Compile(String),
    /// Evaluation failed (no such key, division by zero, no such overload, ...).
    #[error("{0}")]
    Evaluation(String),
}

/// The environment every expression compiles and runs in.
static ENVIRONMENT: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // The extensions only fail on name clashes, which a fixed set of libraries cannot have.
    let _ = env.add_extension(cel::extensions::strings);
    let _ = env.add_extension(cel::extensions::lists);
    let _ = env.add_extension(cel::extensions::math);
    Arc::new(env)
});

/// Functions a compiled expression may call (operators aside).
const FUNCTIONS: &[&str] = &[
    // standard library
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "duration",
    "timestamp",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    "has",
    "all",
    "exists",
    "exists_one",
    "existsOne",
    "map",
    "filter",
    // optionals
    "optional.of",
    "optional.ofNonZeroValue",
    "optional.none",
    "hasValue",
    "value",
    "or",
    "orValue",
    // strings, lists and math extensions
    "charAt",
    "indexOf",
    "lastIndexOf",
    "join",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "split",
    "substring",
    "format",
    "reverse",
    "strings.quote",
    "flatten",
    "distinct",
    "sort",
    "sortBy",
    "lists.range",
    "math.abs",
    "math.ceil",
    "math.floor",
    "math.round",
    "math.trunc",
    "math.sign",
    "math.sqrt",
    "math.isInf",
    "math.isNaN",
    "math.isFinite",
    "math.bitAnd",
    "math.bitOr",
    "math.bitXor",
    "math.bitNot",
    "math.bitShiftLeft",
    "math.bitShiftRight",
    "math.greatest",
    "math.least",
    // Kubernetes lists and regex libraries
    "isSorted",
    "sum",
    "min",
    "max",
    "find",
    "findAll",
];

/// Functions of the Kubernetes authorizer library.
const AUTHORIZER_FUNCTIONS: &[&str] = &[
    "group",
    "resource",
    "subresource",
    "namespace",
    "name",
    "check",
    "path",
    "serviceAccount",
    "allowed",
    "reason",
    "errored",
    "error",
];

/// Given `root` and the fields selected on it, the first field its type does not have.
pub type FieldLookup<'a> = dyn Fn(&str, &[&str]) -> Option<String> + 'a;

/// What an expression may refer to when compiled.
#[derive(Default)]
pub struct Declarations<'a> {
    /// Variable names (`self`, `oldSelf`, `object`, `authorizer.requestResource`, ...).
    pub variables: Vec<String>,
    /// Whether the authorizer library is available.
    pub authorizer: bool,
    /// Finds the first field of `root.f1.f2...` its type does not have (`None`: all defined).
    pub undefined_field: Option<&'a FieldLookup<'a>>,
}

/// A compiled expression.
pub struct Expression {
    source: String,
    program: Program,
    variables: BTreeSet<String>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

impl Expression {
    /// Compiles `source`, checking its names against `declarations`.
    pub fn compile(source: &str, declarations: &Declarations) -> Result<Self, CelError> {
        let program = ENVIRONMENT
            .compile(source)
            .map_err(|e| CelError::Compile(cel_go_snippets(&e.to_string())))?;
        let mut checker = Checker {
            declarations,
            program: &program,
            source,
            errors: Vec::new(),
            used: BTreeSet::new(),
        };
        checker.check(program.expression(), &mut Vec::new());
        if !checker.errors.is_empty() {
            return Err(CelError::Compile(checker.errors.join("\n")));
        }
        let variables = checker.used;
        Ok(Self {
            source: source.to_string(),
            program,
            variables,
        })
    }

    /// Whether the expression refers to variable `name` (e.g. `oldSelf` for transition rules).
    pub fn uses(&self, name: &str) -> bool {
        self.variables.contains(name)
    }

    /// Evaluates with `activation`'s variables.
    pub fn evaluate(&self, activation: &Activation) -> Result<CelValue, CelError> {
        let mut context = Context::with_env(ENVIRONMENT.clone());
        add_kubernetes_functions(&mut context);
        for (name, value) in &activation.variables {
            context.add_variable_from_value(name.clone(), value.clone());
        }
        self.program
            .execute(&context)
            .map_err(|e| CelError::Evaluation(cel_go_error(&e)))
    }

    /// Evaluates to a bool; anything else is an evaluation error.
    pub fn evaluate_bool(&self, activation: &Activation) -> Result<bool, CelError> {
        match self.evaluate(activation)? {
            CelValue::Bool(b) => Ok(b),
            other => Err(CelError::Evaluation(format!(
                "expected a bool, got {}",
                other.type_of()
            ))),
        }
    }
}

/// The variables an evaluation sees.
#[derive(Default, Clone)]
pub struct Activation {
    variables: BTreeMap<String, CelValue>,
}

impl Activation {
    /// Binds `name` to a JSON value.
    pub fn bind_json(&mut self, name: &str, value: &Value) -> &mut Self {
        self.bind(name, json_to_cel(value))
    }

    /// Binds `name` to a CEL value.
    pub fn bind(&mut self, name: &str, value: CelValue) -> &mut Self {
        self.variables.insert(name.to_string(), value);
        self
    }

    /// Binds `authorizer` and `authorizer.requestResource` for `user` (admission policies).
    pub fn bind_authorizer(
        &mut self,
        authorizer: Arc<dyn Authorizer + Send + Sync>,
        user: UserInfo,
        request_resource: ResourceAttributes,
    ) -> &mut Self {
        let principal = Principal { authorizer, user };
        let request = Authz::Resource(principal.clone(), request_resource);
        self.bind("authorizer", Authz::Authorizer(principal).into_value());
        self.bind("authorizer.requestResource", request.into_value())
    }
}

/// JSON as CEL sees it: integers `int`, other numbers `double`, objects maps with string keys.
pub fn json_to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => CelValue::Int(i),
            None => CelValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => {
            let map: HashMap<Key, CelValue> = map
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            CelValue::Map(map.into())
        }
    }
}

/// A CEL value as JSON, for the values variables and messages produce (`None` for values JSON
/// cannot hold, such as types and opaque values).
pub fn cel_to_json(value: &CelValue) -> Option<Value> {
    Some(match value {
        CelValue::Null => Value::Null,
        CelValue::Bool(b) => Value::Bool(*b),
        CelValue::Int(i) => Value::from(*i),
        CelValue::UInt(u) => Value::from(*u),
        CelValue::Float(f) => Value::from(*f),
        CelValue::String(s) => Value::String(s.to_string()),
        CelValue::List(items) => {
            Value::Array(items.iter().map(cel_to_json).collect::<Option<_>>()?)
        }
        CelValue::Map(map) => {
            let mut object = serde_json::Map::new();
            for (k, v) in map.map.iter() {
                let key = match k {
                    Key::String(s) => s.to_string(),
                    Key::Int(i) => i.to_string(),
                    Key::Uint(u) => u.to_string(),
                    Key::Bool(b) => b.to_string(),
                };
                object.insert(key, cel_to_json(v)?);
            }
            Value::Object(object)
        }
        _ => return None,
    })
}

/// cel-go's wording for the errors users see most (`no such key: x`, `division by zero`).
fn cel_go_error(error: &ExecutionError) -> String {
    match error {
        ExecutionError::NoSuchKey(key) => format!("no such key: {key}"),
        ExecutionError::DivisionByZero(_) => "division by zero".into(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".into(),
        ExecutionError::Overflow(..) => "integer overflow".into(),
        ExecutionError::IndexOutOfBounds(index) => format!("index out of bounds: {index:?}"),
        ExecutionError::NoSuchOverload(overload) => format!("no such overload: {overload}"),
        ExecutionError::UndeclaredReference(name) => format!("no such attribute: {name}"),
        ExecutionError::FunctionError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The crate's parse errors with cel-go's snippet layout (` | line` / ` | ..^`).
fn cel_go_snippets(message: &str) -> String {
    message.replace("\n| ", "\n | ")
}

/// Walks an expression checking variables, functions and fields.
struct Checker<'a, 'd> {
    declarations: &'a Declarations<'d>,
    program: &'a Program,
    source: &'a str,
    errors: Vec<String>,
    used: BTreeSet<String>,
}

impl Checker<'_, '_> {
    fn error(&mut self, expr: &IdedExpr, message: String) {
        let offset = self
            .program
            .source_info()
            .offset_for(expr.id)
            .map_or(0, |(start, _)| start as usize);
        let before: String = self.source.chars().take(offset).collect();
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count());
        let text = self.source.lines().nth(line - 1).unwrap_or_default();
        self.errors.push(format!(
            "ERROR: <input>:{line}:{}: {message}\n | {text}\n | {}^",
            column + 1,
            ".".repeat(column)
        ));
    }

    fn declared(&self, name: &str, scope: &[String]) -> bool {
        scope.iter().any(|s| s == name) || self.declarations.variables.iter().any(|v| v == name)
    }

    fn check(&mut self, expr: &IdedExpr, scope: &mut Vec<String>) {
        match &expr.expr {
            Expr::Ident(name) => {
                if scope.contains(name) {
                    return;
                }
                if self.declarations.variables.contains(name) {
                    self.used.insert(name.clone());
                } else {
                    self.error(
                        expr,
                        format!("undeclared reference to '{name}' (in container '')"),
                    );
                }
            }
            Expr::Select(select) => {
                if let Some((root, path)) = qualified(expr)
                    && !scope.contains(&root)
                {
                    // `authorizer.requestResource` and the like are variables with dotted names.
                    for len in (1..=path.len()).rev() {
                        let name = format!("{root}.{}", path[..len].join("."));
                        if self.declared(&name, &[]) {
                            self.used.insert(name);
                            return;
                        }
                    }
                    if self.declared(&root, &[]) {
                        self.used.insert(root.clone());
                        let fields: Vec<&str> = path.iter().map(String::as_str).collect();
                        if let Some(check) = self.declarations.undefined_field
                            && let Some(field) = check(&root, &fields)
                        {
                            self.error(expr, format!("undefined field '{field}'"));
                        }
                        return;
                    }
                }
                self.check(&select.operand, scope);
            }
            Expr::Call(call) => {
                // `math.abs(x)`, `strings.quote(s)`, `optional.of(v)`: a namespaced function.
                let namespaced = match call.target.as_deref().map(|t| &t.expr) {
                    Some(Expr::Ident(ns)) if !self.declared(ns, scope) => {
                        Some(format!("{ns}.{}", call.func_name))
                    }
                    _ => None,
                };
                let name = namespaced.as_deref().unwrap_or(&call.func_name);
                let known = FUNCTIONS.contains(&name)
                    || (self.declarations.authorizer && AUTHORIZER_FUNCTIONS.contains(&name))
                    || call.func_name.starts_with(['_', '@', '!', '-']);
                if !known {
                    self.error(
                        expr,
                        format!("undeclared reference to '{name}' (in container '')"),
                    );
                }
                if let (Some(target), None) = (&call.target, &namespaced) {
                    self.check(target, scope);
                }
                for arg in &call.args {
                    self.check(arg, scope);
                }
            }
            Expr::Comprehension(comprehension) => {
                self.check(&comprehension.iter_range, scope);
                self.check(&comprehension.accu_init, scope);
                let depth = scope.len();
                scope.push(comprehension.iter_var.clone());
                scope.extend(comprehension.iter_var2.clone());
                scope.push(comprehension.accu_var.clone());
                self.check(&comprehension.loop_cond, scope);
                self.check(&comprehension.loop_step, scope);
                self.check(&comprehension.result, scope);
                scope.truncate(depth);
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.check(element, scope);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(e) => {
                            self.check(&e.key, scope);
                            self.check(&e.value, scope);
                        }
                        EntryExpr::StructField(f) => self.check(&f.value, scope),
                    }
                }
            }
            Expr::Struct(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

/// `a.b.c` (plain selections on an identifier) as `("a", ["b", "c"])`; a `has()` test counts.
fn qualified(expr: &IdedExpr) -> Option<(String, Vec<String>)> {
    let mut path = Vec::new();
    let mut current = expr;
    loop {
        match &current.expr {
            Expr::Select(select) => {
                path.push(select.field.clone());
                current = &select.operand;
            }
            Expr::Ident(root) => {
                path.reverse();
                return Some((root.clone(), path));
            }
            _ => return None,
        }
    }
}

/// Adds the Kubernetes library functions the `cel` crate lacks.
fn add_kubernetes_functions(context: &mut Context) {
    // Registering only fails for names the environment declares, which these are not.
    let _ = context.add_function("isSorted", is_sorted);
    let _ = context.add_function("sum", sum);
    let _ = context.add_function("min", |This(list): This<Arc<Vec<CelValue>>>| {
        extreme(&list, "min", std::cmp::Ordering::Less)
    });
    let _ = context.add_function("max", |This(list): This<Arc<Vec<CelValue>>>| {
        extreme(&list, "max", std::cmp::Ordering::Greater)
    });
    let _ = context.add_function("find", find);
    let _ = context.add_function("findAll", find_all);
    for name in AUTHORIZER_FUNCTIONS {
        let function = *name;
        let _ = context.add_function(
            name,
            move |This(this): This<CelValue>,
                  cel::extractors::Arguments(args): cel::extractors::Arguments| {
                authz_call(function, &this, &args)
            },
        );
    }
}

fn compare(a: &CelValue, b: &CelValue) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (CelValue::Int(a), CelValue::Int(b)) => Some(a.cmp(b)),
        (CelValue::UInt(a), CelValue::UInt(b)) => Some(a.cmp(b)),
        (CelValue::Float(a), CelValue::Float(b)) => a.partial_cmp(b),
        (CelValue::String(a), CelValue::String(b)) => Some(a.cmp(b)),
        (CelValue::Bool(a), CelValue::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn is_sorted(This(list): This<Arc<Vec<CelValue>>>) -> Result<bool, ExecutionError> {
    for pair in list.windows(2) {
        match compare(&pair[0], &pair[1]) {
            Some(std::cmp::Ordering::Greater) => return Ok(false),
            Some(_) => {}
            None => {
                return Err(ExecutionError::function_error(
                    "isSorted",
                    "no such overload",
                ));
            }
        }
    }
    Ok(true)
}

fn sum(This(list): This<Arc<Vec<CelValue>>>) -> Result<CelValue, ExecutionError> {
    let mut total = CelValue::Int(0);
    for (i, item) in list.iter().enumerate() {
        total = match (&total, item) {
            (_, v) if i == 0 => v.clone(),
            (CelValue::Int(a), CelValue::Int(b)) => CelValue::Int(
                a.checked_add(*b)
                    .ok_or_else(|| ExecutionError::function_error("sum", "integer overflow"))?,
            ),
            (CelValue::UInt(a), CelValue::UInt(b)) => CelValue::UInt(
                a.checked_add(*b)
                    .ok_or_else(|| ExecutionError::function_error("sum", "integer overflow"))?,
            ),
            (CelValue::Float(a), CelValue::Float(b)) => CelValue::Float(a + b),
            _ => return Err(ExecutionError::function_error("sum", "no such overload")),
        };
    }
    Ok(total)
}

fn extreme(
    list: &[CelValue],
    function: &str,
    wanted: std::cmp::Ordering,
) -> Result<CelValue, ExecutionError> {
    let mut best = list.first().ok_or_else(|| {
        ExecutionError::function_error(function, format!("{function} called on empty list"))
    })?;
    for item in &list[1..] {
        match compare(item, best) {
            Some(order) if order == wanted => best = item,
            Some(_) => {}
            None => return Err(ExecutionError::function_error(function, "no such overload")),
        }
    }
    Ok(best.clone())
}

fn regex(pattern: &str, function: &str) -> Result<regex::Regex, ExecutionError> {
    regex::Regex::new(pattern).map_err(|e| ExecutionError::function_error(function, e))
}

fn find(This(text): This<Arc<String>>, pattern: Arc<String>) -> Result<CelValue, ExecutionError> {
    let found = regex(&pattern, "find")?
        .find(&text)
        .map_or("", |m| m.as_str())
        .to_string();
    Ok(CelValue::String(Arc::new(found)))
}

fn find_all(
    This(text): This<Arc<String>>,
    pattern: Arc<String>,
) -> Result<CelValue, ExecutionError> {
    let found: Vec<CelValue> = regex(&pattern, "findAll")?
        .find_iter(&text)
        .map(|m| CelValue::String(Arc::new(m.as_str().to_string())))
        .collect();
    Ok(CelValue::List(Arc::new(found)))
}

/// Who the authorizer library asks about, and whom it asks.
#[derive(Clone)]
struct Principal {
    authorizer: Arc<dyn Authorizer + Send + Sync>,
    user: UserInfo,
}

/// The values of the authorizer library (`Authorizer`, `PathCheck`, `GroupCheck`,
/// `ResourceCheck`, `Decision` upstream).
#[derive(Clone)]
enum Authz {
    Authorizer(Principal),
    Path(Principal, String),
    Group(Principal, String),
    Resource(Principal, ResourceAttributes),
    Decision(Result<Decision, String>),
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Authorizer(p) => write!(f, "Authorizer({})", p.user.username),
            Self::Path(_, path) => write!(f, "PathCheck({path})"),
            Self::Group(_, group) => write!(f, "GroupCheck({group})"),
            Self::Resource(_, r) => write!(f, "ResourceCheck({r:?})"),
            Self::Decision(d) => write!(f, "Decision({d:?})"),
        }
    }
}

impl PartialEq for Authz {
    fn eq(&self, other: &Self) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

impl Eq for Authz {}

impl Opaque for Authz {
    fn runtime_type_name(&self) -> &str {
        match self {
            Self::Authorizer(_) => "kubernetes.authorization.Authorizer",
            Self::Path(..) => "kubernetes.authorization.PathCheck",
            Self::Group(..) => "kubernetes.authorization.GroupCheck",
            Self::Resource(..) => "kubernetes.authorization.ResourceCheck",
            Self::Decision(_) => "kubernetes.authorization.Decision",
        }
    }
}

impl Authz {
    fn into_value(self) -> CelValue {
        CelValue::Opaque(Arc::new(self))
    }
}

fn string_arg(args: &[CelValue], function: &str) -> Result<String, ExecutionError> {
    match args {
        [CelValue::String(s)] => Ok(s.to_string()),
        _ => Err(ExecutionError::function_error(
            function,
            "expected one string argument",
        )),
    }
}

/// One call of the authorizer library: `receiver.function(args)`.
fn authz_call(
    function: &str,
    receiver: &CelValue,
    args: &[CelValue],
) -> Result<CelValue, ExecutionError> {
    let authz = match receiver {
        CelValue::Opaque(o) => o.downcast_ref::<Authz>(),
        _ => None,
    }
    .ok_or_else(|| {
        ExecutionError::function_error(
            function,
            format!("no such overload: {function} on {}", receiver.type_of()),
        )
    })?;
    let unsupported = || {
        ExecutionError::function_error(
            function,
            format!("no such overload: {}.{function}", authz.runtime_type_name()),
        )
    };
    Ok(match (authz, function) {
        (Authz::Authorizer(p), "group") => {
            Authz::Group(p.clone(), string_arg(args, function)?).into_value()
        }
        (Authz::Authorizer(p), "path") => {
            Authz::Path(p.clone(), string_arg(args, function)?).into_value()
        }
        (Authz::Authorizer(p), "serviceAccount") => match args {
            [CelValue::String(ns), CelValue::String(name)] => {
                // Upstream checks the service account's own groups, without system:authenticated.
                let mut user = UserInfo::service_account(ns, name);
                user.groups
                    .retain(|g| g != super::rbac::SYSTEM_AUTHENTICATED);
                Authz::Authorizer(Principal {
                    authorizer: p.authorizer.clone(),
                    user,
                })
                .into_value()
            }
            _ => {
                return Err(ExecutionError::function_error(
                    function,
                    "expected namespace and name",
                ));
            }
        },
        (Authz::Group(p, group), "resource") => Authz::Resource(
            p.clone(),
            ResourceAttributes {
                api_group: group.clone(),
                api_version: "*".into(),
                resource: string_arg(args, function)?,
                ..ResourceAttributes::default()
            },
        )
        .into_value(),
        (Authz::Resource(p, r), "subresource" | "namespace" | "name") => {
            let mut r = r.clone();
            let value = string_arg(args, function)?;
            match function {
                "subresource" => r.subresource = value,
                "namespace" => r.namespace = value,
                _ => r.name = value,
            }
            Authz::Resource(p.clone(), r).into_value()
        }
        (Authz::Resource(p, r), "check") => {
            let attributes = Attributes::Resource(ResourceAttributes {
                verb: string_arg(args, function)?,
                ..r.clone()
            });
            Authz::Decision(p.authorizer.authorize(&p.user, &attributes)).into_value()
        }
        (Authz::Path(p, path), "check") => {
            let attributes = Attributes::non_resource(&string_arg(args, function)?, path);
            Authz::Decision(p.authorizer.authorize(&p.user, &attributes)).into_value()
        }
        (Authz::Decision(d), "allowed") => CelValue::Bool(matches!(d, Ok(d) if d.allowed())),
        (Authz::Decision(d), "reason") => CelValue::String(Arc::new(
            d.as_ref()
                .map(|d| d.reason().to_string())
                .unwrap_or_default(),
        )),
        (Authz::Decision(d), "errored") => CelValue::Bool(d.is_err()),
        (Authz::Decision(d), "error") => {
            CelValue::String(Arc::new(d.as_ref().err().cloned().unwrap_or_default()))
        }
        _ => return Err(unsupported()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::rbac::Rbac;
    use serde_json::json;

    fn declarations(variables: &[&str]) -> Declarations<'static> {
        Declarations {
            variables: variables.iter().map(|v| v.to_string()).collect(),
            ..Declarations::default()
        }
    }

    fn eval(source: &str, object: Value) -> Result<CelValue, CelError> {
        let expression = Expression::compile(source, &declarations(&["self"]))?;
        expression.evaluate(Activation::default().bind_json("self", &object))
    }

    #[test]
    fn macros_and_has_work_on_json_objects() {
        let spec = json!({"containers": [{"name": "a", "port": 80}, {"name": "b", "port": 81}], "paused": false});
        let truthy = [
            "self.containers.all(c, c.port > 0)",
            "self.containers.exists(c, c.name == 'b')",
            "self.containers.exists_one(c, c.port == 80)",
            "self.containers.map(c, c.name) == ['a', 'b']",
            "size(self.containers.filter(c, c.port > 80)) == 1",
            "has(self.paused) && !has(self.shutdown)",
            "size(self.containers) == 2",
        ];
        for source in truthy {
            assert_eq!(
                eval(source, spec.clone()),
                Ok(CelValue::Bool(true)),
                "{source}"
            );
        }
    }

    #[test]
    fn string_functions_kubernetes_rules_use_are_available() {
        let object = json!({"name": "Web-1", "image": "registry.example/app:v1"});
        for source in [
            "self.name.lowerAscii() == 'web-1'",
            "self.name.startsWith('Web') && self.name.endsWith('-1') && self.name.contains('b-')",
            "self.name.matches('^[A-Za-z]+-[0-9]$')",
            "self.image.split(':')[1] == 'v1'",
            "self.image.find('[a-z]+') == 'registry'",
            "self.image.findAll('[0-9]') == ['1']",
            "size('héllo') == 5",
        ] {
            assert_eq!(
                eval(source, object.clone()),
                Ok(CelValue::Bool(true)),
                "{source}"
            );
        }
    }

    #[test]
    fn list_functions_of_the_kubernetes_library_work() {
        let object = json!({"n": [3, 1, 2], "sorted": ["a", "b"]});
        for source in [
            "self.n.sum() == 6",
            "self.n.min() == 1 && self.n.max() == 3",
            "!self.n.isSorted() && self.sorted.isSorted()",
            "[].sum() == 0",
        ] {
            assert_eq!(
                eval(source, object.clone()),
                Ok(CelValue::Bool(true)),
                "{source}"
            );
        }
        assert!(matches!(
            eval("[].min() == 0", object),
            Err(CelError::Evaluation(_))
        ));
    }

    #[test]
    fn undeclared_variables_and_functions_fail_to_compile_as_cel_go_reports() {
        let error = Expression::compile("self.x == other", &declarations(&["self"])).unwrap_err();
        assert_eq!(
            error,
            CelError::Compile("ERROR: <input>:1:11: undeclared reference to 'other' (in container '')\n | self.x == other\n | ..........^".into())
        );
        assert!(matches!(
            Expression::compile("self.x.frobnicate()", &declarations(&["self"])),
            Err(CelError::Compile(_))
        ));
        assert!(matches!(
            Expression::compile("self.x ==", &declarations(&["self"])),
            Err(CelError::Compile(_))
        ));
        assert!(
            Expression::compile(
                "self.all(x, x > 0) && math.abs(-1) == 1",
                &declarations(&["self"])
            )
            .is_ok()
        );
    }

    #[test]
    fn undefined_fields_are_reported_when_a_type_is_known() {
        let fields = |root: &str, path: &[&str]| {
            (root == "self" && path.first() != Some(&"replicas")).then(|| path[0].to_string())
        };
        let declarations = Declarations {
            variables: vec!["self".into()],
            undefined_field: Some(&fields),
            ..Declarations::default()
        };
        assert!(Expression::compile("self.replicas > 0", &declarations).is_ok());
        let Err(CelError::Compile(message)) =
            Expression::compile("has(self.replica)", &declarations)
        else {
            panic!("compiled");
        };
        assert!(message.contains("undefined field 'replica'"), "{message}");
    }

    #[test]
    fn runtime_errors_use_cel_go_wording() {
        assert_eq!(
            eval("self.missing == 1", json!({})),
            Err(CelError::Evaluation("no such key: missing".into()))
        );
        assert_eq!(
            eval("1 / self.zero == 1", json!({"zero": 0})),
            Err(CelError::Evaluation("division by zero".into()))
        );
    }

    #[test]
    fn uses_tells_transition_rules_apart() {
        let expression =
            Expression::compile("self == oldSelf", &declarations(&["self", "oldSelf"])).unwrap();
        assert!(expression.uses("oldSelf"));
        let expression = Expression::compile(
            "self.all(oldSelf, oldSelf > 0)",
            &declarations(&["self", "oldSelf"]),
        )
        .unwrap();
        assert!(
            !expression.uses("oldSelf"),
            "a comprehension variable shadows it"
        );
    }

    #[test]
    fn json_round_trips_through_cel_values() {
        let value = json!({"a": [1, 2.5, "x", true, null], "b": {"c": -3}});
        assert_eq!(cel_to_json(&json_to_cel(&value)), Some(value));
    }

    fn exec_rbac() -> Arc<dyn Authorizer + Send + Sync> {
        let rbac = Rbac::from_objects(&[
            json!({"kind": "Role", "metadata": {"namespace": "team", "name": "exec"},
                "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"namespace": "team", "name": "exec"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "exec"},
                "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "bot"}]}),
        ])
        .unwrap();
        Arc::new(rbac)
    }

    fn authz_eval(source: &str, user: UserInfo) -> Result<CelValue, CelError> {
        let declarations = Declarations {
            variables: vec!["authorizer".into(), "authorizer.requestResource".into()],
            authorizer: true,
            ..Declarations::default()
        };
        let expression = Expression::compile(source, &declarations)?;
        let request = ResourceAttributes {
            api_group: "relaunch.dev".into(),
            resource: "containerrecreaterequests".into(),
            namespace: "team".into(),
            ..ResourceAttributes::default()
        };
        let mut activation = Activation::default();
        activation.bind_authorizer(exec_rbac(), user, request);
        expression.evaluate(&activation)
    }

    #[test]
    fn authorizer_library_answers_with_rbac_for_the_requesting_user() {
        let exec = "authorizer.group('').resource('pods').subresource('exec').namespace('team').name('web-0').check('create').allowed()";
        assert_eq!(
            authz_eval(exec, UserInfo::new("alice", &[])),
            Ok(CelValue::Bool(true))
        );
        assert_eq!(
            authz_eval(exec, UserInfo::new("bob", &[])),
            Ok(CelValue::Bool(false))
        );
        let elsewhere = exec.replace("'team'", "'other'");
        assert_eq!(
            authz_eval(&elsewhere, UserInfo::new("alice", &[])),
            Ok(CelValue::Bool(false))
        );
        let reason = "authorizer.group('').resource('pods').subresource('exec').namespace('team').check('create').reason()";
        assert_eq!(
            authz_eval(reason, UserInfo::new("alice", &[])),
            Ok(CelValue::String(Arc::new(
                r#"RBAC: allowed by RoleBinding "exec/team" of Role "exec" to User "alice""#.into()
            )))
        );
        assert_eq!(
            authz_eval(
                "authorizer.path('/healthz').check('get').errored()",
                UserInfo::new("alice", &[])
            ),
            Ok(CelValue::Bool(false))
        );
    }

    #[test]
    fn authorizer_service_account_and_request_resource_work() {
        let sa = "authorizer.serviceAccount('team', 'bot').group('').resource('pods').subresource('exec').namespace('team').check('create').allowed()";
        assert_eq!(
            authz_eval(sa, UserInfo::new("bob", &[])),
            Ok(CelValue::Bool(true))
        );
        let request = "authorizer.requestResource.check('create').allowed()";
        assert_eq!(
            authz_eval(request, UserInfo::new("alice", &[])),
            Ok(CelValue::Bool(false))
        );
        let admin = UserInfo::new("root", &[crate::apiserver::rbac::SYSTEM_MASTERS]);
        assert_eq!(authz_eval(request, admin), Ok(CelValue::Bool(true)));
    }
}
