//! The report API the agents call: HTTP(S) serving ([`server`], [`tls`]), authentication and
//! node binding ([`auth`]), and what a report or readiness request does ([`handlers`]).

pub mod auth;
pub mod handlers;
pub mod server;
pub mod tls;
