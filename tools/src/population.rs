//! A synthetic population that the health-platform simulator, the load tool, benchmarks
//! and tests agree on without exchanging files: rider `n` has a made-up but valid
//! resident ID number, a card number and ride accounts derived from `n`, and a
//! health-code role drawn from a hash of `(seed, n)`. Given the same seed and shares,
//! every process computes the same riders.

use ridegate_adapters::ids::{IdentityId, Pseudonymizer, ResidentId, synthetic_resident_id};
use ridegate_core::model::{Colour, HealthStatus, UnixMillis};

const HOUR_MS: i64 = 3_600_000;

/// What a rider's health code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Green, with a negative test within the last two days.
    Green,
    /// Yellow.
    Yellow,
    /// Red.
    Red,
    /// Green, but no negative test on record.
    Untested,
    /// The platform has no record of the rider.
    NoRecord,
}

/// Shares of the population by role; the rest is [`Role::Green`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HealthMix {
    /// Share of yellow codes.
    pub yellow: f64,
    /// Share of red codes.
    pub red: f64,
    /// Share of green codes without a negative test.
    pub untested: f64,
    /// Share of riders the platform has no record of.
    pub no_record: f64,
}

impl Default for HealthMix {
    fn default() -> Self {
        Self {
            yellow: 0.02,
            red: 0.01,
            untested: 0.01,
            no_record: 0.01,
        }
    }
}

impl HealthMix {
    /// Checks that each share is in 0–1 and that they add up to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let shares = [self.yellow, self.red, self.untested, self.no_record];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || shares.iter().sum::<f64>() > 1.0 {
            return Err("health shares must each be between 0 and 1 and add up to at most 1".into());
        }
        Ok(())
    }
}

/// `riders` synthetic riders, numbered `0..riders`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Population {
    /// How many riders.
    pub riders: u64,
    /// Seed of the role draw.
    pub seed: u64,
    /// Shares by role.
    pub mix: HealthMix,
}

/// Most riders a population may have (resident ID numbers stay distinct below this).
pub const MAX_RIDERS: u64 = 1_000_000_000;

impl Population {
    /// Rider `n`'s resident ID number.
    pub fn resident_id(n: u64) -> String {
        synthetic_resident_id(n)
    }

    /// Rider `n`'s pseudonym under `pseudonymizer`'s secret.
    pub fn identity(pseudonymizer: &Pseudonymizer, n: u64) -> IdentityId {
        match ResidentId::parse(&synthetic_resident_id(n)) {
            Ok(id) => pseudonymizer.identity(&id),
            // synthetic_resident_id only makes valid numbers; keep going regardless.
            Err(_) => IdentityId([0; 16]),
        }
    }

    /// Rider `n`'s transit card number.
    pub fn card_number(n: u64) -> String {
        format!("2000{n:012}")
    }

    /// Rider `n`'s account at a ride-code issuer.
    pub fn account(issuer: &str, n: u64) -> String {
        format!("{issuer}-{n:010}")
    }

    /// Rider `n`'s role.
    pub fn role(&self, n: u64) -> Role {
        let u = unit(self.seed, n);
        let HealthMix {
            yellow,
            red,
            untested,
            no_record,
        } = self.mix;
        if u < red {
            Role::Red
        } else if u < red + yellow {
            Role::Yellow
        } else if u < red + yellow + untested {
            Role::Untested
        } else if u < red + yellow + untested + no_record {
            Role::NoRecord
        } else {
            Role::Green
        }
    }

    /// Rider `n`'s status as the platform holds it at `now`; `None` for no record.
    pub fn status(&self, n: u64, now: UnixMillis) -> Option<HealthStatus> {
        let set_at = now.plus_ms(-24 * HOUR_MS);
        let (colour, negative_test_at) = match self.role(n) {
            Role::NoRecord => return None,
            // Tested between 1 and 24 hours ago.
            Role::Green => (Colour::Green, Some(now.plus_ms(-HOUR_MS * (1 + (n % 24) as i64)))),
            Role::Untested => (Colour::Green, None),
            Role::Yellow => (Colour::Yellow, None),
            Role::Red => (Colour::Red, None),
        };
        Some(HealthStatus {
            colour,
            set_at,
            negative_test_at,
        })
    }

    /// The first rider with `role`, if any.
    pub fn first(&self, role: Role) -> Option<u64> {
        (0..self.riders).find(|n| self.role(*n) == role)
    }
}

/// A number in `[0, 1)` drawn from `(seed, n)`.
pub fn unit(seed: u64, n: u64) -> f64 {
    (draw(seed, n) >> 11) as f64 / (1u64 << 53) as f64
}

/// A 64-bit number drawn from `(seed, n)` (SplitMix64's mixer): deterministic, well spread.
pub fn draw(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_shares_and_the_seed() {
        let population = Population {
            riders: 100_000,
            seed: 7,
            mix: HealthMix::default(),
        };
        let count = |role| (0..population.riders).filter(|n| population.role(*n) == role).count() as f64;
        let share = |role| count(role) / population.riders as f64;
        assert!((share(Role::Yellow) - 0.02).abs() < 0.003);
        assert!((share(Role::Red) - 0.01).abs() < 0.003);
        assert!((share(Role::Green) - 0.95).abs() < 0.005);
        let reseeded = Population { seed: 8, ..population };
        assert!((0..1_000).any(|n| population.role(n) != reseeded.role(n)));
        assert_eq!(population.role(12_345), population.role(12_345));
    }

    #[test]
    fn statuses_match_roles() {
        let population = Population {
            riders: 10_000,
            seed: 1,
            mix: HealthMix::default(),
        };
        let now = UnixMillis(1_900_000_000_000);
        let red = population.first(Role::Red).unwrap();
        assert_eq!(population.status(red, now).unwrap().colour, Colour::Red);
        let none = population.first(Role::NoRecord).unwrap();
        assert_eq!(population.status(none, now), None);
        let green = population.first(Role::Green).unwrap();
        let status = population.status(green, now).unwrap();
        assert!(status.negative_test_at.is_some_and(|t| now.since(t) <= 24 * HOUR_MS));
    }

    #[test]
    fn bad_shares_are_refused() {
        let mix = HealthMix {
            yellow: 0.6,
            red: 0.6,
            ..HealthMix::default()
        };
        assert!(mix.validate().is_err());
        assert!(HealthMix::default().validate().is_ok());
    }
}
