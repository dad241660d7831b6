//! The server's address: `host:port` with an IPv4 address, an IPv6 address in brackets
//! or a host name, checked in words.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// The server's host: an IPv4 address, an IPv6 address or a host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address (written in brackets).
    Ipv6(Ipv6Addr),
    /// A DNS host name, resolved when connecting.
    Name(String),
}

/// A validated `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddress {
    /// The host.
    pub host: Host,
    /// The TCP port, 1..=65535.
    pub port: u16,
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ipv4(ip) => write!(f, "{ip}:{}", self.port),
            Host::Ipv6(ip) => write!(f, "[{ip}]:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

const ADDRESS_EXAMPLE: &str = "e.g. 127.0.0.1:1256, [::1]:1256 or files.example.org:1256";

impl ServerAddress {
    /// Parses `address:port`: IPv4, IPv6 in brackets, or a host name. Surrounding white
    /// space is ignored. The error says what is wrong in words.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(format!(
                "the server address is empty; write address:port, {ADDRESS_EXAMPLE}"
            ));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?} has '[' but no closing ']'"))?;
            let ip = inside
                .parse::<Ipv6Addr>()
                .map_err(|_| format!("{inside:?} is not a valid IPv6 address"))?;
            let port = after.strip_prefix(':').ok_or_else(|| {
                format!("{text:?} has no port after the IPv6 address; write [address]:port, e.g. [::1]:1256")
            })?;
            (Host::Ipv6(ip), port)
        } else {
            let (host, port) = text.rsplit_once(':').ok_or_else(|| {
                format!("{text:?} has no port; write address:port, {ADDRESS_EXAMPLE}")
            })?;
            if host.contains(':') {
                return Err(format!(
                    "{text:?}: an IPv6 address must be written in brackets, e.g. [::1]:1256"
                ));
            }
            (parse_host(host)?, port)
        };
        Ok(ServerAddress {
            host,
            port: parse_port(port)?,
        })
    }

    /// Resolves to socket addresses (DNS for host names).
    pub fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = match &self.host {
            Host::Ipv4(ip) => vec![SocketAddr::from((*ip, self.port))],
            Host::Ipv6(ip) => vec![SocketAddr::from((*ip, self.port))],
            Host::Name(name) => (name.as_str(), self.port).to_socket_addrs()?.collect(),
        };
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the host name resolved to no address",
            ));
        }
        Ok(addrs)
    }
}

fn parse_host(host: &str) -> Result<Host, String> {
    if host.is_empty() {
        return Err(format!(
            "the address before ':' is empty; {ADDRESS_EXAMPLE}"
        ));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<Ipv4Addr>()
            .map(Host::Ipv4)
            .map_err(|_| format!("{host:?} is not a valid IPv4 address"));
    }
    if host.len() > 253 {
        return Err(format!(
            "the host name is {} characters long; at most 253 are allowed",
            host.len()
        ));
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(format!("{host:?} is not a valid host name (empty label)"));
        }
        if label.len() > 63 {
            return Err(format!(
                "{host:?} is not a valid host name (a label is longer than 63 characters)"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "{host:?} is not a valid host name: {c:?} is not allowed (letters, digits, '-' and '.' only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{host:?} is not a valid host name (a label starts or ends with '-')"
            ));
        }
    }
    Ok(Host::Name(host.to_owned()))
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err(format!("the port after ':' is missing; {ADDRESS_EXAMPLE}"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the port {port:?} is not a number"));
    }
    match port.parse::<u32>() {
        Ok(0) => Err("port 0 is not allowed; use a port from 1 to 65535".to_owned()),
        Ok(n) if n <= u32::from(u16::MAX) => Ok(n as u16),
        _ => Err(format!(
            "the port {port} is out of range; use a port from 1 to 65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_every_form_parse() {
        let a = ServerAddress::parse("[::1]:1256").unwrap();
        assert_eq!(a.host, Host::Ipv6(Ipv6Addr::LOCALHOST));
        assert_eq!(a.to_string(), "[::1]:1256");
        let a = ServerAddress::parse("10.0.0.1:65535").unwrap();
        assert_eq!(a.port, 65535);
        let a = ServerAddress::parse("files.example.org.:1").unwrap();
        assert_eq!(a.host, Host::Name("files.example.org.".into()));
        assert_eq!(
            ServerAddress::parse("127.0.0.1:1256")
                .unwrap()
                .resolve()
                .unwrap(),
            vec!["127.0.0.1:1256".parse::<SocketAddr>().unwrap()]
        );
    }
}
