//! `nimbus-sim`: replays a CI job trace against simulated providers with a virtual clock, under
//! the daemon's own autoscaling policy or one of the peers' it is judged against.
//!
//! # The model
//!
//! The fleet facts are those of the project's fleet model (`shared/fleet/README.md`, executable
//! as `reference_sim.py`), in [`model`]: a Linux machine is a runner 60 s + 10 s after launch and
//! is billed per second ($0.17/h, 60 s minimum); an EC2 Mac instance needs a dedicated host
//! (120 s to allocate, $0.65/h, 24 h minimum, released only when past the minimum, empty and
//! scrubbed), boots in 480 s + 10 s, and leaves its host scrubbing for 3,000 s. One instance per
//! host. Jobs go to the first pool whose labels include all of theirs and start first come,
//! first served on a ready, free runner of that pool. The accounting window is the whole days
//! covering the trace; what still runs at the end is billed until the end.
//!
//! # The engine
//!
//! [`engine::run`] pops timed events from a heap (job submitted, runner ready, job done, host
//! scrubbed, host past its minimum, the policy's ticks) in a fixed order: by time, submissions
//! first, then in the order scheduled. A run is therefore deterministic, and causal: a policy
//! sees a job once it is submitted and its duration once it ends, never before.
//!
//! # The policies
//!
//! - [`Policy::Nimbus`]: at every event and every 10 s of virtual time,
//!   `nimbus_autoscale::plan` (the function the daemon runs) gets the pool's machines as
//!   [`nimbus_autoscale::MachineView`]s (booting, idle, busy) and its queued jobs; its
//!   decisions are applied to the simulated providers. With `NimbusConfig::default()` (the
//!   bare policy) hosts are the provider's business: an instance takes the lowest free
//!   scrubbed host, or a new one, and a host goes as soon as EC2 allows. With
//!   `NimbusConfig::economic` (what `nimbusctl sim` runs) `plan_with` also sees the Mac hosts
//!   (`HostView`) and a demand forecast learned from `--history` and the hours of the week
//!   already replayed (`DemandForecast`): it keeps capacity at the forecast, holds a host to
//!   its 24 h boundary when the forecast needs it and releases it there otherwise, waits for a
//!   host that finishes scrubbing soon rather than allocating one, and uses the recommended
//!   pool settings (`model::recommended`) where `pools.toml` leaves them unset.
//! - The peers, exactly as `reference_sim.py` models them ([`peers`]): `static`, `reactive`
//!   (with an optional webhook delay) and `minidle k j`.
//!
//! [`metrics`] computes what a run is judged on as `metrics()` in `reference_sim.py` does.
//!
//! # Running it
//!
//! ```text
//! nimbusctl sim --trace WEEK.csv [--history PREV.csv] [--pools pools.toml] [--policy all] [--json]
//! ```
//!
//! ([`cli::run`]). `cargo test -p nimbus-sim` checks the peers against `reference_sim.py` on
//! the sample traces (found at `../../../shared/fleet` from this crate, or `NIMBUS_FLEET_DIR`);
//! `cargo bench -p nimbus-sim` prints how long each run takes.
//!
//! This crate does no I/O beyond reading the files it is given and writing to the writer
//! it is handed; it has no clock of its own.

pub mod cli;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod peers;
pub mod trace;

pub use crate::engine::{Action, Decided, NimbusConfig, Outcome, Policy, run};
pub use crate::metrics::{PoolReport, Report};
pub use crate::model::{Kind, Pools};
pub use crate::peers::Peer;
pub use crate::trace::Job;
