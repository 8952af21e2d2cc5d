//! The transport under every ridegate server: the accept loop and the HTTP/2
//! connections (hyper, which tonic's own server also runs on), written out here so that
//! everything a client can hold is bounded and every call is stamped when it arrives.
//!
//! - **Connections** are capped ([`ServerConfig::max_connections`], and always below the
//!   process's file-descriptor limit, whose soft limit is raised at start where the hard
//!   limit allows). At the cap, the oldest connection that has not sent a byte is closed
//!   to make way; if there is none, the new one is closed at once, counted and logged
//!   once a second. The ones already serving keep being served.
//! - **Accept errors** (EMFILE, ENFILE, ENOBUFS, ENOMEM) back off, doubling from 5 ms to
//!   1 s, logged once a second; a reset before accept is skipped.
//! - **Handshake:** a connection must finish TLS (if on) and send its first HTTP/2 bytes
//!   within `handshake_timeout`, or it is closed.
//! - **Idle:** a connection with no call open for `idle_timeout` is sent GOAWAY.
//! - **Age:** after `max_connection_age` (±10 % jitter, so a fleet of gates does not
//!   reconnect at once) a connection is sent GOAWAY; it is closed `max_connection_age_grace`
//!   later whatever it still has open.
//! - **HTTP/2:** streams per connection, the header list, and flow-control windows and
//!   send buffers sized so that a client that sends slowly or never reads pins little
//!   memory: see [`ServerConfig`] and the README's "Overload" section for the bound.
//!
//! Every request gets an [`Arrived`] stamp, taken in the connection's own task as its
//! headers are read — before it waits for a worker — so admission sees the time a call
//! really spent queued in this process, and the connection's [`Peer`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::Either;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::tls::{Conn, Peer, TlsState};
use crate::config::ServerConfig;
use crate::metrics::{ConnectionClosed, Metrics};
use crate::telemetry::Throttled;

/// File descriptors kept back from connections: the data directory, the audit log,
/// Redis and platform connections, the admin listener.
const RESERVED_FDS: u64 = 128;
/// How long a new connection at the cap waits for an evicted silent one's slot.
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// The shortest and longest pause after an accept error that is about resources.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// When a call's headers came off its connection, stamped in the connection's task.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

/// The accept loop's settings and counters, shared by every connection.
pub struct Transport {
    config: ServerConfig,
    tls: Option<Arc<TlsState>>,
    metrics: Arc<Metrics>,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Connections that have not yet sent a byte, oldest first (and some that since
    /// have, or have closed, dropped as found): at the cap, the oldest silent one makes
    /// way for a new connection.
    silent: parking_lot::Mutex<VecDeque<Weak<Activity>>>,
    refused_log: Throttled,
    accept_error_log: Throttled,
}

impl Transport {
    /// The transport for `config`, over `tls` if given, counting into `metrics`. Raises
    /// the soft file-descriptor limit as far as the hard limit allows, and caps
    /// connections below it.
    pub fn new(config: &ServerConfig, tls: Option<Arc<TlsState>>, metrics: Arc<Metrics>) -> Self {
        let fd_limit = raise_fd_limit();
        let max_connections = config
            .max_connections
            .min(usize::try_from(fd_limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX))
            .max(1);
        if max_connections < config.max_connections {
            tracing::warn!(
                configured = config.max_connections,
                max_connections,
                fd_limit,
                "server.max_connections lowered to fit the file-descriptor limit"
            );
        }
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(config.max_header_list_bytes)
            .initial_stream_window_size(config.stream_window_bytes)
            .initial_connection_window_size(config.connection_window_bytes)
            .max_send_buf_size(config.send_buffer_bytes)
            // h2's rapid-reset guard closes a connection once this many calls were
            // cancelled before ridegate took them up. Under overload a gate cancels calls
            // at its deadline in good faith: allow a connection's worth of streams, so
            // the guard still stops a flood but never a gate.
            .max_pending_accept_reset_streams(config.max_concurrent_streams as usize)
            // Keep idle gate connections open through NATs and find dead ones.
            .keep_alive_interval(config.http2_keepalive_interval)
            .keep_alive_timeout(config.http2_keepalive_timeout);
        Self {
            config: config.clone(),
            tls,
            metrics,
            http2,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            silent: parking_lot::Mutex::new(VecDeque::new()),
            refused_log: Throttled::default(),
            accept_error_log: Throttled::default(),
        }
    }

