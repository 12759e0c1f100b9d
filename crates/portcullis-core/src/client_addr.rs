//! The client's address, resolved from the socket peer and forwarding headers.
//!
//! Behind a load balancer the socket peer is the load balancer, and the client's address is in
//! `X-Forwarded-For` or `Forwarded` (RFC 7239). Those headers are written by whoever sent the
//! request, so the only entries worth believing are the ones appended by proxies we trust. The
//! rule, as in NGINX's `real_ip_recursive` and Envoy's `xff_num_trusted_hops`:
//!
//! 1. If the socket peer is not a trusted proxy, it is the client. Headers are ignored.
//! 2. Otherwise walk the configured header from the right (the entry the nearest proxy
//!    appended) to the left; each entry is the address that proxy saw. The first entry that is
//!    not a trusted proxy is the client.
//! 3. A malformed entry ends the walk: what lies to its left cannot be attributed to any proxy,
//!    so the last trusted address reached (the proxy that forwarded the garbage) is the client.
//! 4. At most `max_hops` entries are examined, so a header with ten thousand entries costs the
//!    same as one with ten.
//!
//! The left-most entry is never trusted for its position: it is the one a client forges.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU8;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};
use serde::{Deserialize, Serialize};

use crate::cidr::{IpCidr, canonical};
use crate::error::ConfigError;

/// `X-Forwarded-For`.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The longest forwarded entry that can hold an address: `[` + IPv6 with embedded IPv4 + `]:65535`.
const MAX_ENTRY_LEN: usize = 64;

/// The most forwarded entries a [`TrustedProxies`] may be configured to examine.
pub const MAX_HOPS_LIMIT: u8 = 64;

/// The number of forwarded entries examined unless configured otherwise.
pub const DEFAULT_MAX_HOPS: u8 = 10;

/// The resolved address of the client that sent a request.
///
/// Written into request extensions by the server (the accept loop, or
/// [`TrustedProxies::resolve`] in a custom gateway) and read by rate limiting and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClientAddr {
    peer: SocketAddr,
    ip: IpAddr,
    source: AddrSource,
    proxy_hops: u8,
}

/// Where a [`ClientAddr`]'s address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AddrSource {
    /// The socket peer itself.
    Peer,
    /// An entry of `X-Forwarded-For` appended by a trusted proxy.
    XForwardedFor,
    /// A `for=` parameter of `Forwarded` appended by a trusted proxy.
    Forwarded,
}

impl ClientAddr {
    /// The client is the socket peer (no proxy in front).
    pub fn from_peer(peer: SocketAddr) -> Self {
        Self {
            peer,
            ip: canonical(peer.ip()),
            source: AddrSource::Peer,
            proxy_hops: 0,
        }
    }

    /// The client's IP address. IPv4-mapped IPv6 addresses are reported as IPv4.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The socket peer the request arrived from.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Where [`ip`](Self::ip) came from.
    pub fn source(&self) -> AddrSource {
        self.source
    }

    /// How many forwarded entries were consumed to reach the client (0 when the peer is the
    /// client).
    pub fn proxy_hops(&self) -> u8 {
        self.proxy_hops
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.ip, f)
    }
}

/// Which forwarding header the trusted proxies write.
///
/// Exactly one is read. Reading both would let a client put a forged address in the header
/// its proxies do not touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the de facto standard; the default).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The proxies whose forwarding headers are believed, and how to read them.
///
/// With no trusted proxies (the [`Default`]), forwarding headers are ignored and the socket
/// peer is the client: the secure default for a server exposed directly.
///
/// The rules, as in NGINX's `real_ip_recursive` and Envoy's `xff_num_trusted_hops`:
///
/// 1. If the socket peer is not a trusted proxy, it is the client. Headers are ignored.
/// 2. Otherwise walk the configured header from the right (the entry the nearest proxy
///    appended) to the left; each entry is the address that proxy saw. The first entry that
///    is not a trusted proxy is the client.
/// 3. A malformed entry (`unknown`, an obfuscated identifier, garbage, a non-ASCII value) ends
///    the walk: what lies to its left cannot be attributed to any proxy, so the last trusted
///    address reached (the proxy that forwarded the garbage) is the client.
/// 4. At most [`max_hops`](Self::max_hops) entries are examined, so a header with ten
///    thousand entries costs the same as one with ten.
///
/// The left-most entry is never believed for its position: it is the one a client forges.
/// IPv4-mapped IPv6 addresses are treated as the IPv4 addresses they carry.
///
/// # Examples
///
/// ```
/// use http::HeaderMap;
/// use portcullis_core::{AddrSource, TrustedProxies};
///
/// let proxies = TrustedProxies::new(["10.0.0.0/8".parse()?]);
/// let mut headers = HeaderMap::new();
/// // The client forged the left-most entry; the load balancer at 10.0.0.2 appended the real one.
/// headers.insert("x-forwarded-for", "1.1.1.1, 203.0.113.7".parse()?);
/// let client = proxies.resolve("10.0.0.2:41000".parse()?, &headers);
/// assert_eq!(client.ip().to_string(), "203.0.113.7");
/// assert_eq!(client.source(), AddrSource::XForwardedFor);
///
/// // The same headers from an untrusted peer are ignored.
/// let client = proxies.resolve("198.51.100.1:41000".parse()?, &headers);
/// assert_eq!(client.ip().to_string(), "198.51.100.1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct TrustedProxies {
    nets: Arc<[IpCidr]>,
    header: ForwardedHeader,
    max_hops: Option<NonZeroU8>,
}

