//! rustls client configurations for each `sslmode`, with libpq's meaning.
//!
//! | sslmode       | encrypted | chain verified                         | host name verified |
//! |---------------|-----------|----------------------------------------|--------------------|
//! | `disable`     | no        | –                                      | –                  |
//! | `prefer`      | if the server offers it | only when `sslrootcert` is set | no           |
//! | `require`     | yes       | only when `sslrootcert` is set         | no                 |
//! | `verify-ca`   | yes       | yes (`sslrootcert`, else system roots) | no                 |
//! | `verify-full` | yes       | yes (`sslrootcert`, else system roots) | yes                |
//!
//! Like libpq, `prefer`/`require` without a root certificate encrypt without authenticating the server; the
//! handshake signatures are still checked, so the session key really belongs to whoever holds the certificate.
//! Pair it with SCRAM channel binding ([`tls_server_end_point`]) to defeat a man in the middle during login.
//!
//! **Guarantees:** every configuration uses rustls' `ring` provider explicitly (no process-wide default
//! provider is needed); errors name the certificate file; nothing here panics on malformed certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::conninfo::SslMode;

/// TLS set-up and handshake failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslrootcert {}: cannot read PEM certificates: {source}", path.display())]
    ReadRootCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("sslrootcert {}: contains no usable CA certificate (expected PEM `BEGIN CERTIFICATE` blocks)", path.display())]
    EmptyRootCert { path: PathBuf },
    #[error("no system root certificates found for sslmode={mode}; set sslrootcert=/path/to/ca.pem in source.url")]
    NoSystemRoots { mode: SslMode },
    #[error("building the TLS configuration: {0}")]
    Config(String),
    #[error("the server does not accept TLS connections but sslmode={mode} requires it; enable ssl on the server or use sslmode=prefer")]
    NotSupportedByServer { mode: SslMode },
    #[error("{host:?} is not a valid TLS server name")]
    InvalidServerName { host: String },
    #[error("TLS handshake with {host} failed: {source}{}", handshake_hint(source))]
    Handshake {
        host: String,
        #[source]
        source: std::io::Error,
    },
}

fn handshake_hint(e: &std::io::Error) -> &'static str {
    if e.to_string().contains("certificate") {
        "; set sslrootcert to the CA that signed the server's certificate (and for verify-full connect by a name \
         the certificate lists), or use sslmode=require to encrypt without verifying"
    } else {
        ""
    }
}

/// The rustls configuration for `mode`, verifying against `rootcert` when given (see the module table).
///
/// Not meant for [`SslMode::Disable`]; it returns the `require` configuration, which is never used then.
pub fn client_config(mode: SslMode, rootcert: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verify_chain = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) || rootcert.is_some();
    let mut config = if verify_chain {
        let roots = Arc::new(match rootcert {
            Some(path) => roots_from_file(path)?,
            None => system_roots(mode)?,
        });
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        if mode == SslMode::VerifyFull {
            builder.with_webpki_verifier(webpki).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { inner: webpki }))
                .with_no_client_auth()
        }
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCert { provider })).with_no_client_auth()
    };
    // PostgreSQL 17 checks ALPN on direct TLS; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS server name for `host` (a DNS name or an IP address literal).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::InvalidServerName { host: host.to_string() })
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let read_err = |source| TlsError::ReadRootCert { path: path.to_path_buf(), source };
    let certs =
        CertificateDer::pem_file_iter(path).map_err(read_err)?.collect::<Result<Vec<_>, _>>().map_err(read_err)?;
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(TlsError::EmptyRootCert { path: path.to_path_buf() });
    }
    Ok(roots)
}

fn system_roots(mode: SslMode) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "skipping unreadable system root certificate");
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(TlsError::NoSystemRoots { mode });
    }
    Ok(roots)
}

