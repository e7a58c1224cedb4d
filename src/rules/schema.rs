//! JSON Schema (2020-12) of a rule's `data`, inferred from its expressions and the column types (for
//! `ficus catalog`).
//!
//! Column references take the schema of the column's value mapping (nullable unless the column is NOT NULL);
//! other CEL expressions are typed by their outermost operation (`string(...)` → string, comparisons → boolean,
//! `size()` → integer, literals, arithmetic on known operands); what cannot be known statically is `{}` (any
//! JSON). The schema never claims more than the rule guarantees.
//!
//! **Guarantee:** every value ficus publishes validates against its schema (Draft 2020-12, format checking on),
//! including the edge values of the value mapping (docs/events.md): float NaN/±Infinity (strings, also from CEL
//! `double` arithmetic), dates and timestamps of `infinity`/`-infinity`, BC and years ≥ 10000 (expanded ISO 8601
//! years, which `format: date`/`date-time` reject: a pattern admits them), multi-dimensional arrays, and outbox
//! text payloads that are published as the JSON they hold. Checked by tests/pipeline/contract.rs with `jsonschema`.

use cel::common::ast::{operators, EntryExpr, Expr, LiteralValue};
use serde_json::{json, Map, Value as Json};

use super::{Data, Field, Kind, Rule};
use crate::postgres::control::ColumnType;
use crate::postgres::value::{array_element_type, oid};

/// The JSON Schema document of `rule`'s `data`. `columns`: the table's columns from the catalog (`None` offline).
pub fn data_schema(rule: &Rule, columns: Option<&[ColumnType]>) -> Json {
    let mut schema = match (&rule.kind, &rule.data) {
        // The outbox payload column: its own schema (jsonb: any JSON), except that a payload the value mapping
        // writes as a string (text, varchar, …) is published as the JSON it holds when it holds JSON: any JSON.
        (Kind::Outbox(ob), _) => columns
            .and_then(|cols| cols.iter().find(|c| c.name == ob.payload))
            .map(column_schema)
            .filter(|s| !s.get("type").is_some_and(|t| t == "string" || *t == json!(["string", "null"])))
            .unwrap_or_else(|| json!({})),
        (Kind::Message(_), Data::All) => json!({}),
        (_, Data::Fields(fields)) => fields_schema(fields, columns),
        (_, Data::All | Data::Columns(_) | Data::Exclude(_)) => selection_schema(&rule.data, columns),
    };
    if schema == json!({}) {
        schema = json!({"description": "any JSON"});
    }
    if let Json::Object(m) = &mut schema {
        let mut root = Map::new();
        root.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
        root.insert("$id".into(), json!(format!("urn:ficus:event:{}:v{}", rule.name, rule.version)));
        root.insert("title".into(), json!(format!("{} v{} data", rule.name, rule.version)));
        root.extend(std::mem::take(m));
        return Json::Object(root);
    }
    schema
}

