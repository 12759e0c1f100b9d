//! A test PKI generated at run time: no key or certificate is ever committed.
//!
//! [`TestPki::generate`] builds:
//!
//! ```text
//! Portcullis Test Root CA
//! └── Portcullis Test Intermediate CA   (CRL: revokes `revoked_client`)
//!     ├── server          localhost, 127.0.0.1, ::1         serverAuth
//!     ├── client          spiffe://portcullis.test/ns/default/sa/client   clientAuth
//!     ├── expired_client  (validity ended yesterday)
//!     ├── not_yet_valid_client (validity starts tomorrow)
//!     └── revoked_client  (listed in the intermediate's CRL)
//! Unrelated Test CA
//! └── unrelated_client    spiffe://portcullis.test/ns/default/sa/client   clientAuth
//! ```
//!
//! Further certificates (other SPIFFE IDs, DNS SANs, wrong EKUs, custom validity) are issued
//! with [`TestCa::issue`] and a [`LeafSpec`].

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use time::{Duration, OffsetDateTime};

use crate::Error;

/// The SPIFFE trust domain of the test PKI's workload certificates.
pub const TRUST_DOMAIN: &str = "portcullis.test";

/// The SPIFFE ID of [`TestPki::client`] (and of the unrelated CA's client, which must still be
/// rejected).
pub const CLIENT_SPIFFE_ID: &str = "spiffe://portcullis.test/ns/default/sa/client";

/// A certificate authority of the test PKI, able to issue leaves and CRLs.
pub struct TestCa {
    name: String,
    cert: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate and those above it, excluding the self-signed root.
    chain: Vec<CertificateDer<'static>>,
    next_serial: Arc<AtomicU64>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate with its private key.
#[derive(Clone)]
pub struct TestCert {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: Vec<u8>,
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    serial: u64,
}

impl std::fmt::Debug for TestCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCert")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// A signed certificate revocation list.
#[derive(Debug, Clone)]
pub struct TestCrl {
    der: CertificateRevocationListDer<'static>,
    pem: String,
}

/// What a leaf certificate should contain.
#[derive(Debug, Clone)]
#[must_use]
pub struct LeafSpec {
    common_name: String,
    dns: Vec<String>,
    uris: Vec<String>,
    ips: Vec<IpAddr>,
    eku: Vec<ExtendedKeyUsagePurpose>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A client certificate (clientAuth EKU) called `common_name`, valid from an hour ago for
    /// a day.
    pub fn client(common_name: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.to_owned(),
            dns: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(1),
        }
    }

    /// A server certificate (serverAuth EKU) called `common_name`.
    pub fn server(common_name: &str) -> Self {
        Self {
            eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
            ..Self::client(common_name)
        }
    }

    /// Adds a DNS SAN.
    pub fn dns(mut self, name: &str) -> Self {
        self.dns.push(name.to_owned());
        self
    }

    /// Adds a URI SAN (a SPIFFE ID, say).
    pub fn uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }

    /// Adds an IP address SAN.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    /// Replaces the extended key usages (empty: no EKU extension at all).
    pub fn eku(mut self, eku: Vec<ExtendedKeyUsagePurpose>) -> Self {
        self.eku = eku;
        self
    }

    /// Sets the validity period.
    pub fn validity(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Validity that ended yesterday.
    pub fn expired(self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.validity(now - Duration::days(30), now - Duration::days(1))
    }

    /// Validity that starts tomorrow.
    pub fn not_yet_valid(self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.validity(now + Duration::days(1), now + Duration::days(30))
    }
}

