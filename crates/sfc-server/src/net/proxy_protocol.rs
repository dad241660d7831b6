//! The PROXY protocol (HAProxy's, versions 1 and 2) on the protocol listener
//! (`--proxy-protocol --proxy-from …`): behind a TCP balancer every connection comes from
//! the balancer's address, and the header the balancer writes first names the real
//! client, whose address then counts for the per-address limits, rate limits, pins and
//! log lines.
//!
//! Only the listed sources ([`ProxySources`]) may connect while it is on, and each of
//! their connections must start with a valid header, read within the request time-out;
//! anything else is refused and closed. A LOCAL header (the balancer's own health check)
//! or one without an internet address keeps the balancer's address.
//!
//! The parser ([`next_step`]) is sans-IO and says how many more bytes to read, never more
//! than the header has left: the stream after the header (the first request, or a TLS
//! ClientHello) is handed on untouched, without a buffer of read-ahead to carry along.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The version 1 prefix.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Bytes that tell the two versions apart (and are part of every header of either).
const PROBE: usize = 8;
/// A version 2 header's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The largest version 1 header (the specification's limit, CRLF included).
pub const V1_MAX: usize = 107;
/// The largest version 2 address block and extensions accepted. The addresses take at
/// most 216 bytes (UNIX sockets); the rest leaves room for a balancer's TLVs (SSL
/// details, a unique ID). A longer header is refused.
pub const V2_MAX_PAYLOAD: usize = 1024;

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A connection relayed for this client (the destination is the address it reached
    /// on the balancer).
    Proxied {
        /// The client's address.
        source: SocketAddr,
        /// The address on the balancer the client connected to.
        destination: SocketAddr,
    },
    /// The balancer's own connection (v2 LOCAL: a health check).
    Local,
    /// A relayed connection without an internet address (v1 UNKNOWN; v2 UNSPEC or UNIX).
    Unknown,
}

impl ProxyHeader {
    /// The address the connection counts as: the client's, or the balancer's own.
    pub fn client_address(&self, balancer: SocketAddr) -> SocketAddr {
        match self {
            // An IPv4 client relayed by a dual-stack balancer counts as that IPv4 address.
            ProxyHeader::Proxied { source, .. } => {
                SocketAddr::new(canonical(source.ip()), source.port())
            }
            ProxyHeader::Local | ProxyHeader::Unknown => balancer,
        }
    }
}

/// What the parser wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read exactly this many more bytes (all of them belong to the header).
    Need(usize),
    /// The header is complete: it is all of the bytes given.
    Done(ProxyHeader),
}

/// Why a header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Neither signature: the connection did not start with a PROXY header.
    #[error("no PROXY header (the connection must start with one)")]
    Missing,
    /// A version 2 header with a version other than 2 or an unknown command.
    #[error("unsupported PROXY v2 version or command")]
    Unsupported,
    /// A version 2 header for a datagram connection, or with an unknown family.
    #[error("PROXY v2 header for an unknown family or a non-TCP transport")]
    Transport,
    /// Longer than [`V1_MAX`] or [`V2_MAX_PAYLOAD`].
    #[error("PROXY header too long")]
    TooLong,
    /// A version 2 address block shorter than its family needs.
    #[error("PROXY v2 address block too short for its family")]
    Truncated,
    /// A version 1 line that is not `PROXY TCP4|TCP6 src dst sport dport` or `PROXY UNKNOWN…`.
    #[error("malformed PROXY v1 line")]
    MalformedV1,
}

/// Given the bytes of the header read so far (from the connection's first byte), what to
/// read next or the header. Pure; never asks for a byte past the header's end.
pub fn next_step(read: &[u8]) -> Result<Step, HeaderError> {
    let probe = read.get(..PROBE.min(read.len())).unwrap_or_default();
    let v2 = V2_SIGNATURE.starts_with(probe);
    let v1 = V1_PREFIX.starts_with(
        probe
            .get(..V1_PREFIX.len().min(probe.len()))
            .unwrap_or_default(),
    ) && (probe.len() <= V1_PREFIX.len()
        || probe.get(V1_PREFIX.len()..).is_some_and(is_v1_text));
    if !v2 && !v1 {
        return Err(HeaderError::Missing);
    }
    if read.len() < PROBE {
        return Ok(Step::Need(PROBE - read.len()));
    }
    if v2 {
        v2_step(read)
    } else {
        v1_step(read)
    }
}

