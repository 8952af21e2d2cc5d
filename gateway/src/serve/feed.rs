//! `ridegate.v1.HealthFeed`: statuses pushed at run time, stored (in this process or in
//! the shared tier, which announces them to every instance) and applied to this
//! instance's cache at once. Only the health platform and the back end may publish,
//! authenticated like every non-gate caller. An update the store cannot take is
//! reported as rejected, so the publisher can send it again: nothing is lost silently.

use ridegate_adapters::caller::CallerKind;
use ridegate_adapters::health::Applied;
use ridegate_adapters::ids::{IdentityId, Pseudonymizer};
use ridegate_adapters::model::{Colour, HealthStatus, UnixMillis};
use ridegate_proto::pb;
use tonic::{Request, Response, Status};

use super::status::BatchTooLarge;
use crate::cache::HealthCache;
use crate::stores::HealthBackend;

/// Most updates per `Publish` call.
pub const MAX_UPDATES: usize = 10_000;

/// Applies pushed statuses.
pub(super) struct FeedService {
    statuses: HealthBackend,
    cache: HealthCache<HealthBackend>,
    pseudonymizer: Pseudonymizer,
}

impl FeedService {
    /// A feed writing into `statuses` and refreshing `cache`.
    pub(super) fn new(
        statuses: HealthBackend,
        cache: HealthCache<HealthBackend>,
        pseudonymizer: Pseudonymizer,
    ) -> Self {
        Self {
            statuses,
            cache,
            pseudonymizer,
        }
    }

    fn parse(&self, update: pb::StatusUpdate) -> Result<(IdentityId, HealthStatus), String> {
        use pb::status_update::Subject;
        let identity = match update.subject {
            Some(Subject::Identity(hex)) => {
                let id = hex.parse::<IdentityId>().map_err(|e| format!("identity: {e}"))?;
                self.pseudonymizer.subject(None, Some(id))
            }
            Some(Subject::IdNumber(number)) => self.pseudonymizer.subject(Some(&number), None),
            None => return Err("subject: one of identity or id_number is required".into()),
        }
        .map_err(|e| e.to_string())?;
        let colour = match pb::HealthColour::try_from(update.colour) {
            Ok(pb::HealthColour::Green) => Colour::Green,
            Ok(pb::HealthColour::Yellow) => Colour::Yellow,
            Ok(pb::HealthColour::Red) => Colour::Red,
            Ok(pb::HealthColour::Unspecified) => return Err("colour: is required".into()),
            Err(_) => return Err(format!("colour: unknown value {}", update.colour)),
        };
        if update.set_at_unix_ms <= 0 {
            return Err("set_at_unix_ms: must be a positive time".into());
        }
        let negative_test_at =
            (update.negative_test_at_unix_ms > 0).then_some(UnixMillis(update.negative_test_at_unix_ms));
        Ok((
            identity,
            HealthStatus {
                colour,
                set_at: UnixMillis(update.set_at_unix_ms),
                negative_test_at,
            },
        ))
    }

    async fn apply(&self, update: pb::StatusUpdate) -> Result<(), String> {
        let (identity, status) = self.parse(update)?;
        let applied = self
            .statuses
            .put(identity, status)
            .await
            .map_err(|e| format!("not stored, send it again: {e}"))?;
        if applied == Applied::Stored {
            self.cache.store(identity, status);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::health_feed_server::HealthFeed for FeedService {
    async fn publish(&self, request: Request<pb::PublishRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        let caller = super::auth::caller(&request)?;
        if !matches!(caller.kind, CallerKind::HealthPlatform | CallerKind::BackEnd) {
            return Err(Status::permission_denied(
                "only the health platform or the back end may publish statuses",
            ));
        }
        let updates = request.into_inner().updates;
        if updates.len() > MAX_UPDATES {
            return Err(BatchTooLarge {
                got: updates.len(),
                limit: MAX_UPDATES,
            }
            .into());
        }
        let mut response = pb::PublishResponse::default();
        for (index, update) in updates.into_iter().enumerate() {
            match self.apply(update).await {
                Ok(()) => response.applied += 1,
                Err(reason) => response.rejected.push(pb::RejectedUpdate {
                    index: index as u32,
                    reason,
                }),
            }
        }
        tracing::info!(
            applied = response.applied,
            rejected = response.rejected.len(),
            "health statuses published"
        );
        Ok(Response::new(response))
    }
}
