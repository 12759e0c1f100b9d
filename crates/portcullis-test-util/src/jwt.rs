//! JWT fixtures: signing keys generated at run time, their JWKS, and a token builder.
//!
//! ```
//! use portcullis_test_util::jwt::JwtKeys;
//!
//! let keys = JwtKeys::shared()?;
//! let token = keys.es256().token().subject("alice").claim("scope", "chat:write".into()).sign()?;
//! assert_eq!(token.split('.').count(), 3);
//! // The JWKS lists every asymmetric key, never the HMAC secret.
//! assert_eq!(keys.jwks().keys.len(), 4);
//! # Ok::<(), portcullis_test_util::Error>(())
//! ```

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, RsaKeySize};
use serde_json::{Map, Value};

use crate::Error;

/// The `iss` of tokens built by [`JwtKey::token`].
pub const DEFAULT_ISSUER: &str = "https://issuer.portcullis.test";
/// The `aud` of tokens built by [`JwtKey::token`].
pub const DEFAULT_AUDIENCE: &str = "portcullis-tests";
/// The `sub` of tokens built by [`JwtKey::token`].
pub const DEFAULT_SUBJECT: &str = "test-user";

/// One signing key with its id, algorithm and public JWK.
#[derive(Clone)]
pub struct JwtKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
    private_pem: String,
    public_pem: String,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtKey {
    fn new(alg: Algorithm, kid: &str, encoding: EncodingKey, key: &KeyPair) -> Result<Self, Error> {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg)?;
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            alg,
            kid: kid.to_owned(),
            encoding,
            jwk,
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        })
    }

    /// The algorithm this key signs with by default.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (with `kid`, `alg` and `use: sig`).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The private key, PKCS#8 PEM.
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }

    /// The public key, SubjectPublicKeyInfo PEM (what an attacker would try as an HMAC
    /// secret in an algorithm-confusion attack).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// A token signed by this key with the default claims (`iss`, `aud`, `sub`, `iat`, and
    /// `exp` an hour from now) and this key's `kid`.
    pub fn token(&self) -> TokenBuilder {
        TokenBuilder::new(self.alg, Signer::Key(self.encoding.clone())).kid(&self.kid)
    }
}

/// Freshly generated keys of every asymmetric family JWT uses, plus an HMAC secret.
#[derive(Debug, Clone)]
pub struct JwtKeys {
    rsa: JwtKey,
    es256: JwtKey,
    es384: JwtKey,
    ed25519: JwtKey,
    hmac_secret: Vec<u8>,
}

impl JwtKeys {
    /// Generates RSA-2048, P-256, P-384 and Ed25519 keys and a 32-byte HMAC secret.
    ///
    /// # Errors
    ///
    /// If key generation fails.
    pub fn generate() -> Result<Self, Error> {
        let rsa_key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?;
        let rsa = JwtKey::new(
            Algorithm::RS256,
            "rsa-1",
            EncodingKey::from_rsa_pem(rsa_key.serialize_pem().as_bytes())?,
            &rsa_key,
        )?;
        let p256 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let es256 = JwtKey::new(
            Algorithm::ES256,
            "ec256-1",
            EncodingKey::from_ec_der(&p256.serialize_der()),
            &p256,
        )?;
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let es384 = JwtKey::new(
            Algorithm::ES384,
            "ec384-1",
            EncodingKey::from_ec_der(&p384.serialize_der()),
            &p384,
        )?;
        // jsonwebtoken derives the public key from a PKCS#8 v1 document, so generate one.
        let ed = aws_lc_rs::signature::Ed25519KeyPair::generate()
            .and_then(|k| k.to_pkcs8v1())
            .map_err(|_| Error::new("generate an Ed25519 key", "aws-lc-rs refused"))?;
        let ed_pair = KeyPair::try_from(ed.as_ref())?;
        let ed25519 = JwtKey::new(
            Algorithm::EdDSA,
            "ed25519-1",
            EncodingKey::from_ed_der(ed.as_ref()),
            &ed_pair,
        )?;
        let mut hmac_secret = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut hmac_secret)
            .map_err(|_| Error::new("generate an HMAC secret", "aws-lc-rs refused"))?;
        Ok(Self {
            rsa,
            es256,
            es384,
            ed25519,
            hmac_secret,
        })
    }

    /// One set of keys per test process (RSA generation is the slow part).
    ///
    /// # Errors
    ///
    /// If generation failed (the failure is remembered).
    pub fn shared() -> Result<&'static Self, Error> {
        static KEYS: OnceLock<Result<JwtKeys, Error>> = OnceLock::new();
        KEYS.get_or_init(Self::generate)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The RSA key (RS256; it can also sign RS384/RS512/PS256/PS384/PS512 via
    /// [`TokenBuilder::alg`]).
    pub fn rsa(&self) -> &JwtKey {
        &self.rsa
    }

    /// The P-256 key (ES256).
    pub fn es256(&self) -> &JwtKey {
        &self.es256
    }

    /// The P-384 key (ES384).
    pub fn es384(&self) -> &JwtKey {
        &self.es384
    }

    /// The Ed25519 key (EdDSA).
    pub fn ed25519(&self) -> &JwtKey {
        &self.ed25519
    }

    /// Every asymmetric key.
    pub fn all(&self) -> [&JwtKey; 4] {
        [&self.rsa, &self.es256, &self.es384, &self.ed25519]
    }

    /// The HMAC secret (never in the JWKS).
    pub fn hmac_secret(&self) -> &[u8] {
        &self.hmac_secret
    }

    /// An HS256 token signed with [`hmac_secret`](Self::hmac_secret).
    pub fn hs256_token(&self) -> TokenBuilder {
        TokenBuilder::hmac(&self.hmac_secret, Algorithm::HS256)
    }

    /// The JWKS of the asymmetric keys.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.all().iter().map(|k| k.jwk.clone()).collect(),
        }
    }

    /// [`jwks`](Self::jwks) as a JSON document.
    ///
    /// # Errors
    ///
    /// If serialization fails.
    pub fn jwks_json(&self) -> Result<String, Error> {
        Ok(serde_json::to_string(&self.jwks())?)
    }
}

