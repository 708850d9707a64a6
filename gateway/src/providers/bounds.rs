//! Bounds on what a provider may declare when it registers, and on who may register
//! how often (issue 10, "Bounds at registration").
//!
//! A registration is refused, with a reason that names the limit, when a model's
//! price per token is above `registration.max_price_per_token` in any configured
//! asset, a context or the model count is above its cap, the endpoint is not an
//! http(s) URL, or — unless `allow_private_endpoints` (development only) — the
//! endpoint's host is, or resolves to, a loopback, private, link-local or otherwise
//! non-public address. [`PublicOnly`] applies the same address rule to every name the
//! gateway's attestation client resolves, so a name that later rebinds to a private
//! address is not fetched either. [`SourceLimiter`] bounds registrations per source
//! address (IPv6 per /64).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::pricing::{self, Asset, ONE};
use crate::providers::info::ProviderInfo;

/// Longest endpoint URL accepted.
pub const MAX_ENDPOINT_LEN: usize = 2048;
/// Longest text field of a model entry (id, name, version, modality, formats).
pub const MAX_FIELD_LEN: usize = 256;
/// How long resolving an endpoint's host may take at registration.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a registration may declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationBounds {
    /// Per asset: (cap in that asset's base units per token, the asset's rate: how
    /// many of it one TNZO buys, scaled by 10^18). A declared price (TNZO base
    /// units) converted at the rate must not exceed the cap.
    pub max_price_per_token: Vec<(Asset, u128, u128)>,
    pub max_context: u32,
    pub max_models: usize,
    pub max_concurrency: u32,
    /// Development only: endpoints on loopback and private networks are accepted.
    pub allow_private_endpoints: bool,
}

impl Default for RegistrationBounds {
    fn default() -> Self {
        RegistrationBounds {
            // 0.01 TNZO per token.
            max_price_per_token: vec![(Asset::Tnzo, ONE / 100, ONE)],
            max_context: 1 << 20,
            max_models: 64,
            max_concurrency: 4096,
            allow_private_endpoints: false,
        }
    }
}

impl RegistrationBounds {
    /// Checks a validated registration against the bounds (not its endpoint's
    /// addresses: see [`check_endpoint`]).
    pub fn check(&self, info: &ProviderInfo) -> Result<(), String> {
        if info.models.len() > self.max_models {
            return Err(format!(
                "{} models declared; this gateway accepts at most {} per provider (registration.max_models)",
                info.models.len(),
                self.max_models
            ));
        }
        if info.max_concurrency > self.max_concurrency {
            return Err(format!(
                "max_concurrency {} is above this gateway's limit {} (registration.max_concurrency)",
                info.max_concurrency, self.max_concurrency
            ));
        }
        if info.endpoint.len() > MAX_ENDPOINT_LEN {
            return Err(format!(
                "endpoint is {} bytes long; at most {MAX_ENDPOINT_LEN}",
                info.endpoint.len()
            ));
        }
        parse_endpoint(&info.endpoint)?;
        for m in &info.models {
            let i = &m.info;
            let texts = [
                Some(&i.id),
                i.name.as_ref(),
                i.version.as_ref(),
                i.modality.as_ref(),
                i.weight_sha256.as_ref(),
            ];
            if texts
                .into_iter()
                .flatten()
                .chain(i.formats.iter())
                .any(|t| t.len() > MAX_FIELD_LEN)
                || i.formats.len() > 16
            {
                return Err(format!(
                    "model {}: text fields are limited to {MAX_FIELD_LEN} bytes and formats to 16 entries",
                    truncate(&i.id)
                ));
            }
            if let Some(c) = i.max_context
                && c > self.max_context
            {
                return Err(format!(
                    "model {}: max_context {c} is above this gateway's limit {} (registration.max_context)",
                    i.id, self.max_context
                ));
            }
            for &(asset, cap, rate) in &self.max_price_per_token {
                let in_asset = pricing::mul_div_floor(m.price, rate, ONE).unwrap_or(u128::MAX);
                if in_asset > cap {
                    return Err(format!(
                        "model {}: price_per_token {} TNZO base units is {in_asset} {asset} base units per token, above this gateway's limit of {cap} (registration.max_price_per_token.{asset})",
                        i.id, m.price
                    ));
                }
            }
        }
        Ok(())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The endpoint's host and port, when it is an http(s) URL with a host and no
/// credentials.
pub fn parse_endpoint(endpoint: &str) -> Result<(reqwest::Url, String, u16), String> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("endpoint `{}` is not a URL: {e}", truncate(endpoint)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "endpoint `{}` must be an http(s) URL",
            truncate(endpoint)
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("endpoint must not carry credentials".into());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("endpoint `{}` has no host", truncate(endpoint)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    Ok((url, host, port))
}

/// Refuses an endpoint whose host is, or resolves to, a non-public address, unless
/// `allow_private`. Names are resolved now; every address they resolve to must be
/// public.
pub async fn check_endpoint(endpoint: &str, allow_private: bool) -> Result<(), String> {
    let (_, host, port) = parse_endpoint(endpoint)?;
    if allow_private {
        return Ok(());
    }
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let found = tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            .map_err(|_| {
                format!(
                    "endpoint host `{host}` did not resolve within {} s",
                    RESOLVE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("endpoint host `{host}` does not resolve: {e}"))?;
            found.map(|a| a.ip()).collect()
        }
    };
    if addrs.is_empty() {
        return Err(format!("endpoint host `{host}` resolves to no address"));
    }
    if let Some(ip) = addrs.iter().find(|ip| !is_public(**ip)) {
        return Err(format!(
            "endpoint host `{host}` is (or resolves to) {ip}, a loopback, private, link-local or reserved address; this gateway accepts only public endpoints (registration.allow_private_endpoints is for development)"
        ));
    }
    Ok(())
}

/// Whether `ip` is a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Addresses that embed an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if s[0..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        // IPv4-compatible (deprecated).
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7])); // NAT64
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2])); // 6to4
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// A DNS resolver that drops non-public addresses (all of them: a name resolving
/// only to private addresses fails), for the attestation client.
#[derive(Debug, Clone, Copy)]
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = found.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Registrations per source address per minute, in fixed one-minute windows;
/// IPv6 sources count per /64. The table holds at most `capacity` sources (expired
/// windows are dropped first; when it is still full, new sources wait).
#[derive(Debug)]
pub struct SourceLimiter {
    per_minute: u32,
    capacity: usize,
    windows: HashMap<IpAddr, (u64, u32)>,
}

