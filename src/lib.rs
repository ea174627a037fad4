//! tollgate: an HTTP load balancer and API gateway on Pingora, configured by one
//! YAML topology file. The modules follow the way a request travels; see
//! the README's "Development" section.

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod balance;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod edge;
pub mod filters;
pub mod forwarding;
pub mod listen;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod observe;
pub mod pid_file;
pub mod proxy;
pub mod quic;
pub mod reload;
pub mod router;
pub mod server;
pub mod topology;
pub mod upgrade;
