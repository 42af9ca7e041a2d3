//! TLS to PostgreSQL as libpq's `sslmode` says: `disable` plain; `prefer` and `require` encrypt
//! without checking the certificate (unless a root certificate file is there: then as
//! `verify-ca`, as libpq does); `verify-ca` checks the chain against the roots; `verify-full`
//! also the host's name. The roots are `sslrootcert`, or libpq's default
//! `~/.postgresql/root.crt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::super::uri::{PostgresUri, SslMode};

/// The connector `uri` asks for (`None`: plain TCP), and the client's `sslmode`.
pub(super) fn connector(
    uri: &PostgresUri,
) -> Result<(Option<MakeRustlsConnect>, tokio_postgres::config::SslMode), String> {
    use tokio_postgres::config::SslMode as Client;
    let roots = roots_file(uri);
    let check = match (uri.sslmode, roots.exists()) {
        (SslMode::Disable, _) => return Ok((None, Client::Disable)),
        (SslMode::Prefer | SslMode::Require, false) => Check::Nothing,
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, true) => Check::Chain,
        (SslMode::VerifyFull, true) => Check::ChainAndName,
        (SslMode::VerifyCa | SslMode::VerifyFull, false) => {
            return Err(format!(
                "sslmode={} needs the certificate authorities' PEM file: {} does not exist \
                 (set sslrootcert=FILE)",
                uri.sslmode.as_str(),
                roots.display()
            ));
        }
    };
    let mode = match uri.sslmode {
        SslMode::Prefer => Client::Prefer,
        _ => Client::Require,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Unchecked(provider.clone())),
        Check::Chain | Check::ChainAndName => {
            let full = webpki(&roots, provider.clone())?;
            match check {
                Check::Chain => Arc::new(AnyName(full)),
                _ => full,
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((Some(MakeRustlsConnect::new(config)), mode))
}

/// What of the server's certificate is checked.
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// `sslrootcert`, or libpq's default.
fn roots_file(uri: &PostgresUri) -> PathBuf {
    uri.sslrootcert.clone().unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_default();
        Path::new(&home).join(".postgresql/root.crt")
    })
}

/// The standard verifier over the certificates of the PEM file `roots`.
fn webpki(
    roots: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let unreadable = |e: &dyn std::fmt::Display| format!("sslrootcert {}: {e}", roots.display());
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(roots).map_err(|e| unreadable(&e))? {
        store
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if store.is_empty() {
        return Err(unreadable(&"no certificate in the file"));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| unreadable(&e))
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
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
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
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

/// `require` without roots: encrypted, any certificate (the handshake's signatures are
/// still checked, so the session is with the certificate's key holder).
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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
