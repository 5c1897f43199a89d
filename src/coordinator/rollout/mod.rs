//! RollingRestart: in-place rolling restarts of whole workloads. The planner and [`state`] decide
//! in pure code; [`controller`] acts on it; [`trigger`] turns workload annotations into rollouts;
//! [`lease`] elects the replica that runs the controllers.

pub mod controller;
pub mod lease;
pub mod planner;
pub mod state;
pub mod trigger;

pub use controller::RolloutMetrics;
