//! rigctl: the operator's CLI. Every command is in `lib.rs`; this only parses and dispatches.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Logs on stderr: stdout carries the command's output (tables, `--json`).
    rig_ops::telemetry::init_with("rigctl", rig_ops::telemetry::LogOutput::Stderr);
    let cli = rigctl::Cli::parse();
    match rigctl::dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rigctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