/// `prefer`/`require`: any certificate, but the handshake must be signed by its key.
#[derive(Debug)]
struct AnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCert {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full webpki chain check, except that the host name need not match.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the chain was good.
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// SCRAM `tls-server-end-point` channel-binding data (RFC 5929 §4.1) for the server's leaf certificate `cert_der`:
/// its hash with the certificate's signature digest, MD5/SHA-1 upgraded to SHA-256. `None` when the signature
/// algorithm has no single digest (RSA-PSS, Ed25519) or the DER does not parse — then SCRAM runs without binding.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, .. }, signature }
    let (certificate, _) = der_element(cert_der, 0x30)?;
    let (_tbs, rest) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    const RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
    let bits = if oid == ECDSA_SHA1 {
        256
    } else if let Some(&[n]) = oid.strip_prefix(RSA) {
        match n {
            4 | 5 | 11 => 256, // md5, sha1, sha256 WithRSAEncryption
            12 => 384,
            13 => 512,
            _ => return None,
        }
    } else if let Some(&[n]) = oid.strip_prefix(ECDSA_SHA2) {
        match n {
            2 => 256,
            3 => 384,
            4 => 512,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(match bits {
        256 => sha2::Sha256::digest(cert_der).to_vec(),
        384 => sha2::Sha384::digest(cert_der).to_vec(),
        _ => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

/// One DER element with tag `tag` at the start of `input`: its contents and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(n)?;
        (len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), rest)
    };
    rest.split_at_checked(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_builds_without_a_process_provider() {
        for mode in [SslMode::Prefer, SslMode::Require] {
            let config = client_config(mode, None).unwrap();
            assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
        }
    }

    #[test]
    fn root_cert_errors_name_the_file() {
        let missing = Path::new("/nonexistent/ficus-ca.pem");
        let e = client_config(SslMode::VerifyFull, Some(missing)).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ficus-ca.pem"), "{e}");

        let dir = std::env::temp_dir().join(format!("ficus-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(SslMode::VerifyCa, Some(&empty)).unwrap_err();
        assert!(matches!(e, TlsError::EmptyRootCert { .. }), "{e:?}");
        assert!(e.to_string().contains("empty.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn server_names() {
        assert!(server_name("db.example.com").is_ok());
        assert!(server_name("10.0.0.1").is_ok());
        assert!(server_name("::1").is_ok());
        assert!(server_name("bad name!").is_err());
    }

    fn fake_cert(oid: &[u8]) -> Vec<u8> {
        let tbs = [0x30, 0x03, 0x02, 0x01, 0x01];
        let mut alg = vec![0x30, (oid.len() + 4) as u8, 0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let sig = [0x03, 0x02, 0x00, 0xFF];
        let body: Vec<u8> = tbs.iter().chain(&alg).chain(&sig).copied().collect();
        let mut cert = vec![0x30, 0x81, body.len() as u8];
        cert.extend_from_slice(&body);
        cert
    }

    #[test]
    fn end_point_hash_follows_the_signature_digest() {
        use sha2::Digest;
        let sha256_rsa = fake_cert(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B]);
        assert_eq!(tls_server_end_point(&sha256_rsa).unwrap(), sha2::Sha256::digest(&sha256_rsa).to_vec());
        let sha1_rsa = fake_cert(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x05]);
        assert_eq!(tls_server_end_point(&sha1_rsa).unwrap().len(), 32);
        let ecdsa384 = fake_cert(&[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03]);
        assert_eq!(tls_server_end_point(&ecdsa384).unwrap(), sha2::Sha384::digest(&ecdsa384).to_vec());
        let ed25519 = fake_cert(&[0x2B, 0x65, 0x70]);
        assert_eq!(tls_server_end_point(&ed25519), None);
    }

    #[test]
    fn end_point_hash_never_panics_on_garbage() {
        let good = fake_cert(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B]);
        for cut in 0..good.len() {
            assert_eq!(tls_server_end_point(&good[..cut]), None, "truncated at {cut}");
        }
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut bytes = good.clone();
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (x as usize >> 8) % bytes.len();
            bytes[i] = (x >> 16) as u8;
            let _ = tls_server_end_point(&bytes);
        }
        assert_eq!(tls_server_end_point(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
    }
}
