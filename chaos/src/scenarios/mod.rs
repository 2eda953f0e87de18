//! The registry: every scenario, in the order `all` runs them. Adding one is a file here and
//! one line in [`ALL`].

mod clock_skew;
mod disk_full;
mod kill9;
mod receiver_faults;
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
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().copied().find(|s| s.name == name)
}
