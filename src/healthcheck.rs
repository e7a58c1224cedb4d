//! `ficus healthcheck`: the container liveness probe, so the image needs no curl.
//!
//! Sends `GET /healthz` to the address of `health.listen` in the config (the same file `ficus run` reads), or to
//! `--url`, and says whether it answered `200` within the timeout. Exit codes (docs/operations.md): 0 healthy, 1
//! anything else — no answer, another status, `health.listen` not set, a config that does not load. Docker reserves
//! exit code 2 for HEALTHCHECK commands, so the usual "2 = configuration error" of the other subcommands does not
//! apply here; the message says which case it is and what to change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The default timeout for the whole probe (connect, request, status line).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes `url`, or the `/healthz` of `health.listen` in `config`. `Ok` with a one-line report when it answered
/// `200`, else `Err` with the reason and, where there is one, the fix.
pub async fn run(config: Option<&Path>, url: Option<&str>, timeout: Duration) -> Result<String, String> {
    let url = match (url, config) {
        (Some(url), _) => url.to_string(),
        (None, Some(path)) => url_from_config(path)?,
        (None, None) => return Err("pass --config FILE (the config of the ficus to check) or --url URL".into()),
    };
    let (host, port, path) = parse_url(&url)?;
    match tokio::time::timeout(timeout, get(&host, port, &path)).await {
        Err(_) => Err(format!("{url}: no answer within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(format!("{url}: {e}")),
        Ok(Ok(200)) => Ok(format!("{url}: 200")),
        Ok(Ok(code)) => Err(format!("{url}: answered {code}, not 200")),
    }
}

/// `http://ADDR/healthz` for the `health.listen` of the config at `path`.
fn url_from_config(path: &Path) -> Result<String, String> {
    let config = crate::config::Config::load(path).map_err(|e| format!("{e}"))?;
    let Some(listen) = config.health.listen else {
        return Err(format!(
            "health.listen is not set in {}, so this ficus serves no /healthz to probe. Fix: add `health: {{listen: \
             0.0.0.0:8080}}` to the config (the endpoints, /metrics included, then listen on port 8080), or pass \
             --url http://HOST:PORT/healthz",
            path.display()
        ));
    };
    Ok(format!("http://{}/healthz", probe_addr(listen)))
}

/// The address to connect to for a listen address: a wildcard (`0.0.0.0`, `::`) is reached on loopback.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// `http://HOST[:PORT][/PATH]` → (host, port, path); the path defaults to `/healthz`.
fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("--url {url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/healthz".to_string()),
    };
    let bad = || format!("--url {url}: expected http://HOST:PORT/PATH");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => 80,
            None => return Err(bad()),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, p)) => (host.to_string(), p.parse().map_err(|_| bad())?),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port, path))
}

/// `GET path` on host:port; returns the status code.
async fn get(host: &str, port: u16, path: &str) -> Result<u16, String> {
    let mut stream = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| format!("cannot connect: {e}"))?;
    let host_header = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending the request: {e}"))?;
    // The status line is all we need.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP answer: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_wildcard_listen_addresses() {
        assert_eq!(parse_url("http://127.0.0.1:8080").unwrap(), ("127.0.0.1".into(), 8080, "/healthz".into()));
        assert_eq!(parse_url("http://localhost/readyz").unwrap(), ("localhost".into(), 80, "/readyz".into()));
        assert_eq!(parse_url("http://[::1]:9/healthz").unwrap(), ("::1".into(), 9, "/healthz".into()));
        for bad in ["https://x:1/", "x:1", "http://:1/", "http://x:port/", "http://[::1]x/"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert_eq!(probe_addr("0.0.0.0:8080".parse().unwrap()).to_string(), "127.0.0.1:8080");
        assert_eq!(probe_addr("[::]:8080".parse().unwrap()).to_string(), "[::1]:8080");
        assert_eq!(probe_addr("10.1.2.3:8080".parse().unwrap()).to_string(), "10.1.2.3:8080");
    }
}
