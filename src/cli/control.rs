//! `pause`, `resume` and `abort` a RollingRestart: the same spec switches a person would set
//! with `kubectl patch` (`spec.strategy.paused`, `spec.abort`), which the coordinator reads on
//! its next pass. Resuming a rollout paused for failures accepts those failures.

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::error::CliError;
use super::parse::{self, RelaunchKind};
use super::session::{Call, ROLLOUTS, Session};
use relaunch_api::{RollingRestart, RolloutPhase};

#[derive(Debug, Clone, clap::Args)]
pub struct RolloutName {
    /// The RollingRestart: NAME or rr/NAME.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// What to do to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

impl Control {
    fn verb(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
        }
    }
}

/// The merge patch for `control` on `rollout`, or why it makes no sense now.
pub fn patch_for(
    control: Control,
    rollout: &RollingRestart,
) -> Result<serde_json::Value, CliError> {
    let name = rollout.metadata.name.as_deref().unwrap_or_default();
    let phase = rollout.status.as_ref().map(|s| s.phase);
    if let Some(phase @ (RolloutPhase::Succeeded | RolloutPhase::Failed)) = phase {
        return Err(CliError::Invalid(format!(
            "rollingrestart {name} already finished ({phase:?}); there is nothing to {}",
            control.verb()
        )));
    }
    let spec = &rollout.spec;
    match control {
        Control::Pause if spec.strategy.paused => Err(CliError::Invalid(format!(
            "rollingrestart {name} is already paused"
        ))),
        Control::Pause => Ok(json!({"spec": {"strategy": {"paused": true}}})),
        Control::Resume if !spec.strategy.paused => Err(CliError::Invalid(format!(
            "rollingrestart {name} is not paused"
        ))),
        Control::Resume => Ok(json!({"spec": {"strategy": {"paused": false}}})),
        Control::Abort if spec.abort => Err(CliError::Invalid(format!(
            "rollingrestart {name} is already being aborted"
        ))),
        Control::Abort => Ok(json!({"spec": {"abort": true}})),
    }
}

/// Runs the command.
pub async fn run(session: &Session, control: Control, args: &RolloutName) -> Result<(), CliError> {
    let (kind, name) = parse::relaunch_object(&args.name).map_err(CliError::Usage)?;
    if kind == Some(RelaunchKind::ContainerRecreateRequest) {
        return Err(CliError::Usage(format!(
            "{} applies to RollingRestarts (rr/NAME), not to ContainerRecreateRequests",
            control.verb()
        )));
    }
    let ns = session.namespace.as_str();
    let api: Api<RollingRestart> = Api::namespaced(session.client.clone(), ns);
    let rollout = session
        .call(Call::get(ROLLOUTS, &name, ns), api.get(&name))
        .await?;
    let patch = patch_for(control, &rollout)?;
    session
        .call(
            Call::patch(ROLLOUTS, &name, ns),
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
    let done = match control {
        Control::Pause => {
            "paused (the pods restarting now finish; no new batch starts)".to_string()
        }
        Control::Resume => {
            let failed = rollout.status.as_ref().map_or(0, |s| s.failed);
            if failed > 0 {
                format!(
                    "resumed ({failed} failed pod restarts are accepted; new failures pause it again)"
                )
            } else {
                "resumed".to_string()
            }
        }
        Control::Abort => "aborted (no new batch starts; it ends Failed)".to_string(),
    };
    println!("rollingrestart.relaunch.dev/{name} {done}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaunch_api::{RollingRestartSpec, RollingRestartStatus};

    fn rollout(paused: bool, abort: bool, phase: Option<RolloutPhase>) -> RollingRestart {
        let mut rr = RollingRestart::new("r", RollingRestartSpec::default());
        rr.spec.strategy.paused = paused;
        rr.spec.abort = abort;
        rr.status = phase.map(|phase| RollingRestartStatus {
            phase,
            ..RollingRestartStatus::default()
        });
        rr
    }

    #[test]
    fn switches_map_onto_the_spec() {
        let running = rollout(false, false, Some(RolloutPhase::Progressing));
        assert_eq!(
            patch_for(Control::Pause, &running).unwrap(),
            json!({"spec": {"strategy": {"paused": true}}})
        );
        assert_eq!(
            patch_for(Control::Abort, &running).unwrap(),
            json!({"spec": {"abort": true}})
        );
        let paused = rollout(true, false, Some(RolloutPhase::Paused));
        assert_eq!(
            patch_for(Control::Resume, &paused).unwrap(),
            json!({"spec": {"strategy": {"paused": false}}})
        );
        assert_eq!(
            patch_for(Control::Abort, &paused).unwrap(),
            json!({"spec": {"abort": true}})
        );
    }

    #[test]
    fn switches_that_change_nothing_are_refused() {
        let running = rollout(false, false, None);
        assert!(
            patch_for(Control::Resume, &running)
                .unwrap_err()
                .to_string()
                .contains("not paused")
        );
        let paused = rollout(true, false, None);
        assert!(
            patch_for(Control::Pause, &paused)
                .unwrap_err()
                .to_string()
                .contains("already paused")
        );
        let done = rollout(false, false, Some(RolloutPhase::Succeeded));
        for control in [Control::Pause, Control::Resume, Control::Abort] {
            assert!(
                patch_for(control, &done)
                    .unwrap_err()
                    .to_string()
                    .contains("already finished")
            );
        }
    }
}
