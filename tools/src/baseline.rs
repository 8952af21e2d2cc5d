//! The baseline server: ridegate's gRPC contract (`ridegate.v1.Gate`), transport
//! ([`ridegate::serve::transport`], the very accept loop and limits `ridegate serve`
//! uses), routes and runtime, with a handler that answers at once with a constant
//! ALLOW — the same answer ridegate gives a green rider, the same size on the wire.
//! Benchmarks report ridegate as a ratio to it, measured in the same run, so what they
//! show is ridegate's own cost over the cost of the stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use futures::{Stream, StreamExt as _};
use ridegate::config::ServerConfig;
use ridegate::serve::transport;
use ridegate_core::decision::screen_message;
use ridegate_core::model::{Reason, Verdict};
use ridegate_proto::pb;
use ridegate_proto::pb::gate_server::GateServer;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

/// Answers every tap with the constant.
#[derive(Debug, Clone)]
pub struct BaselineGate {
    answer: pb::AuthorizeResponse,
}

impl Default for BaselineGate {
    fn default() -> Self {
        let (zh, en) = screen_message(Verdict::Allow, Reason::HealthGreen);
        Self {
            answer: pb::AuthorizeResponse {
                request_id: String::new(),
                verdict: pb::Verdict::Allow.into(),
                reason: pb::Reason::HealthGreen.into(),
                message_zh: zh.into(),
                message_en: en.into(),
                decision_id: "0000000000000000".into(),
                degraded: false,
                status_age_ms: Some(0),
                mode: pb::CheckMode::Enforce.into(),
                shadow_verdict: pb::Verdict::Unspecified.into(),
                shadow_reason: pb::Reason::Unspecified.into(),
                retry: false,
            },
        }
    }
}

impl BaselineGate {
    fn answer(&self, request_id: String) -> pb::AuthorizeResponse {
        pb::AuthorizeResponse {
            request_id,
            ..self.answer.clone()
        }
    }
}

type TapStream = Pin<Box<dyn Stream<Item = Result<pb::TapResult, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gate_server::Gate for BaselineGate {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        Ok(Response::new(self.answer(request.into_inner().request_id)))
    }

    type TapsStream = TapStream;

    async fn taps(&self, request: Request<Streaming<pb::AuthorizeRequest>>) -> Result<Response<TapStream>, Status> {
        let this = self.clone();
        let results = request.into_inner().map(move |tap| {
            let tap = tap?;
            Ok(pb::TapResult {
                result: Some(pb::tap_result::Result::Decision(this.answer(tap.request_id))),
            })
        });
        Ok(Response::new(Box::pin(results)))
    }
}

/// Serves the baseline on `listener` until `shutdown`, with ridegate's transport
/// settings and reflection, as `ridegate serve` has them.
pub async fn serve_baseline(
    listener: TcpListener,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let gate = GateServer::new(BaselineGate::default()).max_decoding_message_size(config.max_tap_bytes);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ridegate_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection")?;
    let router = Routes::new(gate).add_service(reflection).into_axum_router();
    transport::Transport::new(config, None, Arc::default())
        .serve(
            listener,
            router,
            |_: &mut http::Request<transport::Peeked>| None,
            shutdown,
        )
        .await
        .context("baseline server failed")
}