fn is_v1_text(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
}

fn v2_step(read: &[u8]) -> Result<Step, HeaderError> {
    let Some(fixed) = read.get(..V2_FIXED) else {
        let sofar = read
            .get(..V2_SIGNATURE.len().min(read.len()))
            .unwrap_or_default();
        if !V2_SIGNATURE.starts_with(sofar) {
            return Err(HeaderError::Missing);
        }
        return Ok(Step::Need(V2_FIXED - read.len()));
    };
    let (signature, rest) = fixed.split_at(V2_SIGNATURE.len());
    if signature != V2_SIGNATURE {
        return Err(HeaderError::Missing);
    }
    let &[version_command, family, len_high, len_low] = rest else {
        return Err(HeaderError::Truncated);
    };
    if version_command >> 4 != 2 || version_command & 0x0f > 1 {
        return Err(HeaderError::Unsupported);
    }
    let local = version_command & 0x0f == 0;
    let payload_len = usize::from(u16::from_be_bytes([len_high, len_low]));
    if payload_len > V2_MAX_PAYLOAD {
        return Err(HeaderError::TooLong);
    }
    let total = V2_FIXED + payload_len;
    if read.len() < total {
        return Ok(Step::Need(total - read.len()));
    }
    let payload = read.get(V2_FIXED..total).unwrap_or_default();
    // The address family and transport are checked even for LOCAL, which carries
    // UNSPEC in practice; a LOCAL header keeps the balancer's address whatever it says.
    let transport = family & 0x0f;
    if transport > 2 {
        return Err(HeaderError::Transport);
    }
    let header = match family >> 4 {
        _ if local => ProxyHeader::Local,
        0 => ProxyHeader::Unknown,
        1 | 2 if transport != 1 => return Err(HeaderError::Transport),
        1 => {
            let Some(&[a, b, c, d, e, f, g, h, sp1, sp2, dp1, dp2]) = payload.get(..12) else {
                return Err(HeaderError::Truncated);
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(
                    Ipv4Addr::new(a, b, c, d).into(),
                    u16::from_be_bytes([sp1, sp2]),
                ),
                destination: SocketAddr::new(
                    Ipv4Addr::new(e, f, g, h).into(),
                    u16::from_be_bytes([dp1, dp2]),
                ),
            }
        }
        2 => {
            let Some(addresses) = payload.get(..36) else {
                return Err(HeaderError::Truncated);
            };
            let (source, rest) = addresses.split_at(16);
            let (destination, ports) = rest.split_at(16);
            let &[sp1, sp2, dp1, dp2] = ports else {
                return Err(HeaderError::Truncated);
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ipv6(source).into(), u16::from_be_bytes([sp1, sp2])),
                destination: SocketAddr::new(
                    ipv6(destination).into(),
                    u16::from_be_bytes([dp1, dp2]),
                ),
            }
        }
        3 if payload.len() < 216 => return Err(HeaderError::Truncated),
        3 => ProxyHeader::Unknown,
        _ => return Err(HeaderError::Transport),
    };
    Ok(Step::Done(header))
}

fn ipv6(bytes: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (to, from) in octets.iter_mut().zip(bytes) {
        *to = *from;
    }
    Ipv6Addr::from(octets)
}

fn v1_step(read: &[u8]) -> Result<Step, HeaderError> {
    let Some(line) = read.strip_suffix(b"\r\n") else {
        if read.len() >= V1_MAX {
            return Err(HeaderError::TooLong);
        }
        // A CR or LF can only be the header's last two bytes.
        return match read.split_last() {
            Some((b'\r', before)) if is_v1_text(before) => Ok(Step::Need(1)),
            _ if is_v1_text(read) => Ok(Step::Need(2.min(V1_MAX - read.len()))),
            _ => Err(HeaderError::MalformedV1),
        };
    };
    let text = std::str::from_utf8(line).map_err(|_| HeaderError::MalformedV1)?;
    if !is_v1_text(line) {
        return Err(HeaderError::MalformedV1);
    }
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Step::Done(ProxyHeader::Unknown)),
        ["PROXY", family @ ("TCP4" | "TCP6"), source, destination, source_port, destination_port] =>
        {
            let v4 = *family == "TCP4";
            let source = v1_address(source, v4)?;
            let destination = v1_address(destination, v4)?;
            Ok(Step::Done(ProxyHeader::Proxied {
                source: SocketAddr::new(source, v1_port(source_port)?),
                destination: SocketAddr::new(destination, v1_port(destination_port)?),
            }))
        }
        _ => Err(HeaderError::MalformedV1),
    }
}

