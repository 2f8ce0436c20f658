//! TLS to PostgreSQL: the libpq `sslmode` names a user types (`disable`,
//! `prefer`, `require`, `verify-ca`, `verify-full`) and a CA file
//! (`DATABASE_CA_FILE` or `sslrootcert`), turned into a `postgres::Config`
//! and a rustls connector. Used by `store::Database` when it is made; every
//! connection of the process then uses the same connector.
//!
//! Why here: tokio-postgres (under `postgres`) parses only `disable`,
//! `prefer` and `require`, refuses `verify-full` and `sslrootcert`, and
//! leaves verification to the connector. So both are taken out of the URL
//! before it is parsed, and the verification they ask for is built into the
//! rustls configuration.
//!
//! Without `sslmode` (and without a CA file) nothing changes from before:
//! no TLS is attempted. A CA file alone means `verify-full`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector every PostgreSQL connection of the process uses.
pub type Connector = MakeRustlsConnect;

/// What the user asked for, by libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it, certificate not checked.
    Prefer,
    /// TLS or fail; the certificate is checked only against a given CA.
    Require,
    /// TLS, certificate signed by the CA; any host name.
    VerifyCa,
    /// TLS, certificate signed by the CA and naming the host connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ))
            }
        })
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The system's store (`sslrootcert=system`, or a verify mode without a
    /// CA file).
    System,
    File(String),
}

/// Parses `DATABASE_URL` (URL or `key=value` form) with libpq's `sslmode`
/// and `sslrootcert`, `ca_file` (DATABASE_CA_FILE) standing in for a missing
/// `sslrootcert`. Errors name the setting, never the URL (it may hold a
/// password).
pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<(postgres::Config, Connector), String> {
    let (rest, mode, root_cert) = take_tls_options(url)?;
    let mut config =
        postgres::Config::from_str(&rest).map_err(|e| format!("invalid DATABASE_URL: {e}"))?;
    let roots = match (root_cert, ca_file) {
        (Some(path), _) if path == "system" => Some(Roots::System),
        (Some(path), _) => Some(Roots::File(path)),
        (None, Some(path)) => Some(Roots::File(path.display().to_string())),
        (None, None) => None,
    };
    let mode = match (mode, &roots) {
        (Some(mode), _) => mode,
        (None, Some(_)) => SslMode::VerifyFull,
        (None, None) => SslMode::Disable,
    };
    config.ssl_mode(match mode {
        SslMode::Disable => postgres::config::SslMode::Disable,
        SslMode::Prefer => postgres::config::SslMode::Prefer,
        _ => postgres::config::SslMode::Require,
    });
    let connector = MakeRustlsConnect::new(client_config(mode, roots.as_ref())?);
    Ok((config, connector))
}

