//! `ridegate.v1.Gate`: unary `Authorize` and the `Taps` stream.
//!
//! `Taps` is served by [`TapsRoute`] with a decoder of its own ([`TapCodec`]): a tap
//! whose bytes do not decode gets a `TapError` in place and the stream stays open, as
//! the contract promises (tonic's stock decoder cannot carry on past such a message).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf as _;
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use ridegate_core::decision::Urgency;
use ridegate_proto::pb;
use tokio::time::Instant;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::codegen::{Body, BoxFuture, StdError};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstEncoder;

use super::admission::{Admission, Overloaded};
use super::convert::{self, InvalidRequest};
use super::deadline::{Deadlines, grpc_timeout};
use super::gates::{GateAdmission, GateRefused};
use super::tls::Peer;
use super::transport::Arrived;
use crate::authorize::Authorizer;

/// Why a tap was not decided; `super::status` maps each to its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum TapRefused {
    /// The request cannot be understood.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The gate may not send it (its certificate, the registry).
    #[error(transparent)]
    Gate(#[from] GateRefused),
    /// It could not be answered in time: refused so that others are.
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
}

/// Serves gate controllers.
#[derive(Clone)]
pub(super) struct GateService {
    authorizer: Arc<Authorizer>,
    deadlines: Deadlines,
    stream_concurrency: usize,
    draining: tokio::sync::watch::Receiver<bool>,
    gates: GateAdmission,
    admission: Arc<Admission>,
}

impl GateService {
    /// A service over `authorizer`. When `draining` turns true, open `Taps` streams stop
    /// taking new taps, answer the ones in flight, and end.
    pub(super) fn new(
        authorizer: Arc<Authorizer>,
        deadlines: Deadlines,
        stream_concurrency: usize,
        draining: tokio::sync::watch::Receiver<bool>,
        gates: GateAdmission,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            authorizer,
            deadlines,
            stream_concurrency,
            draining,
            gates,
            admission,
        }
    }

    async fn decide(
        &self,
        message: pb::AuthorizeRequest,
        peer: Option<&Peer>,
        received: Instant,
        grpc_timeout: Option<std::time::Duration>,
    ) -> Result<pb::AuthorizeResponse, TapRefused> {
        let request_id = message.request_id.clone();
        let mut request = convert::gate_request(message).inspect_err(|_| self.authorizer.record_invalid())?;
        self.gates
            .admit(peer, &mut request.gate)
            .inspect_err(|_| self.authorizer.record_gate_refused())?;
        let deadline = self.deadlines.answer_by(received, grpc_timeout, request.gate.budget);
        self.admission.admit(
            || Urgency::of(&request, || self.authorizer.is_retry(&request)),
            received,
            deadline,
        )?;
        let decided = self.authorizer.authorize(request, received, deadline).await;
        Ok(convert::response(request_id, decided))
    }

    async fn tap(&self, message: TapMessage, peer: Option<&Peer>) -> pb::TapResult {
        let message = match message {
            TapMessage::Tap(message) => message,
            TapMessage::Undecodable(problem) => {
                self.authorizer.record_invalid();
                let error = pb::TapError {
                    request_id: String::new(),
                    code: Code::InvalidArgument as i32,
                    message: format!("malformed protobuf message: {problem}"),
                    retry_after_ms: 0,
                };
                return pb::TapResult {
                    result: Some(pb::tap_result::Result::Error(error)),
                };
            }
        };
        let request_id = message.request_id.clone();
        let result = match self.decide(message, peer, Instant::now(), None).await {
            Ok(response) => pb::tap_result::Result::Decision(response),
            Err(e) => {
                // Mapped like a unary call's error, in the one place that maps them.
                let status = Status::from(e);
                pb::tap_result::Result::Error(pb::TapError {
                    request_id,
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    retry_after_ms: super::status::retry_pushback(&status),
                })
            }
        };
        pb::TapResult { result: Some(result) }
    }
}

/// The `Taps` response stream.
pub(super) type TapStream = Pin<Box<dyn Stream<Item = Result<pb::TapResult, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gate_server::Gate for GateService {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        // When the call came off its connection (the transport stamps every call).
        let received = request
            .extensions()
            .get::<Arrived>()
            .map_or_else(Instant::now, |arrived| arrived.0);
        let timeout = grpc_timeout(request.metadata());
        let peer = request.extensions().get::<Peer>().cloned();
        let span = tracing::debug_span!("authorize");
        let _guard = span.enter();
        let answer = self
            .decide(request.into_inner(), peer.as_ref(), received, timeout)
            .await?;
        if timeout.is_some_and(|timeout| received.elapsed() > timeout) {
            self.authorizer.metrics().record_answer_late();
        }
        Ok(Response::new(answer))
    }

    type TapsStream = TapStream;

    async fn taps(&self, request: Request<Streaming<pb::AuthorizeRequest>>) -> Result<Response<TapStream>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        Ok(Response::new(self.answer_taps(
            request.into_inner().map(|r| r.map(TapMessage::Tap)),
            peer,
        )))
    }
}

