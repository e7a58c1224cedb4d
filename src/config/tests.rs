use super::*;

const MINIMAL: &str = r#"
source:
  url: postgres://ficus:${PGPASSWORD}@127.0.0.1:5432/shop
  tables: [public.orders, 'legacy."Order Lines"']
kafka:
  brokers: 127.0.0.1:9092
  properties: {compression.type: lz4, linger.ms: 5}
changes:
  tables: ["*"]
"#;

fn env(name: &str) -> Option<String> {
    (name == "PGPASSWORD").then(|| "s3cr#t: 'x'".to_string())
}

#[test]
fn loads_minimal_config_with_defaults_and_env() {
    let c = Config::from_yaml(MINIMAL, &env).unwrap();
    assert_eq!(c.source.url, "postgres://ficus:s3cr#t: 'x'@127.0.0.1:5432/shop");
    assert_eq!(c.source.slot, "ficus");
    assert_eq!(c.changes.topic_prefix, "ficus");
    assert_eq!(c.kafka.properties["linger.ms"].to_string(), "5");
    let tables = c.captured_tables().unwrap();
    assert_eq!(tables[1], TableName { schema: "legacy".into(), name: "Order Lines".into() });
    assert!(c.publishes_changes_of(&tables[1]));
}

#[test]
fn env_defaults_apply_when_unset_or_empty() {
    let lookup = |name: &str| match name {
        "SET" => Some("x".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    assert_eq!(interpolate_env("${SET:-d}|${EMPTY:-d}|${UNSET:-5432}|${UNSET:-}", &lookup).unwrap(), "x|d|5432|");
    assert_eq!(interpolate_env("${EMPTY}", &lookup).unwrap(), "");
    assert!(interpolate_env("${UNSET}", &lookup).unwrap_err().contains("UNSET is not set"));
}

#[test]
fn tables_whose_raw_topics_collide_are_refused_naming_both() {
    let text =
        MINIMAL.replace(r#"tables: [public.orders, 'legacy."Order Lines"']"#, r#"tables: ['a."b.c"', '"a.b".c']"#);
    let err = Config::from_yaml(&text, &env).unwrap_err().to_string();
    assert!(err.contains("changes.tables") && err.contains(r#""a"."b.c""#) && err.contains(r#""a.b"."c""#), "{err}");
    assert!(err.contains("ficus.a.b.c"), "{err}");
    // Only tables published raw count: with one of them left out of changes.tables there is no collision.
    let one = text.replace(r#"tables: ["*"]"#, r#"tables: ['a."b.c"']"#);
    Config::from_yaml(&one, &env).unwrap();
}

#[test]
fn unknown_key_is_reported_with_its_path() {
    let text = MINIMAL.replace("  properties:", "  propertis:");
    let err = Config::from_yaml(&text, &env).unwrap_err().to_string();
    assert!(err.starts_with("kafka.propertis"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn missing_env_var_names_key_and_variable() {
    let err = Config::from_yaml(MINIMAL, &|_| None).unwrap_err().to_string();
    assert!(err.contains("source.url") && err.contains("PGPASSWORD"), "{err}");
}

#[test]
fn wrong_type_names_the_key() {
    let text = MINIMAL.replace("tables: [public.orders, 'legacy.\"Order Lines\"']", "tables: 5");
    let err = Config::from_yaml(&text, &env).unwrap_err().to_string();
    assert!(err.starts_with("source.tables"), "{err}");
}

#[test]
fn changes_table_must_be_captured() {
    let text = MINIMAL.replace("tables: [\"*\"]", "tables: [public.customers]");
    let err = Config::from_yaml(&text, &env).unwrap_err().to_string();
    assert!(err.starts_with("changes.tables[0]"), "{err}");
}

#[test]
fn yaml_errors_give_the_position_but_never_the_text_around_it() {
    let secret_near = MINIMAL
        .replace("  tables: [public", "  url2: postgres://ficus:pwSECRET1@h/db\n   x: [unclosed\n  tables: [public");
    let unterminated = MINIMAL.replace("url: postgres://ficus:${PGPASSWORD}@", "url: \"postgres://ficus:pwSECRET2@");
    let tab = MINIMAL.replace("  tables: [public", "\ttables: [public").replace("${PGPASSWORD}", "pwSECRET3");
    let bad_escape =
        MINIMAL.replace("url: postgres://ficus:${PGPASSWORD}@127.0.0.1:5432/shop", "url: \"pwSECRET4\\q\"");
    for text in [secret_near, unterminated, tab, bad_escape] {
        let err = Config::from_yaml(&text, &env).expect_err(&text).to_string();
        assert!(!err.contains("SECRET") && !err.contains("postgres://"), "{err}");
        assert!(err.starts_with("config is not valid YAML: line "), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn topic_names_and_listen_addresses_are_checked_at_load() {
    for (from, to, key) in [
        ("  tables: [\"*\"]", "  tables: [\"*\"]\n  topic_prefix: '..'", "changes.topic_prefix"),
        ("  tables: [\"*\"]", "  tables: [\"*\"]\n  topic_prefix: 'a/b'", "changes.topic_prefix"),
        ("  brokers: 127.0.0.1:9092", "  brokers: 127.0.0.1:9092\n  dlq_topic: '.'", "kafka.dlq_topic"),
        ("  brokers: 127.0.0.1:9092", "  brokers: 127.0.0.1:9092\n  checkpoint_topic: x y", "kafka.checkpoint_topic"),
    ] {
        let err = Config::from_yaml(&MINIMAL.replace(from, to), &env).unwrap_err().to_string();
        assert!(err.starts_with(key) && err.contains("[a-zA-Z0-9._-]"), "{err}");
    }
    assert!(!is_topic_name(&"a".repeat(250)) && is_topic_name(&"a".repeat(249)) && is_topic_name("a..b"));
    let with_listen = |l: &str| Config::from_yaml(&format!("{MINIMAL}health:\n  listen: {l}\n"), &env);
    let c = with_listen("localhost:8080").unwrap();
    let addr = c.health.listen.unwrap();
    assert!(addr.ip().is_loopback() && addr.port() == 8080, "{addr}");
    assert_eq!(with_listen("0.0.0.0:9000").unwrap().health.listen.unwrap().to_string(), "0.0.0.0:9000");
    assert_eq!(with_listen("'[::1]:9000'").unwrap().health.listen.unwrap().to_string(), "[::1]:9000");
    for bad in ["localhost", "8080", "localhost:http", "no-such-host.invalid:80"] {
        let err = with_listen(bad).unwrap_err().to_string();
        assert!(err.starts_with("health.listen: ") && err.contains("HOST:PORT"), "{bad}: {err}");
    }
}

#[test]
fn wrong_shapes_are_described_without_rust_type_names() {
    let text = MINIMAL.replace("linger.ms: 5}", "linger.ms: [5]}");
    let err = Config::from_yaml(&text, &env).unwrap_err().to_string();
    assert!(err.starts_with("kafka.properties.linger.ms") && err.contains("string, number or boolean"), "{err}");
    assert!(!err.contains("untagged") && !err.contains("Scalar"), "{err}");
    let rule = |on: &str| {
        format!("{MINIMAL}events:\n  - {{name: A, table: public.orders, on: {on}, key: string(new.id), topic: t}}\n")
    };
    for on in ["updat", "[insert, updat]"] {
        let err = Config::from_yaml(&rule(on), &env).unwrap_err().to_string();
        assert!(err.starts_with("events[0].on") && err.contains("updat") && err.contains("update"), "{err}");
        assert!(!err.contains("untagged") && !err.contains("OneOrMany"), "{err}");
    }
    Config::from_yaml(&rule("[insert, update]"), &env).unwrap();
    Config::from_yaml(&rule("delete"), &env).unwrap();
}

#[test]
fn debug_output_holds_no_secret() {
    let text = MINIMAL.replace("linger.ms: 5}", "linger.ms: 5, sasl.password: kSECRET}");
    let c = Config::from_yaml(&text, &env).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cr") && !debug.contains("kSECRET"), "{debug}");
    assert!(debug.contains("postgres://ficus:***@127.0.0.1:5432/shop") && debug.contains("sasl.password"), "{debug}");
}

#[test]
fn table_names_parse_like_sql() {
    assert_eq!(TableName::parse("Orders").unwrap(), TableName { schema: "public".into(), name: "orders".into() });
    let t = TableName::parse(r#""We""ird"."Order Lines""#).unwrap();
    assert_eq!(t.schema, "We\"ird");
    assert_eq!(t.quoted(), r#""We""ird"."Order Lines""#);
    for bad in ["", "a.b.c", "a..b", "\"open", "has space", "a.\"b\"x"] {
        assert!(TableName::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn interpolation_edge_cases() {
    let l = |n: &str| (n == "A").then(|| "1".to_string());
    assert_eq!(interpolate_env("x${A}y$$z$", &l).unwrap(), "x1y$z$");
    assert!(interpolate_env("${A", &l).is_err());
    assert!(interpolate_env("${B}", &l).is_err());
    assert!(interpolate_env("${A-B}", &l).is_err());
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, "s3cr3t\n").unwrap();
    assert_eq!(interpolate_env(&format!("u:${{file:{}}}@h", secret.display()), &l).unwrap(), "u:s3cr3t@h");
    let err = interpolate_env("${file:/nonexistent/pw}", &l).unwrap_err();
    assert!(err.contains("/nonexistent/pw"), "{err}");
}

#[test]
fn failover_slot_accepts_auto_and_booleans_and_refuses_true_before_17() {
    assert_eq!(Config::from_yaml(MINIMAL, &env).unwrap().source.failover_slot, FailoverSlot::Auto);
    for (text, want) in [("true", FailoverSlot::On), ("false", FailoverSlot::Off), ("auto", FailoverSlot::Auto)] {
        let yaml = MINIMAL.replace("  tables: [public", &format!("  failover_slot: {text}\n  tables: [public"));
        assert_eq!(Config::from_yaml(&yaml, &env).unwrap().source.failover_slot, want, "{text}");
    }
    let yaml = MINIMAL.replace("  tables: [public", "  failover_slot: sometimes\n  tables: [public");
    let e = Config::from_yaml(&yaml, &env).unwrap_err().to_string();
    assert!(e.contains("failover_slot") && e.contains("auto, true, false"), "{e}");

    assert_eq!(FailoverSlot::Auto.wanted(170_010), Ok(true));
    assert_eq!(FailoverSlot::Auto.wanted(160_014), Ok(false));
    assert_eq!(FailoverSlot::Off.wanted(180_004), Ok(false));
    assert_eq!(FailoverSlot::On.wanted(170_000), Ok(true));
    let e = FailoverSlot::On.wanted(150_018).unwrap_err();
    assert!(e.contains("PostgreSQL 17") && e.contains("15.18") && e.contains("failover_slot: auto"), "{e}");
}

#[test]
fn key_columns_errors_name_the_table_and_column() {
    let load = |changes: &str| {
        Config::from_yaml(&MINIMAL.replace("  tables: [\"*\"]\n", &format!("  tables: [\"*\"]\n{changes}")), &env)
            .map_err(|e| e.to_string())
    };
    let ok = load("  key_columns: {public.orders: [customer_id, order_no]}\n").unwrap();
    assert_eq!(ok.changes.key_columns["public.orders"], ["customer_id", "order_no"]);
    let err = load("  key_columns: {public.other: [a]}\n").unwrap_err();
    assert!(err.contains("changes.key_columns.public.other") && err.contains("source.tables"), "{err}");
    let err = load("  key_columns: {public.orders: []}\n").unwrap_err();
    assert!(err.contains("changes.key_columns.public.orders"), "{err}");
    let err = load("  key_columns: {public.orders: [a, a]}\n").unwrap_err();
    assert!(err.contains("a is listed twice"), "{err}");
    let err = load("  key_columns: {public.orders: [email]}\n  masking: {tables: {public.orders: {email: redact}}}\n")
        .unwrap_err();
    assert!(err.contains("changes.key_columns.public.orders") && err.contains("email is a key column"), "{err}");
}

#[test]
fn split_min_rows_is_zero_or_at_least_two_chunks() {
    let with = |extra: &str| Config::from_yaml(&format!("{MINIMAL}snapshot:\n{extra}"), &env);
    assert_eq!(Config::from_yaml(MINIMAL, &env).unwrap().snapshot.split_min_rows, 100_000);
    assert_eq!(with("  split_min_rows: 0\n").unwrap().snapshot.split_min_rows, 0);
    let err = with("  chunk_size: 1000\n  split_min_rows: 1500\n").unwrap_err().to_string();
    assert!(
        err.contains("snapshot.split_min_rows") && err.contains("at least twice snapshot.chunk_size (2000)"),
        "{err}"
    );
}
