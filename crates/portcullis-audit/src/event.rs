//! What the request path captures, and the record the writer makes of it.
//!
//! The request path only clones what it finds (cheap: the core types share their data) and
//! applies the redaction that must happen before anything leaves the request: the query and
//! header policy. Formatting, pseudonymisation and hashing happen on the writer.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method, Request, Uri};
use portcullis_core::{
    ClientAddr, PeerCertificate, Principal, RateLimitDecision, Rejection, RouteInfo, TlsInfo,
    TokenUsage, UpstreamLatency, WafVerdict,
};
use serde::Serialize;

use crate::config::{AuditConfig, CREDENTIAL_PARAMS, QueryPolicy};
use crate::time::rfc3339_bytes;

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Completion {
    /// The response body was sent whole.
    Complete,
    /// The client went away before the body's end.
    Aborted,
    /// The response body failed part-way.
    BodyError,
    /// The inner service failed: no response.
    Error,
    /// The client went away before the response head.
    Cancelled,
}

/// One exchange, as captured on the request path.
#[derive(Debug)]
pub(crate) struct Captured {
    pub(crate) time: SystemTime,
    pub(crate) request_id: HeaderValue,
    pub(crate) method: Method,
    pub(crate) host: Option<HeaderValue>,
    /// The whole target: the query is redacted when the record is made, on the writer.
    pub(crate) uri: Uri,
    /// The recorded headers, and whether each is masked.
    pub(crate) headers: Vec<(HeaderName, HeaderValue, bool)>,
    pub(crate) client: Option<ClientAddr>,
    pub(crate) tls: Option<TlsInfo>,
    pub(crate) cert: Option<PeerCertificate>,
    pub(crate) route: Option<RouteInfo>,
    pub(crate) status: Option<u16>,
    pub(crate) completion: Completion,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration: Duration,
    pub(crate) response_time: Option<Duration>,
    pub(crate) upstream: Option<Duration>,
    pub(crate) principal: Option<Principal>,
    pub(crate) rejection: Option<Rejection>,
    pub(crate) waf: Option<WafVerdict>,
    pub(crate) ratelimit: Option<RateLimitDecision>,
    pub(crate) tokens: Option<TokenUsage>,
}

impl Captured {
    pub(crate) fn from_request<B>(
        request: &Request<B>,
        headers: &[(HeaderName, bool)],
        request_id: HeaderValue,
    ) -> Self {
        let ext = request.extensions();
        let mut recorded = Vec::new();
        for (name, masked) in headers {
            for value in request.headers().get_all(name) {
                recorded.push((name.clone(), value.clone(), *masked));
            }
        }
        Self {
            time: SystemTime::now(),
            request_id,
            method: request.method().clone(),
            host: request.headers().get(http::header::HOST).cloned(),
            uri: request.uri().clone(),
            headers: recorded,
            client: ext.get::<ClientAddr>().copied(),
            tls: ext.get::<TlsInfo>().cloned(),
            cert: ext.get::<PeerCertificate>().cloned(),
            route: ext.get::<RouteInfo>().cloned(),
            status: None,
            completion: Completion::Cancelled,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            response_time: None,
            upstream: None,
            principal: ext.get::<Principal>().cloned(),
            rejection: None,
            waf: None,
            ratelimit: None,
            tokens: None,
        }
    }

    /// Takes what the layers further in left on the response.
    pub(crate) fn take_response(&mut self, status: u16, ext: &http::Extensions) {
        self.status = Some(status);
        self.rejection = ext.get::<Rejection>().copied();
        self.waf = ext.get::<WafVerdict>().cloned();
        self.ratelimit = ext.get::<RateLimitDecision>().cloned();
        self.tokens = ext.get::<TokenUsage>().copied();
        self.upstream = ext.get::<UpstreamLatency>().map(|u| u.0);
        if let Some(p) = ext.get::<Principal>() {
            self.principal = Some(p.clone());
        }
        if let Some(r) = ext.get::<RouteInfo>() {
            self.route = Some(r.clone());
        }
    }
}