impl GateService {
    /// Answers a stream of taps, concurrently, until it ends or the server drains. Taps
    /// received before a transport error (a message over the size limit, a broken
    /// connection) are still answered; then the stream ends with the error mapped in
    /// the one place that maps errors.
    fn answer_taps(
        &self,
        taps: impl Stream<Item = Result<TapMessage, Status>> + Send + 'static,
        peer: Option<Peer>,
    ) -> TapStream {
        let mut draining = self.draining.clone();
        let drained = async move {
            let _ = draining.wait_for(|d| *d).await;
        };
        let (broken_tx, broken_rx) = tokio::sync::oneshot::channel::<Status>();
        let taps = taps.take_until(drained).scan(Some(broken_tx), |broken_tx, item| {
            std::future::ready(match item {
                Ok(message) => Some(message),
                Err(status) => {
                    if let Some(tx) = broken_tx.take() {
                        let _ = tx.send(super::status::transport(status));
                    }
                    None
                }
            })
        });
        let this = self.clone();
        let peer = Arc::new(peer);
        let answers = taps
            .map(move |message| {
                let (this, peer) = (this.clone(), peer.clone());
                async move { this.tap(message, peer.as_ref().as_ref()).await }
            })
            .buffer_unordered(self.stream_concurrency)
            .map(Ok);
        let broken = futures::stream::once(broken_rx).filter_map(|r| std::future::ready(r.ok().map(Err)));
        Box::pin(answers.chain(broken))
    }
}

/// One message on the `Taps` stream: a tap, or bytes that did not decode as one.
#[derive(Debug)]
pub(super) enum TapMessage {
    /// A tap (not yet validated).
    Tap(pb::AuthorizeRequest),
    /// Why the message's bytes did not decode.
    Undecodable(String),
}

/// The `Taps` codec: prost for answers, and a decoder that consumes an undecodable
/// message whole and yields it as [`TapMessage::Undecodable`], so the next message is
/// read from its own frame.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TapCodec;

impl Codec for TapCodec {
    type Encode = pb::TapResult;
    type Decode = TapMessage;
    type Encoder = ProstEncoder<pb::TapResult>;
    type Decoder = TapCodec;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        TapCodec
    }
}

impl Decoder for TapCodec {
    type Item = TapMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<TapMessage>, Status> {
        // The buffer holds exactly this message's bytes (tonic frames them by length):
        // decode in place, then drop whatever a failed decode left unread, so the next
        // message is read from its own frame.
        let decoded = pb::AuthorizeRequest::decode(&mut *buf);
        let unread = buf.remaining();
        buf.advance(unread);
        Ok(Some(match decoded {
            Ok(tap) => TapMessage::Tap(tap),
            Err(e) => TapMessage::Undecodable(e.to_string()),
        }))
    }
}

/// `/ridegate.v1.Gate/Taps` over [`TapCodec`], routed ahead of the generated server's
/// own `Taps`.
#[derive(Clone)]
pub(super) struct TapsRoute {
    gate: GateService,
    max_request_bytes: usize,
}

impl TapsRoute {
    /// Serves `gate`'s `Taps`, with messages up to `max_request_bytes`.
    pub(super) fn new(gate: GateService, max_request_bytes: usize) -> Self {
        Self {
            gate,
            max_request_bytes,
        }
    }
}

impl<B> tower::Service<http::Request<B>> for TapsRoute
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (gate, limit) = (self.gate.clone(), self.max_request_bytes);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(TapCodec).apply_max_message_size_config(Some(limit), None);
            Ok(grpc.streaming(TapsCall(gate), request).await)
        })
    }
}

/// One `Taps` call, for tonic's streaming handler.
struct TapsCall(GateService);

impl tonic::server::StreamingService<TapMessage> for TapsCall {
    type Response = pb::TapResult;
    type ResponseStream = TapStream;
    type Future = BoxFuture<Response<TapStream>, Status>;

    fn call(&mut self, request: Request<Streaming<TapMessage>>) -> Self::Future {
        let peer = request.extensions().get::<Peer>().cloned();
        let stream = self.0.answer_taps(request.into_inner(), peer);
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}
