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

/// TLS for the load's connections: the CA that signed the server's certificate, the
/// name it carries, and a client certificate for mutual TLS.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({:?})", self.name)
    }
}

impl Tls {
    /// Reads the CA `ca` and, for mutual TLS, a client certificate and key; the server
    /// must present a certificate for `name`.
    pub fn load(
        ca: &std::path::Path,
        client: Option<(&std::path::Path, &std::path::Path)>,
        name: &str,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("--tls-ca: {}", ca.display()))? {
            roots.add(cert.context("--tls-ca")?).context("--tls-ca")?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match client {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .with_context(|| format!("--tls-cert: {}", cert.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .context("--tls-cert")?;
                let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("--tls-key: {}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("--tls-cert, --tls-key")?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            name: ServerName::try_from(name.to_owned()).context("--tls-name")?,
        })
    }
}

/// How the message of a call that failed in the transport begins.
pub(super) const TRANSPORT: &str = "transport: ";

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
    /// The server's retry hint (`grpc-retry-pushback-ms`) with a refusal.
    pub pushback: Option<std::time::Duration>,
}

impl Reply {
    /// A failed call.
    pub(super) fn error(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            answer: None,
            pushback: None,
        }
    }
}

impl Connection {
    /// Connects to `addr` (`host:port`), over `tls` if given, and calls `path`; every
    /// call carries `grpc-timeout: timeout`.
    pub(super) async fn open(
        addr: &str,
        path: &str,
        timeout: std::time::Duration,
        tls: Option<&Tls>,
    ) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24);
        let (send, scheme) = match tls {
            None => {
                let (send, connection) = builder.handshake::<_, Bytes>(tcp).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                (send, "http")
            }
            Some(tls) => {
                let stream = tls.connector.connect(tls.name.clone(), tcp).await?;
                let (send, connection) = builder.handshake::<_, Bytes>(stream).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                (send, "https")
            }
        };
        let uri: Uri = format!("{scheme}://{addr}{path}").parse()?;
        Ok(Self {
            send,
            uri,
            timeout: HeaderValue::from_str(&grpc_timeout(timeout))?,
        })
    }

    /// Sends one framed request and reads the answer.
    pub(super) async fn call(&mut self, body: Bytes) -> Reply {
        match self.exchange(body).await {
            Ok(reply) => reply,
            Err(e) => Reply::error(14, format!("{TRANSPORT}{e}")),
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
            let pushback = field(ridegate::serve::RETRY_PUSHBACK)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .map(std::time::Duration::from_millis);
            return Ok(Reply {
                pushback,
                ..Reply::error(code, message)
            });
        }
        let Some(answer) = decode_message(&data) else {
            return Ok(Reply::error(
                13,
                "OK status, but the answer is not one AuthorizeResponse message",
            ));
        };
        Ok(Reply {
            code,
            message: String::new(),
            answer: Some((answer.verdict, answer.reason)),
            pushback: None,
        })
    }
}

/// The one uncompressed, length-prefixed message a unary answer carries.
fn decode_message(data: &[u8]) -> Option<pb::AuthorizeResponse> {
    let (prefix, message) = data.split_first_chunk::<5>()?;
    let length = u32::from_be_bytes(prefix[1..].try_into().ok()?) as usize;
    if prefix[0] != 0 || message.len() != length {
        return None;
    }
    pb::AuthorizeResponse::decode(message).ok()
}

/// A `grpc-timeout` value: at most eight digits, in the finest unit that holds it.
fn grpc_timeout(timeout: std::time::Duration) -> String {
    const MAX: u128 = 99_999_999;
    match (timeout.as_micros(), timeout.as_millis(), timeout.as_secs()) {
        (micros, _, _) if micros <= MAX => format!("{}u", micros.max(1)),
        (_, millis, _) if millis <= MAX => format!("{millis}m"),
        (_, _, secs) => format!("{}S", u128::from(secs).min(MAX)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn grpc_timeouts_use_the_finest_unit_that_fits_eight_digits() {
        assert_eq!(grpc_timeout(Duration::ZERO), "1u");
        assert_eq!(grpc_timeout(Duration::from_secs(20)), "20000000u");
        assert_eq!(grpc_timeout(Duration::from_secs(200)), "200000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(grpc_timeout(Duration::MAX), "99999999S");
    }

    #[test]
    fn only_one_whole_uncompressed_message_decodes() {
        let message = pb::AuthorizeResponse {
            verdict: pb::Verdict::Allow.into(),
            ..Default::default()
        }
        .encode_to_vec();
        let framed = |flag: u8, length: usize, body: &[u8]| {
            let mut data = vec![flag];
            data.extend_from_slice(&(length as u32).to_be_bytes());
            data.extend_from_slice(body);
            data
        };
        let ok = framed(0, message.len(), &message);
        assert_eq!(decode_message(&ok).unwrap().verdict, i32::from(pb::Verdict::Allow));
        assert!(
            decode_message(&framed(1, message.len(), &message)).is_none(),
            "compressed"
        );
        assert!(
            decode_message(&framed(0, message.len() + 1, &message)).is_none(),
            "short"
        );
        assert!(decode_message(&ok[..4]).is_none(), "no prefix");
        assert!(decode_message(&framed(0, 3, b"\xff\xff\xff")).is_none(), "garbage");
    }
}
