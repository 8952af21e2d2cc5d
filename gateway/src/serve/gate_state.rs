//! `ridegate.v1.GateState`: the feed offline-capable gates follow, and the upload of
//! what they decided offline. Served on the gate port to gates, like `Gate` (with
//! mutual TLS on, only to clients with a gate certificate).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use ridegate_adapters::ids::CodeKey;
use ridegate_core::clock::Clock;
use ridegate_core::credential::CredentialKind;
use ridegate_core::decision::GateContext;
use ridegate_core::model::UnixMillis;
use ridegate_proto::pb;
use ridegate_proto::pb::offline_decision::CredentialKind as WireKind;
use ridegate_proto::pb::state_update::Kind;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, InvalidRequest};
use super::gates::GateAdmission;
use super::tls::Peer;
use crate::authorize::{Authorizer, OfflineRecord, OfflineRecorded};
use crate::gate_state::GateStateFeed;

/// Most changes one delta carries.
const MAX_DELTA_CHANGES: usize = 10_000;
/// Messages queued for one follower before the feed waits for it.
const FOLLOWER_QUEUE: usize = 8;
/// How long a follower from an instance ahead of this one waits for it to catch up.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);
/// How long an uploaded code's entry into the single-use guard may take.
const UPLOAD_CLAIM_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves the feed and takes uploads.
#[derive(Clone)]
pub(super) struct GateStateService {
    feed: Option<Arc<GateStateFeed>>,
    authorizer: Arc<Authorizer>,
    gates: GateAdmission,
    draining: watch::Receiver<bool>,
    clock: Clock,
}

impl GateStateService {
    /// The service over `feed` (none without the embedded store), recording uploads
    /// through `authorizer`, admitting callers as `gates` admits taps. `Follow` streams
    /// end once `draining` turns true (the gate follows another instance, or this one
    /// after its restart, from where it stood).
    pub(super) fn new(
        feed: Option<Arc<GateStateFeed>>,
        authorizer: Arc<Authorizer>,
        gates: GateAdmission,
        draining: watch::Receiver<bool>,
        clock: Clock,
    ) -> Self {
        Self {
            feed,
            authorizer,
            gates,
            draining,
            clock,
        }
    }
}

/// The follower's stream.
pub(super) type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::StateUpdate, Status>> + Send>>;

