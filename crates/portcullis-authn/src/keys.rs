//! Verification keys parsed from a JWKS document.

use std::collections::HashMap;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

/// The most keys taken from one JWKS document.
pub const MAX_KEYS: usize = 64;

/// The type of a verification key, which fixes the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    /// Whether a key of this type may verify `alg`. This is what rules out algorithm
    /// confusion: an RSA key never verifies an HMAC, an EC key never an RSA signature.
    pub(crate) fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::{ES256, ES384, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512};
        match self {
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::P256 => alg == ES256,
            Self::P384 => alg == ES384,
            Self::Ed25519 => alg == EdDSA,
        }
    }
}

/// One verification key.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) ty: KeyType,
    /// The key's declared `alg`, if any: then it verifies only that algorithm.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) decoding: DecodingKey,
}

impl Key {
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.ty.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("ty", &self.ty)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a JWKS document could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The document could not be fetched or read.
    #[error("could not fetch the JWKS: {0}")]
    Fetch(String),
    /// The endpoint answered with a non-success status.
    #[error("the JWKS endpoint answered {0}")]
    Status(u16),
    /// The document is not JSON with a `keys` array.
    #[error("the JWKS document is malformed: {0}")]
    Malformed(String),
    /// No key in the document is a usable signature key.
    #[error("the JWKS has no usable signature keys")]
    NoUsableKeys,
    /// The OIDC discovery document is unusable.
    #[error("OIDC discovery failed: {0}")]
    Discovery(String),
}

/// A set of verification keys.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    by_kid: HashMap<String, usize>,
}

/// The result of looking a key up.
pub(crate) enum Lookup<'a> {
    /// Candidate keys (one when the token named a `kid`).
    Found(Vec<&'a Key>),
    /// The token's `kid` is not in the set.
    UnknownKid,
    /// The key exists but does not fit the token's algorithm.
    Mismatch,
}

