//! The SQL that reads usage, and the rows it returns.
//!
//! Every read counts each event once: of the copies of one `(tenant, id)`, the one with the
//! highest `rank` (the lowest log offset). Days that [`roll_up`](super::ClickHouseStore::roll_up)
//! sealed are read from `daily`; later days from `events`.

use crate::Error;
use clickhouse::Row;
use meter_schemas::{Aggregation, Tally};
use rust_decimal::Decimal;
use serde::Deserialize;

/// Microseconds in a day.
pub(super) const DAY_US: i64 = 86_400_000_000;

/// The code an aggregation kind is stored under in `events.kinds` (and `daily.kind`): the one
/// place these codes are written. A new kind fails to compile here until it has a code.
pub(super) const fn kind_code(kind: Aggregation) -> u8 {
    match kind {
        Aggregation::Count => 0,
        Aggregation::Sum => 1,
        Aggregation::UniqueCount => 2,
        Aggregation::Max => 3,
        Aggregation::Latest => 4,
    }
}

/// The aggregation kind stored under `code`; a code no kind has is an error, never a default.
pub(super) fn kind_of(code: u8) -> Result<Aggregation, Error> {
    Aggregation::ALL.into_iter().find(|k| kind_code(*k) == code).ok_or(Error::UnknownKind(code))
}

/// One meter's tally over a group (a tenant's day or period).
#[derive(Debug, Row, Deserialize)]
pub(super) struct AggRow {
    pub tenant: String,
    pub meter: String,
    /// Days since the epoch, or -1 for a whole range.
    pub day: i64,
    pub kind: u8,
    pub n: u64,
    pub sum: i128,
    pub uniq: u64,
    pub max: i128,
    pub latest_value: i128,
    pub latest_us: i64,
    pub latest_id: String,
}

impl AggRow {
    /// The row's day as `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        meter_schemas::period::format_day(meter_schemas::period::day_of(self.day * DAY_US))
    }

    /// The tally this row stands for.
    pub fn tally(&self) -> Result<Tally, Error> {
        let kind = kind_of(self.kind)?;
        let value = match kind {
            Aggregation::Count => Decimal::from(self.n),
            Aggregation::UniqueCount => Decimal::from(self.uniq),
            Aggregation::Sum => decimal(self.sum)?,
            Aggregation::Max => decimal(self.max)?,
            Aggregation::Latest => decimal(self.latest_value)?,
        };
        let latest = (kind == Aggregation::Latest).then(|| (self.latest_us, self.latest_id.clone()));
        Ok(Tally { value: Some(value), latest })
    }
}

/// A `Decimal(38, 9)` as a `Decimal`, with trailing zeros dropped so that large totals fit.
pub(super) fn decimal(raw: i128) -> Result<Decimal, Error> {
    let (mut m, mut scale) = (raw, 9);
    while scale > 0 && m % 10 == 0 {
        m /= 10;
        scale -= 1;
    }
    Decimal::try_from_i128_with_scale(m, scale).map_err(|_| Error::Overflow(meter_schemas::meter::Overflow))
}

/// A quantity as a `Decimal(38, 9)`; `None` when the store cannot hold it exactly.
pub(super) fn raw(q: Decimal) -> Option<i128> {
    if q.scale() > meter_schemas::quantity::MAX_SCALE || q.abs() > meter_schemas::quantity::MAX_QUANTITY {
        return None;
    }
    Some(q.mantissa() * 10i128.pow(9 - q.scale()))
}

/// Which rows a read covers.
#[derive(Clone)]
pub(super) struct Scope {
    /// Whose tallies.
    pub tenants: Tenants,
    /// Time range, microseconds, end excluded.
    pub from_us: i64,
    pub to_us: i64,
    /// A row per day, or one per range.
    pub by_day: bool,
    /// First day not rolled up: days before it are read from `daily`.
    pub unrolled_from_day: i64,
}

/// Whose tallies a [`Scope`] reads.
#[derive(Clone, Debug)]
pub(super) enum Tenants {
    /// One tenant's.
    One(String),
    /// Those after `after` up to `upto`, included (no bound where `None`).
    Range { after: Option<String>, upto: Option<String> },
}

