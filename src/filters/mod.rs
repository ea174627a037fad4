//! Request filters: each looks at a request in `request_filter` and either lets it
//! pass or says how to answer it. They hold no connection state.

pub mod framing;