    /// The connection cap in force (the configured one, or lower to fit the fd limit).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Serves `service` on connections from `listener` until `shutdown` resolves; then
    /// stops accepting, sends every connection GOAWAY, and returns once all have closed.
    pub async fn serve<S, B, G>(
        self,
        listener: TcpListener,
        service: S,
        gatekeeper: G,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        G: Fn(&mut http::Request<Peeked>) -> Option<http::Response<B>> + Clone + Send + Sync + 'static,
        S: tower::Service<http::Request<Peeked>, Response = http::Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let this = Arc::new(self);
        let (drain_tx, drain_rx) = watch::channel(false);
        let mut shutdown = pin!(shutdown);
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    tcp
                }
                Err(e) if about_resources(&e) => {
                    this.metrics.record_accept_error();
                    this.accept_error_log.note(|errors| {
                        tracing::error!(error = %e, errors, pause = ?backoff, "cannot accept connections: backing off");
                    });
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
                // Reset before we took it, and the like: nothing to back off from.
                Err(_) => {
                    this.metrics.record_accept_error();
                    continue;
                }
            };
            let slot = match this.slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                // At the cap, a connection that has said nothing makes way (it closes at
                // once and hands back its slot).
                Err(_) if this.evict_silent() => {
                    tokio::time::timeout(EVICTION_WAIT, this.slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                Err(_) => None,
            };
            let Some(slot) = slot else {
                this.metrics.record_connection_refused();
                this.refused_log.note(|refused| {
                    let cap = this.max_connections;
                    tracing::warn!(refused, cap, "connection cap reached: new connections closed");
                });
                drop(tcp);
                continue;
            };
            // Noted as silent here, in accept order (not when its task first runs), so the
            // oldest silent connection is the one accepted first.
            let activity = Arc::new(Activity::new(Instant::now()));
            this.note_silent(&activity);
            let (this, service, gatekeeper, drain) =
                (this.clone(), service.clone(), gatekeeper.clone(), drain_rx.clone());
            tokio::spawn(async move {
                this.connection(tcp, activity, service, gatekeeper, drain).await;
                drop(slot);
            });
        }
        // Stop accepting at once (the kernel stops completing handshakes), then drain.
        drop(listener);
        let _ = drain_tx.send(true);
        drop(drain_rx);
        drain_tx.closed().await;
        Ok(())
    }

    /// Asks the oldest connection that has not sent a byte to close; false if none.
    fn evict_silent(&self) -> bool {
        let mut silent = self.silent.lock();
        while let Some(oldest) = silent.pop_front() {
            if let Some(activity) = oldest.upgrade()
                && !activity.greeted()
            {
                activity.evict.notify_one();
                return true;
            }
        }
        false
    }

    /// Notes a new connection as silent until it speaks.
    fn note_silent(&self, activity: &Arc<Activity>) {
        let mut silent = self.silent.lock();
        // Keep the list about as long as the connections it can name.
        if silent.len() >= self.max_connections {
            silent.retain(|a| a.upgrade().is_some_and(|a| !a.greeted()));
        }
        silent.push_back(Arc::downgrade(activity));
    }

