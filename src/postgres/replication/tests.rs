//! Replication client tests against a scripted fake server (a real PostgreSQL is exercised by hand; see the
//! `#[ignore]`d test at the end).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

#[test]
fn quoting() {
    assert_eq!(quote_ident("ficus"), "\"ficus\"");
    assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    assert_eq!(quote_ident(""), "\"\"");
    assert_eq!(quote_literal("it's"), "'it''s'");
    assert_eq!(quote_literal("a\\b"), "'a\\b'");
    assert_eq!(quote_literal("\"ficus\""), "'\"ficus\"'");
}

#[test]
fn start_replication_command() {
    let sql = start_replication_sql(
        "ficus",
        Lsn(0x16_B374_D848),
        &[("proto_version", "1"), ("publication_names", "\"ficus\""), ("messages", "true")],
    );
    assert_eq!(
        sql,
        "START_REPLICATION SLOT \"ficus\" LOGICAL 16/B374D848 (\"proto_version\" '1', \"publication_names\" '\"ficus\"', \"messages\" 'true')"
    );
    assert_eq!(start_replication_sql("s", Lsn(0), &[]), "START_REPLICATION SLOT \"s\" LOGICAL 0/0");
}

// ---- a scripted fake server ------------------------------------------------------------------------------------

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    msg(b'R', &body)
}

fn error(code: &str, message: &str) -> Vec<u8> {
    let body = format!("SERROR\0VERROR\0C{code}\0M{message}\0Hcheck it\0\0");
    msg(b'E', body.as_bytes())
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let mut body = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        match v {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(s) => {
                body.extend_from_slice(&(s.len() as i32).to_be_bytes());
                body.extend_from_slice(s.as_bytes());
            }
        }
    }
    msg(b'D', &body)
}

fn copy_data(payload: &[u8]) -> Vec<u8> {
    msg(b'd', payload)
}

/// Reads an untagged startup-phase packet (SSLRequest or StartupMessage).
async fn read_untagged(s: &mut TcpStream) -> Vec<u8> {
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    body
}

async fn read_tagged(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.unwrap();
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// Answers the startup: `N` to an SSLRequest, then `auth_script` (which may read the client's messages).
async fn fake_server<F, Fut>(script: F) -> (ConnInfo, tokio::task::JoinHandle<()>)
where
    F: FnOnce(TcpStream, Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut startup = read_untagged(&mut s).await;
        if startup == 80_877_103u32.to_be_bytes() {
            s.write_all(b"N").await.unwrap();
            startup = read_untagged(&mut s).await;
        }
        script(s, startup).await;
    });
    let info = ConnInfo::parse(&format!("postgres://alice:secret@127.0.0.1:{port}/shop?connect_timeout=5")).unwrap();
    (info, handle)
}

