//! What every rig-conductor process shares at run time: its configuration (`rig.toml` and the
//! environment), logs and metrics, the operations endpoints (`/metrics`, `/healthz`,
//! `/readyz`), shutdown on signals, and, for `rigctl` and the tests, a local Postgres.

pub mod config;
pub mod http;
pub mod pg;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use config::Settings;
