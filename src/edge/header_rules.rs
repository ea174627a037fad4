//! A route's `request_headers` and `response_headers`: headers removed, then
//! set. Response rules run in a downstream module, so every answer of the
//! route gets them (proxied, cached, static, direct and tollgate's own), as
//! HSTS does; `request_filter` arms it with the route's rules, and with its
//! CORS policy (see `filters::cors`), whose headers that module sets after
//! the rules.

use crate::config::HeaderRulesConfig;
use crate::filters::cors::{Cors, CorsRequest};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use std::any::Any;
use std::sync::Arc;

/// Headers to remove, then to set (replacing any of the same name).
#[derive(Debug, Default)]
pub struct HeaderRules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRules {
    pub fn new(config: &HeaderRulesConfig) -> HeaderRules {
        HeaderRules {
            remove: config.remove.iter().map(|n| n.name().clone()).collect(),
            set: config
                .set
                .iter()
                .map(|(n, v)| (n.name().clone(), v.clone()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Applies the rules to the request the backend gets.
    pub fn apply_to_request(&self, request: &mut RequestHeader) -> pingora::Result<()> {
        for name in &self.remove {
            request.remove_header(name);
        }
        for (name, value) in &self.set {
            request.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// Applies the rules to an answer.
    pub fn apply_to_response(&self, response: &mut ResponseHeader) -> pingora::Result<()> {
        for name in &self.remove {
            response.remove_header(name);
        }
        for (name, value) in &self.set {
            response.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

/// The per-request module: applies the armed route's response rules, then
/// its CORS policy.
#[derive(Default)]
pub(crate) struct ResponseHeaderRules {
    rules: Option<Arc<HeaderRules>>,
    cors: Option<(Arc<Cors>, CorsRequest)>,
}

impl ResponseHeaderRules {
    /// The rules this request's answers get; call once the route is known.
    pub fn arm(&mut self, rules: Arc<HeaderRules>) {
        self.rules = Some(rules);
    }

    /// The CORS policy this request's answers get, with what the policy
    /// judged the request to be; call once the route is known.
    pub fn arm_cors(&mut self, cors: Arc<Cors>, request: CorsRequest) {
        self.cors = Some((cors, request));
    }
}

#[async_trait]
impl HttpModule for ResponseHeaderRules {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        if let Some(rules) = &self.rules {
            rules.apply_to_response(resp)?;
        }
        match &self.cors {
            Some((cors, request)) => cors.apply(request, resp),
            None => Ok(()),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

pub(crate) struct ResponseHeaderRulesBuilder;

impl HttpModuleBuilder for ResponseHeaderRulesBuilder {
    fn init(&self) -> Module {
        Box::new(ResponseHeaderRules::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::HeaderName as ConfigName;

    fn rules(set: &[(&str, &str)], remove: &[&str]) -> HeaderRules {
        HeaderRules::new(&HeaderRulesConfig {
            set: set
                .iter()
                .map(|(n, v)| {
                    (
                        ConfigName::parse(n).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect(),
            remove: remove
                .iter()
                .map(|n| ConfigName::parse(n).unwrap())
                .collect(),
        })
    }

    #[test]
    fn removals_come_first_then_sets_replace() {
        let r = rules(
            &[("X-Frame-Options", "DENY"), ("X-Env", "prod")],
            &["Server", "X-Env"],
        );
        let mut response = ResponseHeader::build(200, None).unwrap();
        response.insert_header("server", "backend/1.0").unwrap();
        response
            .append_header("x-frame-options", "SAMEORIGIN")
            .unwrap();
        response.insert_header("x-env", "dev").unwrap();
        r.apply_to_response(&mut response).unwrap();
        assert!(response.headers.get("server").is_none());
        assert_eq!(
            response.headers.get_all("x-frame-options").iter().count(),
            1
        );
        assert_eq!(response.headers["x-frame-options"], "DENY");
        assert_eq!(response.headers["x-env"], "prod");
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.insert_header("x-debug", "1").unwrap();
        rules(&[("X-Env", "prod")], &["X-Debug"])
            .apply_to_request(&mut request)
            .unwrap();
        assert!(request.headers.get("x-debug").is_none());
        assert_eq!(request.headers["x-env"], "prod");
    }
}
