//! Keeps tenants' webhooks off this machine and its private networks: a URL naming an internal
//! address is refused when registered, and a name that resolves to one is refused when sent to
//! (so that a DNS record changed after registration cannot reach inside either).

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

/// Every range a tenant's webhook may not reach: this machine, private, shared (carrier-grade
/// NAT) and benchmarking networks, link-local (cloud metadata services live there), "this
/// network", protocol assignments, multicast, reserved and broadcast; for IPv6 also unique and
/// site-local, link-local, multicast and local NAT64.
const INTERNAL_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// NAT64's well-known prefix: the IPv4 address is in the last 32 bits.
const NAT64: &str = "64:ff9b::/96";

fn ranges() -> &'static (Vec<IpNet>, IpNet) {
    static RANGES: OnceLock<(Vec<IpNet>, IpNet)> = OnceLock::new();
    RANGES.get_or_init(|| {
        let parse = |r: &str| r.parse::<IpNet>().expect("the ranges above are valid");
        (INTERNAL_RANGES.iter().map(|r| parse(r)).collect(), parse(NAT64))
    })
}

/// Whether `ip` is anything but a public unicast address (one of [`INTERNAL_RANGES`]); IPv4
/// addresses written as IPv6 (mapped, compatible or through NAT64) are judged as IPv4.
pub fn internal_ip(ip: IpAddr) -> bool {
    let (internal, nat64) = ranges();
    let ip = match ip {
        // ::a.b.c.d (compatible) and ::ffff:a.b.c.d (mapped); :: and ::1 are caught as IPv4
        // 0.0.0.0 and 0.0.0.1.
        IpAddr::V6(v6) if v6.to_ipv4().is_some() => IpAddr::V4(v6.to_ipv4().expect("checked")),
        IpAddr::V6(v6) if nat64.contains(&ip) => IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32)),
        ip => ip,
    };
    internal.iter().any(|r| r.contains(&ip))
}

/// Whether `url` names an internal address or `localhost` outright (names that resolve to one
/// are caught when sending, by [`client`]).
pub fn internal(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => internal_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => internal_ip(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => true,
    }
}

/// An HTTP client for webhooks: no redirects (one would re-send, or drop, a signed body
/// somewhere else) and, unless `private_allowed`, no connection to a name that resolves to an
/// internal address and no proxy (through which only the proxy's name would be resolved here).
/// A URL with an address in it is not resolved: check it with [`internal`] before sending.
pub fn client(timeout: Duration, private_allowed: bool) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("meter-webhooks");
    if private_allowed {
        builder.build()
    } else {
        builder.no_proxy().dns_resolver(std::sync::Arc::new(PublicOnly)).build()
    }
}

/// Resolves with the system's resolver, then refuses the name if any address is internal.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs = public_only(&host, found)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// `addrs`, unless one of them is internal (then the whole name is refused: a resolver that
/// answers with both kinds could otherwise be steered to the internal one).
fn public_only(
    host: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    if let Some(a) = addrs.iter().find(|a| internal_ip(a.ip())) {
        return Err(format!("{host} resolves to the internal address {}", a.ip()).into());
    }
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address").into());
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for u in [
            "http://127.0.0.1/x",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest",
            "http://100.100.100.200/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://localhost:8080/",
            "http://localhost./",
            "http://LocalHost/",
            "http://a.localhost/",
            "http://0.0.0.0/",
            "http://0.1.2.3/",
            "http://192.0.0.8/",
            "http://198.18.0.1/",
            "http://224.0.0.1/",
            "http://240.0.0.1/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[64:ff9b:1::1]/",
            "http://[fec0::1]/",
            "http://[ff02::1]/",
        ] {
            assert!(internal(&reqwest::Url::parse(u).unwrap()), "{u}");
        }
        for u in [
            "https://example.com/hook",
            "http://8.8.8.8/",
            "http://100.128.0.1/",
            "http://198.20.0.1/",
            "http://[2001:db8::1]/",
            "http://[64:ff9b::808:808]/",
            "http://[2606:4700::1111]/",
        ] {
            assert!(!internal(&reqwest::Url::parse(u).unwrap()), "{u}");
        }
    }

    #[test]
    fn a_name_with_any_internal_address_is_refused() {
        let public: SocketAddr = "93.184.215.14:0".parse().unwrap();
        let private: SocketAddr = "10.0.0.7:0".parse().unwrap();
        assert_eq!(public_only("example.com", vec![public]).unwrap(), [public]);
        let e = public_only("evil.example", vec![public, private]).unwrap_err();
        assert_eq!(e.to_string(), "evil.example resolves to the internal address 10.0.0.7");
        assert!(public_only("nothing.example", vec![]).is_err());
    }

    /// Through the real resolver and a real listener: the guarded client refuses `localhost`,
    /// the unguarded one reaches it.
    #[tokio::test]
    async fn the_guarded_client_does_not_connect_to_a_name_for_this_machine() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let url = format!("http://localhost:{port}/hook");
        let open = client(Duration::from_secs(5), true).unwrap();
        assert_eq!(open.post(&url).send().await.unwrap().status(), 204);
        let guarded = client(Duration::from_secs(5), false).unwrap();
        let e = guarded.post(&url).send().await.unwrap_err();
        let chain = crate::deliver::causes(&e);
        assert!(chain.contains("localhost resolves to the internal address"), "{chain}");
    }
}
