//! Command line and environment configuration. Every flag has an env var so that container
//! deployments configure without a wrapper script.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::tracker::Limits;

/// swarmcast's bootstrap server: a WebTorrent-tracker WebSocket signaling server that also serves
/// the www/ bundle.
#[derive(Parser, Debug, Clone)]
#[command(name = "swarmcast-signaling", version, about)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one (the first stdout line tells which).
    #[arg(long, env = "SWARMCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PEM certificate chain: serve HTTPS and `wss://` instead of HTTP and `ws://`
    /// (re-read on SIGHUP).
    #[arg(long, env = "SWARMCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8) for `--tls-cert`.
    #[arg(long, env = "SWARMCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Folder served for GET requests [default: `www` beside the workspace root].
    #[arg(long, env = "SWARMCAST_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,

    /// Origins allowed to open WebSockets (comma separated, e.g. `https://example.org`);
    /// empty allows any. Requests without an Origin header (non-browser clients) are allowed.
    #[arg(long, env = "SWARMCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Announce interval told to clients, seconds.
    #[arg(long, env = "SWARMCAST_INTERVAL", default_value_t = 120)]
    pub interval: u64,

    /// Close a connection that sent no message for this many seconds; also the peer TTL
    /// (a peer not re-announced for this long leaves its swarm).
    #[arg(long, env = "SWARMCAST_IDLE_TIMEOUT", default_value_t = 300.0)]
    pub idle_timeout: f64,

    /// Seconds a client gets for each HTTP request head (from the connection's start, or from
    /// the previous response on a keep-alive connection), for its TLS handshake, and for the
    /// first message on a WebSocket; a connection that sends nothing (or a byte at a time)
    /// is closed after this.
    #[arg(long, env = "SWARMCAST_REQUEST_TIMEOUT", default_value_t = 10.0)]
    pub request_timeout: f64,

    /// Seconds between WebSocket pings (keeps proxies from cutting quiet connections).
    #[arg(long, env = "SWARMCAST_PING_INTERVAL", default_value_t = 30.0)]
    pub ping_interval: f64,

    /// Largest accepted WebSocket message (and frame), bytes; larger ones close the
    /// connection with 1009.
    #[arg(long, env = "SWARMCAST_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Most offers in one announce (the reference client sends at most 5).
    #[arg(long, env = "SWARMCAST_MAX_OFFERS", default_value_t = 10)]
    pub max_offers: usize,

    /// Sustained messages per second per connection; 0 disables rate limiting. A connection
    /// over it is not refused: its messages wait (it is not read) until it is within it.
    #[arg(long, env = "SWARMCAST_RATE", default_value_t = 20.0)]
    pub rate: f64,

    /// Burst size (messages) of the per-connection rate limit: handled at once, before the
    /// rate applies. 128 covers a WebTorrent client announcing 100 torrents on connecting.
    #[arg(long, env = "SWARMCAST_RATE_BURST", default_value_t = 128.0)]
    pub rate_burst: f64,

    /// Most peers in one swarm.
    #[arg(long, env = "SWARMCAST_MAX_PEERS_PER_SWARM", default_value_t = 50_000)]
    pub max_peers_per_swarm: usize,

    /// Most swarms on the server.
    #[arg(long, env = "SWARMCAST_MAX_SWARMS", default_value_t = 100_000)]
    pub max_swarms: usize,

    /// Most swarm memberships of one connection. WebTorrent shares one socket per tracker
    /// among all its torrents, so this is how many torrents one client may announce here; the
    /// per-address budget bounds what many connections hold together.
    #[arg(
        long,
        env = "SWARMCAST_MAX_SWARMS_PER_CONNECTION",
        default_value_t = 1024
    )]
    pub max_swarms_per_connection: usize,

    /// Most swarm memberships held by one client address (IPv4, or IPv6 /64) over all its
    /// connections. Keep it below `--max-swarms` and `--max-peers-per-swarm`: then no single
    /// address can fill the server's swarm table or a stream's swarm (see src/budget.rs).
    #[arg(
        long,
        env = "SWARMCAST_MAX_PEERS_PER_ADDRESS",
        default_value_t = 10_000
    )]
    pub max_peers_per_address: usize,

    /// Reverse proxies whose `X-Forwarded-For` is believed (comma separated IPs): a
    /// connection from one of them is charged to the rightmost address in that header that is
    /// not itself a trusted proxy. Empty (default): the header is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "SWARMCAST_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Most concurrent WebSocket connections; more get HTTP 503.
    #[arg(long, env = "SWARMCAST_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Messages queued per connection before it counts as a slow reader and is closed.
    #[arg(long, env = "SWARMCAST_SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,

    /// Bytes queued per connection (what its socket has not taken) before it counts as a slow
    /// reader, as for `--send-queue`.
    #[arg(long, env = "SWARMCAST_SEND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub send_queue_bytes: usize,

    /// Bytes queued over all connections. Beyond it, a message for a connection whose socket
    /// is not taking data is treated as a full queue (`--on-full-queue`): readers that are
    /// behind are shed first, connections that keep up are not affected.
    #[arg(long, env = "SWARMCAST_MAX_QUEUED_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_queued_bytes: usize,

    /// What a full send queue means. `close` (default): the connection is a slow reader and is
    /// closed, as issue 5 asks. `drop`: the message that does not fit is discarded and the
    /// connection kept (what aquatic_ws does with its 16-message queue); a reader that stops
    /// reading altogether is still closed by `--send-timeout`. Memory is bounded either way.
    #[arg(long, env = "SWARMCAST_ON_FULL_QUEUE", value_enum, default_value_t = FullQueue::Close)]
    pub on_full_queue: FullQueue,

    /// Seconds a socket write may block before the connection is closed.
    #[arg(long, env = "SWARMCAST_SEND_TIMEOUT", default_value_t = 10.0)]
    pub send_timeout: f64,

    /// Most swarms in one scrape reply (a scrape without info_hash asks for all).
    #[arg(long, env = "SWARMCAST_MAX_SCRAPE", default_value_t = 64)]
    pub max_scrape: usize,

    /// Seconds to wait for connections to close on SIGTERM/SIGINT.
    #[arg(long, env = "SWARMCAST_SHUTDOWN_GRACE", default_value_t = 5.0)]
    pub shutdown_grace: f64,
}

