//! What `ridegate load` sends: taps as real gates send them, encoded before the timed
//! phase so that producing them costs nothing while it runs.
//!
//! Each request is a tap by a rider of a [`load-setup`](super::setup) population: a card
//! (physical or in a phone), a commemorative ticket, an issuer-signed ride code or a
//! phone-signed one (the offline form, with its device certificate), from several
//! issuers. Shares of exits, yellow and red riders, unlinked credentials and forged
//! codes are configurable. Every request carries its own request id (patched into the
//! encoded bytes per call); every ride code is freshly minted and used once.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use ridegate_adapters::credential::ride_code::{CodeMinter, DeviceCodeMinter, SigningAlg, SigningKey, VerifyingKey};
use ridegate_adapters::ids::random_hex;
use ridegate_core::clock::Clock;
use ridegate_core::model::UnixMillis;
use ridegate_proto::pb;

use super::setup::{Manifest, ticket_number};
use crate::population::{self, Population, Role};

/// Weights of the credential kinds in the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Card taps (physical cards and cards in phones).
    pub cards: u32,
    /// Issuer-signed ride codes.
    pub codes: u32,
    /// Phone-signed ride codes with their device certificate (the offline form).
    pub device_codes: u32,
    /// Commemorative-ticket taps.
    pub tickets: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            cards: 45,
            codes: 35,
            device_codes: 10,
            tickets: 10,
        }
    }
}

impl Mix {
    /// Card taps only.
    pub const CARDS: Self = Self {
        cards: 1,
        codes: 0,
        device_codes: 0,
        tickets: 0,
    };

    fn total(self) -> u32 {
        self.cards + self.codes + self.device_codes + self.tickets
    }

    /// Whether any ride codes are sent (they can be used once only).
    pub fn has_codes(self) -> bool {
        self.codes + self.device_codes > 0
    }
}

/// The largest weight a kind can have in a mix (so their sum cannot overflow).
const MAX_WEIGHT: u32 = 1_000_000;

impl FromStr for Mix {
    type Err = String;

    /// `cards=45,codes=35,device-codes=10,tickets=10`; kinds left out weigh 0.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mix = Self {
            cards: 0,
            codes: 0,
            device_codes: 0,
            tickets: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, weight) = part.split_once('=').unwrap_or((part, "1"));
            let weight: u32 = weight.parse().ok().filter(|w| *w <= MAX_WEIGHT).ok_or_else(|| {
                format!("{kind}: the weight must be a whole number up to {MAX_WEIGHT}, got {weight:?}")
            })?;
            match kind {
                "cards" => mix.cards = weight,
                "codes" => mix.codes = weight,
                "device-codes" => mix.device_codes = weight,
                "tickets" => mix.tickets = weight,
                _ => {
                    return Err(format!(
                        "unknown kind {kind:?}: expected cards, codes, device-codes, tickets"
                    ));
                }
            }
        }
        if mix.total() == 0 {
            return Err("at least one kind needs a weight above 0".into());
        }
        Ok(mix)
    }
}

/// Shares of taps with something special about them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    /// Exits (never refused on health grounds).
    pub exits: f64,
    /// Riders with a yellow code.
    pub yellow: f64,
    /// Riders with a red code.
    pub red: f64,
    /// Credentials nobody linked.
    pub unlinked: f64,
    /// Of the ride codes: forged ones (a signature the issuer's or phone's key did not make).
    pub forged: f64,
}

impl Default for Shares {
    fn default() -> Self {
        Self {
            exits: 0.1,
            yellow: 0.02,
            red: 0.01,
            unlinked: 0.01,
            forged: 0.005,
        }
    }
}

impl Shares {
    /// Checks that each share is in 0–1 and that yellow, red and unlinked add up to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let all = [self.exits, self.yellow, self.red, self.unlinked, self.forged];
        if all.iter().any(|s| !(0.0..=1.0).contains(s)) {
            return Err("each share must be between 0 and 1".into());
        }
        if self.yellow + self.red + self.unlinked > 1.0 {
            return Err("yellow, red and unlinked must add up to at most 1".into());
        }
        Ok(())
    }
}

/// A deterministic stream of draws: [`population::draw`] over `(seed, 1), (seed, 2), …`.
#[derive(Debug, Clone)]
struct Rng {
    seed: u64,
    n: u64,
}

impl Rng {
    fn new(seed: u64) -> Self {
        Self { seed, n: 0 }
    }

