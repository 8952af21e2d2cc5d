//! `ridegate.v1.Gate`: unary `Authorize` and the `Taps` stream.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use ridegate_proto::pb;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, InvalidRequest};
use super::deadline::{Deadlines, grpc_timeout};
use crate::authorize::Authorizer;

/// Serves gate controllers.
#[derive(Clone)]
pub(super) struct GateService {
    authorizer: Arc<Authorizer>,
    deadlines: Deadlines,
    stream_concurrency: usize,
    draining: tokio::sync::watch::Receiver<bool>,
}

impl GateService {
    /// A service over `authorizer`. When `draining` turns true, open `Taps` streams stop
    /// taking new taps, answer the ones in flight, and end.
    pub(super) fn new(
        authorizer: Arc<Authorizer>,
        deadlines: Deadlines,
        stream_concurrency: usize,
        draining: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            authorizer,
            deadlines,
            stream_concurrency,
            draining,
        }
    }

    async fn decide(
        &self,
        message: pb::AuthorizeRequest,
        received: Instant,
        grpc_timeout: Option<std::time::Duration>,
    ) -> Result<pb::AuthorizeResponse, InvalidRequest> {
        let request_id = message.request_id.clone();
        let request = convert::gate_request(message).inspect_err(|_| self.authorizer.record_invalid())?;
        let deadline = self.deadlines.answer_by(received, grpc_timeout, request.gate.budget);
        let decided = self.authorizer.authorize(request, received, deadline).await;
        Ok(convert::response(request_id, decided))
    }

    async fn tap(&self, message: pb::AuthorizeRequest) -> pb::TapResult {
        let request_id = message.request_id.clone();
        let result = match self.decide(message, Instant::now(), None).await {
            Ok(response) => pb::tap_result::Result::Decision(response),
            Err(e) => {
                // Mapped like a unary call's error, in the one place that maps them.
                let status = Status::from(e);
                pb::tap_result::Result::Error(pb::TapError {
                    request_id,
                    code: status.code() as i32,
                    message: status.message().to_owned(),
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
        let received = Instant::now();
        let timeout = grpc_timeout(request.metadata());
        let span = tracing::debug_span!("authorize");
        let _guard = span.enter();
        Ok(Response::new(
            self.decide(request.into_inner(), received, timeout).await?,
        ))
    }

    type TapsStream = TapStream;

    async fn taps(&self, request: Request<Streaming<pb::AuthorizeRequest>>) -> Result<Response<TapStream>, Status> {
        let mut draining = self.draining.clone();
        let drained = async move {
            let _ = draining.wait_for(|d| *d).await;
        };
        // Taps received before a broken message are still answered; then the stream
        // ends with the error (tonic cannot resynchronise after an undecodable message).
        let (broken_tx, broken_rx) = tokio::sync::oneshot::channel::<Status>();
        let taps = request
            .into_inner()
            .take_until(drained)
            .scan(Some(broken_tx), |broken_tx, item| {
                std::future::ready(match item {
                    Ok(message) => Some(message),
                    Err(status) => {
                        if let Some(tx) = broken_tx.take() {
                            let _ = tx.send(status);
                        }
                        None
                    }
                })
            });
        let this = self.clone();
        let answers = taps
            .map(move |message| {
                let this = this.clone();
                async move { this.tap(message).await }
            })
            .buffer_unordered(self.stream_concurrency)
            .map(Ok);
        let broken = futures::stream::once(broken_rx).filter_map(|r| std::future::ready(r.ok().map(Err)));
        let results = answers.chain(broken);
        Ok(Response::new(Box::pin(results)))
    }
}
