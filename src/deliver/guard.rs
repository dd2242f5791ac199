//! The SSRF guard: the addresses a delivery may connect to.
//!
//! A webhook URL is written by whoever can write the rules directory or
//! call the admin API, and its host is resolved by whoever runs its DNS.
//! Neither should be able to make taphook POST into the network it runs
//! in (a cloud metadata endpoint, an admin port on loopback, a service
//! on the private network). So an address in a special-purpose range
//! (loopback, private, link-local, CGNAT, multicast, documentation...,
//! or an IPv6 form that carries one of those IPv4 addresses) is refused
//! unless `delivery.allow_private_networks` covers it.
//!
//! The check is made on the address connected to: [`GuardedResolver`] is
//! the delivery client's DNS resolver and hands the connector only the
//! addresses that pass, so there is no second lookup for a rebinding DNS
//! server to answer differently. Hosts written as IP addresses never reach
//! a resolver (hyper's connector parses them itself), so
//! [`Guard::check_url`] checks them before the request is sent.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A special-purpose address range that deliveries are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8`: "this network".
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// `fc00::/7` (RFC 4193).
    UniqueLocal,
    /// `fec0::/10`, deprecated but still routed by some stacks.
    SiteLocal,
    /// `100.64.0.0/10`: carrier-grade NAT (RFC 6598).
    SharedCgnat,
    /// `169.254.0.0/16` (cloud metadata at 169.254.169.254), `fe80::/10`.
    LinkLocal,
    /// `192.0.0.0/24`: IETF protocol assignments (RFC 6890).
    ProtocolAssignments,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `240.0.0.0/4`, `100::/64` (discard-only).
    Reserved,
    /// `64:ff9b:1::/48`: NAT64 prefixes of a local network (RFC 8215).
    LocalNat64,
}

impl Range {
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::ThisNetwork => "this-network",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::UniqueLocal => "unique-local",
            Self::SiteLocal => "site-local",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::LinkLocal => "link-local",
            Self::ProtocolAssignments => "IETF protocol assignment",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Reserved => "reserved",
            Self::LocalNat64 => "local-use NAT64",
        }
    }
}

/// How an IPv6 address carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`: the socket connects to a.b.c.d.
    Mapped,
    /// `::ffff:0:a.b.c.d` (RFC 2765, SIIT).
    Translated,
    /// `::a.b.c.d`, deprecated.
    Compatible,
    /// `2002:AABB:CCDD::/48`: 6to4, relayed to a.b.c.d.
    SixToFour,
    /// `64:ff9b::a.b.c.d`: NAT64's well-known prefix, translated to a.b.c.d.
    Nat64,
    /// `2001:0::/32`: Teredo, whose client address is the last 32 bits inverted.
    Teredo,
}

impl Embedding {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mapped => "IPv4-mapped",
            Self::Translated => "IPv4-translated",
            Self::Compatible => "IPv4-compatible",
            Self::SixToFour => "6to4",
            Self::Nat64 => "NAT64",
            Self::Teredo => "Teredo",
        }
    }
}

/// Why an address is refused: its range, and how it carries an IPv4
/// address when that address is what is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub range: Range,
    pub via: Option<Embedding>,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            None => write!(f, "{}", self.range.name()),
            Some(via) => write!(f, "{} {}", via.name(), self.range.name()),
        }
    }
}

/// IPv4 ranges refused, the most specific first (the first match wins).
const V4_REFUSED: &[(Ipv4Addr, u8, Range)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 32, Range::Unspecified),
    (Ipv4Addr::new(0, 0, 0, 0), 8, Range::ThisNetwork),
    (Ipv4Addr::new(10, 0, 0, 0), 8, Range::Private),
    (Ipv4Addr::new(100, 64, 0, 0), 10, Range::SharedCgnat),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Range::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, Range::LinkLocal),
    (Ipv4Addr::new(172, 16, 0, 0), 12, Range::Private),
    (Ipv4Addr::new(192, 0, 0, 0), 24, Range::ProtocolAssignments),
    (Ipv4Addr::new(192, 0, 2, 0), 24, Range::Documentation),
    (Ipv4Addr::new(192, 168, 0, 0), 16, Range::Private),
    (Ipv4Addr::new(198, 18, 0, 0), 15, Range::Benchmarking),
    (Ipv4Addr::new(198, 51, 100, 0), 24, Range::Documentation),
    (Ipv4Addr::new(203, 0, 113, 0), 24, Range::Documentation),
    (Ipv4Addr::new(224, 0, 0, 0), 4, Range::Multicast),
    (Ipv4Addr::new(255, 255, 255, 255), 32, Range::Broadcast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, Range::Reserved),
];

