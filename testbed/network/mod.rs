//! The Service network on loopback, doing what kube-proxy and CoreDNS do on a cluster: a
//! userspace TCP proxy on every Service's `ClusterIP:port`, and a DNS server for Service names
//! on the service range's DNS address (`.10`), port 53. Both read Services and EndpointSlices
//! through watches, like their upstream counterparts; pods reach them because every pod shares
//! the host's network.
//!
//! Each sandbox claims its own /24 block of 127.100.0.0/16 by binding the DNS address: the bind
//! fails for a block another sandbox (in this process or another) holds.

mod dns;
mod proxy;
mod spread;

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use dns::CLUSTER_DOMAIN;
pub use spread::{SpreadConfig, SpreadCounts, SpreadingProxy};

use crate::TestbedError;
use crate::apiserver::ServiceRange;
use proxy::ServicePortRef;

/// The port DNS clients use; resolv.conf cannot name another.
const DNS_PORT: u16 = 53;
/// How long `start` waits for the first list of Services and EndpointSlices.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// The proxy re-checks its listeners at least this often (a bind that failed is retried).
const RESYNC: Duration = Duration::from_secs(1);
/// How long the proxy waits for an endpoint to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a DNS-over-TCP client may stay idle.
const DNS_TCP_IDLE: Duration = Duration::from_secs(10);

/// A claimed block of the service network, serving DNS and proxying once started.
pub struct ServiceNetwork {
    range: ServiceRange,
    /// The DNS sockets, bound by [`ServiceNetwork::claim`] and served from [`ServiceNetwork::start`].
    dns_sockets: Option<(UdpSocket, TcpListener)>,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ServiceNetwork {
    /// Claims a free /24 block of 127.100.0.0/16 (blocks 1 to 255; block 0 is the bare API
    /// server's default) by binding UDP and TCP port 53 on its DNS address. Needs root (or
    /// `CAP_NET_BIND_SERVICE`) for port 53.
    pub async fn claim() -> Result<Self, TestbedError> {
        let first = (uuid::Uuid::new_v4().as_u128() % 255) as usize;
        let mut last_error = None;
        for i in 0..255 {
            let range = ServiceRange::block(((first + i) % 255 + 1) as u8);
            let addr = SocketAddr::from((range.dns_ip(), DNS_PORT));
            let udp = match UdpSocket::bind(addr).await {
                Ok(socket) => socket,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    last_error = Some(e);
                    continue;
                }
                Err(e) => {
                    return Err(TestbedError::Setup(format!(
                        "cannot serve cluster DNS on {addr}: {e} (port 53 needs root)"
                    )));
                }
            };
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    return Ok(Self {
                        range,
                        dns_sockets: Some((udp, tcp)),
                        token: CancellationToken::new(),
                        tasks: Vec::new(),
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(TestbedError::Setup(format!(
            "no free block in 127.100.0.0/16 for cluster DNS on port 53 (is a DNS server bound \
             to 0.0.0.0:53?): {}",
            last_error.map_or_else(String::new, |e| e.to_string())
        )))
    }

    /// The ClusterIP range (the API server's `--service-cluster-ip-range`).
    pub fn range(&self) -> ServiceRange {
        self.range
    }

    /// The cluster DNS server's address (port 53): the kubelet's `--cluster-dns`.
    pub fn dns_address(&self) -> Ipv4Addr {
        self.range.dns_ip()
    }

    /// Starts watching Services and EndpointSlices through `client`, answering DNS and
    /// proxying ClusterIPs; returns once both caches hold a first full list.
    pub async fn start(&mut self, client: Client) -> Result<(), TestbedError> {
        let Some((udp, tcp)) = self.dns_sockets.take() else {
            return Err(TestbedError::Setup(
                "the service network is already started".into(),
            ));
        };
        let wake = Arc::new(Notify::new());
        let services = self.spawn_informer(Api::<Service>::all(client.clone()), wake.clone());
        let slices =
            self.spawn_informer(Api::<EndpointSlice>::all(client), Arc::new(Notify::new()));
        let synced = async {
            services.wait_until_ready().await?;
            slices.wait_until_ready().await
        };
        if !matches!(tokio::time::timeout(SYNC_TIMEOUT, synced).await, Ok(Ok(()))) {
            self.token.cancel();
            return Err(TestbedError::Timeout(
                "the service network to list Services and EndpointSlices".into(),
            ));
        }
        let cluster = Cluster { services, slices };
        self.tasks.push(tokio::spawn(serve_dns_udp(
            udp,
            cluster.clone(),
            self.token.clone(),
        )));
        self.tasks.push(tokio::spawn(serve_dns_tcp(
            tcp,
            cluster.clone(),
            self.token.clone(),
        )));
        self.tasks.push(tokio::spawn(run_proxy(
            cluster,
            self.range,
            wake,
            self.token.clone(),
        )));
        info!(range = %self.range, dns = %self.range.dns_ip(), "service network started");
        Ok(())
    }

    /// Stops serving and waits for every task to end.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        for task in std::mem::take(&mut self.tasks) {
            if let Err(error) = task.await {
                warn!(%error, "service network task ended abnormally");
            }
        }
    }

    fn spawn_informer<K>(&mut self, api: Api<K>, wake: Arc<Notify>) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (store, writer) = reflector::store();
        let token = self.token.clone();
        self.tasks.push(tokio::spawn(async move {
            let stream = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            );
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    () = token.cancelled() => return,
                    event = stream.next() => event,
                };
                match event {
                    Some(Ok(_)) => wake.notify_one(),
                    Some(Err(error)) => warn!(%error, "service network watch failed; retrying"),
                    None => return,
                }
            }
        }));
        store
    }
}

