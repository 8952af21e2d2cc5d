//! Text forms of what the shared tier holds and streams: a health status is
//! `<colour>:<set_at ms>:<negative test ms or 0>`, the same in a status key and in a
//! change-stream entry, so [`super::changes`] and the Redis health store share it.

use ridegate_core::model::{Colour, HealthStatus, UnixMillis};

/// The text form of a status.
pub(crate) fn encode_status(status: &HealthStatus) -> String {
    let colour = match status.colour {
        Colour::Green => 'g',
        Colour::Yellow => 'y',
        Colour::Red => 'r',
    };
    format!(
        "{colour}:{}:{}",
        status.set_at.0,
        status.negative_test_at.map_or(0, |t| t.0)
    )
}

/// A status from its text form.
pub(crate) fn decode_status(text: &str) -> Option<HealthStatus> {
    let mut parts = text.split(':');
    let colour = match parts.next()? {
        "g" => Colour::Green,
        "y" => Colour::Yellow,
        "r" => Colour::Red,
        _ => return None,
    };
    let set_at = UnixMillis(parts.next()?.parse().ok()?);
    let tested: i64 = parts.next()?.parse().ok()?;
    Some(HealthStatus {
        colour,
        set_at,
        negative_test_at: (tested > 0).then_some(UnixMillis(tested)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_text_form() {
        for status in [
            HealthStatus {
                colour: Colour::Green,
                set_at: UnixMillis(1_654_732_800_000),
                negative_test_at: Some(UnixMillis(5)),
            },
            HealthStatus {
                colour: Colour::Red,
                set_at: UnixMillis(7),
                negative_test_at: None,
            },
        ] {
            assert_eq!(decode_status(&encode_status(&status)), Some(status));
        }
        assert_eq!(decode_status("x:1:0"), None);
        assert_eq!(decode_status("g:abc:0"), None);
    }
}
