//! JSON Web Tokens from `Authorization: Bearer`, checked with the jsonwebtoken crate:
//! signature, `exp` and `nbf` (with leeway), `iss`, `aud`. Only the configured
//! algorithms are accepted (so `alg: none` never is), HMAC tokens only verify
//! against the configured secret and public-key tokens only against JWKS keys of
//! their own kind, which rules out algorithm confusion.

use super::{bearer_token, claim_text, Identity, RejectReason, Rejection, Verdict};
use crate::config::{JwtConfig, Problem};
use http::header::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use pingora::http::RequestHeader;
use serde_json::Value;

struct PublicKey {
    kid: Option<String>,
    /// Algorithms this key verifies.
    family: KeyKind,
    key: DecodingKey,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    Ec,
}

impl KeyKind {
    fn verifies(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::Ec => matches!(alg, Algorithm::ES256 | Algorithm::ES384),
        }
    }
}

pub struct JwtAuth {
    /// One validation per accepted algorithm: jsonwebtoken wants every algorithm
    /// of a validation to fit the key, so each token is checked with its own.
    validations: Vec<(Algorithm, Validation)>,
    secret: Option<DecodingKey>,
    public_keys: Vec<PublicKey>,
    claims_to_headers: Vec<(String, HeaderName)>,
}

/// The key material of a JWT policy, read from outside the topology file: the
/// HMAC secret (from the environment or a file) and the JWKS file's keys.
pub struct JwtKeys {
    secret: Option<DecodingKey>,
    public_keys: Vec<PublicKey>,
}

impl JwtKeys {
    /// Reads the secret and the JWKS file of `config`, the policy at node `at`
    /// (`auth.tokens.jwt`); a problem names the key it is about.
    pub fn read(config: &JwtConfig, at: &str) -> Result<JwtKeys, Problem> {
        let secret = if let Some(var) = &config.secret_env {
            let value = std::env::var(var).map_err(|_| {
                Problem::at(
                    format!("{at}.secret_env"),
                    format!("environment variable {var} is not set"),
                )
            })?;
            Some(secret_key(value.trim(), &format!("{at}.secret_env"))?)
        } else if let Some(path) = &config.secret_file {
            let node = format!("{at}.secret_file");
            let value = std::fs::read_to_string(path)
                .map_err(|e| Problem::at(&node, format!("cannot read {}: {e}", path.display())))?;
            Some(secret_key(value.trim(), &node)?)
        } else {
            None
        };
        let public_keys = match &config.jwks_file {
            Some(path) => read_jwks(path).map_err(|e| Problem::at(format!("{at}.jwks_file"), e))?,
            None => Vec::new(),
        };
        Ok(JwtKeys {
            secret,
            public_keys,
        })
    }
}

/// The RSA and EC keys of the JWK Set at `path`.
fn read_jwks(path: &std::path::Path) -> Result<Vec<PublicKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a JWK Set: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(_) => KeyKind::Ec,
            // Symmetric keys in a JWKS would allow confusion; other kinds are unsupported.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("a key in {} is unusable: {e}", path.display()))?;
        keys.push(PublicKey {
            kid: jwk.common.key_id.clone(),
            family,
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!("{} has no RSA or EC key", path.display()));
    }
    Ok(keys)
}

impl JwtAuth {
    /// The policy of `config`, with its key material.
    pub fn new(config: &JwtConfig, keys: JwtKeys) -> JwtAuth {
        let mut validation = Validation {
            leeway: config.leeway.as_secs(),
            validate_nbf: true,
            validate_aud: config.audience.is_some(),
            ..Validation::default()
        };
        let mut required = if config.require_exp {
            vec!["exp"]
        } else {
            Vec::new()
        };
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &config.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let validations = config
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = validation.clone();
                v.algorithms = vec![alg.algorithm()];
                (alg.algorithm(), v)
            })
            .collect();
        let claims_to_headers = config
            .claims_to_headers
            .iter()
            .map(|(claim, header)| (claim.clone(), header.name().clone()))
            .collect();
        JwtAuth {
            validations,
            secret: keys.secret,
            public_keys: keys.public_keys,
            claims_to_headers,
        }
    }

    pub(crate) fn identity_headers(&self) -> Vec<HeaderName> {
        self.claims_to_headers
            .iter()
            .map(|(_, h)| h.clone())
            .collect()
    }

    pub fn check(&self, req: &RequestHeader) -> Verdict {
        let Some(token) = bearer_token(req) else {
            return reject(Failure::Missing);
        };
        match self.verify(token) {
            Ok(claims) => Verdict::Pass(self.identity(&claims)),
            Err(failure) => reject(failure),
        }
    }

    /// The token's claims when it is valid.
    fn verify(&self, token: &str) -> Result<Value, Failure> {
        // An unknown `alg` (including `none`) fails here.
        let header = decode_header(token).map_err(|_| Failure::Invalid)?;
        let Some((_, validation)) = self.validations.iter().find(|(alg, _)| *alg == header.alg)
        else {
            return Err(Failure::Invalid);
        };
        let hmac = matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let candidates: Vec<&DecodingKey> = if hmac {
            self.secret.iter().collect()
        } else {
            self.public_keys
                .iter()
                .filter(|k| k.family.verifies(header.alg))
                .filter(|k| header.kid.is_none() || k.kid == header.kid)
                .map(|k| &k.key)
                .collect()
        };
        let mut outcome = Err(Failure::Invalid);
        for key in candidates {
            match decode::<Value>(token, key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    // Another key may have signed it.
                    ErrorKind::InvalidSignature => {}
                    ErrorKind::ExpiredSignature => return Err(Failure::Expired),
                    ErrorKind::ImmatureSignature => return Err(Failure::NotYetValid),
                    ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => {
                        return Err(Failure::NoExpiry)
                    }
                    _ => outcome = Err(Failure::Invalid),
                },
            }
        }
        outcome
    }

    fn identity(&self, claims: &Value) -> Identity {
        let headers = self
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| {
                let text = claim_text(claims, claim)?;
                HeaderValue::from_str(&text)
                    .ok()
                    .map(|v| (header.clone(), v))
            })
            .collect();
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        Identity { headers, subject }
    }
}

fn secret_key(secret: &str, node: &str) -> Result<DecodingKey, Problem> {
    if secret.is_empty() {
        return Err(Problem::at(node, "the HMAC secret is empty"));
    }
    Ok(DecodingKey::from_secret(secret.as_bytes()))
}

/// Why a token did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Missing,
    Invalid,
    Expired,
    NotYetValid,
    /// No `exp` claim, and `require_exp` is set.
    NoExpiry,
}

fn reject(failure: Failure) -> Verdict {
    let (reason, message) = match failure {
        Failure::Missing => (
            RejectReason::MissingCredentials,
            "401 Unauthorized: a bearer token is needed\n",
        ),
        Failure::Expired => (
            RejectReason::ExpiredToken,
            "401 Unauthorized: the token has expired\n",
        ),
        Failure::NotYetValid => (
            RejectReason::ExpiredToken,
            "401 Unauthorized: the token is not valid yet (nbf)\n",
        ),
        Failure::NoExpiry => (
            RejectReason::InvalidToken,
            "401 Unauthorized: the token has no `exp` claim, which this gateway requires (require_exp)\n",
        ),
        Failure::Invalid => (
            RejectReason::InvalidToken,
            "401 Unauthorized: invalid token\n",
        ),
    };
    Verdict::Reject(Rejection::unauthorized(reason, message))
}
