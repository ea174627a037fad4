//! What lets an operator follow one request through tollgate and the services
//! behind it: request IDs, W3C trace context and the export of spans.

pub mod otlp;
pub mod request_id;
pub mod trace_context;
pub mod tracing;
