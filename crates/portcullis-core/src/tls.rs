//! Facts about the TLS connection a request arrived on: the client certificate and the session.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Serialize, Serializer};

use crate::error::{ValueError, check_text};
use crate::spiffe::SpiffeId;

/// The most Subject Alternative Names of one kind that a [`PeerCertificate`] keeps.
pub const MAX_SANS: usize = 64;
/// The longest subject, issuer or SAN kept, in bytes.
pub const MAX_NAME_LEN: usize = 2048;
/// The longest serial number kept, in bytes (RFC 5280 allows 20; some CAs exceed it slightly).
pub const MAX_SERIAL_LEN: usize = 64;

/// The SHA-256 digest of a certificate's DER encoding.
///
/// Shown as lowercase hex in logs and policies, and as unpadded base64url in RFC 8705
/// certificate-bound tokens (`cnf.x5t#S256`).
///
/// # Examples
///
/// ```
/// use portcullis_core::Thumbprint;
///
/// let t = Thumbprint::from_bytes([0xab; 32]);
/// assert_eq!(t.to_string(), "ab".repeat(32));
/// // Policies may write thumbprints with colons and in uppercase, as `openssl x509 -fingerprint` does.
/// let with_colons = vec!["AB"; 32].join(":");
/// assert_eq!(with_colons.parse::<Thumbprint>()?, t);
/// # Ok::<(), portcullis_core::ValueError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Thumbprint([u8; 32]);

impl Thumbprint {
    /// A thumbprint from its 32 digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Unpadded base64url, the form of `x5t#S256` (RFC 8705 §3.1).
    pub fn to_base64url(&self) -> String {
        base64url(&self.0)
    }
}

/// Unpadded base64url encoding (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let sym = |i: u32| char::from(ALPHABET.get((i & 63) as usize).copied().unwrap_or(b'A'));
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        if chunk.len() > 1 {
            out.push(sym(n >> 6));
        }
        if chunk.len() > 2 {
            out.push(sym(n));
        }
    }
    out
}

impl FromStr for Thumbprint {
    type Err = ValueError;

    /// Parses 64 hex digits, optionally separated by colons, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ValueError::new("thumbprint", "expected 64 hex digits (colons allowed)");
        let mut out = [0u8; 32];
        let mut digits = s.trim().bytes().filter(|&b| b != b':');
        for byte in &mut out {
            let hi = hex_val(digits.next().ok_or_else(err)?).ok_or_else(err)?;
            let lo = hex_val(digits.next().ok_or_else(err)?).ok_or_else(err)?;
            *byte = (hi << 4) | lo;
        }
        if digits.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({self})")
    }
}

serde_via_str!(Thumbprint);

/// The verified client certificate of the connection a request arrived on.
///
/// Built once per connection by the TLS acceptor after the handshake (the chain has already
/// been verified by then) and cloned cheaply into every request's extensions; read by the
/// zero-trust policy layer, authentication (certificate-bound tokens), rate limiting (keys by
/// SPIFFE ID) and audit.
///
/// The SPIFFE ID is derived, never supplied: it is present exactly when the certificate has one
/// URI SAN and that SAN is a valid SPIFFE ID (an X.509-SVID has exactly one).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    inner: Arc<CertFields>,
}

impl Serialize for PeerCertificate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

#[derive(Debug, PartialEq, Eq, Serialize)]
struct CertFields {
    #[serde(skip)]
    der: Bytes,
    thumbprint: Thumbprint,
    subject: String,
    issuer: String,
    #[serde(serialize_with = "serialize_hex")]
    serial: Vec<u8>,
    #[serde(skip)]
    not_before: SystemTime,
    #[serde(skip)]
    not_after: SystemTime,
    dns_sans: Vec<String>,
    uri_sans: Vec<String>,
    spiffe_id: Option<SpiffeId>,
}

fn serialize_hex<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    serializer.serialize_str(&s)
}

impl PeerCertificate {
    /// Starts building the record of a verified leaf certificate from its DER encoding and
    /// SHA-256 thumbprint (computed by the caller's crypto provider).
    pub fn builder(der: impl Into<Bytes>, thumbprint: Thumbprint) -> PeerCertificateBuilder {
        PeerCertificateBuilder {
            der: der.into(),
            thumbprint,
            subject: String::new(),
            issuer: String::new(),
            serial: Vec::new(),
            validity: None,
            dns_sans: Vec::new(),
            uri_sans: Vec::new(),
        }
    }

