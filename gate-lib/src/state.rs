//! What the gate holds: the feed's configuration (rules, issuers' keys, the credential
//! key), an entry per linked credential, the version it is current at — and the brake
//! that keeps a mass change from reaching the entries before an operator confirms it.

use std::collections::HashMap;
use std::time::Duration;

use ridegate_adapters::credential::ride_code::{RideCodeVerifier, VerifierLimits};
use ridegate_adapters::ids::CredentialHasher;
use ridegate_core::decision::Rules;
use ridegate_core::gate_state::{CredentialTag, Entry, EntryStatus};
use ridegate_core::model::{Colour, UnixMillis};
use serde::Deserialize;

use crate::GateError;

/// The feed's configuration document, read.
pub(crate) struct Loaded {
    /// The document as sent (kept on disk as is).
    pub(crate) json: String,
    pub(crate) rules: Rules,
    pub(crate) verifier: RideCodeVerifier,
    pub(crate) hasher: CredentialHasher,
}

#[derive(Deserialize)]
struct Document {
    rules: Rules,
    issuers: Vec<ridegate_adapters::credential::ride_code::IssuerSpec>,
    limits: VerifierLimits,
    credential_key: String,
}

impl Loaded {
    /// Reads the configuration document of a snapshot or delta.
    pub(crate) fn parse(json: &str) -> Result<Self, GateError> {
        let doc: Document = serde_json::from_str(json).map_err(|e| GateError::Feed(format!("configuration: {e}")))?;
        let verifier = RideCodeVerifier::new(&doc.issuers, doc.limits)
            .map_err(|e| GateError::Feed(format!("configuration: issuers: {e}")))?;
        let hasher = CredentialHasher::from_hex(&doc.credential_key)
            .map_err(|_| GateError::Feed("configuration: credential_key is not 32 hex characters".into()))?;
        Ok(Self {
            json: json.to_owned(),
            rules: doc.rules,
            verifier,
            hasher,
        })
    }
}

/// The brake's settings: more entries turning from green to non-green within `window`
/// than `max_share` of all entries (and at least `min_turns`) are held until
/// [`OfflineGate::confirm_held`](crate::OfflineGate::confirm_held).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrakeSettings {
    /// The window turns are counted in.
    pub window: Duration,
    /// The share of entries that may turn within the window.
    pub max_share: f64,
    /// Turns that never engage the brake.
    pub min_turns: u64,
}

impl Default for BrakeSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            max_share: 0.01,
            min_turns: 1_000,
        }
    }
}

/// The gate's state.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) epoch: u64,
    pub(crate) version: u64,
    pub(crate) config: Option<Loaded>,
    pub(crate) entries: HashMap<CredentialTag, Option<EntryStatus>>,
    /// When ridegate last confirmed the state current (a snapshot, a delta, a
    /// heartbeat), by this gate's clock.
    pub(crate) confirmed_at: Option<UnixMillis>,
    /// Turns let through recently, with when.
    turns: Vec<UnixMillis>,
    /// Changes the brake holds, by credential.
    pub(crate) held: HashMap<CredentialTag, Option<EntryStatus>>,
}

fn is_green(status: Option<&Option<EntryStatus>>) -> bool {
    matches!(
        status,
        Some(Some(EntryStatus {
            colour: Colour::Green,
            ..
        }))
    )
}

fn turns_non_green(before: Option<&Option<EntryStatus>>, after: Option<EntryStatus>) -> bool {
    is_green(before) && after.is_none_or(|s| s.colour != Colour::Green)
}

impl State {
    /// Applies `set` and `removed`, except the turns from green to non-green beyond what
    /// the brake allows at `now`: those are held. Returns how many were held.
    pub(crate) fn apply(
        &mut self,
        set: &[Entry],
        removed: &[CredentialTag],
        brake: &BrakeSettings,
        now: UnixMillis,
    ) -> usize {
        let window = i64::try_from(brake.window.as_millis()).unwrap_or(i64::MAX);
        self.turns.retain(|at| now.since(*at) < window);
        let limit = ((self.entries.len() as f64 * brake.max_share) as u64).max(brake.min_turns);
        let mut held = 0;
        for entry in set {
            if turns_non_green(self.entries.get(&entry.tag), entry.status) {
                if self.turns.len() as u64 >= limit || !self.held.is_empty() {
                    self.held.insert(entry.tag, entry.status);
                    held += 1;
                    continue;
                }
                self.turns.push(now);
            }
            self.held.remove(&entry.tag);
            self.entries.insert(entry.tag, entry.status);
        }
        for tag in removed {
            self.held.remove(tag);
            self.entries.remove(tag);
        }
        held
    }

