//! `kubectl relaunch status [NAME]`: RollingRestarts, ContainerRecreateRequests, ScaleDowns and
//! Drains as `kubectl get` prints them (the CRDs' printer columns), as a `kind: List` in JSON or YAML, or
//! one object in detail.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use serde::Serialize;
use serde_json::{Value, json};

use super::error::CliError;
use super::parse::{self, RelaunchKind};
use super::progress::{bar, short_id};
use super::session::{Call, REQUESTS, ROLLOUTS, ResourceKind, Session};
use relaunch_api::reload::ANNOTATION_RELOAD_CHANGED;
use relaunch_api::{ContainerRecreateRequest, Drain, LABEL_NODE_NAME, RollingRestart, ScaleDown};

pub const DRAINS: ResourceKind = ResourceKind {
    plural: "drains",
    kind: "drain",
};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// A RollingRestart or ContainerRecreateRequest to show in detail: NAME (a RollingRestart
    /// is looked up first), rr/NAME or crr/NAME.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// List in all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format: json or yaml (a kind: List, or the object), or wide (more columns).
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Yaml,
    Wide,
}

/// Runs the command.
pub async fn run(session: &Session, args: &StatusArgs) -> Result<(), CliError> {
    match &args.name {
        Some(name) => {
            if args.all_namespaces {
                return Err(CliError::Usage(
                    "status NAME looks in one namespace: use -n NAMESPACE instead of -A".into(),
                ));
            }
            show_one(session, name, args.output).await
        }
        None => show_all(session, args).await,
    }
}

async fn show_all(session: &Session, args: &StatusArgs) -> Result<(), CliError> {
    let namespace = (!args.all_namespaces).then_some(session.namespace.as_str());
    let (rollouts, requests): (Api<RollingRestart>, Api<ContainerRecreateRequest>) = match namespace
    {
        Some(ns) => (
            Api::namespaced(session.client.clone(), ns),
            Api::namespaced(session.client.clone(), ns),
        ),
        None => (
            Api::all(session.client.clone()),
            Api::all(session.client.clone()),
        ),
    };
    let params = ListParams::default();
    let mut rollouts = session
        .call(Call::list(ROLLOUTS, namespace), rollouts.list(&params))
        .await?
        .items;
    let mut requests = session
        .call(Call::list(REQUESTS, namespace), requests.list(&params))
        .await?
        .items;
    let mut scaledowns: Vec<ScaleDown> =
        list_if_installed(session, super::scale::SCALEDOWNS, namespace).await?;
    let mut drains: Vec<Drain> = list_if_installed(session, DRAINS, namespace).await?;
    scaledowns.sort_by_key(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()));
    drains.sort_by_key(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()));
    rollouts.sort_by_key(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()));
    requests.sort_by_key(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()));
    match args.output {
        Some(Output::Json) | Some(Output::Yaml) => {
            let mut items = Vec::new();
            for r in &rollouts {
                items.push(to_value(r)?);
            }
            for r in &requests {
                items.push(to_value(r)?);
            }
            for s in &scaledowns {
                items.push(to_value(s)?);
            }
            for d in &drains {
                items.push(to_value(d)?);
            }
            let list = json!({
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {"resourceVersion": ""},
                "items": items,
            });
            print_structured(&list, args.output)
        }
        output => {
            if rollouts.is_empty()
                && requests.is_empty()
                && scaledowns.is_empty()
                && drains.is_empty()
            {
                match namespace {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
                return Ok(());
            }
            let wide = output == Some(Output::Wide);
            let now = Timestamp::now();
            let mut tables = Vec::new();
            if !rollouts.is_empty() {
                tables.push(rollout_table(&rollouts, namespace.is_none(), wide, now));
            }
            if !requests.is_empty() {
                tables.push(request_table(&requests, namespace.is_none(), wide, now));
            }
            if !scaledowns.is_empty() {
                tables.push(scaledown_table(&scaledowns, namespace.is_none(), wide, now));
            }
            if !drains.is_empty() {
                tables.push(drain_table(&drains, namespace.is_none(), wide, now));
            }
            print!("{}", tables.join("\n"));
            Ok(())
        }
    }
}

