//! `relay simulate`: a CAD and a fleet of community responder teams, simulated from a seed,
//! driving a Relay deployment through its public gRPC API only.
//!
//! - [`scenario`] generates, from a seed alone, a synthetic metro area, the teams (capabilities,
//!   bases, shifts) and the calls (arrival times, incident types, risk flags, priorities,
//!   how long each takes on scene, whether it ends in a referral).
//! - [`run`] drives a deployment through a scenario over gRPC and observes what happens.
//! - [`report`] turns what happened into counts, percentiles and a per-team utilisation
//!   table.

pub mod report;
pub mod run;
pub mod scenario;
