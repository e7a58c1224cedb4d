//! `ficus catalog --compare PREVIOUS.json`: the schema evolution guard. Within one event type and version, `data`
//! may only grow: a field may be added; none may be removed, change its type (widened or narrowed, nullability
//! included), format or pattern, or turn from optional to required or back. A breaking change is a new version (or a
//! new type): a version that is new in the config is never compared. docs/events.md ("Schema evolution").
//!
//! Both catalogs should be built the same way (both from the database, or both `--offline`): offline, column
//! references are typed as any JSON, and any JSON → a type is a narrowing.

use std::collections::BTreeSet;

use serde_json::Value as Json;

/// One incompatible change: the event, version and field (a JSON path into `data`, `data` itself for the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaking {
    pub event_type: String,
    pub version: u64,
    pub field: String,
    pub change: String,
}

impl std::fmt::Display for Breaking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}: {}: {}", self.event_type, self.version, self.field, self.change)
    }
}

/// What the comparison found.
#[derive(Debug, Default)]
pub struct Comparison {
    pub breaking: Vec<Breaking>,
    /// Event versions compared (present in both).
    pub compared: usize,
    /// `Type vN` in the new catalog only, and in the previous one only (not errors: a new version is how a breaking
    /// change is made; a retired version is the config's decision).
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Compares `previous` with `current` (both `ficus catalog --format json` documents). `Err` when `previous` is not
/// such a document.
pub fn compare(previous: &Json, current: &Json) -> Result<Comparison, String> {
    let events = |doc: &Json, which: &str| -> Result<Vec<(String, u64, Json)>, String> {
        let list = doc.get("events").and_then(Json::as_array).ok_or_else(|| {
            format!("the {which} catalog has no \"events\" list: is it the output of `ficus catalog --format json`?")
        })?;
        list.iter()
            .enumerate()
            .map(|(i, e)| {
                let t = e.get("eventType").and_then(Json::as_str);
                let v = e.get("version").and_then(Json::as_u64);
                match (t, v) {
                    (Some(t), Some(v)) => Ok((t.to_string(), v, e.get("schema").cloned().unwrap_or(Json::Null))),
                    _ => Err(format!("events[{i}] of the {which} catalog has no eventType or version")),
                }
            })
            .collect()
    };
    let (old, new) = (events(previous, "previous")?, events(current, "current")?);
    let mut out = Comparison::default();
    for (t, v, old_schema) in &old {
        match new.iter().find(|(nt, nv, _)| nt == t && nv == v) {
            None => out.removed.push(format!("{t} v{v}")),
            Some((_, _, new_schema)) => {
                out.compared += 1;
                let mut found = Vec::new();
                schema(old_schema, new_schema, "data", &mut found);
                out.breaking.extend(found.into_iter().map(|(field, change)| Breaking {
                    event_type: t.clone(),
                    version: *v,
                    field,
                    change,
                }));
            }
        }
    }
    for (t, v, _) in &new {
        if !old.iter().any(|(ot, ov, _)| ot == t && ov == v) {
            out.added.push(format!("{t} v{v}"));
        }
    }
    Ok(out)
}

/// `ficus catalog --compare`: compares the catalog `entries` with the one in the file `previous`, prints the
/// result; 0 compatible, 2 breaking changes or an unreadable file.
pub fn run(previous: &std::path::Path, entries: &[crate::rules::RuleDescription]) -> u8 {
    let old = match std::fs::read(previous) {
        Ok(bytes) => match serde_json::from_slice::<Json>(&bytes) {
            Ok(v) => v,
            Err(e) => {
                eprintln!(
                    "error: {} is not JSON ({e}): give the output of `ficus catalog --format json`",
                    previous.display()
                );
                return 2;
            }
        },
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", previous.display());
            return 2;
        }
    };
    let result = match compare(&old, &super::to_json(entries)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", previous.display());
            return 2;
        }
    };
    for a in &result.added {
        println!("new: {a}");
    }
    for r in &result.removed {
        println!("no longer in the config: {r}");
    }
    for b in &result.breaking {
        println!("breaking: {b}");
    }
    if result.breaking.is_empty() {
        println!("compatible: {} event versions compared with {}", result.compared, previous.display());
        0
    } else {
        println!(
            "{} incompatible changes within a version: keep data compatible (add fields only), or publish the change \
             as a new version (`version: N+1` next to the old rule) or a new event type",
            result.breaking.len()
        );
        2
    }
}

