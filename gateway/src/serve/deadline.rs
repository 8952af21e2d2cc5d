//! Owning the deadline: read the caller's `grpc-timeout`, keep a margin, and answer
//! before it. tonic cancels a call at its deadline; ridegate must have answered by then.

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// When to answer, given the caller's budget.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Budget when the caller gives none.
    pub default_budget: Duration,
    /// How long before the caller's deadline to answer.
    pub margin: Duration,
}

impl Deadlines {
    /// The time by which a tap received at `received` must be answered: the smallest
    /// budget the caller gave (`grpc-timeout`, the request's own `budget_ms`), less the
    /// margin — but never less than half the budget, so a tight budget still leaves
    /// time to decide.
    pub fn answer_by(&self, received: Instant, grpc_timeout: Option<Duration>, requested: Option<Duration>) -> Instant {
        let budget = grpc_timeout
            .into_iter()
            .chain(requested)
            .min()
            .unwrap_or(self.default_budget);
        received + budget.saturating_sub(self.margin).max(budget / 2)
    }
}

/// The caller's `grpc-timeout`, if present and well-formed (1–8 digits and a unit
/// `H`, `M`, `S`, `m`, `u` or `n`, per the gRPC HTTP/2 protocol).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` header's value, as [`grpc_timeout`] reads it.
pub(super) fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", value.parse().unwrap());
        m
    }

    #[test]
    fn parses_every_unit_and_rejects_malformed_values() {
        assert_eq!(grpc_timeout(&metadata("200m")), Some(Duration::from_millis(200)));
        assert_eq!(grpc_timeout(&metadata("1S")), Some(Duration::from_secs(1)));
        assert_eq!(grpc_timeout(&metadata("2M")), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(&metadata("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&metadata("500u")), Some(Duration::from_micros(500)));
        assert_eq!(
            grpc_timeout(&metadata("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "10x", "-5m", "1.5S"] {
            assert_eq!(grpc_timeout(&metadata(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn answers_a_margin_before_the_smallest_budget_but_never_before_half_of_it() {
        let d = Deadlines {
            default_budget: Duration::from_millis(200),
            margin: Duration::from_millis(20),
        };
        let t = Instant::now();
        assert_eq!(d.answer_by(t, None, None) - t, Duration::from_millis(180));
        assert_eq!(
            d.answer_by(t, Some(Duration::from_millis(100)), None) - t,
            Duration::from_millis(80)
        );
        assert_eq!(
            d.answer_by(t, Some(Duration::from_millis(100)), Some(Duration::from_millis(50))) - t,
            Duration::from_millis(30)
        );
        assert_eq!(
            d.answer_by(t, Some(Duration::from_millis(10)), None) - t,
            Duration::from_millis(5)
        );
    }
}
