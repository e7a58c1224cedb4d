//! `changes.key_columns` against the catalog (`ficus check` and the start-up preflight): every chosen column
//! exists, and is a replica-identity column unless the table is `REPLICA IDENTITY FULL` — otherwise deletes would
//! carry no value for it and a change of it would arrive without the old key ([`crate::encode::keys`]).

use crate::check::report::{CheckItem, Status};
use crate::config::{Config, TableName};
use crate::postgres::control::Catalog;

/// One line per configured table: ok, or the failure naming the table, the column and the fix.
pub(crate) fn lines(config: &Config, catalog: &Catalog) -> Vec<CheckItem> {
    let mut items = Vec::new();
    for (table, columns) in &config.changes.key_columns {
        let Ok(name) = TableName::parse(table) else { continue };
        let Some(info) = catalog.tables.get(&name) else { continue };
        let title = format!("changes.key_columns.{table}");
        let fail = |detail: String, fix: String| CheckItem {
            status: Status::Fail,
            title: title.clone(),
            detail,
            fix: Some(fix),
        };
        let missing: Vec<&str> =
            columns.iter().filter(|c| !info.columns.iter().any(|x| &x.name == *c)).map(String::as_str).collect();
        let outside: Vec<&str> = columns
            .iter()
            .filter(|c| info.replica_identity != b'f' && !info.key_columns.contains(c))
            .map(String::as_str)
            .collect();
        items.push(if !missing.is_empty() {
            let known: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
            fail(format!("{name} has no column {}", missing.join(", ")), format!("use one of: {}", known.join(", ")))
        } else if !outside.is_empty() {
            fail(
                format!(
                    "{} not in the replica identity of {name} ({}): deletes would not carry the key",
                    outside.join(", "),
                    info.key_columns.join(", ")
                ),
                format!("ALTER TABLE {} REPLICA IDENTITY FULL;", name.quoted()),
            )
        } else {
            CheckItem {
                status: Status::Ok,
                title: title.clone(),
                detail: format!("raw change events keyed by {}", columns.join(", ")),
                fix: None,
            }
        });
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::control::{ColumnType, TableInfo};

    #[test]
    fn chosen_columns_must_exist_and_be_carried_by_deletes() {
        let config = Config::from_yaml(
            "source: {url: 'postgres://x@h/db', tables: [public.orders]}\nkafka: {brokers: 'k:9092'}\n\
             changes: {tables: ['*'], key_columns: {public.orders: [customer, num]}}\n",
            &|_| None,
        )
        .unwrap();
        let col = |name: &str| ColumnType {
            name: name.into(),
            type_oid: 23,
            type_name: "integer".into(),
            not_null: false,
            generated: crate::postgres::control::Generated::No,
        };
        let info = |identity: u8, columns: Vec<ColumnType>| TableInfo {
            oid: 1,
            replica_identity: identity,
            key_columns: vec!["id".into()],
            has_primary_key: true,
            columns,
        };
        let check = |info: TableInfo| {
            let mut catalog = Catalog::default();
            catalog.tables.insert(TableName::parse("public.orders").unwrap(), info);
            let items = lines(&config, &catalog);
            assert_eq!(items.len(), 1);
            (items[0].status, items[0].detail.clone(), items[0].fix.clone().unwrap_or_default())
        };
        let (status, detail, fix) = check(info(b'f', vec![col("id"), col("customer")]));
        assert_eq!(status, Status::Fail);
        assert_eq!(detail, "public.orders has no column num");
        assert_eq!(fix, "use one of: id, customer");
        let (status, detail, fix) = check(info(b'd', vec![col("id"), col("customer"), col("num")]));
        assert_eq!(status, Status::Fail);
        assert!(detail.starts_with("customer, num not in the replica identity of public.orders (id)"), "{detail}");
        assert_eq!(fix, r#"ALTER TABLE "public"."orders" REPLICA IDENTITY FULL;"#);
        let (status, ..) = check(info(b'f', vec![col("id"), col("customer"), col("num")]));
        assert_eq!(status, Status::Ok);
    }
}