    /// Serves one connection (`activity`, noted as silent at its accept) until it ends,
    /// is drained, idles out or ages out.
    async fn connection<S, B, G>(
        &self,
        tcp: TcpStream,
        activity: Arc<Activity>,
        service: S,
        gatekeeper: G,
        mut drain: watch::Receiver<bool>,
    ) where
        G: Fn(&mut http::Request<Peeked>) -> Option<http::Response<B>> + Send + Sync + 'static,
        S: tower::Service<http::Request<Peeked>, Response = http::Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let _open = self.metrics.connection_opened();
        let accepted = activity.start;
        let handshake_by = accepted + self.config.handshake_timeout;
        // Gates send small requests and wait for each answer: never delay a packet.
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(self.config.tcp_keepalive));
        let (conn, peer) = match &self.tls {
            None => (Conn::Plain(tcp), Peer::default()),
            Some(tls) => match tokio::select! {
                handshake = tokio::time::timeout_at(handshake_by, tls.accept(tcp)) => handshake,
                () = activity.evict.notified() => {
                    self.metrics.record_connection_closed(ConnectionClosed::Handshake);
                    return;
                }
                // Draining: a connection still shaking hands has no call to finish.
                Ok(_) = drain.wait_for(|d| *d) => return,
            } {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake refused");
                    self.metrics.record_tls_handshake_failure();
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    self.metrics.record_tls_handshake_failure();
                    self.metrics.record_connection_closed(ConnectionClosed::Handshake);
                    return;
                }
            },
        };
        let io = Watched {
            inner: conn,
            activity: activity.clone(),
        };
        let calls = {
            let activity = activity.clone();
            hyper::service::service_fn(move |request: http::Request<Incoming>| {
                // hyper calls this in the connection's task as the headers are read: the
                // call is stamped, and the gatekeeper may refuse it here, before it
                // waits behind others for a worker.
                let mut request = request.map(Peeked::new);
                request.extensions_mut().insert(Arrived(Instant::now()));
                request.extensions_mut().insert(peer.clone());
                let open = activity.call_started();
                let call = match gatekeeper(&mut request) {
                    Some(refusal) => Either::Left(std::future::ready(Ok(refusal))),
                    None => Either::Right(service.clone().oneshot(request)),
                };
                async move {
                    let response = call.await?;
                    Ok::<_, Infallible>(response.map(|body| Guarded::new(body, open)))
                }
            })
        };
        let mut connection = pin!(self.http2.serve_connection(TokioIo::new(io), calls));
        let age = jittered(self.config.max_connection_age);
        let mut aged_out = pin!(tokio::time::sleep_until(accepted + age));
        let mut goaway_sent = false;
        let mut greeted = false;
        let mut closing_by: Option<Instant> = None;
        loop {
            let idle_check = activity.idle_deadline(self.config.idle_timeout);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(handshake_by), if !greeted => {
                    greeted = activity.greeted();
                    if !greeted {
                        self.metrics.record_connection_closed(ConnectionClosed::Handshake);
                        return;
                    }
                }
                () = activity.evict.notified(), if !greeted => {
                    greeted = activity.greeted();
                    if !greeted {
                        self.metrics.record_connection_closed(ConnectionClosed::Handshake);
                        return;
                    }
                }
                () = tokio::time::sleep_until(idle_check), if !goaway_sent => {
                    if activity.idle_for(self.config.idle_timeout) {
                        self.metrics.record_connection_closed(ConnectionClosed::Idle);
                        connection.as_mut().graceful_shutdown();
                        goaway_sent = true;
                    }
                }
                () = aged_out.as_mut(), if closing_by.is_none() => {
                    self.metrics.record_connection_closed(ConnectionClosed::Age);
                    if !goaway_sent {
                        connection.as_mut().graceful_shutdown();
                        goaway_sent = true;
                    }
                    closing_by = Some(Instant::now() + self.config.max_connection_age_grace);
                }
                () = tokio::time::sleep_until(closing_by.unwrap_or(accepted)), if closing_by.is_some() => {
                    tracing::debug!("connection still busy after max_connection_age_grace: closed");
                    return;
                }
                Ok(_) = drain.wait_for(|d| *d), if !goaway_sent => {
                    // A connection that has said nothing has no call to finish.
                    if !activity.greeted() {
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    goaway_sent = true;
                }
            }
        }
    }
}

/// Whether an accept error is about the process's resources (worth backing off from)
/// rather than about the one connection.
fn about_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(&code))
}

// Linux errno values (stable ABI) for the accept errors above.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const ENOBUFS: i32 = 105;
const ENOMEM: i32 = 12;

/// Raises the soft open-file limit to the hard limit; returns the limit now in force.
fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// `age` ± 10 %, so connections opened together do not all close together.
fn jittered(age: Duration) -> Duration {
    let tenth = age / 10;
    let nanos = u64::try_from(tenth.as_nanos()).unwrap_or(u64::MAX).max(1);
    let offset = Duration::from_nanos(u64::from_le_bytes(ridegate_adapters::ids::random_bytes::<8>()) % (2 * nanos));
    age.saturating_sub(tenth) + offset
}