    fn next(&mut self) -> u64 {
        self.n += 1;
        population::draw(self.seed, self.n)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Who taps: a rider of some role, or a credential nobody linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Rider(Role),
    Unlinked,
}

/// How long each ride code is valid (ridegate's default `max_lifetime`).
const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// Phones per issuer and role for the offline form.
const PHONES_PER_ROLE: usize = 32;
/// Riders taken from each role for the draw: enough to spread taps over millions of
/// riders, so a run can fill a shared-tier instance's caches (up to 32 MB of list a role;
/// a role that never fills its list makes the draw scan the whole population once).
const RIDERS_PER_ROLE: usize = 4_000_000;

/// One issuer's keys: the real one, a forger's with the same key id, and the public key
/// for the bare-check measurement.
struct IssuerKit {
    id: String,
    alg: SigningAlg,
    minter: CodeMinter,
    forger: CodeMinter,
    verifying: VerifyingKey,
    codes: AtomicU64,
}

/// Phones of one issuer: by who holds them, plus one whose codes are forged.
struct Phones {
    by_who: Vec<(Who, Vec<DeviceCodeMinter>)>,
    forged: DeviceCodeMinter,
    device_key: VerifyingKey,
    codes: AtomicU64,
}

/// Riders by role, for the draw.
struct Riders {
    population: Population,
    green: Vec<u64>,
    yellow: Vec<u64>,
    red: Vec<u64>,
}

impl Riders {
    fn new(population: Population) -> Self {
        let mut riders = Self {
            population,
            green: Vec::new(),
            yellow: Vec::new(),
            red: Vec::new(),
        };
        for n in 0..population.riders {
            let list = match population.role(n) {
                Role::Green => &mut riders.green,
                Role::Yellow => &mut riders.yellow,
                Role::Red => &mut riders.red,
                Role::Untested | Role::NoRecord => continue,
            };
            if list.len() < RIDERS_PER_ROLE {
                list.push(n);
            }
            if [&riders.green, &riders.yellow, &riders.red]
                .iter()
                .all(|l| l.len() >= RIDERS_PER_ROLE)
            {
                break;
            }
        }
        riders
    }

    /// A rider for `who` (an unlinked "rider" is numbered beyond the population).
    fn pick(&self, who: Who, rng: &mut Rng) -> u64 {
        let list = match who {
            Who::Unlinked => return self.population.riders + rng.next() % 1_000_000,
            Who::Rider(Role::Yellow) if !self.yellow.is_empty() => &self.yellow,
            Who::Rider(Role::Red) if !self.red.is_empty() => &self.red,
            Who::Rider(_) => &self.green,
        };
        if list.is_empty() {
            return rng.next() % self.population.riders.max(1);
        }
        list[rng.below(list.len())]
    }
}

/// Where the traffic comes from.
pub enum Source<'a> {
    /// A `load-setup` directory.
    Setup {
        /// The directory.
        dir: &'a std::path::Path,
        /// Its manifest.
        manifest: &'a Manifest,
    },
    /// No population: card taps by riders 0–999 (any server; ridegate answers NOT_LINKED
    /// unless it has them linked).
    Cards,
}

/// The cost of the bare signature check the sent codes contain, measured here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignatureCheck {
    /// What was checked, e.g. `ES256 issuer code`.
    pub what: String,
    /// Codes of this kind among the requests.
    pub codes: u64,
    /// Microseconds per check.
    pub micros: f64,
}

/// The requests, encoded.
#[derive(Debug)]
pub struct Templates {
    frames: Vec<Bytes>,
    single_use: bool,
    /// Leads every request id of this run, so that a server that saw an earlier run
    /// does not take this one's requests for retries.
    run: u16,
    /// Bare signature checks by kind, for the codes among the requests.
    pub signature_checks: Vec<SignatureCheck>,
}

/// Offset of the request id in an encoded frame: after the 5-byte gRPC prefix, the tag
/// (field 1, length-delimited) and the length (16).
const REQUEST_ID_AT: usize = 7;
/// Request ids are 16 hex digits.
const REQUEST_ID_LEN: usize = 16;

impl Templates {
    /// The same requests, each from gate `gate_id` (its station and line unchanged): the
    /// load of one gate controller, as a gate certificate under mutual TLS allows.
    pub fn from_gate(mut self, gate_id: &str) -> anyhow::Result<Self> {
        for frame in &mut self.frames {
            let mut request = pb::AuthorizeRequest::decode(frame.slice(5..))?;
            if let Some(gate) = request.gate.as_mut() {
                gate.gate_id = gate_id.to_owned();
            }
            *frame = self::frame(&request);
        }
        Ok(self)
    }

