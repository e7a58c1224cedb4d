use super::*;

fn json(oid: u32, data: &[u8]) -> String {
    let mut out = Vec::new();
    write_json(&mut out, oid, data).unwrap();
    String::from_utf8(out).unwrap()
}

fn float8(v: f64) -> String {
    json(oid::FLOAT8, &v.to_be_bytes())
}

#[test]
fn floats_match_postgres_output() {
    for (v, pg) in [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (123456789012345.0, "123456789012345"),
        (1e15, "1e+15"),
        (1.2345e100, "1.2345e+100"),
        (f64::MAX, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (-2.5, "-2.5"),
    ] {
        assert_eq!(float8(v), pg, "{v}");
    }
    assert_eq!(json(oid::FLOAT4, &0.1f32.to_be_bytes()), "0.1");
    assert_eq!(json(oid::FLOAT4, &123456.0f32.to_be_bytes()), "123456");
    assert_eq!(json(oid::FLOAT4, &1234567.0f32.to_be_bytes()), "1.234567e+06");
    assert_eq!(float8(f64::NAN), "\"NaN\"");
    assert_eq!(float8(f64::NEG_INFINITY), "\"-Infinity\"");
}

fn numeric(ndigits: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(ndigits.len() as u16).to_be_bytes());
    b.extend_from_slice(&weight.to_be_bytes());
    b.extend_from_slice(&sign.to_be_bytes());
    b.extend_from_slice(&dscale.to_be_bytes());
    for d in ndigits {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b
}

#[test]
fn numeric_is_exact() {
    // 12345.678 = groups [1, 2345, 6780], weight 1, dscale 3
    assert_eq!(json(oid::NUMERIC, &numeric(&[1, 2345, 6780], 1, NUMERIC_POS, 3)), "\"12345.678\"");
    assert_eq!(json(oid::NUMERIC, &numeric(&[1, 2345, 6780], 1, NUMERIC_NEG, 3)), "\"-12345.678\"");
    // 0.00012 = groups [1, 2000] at weight -1, dscale 5
    assert_eq!(json(oid::NUMERIC, &numeric(&[1, 2000], -1, NUMERIC_POS, 5)), "\"0.00012\"");
    // 0.0000001 (weight -2)
    assert_eq!(json(oid::NUMERIC, &numeric(&[10], -2, NUMERIC_POS, 7)), "\"0.0000001\"");
    // 10000000 with trailing zero groups stripped, scale 2
    assert_eq!(json(oid::NUMERIC, &numeric(&[1000], 1, NUMERIC_POS, 2)), "\"10000000.00\"");
    assert_eq!(json(oid::NUMERIC, &numeric(&[], 0, NUMERIC_POS, 0)), "\"0\"");
    assert_eq!(json(oid::NUMERIC, &numeric(&[], 0, NUMERIC_POS, 3)), "\"0.000\"");
    assert_eq!(json(oid::NUMERIC, &numeric(&[], 0, NUMERIC_NAN, 0)), "\"NaN\"");
    assert_eq!(json(oid::NUMERIC, &numeric(&[], 0, NUMERIC_NINF, 0)), "\"-Infinity\"");
}

#[test]
fn dates_and_timestamps() {
    assert_eq!(json(oid::DATE, &0i32.to_be_bytes()), "\"2000-01-01\"");
    assert_eq!(json(oid::DATE, &(-730_120i32).to_be_bytes()), "\"0000-12-31\"");
    assert_eq!(json(oid::DATE, &i32::MAX.to_be_bytes()), "\"infinity\"");
    let ts = 849_254_400_123_450i64; // 2026-11-29 08:00:00.12345 since 2000-01-01
    assert_eq!(json(oid::TIMESTAMPTZ, &ts.to_be_bytes()), "\"2026-11-29T08:00:00.12345Z\"");
    assert_eq!(json(oid::TIMESTAMP, &0i64.to_be_bytes()), "\"2000-01-01T00:00:00\"");
    assert_eq!(json(oid::TIMESTAMP, &(-1i64).to_be_bytes()), "\"1999-12-31T23:59:59.999999\"");
    assert_eq!(json(oid::TIMESTAMPTZ, &i64::MIN.to_be_bytes()), "\"-infinity\"");
    assert_eq!(json(oid::TIME, &45_296_500_000i64.to_be_bytes()), "\"12:34:56.5\"");
}

/// Binary timestamps and times against chrono, over PostgreSQL's range (the years 0000–9999 are written at once,
/// the others through the signed forms): dates, clocks and trimmed fractions, every field boundary included.
#[test]
fn binary_timestamps_and_times_match_chrono() {
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    let mut rng = crate::testing::SplitMix64::new(0x1234_5678_9ABC_DEF0u64);
    let mut next = || rng.next_u64();
    let fraction = |micros: i64| {
        let f = format!("{micros:06}");
        let f = f.trim_end_matches('0');
        if f.is_empty() {
            String::new()
        } else {
            format!(".{f}")
        }
    };
    for i in 0..40_000 {
        let r = next();
        let us: i64 = match i % 4 {
            // Around now, any microsecond.
            0 => (r % 4_000_000_000_000_000) as i64 - 2_000_000_000_000_000,
            // PostgreSQL's whole range (4713 BC to 294276 AD, within chrono's ±262143 years), whole seconds.
            1 => ((r % 16_000_000_000_000) as i64 - 8_000_000_000_000) * 1_000_000,
            // Fractions with trailing zeros.
            2 => (r % 4_000_000_000_000_000) as i64 / 1000 * 1000 - 2_000_000_000_000_000,
            // The last and first second of a day.
            _ => ((r % 200_000) as i64 - 100_000) * 86_400_000_000 + if r % 2 == 0 { 86_399_999_999 } else { 1 },
        };
        let t = chrono::DateTime::from_timestamp_micros(us + PG_EPOCH_US).unwrap();
        let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
        let frac = fraction((us + PG_EPOCH_US).rem_euclid(1_000_000));
        assert_eq!(json(oid::TIMESTAMP, &us.to_be_bytes()), format!("\"{base}{frac}\""), "{us}");
        assert_eq!(json(oid::TIMESTAMPTZ, &us.to_be_bytes()), format!("\"{base}{frac}Z\""), "{us}");
        let of_day = us.rem_euclid(86_400_000_000);
        let clock = t.format("%H:%M:%S").to_string();
        assert_eq!(json(oid::TIME, &of_day.to_be_bytes()), format!("\"{clock}{frac}\""), "{of_day}");
    }
    assert_eq!(json(oid::TIME, &86_400_000_000i64.to_be_bytes()), "\"24:00:00\"");
}

#[test]
fn scalars() {
    assert_eq!(json(oid::BOOL, &[1]), "true");
    assert_eq!(json(oid::INT2, &(-7i16).to_be_bytes()), "-7");
    assert_eq!(json(oid::INT8, &i64::MIN.to_be_bytes()), "-9223372036854775808");
    assert_eq!(json(oid::TEXT, "héllo \"q\"".as_bytes()), "\"héllo \\\"q\\\"\"");
    assert_eq!(json(oid::JSONB, b"\x01{\"a\": 1}"), "{\"a\": 1}");
    assert_eq!(json(oid::BYTEA, &[0, 1, 2, 255]), "\"AAEC/w==\"");
    let uuid = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
    assert_eq!(json(oid::UUID, &uuid), "\"12345678-9abc-def0-1234-56789abcdef0\"");
}

fn int4_array(dims: &[i32], elems: &[Option<i32>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(dims.len() as i32).to_be_bytes());
    b.extend_from_slice(&(elems.iter().any(Option::is_none) as i32).to_be_bytes());
    b.extend_from_slice(&oid::INT4.to_be_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
    }
    for e in elems {
        match e {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&4i32.to_be_bytes());
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
    b
}

#[test]
fn arrays_nest() {
    assert_eq!(json(1007, &int4_array(&[3], &[Some(1), None, Some(3)])), "[1,null,3]");
    assert_eq!(json(1007, &int4_array(&[2, 2], &[Some(1), Some(2), Some(3), Some(4)])), "[[1,2],[3,4]]");
    assert_eq!(json(1007, &int4_array(&[], &[])), "[]");
}

#[test]
fn malformed_bytes_are_errors_and_leave_the_buffer_alone() {
    let mut out = b"prefix".to_vec();
    for (oid, data) in [
        (oid::INT4, &b"\x00\x01"[..]),
        (oid::BOOL, b"\x02"),
        (oid::NUMERIC, b"\x00\x02\x00\x00\x00\x00\x00\x00\x00\x01"),
        (oid::NUMERIC, b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10"),
        (oid::JSONB, b"\x02{}"),
        (oid::TEXT, b"\xff"),
        (oid::TIME, &(-1i64).to_be_bytes()),
        (1007, b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x17\x7f\xff\xff\xff\x00\x00\x00\x01"),
        (1007, &int4_array(&[3], &[Some(1)])),
        (oid::INTERVAL, b"\x00"),
    ] {
        assert!(write_json(&mut out, oid, data).is_err(), "{oid} {data:?}");
        assert_eq!(out, b"prefix");
    }
    // Fuzz-style: every prefix of valid values, and garbage, never panics.
    let valid = int4_array(&[2, 2], &[Some(1), None, Some(3), Some(4)]);
    for n in 0..valid.len() {
        let _ = write_json(&mut out, 1007, &valid[..n]);
    }
    let num = numeric(&[1, 2345, 6780], 1, NUMERIC_POS, 3);
    for n in 0..num.len() {
        let _ = write_json(&mut out, oid::NUMERIC, &num[..n]);
    }
}

/// The float layout starts from `sci`'s text: Rust's `{:e}` form with PostgreSQL's digits. Both are the shortest
/// digits that read back as the value; where two candidates are equally close (1658206780088562.25 lies halfway
/// between …562.2 and …562.3), float4out/float8out (Ryu) round half to even, and Rust's `{:e}` does not
/// (`core::binary_floats_have_postgresqls_digits_byte_for_byte` checks against PostgreSQL itself).
#[test]
#[allow(clippy::excessive_precision)] // the exact values of the ties, spelled out
fn sci_is_the_shortest_text_with_ties_to_even() {
    fn check<F: zmij::Float + std::fmt::LowerExp + std::str::FromStr + Copy + PartialEq + std::fmt::Debug>(v: F) {
        let mut buf = [0u8; SCI_BUF];
        let ours = sci(&mut buf, v).to_string();
        let rust = format!("{v:e}");
        let back: F = ours.parse().unwrap_or_else(|_| panic!("{ours} does not parse"));
        assert!(back == v && (ours.starts_with('-') == rust.starts_with('-')), "{ours} is not {v:?}");
        if ours != rust {
            // A tie: same length and exponent, last digits one apart, ours even.
            let (o, r) = (ours.split('e').next().unwrap(), rust.split('e').next().unwrap());
            assert_eq!((o.len(), ours.split('e').nth(1)), (r.len(), rust.split('e').nth(1)), "{ours} vs {rust}");
            let (od, rd) = (o.bytes().last().unwrap(), r.bytes().last().unwrap());
            assert!(od % 2 == 0 && od.abs_diff(rd) == 1 && o[..o.len() - 1] == r[..r.len() - 1], "{ours} vs {rust}");
        }
    }
    let mut buf = [0u8; SCI_BUF];
    assert_eq!(sci(&mut buf, 312985.125f32), "3.1298512e5");
    assert_eq!(sci(&mut buf, 1658206780088562.25f64), "1.6582067800885622e15");
    assert_eq!(sci(&mut buf, 1658206780088562.75f64), "1.6582067800885628e15");
    assert_eq!(sci(&mut buf, -0.0f64), "-0e0");
    for v in [
        0.0,
        -0.0,
        0.5,
        1.0,
        -1.5,
        0.1,
        1e-7,
        123456.789,
        1e15,
        1e16,
        1e21,
        1e22,
        9007199254740993.0,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        f64::EPSILON,
        5e-324,
        -2.225073858507201e-308,
    ] {
        check(v);
    }
    for v in [0.0f32, -0.0, 0.1, 1e-7, 16777217.0, f32::MAX, f32::MIN_POSITIVE, 1e-45, 3.4028235e38] {
        check(v);
    }
    // Random bit patterns of both widths (a fixed seed: the same cases every run), and decimal-looking values.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..200_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = f64::from_bits(x);
        if v.is_finite() {
            check(v);
        }
        let w = f32::from_bits(x as u32);
        if w.is_finite() {
            check(w);
        }
        check(i as f64 * 0.01);
        check((x % 1_000_000) as f64 / 1000.0);
    }
}

/// The copy of zmij's text ([`write_float_fast`]) against the layout from [`Shortest`] (the path checked against
/// PostgreSQL itself), over random bit patterns of both widths and the edges of the fixed ranges.
#[test]
fn floats_copied_from_zmij_are_laid_out_as_from_their_digits() {
    fn slow(v: f64, digits: Option<Shortest>, max: i32) -> String {
        let mut out = Vec::new();
        write_float(&mut out, v, digits, max);
        String::from_utf8(out).unwrap()
    }
    fn fast<F: zmij::Float>(v: F, wide: f64, max: i32) -> String {
        let mut out = Vec::new();
        write_float_fast(&mut out, v, wide, max);
        String::from_utf8(out).unwrap()
    }
    let mut rng = crate::testing::SplitMix64::new(0x0DDB_1A5E_5BAD_5EEDu64);
    let mut next = || rng.next_u64();
    let mut doubles: Vec<f64> = (0..100_000).map(|_| f64::from_bits(next())).collect();
    let mut singles: Vec<f32> = (0..100_000).map(|_| f32::from_bits(next() as u32)).collect();
    for e in -8..20 {
        for m in [1.0, 1.5, 9.99, 9.999999, 1.0000001, 123.456, 0.5] {
            let v = m * 10f64.powi(e);
            doubles.extend([v, -v, v.next_up(), v.next_down()]);
            singles.extend([v as f32, -(v as f32)]);
        }
    }
    doubles.extend([0.0, -0.0, f64::MIN_POSITIVE, f64::MAX, f64::MIN, 5e-324, f64::NAN, f64::INFINITY, 1e15, 1e14]);
    singles.extend([0.0, -0.0, f32::MIN_POSITIVE, f32::MAX, 1e-45, f32::NAN, f32::NEG_INFINITY, 1e6, 999_999.9]);
    for v in doubles {
        assert_eq!(fast(v, v, 15), slow(v, v.is_finite().then(|| Shortest::of(v)), 15), "{v:e}");
    }
    for v in singles {
        let wide = f64::from(v);
        assert_eq!(fast(v, wide, 6), slow(wide, v.is_finite().then(|| Shortest::of(v)), 6), "{v:e}");
    }
}