#[tokio::test]
async fn startup_sends_replication_and_session_settings_then_md5() {
    let (info, server) = fake_server(|mut s, startup| async move {
        let text = String::from_utf8_lossy(&startup).to_string();
        for needle in [
            "user\0alice\0",
            "database\0shop\0",
            "replication\0database\0",
            "application_name\0ficus\0",
            "DateStyle\0ISO, MDY\0",
            "TimeZone\0UTC\0",
            "IntervalStyle\0iso_8601\0",
            "extra_float_digits\0\x33\0",
            "bytea_output\0hex\0",
            "client_encoding\0UTF8\0",
            "lc_monetary\0C\0",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text:?}");
        }
        s.write_all(&auth(5, &[1, 2, 3, 4])).await.unwrap();
        let (tag, body) = read_tagged(&mut s).await;
        let expected = postgres_protocol::authentication::md5_hash(b"alice", b"secret", [1, 2, 3, 4]);
        assert_eq!((tag, body), (b'p', format!("{expected}\0").into_bytes()));
        let mut out = auth(0, &[]);
        out.extend(msg(b'S', b"server_version\0\x315.6\0"));
        out.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        // IDENTIFY_SYSTEM
        let (tag, body) = read_tagged(&mut s).await;
        assert_eq!((tag, body), (b'Q', b"IDENTIFY_SYSTEM\0".to_vec()));
        let mut out = msg(b'T', &[0, 4]); // the client ignores the field list
        out.extend(data_row(&[Some("7300000000000000001"), Some("1"), Some("0/1A2B3C4"), Some("shop")]));
        out.extend(msg(b'C', b"IDENTIFY_SYSTEM\0"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
    })
    .await;
    let mut conn = ReplicationConnection::connect(&info).await.unwrap();
    assert_eq!(conn.parameter("server_version"), Some("15.6"));
    assert!(!conn.is_tls());
    let id = conn.identify_system().await.unwrap();
    assert_eq!(id.systemid, "7300000000000000001");
    assert_eq!((id.timeline, id.xlogpos, id.dbname.as_deref()), (1, Lsn(0x1A2B3C4), Some("shop")));
    server.await.unwrap();
}

#[tokio::test]
async fn missing_password_is_a_clear_auth_error() {
    let (mut info, server) = fake_server(|mut s, _| async move {
        s.write_all(&auth(10, b"SCRAM-SHA-256\0\0")).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    info.password = None;
    let e = ReplicationConnection::connect(&info).await.err().unwrap();
    assert!(matches!(e, ReplicationError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("PASSWORD") && !e.is_transient(), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn server_errors_keep_sqlstate_and_hint() {
    let (info, server) = fake_server(|mut s, _| async move {
        s.write_all(&error("28P01", "password authentication failed for user \"alice\"")).await.unwrap();
    })
    .await;
    let e = ReplicationConnection::connect(&info).await.err().unwrap();
    assert_eq!(e.sqlstate(), Some("28P01"));
    let text = e.to_string();
    assert!(text.contains("28P01") && text.contains("password authentication failed") && text.contains("check it"));
    assert!(!text.contains("secret"));
    server.await.unwrap();
}

#[tokio::test]
async fn require_refuses_plaintext() {
    let (mut info, server) = fake_server(|_, _| async move {}).await;
    info.sslmode = crate::config::conninfo::SslMode::Require;
    let e = ReplicationConnection::connect(&info).await.err().unwrap();
    assert!(matches!(e, ReplicationError::Tls(crate::postgres::tls::TlsError::NotSupportedByServer { .. })), "{e:?}");
    server.abort();
}

#[tokio::test]
async fn connect_is_bounded_by_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let info = ConnInfo::parse(&format!("postgres://a@127.0.0.1:{port}/d?sslmode=disable&connect_timeout=1")).unwrap();
    let started = std::time::Instant::now();
    let e = ReplicationConnection::connect(&info).await.err().unwrap();
    assert!(matches!(e, ReplicationError::Timeout(_)) && e.is_transient(), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(listener);
}

/// Streams XLogData and keepalives trickling in byte by byte while `next()` is cancelled over and over.
#[tokio::test]
async fn stream_is_cancel_safe_and_finishes_politely() {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..20u64 {
        let mut w = vec![b'w'];
        w.extend_from_slice(&(100 + i).to_be_bytes());
        w.extend_from_slice(&(200 + i).to_be_bytes());
        w.extend_from_slice(&(i as i64).to_be_bytes());
        w.extend_from_slice(format!("payload {i}").as_bytes());
        wire.extend(copy_data(&w));
        expected.push(ReplicationMessage::XLogData {
            wal_start: Lsn(100 + i),
            wal_end: Lsn(200 + i),
            send_time_us: i as i64,
            data: bytes::Bytes::from(format!("payload {i}")),
        });
        let mut k = vec![b'k'];
        k.extend_from_slice(&(300 + i).to_be_bytes());
        k.extend_from_slice(&7i64.to_be_bytes());
        k.push((i % 2) as u8);
        wire.extend(copy_data(&k));
        expected.push(ReplicationMessage::KeepAlive {
            wal_end: Lsn(300 + i),
            send_time_us: 7,
            reply_requested: i % 2 == 1,
        });
    }
    wire.extend(msg(b'N', b"SNOTICE\0Mjust saying\0\0"));
    wire.extend(msg(b'c', b""));

    let (info, server) = fake_server(move |mut s, _| async move {
        let mut out = auth(0, &[]);
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        let (tag, body) = read_tagged(&mut s).await;
        assert_eq!(tag, b'Q');
        let sql = String::from_utf8(body).unwrap();
        assert!(sql.starts_with("START_REPLICATION SLOT \"ficus\" LOGICAL 0/10 (\"proto_version\" '1'"), "{sql}");
        s.write_all(&msg(b'W', &[0, 0, 0])).await.unwrap();
        for chunk in wire.chunks(7) {
            s.write_all(chunk).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The status update the client sends after the stream ended.
        let (tag, body) = read_tagged(&mut s).await;
        assert_eq!((tag, body.len(), body[0]), (b'd', 34, b'r'));
        assert_eq!(&body[9..17], &0x42u64.to_be_bytes());
        // finish(): CopyDone, the server ends the command, then Terminate.
        assert_eq!(read_tagged(&mut s).await, (b'c', vec![]));
        let mut out = msg(b'C', b"START_REPLICATION\0");
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        assert_eq!(read_tagged(&mut s).await.0, b'X');
    })
    .await;
    let conn = ReplicationConnection::connect(&info).await.unwrap();
    let mut stream = conn.start_logical_replication("ficus", Lsn(0x10), &[("proto_version", "1")]).await.unwrap();
    let mut got = Vec::new();
    let mut cancelled = 0;
    loop {
        tokio::select! {
            m = stream.next() => match m.unwrap() {
                Some(m) => got.push(m),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_micros(100)) => cancelled += 1,
        }
    }
    assert_eq!(got, expected);
    assert!(cancelled > 0, "the test should have cancelled next() at least once");
    assert_eq!(stream.next().await.unwrap(), None);
    stream.send_status(Lsn(0x42), Lsn(0x42), Lsn(0x42), false).await.unwrap();
    stream.finish().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn start_replication_error_carries_sqlstate() {
    let (info, server) = fake_server(|mut s, _| async move {
        let mut out = auth(0, &[]);
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        let _ = read_tagged(&mut s).await;
        let mut out = error("55006", "replication slot \"ficus\" is active for PID 42");
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        let (tag, _) = read_tagged(&mut s).await;
        assert_eq!(tag, b'X');
    })
    .await;
    let conn = ReplicationConnection::connect(&info).await.unwrap();
    let e = conn.start_logical_replication("ficus", Lsn(0), &[]).await.err().unwrap();
    assert_eq!(e.sqlstate(), Some("55006"));
    assert!(e.is_transient());
    server.await.unwrap();
}

#[tokio::test]
async fn stream_errors_and_garbage() {
    let (info, server) = fake_server(|mut s, _| async move {
        let mut out = auth(0, &[]);
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        let _ = read_tagged(&mut s).await;
        let mut out = msg(b'W', &[0, 0, 0]);
        out.extend(copy_data(b"w\0\0")); // truncated XLogData
        s.write_all(&out).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let conn = ReplicationConnection::connect(&info).await.unwrap();
    let mut stream = conn.start_logical_replication("s", Lsn(0), &[]).await.unwrap();
    let e = stream.next().await.unwrap_err();
    assert!(matches!(e, ReplicationError::Protocol(_)), "{e:?}");
    drop(stream);
    server.await.unwrap();
}

/// By hand against a real server (needs `wal_level=logical` and a role with REPLICATION that may create a
/// publication): `FICUS_TEST_REPLICATION_URL=postgres://... cargo test --lib -- --ignored real_server`.
#[tokio::test]
#[ignore]
async fn real_server() {
    let url = std::env::var("FICUS_TEST_REPLICATION_URL").expect("FICUS_TEST_REPLICATION_URL");
    let _ = tracing_subscriber::fmt().with_env_filter("ficus=debug").with_test_writer().try_init();
    let info = ConnInfo::parse(&url).unwrap();
    let (client, control) = info.connect_control().await.unwrap();
    let _ = client.batch_execute("CREATE PUBLICATION ficus_smoke").await;

    let mut conn = ReplicationConnection::connect(&info).await.unwrap();
    eprintln!("tls={} server_version={:?}", conn.is_tls(), conn.parameter("server_version"));
    let id = conn.identify_system().await.unwrap();
    eprintln!("{id:?}");
    assert_eq!(id.dbname.as_deref(), Some(info.dbname.as_str()));
    let rows = conn.simple_query("SHOW TimeZone").await.unwrap();
    assert_eq!(rows, vec![vec![Some("UTC".to_string())]]);
    let e = conn.simple_query("SELECT * FROM no_such_table").await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42P01"), "{e}");

    let slot = format!("ficus_smoke_{}", std::process::id());
    let created = conn.create_logical_slot(&slot, true).await.unwrap();
    eprintln!("{created:?}");
    client.batch_execute("SELECT pg_logical_emit_message(true, 'ficus', 'hello')").await.unwrap();

    let options = [("proto_version", "1"), ("publication_names", "\"ficus_smoke\""), ("messages", "true")];
    let mut stream = conn.start_logical_replication(&slot, created.consistent_point, &options).await.unwrap();
    let mut kinds = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(m) = tokio::time::timeout_at(deadline, stream.next()).await {
        match m.unwrap() {
            Some(ReplicationMessage::XLogData { wal_start, data, .. }) => {
                eprintln!("XLogData at {wal_start}: {:?}", String::from_utf8_lossy(&data));
                kinds.push(data.first().copied().unwrap_or(0));
            }
            Some(ReplicationMessage::KeepAlive { wal_end, reply_requested, .. }) => {
                eprintln!("keepalive {wal_end} reply={reply_requested}");
                stream.send_status(wal_end, wal_end, wal_end, false).await.unwrap();
            }
            None => panic!("the server ended the stream"),
        }
    }
    assert_eq!(kinds, vec![b'B', b'M', b'C'], "Begin, logical Message, Commit");

    // A second consumer of an active slot is refused with 55006, which is transient.
    let other = ReplicationConnection::connect(&info).await.unwrap();
    let e = other.start_logical_replication(&slot, Lsn(0), &options).await.err().unwrap();
    assert_eq!(e.sqlstate(), Some("55006"), "{e}");
    assert!(e.is_transient());
    stream.finish().await.unwrap();

    // The temporary slot went away with its connection: 42704, definite.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = ReplicationConnection::connect(&info).await.unwrap();
    let e = other.start_logical_replication(&slot, Lsn(0), &options).await.err().unwrap();
    assert_eq!(e.sqlstate(), Some("42704"), "{e}");
    assert!(!e.is_transient());
    drop(client);
    control.abort();
}
