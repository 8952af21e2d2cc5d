//! What operators rely on: health checking, reflection, metrics, a graceful drain,
//! bulk-import reporting, and no rider data in logs, audit records or metrics.

use std::time::Duration;

use ridegate_adapters::test_util::{SigningAlg, synthetic_resident_id};
use ridegate_proto::pb::{Reason, Verdict};
use tokio_stream::StreamExt as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use ridegate_tests::codes;
use ridegate_tests::*;

async fn health_status(gateway: &Gateway, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(gateway.channel().await);
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn health_checking_and_reflection_answer() {
    let (gateway, _) = GatewayBuilder::new().start().await;
    assert_eq!(
        health_status(&gateway, "ridegate.v1.Gate").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(health_status(&gateway, "").await.unwrap(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(gateway.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["ridegate.v1.Gate", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} not in {names:?}");
    }
}

#[tokio::test]
async fn metrics_count_decisions_by_verdict_and_reason() {
    let (gateway, _) = GatewayBuilder::new()
        .card("1000000000000001", 1)
        .status(1, RED)
        .start()
        .await;
    let mut gate = gateway.gate().await;
    for _ in 0..3 {
        gate.authorize(tap(card("1000000000000001"))).await.unwrap();
    }
    gate.authorize(tap(card("1000000000000009"))).await.unwrap();
    let page = gateway.metrics().await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("ridegate_decisions_total{verdict=\"deny\",reason=\"health_red\"} 3"),
        "{page}"
    );
    assert!(
        page.contains("ridegate_decisions_total{verdict=\"assist\",reason=\"not_linked\"} 1"),
        "{page}"
    );
    assert!(page.contains("ridegate_decision_seconds_count 4"), "{page}");
    assert!(page.contains("ridegate_linked_credentials 1"), "{page}");
}

#[tokio::test]
async fn sigterm_reports_not_serving_drains_and_flushes_the_audit() {
    let (gateway, _) = GatewayBuilder::new()
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .start()
        .await;
    let mut gate = gateway.gate().await;
    for _ in 0..200 {
        gate.authorize(tap(card("1000000000000001"))).await.unwrap();
    }
    let (exit, gateway) = gateway.terminate().await;
    assert!(exit.success(), "{exit:?}\n{}", gateway.log());
    assert_eq!(gateway.audit().len(), 200, "every decision is in the audit log");
    assert!(gateway.log().contains("draining"), "{}", gateway.log());
}

#[tokio::test]
async fn during_the_drain_delay_health_says_not_serving_while_taps_are_still_answered() {
    let (gateway, _) = GatewayBuilder::new()
        .server("drain_delay = \"1500ms\"")
        .arg("--log")
        .arg("info")
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .env("RIDEGATE_LOG_FORMAT", "json")
        .start()
        .await;
    let pid = gateway.pid();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let mut not_serving = false;
    for _ in 0..40 {
        if health_status(&gateway, "ridegate.v1.Gate").await.ok() == Some(ServingStatus::NotServing) {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(not_serving, "{}", gateway.log());
    let response = gateway
        .gate()
        .await
        .authorize(tap(card("1000000000000001")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&response), (Verdict::Allow, Reason::HealthGreen));
    // The JSON log format is in effect.
    let first = gateway.log().lines().next().unwrap_or_default().to_owned();
    assert!(serde_json::from_str::<serde_json::Value>(&first).is_ok(), "{first}");
}

#[tokio::test]
async fn no_rider_data_reaches_logs_audit_or_metrics() {
    let (gateway, issuers) = GatewayBuilder::new()
        .issuer("alipay", SigningAlg::EdDsa)
        .card("1000754312345678", 1)
        .account("alipay", "2088000011112222", 1)
        .status(1, GREEN)
        .card("1000754399999999", 2)
        .status(2, RED)
        .start()
        .await;
    let mut gate = gateway.gate().await;
    gate.authorize(tap(card("1000754312345678"))).await.unwrap();
    gate.authorize(tap(card("1000754399999999"))).await.unwrap();
    let qr = codes::valid(&issuers[0].minter, "2088000011112222");
    gate.authorize(tap(code(&qr))).await.unwrap();
    gate.authorize(tap(code(&qr))).await.unwrap();
    let metrics = gateway.metrics().await;
    let (_, gateway) = gateway.terminate().await;
    let audit = std::fs::read_to_string(gateway.dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), 4);
    let secrets = [
        synthetic_resident_id(1),
        synthetic_resident_id(2),
        "1000754312345678".into(),
        "1000754399999999".into(),
        "2088000011112222".into(),
        qr.split('.').nth(2).unwrap().to_owned(),
    ];
    for (what, text) in [("audit", &audit), ("log", &gateway.log()), ("metrics", &metrics)] {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} contains rider data {secret}");
        }
    }
}

#[tokio::test]
async fn bad_lines_in_the_links_file_are_reported_by_number_and_the_rest_imported() {
    let dir = tempfile::tempdir().unwrap();
    let links = dir.path().join("more-links.jsonl");
    let bad_id = "110105194912310021";
    std::fs::write(
        &links,
        format!(
            "{{\"card\": {{\"number\": \"1000000000000001\"}}, \"id_number\": \"{}\"}}\n\
             {{\"card\": {{\"number\": \"1000000000000002\"}}, \"id_number\": \"{bad_id}\"}}\n\
             this is not json\n",
            synthetic_resident_id(1)
        ),
    )
    .unwrap();
    let (gateway, _) = GatewayBuilder::new()
        .status(1, GREEN)
        .arg("--links")
        .arg(links.to_str().unwrap())
        .start()
        .await;
    let response = gateway
        .gate()
        .await
        .authorize(tap(card("1000000000000001")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&response), (Verdict::Allow, Reason::HealthGreen));
    let log = gateway.log();
    assert!(log.contains("imported=1") && log.contains("rejected=2"), "{log}");
    assert!(
        log.contains("line=2") && log.contains("check digit") && log.contains("line=3"),
        "{log}"
    );
    assert!(!log.contains(bad_id), "{log}");
}

#[tokio::test]
async fn metrics_and_probes_are_on_the_admin_listener_never_on_the_gate_port() {
    let (gateway, _) = GatewayBuilder::new().server(r#"drain_delay = "3s""#).start().await;
    assert_ne!(gateway.admin, gateway.addr);
    assert!(gateway.admin_get("/livez").await.starts_with("HTTP/1.1 200"));
    assert!(gateway.admin_get("/readyz").await.starts_with("HTTP/1.1 200"));
    assert!(gateway.metrics().await.contains("ridegate_decisions_total"));
    // The gate port speaks gRPC only: no metrics page there, whatever is asked.
    for path in ["/metrics", "/readyz", "/livez"] {
        let page = http_get(&gateway.addr, path).await;
        assert!(
            !page.starts_with("HTTP/1.1 200") && !page.contains("ridegate_"),
            "{path} on the gate port: {page}"
        );
    }
    // Draining: not ready at once, while the gate is still answered during drain_delay.
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(gateway.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut draining = false;
    for _ in 0..40 {
        if gateway.admin_get("/readyz").await.starts_with("HTTP/1.1 503") {
            draining = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(draining, "readyz never turned 503");
    assert!(gateway.admin_get("/livez").await.starts_with("HTTP/1.1 200"));
}
