//! The control connection: an ordinary SQL session (tokio-postgres) next to the replication stream.
//!
//! It runs the preflight checks (each with an actionable fix), creates the publication and the slot when they are
//! missing, and reads the catalog facts the decoder needs (primary-key columns, replica identity).
//!
//! **Guarantees:** every identifier that reaches SQL is either a bind parameter or quoted with
//! [`quote_ident`]; the preflight never changes the database (only [`ensure_publication`] and [`ensure_slot`] do,
//! and only by creating what is missing or adding configured tables to the publication — never dropping).

use std::collections::HashMap;
use std::fmt;

use tokio_postgres::Client;

use crate::config::Config;
use crate::ident::{quote_ident, TableName};
use crate::lsn::Lsn;

/// A control-connection failure.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The server's message, SQLSTATE, detail and hint are part of the text: "db error" alone says nothing.
    #[error("{context}: {}", crate::postgres::connect::describe(.source))]
    Sql {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ControlError {
    /// The connection broke (server restart, network, terminated backend): reconnecting may help.
    pub fn is_transient(&self) -> bool {
        match self {
            ControlError::Sql { source, .. } => {
                source.is_closed()
                    || source.as_db_error().map_or(source.code().is_none(), |db| {
                        let code = db.code().code();
                        code.starts_with("08") || code.starts_with("57P0") || code == "53300"
                    })
            }
            ControlError::Invalid(_) => false,
        }
    }
}

fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ControlError {
    let context = context.into();
    move |source| ControlError::Sql { context, source }
}

/// Severity of one preflight line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the preflight report.
#[derive(Debug, Clone)]
pub struct CheckItem {
    pub status: Status,
    pub title: String,
    pub detail: String,
    /// Exact SQL or config change that fixes the problem.
    pub fix: Option<String>,
}

/// The preflight report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub items: Vec<CheckItem>,
}

impl Report {
    fn push(&mut self, status: Status, title: impl Into<String>, detail: impl Into<String>, fix: Option<String>) {
        self.items.push(CheckItem { status, title: title.into(), detail: detail.into(), fix });
    }

    /// Whether any check blocks streaming.
    pub fn is_blocking(&self) -> bool {
        self.items.iter().any(|i| i.status == Status::Fail)
    }

    /// The failing lines, for an error message.
    pub fn failures(&self) -> Vec<&CheckItem> {
        self.items.iter().filter(|i| i.status == Status::Fail).collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            let mark = match item.status {
                Status::Ok => "✓",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            write!(f, "{mark} {}", item.title)?;
            if !item.detail.is_empty() {
                write!(f, ": {}", item.detail)?;
            }
            writeln!(f)?;
            if let Some(fix) = &item.fix {
                for line in fix.lines() {
                    writeln!(f, "    fix: {line}")?;
                }
            }
        }
        Ok(())
    }
}

/// Catalog facts about one captured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub oid: u32,
    /// `pg_class.relreplident`.
    pub replica_identity: u8,
    /// The event key: the replica-identity index columns under `REPLICA IDENTITY USING INDEX` (the only columns a
    /// delete carries), else the primary-key columns in key order, else empty. The stream and the snapshot use the
    /// same key, so snapshot windows compare like with like.
    pub key_columns: Vec<String>,
    pub has_primary_key: bool,
    /// Every live column: name, type OID, and the type as SQL writes it (for messages).
    pub columns: Vec<ColumnType>,
}

/// A column's type as the catalog states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    pub name: String,
    pub type_oid: u32,
    pub type_name: String,
    /// `NOT NULL`.
    pub not_null: bool,
}

/// Catalog facts for every captured table that exists.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: HashMap<TableName, TableInfo>,
}

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<Lsn>,
    pub wal_status: Option<String>,
}

/// Reads the slot, if it exists.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, ControlError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text, wal_status \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("reading pg_replication_slots"))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        active_pid: r.get(2),
        confirmed_flush: r.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
        wal_status: r.get(4),
    }))
}

async fn setting(client: &Client, name: &str) -> Result<String, ControlError> {
    let row = client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(sql(format!("reading setting {name}")))?;
    Ok(row.get(0))
}

/// Reads catalog facts of one table; `None` if it does not exist.
pub async fn table_info(client: &Client, table: &TableName) -> Result<Option<TableInfo>, ControlError> {
    let row = client
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(sql(format!("looking up table {table}")))?;
    match row {
        None => Ok(None),
        Some(row) => table_info_by_oid(client, row.get(0)).await.map(|found| found.map(|(_, info)| info)),
    }
}

