//! `kubectl relaunch scale sts/NAME --replicas N --decommission-exec CMD`: one ScaleDown for a
//! StatefulSet that exists, checked like the coordinator checks it, and followed live with
//! `--wait` (the leaving pod, the step, the status command's progress, a stall).

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use super::error::CliError;
use super::parse;
use super::progress::{bar, seconds};
use super::session::{Call, ResourceKind, STATEFULSETS, Session};
use super::wait::{View, follow};
use relaunch_api::{
    ClaimPolicy, ExecAction, LeavingStep, SCALEDOWN_STALLED, ScaleDown, ScaleDownPhase,
    ScaleDownSpec, WorkloadKind, validate_scaledown,
};

pub const SCALEDOWNS: ResourceKind = ResourceKind {
    plural: "scaledowns",
    kind: "scaledown",
};

/// After this long without any status, the wait says the coordinator may not be running.
const NO_STATUS_HINT_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// The StatefulSet: sts/NAME (or statefulset/NAME).
    #[arg(value_name = "sts/NAME")]
    pub workload: String,
    /// The replicas to end at (lower than now).
    #[arg(long, value_name = "N")]
    pub replicas: u32,
    /// Run as `sh -c CMD` in each leaving pod before it is removed; moves its data away.
    /// Idempotent: it runs again after any crash. Exit 0: done (or started, with
    /// --status-exec); otherwise the scale-down fails and nothing more is lowered.
    #[arg(long, value_name = "CMD")]
    pub decommission_exec: String,
    /// Polled as `sh -c CMD` in the leaving pod after the decommission command: exit 0 = done,
    /// 75 = in progress (last output line = progress), anything else = failed.
    #[arg(long, value_name = "CMD")]
    pub status_exec: Option<String>,
    /// Run as `sh -c CMD` in a healthy remaining member before each pod leaves; failing it
    /// changes nothing.
    #[arg(long, value_name = "CMD")]
    pub precheck_exec: Option<String>,
    /// Run as `sh -c CMD` in the leaving pod when a scale-up arrives while it leaves.
    #[arg(long, value_name = "CMD")]
    pub cancel_exec: Option<String>,
    /// The container the commands run in (default: the pod's first).
    #[arg(short = 'c', long, value_name = "NAME")]
    pub container: Option<String>,
    /// Delete a removed pod's claims after it is gone (default: keep them).
    #[arg(long)]
    pub delete_claims: bool,
    /// Time without progress before the scale-down is reported Stalled (default 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub stall_timeout: Option<Duration>,
    /// Time between two runs of the status command (default 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub status_period: Option<Duration>,
    /// Time each command may run (default 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub exec_timeout: Option<Duration>,
    /// Allow --replicas 0 (every member leaves).
    #[arg(long)]
    pub allow_scale_to_zero: bool,
    /// Wait and show progress until the scale-down ends; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after this long (the scale-down goes on), exit non-zero.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, requires = "wait")]
    pub timeout: Option<Duration>,
}

fn sh(command: &Option<String>, flag: &str) -> Result<Option<ExecAction>, CliError> {
    match command {
        None => Ok(None),
        Some(c) if c.trim().is_empty() => Err(CliError::Usage(format!("{flag} is empty"))),
        Some(c) => Ok(Some(ExecAction {
            command: vec!["sh".into(), "-c".into(), c.clone()],
        })),
    }
}

