//! The linking rules: which caller may link which credential, on what consent, and for
//! how long. Pure functions of the request and the caller; the link service applies
//! them at the edge and the store enforces the per-identity limits.
//!
//! Scopes: a ride-code app links only its own issuer's accounts; the upgrade service
//! links cards and commemorative tickets; ticket windows bind single-journey tickets for
//! their day of sale; the back end may do anything and alone may bulk-link; the health
//! platform links nothing.

use std::sync::Arc;

use ridegate_adapters::caller::{Caller, CallerKind};
use ridegate_adapters::ids::{CredentialId, IdentityId, Pseudonymizer, ResidentId};
use ridegate_adapters::link::{Consent, CredentialClass, LinkError, LinkRecord, LinkTarget};
use ridegate_core::credential::{CardMedium, TicketKind};
use ridegate_core::model::UnixMillis;

/// The configured linking rules.
#[derive(Debug, Clone, Copy)]
pub struct LinkRules {
    /// Digits in a full card number.
    pub full_card_digits: usize,
    /// Electronic single-journey tickets are suspended.
    pub suspend_electronic_tickets: bool,
    /// Local offset from UTC, in milliseconds.
    pub utc_offset_ms: i64,
}

/// A credential as a caller names it, not yet validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawTarget {
    /// A ride account.
    RideAccount {
        /// Issuer id.
        issuer: String,
        /// Account.
        account: String,
    },
    /// A card.
    Card {
        /// Medium.
        medium: CardMedium,
        /// Number as entered.
        number: String,
    },
    /// A ticket.
    Ticket {
        /// Kind.
        kind: TicketKind,
        /// Number.
        number: String,
    },
}