fn fields_schema(fields: &[(String, Field)], columns: Option<&[ColumnType]>) -> Json {
    let mut props = Map::new();
    for (name, field) in fields {
        let s = match field {
            Field::Map(inner) => fields_schema(inner, columns),
            Field::Expr(e) => expr_schema(&e.program.expression().expr, columns),
        };
        props.insert(name.clone(), s);
    }
    let required: Vec<&String> = fields.iter().map(|(n, _)| n).collect();
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

fn selection_schema(data: &Data, columns: Option<&[ColumnType]>) -> Json {
    let keep = |c: &str| match data {
        Data::Columns(cols) => cols.iter().any(|x| x == c),
        Data::Exclude(cols) => !cols.iter().any(|x| x == c),
        _ => true,
    };
    match columns {
        Some(cols) => {
            let props: Map<String, Json> =
                cols.iter().filter(|c| keep(&c.name)).map(|c| (c.name.clone(), column_schema(c))).collect();
            // An unchanged TOAST value the server did not send is left out: no column is `required`.
            json!({"type": "object", "properties": props, "additionalProperties": false})
        }
        None => match data {
            Data::Columns(cols) => {
                let props: Map<String, Json> = cols.iter().map(|c| (c.clone(), json!({}))).collect();
                json!({"type": "object", "properties": props, "additionalProperties": false})
            }
            _ => json!({"type": "object"}),
        },
    }
}

/// Schema of a column's value as the value mapping writes it.
pub fn column_schema(c: &ColumnType) -> Json {
    let base = type_schema(c.type_oid);
    let mut s = if c.not_null { base } else { nullable(base) };
    if let Json::Object(m) = &mut s {
        m.insert("description".into(), json!(format!("column {} ({})", c.name, c.type_name)));
    }
    s
}

/// PostgreSQL arrays have at most this many dimensions (MAXDIM).
const MAX_ARRAY_DIMENSIONS: usize = 6;

/// Dates the value mapping writes that `format: date` rejects: expanded years (BC as `-0043`, ≥ 10000 as `+10000`),
/// year 0000 (1 BC; validators built on a proleptic calendar from year 1 refuse it), and `±infinity`.
const DATE_BEYOND_FORMAT: &str = "^(([+-][0-9]{4,}|0000)-[0-9]{2}-[0-9]{2}|-?infinity)$";

/// Likewise for timestamptz values (always UTC, `Z`).
const DATE_TIME_BEYOND_FORMAT: &str =
    "^(([+-][0-9]{4,}|0000)-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?Z|-?infinity)$";

/// A float as the value mapping writes it: a number, or one of the strings `NaN`, `Infinity`, `-Infinity`.
/// (`pattern` applies to strings only, so the number branch of `type` is untouched.)
fn float_schema() -> Json {
    json!({"type": ["number", "string"], "pattern": "^(NaN|-?Infinity)$"})
}

/// A string in `format`, or one of the forms the format does not cover. `anyOf` sits next to `type`, so
/// [`nullable`] still works (format and pattern ignore a null).
fn formatted_or(format: &str, pattern: &str) -> Json {
    json!({"type": "string", "anyOf": [{"format": format}, {"pattern": pattern}]})
}

/// An array of `elem` values of 1 to [`MAX_ARRAY_DIMENSIONS`] dimensions (`{{1,2},{3,4}}` is `[[1,2],[3,4]]`);
/// elements may be null, sub-arrays not.
fn array_schema(elem: &Json, dimensions: usize) -> Json {
    let items = if dimensions <= 1 {
        nullable(elem.clone())
    } else {
        json!({"anyOf": [nullable(elem.clone()), array_schema(elem, dimensions - 1)]})
    };
    json!({"type": "array", "items": items})
}

fn type_schema(type_oid: u32) -> Json {
    if let Some(elem) = array_element_type(type_oid) {
        return array_schema(&type_schema(elem), MAX_ARRAY_DIMENSIONS);
    }
    match type_oid {
        oid::BOOL => json!({"type": "boolean"}),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => json!({"type": "integer"}),
        oid::FLOAT4 | oid::FLOAT8 => float_schema(),
        oid::NUMERIC => json!({"type": "string", "pattern": "^(-?[0-9]+(\\.[0-9]+)?|NaN|-?Infinity)$"}),
        oid::JSON | oid::JSONB => json!({}),
        oid::UUID => json!({"type": "string", "format": "uuid"}),
        oid::DATE => formatted_or("date", DATE_BEYOND_FORMAT),
        oid::TIMESTAMPTZ => formatted_or("date-time", DATE_TIME_BEYOND_FORMAT),
        // PostgreSQL 17 has infinite intervals, written `infinity`/`-infinity` like dates.
        oid::INTERVAL => formatted_or("duration", "^-?infinity$"),
        oid::BYTEA => json!({"type": "string", "contentEncoding": "base64"}),
        _ => json!({"type": "string"}),
    }
}

fn nullable(s: Json) -> Json {
    match s.get("type") {
        Some(Json::String(t)) => {
            let mut s = s.clone();
            s["type"] = json!([t, "null"]);
            s
        }
        Some(Json::Array(ts)) => {
            let mut ts = ts.clone();
            ts.push(json!("null"));
            let mut s = s.clone();
            s["type"] = Json::Array(ts);
            s
        }
        _ => s,
    }
}

fn expr_schema(e: &Expr, columns: Option<&[ColumnType]>) -> Json {
    let t = |name: &str| json!({"type": name});
    match e {
        Expr::Literal(l) => match l {
            LiteralValue::Boolean(_) => t("boolean"),
            LiteralValue::Int(_) | LiteralValue::UInt(_) => t("integer"),
            // A literal is finite; computed doubles may be NaN or ±Infinity (strings): float_schema.
            LiteralValue::Double(_) => t("number"),
            LiteralValue::String(_) => t("string"),
            LiteralValue::Bytes(_) => json!({"type": "string", "contentEncoding": "base64"}),
            LiteralValue::Null => t("null"),
        },
        Expr::Select(s) if s.test => t("boolean"),
        Expr::Select(s) => match (&s.operand.expr, columns) {
            (Expr::Ident(root), Some(cols)) if root == "new" || root == "old" => {
                cols.iter().find(|c| c.name == s.field).map(column_schema).unwrap_or_else(|| json!({}))
            }
            _ => json!({}),
        },
        Expr::List(_) => t("array"),
        Expr::Map(m) => {
            let all_string_keys = m.entries.iter().all(|x| {
                matches!(&x.expr, EntryExpr::MapEntry(me) if matches!(me.key.expr, Expr::Literal(LiteralValue::String(_))))
            });
            // A map literal indexed right away (`{'N': 'new'}[code]`) is handled by INDEX below.
            if all_string_keys {
                t("object")
            } else {
                json!({})
            }
        }
        Expr::Call(c) => {
            let arg = |i: usize| c.args.get(i).map(|a| expr_schema(&a.expr, columns)).unwrap_or_else(|| json!({}));
            match c.func_name.as_str() {
                "string" | "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "format" | "join"
                | "charAt" => t("string"),
                "int" | "uint" | "size" | "indexOf" | "lastIndexOf" | "getFullYear" | "getMonth" | "getDate"
                | "getDayOfMonth" | "getDayOfWeek" | "getDayOfYear" | "getHours" | "getMinutes" | "getSeconds"
                | "getMilliseconds" => t("integer"),
                "double" | "math.round" | "math.floor" | "math.ceil" | "math.trunc" => float_schema(),
                "timestamp" => json!({"type": "string", "format": "date-time"}),
                // The lowercase hex of a SHA-256 digest.
                "sha256" | "hmac" => json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
                "bool"
                | "startsWith"
                | "endsWith"
                | "contains"
                | "matches"
                | "exists"
                | "all"
                | "exists_one"
                | operators::LOGICAL_AND
                | operators::LOGICAL_OR
                | operators::LOGICAL_NOT
                | operators::EQUALS
                | operators::NOT_EQUALS
                | operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS
                | operators::IN => t("boolean"),
                operators::CONDITIONAL => union(arg(1), arg(2)),
                operators::INDEX => match &c.args.first().map(|a| &a.expr) {
                    // `{'N': 'new', ...}[code]`: the type of the values when they agree.
                    Some(Expr::Map(m)) => m
                        .entries
                        .iter()
                        .filter_map(|x| match &x.expr {
                            EntryExpr::MapEntry(me) => Some(expr_schema(&me.value.expr, columns)),
                            _ => None,
                        })
                        .reduce(union)
                        .unwrap_or_else(|| json!({})),
                    _ => json!({}),
                },
                operators::ADD | operators::SUBSTRACT | operators::MULTIPLY | operators::DIVIDE | operators::MODULO => {
                    let (a, b) = (arg(0), arg(1));
                    let ty = |s: &Json| match s.get("type") {
                        Some(Json::String(t)) => Some(t.clone()),
                        // float_schema, also of a (nullable, described) float column: a double operand.
                        Some(Json::Array(ts))
                            if ts.contains(&json!("number")) && s.get("pattern") == float_schema().get("pattern") =>
                        {
                            Some("number".to_string())
                        }
                        _ => None,
                    };
                    match (ty(&a).as_deref(), ty(&b).as_deref()) {
                        (Some("string"), _) | (_, Some("string")) if c.func_name == operators::ADD => t("string"),
                        (Some("integer"), Some("integer")) => t("integer"),
                        // Double arithmetic overflows to ±Infinity and 0.0 / 0.0 is NaN (published as strings).
                        (Some("number" | "integer"), Some("number" | "integer")) => float_schema(),
                        _ => json!({}),
                    }
                }
                operators::NEGATE => arg(0),
                "map" | "filter" => t("array"),
                _ => json!({}),
            }
        }
        _ => json!({}),
    }
}

/// `a` when both agree, else `anyOf`.
fn union(a: Json, b: Json) -> Json {
    if a == b {
        a
    } else if a == json!({}) || b == json!({}) {
        json!({})
    } else {
        json!({"anyOf": [a, b]})
    }
}
