//! `swarmcast-signaling`: see the crate docs and `--help`.

use std::io::Write as _;

use clap::Parser;
use swarmcast_signaling::{config::Config, server};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    let static_dir = config.static_dir();
    let running = match server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("swarmcast-signaling: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The first stdout line is a contract: tests and xtask parse it for the bound port.
    println!("listening on http://{}", running.addr);
    let _ = std::io::stdout().flush();
    tracing::info!(addr = %running.addr, static_dir = %static_dir.display(), "serving");
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    std::process::ExitCode::SUCCESS
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
