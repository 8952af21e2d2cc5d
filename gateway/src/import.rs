//! The start-up import into the shared tier: every row written with retries, every row
//! that did not land reported with its line number and reason, and the import failed —
//! so `serve` exits non-zero — unless every row landed or was refused by the store's
//! own rules (a credential linked to another rider).
//!
//! A busy CPU makes Redis commands time out, and timeouts in a row mark Redis down, so
//! without retries a start-up import under load drops rows by the hundred thousand.
//! The files are read (and bad lines reported) before anything binds; the rows are
//! written while the server runs, since Redis may not be up yet. Until they have all
//! landed, `ridegate.v1.Gate` reports NOT_SERVING (the instance is not ready) and
//! answers are marked degraded: a half-imported Redis would call riders on the missing
//! rows "not linked".

use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use ridegate_adapters::health::Applied;
use ridegate_adapters::ids::{CredentialId, IdentityId};
use ridegate_adapters::lines::ImportReport;
use ridegate_adapters::link::{LinkError, LinkRecord, LinkStore as _};
use ridegate_adapters::shared::{SharedError, SharedTier};
use ridegate_core::model::HealthStatus;
use tokio::time::Instant;

use crate::stores::{LinkBackend, StatusSource, StoreError};

/// Writes kept in flight.
const CONCURRENCY: usize = 64;
/// The wait before the second attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What a failed row write means for the import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowFailure {
    /// The store's own rules refused the row: reported, the rest imported.
    Refused,
    /// The store could not answer: try again.
    Transient,
    /// The store failed in a way trying again will not fix: the import fails.
    Fatal,
}

/// Classifies a row write's error.
pub(crate) trait Classify {
    /// What the error means for the import.
    fn classify(&self) -> RowFailure;
}

fn shared(e: &SharedError) -> RowFailure {
    match e {
        SharedError::Down | SharedError::Timeout | SharedError::Connection(_) | SharedError::DataLost => {
            RowFailure::Transient
        }
        SharedError::Rejected(_) | SharedError::Config(_) => RowFailure::Fatal,
    }
}

impl Classify for LinkError {
    fn classify(&self) -> RowFailure {
        match self {
            Self::LinkedToAnother | Self::SecondCard { .. } => RowFailure::Refused,
            Self::Unavailable(e) => shared(e),
            Self::Unreadable(_) => RowFailure::Fatal,
            // The durable embedded store is never behind a shared-tier import; were it,
            // a failed commit may succeed when sent again.
            Self::Storage(_) => RowFailure::Transient,
        }
    }
}

impl Classify for StoreError {
    fn classify(&self) -> RowFailure {
        match self {
            Self::Unavailable(e) | Self::Refused(e) => shared(e),
            Self::NotKept(_) => RowFailure::Transient,
        }
    }
}

/// The import could not write every row; each row is in the log with its reason.
#[derive(Debug, thiserror::Error)]
#[error(
    "{field}: {failed} of {rows} rows could not be written to the shared tier (each is logged with its line \
     and reason; transient failures were retried until redis.import_timeout)"
)]
pub struct ImportFailed {
    /// The setting naming the file (`links.file`).
    pub field: &'static str,
    /// Rows that did not land.
    pub failed: u64,
    /// Rows read.
    pub rows: u64,
}

/// A file's rows by 1-based line number, and what reading it found.
pub(crate) type Rows<T> = (Vec<(u64, T)>, ImportReport);

/// The rows of the data files, read and waiting to be written into the shared tier.
pub(crate) struct StartupImport {
    /// `links.file`.
    pub(crate) links: Option<Rows<(CredentialId, LinkRecord)>>,
    /// `health.file`.
    pub(crate) statuses: Option<Rows<(IdentityId, HealthStatus)>>,
}

impl StartupImport {
    /// Writes every row by `deadline`, then logs what each file's import did.
    pub(crate) async fn run(
        self,
        tier: &SharedTier,
        links: &LinkBackend,
        status_source: &StatusSource,
        deadline: Instant,
    ) -> Result<(), ImportFailed> {
        if let Some((rows, mut report)) = self.links {
            let outcome = write_rows(
                "links.file",
                Some(tier),
                rows,
                &mut report,
                deadline,
                |(c, record)| async move { links.link(c, record).await.map(drop) },
            )
            .await;
            log_import("links", &report);
            outcome?;
        }
        if let Some((rows, mut report)) = self.statuses {
            let outcome = write_rows(
                "health.file",
                Some(tier),
                rows,
                &mut report,
                deadline,
                |(i, s)| async move { status_source.put(i, s).await.map(|_: Applied| ()) },
            )
            .await;
            log_import("health statuses", &report);
            outcome?;
        }
        Ok(())
    }
}

