//! What a plugin may touch beyond its input: environment variables, read-only directories
//! and outbound network destinations, turned into the WASI context of each instance.
//!
//! Invariants: nothing is granted by default. A network grant names destinations
//! (`host:port` patterns); a socket may connect to or send to a matching address only, may
//! bind only implicitly (the wildcard address, port 0, as every `connect` does), and may never
//! listen. Name lookups are allowed only when some destination is granted.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Capabilities granted to a plugin beyond computing on its input. Default: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasiGrants {
    /// Environment variables passed through (by name, with the host's value).
    pub env: Vec<String>,
    /// Directories mounted read-only.
    pub dirs: Vec<PreopenDir>,
    /// Destinations the plugin may open TCP connections and send UDP datagrams to.
    pub network: Vec<NetworkGrant>,
}

/// A host directory visible to the plugin (read-only) under `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreopenDir {
    pub host: PathBuf,
    pub guest: String,
}

/// One granted destination: `HOST:PORT`, where HOST is an IP address, a CIDR block
/// (`10.0.0.0/8`, IPv6 in brackets: `[fd00::]/8`) or a name resolved when the instance
/// starts, and PORT a number or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkGrant {
    pub host: HostPattern,
    /// `None`: any port.
    pub port: Option<u16>,
}

/// The host part of a [`NetworkGrant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Net { addr: IpAddr, prefix: u8 },
    Name(String),
}

/// Why a network grant does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "network grant {text:?}: {reason}; expected HOST:PORT, e.g. \"127.0.0.1:8080\", \
     \"db.internal:5432\", \"10.0.0.0/8:*\""
)]
pub struct GrantParseError {
    text: String,
    reason: &'static str,
}

impl FromStr for NetworkGrant {
    type Err = GrantParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| GrantParseError {
            text: text.to_owned(),
            reason,
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(|| err("no port"))?;
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .map_err(|_| err("the port is not 1-65535 or *"))?,
            ),
        };
        if port == Some(0) {
            return Err(err("the port is not 1-65535 or *"));
        }
        let (addr, prefix) = match host.split_once('/') {
            Some((a, p)) => (
                a,
                Some(p.parse::<u8>().map_err(|_| err("bad prefix length"))?),
            ),
            None => (host, None),
        };
        let addr_text = addr.trim_start_matches('[').trim_end_matches(']');
        let host = match (addr_text.parse::<IpAddr>(), prefix) {
            (Ok(ip), prefix) => {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let prefix = prefix.unwrap_or(max);
                if prefix > max {
                    return Err(err("bad prefix length"));
                }
                HostPattern::Net { addr: ip, prefix }
            }
            (Err(_), Some(_)) => return Err(err("a prefix length needs an IP address")),
            (Err(_), None) if is_host_name(addr) => HostPattern::Name(addr.to_ascii_lowercase()),
            (Err(_), None) => return Err(err("not an IP address or host name")),
        };
        Ok(NetworkGrant { host, port })
    }
}

impl fmt::Display for NetworkGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Net { addr, prefix } if *prefix == full_prefix(addr) => match addr {
                IpAddr::V4(a) => write!(f, "{a}")?,
                IpAddr::V6(a) => write!(f, "[{a}]")?,
            },
            HostPattern::Net { addr, prefix } => write!(f, "{addr}/{prefix}")?,
            HostPattern::Name(name) => write!(f, "{name}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => write!(f, ":*"),
        }
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn full_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// Addresses a set of grants allows, with names resolved.
#[derive(Debug, Clone)]
struct Allowed(Vec<(IpAddr, u8, Option<u16>)>);

impl Allowed {
    /// Resolves every named grant now (a name that does not resolve allows nothing).
    fn resolve(grants: &[NetworkGrant]) -> Self {
        let mut allowed = Vec::new();
        for g in grants {
            match &g.host {
                HostPattern::Net { addr, prefix } => allowed.push((*addr, *prefix, g.port)),
                HostPattern::Name(name) => {
                    let found = (name.as_str(), g.port.unwrap_or(1)).to_socket_addrs();
                    match found {
                        Ok(addrs) => {
                            for a in addrs {
                                allowed.push((a.ip(), full_prefix(&a.ip()), g.port));
                            }
                        }
                        Err(e) => tracing::warn!(grant = %g, "granted host does not resolve: {e}"),
                    }
                }
            }
        }
        Allowed(allowed)
    }

    fn permits(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        match use_ {
            // Implicit binds (before connect or the first datagram) use the wildcard address.
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                addr.ip().is_unspecified() && addr.port() == 0
            }
            SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                self.0.iter().any(|(net, prefix, port)| {
                    port.is_none_or(|p| p == addr.port()) && in_net(addr.ip(), *net, *prefix)
                })
            }
            _ => false,
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = ip.to_canonical();
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Why a grant cannot be given.
#[derive(Debug, thiserror::Error)]
#[error("cannot open directory {}: {source}", dir.display())]
pub(super) struct DirError {
    dir: PathBuf,
    source: std::io::Error,
}

impl WasiGrants {
    /// Adds the grants to a WASI context under construction.
    pub(super) fn apply(&self, wasi: &mut WasiCtxBuilder) -> Result<(), DirError> {
        for name in &self.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        for dir in &self.dirs {
            wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)
                .map_err(|e| DirError {
                    dir: dir.host.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        if !self.network.is_empty() {
            let allowed = Arc::new(Allowed::resolve(&self.network));
            wasi.allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(true)
                .socket_addr_check(move |addr, use_| {
                    let ok = allowed.permits(addr, use_);
                    Box::pin(async move { ok })
                });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(s: &str) -> NetworkGrant {
        s.parse().unwrap()
    }

    #[test]
    fn grants_parse_and_print_back() {
        for text in [
            "127.0.0.1:8080",
            "10.0.0.0/8:*",
            "db.internal:5432",
            "[::1]:53",
        ] {
            assert_eq!(grant(text).to_string(), text);
        }
        for bad in [
            "127.0.0.1",
            "host:0",
            "host:99999",
            "a_b:1",
            "name/8:1",
            "1.2.3.4/33:1",
        ] {
            assert!(bad.parse::<NetworkGrant>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_granted_destinations_connect_and_nothing_listens() {
        let allowed = Allowed::resolve(&[grant("127.0.0.1:8080"), grant("10.1.0.0/16:*")]);
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(allowed.permits(a("127.0.0.1:8080"), SocketAddrUse::TcpConnect));
        assert!(!allowed.permits(a("127.0.0.1:8081"), SocketAddrUse::TcpConnect));
        assert!(allowed.permits(a("10.1.200.3:9"), SocketAddrUse::UdpSend));
        assert!(!allowed.permits(a("10.2.0.1:9"), SocketAddrUse::UdpSend));
        assert!(allowed.permits(a("[::ffff:127.0.0.1]:8080"), SocketAddrUse::TcpConnect));
        assert!(allowed.permits(a("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(!allowed.permits(a("0.0.0.0:8080"), SocketAddrUse::TcpBind));
        assert!(!allowed.permits(a("127.0.0.1:8080"), SocketAddrUse::TcpListen));
    }
}
