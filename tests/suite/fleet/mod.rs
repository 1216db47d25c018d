//! The fleet (feature `redis`): replicas sharing verdicts and invalidations through
//! real `redis-server` processes, each test starting its own on free loopback ports.

mod cluster;
mod faults;
mod scopes;
mod sharing;
mod soak;
mod trust;
