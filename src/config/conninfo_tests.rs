use super::*;

#[test]
fn full_url() {
    let info = ConnInfo::parse(
        "postgres://ficus:s%40cr%3At@db.example.com:6543/shop?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=cdc&connect_timeout=3",
    )
    .unwrap();
    assert_eq!(info.host, "db.example.com");
    assert_eq!(info.port, 6543);
    assert_eq!(info.user, "ficus");
    assert_eq!(info.password.as_ref().unwrap().expose(), "s@cr:t");
    assert_eq!(info.dbname, "shop");
    assert_eq!(info.sslmode, SslMode::VerifyFull);
    assert_eq!(info.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(info.application_name, "cdc");
    assert_eq!(info.connect_timeout, Duration::from_secs(3));
    assert_eq!(info.target(), "db.example.com:6543");
}

#[test]
fn defaults() {
    let info = ConnInfo::parse("postgresql://alice@localhost").unwrap();
    assert_eq!(info.port, 5432);
    assert_eq!(info.password, None);
    assert_eq!(info.dbname, "alice");
    assert_eq!(info.sslmode, SslMode::Prefer);
    assert_eq!(info.application_name, "ficus");
    assert_eq!(info.connect_timeout, Duration::from_secs(10));
    assert!(info.uses_tls());
    let info = ConnInfo::parse("postgres://alice@/db").unwrap();
    assert_eq!(info.host, "localhost");
}

#[test]
fn a_port_given_twice_is_refused_naming_the_host() {
    let err = ConnInfo::parse("postgres://ficus@db:5433:5432/shop").unwrap_err().to_string();
    assert!(err.contains("\"db:5433\"") && err.contains("port appears twice"), "{err}");
    assert!(ConnInfo::parse("postgres://ficus@[::1]:5432/shop").is_ok());
}

#[test]
fn ipv6_and_unix_socket() {
    let info = ConnInfo::parse("postgres://u@[::1]:5433/d").unwrap();
    assert_eq!((info.host.as_str(), info.port), ("::1", 5433));
    assert_eq!(info.target(), "[::1]:5433");
    assert!(info.redacted().contains("@[::1]:5433/d"), "{}", info.redacted());

    let info = ConnInfo::parse("postgres://u@:5499/d?host=%2Ftmp%2Fpg&sslmode=require").unwrap();
    assert!(info.is_unix_socket());
    assert!(!info.uses_tls());
    assert_eq!(info.unix_socket_path(), Some(PathBuf::from("/tmp/pg/.s.PGSQL.5499")));
    let again = ConnInfo::parse(&info.redacted()).unwrap();
    assert_eq!((again.host, again.port), (info.host, info.port));
}

#[test]
fn password_is_never_printed() {
    let info = ConnInfo::parse("postgres://ficus:hunter2@h/db?sslmode=disable").unwrap();
    let debug = format!("{info:?}");
    assert!(!debug.contains("hunter2") && debug.contains("***"), "{debug}");
    assert_eq!(info.redacted(), "postgres://ficus:***@h:5432/db?sslmode=disable");
    assert_eq!(info.password.as_ref().unwrap().to_string(), "***");
    let no_pw = ConnInfo::parse("postgres://ficus@h/db").unwrap();
    assert_eq!(no_pw.redacted(), "postgres://ficus@h:5432/db?sslmode=prefer");
    // A malformed password escape is reported without echoing the password.
    let e = ConnInfo::parse("postgres://ficus:hunt%zzer2@h/db").unwrap_err().to_string();
    assert!(e.contains("password") && !e.contains("hunt"), "{e}");
}

#[test]
fn errors_never_quote_the_user_information_whatever_it_contains() {
    // Unencoded delimiters in the password split it into "port", "database" or "parameter" values; none of
    // them may be quoted, and the message says how to encode.
    for url in [
        "postgres://ficus:aSECRET1/bSECRET2@db:5432/shop",
        "postgres://ficus:cSECRET3?dSECRET4@db:5432/shop",
        "postgres://ficus:SECRET5/x@y@db/shop",
        "postgres://ficus:fSECRET6/?@#gSECRET7:hSECRET8%zz@db/shop?sslmode=disable",
        "postgres://ficus:1234/SECRET9@db",
        "postgresql://SECRET10:x/y@db/shop",
    ] {
        let e = ConnInfo::parse(url).expect_err(url).to_string();
        assert!(!e.contains("SECRET"), "{url}: {e}");
        assert!(e.contains("%2F") && e.contains("not shown"), "{url}: {e}");
    }
    // A password parameter with an unencoded '&'.
    let e = ConnInfo::parse("postgres://u@h/d?password=iSECRET9&jSECRET10&sslmode=disable").unwrap_err().to_string();
    assert!(!e.contains("SECRET") && e.contains("%26"), "{e}");
    // Problems after the user information are still reported precisely, with the user information hidden.
    let e = ConnInfo::parse("postgres://u:pSECRET/x@h:99999/d").unwrap_err().to_string();
    assert!(e.contains("port \"99999\"") && !e.contains("SECRET"), "{e}");
    let e = ConnInfo::parse("postgres://u:pSECRET@h/d?sslmod=require").unwrap_err().to_string();
    assert!(e.contains("\"sslmod\" is not supported") && !e.contains("SECRET"), "{e}");
    // Encoded, the same passwords parse.
    let info = ConnInfo::parse("postgres://ficus:a%2Fb%3Fc%40d%23e%3Af%25g%26h@db/shop").unwrap();
    assert_eq!(info.password.unwrap().expose(), "a/b?c@d#e:f%g&h");
    assert_eq!((info.host.as_str(), info.dbname.as_str()), ("db", "shop"));
    // '@' and '#' need no encoding when the rest is plain (the last '@' of the authority ends the password).
    let info = ConnInfo::parse("postgres://ficus:p@ss#w@db/shop").unwrap();
    assert_eq!(info.password.unwrap().expose(), "p@ss#w");
}

#[test]
fn query_parameters_override() {
    let info = ConnInfo::parse("postgres://h/?user=bob&password=p%26w&dbname=x%20y&port=7000&host=10.1.2.3").unwrap();
    assert_eq!(info.user, "bob");
    assert_eq!(info.password.unwrap().expose(), "p&w");
    assert_eq!(info.dbname, "x y");
    assert_eq!((info.host.as_str(), info.port), ("10.1.2.3", 7000));
}

#[test]
fn bad_urls_say_what_to_fix() {
    let cases = [
        ("mysql://u@h/db", "postgres://"),
        ("postgres://h/db", "no user name"),
        ("postgres://u@h:99999/db", "port \"99999\""),
        ("postgres://u@h:0/db", "1 to 65535"),
        ("postgres://u@h:x/db", "port \"x\""),
        ("postgres://u@h1,h2/db?port=1,2,3", "3 ports for 2 hosts"),
        ("postgres://u@h1,h2/db?target_session_attrs=standby", "any, read-write, primary"),
        ("postgres://u@h1:1,h2:x/db", "port \"x\""),
        ("postgres://u@h/db?sslmode=verify", "sslmode=\"verify\""),
        ("postgres://u@h/db?sslmode=verify", "verify-full"),
        ("postgres://u@h/db?sslmod=require", "\"sslmod\" is not supported"),
        ("postgres://u@h/db?sslmode", "has no value"),
        ("postgres://u@h/db?connect_timeout=soon", "connect_timeout"),
        ("postgres://u@h/a/b", "'/'"),
        ("postgres://u@h/d%4", "database name"),
        ("postgres://u@h/d%ff", "UTF-8"),
        ("postgres://u@[::1/d", "']'"),
    ];
    for (url, needle) in cases {
        let e = ConnInfo::parse(url).expect_err(url).to_string();
        assert!(e.contains(needle), "{url}: {e:?} should mention {needle:?}");
    }
}

#[test]
fn sslmode_from_str() {
    for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
        assert_eq!(mode.as_str().parse::<SslMode>().unwrap(), mode);
    }
    let e = "allow".parse::<SslMode>().unwrap_err().to_string();
    assert!(e.contains("sslmode") && e.contains("verify-ca"), "{e}");
}

