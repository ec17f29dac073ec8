//! What every rig-conductor process shares at run time: its configuration (`rig.toml` and the
//! environment), logs and metrics, the operations endpoints (`/metrics`, `/healthz`,
//! `/readyz`), shutdown on signals, the `main` of every service, and, for `rigctl` and the
//! tests, a local Postgres and the one supervisor of child processes.

pub mod config;
pub mod http;
pub mod pg;
pub mod process;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use config::Settings;
