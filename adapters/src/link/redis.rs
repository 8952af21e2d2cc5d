//! Links in the shared tier, behind a local cache.
//!
//! `<prefix>:l:<credential>` holds the record as text — the owner's pseudonym first, so
//! scripts can compare owners — and `<prefix>:i:<identity>` is a hash of the identity's
//! credentials (`c:<credential>` → class) and its card slots (`p`, `n` → credential).
//! Every script touches one key, so the same code runs on Redis Cluster, where a
//! credential and its owner live on different nodes. A link is three atomic steps —
//! claim the credential, take the identity's card slot, release a replaced card — with
//! the claim undone if the slot is refused.
//!
//! Gate reads go through a local cache (positive and negative answers); the change
//! stream invalidates an entry on every instance when its credential changes.

use std::sync::Arc;
use std::time::Duration;

use super::{Consent, CredentialClass, LinkError, LinkRecord, LinkStore, Linked, SecondCard};
use crate::caller::CallerKind;
use crate::ids::{CredentialId, IdHasher, IdentityId};
use crate::shared::bulk::BulkReader;
use crate::shared::changes::Change;
use crate::shared::{SharedError, SharedTier};
use ridegate_core::model::UnixMillis;

/// Claims `KEYS[1]` for identity `ARGV[1]` at time `ARGV[2]` with record `ARGV[3]`.
/// Returns {0, previous owner or ''} for a new claim (an expired owner's included),
/// {1, owner} when already this identity's, {2, owner} when another identity's.
const CLAIM: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  local owner = string.sub(held, 1, 32)
  local untl = tonumber(string.match(held, '^%x+|(%d+)|'))
  local live = (untl == 0) or (untl > tonumber(ARGV[2]))
  if live and owner ~= ARGV[1] then return {2, owner} end
  redis.call('SET', KEYS[1], ARGV[3])
  if live then return {1, owner} end
  return {0, owner}
end
redis.call('SET', KEYS[1], ARGV[3])
return {0, ''}
";

/// Records credential `ARGV[1]` (class `ARGV[4]`) in identity hash `KEYS[1]`, taking card
/// slot `ARGV[2]` ('' for none) under policy `ARGV[3]`. Returns {0, ''}, {1, replaced},
/// or {2, holder} when the slot is taken and the policy refuses.
const TAKE_SLOT: &str = r"
local prev = false
if ARGV[2] ~= '' then
  prev = redis.call('HGET', KEYS[1], ARGV[2])
  if prev and prev ~= ARGV[1] then
    if ARGV[3] == 'refuse' then return {2, prev} end
    redis.call('HDEL', KEYS[1], 'c:' .. prev)
  end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('HSET', KEYS[1], 'c:' .. ARGV[1], ARGV[4])
if prev and prev ~= ARGV[1] then return {1, prev} end
return {0, ''}
";

/// Deletes `KEYS[1]` if identity `ARGV[1]` owns it; returns the deleted record.
const RELEASE: &str = r"
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, 32) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return held
end
return false
";

/// Removes credential `ARGV[1]` from identity hash `KEYS[1]` and from its card slots.
const FORGET: &str = r"
redis.call('HDEL', KEYS[1], 'c:' .. ARGV[1])
for _, slot in ipairs({'p', 'n'}) do
  if redis.call('HGET', KEYS[1], slot) == ARGV[1] then redis.call('HDEL', KEYS[1], slot) end
end
return 1
";

/// What the local cache keeps: the owner and until when, or "not linked".
type Cached = Option<(IdentityId, i64)>;

/// Links in Redis.
pub struct RedisLinks {
    tier: Arc<SharedTier>,
    cache: moka::sync::Cache<CredentialId, Cached, IdHasher>,
    second_card: SecondCard,
}

impl std::fmt::Debug for RedisLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisLinks({:?})", self.tier)
    }
}

impl RedisLinks {
    /// Links in `tier`, with a local cache of `cache_capacity` answers kept `cache_ttl`.
    pub fn new(tier: Arc<SharedTier>, second_card: SecondCard, cache_capacity: u64, cache_ttl: Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(cache_capacity)
            .time_to_live(cache_ttl)
            .build_with_hasher(IdHasher);
        Self {
            tier,
            cache,
            second_card,
        }
    }