#[test]
fn tokio_postgres_config_maps_modes() {
    use tokio_postgres::config::SslMode as T;
    let c =
        ConnInfo::parse("postgres://u:p@h:1/d?sslmode=verify-ca&connect_timeout=0").unwrap().tokio_postgres_config();
    assert_eq!(c.get_ssl_mode(), T::Require);
    assert_eq!(c.get_connect_timeout(), None);
    assert_eq!(c.get_password(), Some(&b"p"[..]));
    let c = ConnInfo::parse("postgres://u@h/d?sslmode=disable").unwrap().tokio_postgres_config();
    assert_eq!(c.get_ssl_mode(), T::Disable);
    let c = ConnInfo::parse("postgres://u@h/d?host=/run/pg&sslmode=require").unwrap().tokio_postgres_config();
    assert_eq!(c.get_ssl_mode(), T::Disable);
}

#[test]
fn several_hosts_in_libpq_syntax() {
    let info =
        ConnInfo::parse("postgres://ficus:pSECRET@db1:5433,db2,[::1]:7/shop?target_session_attrs=read-write").unwrap();
    assert_eq!(info.hosts, vec![("db1".into(), 5433), ("db2".into(), 5432), ("::1".into(), 7)]);
    assert_eq!((info.host.as_str(), info.port), ("db1", 5433));
    assert_eq!(info.target_session_attrs, TargetSessionAttrs::ReadWrite);
    assert!(info.is_multi_host());
    let candidates = info.candidates();
    assert_eq!(candidates.len(), 3);
    assert_eq!((candidates[1].host.as_str(), candidates[1].port, candidates[1].hosts.len()), ("db2", 5432, 1));
    assert_eq!(candidates[2].target(), "[::1]:7");
    assert_eq!(info.target(), "db1:5433,db2:5432,[::1]:7");
    // Redaction covers every host and keeps them all; it parses back to the same targets.
    let redacted = info.redacted();
    assert!(!redacted.contains("pSECRET"), "{redacted}");
    assert!(redacted.contains("db1:5433,db2:5432,[::1]:7/shop"), "{redacted}");
    assert!(redacted.contains("target_session_attrs=read-write"), "{redacted}");
    let again = ConnInfo::parse(&redacted).unwrap();
    assert_eq!((again.hosts, again.target_session_attrs), (info.hosts.clone(), info.target_session_attrs));
    assert!(!format!("{info:?}").contains("pSECRET"));

    // `?host=a,b&port=p` (one port for all) and `port=p1,p2` (one per host).
    let info = ConnInfo::parse("postgres://u@/d?host=a,b&port=6000").unwrap();
    assert_eq!(info.hosts, vec![("a".into(), 6000), ("b".into(), 6000)]);
    let info = ConnInfo::parse("postgres://u@/d?host=a,b&port=6000,6001&target_session_attrs=primary").unwrap();
    assert_eq!(info.hosts, vec![("a".into(), 6000), ("b".into(), 6001)]);
    assert_eq!(info.target_session_attrs, TargetSessionAttrs::Primary);
    // One host: as before, no session check.
    let info = ConnInfo::parse("postgres://u@h/d").unwrap();
    assert!(!info.is_multi_host());
    assert_eq!(info.candidates(), vec![info.clone()]);
    // Errors of a multi-host URL never show the password either.
    let e = ConnInfo::parse("postgres://u:pSECRET/x@h1,h2:99999/d").unwrap_err().to_string();
    assert!(!e.contains("SECRET"), "{e}");
}

#[test]
fn session_attrs_read_the_probe() {
    assert_eq!(TargetSessionAttrs::ReadWrite.probe(), Some("SHOW transaction_read_only"));
    assert!(TargetSessionAttrs::ReadWrite.refusal("on").unwrap().contains("read-only"));
    assert_eq!(TargetSessionAttrs::ReadWrite.refusal("off"), None);
    assert!(TargetSessionAttrs::Primary.refusal("t").unwrap().contains("standby"));
    assert_eq!(TargetSessionAttrs::Primary.refusal("f"), None);
    assert_eq!(TargetSessionAttrs::Any.probe(), None);
}