async fn show_one(session: &Session, text: &str, output: Option<Output>) -> Result<(), CliError> {
    let (kind, name) = parse::relaunch_object(text).map_err(CliError::Usage)?;
    let ns = session.namespace.as_str();
    let now = Timestamp::now();
    if kind != Some(RelaunchKind::ContainerRecreateRequest) {
        let api: Api<RollingRestart> = Api::namespaced(session.client.clone(), ns);
        match session
            .call(Call::get(ROLLOUTS, &name, ns), api.get(&name))
            .await
        {
            Ok(rollout) => {
                return match output {
                    Some(Output::Json | Output::Yaml) => {
                        print_structured(&to_value(&rollout)?, output)
                    }
                    _ => {
                        print!("{}", describe_rollout(&rollout, now));
                        Ok(())
                    }
                };
            }
            Err(CliError::NotFound { .. }) if kind.is_none() => {}
            Err(e) => return Err(e),
        }
    }
    let api: Api<ContainerRecreateRequest> = Api::namespaced(session.client.clone(), ns);
    let request = match session
        .call(Call::get(REQUESTS, &name, ns), api.get(&name))
        .await
    {
        Ok(request) => request,
        Err(CliError::NotFound { .. }) if kind.is_none() => {
            return Err(CliError::Invalid(format!(
                "no rollingrestart or containerrecreaterequest {name} in namespace {ns}"
            )));
        }
        Err(e) => return Err(e),
    };
    match output {
        Some(Output::Json | Output::Yaml) => print_structured(&to_value(&request)?, output),
        _ => {
            print!("{}", describe_request(&request, now));
            Ok(())
        }
    }
}

fn to_value(object: &impl Serialize) -> Result<Value, CliError> {
    serde_json::to_value(object).map_err(|e| CliError::Output(e.to_string()))
}

fn print_structured(value: &Value, output: Option<Output>) -> Result<(), CliError> {
    let text = match output {
        Some(Output::Yaml) => {
            serde_yaml::to_string(value).map_err(|e| CliError::Output(e.to_string()))?
        }
        _ => {
            let mut text =
                serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))?;
            text.push('\n');
            text
        }
    };
    print!("{text}");
    Ok(())
}

/// What a configuration change that started `rollout` changed (`configmap/app,secret/tls`),
/// if one did.
pub fn config_change(rollout: &RollingRestart) -> Option<&str> {
    rollout
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_RELOAD_CHANGED)
        .map(String::as_str)
}

/// The RollingRestart table (printer columns Phase, Target, Restarted, Total, Age; wide adds
/// Message). When a configuration change started one of them, a CHANGED column names what
/// changed (`-` for the others).
pub fn rollout_table(
    rollouts: &[RollingRestart],
    all_namespaces: bool,
    wide: bool,
    now: Timestamp,
) -> String {
    let mut headers = vec!["NAME", "PHASE", "TARGET", "RESTARTED", "TOTAL", "AGE"];
    let changes = rollouts.iter().any(|r| config_change(r).is_some());
    if changes {
        headers.push("CHANGED");
    }
    if wide {
        headers.push("MESSAGE");
    }
    let rows = rollouts
        .iter()
        .map(|r| {
            let status = r.status.clone().unwrap_or_default();
            let target = status.target.clone().unwrap_or_else(|| {
                r.spec
                    .target
                    .workload_ref
                    .as_ref()
                    .map(|w| format!("{}/{}", w.kind, w.name))
                    .unwrap_or_else(|| "selector".into())
            });
            let mut row = vec![
                format!(
                    "rollingrestart.relaunch.dev/{}",
                    r.metadata.name.as_deref().unwrap_or_default()
                ),
                r.status
                    .as_ref()
                    .map(|s| format!("{:?}", s.phase))
                    .unwrap_or_default(),
                target,
                status.restarted.to_string(),
                status.total.to_string(),
                age(r.metadata.creation_timestamp.as_ref(), now),
            ];
            if changes {
                row.push(config_change(r).unwrap_or("-").to_string());
            }
            if wide {
                row.push(status.message.unwrap_or_default());
            }
            with_namespace(row, all_namespaces, r.metadata.namespace.as_deref())
        })
        .collect();
    table(&with_namespace_header(headers, all_namespaces), rows)
}

