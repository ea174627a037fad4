//! What lets an operator follow one request through tollgate and the services
//! behind it: request IDs.

pub mod request_id;