    /// Forgets the cached answer for `credential` (it changed somewhere).
    pub fn invalidate(&self, credential: &CredentialId) {
        self.cache.invalidate(credential);
    }

    /// Forgets every cached answer (changes may have been missed).
    pub fn clear_cache(&self) {
        self.cache.invalidate_all();
    }

    /// A bulk reader walking every link key (see [`Self::next_links`]).
    pub async fn bulk_reader(&self) -> Result<BulkReader, SharedError> {
        self.tier.bulk_reader("l").await
    }

    /// The next batch of links `reader` finds, read past the cache (records that do not
    /// decode are skipped); `None` once every node was walked.
    pub async fn next_links(
        &self,
        reader: &mut BulkReader,
    ) -> Result<Option<Vec<(CredentialId, LinkRecord)>>, SharedError> {
        let Some(keys) = reader.next_keys().await? else {
            return Ok(None);
        };
        let prefix = self.tier.key("l", "");
        let credentials: Vec<Option<CredentialId>> = keys
            .iter()
            .map(|key| key.strip_prefix(&prefix).and_then(|id| id.parse().ok()))
            .collect();
        let records = reader.get_many(&keys).await?;
        Ok(Some(
            credentials
                .into_iter()
                .zip(records)
                .filter_map(|(credential, text)| Some((credential?, decode(&text?)?)))
                .collect(),
        ))
    }

    /// `credentials`' records as the tier holds them now, past the cache (`None`: not
    /// linked), in their order.
    pub async fn read_many(
        &self,
        reader: &mut BulkReader,
        credentials: &[CredentialId],
    ) -> Result<Vec<Option<LinkRecord>>, SharedError> {
        let keys: Vec<String> = credentials.iter().map(|c| self.tier.key("l", c)).collect();
        let texts = reader.get_many(&keys).await?;
        Ok(texts.into_iter().map(|t| t.as_deref().and_then(decode)).collect())
    }

    async fn script(&self, source: &str, key: String, args: &[&str]) -> Result<redis::Value, LinkError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(source).arg(1).arg(key);
        for arg in args {
            cmd.arg(*arg);
        }
        Ok(self.tier.query(&cmd, None).await?)
    }

    async fn read(&self, credential: &CredentialId) -> Result<Option<LinkRecord>, LinkError> {
        let text: Option<String> = self
            .tier
            .query(redis::cmd("GET").arg(self.tier.key("l", credential)), None)
            .await?;
        Ok(text.as_deref().and_then(decode))
    }

    /// Announces a change to `credential` to every instance (this one included).
    async fn changed(&self, credential: CredentialId) -> Result<(), LinkError> {
        self.invalidate(&credential);
        Ok(self.tier.publish(&Change::Link { credential }).await?)
    }
}

fn status_and_owner(value: redis::Value) -> Result<(i64, String), LinkError> {
    redis::from_redis_value(value).map_err(|_| LinkError::Unreadable("a link script reply"))
}

impl LinkStore for RedisLinks {
    async fn resolve(&self, credential: CredentialId, now: UnixMillis) -> Result<Option<IdentityId>, LinkError> {
        let cached = match self.cache.get(&credential) {
            Some(cached) => cached,
            None => {
                let record = self.read(&credential).await?;
                let cached = record.map(|r| (r.identity, r.valid_until.map_or(i64::MAX, |t| t.0)));
                self.cache.insert(credential, cached);
                cached
            }
        };
        Ok(cached.filter(|(_, until)| now.0 < *until).map(|(identity, _)| identity))
    }

