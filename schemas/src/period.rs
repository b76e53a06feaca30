//! Billing periods (calendar months in UTC) and days.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
pub use time::Date;
use time::{Month, OffsetDateTime};

/// Microseconds in a day.
pub const DAY_US: i64 = 86_400_000_000;

/// A calendar month in UTC, written `YYYY-MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period {
    year: i32,
    month: Month,
}

impl Period {
    /// The period containing `time_us` (microseconds since the Unix epoch).
    pub fn containing(time_us: i64) -> Self {
        let d = day_of(time_us);
        Self { year: d.year(), month: d.month() }
    }

    /// First instant of the period, in microseconds.
    pub fn start_us(&self) -> i64 {
        date_start_us(self.first_day())
    }

    /// First instant after the period, in microseconds.
    pub fn end_us(&self) -> i64 {
        self.next().start_us()
    }

    /// The period after this one.
    pub fn next(&self) -> Self {
        match self.month {
            Month::December => Self { year: self.year + 1, month: Month::January },
            m => Self { year: self.year, month: m.next() },
        }
    }

    /// The period before this one.
    pub fn previous(&self) -> Self {
        Self::containing(self.start_us() - 1)
    }

    /// First day of the period.
    pub fn first_day(&self) -> Date {
        Date::from_calendar_date(self.year, self.month, 1).expect("day 1 exists")
    }

    /// Every day of the period, in order.
    pub fn days(&self) -> impl Iterator<Item = Date> + use<> {
        let first = self.first_day();
        let n = self.month.length(self.year);
        (0..n).map(move |i| first + time::Duration::days(i64::from(i)))
    }
}

/// The UTC day containing `time_us`.
pub fn day_of(time_us: i64) -> Date {
    let secs = time_us.div_euclid(1_000_000);
    OffsetDateTime::from_unix_timestamp(secs).map(|t| t.date()).unwrap_or(Date::MIN)
}

/// First instant of `date` in UTC, in microseconds.
pub fn date_start_us(date: Date) -> i64 {
    date.midnight().assume_utc().unix_timestamp() * 1_000_000
}

/// `YYYY-MM-DD`.
pub fn format_day(date: Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

/// RFC 3339 text of a time in microseconds, e.g. `2026-11-21T00:00:00.123456Z`.
pub fn format_time(time_us: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_us) * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Microseconds of an RFC 3339 time; `None` when the text is not one.
pub fn parse_time(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Why a period text is refused.
#[derive(Debug, thiserror::Error)]
#[error("must be a month written YYYY-MM from 1970-01 to 9998-12, e.g. 2026-11")]
pub struct PeriodError;

impl FromStr for Period {
    type Err = PeriodError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (y, m) = s.split_once('-').ok_or(PeriodError)?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(PeriodError);
        }
        let year: i32 = y.parse().map_err(|_| PeriodError)?;
        let month: u8 = m.parse().map_err(|_| PeriodError)?;
        let month = Month::try_from(month).map_err(|_| PeriodError)?;
        if !(1970..=9998).contains(&year) {
            return Err(PeriodError);
        }
        Ok(Self { year, month })
    }
}

impl TryFrom<String> for Period {
    type Error = PeriodError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Period> for String {
    fn from(p: Period) -> String {
        p.to_string()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, u8::from(self.month))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_land_in_exactly_one_period() {
        let nov: Period = "2026-11".parse().unwrap();
        let last_us = nov.end_us() - 1_000; // 23:59:59.999
        assert_eq!(Period::containing(last_us), nov);
        assert_eq!(Period::containing(nov.end_us()), nov.next());
        assert_eq!(nov.next().to_string(), "2026-12");
        assert_eq!("2026-12".parse::<Period>().unwrap().next().to_string(), "2027-01");
        assert_eq!(nov.days().count(), 30);
        assert_eq!(format_day(day_of(last_us)), "2026-11-30");
    }

    #[test]
    fn refuses_malformed_periods() {
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", "", "2026-00", "abcd-ef", "9999-12", "1969-12"] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }
}