/// The query of `scope` and its bind values, in order.
pub(super) fn aggregate(scope: &Scope) -> (String, Vec<Bind>) {
    let first_day = scope.from_us.div_euclid(DAY_US);
    let end_day = (scope.to_us + DAY_US - 1).div_euclid(DAY_US);
    let rolled_end_day = scope.unrolled_from_day.min(end_day);
    let raw_from_us = scope.from_us.max(scope.unrolled_from_day.saturating_mul(DAY_US));
    let mut branches = Vec::new();
    let mut binds = Vec::new();
    let tenant_filter = |binds: &mut Vec<Bind>| match &scope.tenants {
        Tenants::One(t) => {
            binds.push(Bind::Text(t.clone()));
            "tenant = ?".to_string()
        }
        Tenants::Range { after, upto } => {
            let mut filter = Vec::new();
            for (bound, condition) in [(after, "tenant > ?"), (upto, "tenant <= ?")] {
                if let Some(b) = bound {
                    binds.push(Bind::Text(b.clone()));
                    filter.push(condition);
                }
            }
            if filter.is_empty() { "1".to_string() } else { filter.join(" AND ") }
        }
    };
    let group_day = |expr: &str| if scope.by_day { expr.to_string() } else { "toInt64(-1)".to_string() };
    if first_day < rolled_end_day {
        let filter = tenant_filter(&mut binds);
        binds.push(Bind::Int(first_day));
        binds.push(Bind::Int(rolled_end_day));
        branches.push(format!(
            "SELECT tenant, meter, {day} AS g, kind AS k, n, sum AS s, uniques AS u, max AS mx,
                    latest_value AS lv, latest_us AS lt, latest_id AS li
             FROM daily WHERE {filter} AND day >= ? AND day < ?
                 AND (day, version) IN (SELECT day, max(version) FROM rolled_days GROUP BY day)",
            day = group_day("day"),
        ));
    }
    if raw_from_us < scope.to_us {
        let filter = tenant_filter(&mut binds);
        binds.push(Bind::Int(raw_from_us));
        binds.push(Bind::Int(scope.to_us));
        branches.push(format!(
            "SELECT tenant, m AS meter, {day} AS g, any(kd) AS k, count() AS n, sum(v) AS s, uniqExactState(x) AS u,
                    max(v) AS mx, argMax(v, (t, id)) AS lv, max(t) AS lt, argMax(id, (t, id)) AS li
             FROM ({winners} WHERE {filter} GROUP BY tenant, id HAVING t >= ? AND t < ?)
             ARRAY JOIN ms AS m, ks AS kd, vs AS v, xs AS x
             GROUP BY tenant, meter, g",
            day = group_day(&format!("intDiv(t, {DAY_US})")),
            winners = WINNERS,
        ));
    }
    if branches.is_empty() {
        return (String::new(), binds);
    }
    let sql = format!(
        "SELECT tenant, meter, g AS day, any(k) AS kind, sum(n) AS n, sum(s) AS sum, uniqExactMerge(u) AS uniq,
                max(mx) AS max, argMax(lv, (lt, li)) AS latest_value, max(lt) AS latest_us,
                argMax(li, (lt, li)) AS latest_id
         FROM ({}) GROUP BY tenant, meter, day ORDER BY tenant, meter, day",
        branches.join(" UNION ALL ")
    );
    (sql, binds)
}

/// Each event's counting copy, to be completed with a `WHERE`, `GROUP BY tenant, id` and a
/// `HAVING` on `t`.
pub(super) const WINNERS: &str = "SELECT tenant, id, argMax(time_us, rank) AS t, argMax(meters, rank) AS ms,
        argMax(kinds, rank) AS ks, argMax(values, rank) AS vs, argMax(texts, rank) AS xs
    FROM events";

/// One tenant's (`?`) breakdown over a time range (`?` to `?`, end excluded): each counting
/// copy's group values, as [`WINNERS`] picks its contributions, summed by meter, property and
/// value. Its own query, so that usage reads do not carry the group arrays.
pub(super) const BREAKDOWN: &str = "SELECT m, p, x, sum(a) AS amount FROM (
        SELECT argMax(time_us, rank) AS t, argMax(group_meters, rank) AS gm,
               argMax(group_properties, rank) AS gp, argMax(group_values, rank) AS gv,
               argMax(group_amounts, rank) AS ga
        FROM events WHERE tenant = ? GROUP BY tenant, id HAVING t >= ? AND t < ?)
    ARRAY JOIN gm AS m, gp AS p, gv AS x, ga AS a
    GROUP BY m, p, x";

/// A value bound to a `?`.
pub(super) enum Bind {
    Text(String),
    Int(i64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use meter_schemas::quantity::MAX_QUANTITY;

    #[test]
    fn quantities_convert_exactly_or_are_refused() {
        assert_eq!(raw("1.5".parse().unwrap()), Some(1_500_000_000));
        assert_eq!(raw(MAX_QUANTITY), Some(1_000_000_000_000_000_000_000_000_000));
        assert_eq!(raw(MAX_QUANTITY + Decimal::ONE), None, "more than 10^18");
        assert_eq!(raw("0.0000000001".parse().unwrap()), None, "more than 9 decimal places");
        assert_eq!(decimal(1_500_000_000).unwrap().to_string(), "1.5");
        // A total past a Decimal's 28 digits fits once trailing zeros go, and is refused if not.
        assert_eq!(decimal(10i128.pow(37)).unwrap().to_string(), "10000000000000000000000000000");
        assert!(matches!(decimal(10i128.pow(37) + 1), Err(Error::Overflow(_))));
    }

    #[test]
    fn every_kind_has_its_own_code_and_an_unknown_code_is_an_error() {
        for kind in Aggregation::ALL {
            assert_eq!(kind_of(kind_code(kind)).unwrap(), kind);
        }
        let row = |kind| AggRow {
            tenant: "t".into(),
            meter: "m".into(),
            day: -1,
            kind,
            n: 1,
            sum: 0,
            uniq: 0,
            max: 0,
            latest_value: 7_000_000_000,
            latest_us: 1,
            latest_id: "e".into(),
        };
        assert_eq!(row(kind_code(Aggregation::Latest)).tally().unwrap().value, Some(Decimal::from(7)));
        assert!(matches!(row(9).tally(), Err(Error::UnknownKind(9))), "never read as `latest`");
    }
}
