//! The control connection's catalog reads: an ordinary SQL session (tokio-postgres) next to the replication stream.
//! It reads the facts the decoder, the snapshot and the preflight need (key columns, replica identity, column types
//! with domains and arrays resolved, slot state, publication membership); `postgres::admin` holds the writes and
//! `check::preflight` the checks built on these reads.
//!
//! **Guarantees:** every identifier that reaches SQL is either a bind parameter or quoted with
//! [`quote_ident`]; nothing here changes the database.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::ident::TableName;
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
                    || source
                        .as_db_error()
                        .map_or(source.code().is_none(), |db| crate::postgres::sqlstate::is_transient(db.code().code()))
            }
            ControlError::Invalid(_) => false,
        }
    }
}

pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ControlError {
    let context = context.into();
    move |source| ControlError::Sql { context, source }
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
    /// `pg_attribute.attgenerated`: stored (12+) and virtual (18+) generated columns are sent only when a
    /// publication asks for them (stored ones, `publish_generated_columns = stored`, 18+) and virtual ones never.
    pub generated: Generated,
}

/// How a column's value comes about (`pg_attribute.attgenerated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Generated {
    /// An ordinary column.
    #[default]
    No,
    /// `GENERATED ALWAYS AS (…) STORED` (PostgreSQL 12+).
    Stored,
    /// `GENERATED ALWAYS AS (…) VIRTUAL` (PostgreSQL 18+): computed when read, never in the WAL.
    Virtual,
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
    /// `failover` (PostgreSQL 17+; `None` before): the slot is synchronized to standbys with `sync_replication_slots`.
    pub failover: Option<bool>,
    /// `synced` (PostgreSQL 17+): on a standby, the slot is a synchronized copy of the primary's.
    pub synced: Option<bool>,
    /// Why the slot cannot stream any more: `invalidation_reason` (17+), or `conflict with recovery` (16: its
    /// `conflicting` is true for every invalidated logical slot, WAL removal included, so it is read as a recovery
    /// conflict only on a standby, where conflicts happen; on a primary `wal_status = lost` says the WAL removal).
    pub invalidation_reason: Option<String>,
}

impl SlotInfo {
    /// Why the slot was invalidated, if it was (`wal_status = lost`, or an `invalidation_reason`).
    pub fn invalidated(&self) -> Option<Invalidation> {
        match (self.invalidation_reason.as_deref(), self.wal_status.as_deref()) {
            (Some(reason), _) => Some(Invalidation::from_reason(reason)),
            // Before 17 the one cause on a primary.
            (None, Some("lost")) => Some(Invalidation::WalRemoved),
            (None, _) => None,
        }
    }
}

/// Why PostgreSQL invalidated a slot (`pg_replication_slots.invalidation_reason`, 17+; before 17 only the WAL
/// removal shows, as `wal_status = lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// `wal_removed`: the slot fell behind more than `max_slot_wal_keep_size`.
    WalRemoved,
    /// `rows_removed`: VACUUM removed catalog rows the slot needed (a slot on a standby).
    RowsRemoved,
    /// `wal_level_insufficient`: the primary's `wal_level` fell below logical (a slot on a standby).
    WalLevelInsufficient,
    /// PostgreSQL 16 only says `conflicting` (a slot on a standby): removed catalog rows or the primary's wal_level.
    RecoveryConflict,
    /// `idle_timeout` (18+): inactive longer than `idle_replication_slot_timeout`.
    IdleTimeout,
    /// A reason this version of ficus does not know.
    Other,
}

impl Invalidation {
    pub fn from_reason(reason: &str) -> Invalidation {
        match reason {
            "wal_removed" => Invalidation::WalRemoved,
            "rows_removed" => Invalidation::RowsRemoved,
            "wal_level_insufficient" => Invalidation::WalLevelInsufficient,
            "idle_timeout" => Invalidation::IdleTimeout,
            "conflict with recovery" => Invalidation::RecoveryConflict,
            _ => Invalidation::Other,
        }
    }

    /// The cause, and how to keep it from happening again.
    pub fn why(self) -> &'static str {
        match self {
            Invalidation::WalRemoved => "the WAL it needed was removed, see max_slot_wal_keep_size",
            Invalidation::RowsRemoved => {
                "the primary removed catalog rows it needed, a recovery conflict on this standby: set \
                 hot_standby_feedback = on on the standby, with primary_slot_name"
            }
            Invalidation::RecoveryConflict => {
                "it conflicted with recovery on this standby: the primary removed catalog rows it needed (set \
                 hot_standby_feedback = on on the standby, with primary_slot_name), or its wal_level is below logical"
            }
            Invalidation::WalLevelInsufficient => {
                "the primary's wal_level fell below logical; set wal_level = logical on the primary and restart it"
            }
            Invalidation::IdleTimeout => {
                "it was inactive for longer than idle_replication_slot_timeout; raise that setting or set it to 0 to \
                 turn it off, so that the slot survives ficus being stopped"
            }
            Invalidation::Other => "see pg_replication_slots.invalidation_reason",
        }
    }
}

