//! How every roomcast process reaches Redis: the fred configuration for a
//! `redis.url` (and its TLS CA), shared by the gateway's broker and the
//! presence service, so both accept the same URLs and fail the same way.

use std::sync::Arc;

use fred::prelude::Config;

/// The fred configuration for a Redis URL: `redis://` or `rediss://` (TLS)
/// for one server, `redis-cluster://` or `rediss-cluster://` for a cluster;
/// a password goes in the URL (`redis://:pass@host:port` or
/// `redis://user:pass@…`, AUTH or ACL). With TLS the server's certificate is
/// checked against the system roots, or against the CA in `tls_ca_file`
/// (PEM) when one is given. Shared by the gateway and the presence service.
pub fn redis_config(url: &str, tls_ca_file: &str) -> Result<Config, String> {
    let mut config = Config::from_url(url).map_err(|e| format!("redis.url: {e}"))?;
    if tls_ca_file.is_empty() {
        return Ok(config);
    }
    if !config.uses_tls() {
        return Err("redis.tls_ca_file needs a rediss:// (TLS) redis.url".into());
    }
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(tls_ca_file)
        .map_err(|e| format!("redis.tls_ca_file: cannot read {tls_ca_file}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("redis.tls_ca_file: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("redis.tls_ca_file: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("redis.tls_ca_file: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.tls = Some(fred::types::config::TlsConnector::from(client).into());
    Ok(config)
}
