//! `swarmcast-signaling`: see the crate docs and `--help`.

use std::io::Write as _;

use clap::Parser;
use swarmcast_signaling::{config::Config, server};

/// The log filter without `RUST_LOG`. rustls warns about what a TLS client did wrong (a
/// ChangeCipherSpec before the ClientHello, an alert, a bad SNI): one line per connection
/// that any client can make, 2,000 lines in 0.8 s (issue 24). Those are the client's
/// problem; the server's own warnings stay, and what clients can trigger in our code is
/// logged at debug or rate-limited.
const DEFAULT_LOG: &str = "info,rustls=error";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    let static_dir = config.static_dir();
    // Handlers first: a SIGTERM right after the "listening" line must already be graceful.
    let signals = Signals::install();
    // Likewise SIGHUP (whose default action ends the process) before the line is printed.
    let hup = config.tls_cert.is_some().then(|| {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler; certificates will not be reloaded"))
            .ok()
    });
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
    if let (Some(tls), Some(Some(hup))) = (running.tls.clone(), hup) {
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
