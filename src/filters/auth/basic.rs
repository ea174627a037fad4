//! `basic` auth (RFC 7617): `Authorization: Basic` checked against an
//! htpasswd file of bcrypt entries, as `htpasswd -B` writes them. Weaker
//! hashes (MD5 `$apr1$`, SHA-1 `{SHA}`, DES crypt, plain text) are refused
//! when the file is read.
//!
//! bcrypt (the `bcrypt` crate, which compares in constant time) is slow on
//! purpose, so it runs on blocking threads, at most one per
//! core at a time, and a password that verified is remembered for
//! [`REMEMBERED_FOR`] under an HMAC of the credentials (never the password
//! itself). An unknown user costs one bcrypt too, so timing does not tell which
//! user names exist.

use super::{Identity, RejectReason, Rejection, Verdict};
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use pingora::http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use sha2::Sha256;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// How long a verified user and password are let through without bcrypt.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(300);
/// The longest a check waits for a core to run bcrypt on.
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Most verified credentials remembered.
const REMEMBERED_MAX: usize = 10_000;
/// The highest bcrypt cost accepted: `htpasswd -B -C` writes at most 17, which
/// already takes seconds per check.
const MAX_COST: u32 = 17;

type Digest = [u8; 32];

pub struct BasicAuth {
    /// `Basic realm="...", charset="UTF-8"`.
    challenge: HeaderValue,
    /// User name -> bcrypt hash, checked when read.
    users: HashMap<String, Arc<str>>,
    /// A hash of the file: verified, and failed, for unknown users.
    unknown_user: Arc<str>,
    /// The upstream request header that carries the user name.
    user_header: Option<HeaderName>,
    /// The key of the credentials' HMAC; random per policy.
    secret: Digest,
    /// Digest of credentials -> the same digest (compared on a hit).
    remembered: MemoryCache<Digest, Digest>,
    /// Bounds the bcrypt checks running at once.
    verifying: Arc<Semaphore>,
}

impl BasicAuth {
    /// Reads `users_file`; the error names the file and line of the first bad
    /// entry.
    pub fn load(
        users_file: &Path,
        realm: &str,
        user_header: Option<HeaderName>,
    ) -> Result<BasicAuth, String> {
        let text = std::fs::read_to_string(users_file)
            .map_err(|e| format!("cannot read users file {}: {e}", users_file.display()))?;
        let users = parse_htpasswd(&text)
            .map_err(|(line, e)| format!("{}:{line}: {e}", users_file.display()))?;
        // Every entry has the same cost (see `parse_htpasswd`).
        let Some(unknown_user) = users.values().next().cloned() else {
            return Err(format!("users file {} has no user", users_file.display()));
        };
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                .map_err(|_| format!("realm `{realm}` cannot be sent in a header"))?;
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| format!("no random numbers: {e}"))?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(BasicAuth {
            challenge,
            users,
            unknown_user,
            user_header,
            secret,
            remembered: MemoryCache::new(REMEMBERED_MAX),
            verifying: Arc::new(Semaphore::new(cores)),
        })
    }

    /// Every header this policy may add to upstream requests.
    pub(crate) fn identity_headers(&self) -> Vec<HeaderName> {
        self.user_header.iter().cloned().collect()
    }

    /// Passes a request whose `Authorization: Basic` names a user of the file
    /// with that user's password; the user name is the subject.
    pub(crate) async fn check(&self, req: &RequestHeader) -> Verdict {
        let Some((user, password)) = basic_credentials(req) else {
            return Verdict::Reject(self.rejection(
                RejectReason::MissingCredentials,
                "401 Unauthorized: a user name and password are needed\n",
            ));
        };
        let digest = self.digest(&user, &password);
        if let (Some(seen), _) = self.remembered.get(&digest) {
            if bool::from(seen.ct_eq(&digest)) {
                return self.pass(user);
            }
        }
        let known = self.users.get(&user);
        let hash = Arc::clone(known.unwrap_or(&self.unknown_user));
        // A flood of wrong passwords queues here, not on the blocking
        // threads; a request that cannot be checked in time gets 503.
        let waiting = self.verifying.clone().acquire_owned();
        let Ok(Ok(permit)) = tokio::time::timeout(MAX_QUEUE_WAIT, waiting).await else {
            return Verdict::Reject(Rejection::unavailable());
        };
        let verified = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(&password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if verified && known.is_some() {
            self.remembered.put(&digest, digest, Some(REMEMBERED_FOR));
            return self.pass(user);
        }
        Verdict::Reject(self.rejection(
            RejectReason::InvalidCredentials,
            "401 Unauthorized: wrong user name or password\n",
        ))
    }

    fn pass(&self, user: String) -> Verdict {
        let headers = self
            .user_header
            .iter()
            .filter_map(|name| Some((name.clone(), HeaderValue::from_str(&user).ok()?)))
            .collect();
        Verdict::Pass(Identity {
            headers,
            subject: Some(user),
        })
    }

    fn rejection(&self, reason: RejectReason, message: &'static str) -> Rejection {
        Rejection {
            status: http::StatusCode::UNAUTHORIZED,
            reason,
            headers: vec![(WWW_AUTHENTICATE, self.challenge.clone())],
            body: Bytes::from_static(message.as_bytes()),
        }
    }

    fn digest(&self, user: &str, password: &[u8]) -> Digest {
        // HMAC takes keys of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return [0; 32];
        };
        mac.update(user.as_bytes());
        mac.update(b":");
        mac.update(password);
        mac.finalize().into_bytes().into()
    }
}

