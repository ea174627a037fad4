//! Who may use the admin API: anyone who reaches a loopback listener with no
//! `admin_token_file`, else whoever sends `Authorization: Bearer TOKEN`.

use pingora::http::RequestHeader;
use subtle::ConstantTimeEq;

/// The token in `path`, without surrounding whitespace; an error when the
/// file cannot be read or holds no token.
pub(super) fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "server.admin_token_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "server.admin_token_file: {} holds no token",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// Whether `request` may use the API; `Ok` says how it was let in (for the
/// log), `Err` why not.
pub(super) fn check(request: &RequestHeader, token: Option<&str>) -> Result<&'static str, String> {
    let Some(token) = token else {
        return Ok("loopback, no token required");
    };
    let given = request
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or("send Authorization: Bearer TOKEN (the token of server.admin_token_file)")?;
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok("bearer token")
    } else {
        Err("the token is wrong".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/api/status", None).unwrap();
        if let Some(value) = authorization {
            request.insert_header("Authorization", value).unwrap();
        }
        request
    }

    #[test]
    fn a_token_is_required_only_when_there_is_one() {
        assert!(check(&request(None), None).is_ok());
        assert!(check(&request(None), Some("s3cret")).is_err());
        assert!(check(&request(Some("Bearer nope")), Some("s3cret")).is_err());
        assert!(check(&request(Some("Basic s3cret")), Some("s3cret")).is_err());
        assert_eq!(
            check(&request(Some("Bearer s3cret")), Some("s3cret")),
            Ok("bearer token")
        );
    }
}
