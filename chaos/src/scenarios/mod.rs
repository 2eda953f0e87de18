//! The registry: every scenario, in the order `all` runs them. Adding one is a file here and
//! one line in [`ALL`].

mod clock_skew;
mod disk_full;
mod failover;
mod kill9;
mod partition;
mod receiver_faults;
mod s3_outage;
mod sigterm;
mod slow_disk;
mod torn_write;

use crate::scenario::Scenario;

pub static ALL: &[&Scenario] = &[
    &receiver_faults::SCENARIO,
    &kill9::SCENARIO,
    &torn_write::SCENARIO,
    &disk_full::SCENARIO,
    &slow_disk::SCENARIO,
    &clock_skew::SCENARIO,
    &sigterm::SCENARIO,
    &failover::SCENARIO,
    &partition::SCENARIO,
    &s3_outage::SCENARIO,
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().copied().find(|s| s.name == name)
}
