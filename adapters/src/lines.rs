//! Reading JSON-lines files (links, statuses): one buffer for the whole file, bad
//! lines counted and reported by number and reason — never by content, which may hold
//! an ID number.

use std::io::BufRead;

/// A line that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedLine {
    /// 1-based line number.
    pub line: u64,
    /// Why (never the line's content).
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Lines read (blank lines not counted).
    pub lines: u64,
    /// Entries stored.
    pub imported: u64,
    /// Lines rejected, in total.
    pub rejected: u64,
    /// The first rejected lines, with reasons (at most [`ImportReport::KEPT_REJECTIONS`]).
    pub first_rejections: Vec<RejectedLine>,
}

impl ImportReport {
    /// How many rejections are kept with their reasons.
    pub const KEPT_REJECTIONS: usize = 100;

    pub(crate) fn reject(&mut self, line: u64, reason: String) {
        self.rejected += 1;
        if self.first_rejections.len() < Self::KEPT_REJECTIONS {
            self.first_rejections.push(RejectedLine { line, reason });
        }
    }
}

/// Calls `handle` for each non-blank line, reusing one buffer.
pub(crate) fn for_each_line(
    mut reader: impl BufRead,
    mut handle: impl FnMut(u64, &str, &mut ImportReport),
) -> std::io::Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut buf = String::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_line(&mut buf)? == 0 {
            return Ok(report);
        }
        line_no += 1;
        let text = buf.trim();
        if text.is_empty() {
            continue;
        }
        report.lines += 1;
        handle(line_no, text, &mut report);
    }
}

/// A JSON error without the offending input (which may hold an ID number).
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            // serde's data messages name fields and expected types, not values, except
            // for "unknown variant `x`" where x is a key we control the set of.
            let msg = e.to_string();
            match msg.find(" at line ") {
                Some(at) => msg[..at].to_owned(),
                None => msg,
            }
        }
        Category::Syntax | Category::Eof => format!("not valid JSON (column {})", e.column()),
        Category::Io => "read error".into(),
    }
}