/// Sends `feed` to one follower from `from_version` of `epoch`: a snapshot unless that
/// can be resumed, then deltas as versions come, and a heartbeat when idle. Returns when
/// the follower goes or ridegate drains.
async fn follow(
    feed: Arc<GateStateFeed>,
    clock: Clock,
    mut draining: watch::Receiver<bool>,
    mut epoch_and_version: (u64, u64),
    out: mpsc::Sender<Result<pb::StateUpdate, Status>>,
) {
    let send = |kind: Kind| {
        let out = out.clone();
        async move { out.send(Ok(pb::StateUpdate { kind: Some(kind) })).await.is_ok() }
    };
    let mut versions = feed.subscribe();
    let heartbeat = feed.settings().heartbeat;
    let chunk_bytes = feed.settings().chunk_entries * ridegate_core::gate_state::ENTRY_BYTES;
    loop {
        if *draining.borrow() {
            return;
        }
        let (epoch, version) = epoch_and_version;
        if epoch == feed.epoch() && version > feed.current() {
            // From another instance that is a little ahead (on the shared tier versions
            // are stream positions): wait for this one to catch up before a snapshot.
            let caught_up = tokio::select! {
                caught_up = tokio::time::timeout(CATCH_UP, versions.wait_for(|v| *v >= version)) => caught_up,
                _ = draining.changed() => return,
            };
            match caught_up {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return, // the feed is gone: shutting down
                Err(_) => epoch_and_version = (0, 0),
            }
            continue;
        }
        if !feed.resumable(epoch, version) {
            if !feed.is_live() {
                // A copy of the shared tier being loaded: once it is, the follower may
                // resume from it after all.
                tokio::select! {
                    () = feed.until_live() => continue,
                    _ = draining.changed() => return,
                }
            }
            // The walk holds the snapshot lock for its length: off the runtime's workers.
            let walking = feed.clone();
            let Ok(snapshot) = tokio::task::spawn_blocking(move || walking.snapshot()).await else {
                return;
            };
            let entries = snapshot.entries.len() / ridegate_core::gate_state::ENTRY_BYTES;
            let begin = Kind::Begin(pb::SnapshotBegin {
                epoch: snapshot.epoch,
                version: snapshot.version,
                config_json: snapshot.config_json.to_string(),
                entries: entries as u64,
            });
            if !send(begin).await {
                return;
            }
            for chunk in snapshot
                .entries
                .chunks(chunk_bytes.max(ridegate_core::gate_state::ENTRY_BYTES))
            {
                if !send(Kind::Chunk(pb::EntryChunk {
                    entries: chunk.to_vec(),
                }))
                .await
                {
                    return;
                }
            }
            if !send(Kind::End(pb::SnapshotEnd {
                version: snapshot.version,
            }))
            .await
            {
                return;
            }
            epoch_and_version = (snapshot.epoch, snapshot.version);
            continue;
        }
        // Deltas until the follower is current, then wait for the next version.
        match feed.delta_after(epoch, version, MAX_DELTA_CHANGES) {
            None => epoch_and_version = (0, 0),
            Some(delta) if delta.version > version => {
                let sent = send(Kind::Delta(pb::Delta {
                    version: delta.version,
                    set: delta.set,
                    removed: delta.removed,
                    config_json: delta.config_json.map(|c| c.to_string()).unwrap_or_default(),
                }))
                .await;
                if !sent {
                    return;
                }
                epoch_and_version.1 = delta.version;
            }
            Some(_) => {
                let woke = tokio::select! {
                    woke = tokio::time::timeout(heartbeat, versions.changed()) => woke,
                    _ = draining.changed() => return,
                };
                if matches!(woke, Ok(Err(_))) {
                    return; // the feed is gone: shutting down
                }
                // No heartbeat while the stores are not known to be current: the
                // follower's state ages, as it would offline.
                if woke.is_err() && feed.is_live() {
                    let beat = Kind::Heartbeat(pb::Heartbeat {
                        version,
                        sent_at_ms: clock.now().0,
                    });
                    if !send(beat).await {
                        return;
                    }
                }
            }
        }
    }
}

/// An uploaded decision, validated.
fn offline_record(decision: pb::OfflineDecision) -> Result<OfflineRecord, InvalidRequest> {
    let invalid = |field: &'static str, problem: &'static str| InvalidRequest {
        field,
        problem: problem.into(),
    };
    if decision.gate_id.is_empty() {
        return Err(invalid("gate_id", "is required"));
    }
    let direction = convert::direction("direction", decision.direction)?;
    let credential_kind = match decision.credential_kind {
        Some(WireKind::RideCode(_)) => CredentialKind::RideCode,
        Some(WireKind::Card(medium)) => CredentialKind::Card(convert::card_medium(medium)?),
        Some(WireKind::Ticket(kind)) => CredentialKind::Ticket(convert::ticket_kind(kind)?),
        Some(WireKind::Uncovered(kind)) => CredentialKind::Uncovered(convert::uncovered_kind("uncovered", kind)?),
        None => return Err(invalid("credential_kind", "is required")),
    };
    let verdict = convert::verdict_from("verdict", decision.verdict)?;
    let reason = convert::reason_from("reason", decision.reason)?;
    let mode = convert::mode_from("mode", decision.mode)?;
    let decision_id: [u8; 16] = decision
        .decision_id
        .as_slice()
        .try_into()
        .map_err(|_| invalid("decision_id", "must be 16 bytes"))?;
    let code = match decision.code_key.len() {
        0 => None,
        16 => {
            let mut key = [0; 16];
            key.copy_from_slice(&decision.code_key);
            Some((CodeKey(key), UnixMillis(decision.code_valid_until_ms)))
        }
        _ => return Err(invalid("code_key", "must be 16 bytes")),
    };
    Ok(OfflineRecord {
        gate: GateContext {
            gate_id: decision.gate_id,
            station_id: decision.station_id,
            line_id: decision.line_id,
            direction,
            tapped_at: UnixMillis(decision.decided_at_ms),
            budget: None,
        },
        credential_kind,
        issuer: (!decision.issuer.is_empty()).then(|| Arc::from(decision.issuer.as_str())),
        code,
        verdict,
        reason,
        mode,
        degraded: decision.degraded,
        state_age_ms: decision.state_age_ms,
        decision_id,
    })
}

