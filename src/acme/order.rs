//! One ACME order, for one name: the challenge answered, the order finalized
//! with a new key, the chain fetched.

use super::challenge::{alpn_certificate, Http01Answers};
use crate::config::AcmeChallenge;
use crate::edge::certs::CertStore;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus,
    RetryPolicy,
};
use std::time::Duration;

/// How long an order may wait for the ACME server to validate and issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);

/// What was answered for an order; withdrawn when the order ends, however
/// it ends (a timeout drops it mid-way).
enum Answered {
    Http01(String),
    TlsAlpn01(String),
}

struct Answers<'a> {
    given: Vec<Answered>,
    certs: &'a CertStore,
    http01: &'a Http01Answers,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for answer in self.given.drain(..) {
            match answer {
                Answered::Http01(token) => self.http01.set(&token, None),
                Answered::TlsAlpn01(name) => self.certs.set_challenge(&name, None),
            }
        }
    }
}

/// Orders a certificate for `name` with `account`, answering `challenge`.
/// Returns the chain and the private key, in PEM; the error says why not,
/// with the ACME server's problem document when it sent one.
pub(super) async fn run(
    account: &Account,
    name: &str,
    challenge: AcmeChallenge,
    certs: &CertStore,
    http01: &Http01Answers,
) -> Result<(String, String), String> {
    let identifiers = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut answers = Answers {
        given: Vec::new(),
        certs,
        http01,
    };
    answer_and_finish(&mut order, name, challenge, &mut answers).await
}

async fn answer_and_finish(
    order: &mut Order,
    name: &str,
    challenge: AcmeChallenge,
    answers: &mut Answers<'_>,
) -> Result<(String, String), String> {
    let kind = match challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("the authorization of {name} is {other:?}")),
        }
        let mut handle = authorization
            .challenge(kind.clone())
            .ok_or_else(|| format!("the ACME server offers no {kind:?} challenge for {name}"))?;
        let key_authorization = handle.key_authorization();
        match challenge {
            AcmeChallenge::Http01 => {
                let answer = key_authorization.as_str().to_string();
                answers.http01.set(&handle.token, Some(answer));
                answers.given.push(Answered::Http01(handle.token.clone()));
            }
            AcmeChallenge::TlsAlpn01 => {
                let key = alpn_certificate(name, key_authorization.digest().as_ref())?;
                answers.certs.set_challenge(name, Some(key));
                answers.given.push(Answered::TlsAlpn01(name.to_string()));
            }
        }
        handle
            .set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let patience = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(VALIDATION_TIMEOUT);
    let status = order
        .poll_ready(&patience)
        .await
        .map_err(|e| format!("waiting for validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(why_invalid(order, name, status).await);
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&patience)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok((chain_pem, key_pem))
}

/// Why an order ended `status` rather than ready: the problem documents of
/// its challenges, else of the order.
async fn why_invalid(order: &mut Order, name: &str, status: OrderStatus) -> String {
    let mut problems = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        if let Ok(state) = authorization.refresh().await {
            problems.extend(
                state
                    .challenges
                    .iter()
                    .filter_map(|c| c.error.as_ref().map(|p| p.to_string())),
            );
        }
    }
    if problems.is_empty() {
        if let Some(problem) = &order.state().error {
            problems.push(problem.to_string());
        }
    }
    format!(
        "the order for {name} is {status:?}: {}",
        if problems.is_empty() {
            "the ACME server gave no reason".to_string()
        } else {
            problems.join("; ")
        }
    )
}