impl TrustedProxies {
    /// Trust the given networks, reading `X-Forwarded-For` and examining at most
    /// [`DEFAULT_MAX_HOPS`] entries.
    pub fn new(nets: impl IntoIterator<Item = IpCidr>) -> Self {
        Self {
            nets: nets.into_iter().collect(),
            header: ForwardedHeader::default(),
            max_hops: None,
        }
    }

    /// Trust no one: the socket peer is always the client.
    pub fn none() -> Self {
        Self::default()
    }

    /// Read `header` instead of `X-Forwarded-For`.
    #[must_use]
    pub fn with_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Examine at most `max_hops` forwarded entries (clamped to [`MAX_HOPS_LIMIT`]).
    #[must_use]
    pub fn with_max_hops(mut self, max_hops: NonZeroU8) -> Self {
        self.max_hops = Some(max_hops.min(limit_hops()));
        self
    }

    /// The trusted networks.
    pub fn networks(&self) -> &[IpCidr] {
        &self.nets
    }

    /// The header that is read.
    pub fn header(&self) -> ForwardedHeader {
        self.header
    }

    /// The most forwarded entries examined.
    pub fn max_hops(&self) -> u8 {
        self.max_hops.map_or(DEFAULT_MAX_HOPS, NonZeroU8::get)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }

    /// Resolves the client address of a request that arrived from `peer` with `headers`.
    ///
    /// Never fails: malformed or abusive headers are handled by the rules in the
    /// [type docs](TrustedProxies), and the result falls back to the nearest trusted address.
    pub fn resolve(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientAddr {
        let mut client = ClientAddr::from_peer(peer);
        if self.nets.is_empty() || !self.is_trusted(client.ip) {
            return client;
        }
        let budget = usize::from(self.max_hops());
        let source = match self.header {
            ForwardedHeader::XForwardedFor => AddrSource::XForwardedFor,
            ForwardedHeader::Forwarded => AddrSource::Forwarded,
        };
        let mut step = |entry: Option<IpAddr>| -> bool {
            // Returns whether to keep walking.
            let Some(ip) = entry else { return false };
            client.ip = canonical(ip);
            client.source = source;
            client.proxy_hops = client.proxy_hops.saturating_add(1);
            usize::from(client.proxy_hops) < budget && self.is_trusted(client.ip)
        };
        match self.header {
            ForwardedHeader::XForwardedFor => walk_x_forwarded_for(headers, &mut step),
            ForwardedHeader::Forwarded => walk_forwarded(headers, budget, &mut step),
        }
        client
    }
}

fn limit_hops() -> NonZeroU8 {
    NonZeroU8::new(MAX_HOPS_LIMIT).unwrap_or(NonZeroU8::MIN)
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedProxies")
            .field("nets", &self.nets)
            .field("header", &self.header)
            .field("max_hops", &self.max_hops())
            .finish()
    }
}

/// Feeds `X-Forwarded-For` entries to `step`, right-most first, until it says stop. `None`
/// stands for a malformed entry.
fn walk_x_forwarded_for(headers: &HeaderMap, step: &mut impl FnMut(Option<IpAddr>) -> bool) {
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        // Split the raw bytes rather than validating the whole value first, so the work done
        // is proportional to the entries examined, not to the header's length.
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let node = std::str::from_utf8(entry)
                .ok()
                .and_then(|e| parse_node(e.trim_matches([' ', '\t'])));
            if !step(node) {
                return;
            }
        }
    }
}

/// Feeds the `for=` nodes of `Forwarded` elements to `step`, right-most first. An element
/// with no `for=` or an unparseable one counts as malformed.
fn walk_forwarded(
    headers: &HeaderMap,
    budget: usize,
    step: &mut impl FnMut(Option<IpAddr>) -> bool,
) {
    for value in headers.get_all(FORWARDED).iter().rev() {
        let Ok(value) = value.to_str() else {
            step(None);
            return;
        };
        for entry in forwarded_nodes(value, budget).into_iter().rev() {
            if !step(entry) {
                return;
            }
        }
    }
}

