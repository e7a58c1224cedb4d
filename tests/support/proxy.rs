//! A TCP proxy for fault injection between ficus and a server ([`FaultProxy`]): every connection to its port is
//! forwarded to the target; a test can then **cut one direction** of the connections open at that moment (a
//! one-sided partition: the bytes are read and dropped, the sockets stay open, nothing is closed or reset — the
//! other direction keeps working), and, for PostgreSQL, **rewrite the start position of `START_REPLICATION`**
//! to `0/0`, so the server starts at the slot's confirmed position whatever ficus asked for.
//!
//! Connections opened after a cut are not cut (the partition hit the old connection's path; a reconnect finds a
//! working one). Runs on the test's tokio runtime; everything stops when the runtime does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Which way bytes travel through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client (ficus) to the server.
    ToServer,
    /// From the server to the client (ficus).
    ToClient,
}

#[derive(Default)]
struct State {
    /// Connections are numbered from 1; those numbered below these are cut in that direction.
    cut_to_server_below: AtomicU64,
    cut_to_client_below: AtomicU64,
    next_id: AtomicU64,
    rewrite_start: AtomicBool,
    /// `START_REPLICATION` commands rewritten so far.
    rewrites: AtomicU64,
    /// Bytes dropped by cuts.
    dropped: AtomicU64,
}

/// See the module docs.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<State>,
}

impl FaultProxy {
    /// Listens on a free local port and forwards every connection to `127.0.0.1:target`.
    pub async fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State { next_id: AtomicU64::new(1), ..State::default() });
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { continue };
                let id = accept_state.next_id.fetch_add(1, Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let s = accept_state.clone();
                tokio::spawn(pump_to_server(client_read, server_write, id, s));
                tokio::spawn(pump(server_read, client_write, id, Direction::ToClient, accept_state.clone()));
            }
        });
        FaultProxy { port, state }
    }

    /// Rewrites the start position of every following `START_REPLICATION … LOGICAL <lsn>` to `0/0`.
    pub fn rewrite_start_replication_to_zero(&self) {
        self.state.rewrite_start.store(true, Ordering::SeqCst);
    }

    /// How many `START_REPLICATION` commands were rewritten.
    pub fn rewrites(&self) -> u64 {
        self.state.rewrites.load(Ordering::SeqCst)
    }

    /// Drops, from now on, every byte the connections open now send in `direction`.
    pub fn cut(&self, direction: Direction) {
        let below = self.state.next_id.load(Ordering::SeqCst);
        match direction {
            Direction::ToServer => self.state.cut_to_server_below.store(below, Ordering::SeqCst),
            Direction::ToClient => self.state.cut_to_client_below.store(below, Ordering::SeqCst),
        }
    }

    /// Bytes dropped by cuts so far.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::SeqCst)
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> u64 {
        self.state.next_id.load(Ordering::SeqCst) - 1
    }
}

impl State {
    fn is_cut(&self, id: u64, direction: Direction) -> bool {
        let below = match direction {
            Direction::ToServer => &self.cut_to_server_below,
            Direction::ToClient => &self.cut_to_client_below,
        };
        id < below.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` until either end closes, dropping what a cut covers.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, id: u64, direction: Direction, state: Arc<State>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if state.is_cut(id, direction) {
            state.dropped.fetch_add(n as u64, Ordering::SeqCst);
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The client → server direction, message by message (PostgreSQL's framing: untagged startup packets, then
/// tagged messages), so that a `START_REPLICATION` query can be rewritten. Only for plaintext connections
/// (`sslmode=disable`): the test servers have no TLS.
async fn pump_to_server(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, id: u64, state: Arc<State>) {
    let mut tagged = false;
    loop {
        let mut message = Vec::new();
        if tagged {
            let Ok(tag) = from.read_u8().await else { break };
            message.push(tag);
        }
        let Ok(len) = from.read_u32().await else { break };
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        if from.read_exact(&mut body).await.is_err() {
            break;
        }
        // SSLRequest and GSSENCRequest are answered with one byte; the startup packet after them is untagged too.
        if !tagged && !matches!(body.get(..4), Some([4, 210, 22, 47] | [4, 210, 22, 48])) {
            tagged = true;
        }
        if message.first() == Some(&b'Q') && state.rewrite_start.load(Ordering::SeqCst) {
            if let Some(rewritten) = start_at_zero(&body) {
                body = rewritten;
                state.rewrites.fetch_add(1, Ordering::SeqCst);
            }
        }
        message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        message.extend_from_slice(&body);
        if state.is_cut(id, Direction::ToServer) {
            state.dropped.fetch_add(message.len() as u64, Ordering::SeqCst);
            continue;
        }
        if to.write_all(&message).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// `START_REPLICATION SLOT "s" LOGICAL 16/B374D848 (…)` → the same at `0/0`; `None` for any other query.
fn start_at_zero(query: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(query).ok()?;
    if !text.starts_with("START_REPLICATION") {
        return None;
    }
    let at = text.find(" LOGICAL ")? + " LOGICAL ".len();
    let end = at + text[at..].find([' ', '\0'])?;
    Some(format!("{}0/0{}", &text[..at], &text[end..]).into_bytes())
}
