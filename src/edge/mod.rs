//! The edge: TLS termination, HTTPS redirects, and answers tollgate writes itself.

pub mod answer_headers;
pub mod certs;
pub mod client_certs;
pub mod compression;
pub(crate) mod distinguished_name;
pub mod error_pages;
pub mod grpc;
pub mod header_rules;
pub mod keepalive;
pub(crate) mod linger;
pub mod proxy_protocol;
pub mod redirect;
pub(crate) mod replay;
pub mod request_body;
pub mod respond;
pub mod static_files;
pub mod tls;
pub mod tls_accept;