impl SourceLimiter {
    pub fn new(per_minute: u32, capacity: usize) -> Self {
        SourceLimiter {
            per_minute,
            capacity: capacity.max(1),
            windows: HashMap::new(),
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
        }
    }

    /// Counts one registration from `ip` at `now` (the registry's clock); `Err`
    /// carries the seconds until the source may register again. `per_minute` 0
    /// disables the limit.
    pub fn check(&mut self, ip: IpAddr, now: Duration) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let minute = now.as_secs() / 60;
        let retry = 60 - now.as_secs() % 60;
        let key = Self::key(ip);
        if !self.windows.contains_key(&key) && self.windows.len() >= self.capacity {
            self.windows.retain(|_, (m, _)| *m == minute);
            if self.windows.len() >= self.capacity {
                return Err(retry);
            }
        }
        let w = self.windows.entry(key).or_insert((minute, 0));
        if w.0 != minute {
            *w = (minute, 0);
        }
        if w.1 >= self.per_minute {
            return Err(retry);
        }
        w.1 += 1;
        Ok(())
    }
}

/// Reads at most `limit` bytes of `resp`'s body, as a stream (a longer body is an
/// error, read no further than `limit` + one chunk).
pub async fn read_bounded(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("the answer is over {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is over {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::3",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn endpoints_are_checked_and_names_resolved() {
        for e in [
            "http://127.0.0.1:9",
            "http://[::1]:8000",
            "http://localhost:8000",
            "http://10.0.0.7",
            "https://169.254.169.254/",
        ] {
            let err = check_endpoint(e, false).await.unwrap_err();
            assert!(err.contains("loopback, private"), "{e}: {err}");
        }
        assert!(check_endpoint("http://127.0.0.1:9", true).await.is_ok());
        assert!(check_endpoint("http://8.8.8.8:80", false).await.is_ok());
        for e in [
            "ftp://8.8.8.8",
            "unix:/tmp/x",
            "http://user:pw@8.8.8.8",
            "not a url",
        ] {
            assert!(check_endpoint(e, true).await.is_err(), "{e}");
        }
    }

    #[test]
    fn the_limiter_counts_per_source_and_window() {
        let mut l = SourceLimiter::new(2, 2);
        let a: IpAddr = "1.2.3.4".parse().unwrap();
        let t = Duration::from_secs(120);
        assert!(l.check(a, t).is_ok());
        assert!(l.check(a, t).is_ok());
        assert_eq!(l.check(a, t + Duration::from_secs(10)), Err(50));
        // One /64 is one source.
        let (x, y): (IpAddr, IpAddr) = (
            "2001:4860::1".parse().unwrap(),
            "2001:4860::2".parse().unwrap(),
        );
        assert!(l.check(x, t).is_ok() && l.check(y, t).is_ok());
        assert!(l.check(x, t).is_err());
        // The table is full (two sources this minute): a third waits for the next.
        let b: IpAddr = "5.6.7.8".parse().unwrap();
        assert!(l.check(b, t).is_err());
        let t2 = t + Duration::from_secs(60);
        assert!(l.check(b, t2).is_ok());
        assert!(l.check(a, t2).is_ok());
        // Disabled.
        let mut off = SourceLimiter::new(0, 1);
        assert!((0..100).all(|_| off.check(a, t).is_ok()));
    }
}