/// Why a link operation is refused; `serve::status` turns each into one gRPC status.
/// Every message but a store failure's is meant for the caller; a store failure keeps
/// its cause for the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkDenied {
    /// The request is malformed (INVALID_ARGUMENT).
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong (never the value).
        message: String,
    },
    /// Outside the caller's scope (PERMISSION_DENIED).
    #[error("{0}")]
    Forbidden(String),
    /// Not allowed in the current state (FAILED_PRECONDITION).
    #[error("{0}")]
    Precondition(&'static str),
    /// Nothing to act on (NOT_FOUND).
    #[error("{0}")]
    NotFound(&'static str),
    /// The store refused the link (the credential is someone else's, a second card) or
    /// could not answer.
    #[error(transparent)]
    Store(#[from] LinkError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> LinkDenied {
    LinkDenied::Invalid {
        field,
        message: message.into(),
    }
}

/// The message for a suspended electronic single-journey ticket.
pub const SUSPENDED: &str =
    "electronic single-journey tickets are suspended; they are refunded through the channel that sold them";

/// The validated credential named by `raw`, if `caller` may act on it. Back-end callers
/// are trusted with any card-number shape; riders' entries must be full numbers.
pub fn target(
    caller: &Caller,
    raw: &RawTarget,
    rules: &LinkRules,
    known_issuer: impl Fn(&str) -> bool,
) -> Result<LinkTarget, LinkDenied> {
    if let RawTarget::Ticket {
        kind: TicketKind::ElectronicSingleJourney,
        ..
    } = raw
        && rules.suspend_electronic_tickets
    {
        return Err(LinkDenied::Precondition(SUSPENDED));
    }
    let allowed = match (caller.kind, raw) {
        (CallerKind::BackEnd, _) => true,
        (CallerKind::App, RawTarget::RideAccount { issuer, .. }) => caller.issuer.as_deref() == Some(issuer.as_str()),
        (CallerKind::UpgradeService, RawTarget::Card { .. })
        | (
            CallerKind::UpgradeService,
            RawTarget::Ticket {
                kind: TicketKind::Commemorative,
                ..
            },
        ) => true,
        (CallerKind::TicketWindow, RawTarget::Ticket { kind, .. }) => *kind != TicketKind::Commemorative,
        _ => false,
    };
    if !allowed {
        return Err(LinkDenied::Forbidden(scope_message(caller)));
    }
    let target = match raw {
        RawTarget::RideAccount { issuer, account } => {
            if !known_issuer(issuer) {
                return Err(invalid(
                    "ride_account.issuer",
                    "is not an issuer ridegate accepts codes from",
                ));
            }
            LinkTarget::ride_account(issuer, account).map_err(|e| invalid("ride_account", e.to_string()))?
        }
        RawTarget::Card { medium, number } if caller.kind == CallerKind::BackEnd => {
            LinkTarget::card(*medium, number).map_err(|e| invalid("card.number", e.to_string()))?
        }
        RawTarget::Card { medium, number } => LinkTarget::full_card(*medium, number, rules.full_card_digits)
            .map_err(|e| invalid("card.number", e.to_string()))?,
        RawTarget::Ticket { kind, number } => {
            LinkTarget::ticket(*kind, number).map_err(|e| invalid("ticket.number", e.to_string()))?
        }
    };
    Ok(target)
}

fn scope_message(caller: &Caller) -> String {
    match caller.kind {
        CallerKind::App => format!(
            "an app token for {} may act only on {} ride accounts",
            caller.issuer.as_deref().unwrap_or("?"),
            caller.issuer.as_deref().unwrap_or("?")
        ),
        CallerKind::UpgradeService => "the upgrade service acts on cards and commemorative tickets only".into(),
        CallerKind::TicketWindow => "ticket windows act on single-journey tickets only".into(),
        CallerKind::HealthPlatform => "health-platform tokens may only publish statuses".into(),
        CallerKind::BackEnd => "the back end may act on any credential".into(),
    }
}

/// The consent bases each caller kind may link on.
fn consents(kind: CallerKind) -> &'static [Consent] {
    match kind {
        CallerKind::App => &[Consent::AppPopup, Consent::AppRegistration],
        CallerKind::UpgradeService => &[Consent::UpgradeService, Consent::StaffAssisted],
        CallerKind::TicketWindow => &[Consent::TicketPurchase, Consent::StaffAssisted],
        CallerKind::BackEnd => &[Consent::BulkProgramme, Consent::StaffAssisted],
        CallerKind::HealthPlatform => &[],
    }
}

/// A consent basis as the wire contract names it (`ridegate.v1.Consent`).
fn consent_name(consent: Consent) -> &'static str {
    match consent {
        Consent::AppPopup => "APP_POPUP",
        Consent::AppRegistration => "APP_REGISTRATION",
        Consent::UpgradeService => "UPGRADE_SERVICE",
        Consent::TicketPurchase => "TICKET_PURCHASE",
        Consent::StaffAssisted => "STAFF_ASSISTED",
        Consent::BulkProgramme => "BULK_PROGRAMME",
    }
}

/// Why a consent is outside `kind`'s scope, with the ones it may use, in wire names.
fn consent_message(kind: CallerKind) -> String {
    let allowed: Vec<&str> = consents(kind).iter().map(|c| consent_name(*c)).collect();
    if allowed.is_empty() {
        format!("{} may not link on any consent", kind.described())
    } else {
        format!("{} may link only on consent {}", kind.described(), allowed.join(" or "))
    }
}

/// A link request, as the link service received it.
#[derive(Debug, Clone)]
pub struct LinkCommand {
    /// What to link.
    pub target: RawTarget,
    /// The rider's ID number, already validated (it is checked before anything else).
    pub id: ResidentId,
    /// What the link rests on (`None` when the caller sent none).
    pub consent: Option<Consent>,
    /// The staff member who helped (empty when none).
    pub staff_operator_id: String,
}

/// A link ready for the store.
#[derive(Debug, Clone)]
pub struct PlannedLink {
    /// The credential's id.
    pub credential: CredentialId,
    /// The record to store.
    pub record: LinkRecord,
}

