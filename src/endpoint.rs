//! Where a bearer token may be sent (CONTRACT.md section 1): `https://` anywhere, plain
//! `http://` only to a loopback host.

use std::net::IpAddr;

use url::Url;

/// Is this host a loopback host (127.0.0.0/8, `localhost`, `[::1]`)?
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Parses and checks an endpoint URL. The error says what is wrong and what is accepted.
pub fn check(what: &str, raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("{what} {raw:?} is not a URL: {e}"))?;
    if url.host().is_none() {
        return Err(format!("{what} {raw:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{what} must not carry credentials in the URL"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => Err(format!(
            "{what} {raw:?} uses plain http:// to a non-loopback host; use https:// (http:// is accepted only for 127.0.0.0/8, localhost and [::1])"
        )),
        other => Err(format!(
            "{what} {raw:?} has scheme {other}:// ; only https:// (or http:// to a loopback host) is accepted"
        )),
    }
}

/// Same scheme, host and port: the condition for following a `nextLink` with the token.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_http_only_loopback() {
        assert!(check("--arm-endpoint", "https://management.azure.com").is_ok());
        assert!(check("--arm-endpoint", "http://127.0.0.1:8080").is_ok());
        assert!(check("--arm-endpoint", "http://127.8.9.10").is_ok());
        assert!(check("--arm-endpoint", "http://localhost:1").is_ok());
        assert!(check("--arm-endpoint", "http://[::1]:9").is_ok());
        assert!(check("--arm-endpoint", "http://example.com").is_err());
        assert!(check("--arm-endpoint", "http://10.0.0.1").is_err());
        assert!(check("--arm-endpoint", "http://localhost.evil.com").is_err());
        assert!(check("--arm-endpoint", "ftp://127.0.0.1").is_err());
        assert!(check("--arm-endpoint", "not a url").is_err());
    }

    #[test]
    fn origin_comparison() {
        let a = Url::parse("https://management.azure.com/x").unwrap();
        assert!(same_origin(
            &a,
            &Url::parse("https://MANAGEMENT.azure.com:443/y?z").unwrap()
        ));
        assert!(!same_origin(&a, &Url::parse("https://evil.com/x").unwrap()));
        assert!(!same_origin(
            &a,
            &Url::parse("http://management.azure.com/x").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("https://management.azure.com:8443/x").unwrap()
        ));
    }
}
