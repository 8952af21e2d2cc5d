//! The load tool's transport: gRPC over bare HTTP/2 connections (the `h2` crate tonic
//! itself runs on), with requests already encoded. Skipping tonic's client stack — a
//! buffer task, codecs, per-call futures — keeps the tool's own cost per call small,
//! so what it measures is the server.

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, Uri};
use prost::Message as _;
use ridegate_proto::pb;
use tokio::net::TcpStream;

/// One HTTP/2 connection, shared by the workers assigned to it.
#[derive(Clone)]
pub(super) struct Connection {
    send: SendRequest<Bytes>,
    uri: Uri,
    timeout: HeaderValue,
}

/// What one call gave.
#[derive(Debug)]
pub(super) struct Reply {
    /// The gRPC status code (0 = OK); 4 when the tool's own timeout expired.
    pub code: i32,
    /// The status message, for errors.
    pub message: String,
    /// Verdict and reason, from an OK answer.
    pub answer: Option<(i32, i32)>,
}

impl Reply {
    fn error(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            answer: None,
        }
    }
}

impl Connection {
    /// Connects to `addr` (`host:port`) and calls `path`; every call carries
    /// `grpc-timeout: timeout`.
    pub(super) async fn open(addr: &str, path: &str, timeout: std::time::Duration) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake::<_, Bytes>(tcp)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let uri: Uri = format!("http://{addr}{path}").parse()?;
        let micros = timeout.as_micros().clamp(1, 99_999_999);
        Ok(Self {
            send,
            uri,
            timeout: HeaderValue::from_str(&format!("{micros}u"))?,
        })
    }

    /// Sends one framed request and reads the answer.
    pub(super) async fn call(&mut self, body: Bytes) -> Reply {
        match self.exchange(body).await {
            Ok(reply) => reply,
            Err(e) => Reply::error(14, format!("transport: {e}")),
        }
    }

    async fn exchange(&mut self, body: Bytes) -> Result<Reply, h2::Error> {
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("grpc-timeout", self.timeout.clone());
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(body, true)?;
        let (parts, mut body) = response.await?.into_parts();
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?.unwrap_or_default();
        // A status may come in the headers alone (a trailers-only answer).
        let field = |name: &str| trailers.get(name).or_else(|| parts.headers.get(name));
        let code = field("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        if code != 0 {
            let message = field("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
            return Ok(Reply::error(code, message));
        }
        let answer = (data.len() >= 5)
            .then(|| pb::AuthorizeResponse::decode(&data[5..]).ok())
            .flatten()
            .map(|r| (r.verdict, r.reason));
        Ok(Reply {
            code,
            message: String::new(),
            answer,
        })
    }
}