/// Validates a link request: the credential and the caller's scope, then the consent.
/// (The ID number was validated before the request got this far.)
pub fn plan(
    caller: &Caller,
    command: &LinkCommand,
    rules: &LinkRules,
    known_issuer: impl Fn(&str) -> bool,
    pseudonymizer: &Pseudonymizer,
    now: UnixMillis,
) -> Result<PlannedLink, LinkDenied> {
    let identity = pseudonymizer.identity(&command.id);
    let target = target(caller, &command.target, rules, known_issuer)?;
    let consent = command.consent.ok_or_else(|| invalid("consent", "is required"))?;
    plan_for(
        caller,
        &target,
        identity,
        consent,
        &command.staff_operator_id,
        rules,
        pseudonymizer,
        now,
    )
}

/// The record for linking an already-validated `target` to `identity`.
#[allow(clippy::too_many_arguments)] // every argument is a distinct fact of the link
pub fn plan_for(
    caller: &Caller,
    target: &LinkTarget,
    identity: IdentityId,
    consent: Consent,
    staff_operator_id: &str,
    rules: &LinkRules,
    pseudonymizer: &Pseudonymizer,
    now: UnixMillis,
) -> Result<PlannedLink, LinkDenied> {
    if !consents(caller.kind).contains(&consent) {
        return Err(LinkDenied::Forbidden(consent_message(caller.kind)));
    }
    let staff = staff(caller, staff_operator_id)?;
    if consent == Consent::StaffAssisted && staff.is_none() {
        return Err(invalid("staff_operator_id", "is required when staff assisted"));
    }
    let class = target.class();
    let record = LinkRecord {
        identity,
        class,
        issuer: target.issuer().map(Arc::from),
        tail: target.tail(),
        linked_at: now,
        linked_by: caller.kind,
        caller_id: caller.id.clone(),
        staff_operator_id: staff,
        consent,
        valid_until: (class == CredentialClass::SingleJourneyTicket)
            .then(|| end_of_local_day(now, rules.utc_offset_ms)),
    };
    Ok(PlannedLink {
        credential: pseudonymizer.credential(&target.key()),
        record,
    })
}

/// The staff operator id, if given and allowed.
pub fn staff(caller: &Caller, staff_operator_id: &str) -> Result<Option<Arc<str>>, LinkDenied> {
    if staff_operator_id.is_empty() {
        return Ok(None);
    }
    if caller.kind == CallerKind::App {
        return Err(invalid("staff_operator_id", "apps cannot record a staff operator"));
    }
    if staff_operator_id.len() > 64 || !staff_operator_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "staff_operator_id",
            "must be at most 64 printable ASCII characters",
        ));
    }
    Ok(Some(Arc::from(staff_operator_id)))
}

/// Whether `caller` may see `record` in a lookup by ID number.
pub fn visible_to(caller: &Caller, record: &LinkRecord) -> bool {
    match caller.kind {
        CallerKind::BackEnd => true,
        CallerKind::App => record.class == CredentialClass::RideAccount && record.issuer == caller.issuer,
        CallerKind::UpgradeService => matches!(
            record.class,
            CredentialClass::PhysicalCard | CredentialClass::NfcCard | CredentialClass::CommemorativeTicket
        ),
        CallerKind::TicketWindow => record.class == CredentialClass::SingleJourneyTicket,
        CallerKind::HealthPlatform => false,
    }
}

/// The start of the next local day after `now`: when a ticket sold at `now` stops
/// resolving.
pub fn end_of_local_day(now: UnixMillis, utc_offset_ms: i64) -> UnixMillis {
    const DAY: i64 = 86_400_000;
    let local_day = (now.0 + utc_offset_ms).div_euclid(DAY);
    UnixMillis((local_day + 1) * DAY - utc_offset_ms)
}

