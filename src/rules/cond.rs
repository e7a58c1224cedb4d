//! `when` conditions evaluated without CEL: comparisons, `&&`, `||`, `!` and integer or double arithmetic over
//! column references (`new.col`, `old.col`) and literals — the shape of nearly every real `when`
//! (`new.status == 'shipped' && old.status != 'shipped'`, `new.qty > old.qty`).
//!
//! Running the CEL interpreter costs a CEL map of the row (built once per change) and a walk with name lookups per
//! node; on the rules benchmark the `when`s were the largest part of a rule's cost (docs/benchmarks.md). A [`Cond`]
//! reads the columns straight from the change.
//!
//! **Guarantee:** when [`Cond::holds`] answers, its answer is the one the CEL program gives. It answers only on the
//! plain path: values of types mapped to CEL `int`, `double`, `string` or `bool` exactly as `values` maps them,
//! operands of the same type, no overflow, no division, no NaN. Anything else — a null, an absent or unchanged
//! TOAST value, an unusual type, mixed `int` and `double`, an error CEL would report — answers `None` and the caller
//! runs the CEL program, which decides (and names the error). The tests compare both on generated expressions.

use std::cmp::Ordering;

use cel::common::ast::{operators, Expr, LiteralValue};

use super::fast;
use super::values::{self, Scalar};
use crate::change::{Change, Datum};

/// A compiled condition: the expression's tree, restricted to what [`Cond::holds`] can evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Int(i64),
    Double(f64),
    Str(String),
    Bool(bool),
    /// `new.col` / `old.col`.
    Column {
        old: bool,
        name: String,
    },
    Not(Box<Cond>),
    Negate(Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Compare(Ordering, bool, Box<Cond>, Box<Cond>),
    Arith(Arith, Box<Cond>, Box<Cond>),
}

/// Integer (checked) and double arithmetic; CEL's `/` is left to CEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Rem,
}

/// A value during evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum V<'a> {
    Int(i64),
    Double(f64),
    Str(&'a str),
    Bool(bool),
}

/// Deeper trees are left to CEL (the recursion stays shallow).
const MAX_DEPTH: usize = 24;

impl Cond {
    /// The condition of `expr`, when every node of it is one [`Cond`] evaluates.
    pub fn compile(expr: &Expr) -> Option<Cond> {
        compile(expr, 0)
    }