/// Reads catalog facts of the table with `oid` (as it is named now); `None` if it does not exist. The source calls
/// it when a Relation message announces a changed table.
pub async fn table_info_by_oid(client: &Client, oid: u32) -> Result<Option<(TableName, TableInfo)>, ControlError> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .map_err(sql(format!("looking up the table with OID {oid}")))?;
    let Some(row) = row else { return Ok(None) };
    let table = TableName { schema: row.get(0), name: row.get(1) };
    let ident: String = row.get(2);
    let kind: String = row.get(3);
    if kind != "r" && kind != "p" {
        return Err(ControlError::Invalid(format!(
            "{table} is not a table (relkind {kind}); only ordinary and partitioned tables can be captured"
        )));
    }
    let replica_identity = ident.as_bytes().first().copied().unwrap_or(b'd');
    let keys = client
        .query(
            "SELECT a.attname::text, i.indisprimary FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident) \
             ORDER BY i.indisprimary DESC, k.ord",
            &[&oid],
        )
        .await
        .map_err(sql(format!("reading the key of {table}")))?;
    let has_primary_key = keys.iter().any(|r| r.get::<_, bool>(1));
    let columns_of = |primary: bool| -> Vec<String> {
        keys.iter().filter(|r| r.get::<_, bool>(1) == primary).map(|r| r.get::<_, String>(0)).collect()
    };
    // Under USING INDEX a delete carries only the index columns, so they are the key of every event of the table;
    // otherwise the primary key (FULL and DEFAULT). A table can have both a primary key and a different identity
    // index: a primary-key index that is also the identity index is listed once, as primary.
    let identity_index = columns_of(false);
    // (An identity index that is the primary key shows up as primary: `columns_of(true)` then covers both.)
    let key_columns =
        if replica_identity == b'i' && !identity_index.is_empty() { identity_index } else { columns_of(true) };
    let columns = client
        .query(
            "SELECT attname::text, atttypid, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(sql(format!("reading the columns of {table}")))?
        .iter()
        .map(|r| ColumnType { name: r.get(0), type_oid: r.get(1), type_name: r.get(2), not_null: r.get(3) })
        .collect();
    Ok(Some((table, TableInfo { oid, replica_identity, key_columns, has_primary_key, columns })))
}

/// The OID whose mapping applies to values of each of `types` (see [`crate::postgres::value::maps_by_oid`]): a domain
/// maps as its base type (recursively), an array whose delimiter is `,` as the builtin array of its (domain-resolved)
/// element type when there is one, else as `text[]` (a JSON array of strings: enum[], inet[], money[], range[],
/// composite[] …), an array with another delimiter (box[]) as one string; every other type as itself (a string).
/// Types that map by OID alone are not looked up.
pub async fn value_types(client: &Client, types: &[u32]) -> Result<HashMap<u32, u32>, ControlError> {
    use crate::postgres::value::{array_type_of, maps_by_oid, oid, TEXT_ARRAY};
    let mut out: HashMap<u32, u32> = types.iter().filter(|t| maps_by_oid(**t)).map(|t| (*t, *t)).collect();
    let unknown: Vec<u32> = types.iter().copied().filter(|t| !maps_by_oid(*t)).collect();
    if unknown.is_empty() {
        return Ok(out);
    }
    let resolved = resolve_domains(client, &unknown).await?;
    let elements: Vec<u32> = resolved.values().filter_map(|r| r.array_element).collect();
    let elements = resolve_domains(client, &elements).await?;
    for t in unknown {
        let Some(r) = resolved.get(&t) else {
            out.insert(t, t);
            continue;
        };
        let mapped = match r.array_element {
            None => r.base,
            Some(_) if r.delimiter != ',' => oid::TEXT,
            Some(elem) => {
                let elem = elements.get(&elem).map_or(elem, |e| e.base);
                array_type_of(elem).unwrap_or(TEXT_ARRAY)
            }
        };
        out.insert(t, mapped);
    }
    Ok(out)
}

/// A type with its domains peeled off.
struct Resolved {
    base: u32,
    array_element: Option<u32>,
    delimiter: char,
}