    async fn link(&self, credential: CredentialId, record: LinkRecord) -> Result<Linked, LinkError> {
        let identity = record.identity.to_string();
        let value = encode(&record);
        let now = record.linked_at.0.to_string();
        let (claim, previous_owner) = status_and_owner(
            self.script(CLAIM, self.tier.key("l", credential), &[&identity, &now, &value])
                .await?,
        )?;
        if claim == 2 {
            return Err(LinkError::LinkedToAnother);
        }
        if claim == 0 && !previous_owner.is_empty() {
            // An expired ticket of someone else's: drop it from their hash.
            self.script(FORGET, self.tier.key("i", &previous_owner), &[&credential.to_string()])
                .await?;
        }
        let slot = match record.class {
            CredentialClass::PhysicalCard => "p",
            CredentialClass::NfcCard => "n",
            _ => "",
        };
        let policy = match self.second_card {
            SecondCard::Replace => "replace",
            SecondCard::Refuse => "refuse",
        };
        let (taken, other) = status_and_owner(
            self.script(
                TAKE_SLOT,
                self.tier.key("i", &identity),
                &[&credential.to_string(), slot, policy, class_code(record.class)],
            )
            .await?,
        )?;
        let mut outcome = if claim == 1 { Linked::Refreshed } else { Linked::New };
        if taken == 2 {
            if claim == 0 {
                self.script(RELEASE, self.tier.key("l", credential), &[&identity])
                    .await?;
            }
            let holder: CredentialId = other.parse().map_err(|_| LinkError::Unreadable("a card slot"))?;
            let masked = self.read(&holder).await?.map_or_else(|| "****".into(), |r| r.masked());
            let class = if slot == "p" { "physical card" } else { "NFC card" };
            return Err(LinkError::SecondCard { class, masked });
        }
        if taken == 1 {
            let previous: CredentialId = other.parse().map_err(|_| LinkError::Unreadable("a card slot"))?;
            let released: Option<String> =
                redis::from_redis_value(self.script(RELEASE, self.tier.key("l", previous), &[&identity]).await?)
                    .unwrap_or(None);
            self.changed(previous).await?;
            if let Some(record) = released.as_deref().and_then(decode) {
                outcome = Linked::Replaced { previous, record };
            }
        }
        self.changed(credential).await?;
        Ok(outcome)
    }

    async fn unlink(&self, credential: CredentialId) -> Result<Option<LinkRecord>, LinkError> {
        let Some(record) = self.read(&credential).await? else {
            return Ok(None);
        };
        let identity = record.identity.to_string();
        let released: Option<String> = redis::from_redis_value(
            self.script(RELEASE, self.tier.key("l", credential), &[&identity])
                .await?,
        )
        .unwrap_or(None);
        if released.is_none() {
            return Ok(None);
        }
        self.script(FORGET, self.tier.key("i", &identity), &[&credential.to_string()])
            .await?;
        self.changed(credential).await?;
        Ok(Some(record))
    }

    async fn get(&self, credential: CredentialId, now: UnixMillis) -> Result<Option<LinkRecord>, LinkError> {
        Ok(self.read(&credential).await?.filter(|r| r.is_live(now)))
    }

    async fn links_of(
        &self,
        identity: IdentityId,
        now: UnixMillis,
    ) -> Result<Vec<(CredentialId, LinkRecord)>, LinkError> {
        let fields: Vec<(String, String)> = self
            .tier
            .query(redis::cmd("HGETALL").arg(self.tier.key("i", identity)), None)
            .await?;
        let mut links = Vec::new();
        for (field, _) in fields {
            let Some(credential) = field
                .strip_prefix("c:")
                .and_then(|hex| hex.parse::<CredentialId>().ok())
            else {
                continue;
            };
            if let Some(record) = self.get(credential, now).await?.filter(|r| r.identity == identity) {
                links.push((credential, record));
            }
        }
        Ok(links)
    }
}

fn class_code(class: CredentialClass) -> &'static str {
    match class {
        CredentialClass::RideAccount => "a",
        CredentialClass::PhysicalCard => "p",
        CredentialClass::NfcCard => "n",
        CredentialClass::SingleJourneyTicket => "s",
        CredentialClass::CommemorativeTicket => "m",
    }
}