    /// The leaf certificate, DER-encoded.
    pub fn der(&self) -> &Bytes {
        &self.inner.der
    }

    /// The SHA-256 thumbprint of [`der`](Self::der).
    pub fn thumbprint(&self) -> Thumbprint {
        self.inner.thumbprint
    }

    /// The subject distinguished name (RFC 4514 string form); empty when the certificate has
    /// an empty subject, as SVIDs may.
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// The issuer distinguished name (RFC 4514 string form).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The serial number, big-endian.
    pub fn serial(&self) -> &[u8] {
        &self.inner.serial
    }

    /// Start of the validity period.
    pub fn not_before(&self) -> SystemTime {
        self.inner.not_before
    }

    /// End of the validity period.
    pub fn not_after(&self) -> SystemTime {
        self.inner.not_after
    }

    /// DNS Subject Alternative Names.
    pub fn dns_sans(&self) -> &[String] {
        &self.inner.dns_sans
    }

    /// URI Subject Alternative Names.
    pub fn uri_sans(&self) -> &[String] {
        &self.inner.uri_sans
    }

    /// The SPIFFE ID, when the certificate is an X.509-SVID.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.inner.spiffe_id.as_ref()
    }
}

impl fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("thumbprint", &self.inner.thumbprint)
            .field("subject", &self.inner.subject)
            .field("issuer", &self.inner.issuer)
            .field("spiffe_id", &self.inner.spiffe_id)
            .field("dns_sans", &self.inner.dns_sans)
            .field("uri_sans", &self.inner.uri_sans)
            .finish_non_exhaustive()
    }
}

/// Builder for [`PeerCertificate`]; see [`PeerCertificate::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PeerCertificateBuilder {
    der: Bytes,
    thumbprint: Thumbprint,
    subject: String,
    issuer: String,
    serial: Vec<u8>,
    validity: Option<(SystemTime, SystemTime)>,
    dns_sans: Vec<String>,
    uri_sans: Vec<String>,
}

impl PeerCertificateBuilder {
    /// The subject distinguished name.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// The issuer distinguished name.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// The serial number, big-endian.
    pub fn serial(mut self, serial: impl Into<Vec<u8>>) -> Self {
        self.serial = serial.into();
        self
    }

    /// The validity period.
    pub fn validity(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.validity = Some((not_before, not_after));
        self
    }

    /// Adds a DNS Subject Alternative Name.
    pub fn dns_san(mut self, name: impl Into<String>) -> Self {
        self.dns_sans.push(name.into());
        self
    }

    /// Adds a URI Subject Alternative Name.
    pub fn uri_san(mut self, uri: impl Into<String>) -> Self {
        self.uri_sans.push(uri.into());
        self
    }

    /// Checks the invariants and builds the record.
    ///
    /// # Errors
    ///
    /// If the DER is empty, the validity period is missing or ends before it starts, a name is
    /// too long or holds control characters, there are more than [`MAX_SANS`] SANs of a kind,
    /// or the serial number is empty or longer than [`MAX_SERIAL_LEN`].
    pub fn build(self) -> Result<PeerCertificate, ValueError> {
        if self.der.is_empty() {
            return Err(ValueError::new(
                "peer certificate",
                "the DER encoding is empty",
            ));
        }
        let (not_before, not_after) = self
            .validity
            .ok_or_else(|| ValueError::new("peer certificate", "the validity period is missing"))?;
        if not_after < not_before {
            return Err(ValueError::new(
                "peer certificate",
                "the validity period ends before it starts",
            ));
        }
        if self.serial.is_empty() || self.serial.len() > MAX_SERIAL_LEN {
            return Err(ValueError::new(
                "peer certificate",
                format!("the serial number must be 1 to {MAX_SERIAL_LEN} bytes"),
            ));
        }
        for name in [&self.subject, &self.issuer] {
            if !name.is_empty() {
                check_text("certificate name", name, MAX_NAME_LEN)?;
            }
        }
        for sans in [&self.dns_sans, &self.uri_sans] {
            if sans.len() > MAX_SANS {
                return Err(ValueError::new(
                    "peer certificate",
                    format!("more than {MAX_SANS} subject alternative names of one kind"),
                ));
            }
            for san in sans {
                check_text("subject alternative name", san, MAX_NAME_LEN)?;
            }
        }
        let spiffe_id = match self.uri_sans.as_slice() {
            [only] => SpiffeId::parse(only).ok(),
            _ => None,
        };
        Ok(PeerCertificate {
            inner: Arc::new(CertFields {
                der: self.der,
                thumbprint: self.thumbprint,
                subject: self.subject,
                issuer: self.issuer,
                serial: self.serial,
                not_before,
                not_after,
                dns_sans: self.dns_sans,
                uri_sans: self.uri_sans,
                spiffe_id,
            }),
        })
    }
}

