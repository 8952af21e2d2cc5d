//! The link API over gRPC against the real binary: each caller kind within and outside
//! its scope, card-number and ID-number errors, relinking, unlinking, and bulk links.

use std::time::Duration;

use ridegate_adapters::test_util::{CallerKind, CallerTokenMinter, SigningAlg, SigningKey, synthetic_resident_id};
use ridegate_proto::pb::links_client::LinksClient;
use ridegate_proto::pb::{self, Reason, Verdict};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

use ridegate_tests::codes;
use ridegate_tests::*;

fn account(issuer: &str, account: &str) -> pb::LinkCredential {
    pb::LinkCredential {
        credential: Some(pb::link_credential::Credential::RideAccount(pb::RideAccount {
            issuer: issuer.into(),
            account: account.into(),
        })),
    }
}

fn link_card(medium: pb::CardMedium, number: &str) -> pb::LinkCredential {
    pb::LinkCredential {
        credential: Some(pb::link_credential::Credential::Card(pb::Card {
            medium: medium.into(),
            number: number.into(),
        })),
    }
}

fn link_ticket(kind: pb::TicketKind, number: &str) -> pb::LinkCredential {
    pb::LinkCredential {
        credential: Some(pb::link_credential::Credential::Ticket(pb::Ticket {
            kind: kind.into(),
            number: number.into(),
        })),
    }
}

fn link(credential: pb::LinkCredential, person: u64, consent: pb::Consent) -> pb::LinkRequest {
    pb::LinkRequest {
        credential: Some(credential),
        id_number: synthetic_resident_id(person),
        consent: consent.into(),
        staff_operator_id: String::new(),
    }
}

async fn setup() -> (Gateway, Vec<Issuer>, LinksClient<Channel>) {
    let (gateway, issuers) = GatewayBuilder::new()
        .issuer("alipay", SigningAlg::EdDsa)
        .issuer("cmb", SigningAlg::Es256)
        .status(1, GREEN)
        .status(2, GREEN)
        .start()
        .await;
    let links = gateway.links().await;
    (gateway, issuers, links)
}

async fn tap_reason(gateway: &Gateway, credential: pb::authorize_request::Credential) -> (Verdict, Reason) {
    outcome(
        &gateway
            .gate()
            .await
            .authorize(tap(credential))
            .await
            .unwrap()
            .into_inner(),
    )
}

