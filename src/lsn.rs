//! PostgreSQL log sequence numbers.
//!
//! An [`Lsn`] is a 64-bit position in the WAL. PostgreSQL prints it as two hex halves, `16/B374D848`;
//! [`Lsn`]'s `Display` and `FromStr` use exactly that form so checkpoints and logs match `pg_lsn` values.

use std::fmt;
use std::str::FromStr;

/// A WAL position. `Lsn(0)` is PostgreSQL's `InvalidXLogRecPtr` ("0/0").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`: no position.
    pub const INVALID: Lsn = Lsn(0);

    /// True for `0/0`.
    pub fn is_invalid(self) -> bool {
        self.0 == 0
    }

    /// Appends the `Display` form (`16/B374D848`) to `out` without the formatting machinery (hot path: every
    /// event carries LSNs).
    pub fn write_to(self, out: &mut Vec<u8>) {
        let (buf, len) = self.text();
        out.extend_from_slice(&buf[..len]);
    }

    /// The `Display` form without allocating: every record carries its change's LSN as a header.
    pub fn text_form(self) -> LsnText {
        let (buf, len) = self.text();
        LsnText { buf, len: len as u8 }
    }

    /// The `Display` form in a stack buffer: the bytes `..len` (at most 8 + 1 + 8). Two calls per change (header
    /// and event), so the digits come from word arithmetic rather than a loop per digit.
    fn text(self) -> ([u8; 17], usize) {
        let mut buf = [0u8; 17];
        let (hi, lo) = ((self.0 >> 32) as u32, self.0 as u32);
        // Hex digits without leading zeros (at least one digit), most significant first: each half's eight digits
        // shifted so its first significant one leads, stored whole (fixed-size copies), the next part overwriting the
        // rest.
        let digits = |half: u32| (8 - half.leading_zeros() as usize / 4).max(1);
        let leading = |half: u32, n: usize| (u64::from_be_bytes(hex8(half)) << (8 * (8 - n))).to_be_bytes();
        let (hd, ld) = (digits(hi), digits(lo));
        buf[..8].copy_from_slice(&leading(hi, hd));
        buf[hd] = b'/';
        buf[hd + 1..hd + 9].copy_from_slice(&leading(lo, ld));
        (buf, hd + 1 + ld)
    }
}

/// The eight upper-case hex digits of `v`, most significant first: each nibble spread into its own byte, then turned
/// into ASCII in all eight bytes at once (`'0' + n`, plus 7 more for `A`–`F`).
fn hex8(v: u32) -> [u8; 8] {
    let x = u64::from(v);
    let x = ((x & 0xFFFF_0000) << 16) | (x & 0xFFFF);
    let x = ((x & 0x0000_FF00_0000_FF00) << 8) | (x & 0x0000_00FF_0000_00FF);
    let x = ((x & 0x00F0_00F0_00F0_00F0) << 4) | (x & 0x000F_000F_000F_000F);
    // Bit 4 of a byte is set by `n + 6` exactly when n >= 10; no byte carries into the next (n + 6 < 256).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 7).to_be_bytes()
}

/// An LSN's text (`16/B374D848`) held inline, [`Lsn::text_form`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LsnText {
    buf: [u8; 17],
    len: u8,
}

impl LsnText {
    pub fn as_str(&self) -> &str {
        // Hex digits and '/' only, by construction.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not `{:X}` formatting: the router turns every change's LSN into a header.
        let (buf, len) = self.text();
        f.pad(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)
    }
}

/// The text was not of the form `HEX/HEX`.
#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal halves like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn write_to_and_display_match_postgres_form() {
        // The reference is std's hex formatting of the two halves (PostgreSQL's `%X/%X`).
        let mut values = vec![0u64, 1, 0xF, 0x10, 0x16_B374_D848, u64::MAX, 0xFFFF_FFFF, 1 << 32, 0x1_0000_000F];
        values.extend((0..64).map(|bit| 1u64 << bit).chain((0..64).map(|bit| u64::MAX >> bit)));
        // Every nibble value in every position, and a spread of others.
        values.extend([0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210, 0xA5A5_A5A5_5A5A_5A5A, 0x9999_9999_AAAA_AAAA]);
        values.extend((0..16u64).map(|n| n * 0x1111_1111_1111_1111));
        let mut rng = crate::testing::SplitMix64::new(0);
        values.extend((0..2000).map(|_| {
            let z = rng.next_u64();
            z >> (z % 64)
        }));
        for v in values {
            let expected = format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF);
            let mut out = Vec::new();
            Lsn(v).write_to(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
            assert_eq!(Lsn(v).to_string(), expected);
            assert_eq!(Lsn(v).text_form().as_str(), expected);
            assert_eq!(format!("{:>20}", Lsn(v)), format!("{expected:>20}"), "padding is honoured");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_text_form() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "16", "x/1", "1/", "/1", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Mostly what an LSN is made of, so that parsing gets far; also signs, spaces and non-ASCII.
    fn text_char() -> impl Strategy<Value = char> {
        prop_oneof![
            8 => prop::sample::select("0123456789abcdefABCDEF/".chars().collect::<Vec<_>>()),
            1 => any::<char>(),
            1 => prop::sample::select(vec!['+', '-', ' ', 'x', 'g', '\u{0}']),
        ]
    }

    proptest! {
        /// Every position prints as PostgreSQL does and parses back; `write_to` is `Display`; the order of
        /// positions is the order of the numbers (the flushed-position comparisons rely on it).
        #[test]
        fn display_parse_and_order_agree(a in any::<u64>(), b in any::<u64>()) {
            let text = Lsn(a).to_string();
            prop_assert_eq!(text.parse::<Lsn>().unwrap(), Lsn(a));
            let mut out = Vec::new();
            Lsn(a).write_to(&mut out);
            prop_assert_eq!(String::from_utf8(out).unwrap(), text.clone());
            // pg_lsn's input accepts lower case and leading zeros; so does ficus (checkpoint files are edited by hand).
            prop_assert_eq!(format!("{:08x}/{:08x}", a >> 32, a as u32).parse::<Lsn>().unwrap(), Lsn(a));
            prop_assert_eq!(Lsn(a).cmp(&Lsn(b)), a.cmp(&b));
            let (hi, lo) = text.split_once('/').unwrap();
            prop_assert_eq!((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap(), a);
        }

        /// Parsing any text is an answer, never a panic; what parses prints back to a text that parses to the same.
        #[test]
        fn parsing_arbitrary_text_never_panics(chars in prop::collection::vec(text_char(), 0..22)) {
            let s: String = chars.into_iter().collect();
            if let Ok(lsn) = s.parse::<Lsn>() {
                prop_assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
            }
        }
    }
}