/// IPv6 ranges refused in themselves (the forms that carry an IPv4
/// address are [`embedded_v4`]'s), the most specific first.
const V6_REFUSED: &[(Ipv6Addr, u8, Range)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, Range::Unspecified),
    (Ipv6Addr::LOCALHOST, 128, Range::Loopback),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        Range::Reserved,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        Range::LocalNat64,
    ),
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        Range::Benchmarking,
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        Range::Documentation,
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        Range::Documentation,
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        Range::UniqueLocal,
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        Range::LinkLocal,
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        Range::SiteLocal,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        Range::Multicast,
    ),
];

/// Is `addr` in `network/prefix`? (Both the same family, as u128 bits.)
fn in_prefix(addr: u128, network: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    addr.checked_shr(shift).unwrap_or(0) == network.checked_shr(shift).unwrap_or(0)
}

fn in_v4(addr: Ipv4Addr, network: Ipv4Addr, prefix: u8) -> bool {
    in_prefix(addr.to_bits().into(), network.to_bits().into(), prefix, 32)
}

fn in_v6(addr: Ipv6Addr, network: Ipv6Addr, prefix: u8) -> bool {
    in_prefix(addr.to_bits(), network.to_bits(), prefix, 128)
}

/// The special-purpose range an IPv4 address is in, if any.
pub fn classify_v4(addr: Ipv4Addr) -> Option<Range> {
    V4_REFUSED
        .iter()
        .find(|(network, prefix, _)| in_v4(addr, *network, *prefix))
        .map(|(_, _, range)| *range)
}

/// The IPv4 address an IPv6 address carries, and how, if it is one of
/// the forms that reach (or may be routed to) that IPv4 address.
pub fn embedded_v4(addr: Ipv6Addr) -> Option<(Embedding, Ipv4Addr)> {
    let bits = addr.to_bits();
    let low = Ipv4Addr::from_bits(bits as u32);
    let prefix = |network: Ipv6Addr, len: u8| in_v6(addr, network, len);
    if prefix(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
        Some((Embedding::Mapped, low))
    } else if prefix(Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96) {
        Some((Embedding::Translated, low))
    } else if prefix(Ipv6Addr::UNSPECIFIED, 96) {
        Some((Embedding::Compatible, low))
    } else if prefix(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        Some((Embedding::Nat64, low))
    } else if prefix(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        Some((
            Embedding::SixToFour,
            Ipv4Addr::from_bits((bits >> 80) as u32),
        ))
    } else if prefix(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32) {
        Some((Embedding::Teredo, Ipv4Addr::from_bits(!(bits as u32))))
    } else {
        None
    }
}

/// Why an IPv6 address is refused, if it is: its own range, else the
/// range of the IPv4 address it carries.
pub fn classify_v6(addr: Ipv6Addr) -> Option<Class> {
    if let Some((_, _, range)) = V6_REFUSED
        .iter()
        .find(|(network, prefix, _)| in_v6(addr, *network, *prefix))
    {
        return Some(Class {
            range: *range,
            via: None,
        });
    }
    let (via, v4) = embedded_v4(addr)?;
    classify_v4(v4).map(|range| Class {
        range,
        via: Some(via),
    })
}

