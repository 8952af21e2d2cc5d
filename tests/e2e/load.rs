//! The load-testing tools, for real: `ridegate load-setup` writes a population, the real
//! `ridegate serve` loads it, and a smoke run of `ridegate load` against it (and against
//! `ridegate baseline`) must produce a report whose counts add up. No timing is asserted.

use std::path::Path;
use std::process::{Output, Stdio};

use prost::Message as _;
use ridegate_proto::pb;
use tokio::process::{Child, Command};

use ridegate_tests::{binary, wait_ready};

/// A server process started by a test, killed when dropped.
struct Server {
    _child: Child,
    addr: String,
}

async fn start(dir: &Path, name: &str, args: &[&str]) -> Server {
    let ready = dir.join(format!("{name}.ready"));
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(binary())
        // Its data directory, if it keeps one, stays in the test's directory.
        .current_dir(dir)
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("RIDEGATE_IDENTITY_SECRET")
        .env_remove("RIDEGATE_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = wait_ready(&ready, &log, name).await;
    Server { _child: child, addr }
}

async fn ridegate(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("RIDEGATE_IDENTITY_SECRET")
        .output()
        .await
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn setup(dir: &Path) {
    let out = dir.join("population");
    let output = std::process::Command::new(binary())
        .args(["load-setup", "--riders", "500", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn a_smoke_run_against_ridegate_reports_counts_that_add_up_and_every_kind_of_tap() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let population = dir.path().join("population");
    let config = population.join("ridegate.toml");
    let server = start(
        dir.path(),
        "ridegate",
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let output = ridegate(&[
        "load",
        &server.addr,
        "--population",
        population.to_str().unwrap(),
        "-n",
        "300",
        "-c",
        "8",
        "--connections",
        "2",
        "--yellow",
        "0.1",
        "--red",
        "0.1",
        "--unlinked",
        "0.1",
        "--forged",
        "0.2",
        "-O",
        "json",
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let sum = |field: &str| -> u64 {
        report[field]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    assert_eq!(report["count"], 300);
    assert_eq!(report["endReason"], "normal");
    assert_eq!(sum("statusCodeDistribution"), 300);
    assert_eq!(report["statusCodeDistribution"]["OK"], 300, "{report}");
    assert_eq!(sum("verdicts"), 300);
    assert_eq!(sum("reasons"), 300);
    let histogram: u64 = report["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(histogram, 300);
    let latencies: Vec<u64> = report["latencyDistribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["latency"].as_u64().unwrap())
        .collect();
    assert_eq!(latencies.len(), 9, "p10 … p99.9 and max");
    assert!(latencies.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(report["slowest"].as_u64(), latencies.last().copied());
    for reason in [
        "HEALTH_GREEN",
        "HEALTH_YELLOW",
        "HEALTH_RED",
        "NOT_LINKED",
        "EXIT",
        "CODE_BAD_SIGNATURE",
    ] {
        assert!(
            report["reasons"][reason].as_u64().unwrap_or(0) > 0,
            "no {reason}: {report}"
        );
    }
    assert!(report["reasons"].get("CODE_REPLAYED").is_none(), "every code is fresh");
    assert!(!report["signatureChecks"].as_array().unwrap().is_empty());

    // --checks-only measures the bare signature checks and exits without a server.
    let output = ridegate(&[
        "load",
        "--population",
        population.to_str().unwrap(),
        "--mix",
        "codes=1",
        "-n",
        "50",
        "--checks-only",
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let checks: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks = checks.as_array().unwrap();
    assert!(!checks.is_empty());
    for check in checks {
        assert!(check["micros"].as_f64().unwrap() > 0.0, "{check}");
        assert!(check["codes"].as_u64().unwrap() > 0, "{check}");
    }
}

#[tokio::test]
async fn the_baseline_answers_a_constant_and_the_summary_reads_like_ghz() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "baseline", &["baseline", "--listen", "127.0.0.1:0"]).await;
    // Without a population the load is card taps.
    let output = ridegate(&["load", &server.addr, "-n", "200", "-c", "4"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = String::from_utf8_lossy(&output.stdout);
    for line in [
        "Count:\t200",
        "[OK]\t200 responses",
        "Latency distribution:",
        "99.9 % in",
        "ALLOW\t200",
        "HEALTH_GREEN\t200",
    ] {
        assert!(summary.contains(line), "{line:?} missing from:\n{summary}");
    }

    // The body written for h2load is one framed card tap.
    let body = dir.path().join("body.bin");
    let output = ridegate(&["load", "--write-body", body.to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let bytes = std::fs::read(&body).unwrap();
    assert_eq!(bytes[0], 0);
    assert_eq!(
        u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize,
        bytes.len() - 5
    );
    let request = pb::AuthorizeRequest::decode(&bytes[5..]).unwrap();
    assert!(matches!(
        request.credential,
        Some(pb::authorize_request::Credential::Card(_))
    ));
    assert!(
        request.request_id.is_empty(),
        "sent again and again, a request id would make every copy a retry"
    );
}

#[tokio::test]
async fn bad_load_options_exit_2_and_an_unreachable_server_exits_1() {
    let cases: [(&[&str], &str); 10] = [
        (&["load", "--call", "ridegate.v1.Gate/Taps"], "--call"),
        (&["load", "-c", "0"], "concurrency"),
        (&["load", "--population", "/nonexistent"], "load-setup"),
        (&["load", "--mix", "codes=1"], "--population"),
        (&["load", "--mix", "buses=1"], "unknown kind"),
        (&["load", "--mix", "cards=4000000000"], "whole number up to"),
        (&["load", "-r", "NaN"], "--rps"),
        (&["load", "-r", "0.00001"], "--rps"),
        (&["load", "-z", "0s"], "--duration"),
        (&["load", "-z", "1s", "--pool", "0"], "nothing to send"),
    ];
    for (args, named) in cases {
        let output = ridegate(args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(named), "{named} not in {}", stderr(&output));
    }
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = ridegate(&["load", &format!("127.0.0.1:{port}"), "--mix", "cards", "-n", "5"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("cannot connect"), "{}", stderr(&output));
}

#[tokio::test]
async fn the_load_tool_speaks_mutual_tls_as_one_gate() {
    use ridegate_tests::pki::Pki;
    use ridegate_tests::{GREEN, GatewayBuilder};
    let pki = Pki::new("operator CA");
    let (gateway, _) = GatewayBuilder::new()
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .tls(pki.server())
        .client_ca(pki.ca_pem())
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let gate = pki.gate("L10-S07-G03");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) = (
        file("ca.pem", pki.ca_pem()),
        file("gate.pem", &gate.cert),
        file("gate.key.pem", &gate.key),
    );
    let run = |gate_id: Option<&'static str>| {
        let (ca, cert, key, addr) = (ca.clone(), cert.clone(), key.clone(), gateway.addr.clone());
        async move {
            let mut args = vec![
                "load".to_owned(),
                addr,
                "-n".into(),
                "100".into(),
                "-c".into(),
                "4".into(),
                "--tls-ca".into(),
                ca,
                "--tls-cert".into(),
                cert,
                "--tls-key".into(),
                key,
                "-O".into(),
                "json".into(),
            ];
            if let Some(id) = gate_id {
                args.extend(["--gate-id".to_owned(), id.to_owned()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = ridegate(&args).await;
            assert!(output.status.success(), "{}", stderr(&output));
            serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
        }
    };
    let report = run(Some("L10-S07-G03")).await;
    assert_eq!(report["statusCodeDistribution"]["OK"], 100, "{report}");
    // Without --gate-id the taps come from many gates: the certificate speaks for one.
    let report = run(None).await;
    assert!(
        report["statusCodeDistribution"]["PermissionDenied"].as_u64().unwrap() > 0,
        "{report}"
    );
}
