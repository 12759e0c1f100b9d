//! API keys, stored only as SHA-256 digests.
//!
//! A presented key is hashed and looked up by its digest, then the stored digest is compared
//! with the computed one in constant time. Looking up by digest leaks, at most, how much of a
//! SHA-256 output matched a stored one, which an attacker cannot steer without a preimage; the
//! constant-time comparison guards the final decision all the same. The keys themselves never
//! exist in configuration, in memory after hashing, or in logs.

use std::collections::{BTreeMap, HashMap};

use aws_lc_rs::digest::{SHA256, digest};
use portcullis_core::{AuthMethod, ConfigError, Principal};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiKeyError;

/// The longest API key accepted, in bytes.
pub const MAX_API_KEY_LEN: usize = 512;

/// One API key as written in configuration: its SHA-256 digest and the principal it maps to.
///
/// ```yaml
/// - id: billing-batch
///   sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
///   subject: svc-billing
///   tenant: acme
///   scopes: [chat:write]
///   expires: 2027-01-01T00:00:00Z
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for the key (not secret): it becomes the principal's key id and appears in the
    /// audit log.
    pub id: String,
    /// The SHA-256 digest of the key, as 64 hex digits (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The principal's subject.
    pub subject: String,
    /// The principal's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Granted scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Granted roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// When the key stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    principal: Principal,
    expires_at: Option<i64>,
}

/// A set of API keys, looked up by digest.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyStore {
    entries: Vec<Entry>,
    by_digest: HashMap<[u8; 32], usize>,
}