#[tokio::test]
async fn an_app_links_its_own_accounts_and_the_next_tap_sees_it() {
    let (gateway, issuers, mut links) = setup().await;
    let token = gateway.token(CallerKind::App, "alipay-backend", Some("alipay"));
    let qr = || codes::valid(&issuers[0].minter, "2088000011112222");
    assert_eq!(
        tap_reason(&gateway, code(&qr())).await,
        (Verdict::Assist, Reason::NotLinked)
    );

    let response = links
        .link(authed(
            link(account("alipay", "2088000011112222"), 1, pb::Consent::AppPopup),
            &token,
        ))
        .await;
    let response = response.unwrap().into_inner();
    assert_eq!(
        (response.outcome(), response.credential_masked.as_str()),
        (pb::LinkOutcome::Linked, "****2222")
    );
    assert_eq!(
        tap_reason(&gateway, code(&qr())).await,
        (Verdict::Allow, Reason::HealthGreen),
        "the very next tap"
    );

    // Registration-time links use the other app consent; relinking is idempotent.
    let again = links.link(authed(
        link(account("alipay", "2088000011112222"), 1, pb::Consent::AppRegistration),
        &token,
    ));
    assert_eq!(
        again.await.unwrap().into_inner().outcome(),
        pb::LinkOutcome::AlreadyLinked
    );
    // The account belongs to one rider.
    let other = links
        .link(authed(
            link(account("alipay", "2088000011112222"), 2, pb::Consent::AppPopup),
            &token,
        ))
        .await;
    assert_eq!(other.unwrap_err().code(), Code::AlreadyExists);

    // Outside its scope: another issuer's account, a card.
    for credential in [
        account("cmb", "6225"),
        link_card(pb::CardMedium::Physical, "1000754312345678"),
    ] {
        let status = links
            .link(authed(link(credential, 1, pb::Consent::AppPopup), &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
        assert!(status.message().contains("alipay"), "{}", status.message());
    }

    let unlinked = links.unlink(authed(
        pb::UnlinkRequest {
            credential: Some(account("alipay", "2088000011112222")),
            staff_operator_id: String::new(),
        },
        &token,
    ));
    assert_eq!(unlinked.await.unwrap().into_inner().credential_masked, "****2222");
    assert_eq!(
        tap_reason(&gateway, code(&qr())).await,
        (Verdict::Assist, Reason::NotLinked),
        "unlink, then tap"
    );
    let again = links.unlink(authed(
        pb::UnlinkRequest {
            credential: Some(account("alipay", "2088000011112222")),
            staff_operator_id: String::new(),
        },
        &token,
    ));
    assert_eq!(again.await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn the_upgrade_service_links_full_card_numbers_and_one_card_of_each_kind() {
    let (gateway, _, mut links) = setup().await;
    let token = gateway.token(CallerKind::UpgradeService, "upgrade-miniprogram", None);
    let physical = |n: &str| link_card(pb::CardMedium::Physical, n);

    let first = links
        .link(authed(
            link(physical("1000 7543 1234 5678"), 1, pb::Consent::UpgradeService),
            &token,
        ))
        .await;
    assert_eq!(first.unwrap().into_inner().outcome(), pb::LinkOutcome::Linked);
    assert_eq!(
        tap_reason(&gateway, card("1000754312345678")).await,
        (Verdict::Allow, Reason::HealthGreen)
    );

    // A truncated number as phone apps show it, and a number of the wrong length.
    let status = links
        .link(authed(
            link(physical("3104 **** **** 1234"), 1, pb::Consent::UpgradeService),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("card.number: the full card number is needed"),
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("station self-service machine or ticket window"),
        "{}",
        status.message()
    );
    let status = links
        .link(authed(
            link(physical("10007543123456789"), 1, pb::Consent::UpgradeService),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "card.number: card number must be 16 digits")
    );

    // A second physical card replaces the first; the NFC card is a separate slot.
    let replaced = links
        .link(authed(
            link(physical("1000754399990000"), 1, pb::Consent::UpgradeService),
            &token,
        ))
        .await;
    let replaced = replaced.unwrap().into_inner();
    assert_eq!(
        (replaced.outcome(), replaced.replaced_masked.as_str()),
        (pb::LinkOutcome::Replaced, "****5678")
    );
    assert_eq!(
        tap_reason(&gateway, card("1000754312345678")).await.1,
        Reason::NotLinked
    );
    assert_eq!(
        tap_reason(&gateway, card("1000754399990000")).await.1,
        Reason::HealthGreen
    );
    let nfc = links.link(authed(
        link(
            link_card(pb::CardMedium::NfcSim, "3104000011112222"),
            1,
            pb::Consent::UpgradeService,
        ),
        &token,
    ));
    assert_eq!(nfc.await.unwrap().into_inner().outcome(), pb::LinkOutcome::Linked);

    // Commemorative tickets, staff-assisted (an elderly rider at the window).
    let mut helped = link(
        link_ticket(pb::TicketKind::Commemorative, "CM-2022-0609"),
        2,
        pb::Consent::StaffAssisted,
    );
    helped.staff_operator_id = "staff-0042".into();
    links.link(authed(helped, &token)).await.unwrap();
    assert_eq!(
        tap_reason(&gateway, ticket(pb::TicketKind::Commemorative, "CM-2022-0609"))
            .await
            .1,
        Reason::HealthGreen
    );

    // Outside its scope.
    let status = links
        .link(authed(
            link(account("alipay", "x1234"), 1, pb::Consent::UpgradeService),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = links
        .link(authed(
            link(
                link_ticket(pb::TicketKind::SingleJourney, "SJ-1"),
                1,
                pb::Consent::UpgradeService,
            ),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Lookup by ID number: masked, only what this caller handles, never the number.
    let lookup = links
        .lookup(authed(
            pb::LookupRequest {
                subject: Some(pb::lookup_request::Subject::IdNumber(synthetic_resident_id(1))),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut masked: Vec<&str> = lookup.links.iter().map(|l| l.credential_masked.as_str()).collect();
    masked.sort_unstable();
    assert_eq!(masked, ["****0000", "****2222"]);
    let text = format!("{lookup:?}");
    assert!(
        !text.contains(&synthetic_resident_id(1)) && !text.contains("1000754399990000"),
        "{text}"
    );
    let by_card = links
        .lookup(authed(
            pb::LookupRequest {
                subject: Some(pb::lookup_request::Subject::Credential(physical("1000754399990000"))),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_card.links.len(), 1);
    assert_eq!(
        (by_card.links[0].linked_by(), by_card.links[0].consent()),
        (pb::CallerKind::UpgradeService, pb::Consent::UpgradeService)
    );
}

#[tokio::test]
async fn a_second_card_can_be_refused_instead_of_replacing() {
    let (gateway, _) = GatewayBuilder::new()
        .links_setting("second_card = \"refuse\"")
        .start()
        .await;
    let token = gateway.token(CallerKind::UpgradeService, "upgrade", None);
    let mut links = gateway.links().await;
    let physical = |n: &str| link_card(pb::CardMedium::Physical, n);
    links
        .link(authed(
            link(physical("1000754312345678"), 1, pb::Consent::UpgradeService),
            &token,
        ))
        .await
        .unwrap();
    let status = links
        .link(authed(
            link(physical("1000754399990000"), 1, pb::Consent::UpgradeService),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "this rider already has a physical card linked (****5678); unlink it first"
    );
}

#[tokio::test]
async fn ticket_windows_bind_single_journey_tickets_for_the_day_of_sale() {
    let (gateway, _, mut links) = setup().await;
    let token = gateway.token(CallerKind::TicketWindow, "window-S07-02", None);
    let sold = links.link(authed(
        link(
            link_ticket(pb::TicketKind::SingleJourney, "SJ-20221121-0001"),
            1,
            pb::Consent::TicketPurchase,
        ),
        &token,
    ));
    let sold = sold.await.unwrap().into_inner();
    let until = sold.valid_until_unix_ms - now();
    assert!(
        until > 0 && until <= 86_400_000,
        "valid until the end of the local day: {until} ms"
    );
    assert_eq!(
        tap_reason(&gateway, ticket(pb::TicketKind::SingleJourney, "SJ-20221121-0001"))
            .await
            .1,
        Reason::HealthGreen
    );

    let status = links
        .link(authed(
            link(
                link_ticket(pb::TicketKind::ElectronicSingleJourney, "ESJ-1"),
                1,
                pb::Consent::TicketPurchase,
            ),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("suspended")
            && status.message().contains("refunded through the channel that sold them")
    );
    let status = links
        .link(authed(
            link(
                link_card(pb::CardMedium::Physical, "1000754312345678"),
                1,
                pb::Consent::TicketPurchase,
            ),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn bad_id_numbers_are_refused_naming_the_part_and_before_anything_else() {
    let (gateway, _, mut links) = setup().await;
    let token = gateway.token(CallerKind::UpgradeService, "upgrade", None);
    let cases = [
        ("110105194912310021", "check digit"),
        ("110105194902300021", "birth date"),
        ("1101051949123100", "must be 18 characters, got 16"),
        ("99010519491231002X", "region"),
        ("11010519491231A02X", "invalid character at position 15"),
    ];
    for (id, part) in cases {
        let mut request = link(
            link_card(pb::CardMedium::Physical, "1000754312345678"),
            1,
            pb::Consent::UpgradeService,
        );
        request.id_number = id.into();
        let status = links.link(authed(request, &token)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{id}");
        assert!(
            status.message().starts_with("id_number: ") && status.message().contains(part),
            "{id}: {}",
            status.message()
        );
        assert!(!status.message().contains(id), "the number is never echoed");
    }
    // With both the ID number and the credential bad, the ID number is reported.
    let mut request = link(
        link_card(pb::CardMedium::Physical, "12"),
        1,
        pb::Consent::UpgradeService,
    );
    request.id_number = "110105194912310021".into();
    let status = links.link(authed(request, &token)).await.unwrap_err();
    assert!(status.message().starts_with("id_number:"), "{}", status.message());
    assert!(!gateway.log().contains("110105194912310021"));
}

#[tokio::test]
async fn callers_without_a_valid_token_are_unauthenticated() {
    let (gateway, _, mut links) = setup().await;
    let request = || link(account("alipay", "acct-1"), 1, pb::Consent::AppPopup);
    assert_eq!(links.link(request()).await.unwrap_err().code(), Code::Unauthenticated);
    for bad in ["garbage", "a.b.c"] {
        assert_eq!(
            links.link(authed(request(), bad)).await.unwrap_err().code(),
            Code::Unauthenticated,
            "{bad}"
        );
    }
    let stranger = CallerTokenMinter::new(SigningKey::generate(SigningAlg::EdDsa, CALLER_KID).unwrap());
    let forged = stranger
        .token(CallerKind::BackEnd, "intruder", None, now(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        links.link(authed(request(), &forged)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let expired = gateway
        .callers
        .token(
            CallerKind::BackEnd,
            "ops",
            None,
            now() + -7_200_000,
            Duration::from_secs(3600),
        )
        .unwrap();
    let status = links.link(authed(request(), &expired)).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "the token has expired")
    );
    // A token for a hundred years, or for another service, is refused, saying why.
    let century = gateway
        .callers
        .token(
            CallerKind::BackEnd,
            "ops",
            None,
            now(),
            Duration::from_secs(100 * 365 * 86_400),
        )
        .unwrap();
    let status = links.link(authed(request(), &century)).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "the back end token may live at most 3600 s (exp - iat); mint a shorter one"
        )
    );
    let mut claims = CallerTokenMinter::claims(CallerKind::BackEnd, "ops", None, now(), Duration::from_secs(60));
    claims.aud = "another-service".into();
    let status = links
        .link(authed(request(), &gateway.callers.sign(&claims).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "the token's aud does not name this ridegate")
    );
    // A consent outside the caller's scope is PERMISSION_DENIED, in the wire's words.
    let app = gateway.token(CallerKind::App, "alipay-backend", Some("alipay"));
    let status = links
        .link(authed(
            link(account("alipay", "acct-1"), 1, pb::Consent::UpgradeService),
            &app,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "an app may link only on consent APP_POPUP or APP_REGISTRATION"
        )
    );
    let platform = gateway.token(CallerKind::HealthPlatform, "health", None);
    assert_eq!(
        links.link(authed(request(), &platform)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn revoked_tokens_and_keys_are_refused() {
    let (gateway, _) = GatewayBuilder::new()
        .callers_setting(r#"revoked_tokens = ["leaked-1"]"#)
        .start()
        .await;
    let mut links = gateway.links().await;
    let request = || link(account("alipay", "acct-1"), 1, pb::Consent::AppPopup);
    let mut claims = CallerTokenMinter::claims(
        CallerKind::App,
        "alipay-backend",
        Some("alipay"),
        now(),
        Duration::from_secs(60),
    );
    claims.jti = "leaked-1".into();
    let status = links
        .link(authed(request(), &gateway.callers.sign(&claims).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "the token has been revoked")
    );
    let fresh = gateway.token(CallerKind::App, "alipay-backend", Some("alipay"));
    links.link(authed(request(), &fresh)).await.unwrap();

    let (gateway, _) = GatewayBuilder::new()
        .callers_setting(&format!("revoked_keys = [\"{CALLER_KID}\"]"))
        .start()
        .await;
    let token = gateway.token(CallerKind::App, "alipay-backend", Some("alipay"));
    let status = gateway.links().await.link(authed(request(), &token)).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "the token's signing key has been revoked")
    );
}

#[tokio::test]
async fn bulk_link_lands_good_rows_and_reports_each_bad_one() {
    let (gateway, _, mut links) = setup().await;
    let token = gateway.token(CallerKind::BackEnd, "bulk-elderly-2022", None);
    let row = |number: String, person: u64| pb::LinkRow {
        credential: Some(link_card(pb::CardMedium::Physical, &number)),
        subject: Some(pb::link_row::Subject::IdNumber(synthetic_resident_id(person))),
    };
    let mut batches = Vec::new();
    for b in 0..3u64 {
        let rows: Vec<pb::LinkRow> = (0..5_000u64)
            .map(|i| row(format!("20{:014}", b * 5_000 + i), 1_000 + b * 5_000 + i))
            .collect();
        batches.push(pb::LinkBatch { rows, sequence: b });
    }
    // A few bad rows in the middle batch.
    let bad = &mut batches[1].rows;
    bad[7].subject = Some(pb::link_row::Subject::IdNumber("110105194912310021".into()));
    bad[8].subject = None;
    bad[9].credential = Some(account("nowhere", "a"));
    bad[10].subject = Some(pb::link_row::Subject::Identity("not-hex".into()));
    bad[11] = row(format!("20{:014}", 1), 77); // the card of row 1 of batch 0, to another rider
    let results: Vec<pb::LinkBatchResult> = links
        .bulk_link(authed(tokio_stream::iter(batches), &token))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(results.iter().map(|r| r.sequence).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(
        results.iter().map(|r| r.linked).collect::<Vec<_>>(),
        [5_000, 4_995, 5_000]
    );
    let rejected: Vec<(u32, &str)> = results[1]
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(rejected.iter().map(|r| r.0).collect::<Vec<_>>(), [7, 8, 9, 10, 11]);
    assert!(
        rejected[0].1.contains("check digit") && !rejected[0].1.contains("110105"),
        "{}",
        rejected[0].1
    );
    assert!(rejected[4].1.contains("linked to another rider"), "{}", rejected[4].1);
    // Good rows resolve at the gate (rider 1,000 + i has no status: no record).
    assert_eq!(
        tap_reason(&gateway, card(&format!("20{:014}", 14_999))).await,
        (Verdict::Assist, Reason::NoHealthRecord)
    );

    // Only the back end bulk-links; batches are bounded.
    let app = gateway.token(CallerKind::App, "alipay-backend", Some("alipay"));
    let status = links
        .bulk_link(authed(tokio_stream::iter(Vec::<pb::LinkBatch>::new()), &app))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let huge = pb::LinkBatch {
        rows: (0..10_001).map(|i| row(format!("30{i:014}"), 5)).collect(),
        sequence: 9,
    };
    let mut stream = links
        .bulk_link(authed(tokio_stream::iter([huge]), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn without_caller_keys_every_link_call_is_unauthenticated() {
    let (gateway, _) = GatewayBuilder::new().without_callers().start().await;
    let token = gateway.token(CallerKind::BackEnd, "ops", None);
    let status = gateway
        .links()
        .await
        .link(authed(
            link(account("alipay", "a"), 1, pb::Consent::BulkProgramme),
            &token,
        ))
        .await;
    let status = status.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "no caller keys are configured on this ridegate")
    );
}
