//! `postgres://` connection URLs and `sslmode`: the grammar of `source.url` (opening connections is
//! `postgres::connect`).
//!
//! Accepted form (libpq's URL syntax):
//! `postgres[ql]://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]...]/DBNAME?sslmode=..&sslrootcert=..&application_name=..&connect_timeout=..&target_session_attrs=..`.
//! Several hosts (also `?host=a,b&port=5432,5433`: one port for all or one per host) are tried in order, and the
//! first that accepts the connection and matches `target_session_attrs` is used (`any`, the default; `read-write`:
//! `transaction_read_only` is off; `primary`: not in recovery) — after a promotion ficus follows the new primary.
//! User, password, database and parameter values are percent-decoded; `[::1]` brackets an IPv6 address; `?host=/dir`
//! selects a Unix-domain socket directory (the socket is `/dir/.s.PGSQL.PORT`, and like libpq `sslmode` does not
//! apply to it). `user`, `password`, `dbname`, `host` and `port` may also be given as query parameters.
//! Defaults: port 5432, database = user, `sslmode=prefer`, `application_name=ficus`, `connect_timeout=10` (seconds;
//! 0 waits forever).
//!
//! **Guarantee:** the password never appears in `Debug`, `Display`, errors or [`ConnInfo::redacted`]; it is
//! reachable only through [`Password::expose`]. Parse errors never quote the user-information part of the URL
//! (everything before its last `@`), whatever it contains — a password with an unencoded `/`, `?`, `@`, `#` or `&`
//! cannot leak as a "port" or "database name" — nor any part of a `password=` parameter. Special characters in a
//! password must be percent-encoded (docs/configuration.md has the table).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A password that prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    /// The secret itself; only for the authentication exchange.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// libpq's `sslmode`, minus `allow` (see [`super::tls`] for what each mode verifies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    const ACCEPTED: &'static str = "disable, prefer, require, verify-ca, verify-full";

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(bad(format!("sslmode={other:?} is not supported; use one of: {}", SslMode::ACCEPTED))),
        })
    }
}

/// What is wrong with a connection URL, and how to fix it. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConnInfoError {
    message: String,
    /// The message quotes no part of the URL (so it may be shown as is, even for a URL with a password).
    quotes_nothing: bool,
}

/// How to write special characters in a password, for messages (docs/configuration.md has the table).
const ENCODING: &str =
    "'/' as %2F, '?' as %3F, '@' as %40, '#' as %23, ':' as %3A, '&' as %26, '%' as %25, space as %20";

/// A parsed connection URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Host name, IP address, or (starting with `/`) a Unix-domain socket directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Password>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    /// Bounds the whole connect (TCP, TLS, authentication); zero means no bound.
    pub connect_timeout: Duration,
    /// Every host with its port, in the order they are tried; the first is also `host`/`port`.
    pub hosts: Vec<(String, u16)>,
    pub target_session_attrs: TargetSessionAttrs,
}

/// libpq's `target_session_attrs`, the subset ficus needs: which server of a multi-host URL to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// The first host that accepts the connection.
    #[default]
    Any,
    /// A server where `transaction_read_only` is off (a primary, not a standby).
    ReadWrite,
    /// A server that is not in recovery (`pg_is_in_recovery()` is false).
    Primary,
}

impl TargetSessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::Primary => "primary",
        }
    }

    /// The query that tells whether a server qualifies (its one value: `on`/`t` = does not), `None` for `any`.
    pub fn probe(self) -> Option<&'static str> {
        match self {
            TargetSessionAttrs::Any => None,
            TargetSessionAttrs::ReadWrite => Some("SHOW transaction_read_only"),
            TargetSessionAttrs::Primary => Some("SELECT pg_is_in_recovery()"),
        }
    }

    /// Reads the probe's answer: `Some(reason)` when the server does not qualify.
    pub fn refusal(self, answer: &str) -> Option<String> {
        let yes = matches!(answer, "on" | "t" | "true");
        match self {
            TargetSessionAttrs::Any => None,
            TargetSessionAttrs::ReadWrite => yes.then(|| {
                "is read-only (transaction_read_only = on: a standby, or default_transaction_read_only), not read-write"
                    .to_string()
            }),
            TargetSessionAttrs::Primary => yes.then(|| "is a standby (pg_is_in_recovery()), not a primary".to_string()),
        }
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "primary" => TargetSessionAttrs::Primary,
            other => {
                return Err(bad(format!(
                    "target_session_attrs={other:?} is not supported; use one of: any, read-write, primary"
                )))
            }
        })
    }
}