async fn resolve_domains(client: &Client, types: &[u32]) -> Result<HashMap<u32, Resolved>, ControlError> {
    if types.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "WITH RECURSIVE chain(orig, cur, depth) AS ( \
                 SELECT o, o, 0 FROM unnest($1::oid[]) AS o \
                 UNION ALL \
                 SELECT c.orig, t.typbasetype, c.depth + 1 FROM chain c JOIN pg_type t ON t.oid = c.cur \
                 WHERE t.typtype = 'd' AND c.depth < 32) \
             SELECT DISTINCT ON (c.orig) c.orig, c.cur, t.typelem, t.typdelim::text, \
                    (t.typcategory = 'A' AND t.typelem <> 0 AND t.typlen = -1) \
             FROM chain c JOIN pg_type t ON t.oid = c.cur ORDER BY c.orig, c.depth DESC",
            &[&types],
        )
        .await
        .map_err(sql("resolving column types"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let delimiter: String = r.get(3);
            let is_array: bool = r.get(4);
            (
                r.get::<_, u32>(0),
                Resolved {
                    base: r.get(1),
                    array_element: is_array.then(|| r.get::<_, u32>(2)),
                    delimiter: delimiter.chars().next().unwrap_or(','),
                },
            )
        })
        .collect())
}

/// Runs every check without changing anything. Returns the report and the catalog of the tables found.
pub async fn preflight(
    client: &Client,
    config: &Config,
    rules: &crate::rules::Rules,
) -> Result<(Report, Catalog), ControlError> {
    let mut report = Report::default();
    let mut catalog = Catalog::default();

    let version: i32 = setting(client, "server_version_num").await?.parse().unwrap_or(0);
    let version_text = setting(client, "server_version").await?;
    if version < 100_000 {
        report.push(
            Status::Fail,
            "server version",
            format!("{version_text} has no pgoutput"),
            Some("upgrade to PostgreSQL 10 or later".into()),
        );
    } else {
        report.push(Status::Ok, "server version", version_text, None);
    }

    let wal_level = setting(client, "wal_level").await?;
    if wal_level == "logical" {
        report.push(Status::Ok, "wal_level", "logical", None);
    } else {
        report.push(
            Status::Fail,
            "wal_level",
            format!("is {wal_level}, logical decoding needs logical"),
            Some("ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL".into()),
        );
    }

    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql("reading the role"))?;
    let user: String = row.get(0);
    let can_replicate: bool = row.get(1);
    let is_super: bool = row.get(2);
    if can_replicate {
        report.push(Status::Ok, "replication privilege", format!("role {user}"), None);
    } else {
        report.push(
            Status::Fail,
            "replication privilege",
            format!("role {user} lacks REPLICATION"),
            Some(format!("ALTER ROLE {} WITH REPLICATION;", quote_ident(&user))),
        );
    }

    // Tables.
    let tables = config.captured_tables().map_err(|e| ControlError::Invalid(e.to_string()))?;
    for table in &tables {
        match table_info(client, table).await {
            Err(ControlError::Invalid(msg)) => report.push(Status::Fail, format!("table {table}"), msg, None),
            Err(e) => return Err(e),
            Ok(None) => {
                let hint = similar_table(client, table).await?;
                report.push(
                    Status::Fail,
                    format!("table {table}"),
                    "does not exist",
                    Some(match hint {
                        Some(found) => format!("did you mean {found}? (quote mixed-case names: schema.\"Name\")"),
                        None => "fix source.tables or create the table".into(),
                    }),
                );
            }
            Ok(Some(info)) => {
                let select: bool = client
                    .query_one("SELECT has_table_privilege($1::oid, 'SELECT')", &[&info.oid])
                    .await
                    .map_err(sql("checking SELECT privilege"))?
                    .get(0);
                let q = table.quoted();
                match (info.replica_identity, info.key_columns.is_empty()) {
                    (b'f', _) => report.push(Status::Ok, format!("table {table}"), "REPLICA IDENTITY FULL: before images complete", None),
                    (b'n', _) | (b'd', true) => report.push(
                        Status::Fail,
                        format!("table {table}"),
                        "has no replica identity: once published, the legacy application's UPDATE and DELETE on it would fail",
                        Some(format!("ALTER TABLE {q} REPLICA IDENTITY FULL;  -- or add a primary key")),
                    ),
                    _ => report.push(
                        Status::Warn,
                        format!("table {table}"),
                        format!("REPLICA IDENTITY {}: `before` holds only the key ({})",
                            if info.replica_identity == b'i' { "USING INDEX" } else { "DEFAULT" },
                            info.key_columns.join(", ")),
                        Some(format!("ALTER TABLE {q} REPLICA IDENTITY FULL;  -- for complete before images")),
                    ),
                }
                if !select {
                    report.push(
                        Status::Warn,
                        format!("table {table}"),
                        format!("role {user} cannot SELECT it (needed for snapshots)"),
                        Some(format!("GRANT SELECT ON {q} TO {};", quote_ident(&user))),
                    );
                }
                let snapshotted = config.snapshot.mode != crate::config::SnapshotMode::Never
                    && config
                        .captured_tables()
                        .and_then(|captured| config.snapshot.tables(&captured))
                        .is_ok_and(|t| t.contains(table));
                if snapshotted && info.key_columns.is_empty() {
                    // Only a first start (a new slot) plans the snapshot, so this warns rather than blocks.
                    report.push(
                        Status::Warn,
                        format!("table {table}"),
                        "has no primary key: the initial snapshot refuses it (exit 2 on a first start)",
                        Some("add a primary key, or leave the table out of snapshot.tables".to_string()),
                    );
                }
                catalog.tables.insert(table.clone(), info);
            }
        }
    }

    report.items.extend(rules.preflight(&catalog));
    check_publication(client, config, &tables, is_super, &mut report).await?;
    check_slot(client, config, &mut report).await?;
    Ok((report, catalog))
}

