//! The proxy's side of mirroring (see `mirror`): a request of a mirroring
//! route that goes on to a backend begins its copy at the end of
//! `request_filter`; its body is teed into the copy by `request_body_filter`
//! as it streams to the backend, never held back for it; once the body is
//! whole, the copy is handed to a background task. The client's request
//! never waits for the copy.

use super::{upstream, RequestCtx};
use crate::edge::request_body::BufferedBody;
use crate::mirror::MirrorCopy;
use crate::topology::Route;
use pingora::proxy::Session;

/// Begins the copy of a request of `route` that goes on to a backend, when
/// the route mirrors and the request is drawn (see `Mirror::admit`): the
/// head is the one its backend gets (see `upstream::prepare_request`). A
/// request without a body is sent at once; one with a body is kept in `ctx`
/// to be fed it. Upgrades (WebSocket) and PURGE requests are not copied.
pub(super) fn begin(session: &mut Session, ctx: &mut RequestCtx, route: &Route) {
    let Some(mirror) = &route.mirror else {
        return;
    };
    if ctx.purge || session.is_upgrade_req() {
        return;
    }
    let Some(ticket) = mirror.admit() else {
        return;
    };
    let mut head = session.req_header().clone();
    // A head the backend could not be sent fails the request itself.
    if upstream::prepare_request(ctx, &mut head).is_err() {
        return;
    }
    let Some(copy) = MirrorCopy::new(ticket, head) else {
        return;
    };
    if session.is_body_empty() {
        send(session, ctx, copy);
    } else {
        ctx.mirror = Some(copy);
    }
}

/// Feeds `chunk` of the request body to the request's copy, and sends the
/// copy at the `end` of the body; a body that grows past the mirror's
/// `max_body` drops it.
pub(super) fn tee(session: &Session, ctx: &mut RequestCtx, chunk: Option<&[u8]>, end: bool) {
    let Some(copy) = ctx.mirror.as_mut() else {
        return;
    };
    if !copy.tee(chunk.unwrap_or_default()) {
        ctx.mirror = None;
        return;
    }
    if end {
        if let Some(copy) = ctx.mirror.take() {
            send(session, ctx, copy);
        }
    }
}

/// Gives the copy a body read whole by request buffering (see `buffering`)
/// and sends it. A body partly spilled to a file is longer than buffering's
/// memory bound and is not copied.
pub(super) fn feed_buffered(session: &Session, ctx: &mut RequestCtx, body: &BufferedBody) {
    let Some(mut copy) = ctx.mirror.take() else {
        return;
    };
    let Some(pieces) = body.in_memory() else {
        return;
    };
    if pieces.iter().all(|piece| copy.tee(piece)) {
        send(session, ctx, copy);
    }
}

/// A new attempt at a backend: pingora replays the body from its first
/// byte, so the copy gathers it again from there.
pub(super) fn restart(ctx: &mut RequestCtx) {
    if let Some(copy) = ctx.mirror.as_mut() {
        copy.restart();
    }
}

/// Hands `copy` to a background task, to a backend of the shadow chosen for
/// the request (its hash key, on a shadow that hashes); a recorded request's
/// copy has a span of its own.
fn send(session: &Session, ctx: &RequestCtx, copy: MirrorCopy) {
    let Some(shadow) = ctx
        .topology
        .as_ref()
        .and_then(|t| t.upstreams.get(copy.upstream()))
    else {
        return;
    };
    let parts = upstream::request_parts(session.req_header(), ctx);
    copy.send(shadow, &parts, ctx.trace.as_ref());
}
