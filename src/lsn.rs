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

    /// The `Display` form in a stack buffer: the bytes `..len` (at most 8 + 1 + 8).
    fn text(self) -> ([u8; 17], usize) {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut buf = [0u8; 17];
        let mut len = 0;
        for (i, half) in [(self.0 >> 32) as u32, self.0 as u32].into_iter().enumerate() {
            if i == 1 {
                buf[len] = b'/';
                len += 1;
            }
            // Hex digits of `half` without leading zeros (at least one digit), most significant first.
            let digits = (8 - half.leading_zeros() as usize / 4).max(1);
            for d in (0..digits).rev() {
                buf[len] = DIGITS[((half >> (4 * d)) & 0xF) as usize];
                len += 1;
            }
        }
        (buf, len)
    }
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
