//! The store against a real database in a temporary directory: what is written comes
//! back after reopening, ended and expired records do not.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use super::*;
use crate::caller::CallerKind;
use crate::link::{Consent, CredentialClass};
use crate::replay::Claim;
use ridegate_core::model::Colour;

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

fn settings(dir: &Path) -> StorageSettings {
    StorageSettings {
        data_dir: dir.to_owned(),
        ..StorageSettings::default()
    }
}

fn record(identity: u8, valid_until: Option<UnixMillis>) -> LinkRecord {
    LinkRecord {
        identity: IdentityId([identity; 16]),
        class: CredentialClass::PhysicalCard,
        issuer: None,
        tail: *b"0042",
        linked_at: NOW,
        linked_by: CallerKind::UpgradeService,
        caller_id: Arc::from("upgrade-1"),
        staff_operator_id: None,
        consent: Consent::UpgradeService,
        valid_until,
    }
}

struct Memory {
    links: MemoryLinks,
    health: MemoryHealth,
    codes: MemoryReplayGuard,
    retries: MemoryIdempotency,
}

/// Opens the store, waiting for a previous handle's commit thread to close it.
fn restore(dir: &Path, now: UnixMillis) -> (Storage, Memory, Restored) {
    let storage = (0..500)
        .find_map(|_| {
            Storage::open(&settings(dir))
                .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(10)))
                .ok()
        })
        .expect("open");
    let memory = Memory {
        links: MemoryLinks::default(),
        health: MemoryHealth::default(),
        codes: MemoryReplayGuard::default(),
        retries: MemoryIdempotency::default(),
    };
    let restored = storage
        .restore(now, &memory.links, &memory.health, &memory.codes, &memory.retries)
        .expect("restore");
    (storage, memory, restored)
}

#[tokio::test]
async fn acknowledged_writes_come_back_after_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = HealthStatus {
        colour: Colour::Red,
        set_at: NOW,
        negative_test_at: None,
    };
    {
        let (storage, _, restored) = restore(dir.path(), NOW);
        assert_eq!(restored, Restored::default());
        let pending = [
            storage.write(Write::Link(CredentialId([1; 16]), record(9, None))),
            storage.write(Write::Link(CredentialId([2; 16]), record(8, Some(NOW.plus_ms(10))))),
            storage.write(Write::Link(CredentialId([3; 16]), record(7, None))),
            storage.write(Write::Unlink(CredentialId([3; 16]))),
            storage.write(Write::Status(IdentityId([9; 16]), status)),
        ];
        storage.write_behind(Write::Code {
            code: CodeKey([5; 16]),
            request: RequestKey([6; 16]),
            until: NOW.plus_ms(60_000),
        });
        storage.write_behind(Write::Code {
            code: CodeKey([4; 16]),
            request: RequestKey([6; 16]),
            until: NOW.plus_ms(5),
        });
        for write in pending {
            write.durable().await.expect("committed");
        }
        storage.flush().await.expect("flushed");
    }
    // The database is closed once the commit thread and every handle are gone.
    let (_, memory, restored) = restore(dir.path(), NOW.plus_ms(20));
    assert_eq!(
        restored,
        Restored {
            links: 1,
            statuses: 1,
            codes: 1,
            retries: 0,
            expired_links: 1,
            unreadable: 0
        }
    );
    assert_eq!(
        memory.links.resolve_now(&CredentialId([1; 16]), NOW.plus_ms(20)),
        Some(IdentityId([9; 16]))
    );
    assert_eq!(memory.links.resolve_now(&CredentialId([3; 16]), NOW), None, "unlinked");
    assert_eq!(memory.health.get(&IdentityId([9; 16])), Some(status));
    assert_eq!(
        memory.codes.claim_now(
            CodeKey([5; 16]),
            RequestKey([7; 16]),
            NOW.plus_ms(60_000),
            NOW.plus_ms(20)
        ),
        Claim::Replayed,
        "a used code is still used"
    );
}

#[tokio::test]
async fn write_behind_records_in_blocks_and_one_by_one_both_come_back() {
    use crate::idempotency::Kept;
    use ridegate_core::model::{Answer, DecisionId, Mode, Reason, Verdict};
    // The commit thread sweeps by the system clock: these records live in its time.
    let now = ridegate_core::clock::Clock::System.now();
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = Kept {
        answer: Answer {
            verdict: Verdict::Allow,
            reason: Reason::HealthGreen,
            decision_id: DecisionId(7),
            degraded: false,
            status_age_ms: None,
            mode: Mode::Enforce,
            shadow: None,
        },
        tap: crate::ids::TapFingerprint([3; 8]),
    };
    {
        let (storage, _, _) = restore(dir.path(), now);
        // Two commits: two blocks of each kind, one record ended by the restore.
        for round in 0..2u8 {
            storage.write_behind(Write::Code {
                code: CodeKey([10 + round; 16]),
                request: RequestKey([6; 16]),
                until: now.plus_ms(60_000),
            });
            storage.write_behind(Write::Retry {
                request: RequestKey([20 + round; 16]),
                kept,
                until: now.plus_ms(if round == 0 { 5 } else { 60_000 }),
            });
            storage.flush().await.expect("flushed");
        }
        // As an earlier version kept them: one record per key.
        let engine = &storage.engine;
        engine
            .codes
            .insert([30; 16], records::encode_code(RequestKey([6; 16]), now.plus_ms(60_000)))
            .expect("insert");
        engine
            .retry_blocks
            .insert(1_000u64.to_be_bytes(), [1, 2, 3])
            .expect("insert");
    }
    let (storage, memory, restored) = restore(dir.path(), now.plus_ms(20));
    assert_eq!((restored.codes, restored.retries, restored.unreadable), (3, 1, 1));
    for code in [10, 11, 30] {
        assert_eq!(
            memory.codes.claim_now(
                CodeKey([code; 16]),
                RequestKey([8; 16]),
                now.plus_ms(60_000),
                now.plus_ms(20)
            ),
            Claim::Replayed
        );
    }
    assert!(memory.retries.holds(RequestKey([21; 16]), now.plus_ms(20)));
    assert!(!memory.retries.holds(RequestKey([20; 16]), now.plus_ms(20)), "ended");
    // Numbering goes on after the highest block kept: a new block overwrites none.
    storage.write_behind(Write::Code {
        code: CodeKey([40; 16]),
        request: RequestKey([6; 16]),
        until: now.plus_ms(60_000),
    });
    storage.flush().await.expect("flushed");
    drop(storage);
    let (_, _, restored) = restore(dir.path(), now.plus_ms(20));
    assert_eq!(restored.codes, 4);
}

#[test]
fn the_secret_is_made_once_kept_private_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = identity_secret(dir.path()).expect("made");
    assert_eq!(first.len(), 64);
    let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
        .expect("file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(identity_secret(dir.path()).expect("read"), first);
}

#[test]
fn settings_name_the_field_at_fault() {
    let mut s = StorageSettings::default();
    assert_eq!(s.validate(), Ok(()));
    s.write_behind = std::time::Duration::from_secs(2);
    assert_eq!(s.validate().map_err(|e| e.field), Err("write_behind"));
    s.write_behind = DEFAULT_WRITE_BEHIND;
    s.data_dir = PathBuf::new();
    assert_eq!(s.validate().map_err(|e| e.field), Err("data_dir"));
    s.ephemeral = true;
    assert_eq!(s.validate(), Ok(()));
}
