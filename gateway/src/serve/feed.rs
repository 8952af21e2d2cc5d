//! `ridegate.v1.HealthFeed`: statuses pushed at run time, stored (in this process or in
//! the shared tier, which announces them to every instance) and applied to this
//! instance's cache at once. Only the health platform and the back end may publish,
//! authenticated like every non-gate caller. An update the store cannot take is
//! reported as rejected, so the publisher can send it again: nothing is lost silently.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use ridegate_adapters::caller::CallerKind;
use ridegate_adapters::health::{Applied, parse_update};
use ridegate_adapters::ids::Pseudonymizer;
use ridegate_core::model::Colour;
use ridegate_proto::pb;
use tonic::{Request, Response, Status, Streaming};

use super::auth::AuthError;
use super::convert::BatchTooLarge;
use crate::brake::{Held, MassDenyBrake};
use crate::stores::{StatusReader, StatusSource, StoreError};

/// Most updates per `Publish` call or `Ingest` batch.
pub const MAX_UPDATES: usize = 10_000;

/// Applies pushed statuses.
#[derive(Clone)]
pub(super) struct FeedService {
    statuses: StatusSource,
    cache: StatusReader,
    pseudonymizer: Pseudonymizer,
    brake: Arc<MassDenyBrake>,
}

impl FeedService {
    /// A feed writing into `statuses` and refreshing `cache`, behind `brake`.
    pub(super) fn new(
        statuses: StatusSource,
        cache: StatusReader,
        pseudonymizer: Pseudonymizer,
        brake: Arc<MassDenyBrake>,
    ) -> Self {
        Self {
            statuses,
            cache,
            pseudonymizer,
            brake,
        }
    }

    async fn apply(&self, update: pb::StatusUpdate) -> Result<(), UpdateRejected> {
        let (identity, status) = parse_update(&self.pseudonymizer, update).map_err(UpdateRejected::Invalid)?;
        // A rider turning from green to non-green passes the brake first (on the
        // embedded store, where the status held is known).
        if let Some(store) = self.statuses.embedded()
            && status.colour != Colour::Green
            && store
                .get(&identity)
                .is_some_and(|held| held.colour == Colour::Green && held.set_at <= status.set_at)
        {
            self.brake.admit_turn(store.len()).map_err(UpdateRejected::Held)?;
        }
        let applied = self
            .statuses
            .put(identity, status)
            .await
            .map_err(UpdateRejected::NotStored)?;
        if applied == Applied::Stored {
            self.cache.store(identity, status);
        }
        Ok(())
    }

    /// Applies `updates` in order: how many were applied, and the rejected ones by index.
    /// A store failure is logged once per call, with the first failure's cause.
    async fn apply_all(&self, updates: Vec<pb::StatusUpdate>) -> (u32, Vec<pb::RejectedUpdate>) {
        let mut applied = 0;
        let mut rejected = Vec::new();
        let mut not_stored = 0u32;
        let mut first_failure = None;
        // In order; a durable store takes many at once so they share commits.
        let mut outcomes = futures::stream::iter(updates)
            .map(|update| self.apply(update))
            .buffered(self.statuses.batch_concurrency())
            .enumerate();
        while let Some((index, outcome)) = outcomes.next().await {
            match outcome {
                Ok(()) => applied += 1,
                Err(e) => {
                    if let UpdateRejected::NotStored(failure) = &e {
                        not_stored += 1;
                        first_failure.get_or_insert_with(|| failure.clone());
                    }
                    rejected.push(pb::RejectedUpdate {
                        index: index as u32,
                        reason: e.to_string(),
                    });
                }
            }
        }
        if let Some(failure) = first_failure {
            tracing::warn!(
                not_stored,
                error = &failure as &dyn std::error::Error,
                "health statuses not stored; reported to the publisher as rejected"
            );
        }
        (applied, rejected)
    }

    /// Applies one batch from an ingest stream.
    async fn ingest_batch(&self, batch: pb::StatusBatch) -> Result<pb::IngestAck, FeedDenied> {
        let sequence = batch.sequence;
        if batch.updates.len() > MAX_UPDATES {
            let too_large = BatchTooLarge {
                got: batch.updates.len(),
                limit: MAX_UPDATES,
            };
            return Err(FeedDenied::BatchTooLarge { sequence, too_large });
        }
        let (applied, rejected) = self.apply_all(batch.updates).await;
        tracing::debug!(
            sequence,
            applied,
            rejected = rejected.len(),
            "health status batch ingested"
        );
        Ok(pb::IngestAck {
            sequence,
            applied,
            rejected,
        })
    }
}

/// Why one pushed update was not applied: the reason the publisher is given.
#[derive(Debug, thiserror::Error)]
enum UpdateRejected {
    /// The update cannot be used (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// The store did not take it.
    #[error("not stored: {0}")]
    NotStored(StoreError),
    /// The mass-deny brake holds it.
    #[error("not stored: {0}")]
    Held(Held),
}

/// Why a feed call, or an ingest batch, is refused; `super::status` maps each to its
/// status.
#[derive(Debug, thiserror::Error)]
pub(super) enum FeedDenied {
    /// The caller is not authenticated.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The caller may not publish statuses.
    #[error("only the health platform or the back end may publish statuses")]
    NotPublisher,
    /// An ingest batch larger than accepted (it ends the stream).
    #[error("batch {sequence}: {too_large}")]
    BatchTooLarge {
        /// The batch's sequence number.
        sequence: u64,
        /// Its size and the limit.
        too_large: BatchTooLarge,
    },
}

/// Only the health platform and the back end may push statuses.
fn authorize<T>(request: &Request<T>) -> Result<(), FeedDenied> {
    let caller = super::auth::caller(request)?;
    if matches!(caller.kind, CallerKind::HealthPlatform | CallerKind::BackEnd) {
        Ok(())
    } else {
        Err(FeedDenied::NotPublisher)
    }
}

/// The `Ingest` acknowledgement stream.
pub(super) type AckStream = Pin<Box<dyn Stream<Item = Result<pb::IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl pb::health_feed_server::HealthFeed for FeedService {
    async fn publish(&self, request: Request<pb::PublishRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        authorize(&request)?;
        let updates = request.into_inner().updates;
        if updates.len() > MAX_UPDATES {
            return Err(BatchTooLarge {
                got: updates.len(),
                limit: MAX_UPDATES,
            }
            .into());
        }
        let (applied, rejected) = self.apply_all(updates).await;
        tracing::info!(applied, rejected = rejected.len(), "health statuses published");
        Ok(Response::new(pb::PublishResponse { applied, rejected }))
    }

    type IngestStream = AckStream;

    async fn ingest(&self, request: Request<Streaming<pb::StatusBatch>>) -> Result<Response<AckStream>, Status> {
        authorize(&request)?;
        tracing::info!("health status ingest stream opened");
        let this = self.clone();
        // Batches are applied one after another and acknowledged in order; a broken or
        // oversize batch ends the stream with its error, after the earlier acks.
        let acks = request
            .into_inner()
            .then(move |batch| {
                let this = this.clone();
                // A transport error (an oversize batch) as the one error map says.
                async move { Ok(this.ingest_batch(batch.map_err(super::status::transport)?).await?) }
            })
            .scan(false, |ended, ack| {
                let item = (!*ended).then_some(ack);
                *ended |= item.as_ref().is_some_and(Result::is_err);
                std::future::ready(item)
            });
        Ok(Response::new(Box::pin(acks)))
    }
}
