//! A connection-spreading TCP proxy standing in for a Service in front of several replicas: one
//! loopback address, each new connection handed to the next backend in turn (round-robin, like a
//! Service spreading over its endpoints), and connections cut at random moments (as load
//! balancers, proxies and server restarts cut them), so that a client's requests land on every
//! replica. A backend that refuses the connection (a replica just killed, before its endpoint
//! would be removed) is skipped for the next one; when none accepts, the client's connection is
//! closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestbedError;

/// How long the proxy waits for a backend to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How connections are cut.
#[derive(Debug, Clone, PartialEq)]
pub struct SpreadConfig {
    /// Fraction (0.0 to 1.0) of connections cut, each after a random time up to `max_lifetime`.
    pub cut_rate: f64,
    pub max_lifetime: Duration,
    /// Seed of the random draws.
    pub seed: u64,
}

impl Default for SpreadConfig {
    fn default() -> Self {
        Self {
            cut_rate: 0.0,
            max_lifetime: Duration::from_secs(5),
            seed: 0,
        }
    }
}

/// What the proxy did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpreadCounts {
    /// Connections accepted from clients.
    pub connections: u64,
    /// Connections handed to each backend (by index).
    pub per_backend: Vec<u64>,
    /// Connections cut by the proxy.
    pub cut: u64,
    /// Backends that refused a connection (it went to the next one).
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    per_backend: Mutex<Vec<u64>>,
    cut: AtomicU64,
    refused: AtomicU64,
}

/// A running spreading proxy; stops when dropped or shut down.
pub struct SpreadingProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    token: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SpreadingProxy {
    /// Listens on a free port of 127.0.0.1 and spreads connections over `backends`.
    pub async fn start(
        backends: Vec<SocketAddr>,
        config: SpreadConfig,
    ) -> Result<Self, TestbedError> {
        if backends.is_empty() {
            return Err(TestbedError::Setup(
                "a spreading proxy needs at least one backend".into(),
            ));
        }
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters {
            per_backend: Mutex::new(vec![0; backends.len()]),
            ..Counters::default()
        });
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            backends,
            config,
            counters.clone(),
            token.clone(),
        ));
        Ok(Self {
            addr,
            counters,
            token,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counts(&self) -> SpreadCounts {
        let c = &self.counters;
        SpreadCounts {
            connections: c.connections.load(Ordering::SeqCst),
            per_backend: c
                .per_backend
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            cut: c.cut.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
        }
    }

    /// Stops accepting and cuts every open connection.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SpreadingProxy {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// splitmix64 to [0, 1).
fn draw(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

async fn serve(
    listener: TcpListener,
    backends: Vec<SocketAddr>,
    config: SpreadConfig,
    counters: Arc<Counters>,
    token: CancellationToken,
) {
    let mut next = 0usize;
    let mut state = config.seed;
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            // EMFILE and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        counters.connections.fetch_add(1, Ordering::SeqCst);
        let first = next;
        next = next.wrapping_add(1);
        let cut_after = (draw(&mut state) < config.cut_rate)
            .then(|| config.max_lifetime.mul_f64(draw(&mut state)));
        let (backends, counters, token) = (backends.clone(), counters.clone(), token.clone());
        tokio::spawn(async move {
            let Some((index, backend)) = connect(&backends, first, &counters).await else {
                return;
            };
            if let Some(count) = counters
                .per_backend
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(index)
            {
                *count += 1;
            }
            relay(client, backend, cut_after, &counters, &token).await;
        });
    }
}

/// The first backend, from `first` on in turn, that accepts a connection.
async fn connect(
    backends: &[SocketAddr],
    first: usize,
    counters: &Counters,
) -> Option<(usize, TcpStream)> {
    for i in 0..backends.len() {
        let index = first.wrapping_add(i) % backends.len();
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backends[index])).await {
            Ok(Ok(stream)) => return Some((index, stream)),
            _ => {
                counters.refused.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    None
}

async fn relay(
    mut client: TcpStream,
    mut backend: TcpStream,
    cut_after: Option<Duration>,
    counters: &Counters,
    token: &CancellationToken,
) {
    let cut = async {
        match cut_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => {}
        _ = cut => {
            counters.cut.fetch_add(1, Ordering::SeqCst);
        }
        _ = token.cancelled() => {}
    }
    // Dropping both streams closes both connections.
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every connection with its `name` and then echoes.
    async fn backend(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream.write_all(name.as_bytes()).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    async fn greeting(proxy: &SpreadingProxy) -> (String, TcpStream) {
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        stream.read_exact(&mut buf).await.unwrap();
        (String::from_utf8_lossy(&buf).into_owned(), stream)
    }

    #[tokio::test]
    async fn connections_go_round_robin_and_skip_a_backend_that_is_down() {
        let (a, _ta) = backend("a").await;
        let (b, tb) = backend("b").await;
        let proxy = SpreadingProxy::start(vec![a, b], SpreadConfig::default())
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(greeting(&proxy).await.0);
        }
        assert_eq!(seen, ["a", "b", "a", "b"]);
        // Bytes flow both ways.
        let (_, mut stream) = greeting(&proxy).await;
        stream.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");

        tb.abort();
        let _ = tb.await;
        for _ in 0..3 {
            assert_eq!(greeting(&proxy).await.0, "a");
        }
        let counts = proxy.counts();
        assert_eq!(counts.connections, 8);
        assert!(counts.refused >= 1, "{counts:?}");
        assert_eq!(counts.per_backend.iter().sum::<u64>(), 8);
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn connections_are_cut_at_random_moments() {
        let (a, _ta) = backend("a").await;
        let config = SpreadConfig {
            cut_rate: 1.0,
            max_lifetime: Duration::from_millis(200),
            seed: 1,
        };
        let proxy = SpreadingProxy::start(vec![a], config).await.unwrap();
        let (_, mut stream) = greeting(&proxy).await;
        let mut rest = Vec::new();
        // The proxy closes the connection: the read ends (the deadline only guards the test).
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the connection was cut");
        assert_eq!(proxy.counts().cut, 1);
    }
}
