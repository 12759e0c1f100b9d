//! The hash chain: how a record is sealed into a line, and how a line is read back.
//!
//! A record's canonical form is the compact JSON object the writer produced, beginning with
//! `{"seq":N,"prev":"<64 hex>",` and with every other member in schema order. Its `hash` is
//! SHA-256 over those exact bytes; the line written is the canonical form with
//! `,"hash":"<64 hex>"` (and, for signed records, `,"sig":"<base64>"`) inserted before the
//! final `}`. So verifying needs no JSON re-serialisation: strip the suffix, hash the rest.

use std::io;
use std::path::Path;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// The `prev` of the first record of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

/// The position of a chain: the last record's sequence number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chain {
    /// The next record's sequence number.
    pub(crate) next: u64,
    pub(crate) prev: [u8; 32],
}

impl Chain {
    pub(crate) fn new() -> Self {
        Self {
            next: 1,
            prev: GENESIS,
        }
    }

    /// Seals `body`, a JSON object whose first member is `"kind"`, as the next record; signs
    /// its hash with `signer` when given. Returns the line, newline included.
    #[cfg(test)]
    pub(crate) fn seal(&mut self, body: &[u8], signer: Option<&Signer>) -> Vec<u8> {
        let mut line = Vec::new();
        self.seal_into(body, signer, &mut line);
        line
    }

    /// [`Self::seal`] into `line` (cleared first: the writer reuses one buffer).
    pub(crate) fn seal_into(&mut self, body: &[u8], signer: Option<&Signer>, line: &mut Vec<u8>) {
        let members = body.strip_prefix(b"{").unwrap_or(body);
        line.clear();
        line.reserve(body.len() + 200);
        line.extend_from_slice(b"{\"seq\":");
        push_decimal(line, self.next);
        line.extend_from_slice(b",\"prev\":\"");
        push_hex(line, &self.prev);
        line.extend_from_slice(b"\",");
        line.extend_from_slice(members);
        let hash = sha256(line);
        line.pop(); // the closing brace
        line.extend_from_slice(b",\"hash\":\"");
        push_hex(line, &hash);
        line.push(b'"');
        if let Some(signer) = signer {
            line.extend_from_slice(b",\"sig\":\"");
            line.extend_from_slice(STANDARD.encode(signer.sign(&hash)).as_bytes());
            line.push(b'"');
        }
        line.extend_from_slice(b"}\n");
        self.next += 1;
        self.prev = hash;
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let len = n.checked_ilog10().map_or(1, |l| l as usize + 1);
    let start = out.len();
    out.resize(start + len, b'0');
    if let Some(slot) = out.get_mut(start..) {
        crate::time::put_decimal(slot, n);
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.extend_from_slice(&hex_pair(*b));
    }
}

/// The two lowercase hex digits of a byte.
pub(crate) fn hex_pair(b: u8) -> [u8; 2] {
    let digit = |n: u8| HEX.get(usize::from(n)).copied().unwrap_or(b'0');
    [digit(b >> 4), digit(b & 15)]
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

fn unhex32(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *o = digit(*pair.first()?)? << 4 | digit(*pair.get(1)?)?;
    }
    Some(out)
}

/// A line read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sealed<'a> {
    pub(crate) seq: u64,
    pub(crate) prev: [u8; 32],
    pub(crate) kind: &'a str,
    /// The hash the line claims.
    pub(crate) hash: [u8; 32],
    /// Whether SHA-256 over the canonical form equals `hash`.
    pub(crate) intact: bool,
    pub(crate) sig: Option<Vec<u8>>,
}

/// Reads a line (without its newline). `None` when it is not a sealed record at all.
pub(crate) fn open(line: &[u8]) -> Option<Sealed<'_>> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq: u64 = std::str::from_utf8(rest.get(..digits)?)
        .ok()?
        .parse()
        .ok()?;
    let rest = rest.get(digits..)?.strip_prefix(b",\"prev\":\"")?;
    let prev = unhex32(rest.get(..64)?)?;
    let rest = rest.get(64..)?.strip_prefix(b"\",\"kind\":\"")?;
    let kind_len = rest.iter().position(|b| *b == b'"')?;
    let kind = std::str::from_utf8(rest.get(..kind_len)?).ok()?;
    let body = line.strip_suffix(b"}")?;
    // Unescaped quotes only occur as JSON structure, so this finds the member itself.
    let at = find_last(body, b",\"hash\":\"")?;
    let after = body.get(at + 9..)?;
    let hash = unhex32(after.get(..64)?)?;
    let tail = after.get(64..)?.strip_prefix(b"\"")?;
    let sig = if tail.is_empty() {
        None
    } else {
        let b64 = tail.strip_prefix(b",\"sig\":\"")?.strip_suffix(b"\"")?;
        Some(STANDARD.decode(b64).ok()?)
    };
    let mut canonical = Vec::with_capacity(at + 1);
    canonical.extend_from_slice(body.get(..at)?);
    canonical.push(b'}');
    Some(Sealed {
        seq,
        prev,
        kind,
        hash,
        intact: sha256(&canonical) == hash,
        sig,
    })
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// An Ed25519 signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.id).finish()
    }
}

impl Signer {
    /// Reads a PKCS#8 PEM private key.
    ///
    /// # Errors
    ///
    /// An unreadable file, or not an Ed25519 PKCS#8 key.
    pub fn from_pem_file(path: &Path) -> io::Result<Self> {
        let der = PrivatePkcs8KeyDer::from_pem_file(path)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    /// From PKCS#8 DER (v1 or v2).
    ///
    /// # Errors
    ///
    /// Not an Ed25519 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> io::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| invalid("not an Ed25519 PKCS#8 private key".into()))?;
        let id = key_id(pair.public_key().as_ref());
        Ok(Self { pair, id })
    }

