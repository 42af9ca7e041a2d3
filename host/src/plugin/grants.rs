//! What a plugin may touch beyond its input: environment variables, read-only directories
//! and outbound network destinations, turned into the WASI context of each instance.
//!
//! Invariants: nothing is granted by default. A network grant names destinations
//! (`host:port` patterns); a socket may connect to or send to a matching address only, may
//! bind only implicitly (the wildcard address, port 0, as every `connect` does), and may never
//! listen. Name lookups are allowed only when some destination is granted.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The host directory.
    pub host: PathBuf,
    /// The path the plugin sees it under.
    pub guest: String,
}

/// One granted destination: `HOST:PORT`, where HOST is an IP address, a CIDR block
/// (`10.0.0.0/8`, IPv6 in brackets: `[fd00::]/8`) or a name (the addresses it resolves to
/// when the plugin connects), and PORT a number or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkGrant {
    /// Which hosts.
    pub host: HostPattern,
    /// `None`: any port.
    pub port: Option<u16>,
}

/// The host part of a [`NetworkGrant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// An address or a CIDR block.
    Net {
        /// The address.
        addr: IpAddr,
        /// The prefix length (32 or 128 for one address).
        prefix: u8,
    },
    /// A host name, resolved when the plugin connects.
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

/// How long the addresses a granted name resolved to are trusted before it is resolved again,
/// and how long a failed resolution is remembered.
const NAME_TTL: Duration = Duration::from_secs(30);
const FAILED_NAME_TTL: Duration = Duration::from_secs(2);

/// Addresses a set of grants allows. Names are resolved when a socket asks for an address
/// that no IP grant covers: inside the plugin's WASI call, so within its deadline, never
/// while an instance starts, and again after [`NAME_TTL`] so a long run follows DNS.
#[derive(Debug)]
struct Allowed {
    nets: Vec<(IpAddr, u8, Option<u16>)>,
    names: Vec<GrantedName>,
}

#[derive(Debug)]
struct GrantedName {
    name: String,
    port: Option<u16>,
    /// The last resolution: when it expires and what it gave (empty when it failed).
    resolved: Mutex<Option<(Instant, Arc<[IpAddr]>)>>,
}

impl Allowed {
    fn new(grants: &[NetworkGrant]) -> Self {
        let mut allowed = Allowed {
            nets: Vec::new(),
            names: Vec::new(),
        };
        for g in grants {
            match &g.host {
                HostPattern::Net { addr, prefix } => allowed.nets.push((*addr, *prefix, g.port)),
                HostPattern::Name(name) => allowed.names.push(GrantedName {
                    name: name.clone(),
                    port: g.port,
                    resolved: Mutex::new(None),
                }),
            }
        }
        allowed
    }

    async fn permits(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        match use_ {
            // Implicit binds (before connect or the first datagram) use the wildcard address.
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                addr.ip().is_unspecified() && addr.port() == 0
            }
            SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                let port_matches = |port: Option<u16>| port.is_none_or(|p| p == addr.port());
                if self.nets.iter().any(|(net, prefix, port)| {
                    port_matches(*port) && in_net(addr.ip(), *net, *prefix)
                }) {
                    return true;
                }
                let ip = addr.ip().to_canonical();
                for granted in self.names.iter().filter(|g| port_matches(g.port)) {
                    if granted.addresses().await.contains(&ip) {
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }
}

impl GrantedName {
    /// The name's addresses, resolved again once the last resolution expired.
    async fn addresses(&self) -> Arc<[IpAddr]> {
        let now = Instant::now();
        if let Some((expires, ips)) = &*self.lock()
            && *expires > now
        {
            return ips.clone();
        }
        let found = tokio::net::lookup_host((self.name.as_str(), self.port.unwrap_or(1))).await;
        let (ips, ttl): (Arc<[IpAddr]>, _) = match found {
            Ok(addrs) => (addrs.map(|a| a.ip().to_canonical()).collect(), NAME_TTL),
            Err(e) => {
                tracing::warn!(grant = %self.name, "granted host does not resolve: {e}");
                (Arc::from([]), FAILED_NAME_TTL)
            }
        };
        *self.lock() = Some((Instant::now() + ttl, ips.clone()));
        ips
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Arc<[IpAddr]>)>> {
        // The guarded value is replaced whole, so a poisoned lock still holds a valid one.
        self.resolved.lock().unwrap_or_else(|e| e.into_inner())
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
            let allowed = Arc::new(Allowed::new(&self.network));
            wasi.allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(true)
                .socket_addr_check(move |addr, use_| {
                    let allowed = allowed.clone();
                    Box::pin(async move { allowed.permits(addr, use_).await })
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

    #[tokio::test]
    async fn only_granted_destinations_connect_and_nothing_listens() {
        let allowed = Allowed::new(&[grant("127.0.0.1:8080"), grant("10.1.0.0/16:*")]);
        let permits = |s: &str, use_| allowed.permits(s.parse().unwrap(), use_);
        assert!(permits("127.0.0.1:8080", SocketAddrUse::TcpConnect).await);
        assert!(!permits("127.0.0.1:8081", SocketAddrUse::TcpConnect).await);
        assert!(permits("10.1.200.3:9", SocketAddrUse::UdpSend).await);
        assert!(!permits("10.2.0.1:9", SocketAddrUse::UdpSend).await);
        assert!(permits("[::ffff:127.0.0.1]:8080", SocketAddrUse::TcpConnect).await);
        assert!(permits("0.0.0.0:0", SocketAddrUse::TcpBind).await);
        assert!(!permits("0.0.0.0:8080", SocketAddrUse::TcpBind).await);
        assert!(!permits("127.0.0.1:8080", SocketAddrUse::TcpListen).await);
    }

    #[tokio::test]
    async fn a_granted_name_is_resolved_when_a_socket_asks_and_remembered() {
        let allowed = Allowed::new(&[grant("localhost:8080"), grant("nowhere.invalid:*")]);
        let name = &allowed.names[0];
        assert!(
            name.lock().is_none(),
            "nothing is resolved before a socket asks"
        );
        let permits = |s: &str| allowed.permits(s.parse().unwrap(), SocketAddrUse::TcpConnect);
        assert!(permits("127.0.0.1:8080").await);
        assert!(!permits("127.0.0.1:8081").await, "the name's port only");
        assert!(
            !permits("192.0.2.1:8080").await,
            "not an address of the name"
        );
        let (expires, ips) = name.lock().clone().expect("resolved once asked");
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()), "{ips:?}");
        assert!(expires > Instant::now() + NAME_TTL - Duration::from_secs(5));
        let failed = &allowed.names[1];
        let (expires, ips) = failed
            .lock()
            .clone()
            .expect("a failed lookup is remembered");
        assert!(ips.is_empty());
        assert!(expires <= Instant::now() + FAILED_NAME_TTL);
    }
}