/// Why an address is refused, if it is (before the allow-list).
pub fn classify(addr: IpAddr) -> Option<Class> {
    match addr {
        IpAddr::V4(a) => classify_v4(a).map(|range| Class { range, via: None }),
        IpAddr::V6(a) => classify_v6(a),
    }
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`) of `delivery.allow_private_networks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses CIDR notation or one address (see [`crate::config::parse_cidr`]).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (network, prefix) = crate::config::parse_cidr(text)?;
        Ok(Self { network, prefix })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => in_v4(a, n, self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => in_v6(a, n, self.prefix),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why a delivery was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("scheme `{0}` is not allowed (http or https only)")]
    Scheme(String),
    #[error("{addr} is a refused address ({class}; not in delivery.allow_private_networks)")]
    Address { addr: IpAddr, class: Class },
    #[error("{host} resolved only to refused addresses: {} (none in delivery.allow_private_networks)", list(.refused))]
    Resolved {
        host: String,
        refused: Vec<(IpAddr, Class)>,
    },
}

fn list(refused: &[(IpAddr, Class)]) -> String {
    let shown: Vec<String> = refused
        .iter()
        .map(|(addr, class)| format!("{addr} ({class})"))
        .collect();
    shown.join(", ")
}

impl Refused {
    /// The `reason` label of `taphook_delivery_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Scheme(_) => "scheme",
            Self::Address { .. } | Self::Resolved { .. } => "private_address",
        }
    }

    /// Every `reason` label, for exporting the series from the start.
    pub const REASONS: [&'static str; 2] = ["private_address", "scheme"];
}

/// The policy: the refused ranges, less the allow-list.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<Cidr>,
}

impl Guard {
    pub fn new(allow: Vec<Cidr>) -> Self {
        Self { allow }
    }

    /// Does the allow-list cover `addr`, or the IPv4 address it carries?
    fn allows(&self, addr: IpAddr) -> bool {
        let covered = |a: IpAddr| self.allow.iter().any(|c| c.contains(a));
        covered(addr)
            || matches!(addr, IpAddr::V6(v6)
                if embedded_v4(v6).is_some_and(|(_, v4)| covered(IpAddr::V4(v4))))
    }

    /// Why `addr` may not be connected to, or `None` when it may.
    pub fn check(&self, addr: IpAddr) -> Option<Class> {
        classify(addr).filter(|_| !self.allows(addr))
    }

    /// The scheme, and the host when it is an IP address (which no
    /// resolver sees). A host name is checked when it is resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        if super::destination::Kind::from_scheme(url.scheme()).is_none() {
            return Err(Refused::Scheme(url.scheme().to_string()));
        }
        // The URL parser writes every IPv4 spelling (`2130706433`,
        // `0x7f.1`) as a dotted quad and IPv6 in brackets, as the
        // connector parses them.
        let host = url.host_str().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let Ok(addr) = host.parse::<IpAddr>() else {
            return Ok(());
        };
        match self.check(addr) {
            Some(class) => Err(Refused::Address { addr, class }),
            None => Ok(()),
        }
    }

    /// The addresses `host` resolved to that may be connected to; an
    /// error when there were some and none may.
    pub fn vet(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let mut allowed = Vec::new();
        let mut refused: Vec<(IpAddr, Class)> = Vec::new();
        for a in addrs {
            match self.check(a.ip()) {
                None => allowed.push(a),
                Some(class) if !refused.iter().any(|(r, _)| *r == a.ip()) => {
                    refused.push((a.ip(), class))
                }
                Some(_) => {}
            }
        }
        if allowed.is_empty() && !refused.is_empty() {
            return Err(Refused::Resolved {
                host: host.to_string(),
                refused,
            });
        }
        Ok(allowed)
    }
}