/// The ContainerRecreateRequest table (printer columns Phase, Pod, Node, Age; wide adds
/// Containers and Message).
pub fn request_table(
    requests: &[ContainerRecreateRequest],
    all_namespaces: bool,
    wide: bool,
    now: Timestamp,
) -> String {
    let mut headers = vec!["NAME", "PHASE", "POD", "NODE", "AGE"];
    if wide {
        headers.extend(["CONTAINERS", "MESSAGE"]);
    }
    let rows = requests
        .iter()
        .map(|r| {
            let mut row = vec![
                format!(
                    "containerrecreaterequest.relaunch.dev/{}",
                    r.metadata.name.as_deref().unwrap_or_default()
                ),
                r.status
                    .as_ref()
                    .map(|s| s.phase.as_str().to_string())
                    .unwrap_or_default(),
                r.spec.pod_name.clone(),
                r.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_NODE_NAME))
                    .cloned()
                    .unwrap_or_default(),
                age(r.metadata.creation_timestamp.as_ref(), now),
            ];
            if wide {
                let containers: Vec<&str> =
                    r.spec.containers.iter().map(|c| c.name.as_str()).collect();
                row.push(containers.join(","));
                row.push(
                    r.status
                        .as_ref()
                        .and_then(|s| s.message.clone())
                        .unwrap_or_default(),
                );
            }
            with_namespace(row, all_namespaces, r.metadata.namespace.as_deref())
        })
        .collect();
    table(&with_namespace_header(headers, all_namespaces), rows)
}

fn with_namespace_header(mut headers: Vec<&str>, all_namespaces: bool) -> Vec<&str> {
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    headers
}

fn with_namespace(mut row: Vec<String>, all_namespaces: bool, ns: Option<&str>) -> Vec<String> {
    if all_namespaces {
        row.insert(0, ns.unwrap_or_default().to_string());
    }
    row
}

/// Columns padded to their widest cell and three spaces apart, as kubectl prints them.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 3;
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Age as kubectl prints it: `45s`, `3m20s`, `15m`, `2h10m`, `3d4h`, `120d`, `2y30d`.
pub fn age(created: Option<&Time>, now: Timestamp) -> String {
    let Some(created) = created else {
        return "<unknown>".into();
    };
    let elapsed: SignedDuration = now.duration_since(created.0);
    human_duration(elapsed.as_secs().max(0))
}

fn human_duration(seconds: i64) -> String {
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    let years = days / 365;
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if hours < 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if days < 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if years < 2 {
        format!("{days}d")
    } else if years < 8 {
        match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        }
    } else {
        format!("{years}y")
    }
}

fn when(time: Option<&Time>, now: Timestamp) -> String {
    match time {
        Some(t) => format!("{} ({} ago)", t.0, age(Some(t), now)),
        None => "-".into(),
    }
}

