//! Reading the facts Portcullis needs out of an X.509 certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{SHA256, digest};
use portcullis_core::{PeerCertificate, Thumbprint, ValueError};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The SHA-256 thumbprint of a DER certificate.
pub fn thumbprint(der: &[u8]) -> Thumbprint {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, der).as_ref());
    Thumbprint::from_bytes(out)
}

fn system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs()),
    }
}

/// Builds the [`PeerCertificate`] record of a (verified) leaf certificate.
///
/// # Errors
///
/// If the DER does not parse, or a field breaks the record's bounds (see
/// [`PeerCertificateBuilder::build`](portcullis_core::PeerCertificateBuilder::build)).
pub fn peer_certificate(der: &[u8]) -> Result<PeerCertificate, ValueError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| ValueError::new("peer certificate", "the DER does not parse"))?;
    let validity = cert.validity();
    let mut builder = PeerCertificate::builder(der.to_vec(), thumbprint(der))
        .subject(cert.subject().to_string())
        .issuer(cert.issuer().to_string())
        .serial(cert.raw_serial().to_vec())
        .validity(
            system_time(validity.not_before.timestamp()),
            system_time(validity.not_after.timestamp()),
        );
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => builder = builder.dns_san(*dns),
                GeneralName::URI(uri) => builder = builder.uri_san(*uri),
                _ => {}
            }
        }
    }
    builder.build()
}

/// Whether the certificate carries an extended-key-usage extension listing clientAuth.
/// A certificate without the extension does not qualify: webpki would accept it for any
/// purpose, and a zero-trust policy must not.
pub fn has_client_auth_eku(der: &[u8]) -> bool {
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, cert)| {
            cert.extended_key_usage()
                .ok()
                .flatten()
                .map(|eku| eku.value.client_auth)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_test_util::pki::{CLIENT_SPIFFE_ID, LeafSpec, TestPki};
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn reads_the_client_fixture() {
        let pki = TestPki::generate().unwrap();
        let der = pki.client().cert_der();
        let cert = peer_certificate(der).unwrap();
        assert_eq!(cert.subject(), "O=Portcullis Tests, CN=client");
        assert_eq!(
            cert.issuer(),
            "O=Portcullis Tests, CN=Portcullis Test Intermediate CA"
        );
        assert_eq!(
            cert.serial(),
            pki.client()
                .serial()
                .to_be_bytes()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect::<Vec<_>>()
        );
        assert_eq!(cert.uri_sans(), [CLIENT_SPIFFE_ID]);
        assert_eq!(cert.spiffe_id().unwrap().as_str(), CLIENT_SPIFFE_ID);
        assert!(cert.not_before() < SystemTime::now() && SystemTime::now() < cert.not_after());
        assert_eq!(cert.thumbprint(), thumbprint(der));
        assert_eq!(cert.der().as_ref(), der.as_ref());
        assert!(has_client_auth_eku(der));
        let server = peer_certificate(pki.server().cert_der()).unwrap();
        assert_eq!(server.dns_sans(), ["localhost"]);
        assert!(server.spiffe_id().is_none());
        assert!(!has_client_auth_eku(pki.server().cert_der()));
        let no_eku = pki
            .intermediate()
            .issue(
                &LeafSpec::client("x")
                    .eku(Vec::new())
                    .ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            )
            .unwrap();
        assert!(!has_client_auth_eku(no_eku.cert_der()));
        assert!(peer_certificate(b"not a certificate").is_err());
        assert!(!has_client_auth_eku(b"junk"));
    }
}