    /// Replaces the entries with a snapshot's, through the brake: entries the snapshot
    /// turns from green to non-green beyond the brake's allowance keep their old status
    /// (held). Returns how many were held.
    pub(crate) fn replace(&mut self, entries: Vec<Entry>, brake: &BrakeSettings, now: UnixMillis) -> usize {
        // The snapshot is the whole truth: what was held before is judged again below.
        self.held.clear();
        let mut next: HashMap<CredentialTag, Option<EntryStatus>> = HashMap::with_capacity(entries.len());
        let mut turning = Vec::new();
        for entry in entries {
            if turns_non_green(self.entries.get(&entry.tag), entry.status) {
                turning.push(entry);
            } else {
                next.insert(entry.tag, entry.status);
            }
        }
        // Turning entries go through the brake against the old state, then join.
        let old = std::mem::replace(&mut self.entries, next);
        let mut held = 0;
        let window = i64::try_from(brake.window.as_millis()).unwrap_or(i64::MAX);
        self.turns.retain(|at| now.since(*at) < window);
        let limit = ((old.len() as f64 * brake.max_share) as u64).max(brake.min_turns);
        for entry in turning {
            if self.turns.len() as u64 >= limit || !self.held.is_empty() {
                self.held.insert(entry.tag, entry.status);
                if let Some(previous) = old.get(&entry.tag) {
                    self.entries.insert(entry.tag, *previous);
                }
                held += 1;
            } else {
                self.turns.push(now);
                self.entries.insert(entry.tag, entry.status);
            }
        }
        held
    }

    /// Applies every held change (an operator confirmed them); returns how many.
    pub(crate) fn confirm_held(&mut self) -> usize {
        let held = std::mem::take(&mut self.held);
        let n = held.len();
        self.entries.extend(held);
        self.turns.clear();
        n
    }

    /// The entries, encoded (for the state file).
    pub(crate) fn encoded_entries(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ridegate_core::gate_state::ENTRY_BYTES);
        for (tag, status) in &self.entries {
            Entry {
                tag: *tag,
                status: *status,
            }
            .encode(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

    fn entry(n: u64, colour: Option<Colour>) -> Entry {
        Entry {
            tag: CredentialTag(n.to_le_bytes()),
            status: colour.map(|colour| EntryStatus {
                colour,
                negative_test_at: None,
            }),
        }
    }

    fn brake() -> BrakeSettings {
        BrakeSettings {
            window: Duration::from_secs(60),
            max_share: 0.1,
            min_turns: 1,
        }
    }

    #[test]
    fn turns_beyond_the_share_are_held_until_confirmed() {
        let mut state = State::default();
        let green: Vec<Entry> = (0..100).map(|n| entry(n, Some(Colour::Green))).collect();
        assert_eq!(state.replace(green, &brake(), NOW), 0);
        // 10% of 100: ten turns pass, the rest are held; other changes pass.
        let mut delta: Vec<Entry> = (0..30).map(|n| entry(n, Some(Colour::Red))).collect();
        delta.push(entry(500, Some(Colour::Red))); // a new credential: no turn
        assert_eq!(state.apply(&delta, &[], &brake(), NOW), 20);
        let red = |s: &State| {
            s.entries
                .values()
                .filter(|e| e.is_some_and(|e| e.colour == Colour::Red))
                .count()
        };
        assert_eq!(red(&state), 11);
        assert_eq!(state.confirm_held(), 20);
        assert_eq!(red(&state), 31);
    }

    #[test]
    fn a_snapshot_that_turns_everyone_red_keeps_the_old_status() {
        let mut state = State::default();
        state.replace((0..100).map(|n| entry(n, Some(Colour::Green))).collect(), &brake(), NOW);
        let held = state.replace((0..100).map(|n| entry(n, Some(Colour::Red))).collect(), &brake(), NOW);
        assert_eq!(held, 90);
        let green = state
            .entries
            .values()
            .filter(|e| e.is_some_and(|e| e.colour == Colour::Green))
            .count();
        assert_eq!(green, 90);
    }

    #[test]
    fn turns_leave_the_window() {
        let mut state = State::default();
        state.replace((0..10).map(|n| entry(n, Some(Colour::Green))).collect(), &brake(), NOW);
        // min_turns 1: one turn per window.
        assert_eq!(state.apply(&[entry(0, Some(Colour::Red))], &[], &brake(), NOW), 0);
        assert_eq!(state.apply(&[entry(1, None)], &[], &brake(), NOW.plus_ms(60_000)), 0);
    }
}
