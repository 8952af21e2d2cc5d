//! The command line as operators use it: configuration errors, precedence, exit codes,
//! and `ridegate keys` producing codes the server accepts.

use std::process::Output;

use ridegate_proto::pb::{Reason, Verdict};

use ridegate_tests::*;

/// Runs ridegate in a fresh working directory, so a server leaves no data directory
/// behind.
fn ridegate(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(binary());
    command
        .current_dir(cwd.path())
        .args(args)
        .env_remove("RIDEGATE_CONFIG")
        .env_remove("RIDEGATE_LISTEN")
        .env_remove("RIDEGATE_AUDIT");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().expect("run ridegate")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn serve_with_config(toml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, toml).unwrap();
    ridegate(
        &["serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        &[],
    )
}

#[test]
fn invalid_configuration_exits_2_naming_the_field() {
    let cases = [
        ("[policy]\nyelow = \"deny\"\n", "yelow"),
        ("[policy]\nyellow = \"maybe\"\n", "yellow"),
        (
            "[deadline]\ndefault_budget = \"10ms\"\nmargin = \"20ms\"\n",
            "deadline.margin",
        ),
        ("[identity]\nsecret = \"short\"\n", "identity.secret"),
        // Pseudonyms shared through Redis or the platform need a configured secret.
        ("[redis]\nurl = \"redis://127.0.0.1:1\"\n", "identity.secret: required"),
        (
            "[health.platform]\nurl = \"http://127.0.0.1:1\"\n",
            "identity.secret: required",
        ),
        (
            "[issuers.alipay]\njwks_file = \"/nonexistent.json\"\n",
            "issuers.alipay.jwks_file",
        ),
        ("[links]\nfile = \"/nonexistent-links.jsonl\"\n", "links.file"),
        ("[log]\nfilter = \"[[[\"\n", "log.filter"),
        ("[server]\nlisten = \"not an address\"\n", "listen"),
        ("[health]\nrefresh_ahead = 1.5\n", "health.refresh_ahead"),
        ("[health.platform]\nurl = \"platform:1\"\n", "health.platform.url"),
        (
            "[health.platform]\nhedge_percentile = 1.0\n",
            "health.platform.hedge_percentile",
        ),
        (
            "[health]\nfile = \"/x.jsonl\"\n[health.platform]\nurl = \"http://127.0.0.1:1\"\n",
            "health.file",
        ),
        ("[policy.unavailable_stations]\nS1 = \"maybe\"\n", "maybe"),
        ("[storage]\nwrite_behind = \"2s\"\n", "storage.write_behind"),
        ("[storage]\ndata_dir = \"\"\n", "storage.data_dir"),
        ("[storage]\ndata_dir = \"/dev/null/ridegate\"\n", "storage.data_dir"),
        ("[server.tls]\ncert = \"/x.pem\"\n", "server.tls.key"),
        (
            "[server.tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key.pem\"\n",
            "server.tls.cert: cannot read /nonexistent.pem",
        ),
        ("[server.tls]\nclient_ca = \"/ca.pem\"\n", "server.tls.client_ca"),
        (
            "[server.tls]\ntrust_domain = \"Bad/Domain\"\n",
            "server.tls.trust_domain",
        ),
        ("[gates.G1]\nline = \"L1\"\n", "gates.G1.station"),
        (
            "[identity]\nsecret = \"a-secret-of-enough-bytes\"\n[health.platform]\nurl = \"http://127.0.0.1:1\"\nca_file = \"/ca.pem\"\n",
            "health.platform.ca_file",
        ),
        (
            "[identity]\nsecret = \"a-secret-of-enough-bytes\"\n[health.platform]\nurl = \"https://127.0.0.1:1\"\nca_file = \"/nonexistent-ca.pem\"\n",
            "/nonexistent-ca.pem",
        ),
        (
            "[identity]\nsecret = \"a-secret-of-enough-bytes\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\nca_file = \"/ca.pem\"\n",
            "redis.ca_file",
        ),
        (
            "[identity]\nsecret = \"a-secret-of-enough-bytes\"\n[redis]\nurl = \"rediss://127.0.0.1:1/#insecure\"\n",
            "redis.url",
        ),
        (
            "[callers.max_lifetime]\nback_end = \"0s\"\n",
            "callers.max_lifetime.back_end",
        ),
    ];
    for (toml, field) in cases {
        let output = serve_with_config(toml);
        assert_eq!(output.status.code(), Some(2), "{field}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(field),
            "{field} not named in: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_missing_config_file_and_an_unknown_flag_exit_2() {
    let output = ridegate(&["serve", "--config", "/nonexistent/ridegate.toml"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/ridegate.toml"));
    let output = ridegate(&["serve", "--no-such-flag"], &[]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = ridegate(&["serve", "--listen", &addr, "--audit", "/dev/null"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("cannot listen"), "{}", stderr(&output));
}

#[tokio::test]
async fn flags_override_environment_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (from_env, from_flag) = (dir.path().join("env.jsonl"), dir.path().join("flag.jsonl"));
    // The file names one audit path; the environment another; then a flag a third.
    let (gateway, _) = GatewayBuilder::new()
        .env("RIDEGATE_AUDIT", from_env.to_str().unwrap())
        .card("10000001", 1)
        .start()
        .await;
    gateway.gate().await.authorize(tap(card("10000001"))).await.unwrap();
    let (_, gateway) = gateway.terminate().await;
    assert!(gateway.audit().is_empty(), "the file's path lost to the environment");
    assert_eq!(std::fs::read_to_string(&from_env).unwrap().lines().count(), 1);

    let (gateway, _) = GatewayBuilder::new()
        .env("RIDEGATE_AUDIT", from_env.to_str().unwrap())
        .arg("--audit")
        .arg(from_flag.to_str().unwrap())
        .start()
        .await;
    gateway.gate().await.authorize(tap(card("10000001"))).await.unwrap();
    gateway.terminate().await;
    assert_eq!(
        std::fs::read_to_string(&from_env).unwrap().lines().count(),
        1,
        "env lost to the flag"
    );
    assert_eq!(std::fs::read_to_string(&from_flag).unwrap().lines().count(), 1);
}

#[tokio::test]
async fn keys_generate_and_mint_produce_codes_the_server_accepts() {
    let keys = tempfile::tempdir().unwrap();
    let out = keys.path().to_str().unwrap();
    let output = ridegate(
        &[
            "keys",
            "generate",
            "--kid",
            "cmb-2026-01",
            "--alg",
            "ES256",
            "--out",
            out,
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let again = ridegate(&["keys", "generate", "--kid", "cmb-2026-01", "--out", out], &[]);
    assert_eq!(again.status.code(), Some(1), "never overwrites a private key");
    let jwks = keys.path().join("cmb-2026-01.jwks.json");
    let (gateway, _) = GatewayBuilder::new()
        .toml(&format!("[issuers.cmb]\njwks_file = \"{}\"\n", jwks.display()))
        .account("cmb", "cmb-777", 1)
        .status(1, GREEN)
        .start()
        .await;
    let key = keys.path().join("cmb-2026-01.key.pem");
    let key = key.to_str().unwrap();
    let mut client = gateway.gate().await;
    for extra in [&[][..], &["--device"][..]] {
        let mut args = vec![
            "keys",
            "mint",
            "--issuer",
            "cmb",
            "--key",
            key,
            "--account",
            "cmb-777",
            "--count",
            "2",
        ];
        args.extend_from_slice(extra);
        let output = ridegate(&args, &[]);
        assert!(output.status.success(), "{}", stderr(&output));
        let codes = String::from_utf8(output.stdout).unwrap();
        assert_eq!(codes.lines().count(), 2);
        for qr in codes.lines() {
            let response = client.authorize(tap(code(qr))).await.unwrap().into_inner();
            assert_eq!(outcome(&response), (Verdict::Allow, Reason::HealthGreen), "{extra:?}");
        }
    }
    let bad_key = ridegate(
        &[
            "keys",
            "mint",
            "--issuer",
            "cmb",
            "--key",
            &jwks.to_string_lossy(),
            "--account",
            "a",
        ],
        &[],
    );
    assert_eq!(bad_key.status.code(), Some(2), "{}", stderr(&bad_key));
}

#[tokio::test]
async fn keys_cert_issues_a_ca_a_server_and_a_gate_certificate_that_serve_accepts() {
    let pki = tempfile::tempdir().unwrap();
    let out = pki.path().to_str().unwrap();
    let file = |name: &str| pki.path().join(name).to_str().unwrap().to_owned();
    let (ca, ca_key) = (file("ca.pem"), file("ca.key.pem"));
    let steps: [&[&str]; 3] = [
        &["keys", "cert", "ca", "--out", out],
        &["keys", "cert", "server", "--ca", &ca, "--ca-key", &ca_key, "--out", out],
        &[
            "keys",
            "cert",
            "gate",
            "--ca",
            &ca,
            "--ca-key",
            &ca_key,
            "--gate-id",
            "L10-S07-G03",
            "--out",
            out,
        ],
    ];
    for args in steps {
        let output = ridegate(args, &[]);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    }
    let again = ridegate(steps[2], &[]);
    assert_eq!(again.status.code(), Some(1), "never overwrites a private key");
    let (gateway, _) = GatewayBuilder::new()
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .arg("--tls-cert")
        .arg(&file("server.pem"))
        .arg("--tls-key")
        .arg(&file("server.key.pem"))
        .arg("--tls-client-ca")
        .arg(&ca)
        .start()
        .await;
    let read = |name: &str| std::fs::read_to_string(pki.path().join(name)).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(
            read("gate-L10-S07-G03.pem"),
            read("gate-L10-S07-G03.key.pem"),
        ));
    let mut gate = gateway.gate_over(tls).await;
    let answer = gate
        .authorize(tap(card("1000000000000001")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));
}

#[test]
fn the_demo_runs_every_scenario_and_checks_its_own_answers() {
    let output = ridegate(
        &[
            "demo",
            "--taps",
            "200",
            "--code-taps",
            "20",
            "--riders",
            "300",
            "--concurrency",
            "4",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    for row in [
        "HEALTH_GREEN",
        "HEALTH_YELLOW",
        "HEALTH_RED",
        "NOT_LINKED",
        "CODE_REPLAYED",
        "CODE_EXPIRED",
        "CODE_BAD_SIGNATURE",
        "EXIT",
        "CHECK_SHADOW",
        "[would be DENY HEALTH_RED]",
        "[stored answer]",
        "p99 ms",
    ] {
        assert!(stdout.contains(row), "demo output lacks {row}:\n{stdout}");
    }
    assert!(
        !stdout.lines().any(|l| l.get(2..3) == Some("!")),
        "a scenario got an unexpected answer:\n{stdout}"
    );
}

#[test]
fn health_sim_refuses_bad_options_with_exit_2_and_says_which() {
    let secret = ("RIDEGATE_IDENTITY_SECRET", SECRET);
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 5] = [
        (&["health-sim", "--listen", "127.0.0.1:0"], &[], "--secret"),
        (
            &["health-sim", "--listen", "127.0.0.1:0"],
            &[("RIDEGATE_IDENTITY_SECRET", "short")],
            "--secret",
        ),
        (
            &["health-sim", "--listen", "127.0.0.1:0", "--error-rate", "1.5"],
            &[secret],
            "--error-rate",
        ),
        (
            &[
                "health-sim",
                "--listen",
                "127.0.0.1:0",
                "--statuses",
                "/nonexistent.jsonl",
            ],
            &[secret],
            "--statuses",
        ),
        (
            &[
                "health-sim",
                "--listen",
                "127.0.0.1:0",
                "--riders",
                "10",
                "--red",
                "0.9",
                "--yellow",
                "0.9",
            ],
            &[secret],
            "health shares",
        ),
    ];
    for (args, envs, named) in cases {
        let mut command = std::process::Command::new(binary());
        command
            .args(args)
            .env_remove("RIDEGATE_IDENTITY_SECRET")
            .envs(envs.iter().copied());
        let output = command.output().expect("run ridegate");
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(named),
            "{named} not named in: {}",
            stderr(&output)
        );
    }
}