impl TestCa {
    /// A new self-signed root CA.
    ///
    /// # Errors
    ///
    /// If key generation or signing fails.
    pub fn root(name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let next_serial = Arc::new(AtomicU64::new(1));
        let params = ca_params(name, None, &next_serial);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            name: name.to_owned(),
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain: Vec::new(),
            next_serial,
        })
    }

    /// A new intermediate CA signed by this one (path length 0: it can sign only leaves).
    ///
    /// # Errors
    ///
    /// If key generation or signing fails.
    pub fn intermediate(&self, name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(name, Some(0), &self.next_serial);
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Self {
            name: name.to_owned(),
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain,
            next_serial: Arc::clone(&self.next_serial),
        })
    }

    /// Issues a leaf certificate.
    ///
    /// # Errors
    ///
    /// If a SAN is not valid IA5 text, or key generation or signing fails.
    pub fn issue(&self, spec: &LeafSpec) -> Result<TestCert, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&spec.common_name);
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = spec.eku.clone();
        params.use_authority_key_identifier_extension = true;
        for name in &spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(Ia5String::try_from(name.as_str())?));
        }
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(uri.as_str())?));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(TestCert {
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key: key.serialize_der(),
            chain,
            serial,
        })
    }

    /// A CRL signed by this CA that revokes `revoked` (which may be empty).
    ///
    /// # Errors
    ///
    /// If signing fails.
    pub fn crl(&self, revoked: &[&TestCert]) -> Result<TestCrl, Error> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(self.next_serial.fetch_add(1, Ordering::Relaxed)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| RevokedCertParams {
                    serial_number: SerialNumber::from(cert.serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        Ok(TestCrl {
            pem: crl.pem()?,
            der: crl.der().clone(),
        })
    }

    /// The CA's own certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA's own certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A root store trusting only this CA.
    ///
    /// # Errors
    ///
    /// If the certificate is not a usable trust anchor.
    pub fn root_store(&self) -> Result<Arc<RootCertStore>, Error> {
        let mut store = RootCertStore::empty();
        store.add(self.cert.clone())?;
        Ok(Arc::new(store))
    }
}

/// A rustls client configuration (aws-lc-rs) trusting `ca` only, presenting `cert` when given,
/// offering ALPN `http/1.1`.
///
/// # Errors
///
/// If the CA is not a usable trust anchor, or the certificate and key do not go together.
pub fn client_config(ca: &TestCa, cert: Option<&TestCert>) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = Arc::unwrap_or_clone(ca.root_store()?);
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => builder.with_client_auth_cert(c.chain().to_vec(), c.key_der())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Portcullis Tests");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(name: &str, path_len: Option<u8>, serials: &AtomicU64) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.serial_number = Some(SerialNumber::from(serials.fetch_add(1, Ordering::Relaxed)));
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(365);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = path_len.is_some();
    params
}

impl TestCert {
    /// The leaf certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The leaf certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The leaf followed by its issuing CAs up to, not including, the root: what a server or
    /// client sends in its `Certificate` message.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// [`chain`](Self::chain), PEM-encoded.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| pem_block("CERTIFICATE", der))
            .collect()
    }

    /// The issuing CAs alone (the chain without the leaf).
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        self.chain.get(1..).unwrap_or_default()
    }

    /// The private key (PKCS#8).
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    /// The private key, PEM-encoded (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The serial number.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Writes `NAME.crt` (the chain) and `NAME.key` into `dir`, returning their paths.
    ///
    /// # Errors
    ///
    /// If the files cannot be written.
    pub fn write_to(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), Error> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        fs::write(&cert, self.chain_pem())?;
        fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

impl TestCrl {
    /// The CRL, DER-encoded.
    pub fn der(&self) -> &CertificateRevocationListDer<'static> {
        &self.der
    }

    /// The CRL, PEM-encoded.
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// Encodes DER as a PEM block.
fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The whole test PKI; see the [module docs](self).
#[derive(Debug)]
pub struct TestPki {
    root: TestCa,
    intermediate: TestCa,
    unrelated_ca: TestCa,
    server: TestCert,
    client: TestCert,
    expired_client: TestCert,
    not_yet_valid_client: TestCert,
    revoked_client: TestCert,
    unrelated_client: TestCert,
    crl: TestCrl,
    root_crl: TestCrl,
}

impl TestPki {
    /// Generates the PKI. Takes a few milliseconds (ECDSA P-256 keys throughout).
    ///
    /// # Errors
    ///
    /// If key generation or signing fails.
    pub fn generate() -> Result<Self, Error> {
        let root = TestCa::root("Portcullis Test Root CA")?;
        let intermediate = root.intermediate("Portcullis Test Intermediate CA")?;
        let unrelated_ca = TestCa::root("Unrelated Test CA")?;
        let server = intermediate.issue(
            &LeafSpec::server("localhost")
                .dns("localhost")
                .ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        )?;
        let client_spec = LeafSpec::client("client").uri(CLIENT_SPIFFE_ID);
        let client = intermediate.issue(&client_spec)?;
        let expired_client = intermediate.issue(
            &LeafSpec::client("expired")
                .uri("spiffe://portcullis.test/ns/default/sa/expired")
                .expired(),
        )?;
        let not_yet_valid_client = intermediate.issue(
            &LeafSpec::client("not-yet-valid")
                .uri("spiffe://portcullis.test/ns/default/sa/not-yet-valid")
                .not_yet_valid(),
        )?;
        let revoked_client = intermediate.issue(
            &LeafSpec::client("revoked").uri("spiffe://portcullis.test/ns/default/sa/revoked"),
        )?;
        let unrelated_client = unrelated_ca.issue(&client_spec)?;
        let crl = intermediate.crl(&[&revoked_client])?;
        let root_crl = root.crl(&[])?;
        Ok(Self {
            root,
            intermediate,
            unrelated_ca,
            server,
            client,
            expired_client,
            not_yet_valid_client,
            revoked_client,
            unrelated_client,
            crl,
            root_crl,
        })
    }

