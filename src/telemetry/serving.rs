//! What every HTTP server of relaunch does before a request reaches its handler: a cap on open
//! connections, an accept loop that backs off when accepting fails (out of file descriptors,
//! say) instead of spinning, and a deadline for each request's headers (a client that sends
//! half a header, or holds an idle keep-alive connection, is disconnected).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// First pause after a failed accept; it doubles with every failure in a row.
pub const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest pause between accepts while accepting fails.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most; further clients wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers, counted from when the server starts
    /// waiting for them (also on an idle keep-alive connection).
    pub header_read_timeout: Duration,
}

/// Accepts connections within a [`ConnectionLimits::max_connections`] cap, backing off when
/// accepting fails.
pub struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    /// The pause after the next failure (none: the last accept succeeded).
    backoff: Option<Duration>,
    /// What the server is called in logs.
    name: &'static str,
}

impl Acceptor {
    pub fn new(listener: TcpListener, limits: ConnectionLimits, name: &'static str) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            backoff: None,
            name,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection and its slot (hold it while serving the connection), or `None` once
    /// `shutdown` is cancelled. While the cap is reached, nothing is accepted. A failed accept
    /// is logged once per run of failures (then at debug level) and followed by a pause that
    /// doubles up to [`ACCEPT_BACKOFF_MAX`].
    pub async fn accept(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Option<(TcpStream, OwnedSemaphorePermit)> {
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return None,
                permit = self.permits.clone().acquire_owned() => permit.ok()?,
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    if self.backoff.take().is_some() {
                        tracing::info!(server = self.name, "accepting connections again");
                    }
                    let _ = stream.set_nodelay(true);
                    return Some((stream, permit));
                }
                Err(e) => {
                    drop(permit);
                    if self.backoff.is_none() {
                        tracing::warn!(server = self.name, error = %e, "accepting a connection failed; backing off (logged once until accepting works again)");
                    } else {
                        tracing::debug!(server = self.name, error = %e, "accepting a connection failed again");
                    }
                    let pause = next_pause(self.backoff);
                    self.backoff = Some(pause);
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Connections that may still be opened before the cap is reached.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// The pause after a failed accept, given the one before it (none: the first failure in a row).
fn next_pause(previous: Option<Duration>) -> Duration {
    previous.map_or(ACCEPT_BACKOFF_START, |p| {
        p.saturating_mul(2).min(ACCEPT_BACKOFF_MAX)
    })
}

/// An HTTP/1.1 connection builder with the header deadline of `limits`.
pub fn http1_builder(limits: &ConnectionLimits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_holds_further_connections_back_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(1),
        };
        let mut acceptor = Acceptor::new(listener, limits, "test");
        let shutdown = CancellationToken::new();
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let (first, permit) = acceptor.accept(&shutdown).await.unwrap();
        assert_eq!(acceptor.available(), 0);
        // The second client waits while the first connection is open.
        let waiting =
            tokio::time::timeout(Duration::from_millis(200), acceptor.accept(&shutdown)).await;
        assert!(waiting.is_err(), "accepted beyond the cap");
        drop((first, permit));
        let second = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(&shutdown)).await;
        assert!(matches!(second, Ok(Some(_))));
        shutdown.cancel();
        assert!(acceptor.accept(&shutdown).await.is_none());
    }

    #[test]
    fn the_backoff_doubles_up_to_a_second() {
        let mut pauses = Vec::new();
        let mut previous = None;
        for _ in 0..10 {
            let pause = next_pause(previous);
            pauses.push(pause.as_millis());
            previous = Some(pause);
        }
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }
}