/// The JSON types a schema admits; `None` = any JSON (no `type`).
fn types(s: &Json) -> Option<BTreeSet<String>> {
    match s.get("type") {
        Some(Json::String(t)) => Some([t.clone()].into()),
        Some(Json::Array(ts)) => Some(ts.iter().filter_map(|t| t.as_str().map(str::to_string)).collect()),
        _ => None,
    }
}

fn describe(t: &Option<BTreeSet<String>>) -> String {
    match t {
        None => "any JSON".into(),
        Some(set) => set.iter().cloned().collect::<Vec<_>>().join(" or "),
    }
}

/// Keywords that constrain a value besides its type and structure.
const CONSTRAINTS: &[&str] = &["format", "pattern", "contentEncoding", "enum", "const"];

fn schema(old: &Json, new: &Json, path: &str, out: &mut Vec<(String, String)>) {
    let (ot, nt) = (types(old), types(new));
    if ot != nt {
        let how = match (&ot, &nt) {
            (Some(o), Some(n)) if n.is_superset(o) => "widened",
            (Some(o), Some(n)) if o.is_superset(n) => "narrowed",
            (None, _) => "narrowed",
            (_, None) => "widened",
            _ => "changed",
        };
        let mut change = format!("type {how} from {} to {}", describe(&ot), describe(&nt));
        let null = |t: &Option<BTreeSet<String>>| t.as_ref().is_some_and(|s| s.contains("null"));
        if !null(&ot) && null(&nt) {
            change.push_str(" (it may now be null)");
        } else if null(&ot) && !null(&nt) && ot.is_some() {
            change.push_str(" (it is no longer nullable)");
        }
        out.push((path.to_string(), change));
        return;
    }
    for k in CONSTRAINTS {
        if old.get(*k) != new.get(*k) {
            let show = |v: Option<&Json>| v.map_or("none".to_string(), Json::to_string);
            out.push((path.to_string(), format!("{k} changed from {} to {}", show(old.get(*k)), show(new.get(*k)))));
        }
    }
    if old.get("anyOf") != new.get("anyOf") {
        out.push((path.to_string(), "its alternatives (anyOf) changed".into()));
    }
    if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
        schema(o, n, &format!("{path}[]"), out);
    } else if old.get("items").is_some() != new.get("items").is_some() {
        out.push((path.to_string(), "its element schema (items) was removed or added".into()));
    }
    let props = |s: &Json| s.get("properties").and_then(Json::as_object).cloned().unwrap_or_default();
    let required = |s: &Json| -> BTreeSet<String> {
        s.get("required")
            .and_then(Json::as_array)
            .map(|r| r.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let (op, np) = (props(old), props(new));
    let (or, nr) = (required(old), required(new));
    for (name, o) in &op {
        let field = format!("{path}.{name}");
        match np.get(name) {
            None => out.push((field, "field removed".into())),
            Some(n) => {
                if !or.contains(name) && nr.contains(name) {
                    out.push((field.clone(), "became required (events published before lack it)".into()));
                } else if or.contains(name) && !nr.contains(name) {
                    out.push((field.clone(), "is no longer required (consumers rely on it)".into()));
                }
                schema(o, n, &field, out);
            }
        }
    }
    // A field new in `properties` is an addition (even when required: consumers of this version ignore fields they
    // do not know). A name made required without a property of its own is not.
    for name in nr.difference(&or) {
        if !op.contains_key(name) && !np.contains_key(name) {
            out.push((format!("{path}.{name}"), "became required".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn catalog(schema: Json) -> Json {
        json!({"events": [{"eventType": "OrderShipped", "version": 1, "topic": "t", "schema": schema}]})
    }

    fn base() -> Json {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "orderId": {"type": "integer", "description": "column id (bigint)"},
                "shippedAt": {"type": ["string", "null"], "anyOf": [{"format": "date-time"}, {"pattern": "^x$"}]},
                "total": {"type": "object", "properties": {"cents": {"type": "integer"}}, "required": ["cents"]},
                "tags": {"type": "array", "items": {"type": ["string", "null"]}},
                "note": {"type": ["string", "null"]}
            },
            "required": ["orderId", "shippedAt", "total", "tags"],
            "additionalProperties": false
        })
    }

    fn breaking(edit: impl FnOnce(&mut Json)) -> Vec<String> {
        let mut new = base();
        edit(&mut new);
        compare(&catalog(base()), &catalog(new)).unwrap().breaking.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn compatible_edits_pass() {
        assert_eq!(breaking(|_| {}), Vec::<String>::new());
        // A new field, required or not, and a new nested field; a changed description.
        assert_eq!(
            breaking(|s| {
                s["properties"]["carrier"] = json!({"type": "string"});
                s["required"].as_array_mut().unwrap().push(json!("carrier"));
                s["properties"]["total"]["properties"]["currency"] = json!({"type": "string"});
                s["properties"]["orderId"]["description"] = json!("column id (int8)");
            }),
            Vec::<String>::new()
        );
        // A new version of a type is never compared with the old one.
        let mut v2 = catalog(json!({"type": "object"}));
        v2["events"][0]["version"] = json!(2);
        v2["events"].as_array_mut().unwrap().push(catalog(base())["events"][0].clone());
        let c = compare(&catalog(base()), &v2).unwrap();
        assert!(c.breaking.is_empty());
        assert_eq!((c.compared, c.added.clone()), (1, vec!["OrderShipped v2".to_string()]));
    }

    #[test]
    fn breaking_edits_name_the_event_version_and_field() {
        let removed = breaking(|s| {
            s["properties"].as_object_mut().unwrap().remove("note");
        });
        assert_eq!(removed, ["OrderShipped v1: data.note: field removed"]);
        let retyped = breaking(|s| s["properties"]["orderId"]["type"] = json!("string"));
        assert_eq!(retyped, ["OrderShipped v1: data.orderId: type changed from integer to string"]);
        let nullable = breaking(|s| s["properties"]["orderId"]["type"] = json!(["integer", "null"]));
        assert_eq!(
            nullable,
            ["OrderShipped v1: data.orderId: type widened from integer to integer or null (it may now be null)"]
        );
        let narrowed = breaking(|s| s["properties"]["note"]["type"] = json!("string"));
        assert_eq!(
            narrowed,
            ["OrderShipped v1: data.note: type narrowed from null or string to string (it is no longer nullable)"]
        );
        let nested = breaking(|s| s["properties"]["total"]["properties"]["cents"] = json!({"type": "number"}));
        assert_eq!(nested, ["OrderShipped v1: data.total.cents: type changed from integer to number"]);
        let items = breaking(|s| s["properties"]["tags"]["items"] = json!({"type": "integer"}));
        assert_eq!(
            items,
            ["OrderShipped v1: data.tags[]: type changed from null or string to integer (it is no longer nullable)"]
        );
        let required = breaking(|s| s["required"].as_array_mut().unwrap().push(json!("note")));
        assert_eq!(required, ["OrderShipped v1: data.note: became required (events published before lack it)"]);
        let optional = breaking(|s| s["required"] = json!(["orderId", "shippedAt", "total"]));
        assert_eq!(optional, ["OrderShipped v1: data.tags: is no longer required (consumers rely on it)"]);
        let format = breaking(|s| s["properties"]["shippedAt"]["anyOf"] = json!([{"format": "date"}]));
        assert_eq!(format, ["OrderShipped v1: data.shippedAt: its alternatives (anyOf) changed"]);
        let any = breaking(|s| s["properties"]["orderId"] = json!({}));
        assert_eq!(any, ["OrderShipped v1: data.orderId: type widened from integer to any JSON"]);
        let root = breaking(|s| *s = json!({"description": "any JSON"}));
        assert_eq!(root, ["OrderShipped v1: data: type widened from object to any JSON"]);
    }

    #[test]
    fn not_a_catalog_is_an_error() {
        assert!(compare(&json!({}), &catalog(base())).unwrap_err().contains("ficus catalog --format json"));
        assert!(compare(&json!({"events": [{"version": 1}]}), &catalog(base())).unwrap_err().contains("events[0]"));
        let gone = compare(&catalog(base()), &json!({"events": []})).unwrap();
        assert_eq!((gone.removed, gone.breaking.len()), (vec!["OrderShipped v1".to_string()], 0));
    }
}
