//! The `ridegate` command line keeps every command users know. (Having an integration
//! test also makes cargo build the `ridegate` binary whenever the workspace's tests are
//! built: the end-to-end tests in `ridegate-tests` start that binary.)

use std::process::Command;

/// Every subcommand of `ridegate`, as README.md and the scripts use them.
const COMMANDS: [&str; 7] = ["serve", "demo", "keys", "health-sim", "load", "load-setup", "baseline"];

#[test]
fn every_command_is_listed_and_has_help() {
    let ridegate = env!("CARGO_BIN_EXE_ridegate");
    let help = Command::new(ridegate)
        .arg("--help")
        .output()
        .expect("run ridegate --help");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in COMMANDS {
        assert!(
            text.lines().any(|line| line.trim_start().starts_with(command)),
            "`ridegate --help` does not list {command}:\n{text}"
        );
        let status = Command::new(ridegate)
            .args([command, "--help"])
            .output()
            .expect("run ridegate <command> --help")
            .status;
        assert!(status.success(), "`ridegate {command} --help` exited with {status}");
    }
}