fn consent_code(consent: Consent) -> &'static str {
    match consent {
        Consent::AppPopup => "p",
        Consent::AppRegistration => "r",
        Consent::UpgradeService => "u",
        Consent::TicketPurchase => "t",
        Consent::StaffAssisted => "s",
        Consent::BulkProgramme => "b",
    }
}

fn caller_code(kind: CallerKind) -> &'static str {
    match kind {
        CallerKind::App => "a",
        CallerKind::UpgradeService => "u",
        CallerKind::TicketWindow => "t",
        CallerKind::BackEnd => "b",
        CallerKind::HealthPlatform => "h",
    }
}

const SEPARATOR: char = '\u{1f}';

/// `<identity>|<until or 0>|<class>|<consent>|<caller kind>|<tail hex>|<linked at>|`
/// followed by caller id, staff id and issuer separated by U+001F.
fn encode(r: &LinkRecord) -> String {
    let tail: String = r.tail.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}|{}|{}|{}|{}|{tail}|{}|{}{SEPARATOR}{}{SEPARATOR}{}",
        r.identity,
        r.valid_until.map_or(0, |t| t.0),
        class_code(r.class),
        consent_code(r.consent),
        caller_code(r.linked_by),
        r.linked_at.0,
        r.caller_id,
        r.staff_operator_id.as_deref().unwrap_or(""),
        r.issuer.as_deref().unwrap_or(""),
    )
}

fn decode(text: &str) -> Option<LinkRecord> {
    let mut fixed = text.splitn(8, '|');
    let identity = fixed.next()?.parse().ok()?;
    let until: i64 = fixed.next()?.parse().ok()?;
    let class = match fixed.next()? {
        "a" => CredentialClass::RideAccount,
        "p" => CredentialClass::PhysicalCard,
        "n" => CredentialClass::NfcCard,
        "s" => CredentialClass::SingleJourneyTicket,
        "m" => CredentialClass::CommemorativeTicket,
        _ => return None,
    };
    let consent = match fixed.next()? {
        "p" => Consent::AppPopup,
        "r" => Consent::AppRegistration,
        "u" => Consent::UpgradeService,
        "t" => Consent::TicketPurchase,
        "s" => Consent::StaffAssisted,
        "b" => Consent::BulkProgramme,
        _ => return None,
    };
    let linked_by = match fixed.next()? {
        "a" => CallerKind::App,
        "u" => CallerKind::UpgradeService,
        "t" => CallerKind::TicketWindow,
        "b" => CallerKind::BackEnd,
        "h" => CallerKind::HealthPlatform,
        _ => return None,
    };
    let tail_hex = fixed.next()?;
    let mut tail = [0u8; 4];
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte = u8::from_str_radix(tail_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let linked_at = UnixMillis(fixed.next()?.parse().ok()?);
    let mut free = fixed.next()?.split(SEPARATOR);
    let text_field = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(Arc::<str>::from);
    let caller_id = Arc::from(free.next()?);
    let staff_operator_id = text_field(free.next());
    let issuer = text_field(free.next());
    Some(LinkRecord {
        identity,
        class,
        issuer,
        tail,
        linked_at,
        linked_by,
        caller_id,
        staff_operator_id,
        consent,
        valid_until: (until != 0).then_some(UnixMillis(until)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_text_form() {
        let record = LinkRecord {
            identity: IdentityId([0xab; 16]),
            class: CredentialClass::SingleJourneyTicket,
            issuer: Some(Arc::from("alipay")),
            tail: *b"SJ|1",
            linked_at: UnixMillis(1_654_732_800_000),
            linked_by: CallerKind::TicketWindow,
            caller_id: Arc::from("window|S07"),
            staff_operator_id: Some(Arc::from("staff-1")),
            consent: Consent::StaffAssisted,
            valid_until: Some(UnixMillis(1_654_790_400_000)),
        };
        assert_eq!(decode(&encode(&record)), Some(record.clone()));
        let plain = LinkRecord {
            issuer: None,
            staff_operator_id: None,
            valid_until: None,
            ..record
        };
        assert_eq!(decode(&encode(&plain)), Some(plain));
        assert_eq!(decode("garbage"), None);
    }
}
