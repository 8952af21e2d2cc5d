//! `ridegate.v1.Links`: linking for ride-code apps, the upgrade service, ticket windows
//! and the back end. Every call is authenticated (see [`super::auth`]); the rules live in
//! [`crate::linking`]; this module converts wire messages and maps outcomes.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use ridegate_adapters::caller::{Caller, CallerKind};
use ridegate_adapters::ids::{IdentityId, Pseudonymizer, ResidentId};
use ridegate_adapters::link::{Consent, CredentialClass, LinkError, LinkRecord, LinkStore, Linked};
use ridegate_core::clock::Clock;
use ridegate_proto::pb;
use tonic::{Request, Response, Status, Streaming};

use super::auth;
use super::convert::{InvalidRequest, card_medium, ticket_kind};
use crate::linking::{self, LinkCommand, LinkDenied, LinkRules, RawTarget};
use crate::stores::LinkBackend;

/// Most rows in one bulk-link batch.
pub const MAX_BATCH_ROWS: usize = 10_000;

/// Serves the link API.
#[derive(Clone)]
pub(super) struct LinkService {
    links: LinkBackend,
    pseudonymizer: Pseudonymizer,
    rules: LinkRules,
    issuers: Arc<HashSet<String>>,
    clock: Clock,
}

impl LinkService {
    /// A service over `links`, accepting ride accounts of `issuers`.
    pub(super) fn new(
        links: LinkBackend,
        pseudonymizer: Pseudonymizer,
        rules: LinkRules,
        issuers: HashSet<String>,
        clock: Clock,
    ) -> Self {
        Self {
            links,
            pseudonymizer,
            rules,
            issuers: Arc::new(issuers),
            clock,
        }
    }

    fn target(
        &self,
        caller: &Caller,
        credential: Option<pb::LinkCredential>,
    ) -> Result<ridegate_adapters::link::LinkTarget, LinkDenied> {
        linking::target(caller, &raw_target(credential)?, &self.rules, |i| {
            self.issuers.contains(i)
        })
    }

