//! The embedded link store.
//!
//! Gate reads take one shard's read lock for one hash probe. Changes are serialised by a
//! writer lock that also guards the identity → credentials index the per-identity rules
//! need; links change a few times a second in service (and in bulk at start-up), so one
//! writer is plenty. Records are compact: caller, staff and issuer names are interned.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::{CredentialClass, LinkError, LinkRecord, LinkStore, Linked, SecondCard, masked_tail};
use crate::caller::CallerKind;
use crate::ids::{CredentialId, IdHasher, IdentityId};
use crate::link::Consent;
use crate::observe::Observer;
use ridegate_core::model::UnixMillis;

const SHARDS: usize = 64;
const FOREVER: i64 = i64::MAX;

/// A record as held in memory (56 bytes).
#[derive(Debug, Clone, Copy)]
struct Stored {
    identity: IdentityId,
    valid_until: i64,
    linked_at: i64,
    caller: u32,
    staff: u32,
    issuer: u32,
    tail: [u8; 4],
    class: CredentialClass,
    consent: Consent,
    linked_by: CallerKind,
}

impl Stored {
    fn of(record: &LinkRecord, names: &mut Names) -> Self {
        Self {
            identity: record.identity,
            valid_until: record.valid_until.map_or(FOREVER, |t| t.0),
            linked_at: record.linked_at.0,
            caller: names.intern(Some(&record.caller_id)),
            staff: names.intern(record.staff_operator_id.as_ref()),
            issuer: names.intern(record.issuer.as_ref()),
            tail: record.tail,
            class: record.class,
            consent: record.consent,
            linked_by: record.linked_by,
        }
    }

    fn is_live(&self, now: UnixMillis) -> bool {
        now.0 < self.valid_until
    }
}

/// Names referred to by records, each stored once. Index 0 means "none".
#[derive(Default)]
struct Names {
    by_index: Vec<Arc<str>>,
    by_name: HashMap<Arc<str>, u32>,
}

impl Names {
    fn intern(&mut self, name: Option<&Arc<str>>) -> u32 {
        let Some(name) = name else { return 0 };
        if let Some(index) = self.by_name.get(name) {
            return *index;
        }
        if self.by_index.is_empty() {
            self.by_index.push(Arc::from(""));
        }
        let index = u32::try_from(self.by_index.len()).unwrap_or(u32::MAX);
        self.by_index.push(name.clone());
        self.by_name.insert(name.clone(), index);
        index
    }

    fn get(&self, index: u32) -> Option<Arc<str>> {
        (index != 0)
            .then(|| self.by_index.get(index as usize).cloned())
            .flatten()
    }
}

/// The credentials an identity holds; most hold one or two.
#[derive(Debug, Clone)]
enum Held {
    One(CredentialId),
    Many(Vec<CredentialId>),
}

impl Held {
    fn iter(&self) -> impl Iterator<Item = &CredentialId> {
        match self {
            Self::One(c) => std::slice::from_ref(c).iter(),
            Self::Many(v) => v.iter(),
        }
    }

    fn add(&mut self, credential: CredentialId) {
        match self {
            Self::One(c) if *c == credential => {}
            Self::One(c) => *self = Self::Many(vec![*c, credential]),
            Self::Many(v) if !v.contains(&credential) => v.push(credential),
            Self::Many(_) => {}
        }
    }

    /// Removes `credential`; true when nothing is left.
    fn remove(&mut self, credential: &CredentialId) -> bool {
        match self {
            Self::One(c) => c == credential,
            Self::Many(v) => {
                v.retain(|c| c != credential);
                let empty = v.is_empty();
                if let [only] = v.as_slice() {
                    let only = *only;
                    *self = Self::One(only);
                }
                empty
            }
        }
    }
}

/// Links held in memory.
pub struct MemoryLinks {
    shards: Box<[RwLock<HashMap<CredentialId, Stored, IdHasher>>]>,
    writer: Mutex<HashMap<IdentityId, Held, IdHasher>>,
    names: RwLock<Names>,
    second_card: SecondCard,
    /// Told of each credential newly linked (to someone else, too) or unlinked.
    changes: Observer<CredentialId>,
}

impl Default for MemoryLinks {
    fn default() -> Self {
        Self::new(SecondCard::default())
    }
}

impl std::fmt::Debug for MemoryLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryLinks({} links)", self.len())
    }
}

