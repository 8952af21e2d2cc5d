//! The transport under every ridegate server: the tonic server's HTTP/2 limits and the
//! listener's socket settings. `ridegate serve` and the baseline server (in the tools)
//! both build on these two functions, so benchmarks compare like with like.

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::ServerConfig;

/// The tonic server with ridegate's transport settings.
pub fn server(config: &ServerConfig) -> Server {
    Server::builder()
        // Keep idle gate connections open through NATs and find dead ones.
        .http2_keepalive_interval(Some(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
        // Bound the work one connection can queue; beyond it, calls wait.
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .max_concurrent_streams(config.max_concurrent_streams)
        // gRPC only: metrics and probes are on the admin listener.
        .accept_http1(false)
}

/// Connections from `listener`, with ridegate's socket settings.
pub fn incoming(listener: TcpListener, config: &ServerConfig) -> TcpIncoming {
    // Gates send small requests and wait for each answer: never delay a packet (the
    // builder's own nodelay setting does not reach a listener we bound ourselves).
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(config.tcp_keepalive))
}