/// Logs what an import did: counts, then each rejected line kept with its reason.
pub(crate) fn log_import(what: &str, report: &ImportReport) {
    tracing::info!(
        lines = report.lines,
        imported = report.imported,
        rejected = report.rejected,
        "{what} imported"
    );
    for rejection in &report.first_rejections {
        tracing::warn!(line = rejection.line, reason = %rejection.reason, "{what}: line rejected");
    }
    let kept = report.first_rejections.len() as u64;
    if report.rejected > kept {
        tracing::warn!(
            more = report.rejected - kept,
            "{what}: further lines rejected (those refused by the store are logged each with its reason above)"
        );
    }
}

/// Writes `rows` (line number, row) with `write`, retrying transient failures until
/// `deadline` and probing `tier` between attempts. Refused rows are counted as rejected
/// in `report`; every row that did not land is logged with its line and reason.
pub(crate) async fn write_rows<T, E, F, Fut>(
    field: &'static str,
    tier: Option<&SharedTier>,
    rows: Vec<(u64, T)>,
    report: &mut ImportReport,
    deadline: Instant,
    write: F,
) -> Result<(), ImportFailed>
where
    T: Clone,
    E: Classify + std::error::Error,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let total = rows.len() as u64;
    let write = &write;
    let mut outcomes = futures::stream::iter(rows)
        .map(|(line, row)| async move { (line, write_one(tier, row, deadline, write).await) })
        .buffer_unordered(CONCURRENCY);
    let mut failed = 0u64;
    while let Some((line, outcome)) = outcomes.next().await {
        let Err((e, failure)) = outcome else { continue };
        report.imported -= 1;
        report.rejected += 1;
        let reason = chain(&e);
        if failure == RowFailure::Refused {
            tracing::warn!(line, %reason, "{field}: line rejected");
        } else {
            failed += 1;
            tracing::error!(line, %reason, "{field}: line could not be written to the shared tier");
        }
    }
    if failed > 0 {
        return Err(ImportFailed {
            field,
            failed,
            rows: total,
        });
    }
    Ok(())
}

async fn write_one<T, E, F, Fut>(
    tier: Option<&SharedTier>,
    row: T,
    deadline: Instant,
    write: &F,
) -> Result<(), (E, RowFailure)>
where
    T: Clone,
    E: Classify,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let e = match write(row.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let failure = e.classify();
        if failure != RowFailure::Transient || Instant::now() + backoff > deadline {
            return Err((e, failure));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if let Some(tier) = tier
            && !tier.is_up()
        {
            tier.probe().await;
        }
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0:?}")]
    struct Failing(RowFailure);

    impl Classify for Failing {
        fn classify(&self) -> RowFailure {
            self.0
        }
    }

    fn report(rows: u64) -> ImportReport {
        ImportReport {
            lines: rows,
            imported: rows,
            ..ImportReport::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_the_row_lands() {
        let attempts = Mutex::new(0u32);
        let mut report = report(1);
        let deadline = Instant::now() + Duration::from_secs(60);
        write_rows("links.file", None, vec![(1, ())], &mut report, deadline, |()| {
            let mut n = attempts.lock().unwrap();
            *n += 1;
            let outcome = if *n < 20 {
                Err(Failing(RowFailure::Transient))
            } else {
                Ok(())
            };
            async move { outcome }
        })
        .await
        .unwrap();
        assert_eq!(*attempts.lock().unwrap(), 20);
        assert_eq!((report.imported, report.rejected), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn rows_that_never_land_fail_the_import_and_refused_rows_do_not() {
        let mut report = report(4);
        let rows = vec![
            (1, RowFailure::Transient),
            (2, RowFailure::Refused),
            (3, RowFailure::Fatal),
            (4, RowFailure::Refused),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = write_rows("links.file", None, rows, &mut report, deadline, |failure| async move {
            Err::<(), _>(Failing(failure))
        })
        .await
        .unwrap_err();
        assert_eq!((err.failed, err.rows), (2, 4));
        assert!(err.to_string().starts_with("links.file: 2 of 4 rows"), "{err}");
        assert_eq!((report.imported, report.rejected), (0, 4));

        let mut report = self::report(2);
        let refused = vec![(1, RowFailure::Refused), (2, RowFailure::Refused)];
        write_rows(
            "links.file",
            None,
            refused,
            &mut report,
            deadline,
            |failure| async move { Err::<(), _>(Failing(failure)) },
        )
        .await
        .unwrap();
        assert_eq!((report.imported, report.rejected), (0, 2));
    }

    #[test]
    fn only_unanswered_commands_are_transient() {
        assert_eq!(LinkError::LinkedToAnother.classify(), RowFailure::Refused);
        assert_eq!(
            LinkError::Unavailable(SharedError::Timeout).classify(),
            RowFailure::Transient
        );
        assert_eq!(
            LinkError::Unavailable(SharedError::Down).classify(),
            RowFailure::Transient
        );
        assert_eq!(LinkError::Unreadable("x").classify(), RowFailure::Fatal);
        let refused = SharedError::Rejected(redis::RedisError::from((redis::ErrorKind::Client, "refused")));
        assert_eq!(StoreError::Refused(refused).classify(), RowFailure::Fatal);
    }
}
