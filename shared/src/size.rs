//! Byte counts for people, one scheme everywhere: binary units (KiB, MiB,
//! GiB) with one decimal, as `ls -lh` shows files. Page sizes and limits
//! use the same units so that two numbers in one message compare at a
//! glance.

use std::fmt;

/// A byte count shown for people: `512 bytes`, `2.9 MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        if bytes < 1024 {
            return match bytes {
                1 => f.write_str("1 byte"),
                n => write!(f, "{n} bytes"),
            };
        }
        let mut unit = 1024u128;
        for (i, name) in UNITS.iter().enumerate() {
            // Tenths of the unit, rounded half up; 1023.96 KiB would print
            // as "1024.0 KiB", so that moves on to the next unit.
            let tenths = (u128::from(bytes) * 10 + unit / 2) / unit;
            if tenths < 10_240 || i == UNITS.len() - 1 {
                return write!(f, "{}.{} {name}", tenths / 10, tenths % 10);
            }
            unit *= 1024;
        }
        unreachable!("the last unit always returns")
    }
}

/// `size` and `limit` for a message that compares them. When both round
/// to the same figure ("1.0 MiB" and "1.0 MiB") the exact counts follow,
/// or the message would contradict itself.
pub fn compared(size: u64, limit: u64) -> (String, String) {
    let (a, b) = (Bytes(size).to_string(), Bytes(limit).to_string());
    if a == b && size != limit {
        (
            format!("{a} ({size} bytes)"),
            format!("{b} ({limit} bytes)"),
        )
    } else {
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_unit_that_keeps_the_figure_small() {
        let cases = [
            (0, "0 bytes"),
            (1, "1 byte"),
            (1023, "1023 bytes"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (1_048_575, "1.0 MiB"),
            (1 << 20, "1.0 MiB"),
            (1_500_000, "1.4 MiB"),
            (3_000_000, "2.9 MiB"),
            (1 << 30, "1.0 GiB"),
            (u64::MAX, "16777216.0 TiB"),
        ];
        for (bytes, shown) in cases {
            assert_eq!(Bytes(bytes).to_string(), shown, "{bytes}");
        }
    }

    #[test]
    fn comparisons_never_show_two_equal_figures_for_different_counts() {
        assert_eq!(
            compared(3_000_000, 1 << 20),
            ("2.9 MiB".into(), "1.0 MiB".into())
        );
        assert_eq!(
            compared((1 << 20) + 1, 1 << 20),
            (
                "1.0 MiB (1048577 bytes)".into(),
                "1.0 MiB (1048576 bytes)".into()
            )
        );
    }
}