    /// Encodes `count` requests (minting their codes) from `source`.
    pub fn build(source: &Source<'_>, mix: Mix, shares: Shares, count: usize, seed: u64) -> anyhow::Result<Self> {
        let now = Clock::System.now();
        let (riders, issuers, phones) = match source {
            Source::Cards => {
                anyhow::ensure!(
                    mix.codes + mix.device_codes + mix.tickets == 0,
                    "--mix: ride codes and tickets need a population (--population DIR from `ridegate load-setup`)"
                );
                let population = Population {
                    riders: 1_000,
                    seed,
                    mix: crate::population::HealthMix {
                        yellow: 0.0,
                        red: 0.0,
                        untested: 0.0,
                        no_record: 0.0,
                    },
                };
                (Riders::new(population), Vec::new(), Vec::new())
            }
            Source::Setup { dir, manifest } => {
                let riders = Riders::new(manifest.population());
                let mut issuers = Vec::new();
                let mut phones = Vec::new();
                for (id, key) in manifest.signing_keys(dir)? {
                    let kit = issuer_kit(&id, key)?;
                    if mix.device_codes > 0 {
                        phones.push(phones_of(&kit, &riders, now)?);
                    }
                    issuers.push(kit);
                }
                anyhow::ensure!(!mix.has_codes() || !issuers.is_empty(), "the manifest lists no issuers");
                (riders, issuers, phones)
            }
        };
        let generator = Generator {
            mix,
            shares,
            riders: &riders,
            issuers: &issuers,
            phones: &phones,
            jti_prefix: random_hex::<6>(),
            now,
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
        let chunk = count.div_ceil(threads).max(1);
        let frames = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let generator = &generator;
                    scope.spawn(move || {
                        let start = t * chunk;
                        let end = ((t + 1) * chunk).min(count);
                        let mut rng = Rng::new(seed ^ (t as u64).wrapping_mul(0xa076_1d64_78bd_642f));
                        (start..end)
                            .map(|k| generator.frame(&mut rng, k))
                            .collect::<anyhow::Result<Vec<Bytes>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("a minting thread panicked"))?)
                .collect::<anyhow::Result<Vec<Vec<Bytes>>>>()
        })?
        .concat();
        let signature_checks = measure_checks(&issuers, &phones, now)?;
        Ok(Self {
            frames,
            single_use: mix.has_codes(),
            run: run_tag(),
            signature_checks,
        })
    }

    /// The first request with no request id, for tools that send one body again and
    /// again (h2load `--data`): each copy is then decided afresh, where a shared request
    /// id would make every copy after the first a retry, answered from memory.
    pub fn repeatable(&self) -> Option<Bytes> {
        let template = self.frames.first()?;
        let mut request = pb::AuthorizeRequest::decode(template.get(5..)?).ok()?;
        request.request_id.clear();
        Some(frame(&request))
    }

    /// The framed request for the `k`-th call, with request id the run's tag and `k` in
    /// hex; `None` once the requests carry ride codes and all were sent (a code can be
    /// used once).
    pub fn request(&self, k: u64) -> Option<Bytes> {
        let len = self.frames.len() as u64;
        if len == 0 || (self.single_use && k >= len) {
            return None;
        }
        let template = &self.frames[(k % len) as usize];
        let mut frame = BytesMut::from(&template[..]);
        let id = format!("{:04x}{:012x}", self.run, k & 0xffff_ffff_ffff);
        frame[REQUEST_ID_AT..REQUEST_ID_AT + REQUEST_ID_LEN].copy_from_slice(id.as_bytes());
        Some(frame.freeze())
    }
}

fn issuer_kit(id: &str, key: SigningKey) -> anyhow::Result<IssuerKit> {
    let alg = key.alg();
    let verifying = VerifyingKey::from_jwk(&key.public_jwk()?)?;
    let forger = SigningKey::generate(alg, key.kid())?;
    Ok(IssuerKit {
        id: id.to_owned(),
        alg,
        minter: CodeMinter::new(id, key),
        forger: CodeMinter::new(id, forger),
        verifying,
        codes: AtomicU64::new(0),
    })
}