/// One RollingRestart in detail, like `kubectl describe`.
pub fn describe_rollout(rollout: &RollingRestart, now: Timestamp) -> String {
    let status = rollout.status.clone().unwrap_or_default();
    let spec = &rollout.spec;
    let mut fields: Vec<(&str, String)> = vec![
        ("Name", rollout.metadata.name.clone().unwrap_or_default()),
        (
            "Namespace",
            rollout.metadata.namespace.clone().unwrap_or_default(),
        ),
        (
            "Target",
            spec.target
                .workload_ref
                .as_ref()
                .map(|w| format!("{}/{}", w.kind, w.name))
                .unwrap_or_else(|| "pod selector".into()),
        ),
        (
            "Phase",
            match &rollout.status {
                Some(s) => format!("{:?}", s.phase),
                None => "(no status yet: waiting for the relaunch coordinator)".into(),
            },
        ),
        ("Message", status.message.clone().unwrap_or_default()),
        (
            "Progress",
            format!(
                "{} {}/{} restarted, {} failed, {} in progress",
                bar(status.restarted, status.total, 20),
                status.restarted,
                status.total,
                status.failed,
                status.in_progress
            ),
        ),
        (
            "Batch",
            if status.current_batch.is_empty() {
                format!("{} started", status.batches)
            } else {
                format!(
                    "{} started; current: {}",
                    status.batches,
                    status.current_batch.join(", ")
                )
            },
        ),
    ];
    let s = &spec.strategy;
    let order = s.order.clone().unwrap_or_default();
    let mut strategy = vec![format!(
        "maxUnavailable {}",
        match &s.max_unavailable {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) =>
                n.to_string(),
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(p)) => p.clone(),
            None => "1".into(),
        }
    )];
    strategy.push(format!("order {:?}", order.ordinal.unwrap_or_default()));
    if let Some(role) = &order.role {
        let mut by_role = format!("by label {}:", role.key);
        if !role.first.is_empty() {
            by_role.push_str(&format!(" {} first", role.first.join(",")));
        }
        if !role.last.is_empty() {
            by_role.push_str(&format!(" {} last", role.last.join(",")));
        }
        strategy.push(by_role);
    }
    if let Some(p) = s.partition {
        strategy.push(format!("partition {p}"));
    }
    if s.paused {
        strategy.push("paused".into());
    }
    if spec.abort {
        strategy.push("abort".into());
    }
    fields.push(("Strategy", strategy.join(", ")));
    if !spec.containers.is_empty() {
        fields.push(("Containers", spec.containers.join(", ")));
    }
    if let Some(changed) = config_change(rollout) {
        fields.push((
            "Started by",
            format!("a configuration change: {changed} (relaunch.dev/reload)"),
        ));
    }
    fields.push(("Started", when(status.start_time.as_ref(), now)));
    fields.push(("Completed", when(status.completion_time.as_ref(), now)));
    let mut out = fields_text(&fields);
    if !status.pods.is_empty() {
        out.push_str("Pods:\n");
        let rows = status
            .pods
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.request.clone(),
                    p.phase.as_str().to_string(),
                    p.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&indent(&table(
            &["POD", "REQUEST", "PHASE", "MESSAGE"],
            rows,
        )));
    }
    out.push_str(&conditions_text(&status.conditions));
    out
}

/// One ContainerRecreateRequest in detail, like `kubectl describe`.
pub fn describe_request(request: &ContainerRecreateRequest, now: Timestamp) -> String {
    let status = request.status.clone().unwrap_or_default();
    let node = request
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_NODE_NAME))
        .cloned()
        .unwrap_or_else(|| "-".into());
    let fields: Vec<(&str, String)> = vec![
        ("Name", request.metadata.name.clone().unwrap_or_default()),
        (
            "Namespace",
            request.metadata.namespace.clone().unwrap_or_default(),
        ),
        ("Pod", request.spec.pod_name.clone()),
        ("Node", node),
        (
            "Phase",
            match &request.status {
                Some(s) => s.phase.as_str().to_string(),
                None => "(no status yet: waiting for the relaunch coordinator)".into(),
            },
        ),
        ("Message", status.message.clone().unwrap_or_default()),
        ("Started", when(status.start_time.as_ref(), now)),
        ("Completed", when(status.completion_time.as_ref(), now)),
    ];
    let mut out = fields_text(&fields);
    out.push_str("Containers:\n");
    let rows = request
        .spec
        .containers
        .iter()
        .map(|c| {
            let state = status
                .container_recreate_states
                .iter()
                .find(|s| s.name == c.name);
            let id = |v: Option<&String>| v.map(|s| short_id(s).to_string()).unwrap_or_default();
            vec![
                c.name.clone(),
                state
                    .map(|s| format!("{:?}", s.phase))
                    .unwrap_or_else(|| "Pending".into()),
                state
                    .and_then(|s| s.restart_count)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                id(state.and_then(|s| s.previous_container_id.as_ref())),
                id(state.and_then(|s| s.new_container_id.as_ref())),
                state.and_then(|s| s.message.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&indent(&table(
        &["NAME", "PHASE", "RESTARTS", "PREVIOUS", "NEW", "MESSAGE"],
        rows,
    )));
    out.push_str(&conditions_text(&status.conditions));
    out
}

fn fields_text(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            format!("{:<width$} {v}", format!("{k}:"))
                .trim_end()
                .to_string()
                + "\n"
        })
        .collect()
}