impl Drop for ServiceNetwork {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// What the proxy and DNS read: the caches of Services and EndpointSlices.
#[derive(Clone)]
struct Cluster {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl Cluster {
    fn zone(&self) -> dns::Zone {
        let services = self.services.state();
        let slices = self.slices.state();
        dns::Zone::new(
            services.iter().map(|s| s.as_ref()),
            slices.iter().map(|s| s.as_ref()),
        )
    }
}

async fn serve_dns_udp(socket: UdpSocket, cluster: Cluster, token: CancellationToken) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let received = tokio::select! {
            () = token.cancelled() => return,
            received = socket.recv_from(&mut buffer) => received,
        };
        let (length, client) = match received {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "cluster DNS: receive failed");
                continue;
            }
        };
        if let Some(answer) = dns::answer(&buffer[..length], &cluster.zone(), true)
            && let Err(error) = socket.send_to(&answer, client).await
        {
            debug!(%error, %client, "cluster DNS: answer not sent");
        }
    }
}

async fn serve_dns_tcp(listener: TcpListener, cluster: Cluster, token: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let cluster = cluster.clone();
        let token = token.clone();
        tokio::spawn(async move {
            // Messages framed by a two-byte length (RFC 1035 4.2.2), several per connection.
            loop {
                let exchange = async {
                    let length = stream.read_u16().await.ok()?;
                    let mut request = vec![0u8; usize::from(length)];
                    stream.read_exact(&mut request).await.ok()?;
                    let answer = dns::answer(&request, &cluster.zone(), false)?;
                    let length = u16::try_from(answer.len()).ok()?;
                    stream.write_u16(length).await.ok()?;
                    stream.write_all(&answer).await.ok()
                };
                let done = tokio::select! {
                    () = token.cancelled() => return,
                    done = tokio::time::timeout(DNS_TCP_IDLE, exchange) => done,
                };
                if !matches!(done, Ok(Some(()))) {
                    return;
                }
            }
        });
    }
}

/// Keeps one listener per proxied `ClusterIP:port`, opening and closing them as Services come
/// and go.
async fn run_proxy(
    cluster: Cluster,
    range: ServiceRange,
    wake: Arc<Notify>,
    token: CancellationToken,
) {
    let mut listeners: HashMap<SocketAddrV4, (ServicePortRef, CancellationToken)> = HashMap::new();
    loop {
        let services = cluster.services.state();
        let desired = proxy::proxied_ports(services.iter().map(|s| s.as_ref()), &range);
        listeners.retain(|addr, (port, stop)| {
            let keep = desired.get(addr) == Some(port);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (addr, port) in desired {
            if listeners.contains_key(&addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    debug!(%addr, service = %port.service, "proxying");
                    let stop = token.child_token();
                    tokio::spawn(serve_service_port(
                        listener,
                        port.clone(),
                        cluster.clone(),
                        stop.clone(),
                        token.clone(),
                    ));
                    listeners.insert(addr, (port, stop));
                }
                Err(error) => warn!(%addr, %error, "cannot listen for a Service; retrying"),
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

async fn serve_service_port(
    listener: TcpListener,
    port: ServicePortRef,
    cluster: Cluster,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        let pick = uuid::Uuid::new_v4().as_u128() as usize;
        let slices = cluster.slices.state();
        let endpoint = proxy::pick_endpoint(slices.iter().map(|s| s.as_ref()), &port, pick);
        // Open connections outlive a Service change, as conntrack keeps them; only the
        // network's shutdown ends them.
        let shutdown = shutdown.clone();
        let service = port.service.clone();
        tokio::spawn(async move {
            let Some(endpoint) = endpoint else {
                debug!(%service, "no ready endpoint; resetting the connection");
                refuse(client);
                return;
            };
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await;
            let mut upstream = match connected {
                Ok(Ok(upstream)) => upstream,
                _ => {
                    debug!(%endpoint, "endpoint did not accept; resetting the connection");
                    refuse(client);
                    return;
                }
            };
            let mut client = client;
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            }
        });
    }
}

/// Closes `stream` with a reset, the closest a userspace proxy gets to a refused connection.
fn refuse(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