fn phones_of(kit: &IssuerKit, riders: &Riders, now: UnixMillis) -> anyhow::Result<Phones> {
    let device = SigningKey::generate(SigningAlg::EdDsa, "phone")?;
    let device_key = VerifyingKey::from_jwk(&device.public_jwk()?)?;
    let mut rng = Rng::new(0x0ff1_14e5);
    let phone = |who: Who, rng: &mut Rng| -> anyhow::Result<DeviceCodeMinter> {
        let rider = riders.pick(who, rng);
        let account = Population::account(&kit.id, rider);
        let cert_id = random_hex::<8>();
        let cert = kit
            .minter
            .device_certificate(&account, &cert_id, &device, now, Duration::from_secs(86_400))?;
        Ok(DeviceCodeMinter::new(cert, device.clone()))
    };
    let mut by_who = Vec::new();
    for who in [
        Who::Rider(Role::Green),
        Who::Rider(Role::Yellow),
        Who::Rider(Role::Red),
        Who::Unlinked,
    ] {
        let phones = (0..PHONES_PER_ROLE)
            .map(|_| phone(who, &mut rng))
            .collect::<anyhow::Result<Vec<_>>>()?;
        by_who.push((who, phones));
    }
    // A phone whose codes are signed by a key other than the one its certificate names.
    let certified = phone(Who::Rider(Role::Green), &mut rng)?;
    let impostor = SigningKey::generate(SigningAlg::EdDsa, "phone")?;
    let cert = certified.code("probe", now, CODE_LIFETIME)?;
    let cert = cert.split('~').next().unwrap_or_default().to_owned();
    Ok(Phones {
        by_who,
        forged: DeviceCodeMinter::new(cert, impostor),
        device_key,
        codes: AtomicU64::new(0),
    })
}

/// Times the bare signature check of each kind of code sent.
fn measure_checks(issuers: &[IssuerKit], phones: &[Phones], now: UnixMillis) -> anyhow::Result<Vec<SignatureCheck>> {
    const CHECKS: u32 = 2_000;
    let time = |key: &VerifyingKey, jws: &str| -> anyhow::Result<f64> {
        anyhow::ensure!(key.verifies(jws), "a freshly minted code does not verify");
        let started = Instant::now();
        for _ in 0..CHECKS {
            std::hint::black_box(key.verifies(std::hint::black_box(jws)));
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(CHECKS))
    };
    let mut checks = Vec::new();
    for kit in issuers {
        let codes = kit.codes.load(Ordering::Relaxed);
        if codes > 0 {
            let code = kit.minter.code("probe", "probe", now, CODE_LIFETIME)?;
            checks.push(SignatureCheck {
                what: format!("{} issuer code ({})", kit.alg, kit.id),
                codes,
                micros: time(&kit.verifying, &code)?,
            });
        }
    }
    for (kit, phones) in issuers.iter().zip(phones) {
        let codes = phones.codes.load(Ordering::Relaxed);
        if codes > 0 {
            let qr = phones.by_who[0].1[0].code("probe", now, CODE_LIFETIME)?;
            let code = qr.split('~').nth(1).context("a device code has two parts")?;
            checks.push(SignatureCheck {
                what: format!("EdDSA phone code ({})", kit.id),
                codes,
                micros: time(&phones.device_key, code)?,
            });
        }
    }
    Ok(checks)
}

struct Generator<'a> {
    mix: Mix,
    shares: Shares,
    riders: &'a Riders,
    issuers: &'a [IssuerKit],
    phones: &'a [Phones],
    jti_prefix: String,
    now: UnixMillis,
}