/// The user name and password of `Authorization: Basic` (scheme in any case):
/// the user name up to the first `:`. `None` when absent or malformed.
fn basic_credentials(req: &RequestHeader) -> Option<(String, Vec<u8>)> {
    let value = req.headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// The users of an htpasswd file: `user:hash` lines, blank lines and `#`
/// comments skipped. The error is the line number and what is wrong there.
fn parse_htpasswd(text: &str) -> Result<HashMap<String, Arc<str>>, (usize, String)> {
    let mut users = HashMap::new();
    let mut first_line = HashMap::new();
    // The cost of the first entry, and its line.
    let mut costs: Option<(u32, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err((number, "expected `user:hash`".to_string()));
        };
        if user.is_empty() || !user.bytes().all(|b| b.is_ascii_graphic()) {
            // The name is passed on in a header (`user_header`).
            return Err((
                number,
                "a user name is printable ASCII without spaces".into(),
            ));
        }
        let parsed = parse_entry(hash).map_err(|e| (number, format!("user `{user}`: {e}")))?;
        if let Some(before) = first_line.insert(user.to_string(), number) {
            return Err((number, format!("user `{user}` is already on line {before}")));
        }
        let cost = cost_of(&parsed);
        match costs {
            Some((first, at)) if first != cost => {
                // An unknown user is checked at one cost; another cost would
                // tell by its time which names exist.
                return Err((
                    number,
                    format!(
                        "bcrypt cost {cost} differs from the cost {first} of line {at}: \
                         write every entry with the same `htpasswd -B -C`"
                    ),
                ));
            }
            Some(_) => {}
            None => costs = Some((cost, number)),
        }
        users.insert(user.to_string(), parsed);
    }
    Ok(users)
}

/// One entry's hash: bcrypt (`$2y$`, `$2b$`, `$2a$`) of a cost htpasswd
/// writes; why not, otherwise.
fn parse_entry(hash: &str) -> Result<Arc<str>, String> {
    const REWRITE: &str = "write it again with `htpasswd -B`";
    let weak = |kind: &str| Err(format!("{kind} hash, which is too weak: {REWRITE}"));
    if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
        return weak("an MD5");
    }
    if hash.starts_with("{SHA}") {
        return weak("a SHA-1");
    }
    if !hash.starts_with('$') {
        return weak("a plain-text or DES crypt");
    }
    if !hash.starts_with("$2") {
        return Err(format!("only bcrypt hashes are accepted: {REWRITE}"));
    }
    if hash.starts_with("$2x$") {
        return Err(format!("`$2x$` marks hashes of a buggy bcrypt: {REWRITE}"));
    }
    let parts = bcrypt::HashParts::from_str(hash)
        .map_err(|e| format!("not a bcrypt hash ({e}): {REWRITE}"))?;
    if parts.get_cost() > MAX_COST {
        return Err(format!(
            "bcrypt cost {} would take minutes per request; use at most {MAX_COST}",
            parts.get_cost()
        ));
    }
    Ok(Arc::from(hash))
}

