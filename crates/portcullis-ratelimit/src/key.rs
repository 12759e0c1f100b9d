//! What a policy counts by, and the keys it derives from a request.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use http::{Extensions, HeaderMap, HeaderName};
use portcullis_core::{ClientAddr, IpCidr, KeyKind, PeerCertificate, Principal, RouteInfo};

/// Values longer than this are replaced by a keyed 64-bit hash, so an attacker-chosen header
/// cannot make a key large.
const MAX_TEXT_KEY: usize = 64;

/// A rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// An address (or an IPv6 network when grouped).
    Ip(IpAddr),
    /// A text value (subject, tenant, header value, ...).
    Text(Arc<str>),
    /// The single global key.
    Global,
    /// Several parts together.
    Composite(Arc<[Key]>),
}

/// What a policy counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySpec {
    /// The client address ([`ClientAddr`]); IPv6 addresses grouped by `ipv6_prefix` bits
    /// (e.g. 64) when set, since one client usually holds a whole /64.
    ClientIp {
        /// The IPv6 prefix length to group by.
        ipv6_prefix: Option<u8>,
    },
    /// The principal's subject.
    Subject,
    /// The principal's tenant.
    Tenant,
    /// The API key id (principals authenticated by API key).
    ApiKey,
    /// The client certificate's SPIFFE ID.
    SpiffeId,
    /// A request header's value.
    Header(HeaderName),
    /// The route.
    Route,
    /// The model name.
    Model,
    /// One key for every request.
    Global,
    /// All of the parts, together.
    Composite(Vec<KeySpec>),
}

fn text(value: &str) -> Key {
    if value.len() <= MAX_TEXT_KEY {
        return Key::Text(value.into());
    }
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    let h = HASHER.get_or_init(RandomState::new).hash_one(value);
    Key::Text(format!("#{h:016x}").into())
}

impl KeySpec {
    /// The [`KeyKind`] reported in decisions.
    pub fn kind(&self) -> KeyKind {
        match self {
            Self::ClientIp { .. } => KeyKind::ClientIp,
            Self::Subject => KeyKind::Subject,
            Self::Tenant => KeyKind::Tenant,
            Self::ApiKey => KeyKind::ApiKey,
            Self::SpiffeId => KeyKind::SpiffeId,
            Self::Header(_) => KeyKind::Header,
            Self::Route => KeyKind::Route,
            Self::Model => KeyKind::Model,
            Self::Global => KeyKind::Global,
            Self::Composite(_) => KeyKind::Composite,
        }
    }

    /// Whether the key includes the model name, which a layer that reads the body may learn
    /// only there.
    pub fn uses_model(&self) -> bool {
        match self {
            Self::Model => true,
            Self::Composite(parts) => parts.iter().any(Self::uses_model),
            _ => false,
        }
    }

    /// The key of a request, or `None` when the request lacks what the policy counts by (no
    /// principal for a subject policy, no header, ...): the policy does not apply to it.
    pub fn key(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<Key> {
        let principal = || extensions.get::<Principal>();
        match self {
            Self::ClientIp { ipv6_prefix } => {
                let ip = extensions.get::<ClientAddr>()?.ip();
                Some(Key::Ip(match (ip, ipv6_prefix) {
                    (IpAddr::V6(_), Some(prefix)) => IpCidr::containing(ip, *prefix).addr(),
                    _ => ip,
                }))
            }
            Self::Subject => principal().map(|p| text(p.subject())),
            Self::Tenant => principal().and_then(Principal::tenant).map(text),
            Self::ApiKey => principal()
                .filter(|p| p.method() == portcullis_core::AuthMethod::ApiKey)
                .and_then(Principal::key_id)
                .map(text),
            Self::SpiffeId => extensions
                .get::<PeerCertificate>()
                .and_then(PeerCertificate::spiffe_id)
                .map(|id| text(id.as_str())),
            Self::Header(name) => headers
                .get(name)
                .map(|v| text(&String::from_utf8_lossy(v.as_bytes()))),
            Self::Route => extensions.get::<RouteInfo>().map(|r| text(r.name())),
            Self::Model => extensions
                .get::<RouteInfo>()
                .and_then(RouteInfo::model)
                .map(text),
            Self::Global => Some(Key::Global),
            Self::Composite(parts) => parts
                .iter()
                .map(|p| p.key(headers, extensions))
                .collect::<Option<Vec<_>>>()
                .map(|keys| Key::Composite(keys.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AuthMethod;

    fn ext() -> Extensions {
        let mut e = Extensions::new();
        e.insert(ClientAddr::from_peer(
            "[2001:db8:1:2:aaaa::1]:443".parse().unwrap(),
        ));
        e.insert(
            Principal::builder("alice", AuthMethod::ApiKey)
                .tenant("acme")
                .key_id("k1")
                .build()
                .unwrap(),
        );
        e.insert(RouteInfo::new("chat").unwrap().with_model("llama").unwrap());
        e
    }

    #[test]
    fn keys_from_requests() {
        let e = ext();
        let mut h = HeaderMap::new();
        h.insert("x-team", "ml".parse().unwrap());
        let k = |spec: KeySpec| spec.key(&h, &e);
        assert_eq!(
            k(KeySpec::ClientIp {
                ipv6_prefix: Some(64)
            }),
            Some(Key::Ip("2001:db8:1:2::".parse().unwrap()))
        );
        assert_eq!(
            k(KeySpec::ClientIp { ipv6_prefix: None }),
            Some(Key::Ip("2001:db8:1:2:aaaa::1".parse().unwrap()))
        );
        assert_eq!(k(KeySpec::Subject), Some(Key::Text("alice".into())));
        assert_eq!(k(KeySpec::Tenant), Some(Key::Text("acme".into())));
        assert_eq!(k(KeySpec::ApiKey), Some(Key::Text("k1".into())));
        assert_eq!(
            k(KeySpec::Header(HeaderName::from_static("x-team"))),
            Some(Key::Text("ml".into()))
        );
        assert_eq!(k(KeySpec::Header(HeaderName::from_static("x-none"))), None);
        assert_eq!(k(KeySpec::Route), Some(Key::Text("chat".into())));
        assert_eq!(k(KeySpec::Model), Some(Key::Text("llama".into())));
        assert_eq!(k(KeySpec::SpiffeId), None);
        assert_eq!(k(KeySpec::Global), Some(Key::Global));
        assert_eq!(
            k(KeySpec::Composite(vec![KeySpec::Tenant, KeySpec::Model])),
            Some(Key::Composite(
                vec![Key::Text("acme".into()), Key::Text("llama".into())].into()
            ))
        );
        assert_eq!(
            k(KeySpec::Composite(vec![KeySpec::Tenant, KeySpec::SpiffeId])),
            None
        );
        assert_eq!(KeySpec::Subject.kind(), KeyKind::Subject);
    }

    #[test]
    fn long_values_are_hashed() {
        let long = "x".repeat(10_000);
        let Key::Text(t) = text(&long) else { panic!() };
        assert!(t.len() <= 17);
        assert_eq!(text(&long), text(&long));
        assert_ne!(text(&long), text(&"y".repeat(10_000)));
    }
}
