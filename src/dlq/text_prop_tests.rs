//! Property test of the inverse value mapping: generated values in PostgreSQL's own text output form (under the
//! session settings ficus pins) → JSON (the live mapping, `postgres::value`) → text (this module) → JSON again. The
//! JSON must be the same, and a scalar's text byte for byte the same. `PROPTEST_CASES=50000 cargo test --lib text::prop_tests` for a long run (default 256 cases).

use proptest::prelude::*;

use super::*;
use crate::postgres::value;

/// PostgreSQL's text form of a date (`DateStyle=ISO`): a zero-padded year of at least four digits, ` BC` after
/// the whole value.
fn date_parts() -> impl Strategy<Value = (String, bool)> {
    (prop_oneof![1i64..=9999, 10_000i64..=99_999], any::<bool>(), 1u32..=12, 1u32..=28).prop_map(|(y, bc, m, d)| {
        // 4713 BC is the earliest date PostgreSQL has.
        let y = if bc { (y % 4713) + 1 } else { y };
        (format!("{y:04}-{m:02}-{d:02}"), bc)
    })
}

/// `HH:MM:SS[.ffffff]` with the fraction's trailing zeros dropped, as PostgreSQL prints it.
fn time_of_day() -> impl Strategy<Value = String> {
    (0u32..24, 0u32..60, 0u32..60, prop_oneof![Just(0u32), 1u32..1_000_000]).prop_map(|(h, m, s, us)| {
        let mut t = format!("{h:02}:{m:02}:{s:02}");
        if us > 0 {
            t.push_str(format!(".{us:06}").trim_end_matches('0'));
        }
        t
    })
}

/// Text of any length without NUL (PostgreSQL text cannot hold it): control characters, quotes, backslashes,
/// non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => any::<char>(),
            2 => prop::sample::select(vec!['"', '\\', '{', '}', ',', ' ', '\n', '\t', 'N', 'U', 'L', '\u{1}', 'é']),
        ]
        .prop_filter("no NUL", |c| *c != '\0'),
        0..16,
    )
    .prop_map(|c| c.into_iter().collect())
}

/// An array element as `array_out` writes it: quoted (with `"` and `\` escaped) when empty, `NULL` in any case, or
/// holding a delimiter, brace, quote, backslash or white space.
fn array_element(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.eq_ignore_ascii_case("NULL")
        && !s.chars().any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_ascii_whitespace());
    if plain {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// (type OID, PostgreSQL text) pairs of every kind the mapping distinguishes.
fn value() -> impl Strategy<Value = (u32, String)> {
    let float = prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f}")),
        prop::sample::select(vec!["NaN".to_string(), "Infinity".into(), "-Infinity".into()]),
    ];
    let numeric = prop_oneof![
        (any::<bool>(), any::<u64>(), prop::option::of(0u64..1_000_000_000)).prop_map(|(neg, i, f)| format!(
            "{}{i}{}",
            if neg { "-" } else { "" },
            f.map(|f| format!(".{f:09}")).unwrap_or_default()
        )),
        prop::sample::select(vec!["NaN".to_string(), "Infinity".into(), "-Infinity".into()]),
    ];
    let suffix = |bc: bool| if bc { " BC" } else { "" };
    prop_oneof![
        any::<bool>().prop_map(|b| (oid::BOOL, if b { "t" } else { "f" }.to_string())),
        any::<i16>().prop_map(|v| (oid::INT2, v.to_string())),
        any::<i32>().prop_map(|v| (oid::INT4, v.to_string())),
        any::<i64>().prop_map(|v| (oid::INT8, v.to_string())),
        any::<u32>().prop_map(|v| (oid::OID, v.to_string())),
        float.prop_map(|v| (oid::FLOAT8, v)),
        numeric.prop_map(|v| (oid::NUMERIC, v)),
        text().prop_map(|v| (oid::TEXT, v)),
        text().prop_map(|v| (oid::VARCHAR, v)),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(|b| {
            (
                oid::BYTEA,
                b.iter().fold(String::from("\\x"), |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                }),
            )
        }),
        date_parts().prop_map(move |(d, bc)| (oid::DATE, format!("{d}{}", suffix(bc)))),
        (date_parts(), time_of_day()).prop_map(move |((d, bc), t)| (oid::TIMESTAMP, format!("{d} {t}{}", suffix(bc)))),
        (date_parts(), time_of_day())
            .prop_map(move |((d, bc), t)| (oid::TIMESTAMPTZ, format!("{d} {t}+00{}", suffix(bc)))),
        any::<u128>().prop_map(|u| (oid::UUID, uuid::Uuid::from_u128(u).hyphenated().to_string())),
        prop::collection::vec(prop::option::of(text()), 0..5).prop_map(|elems| {
            let elems: Vec<String> =
                elems.iter().map(|e| e.as_deref().map_or_else(|| "NULL".to_string(), array_element)).collect();
            (value::TEXT_ARRAY, format!("{{{}}}", elems.join(",")))
        }),
        prop::collection::vec(prop::option::of(any::<i32>()), 0..5).prop_map(|elems| {
            let elems: Vec<String> =
                elems.iter().map(|e| e.map_or_else(|| "NULL".to_string(), |v| v.to_string())).collect();
            (1007, format!("{{{}}}", elems.join(",")))
        }),
    ]
}

proptest! {
    #[test]
    fn generated_values_round_trip_through_the_value_mapping((type_oid, text) in value()) {
        let json = value::to_value(type_oid, text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{type_oid} {text:?}: {e}")))?;
        let mut bytes = Vec::new();
        value::write_json(&mut bytes, type_oid, text.as_bytes()).unwrap();
        let raw: Box<RawValue> = serde_json::from_slice(&bytes).unwrap();
        let back = pg_text(type_oid, &raw).map_err(TestCaseError::fail)?.expect("not null");
        prop_assert_eq!(value::to_value(type_oid, back.as_bytes()).unwrap(), json, "{} {:?} → {:?}", type_oid, text, back);
        if array_element_type(type_oid).is_none() {
            prop_assert_eq!(back, text);
        }
    }
}