impl MemoryLinks {
    /// An empty store applying `second_card` to physical and NFC cards.
    pub fn new(second_card: SecondCard) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(IdHasher)))
                .collect(),
            writer: Mutex::new(HashMap::with_hasher(IdHasher)),
            names: RwLock::new(Names::default()),
            second_card,
            changes: Observer::default(),
        }
    }

    fn shard(&self, credential: &CredentialId) -> &RwLock<HashMap<CredentialId, Stored, IdHasher>> {
        &self.shards[usize::from(credential.0[15]) % SHARDS]
    }

    /// The identity `credential` is linked to at `now`: the gate's question.
    pub fn resolve_now(&self, credential: &CredentialId, now: UnixMillis) -> Option<IdentityId> {
        self.shard(credential)
            .read()
            .get(credential)
            .filter(|s| s.is_live(now))
            .map(|s| s.identity)
    }

    /// Links `credential` as `record` says: see [`LinkStore::link`].
    pub fn link_now(&self, credential: CredentialId, record: &LinkRecord) -> Result<Linked, LinkError> {
        let now = record.linked_at;
        let mut index = self.writer.lock();
        let existing = self.shard(&credential).read().get(&credential).copied();
        if let Some(existing) = existing {
            if existing.identity != record.identity && existing.is_live(now) {
                return Err(LinkError::LinkedToAnother);
            }
            if existing.identity != record.identity {
                Self::unindex(&mut index, existing.identity, &credential);
            }
        }
        let mut outcome = match existing {
            Some(e) if e.identity == record.identity && e.is_live(now) => Linked::Refreshed,
            _ => Linked::New,
        };
        if record.class.one_per_identity() {
            let previous = index.get(&record.identity).and_then(|held| {
                held.iter().filter(|c| **c != credential).find_map(|c| {
                    self.shard(c)
                        .read()
                        .get(c)
                        .filter(|s| s.class == record.class)
                        .map(|s| (*c, *s))
                })
            });
            if let Some((previous, stored)) = previous {
                if self.second_card == SecondCard::Refuse {
                    let class = if record.class == CredentialClass::PhysicalCard {
                        "physical card"
                    } else {
                        "NFC card"
                    };
                    return Err(LinkError::SecondCard {
                        class,
                        masked: masked_tail(&stored.tail),
                    });
                }
                self.shard(&previous).write().remove(&previous);
                Self::unindex(&mut index, record.identity, &previous);
                outcome = Linked::Replaced {
                    previous,
                    record: self.expand(&stored),
                };
            }
        }
        let stored = Stored::of(record, &mut self.names.write());
        self.shard(&credential).write().insert(credential, stored);
        match index.get_mut(&record.identity) {
            Some(held) => held.add(credential),
            None => {
                index.insert(record.identity, Held::One(credential));
            }
        }
        drop(index);
        match &outcome {
            Linked::Refreshed => {}
            Linked::New => self.changes.notify(credential),
            Linked::Replaced { previous, .. } => {
                self.changes.notify(*previous);
                self.changes.notify(credential);
            }
        }
        Ok(outcome)
    }

    /// Loads links restored from the durable store, which kept them under this store's
    /// rules: no rule is checked again, every lock is taken once for the whole load, and
    /// the tables are sized for about `expected` links up front. Returns how many.
    pub fn restore(&self, expected: usize, links: impl IntoIterator<Item = (CredentialId, LinkRecord)>) -> u64 {
        let mut index = self.writer.lock();
        let mut names = self.names.write();
        let mut shards: Vec<_> = self.shards.iter().map(|s| s.write()).collect();
        index.reserve(expected);
        for shard in &mut shards {
            shard.reserve(expected / SHARDS + 1);
        }
        let mut loaded = 0;
        for (credential, record) in links {
            let stored = Stored::of(&record, &mut names);
            if let Some(previous) = shards[usize::from(credential.0[15]) % SHARDS].insert(credential, stored) {
                Self::unindex(&mut index, previous.identity, &credential);
            }
            match index.get_mut(&record.identity) {
                Some(held) => held.add(credential),
                None => {
                    index.insert(record.identity, Held::One(credential));
                }
            }
            loaded += 1;
        }
        loaded
    }

    /// Removes `credential`'s link; returns the record it had.
    pub fn unlink_now(&self, credential: &CredentialId) -> Option<LinkRecord> {
        let mut index = self.writer.lock();
        let stored = self.shard(credential).write().remove(credential)?;
        Self::unindex(&mut index, stored.identity, credential);
        drop(index);
        self.changes.notify(*credential);
        Some(self.expand(&stored))
    }

    /// `credential`'s record, if live at `now`.
    pub fn get_now(&self, credential: &CredentialId, now: UnixMillis) -> Option<LinkRecord> {
        let stored = self.shard(credential).read().get(credential).copied()?;
        stored.is_live(now).then(|| self.expand(&stored))
    }

    /// Every live link of `identity`.
    pub fn links_of_now(&self, identity: &IdentityId, now: UnixMillis) -> Vec<(CredentialId, LinkRecord)> {
        let credentials: Vec<CredentialId> = self
            .writer
            .lock()
            .get(identity)
            .map(|held| held.iter().copied().collect())
            .unwrap_or_default();
        credentials
            .into_iter()
            .filter_map(|c| self.get_now(&c, now).map(|r| (c, r)))
            .collect()
    }

    /// Removes links that stopped resolving before `now` (day-bound tickets); returns
    /// how many.
    pub fn sweep_expired(&self, now: UnixMillis) -> usize {
        let mut index = self.writer.lock();
        let mut removed = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let expired: Vec<(CredentialId, IdentityId)> = shard
                .iter()
                .filter(|(_, s)| !s.is_live(now))
                .map(|(c, s)| (*c, s.identity))
                .collect();
            for (credential, identity) in expired {
                shard.remove(&credential);
                Self::unindex(&mut index, identity, &credential);
                removed.push(credential);
            }
        }
        drop(index);
        for credential in &removed {
            self.changes.notify(*credential);
        }
        removed.len()
    }

    /// Calls `visit` with every live link's credential and identity, one shard at a
    /// time (each shard copied out under its read lock, then visited without it).
    pub fn for_each_live(&self, now: UnixMillis, mut visit: impl FnMut(CredentialId, IdentityId)) {
        let mut live = Vec::new();
        for shard in self.shards.iter() {
            live.clear();
            live.extend(
                shard
                    .read()
                    .iter()
                    .filter(|(_, s)| s.is_live(now))
                    .map(|(c, s)| (*c, s.identity)),
            );
            for (credential, identity) in live.drain(..) {
                visit(credential, identity);
            }
        }
    }

    /// Where changes are announced: see [`Observer`].
    pub fn changes(&self) -> &Observer<CredentialId> {
        &self.changes
    }

    /// How many credentials are linked (live or not yet swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// True when nothing is linked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn unindex(index: &mut HashMap<IdentityId, Held, IdHasher>, identity: IdentityId, credential: &CredentialId) {
        if let Some(held) = index.get_mut(&identity)
            && held.remove(credential)
        {
            index.remove(&identity);
        }
    }

    fn expand(&self, s: &Stored) -> LinkRecord {
        let names = self.names.read();
        LinkRecord {
            identity: s.identity,
            class: s.class,
            issuer: names.get(s.issuer),
            tail: s.tail,
            linked_at: UnixMillis(s.linked_at),
            linked_by: s.linked_by,
            caller_id: names.get(s.caller).unwrap_or_else(|| Arc::from("")),
            staff_operator_id: names.get(s.staff),
            consent: s.consent,
            valid_until: (s.valid_until != FOREVER).then_some(UnixMillis(s.valid_until)),
        }
    }
}