#[cfg(test)]
mod tests {
    use ridegate_adapters::ids::synthetic_resident_id;

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_900_000_000_000);
    const RULES: LinkRules = LinkRules {
        full_card_digits: 16,
        suspend_electronic_tickets: true,
        utc_offset_ms: 8 * 3_600_000,
    };

    fn caller(kind: CallerKind, issuer: Option<&str>) -> Caller {
        Caller {
            kind,
            id: Arc::from("c-1"),
            issuer: issuer.map(Arc::from),
        }
    }

    fn command(target: RawTarget, consent: Consent) -> LinkCommand {
        LinkCommand {
            target,
            id: ResidentId::parse(&synthetic_resident_id(7)).unwrap(),
            consent: Some(consent),
            staff_operator_id: String::new(),
        }
    }

    fn account(issuer: &str) -> RawTarget {
        RawTarget::RideAccount {
            issuer: issuer.into(),
            account: "acct-1234".into(),
        }
    }

    fn card(number: &str) -> RawTarget {
        RawTarget::Card {
            medium: CardMedium::Physical,
            number: number.into(),
        }
    }

    fn ticket(kind: TicketKind) -> RawTarget {
        RawTarget::Ticket {
            kind,
            number: "T-0001".into(),
        }
    }

    fn plan_as(c: &Caller, cmd: &LinkCommand) -> Result<PlannedLink, LinkDenied> {
        let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        plan(c, cmd, &RULES, |i| i == "alipay" || i == "cmb", &p, NOW)
    }

    #[test]
    fn each_caller_kind_links_within_its_scope() {
        let alipay = caller(CallerKind::App, Some("alipay"));
        assert!(plan_as(&alipay, &command(account("alipay"), Consent::AppPopup)).is_ok());
        let upgrade = caller(CallerKind::UpgradeService, None);
        assert!(plan_as(&upgrade, &command(card("1000754312345678"), Consent::UpgradeService)).is_ok());
        assert!(
            plan_as(
                &upgrade,
                &command(ticket(TicketKind::Commemorative), Consent::UpgradeService)
            )
            .is_ok()
        );
        let window = caller(CallerKind::TicketWindow, None);
        let planned = plan_as(
            &window,
            &command(ticket(TicketKind::SingleJourney), Consent::TicketPurchase),
        )
        .unwrap();
        assert_eq!(planned.record.class, CredentialClass::SingleJourneyTicket);
        assert!(planned.record.valid_until.is_some());
        let back_end = caller(CallerKind::BackEnd, None);
        for target in [account("cmb"), card("10007543"), ticket(TicketKind::Commemorative)] {
            assert!(plan_as(&back_end, &command(target, Consent::BulkProgramme)).is_ok());
        }
    }

    #[test]
    fn every_scope_violation_is_forbidden() {
        let cases = [
            (caller(CallerKind::App, Some("alipay")), account("cmb")),
            (caller(CallerKind::App, Some("alipay")), card("1000754312345678")),
            (caller(CallerKind::UpgradeService, None), account("alipay")),
            (
                caller(CallerKind::UpgradeService, None),
                ticket(TicketKind::SingleJourney),
            ),
            (caller(CallerKind::TicketWindow, None), card("1000754312345678")),
            (
                caller(CallerKind::TicketWindow, None),
                ticket(TicketKind::Commemorative),
            ),
            (caller(CallerKind::HealthPlatform, None), card("1000754312345678")),
        ];
        for (c, target) in cases {
            let err = plan_as(&c, &command(target.clone(), Consent::BulkProgramme)).unwrap_err();
            assert!(
                matches!(err, LinkDenied::Forbidden(_)),
                "{:?} on {target:?}: {err:?}",
                c.kind
            );
        }
    }

    #[test]
    fn consent_must_fit_the_caller_and_staff_assistance_names_the_staff() {
        let upgrade = caller(CallerKind::UpgradeService, None);
        let err = plan_as(&upgrade, &command(card("1000754312345678"), Consent::AppPopup)).unwrap_err();
        // Outside the caller's scope, as the README promises: PERMISSION_DENIED, in the
        // wire contract's words.
        assert!(
            matches!(&err, LinkDenied::Forbidden(m)
                if m == "the upgrade service may link only on consent UPGRADE_SERVICE or STAFF_ASSISTED"),
            "{err}"
        );
        let app = caller(CallerKind::App, Some("alipay"));
        let err = plan_as(&app, &command(account("alipay"), Consent::UpgradeService)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an app may link only on consent APP_POPUP or APP_REGISTRATION"
        );
        let mut missing = command(card("1000754312345678"), Consent::UpgradeService);
        missing.consent = None;
        assert!(matches!(
            plan_as(&upgrade, &missing),
            Err(LinkDenied::Invalid { field: "consent", .. })
        ));
        let err = plan_as(&upgrade, &command(card("1000754312345678"), Consent::StaffAssisted)).unwrap_err();
        assert!(matches!(
            err,
            LinkDenied::Invalid {
                field: "staff_operator_id",
                ..
            }
        ));
        let mut helped = command(card("1000754312345678"), Consent::StaffAssisted);
        helped.staff_operator_id = "staff-0042".into();
        assert_eq!(
            plan_as(&upgrade, &helped).unwrap().record.staff_operator_id.as_deref(),
            Some("staff-0042")
        );
        let mut app_staff = command(account("alipay"), Consent::AppPopup);
        app_staff.staff_operator_id = "staff-1".into();
        assert!(matches!(
            plan_as(&caller(CallerKind::App, Some("alipay")), &app_staff),
            Err(LinkDenied::Invalid {
                field: "staff_operator_id",
                ..
            })
        ));
    }

    #[test]
    fn riders_must_give_full_card_numbers_but_the_back_end_is_trusted_with_shapes() {
        let upgrade = caller(CallerKind::UpgradeService, None);
        let err = plan_as(&upgrade, &command(card("3104 **** **** 1234"), Consent::UpgradeService)).unwrap_err();
        assert!(
            matches!(&err, LinkDenied::Invalid { field: "card.number", message } if message.contains("full card number"))
        );
        let back_end = caller(CallerKind::BackEnd, None);
        assert!(plan_as(&back_end, &command(card("31041234"), Consent::BulkProgramme)).is_ok());
    }

    #[test]
    fn electronic_single_journey_tickets_are_suspended_for_everyone() {
        for kind in [CallerKind::TicketWindow, CallerKind::BackEnd] {
            let err = plan_as(
                &caller(kind, None),
                &command(ticket(TicketKind::ElectronicSingleJourney), Consent::TicketPurchase),
            )
            .unwrap_err();
            assert!(matches!(err, LinkDenied::Precondition(SUSPENDED)), "{err:?}");
        }
    }

    #[test]
    fn unknown_issuers_are_invalid() {
        let back_end = caller(CallerKind::BackEnd, None);
        let err = plan_as(&back_end, &command(account("nowhere"), Consent::BulkProgramme)).unwrap_err();
        assert!(matches!(
            err,
            LinkDenied::Invalid {
                field: "ride_account.issuer",
                ..
            }
        ));
    }

    #[test]
    fn a_ticket_sold_late_in_the_local_day_expires_at_local_midnight() {
        let offset = 8 * 3_600_000;
        // 2030-03-17 23:30 in Beijing is 15:30 UTC.
        let sold = UnixMillis(1_900_000_000_000 - 1_900_000_000_000 % 86_400_000 + 15 * 3_600_000 + 1_800_000);
        let until = end_of_local_day(sold, offset);
        assert_eq!(until.since(sold), 30 * 60_000);
        assert_eq!((until.0 + offset) % 86_400_000, 0, "local midnight");
    }

    #[test]
    fn lookups_show_each_caller_only_what_it_may_act_on() {
        let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let back_end = caller(CallerKind::BackEnd, None);
        let record = |target: RawTarget| {
            let t = super::target(&back_end, &target, &RULES, |_| true).unwrap();
            plan_for(
                &back_end,
                &t,
                IdentityId([1; 16]),
                Consent::BulkProgramme,
                "",
                &RULES,
                &p,
                NOW,
            )
            .unwrap()
            .record
        };
        let (alipay_account, cmb_account, physical) = (
            record(account("alipay")),
            record(account("cmb")),
            record(card("10007543")),
        );
        let alipay = caller(CallerKind::App, Some("alipay"));
        assert!(
            visible_to(&alipay, &alipay_account)
                && !visible_to(&alipay, &cmb_account)
                && !visible_to(&alipay, &physical)
        );
        assert!(visible_to(&caller(CallerKind::UpgradeService, None), &physical));
        assert!(!visible_to(&caller(CallerKind::TicketWindow, None), &physical));
    }
}
