//! IP networks in CIDR notation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::ValueError;

/// An IPv4 or IPv6 network: an address and a prefix length, with no host bits set.
///
/// Parsed from `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128). A network
/// with host bits set (`10.0.0.1/8`) is rejected rather than silently truncated: it is almost
/// always a typo in a trust list, and a trust list is the wrong place to guess.
///
/// Membership tests treat an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) as the IPv4 address
/// it carries, so a dual-stack listener cannot be used to step around an IPv4 rule.
///
/// # Examples
///
/// ```
/// use portcullis_core::IpCidr;
///
/// let net: IpCidr = "10.0.0.0/8".parse()?;
/// assert!(net.contains("10.20.30.40".parse()?));
/// assert!(net.contains("::ffff:10.20.30.40".parse()?));
/// assert!(!net.contains("11.0.0.1".parse()?));
/// assert!("10.0.0.1/8".parse::<IpCidr>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

impl IpCidr {
    /// The network `addr/prefix`.
    ///
    /// # Errors
    ///
    /// If `prefix` is longer than the address (32 for IPv4, 128 for IPv6), or `addr` has bits
    /// set beyond the prefix.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, ValueError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(ValueError::new(
                "CIDR",
                format!("the prefix length is over {max}"),
            ));
        }
        let net = Self { addr, prefix };
        if net.network_of(addr) != addr {
            return Err(ValueError::new(
                "CIDR",
                "the address has host bits set beyond the prefix",
            ));
        }
        Ok(net)
    }

    /// The network of the given prefix length that contains `addr`, with the host bits cleared:
    /// `IpCidr::containing("2001:db8::1".parse()?, 64)` is `2001:db8::/64`. Useful for grouping
    /// clients by subnet. A prefix longer than the address is clamped to the address length.
    pub fn containing(addr: IpAddr, prefix: u8) -> Self {
        let addr = canonical(addr);
        let prefix = prefix.min(max_prefix(addr));
        let probe = Self { addr, prefix };
        Self {
            addr: probe.network_of(addr),
            prefix,
        }
    }

    /// A network holding exactly one address.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                self.network_of(ip) == self.addr
            }
            _ => false,
        }
    }

    fn network_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries; anything else unchanged.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl FromStr for IpCidr {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s.split_once('/') {
            None => s
                .parse::<IpAddr>()
                .map(Self::host)
                .map_err(|_| ValueError::new("CIDR", "expected an IP address or ADDRESS/PREFIX")),
            Some((addr, prefix)) => {
                let addr = addr.parse::<IpAddr>().map_err(|_| {
                    ValueError::new("CIDR", "the part before `/` is not an IP address")
                })?;
                // `u8::from_str` accepts a leading `+`; a prefix is plain digits.
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ValueError::new(
                        "CIDR",
                        "the prefix length after `/` is not a number",
                    ));
                }
                let prefix = prefix.parse::<u8>().map_err(|_| {
                    ValueError::new("CIDR", "the prefix length after `/` is too large")
                })?;
                Self::new(addr, prefix)
            }
        }
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

serde_via_str!(IpCidr);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_hosts() {
        let net: IpCidr = "192.168.0.0/16".parse().unwrap();
        assert_eq!(net.addr(), ip("192.168.0.0"));
        assert_eq!(net.prefix(), 16);
        assert_eq!(net.to_string(), "192.168.0.0/16");

        let host: IpCidr = "10.1.2.3".parse().unwrap();
        assert_eq!(host.prefix(), 32);
        let host6: IpCidr = "2001:db8::1".parse().unwrap();
        assert_eq!(host6.prefix(), 128);
        let all: IpCidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")));
        let all6: IpCidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
        assert_eq!(" 10.0.0.0/8 ".parse::<IpCidr>().unwrap().prefix(), 8);
    }

    #[test]
    fn rejects_malformed_networks() {
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/999",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "2001:db8::/129",
            "not-an-ip",
            "10.0.0.1/8",
            "2001:db8::1/64",
        ] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad:?} should not parse");
        }
        assert!(IpCidr::new(ip("10.0.0.0"), 40).is_err());
    }

    #[test]
    fn membership_follows_prefix_boundaries() {
        let net: IpCidr = "10.0.0.0/30".parse().unwrap();
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.0.0.3")));
        assert!(!net.contains(ip("10.0.0.4")));
        let v6: IpCidr = "2001:db8:abcd::/48".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:abcd:ffff::1")));
        assert!(!v6.contains(ip("2001:db8:abce::1")));
        // Families never mix.
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(!net.contains(ip("::a00:1")));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let net: IpCidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("::ffff:10.9.8.7")));
        assert!(!net.contains(ip("::ffff:11.9.8.7")));
    }

    #[test]
    fn containing_groups_addresses_by_prefix() {
        let a = IpCidr::containing(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = IpCidr::containing(ip("2001:db8:1:2:bbbb::9"), 64);
        let c = IpCidr::containing(ip("2001:db8:1:3::1"), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        // Prefix clamped to the address family; mapped IPv4 becomes IPv4.
        let v4 = IpCidr::containing(ip("::ffff:192.0.2.7"), 64);
        assert_eq!(v4.to_string(), "192.0.2.7/32");
        assert_eq!(
            IpCidr::containing(ip("192.0.2.7"), 24).to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            IpCidr::containing(ip("192.0.2.7"), 0).to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn serde_round_trip() {
        let net: IpCidr = serde_json::from_str("\"172.16.0.0/12\"").unwrap();
        assert_eq!(serde_json::to_string(&net).unwrap(), "\"172.16.0.0/12\"");
        let err = serde_json::from_str::<IpCidr>("\"172.16.0.1/12\"").unwrap_err();
        assert!(err.to_string().contains("host bits"), "{err}");
    }
}