async fn similar_table(client: &Client, table: &TableName) -> Result<Option<String>, ControlError> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND c.relkind IN ('r','p') LIMIT 1",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(sql("looking for similar tables"))?;
    Ok(row.map(|r| TableName { schema: r.get(0), name: r.get(1) }.quoted()))
}

/// Tables of `config` missing from the publication (all of them if it does not exist), and whether it exists.
/// Membership is read from `pg_publication_rel` (and schema publications), not from `pg_publication_tables`: the
/// latter lists the leaf partitions instead of a partitioned table when `publish_via_partition_root` is off, which made
/// every restart try to add the parent again.
async fn publication_gap(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<(bool, bool, Vec<TableName>), ControlError> {
    let row = client
        .query_opt(
            "SELECT pg_get_userbyid(pubowner) = current_user FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("reading pg_publication"))?;
    let Some(row) = row else { return Ok((false, false, tables.to_vec())) };
    let owned: bool = row.get(0);
    let members = publication_members(client, publication, tables).await?;
    let missing = members.into_iter().filter(|m| m.oid.is_some() && !m.published).map(|m| m.table).collect();
    Ok((true, owned, missing))
}

/// A captured table as the catalog shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub table: TableName,
    /// `None`: no such table (dropped, renamed away).
    pub oid: Option<u32>,
    /// The publication publishes it (listed, `FOR ALL TABLES`, or its schema is published).
    pub published: bool,
}

/// The current OID and publication membership of each of `tables` (one query, however many tables).
pub async fn publication_members(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<Vec<Membership>, ControlError> {
    let version: i32 = setting(client, "server_version_num").await?.parse().unwrap_or(0);
    // FOR TABLES IN SCHEMA exists from PostgreSQL 15 on.
    let in_schema = if version >= 150_000 {
        " OR EXISTS (SELECT 1 FROM pg_publication_namespace pn WHERE pn.pnpubid = p.oid AND pn.pnnspid = c.relnamespace)"
    } else {
        ""
    };
    let query = format!(
        "SELECT t.s, t.n, c.oid, coalesce(p.puballtables \
            OR EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prpubid = p.oid AND pr.prrelid = c.oid){in_schema}, false) \
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(s, n, i) \
         LEFT JOIN pg_namespace ns ON ns.nspname = t.s \
         LEFT JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = t.n AND c.relkind IN ('r', 'p') \
         LEFT JOIN pg_publication p ON p.pubname = $1 \
         ORDER BY t.i"
    );
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(&query, &[&publication, &schemas, &names])
        .await
        .map_err(sql("reading the publication's tables"))?;
    Ok(rows
        .iter()
        .map(|r| Membership {
            table: TableName { schema: r.get(0), name: r.get(1) },
            oid: r.get(2),
            published: r.get(3),
        })
        .collect())
}

/// Adds `table` to the publication (ficus manages it).
pub async fn add_to_publication(client: &Client, publication: &str, table: &TableName) -> Result<(), ControlError> {
    let stmt = format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(publication), table.quoted());
    client.batch_execute(&stmt).await.map_err(sql(format!("{stmt} (run it as the table's owner)")))
}

async fn check_publication(
    client: &Client,
    config: &Config,
    tables: &[TableName],
    is_super: bool,
    report: &mut Report,
) -> Result<(), ControlError> {
    let publication = &config.source.publication;
    let (exists, owned, missing) = publication_gap(client, publication, tables).await?;
    let list = missing.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ");
    let title = format!("publication {publication}");
    if !exists {
        let can_create: bool = client
            .query_one("SELECT has_database_privilege(current_database(), 'CREATE')", &[])
            .await
            .map_err(sql("checking CREATE privilege"))?
            .get(0);
        let status = if can_create || is_super { Status::Ok } else { Status::Fail };
        report.push(
            status,
            title,
            if status == Status::Ok {
                "missing, ficus will create it".to_string()
            } else {
                "missing and this role cannot create it".to_string()
            },
            (status == Status::Fail).then(|| {
                format!("CREATE PUBLICATION {} FOR TABLE {list};  -- as the tables' owner", quote_ident(publication))
            }),
        );
    } else if missing.is_empty() {
        report.push(Status::Ok, title, "includes every captured table", None);
    } else {
        let status = if owned || is_super { Status::Warn } else { Status::Fail };
        report.push(
            status,
            title,
            format!("lacks {list}{}", if status == Status::Warn { "; ficus will add them" } else { "" }),
            Some(format!("ALTER PUBLICATION {} ADD TABLE {list};", quote_ident(publication))),
        );
    }
    Ok(())
}

/// Warns when the slot retains more than 1 GiB of WAL (or more than half of `max_slot_wal_keep_size`), and when no
/// limit protects the server's disk.
async fn check_retained_wal(client: &Client, slot: &str, title: &str, report: &mut Report) -> Result<(), ControlError> {
    let row = client
        .query_one(
            "SELECT (SELECT (pg_current_wal_lsn() - restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1), \
             pg_size_bytes(current_setting('max_slot_wal_keep_size')) ",
            &[&slot],
        )
        .await;
    // pg_size_bytes('-1') fails on some versions; treat any error as "unknown limit".
    let (retained, limit): (Option<i64>, Option<i64>) = match row {
        Ok(r) => (r.get(0), r.get(1)),
        Err(_) => (None, None),
    };
    let limit = limit.filter(|l| *l > 0);
    if let Some(r) = retained {
        let threshold = limit.map(|l| l / 2).unwrap_or(1 << 30).min(1 << 30);
        if r > threshold {
            report.push(
                Status::Warn,
                title.to_string(),
                format!("retains {} MiB of WAL on the server", r >> 20),
                Some("start ficus (it confirms as it streams), or drop the slot if it is abandoned".into()),
            );
        }
    }
    if limit.is_none() {
        report.push(
            Status::Warn,
            "max_slot_wal_keep_size",
            "is unlimited: a slot whose consumer is down keeps WAL until the disk is full",
            Some("ALTER SYSTEM SET max_slot_wal_keep_size = '10GB';  SELECT pg_reload_conf();".into()),
        );
    }
    Ok(())
}

async fn check_slot(client: &Client, config: &Config, report: &mut Report) -> Result<(), ControlError> {
    let slot = &config.source.slot;
    let title = format!("replication slot {slot}");
    let database: String =
        client.query_one("SELECT current_database()::text", &[]).await.map_err(sql("reading database"))?.get(0);
    match slot_info(client, slot).await? {
        None => {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::bigint",
                    &[],
                )
                .await
                .map_err(sql("counting slots"))?;
            let (used, max): (i64, i64) = (row.get(0), row.get(1));
            if used >= max {
                report.push(
                    Status::Fail,
                    title,
                    format!("missing, and all {max} slots are in use"),
                    Some(
                        "ALTER SYSTEM SET max_replication_slots = <more>;  -- then restart; or drop an unused slot"
                            .into(),
                    ),
                );
            } else {
                report.push(Status::Ok, title, "missing, ficus will create it (pgoutput)", None);
            }
        }
        Some(info) => {
            let fix_drop = format!(
                "SELECT pg_drop_replication_slot('{}');  -- only if nothing else uses it",
                slot.replace('\'', "''")
            );
            if info.plugin.as_deref() != Some("pgoutput") {
                let plugin = info.plugin.as_deref().unwrap_or("none (a physical slot)");
                report.push(Status::Fail, title, format!("uses plugin {plugin}, ficus needs pgoutput"), Some(fix_drop));
            } else if info.database.as_deref() != Some(database.as_str()) {
                let db = info.database.as_deref().unwrap_or("none (a physical slot)");
                report.push(
                    Status::Fail,
                    title,
                    format!("belongs to database {db}, not {database}"),
                    Some("choose another source.slot".into()),
                );
            } else if info.wal_status.as_deref() == Some("lost")
                && config.snapshot.on_gap == crate::snapshot::OnGap::Resnapshot
            {
                report.push(
                    Status::Warn,
                    title,
                    "was invalidated (WAL it needed was removed); snapshot.on_gap: resnapshot drops and re-creates it and copies snapshot.tables again",
                    None,
                );
            } else if info.wal_status.as_deref() == Some("lost") {
                report.push(
                    Status::Fail,
                    title,
                    "was invalidated (WAL it needed was removed, see max_slot_wal_keep_size); changes since then are lost",
                    Some(format!("{fix_drop}\nthen restart ficus to recreate it and re-snapshot the tables")),
                );
            } else if let Some(pid) = info.active_pid {
                report.push(
                    Status::Fail,
                    title,
                    format!("in use by another process (pid {pid}): another ficus instance?"),
                    Some(format!("stop the other consumer, or SELECT pg_terminate_backend({pid});")),
                );
            } else {
                let at = info.confirmed_flush.map(|l| l.to_string()).unwrap_or_else(|| "?".into());
                report.push(Status::Ok, title, format!("exists, confirmed up to {at}"), None);
            }
            check_retained_wal(client, slot, &format!("replication slot {slot}"), report).await?;
        }
    }
    let row = client
        .query_one("SELECT (SELECT count(*) FROM pg_stat_replication), current_setting('max_wal_senders')::bigint", &[])
        .await
        .map_err(sql("counting WAL senders"))?;
    let (used, max): (i64, i64) = (row.get(0), row.get(1));
    if used >= max {
        report.push(
            Status::Fail,
            "WAL senders",
            format!("all {max} in use"),
            Some("ALTER SYSTEM SET max_wal_senders = <more>;  -- then restart".into()),
        );
    } else {
        report.push(Status::Ok, "WAL senders", format!("{used} of {max} in use"), None);
    }
    Ok(())
}

