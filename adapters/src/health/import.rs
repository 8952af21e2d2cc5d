//! Loading statuses from JSON lines: the embedded source's file. One object a line:
//!
//! ```json
//! {"id_number": "11010519491231002X", "colour": "green", "set_at_unix_ms": 1654732800000, "negative_test_at_unix_ms": 1654700000000}
//! {"identity": "8f0c…(32 hex)", "colour": "red", "set_at_unix_ms": 1654732800000}
//! ```

use std::io::BufRead;

use serde::Deserialize;

use crate::ids::{IdentityId, Pseudonymizer};
use crate::lines::{ImportReport, for_each_line, json_error};
use ridegate_core::model::{Colour, HealthStatus, UnixMillis};

/// One line of a statuses file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusLine {
    #[serde(default)]
    id_number: Option<String>,
    #[serde(default)]
    identity: Option<IdentityId>,
    colour: Colour,
    set_at_unix_ms: i64,
    #[serde(default)]
    negative_test_at_unix_ms: Option<i64>,
}

impl StatusLine {
    /// The identity and status this line sets, or why it cannot be used.
    pub fn resolve(&self, pseudonymizer: &Pseudonymizer) -> Result<(IdentityId, HealthStatus), String> {
        let identity = pseudonymizer
            .subject(self.id_number.as_deref(), self.identity)
            .map_err(|e| e.to_string())?;
        if self.set_at_unix_ms <= 0 {
            return Err("set_at_unix_ms must be a positive time".into());
        }
        let status = HealthStatus {
            colour: self.colour,
            set_at: UnixMillis(self.set_at_unix_ms),
            negative_test_at: self.negative_test_at_unix_ms.filter(|t| *t > 0).map(UnixMillis),
        };
        Ok((identity, status))
    }
}

/// Reads statuses from `reader` and hands each good one to `store` with its 1-based
/// line number.
pub fn read_statuses(
    reader: impl BufRead,
    pseudonymizer: &Pseudonymizer,
    mut store: impl FnMut(u64, IdentityId, HealthStatus),
) -> std::io::Result<ImportReport> {
    for_each_line(reader, |line_no, text, report| {
        match serde_json::from_str::<StatusLine>(text) {
            Ok(line) => match line.resolve(pseudonymizer) {
                Ok((identity, status)) => {
                    store(line_no, identity, status);
                    report.imported += 1;
                }
                Err(reason) => report.reject(line_no, reason),
            },
            Err(e) => report.reject(line_no, json_error(&e)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::synthetic_resident_id;

    #[test]
    fn reads_statuses_and_rejects_bad_lines() {
        let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let file = format!(
            "{{\"id_number\": \"{}\", \"colour\": \"red\", \"set_at_unix_ms\": 5}}\n\
             {{\"id_number\": \"{}\", \"colour\": \"purple\", \"set_at_unix_ms\": 5}}\n\
             {{\"identity\": \"{}\", \"colour\": \"green\", \"set_at_unix_ms\": 5, \"negative_test_at_unix_ms\": 3}}\n\
             {{\"colour\": \"green\", \"set_at_unix_ms\": 5}}\n",
            synthetic_resident_id(1),
            synthetic_resident_id(2),
            "0f".repeat(16),
        );
        let mut got = Vec::new();
        let report = read_statuses(file.as_bytes(), &p, |_, i, s| got.push((i, s))).unwrap();
        assert_eq!((report.imported, report.rejected), (2, 2));
        assert!(
            report.first_rejections[0].reason.contains("unknown variant"),
            "{:?}",
            report.first_rejections
        );
        assert_eq!(got[1].1.negative_test_at, Some(UnixMillis(3)));
        assert_eq!(got[0].1.colour, Colour::Red);
    }
}
