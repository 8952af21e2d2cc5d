//! Bulk import of links from JSON lines, for demos and migrations. One object a line:
//!
//! ```json
//! {"ride_account": {"issuer": "alipay", "account": "2088000000000001"}, "id_number": "11010519491231002X"}
//! {"card": {"number": "1000754312345678"}, "identity": "8f0c…(32 hex)"}
//! {"ticket": {"kind": "commemorative", "number": "CM-2022-0001"}, "id_number": "…"}
//! ```
//!
//! Each line names one credential and either the ID number (validated, then turned into
//! the pseudonym at once) or the pseudonym itself. A bad line is reported by its number
//! and reason — never by its content — and the rest are imported.

use std::io::BufRead;
use std::sync::Arc;

use serde::Deserialize;

use super::{Consent, LinkRecord, LinkTarget};
use crate::caller::CallerKind;
use crate::ids::{CredentialId, IdentityId, Pseudonymizer};
use crate::lines::{ImportReport, for_each_line, json_error};
use ridegate_core::credential::{CardMedium, TicketKind};
use ridegate_core::model::UnixMillis;

/// The caller id that links from a file are recorded as made by.
pub const FILE_CALLER: &str = "links-file";

/// One line of a links file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkLine {
    #[serde(flatten)]
    credential: CredentialLine,
    #[serde(default)]
    id_number: Option<String>,
    #[serde(default)]
    identity: Option<IdentityId>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CredentialLine {
    RideAccount {
        issuer: String,
        account: String,
    },
    Card {
        number: String,
        #[serde(default = "physical")]
        medium: CardMedium,
    },
    Ticket {
        kind: TicketKind,
        number: String,
    },
}

fn physical() -> CardMedium {
    CardMedium::Physical
}

impl LinkLine {
    /// The credential this line links and its record (made by the back end, on a bulk
    /// programme's consent, at `now`), or why it cannot be used.
    pub fn resolve(
        &self,
        pseudonymizer: &Pseudonymizer,
        now: UnixMillis,
    ) -> Result<(CredentialId, LinkRecord), String> {
        let target = match &self.credential {
            CredentialLine::RideAccount { issuer, account } => LinkTarget::ride_account(issuer, account),
            CredentialLine::Card { number, medium } => LinkTarget::card(*medium, number),
            CredentialLine::Ticket { kind, number } => LinkTarget::ticket(*kind, number),
        }
        .map_err(|e| e.to_string())?;
        let identity = pseudonymizer
            .subject(self.id_number.as_deref(), self.identity)
            .map_err(|e| e.to_string())?;
        let record = LinkRecord {
            identity,
            class: target.class(),
            issuer: target.issuer().map(Arc::from),
            tail: target.tail(),
            linked_at: now,
            linked_by: CallerKind::BackEnd,
            caller_id: Arc::from(FILE_CALLER),
            staff_operator_id: None,
            consent: Consent::BulkProgramme,
            valid_until: None,
        };
        Ok((pseudonymizer.credential(&target.key()), record))
    }
}

/// Reads links from `reader` and hands each good one to `store` with its 1-based line
/// number, which may refuse it (the store's rules) with a reason. I/O errors end the import with an error; bad or
/// refused lines are counted and reported by number.
pub fn read_links(
    reader: impl BufRead,
    pseudonymizer: &Pseudonymizer,
    now: UnixMillis,
    mut store: impl FnMut(u64, CredentialId, LinkRecord) -> Result<(), String>,
) -> std::io::Result<ImportReport> {
    for_each_line(reader, |line_no, text, report| {
        let outcome = serde_json::from_str::<LinkLine>(text)
            .map_err(|e| json_error(&e))
            .and_then(|line| line.resolve(pseudonymizer, now))
            .and_then(|(credential, record)| store(line_no, credential, record));
        match outcome {
            Ok(()) => report.imported += 1,
            Err(reason) => report.reject(line_no, reason),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::synthetic_resident_id;

    #[test]
    fn imports_good_lines_and_reports_bad_ones_by_number_without_content() {
        let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let id = synthetic_resident_id(1);
        let file = format!(
            "{{\"card\": {{\"number\": \"1000754312345678\"}}, \"id_number\": \"{id}\"}}\n\
             \n\
             {{\"ride_account\": {{\"issuer\": \"alipay\", \"account\": \"2088\"}}, \"id_number\": \"{id}\"}}\n\
             {{\"card\": {{\"number\": \"1234\"}}, \"id_number\": \"{id}\"}}\n\
             {{\"card\": {{\"number\": \"10007543123456789\"}}, \"id_number\": \"110105194912310021\"}}\n\
             not json at all\n\
             {{\"ticket\": {{\"kind\": \"commemorative\", \"number\": \"CM-1\"}}, \"identity\": \"{}\"}}\n\
             {{\"card\": {{\"number\": \"10007543123456789\"}}}}\n",
            "ab".repeat(16)
        );
        let mut stored = Vec::new();
        let report = read_links(file.as_bytes(), &p, UnixMillis(5), |_, c, r| {
            stored.push((c, r.identity));
            Ok(())
        })
        .unwrap();
        assert_eq!((report.lines, report.imported, report.rejected), (7, 3, 4));
        let lines: Vec<u64> = report.first_rejections.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 8]);
        for r in &report.first_rejections {
            assert!(!r.reason.contains("1949") && !r.reason.contains(&id), "{r:?}");
        }
        assert!(
            report.first_rejections[1].reason.contains("check digit"),
            "{:?}",
            report.first_rejections[1]
        );
        assert_eq!(stored[0].1, stored[1].1, "same person, two credentials");
    }
}
