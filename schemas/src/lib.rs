//! Event envelopes, validation, meter definitions and billing periods.
//!
//! Everything here is pure: no I/O, no clocks (the caller passes `now`). Every other stage of meter
//! depends on this crate, so the rules for what an event is live in exactly one place.

pub mod envelope;
pub mod error;
pub mod event;
pub mod meter;
pub mod partition;
pub mod period;
pub mod process;
pub mod quantity;

pub use envelope::{Limits, TenantScope};
pub use error::{ErrorKind, FieldError};
pub use event::Event;
pub use meter::{Aggregation, Catalog, Contribution, MeterDef, Tally};
pub use period::Period;
