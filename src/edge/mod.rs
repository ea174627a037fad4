//! The edge: TLS termination, HTTPS redirects, and answers tollgate writes itself.

pub mod certs;
pub mod compression;
pub mod error_pages;
pub mod header_rules;
pub mod hsts;
pub mod keepalive;
pub(crate) mod linger;
pub mod proxy_protocol;
pub mod redirect;
pub mod request_body;
pub mod respond;
pub mod static_files;
pub mod tls;
pub mod tls_accept;