impl LinkStore for MemoryLinks {
    async fn resolve(&self, credential: CredentialId, now: UnixMillis) -> Result<Option<IdentityId>, LinkError> {
        Ok(self.resolve_now(&credential, now))
    }

    async fn link(&self, credential: CredentialId, record: LinkRecord) -> Result<Linked, LinkError> {
        self.link_now(credential, &record)
    }

    async fn unlink(&self, credential: CredentialId) -> Result<Option<LinkRecord>, LinkError> {
        Ok(self.unlink_now(&credential))
    }

    async fn get(&self, credential: CredentialId, now: UnixMillis) -> Result<Option<LinkRecord>, LinkError> {
        Ok(self.get_now(&credential, now))
    }

    async fn links_of(
        &self,
        identity: IdentityId,
        now: UnixMillis,
    ) -> Result<Vec<(CredentialId, LinkRecord)>, LinkError> {
        Ok(self.links_of_now(&identity, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: UnixMillis = UnixMillis(1_000_000);

    fn record(identity: u8, class: CredentialClass, tail: &[u8; 4]) -> LinkRecord {
        LinkRecord {
            identity: IdentityId([identity; 16]),
            class,
            issuer: None,
            tail: *tail,
            linked_at: T,
            linked_by: CallerKind::UpgradeService,
            caller_id: Arc::from("upgrade-1"),
            staff_operator_id: None,
            consent: Consent::UpgradeService,
            valid_until: None,
        }
    }

    fn card(n: u8) -> CredentialId {
        CredentialId([n; 16])
    }

    #[test]
    fn link_resolve_refresh_and_unlink() {
        let links = MemoryLinks::default();
        let r = record(1, CredentialClass::PhysicalCard, b"1111");
        assert_eq!(links.link_now(card(10), &r).unwrap(), Linked::New);
        assert_eq!(links.resolve_now(&card(10), T), Some(IdentityId([1; 16])));
        assert_eq!(links.link_now(card(10), &r).unwrap(), Linked::Refreshed);
        assert_eq!(links.get_now(&card(10), T).unwrap().caller_id.as_ref(), "upgrade-1");
        assert_eq!(links.unlink_now(&card(10)).map(|r| r.masked()), Some("****1111".into()));
        assert_eq!(links.resolve_now(&card(10), T), None);
        assert!(links.links_of_now(&IdentityId([1; 16]), T).is_empty());
    }

    #[test]
    fn a_credential_belongs_to_one_identity() {
        let links = MemoryLinks::default();
        links
            .link_now(card(10), &record(1, CredentialClass::RideAccount, b"aaaa"))
            .unwrap();
        assert!(matches!(
            links.link_now(card(10), &record(2, CredentialClass::RideAccount, b"aaaa")),
            Err(LinkError::LinkedToAnother)
        ));
        assert_eq!(links.resolve_now(&card(10), T), Some(IdentityId([1; 16])));
    }

    #[test]
    fn a_second_card_of_a_class_replaces_the_first_or_is_refused() {
        let links = MemoryLinks::new(SecondCard::Replace);
        links
            .link_now(card(10), &record(1, CredentialClass::PhysicalCard, b"1111"))
            .unwrap();
        links
            .link_now(card(11), &record(1, CredentialClass::NfcCard, b"2222"))
            .unwrap();
        let outcome = links
            .link_now(card(12), &record(1, CredentialClass::PhysicalCard, b"3333"))
            .unwrap();
        assert!(matches!(outcome, Linked::Replaced { previous, .. } if previous == card(10)));
        assert_eq!(
            links.resolve_now(&card(10), T),
            None,
            "the old physical card no longer resolves"
        );
        assert_eq!(
            links.resolve_now(&card(11), T),
            Some(IdentityId([1; 16])),
            "the NFC card is untouched"
        );
        assert_eq!(links.links_of_now(&IdentityId([1; 16]), T).len(), 2);

        let strict = MemoryLinks::new(SecondCard::Refuse);
        strict
            .link_now(card(10), &record(1, CredentialClass::NfcCard, b"1111"))
            .unwrap();
        let err = strict
            .link_now(card(12), &record(1, CredentialClass::NfcCard, b"3333"))
            .unwrap_err();
        assert!(
            matches!(&err, LinkError::SecondCard { class: "NFC card", masked } if masked == "****1111"),
            "{err:?}"
        );
        // Any number of ride accounts and commemorative tickets.
        for n in 20..25 {
            strict
                .link_now(card(n), &record(1, CredentialClass::CommemorativeTicket, b"cccc"))
                .unwrap();
        }
    }

    #[test]
    fn day_bound_links_stop_resolving_and_are_swept() {
        let links = MemoryLinks::default();
        let mut r = record(1, CredentialClass::SingleJourneyTicket, b"SJ01");
        r.valid_until = Some(T.plus_ms(1_000));
        links.link_now(card(30), &r).unwrap();
        assert!(links.resolve_now(&card(30), T).is_some());
        assert_eq!(links.resolve_now(&card(30), T.plus_ms(1_000)), None);
        // An expired ticket's number may be bound to another buyer.
        let mut other = record(2, CredentialClass::SingleJourneyTicket, b"SJ01");
        other.linked_at = T.plus_ms(2_000);
        assert_eq!(links.link_now(card(30), &other).unwrap(), Linked::New);
        assert_eq!(links.sweep_expired(T.plus_ms(2_000)), 0, "the rebound ticket is live");
        assert_eq!(
            links.sweep_expired(UnixMillis(i64::MAX - 1)),
            0,
            "no expiry on the new record"
        );
    }
}