/// The TLS protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "TLSv1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

impl TlsVersion {
    /// `TLSv1.2` or `TLSv1.3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls12 => "TLSv1.2",
            Self::Tls13 => "TLSv1.3",
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The negotiated parameters of the TLS session a request arrived on.
///
/// Written into request extensions by the TLS acceptor next to the [`PeerCertificate`] (which
/// is absent when the client sent none); read by audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsInfo {
    version: TlsVersion,
    cipher_suite: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alpn: Option<String>,
}

impl TlsInfo {
    /// A session of `version` using `cipher_suite` (its IANA name, e.g.
    /// `TLS13_AES_128_GCM_SHA256`).
    pub fn new(version: TlsVersion, cipher_suite: &'static str) -> Self {
        Self {
            version,
            cipher_suite,
            sni: None,
            alpn: None,
        }
    }

    /// Records the SNI server name the client asked for.
    ///
    /// # Errors
    ///
    /// If the name is empty, longer than 253 bytes or not ASCII text (rustls only hands over
    /// valid DNS names, so this guards other acceptors).
    pub fn with_sni(mut self, sni: impl Into<String>) -> Result<Self, ValueError> {
        let sni = sni.into();
        check_text("SNI server name", &sni, 253)?;
        if !sni.is_ascii() {
            return Err(ValueError::new("SNI server name", "it is not ASCII"));
        }
        self.sni = Some(sni);
        Ok(self)
    }

    /// Records the negotiated ALPN protocol. Non-UTF-8 protocol ids are kept lossily.
    #[must_use]
    pub fn with_alpn(mut self, alpn: &[u8]) -> Self {
        let text = String::from_utf8_lossy(alpn);
        self.alpn = (!text.is_empty() && text.len() <= 255).then(|| text.into_owned());
        self
    }

    /// The protocol version.
    pub fn version(&self) -> TlsVersion {
        self.version
    }