/// The `for=` node of each element of one `Forwarded` value, keeping only the last `keep`
/// elements (the only ones a walk of `keep` hops can reach), so memory stays bounded however
/// many elements the value has.
fn forwarded_nodes(value: &str, keep: usize) -> VecDeque<Option<IpAddr>> {
    let mut out = VecDeque::with_capacity(keep.min(8));
    let mut push = |node: Option<IpAddr>| {
        out.push_back(node);
        if out.len() > keep {
            out.pop_front();
        }
    };
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in value.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == b',' {
            push(value.get(start..i).and_then(forwarded_element_for));
            start = i + 1;
        }
    }
    if quoted || escaped {
        // An unterminated quoted-string swallows the rest of the value.
        push(None);
    } else {
        push(value.get(start..).and_then(forwarded_element_for));
    }
    out
}

/// The address in the single `for=` parameter of one `Forwarded` element
/// (`for=192.0.2.60;proto=http;by=203.0.113.43`).
fn forwarded_element_for(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in split_unquoted(element, b';') {
        let pair = pair.trim_matches([' ', '\t']);
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=')?;
        if name.trim_matches([' ', '\t']).eq_ignore_ascii_case("for") {
            if found.is_some() {
                // Two `for` parameters in one element: which proxy wrote which is unknowable.
                return None;
            }
            found = Some(value.trim_matches([' ', '\t']));
        }
    }
    let value = found?;
    if value.len() > MAX_ENTRY_LEN + 2 {
        return None;
    }
    match value.strip_prefix('"') {
        Some(rest) => parse_node(&unquote(rest.strip_suffix('"')?)?),
        None => parse_node(value),
    }
}

/// Splits `s` at `sep` bytes outside quoted-strings.
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    s.split(move |c: char| {
        let b = u8::try_from(c).unwrap_or(0);
        if escaped {
            escaped = false;
            return false;
        }
        if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            return false;
        }
        if b == b'"' {
            quoted = true;
            return false;
        }
        b == sep
    })
}

/// Removes quoted-pair escapes (`\x` → `x`) from the inside of a quoted-string.
fn unquote(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Parses one forwarded node: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`, `[2001:db8::1]`
/// or `[2001:db8::1]:8080`. Anything else (`unknown`, obfuscated `_hidden` identifiers, zone
/// ids, empty strings, garbage) is `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if node.is_empty() || node.len() > MAX_ENTRY_LEN {
        return None;
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !after.is_empty() {
            valid_port(after.strip_prefix(':')?)?;
        }
        return addr.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    let (addr, port) = node.split_once(':')?;
    valid_port(port)?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn valid_port(port: &str) -> Option<()> {
    let ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok();
    ok.then_some(())
}

/// Serde configuration for [`TrustedProxies`], as written in policies and config files.
///
/// ```yaml
/// trustedProxies: ["10.0.0.0/8", "fd00::/8"]
/// header: x-forwarded-for   # or: forwarded
/// maxHops: 10
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientAddrConfig {
    /// Networks whose forwarding headers are believed. Empty: headers are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The forwarding header the trusted proxies write.
    #[serde(default)]
    pub header: ForwardedHeader,
    /// The most forwarded entries to examine (1 to 64).
    #[serde(default = "default_max_hops")]
    pub max_hops: u8,
}

fn default_max_hops() -> u8 {
    DEFAULT_MAX_HOPS
}

impl Default for ClientAddrConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            header: ForwardedHeader::default(),
            max_hops: DEFAULT_MAX_HOPS,
        }
    }
}

impl TryFrom<ClientAddrConfig> for TrustedProxies {
    type Error = ConfigError;

    fn try_from(config: ClientAddrConfig) -> Result<Self, Self::Error> {
        let mut nets = Vec::with_capacity(config.trusted_proxies.len());
        for (i, text) in config.trusted_proxies.iter().enumerate() {
            let net = text.parse::<IpCidr>().map_err(|err| {
                ConfigError::new(
                    format!("trustedProxies[{i}]"),
                    format!("`{text}` is not a network: {}", err.rule()),
                    "write an address (`10.0.0.7`) or a network in CIDR form (`10.0.0.0/8`, `fd00::/8`)",
                )
            })?;
            nets.push(net);
        }
        let max_hops = NonZeroU8::new(config.max_hops)
            .filter(|hops| hops.get() <= MAX_HOPS_LIMIT)
            .ok_or_else(|| {
                ConfigError::new(
                    "maxHops",
                    format!("{} is out of range", config.max_hops),
                    format!("use a number from 1 to {MAX_HOPS_LIMIT} (the default is {DEFAULT_MAX_HOPS})"),
                )
            })?;
        Ok(Self::new(nets)
            .with_header(config.header)
            .with_max_hops(max_hops))
    }
}

#[cfg(test)]
mod tests;