/// Reads the slot, if it exists.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, ControlError> {
    let row = client
        .query_opt(
            // The 17+ columns through to_jsonb, so one statement serves every version.
            "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text, wal_status, \
             (to_jsonb(s) ->> 'failover')::bool, (to_jsonb(s) ->> 'synced')::bool, \
             coalesce(to_jsonb(s) ->> 'invalidation_reason', \
                      CASE WHEN (to_jsonb(s) ->> 'conflicting')::bool AND pg_is_in_recovery() \
                           THEN 'conflict with recovery' END) \
             FROM pg_replication_slots s WHERE slot_name = $1",
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
        failover: r.get(5),
        synced: r.get(6),
        invalidation_reason: r.get(7),
    }))
}

pub(crate) async fn setting(client: &Client, name: &str) -> Result<String, ControlError> {
    let row = client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(sql(format!("reading setting {name}")))?;
    Ok(row.get(0))
}

/// The server's WAL position as SQL: `pg_current_wal_lsn()` fails during recovery, where the replayed position is
/// the newest WAL a logical slot on a standby can decode.
pub const CURRENT_WAL_LSN: &str =
    "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)";

/// Whether the server is a standby (`pg_is_in_recovery()`): it cannot write, so ficus must not try (capture from a
/// standby, PostgreSQL 16+, docs/postgres-versions.md).
pub async fn in_recovery(client: &Client) -> Result<bool, ControlError> {
    let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(sql("reading pg_is_in_recovery()"))?;
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
            "SELECT attname::text, atttypid, format_type(atttypid, atttypmod), attnotnull, attgenerated::text \
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(sql(format!("reading the columns of {table}")))?
        .iter()
        .map(|r| ColumnType {
            name: r.get(0),
            type_oid: r.get(1),
            type_name: r.get(2),
            not_null: r.get(3),
            generated: match r.get::<_, String>(4).as_str() {
                "s" => Generated::Stored,
                "v" => Generated::Virtual,
                _ => Generated::No,
            },
        })
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
/// Tables of `config` missing from the publication (all of them if it does not exist), and whether it exists.
/// Membership is read from `pg_publication_rel` (and schema publications), not from `pg_publication_tables`: the
/// latter lists the leaf partitions instead of a partitioned table when `publish_via_partition_root` is off, which made
/// every restart try to add the parent again.
pub(crate) async fn publication_gap(
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

/// The columns pgoutput sends for `table` (with catalog facts `info`) under `publication`, in column order: the
/// columns of the table's column list in the publication (`pg_publication_rel.prattrs`, 15+) if it has one, else
/// every column that is not generated; stored generated columns only from 18 on, when the column list names them or,
/// without a list, when the publication publishes them (`publish_generated_columns = stored`, or the publication does
/// not exist yet: ficus creates it so, `postgres::admin`); virtual generated columns never. Read from the catalogs
/// alone, not from `pg_publication_tables`: on 18 that view opens the table, so a lock on it (an ALTER TABLE, a LOCK)
/// would hold up the start.
pub async fn published_columns(
    client: &Client,
    publication: &str,
    table: &TableName,
    info: &TableInfo,
) -> Result<Vec<String>, ControlError> {
    let version: i32 = setting(client, "server_version_num").await?.parse().unwrap_or(0);
    // pubgencols through to_jsonb (18+), prattrs only where it exists (15+): one statement for every version.
    let column_list = if version >= 150_000 {
        "(SELECT array_agg(a.attname::text) FROM pg_publication_rel pr \
          JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs) \
          WHERE pr.prpubid = p.oid AND pr.prrelid = $2)"
    } else {
        // No column lists before 15; the parameter still needs a type.
        "(SELECT NULL::text[] WHERE $2::oid IS NULL)"
    };
    let row = client
        .query_opt(
            &format!(
                "SELECT coalesce(to_jsonb(p) ->> 'pubgencols', 'n') = 's', {column_list} FROM pg_publication p \
                 WHERE p.pubname = $1"
            ),
            &[&publication, &info.oid],
        )
        .await
        .map_err(sql(format!("reading the published columns of {table}")))?;
    let (stored, listed) = row.map_or((true, None), |r| (r.get::<_, bool>(0), r.get::<_, Option<Vec<String>>>(1)));
    let sent = |c: &&ColumnType| {
        let in_list = listed.as_ref().map(|names| names.contains(&c.name));
        match c.generated {
            Generated::No => in_list.unwrap_or(true),
            Generated::Stored => version >= 180_000 && in_list.unwrap_or(stored),
            Generated::Virtual => false,
        }
    };
    Ok(info.columns.iter().filter(sent).map(|c| c.name.clone()).collect())
}
