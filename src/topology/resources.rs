//! What a topology takes from outside its file: key material of auth policies
//! (secrets, JWK Sets, API key and htpasswd files), the HTTP client of forward policies, the
//! directories of static routes, the files of error pages, and the
//! directories of disk caches (made when missing, checked writable). [`Resources::read`] is the only fallible
//! step between a loaded file and its topology, and it reports every problem.

use super::NamedAuth;
use crate::config::{AuthPolicyConfig, Config, ErrorBody, Problem, Problems};
use crate::edge::error_pages::ErrorPages;
use crate::edge::request_body::{check_temp_dir, temp_dir_or_default};
use crate::edge::static_files::StaticFiles;
use crate::filters::auth::api_keys::ApiKeys;
use crate::filters::auth::basic::BasicAuth;
use crate::filters::auth::client_cert::ClientCertAuth;
use crate::filters::auth::forward::{self, ForwardAuth};
use crate::filters::auth::jwt::{JwtAuth, JwtKeys};
use crate::filters::auth::AuthPolicy;
use std::collections::HashMap;
use std::sync::Arc;

/// The parts of a topology built from outside the file.
pub struct Resources {
    /// The auth policies, by name.
    pub(super) auth: HashMap<String, Arc<NamedAuth>>,
    /// The directory of each static route, by route index.
    pub(super) static_files: HashMap<usize, StaticFiles>,
    /// The error pages of each route that has some, by route index.
    pub(super) error_pages: HashMap<usize, ErrorPages>,
}

impl Resources {
    /// Reads what `config` names; every problem is returned, each at its node.
    pub fn read(config: &Config) -> Result<Resources, Problems> {
        let mut problems = Problems::default();
        let mut auth = HashMap::new();
        for (name, policy) in &config.auth {
            match read_policy(name, policy) {
                Ok(built) => {
                    let named = NamedAuth {
                        name: name.clone(),
                        policy: built,
                        error_body: error_body(policy),
                    };
                    auth.insert(name.clone(), Arc::new(named));
                }
                Err(problem) => problems.0.push(problem),
            }
        }
        let mut static_files = HashMap::new();
        for (id, route) in config.routes.iter().enumerate() {
            let Some(files) = &route.static_files else {
                continue;
            };
            let not_found = files.not_found_page.as_deref();
            match StaticFiles::new(&files.root, files.index.clone(), not_found) {
                Ok(served) => {
                    static_files.insert(id, served);
                }
                Err(e) => problems.push(format!("routes[{id}].static.root"), e),
            }
        }
        let mut error_pages = HashMap::new();
        for (id, route) in config.routes.iter().enumerate() {
            if route.error_pages.is_empty() {
                continue;
            }
            match ErrorPages::read(&route.error_pages) {
                Ok(pages) => {
                    error_pages.insert(id, pages);
                }
                Err(unread) => {
                    for (status, message) in unread {
                        let at = format!("routes[{id}].error_pages.{}", status.as_u16());
                        problems.push(at, message);
                    }
                }
            }
        }
        if let Some(acme) = &config.server.acme {
            if let Err(e) = crate::acme::check_storage(acme) {
                problems.push("server.acme.storage", e);
            }
        }
        let temp_dir = temp_dir_or_default(config.server.temp_dir.as_deref());
        if let Err(e) = check_temp_dir(&temp_dir) {
            problems.push("server.temp_dir", e);
        }
        for (name, cache) in &config.caches {
            if let Some(disk) = &cache.disk {
                if let Err(e) = crate::cache::prepare_directory(&disk.path) {
                    problems.push(format!("caches.{name}.disk.path"), e);
                }
            }
        }
        if problems.0.is_empty() {
            Ok(Resources {
                auth,
                static_files,
                error_pages,
            })
        } else {
            Err(problems)
        }
    }
}

/// The policy at node `at`, with what it reads.
fn read_policy(name: &str, config: &AuthPolicyConfig) -> Result<AuthPolicy, Problem> {
    let at = &format!("auth.{name}");
    if let Some(forward) = &config.forward {
        let client = forward::http_client(forward.timeout)
            .map_err(|e| Problem::at(format!("{at}.forward"), e))?;
        return Ok(AuthPolicy::Forward(Box::new(ForwardAuth::new(
            name, forward, client,
        ))));
    }
    if let Some(jwt) = &config.jwt {
        let keys = JwtKeys::read(jwt, &format!("{at}.jwt"))?;
        return Ok(AuthPolicy::Jwt(JwtAuth::new(jwt, keys)));
    }
    if let Some(keys) = &config.api_keys {
        return ApiKeys::load(keys.header.name().clone(), &keys.keys_file)
            .map(AuthPolicy::ApiKeys)
            .map_err(|e| Problem::at(format!("{at}.api_keys.keys_file"), e));
    }
    if let Some(basic) = &config.basic {
        let realm = basic.realm.as_deref().unwrap_or(name);
        let header = basic.user_header.as_ref().map(|h| h.name().clone());
        return BasicAuth::load(&basic.users_file, realm, header)
            .map(|b| AuthPolicy::Basic(Box::new(b)))
            .map_err(|e| Problem::at(format!("{at}.basic.users_file"), e));
    }
    if let Some(client_cert) = &config.client_cert {
        return Ok(AuthPolicy::ClientCert(ClientCertAuth::new(
            &client_cert.subjects,
        )));
    }
    // Validation refuses a policy of no kind.
    Err(Problem::at(
        at,
        "an auth policy has exactly one of `forward`, `jwt`, `api_keys`, `basic` or `client_cert`",
    ))
}

fn error_body(config: &AuthPolicyConfig) -> ErrorBody {
    config
        .forward
        .as_ref()
        .map(|f| f.error_body)
        .or(config.jwt.as_ref().map(|j| j.error_body))
        .or(config.api_keys.as_ref().map(|k| k.error_body))
        .or(config.basic.as_ref().map(|b| b.error_body))
        .or(config.client_cert.as_ref().map(|c| c.error_body))
        .unwrap_or_default()
}