const FORM: &str = "postgres://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]...]/DBNAME[?sslmode=...]";
const PARAMS: &str =
    "host, port, user, password, dbname, sslmode, sslrootcert, application_name, connect_timeout, target_session_attrs";

fn bad(msg: impl Into<String>) -> ConnInfoError {
    ConnInfoError { message: msg.into(), quotes_nothing: false }
}

/// An error whose message quotes nothing from the URL.
fn bad_unquoted(msg: impl Into<String>) -> ConnInfoError {
    ConnInfoError { message: msg.into(), quotes_nothing: true }
}

impl ConnInfo {
    /// Parses a `postgres://` or `postgresql://` URL (see the module docs).
    ///
    /// Errors never quote the user-information part (`USER:PASSWORD@`) of the URL, whatever it contains: a password
    /// with an unencoded `/`, `?`, `@`, `#` or `&` would otherwise end up split into "port", "database name" or
    /// "parameter" values that the messages quote. When the URL cannot be parsed, the part up to its last `@` (the
    /// widest span a password could occupy) is replaced by `***` and parsed again: if that parses, the problem is
    /// in the hidden part and the message says how to percent-encode; else the message of the redacted URL is shown.
    pub fn parse(url: &str) -> Result<ConnInfo, ConnInfoError> {
        let url = url.trim();
        let parsed = ConnInfo::parse_unredacted(url);
        let Err(error) = parsed else { return parsed };
        if error.quotes_nothing {
            return Err(error);
        }
        let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"));
        let Some((rest, (userinfo_end, _))) = rest.and_then(|r| Some((r, r.rmatch_indices('@').next()?))) else {
            // No '@': the URL has no user-information part, everything in it may be quoted.
            return Err(error);
        };
        let redacted = format!("postgres://***@{}", &rest[userinfo_end + 1..]);
        match ConnInfo::parse_unredacted(&redacted) {
            Err(e) => Err(e),
            Ok(_) => Err(bad(format!(
                "the user name or password part of the URL (before the last '@', not shown) cannot be parsed: \
                 percent-encode the special characters in it ({ENCODING}); write it as {FORM}"
            ))),
        }
    }

    fn parse_unredacted(url: &str) -> Result<ConnInfo, ConnInfoError> {
        let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).ok_or_else(|| {
            bad(format!("the connection URL must start with postgres:// or postgresql://, as in {FORM}"))
        })?;
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match main.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (main, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };

        let mut user = None;
        let mut password = None;
        if let Some(userinfo) = userinfo {
            let (u, p) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            user = Some(decode(u, "user name")?).filter(|u| !u.is_empty());
            password = p.map(|p| decode(p, "password")).transpose()?.map(Password);
        }

        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for hostport in hostport.split(',') {
            let (host, port) = split_host_port(hostport)?;
            hosts.push(decode(host, "host")?);
            ports.push(port.map(parse_port).transpose()?);
        }
        let mut port_param: Option<Vec<u16>> = None;
        let mut target_session_attrs = TargetSessionAttrs::default();
        let mut dbname = match path {
            // Not a database name but most likely the rest of a password with an unencoded '/' (see `parse`).
            Some(p) if p.contains('@') => return Err(bad("the database name contains '@'; percent-encode it as %40")),
            Some(p) if p.contains('/') => {
                return Err(bad(format!("the database name {p:?} contains '/'; percent-encode it as %2F")))
            }
            Some(p) => Some(decode(p, "database name")?).filter(|d| !d.is_empty()),
            None => None,
        };