/// What one connection is doing: whether it has sent its first bytes, how many calls
/// are open on it, and since when it has had none.
#[derive(Debug)]
struct Activity {
    start: Instant,
    greeted: AtomicBool,
    /// Told to close: another connection needs its slot and it has said nothing.
    evict: tokio::sync::Notify,
    open_calls: AtomicUsize,
    /// Milliseconds after `start` at which the last call closed.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new(start: Instant) -> Self {
        Self {
            start,
            greeted: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
            open_calls: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn greeted(&self) -> bool {
        self.greeted.load(Ordering::Relaxed)
    }

    fn call_started(self: &Arc<Self>) -> OpenCall {
        self.open_calls.fetch_add(1, Ordering::Relaxed);
        OpenCall(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
    }

    /// When to look again whether the connection has idled out.
    fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        self.idle_since().max(Instant::now()) + idle_timeout
    }

    fn idle_for(&self, idle_timeout: Duration) -> bool {
        self.open_calls.load(Ordering::Relaxed) == 0 && self.idle_since().elapsed() >= idle_timeout
    }
}

/// A call open on a connection, until its response has been sent or dropped.
#[derive(Debug)]
struct OpenCall(Arc<Activity>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.open_calls.fetch_sub(1, Ordering::Relaxed) == 1 {
            let ms = u64::try_from(activity.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            activity.idle_since_ms.store(ms, Ordering::Relaxed);
        }
    }
}

/// A request body whose first frame may already have been read, in the connection's
/// task, if it came with the headers ([`Peeked::peek`]); then the rest.
#[derive(Debug)]
pub struct Peeked {
    first: Option<Result<Frame<Bytes>, hyper::Error>>,
    peeked: bool,
    rest: Incoming,
}

impl Peeked {
    fn new(rest: Incoming) -> Self {
        Self {
            first: None,
            peeked: false,
            rest,
        }
    }

    /// The body's first data, if it has arrived (looked for once, without waiting).
    pub fn peek(&mut self) -> Option<&Bytes> {
        if !self.peeked {
            self.peeked = true;
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if let Poll::Ready(Some(frame)) = Pin::new(&mut self.rest).poll_frame(&mut cx) {
                self.first = Some(frame);
            }
        }
        self.first.as_ref()?.as_ref().ok()?.data_ref()
    }
}

impl Body for Peeked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match this.first.take() {
            Some(first) => Poll::Ready(Some(first)),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        if let Some(Ok(first)) = &self.first
            && let Some(data) = first.data_ref()
        {
            let len = data.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + len);
            }
            hint.set_lower(hint.lower() + len);
        }
        hint
    }
}

/// A response body that holds `G` (a count of open calls, say) until it is done.
pub(super) struct Guarded<B, G> {
    body: B,
    _guard: G,
}

impl<B, G> Guarded<B, G> {
    /// `body`, holding `guard` until dropped.
    pub(super) fn new(body: B, guard: G) -> Self {
        Self { body, _guard: guard }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's stream, noting its first bytes read.
struct Watched {
    inner: Conn,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before && !this.activity.greeted() {
            this.activity.greeted.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_tenth_either_way() {
        let age = Duration::from_secs(1800);
        for _ in 0..1000 {
            let j = jittered(age);
            assert!(j >= Duration::from_secs(1620) && j < Duration::from_secs(1980), "{j:?}");
        }
    }

    #[test]
    fn only_resource_errors_back_off() {
        for code in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            assert!(about_resources(&io::Error::from_raw_os_error(code)));
        }
        assert!(!about_resources(&io::Error::from(io::ErrorKind::ConnectionAborted)));
        assert!(!about_resources(&io::Error::from_raw_os_error(104)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idles_from_when_its_last_call_closed() {
        let activity = Arc::new(Activity::new(Instant::now()));
        let idle = Duration::from_secs(60);
        let call = activity.call_started();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(!activity.idle_for(idle), "a call is open");
        drop(call);
        assert!(!activity.idle_for(idle), "the call only just closed");
        tokio::time::advance(idle).await;
        assert!(activity.idle_for(idle));
    }
}