fn v1_address(text: &str, v4: bool) -> Result<IpAddr, HeaderError> {
    if v4 {
        text.parse::<Ipv4Addr>().map(IpAddr::from)
    } else {
        text.parse::<Ipv6Addr>().map(IpAddr::from)
    }
    .map_err(|_| HeaderError::MalformedV1)
}

fn v1_port(text: &str) -> Result<u16, HeaderError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::MalformedV1);
    }
    text.parse().map_err(|_| HeaderError::MalformedV1)
}

/// Why a connection from a trusted source was refused before its first request.
#[derive(Debug, thiserror::Error)]
pub enum RefusedHeader {
    /// The header was wrong.
    #[error(transparent)]
    Invalid(#[from] HeaderError),
    /// The header did not arrive within the request time-out.
    #[error("no complete PROXY header within {0:?}")]
    TimedOut(Duration),
    /// The connection ended (or failed) before the header was complete.
    #[error("closed before a complete PROXY header")]
    Closed,
}

/// Reads the header that starts `stream`, exactly (nothing after it), within `deadline`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Result<ProxyHeader, RefusedHeader> {
    let read = async {
        let mut buf = Vec::with_capacity(V2_FIXED + 64);
        loop {
            match next_step(&buf)? {
                Step::Done(header) => return Ok(header),
                Step::Need(more) => {
                    let start = buf.len();
                    buf.resize(start + more, 0);
                    let target = buf.get_mut(start..).unwrap_or_default();
                    if stream.read_exact(target).await.is_err() {
                        return Err(RefusedHeader::Closed);
                    }
                }
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(RefusedHeader::TimedOut(deadline)))
}

/// The balancers allowed to send PROXY headers (`--proxy-from`): addresses and networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySources {
    networks: Vec<Network>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 client of a dual-stack socket (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl ProxySources {
    /// Parses a comma-separated list of addresses and networks
    /// (`127.0.0.1,10.0.0.0/8,fd00::/8`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut networks = Vec::new();
        for item in text.split(',').map(str::trim) {
            if item.is_empty() {
                return Err("an empty entry in the list".into());
            }
            let (address, prefix) = match item.split_once('/') {
                Some((address, prefix)) => (address, Some(prefix)),
                None => (item, None),
            };
            let address: IpAddr = address
                .trim_matches(['[', ']'])
                .parse()
                .map_err(|_| format!("{item:?} is not an IP address or network"))?;
            let address = canonical(address);
            let width = if address.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => width,
                Some(prefix) => prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= width)
                    .ok_or_else(|| format!("{item:?}: the prefix length must be 0 to {width}"))?,
            };
            networks.push(Network { address, prefix });
        }
        Ok(ProxySources { networks })
    }

    /// Whether a connection from `ip` is a balancer's.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(ip))
    }
}

