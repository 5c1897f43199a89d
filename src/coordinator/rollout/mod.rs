//! RollingRestart: in-place rolling restarts of whole workloads. [`planner`] and [`state`] hold
//! the rules, [`reconcile`] decides what one pass does for a rollout (and for the workload
//! trigger, whose annotations [`trigger`] reads), all in pure code; [`controller`] gathers from
//! the caches and applies the decisions.

pub mod controller;
pub mod planner;
pub mod reconcile;
pub mod state;
pub mod trigger;
