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
    // Handlers first: a SIGTERM right after the "listening" line must already be graceful, and a
    // SIGHUP then must reload, not kill the process (its default action): a handler installed
    // by a task spawned after that line lost the race on a loaded machine (tests/tls.rs).
    let signals = Signals::install();
    let hangup = hangup_signal();
    let running = match server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("swarmcast-signaling: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The first stdout line is a contract: tests and xtask parse it for the bound port.
    println!("listening on {}://{}", running.scheme(), running.addr);
    let _ = std::io::stdout().flush();
    tracing::info!(addr = %running.addr, static_dir = %static_dir.display(), "serving");
    if let (Some(tls), Some(hup)) = (running.tls.clone(), hangup) {
        tokio::spawn(reload_on_sighup(tls, hup));
    }
    signals.wait().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    std::process::ExitCode::SUCCESS
}

/// Re-reads the certificate on every SIGHUP (e.g. after a renewal); established connections
/// are not touched, and a broken new pair leaves the old one in use.
async fn reload_on_sighup(
    tls: std::sync::Arc<swarmcast_signaling::tls::TlsReloader>,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate")
            }
        }
    }
}

/// The SIGHUP stream, registered at once (before the server announces itself).
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(
            |e| tracing::warn!(error = %e, "no SIGHUP handler; certificates will not be reloaded"),
        )
        .ok()
}

/// SIGINT and SIGTERM, installed before the server announces itself.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .map_err(|e| tracing::warn!(error = %e, "no SIGTERM handler"))
            .ok();
        let int = signal(SignalKind::interrupt())
            .map_err(|e| tracing::warn!(error = %e, "no SIGINT handler"))
            .ok();
        Signals { term, int }
    }

    async fn wait(mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }
}
