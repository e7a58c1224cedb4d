//! Generated columns in a replica identity (PostgreSQL 18).
//!
//! From 18 on, PostgreSQL refuses UPDATE and DELETE on a table that is in a publication when the table's replica
//! identity contains a generated column that publication does not publish ("Replica identity must not contain
//! unpublished generated columns"). The identity is every column under `REPLICA IDENTITY FULL`, the index columns
//! under `USING INDEX`, the primary key under `DEFAULT`. A publication publishes stored generated columns only with
//! `publish_generated_columns = stored` (18+; the only other value is `none`), and virtual generated columns never
//! (they are not in the WAL, and no index can cover one, so only FULL can contain one).
//!
//! **Guarantee:** ficus never makes a captured table's writes fail: publications it creates on 18+ publish stored
//! generated columns, and [`conflict`] says when a publication could not carry a table without breaking the
//! application's writes, with the fix; `postgres::admin` refuses to add such a table, `ficus check` fails on it.
//! Before 18 nothing here applies (generated columns are not published and PostgreSQL does not check them).

use tokio_postgres::Client;

use super::control::{sql, ColumnType, ControlError, Generated, TableInfo};
use crate::ident::{quote_ident, TableName};

/// The first version that checks generated columns in the replica identity and can publish them.
pub const PUBLISHES_GENERATED: i32 = 180_000;