impl KeySet {
    /// Parses a JWKS document, keeping the usable signature keys (RSA, P-256, P-384, Ed25519;
    /// not symmetric keys, which are never taken from a JWKS; not keys marked for encryption
    /// or with an encryption `alg`). Keys that fail to parse are skipped; a repeated `kid`
    /// keeps its first key.
    ///
    /// # Errors
    ///
    /// If the document is not a JWKS, or no key in it is usable.
    pub fn from_jwks_json(document: &[u8]) -> Result<Self, JwksError> {
        let value: Value =
            serde_json::from_slice(document).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwksError::Malformed("no `keys` array".into()))?;
        let mut set = Self::default();
        for raw in keys {
            if set.keys.len() == MAX_KEYS {
                break;
            }
            let Ok(jwk) = Jwk::deserialize(raw) else {
                continue;
            };
            if let Some(key) = usable_key(&jwk) {
                set.push(key);
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(set)
    }

    fn push(&mut self, key: Key) {
        if let Some(kid) = &key.kid {
            if self.by_kid.contains_key(kid) {
                return;
            }
            self.by_kid.insert(kid.clone(), self.keys.len());
        }
        self.keys.push(key);
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this id is in the set.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// The keys that may verify a token with `kid` and `alg`. Without a `kid`, at most
    /// `max_candidates` keys that fit the algorithm are tried.
    pub(crate) fn lookup(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        max_candidates: usize,
    ) -> Lookup<'_> {
        match kid {
            Some(kid) => match self.by_kid.get(kid).and_then(|&i| self.keys.get(i)) {
                None => Lookup::UnknownKid,
                Some(key) if key.accepts(alg) => Lookup::Found(vec![key]),
                Some(_) => Lookup::Mismatch,
            },
            None => {
                let found: Vec<&Key> = self
                    .keys
                    .iter()
                    .filter(|k| k.accepts(alg))
                    .take(max_candidates)
                    .collect();
                if found.is_empty() {
                    Lookup::Mismatch
                } else {
                    Lookup::Found(found)
                }
            }
        }
    }
}

fn usable_key(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let ty = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyType::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyType::P256,
            EllipticCurve::P384 => KeyType::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyType::Ed25519,
            _ => return None,
        },
        _ => return None,
    };
    let alg = match &jwk.common.key_algorithm {
        None => None,
        Some(declared) => {
            // An `alg` that is not a signature algorithm this key type verifies (RSA-OAEP,
            // HS256 on an RSA key, ...) makes the key unusable rather than unrestricted.
            let alg = Algorithm::from_str(&declared.to_string()).ok()?;
            if !ty.fits(alg) {
                return None;
            }
            Some(alg)
        }
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        ty,
        alg,
        decoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_test_util::JwtKeys;
    use serde_json::json;

    fn jwks() -> Value {
        serde_json::from_str(&JwtKeys::shared().unwrap().jwks_json().unwrap()).unwrap()
    }

    #[test]
    fn parses_every_fixture_key() {
        let set = KeySet::from_jwks_json(jwks().to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 4);
        for kid in ["rsa-1", "ec256-1", "ec384-1", "ed25519-1"] {
            assert!(set.contains_kid(kid));
        }
        assert!(
            matches!(set.lookup(Some("rsa-1"), Algorithm::RS256, 3), Lookup::Found(k) if k.len() == 1)
        );
        assert!(matches!(
            set.lookup(Some("nope"), Algorithm::RS256, 3),
            Lookup::UnknownKid
        ));
        // Declared alg RS256 restricts the RSA key to RS256.
        assert!(matches!(
            set.lookup(Some("rsa-1"), Algorithm::PS256, 3),
            Lookup::Mismatch
        ));
        assert!(matches!(
            set.lookup(Some("ec256-1"), Algorithm::ES384, 3),
            Lookup::Mismatch
        ));
        assert!(matches!(
            set.lookup(Some("ec256-1"), Algorithm::HS256, 3),
            Lookup::Mismatch
        ));
        assert!(matches!(set.lookup(None, Algorithm::EdDSA, 3), Lookup::Found(k) if k.len() == 1));
        assert!(matches!(
            set.lookup(None, Algorithm::HS256, 3),
            Lookup::Mismatch
        ));
    }

    #[test]
    fn key_types_fit_only_their_algorithms() {
        assert!(KeyType::Rsa.fits(Algorithm::PS512));
        assert!(!KeyType::Rsa.fits(Algorithm::HS256));
        assert!(!KeyType::Rsa.fits(Algorithm::ES256));
        assert!(KeyType::P256.fits(Algorithm::ES256));
        assert!(!KeyType::P256.fits(Algorithm::ES384));
        assert!(KeyType::Ed25519.fits(Algorithm::EdDSA));
        assert!(!KeyType::Ed25519.fits(Algorithm::RS256));
    }

    #[test]
    fn skips_unusable_keys() {
        let mut doc = jwks();
        let keys = doc["keys"].as_array_mut().unwrap();
        let mut enc = keys[1].clone();
        enc["kid"] = "enc".into();
        enc["use"] = "enc".into();
        let mut wrong_alg = keys[0].clone();
        wrong_alg["kid"] = "wrong".into();
        wrong_alg["alg"] = "HS256".into();
        let mut dup = keys[1].clone();
        dup["alg"] = "ES256".into();
        keys.push(enc);
        keys.push(wrong_alg);
        keys.push(dup);
        keys.push(json!({"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}));
        keys.push(json!({"kty": "EC", "kid": "broken", "crv": "P-256", "x": "!!", "y": "!!"}));
        keys.push(json!({"kty": "weird"}));
        let set = KeySet::from_jwks_json(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 4);
        for kid in ["enc", "wrong", "sym", "broken"] {
            assert!(!set.contains_kid(kid), "{kid}");
        }
    }

    #[test]
    fn rejects_unusable_documents() {
        assert!(matches!(
            KeySet::from_jwks_json(b"not json"),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(
            KeySet::from_jwks_json(b"{}"),
            Err(JwksError::Malformed(_))
        ));
        assert_eq!(
            KeySet::from_jwks_json(br#"{"keys": []}"#).unwrap_err(),
            JwksError::NoUsableKeys
        );
        assert_eq!(
            KeySet::from_jwks_json(br#"{"keys": [{"kty": "oct", "k": "AAAA"}]}"#).unwrap_err(),
            JwksError::NoUsableKeys
        );
    }

    #[test]
    fn bounded_key_count() {
        let mut doc = jwks();
        let template = doc["keys"][1].clone();
        let keys = doc["keys"].as_array_mut().unwrap();
        for i in 0..200 {
            let mut k = template.clone();
            k["kid"] = format!("k{i}").into();
            keys.push(k);
        }
        let set = KeySet::from_jwks_json(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), MAX_KEYS);
    }
}
