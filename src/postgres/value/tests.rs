//! Tests of the text value mapping (`value`), with the test oracles they need.

use super::time::{civil_0_to_9999, civil_from_days, days_from_civil, format_unix_micros_civil};
use super::*;
use crate::postgres::test_rng::XorShift;

fn json(type_oid: u32, text: &str) -> String {
    let mut out = Vec::new();
    write_json(&mut out, type_oid, text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let s = String::from_utf8(out).unwrap();
    validate_json(s.as_bytes()).unwrap_or_else(|e| panic!("{text:?} gave invalid JSON {s}: {e}"));
    s
}

fn fails(type_oid: u32, text: &[u8]) -> ValueError {
    let mut out = b"prefix".to_vec();
    let err =
        write_json(&mut out, type_oid, text).expect_err(&format!("{:?} should fail", String::from_utf8_lossy(text)));
    assert_eq!(out, b"prefix", "a failed value must leave the buffer unchanged");
    err
}

#[test]
fn bool() {
    assert_eq!(json(oid::BOOL, "t"), "true");
    assert_eq!(json(oid::BOOL, "f"), "false");
    for bad in ["true", "", "T", "1"] {
        fails(oid::BOOL, bad.as_bytes());
    }
}

#[test]
fn integers() {
    for t in [oid::INT2, oid::INT4, oid::INT8] {
        assert_eq!(json(t, "42"), "42");
        assert_eq!(json(t, "-7"), "-7");
        assert_eq!(json(t, "0"), "0");
    }
    assert_eq!(json(oid::INT8, "-9223372036854775808"), "-9223372036854775808");
    assert_eq!(json(oid::OID, "4294967295"), "4294967295");
    for bad in ["", "-", "01", "1.5", "abc", "+1", " 1", "1 ", "--1", "1e3"] {
        fails(oid::INT4, bad.as_bytes());
    }
    fails(oid::OID, b"-1");
}

#[test]
fn floats() {
    for t in [oid::FLOAT4, oid::FLOAT8] {
        assert_eq!(json(t, "1.5"), "1.5");
        assert_eq!(json(t, "-0"), "-0");
        assert_eq!(json(t, "1e+30"), "1e+30");
        assert_eq!(json(t, "1.2345e-05"), "1.2345e-05");
        assert_eq!(json(t, "NaN"), r#""NaN""#);
        assert_eq!(json(t, "Infinity"), r#""Infinity""#);
        assert_eq!(json(t, "-Infinity"), r#""-Infinity""#);
    }
    assert_eq!(json(oid::FLOAT8, "0.30000000000000004"), "0.30000000000000004");
    for bad in ["inf", "1.", ".5", "1e", "nan", "0x10", ""] {
        fails(oid::FLOAT8, bad.as_bytes());
    }
}

#[test]
fn numeric_is_an_exact_string() {
    assert_eq!(json(oid::NUMERIC, "12345678901234567890.123456789"), r#""12345678901234567890.123456789""#);
    assert_eq!(json(oid::NUMERIC, "-0.00100"), r#""-0.00100""#);
    assert_eq!(json(oid::NUMERIC, "NaN"), r#""NaN""#);
    assert_eq!(json(oid::NUMERIC, "-Infinity"), r#""-Infinity""#);
    let v = to_value(oid::NUMERIC, b"12345678901234567890.123456789").unwrap();
    assert_eq!(v, serde_json::json!("12345678901234567890.123456789"));
    for bad in ["1,5", "", "1 000", "\""] {
        fails(oid::NUMERIC, bad.as_bytes());
    }
}

#[test]
fn text_types_are_escaped_strings() {
    for t in [oid::TEXT, oid::VARCHAR, oid::BPCHAR, oid::NAME, oid::CHAR, 70_000, 603] {
        assert_eq!(json(t, "plain"), r#""plain""#);
    }
    assert_eq!(json(oid::TEXT, "héllo wörld 🌿 中文"), "\"héllo wörld 🌿 中文\"");
    assert_eq!(
        json(oid::TEXT, "q\"b\\n\nt\tr\rf\u{c}b\u{8}c\u{1}d\u{1f}e\u{7f}"),
        concat!(r#""q\"b\\n\nt\tr\rf\fb\bc\u0001d\u001fe"#, "\u{7f}\"")
    );
    assert_eq!(json(oid::TEXT, ""), r#""""#);
    // box[] uses ';' as its delimiter: kept as text, like any type without a mapping.
    assert_eq!(json(1020, "{(1,1),(0,0);(2,2),(1,1)}"), r#""{(1,1),(0,0);(2,2),(1,1)}""#);
}

#[test]
fn json_string_escaping_round_trips() {
    let all: String = (0u32..0x800).filter_map(char::from_u32).collect();
    let mut out = Vec::new();
    write_json_string(&mut out, &all);
    let back: String = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, all);
}

#[test]
fn json_is_embedded_after_validation() {
    let doc = "{\"a\": [1, 2.5e3, \"x\\u00e9\\n\"], \"b\": null, \"c\": {\"d\": true, \"e\": false}}";
    assert_eq!(json(oid::JSON, doc), doc);
    assert_eq!(json(oid::JSONB, doc), doc);
    assert_eq!(json(oid::JSONB, " [ ] "), " [ ] ");
    assert_eq!(json(oid::JSONB, "\"s\""), "\"s\"");
    assert_eq!(json(oid::JSONB, "-0.5E-3"), "-0.5E-3");
    // jsonb numbers are arbitrary precision: embedded verbatim.
    let huge = format!("[1{}]", "0".repeat(400));
    assert_eq!(json(oid::JSONB, &huge), huge);
    // Deep nesting must not overflow the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(json(oid::JSONB, &deep).len(), deep.len());
    let v = to_value(oid::JSONB, doc.as_bytes()).unwrap();
    assert_eq!(v["a"][1], serde_json::json!(2500.0));
    for bad in [
        "",
        "{",
        "{\"a\":}",
        "[1,]",
        "{\"a\" 1}",
        "tru",
        "\"abc",
        "[1] x",
        "{'a':1}",
        "{\"a\":1,}",
        "[01]",
        "\"\u{1}\"",
        "\"\\x\"",
        "\"\\u12\"",
        "{1:2}",
        "[1 2]",
        "NaN",
        "[",
        "]",
        "{}}",
    ] {
        fails(oid::JSONB, bad.as_bytes());
    }
}

#[test]
fn uuid_date_time_interval_are_strings() {
    assert_eq!(json(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#);
    assert_eq!(json(oid::DATE, "2026-11-22"), r#""2026-11-22""#);
    assert_eq!(json(oid::DATE, "infinity"), r#""infinity""#);
    assert_eq!(json(oid::DATE, "-infinity"), r#""-infinity""#);
    assert_eq!(json(oid::DATE, "0044-03-15 BC"), r#""-0043-03-15""#);
    assert_eq!(json(oid::DATE, "0001-01-01 BC"), r#""0000-01-01""#);
    assert_eq!(json(oid::DATE, "10000-01-01"), r#""+10000-01-01""#);
    assert_eq!(json(oid::DATE, "5874897-12-31"), r#""+5874897-12-31""#);
    assert_eq!(json(oid::DATE, "4714-11-24 BC"), r#""-4713-11-24""#);
    for bad in ["22-11-2026", "2026-13-01", "2026-1-01", "x", "2026-11-22 AD"] {
        assert!(write_json(&mut Vec::new(), oid::DATE, bad.as_bytes()).is_err(), "{bad}");
    }
    assert_eq!(json(oid::TIME, "08:00:00.5"), r#""08:00:00.5""#);
    assert_eq!(json(oid::TIME, "23:59:59"), r#""23:59:59""#);
    assert_eq!(json(oid::TIMETZ, "08:00:00+05:30"), r#""08:00:00+05:30""#);
    assert_eq!(json(oid::INTERVAL, "P1Y2M3DT4H5M6.5S"), r#""P1Y2M3DT4H5M6.5S""#);
    assert_eq!(json(oid::INTERVAL, "PT0S"), r#""PT0S""#);
}

#[test]
fn timestamps() {
    assert_eq!(json(oid::TIMESTAMP, "2026-11-22 08:00:00.123456"), r#""2026-11-22T08:00:00.123456""#);
    assert_eq!(json(oid::TIMESTAMP, "2026-11-22 08:00:00"), r#""2026-11-22T08:00:00""#);
    assert_eq!(json(oid::TIMESTAMP, "infinity"), r#""infinity""#);
    assert_eq!(json(oid::TIMESTAMP, "-infinity"), r#""-infinity""#);
    assert_eq!(json(oid::TIMESTAMP, "0044-03-15 12:00:00 BC"), r#""-0043-03-15T12:00:00""#);
    assert_eq!(json(oid::TIMESTAMP, "294276-12-31 23:59:59.999999"), r#""+294276-12-31T23:59:59.999999""#);
    for bad in [
        "2026-11-22T08:00:00",
        "11/22/2026 08:00:00",
        "2026-13-01 00:00:00",
        "2026-11-22 25:00:00",
        "2026-11-22 08:00",
        "2026-11-22 08:00:00.",
        "2026-11-22 08:00:00+00",
        "",
        "26-11-22 08:00:00",
    ] {
        fails(oid::TIMESTAMP, bad.as_bytes());
    }
}

#[test]
fn timestamptz_is_utc_with_z() {
    let tz = |s| json(oid::TIMESTAMPTZ, s);
    assert_eq!(tz("2026-11-22 08:00:00.123456+00"), r#""2026-11-22T08:00:00.123456Z""#);
    assert_eq!(tz("2026-11-22 08:00:00+00"), r#""2026-11-22T08:00:00Z""#);
    assert_eq!(tz("2026-11-22 08:00:00+00:00"), r#""2026-11-22T08:00:00Z""#);
    assert_eq!(tz("infinity"), r#""infinity""#);
    assert_eq!(tz("0044-03-15 12:00:00+00 BC"), r#""-0043-03-15T12:00:00Z""#);
    assert_eq!(tz("10000-01-01 00:00:00+00"), r#""+10000-01-01T00:00:00Z""#);
    // Other offsets (a session without TimeZone=UTC) are normalised.
    assert_eq!(tz("2026-11-22 08:00:00.5+05:30"), r#""2026-11-22T02:30:00.5Z""#);
    assert_eq!(tz("2026-11-22 23:30:00-01"), r#""2026-11-23T00:30:00Z""#);
    assert_eq!(tz("2026-01-01 00:30:00+01"), r#""2025-12-31T23:30:00Z""#);
    assert_eq!(tz("2024-03-01 00:30:00+01"), r#""2024-02-29T23:30:00Z""#);
    assert_eq!(tz("1900-01-01 00:00:00+00:09:21"), r#""1899-12-31T23:50:39Z""#);
    assert_eq!(tz("0001-01-01 00:30:00+01"), r#""0000-12-31T23:30:00Z""#);
    assert_eq!(tz("0001-12-31 23:30:00-01 BC"), r#""0001-01-01T00:30:00Z""#);
    for bad in [
        "2026-11-22 08:00:00",
        "2026-11-22 08:00:00+0",
        "2026-11-22 08:00:00+00:0",
        "2026-11-22 08:00:00Z",
        "2026-11-22 08:00:00+00;00",
    ] {
        fails(oid::TIMESTAMPTZ, bad.as_bytes());
    }
}

#[test]
fn civil_day_arithmetic_round_trips() {
    for days in (-200_000_000..200_000_000).step_by(9_973) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(days_from_civil(2000, 1, 1), 10_957);
}

#[test]
fn bytea_is_base64() {
    assert_eq!(json(oid::BYTEA, "\\x0a0b"), r#""Cgs=""#);
    assert_eq!(json(oid::BYTEA, "\\x"), r#""""#);
    assert_eq!(json(oid::BYTEA, "\\xDEADbeef"), r#""3q2+7w==""#);
    // Longer than one decoding chunk: padding only at the end.
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let expected = format!("\"{}\"", base64::engine::general_purpose::STANDARD.encode(&data));
    assert_eq!(json(oid::BYTEA, &format!("\\x{hex}")), expected);
    // Escape format (bytea_output=escape) is understood too.
    assert_eq!(json(oid::BYTEA, "a\\\\b\\001"), r#""YVxiAQ==""#);
    for bad in ["\\x0", "\\xzz", "\\x0g", "a\\b", "\\400", "\\"] {
        fails(oid::BYTEA, bad.as_bytes());
    }
}

#[test]
fn arrays() {
    assert_eq!(json(1007, "{1,2,3}"), "[1,2,3]");
    assert_eq!(json(1007, "{{1,2},{3,NULL}}"), "[[1,2],[3,null]]");
    assert_eq!(json(1007, "{}"), "[]");
    assert_eq!(json(1007, "[0:1]={1,2}"), "[1,2]");
    assert_eq!(json(1007, "[0:1][-1:0]={{1,2},{3,4}}"), "[[1,2],[3,4]]");
    assert_eq!(json(1000, "{t,f,NULL}"), "[true,false,null]");
    assert_eq!(json(1016, "{{{1}},{{2}}}"), "[[[1]],[[2]]]");
    assert_eq!(
        json(1009, r#"{"a,b","q\"uote","back\\slash",NULL,"NULL",plain,"","{}",héllo,"x y"}"#),
        r#"["a,b","q\"uote","back\\slash",null,"NULL","plain","","{}","héllo","x y"]"#
    );
    assert_eq!(json(1009, r#"{"é\é",a\,b,\NULL, sp ace }"#), r#"["éé","a,b","NULL","sp ace"]"#);
    assert_eq!(json(1231, "{1.5,NaN,12345678901234567890.1}"), r#"["1.5","NaN","12345678901234567890.1"]"#);
    assert_eq!(json(1022, "{NaN,1.5,-Infinity}"), r#"["NaN",1.5,"-Infinity"]"#);
    assert_eq!(json(3807, r#"{"{\"a\": 1}","[1, 2]",NULL}"#), r#"[{"a": 1},[1, 2],null]"#);
    assert_eq!(json(199, r#"{"\"s\""}"#), r#"["s"]"#);
    assert_eq!(json(1001, r#"{"\\x0a0b",NULL}"#), r#"["Cgs=",null]"#);
    assert_eq!(
        json(1185, r#"{"2026-11-22 08:00:00+00","2026-11-22 08:00:00.5+00"}"#),
        r#"["2026-11-22T08:00:00Z","2026-11-22T08:00:00.5Z"]"#
    );
    assert_eq!(json(1115, r#"{"2026-11-22 08:00:00"}"#), r#"["2026-11-22T08:00:00"]"#);
    assert_eq!(json(2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"), r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]"#);
    assert_eq!(json(1187, "{P1D,PT1H}"), r#"["P1D","PT1H"]"#);
    assert_eq!(json(1182, "{2026-11-22,infinity}"), r#"["2026-11-22","infinity"]"#);
    let v = to_value(1007, b"{{1,2},{3,NULL}}").unwrap();
    assert_eq!(v, serde_json::json!([[1, 2], [3, null]]));
    for bad in [
        "",
        "{1,2",
        "{1,,2}",
        "1,2",
        "{1}x",
        "{\"a}",
        "{1,{2}",
        "[1:2]{1,2}",
        "[1:x]={1}",
        "{a}",
        "{1 2}",
        "{,}",
        "{1,}",
        "{\"1\"x}",
        "{{1}",
        "}",
        "{1\\",
    ] {
        fails(1007, bad.as_bytes());
    }
    assert!(matches!(fails(1007, b"{a}"), ValueError::Invalid { type_oid: oid::INT4, .. }));
    assert!(matches!(fails(1007, b"{1,,2}"), ValueError::Invalid { type_oid: 1007, .. }));
}

#[test]
fn every_listed_array_oid_maps() {
    for (array, elem) in [
        (1000, 16),
        (1005, 21),
        (1007, 23),
        (1016, 20),
        (1028, 26),
        (1021, 700),
        (1022, 701),
        (1231, 1700),
        (1009, 25),
        (1015, 1043),
        (1014, 1042),
        (1003, 19),
        (199, 114),
        (3807, 3802),
        (2951, 2950),
        (1182, 1082),
        (1183, 1083),
        (1115, 1114),
        (1185, 1184),
        (1187, 1186),
        (1001, 17),
        (1270, 1266),
    ] {
        assert_eq!(array_element_type(array), Some(elem), "{array}");
    }
    assert_eq!(array_element_type(1020), None);
    assert_eq!(array_element_type(25), None);
}

/// The ASCII shortcut answers as std's validation does: ASCII, valid multi-byte text, and every kind of invalid byte
/// sequence at every position.
#[test]
fn text_is_validated_as_std_validates_it() {
    let mut rng = crate::testing::SplitMix64::new(7u64);
    let mut next = || rng.next_u64();
    let pieces: [&[u8]; 10] =
        [b"a", b"0", b" ", "é".as_bytes(), "€".as_bytes(), "😀".as_bytes(), b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"];
    for _ in 0..50_000 {
        let len = (next() % 24) as usize;
        let mut bytes = Vec::new();
        for _ in 0..len {
            let r = next();
            // Mostly ASCII, as values are.
            bytes.extend_from_slice(if r % 4 != 0 {
                pieces[(r / 4 % 3) as usize]
            } else {
                pieces[(r / 4 % 10) as usize]
            });
        }
        assert_eq!(super::utf8(&bytes).ok(), std::str::from_utf8(&bytes).ok(), "{bytes:?}");
    }
}

#[test]
fn invalid_utf8_names_the_type() {
    for t in [oid::TEXT, oid::INT4, oid::JSONB, 1009, 70_000] {
        assert!(matches!(fails(t, b"ab\xffcd"), ValueError::InvalidUtf8 { type_oid } if type_oid == t));
    }
    let e = fails(oid::BYTEA, b"\xc3");
    assert_eq!(e.to_string(), "value of type OID 17 is not valid UTF-8");
}

#[test]
fn to_value_maps_like_write_json() {
    assert_eq!(to_value(oid::INT8, b"9223372036854775807").unwrap(), serde_json::json!(9_223_372_036_854_775_807i64));
    assert_eq!(to_value(oid::BOOL, b"t").unwrap(), serde_json::json!(true));
    assert_eq!(to_value(oid::FLOAT8, b"NaN").unwrap(), serde_json::json!("NaN"));
    assert_eq!(to_value(oid::TEXT, b"x\"y").unwrap(), serde_json::json!("x\"y"));
    assert!(to_value(oid::INT4, b"x").is_err());
}

#[test]
fn formats_commit_times() {
    assert_eq!(format_unix_micros(1_795_334_400_123_456), "2026-11-22T08:00:00.123456Z");
    assert_eq!(format_unix_micros(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(format_unix_micros(-1), "1969-12-31T23:59:59.999999Z");
    for us in [0, -1, 1_795_334_400_123_456, -62_135_596_800_000_000, 253_402_300_799_999_999, -100_000_000_000_000_000]
    {
        assert_eq!(format_unix_micros_civil(us), format_unix_micros(us), "{us}");
    }
    // The hand-written formatter agrees with chrono across its whole range.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let us = (rng.next() % 500_000_000_000_000_000) as i64 - 100_000_000_000_000_000;
        let expected =
            chrono::DateTime::from_timestamp_micros(us).unwrap().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        assert_eq!(format_unix_micros(us), expected, "{us}");
    }
    // Beyond chrono's range: still an answer, no panic.
    assert!(format_unix_micros(i64::MAX).starts_with("+294247-"));
    assert!(format_unix_micros(i64::MIN).starts_with("-290308-"));
}

#[test]
fn garbage_never_panics_and_output_is_always_json() {
    const ALPHABET: &[u8] = b"{}[]\",\\:;=-+.eExNULtf0123456789 Tz\x00\x1f\xc3\xa9\xff";
    const TYPES: &[u32] = &[
        16, 17, 20, 21, 23, 25, 26, 114, 700, 701, 1082, 1114, 1184, 1186, 1700, 3802, 1000, 1001, 1007, 1009, 1022,
        1115, 1185, 1231, 3807, 199, 70_000,
    ];
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let mut out = Vec::new();
    for _ in 0..30_000 {
        let len = (rng.next() % 40) as usize;
        let text: Vec<u8> = (0..len).map(|_| ALPHABET[rng.next() as usize % ALPHABET.len()]).collect();
        let type_oid = TYPES[rng.next() as usize % TYPES.len()];
        out.clear();
        if write_json(&mut out, type_oid, &text).is_ok() {
            assert!(
                validate_json(&out).is_ok(),
                "type {type_oid}, {text:?} gave invalid JSON {:?}",
                String::from_utf8_lossy(&out)
            );
        } else {
            assert!(out.is_empty());
        }
    }
}

/// The 32-bit calendar of the years 0000–9999 agrees with the general one on every day, and declines outside.
#[test]
fn the_fast_calendar_agrees_on_every_day_of_the_years_0_to_9999() {
    let (first, last) = (days_from_civil(0, 1, 1), days_from_civil(9999, 12, 31));
    for days in first..=last {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(civil_0_to_9999(days), Some((y as u32, m, d)), "{days}");
    }
    for days in [first - 1, last + 1, i64::MIN, i64::MAX] {
        assert_eq!(civil_0_to_9999(days), None, "{days}");
    }
}
