//! Unix seconds to and from the one date-time form credentials use:
//! `YYYY-MM-DDTHH:MM:SSZ` (UTC, no fractions, no offsets, years 1970 to 9999).
//!
//! One spelling per instant keeps a parsed credential byte-identical to the one
//! that was signed.

/// The last second this module can write: 9999-12-31T23:59:59Z.
pub const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

const SECONDS_PER_DAY: u64 = 86_400;

/// Writes `seconds` as `YYYY-MM-DDTHH:MM:SSZ`; `None` past [`MAX_UNIX_SECONDS`].
pub fn format(seconds: u64) -> Option<String> {
    if seconds > MAX_UNIX_SECONDS {
        return None;
    }
    let days = seconds / SECONDS_PER_DAY;
    let rest = seconds % SECONDS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    ))
}

/// Reads `YYYY-MM-DDTHH:MM:SSZ` back into unix seconds; `None` for anything else.
pub fn parse(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<u64> {
        b[from..to].iter().try_fold(0u64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
        })
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if year < 1970
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second)
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date on or after it. Years are counted from March so
/// the leap day falls at the end; an era is the 400-year cycle of 146,097 days.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year % 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days lie between 0000-03-01 and 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Serde for unix seconds written as dates.
pub(crate) mod serde_seconds {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(seconds: &u64, s: S) -> Result<S::Ok, S::Error> {
        let text = super::format(*seconds)
            .ok_or_else(|| serde::ser::Error::custom("date after year 9999"))?;
        s.serialize_str(&text)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "date {text:?} is not YYYY-MM-DDTHH:MM:SSZ (UTC, years 1970-9999)"
            ))
        })
    }
}

/// Serde for optional unix seconds written as dates (absent when `None`).
pub(crate) mod serde_seconds_opt {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(seconds: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match seconds {
            Some(seconds) => super::serde_seconds::serialize(seconds, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::serde_seconds::deserialize(d).map(Some)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check(seconds: u64, text: &str) {
        assert_eq!(format(seconds).as_deref(), Some(text));
        assert_eq!(parse(text), Some(seconds), "{text}");
    }

    #[test]
    fn known_instants() {
        check(0, "1970-01-01T00:00:00Z");
        check(951_782_400, "2000-02-29T00:00:00Z");
        check(1_700_000_000, "2023-11-14T22:13:20Z");
        check(4_107_542_399, "2100-02-28T23:59:59Z");
        check(4_107_542_400, "2100-03-01T00:00:00Z");
        check(MAX_UNIX_SECONDS, "9999-12-31T23:59:59Z");
        assert_eq!(format(MAX_UNIX_SECONDS + 1), None);
    }

    #[test]
    fn refuses_other_spellings() {
        for text in [
            "",
            "1969-12-31T23:59:59Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.000Z",
            "2023-11-14T22:13:20+00:00",
            "2023-11-14 22:13:20Z",
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-00-01T00:00:00Z",
            "2023-01-00T00:00:00Z",
            "2023-01-01T24:00:00Z",
            "2023-01-01T00:60:00Z",
            "2023-01-01T00:00:60Z",
            "+023-01-01T00:00:00Z",
            "2023-01-01t00:00:00z",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
        assert_eq!(parse("2024-02-29T00:00:00Z").unwrap(), 1_709_164_800);
    }

    proptest! {
        #[test]
        fn round_trips(seconds in 0..=MAX_UNIX_SECONDS) {
            let text = format(seconds).unwrap();
            prop_assert_eq!(parse(&text), Some(seconds));
        }

        #[test]
        fn junk_never_panics(text in any::<String>()) {
            if let Some(seconds) = parse(&text) {
                prop_assert_eq!(format(seconds), Some(text));
            }
        }

        #[test]
        fn near_misses_never_panic(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z") {
            if let Some(seconds) = parse(&text) {
                prop_assert_eq!(format(seconds), Some(text));
            }
        }
    }
}
