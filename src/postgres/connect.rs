//! Opening the control connection from a [`ConnInfo`] (TLS per `sslmode`, the session settings pinned at startup),
//! and describing what went wrong in words an operator can act on.

use tokio::task::JoinHandle;

use super::tls::{self, TlsError};
use crate::config::conninfo::{ConnInfo, SslMode};

/// Opening the control connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlConnectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `detail` is the whole cause chain (tokio-postgres' own Display is terse, e.g. "db error").
    #[error("connecting to {target}: {detail}")]
    Postgres {
        target: String,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A multi-host URL (or `target_session_attrs`): no host was usable; `detail` says why for each.
    #[error("no host of source.url is usable (target_session_attrs={attrs}): {detail}")]
    NoHost { attrs: &'static str, detail: String, configuration_problem: bool },
}

impl ControlConnectError {
    /// True when retrying cannot help and the operator must change the configuration or the server's grants:
    /// bad credentials, unknown role or database, no `pg_hba.conf` entry, TLS set-up errors.
    pub fn is_configuration_problem(&self) -> bool {
        match self {
            ControlConnectError::Tls(_) => true,
            ControlConnectError::NoHost { configuration_problem, .. } => *configuration_problem,
            ControlConnectError::Postgres { source, .. } => {
                source.as_db_error().is_some_and(|db| {
                    // 28xxx: invalid authorization (wrong password, no hba entry); 3D000: database does not exist.
                    let code = db.code().code();
                    code.starts_with("28") || code == "3D000"
                }) || self.is_certificate_problem()
            }
        }
    }
}

impl ControlConnectError {
    /// The server's TLS certificate was refused (unknown CA, wrong host name, expired): a configuration problem.
    pub fn is_certificate_problem(&self) -> bool {
        let text = self.to_string();
        text.contains("invalid peer certificate") || text.contains("certificate verify")
    }
}

/// "server error 28P01: password authentication failed ...", or the error with its sources.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("server error {}: {}", db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!("; detail: {d}"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

impl ConnInfo {
    /// tokio-postgres settings for the control connection (TLS mode: `verify-*` map to `Require`; the rustls
    /// configuration from [`super::tls::client_config`] does the verifying).
    pub fn tokio_postgres_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .ssl_mode(match self.sslmode {
                _ if !self.uses_tls() => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            config.password(p.expose());
        }
        if !self.connect_timeout.is_zero() {
            config.connect_timeout(self.connect_timeout);
        }
        config.options(session_options());
        config
    }

    /// Opens the control connection (TLS per `sslmode`) and spawns its connection task; abort the handle to close.
    /// A multi-host URL tries its hosts in order and keeps the first that matches `target_session_attrs`.
    pub async fn connect_control(&self) -> Result<(tokio_postgres::Client, JoinHandle<()>), ControlConnectError> {
        if !self.is_multi_host() {
            return self.connect_one().await;
        }
        let attrs = self.target_session_attrs;
        let mut failures = Vec::new();
        let mut configuration_problem = false;
        for candidate in self.candidates() {
            let (client, task) = match candidate.connect_one().await {
                Ok(connected) => connected,
                Err(e) => {
                    tracing::info!("skipping host {}: {e}", candidate.target());
                    configuration_problem |= e.is_configuration_problem();
                    failures.push(e.to_string());
                    continue;
                }
            };
            let Some(probe) = attrs.probe() else { return Ok((client, task)) };
            let answer = client.simple_query(probe).await.map(|messages| {
                messages.into_iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                    _ => None,
                })
            });
            let refusal = match answer {
                Ok(Some(answer)) => attrs.refusal(&answer),
                Ok(None) => Some(format!("answered nothing to {probe}")),
                Err(e) => Some(format!("{probe}: {}", describe(&e))),
            };
            match refusal {
                None => {
                    tracing::info!(target = %candidate.target(), attrs = attrs.as_str(), "control connection: host chosen");
                    return Ok((client, task));
                }
                Some(reason) => {
                    task.abort();
                    tracing::info!("skipping host {}: it {reason}", candidate.target());
                    failures.push(format!("{} {reason}", candidate.target()));
                }
            }
        }
        Err(ControlConnectError::NoHost { attrs: attrs.as_str(), detail: failures.join("; "), configuration_problem })
    }

    async fn connect_one(&self) -> Result<(tokio_postgres::Client, JoinHandle<()>), ControlConnectError> {
        let config = self.tokio_postgres_config();
        let target = self.target();
        let err = |source: tokio_postgres::Error| ControlConnectError::Postgres {
            target: target.clone(),
            detail: describe(&source),
            source,
        };
        if !self.uses_tls() {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(err)?;
            return Ok((client, tokio::spawn(drive(connection))));
        }
        let tls = tls::client_config(self.sslmode, self.sslrootcert.as_deref())?;
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
        let (client, connection) = config.connect(connector).await.map_err(err)?;
        Ok((client, tokio::spawn(drive(connection))))
    }
}

/// The replication session's output settings ([`SESSION_SETTINGS`]) as a startup `options` string, for every SQL
/// connection too: settings sent at startup take precedence over `ALTER DATABASE/ROLE ... SET`, so snapshot rows and
/// catalog reads come out in the same text formats as streamed values whatever the database's defaults
/// (`DateStyle = 'SQL, DMY'`, `extra_float_digits = 0`, `IntervalStyle = postgres`, ...).
///
/// [`SESSION_SETTINGS`]: crate::postgres::replication::SESSION_SETTINGS
pub(crate) fn session_options() -> String {
    crate::postgres::replication::SESSION_SETTINGS
        .iter()
        // In `options`, a space separates arguments; a backslash escapes one inside a value.
        .map(|(name, value)| format!("-c {name}={}", value.replace('\\', "\\\\").replace(' ', "\\ ")))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "control connection closed");
    }
}