    /// The cipher suite's IANA name.
    pub fn cipher_suite(&self) -> &'static str {
        self.cipher_suite
    }

    /// The SNI server name, if the client sent one.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The negotiated ALPN protocol (`h2`, `http/1.1`), if any.
    pub fn alpn(&self) -> Option<&str> {
        self.alpn.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn thumb() -> Thumbprint {
        Thumbprint::from_bytes(std::array::from_fn(|i| i as u8))
    }

    fn base() -> PeerCertificateBuilder {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        PeerCertificate::builder(vec![0x30, 0x82, 0x01], thumb())
            .subject("CN=client")
            .issuer("CN=Intermediate CA")
            .serial(vec![0x01, 0x02])
            .validity(now, now + Duration::from_secs(3600))
    }

    #[test]
    fn thumbprint_forms() {
        let t = thumb();
        let hex = t.to_string();
        assert_eq!(hex.len(), 64);
        assert!(hex.starts_with("000102030405"));
        assert_eq!(hex.parse::<Thumbprint>().unwrap(), t);
        assert_eq!(hex.to_uppercase().parse::<Thumbprint>().unwrap(), t);
        let colons: Vec<String> = t.as_bytes().iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(colons.join(":").parse::<Thumbprint>().unwrap(), t);
        for bad in ["", "00", &"0".repeat(63), &"0".repeat(66), &"g".repeat(64)] {
            assert!(bad.parse::<Thumbprint>().is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{hex}\""));
        assert_eq!(
            serde_json::from_str::<Thumbprint>(&format!("\"{hex}\"")).unwrap(),
            t
        );
    }

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        // RFC 4648 §10 vectors, unpadded.
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), want);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(Thumbprint::from_bytes([0xff; 32]).to_base64url().len(), 43);
    }

    #[test]
    fn builds_a_valid_certificate_record() {
        let cert = base()
            .dns_san("client.example.org")
            .uri_san("spiffe://example.org/ns/a/sa/b")
            .build()
            .unwrap();
        assert_eq!(cert.subject(), "CN=client");
        assert_eq!(cert.issuer(), "CN=Intermediate CA");
        assert_eq!(cert.serial(), &[1, 2]);
        assert_eq!(cert.der().as_ref(), &[0x30, 0x82, 0x01]);
        assert_eq!(cert.thumbprint(), thumb());
        assert_eq!(cert.dns_sans(), ["client.example.org"]);
        assert_eq!(
            cert.spiffe_id().map(SpiffeId::as_str),
            Some("spiffe://example.org/ns/a/sa/b")
        );
        assert!(cert.not_before() < cert.not_after());
        let json = serde_json::to_value(&cert).unwrap();
        assert_eq!(json["serial"], "0102");
        assert_eq!(json["spiffe_id"], "spiffe://example.org/ns/a/sa/b");
        assert!(json.get("der").is_none());
        let debug = format!("{cert:?}");
        assert!(debug.contains("CN=client") && !debug.contains("der"));
    }

    #[test]
    fn spiffe_id_is_derived_only_from_a_single_valid_uri_san() {
        let none = base().build().unwrap();
        assert!(none.spiffe_id().is_none());
        let two = base()
            .uri_san("spiffe://example.org/a")
            .uri_san("spiffe://example.org/b")
            .build()
            .unwrap();
        assert!(two.spiffe_id().is_none());
        assert_eq!(two.uri_sans().len(), 2);
        let invalid = base().uri_san("spiffe://example.org/a/").build().unwrap();
        assert!(invalid.spiffe_id().is_none());
        let https = base().uri_san("https://example.org/a").build().unwrap();
        assert!(https.spiffe_id().is_none());
    }

    #[test]
    fn rejects_broken_invariants() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(
            PeerCertificate::builder(Vec::new(), thumb())
                .serial(vec![1])
                .validity(now, now)
                .build()
                .is_err()
        );
        assert!(
            base()
                .validity(now, now - Duration::from_secs(1))
                .build()
                .is_err()
        );
        assert!(
            PeerCertificate::builder(vec![1], thumb())
                .serial(vec![1])
                .build()
                .is_err()
        );
        assert!(base().serial(Vec::new()).build().is_err());
        assert!(base().serial(vec![1; 65]).build().is_err());
        assert!(base().subject("CN=a\nb").build().is_err());
        assert!(base().dns_san("a\u{0}b").build().is_err());
        assert!(base().dns_san("").build().is_err());
        let mut many = base();
        for i in 0..=MAX_SANS {
            many = many.dns_san(format!("h{i}.example.org"));
        }
        assert!(many.build().is_err());
        // An empty subject is allowed (SVIDs often have one).
        assert!(base().subject("").build().is_ok());
    }

    #[test]
    fn tls_info() {
        let info = TlsInfo::new(TlsVersion::Tls13, "TLS13_AES_128_GCM_SHA256")
            .with_sni("api.example.org")
            .unwrap()
            .with_alpn(b"h2");
        assert_eq!(info.version().as_str(), "TLSv1.3");
        assert_eq!(info.sni(), Some("api.example.org"));
        assert_eq!(info.alpn(), Some("h2"));
        assert_eq!(info.cipher_suite(), "TLS13_AES_128_GCM_SHA256");
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["version"], "TLSv1.3");
        let bare = TlsInfo::new(TlsVersion::Tls12, "X").with_alpn(b"");
        assert_eq!(bare.alpn(), None);
        assert!(serde_json::to_value(&bare).unwrap().get("sni").is_none());
        assert!(TlsInfo::new(TlsVersion::Tls12, "X").with_sni("").is_err());
        assert!(
            TlsInfo::new(TlsVersion::Tls12, "X")
                .with_sni("bad\nname")
                .is_err()
        );
        assert!(
            TlsInfo::new(TlsVersion::Tls12, "X")
                .with_sni("ä.example")
                .is_err()
        );
        assert!(
            TlsInfo::new(TlsVersion::Tls12, "X")
                .with_sni("a".repeat(254))
                .is_err()
        );
        assert_eq!(TlsVersion::Tls12.to_string(), "TLSv1.2");
    }
}
