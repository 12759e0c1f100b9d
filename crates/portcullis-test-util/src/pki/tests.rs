use std::sync::{Arc, OnceLock};

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, ClientConfig, ClientConnection, Error as TlsError, ServerConfig};
use rustls::{ServerConnection, client::WebPkiServerVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{ServerName, UnixTime};

use super::*;

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate().unwrap())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_verifier(with_crls: bool) -> Arc<dyn ClientCertVerifier> {
    let builder =
        WebPkiClientVerifier::builder_with_provider(pki().root_store().unwrap(), provider());
    let builder = if with_crls {
        builder.with_crls(pki().crls())
    } else {
        builder
    };
    builder.build().unwrap()
}

fn verify_client(cert: &TestCert, with_crls: bool) -> Result<(), TlsError> {
    client_verifier(with_crls)
        .verify_client_cert(cert.cert_der(), cert.intermediates(), UnixTime::now())
        .map(|_| ())
}

fn cert_error(result: Result<(), TlsError>) -> CertificateError {
    match result {
        Err(TlsError::InvalidCertificate(e)) => e,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn valid_client_chain_verifies_with_crls_checked_on_the_whole_chain() {
    verify_client(pki().client(), true).unwrap();
    verify_client(pki().client(), false).unwrap();
    // The chain is leaf + intermediate; the root is not sent.
    assert_eq!(pki().client().chain().len(), 2);
    assert_eq!(
        pki().client().intermediates()[0],
        *pki().intermediate().cert_der()
    );
}

#[test]
fn revoked_client_is_rejected_only_with_the_crl() {
    // Without the CRL the certificate is otherwise valid...
    verify_client(pki().revoked_client(), false).unwrap();
    // ...and the CRL is what rejects it.
    let err = cert_error(verify_client(pki().revoked_client(), true));
    assert_eq!(err, CertificateError::Revoked);
}

#[test]
fn expired_and_not_yet_valid_clients_are_rejected() {
    let err = cert_error(verify_client(pki().expired_client(), true));
    assert!(
        matches!(
            err,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{err:?}"
    );
    let err = cert_error(verify_client(pki().not_yet_valid_client(), true));
    assert!(
        matches!(
            err,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn unrelated_ca_client_is_rejected() {
    let err = cert_error(verify_client(pki().unrelated_client(), true));
    assert_eq!(err, CertificateError::UnknownIssuer);
}

#[test]
fn server_certificate_is_not_a_client_certificate() {
    let err = cert_error(verify_client(pki().server(), true));
    assert!(
        matches!(
            err,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn server_chain_verifies_for_localhost_and_loopback_ips() {
    let verifier =
        WebPkiServerVerifier::builder_with_provider(pki().root_store().unwrap(), provider())
            .with_crls(pki().crls())
            .build()
            .unwrap();
    for name in ["localhost", "127.0.0.1", "::1"] {
        let name = ServerName::try_from(name).unwrap();
        verifier
            .verify_server_cert(
                pki().server().cert_der(),
                pki().server().intermediates(),
                &name,
                &[],
                UnixTime::now(),
            )
            .unwrap();
    }
    let wrong = ServerName::try_from("example.org").unwrap();
    let err = verifier
        .verify_server_cert(
            pki().server().cert_der(),
            pki().server().intermediates(),
            &wrong,
            &[],
            UnixTime::now(),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    ));
}

#[test]
fn issued_leaves_follow_their_spec() {
    let spiffe = "spiffe://other.test/ns/x/sa/y";
    let leaf = pki()
        .intermediate()
        .issue(
            &LeafSpec::client("custom")
                .uri(spiffe)
                .dns("custom.portcullis.test"),
        )
        .unwrap();
    verify_client(&leaf, true).unwrap();
    // Serials are unique across the PKI.
    let serials = [
        pki().server().serial(),
        pki().client().serial(),
        pki().expired_client().serial(),
        pki().not_yet_valid_client().serial(),
        pki().revoked_client().serial(),
        leaf.serial(),
    ];
    let unique: std::collections::HashSet<_> = serials.iter().collect();
    assert_eq!(unique.len(), serials.len());
    // webpki accepts a leaf with no EKU extension at all for any purpose (RFC 5280 §4.2.1.12
    // semantics). A policy that requires the clientAuth EKU has to check for it itself; this
    // fixture lets its tests prove that it does.
    let no_eku = pki()
        .intermediate()
        .issue(&LeafSpec::client("no-eku").eku(Vec::new()))
        .unwrap();
    verify_client(&no_eku, true).unwrap();
}

/// Runs a TLS handshake between the two configs in memory and returns the certificates the
/// server saw from the client.
fn handshake(
    client: ClientConfig,
    server: ServerConfig,
) -> Result<Option<Vec<rustls_pki_types::CertificateDer<'static>>>, TlsError> {
    let mut client =
        ClientConnection::new(Arc::new(client), ServerName::try_from("localhost").unwrap())?;
    let mut server = ServerConnection::new(Arc::new(server))?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(server.peer_certificates().map(<[_]>::to_vec));
        }
    }
    panic!("handshake did not finish");
}

fn server_config(require_client_cert: bool) -> ServerConfig {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        builder.with_client_cert_verifier(client_verifier(true))
    } else {
        builder.with_no_client_auth()
    };
    builder
        .with_single_cert(pki().server().chain().to_vec(), pki().server().key_der())
        .unwrap()
}

fn client_config(cert: Option<&TestCert>) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki().root_store().unwrap());
    match cert {
        Some(cert) => builder
            .with_client_auth_cert(cert.chain().to_vec(), cert.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

#[test]
fn mutual_tls_handshake_with_the_generated_pki() {
    let seen = handshake(client_config(Some(pki().client())), server_config(true))
        .unwrap()
        .unwrap();
    assert_eq!(seen[0], *pki().client().cert_der());

    // Server-only TLS works too, and the server sees no client certificate.
    let seen = handshake(client_config(None), server_config(false)).unwrap();
    assert!(seen.is_none());

    // The revoked and foreign certificates fail the handshake.
    for bad in [
        pki().revoked_client(),
        pki().unrelated_client(),
        pki().expired_client(),
    ] {
        let err = handshake(client_config(Some(bad)), server_config(true)).unwrap_err();
        assert!(matches!(err, TlsError::InvalidCertificate(_)), "{err:?}");
    }
    // No certificate at all, when one is required.
    let err = handshake(client_config(None), server_config(true)).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificatesPresented), "{err:?}");
}

#[test]
fn written_files_parse_back() {
    let dir = tempfile::tempdir().unwrap();
    let files = pki().write_to(dir.path()).unwrap();
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&files.server_cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs, pki().server().chain());
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&files.client_key).unwrap();
    assert_eq!(key.secret_der(), pki().client().key_der().secret_der());
    let ca = rustls_pki_types::CertificateDer::from_pem_file(&files.ca).unwrap();
    assert_eq!(ca, *pki().root().cert_der());
    let crls: Vec<_> = rustls_pki_types::CertificateRevocationListDer::pem_file_iter(&files.crl)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(crls, pki().crls());
    assert!(dir.path().join("revoked-client.key").exists());
    // PEM accessors agree with DER.
    let parsed =
        rustls_pki_types::CertificateDer::from_pem_slice(pki().client().cert_pem().as_bytes())
            .unwrap();
    assert_eq!(parsed, *pki().client().cert_der());
    let parsed = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(
        pki().crl().pem().as_bytes(),
    )
    .unwrap();
    assert_eq!(parsed, *pki().crl().der());
}
