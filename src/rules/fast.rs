//! Column references evaluated without CEL: `new.col`, `old.col` and `string(new.col)`.
//!
//! Most `data` fields and keys of real rules are plain column references. Building the CEL map of a row and
//! running the interpreter for them costs more than the rest of the pipeline, so they are recognised at compile
//! time and read straight from the change. **Guarantee:** the result is the one the CEL program would give,
//! except that a column reference in `data` is written exactly as the value mapping writes the column in raw
//! change events (so the two never disagree); where a fast path cannot decide (an unusual type in a key), it
//! answers `None` and the caller runs the CEL program.

use cel::common::ast::Expr;

use crate::change::{Change, Datum};
use crate::encode;
use crate::postgres::value::oid;

/// A CEL expression that is a plain column reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fast {
    /// `new.col` / `old.col`.
    Column { old: bool, name: String },
    /// `string(new.col)` / `string(old.col)`.
    StringOf { old: bool, name: String },
}

impl Fast {
    /// Recognises the forms above in a compiled expression.
    pub fn detect(expr: &Expr) -> Option<Fast> {
        let column = |e: &Expr| match e {
            Expr::Select(s) if !s.test => match &s.operand.expr {
                Expr::Ident(root) if root == "new" || root == "old" => Some((root == "old", s.field.clone())),
                _ => None,
            },
            _ => None,
        };
        if let Some((old, name)) = column(expr) {
            return Some(Fast::Column { old, name });
        }
        match expr {
            Expr::Call(c) if c.func_name == "string" && c.target.is_none() && c.args.len() == 1 => {
                column(&c.args[0].expr).map(|(old, name)| Fast::StringOf { old, name })
            }
            _ => None,
        }
    }

    /// The column this expression reads.
    pub fn column(&self) -> &str {
        match self {
            Fast::Column { name, .. } | Fast::StringOf { name, .. } => name,
        }
    }

    /// The column's index and datum in `change` ([`column_datum`]).
    fn datum<'c>(&self, change: &'c Change) -> Result<(usize, &'c Datum), String> {
        match self {
            Fast::Column { old, name } | Fast::StringOf { old, name } => column_datum(change, *old, name),
        }
    }

    /// Appends the value as JSON, as the value mapping writes it. Only for [`Fast::Column`]; `StringOf` answers
    /// `None` (the caller runs CEL).
    pub fn write_json(&self, out: &mut Vec<u8>, change: &Change) -> Option<Result<(), String>> {
        if !matches!(self, Fast::Column { .. }) {
            return None;
        }
        Some(
            self.datum(change)
                .and_then(|(i, datum)| encode::write_datum(out, &change.table, i, datum).map_err(|e| e.to_string())),
        )
    }

    /// The value as text for a key or header: integers in decimal, strings as they are, null an error. `None`
    /// when the column's type needs CEL's own conversion.
    pub fn text(&self, change: &Change, scratch: &mut Vec<u8>) -> Option<Result<String, String>> {
        let (i, datum) = match self.datum(change) {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        let type_oid = change.table.columns[i].type_oid;
        let simple = matches!(
            type_oid,
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME
        );
        if !simple {
            return None;
        }
        match datum {
            Datum::Null => Some(Err("is null".into())),
            Datum::UnchangedToast => None,
            Datum::Text(b)
                if type_oid != oid::INT2 && type_oid != oid::INT4 && type_oid != oid::INT8 && type_oid != oid::OID =>
            {
                Some(std::str::from_utf8(b).map(str::to_string).map_err(|_| "is not valid UTF-8".into()))
            }
            _ => {
                scratch.clear();
                if let Err(e) = encode::write_datum(scratch, &change.table, i, datum) {
                    return Some(Err(e.to_string()));
                }
                let json = std::str::from_utf8(scratch).ok()?;
                // Integers are JSON numbers; binary text types are JSON strings.
                match json.strip_prefix('"') {
                    None => Some(Ok(json.to_string())),
                    Some(_) => Some(serde_json::from_str::<String>(json).map_err(|e| e.to_string())),
                }
            }
        }
    }
}

/// The index and datum of column `name` of `old` or `new` in `change`, as CEL's maps hold it: an unchanged TOAST value
/// is taken from the old row when the server sent it (REPLICA IDENTITY FULL); a null row, a column a key-only old row
/// does not hold and an unknown TOAST value are errors worded as CEL's. Shared by the fast paths here and the
/// conditions of `cond`.
pub(super) fn column_datum<'c>(change: &'c Change, old: bool, name: &str) -> Result<(usize, &'c Datum), String> {
    let which = if old { "old" } else { "new" };
    let row = if old { change.before.as_ref() } else { change.after.as_ref() };
    let row = row.ok_or_else(|| {
        format!("{which} is null for a{} {}", if change.op.as_str() == "insert" { "n" } else { "" }, change.op.as_str())
    })?;
    let i = change.table.columns.iter().position(|c| c.name == name).ok_or_else(|| format!("no such key: {name}"))?;
    if old && change.before_is_key_only && !change.table.columns[i].is_key {
        return Err(format!(
            "no such key: {name} (the old row holds only the key: REPLICA IDENTITY FULL sends all of it)"
        ));
    }
    let mut datum = row.get(i).ok_or_else(|| format!("no such key: {name}"))?;
    if *datum == Datum::UnchangedToast && !old && !change.before_is_key_only {
        if let Some(d) = change.before.as_ref().and_then(|b| b.get(i)) {
            datum = d;
        }
    }
    if *datum == Datum::UnchangedToast {
        return Err(format!(
            "no such key: {name} (an unchanged TOAST value the server did not send; test it with has({which}.{name}))"
        ));
    }
    Ok((i, datum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_column_references_only() {
        let env = cel::Env::stdlib();
        let fast = |src: &str| Fast::detect(&env.compile(src).unwrap().expression().expr);
        assert_eq!(fast("new.id"), Some(Fast::Column { old: false, name: "id".into() }));
        assert_eq!(fast("old.status"), Some(Fast::Column { old: true, name: "status".into() }));
        assert_eq!(fast("string(new.id)"), Some(Fast::StringOf { old: false, name: "id".into() }));
        for not_fast in ["new", "new.a.b", "has(new.a)", "string(new.id) + 'x'", "other.id", "new.id + 1", "new['id']"]
        {
            assert_eq!(fast(not_fast), None, "{not_fast}");
        }
    }
}