        let mut sslmode = SslMode::default();
        let mut sslrootcert = None;
        let mut application_name = "ficus".to_string();
        let mut connect_timeout = Duration::from_secs(10);
        let mut after_password = false;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                // Right after `password=`, this is most likely the rest of a password with an unencoded '&'.
                return Err(if after_password {
                    bad_unquoted(format!(
                        "the password parameter is followed by a part without '=' (not shown): percent-encode '&' in \
                         the password as %26 ({ENCODING})"
                    ))
                } else {
                    bad(format!("URL parameter {pair:?} has no value; write NAME=VALUE"))
                });
            };
            after_password = key == "password";
            let what = format!("URL parameter {key}");
            let value = if key == "password" { decode(value, "password")? } else { decode(value, &what)? };
            match key {
                "host" => hosts = value.split(',').map(str::to_string).collect(),
                "port" => port_param = Some(value.split(',').map(parse_port).collect::<Result<_, _>>()?),
                "target_session_attrs" => target_session_attrs = value.parse()?,
                "user" => user = Some(value).filter(|u| !u.is_empty()),
                "password" => password = Some(Password(value)),
                "dbname" => dbname = Some(value).filter(|d| !d.is_empty()),
                "sslmode" => sslmode = value.parse()?,
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty()),
                "application_name" => application_name = value,
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| {
                        bad(format!(
                            "connect_timeout={value:?} is not a whole number of seconds (e.g. connect_timeout=10)"
                        ))
                    })?;
                    connect_timeout = Duration::from_secs(secs);
                }
                other => {
                    return Err(bad(format!(
                        "URL parameter {other:?} is not supported; supported parameters: {PARAMS}"
                    )))
                }
            }
        }

        let user = user.ok_or_else(|| bad(format!("the connection URL has no user name; write it as {FORM}")))?;
        let ports: Vec<u16> = match port_param {
            Some(list) if list.len() == 1 => vec![list[0]; hosts.len()],
            Some(list) if list.len() == hosts.len() => list,
            Some(list) => {
                return Err(bad(format!(
                    "the URL gives {} ports for {} hosts; give one port for all hosts or one per host",
                    list.len(),
                    hosts.len()
                )))
            }
            None if ports.len() == hosts.len() => ports.into_iter().map(|p| p.unwrap_or(5432)).collect(),
            None => vec![5432; hosts.len()],
        };
        let hosts: Vec<(String, u16)> =
            hosts.into_iter().map(|h| if h.is_empty() { "localhost".to_string() } else { h }).zip(ports).collect();
        let (host, port) = hosts[0].clone();
        Ok(ConnInfo {
            dbname: dbname.unwrap_or_else(|| user.clone()),
            host,
            port,
            hosts,
            target_session_attrs,
            user,
            password,
            sslmode,
            sslrootcert,
            application_name,
            connect_timeout,
        })
    }

    /// True when `host` names a Unix-domain socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The Unix-domain socket path (`{host}/.s.PGSQL.{port}`), for socket-directory hosts.
    pub fn unix_socket_path(&self) -> Option<PathBuf> {
        self.is_unix_socket()
            .then(|| PathBuf::from(format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)))
    }

    /// One connection target per host, in order (each with only that host); one for a single-host URL.
    pub fn candidates(&self) -> Vec<ConnInfo> {
        self.hosts
            .iter()
            .map(|(host, port)| ConnInfo {
                host: host.clone(),
                port: *port,
                hosts: vec![(host.clone(), *port)],
                ..self.clone()
            })
            .collect()
    }

    /// Whether connecting tries several hosts or checks `target_session_attrs`.
    pub fn is_multi_host(&self) -> bool {
        self.hosts.len() > 1 || self.target_session_attrs != TargetSessionAttrs::Any
    }

    /// `host:port` (or the socket path), for messages; every host, comma-separated, for a multi-host URL.
    pub fn target(&self) -> String {
        if self.hosts.len() > 1 {
            return self.candidates().iter().map(ConnInfo::target).collect::<Vec<_>>().join(",");
        }
        match self.unix_socket_path() {
            Some(p) => p.display().to_string(),
            None if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// The URL with the password replaced by `***`, safe to log.
    pub fn redacted(&self) -> String {
        let mut s = format!("postgres://{}", encode(&self.user));
        if self.password.is_some() {
            s.push_str(":***");
        }
        s.push('@');
        let mut params = Vec::new();
        if self.hosts.len() > 1 {
            if self.hosts.iter().any(|(h, _)| h.starts_with('/')) {
                let hosts = self.hosts.iter().map(|(h, _)| encode(h)).collect::<Vec<_>>().join(",");
                let ports = self.hosts.iter().map(|(_, p)| p.to_string()).collect::<Vec<_>>().join(",");
                params.push(format!("host={hosts}"));
                params.push(format!("port={ports}"));
            } else {
                let hosts = self
                    .hosts
                    .iter()
                    .map(|(h, p)| if h.contains(':') { format!("[{h}]:{p}") } else { format!("{}:{p}", encode(h)) })
                    .collect::<Vec<_>>()
                    .join(",");
                s.push_str(&hosts);
            }
        } else if self.is_unix_socket() {
            params.push(format!("host={}", encode(&self.host)));
            s.push_str(&format!(":{}", self.port));
        } else if self.host.contains(':') {
            s.push_str(&format!("[{}]:{}", self.host, self.port));
        } else {
            s.push_str(&format!("{}:{}", encode(&self.host), self.port));
        }
        s.push('/');
        s.push_str(&encode(&self.dbname));
        params.push(format!("sslmode={}", self.sslmode));
        if let Some(p) = &self.sslrootcert {
            params.push(format!("sslrootcert={}", encode(&p.display().to_string())));
        }
        if self.application_name != "ficus" {
            params.push(format!("application_name={}", encode(&self.application_name)));
        }
        if self.connect_timeout != Duration::from_secs(10) {
            params.push(format!("connect_timeout={}", self.connect_timeout.as_secs()));
        }
        if self.target_session_attrs != TargetSessionAttrs::Any {
            params.push(format!("target_session_attrs={}", self.target_session_attrs.as_str()));
        }
        s.push('?');
        s.push_str(&params.join("&"));
        s
    }

    /// Whether TLS applies: never on Unix sockets (libpq ignores `sslmode` there), never with `disable`.
    pub fn uses_tls(&self) -> bool {
        self.sslmode != SslMode::Disable && !self.is_unix_socket()
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), ConnInfoError> {
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad(format!("host {hostport:?} opens '[' without closing ']'; write [IPv6]:PORT")))?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(bad(format!("unexpected {after:?} after the IPv6 host; write [IPv6]:PORT"))),
            },
        };
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    };
    // `host:port:port` (e.g. FICUS_PG_HOST=db:5433 in a URL that adds :5432) would otherwise be looked up in DNS as
    // the name "db:5433" and fail with a resolver error that does not say why.
    if host.contains(':') {
        return Err(bad(format!(
            "host {host:?} contains ':' — the port appears twice; write host:port once (an IPv6 address goes in brackets: [::1]:5432)"
        )));
    }
    Ok((host, port))
}

fn parse_port(port: &str) -> Result<u16, ConnInfoError> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(bad(format!("port {port:?} is not a number from 1 to 65535 (the default is 5432)"))),
    }
}

/// Percent-decodes one URL component; `what` names it in the error (never its value for passwords).
fn decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    let secret = what == "password";
    let shown = |s: &str| if secret { String::new() } else { format!(" {s:?}") };
    let bad = |m: String| if secret { bad_unquoted(m) } else { bad(m) };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| {
                bad(format!(
                    "the {what}{} has a '%' not followed by two hex digits; write a literal % as %25",
                    shown(s)
                ))
            })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("the {what}{} does not percent-decode to UTF-8", shown(s))))
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[path = "conninfo_tests.rs"]
mod tests;