/// The ScaleDown asked for; refused with what to fix when the coordinator would refuse it.
pub fn scale_down(args: &ScaleArgs, name: &str, namespace: &str) -> Result<ScaleDown, CliError> {
    let usage = CliError::Usage;
    let seconds = |flag: &str, d: Option<Duration>| {
        d.map(|d| parse::whole_seconds(flag, d))
            .transpose()
            .map_err(usage)
    };
    let replicas = i32::try_from(args.replicas)
        .map_err(|_| usage(format!("--replicas {} is too large", args.replicas)))?;
    let decommission =
        sh(&Some(args.decommission_exec.clone()), "--decommission-exec")?.unwrap_or_default();
    let spec = ScaleDownSpec {
        stateful_set_name: name.into(),
        replicas,
        container: args.container.clone(),
        decommission,
        status_check: sh(&args.status_exec, "--status-exec")?,
        precheck: sh(&args.precheck_exec, "--precheck-exec")?,
        cancel: sh(&args.cancel_exec, "--cancel-exec")?,
        timeout_seconds: seconds("--exec-timeout", args.exec_timeout)?,
        status_period_seconds: seconds("--status-period", args.status_period)?,
        stall_timeout_seconds: seconds("--stall-timeout", args.stall_timeout)?,
        claim_policy: args.delete_claims.then_some(ClaimPolicy::Delete),
        allow_scale_to_zero: args.allow_scale_to_zero,
    };
    if spec.replicas == 0 && !spec.allow_scale_to_zero {
        return Err(usage(
            "--replicas 0 removes every member; add --allow-scale-to-zero to mean it".into(),
        ));
    }
    validate_scaledown(&spec).map_err(|e| CliError::Invalid(e.to_string()))?;
    Ok(ScaleDown {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-scale-")),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    })
}

/// Runs the command.
pub async fn run(session: &Session, args: &ScaleArgs) -> Result<(), CliError> {
    let (kind, name) = parse::workload(&args.workload).map_err(CliError::Usage)?;
    if kind != WorkloadKind::StatefulSet {
        return Err(CliError::Usage(format!(
            "scale works on StatefulSets (sts/NAME), not on a {}",
            kind.singular()
        )));
    }
    let ns = session.namespace.as_str();
    let scaledown = scale_down(args, &name, ns)?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(session.client.clone(), ns);
    let sts = session
        .call(Call::get(STATEFULSETS, &name, ns), statefulsets.get(&name))
        .await?;
    let current = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if scaledown.spec.replicas >= current {
        return Err(CliError::Invalid(format!(
            "statefulset {name} has {current} replicas; --replicas {} is not lower (scale up with kubectl scale)",
            scaledown.spec.replicas
        )));
    }
    let api: Api<ScaleDown> = Api::namespaced(session.client.clone(), ns);
    let existing = session
        .call(
            Call::list(SCALEDOWNS, Some(ns)),
            api.list(&ListParams::default()),
        )
        .await?;
    if let Some(other) = existing.items.iter().find(|s| {
        s.spec.stateful_set_name == name
            && !s.status.as_ref().is_some_and(|st| st.phase.is_finished())
    }) {
        let other = other.metadata.name.as_deref().unwrap_or_default();
        return Err(CliError::Invalid(format!(
            "scaledown {other} is still scaling statefulset {name}; wait for it to finish"
        )));
    }
    let created = session
        .call(
            Call::create(SCALEDOWNS, ns),
            api.create(&PostParams::default(), &scaledown),
        )
        .await?;
    let sd_name = created.metadata.name.clone().unwrap_or_default();
    println!("scaledown.relaunch.dev/{sd_name} created");
    if !args.wait {
        return Ok(());
    }
    let summary = follow(session, SCALEDOWNS, &sd_name, args.timeout, |sd, waited| {
        scaledown_view(&sd_name, sd, waited)
    })
    .await?;
    println!("{summary}");
    Ok(())
}

/// The progress of ScaleDown `name` (None: not seen yet), and its end.
pub fn scaledown_view(name: &str, sd: Option<&ScaleDown>, waited: Duration) -> View<String> {
    let Some(status) = sd.and_then(|s| s.status.clone()) else {
        let line = if waited >= NO_STATUS_HINT_AFTER {
            format!(
                "{name}: no status after {}: is the relaunch coordinator running?",
                seconds(waited)
            )
        } else {
            format!("{name}: waiting for the relaunch coordinator to start it")
        };
        return View {
            frame: vec![line],
            end: None,
        };
    };
    let target = sd.map_or(0, |s| s.spec.replicas);
    let initial = status.initial_replicas.unwrap_or(target);
    let total = initial.saturating_sub(target).max(0);
    let done = i32::try_from(status.removed.len()).unwrap_or(i32::MAX);
    let mut line = format!(
        "{} {done}/{total} removed  replicas {}  {:?}",
        bar(done, total, 24),
        status.expected_replicas.unwrap_or(initial),
        status.phase
    );
    if let Some(cur) = &status.current
        && !status.phase.is_finished()
    {
        let step = match cur.step {
            LeavingStep::Decommissioning => "decommissioning",
            LeavingStep::Cancelling => "cancelling",
            LeavingStep::Lowering => "lowering replicas",
            LeavingStep::WaitingForPodGone => "waiting for the pod to be gone",
            LeavingStep::Claims => "handling claims",
            LeavingStep::Returning => "coming back (scale-up)",
            LeavingStep::Unknown => "?",
        };
        line.push_str(&format!("  {}: {step}", cur.pod_name));
        if let Some(progress) = &status.progress {
            line.push_str(&format!(" ({progress})"));
        }
    }
    let mut frame = vec![line];
    if status.is_true(SCALEDOWN_STALLED) {
        let message = status
            .condition(SCALEDOWN_STALLED)
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        frame.push(format!("stalled: {message}"));
    }
    if let Some(message) = &status.message {
        frame.push(message.clone());
    }
    let message = status.message.clone().unwrap_or_default();
    let end = match status.phase {
        ScaleDownPhase::Succeeded => Some(Ok(format!(
            "scaledown.relaunch.dev/{name} succeeded in {}: {message}",
            seconds(waited)
        ))),
        ScaleDownPhase::Failed => Some(Err(CliError::Failed(format!(
            "scaledown {name} failed: {message}"
        )))),
        ScaleDownPhase::Cancelled => Some(Err(CliError::Failed(format!(
            "scaledown {name} was cancelled: {message}"
        )))),
        _ => None,
    };
    View { frame, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ScaleArgs {
        let mut argv = vec![
            "kubectl-relaunch",
            "scale",
            "sts/store",
            "--replicas",
            "1",
            "--decommission-exec",
            "handoff",
        ];
        argv.extend_from_slice(extra);
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Scale(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn builds_a_scaledown_with_sh_commands() {
        let sd = scale_down(
            &args(&[
                "--status-exec",
                "check",
                "--delete-claims",
                "--stall-timeout",
                "2m",
            ]),
            "store",
            "db",
        )
        .unwrap();
        assert_eq!(sd.spec.decommission.command, ["sh", "-c", "handoff"]);
        assert_eq!(sd.spec.status_check.unwrap().command, ["sh", "-c", "check"]);
        assert_eq!(sd.spec.claim_policy, Some(ClaimPolicy::Delete));
        assert_eq!(sd.spec.stall_timeout_seconds, Some(120));
        assert_eq!(sd.metadata.namespace.as_deref(), Some("db"));
    }

    #[test]
    fn zero_needs_allow_and_empty_commands_are_refused() {
        let mut a = args(&[]);
        a.replicas = 0;
        assert!(
            scale_down(&a, "store", "db")
                .unwrap_err()
                .to_string()
                .contains("--allow-scale-to-zero")
        );
        a.allow_scale_to_zero = true;
        assert!(scale_down(&a, "store", "db").is_ok());
        let a = args(&["--cancel-exec", " "]);
        assert!(
            scale_down(&a, "store", "db")
                .unwrap_err()
                .to_string()
                .contains("--cancel-exec")
        );
    }

    #[test]
    fn the_view_shows_the_leaving_pod_and_ends_with_the_phase() {
        let mut sd = scale_down(&args(&[]), "store", "db").unwrap();
        let mut status = relaunch_api::ScaleDownStatus {
            phase: ScaleDownPhase::Running,
            initial_replicas: Some(3),
            expected_replicas: Some(3),
            progress: Some("keys in flight: 2".into()),
            current: Some(relaunch_api::LeavingPod {
                pod_name: "store-2".into(),
                ordinal: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        sd.status = Some(status.clone());
        let view = scaledown_view("s", Some(&sd), Duration::from_secs(3));
        assert!(view.frame[0].contains("0/2 removed"), "{:?}", view.frame);
        assert!(
            view.frame[0].contains("store-2: decommissioning (keys in flight: 2)"),
            "{:?}",
            view.frame
        );
        assert!(view.end.is_none());
        status.phase = ScaleDownPhase::Failed;
        status.message = Some("the decommission command exited with code 3".into());
        sd.status = Some(status);
        let view = scaledown_view("s", Some(&sd), Duration::from_secs(3));
        let end = view.end.unwrap().unwrap_err().to_string();
        assert!(end.contains("exited with code 3"), "{end}");
    }
}