/// Whether `publication` publishes stored generated columns (`pg_publication.pubgencols = 's'`, 18+); `None` if it
/// does not exist. Always `Some(false)` for an existing publication before 18.
pub async fn publishes_stored(client: &Client, publication: &str) -> Result<Option<bool>, ControlError> {
    // pubgencols through to_jsonb, so one statement serves every version.
    let row = client
        .query_opt(
            "SELECT coalesce(to_jsonb(p) ->> 'pubgencols', 'n') = 's' FROM pg_publication p WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("reading pg_publication"))?;
    Ok(row.map(|r| r.get(0)))
}

/// The columns of the table's replica identity (empty without one).
pub fn identity_columns(info: &TableInfo) -> Vec<&ColumnType> {
    match info.replica_identity {
        b'f' => info.columns.iter().collect(),
        b'n' => Vec::new(),
        _ => info.columns.iter().filter(|c| info.key_columns.contains(&c.name)).collect(),
    }
}

/// Why a publication that publishes stored generated columns or not (`publishes_stored`) would make UPDATE and
/// DELETE on the table fail on PostgreSQL `version`: the message and the fix. `None` when it is safe.
pub fn conflict(
    table: &TableName,
    info: &TableInfo,
    version: i32,
    publication: &str,
    publishes_stored: bool,
) -> Option<(String, String)> {
    if version < PUBLISHES_GENERATED {
        return None;
    }
    let identity = identity_columns(info);
    let of = |kind: Generated| -> Vec<&str> {
        identity.iter().filter(|c| c.generated == kind).map(|c| c.name.as_str()).collect()
    };
    let q = table.quoted();
    let what = match info.replica_identity {
        b'f' => "REPLICA IDENTITY FULL",
        b'i' => "its replica identity index",
        _ => "its primary key (the replica identity)",
    };
    let failing = "once the table is in the publication, PostgreSQL 18 refuses the application's UPDATE and DELETE \
                   on it (\"Replica identity must not contain unpublished generated columns\")";
    let virtual_columns = of(Generated::Virtual);
    if !virtual_columns.is_empty() {
        return Some((
            format!(
                "{what} includes the virtual generated column(s) {}, which no publication can publish: {failing}",
                virtual_columns.join(", ")
            ),
            format!(
                "ALTER TABLE {q} REPLICA IDENTITY DEFAULT;  -- with a primary key, or REPLICA IDENTITY USING INDEX \
                 on a unique index of NOT NULL columns"
            ),
        ));
    }
    let stored = of(Generated::Stored);
    if !stored.is_empty() && !publishes_stored {
        return Some((
            format!(
                "{what} includes the stored generated column(s) {}, which publication {publication} does not publish: \
                 {failing}",
                stored.join(", ")
            ),
            format!(
                "ALTER PUBLICATION {} SET (publish_generated_columns = stored);  -- events then carry the stored \
                 generated columns; or change the replica identity of {q}",
                quote_ident(publication)
            ),
        ));
    }
    None
}

/// The statement(s) that give `table` REPLICA IDENTITY FULL without breaking the application's writes, or why no
/// statement can (a virtual generated column, 18+), for the checks that recommend FULL. On 18+ a table with stored
/// generated columns needs `publication` to publish them first (`publishes_stored`).
pub fn full_identity_fix(
    table: &TableName,
    info: &TableInfo,
    version: i32,
    publication: &str,
    publishes_stored: bool,
) -> Result<String, String> {
    let named = |kind: Generated| -> Vec<&str> {
        info.columns.iter().filter(|c| c.generated == kind).map(|c| c.name.as_str()).collect()
    };
    let virtual_columns = named(Generated::Virtual);
    if !virtual_columns.is_empty() {
        return Err(format!(
            "not REPLICA IDENTITY FULL: with the virtual generated column(s) {} PostgreSQL 18 would refuse UPDATE and \
             DELETE on the published table",
            virtual_columns.join(", ")
        ));
    }
    let full = format!("ALTER TABLE {} REPLICA IDENTITY FULL;", table.quoted());
    if version >= PUBLISHES_GENERATED && !publishes_stored && !named(Generated::Stored).is_empty() {
        return Ok(format!(
            "ALTER PUBLICATION {} SET (publish_generated_columns = stored); {full}",
            quote_ident(publication)
        ));
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(identity: u8, keys: &[&str], columns: &[(&str, Generated)]) -> TableInfo {
        TableInfo {
            oid: 1,
            replica_identity: identity,
            key_columns: keys.iter().map(|k| k.to_string()).collect(),
            has_primary_key: identity == b'd',
            columns: columns
                .iter()
                .map(|(name, generated)| ColumnType {
                    name: name.to_string(),
                    type_oid: 23,
                    type_name: "integer".into(),
                    not_null: false,
                    generated: *generated,
                })
                .collect(),
        }
    }

    fn table() -> TableName {
        TableName { schema: "public".into(), name: "T".into() }
    }

    #[test]
    fn each_identity_kind_names_its_generated_columns_on_18_only() {
        use Generated::*;
        let full_stored = info(b'f', &["id"], &[("id", No), ("g", Stored)]);
        let (detail, fix) = conflict(&table(), &full_stored, 180_000, "Pub", false).unwrap();
        assert!(detail.contains("REPLICA IDENTITY FULL includes the stored generated column(s) g"), "{detail}");
        assert!(fix.starts_with("ALTER PUBLICATION \"Pub\" SET (publish_generated_columns = stored);"), "{fix}");
        assert_eq!(conflict(&table(), &full_stored, 180_000, "Pub", true), None);
        assert_eq!(conflict(&table(), &full_stored, 170_000, "Pub", false), None);

        let full_virtual = info(b'f', &["id"], &[("id", No), ("v", Virtual)]);
        let (detail, fix) = conflict(&table(), &full_virtual, 180_000, "Pub", true).unwrap();
        assert!(detail.contains("virtual generated column(s) v, which no publication can publish"), "{detail}");
        assert!(fix.starts_with("ALTER TABLE \"public\".\"T\" REPLICA IDENTITY DEFAULT;"), "{fix}");
        assert!(full_identity_fix(&table(), &full_virtual, 180_000, "p", true).is_err());
        assert_eq!(
            full_identity_fix(&table(), &full_stored, 180_000, "p", false).unwrap(),
            "ALTER PUBLICATION \"p\" SET (publish_generated_columns = stored); ALTER TABLE \"public\".\"T\" REPLICA IDENTITY FULL;"
        );
        assert_eq!(
            full_identity_fix(&table(), &full_stored, 170_000, "p", false).unwrap(),
            "ALTER TABLE \"public\".\"T\" REPLICA IDENTITY FULL;"
        );

        let index = info(b'i', &["g"], &[("id", No), ("g", Stored)]);
        assert!(conflict(&table(), &index, 180_000, "p", false).unwrap().0.starts_with("its replica identity index"));
        let pk = info(b'd', &["g"], &[("g", Stored), ("a", No)]);
        assert!(conflict(&table(), &pk, 180_000, "p", false).unwrap().0.starts_with("its primary key"));
        // A generated column outside the identity is harmless.
        let default = info(b'd', &["id"], &[("id", No), ("g", Stored), ("v", Virtual)]);
        assert_eq!(conflict(&table(), &default, 180_000, "p", false), None);
        assert_eq!(conflict(&table(), &info(b'n', &[], &[("g", Stored)]), 180_000, "p", false), None);
    }
}