    async fn link_row(&self, caller: &Caller, row: pb::LinkRow) -> Result<Linked, LinkDenied> {
        let identity = match row.subject {
            Some(pb::link_row::Subject::IdNumber(number)) => {
                let id = ResidentId::parse(&number).map_err(|e| invalid("id_number", e.to_string()))?;
                self.pseudonymizer.identity(&id)
            }
            Some(pb::link_row::Subject::Identity(hex)) => hex
                .parse::<IdentityId>()
                .map_err(|e| invalid("identity", e.to_string()))?,
            None => return Err(invalid("subject", "one of id_number or identity is required")),
        };
        let target = self.target(caller, row.credential)?;
        let planned = linking::plan_for(
            caller,
            &target,
            identity,
            Consent::BulkProgramme,
            "",
            &self.rules,
            &self.pseudonymizer,
            self.clock.now(),
        )?;
        Ok(self.links.link(planned.credential, planned.record).await?)
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> LinkDenied {
    LinkDenied::Invalid {
        field,
        message: message.into(),
    }
}

impl From<InvalidRequest> for LinkDenied {
    fn from(e: InvalidRequest) -> Self {
        LinkDenied::Invalid {
            field: e.field,
            message: e.problem,
        }
    }
}

fn raw_target(credential: Option<pb::LinkCredential>) -> Result<RawTarget, LinkDenied> {
    use pb::link_credential::Credential as C;
    Ok(match credential.and_then(|c| c.credential) {
        None => return Err(invalid("credential", "one of ride_account, card or ticket is required")),
        Some(C::RideAccount(a)) => RawTarget::RideAccount {
            issuer: a.issuer,
            account: a.account,
        },
        Some(C::Card(c)) => RawTarget::Card {
            medium: card_medium(c.medium)?,
            number: c.number,
        },
        Some(C::Ticket(t)) => RawTarget::Ticket {
            kind: ticket_kind(t.kind)?,
            number: t.number,
        },
    })
}

fn consent(raw: i32) -> Result<Option<Consent>, LinkDenied> {
    Ok(Some(match pb::Consent::try_from(raw) {
        Ok(pb::Consent::Unspecified) => return Ok(None),
        Ok(pb::Consent::AppPopup) => Consent::AppPopup,
        Ok(pb::Consent::AppRegistration) => Consent::AppRegistration,
        Ok(pb::Consent::UpgradeService) => Consent::UpgradeService,
        Ok(pb::Consent::TicketPurchase) => Consent::TicketPurchase,
        Ok(pb::Consent::StaffAssisted) => Consent::StaffAssisted,
        Ok(pb::Consent::BulkProgramme) => Consent::BulkProgramme,
        Err(_) => return Err(invalid("consent", format!("unknown value {raw}"))),
    }))
}

fn wire_consent(c: Consent) -> pb::Consent {
    match c {
        Consent::AppPopup => pb::Consent::AppPopup,
        Consent::AppRegistration => pb::Consent::AppRegistration,
        Consent::UpgradeService => pb::Consent::UpgradeService,
        Consent::TicketPurchase => pb::Consent::TicketPurchase,
        Consent::StaffAssisted => pb::Consent::StaffAssisted,
        Consent::BulkProgramme => pb::Consent::BulkProgramme,
    }
}

fn wire_caller(k: CallerKind) -> pb::CallerKind {
    match k {
        CallerKind::App => pb::CallerKind::App,
        CallerKind::UpgradeService => pb::CallerKind::UpgradeService,
        CallerKind::TicketWindow => pb::CallerKind::TicketWindow,
        CallerKind::BackEnd => pb::CallerKind::BackEnd,
        CallerKind::HealthPlatform => pb::CallerKind::HealthPlatform,
    }
}

fn wire_class(c: CredentialClass) -> pb::CredentialClass {
    match c {
        CredentialClass::RideAccount => pb::CredentialClass::RideAccount,
        CredentialClass::PhysicalCard => pb::CredentialClass::PhysicalCard,
        CredentialClass::NfcCard => pb::CredentialClass::NfcCard,
        CredentialClass::SingleJourneyTicket => pb::CredentialClass::SingleJourneyTicket,
        CredentialClass::CommemorativeTicket => pb::CredentialClass::CommemorativeTicket,
    }
}

fn info(record: &LinkRecord) -> pb::LinkInfo {
    pb::LinkInfo {
        class: wire_class(record.class).into(),
        issuer: record.issuer.as_deref().unwrap_or_default().to_owned(),
        credential_masked: record.masked(),
        linked_at_unix_ms: record.linked_at.0,
        linked_by: wire_caller(record.linked_by).into(),
        consent: wire_consent(record.consent).into(),
        staff_assisted: record.staff_operator_id.is_some(),
        valid_until_unix_ms: record.valid_until.map_or(0, |t| t.0),
    }
}

/// The `BulkLink` response stream.
pub(super) type BatchStream = Pin<Box<dyn Stream<Item = Result<pb::LinkBatchResult, Status>> + Send>>;

#[tonic::async_trait]
impl pb::links_server::Links for LinkService {
    async fn link(&self, request: Request<pb::LinkRequest>) -> Result<Response<pb::LinkResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        // The ID number first: nothing else happens until it is valid.
        let id = ResidentId::parse(&req.id_number).map_err(|e| invalid("id_number", e.to_string()))?;
        let command = LinkCommand {
            target: raw_target(req.credential)?,
            id,
            consent: consent(req.consent)?,
            staff_operator_id: req.staff_operator_id,
        };
        let now = self.clock.now();
        let planned = linking::plan(
            &caller,
            &command,
            &self.rules,
            |i| self.issuers.contains(i),
            &self.pseudonymizer,
            now,
        )?;
        let outcome = self
            .links
            .link(planned.credential, planned.record.clone())
            .await
            .map_err(LinkDenied::from)?;
        let (outcome, replaced_masked) = match outcome {
            Linked::New => (pb::LinkOutcome::Linked, String::new()),
            Linked::Refreshed => (pb::LinkOutcome::AlreadyLinked, String::new()),
            Linked::Replaced { record, .. } => (pb::LinkOutcome::Replaced, record.masked()),
        };
        tracing::info!(caller = caller.kind.label(), class = ?planned.record.class, outcome = ?outcome, "link");
        Ok(Response::new(pb::LinkResponse {
            outcome: outcome.into(),
            credential_masked: planned.record.masked(),
            replaced_masked,
            valid_until_unix_ms: planned.record.valid_until.map_or(0, |t| t.0),
        }))
    }

    async fn unlink(&self, request: Request<pb::UnlinkRequest>) -> Result<Response<pb::UnlinkResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        linking::staff(&caller, &req.staff_operator_id)?;
        let target = self.target(&caller, req.credential)?;
        let credential = self.pseudonymizer.credential(&target.key());
        let record = self
            .links
            .unlink(credential)
            .await
            .map_err(LinkDenied::from)?
            .ok_or(LinkDenied::NotFound("this credential is not linked"))?;
        tracing::info!(caller = caller.kind.label(), class = ?record.class, "unlink");
        Ok(Response::new(pb::UnlinkResponse {
            credential_masked: record.masked(),
        }))
    }