    /// Whether the condition holds for `change`; `None`: not decided here (run CEL).
    pub fn holds(&self, change: &Change) -> Option<bool> {
        match self.eval(change)? {
            V::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// Recursion as deep as the tree, which [`Cond::compile`] bounds by [`MAX_DEPTH`].
    fn eval<'a>(&'a self, change: &'a Change) -> Option<V<'a>> {
        Some(match self {
            Cond::Int(i) => V::Int(*i),
            Cond::Double(d) => V::Double(*d),
            Cond::Str(s) => V::Str(s),
            Cond::Bool(b) => V::Bool(*b),
            Cond::Column { old, name } => column(change, *old, name)?,
            Cond::Not(inner) => match inner.eval(change)? {
                V::Bool(b) => V::Bool(!b),
                _ => return None,
            },
            Cond::Negate(inner) => match inner.eval(change)? {
                V::Int(i) => V::Int(i.checked_neg()?),
                V::Double(d) if !d.is_nan() => V::Double(-d),
                _ => return None,
            },
            // CEL's `&&` and `||` short-circuit on a decided left side; an undecided one is left to CEL, which
            // also knows `error && false` is false.
            Cond::And(left, right) => match left.eval(change)? {
                V::Bool(false) => V::Bool(false),
                V::Bool(true) => V::Bool(bool_of(right.eval(change)?)?),
                _ => return None,
            },
            Cond::Or(left, right) => match left.eval(change)? {
                V::Bool(true) => V::Bool(true),
                V::Bool(false) => V::Bool(bool_of(right.eval(change)?)?),
                _ => return None,
            },
            Cond::Compare(ordering, equal_holds, left, right) => {
                let l = left.eval(change)?;
                let r = right.eval(change)?;
                let found = match (l, r) {
                    (V::Int(a), V::Int(b)) => a.cmp(&b),
                    (V::Double(a), V::Double(b)) if !a.is_nan() && !b.is_nan() => a.partial_cmp(&b)?,
                    (V::Str(a), V::Str(b)) => a.cmp(b),
                    // Booleans: equality only (their order is CEL's business).
                    (V::Bool(a), V::Bool(b)) if *ordering == Ordering::Equal => a.cmp(&b),
                    _ => return None,
                };
                V::Bool(compare(*ordering, *equal_holds, found))
            }
            Cond::Arith(op, left, right) => match (left.eval(change)?, right.eval(change)?) {
                (V::Int(a), V::Int(b)) => V::Int(match op {
                    Arith::Add => a.checked_add(b)?,
                    Arith::Sub => a.checked_sub(b)?,
                    Arith::Mul => a.checked_mul(b)?,
                    Arith::Rem => a.checked_rem(b)?,
                }),
                (V::Double(a), V::Double(b)) if !a.is_nan() && !b.is_nan() => match op {
                    Arith::Add => V::Double(a + b),
                    Arith::Sub => V::Double(a - b),
                    Arith::Mul => V::Double(a * b),
                    Arith::Rem => return None,
                },
                _ => return None,
            },
        })
    }
}

fn bool_of(v: V<'_>) -> Option<bool> {
    match v {
        V::Bool(b) => Some(b),
        _ => None,
    }
}

/// `Compare(ordering, equal_holds, ..)` encodes the six operators: `==` (Equal, true), `!=` (Equal, false),
/// `<` (Less, false), `<=` (Less, true), `>` (Greater, false), `>=` (Greater, true).
fn compare(ordering: Ordering, equal_holds: bool, found: Ordering) -> bool {
    match ordering {
        Ordering::Equal => (found == Ordering::Equal) == equal_holds,
        wanted => found == wanted || (equal_holds && found == Ordering::Equal),
    }
}

fn compile(expr: &Expr, depth: usize) -> Option<Cond> {
    if depth > MAX_DEPTH {
        return None;
    }
    let sub = |e: &Expr| compile(e, depth + 1).map(Box::new);
    match expr {
        Expr::Literal(LiteralValue::Int(i)) => Some(Cond::Int(*i.inner())),
        Expr::Literal(LiteralValue::Double(d)) => Some(Cond::Double(*d.inner())),
        Expr::Literal(LiteralValue::Boolean(b)) => Some(Cond::Bool(*b.inner())),
        Expr::Literal(LiteralValue::String(s)) => Some(Cond::Str(s.inner().to_string())),
        Expr::Select(s) if !s.test => match &s.operand.expr {
            Expr::Ident(root) if root == "new" || root == "old" => {
                Some(Cond::Column { old: root == "old", name: s.field.clone() })
            }
            _ => None,
        },
        Expr::Call(c) if c.target.is_none() && c.args.len() == 1 => {
            let inner = sub(&c.args[0].expr)?;
            match c.func_name.as_str() {
                operators::LOGICAL_NOT => Some(Cond::Not(inner)),
                operators::NEGATE => Some(Cond::Negate(inner)),
                _ => None,
            }
        }
        Expr::Call(c) if c.target.is_none() && c.args.len() == 2 => {
            let (l, r) = (sub(&c.args[0].expr)?, sub(&c.args[1].expr)?);
            match c.func_name.as_str() {
                operators::LOGICAL_AND => Some(Cond::And(l, r)),
                operators::LOGICAL_OR => Some(Cond::Or(l, r)),
                operators::EQUALS => Some(Cond::Compare(Ordering::Equal, true, l, r)),
                operators::NOT_EQUALS => Some(Cond::Compare(Ordering::Equal, false, l, r)),
                operators::LESS => Some(Cond::Compare(Ordering::Less, false, l, r)),
                operators::LESS_EQUALS => Some(Cond::Compare(Ordering::Less, true, l, r)),
                operators::GREATER => Some(Cond::Compare(Ordering::Greater, false, l, r)),
                operators::GREATER_EQUALS => Some(Cond::Compare(Ordering::Greater, true, l, r)),
                operators::ADD => Some(Cond::Arith(Arith::Add, l, r)),
                operators::SUBSTRACT => Some(Cond::Arith(Arith::Sub, l, r)),
                operators::MULTIPLY => Some(Cond::Arith(Arith::Mul, l, r)),
                operators::MODULO => Some(Cond::Arith(Arith::Rem, l, r)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The column as CEL sees it in `new`/`old` ([`fast::column_datum`], [`values::plain_scalar`]: the lookup of the fast
/// paths and the mapping of CEL maps), for the types mapped to int, double, string and bool; `None` for anything else
/// (null, absent, another type, bytes that do not parse).
fn column<'a>(change: &'a Change, old: bool, name: &str) -> Option<V<'a>> {
    let (i, datum) = fast::column_datum(change, old, name).ok()?;
    let (bytes, binary) = match datum {
        Datum::Text(b) => (&b[..], false),
        Datum::Binary(b) => (&b[..], true),
        Datum::Null | Datum::UnchangedToast => return None,
    };
    Some(match values::plain_scalar(change.table.columns[i].type_oid, bytes, binary)?.ok()? {
        Scalar::Int(i) => V::Int(i),
        Scalar::Double(d) => V::Double(d),
        Scalar::Str(s) => V::Str(s),
        Scalar::Bool(b) => V::Bool(b),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use cel::Value;
    use proptest::prelude::*;

    use super::*;
    use crate::change::{Column, Op, Table, TxMeta};
    use crate::lsn::Lsn;
    use crate::postgres::value::oid;

    /// Columns of every type class: int4 (the key), int8, float8, text, bool, numeric (not decided here).
    const COLUMNS: [(&str, u32); 6] =
        [("i", oid::INT4), ("j", oid::INT8), ("f", oid::FLOAT8), ("s", oid::TEXT), ("b", oid::BOOL), ("n", 1700)];

    fn table() -> Arc<Table> {
        let columns = COLUMNS
            .iter()
            .map(|(name, type_oid)| Column {
                name: name.to_string(),
                type_oid: *type_oid,
                type_modifier: -1,
                is_key: *name == "i",
            })
            .collect();
        Arc::new(Table {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            columns,
            replica_identity: b'f',
            json: Default::default(),
        })
    }

    /// A value of column `c` as pgoutput sends it, text or binary.
    fn datum(c: usize, pick: u8, binary: bool) -> Datum {
        let p = usize::from(pick);
        let (text, bin): (String, Vec<u8>) = match c {
            0 => {
                let v = [0i32, 1, -1, 7, 10, 20, i32::MAX, i32::MIN][p % 8];
                (v.to_string(), v.to_be_bytes().to_vec())
            }
            1 => {
                let v = [0i64, 3, -3, 10, i64::MAX, i64::MIN, 1 << 40][p % 7];
                (v.to_string(), v.to_be_bytes().to_vec())
            }
            2 => {
                let v = [0.0f64, -0.0, 0.5, 2.0, -1.5, f64::NAN, f64::INFINITY, 10.0][p % 8];
                let text = if v.is_nan() {
                    "NaN".into()
                } else if v.is_infinite() {
                    "Infinity".into()
                } else {
                    v.to_string()
                };
                (text, v.to_be_bytes().to_vec())
            }
            3 => {
                let v = ["a", "b", "", "é", "shipped"][p % 5];
                (v.into(), v.as_bytes().to_vec())
            }
            4 => {
                let v = p % 2 == 0;
                ((if v { "t" } else { "f" }).into(), vec![u8::from(v)])
            }
            _ => ("1.5".into(), Vec::new()),
        };
        if binary && c != 5 {
            Datum::Binary(Bytes::from(bin))
        } else {
            Datum::Text(Bytes::from(text))
        }
    }

    fn row() -> impl Strategy<Value = Vec<Datum>> {
        prop::collection::vec((0u8..12, any::<bool>()), COLUMNS.len()).prop_map(|picks| {
            picks
                .into_iter()
                .enumerate()
                .map(|(c, (pick, binary))| match pick {
                    10 => Datum::Null,
                    11 => Datum::UnchangedToast,
                    p => datum(c, p, binary),
                })
                .collect()
        })
    }

    fn change() -> impl Strategy<Value = Change> {
        (0u8..4, row(), row()).prop_map(|(shape, before, after)| {
            let (op, before, after, key_only) = match shape {
                0 => (Op::Insert, None, Some(after), false),
                1 => (Op::Update, Some(before), Some(after), false),
                2 => (Op::Update, Some(before), Some(after), true),
                _ => (Op::Delete, Some(before), None, false),
            };
            Change {
                op,
                table: table(),
                before,
                before_is_key_only: key_only,
                after,
                lsn: Lsn(0x100),
                position: 0,
                tx: Arc::new(TxMeta { xid: 1, commit_lsn: Lsn(0x200), commit_time_us: 0 }),
            }
        })
    }

    /// CEL sources over the columns, literals of every kind, and the operators (some CEL-only, as `10u`, `/`, `has`):
    /// mostly well-typed conditions (which the fast path decides unless a value is null, absent, NaN or overflows),
    /// and freely mixed ones.
    fn expression() -> impl Strategy<Value = String> {
        let pick = |items: &[&'static str]| prop::sample::select(items.to_vec()).prop_map(String::from);
        let binary = |e: BoxedStrategy<String>, ops: &[&'static str]| {
            (e.clone(), prop::sample::select(ops.to_vec()), e).prop_map(|(l, op, r)| format!("({l} {op} {r})"))
        };
        let int = pick(&["new.i", "old.i", "new.j", "old.j", "0", "1", "-1", "7", "10", "9223372036854775807"])
            .prop_recursive(3, 8, 2, move |e| {
                prop_oneof![binary(e.clone(), &["+", "-", "*", "%"]), e.prop_map(|e| format!("-({e})"))]
            })
            .boxed();
        let double = pick(&["new.f", "old.f", "0.5", "2.0", "-1.5", "1.0"])
            .prop_recursive(2, 4, 2, move |e| binary(e, &["+", "-", "*"]))
            .boxed();
        let string = pick(&["new.s", "old.s", "'a'", "''", "'shipped'", "'é'"]).boxed();
        let comparisons = ["==", "!=", "<", "<=", ">", ">="];
        let typed = prop_oneof![
            pick(&["new.b", "old.b", "true", "false"]),
            binary(int, &comparisons),
            binary(double, &comparisons),
            binary(string, &comparisons),
        ]
        .prop_recursive(3, 12, 2, move |e| {
            prop_oneof![binary(e.clone().boxed(), &["&&", "||", "==", "!="]), e.prop_map(|e| format!("!({e})"))]
        });
        let leaf = prop_oneof![
            (any::<bool>(), 0..COLUMNS.len() + 1).prop_map(|(old, c)| format!(
                "{}.{}",
                if old { "old" } else { "new" },
                COLUMNS.get(c).map_or("missing", |(n, _)| n)
            )),
            pick(&[
                "0",
                "1",
                "-1",
                "7",
                "10",
                "9223372036854775807",
                "0.5",
                "2.0",
                "-1.5",
                "'a'",
                "''",
                "'shipped'",
                "true",
                "false",
                "null",
                "10u",
                "1.0"
            ]),
        ];
        let mixed = leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (
                    inner.clone(),
                    prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "%", "&&", "||", "/"]),
                    inner.clone()
                )
                    .prop_map(|(l, op, r)| format!("({l} {op} {r})")),
                inner.clone().prop_map(|e| format!("!({e})")),
                inner.clone().prop_map(|e| format!("-({e})")),
                inner.prop_map(|e| format!("has({e})")),
            ]
        });
        prop_oneof![3 => typed, 1 => mixed]
    }

    /// What CEL answers for `source` on `change`, as the rules run it.
    fn cel(source: &str, change: &Change) -> Result<Value, String> {
        let env = Arc::new(crate::rules::compile::environment());
        let program = env.compile(source).map_err(|e| e.to_string())?;
        let ctx = crate::rules::eval::change_context(&env, change, false, None)?;
        program.execute(&ctx).map_err(|e| e.to_string())
    }

    fn fast(source: &str, change: &Change) -> Option<bool> {
        // Generated sources CEL does not parse (`has` of a non-field) are nobody's to decide.
        let program = crate::rules::compile::environment().compile(source).ok()?;
        Cond::compile(&program.expression().expr)?.holds(change)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Whenever the condition answers, CEL gives the same boolean (CEL is the oracle).
        #[test]
        fn an_answer_is_the_answer_of_cel(source in expression(), change in change()) {
            if let Some(holds) = fast(&source, &change) {
                let expected = cel(&source, &change);
                prop_assert_eq!(Ok(Value::Bool(holds)), expected, "{} on {:?}", source, change);
            }
        }
    }

    /// The common shapes are decided here (the test above would pass if nothing were), and agree with CEL.
    #[test]
    fn common_conditions_are_decided_without_cel() {
        let row = |i: i32, j: i64, f: f64, s: &str, b: bool| -> Vec<Datum> {
            vec![
                Datum::Binary(Bytes::copy_from_slice(&i.to_be_bytes())),
                Datum::Text(Bytes::from(j.to_string())),
                Datum::Binary(Bytes::copy_from_slice(&f.to_be_bytes())),
                Datum::Text(Bytes::copy_from_slice(s.as_bytes())),
                Datum::Text(Bytes::from_static(if b { b"t" } else { b"f" })),
                Datum::Text(Bytes::from_static(b"1.5")),
            ]
        };
        let change = Change {
            op: Op::Update,
            table: table(),
            before: Some(row(9, 5, 1.5, "paid", false)),
            before_is_key_only: false,
            after: Some(row(10, 6, 2.5, "shipped", true)),
            lsn: Lsn(0x100),
            position: 0,
            tx: Arc::new(TxMeta { xid: 1, commit_lsn: Lsn(0x200), commit_time_us: 0 }),
        };
        for (source, expected) in [
            ("new.j > old.j", true),
            ("old.i % 10 != 0 && new.i % 10 == 0", true),
            ("old.f != new.f", true),
            ("new.s == 'shipped' && old.s != 'shipped'", true),
            ("new.b && !old.b", true),
            ("new.j - old.j >= 2 || new.f * 2.0 < 1.0", false),
            ("-new.i < 0 && new.s < 'z'", true),
        ] {
            assert_eq!(fast(source, &change), Some(expected), "{source}");
            assert_eq!(cel(source, &change), Ok(Value::Bool(expected)), "{source}");
        }
        // Left to CEL: a numeric (string) column, mixed int and double, a key-only old row's other column.
        for source in ["new.n == '1.5'", "new.i > 1.0", "new.missing > 1"] {
            assert_eq!(fast(source, &change), None, "{source}");
        }
        let key_only = Change { before_is_key_only: true, ..change };
        assert_eq!(fast("old.j < new.j", &key_only), None);
        assert_eq!(fast("old.i < new.i", &key_only), Some(true));
    }
}
