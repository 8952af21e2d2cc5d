//! One entry of the gate state feed: what an offline gate knows about one linked
//! credential — the first 8 bytes of the credential's keyed hash and its rider's health
//! status — in a fixed 13-byte layout that ridegate writes and gate libraries read.
//!
//! Every linked credential has an entry; a credential without one is not linked. The
//! entry carries what [`Rules::decide`](crate::decision::Rules::decide) reads of a
//! status (the colour and the last negative test), so an offline gate reaches the same
//! answer ridegate would.

use crate::model::{Colour, HealthStatus, UnixMillis};

/// Bytes per entry.
pub const ENTRY_BYTES: usize = 13;
/// Bytes per credential tag.
pub const TAG_BYTES: usize = 8;

/// The first 8 bytes of a credential's keyed hash: a gate's key into its state. Two
/// of 10 M linked credentials share a tag with probability ≈ 3·10⁻⁶; a credential
/// shown at a gate matches another's tag with probability 10 M / 2⁶⁴ ≈ 5·10⁻¹³.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialTag(pub [u8; TAG_BYTES]);

impl CredentialTag {
    /// The tag of a 16-byte credential hash.
    pub fn of(hash: &[u8; 16]) -> Self {
        let mut tag = [0; TAG_BYTES];
        tag.copy_from_slice(&hash[..TAG_BYTES]);
        Self(tag)
    }
}

/// What an entry says of a rider: the status, or `None` when the health source holds
/// no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryStatus {
    /// The colour.
    pub colour: Colour,
    /// The last negative test, to the second (rounded down), if any.
    pub negative_test_at: Option<UnixMillis>,
}

impl EntryStatus {
    /// What an entry keeps of `status`.
    pub fn of(status: &HealthStatus) -> Self {
        Self {
            colour: status.colour,
            negative_test_at: status
                .negative_test_at
                .map(|t| UnixMillis(t.0.div_euclid(1_000) * 1_000)),
        }
    }

    /// The status as the decision reads it. `set_at` is not part of the decision and not
    /// carried: it is given as the epoch.
    pub fn health_status(self) -> HealthStatus {
        HealthStatus {
            colour: self.colour,
            set_at: UnixMillis(0),
            negative_test_at: self.negative_test_at,
        }
    }
}

/// One linked credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The credential.
    pub tag: CredentialTag,
    /// Its rider's status; `None` when there is no record.
    pub status: Option<EntryStatus>,
}

/// Bytes that are not a whole number of entries, or an entry with an unknown colour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed gate state entries: {0}")]
pub struct MalformedEntries(&'static str);

impl Entry {
    /// Appends the entry's 13 bytes: the tag, the colour (0 no record, 1 green,
    /// 2 yellow, 3 red), the last negative test in seconds since the epoch (u32 little
    /// endian, 0 for none).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tag.0);
        let (colour, tested) = match self.status {
            None => (0, 0),
            Some(s) => (
                match s.colour {
                    Colour::Green => 1,
                    Colour::Yellow => 2,
                    Colour::Red => 3,
                },
                s.negative_test_at
                    .map_or(0, |t| u32::try_from(t.0.div_euclid(1_000)).unwrap_or(0)),
            ),
        };
        out.push(colour);
        out.extend_from_slice(&tested.to_le_bytes());
    }

    /// Reads entries written by [`Entry::encode`].
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<Entry>, MalformedEntries> {
        if !bytes.len().is_multiple_of(ENTRY_BYTES) {
            return Err(MalformedEntries("not a whole number of 13-byte entries"));
        }
        bytes
            .chunks_exact(ENTRY_BYTES)
            .map(|e| {
                let mut tag = [0; TAG_BYTES];
                tag.copy_from_slice(&e[..TAG_BYTES]);
                let colour = match e[TAG_BYTES] {
                    0 => None,
                    1 => Some(Colour::Green),
                    2 => Some(Colour::Yellow),
                    3 => Some(Colour::Red),
                    _ => return Err(MalformedEntries("unknown colour")),
                };
                let mut tested = [0; 4];
                tested.copy_from_slice(&e[TAG_BYTES + 1..]);
                let tested = u32::from_le_bytes(tested);
                Ok(Entry {
                    tag: CredentialTag(tag),
                    status: colour.map(|colour| EntryStatus {
                        colour,
                        negative_test_at: (tested != 0).then(|| UnixMillis::from_secs(i64::from(tested))),
                    }),
                })
            })
            .collect()
    }

    /// Reads 8-byte tags (credentials no longer linked).
    pub fn decode_tags(bytes: &[u8]) -> Result<Vec<CredentialTag>, MalformedEntries> {
        if !bytes.len().is_multiple_of(TAG_BYTES) {
            return Err(MalformedEntries("not a whole number of 8-byte tags"));
        }
        Ok(bytes
            .chunks_exact(TAG_BYTES)
            .map(|t| {
                let mut tag = [0; TAG_BYTES];
                tag.copy_from_slice(t);
                CredentialTag(tag)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_to_the_second() {
        let entries = [
            Entry {
                tag: CredentialTag([1; 8]),
                status: None,
            },
            Entry {
                tag: CredentialTag([2; 8]),
                status: Some(EntryStatus {
                    colour: Colour::Red,
                    negative_test_at: None,
                }),
            },
            Entry {
                tag: CredentialTag([3; 8]),
                status: Some(EntryStatus::of(&HealthStatus {
                    colour: Colour::Green,
                    set_at: UnixMillis(5),
                    negative_test_at: Some(UnixMillis(1_700_000_000_999)),
                })),
            },
        ];
        let mut bytes = Vec::new();
        for e in &entries {
            e.encode(&mut bytes);
        }
        assert_eq!(bytes.len(), 3 * ENTRY_BYTES);
        let back = Entry::decode_all(&bytes).unwrap();
        assert_eq!(back, entries);
        assert_eq!(
            back[2].status.unwrap().negative_test_at,
            Some(UnixMillis(1_700_000_000_000))
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(Entry::decode_all(&[0; 12]).is_err());
        let mut bad = vec![0; ENTRY_BYTES];
        bad[TAG_BYTES] = 9;
        assert!(Entry::decode_all(&bad).is_err());
        assert!(Entry::decode_tags(&[0; 9]).is_err());
        assert_eq!(Entry::decode_tags(&[7; 16]).unwrap().len(), 2);
    }
}
