//! Metric names of the aggregator, declared once. Each carries a `consumer` label: the
//! aggregators' group (`meter-aggregator`) or the ClickHouse sink's (`meter-sink`), which runs the
//! same loop.

/// Events applied, by `outcome` (`counted` or `duplicate`).
pub const EVENTS: &str = "meter_aggregator_events_total";
/// Meter contributions left out because the event lacks what the meter reads.
pub const SKIPPED: &str = "meter_aggregator_skipped_contributions_total";
/// Time to apply one batch.
pub const BATCH_DURATION: &str = "meter_aggregator_batch_duration_seconds";
/// Time from each event being stored in the log to its being counted (committed in the store).
pub const EVENT_TO_COUNTER: &str = "meter_aggregator_event_to_counter_seconds";
/// Records known to be waiting (0 when caught up).
pub const LAG: &str = "meter_aggregator_lag_events";
/// Batches that failed and will be retried from the checkpoint.
pub const FAILURES: &str = "meter_aggregator_failed_batches_total";
/// Batches refused because another aggregator had moved a partition's checkpoint.
pub const FENCED: &str = "meter_aggregator_fenced_batches_total";
/// Partitions this aggregator owns.
pub const PARTITIONS: &str = "meter_aggregator_owned_partitions";
