//! Where a tenant's usage is read from: the live counters while events can still arrive for a
//! period (and for the days of such periods), the history (ClickHouse when configured) after.
//! The one place that decides it, for the usage API and the dashboard alike.

use crate::{Coverage, Date, Error, PeriodUsage, Series, UsageStore};
use meter_schemas::Period;
use meter_schemas::partition::partition_for;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where an answer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The aggregator's counters, updated within milliseconds of ingest.
    Live,
    /// The usage store's history (ClickHouse when configured), filled by the sink in batches.
    Store,
}

/// The live counters and the history, with what decides between them.
#[derive(Clone)]
pub struct UsageReads {
    /// The live counters.
    pub live: Arc<dyn UsageStore>,
    /// The aggregators' consumer, whose watermarks the live counters report.
    pub consumer: String,
    /// The history: ClickHouse, or the live counters when there is no other.
    pub history: Arc<dyn UsageStore>,
    /// The consumer whose watermarks the history reports (the sink's, or the aggregators').
    pub history_consumer: String,
    /// Partitions of the log; a tenant's watermark is its partition's.
    pub partitions: u32,
    /// The lateness window: events for a period arrive until its end plus this.
    pub lateness_us: i64,
}

/// One broken-down meter's period total by one of its `group_by` properties: the largest
/// values, and what the others add up to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dimension {
    /// The meter.
    pub meter: String,
    /// The property.
    pub property: String,
    /// Every value's amount added up: the meter's total over the events counted since it was
    /// broken down by this property.
    pub total: Decimal,
    /// The largest values, largest first (ties by value); `""` stands for events without the
    /// property.
    pub top: Vec<(String, Decimal)>,
    /// How many other values there are, and their amount together.
    pub rest: (usize, Decimal),
}

/// A tenant's daily series over a range of days, and where its live part starts.
#[derive(Debug)]
pub struct DailyRange {
    /// Values by meter and day (`YYYY-MM-DD`); days without events are absent.
    pub series: Series,
    /// Days from this one on come from the live counters; earlier ones from the history.
    pub live_from: Date,
}

impl UsageReads {
    /// Whether events can still arrive for `period` at `now_us`.
    pub fn open(&self, period: Period, now_us: i64) -> bool {
        now_us < period.end_us() + self.lateness_us
    }

    /// Whether a watermark says every event of `period` is counted.
    pub fn complete(&self, period: Period, watermark_us: Option<i64>) -> bool {
        watermark_us.is_some_and(|w| w >= period.end_us() + self.lateness_us)
    }

    /// The source to read `period` from when the caller names none: live while it is open.
    pub fn default_source(&self, period: Period, now_us: i64) -> Source {
        if self.open(period, now_us) { Source::Live } else { Source::Store }
    }

    /// Where `tenant`'s live counters are complete up to: the aggregators' watermark of its
    /// partition.
    pub fn live_coverage(&self, tenant: &str) -> Coverage<'_> {
        Coverage { consumer: &self.consumer, partition: partition_for(tenant, self.partitions) }
    }

    fn store_of(&self, source: Source) -> (&dyn UsageStore, &str) {
        match source {
            Source::Live => (&*self.live, &self.consumer),
            Source::Store => (&*self.history, &self.history_consumer),
        }
    }

    /// `tenant`'s usage in `period` from `source`, with the watermark of its partition.
    pub async fn usage(&self, tenant: &str, period: Period, source: Source) -> Result<PeriodUsage, Error> {
        let (store, consumer) = self.store_of(source);
        store.usage(tenant, period, Coverage { consumer, partition: partition_for(tenant, self.partitions) }).await
    }

    /// `tenant`'s broken-down meters in `period` from `source`, each property with its `top`
    /// largest values and the rest.
    pub async fn breakdown(
        &self,
        tenant: &str,
        period: Period,
        source: Source,
        top: usize,
    ) -> Result<Vec<Dimension>, Error> {
        let (store, _) = self.store_of(source);
        let mut out = Vec::new();
        for (meter, properties) in store.breakdown(tenant, period).await? {
            for (property, values) in properties {
                let mut values: Vec<(String, Decimal)> = values.into_iter().collect();
                values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let total = values.iter().map(|(_, a)| *a).sum();
                let others = values.split_off(top.min(values.len()));
                let rest = (others.len(), others.iter().map(|(_, a)| *a).sum());
                out.push(Dimension { meter: meter.clone(), property, total, top: values, rest });
            }
        }
        Ok(out)
    }

    /// `tenant`'s daily values for the days `first..=last`: the days of periods events can still
    /// arrive for (at `now_us`) from the live counters, earlier days from the history.
    pub async fn daily(&self, tenant: &str, first: Date, last: Date, now_us: i64) -> Result<DailyRange, Error> {
        // The oldest period events can still arrive for starts the live part.
        let mut live = Period::containing(now_us);
        let previous = Period::containing(live.start_us() - 1);
        if self.open(previous, now_us) {
            live = previous;
        }
        let live_from = live.first_day().max(first);
        let after = last.next_day().unwrap_or(last);
        let mut series =
            if first < live_from { self.history.daily(tenant, first, live_from).await? } else { Series::default() };
        for (meter, values) in self.live.daily(tenant, live_from, after).await? {
            series.entry(meter).or_default().extend(values);
        }
        Ok(DailyRange { series, live_from })
    }
}