/// Creates the publication `FOR TABLE` the captured tables, or adds the ones it lacks. A publication ficus creates
/// publishes partitioned tables through their root (`publish_via_partition_root`, PostgreSQL 13+): changes of every
/// partition, present or attached later, arrive under the configured parent's name and schema.
pub async fn ensure_publication(client: &Client, config: &Config) -> Result<(), ControlError> {
    let tables = config.captured_tables().map_err(|e| ControlError::Invalid(e.to_string()))?;
    let publication = &config.source.publication;
    let (exists, _, missing) = publication_gap(client, publication, &tables).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ");
    let stmt = if exists {
        format!("ALTER PUBLICATION {} ADD TABLE {list}", quote_ident(publication))
    } else {
        let version: i32 = setting(client, "server_version_num").await?.parse().unwrap_or(0);
        let via_root = if version >= 130_000 { " WITH (publish_via_partition_root = true)" } else { "" };
        format!("CREATE PUBLICATION {} FOR TABLE {list}{via_root}", quote_ident(publication))
    };
    tracing::info!(publication = %publication, tables = %list, "{}", if exists { "adding tables to publication" } else { "creating publication" });
    client.batch_execute(&stmt).await.map_err(sql(format!("{stmt} (run it as the tables' owner)")))
}

/// Creates the logical slot (pgoutput); returns its consistent point, where its stream starts.
pub async fn create_slot(client: &Client, slot: &str) -> Result<Lsn, ControlError> {
    tracing::info!(slot, "creating logical replication slot (pgoutput)");
    let row = client
        .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await
        .map_err(sql(format!("creating replication slot {slot}")))?;
    row.get::<_, String>(0).parse().map_err(|e| {
        ControlError::Invalid(format!(
            "creating replication slot {slot}: the server returned an LSN that does not parse: {e}"
        ))
    })
}

/// Drops the slot (only for the explicit `snapshot.on_gap: resnapshot` recovery from an invalidated slot).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), ControlError> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(sql(format!("dropping replication slot {slot}")))?;
    Ok(())
}