/// The policy for a connection whose send queue is full ([`Config::on_full_queue`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullQueue {
    /// Close the connection (1008, counted as `slow_reader`).
    Close,
    /// Discard the message (counted as `queue_full`), keep the connection.
    Drop,
}

impl Config {
    /// Defaults plus `listen`, for tests and embedding.
    pub fn with_listen(listen: SocketAddr) -> Config {
        let mut c = Config::parse_from(["swarmcast-signaling"]);
        c.listen = listen;
        c
    }

    /// The folder to serve: the flag, else `www` beside the workspace root when it exists
    /// (running from a checkout), else `./www`.
    pub fn static_dir(&self) -> PathBuf {
        if let Some(d) = &self.static_dir {
            return d.clone();
        }
        let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../www");
        if beside.is_dir() {
            beside
        } else {
            PathBuf::from("www")
        }
    }

    /// The tracker's share of the limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_offers: self.max_offers,
            max_peers_per_swarm: self.max_peers_per_swarm,
            max_swarms: self.max_swarms,
            max_swarms_per_connection: self.max_swarms_per_connection,
            max_peers_per_address: self.max_peers_per_address,
            max_scrape: self.max_scrape,
            interval_secs: self.interval,
        }
    }

    /// [`Config::idle_timeout`] as a duration.
    pub fn idle(&self) -> Duration {
        secs(self.idle_timeout, 300.0)
    }

    /// [`Config::request_timeout`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        secs(self.request_timeout, 10.0)
    }

    /// [`Config::ping_interval`] as a duration.
    pub fn ping(&self) -> Duration {
        secs(self.ping_interval, 30.0)
    }

    /// [`Config::send_timeout`] as a duration.
    pub fn send_timeout(&self) -> Duration {
        secs(self.send_timeout, 10.0)
    }

    /// [`Config::shutdown_grace`] as a duration.
    pub fn grace(&self) -> Duration {
        secs(self.shutdown_grace, 5.0)
    }
}

/// Seconds from a flag; nonsense (negative, NaN, huge, under 1 ms) falls back to `default`.
fn secs(v: f64, default: f64) -> Duration {
    match Duration::try_from_secs_f64(v) {
        Ok(d) if d >= Duration::from_millis(1) => d,
        _ => Duration::from_secs_f64(default),
    }
}
