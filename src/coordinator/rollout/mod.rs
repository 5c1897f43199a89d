//! RollingRestart: in-place rolling restarts of whole workloads. The planner decides in pure
//! code; the controller that acts on it comes with the RollingRestart issue.

pub mod planner;
