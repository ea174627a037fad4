//! The headers every answer of a TLS listener carries, proxied, static,
//! direct and error answers alike: Strict-Transport-Security where the
//! listener sets `hsts`, and `Alt-Svc: h3=":PORT"` on the HTTP/1.1 and
//! HTTP/2 answers of an `http3` listener (the way browsers learn that it
//! speaks HTTP/3). A downstream module, so no answer path can forget them;
//! `request_filter` tells it the listener's values, computed at load.

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use std::any::Any;
use std::time::Duration;

/// How long a client may remember an `http3` listener's Alt-Svc: a day, as
/// the large HTTP/3 deployments advertise.
pub const ALT_SVC_MAX_AGE: Duration = Duration::from_secs(86_400);

/// What the answers of one TLS listener carry.
#[derive(Debug, Clone, Default)]
pub struct ListenerHeaders {
    /// Its Strict-Transport-Security value, when it sets `hsts`.
    pub hsts: Option<HeaderValue>,
    /// Its Alt-Svc value, when it has `http3`.
    pub alt_svc: Option<HeaderValue>,
}

impl ListenerHeaders {
    /// The Alt-Svc value of an `http3` listener on `port`.
    pub fn alt_svc(port: u16) -> Option<HeaderValue> {
        let max_age = ALT_SVC_MAX_AGE.as_secs();
        HeaderValue::from_str(&format!("h3=\":{port}\"; ma={max_age}")).ok()
    }
}

/// The per-request module: adds the values it is armed with to the
/// response header.
#[derive(Default)]
pub(crate) struct AnswerHeaders {
    hsts: Option<HeaderValue>,
    alt_svc: Option<HeaderValue>,
}

impl AnswerHeaders {
    /// Arms the module with `listener`'s values; Alt-Svc only when `over_tcp`
    /// (an HTTP/3 client is there already). Call before the answer.
    pub fn set(&mut self, listener: &ListenerHeaders, over_tcp: bool) {
        self.hsts.clone_from(&listener.hsts);
        if over_tcp {
            self.alt_svc.clone_from(&listener.alt_svc);
        }
    }
}

#[async_trait]
impl HttpModule for AnswerHeaders {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        if let Some(value) = &self.hsts {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, value.clone())?;
        }
        if let Some(value) = &self.alt_svc {
            resp.insert_header(http::header::ALT_SVC, value.clone())?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

pub(crate) struct AnswerHeadersBuilder;

impl HttpModuleBuilder for AnswerHeadersBuilder {
    fn init(&self) -> Module {
        Box::new(AnswerHeaders::default())
    }
}