fn conditions_text(conditions: &[relaunch_api::Condition]) -> String {
    if conditions.is_empty() {
        return String::new();
    }
    let rows = conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    format!(
        "Conditions:\n{}",
        indent(&table(&["TYPE", "STATUS", "REASON", "MESSAGE"], rows))
    )
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// The ScaleDown table (StatefulSet, Replicas, Phase, Leaving, Progress, Age; wide adds
/// Message).
pub fn scaledown_table(
    scaledowns: &[ScaleDown],
    all_namespaces: bool,
    wide: bool,
    now: Timestamp,
) -> String {
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "SCALEDOWN",
        "STATEFULSET",
        "REPLICAS",
        "PHASE",
        "LEAVING",
        "PROGRESS",
        "AGE",
    ]);
    if wide {
        headers.push("MESSAGE");
    }
    let rows = scaledowns
        .iter()
        .map(|s| {
            let status = s.status.clone().unwrap_or_default();
            let mut row = Vec::new();
            if all_namespaces {
                row.push(s.metadata.namespace.clone().unwrap_or_default());
            }
            let replicas = match status.expected_replicas {
                Some(now) => format!("{now} -> {}", s.spec.replicas),
                None => format!("-> {}", s.spec.replicas),
            };
            row.extend([
                s.metadata.name.clone().unwrap_or_default(),
                s.spec.stateful_set_name.clone(),
                replicas,
                format!("{:?}", status.phase),
                status
                    .current
                    .as_ref()
                    .filter(|_| !status.phase.is_finished())
                    .map(|c| c.pod_name.clone())
                    .unwrap_or_else(|| "-".into()),
                status.progress.clone().unwrap_or_else(|| "-".into()),
                age(s.metadata.creation_timestamp.as_ref(), now),
            ]);
            if wide {
                row.push(status.message.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    table(&headers, rows)
}

/// The drains table (`kubectl get drains` columns).
pub fn drain_table(drains: &[Drain], all_namespaces: bool, wide: bool, now: Timestamp) -> String {
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "DRAIN",
        "STATEFULSET",
        "ORDINAL",
        "PHASE",
        "ATTEMPTS",
        "POD",
        "AGE",
    ]);
    if wide {
        headers.push("MESSAGE");
    }
    let rows = drains
        .iter()
        .map(|d| {
            let status = d.status.clone().unwrap_or_default();
            let mut row = Vec::new();
            if all_namespaces {
                row.push(d.metadata.namespace.clone().unwrap_or_default());
            }
            row.extend([
                d.metadata.name.clone().unwrap_or_default(),
                d.spec.stateful_set_name.clone(),
                d.spec.ordinal.to_string(),
                format!("{:?}", status.phase),
                status.attempts.to_string(),
                status.pod_name.clone().unwrap_or_else(|| "-".into()),
                age(d.metadata.creation_timestamp.as_ref(), now),
            ]);
            if wide {
                row.push(status.message.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    table(&headers, rows)
}

/// The objects of a relaunch kind newer than requests and rollouts; none when the installation's
/// CRDs or the user's role predate it (read rights on requests and rollouts only).
async fn list_if_installed<K>(
    session: &Session,
    kind: ResourceKind,
    namespace: Option<&str>,
) -> Result<Vec<K>, CliError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(session.client.clone(), ns),
        None => Api::all(session.client.clone()),
    };
    match session
        .call(
            Call::list(kind, namespace),
            api.list(&ListParams::default()),
        )
        .await
    {
        Ok(list) => Ok(list.items),
        Err(
            CliError::NotInstalled { .. } | CliError::NotFound { .. } | CliError::Forbidden { .. },
        ) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_list_like_kubectl_get_drains() {
        let drain: Drain = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "Drain",
            "metadata": {"name": "store-2-ab12", "namespace": "db",
                         "creationTimestamp": "2026-12-05T10:00:00Z"},
            "spec": {"statefulSetName": "store", "statefulSetUID": "u", "ordinal": 2,
                     "claims": [{"name": "data-store-2", "uid": "c"}]},
            "status": {"phase": "Failed", "attempts": 3, "podName": "store-2-drain-3",
                       "message": "the drain pod failed 3 times; the claims are kept"},
        }))
        .unwrap();
        let now: Timestamp = "2026-12-05T10:05:00Z".parse().unwrap();
        let text = drain_table(&[drain], true, true, now);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().take(8).collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAMESPACE",
                "DRAIN",
                "STATEFULSET",
                "ORDINAL",
                "PHASE",
                "ATTEMPTS",
                "POD",
                "AGE"
            ]
        );
        assert_eq!(
            lines[1],
            [
                "db",
                "store-2-ab12",
                "store",
                "2",
                "Failed",
                "3",
                "store-2-drain-3",
                "5m"
            ]
        );
        assert!(text.contains("the drain pod failed 3 times; the claims are kept"));
    }

    #[test]
    fn ages_read_like_kubectls() {
        for (seconds, text) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (240, "4m"),
            (900, "15m"),
            (3 * 3600 + 600, "3h10m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (120 * 86_400, "120d"),
            (3 * 365 * 86_400 + 86_400, "3y1d"),
            (9 * 365 * 86_400, "9y"),
        ] {
            assert_eq!(human_duration(seconds), text, "{seconds}");
        }
    }

    #[test]
    fn tables_align_columns_three_spaces_apart() {
        let text = table(
            &["NAME", "PHASE"],
            vec![
                vec!["a".into(), "Succeeded".into()],
                vec!["longer-name".into(), "".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME          PHASE\na             Succeeded\nlonger-name\n"
        );
    }

    #[test]
    fn request_table_shows_the_printer_columns() {
        let request: ContainerRecreateRequest = serde_json::from_value(json!({
            "apiVersion": "relaunch.dev/v1alpha1", "kind": "ContainerRecreateRequest",
            "metadata": {"name": "db-0-x", "namespace": "data",
                         "labels": {"relaunch.dev/node-name": "node-1"}},
            "spec": {"podName": "db-0", "containers": [{"name": "db"}]},
            "status": {"phase": "Succeeded"},
        }))
        .unwrap();
        let text = request_table(&[request], true, false, Timestamp::now());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAMESPACE", "NAME", "PHASE", "POD", "NODE", "AGE"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "data",
                "containerrecreaterequest.relaunch.dev/db-0-x",
                "Succeeded",
                "db-0",
                "node-1",
                "<unknown>"
            ]
        );
    }

    #[test]
    fn rollouts_started_by_a_configuration_change_say_what_changed() {
        let rollout = |name: &str, annotations: serde_json::Value| -> RollingRestart {
            serde_json::from_value(json!({
                "apiVersion": "relaunch.dev/v1alpha1", "kind": "RollingRestart",
                "metadata": {"name": name, "namespace": "data", "annotations": annotations},
                "spec": {"target": {"workloadRef": {"kind": "StatefulSet", "name": "db"}}},
                "status": {"phase": "Succeeded", "total": 3, "restarted": 3},
            }))
            .unwrap()
        };
        let plain = rollout("by-hand", json!({}));
        let text = rollout_table(std::slice::from_ref(&plain), false, false, Timestamp::now());
        assert!(!text.contains("CHANGED"), "{text}");
        let changed = rollout(
            "statefulset-db-1234abcd",
            json!({ANNOTATION_RELOAD_CHANGED: "configmap/app,secret/tls"}),
        );
        let text = rollout_table(&[plain, changed.clone()], false, false, Timestamp::now());
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][6], "CHANGED");
        assert_eq!(lines[1][6], "-");
        assert_eq!(lines[2][6], "configmap/app,secret/tls");
        let described = describe_rollout(&changed, Timestamp::now());
        assert!(
            described.contains("a configuration change: configmap/app,secret/tls"),
            "{described}"
        );
    }
}