/// Explains a connection error caused by TLS, or by a server that demands
/// TLS, in one line with what to change; `None` for other errors.
pub fn explain(err: &postgres::Error) -> Option<String> {
    if let Some(db) = err.as_db_error() {
        // pg_hba.conf has only `hostssl` lines for this client.
        if db.code().code() == "28000" && db.message().contains("no encryption") {
            return Some(format!(
                "{} ({}): the server requires TLS: add sslmode=verify-full (and \
                 DATABASE_CA_FILE) to DATABASE_URL",
                db.message(),
                db.code().code()
            ));
        }
        return None;
    }
    if !is_tls_error(err) {
        return None;
    }
    let cause = std::error::Error::source(err).map_or_else(String::new, |c| c.to_string());
    let advice = match rustls_error(err) {
        None if cause.contains("does not support TLS") => {
            "the server does not offer TLS but sslmode asks for it: enable ssl on the server, \
             or use sslmode=prefer or disable"
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => {
            "its certificate is not signed by a trusted CA: set DATABASE_CA_FILE (or \
             sslrootcert) to the CA that signed it"
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => {
            "its certificate does not name the host connected to: use a host name the \
             certificate carries, or sslmode=verify-ca"
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => "its certificate is outside its validity period",
        _ => "the TLS handshake failed",
    };
    Some(format!("TLS: {cause}: {advice}"))
}

/// Whether `err` is a TLS failure that waiting cannot cure: a refused
/// certificate, a server without TLS under `require`. A connection cut
/// during the handshake (server restarting) is not one.
pub fn is_permanent_tls_error(err: &postgres::Error) -> bool {
    if !is_tls_error(err) {
        return false;
    }
    // tokio-rustls wraps rustls's own errors in an io::Error; a bare
    // io::Error is the connection itself failing.
    let io = std::error::Error::source(err).and_then(|c| c.downcast_ref::<std::io::Error>());
    io.is_none() || rustls_error(err).is_some()
}

/// The rustls error under a TLS handshake failure, if that is the cause.
fn rustls_error(err: &postgres::Error) -> Option<&rustls::Error> {
    std::error::Error::source(err)?
        .downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
}

fn is_tls_error(err: &postgres::Error) -> bool {
    // tokio-postgres gives no public access to its error kind; this is its
    // Display for Kind::Tls.
    err.as_db_error().is_none() && err.to_string() == "error performing TLS handshake"
}

/// Takes `sslmode` and `sslrootcert` out of a connection string, which the
/// postgres crate cannot parse, and returns the rest with them.
fn take_tls_options(url: &str) -> Result<(String, Option<SslMode>, Option<String>), String> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: String| -> Result<bool, String> {
        match key {
            "sslmode" => mode = Some(value.parse::<SslMode>()?),
            "sslrootcert" => root_cert = Some(value),
            _ => return Ok(false),
        }
        Ok(true)
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (head, query) = match url.split_once('?') {
            Some((head, query)) => (head, query),
            None => return Ok((url.to_owned(), None, None)),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key, percent_decode(value))? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            head.to_owned()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        Ok((rest, mode, root_cert))
    } else {
        // key=value form; values with spaces would be quoted, which these
        // two settings never need.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            let taken = match word.split_once('=') {
                Some((key, value)) => take(key.trim(), value.trim_matches('\'').to_owned())?,
                None => false,
            };
            if !taken {
                kept.push(word);
            }
        }
        Ok((kept.join(" "), mode, root_cert))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls configuration for a mode: which roots, and how much of the
/// certificate is checked.
fn client_config(mode: SslMode, roots: Option<&Roots>) -> Result<ClientConfig, String> {
    // The provider is named, not taken from the process default, so that no
    // other crate's feature choice can make rustls panic for want of one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let verify_chain = match mode {
        SslMode::Disable | SslMode::Prefer => false,
        // libpq: "require" with a root certificate behaves as verify-ca.
        SslMode::Require => roots.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    let config = if !verify_chain {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let store = Arc::new(root_store(roots.unwrap_or(&Roots::System))?);
        let webpki = WebPkiServerVerifier::builder_with_provider(store, provider)
            .build()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        if mode == SslMode::VerifyFull {
            builder.with_webpki_verifier(webpki).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyHostName(webpki)))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

fn root_store(roots: &Roots) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read the PostgreSQL CA file {path}: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| format!("PostgreSQL CA file {path} is not PEM: {e}"))?;
                store
                    .add(cert)
                    .map_err(|e| format!("PostgreSQL CA file {path}: {e}"))?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
    }
    if store.is_empty() {
        return Err(format!(
            "no trusted CA certificate for PostgreSQL in {}: set DATABASE_CA_FILE to a PEM file",
            match roots {
                Roots::File(path) => path.as_str(),
                Roots::System => "the system's store",
            }
        ));
    }
    Ok(store)
}

/// `prefer` and `require` as libpq has them: encrypted, any certificate. The
/// handshake signatures are still checked, so the peer holds the key of the
/// certificate it shows.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(url: &str) -> (String, Option<SslMode>, Option<String>) {
        take_tls_options(url).unwrap()
    }

    #[test]
    fn verify_full_and_sslrootcert_are_taken_out_of_a_url() {
        let (rest, mode, root) = mode_of(
            "postgres://u:p@db.example:5432/orders?sslmode=verify-full&sslrootcert=%2Fca.pem&connect_timeout=3",
        );
        assert_eq!(
            rest,
            "postgres://u:p@db.example:5432/orders?connect_timeout=3"
        );
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        assert!(postgres::Config::from_str(&rest).is_ok());
    }

    #[test]
    fn key_value_form_and_no_options() {
        let (rest, mode, root) = mode_of("host=db user=u sslmode=verify-ca dbname=orders");
        assert_eq!(rest, "host=db user=u dbname=orders");
        assert_eq!((mode, root), (Some(SslMode::VerifyCa), None));
        let plain = "postgres://postgres@127.0.0.1:5432/orders";
        assert_eq!(mode_of(plain), (plain.to_owned(), None, None));
    }

    #[test]
    fn the_local_default_stays_without_tls() {
        let (config, _) = parse("postgres://postgres@127.0.0.1:5432/orders", None).unwrap();
        assert_eq!(config.get_ssl_mode(), postgres::config::SslMode::Disable);
        let (config, _) = parse("postgres://x@h/d?sslmode=require", None).unwrap();
        assert_eq!(config.get_ssl_mode(), postgres::config::SslMode::Require);
    }

    #[test]
    fn a_bad_mode_or_a_missing_ca_file_is_named_without_the_url() {
        let err = parse("postgres://u:secret@h/d?sslmode=verify-all", None)
            .err()
            .unwrap();
        assert!(err.contains("sslmode=verify-all"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = parse(
            "postgres://u:secret@h/d?sslmode=verify-full",
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .err()
        .unwrap();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