/// The SHA-256 digest of `key` as lowercase hex: what goes into [`ApiKeyConfig::sha256`].
pub fn hash_api_key(key: &str) -> String {
    digest(&SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Constant-time equality of two digests.
pub(crate) fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    #[cfg(test)]
    tests::CT_EQ_CALLS.with(|c| c.set(c.get() + 1));
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

impl ApiKeyStore {
    /// Builds a store from configured keys.
    ///
    /// # Errors
    ///
    /// If a digest is not 64 hex digits, an expiry is not RFC 3339, a principal field is
    /// invalid, or two keys share an id or a digest.
    pub fn new(keys: &[ApiKeyConfig]) -> Result<Self, ConfigError> {
        let mut store = Self::default();
        let mut ids = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let field = |name: &str| format!("keys[{i}].{name}");
            let digest = parse_digest(&key.sha256).ok_or_else(|| {
                ConfigError::new(
                    field("sha256"),
                    "not a SHA-256 digest",
                    "write the 64 hex digits of the key's SHA-256 (never the key itself)",
                )
            })?;
            let expires_at = key
                .expires
                .as_deref()
                .map(|text| {
                    OffsetDateTime::parse(text, &Rfc3339)
                        .map(OffsetDateTime::unix_timestamp)
                        .map_err(|_| {
                            ConfigError::new(
                                field("expires"),
                                format!("`{text}` is not an RFC 3339 timestamp"),
                                "write e.g. `2027-01-01T00:00:00Z`",
                            )
                        })
                })
                .transpose()?;
            let mut builder = Principal::builder(key.subject.clone(), AuthMethod::ApiKey)
                .key_id(key.id.clone())
                .scopes(key.scopes.iter().cloned())
                .roles(key.roles.iter().cloned());
            if let Some(tenant) = &key.tenant {
                builder = builder.tenant(tenant.clone());
            }
            let principal = builder.build().map_err(|e| {
                ConfigError::new(
                    format!("keys[{i}]"),
                    e.to_string(),
                    "fix the id, subject, tenant, scopes or roles",
                )
            })?;
            if ids.insert(key.id.clone(), i).is_some() {
                return Err(ConfigError::new(
                    field("id"),
                    format!("the id `{}` is used twice", key.id),
                    "give every key its own id",
                ));
            }
            if store
                .by_digest
                .insert(digest, store.entries.len())
                .is_some()
            {
                return Err(ConfigError::new(
                    field("sha256"),
                    "the same key is listed twice",
                    "remove the duplicate",
                ));
            }
            store.entries.push(Entry {
                digest,
                principal,
                expires_at,
            });
        }
        Ok(store)
    }

    /// Builds a store from the `data` of a Kubernetes Secret: each entry's name is the key id
    /// and its value a JSON object with the other [`ApiKeyConfig`] fields
    /// (`{"sha256": "...", "subject": "...", "scopes": [...]}`).
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new), plus entries that are not such JSON objects.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Record {
            sha256: String,
            subject: String,
            #[serde(default)]
            tenant: Option<String>,
            #[serde(default)]
            scopes: Vec<String>,
            #[serde(default)]
            roles: Vec<String>,
            #[serde(default)]
            expires: Option<String>,
        }
        let mut keys = Vec::with_capacity(data.len());
        for (id, value) in data {
            let record: Record = serde_json::from_slice(value).map_err(|e| {
                ConfigError::new(
                    format!("data.{id}"),
                    format!("not an API key record: {e}"),
                    "store a JSON object with `sha256` and `subject` (and optionally `tenant`, `scopes`, `roles`, `expires`)",
                )
            })?;
            keys.push(ApiKeyConfig {
                id: id.clone(),
                sha256: record.sha256,
                subject: record.subject,
                tenant: record.tenant,
                scopes: record.scopes,
                roles: record.roles,
                expires: record.expires,
            });
        }
        Self::new(&keys)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Verifies a presented key at `now_unix`, returning its principal.
    ///
    /// # Errors
    ///
    /// [`ApiKeyError::Malformed`] for an empty, over-long or non-printable key,
    /// [`ApiKeyError::Unknown`] for a key not in the store, [`ApiKeyError::Expired`] for one
    /// past its expiry.
    pub fn verify(&self, presented: &[u8], now_unix: u64) -> Result<&Principal, ApiKeyError> {
        if presented.is_empty()
            || presented.len() > MAX_API_KEY_LEN
            || !presented.iter().all(|b| b.is_ascii_graphic())
        {
            return Err(ApiKeyError::Malformed);
        }
        let mut computed = [0u8; 32];
        computed.copy_from_slice(digest(&SHA256, presented).as_ref());
        let entry = self
            .by_digest
            .get(&computed)
            .and_then(|&i| self.entries.get(i))
            .filter(|e| ct_eq(&e.digest, &computed))
            .ok_or(ApiKeyError::Unknown)?;
        if let Some(expires_at) = entry.expires_at
            && i64::try_from(now_unix).unwrap_or(i64::MAX) >= expires_at
        {
            return Err(ApiKeyError::Expired);
        }
        Ok(&entry.principal)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        pub(crate) static CT_EQ_CALLS: Cell<usize> = const { Cell::new(0) };
    }

    fn config(id: &str, key: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.into(),
            sha256: hash_api_key(key),
            subject: format!("svc-{id}"),
            tenant: Some("acme".into()),
            scopes: vec!["chat:write".into()],
            roles: vec![],
            expires: None,
        }
    }

    #[test]
    fn hashes_are_sha256_hex() {
        // SHA-256("test"), a well-known vector.
        assert_eq!(
            hash_api_key("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn verifies_known_keys_and_maps_principals() {
        let store = ApiKeyStore::new(&[config("a", "sk-alpha"), config("b", "sk-beta")]).unwrap();
        assert_eq!(store.len(), 2);
        let p = store.verify(b"sk-beta", 0).unwrap();
        assert_eq!(p.subject(), "svc-b");
        assert_eq!(p.key_id(), Some("b"));
        assert_eq!(p.tenant(), Some("acme"));
        assert_eq!(p.method(), AuthMethod::ApiKey);
        assert!(p.has_scope("chat:write"));
        assert_eq!(store.verify(b"sk-gamma", 0), Err(ApiKeyError::Unknown));
        assert_eq!(store.verify(b"sk-alph", 0), Err(ApiKeyError::Unknown));
    }

    #[test]
    fn the_final_decision_is_a_constant_time_comparison() {
        let store = ApiKeyStore::new(&[config("a", "sk-alpha")]).unwrap();
        CT_EQ_CALLS.with(|c| c.set(0));
        store.verify(b"sk-alpha", 0).unwrap();
        assert_eq!(CT_EQ_CALLS.with(Cell::get), 1);
        assert!(ct_eq(&[7; 32], &[7; 32]));
        let mut other = [7; 32];
        other[31] = 8;
        assert!(!ct_eq(&[7; 32], &other));
        other = [7; 32];
        other[0] = 0;
        assert!(!ct_eq(&[7; 32], &other));
    }

    #[test]
    fn malformed_and_expired_keys() {
        let mut expiring = config("old", "sk-old");
        expiring.expires = Some("2026-01-01T00:00:00Z".into());
        let store = ApiKeyStore::new(&[expiring]).unwrap();
        let jan_1_2026 = 1_767_225_600;
        assert!(store.verify(b"sk-old", jan_1_2026 - 1).is_ok());
        assert_eq!(
            store.verify(b"sk-old", jan_1_2026),
            Err(ApiKeyError::Expired)
        );
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            &[0xff, 0xfe],
            &[b'a'; MAX_API_KEY_LEN + 1],
        ] {
            assert_eq!(store.verify(bad, 0), Err(ApiKeyError::Malformed));
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let mut bad = config("a", "k");
        bad.sha256 = "sk-live-plaintext".into();
        let err = ApiKeyStore::new(&[bad]).unwrap_err();
        assert_eq!(err.field(), "keys[0].sha256");
        let mut bad = config("a", "k");
        bad.expires = Some("tomorrow".into());
        assert_eq!(
            ApiKeyStore::new(&[bad]).unwrap_err().field(),
            "keys[0].expires"
        );
        let err = ApiKeyStore::new(&[config("a", "k"), config("a", "j")]).unwrap_err();
        assert_eq!(err.field(), "keys[1].id");
        let err = ApiKeyStore::new(&[config("a", "k"), config("b", "k")]).unwrap_err();
        assert_eq!(err.field(), "keys[1].sha256");
        let mut bad = config("a", "k");
        bad.scopes = vec!["has space".into()];
        assert_eq!(ApiKeyStore::new(&[bad]).unwrap_err().field(), "keys[0]");
    }

    #[test]
    fn secret_data_format() {
        let mut data = BTreeMap::new();
        data.insert(
            "batch".to_owned(),
            serde_json::to_vec(&serde_json::json!({
                "sha256": hash_api_key("sk-batch"),
                "subject": "svc-batch",
                "scopes": ["embeddings"],
            }))
            .unwrap(),
        );
        let store = ApiKeyStore::from_secret_data(&data).unwrap();
        let p = store.verify(b"sk-batch", 0).unwrap();
        assert_eq!(p.key_id(), Some("batch"));
        assert!(p.has_scope("embeddings"));
        data.insert("broken".to_owned(), b"not json".to_vec());
        assert_eq!(
            ApiKeyStore::from_secret_data(&data).unwrap_err().field(),
            "data.broken"
        );
    }
}