    /// The root CA (the trust anchor).
    pub fn root(&self) -> &TestCa {
        &self.root
    }

    /// The intermediate CA that issues every leaf below.
    pub fn intermediate(&self) -> &TestCa {
        &self.intermediate
    }

    /// A CA nobody trusts.
    pub fn unrelated_ca(&self) -> &TestCa {
        &self.unrelated_ca
    }

    /// The server certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn server(&self) -> &TestCert {
        &self.server
    }

    /// A valid client certificate with SPIFFE ID [`CLIENT_SPIFFE_ID`].
    pub fn client(&self) -> &TestCert {
        &self.client
    }

    /// A client certificate whose validity has ended.
    pub fn expired_client(&self) -> &TestCert {
        &self.expired_client
    }

    /// A client certificate whose validity has not started.
    pub fn not_yet_valid_client(&self) -> &TestCert {
        &self.not_yet_valid_client
    }

    /// A client certificate revoked by [`crl`](Self::crl).
    pub fn revoked_client(&self) -> &TestCert {
        &self.revoked_client
    }

    /// A client certificate from [`unrelated_ca`](Self::unrelated_ca), with the same SPIFFE ID
    /// as [`client`](Self::client).
    pub fn unrelated_client(&self) -> &TestCert {
        &self.unrelated_client
    }

    /// The intermediate's CRL, revoking [`revoked_client`](Self::revoked_client).
    pub fn crl(&self) -> &TestCrl {
        &self.crl
    }

    /// The root's CRL (empty), covering the intermediate when the whole chain is checked.
    pub fn root_crl(&self) -> &TestCrl {
        &self.root_crl
    }

    /// Both CRLs, DER-encoded, as a verifier that checks the whole chain needs them.
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        vec![self.crl.der.clone(), self.root_crl.der.clone()]
    }

    /// A root store trusting the root CA.
    ///
    /// # Errors
    ///
    /// If the root is not a usable trust anchor.
    pub fn root_store(&self) -> Result<Arc<RootCertStore>, Error> {
        self.root.root_store()
    }

    /// Writes the PKI as PEM files into `dir`: `ca.crt` (root), `server.crt`/`server.key`,
    /// `client.crt`/`client.key` (and likewise for every other client), `crl.pem` (both CRLs).
    ///
    /// # Errors
    ///
    /// If a file cannot be written.
    pub fn write_to(&self, dir: &Path) -> Result<PkiFiles, Error> {
        let ca = dir.join("ca.crt");
        fs::write(&ca, self.root.cert_pem())?;
        let crl = dir.join("crl.pem");
        fs::write(&crl, format!("{}{}", self.crl.pem, self.root_crl.pem))?;
        let (server_cert, server_key) = self.server.write_to(dir, "server")?;
        let (client_cert, client_key) = self.client.write_to(dir, "client")?;
        self.expired_client.write_to(dir, "expired-client")?;
        self.not_yet_valid_client
            .write_to(dir, "not-yet-valid-client")?;
        self.revoked_client.write_to(dir, "revoked-client")?;
        self.unrelated_client.write_to(dir, "unrelated-client")?;
        Ok(PkiFiles {
            ca,
            crl,
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }
}

/// Paths written by [`TestPki::write_to`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PkiFiles {
    /// The root CA certificate.
    pub ca: PathBuf,
    /// Both CRLs.
    pub crl: PathBuf,
    /// The server chain.
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// The valid client's chain.
    pub client_cert: PathBuf,
    /// The valid client's key.
    pub client_key: PathBuf,
}

#[cfg(test)]
mod tests;