    /// A new random key, as PKCS#8 DER.
    ///
    /// # Errors
    ///
    /// The system random number generator failed.
    pub fn generate_pkcs8() -> io::Result<Vec<u8>> {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| io::Error::other("key generation failed"))?;
        Ok(doc.as_ref().to_vec())
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The key's id: the first 8 bytes of SHA-256 over the public key, in hex.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    fn sign(&self, hash: &[u8; 32]) -> Vec<u8> {
        self.pair.sign(hash).as_ref().to_vec()
    }
}

pub(crate) fn key_id(public: &[u8]) -> String {
    hex(sha256(public).get(..8).unwrap_or_default())
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An Ed25519 public key, for verification.
#[derive(Debug, Clone)]
pub struct Verifier {
    raw: [u8; 32],
    id: String,
}

impl Verifier {
    /// Reads a public key: a PEM `PUBLIC KEY` (as `portcullis-audit keygen` or `openssl pkey
    /// -pubout` writes it), or the 32 raw bytes in hex or base64.
    ///
    /// # Errors
    ///
    /// An unreadable file, or not an Ed25519 public key.
    pub fn from_file(path: &Path) -> io::Result<Self> {
        let text = std::fs::read(path)?;
        if let Ok(spki) = SubjectPublicKeyInfoDer::from_pem_slice(&text) {
            let der: &[u8] = spki.as_ref();
            let raw = der
                .strip_prefix(&ED25519_SPKI_PREFIX[..])
                .ok_or_else(|| invalid(format!("{}: not an Ed25519 public key", path.display())))?;
            return Self::from_raw(raw);
        }
        let trimmed = String::from_utf8_lossy(&text).trim().to_owned();
        if let Some(raw) = unhex32(trimmed.to_ascii_lowercase().as_bytes()) {
            return Self::from_raw(&raw);
        }
        match STANDARD.decode(trimmed.as_bytes()) {
            Ok(raw) => Self::from_raw(&raw),
            Err(_) => Err(invalid(format!(
                "{}: not a PEM, hex or base64 Ed25519 public key",
                path.display()
            ))),
        }
    }

    /// From the 32 raw key bytes.
    ///
    /// # Errors
    ///
    /// Not 32 bytes.
    pub fn from_raw(raw: &[u8]) -> io::Result<Self> {
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| invalid("an Ed25519 public key is 32 bytes".into()))?;
        Ok(Self {
            id: key_id(&raw),
            raw,
        })
    }

    /// The key's id (see [`Signer::key_id`]).
    pub fn key_id(&self) -> &str {
        &self.id
    }

    pub(crate) fn verify(&self, hash: &[u8; 32], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(hash, sig)
            .is_ok()
    }
}

/// The PEM of a raw Ed25519 public key (SubjectPublicKeyInfo).
pub fn public_key_pem(raw: &[u8]) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(der)
    )
}

/// The PEM of a PKCS#8 private key.
pub fn private_key_pem(pkcs8: &[u8]) -> String {
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(pkcs8)
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_lines_open_and_detect_changes() {
        let signer = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
        let mut chain = Chain::new();
        let a = chain.seal(
            br#"{"kind":"request","path":"/a \"quoted\" ,\"hash\":\"x"}"#,
            None,
        );
        let b = chain.seal(br#"{"kind":"checkpoint","records":1}"#, Some(&signer));
        let ra = open(a.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(
            (ra.seq, ra.prev, ra.kind, ra.intact),
            (1, GENESIS, "request", true)
        );
        let rb = open(b.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!((rb.seq, rb.prev, rb.intact), (2, ra.hash, true));
        let verifier = Verifier::from_raw(signer.public_key()).unwrap();
        assert!(verifier.verify(&rb.hash, rb.sig.as_deref().unwrap()));
        assert_eq!(verifier.key_id(), signer.key_id());
        // Any changed byte breaks the hash.
        let mut bad = a.clone();
        let at = bad.iter().position(|b| *b == b'/').unwrap();
        bad[at + 1] = b'b';
        assert!(!open(bad.strip_suffix(b"\n").unwrap()).unwrap().intact);
        assert!(open(b"{\"seq\":1}").is_none());
    }

    #[test]
    fn decimals_and_reused_lines() {
        for n in [0, 7, 10, 99, 1_000_001, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
        // A line sealed into a used buffer is the line sealed into a new one.
        let (mut a, mut b) = (Chain::new(), Chain::new());
        let mut used = b"{\"kind\":\"old\",\"padding\":\"a longer line than the next\"}\n".to_vec();
        a.seal_into(br#"{"kind":"request"}"#, None, &mut used);
        assert_eq!(used, b.seal(br#"{"kind":"request"}"#, None));
    }

    #[test]
    fn public_keys_read_in_every_format() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
        for (name, text) in [
            ("pem", public_key_pem(signer.public_key())),
            ("hex", hex(signer.public_key())),
            ("b64", STANDARD.encode(signer.public_key())),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            assert_eq!(
                Verifier::from_file(&path).unwrap().key_id(),
                signer.key_id()
            );
        }
        let path = dir.path().join("key.pem");
        std::fs::write(&path, private_key_pem(&Signer::generate_pkcs8().unwrap())).unwrap();
        assert!(Signer::from_pem_file(&path).is_ok());
        std::fs::write(&path, "nonsense").unwrap();
        assert!(Signer::from_pem_file(&path).is_err());
        assert!(Verifier::from_file(&path).is_err());
    }
}
