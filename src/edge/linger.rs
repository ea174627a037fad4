//! Lingering close (RFC 9112 section 9.6), as nginx does it: before closing
//! the connection after an answer given while the client may still be sending
//! its request body (413, an error), tollgate reads and discards what comes,
//! so that a client which sends its whole body before reading gets the answer
//! rather than a reset. Bounded in time, in idleness and in bytes; HTTP/2
//! needs none (a stream ends without closing the connection).

use pingora::proxy::Session;
use std::time::{Duration, Instant};

/// The longest tollgate lingers after an answer.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(10);
/// How long it waits for more of the body before giving up.
pub(crate) const LINGER_IDLE: Duration = Duration::from_secs(2);
/// The most it reads and discards.
pub(crate) const LINGER_BYTES: usize = 64 << 20;

/// Reads and discards the rest of the request body of `session` (an HTTP/1
/// one), within the bounds above. Call after the answer is written, before
/// the connection closes.
pub(crate) async fn discard_rest_of_body(session: &mut Session) {
    if session.downstream_session.is_http2() {
        return;
    }
    let started = Instant::now();
    let mut discarded = 0usize;
    while discarded < LINGER_BYTES && !session.downstream_session.is_body_done() {
        let left = LINGER_TIME.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        let read = session.downstream_session.read_request_body();
        match tokio::time::timeout(left.min(LINGER_IDLE), read).await {
            Ok(Ok(Some(chunk))) => discarded += chunk.len(),
            // The end of the body, a read error or the client gone, idleness.
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
        }
    }
    if discarded > 0 {
        log::debug!("discarded {discarded} body bytes before closing");
    }
}