#[derive(Clone)]
enum Signer {
    Key(EncodingKey),
    Secret(Vec<u8>),
    Unsigned,
}

/// Builds the header and claims of a test token, then signs it.
#[derive(Clone)]
#[must_use]
pub struct TokenBuilder {
    signer: Signer,
    header: Header,
    claims: Map<String, Value>,
}

impl std::fmt::Debug for TokenBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBuilder")
            .field("header", &self.header)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl TokenBuilder {
    fn new(alg: Algorithm, signer: Signer) -> Self {
        let now = now_unix();
        let mut claims = Map::new();
        claims.insert("iss".into(), DEFAULT_ISSUER.into());
        claims.insert("aud".into(), DEFAULT_AUDIENCE.into());
        claims.insert("sub".into(), DEFAULT_SUBJECT.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + 3600).into());
        Self {
            signer,
            header: Header::new(alg),
            claims,
        }
    }

    /// A token signed with an HMAC `secret` (use a public key's PEM here to forge an
    /// algorithm-confusion token).
    pub fn hmac(secret: &[u8], alg: Algorithm) -> Self {
        Self::new(alg, Signer::Secret(secret.to_vec()))
    }

    /// An unsigned token (`alg: none`, empty signature).
    pub fn unsigned() -> Self {
        Self::new(Algorithm::HS256, Signer::Unsigned)
    }

    /// Overrides the header's `alg` (within the key's family, or signing fails).
    pub fn alg(mut self, alg: Algorithm) -> Self {
        self.header.alg = alg;
        self
    }

    /// Sets the header's `kid`.
    pub fn kid(mut self, kid: &str) -> Self {
        self.header.kid = Some(kid.to_owned());
        self
    }

    /// Removes the header's `kid`.
    pub fn no_kid(mut self) -> Self {
        self.header.kid = None;
        self
    }

    /// Sets a claim.
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.to_owned(), value);
        self
    }

    /// Removes a claim (e.g. `exp`).
    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// Sets `iss`.
    pub fn issuer(self, iss: &str) -> Self {
        self.claim("iss", iss.into())
    }

    /// Sets `aud`.
    pub fn audience(self, aud: &str) -> Self {
        self.claim("aud", aud.into())
    }

    /// Sets `sub`.
    pub fn subject(self, sub: &str) -> Self {
        self.claim("sub", sub.into())
    }

    /// Sets `exp` to `secs` seconds from now (negative: already expired).
    pub fn expires_in(self, secs: i64) -> Self {
        self.claim("exp", (now_unix() + secs).into())
    }

    /// Sets `nbf` to `secs` seconds from now.
    pub fn not_before_in(self, secs: i64) -> Self {
        self.claim("nbf", (now_unix() + secs).into())
    }

    /// Sets `exp` to `lifetime` from now.
    pub fn lifetime(self, lifetime: Duration) -> Self {
        self.expires_in(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2))
    }

    /// The claims as they stand.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Signs the token.
    ///
    /// # Errors
    ///
    /// If the header's algorithm does not fit the key.
    pub fn sign(&self) -> Result<String, Error> {
        match &self.signer {
            Signer::Key(key) => Ok(jsonwebtoken::encode(&self.header, &self.claims, key)?),
            Signer::Secret(secret) => Ok(jsonwebtoken::encode(
                &self.header,
                &self.claims,
                &EncodingKey::from_secret(secret),
            )?),
            Signer::Unsigned => {
                let mut header = serde_json::json!({"alg": "none", "typ": "JWT"});
                if let (Some(kid), Some(obj)) = (&self.header.kid, header.as_object_mut()) {
                    obj.insert("kid".into(), kid.as_str().into());
                }
                Ok(format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
                    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.claims)?),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

    fn validation(alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_audience(&[DEFAULT_AUDIENCE]);
        v.set_issuer(&[DEFAULT_ISSUER]);
        v
    }

    #[test]
    fn every_key_signs_tokens_its_jwk_verifies() {
        let keys = JwtKeys::shared().unwrap();
        for key in keys.all() {
            let token = key.token().subject("alice").sign().unwrap();
            let header = decode_header(&token).unwrap();
            assert_eq!(header.alg, key.alg());
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            let jwk = keys.jwks().find(key.kid()).unwrap().clone();
            let decoding = DecodingKey::from_jwk(&jwk).unwrap();
            let data = decode::<Value>(&token, &decoding, &validation(key.alg())).unwrap();
            assert_eq!(data.claims["sub"], "alice");
            assert_eq!(data.claims["iss"], DEFAULT_ISSUER);
        }
    }

    #[test]
    fn rsa_key_signs_every_rsa_algorithm() {
        let keys = JwtKeys::shared().unwrap();
        let decoding = DecodingKey::from_jwk(keys.rsa().jwk()).unwrap();
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let token = keys.rsa().token().alg(alg).sign().unwrap();
            decode::<Value>(&token, &decoding, &validation(alg)).unwrap();
        }
        // A family mismatch is refused at signing time.
        assert!(keys.rsa().token().alg(Algorithm::ES256).sign().is_err());
    }

    #[test]
    fn a_token_does_not_verify_under_another_key() {
        let keys = JwtKeys::shared().unwrap();
        let token = keys.es256().token().sign().unwrap();
        let other = JwtKeys::generate().unwrap();
        let decoding = DecodingKey::from_jwk(other.es256().jwk()).unwrap();
        assert!(decode::<Value>(&token, &decoding, &validation(Algorithm::ES256)).is_err());
    }

    #[test]
    fn jwks_has_public_keys_only() {
        let keys = JwtKeys::shared().unwrap();
        let json: Value = serde_json::from_str(&keys.jwks_json().unwrap()).unwrap();
        let list = json["keys"].as_array().unwrap();
        assert_eq!(list.len(), 4);
        let ktys: Vec<&str> = list.iter().map(|k| k["kty"].as_str().unwrap()).collect();
        assert_eq!(ktys, ["RSA", "EC", "EC", "OKP"]);
        for k in list {
            assert_eq!(k["use"], "sig");
            // No private or symmetric material.
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(k.get(private).is_none(), "{private} in {k}");
            }
        }
        assert_eq!(list[1]["crv"], "P-256");
        assert_eq!(list[2]["crv"], "P-384");
        assert_eq!(list[3]["crv"], "Ed25519");
        assert!(
            keys.rsa()
                .public_pem()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        assert!(
            keys.rsa()
                .private_pem()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
    }

    #[test]
    fn claims_can_be_shaped() {
        let keys = JwtKeys::shared().unwrap();
        let b = keys
            .es256()
            .token()
            .issuer("https://other.test")
            .audience("other")
            .expires_in(-60)
            .not_before_in(30)
            .without("iat")
            .no_kid()
            .claim("scope", "a b".into());
        assert_eq!(b.claims()["iss"], "https://other.test");
        assert!(b.claims().get("iat").is_none());
        assert!(b.claims()["exp"].as_i64().unwrap() < now_unix());
        let token = b.sign().unwrap();
        assert_eq!(decode_header(&token).unwrap().kid, None);
        let long = keys.es256().token().lifetime(Duration::from_secs(7200));
        assert!(long.claims()["exp"].as_i64().unwrap() > now_unix() + 7000);
    }

    #[test]
    fn hmac_and_unsigned_tokens() {
        let keys = JwtKeys::shared().unwrap();
        let token = keys.hs256_token().sign().unwrap();
        let decoding = DecodingKey::from_secret(keys.hmac_secret());
        decode::<Value>(&token, &decoding, &validation(Algorithm::HS256)).unwrap();

        // Algorithm confusion: the RSA public key PEM used as an HMAC secret.
        let forged = TokenBuilder::hmac(keys.rsa().public_pem().as_bytes(), Algorithm::HS256)
            .kid(keys.rsa().kid())
            .sign()
            .unwrap();
        assert_eq!(decode_header(&forged).unwrap().alg, Algorithm::HS256);

        let none = TokenBuilder::unsigned().kid("rsa-1").sign().unwrap();
        assert!(none.ends_with('.'));
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(none.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "none");
        assert_eq!(header["kid"], "rsa-1");
    }
}
