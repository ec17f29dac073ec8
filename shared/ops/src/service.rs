//! The `main` of every long-running rig-conductor process, written once.

use crate::telemetry::PrometheusHandle;
use crate::Settings;
use std::future::Future;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Runs a service: logs and metrics first (so a configuration error is logged like any other),
/// then the configuration, then `run` until SIGINT/SIGTERM cancels its token. The exit code
/// tells a supervisor what happened: 0 stopped on request, 2 the configuration is wrong (a
/// restart will not help), 1 it failed while running.
pub fn main<F, Fut>(service: &'static str, run: F) -> ExitCode
where
    F: FnOnce(Settings, PrometheusHandle, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let metrics = crate::telemetry::init(service);
        let settings = match Settings::load() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("{service}: {e}");
                return ExitCode::from(2);
            }
        };
        match run(settings, metrics, crate::shutdown::on_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("{service}: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

#[doc(hidden)]
pub use mimalloc;

/// Declares the allocator of a service binary. Every service allocates many small, short-lived
/// objects (a request's parsed body, a catch-up batch's decoded events), often freed on another
/// thread than the one that allocated them; glibc's malloc was a third of ingest's CPU under
/// load (callgrind) and slowed projector rebuilds (scripts/measure-projector-rebuild.sh), and
/// mimalloc costs far less. A macro rather than a static in this library, so that a test binary
/// can still declare an allocator of its own.
#[macro_export]
macro_rules! service_allocator {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::service::mimalloc::MiMalloc = $crate::service::mimalloc::MiMalloc;
    };
}