fn redact_query(query: &str, policy: QueryPolicy) -> Option<String> {
    if query.is_empty() || policy == QueryPolicy::Drop {
        return None;
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        out.push_str(name);
        if let Some(value) = value {
            out.push('=');
            let credential = CREDENTIAL_PARAMS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name));
            if policy == QueryPolicy::Keep && !credential {
                out.push_str(value);
            } else {
                out.push_str("***");
            }
        }
    }
    Some(out)
}

/// The headers a configuration records, and whether each is masked; credential headers are
/// never among them (validation refuses them; they are left out here too).
pub(crate) fn recorded_headers(config: &AuditConfig) -> Vec<(HeaderName, bool)> {
    let r = &config.redaction;
    let mut out: Vec<(HeaderName, bool)> = Vec::new();
    for (list, masked) in [(&r.headers, false), (&r.mask_headers, true)] {
        for name in list {
            if config.is_credential_header(name) {
                continue;
            }
            if let Ok(h) = HeaderName::from_bytes(name.as_bytes()) {
                out.retain(|(n, _)| *n != h);
                out.push((h, masked));
            }
        }
    }
    out
}

/// Turns values into pseudonyms: `hmac:` and the first 16 bytes of HMAC-SHA256, in hex.
pub(crate) struct Pseudonyms {
    key: aws_lc_rs::hmac::Key,
    subject: bool,
    client_ip: bool,
}

impl Pseudonyms {
    pub(crate) fn new(key: &[u8], subject: bool, client_ip: bool) -> Self {
        Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
            subject,
            client_ip,
        }
    }

    fn of(&self, domain: &str, value: &str) -> String {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.key);
        ctx.update(domain.as_bytes());
        ctx.update(b":");
        ctx.update(value.as_bytes());
        let tag = ctx.sign();
        format!(
            "hmac:{}",
            crate::chain::hex(tag.as_ref().get(..16).unwrap_or_default())
        )
    }
}

#[derive(Serialize)]
struct Record<'a> {
    kind: &'static str,
    time: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<Client>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Tls<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert: Option<Cert<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<Subject<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<Route<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    http: Http<'a>,
    completion: Completion,
    bytes_in: u64,
    bytes_out: u64,
    duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejection: Option<&'a Rejection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waf: Option<Waf<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratelimit: Option<&'a RateLimitDecision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<Tokens>,
}

#[derive(Serialize)]
struct Client {
    ip: String,
    port: u16,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    forwarded: bool,
}

#[derive(Serialize)]
struct Tls<'a> {
    version: &'static str,
    cipher: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alpn: Option<&'a str>,
}

#[derive(Serialize)]
struct Cert<'a> {
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_id: Option<&'a str>,
    thumbprint: String,
}

#[derive(Serialize)]
struct Subject<'a> {
    subject: String,
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Route<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress: Option<&'a str>,
}

#[derive(Serialize)]
struct Http<'a> {
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<&'a str, Cow<'a, str>>,
}

#[derive(Serialize)]
struct Waf<'a> {
    action: portcullis_core::WafAction,
    paranoia_level: u8,
    inbound_score: u32,
    outbound_score: u32,
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    rules: &'a [u32],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    rules_truncated: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    redactions: &'a BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    detections: &'a BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    incident: Option<String>,
}

#[derive(Serialize)]
struct Tokens {
    prompt: u64,
    completion: u64,
    total: u64,
    source: portcullis_core::UsageSource,
}

