//! Strict-Transport-Security on every answer of a TLS listener that sets `hsts`:
//! proxied, static, direct and error answers alike. A downstream module, so no
//! answer path can forget it; `request_filter` tells it the listener's value.

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use std::any::Any;

/// The per-request module: adds `value`, when set, to the response header.
#[derive(Default)]
pub(crate) struct Hsts {
    value: Option<HeaderValue>,
}

impl Hsts {
    /// Sets the header this request's answer carries; call before the answer.
    pub fn set(&mut self, value: Option<HeaderValue>) {
        self.value = value;
    }
}

#[async_trait]
impl HttpModule for Hsts {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        if let Some(value) = &self.value {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, value.clone())?;
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

pub(crate) struct HstsBuilder;

impl HttpModuleBuilder for HstsBuilder {
    fn init(&self) -> Module {
        Box::new(Hsts::default())
    }
}