impl fmt::Display for ProxySources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.networks.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}/{}", net.address, net.prefix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn v2_for(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let mut payload = Vec::new();
        let family = match (source.ip(), destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                payload.extend_from_slice(&s.octets());
                payload.extend_from_slice(&d.octets());
                0x11
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                payload.extend_from_slice(&s.octets());
                payload.extend_from_slice(&d.octets());
                0x21
            }
            _ => unreachable!("same family"),
        };
        payload.extend_from_slice(&source.port().to_be_bytes());
        payload.extend_from_slice(&destination.port().to_be_bytes());
        v2(1, family, &payload)
    }

    fn v1_for(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {family} {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes()
    }

    /// Feeds `stream` the way [`read_header`] does; returns the header and its length.
    fn drive(stream: &[u8]) -> Result<(ProxyHeader, usize), HeaderError> {
        let mut len = 0;
        loop {
            let read = stream.get(..len).ok_or(HeaderError::Truncated)?;
            match next_step(read)? {
                Step::Done(header) => return Ok((header, len)),
                Step::Need(more) => {
                    assert!(more > 0, "asks for nothing");
                    len += more;
                    if len > stream.len() {
                        return Err(HeaderError::Truncated);
                    }
                }
            }
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v2_ipv4_and_ipv6_headers_give_the_client_and_stop_at_their_end() {
        for (source, destination) in [
            (addr("127.0.0.5:40000"), addr("127.0.0.1:1256")),
            (addr("[2001:db8::7]:5"), addr("[::1]:1256")),
        ] {
            let mut stream = v2_for(source, destination);
            let len = stream.len();
            stream.extend_from_slice(b"\x16\x03\x01 the first request or a ClientHello");
            assert_eq!(
                drive(&stream),
                Ok((
                    ProxyHeader::Proxied {
                        source,
                        destination
                    },
                    len
                ))
            );
        }
    }

    #[test]
    fn v2_local_and_unspec_keep_the_balancer_address() {
        let balancer = addr("10.0.0.2:5555");
        let (local, _) = drive(&v2(0, 0x00, &[])).unwrap();
        assert_eq!(local, ProxyHeader::Local);
        assert_eq!(local.client_address(balancer), balancer);
        // LOCAL with addresses (HAProxy's health checks may send them): still LOCAL.
        let mut with_addresses = v2_for(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        with_addresses[12] = 0x20;
        assert_eq!(drive(&with_addresses).unwrap().0, ProxyHeader::Local);
        let (unspec, _) = drive(&v2(1, 0x00, &[])).unwrap();
        assert_eq!(unspec.client_address(balancer), balancer);
        assert_eq!(
            drive(&v2(1, 0x31, &[0; 216])).unwrap().0,
            ProxyHeader::Unknown
        );
    }

    #[test]
    fn v2_tlvs_after_the_addresses_are_skipped() {
        let mut header = v2_for(addr("192.0.2.1:1000"), addr("192.0.2.2:1256"));
        header.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']); // PP2_TYPE_NOOP
        let len = (header.len() - V2_FIXED) as u16;
        header[14..16].copy_from_slice(&len.to_be_bytes());
        let total = header.len();
        header.extend_from_slice(b"after");
        assert_eq!(drive(&header).unwrap().1, total);
    }

    #[test]
    fn v2_refusals() {
        let good = v2_for(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        let mut version = good.clone();
        version[12] = 0x31;
        assert_eq!(drive(&version), Err(HeaderError::Unsupported));
        let mut command = good.clone();
        command[12] = 0x22;
        assert_eq!(drive(&command), Err(HeaderError::Unsupported));
        let mut datagram = good.clone();
        datagram[13] = 0x12;
        assert_eq!(drive(&datagram), Err(HeaderError::Transport));
        let mut family = good.clone();
        family[13] = 0x41;
        assert_eq!(drive(&family), Err(HeaderError::Transport));
        assert_eq!(drive(&v2(1, 0x11, &[0; 11])), Err(HeaderError::Truncated));
        assert_eq!(drive(&v2(1, 0x21, &[0; 35])), Err(HeaderError::Truncated));
        let mut long = v2(1, 0x11, &[]);
        long[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        assert_eq!(next_step(&long), Err(HeaderError::TooLong));
        let mut signature = good;
        signature[10] = b'X';
        assert_eq!(drive(&signature), Err(HeaderError::Missing));
    }

    #[test]
    fn v1_headers() {
        for (source, destination) in [
            (addr("127.0.0.5:40000"), addr("127.0.0.1:1256")),
            (addr("[2001:db8::7]:5"), addr("[::1]:1256")),
        ] {
            let mut stream = v1_for(source, destination);
            let len = stream.len();
            stream.extend_from_slice(b"\r\nmore bytes");
            assert_eq!(
                drive(&stream),
                Ok((
                    ProxyHeader::Proxied {
                        source,
                        destination
                    },
                    len
                ))
            );
        }
        assert_eq!(drive(b"PROXY UNKNOWN\r\n"), Ok((ProxyHeader::Unknown, 15)));
        assert_eq!(
            drive(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nxyz").map(|(h, _)| h),
            Ok(ProxyHeader::Unknown)
        );
        // The longest possible headers fit.
        let longest = format!(
            "PROXY TCP6 {0} {0} 65535 65535\r\n",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert!(drive(longest.as_bytes()).is_ok());
        let longest = longest.replace("TCP6", "UNKNOWN");
        assert_eq!(longest.len(), V1_MAX);
        assert!(drive(longest.as_bytes()).is_ok());
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nxyz",
        ] {
            assert_eq!(
                drive(bad),
                Err(HeaderError::MalformedV1),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = [b"PROXY ".as_slice(), &[b'A'; 200]].concat();
        assert_eq!(drive(&endless), Err(HeaderError::TooLong));
    }

    #[test]
    fn anything_else_is_no_header() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            &[0u8; 32],
            b"\x16\x03\x01\x02\x00\x01\x00\x01",
            b"PROXY\tTCP4",
            b"PROXYX TCP4",
            b"\r\n\r\n\0\r\nX",
        ] {
            assert_eq!(drive(bad), Err(HeaderError::Missing), "{bad:?}");
        }
        // A protocol request (a client ID first) never looks like a header.
        assert_eq!(next_step(&[0x55; 1]), Err(HeaderError::Missing));
    }

    #[test]
    fn trusted_sources() {
        let sources = ProxySources::parse("127.0.0.1, 10.0.0.0/8,fd00::/8").unwrap();
        assert!(sources.trusts("127.0.0.1".parse().unwrap()));
        assert!(sources.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!sources.trusts("127.0.0.2".parse().unwrap()));
        assert!(sources.trusts("10.200.3.4".parse().unwrap()));
        assert!(!sources.trusts("11.0.0.1".parse().unwrap()));
        assert!(sources.trusts("fd12::1".parse().unwrap()));
        assert!(!sources.trusts("fe80::1".parse().unwrap()));
        assert_eq!(sources.to_string(), "127.0.0.1/32,10.0.0.0/8,fd00::/8");
        assert!(ProxySources::parse("0.0.0.0/0")
            .unwrap()
            .trusts("8.8.8.8".parse().unwrap()));
        for bad in [
            "",
            "1.2.3.4,",
            "1.2.3.4/33",
            "::/129",
            "host.example",
            "1.2.3.4/x",
        ] {
            assert!(ProxySources::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn read_header_leaves_the_rest_of_the_stream() {
        let header = v1_for(addr("127.0.0.9:1"), addr("127.0.0.1:2"));
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &[header.as_slice(), b"REST"].concat())
            .await
            .unwrap();
        let parsed = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            parsed.client_address(addr("127.0.0.1:9")),
            addr("127.0.0.9:1")
        );
        let mut rest = [0u8; 4];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"REST");
    }

    #[tokio::test]
    async fn read_header_times_out_and_notices_a_close() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 1.2.3.4")
            .await
            .unwrap();
        let waited = read_header(&mut server, Duration::from_millis(50)).await;
        assert!(
            matches!(waited, Err(RefusedHeader::TimedOut(_))),
            "{waited:?}"
        );
        drop(client);
        let closed = read_header(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(closed, Err(RefusedHeader::Closed)), "{closed:?}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_overread(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok((_, len)) = drive(&bytes) {
                prop_assert!(len <= bytes.len());
                prop_assert!(len <= V2_FIXED + V2_MAX_PAYLOAD);
            }
            for end in 0..=bytes.len() {
                let _ = next_step(&bytes[..end]);
            }
        }

        #[test]
        fn near_headers_never_panic(
            v1 in any::<bool>(),
            cut in 0usize..120,
            flip in 0usize..120,
            to in any::<u8>(),
            tail in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let source = addr("[2001:db8::1]:65535");
            let destination = addr("[::1]:1");
            let mut bytes = if v1 { v1_for(source, destination) } else { v2_for(source, destination) };
            if let Some(b) = bytes.get_mut(flip) { *b = to; }
            bytes.truncate(cut.max(1));
            bytes.extend_from_slice(&tail);
            if let Ok((_, len)) = drive(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn every_address_round_trips(
            v1 in any::<bool>(),
            v6 in any::<bool>(),
            a in any::<[u8; 16]>(),
            b in any::<[u8; 16]>(),
            ports in any::<(u16, u16)>(),
            tail in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let (source, destination) = if v6 {
                (SocketAddr::new(Ipv6Addr::from(a).into(), ports.0), SocketAddr::new(Ipv6Addr::from(b).into(), ports.1))
            } else {
                (
                    SocketAddr::new(Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(), ports.0),
                    SocketAddr::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(), ports.1),
                )
            };
            let header = if v1 { v1_for(source, destination) } else { v2_for(source, destination) };
            let len = header.len();
            let stream = [header, tail].concat();
            prop_assert_eq!(drive(&stream), Ok((ProxyHeader::Proxied { source, destination }, len)));
        }
    }
}