/// Writes the record body (`{"kind":"request",...}`), ready to seal, to `out` (cleared
/// first: the writer reuses one buffer).
pub(crate) fn request_record(
    c: &Captured,
    query_policy: QueryPolicy,
    pseudonyms: Option<&Pseudonyms>,
    out: &mut Vec<u8>,
) {
    let client = c.client.map(|a| {
        let ip = a.ip().to_string();
        Client {
            ip: match pseudonyms.filter(|p| p.client_ip) {
                Some(p) => p.of("ip", &ip),
                None => ip,
            },
            port: a.peer().port(),
            forwarded: a.proxy_hops() > 0,
        }
    });
    let principal = c.principal.as_ref().map(|p| Subject {
        subject: match pseudonyms.filter(|ps| ps.subject) {
            Some(ps) => ps.of("subject", p.subject()),
            None => p.subject().to_owned(),
        },
        method: p.method().as_str(),
        issuer: p.issuer(),
        tenant: p.tenant(),
        key_id: p.key_id(),
    });
    let query = c.uri.query().and_then(|q| redact_query(q, query_policy));
    let mut headers: BTreeMap<&str, Cow<'_, str>> = BTreeMap::new();
    for (name, value, masked) in &c.headers {
        let text = if *masked {
            "***"
        } else {
            value.to_str().unwrap_or("(not text)")
        };
        headers
            .entry(name.as_str())
            .and_modify(|v| {
                let v = v.to_mut();
                v.push_str(", ");
                v.push_str(text);
            })
            .or_insert(Cow::Borrowed(text));
    }
    let host = c
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .or_else(|| c.uri.authority().map(|a| a.as_str()));
    let time = rfc3339_bytes(c.time);
    let record = Record {
        kind: "request",
        time: std::str::from_utf8(&time).unwrap_or_default(),
        request_id: c.request_id.to_str().unwrap_or_default(),
        client,
        tls: c.tls.as_ref().map(|t| Tls {
            version: t.version().as_str(),
            cipher: t.cipher_suite(),
            sni: t.sni(),
            alpn: t.alpn(),
        }),
        client_cert: c.cert.as_ref().map(|p| Cert {
            subject: p.subject(),
            spiffe_id: p.spiffe_id().map(|s| s.as_str()),
            thumbprint: p.thumbprint().to_string(),
        }),
        principal,
        route: c.route.as_ref().map(|r| Route {
            name: r.name(),
            namespace: r.namespace(),
            ingress: r.ingress(),
        }),
        model: c.route.as_ref().and_then(RouteInfo::model),
        http: Http {
            method: c.method.as_str(),
            host,
            path: c.uri.path(),
            query: query.as_deref(),
            status: c.status,
            headers,
        },
        completion: c.completion,
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        duration_us: micros(c.duration),
        response_us: c.response_time.map(micros),
        upstream_us: c.upstream.map(micros),
        rejection: c.rejection.as_ref(),
        waf: c.waf.as_ref().map(|w| Waf {
            action: w.action(),
            paranoia_level: w.paranoia_level(),
            inbound_score: w.inbound_score(),
            outbound_score: w.outbound_score(),
            rules: w.matched_rules(),
            rules_truncated: w.rules_truncated(),
            redactions: w.redactions(),
            detections: w.detections(),
            incident: w.incident().map(|i| i.urn()),
        }),
        ratelimit: c.ratelimit.as_ref(),
        tokens: c.tokens.map(|t| Tokens {
            prompt: t.prompt(),
            completion: t.completion(),
            total: t.total(),
            source: t.source(),
        }),
    };
    out.clear();
    if serde_json::to_writer(&mut *out, &record).is_err() {
        out.clear();
        out.extend_from_slice(b"{\"kind\":\"request\"}");
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_masked_kept_or_dropped() {
        let q = "q=shoes&api_key=sk-123&flag&Token=abc";
        assert_eq!(
            redact_query(q, QueryPolicy::Mask).unwrap(),
            "q=***&api_key=***&flag&Token=***"
        );
        assert_eq!(
            redact_query(q, QueryPolicy::Keep).unwrap(),
            "q=shoes&api_key=***&flag&Token=***"
        );
        assert_eq!(redact_query(q, QueryPolicy::Drop), None);
    }

    #[test]
    fn pseudonyms_are_stable_and_keyed() {
        let a = Pseudonyms::new(b"k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1", true, true);
        let b = Pseudonyms::new(b"k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2k2", true, true);
        assert_eq!(a.of("subject", "alice"), a.of("subject", "alice"));
        assert_ne!(a.of("subject", "alice"), b.of("subject", "alice"));
        assert_ne!(a.of("subject", "alice"), a.of("ip", "alice"));
        assert!(a.of("subject", "alice").starts_with("hmac:"));
        assert_eq!(a.of("subject", "alice").len(), 5 + 32);
    }
}