/// The delivery client's DNS resolver: the system's (`getaddrinfo`, as
/// reqwest's default), less the addresses the guard refuses.
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl GuardedResolver {
    pub fn new(guard: Arc<Guard>) -> Self {
        Self { guard }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: the connector puts the URL's port in.
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let vetted = guard.vet(&host, addrs)?;
            Ok(Box::new(vetted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The guard's refusal among an error's causes, if it is one.
pub fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(r);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn guard(allow: &[&str]) -> Guard {
        Guard::new(allow.iter().map(|c| Cidr::parse(c).unwrap()).collect())
    }

    /// Every category, in every family and form, with the class it gets.
    const REFUSED: &[(&str, Range, Option<Embedding>)] = &[
        // IPv4
        ("0.0.0.0", Range::Unspecified, None),
        ("0.1.2.3", Range::ThisNetwork, None),
        ("0.255.255.255", Range::ThisNetwork, None),
        ("127.0.0.1", Range::Loopback, None),
        ("127.255.255.254", Range::Loopback, None),
        ("10.0.0.1", Range::Private, None),
        ("10.255.255.255", Range::Private, None),
        ("172.16.0.1", Range::Private, None),
        ("172.31.255.255", Range::Private, None),
        ("192.168.0.1", Range::Private, None),
        ("192.168.255.255", Range::Private, None),
        ("100.64.0.1", Range::SharedCgnat, None),
        ("100.127.255.255", Range::SharedCgnat, None),
        ("169.254.169.254", Range::LinkLocal, None),
        ("169.254.0.1", Range::LinkLocal, None),
        ("192.0.0.8", Range::ProtocolAssignments, None),
        ("192.0.2.1", Range::Documentation, None),
        ("198.51.100.7", Range::Documentation, None),
        ("203.0.113.255", Range::Documentation, None),
        ("198.18.0.1", Range::Benchmarking, None),
        ("198.19.255.255", Range::Benchmarking, None),
        ("224.0.0.1", Range::Multicast, None),
        ("239.255.255.250", Range::Multicast, None),
        ("240.0.0.1", Range::Reserved, None),
        ("254.1.2.3", Range::Reserved, None),
        ("255.255.255.254", Range::Reserved, None),
        ("255.255.255.255", Range::Broadcast, None),
        // IPv6
        ("::", Range::Unspecified, None),
        ("::1", Range::Loopback, None),
        ("fc00::1", Range::UniqueLocal, None),
        ("fd12:3456:789a::1", Range::UniqueLocal, None),
        ("fe80::1", Range::LinkLocal, None),
        ("febf:ffff::1", Range::LinkLocal, None),
        ("fec0::1", Range::SiteLocal, None),
        ("ff02::1", Range::Multicast, None),
        ("ff0e::101", Range::Multicast, None),
        ("2001:db8::1", Range::Documentation, None),
        ("2001:db8:ffff::1", Range::Documentation, None),
        ("3fff::1", Range::Documentation, None),
        ("2001:2::1", Range::Benchmarking, None),
        ("100::1", Range::Reserved, None),
        ("64:ff9b:1::a00:1", Range::LocalNat64, None),
        // IPv6 forms of refused IPv4 addresses
        ("::ffff:127.0.0.1", Range::Loopback, Some(Embedding::Mapped)),
        ("::ffff:10.0.0.1", Range::Private, Some(Embedding::Mapped)),
        (
            "::ffff:169.254.169.254",
            Range::LinkLocal,
            Some(Embedding::Mapped),
        ),
        (
            "::ffff:0.0.0.0",
            Range::Unspecified,
            Some(Embedding::Mapped),
        ),
        (
            "::ffff:255.255.255.255",
            Range::Broadcast,
            Some(Embedding::Mapped),
        ),
        (
            "::ffff:0:192.168.1.1",
            Range::Private,
            Some(Embedding::Translated),
        ),
        ("::127.0.0.1", Range::Loopback, Some(Embedding::Compatible)),
        ("::10.1.2.3", Range::Private, Some(Embedding::Compatible)),
        ("::0.0.0.2", Range::ThisNetwork, Some(Embedding::Compatible)),
        ("2002:7f00:1::", Range::Loopback, Some(Embedding::SixToFour)),
        (
            "2002:a9fe:a9fe::1",
            Range::LinkLocal,
            Some(Embedding::SixToFour),
        ),
        (
            "2002:c0a8:101:1::1",
            Range::Private,
            Some(Embedding::SixToFour),
        ),
        (
            "64:ff9b::127.0.0.1",
            Range::Loopback,
            Some(Embedding::Nat64),
        ),
        (
            "64:ff9b::100.64.0.1",
            Range::SharedCgnat,
            Some(Embedding::Nat64),
        ),
        (
            "64:ff9b::192.0.2.33",
            Range::Documentation,
            Some(Embedding::Nat64),
        ),
        // Teredo client 127.0.0.1, inverted: 80ff:fffe.
        (
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            Range::Loopback,
            Some(Embedding::Teredo),
        ),
    ];

    const PUBLIC: &[&str] = &[
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.255",
        "192.0.3.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "198.51.101.0",
        "203.0.114.0",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
        "2001:db9::1",
        "2001:4860:4860::8888",
        "fbff:ffff::1",
        "fe00::1",
        "::ffff:8.8.8.8",
        "::ffff:0:1.1.1.1",
        "::8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::8.8.4.4",
        "64:ff9b:2::1",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
    ];

    #[test]
    fn every_category_is_refused() {
        for (text, range, via) in REFUSED {
            assert_eq!(
                classify(ip(text)),
                Some(Class {
                    range: *range,
                    via: *via
                }),
                "{text}"
            );
            assert!(Guard::default().check(ip(text)).is_some(), "{text}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for text in PUBLIC {
            assert_eq!(classify(ip(text)), None, "{text}");
            assert_eq!(Guard::default().check(ip(text)), None, "{text}");
        }
    }

    #[test]
    fn embedded_addresses_are_found() {
        let cases = [
            ("::ffff:1.2.3.4", Embedding::Mapped, "1.2.3.4"),
            ("::ffff:0:1.2.3.4", Embedding::Translated, "1.2.3.4"),
            ("::1.2.3.4", Embedding::Compatible, "1.2.3.4"),
            ("2002:102:304::", Embedding::SixToFour, "1.2.3.4"),
            ("2002:102:304:ffff:ffff::1", Embedding::SixToFour, "1.2.3.4"),
            ("64:ff9b::1.2.3.4", Embedding::Nat64, "1.2.3.4"),
            ("2001:0:1:2:3:4:fefd:fcfb", Embedding::Teredo, "1.2.3.4"),
        ];
        for (v6, via, v4) in cases {
            let v6: Ipv6Addr = v6.parse().unwrap();
            assert_eq!(embedded_v4(v6), Some((via, v4.parse().unwrap())), "{v6}");
        }
        for plain in ["2606:4700::1", "fe80::1", "64:ff9b:1::1"] {
            assert_eq!(embedded_v4(plain.parse().unwrap()), None, "{plain}");
        }
    }

    #[test]
    fn the_allow_list_lets_covered_addresses_through() {
        // (allow-list, address, passes)
        let cases: &[(&[&str], &str, bool)] = &[
            (&["127.0.0.0/8"], "127.0.0.1", true),
            (&["127.0.0.0/8"], "127.3.2.1", true),
            (&["127.0.0.0/8"], "::ffff:127.0.0.1", true),
            (&["127.0.0.0/8"], "2002:7f00:1::", true),
            (&["127.0.0.0/8"], "::1", false),
            (&["127.0.0.0/8"], "10.0.0.1", false),
            (&["127.0.0.0/8", "::1/128"], "::1", true),
            (&["::1"], "::1", true),
            (&["10.1.0.0/16"], "10.1.2.3", true),
            (&["10.1.0.0/16"], "10.2.0.1", false),
            (&["10.1.0.0/16"], "64:ff9b::10.1.0.9", true),
            (&["192.168.1.7"], "192.168.1.7", true),
            (&["192.168.1.7"], "192.168.1.8", false),
            (&["169.254.169.254/32"], "169.254.169.254", true),
            (&["fd00::/8"], "fd12::1", true),
            (&["fd00::/8"], "fc00::1", false),
            (&["fd00::/8"], "10.0.0.1", false),
            (&["fe80::/10"], "fe80::1:2", true),
            (&["0.0.0.0/0"], "10.0.0.1", true),
            (&["0.0.0.0/0"], "fc00::1", false),
            (&["::/0"], "fc00::1", true),
            (&["::/0"], "::ffff:10.0.0.1", true),
            (&["::/0"], "10.0.0.1", false),
            (&[], "127.0.0.1", false),
        ];
        for (allow, addr, passes) in cases {
            assert_eq!(
                guard(allow).check(ip(addr)).is_none(),
                *passes,
                "{addr} with {allow:?}"
            );
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_and_literal_addresses() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let g = Guard::default();
        assert_eq!(g.check_url(&url("https://hooks.example.com/x")), Ok(()));
        assert_eq!(
            g.check_url(&url("http://localhost:1/x")),
            Ok(()),
            "a name is checked when resolved"
        );
        assert_eq!(g.check_url(&url("http://8.8.8.8/")), Ok(()));
        assert_eq!(
            g.check_url(&url("ftp://8.8.8.8/")),
            Err(Refused::Scheme("ftp".into()))
        );
        for refused in [
            "http://127.0.0.1:8080/",
            "http://user:pw@10.0.0.1/x?token=t",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]:9000/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            // Other spellings of 127.0.0.1 that the URL parser normalises.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://127.0.0.1./",
        ] {
            let err = g.check_url(&url(refused)).unwrap_err();
            assert_eq!(err.reason(), "private_address", "{refused}");
        }
        assert_eq!(
            g.check_url(&url("http://[::ffff:127.0.0.1]:9000/")).unwrap_err().to_string(),
            "::ffff:127.0.0.1 is a refused address (IPv4-mapped loopback; not in delivery.allow_private_networks)"
        );
        assert_eq!(
            guard(&["127.0.0.0/8"]).check_url(&url("http://127.0.0.1:1/")),
            Ok(())
        );
    }

    #[test]
    fn vetting_keeps_the_allowed_addresses() {
        let sa = |t: &str| SocketAddr::new(ip(t), 0);
        let g = Guard::default();
        assert_eq!(
            g.vet("mixed", vec![sa("10.0.0.1"), sa("8.8.8.8"), sa("::1")]),
            Ok(vec![sa("8.8.8.8")])
        );
        let err = g
            .vet("inside", vec![sa("127.0.0.1"), sa("::1"), sa("127.0.0.1")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "inside resolved only to refused addresses: 127.0.0.1 (loopback), ::1 (loopback) (none in delivery.allow_private_networks)"
        );
        assert_eq!(err.reason(), "private_address");
        assert_eq!(g.vet("nothing", vec![]), Ok(vec![]));
        assert_eq!(
            guard(&["127.0.0.0/8"]).vet("inside", vec![sa("127.0.0.1"), sa("::1")]),
            Ok(vec![sa("127.0.0.1")])
        );
    }

    /// The resolver's refusal comes back through reqwest as a cause of
    /// its error, where the dispatcher finds it.
    #[tokio::test]
    async fn the_client_refuses_a_name_resolving_to_loopback() {
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::new(Guard::default()))))
            .build()
            .unwrap();
        let err = client.get("http://localhost:9/").send().await.unwrap_err();
        let refused = refusal(&err).expect("a refusal among the causes");
        assert!(
            matches!(refused, Refused::Resolved { host, .. } if host == "localhost"),
            "{refused}"
        );
    }

    fn refused_v4() -> impl Strategy<Value = Ipv4Addr> {
        (0..V4_REFUSED.len(), any::<u32>()).prop_map(|(i, host)| {
            let (network, prefix, _) = V4_REFUSED[i];
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Ipv4Addr::from_bits(network.to_bits() | (host & !mask))
        })
    }

    proptest! {
        #[test]
        fn a_refused_ipv4_address_is_refused_in_its_ipv6_forms(v4 in refused_v4()) {
            let range = classify_v4(v4);
            prop_assert!(range.is_some());
            let bits = u128::from(v4.to_bits());
            let forms = [
                (v4.to_ipv6_mapped(), Embedding::Mapped),
                (Ipv6Addr::from_bits(0xffff_0000_0000_0000 | bits), Embedding::Translated),
                (Ipv6Addr::from_bits((0x2002_u128 << 112) | (bits << 80)), Embedding::SixToFour),
                (Ipv6Addr::from_bits((0x64_ff9b_u128 << 96) | bits), Embedding::Nat64),
            ];
            for (v6, via) in forms {
                prop_assert_eq!(classify_v6(v6), Some(Class { range: range.unwrap(), via: Some(via) }), "{}", v6);
                prop_assert!(Guard::default().check(IpAddr::V6(v6)).is_some());
            }
        }

        #[test]
        fn an_ipv4_address_and_its_mapped_form_agree(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from_bits(bits);
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            prop_assert_eq!(classify_v4(v4), classify(mapped).map(|c| c.range));
        }
    }
}
