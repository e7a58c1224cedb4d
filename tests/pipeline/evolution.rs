//! `ficus catalog --compare PREVIOUS.json`, the schema evolution guard, through the binary with the column types of a
//! real database: additions and new versions pass; a removed field or a column that turned NOT NULL within a version
//! fails (exit 2) naming the event, version and field.

use std::path::Path;
use std::process::Command;

use crate::{Ficus, Setup};

fn config(s: &Setup, version: u32, data: &str) -> String {
    Ficus::config(&s.pg.superuser_url(&s.db), &["public.t"], &s.prefix, &s.kafka.brokers(), "")
        + &format!(
            "events:\n  - name: NoteChanged\n    version: {version}\n    table: public.t\n    key: string(new.id)\n    \
             topic: {}.notes\n    data: {{{data}}}\n",
            s.prefix
        )
}

/// `ficus catalog <args> --config <config>`: (exit code, stdout + stderr).
fn catalog(config: &str, args: &[&str]) -> (i32, String) {
    let (_dir, path) = Ficus::dir_config(config);
    let out = Command::new(crate::support::ficus_bin())
        .arg("catalog")
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn compare(config: &str, previous: &Path) -> (i32, String) {
    catalog(config, &["--compare", previous.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_compare_fails_on_an_incompatible_change_within_a_version() {
    let s = Setup::new("evolution", "CREATE TABLE t (id int PRIMARY KEY, note text, amt int NOT NULL)").await;
    let v1 = config(&s, 1, "id: new.id, note: new.note, amt: new.amt");
    let (code, json) = catalog(&v1, &["--format", "json"]);
    assert_eq!(code, 0, "{json}");
    let dir = tempfile::tempdir().unwrap();
    let previous = dir.path().join("catalog.json");
    std::fs::write(&previous, json).unwrap();

    let (code, out) = compare(&v1, &previous);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("compatible: 1 event versions compared"), "{out}");
    // A new field is compatible.
    let (code, out) = compare(&config(&s, 1, "id: new.id, note: new.note, amt: new.amt, label: \"'x'\""), &previous);
    assert_eq!(code, 0, "{out}");

    // A field removed within v1: breaking, named.
    let removed = config(&s, 1, "id: new.id, note: new.note");
    let (code, out) = compare(&removed, &previous);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("breaking: NoteChanged v1: data.amt: field removed"), "{out}");
    assert!(out.contains("new version"), "the message names the fix: {out}");
    // The same change as v2: fine (v1 is no longer in the config, which is said, not refused).
    let (code, out) = compare(&config(&s, 2, "id: new.id, note: new.note"), &previous);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("new: NoteChanged v2") && out.contains("no longer in the config: NoteChanged v1"), "{out}");
    // A retyped field (integer → string).
    let (code, out) = compare(&config(&s, 1, "id: string(new.id), note: new.note, amt: new.amt"), &previous);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("NoteChanged v1: data.id: type changed from integer to string"), "{out}");

    // The database changes too: a column that became NOT NULL narrows the field.
    s.sql("UPDATE t SET note = '' WHERE note IS NULL; ALTER TABLE t ALTER note SET NOT NULL").await;
    let (code, out) = compare(&v1, &previous);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("NoteChanged v1: data.note: type narrowed from null or string to string"), "{out}");

    // Not a catalog: exit 2 with what to give instead.
    std::fs::write(&previous, "{\"tables\": []}").unwrap();
    let (code, out) = compare(&v1, &previous);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("ficus catalog --format json"), "{out}");
}
