//! relaunch: in-place, graceful container restarts for Kubernetes.
//!
//! The node agent restarts containers through the node's container runtime ([`cri`]); the
//! coordinator authenticates the agents' reports and owns every status write.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod coordinator;
pub mod cri;
pub mod telemetry;

#[cfg(feature = "testbed")]
pub mod testbed;
