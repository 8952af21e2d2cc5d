//! A bare HTTP/2 gRPC client: sends exactly the bytes and headers a test chooses, with
//! none of tonic's client-side checks (tonic's client enforces `grpc-timeout` itself
//! and only sends well-formed messages).

use bytes::{BufMut, Bytes, BytesMut};
use http::Request;
use tokio::net::TcpStream;

/// What came back: the gRPC status code, its message, and the response messages.
#[derive(Debug)]
pub struct RawResponse {
    /// `grpc-status`.
    pub status: i32,
    /// `grpc-message`.
    pub message: String,
    /// Each length-prefixed message in the body.
    pub messages: Vec<Bytes>,
}

/// Frames `payload` as one gRPC message.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 5);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(payload.len()).expect("small"));
    buf.put_slice(payload);
    buf.freeze()
}

/// POSTs `body` (already framed) to `path` with `headers`, and reads the whole answer.
pub async fn call(addr: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> RawResponse {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let mut request = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let (response, mut send) = client
        .send_request(request.body(()).expect("request"), false)
        .expect("send");
    send.send_data(body, true).expect("body");
    let response = response.await.expect("response");
    let (parts, mut body) = response.into_parts();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    // A status may come in the headers alone (trailers-only response).
    let header = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut messages = Vec::new();
    let mut data = data.freeze();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        messages.push(data.slice(5..5 + len));
        data = data.slice(5 + len..);
    }
    RawResponse {
        status: header("grpc-status").parse().unwrap_or(-1),
        message: percent_decode(&header("grpc-message")),
        messages,
    }
}

/// `grpc-message` is percent-encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
