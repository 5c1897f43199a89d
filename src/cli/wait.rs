//! Following one object until it ends: a watch (re-established with back-off when it drops),
//! redrawn progress, and an end on success, failure, timeout, deletion or Ctrl-C.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use super::error::CliError;
use super::progress::Display;
use super::session::{Call, ResourceKind, Session};

/// What the caller makes of the object's current state.
pub struct View<T> {
    /// Lines to show, most important first.
    pub frame: Vec<String>,
    /// Set once the object has ended: the command's result.
    pub end: Option<Result<T, CliError>>,
}

/// Watches `name` and shows `view` of it (also every second, for hints that depend on the time
/// waited) until `view` ends it, `timeout` passes, the object is deleted, or Ctrl-C.
pub async fn follow<K, T>(
    session: &Session,
    resource: ResourceKind,
    name: &str,
    timeout: Option<Duration>,
    mut view: impl FnMut(Option<&K>, Duration) -> View<T>,
) -> Result<T, CliError>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::namespaced(session.client.clone(), &session.namespace);
    let mut events = std::pin::pin!(watcher::watch_object(api, name).default_backoff());
    let now = tokio::time::Instant::now();
    let deadline = timeout.and_then(|t| now.checked_add(t));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut display = Display::new();
    let mut latest: Option<K> = None;
    let mut trouble: Option<String> = None;
    let status_hint = format!(
        "it goes on; see `kubectl relaunch status {name} -n {}`",
        session.namespace
    );
    let outcome = loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Some(object))) => {
                    latest = Some(object);
                    trouble = None;
                }
                Some(Ok(None)) => {
                    break Err(CliError::Failed(format!(
                        "{} {name} was deleted before it finished",
                        resource.kind
                    )));
                }
                Some(Err(error)) => {
                    let call = Call::watch(resource, name, &session.namespace);
                    match watch_failure(session, error, &call).await {
                        Ok(reason) => trouble = Some(reason),
                        Err(fatal) => break Err(fatal),
                    }
                }
                None => {
                    break Err(CliError::Failed(format!(
                        "the watch of {} {name} ended unexpectedly; {status_hint}",
                        resource.kind
                    )));
                }
            },
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => {
                break Err(CliError::TimedOut(format!(
                    "timed out after {} waiting for {} {name}; {status_hint}",
                    super::progress::seconds(timeout.unwrap_or_default()),
                    resource.kind
                )));
            }
            _ = &mut interrupted => {
                break Err(CliError::Interrupted(format!(
                    "stopped waiting for {} {name}; {status_hint}",
                    resource.kind
                )));
            }
        }
        let mut current = view(latest.as_ref(), display.elapsed());
        if let Some(reason) = &trouble {
            current
                .frame
                .push(format!("(lost the watch, reconnecting: {reason})"));
        }
        display.show(&current.frame);
        if let Some(end) = current.end {
            break end;
        }
    };
    display.finish();
    outcome
}

/// A watch error: `Ok(reason)` when retrying may help, `Err` when it cannot (no permission,
/// resource gone).
async fn watch_failure(
    session: &Session,
    error: watcher::Error,
    call: &Call<'_>,
) -> Result<String, CliError> {
    let api_error = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => kube::Error::Api(status),
        other => return Ok(other.to_string()),
    };
    match &api_error {
        kube::Error::Api(status) if matches!(status.code, 401 | 403 | 404) => {
            Err(session.explain(api_error, call).await)
        }
        _ => {
            let error = session.explain(api_error, call).await;
            Ok(error.to_string())
        }
    }
}
