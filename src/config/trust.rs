//! The CA files of upstreams' `tls.ca`: read when the file is loaded (and so
//! on every reload, which is how a rotated CA is taken), so that a missing or
//! unusable one is an error at its line, never a failed connection later.

use super::error::Problems;
use super::schema::Config;
use pingora::protocols::tls::CaType;
use pingora::tls::RootCertStore;
use pingora::utils::tls::{parse_x509, WrappedX509};
use std::path::Path;
use std::sync::Arc;

/// Reads the `tls.ca` of every upstream into its `ca_roots`; every file that
/// is not usable is a problem at its node.
pub(crate) fn read_upstream_cas(config: &mut Config) -> Problems {
    let mut problems = Problems::default();
    for (name, upstream) in &mut config.upstreams {
        let Some(tls) = &mut upstream.tls else {
            continue;
        };
        let Some(path) = &tls.ca else {
            continue;
        };
        match roots_of(path) {
            Ok(roots) => tls.ca_roots = Some(roots),
            Err(e) => problems.push(format!("upstreams.{name}.tls.ca"), e),
        }
    }
    problems
}

/// The CAs of PEM file `path`, as pingora's peers take them; each checked to
/// be a usable trust anchor (pingora adds them to a root store per connection).
fn roots_of(path: &Path) -> Result<Arc<CaType>, String> {
    let certs = crate::edge::tls::read_ca_file(path)?;
    let mut store = RootCertStore::empty();
    for cert in &certs {
        store.add(cert.clone()).map_err(|e| {
            format!(
                "{} holds a certificate that cannot be a CA: {e}",
                path.display()
            )
        })?;
    }
    // `read_ca_file` parsed each one already, so `parse_x509` cannot fail.
    let roots: Vec<WrappedX509> = certs
        .iter()
        .map(|cert| WrappedX509::new(cert.as_ref().to_vec(), parse_x509))
        .collect();
    Ok(Arc::from(roots))
}
