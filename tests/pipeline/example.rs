//! The example as a newcomer runs it (config/shop.yaml on docker/postgres/init.sql, driven by docker/workload.sh, as
//! scripts/demo.sh and docker/compose.yaml run them): a clean start warns about nothing in the tables, rows that
//! existed before ficus become business events, and the workload produces every order event the rules define.

use std::collections::BTreeSet;
use std::process::Command;

use crate::{check, values, Ficus, Setup, WAIT};

/// config/shop.yaml pointed at this test's database, broker, slot and topics; everything else as shipped.
pub(crate) fn example_config(s: &Setup, port: u16) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(format!("{root}/config/shop.yaml")).unwrap();
    let cfg = example
        .replace(
            "postgres://ficus:${PGPASSWORD}@${FICUS_PG_HOST}:${FICUS_PG_PORT:-5432}/shop?sslmode=prefer",
            &s.pg.superuser_url(&s.db),
        )
        .replace("${FICUS_KAFKA}", &s.kafka.brokers())
        .replace("slot: ficus", &format!("slot: {}", s.prefix))
        .replace("publication: ficus", &format!("publication: {}", s.prefix))
        .replace("shop.", &format!("{}.", s.prefix))
        .replace("topic_prefix: ficus", &format!("topic_prefix: {}", s.prefix))
        .replace("./ficus-state", "STATE")
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{port}"));
    assert!(!cfg.contains("${"), "{cfg}");
    cfg
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_starts_clean_and_its_workload_produces_every_order_event() {
    let root = env!("CARGO_MANIFEST_DIR");
    let init = std::fs::read_to_string(format!("{root}/docker/postgres/init.sql")).unwrap();
    let s = Setup::new("example_workload", &init).await;
    // A row that exists before ficus starts.
    s.sql("INSERT INTO customers (eml, nm) VALUES ('early@example.com', 'Early'); INSERT INTO orders (cust_id, amt_cents) VALUES (1, 100);")
        .await;
    let port = crate::support::free_port();
    let cfg = example_config(&s, port);

    // A clean start warns about no table (the example's tables have complete before images).
    let (code, report) = check(&cfg);
    assert_eq!(code, 0, "{report}");
    assert!(!report.contains("REPLICA IDENTITY DEFAULT"), "{report}");
    let mut f = Ficus::start(&cfg);
    f.wait_health_listening(port, 0);
    f.wait_for_log_count("snapshot of table finished", 3, WAIT);
    assert!(!f.log().contains("REPLICA IDENTITY"), "{}", f.log());

    // The workload as the demo and compose run it, for 15 rounds without pauses.
    let out = Command::new("bash")
        .arg(format!("{root}/docker/workload.sh"))
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", s.pg.port().to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", &s.db)
        .env("WORKLOAD_ROUNDS", "15")
        .env("WORKLOAD_PAUSE", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let orders = values(&s.read_all_confirmed(&f, &format!("{}.orders", s.prefix)).await);
    let types: BTreeSet<&str> = orders.iter().map(|e| e["eventType"].as_str().unwrap()).collect();
    assert_eq!(types, BTreeSet::from(["OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled"]), "{}", f.log());
    // The order that existed before ficus came from the initial snapshot (op read) as an OrderPlaced.
    assert_eq!(orders[0]["eventType"], "OrderPlaced");
    assert_eq!(orders[0]["source"]["op"], "read", "{:#}", orders[0]);
    assert_eq!(orders[0]["data"]["orderId"], 1);
    let customers = values(&s.read_all_confirmed(&f, &format!("{}.customers", s.prefix)).await);
    let types: BTreeSet<&str> = customers.iter().map(|e| e["eventType"].as_str().unwrap()).collect();
    assert_eq!(types, BTreeSet::from(["CustomerRegistered", "CustomerEmailChanged"]));
    assert_eq!(customers[0]["source"]["op"], "read");
    assert_eq!(f.terminate().code(), Some(0), "{}", f.log());
}
