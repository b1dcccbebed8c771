//! Facts about URLs that formats check without any IO.

/// Whether an `http://` endpoint points at this machine: `localhost`,
/// `127.0.0.0/8` or `[::1]`, with or without a port.
pub fn is_loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, _port)) => host,
            None => return false,
        }
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_to_this_machine_is_loopback_http() {
        for yes in [
            "http://localhost:9000",
            "http://127.0.0.1/fleet",
            "http://127.1.2.3:80",
            "http://[::1]:8080/x",
            "http://LOCALHOST",
        ] {
            assert!(is_loopback_http(yes), "{yes}");
        }
        for no in [
            "https://127.0.0.1",
            "http://cache.example.net",
            "http://127.0.0.1@evil.example",
            "http://10.0.0.1:9000",
            "http://[::1",
            "http://localhost.evil.example",
        ] {
            assert!(!is_loopback_http(no), "{no}");
        }
    }
}
