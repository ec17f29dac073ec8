//! rig-token-projector: keeps `token_usage` from the event log (see `lib.rs`).

// Decoding a catch-up batch allocates a few small objects per event on one thread and frees
// them on another; mimalloc does that at a fraction of glibc malloc's cost (measured with
// scripts/measure-projector-rebuild.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let metrics = shared::telemetry::init("rig-token-projector");
    let settings = match shared::Settings::load() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rig-token-projector: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rig_token_projector::run(settings, metrics, shared::shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("rig-token-projector: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