/// The cost of a hash `parse_entry` accepted.
fn cost_of(hash: &str) -> u32 {
    bcrypt::HashParts::from_str(hash).map_or(0, |p| p.get_cost())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice:$2y$05$abcdefghijklmnopqrstuuWG29KuyeAicPCJODk1zjyGvyQUU2awu";

    fn request(authorization: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Authorization", authorization).unwrap();
        req
    }

    fn policy(file_text: &str) -> BasicAuth {
        let dir = std::env::temp_dir().join(format!("tollgate-basic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{:x}", file_text.len()));
        std::fs::write(&file, file_text).unwrap();
        BasicAuth::load(&file, "staff", Some(HeaderName::from_static("x-user"))).unwrap()
    }

    #[test]
    fn htpasswd_lines() {
        let users = parse_htpasswd(&format!("# staff\n\n{ALICE}\r\n")).unwrap();
        assert_eq!(users.len(), 1);
        for (text, line, says) in [
            ("alice", 1, "expected `user:hash`"),
            ("# c\nbob:$apr1$abcdefgh$0123456789abcdefghijkl", 2, "MD5"),
            ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", 1, "SHA-1"),
            ("bob:abJnggxhB/yWI", 1, "DES"),
            ("bob:$6$salt$hash", 1, "only bcrypt"),
            ("bob:$2y$05$short", 1, "not a bcrypt hash"),
            (
                "bob:$2x$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
                1,
                "buggy",
            ),
            (&format!("{ALICE}\n{ALICE}"), 2, "already on line 1"),
            (
                &format!(
                    "{ALICE}\nbob:$2b$04$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
                ),
                2,
                "differs from the cost 5 of line 1",
            ),
            (
                "al ice:$2y$05$abcdefghijklmnopqrstuuWG29KuyeAicPCJODk1zjyGvyQUU2awu",
                1,
                "printable ASCII",
            ),
            (
                "alice:$2y$18$abcdefghijklmnopqrstuuWG29KuyeAicPCJODk1zjyGvyQUU2awu",
                1,
                "at most 17",
            ),
        ] {
            let Err((at, message)) = parse_htpasswd(text) else {
                panic!("{text} accepted");
            };
            assert_eq!(at, line, "{text}");
            assert!(message.contains(says), "{text}: {message}");
        }
    }

    #[test]
    fn credentials_from_the_header() {
        let req = request("basic YWxpY2U6cGE6c3M=");
        assert_eq!(
            basic_credentials(&req),
            Some(("alice".to_string(), b"pa:ss".to_vec()))
        );
        assert_eq!(basic_credentials(&request("Bearer abc")), None);
        assert_eq!(basic_credentials(&request("Basic !!!")), None);
        assert_eq!(basic_credentials(&request("Basic YWxpY2U=")), None);
    }

    #[tokio::test]
    async fn the_right_password_passes_with_the_user_as_subject() {
        let auth = policy(&format!("{ALICE}\n"));
        let encoded = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let right = request(&format!("Basic {}", encoded("alice:password")));
        let Verdict::Pass(identity) = auth.check(&right).await else {
            panic!("refused");
        };
        assert_eq!(identity.subject.as_deref(), Some("alice"));
        assert_eq!(identity.headers[0].1, "alice");
        // Remembered: it passes even once the hash no longer matches it.
        let mut forgetful = auth;
        let other = "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
        forgetful.users.insert("alice".into(), Arc::from(other));
        assert!(matches!(forgetful.check(&right).await, Verdict::Pass(_)));
        let auth = policy(&format!("{ALICE}\n"));
        for wrong in ["alice:passwore", "bob:password", "alice:"] {
            let verdict = auth
                .check(&request(&format!("Basic {}", encoded(wrong))))
                .await;
            let Verdict::Reject(rejection) = verdict else {
                panic!("{wrong} passed");
            };
            assert_eq!(rejection.reason, RejectReason::InvalidCredentials);
            assert_eq!(
                rejection.headers[0].1,
                "Basic realm=\"staff\", charset=\"UTF-8\""
            );
        }
        let missing = auth
            .check(&RequestHeader::build("GET", b"/", None).unwrap())
            .await;
        assert!(
            matches!(missing, Verdict::Reject(r) if r.reason == RejectReason::MissingCredentials)
        );
    }
}