impl Generator<'_> {
    fn who(&self, rng: &mut Rng) -> Who {
        let u = rng.unit();
        let s = self.shares;
        if u < s.unlinked {
            Who::Unlinked
        } else if u < s.unlinked + s.yellow {
            Who::Rider(Role::Yellow)
        } else if u < s.unlinked + s.yellow + s.red {
            Who::Rider(Role::Red)
        } else {
            Who::Rider(Role::Green)
        }
    }

    fn frame(&self, rng: &mut Rng, k: usize) -> anyhow::Result<Bytes> {
        use pb::authorize_request::Credential;
        let mix = self.mix;
        let who = self.who(rng);
        let forged = rng.unit() < self.shares.forged;
        let pick = rng.below(mix.total() as usize) as u32;
        let jti = format!("{}-{k:x}", self.jti_prefix);
        let credential = if pick < mix.cards {
            let medium = if rng.unit() < 0.3 {
                pb::CardMedium::PhoneNfc
            } else {
                pb::CardMedium::Physical
            };
            Credential::Card(pb::Card {
                medium: medium.into(),
                number: Population::card_number(self.riders.pick(who, rng)),
            })
        } else if pick < mix.cards + mix.tickets {
            Credential::Ticket(pb::Ticket {
                kind: pb::TicketKind::Commemorative.into(),
                number: ticket_number(self.riders.pick(who, rng)),
            })
        } else if pick < mix.cards + mix.tickets + mix.codes {
            let kit = &self.issuers[rng.below(self.issuers.len())];
            kit.codes.fetch_add(1, Ordering::Relaxed);
            let account = Population::account(&kit.id, self.riders.pick(who, rng));
            let minter = if forged { &kit.forger } else { &kit.minter };
            Credential::RideCode(pb::RideCode {
                qr_text: minter.code(&account, &jti, self.now, CODE_LIFETIME)?,
            })
        } else {
            let phones = &self.phones[rng.below(self.phones.len())];
            phones.codes.fetch_add(1, Ordering::Relaxed);
            let phone = if forged {
                &phones.forged
            } else {
                let (_, held) = phones
                    .by_who
                    .iter()
                    .find(|(w, _)| *w == who)
                    .unwrap_or(&phones.by_who[0]);
                &held[rng.below(held.len())]
            };
            Credential::RideCode(pb::RideCode {
                qr_text: phone.code(&jti, self.now, CODE_LIFETIME)?,
            })
        };
        let direction = if rng.unit() < self.shares.exits {
            pb::Direction::Exit
        } else {
            pb::Direction::Entry
        };
        let station = k % 97;
        let request = pb::AuthorizeRequest {
            request_id: "0".repeat(REQUEST_ID_LEN),
            gate: Some(pb::GateContext {
                gate_id: format!("L{}-S{station:03}-G{:02}", station % 10, k % 12),
                station_id: format!("S{station:03}"),
                line_id: format!("L{}", station % 10),
                direction: direction.into(),
                tapped_at_unix_ms: self.now.0,
                budget_ms: 0,
            }),
            credential: Some(credential),
        };
        Ok(frame(&request))
    }
}

/// A tag that differs from one run to the next (the clock's nanoseconds).
fn run_tag() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos >> 4) as u16
}

/// `message` as one length-prefixed gRPC message.
pub(super) fn frame(message: &pb::AuthorizeRequest) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut buf = BytesMut::with_capacity(encoded.len() + 5);
    buf.put_u8(0);
    buf.put_u32(encoded.len() as u32);
    buf.put_slice(&encoded);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_bad_ones_say_why() {
        assert_eq!(
            "cards=3, tickets=1".parse::<Mix>().unwrap(),
            Mix {
                cards: 3,
                codes: 0,
                device_codes: 0,
                tickets: 1
            }
        );
        assert!("cards=x".parse::<Mix>().unwrap_err().contains("whole number"));
        assert!("bus=1".parse::<Mix>().unwrap_err().contains("unknown kind"));
        assert!("cards=0".parse::<Mix>().is_err());
    }

    #[test]
    fn card_requests_carry_their_own_request_ids_and_cycle() {
        let templates = Templates::build(&Source::Cards, "cards".parse().unwrap(), Shares::default(), 10, 1).unwrap();
        assert_eq!(templates.frames.len(), 10);
        let decode = |k| pb::AuthorizeRequest::decode(&templates.request(k).unwrap()[5..]).unwrap();
        let run = format!("{:04x}", templates.run);
        assert_eq!(decode(3).request_id, format!("{run}000000000003"));
        assert_eq!(decode(13).request_id, format!("{run}00000000000d"));
        assert_eq!(decode(13).credential, decode(3).credential, "cards cycle");
        assert!(matches!(
            decode(0).credential,
            Some(pb::authorize_request::Credential::Card(_))
        ));
    }

    #[test]
    fn one_gate_s_load_carries_its_gate_id_on_every_tap() {
        let one_gate = Templates::build(&Source::Cards, "cards".parse().unwrap(), Shares::default(), 3, 1)
            .unwrap()
            .from_gate("L10-S07-G03")
            .unwrap();
        for k in 0..3 {
            let body = one_gate.request(k).unwrap();
            let request = pb::AuthorizeRequest::decode(body.slice(5..)).unwrap();
            assert_eq!(request.gate.unwrap().gate_id, "L10-S07-G03");
        }
    }

    #[test]
    fn codes_without_a_population_are_refused() {
        let err = Templates::build(&Source::Cards, "codes".parse().unwrap(), Shares::default(), 10, 1).unwrap_err();
        assert!(err.to_string().contains("--population"), "{err}");
    }
}
