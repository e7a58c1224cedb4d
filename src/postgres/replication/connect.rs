//! Opening the transport: TCP (with `TCP_NODELAY`) or a Unix-domain socket, then the SSLRequest exchange.
//!
//! **Guarantees:** `sslmode=require`/`verify-*` never fall back to plaintext; `prefer` does only when the server
//! answers `N`. Exactly one byte is read before the TLS handshake, so nothing a man in the middle injects ahead
//! of it can end up being treated as if it had come through TLS (CVE-2021-23222).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use super::framing::{tag_name, Conn, Socket};
use super::ReplicationError;
use crate::config::conninfo::{ConnInfo, SslMode};
use crate::postgres::tls::{self, TlsError};

/// Connects the socket and negotiates TLS per `info.sslmode`.
pub async fn open(info: &ConnInfo) -> Result<Conn, ReplicationError> {
    if let Some(path) = info.unix_socket_path() {
        // libpq ignores sslmode on Unix sockets: there is no network to protect.
        let socket = UnixStream::connect(&path)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("connecting to Unix socket {}: {e}", path.display())))?;
        return Ok(Conn::new(Socket::Unix(socket), None));
    }
    let mut tcp = TcpStream::connect((info.host.as_str(), info.port))
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("connecting to {}: {e}", info.target())))?;
    tcp.set_nodelay(true)?;
    if info.sslmode == SslMode::Disable {
        return Ok(Conn::new(Socket::Tcp(tcp), None));
    }
    // Build (and so validate) the TLS configuration before talking to the server.
    let config = tls::client_config(info.sslmode, info.sslrootcert.as_deref())?;
    let server_name = tls::server_name(&info.host)?;

    let mut request = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    tcp.flush().await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ReplicationError::Closed,
        _ => e.into(),
    })?;
    match answer[0] {
        b'S' => {}
        b'N' if info.sslmode == SslMode::Prefer => {
            tracing::debug!(target = %info.target(), "server does not offer TLS; continuing unencrypted (sslmode=prefer)");
            return Ok(Conn::new(Socket::Tcp(tcp), None));
        }
        b'N' => return Err(TlsError::NotSupportedByServer { mode: info.sslmode }.into()),
        // Servers before 7.x answer an unknown request with an ErrorResponse.
        b'E' => return Err(ReplicationError::Protocol("the server rejected the SSL request (too old?)".into())),
        other => {
            return Err(ReplicationError::Protocol(format!(
                "unexpected answer {} to the SSL request; is {} a PostgreSQL server?",
                tag_name(other),
                info.target()
            )))
        }
    }
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|source| TlsError::Handshake { host: info.target(), source })?;
    let binding = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| tls::tls_server_end_point(leaf));
    Ok(Conn::new(Socket::Tls(Box::new(stream)), binding))
}