#[tonic::async_trait]
impl pb::gate_state_server::GateState for GateStateService {
    type FollowStream = UpdateStream;

    async fn follow(&self, request: Request<pb::FollowRequest>) -> Result<Response<UpdateStream>, Status> {
        self.gates.admit_follower(request.extensions().get::<Peer>())?;
        let Some(feed) = self.feed.clone() else {
            return Err(Status::failed_precondition(
                "the gate state feed is not served here: with [health.platform] ridegate does not hold every \
                 status, and on the shared tier gate_state.shared is off",
            ));
        };
        let pb::FollowRequest {
            group,
            from_version,
            epoch,
        } = request.into_inner();
        tracing::info!(
            %group,
            from_version,
            resumes = feed.resumable(epoch, from_version),
            "gate state follower connected"
        );
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        tokio::spawn(follow(
            feed,
            self.clock.clone(),
            self.draining.clone(),
            (epoch, from_version),
            tx,
        ));
        // At the drain the stream ends even mid-snapshot: the sender then fails, and the
        // follow task returns.
        let mut draining = self.draining.clone();
        let drained = async move {
            let _ = draining.wait_for(|draining| *draining).await;
        };
        let updates = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|update| (update, rx)) })
            .take_until(drained);
        Ok(Response::new(Box::pin(updates)))
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::OfflineDecision>>,
    ) -> Result<Response<pb::UploadSummary>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let mut decisions = request.into_inner();
        let mut summary = pb::UploadSummary::default();
        while let Some(decision) = decisions.next().await {
            // A decision that cannot be recorded is dropped and reported; the rest land,
            // so one bad record never blocks a gate's upload.
            let admitted = offline_record(decision?)
                .map_err(|e| e.to_string())
                .and_then(|mut record| {
                    self.gates
                        .admit(peer.as_ref(), &mut record.gate)
                        .map(|()| record)
                        .map_err(|e| e.to_string())
                });
            let record = match admitted {
                Ok(record) => record,
                Err(why) => {
                    summary.rejected += 1;
                    if summary.first_rejection.is_empty() {
                        summary.first_rejection = why;
                    }
                    continue;
                }
            };
            let had_code = record.code.is_some();
            let deadline = Instant::now() + UPLOAD_CLAIM_BUDGET;
            match self.authorizer.record_offline(record, deadline).await {
                OfflineRecorded::Duplicate => summary.duplicates += 1,
                OfflineRecorded::Recorded { code_first_use } => {
                    summary.recorded += 1;
                    if had_code {
                        summary.codes += 1;
                        summary.codes_used_twice += u64::from(code_first_use == Some(false));
                    }
                }
            }
        }
        if summary.rejected > 0 {
            tracing::warn!(
                rejected = summary.rejected,
                first = %summary.first_rejection,
                "offline decisions rejected from an upload"
            );
        }
        tracing::info!(
            recorded = summary.recorded,
            codes = summary.codes,
            codes_used_twice = summary.codes_used_twice,
            duplicates = summary.duplicates,
            "offline decisions uploaded"
        );
        Ok(Response::new(summary))
    }
}