    async fn lookup(&self, request: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let caller = auth::caller(&request)?;
        if caller.kind == CallerKind::HealthPlatform {
            return Err(LinkDenied::Forbidden("health-platform tokens may only publish statuses".into()).into());
        }
        let now = self.clock.now();
        let links = match request.into_inner().subject {
            Some(pb::lookup_request::Subject::Credential(credential)) => {
                let target = self.target(&caller, Some(credential))?;
                let credential = self.pseudonymizer.credential(&target.key());
                self.links
                    .get(credential, now)
                    .await
                    .map_err(LinkDenied::from)?
                    .iter()
                    .map(info)
                    .collect()
            }
            Some(pb::lookup_request::Subject::IdNumber(number)) => {
                let id = ResidentId::parse(&number).map_err(|e| invalid("id_number", e.to_string()))?;
                let identity = self.pseudonymizer.identity(&id);
                let links = self.links.links_of(identity, now).await.map_err(LinkDenied::from)?;
                links
                    .iter()
                    .filter(|(_, r)| linking::visible_to(&caller, r))
                    .map(|(_, r)| info(r))
                    .collect()
            }
            None => return Err(invalid("subject", "one of credential or id_number is required").into()),
        };
        Ok(Response::new(pb::LookupResponse { links }))
    }

    type BulkLinkStream = BatchStream;

    async fn bulk_link(&self, request: Request<Streaming<pb::LinkBatch>>) -> Result<Response<BatchStream>, Status> {
        let caller = auth::caller(&request)?;
        if caller.kind != CallerKind::BackEnd {
            return Err(LinkDenied::Forbidden("only the back end may bulk-link".into()).into());
        }
        let this = self.clone();
        let results = request.into_inner().then(move |batch| {
            let (this, caller) = (this.clone(), caller.clone());
            async move {
                // A transport error (an oversize batch) as the one error map says.
                let batch = batch.map_err(super::status::transport)?;
                if batch.rows.len() > MAX_BATCH_ROWS {
                    return Err(super::convert::BatchTooLarge {
                        got: batch.rows.len(),
                        limit: MAX_BATCH_ROWS,
                    }
                    .into());
                }
                let mut result = pb::LinkBatchResult {
                    sequence: batch.sequence,
                    ..Default::default()
                };
                // A store failure rejects its row with a message naming no internals;
                // the first one's cause is logged once for the batch.
                let mut store_failure = None;
                // Rows are applied in order; a durable store takes many at once so they
                // share commits (each row is applied to memory and queued when first
                // polled, in order, and `buffered` answers in order).
                let concurrency = this.links.batch_concurrency();
                let mut outcomes = futures::stream::iter(batch.rows)
                    .map(|row| this.link_row(&caller, row))
                    .buffered(concurrency)
                    .enumerate();
                while let Some((index, outcome)) = outcomes.next().await {
                    match outcome {
                        Ok(linked) => {
                            result.linked += 1;
                            result.replaced += u32::from(matches!(linked, Linked::Replaced { .. }));
                        }
                        Err(e) => {
                            if let LinkDenied::Store(
                                failure
                                @ (LinkError::Unavailable(_) | LinkError::Storage(_) | LinkError::Unreadable(_)),
                            ) = &e
                            {
                                store_failure.get_or_insert_with(|| failure.clone());
                            }
                            result.rejected.push(pb::RejectedRow {
                                index: index as u32,
                                reason: e.to_string(),
                            });
                        }
                    }
                }
                if let Some(failure) = store_failure {
                    tracing::warn!(
                        sequence = result.sequence,
                        error = &failure as &dyn std::error::Error,
                        "bulk link: rows rejected because the link store failed"
                    );
                }
                tracing::debug!(
                    sequence = result.sequence,
                    linked = result.linked,
                    rejected = result.rejected.len(),
                    "bulk batch"
                );
                Ok(result)
            }
        });
        Ok(Response::new(Box::pin(results)))
    }
}
