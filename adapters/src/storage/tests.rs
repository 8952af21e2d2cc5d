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
