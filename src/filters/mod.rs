//! Request filters: each looks at a request in `request_filter` and either lets it
//! pass or says how to answer it.

pub mod auth;
pub mod framing;
pub mod rate_limit;
pub mod request_head;
pub mod request_path;
