//! A closed period's exports, its invoices or its reconciliation report as JSON or CSV, read from
//! the ledger a page of rows at a time and written as they are read: an export of a close of a
//! million invoices holds one page, not the close. The bytes are the same however the rows are
//! paged: JSON as `serde_json`'s pretty printer writes the whole list (and a newline), CSV with
//! its header once. A period not closed, and a failure to read the first page, are known before
//! the answer's head is sent; a later failure cuts the answer short (a client sees a body that
//! ended early, the server logs it). The pages are read as the client takes them, one ledger
//! read at a time, holding no connection between them.

use crate::ledger::ReportRow;
pub use crate::ledger::{Page, Rows};
use crate::{Error, Ledger};
use meter_rater::Invoice;
use meter_schemas::Period;
use meter_schemas::period::format_time;
use serde::Serialize;

/// How an export is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A pretty-printed JSON list.
    Json,
    /// CSV with a header: for invoices one row per line, with its lineage.
    Csv,
}

/// Rows read from the ledger at a time: a thousand invoices are a few megabytes.
pub const PAGE: usize = 1_000;

/// A recorded close's rows read a page at a time (a close recorded before its rows were kept
/// apart comes whole, in one page): what the exports, the invoice search and the
/// reconciliation's report walk, so that none of them reads the whole close.
pub struct Pages {
    ledger: Ledger,
    period: Period,
    rows: Rows,
    page: usize,
    /// Where the next page starts among the close's rows.
    from: usize,
    /// The page read by [`Pages::open`], given first.
    first: Option<Page>,
    /// A short page was given: it was the close's last.
    done: bool,
}

impl Pages {
    /// `period`'s `rows`, `page` at a time (at least one); `None` when `period` is not closed.
    pub async fn open(ledger: &Ledger, period: Period, rows: Rows, page: usize) -> Result<Option<Pages>, Error> {
        let page = page.max(1);
        let Some(first) = ledger.close_rows(period, rows, 0, page).await? else { return Ok(None) };
        Ok(Some(Pages {
            ledger: ledger.clone(),
            period,
            rows,
            page,
            from: first.len(),
            first: Some(first),
            done: false,
        }))
    }

    /// The next page, or `None` after the last (a page shorter than asked, possibly empty).
    pub async fn next(&mut self) -> Result<Option<Page>, Error> {
        if self.done {
            return Ok(None);
        }
        let page = match self.first.take() {
            Some(first) => first,
            None => {
                let gone = || Error::Corrupt(format!("the close of {} went away while it was read", self.period));
                let page =
                    self.ledger.close_rows(self.period, self.rows, self.from, self.page).await?.ok_or_else(gone)?;
                self.from += page.len();
                page
            }
        };
        self.done = page.len() < self.page;
        Ok(Some(page))
    }

    /// Whether the page last given was the last.
    pub fn done(&self) -> bool {
        self.done
    }
}

/// An export being written: [`Export::next`] gives its bytes a page at a time.
pub struct Export {
    pages: Pages,
    writer: Writer,
}

impl Export {
    /// The export of `period`'s `rows` in `format`; `None` when `period` is not closed.
    pub async fn open(ledger: &Ledger, period: Period, rows: Rows, format: Format) -> Result<Option<Export>, Error> {
        Self::open_paged(ledger, period, rows, format, PAGE).await
    }

    /// The same, reading `page` rows at a time (at least one).
    pub async fn open_paged(
        ledger: &Ledger,
        period: Period,
        rows: Rows,
        format: Format,
        page: usize,
    ) -> Result<Option<Export>, Error> {
        let pages = Pages::open(ledger, period, rows, page).await?;
        Ok(pages.map(|pages| Export { pages, writer: Writer::new(format) }))
    }

    /// The next piece of the export, or `None` once it is all written. Every piece but the last
    /// holds a page of rows.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let Some(page) = self.pages.next().await? else { return Ok(None) };
        let mut out = Vec::new();
        self.writer.page(&mut out, &page)?;
        if self.pages.done() {
            self.writer.end(&mut out);
        }
        Ok(Some(out))
    }

    /// The whole export in memory (tests, and exports known to be small).
    pub async fn collect(mut self) -> Result<Vec<u8>, Error> {
        let mut all = Vec::new();
        while let Some(piece) = self.next().await? {
            all.extend_from_slice(&piece);
        }
        Ok(all)
    }
}

/// Writes a list of rows in a format a page at a time: the same bytes however it is paged.
/// The one owner of an export's framing (a JSON list's brackets, a CSV header).
pub struct Writer {
    format: Format,
    /// Rows written so far.
    written: usize,
}

impl Writer {
    /// A list not yet begun.
    pub fn new(format: Format) -> Self {
        Writer { format, written: 0 }
    }

    /// Appends `page`'s rows to `out`, opening the list with the first.
    pub fn page(&mut self, out: &mut Vec<u8>, page: &Page) -> Result<(), Error> {
        let start = self.written == 0;
        match (page, self.format) {
            (Page::Invoices(p), Format::Json) => json_items(out, p, start)?,
            (Page::Report(p), Format::Json) => json_items(out, p, start)?,
            (Page::Invoices(p), Format::Csv) => invoice_rows(out, p, start),
            (Page::Report(p), Format::Csv) => report_rows(out, p, start),
        }
        self.written += page.len();
        Ok(())
    }

    /// Ends the list: a JSON list's closing bracket (or `[]` when it had no row) and newline.
    pub fn end(&self, out: &mut Vec<u8>) {
        if self.format == Format::Json {
            out.extend_from_slice(if self.written == 0 { b"[]\n" } else { b"\n]\n" });
        }
    }
}

/// `rows` written whole, in one page (a list held in memory).
pub fn whole(rows: &Page, format: Format) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut w = Writer::new(format);
    w.page(&mut out, rows)?;
    w.end(&mut out);
    Ok(out)
}

/// `items` as the middle of a pretty-printed JSON list: `serde_json` writes each element of a
/// list the same whatever its neighbours, so a page's list without its brackets, pages joined
/// by `,\n`, is the whole list's middle. Opens the list when `start`.
fn json_items<T: Serialize>(out: &mut Vec<u8>, items: &[T], start: bool) -> Result<(), Error> {
    if items.is_empty() {
        return Ok(());
    }
    let list = serde_json::to_vec_pretty(items)?;
    out.extend_from_slice(if start { b"[\n" } else { b",\n" });
    // `[\n` … `\n]`.
    out.extend_from_slice(&list[2..list.len() - 2]);
    Ok(())
}

/// Invoices as CSV, one row per line with its lineage, after the header when `header`.
fn invoice_rows(out: &mut Vec<u8>, invoices: &[Invoice], header: bool) {
    let mut w = csv::Writer::from_writer(out);
    if header {
        w.write_record([
            "invoice_id",
            "tenant",
            "subscription",
            "period",
            "currency",
            "price_version",
            "line_id",
            "kind",
            "meter",
            "quantity",
            "amount",
            "description",
            "watermark",
            "inputs_hash",
        ])
        .expect("writing to memory");
    }
    for inv in invoices {
        for l in &inv.lines {
            let kind = serde_json::to_value(l.kind).expect("a kind serializes");
            w.write_record([
                inv.id.as_str(),
                &inv.tenant,
                &inv.subscription,
                &inv.period.to_string(),
                inv.currency.code(),
                &inv.price_version,
                &l.id,
                kind.as_str().unwrap_or_default(),
                l.meter.as_deref().unwrap_or(""),
                &l.quantity.map(|q| q.normalize().to_string()).unwrap_or_default(),
                &l.amount.to_string(),
                &l.description,
                &l.lineage.watermark_us.map(format_time).unwrap_or_default(),
                &l.lineage.inputs_hash,
            ])
            .expect("writing to memory");
        }
    }
    w.flush().expect("writing to memory");
}

/// Report rows as CSV, after the header when `header`.
fn report_rows(out: &mut Vec<u8>, rows: &[ReportRow], header: bool) {
    let mut w = csv::Writer::from_writer(out);
    if header {
        w.write_record(["tenant", "meter", "accepted", "counted", "stored", "rated", "status"]).expect("memory");
    }
    for r in rows {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        let record = [&r.tenant, &r.meter, &o(&r.accepted), &o(&r.counted), &o(&r.stored), &o(&r.rated), &r.status];
        w.write_record(record).expect("writing to memory");
    }
    w.flush().expect("writing to memory");
}

/// Invoices as CSV, one row per line with its lineage: a close's export, and a tenant's invoice
/// history.
pub fn invoices_csv(invoices: &[Invoice]) -> String {
    let mut out = Vec::new();
    invoice_rows(&mut out, invoices, true);
    String::from_utf8(out).expect("CSV of text is text")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::contract::report;

    /// `rows` written in pages of `page`, each a page of the list (the last may be empty).
    fn paged(rows: &[ReportRow], page: usize, format: Format) -> Vec<u8> {
        let (mut out, mut w) = (Vec::new(), Writer::new(format));
        for chunk in rows.chunks(page).chain([&[][..]]) {
            w.page(&mut out, &Page::Report(chunk.to_vec())).unwrap();
        }
        w.end(&mut out);
        out
    }

    #[test]
    fn pages_of_any_size_write_the_whole_lists_bytes() {
        for n in [0, 1, 2, 5, 7] {
            let rows = report(n);
            let json = serde_json::to_string_pretty(&rows).unwrap() + "\n";
            let csv = String::from_utf8(whole(&Page::Report(rows.clone()), Format::Csv).unwrap()).unwrap();
            assert!(csv.starts_with("tenant,meter,accepted,counted,stored,rated,status\n"), "{csv}");
            assert_eq!(csv.lines().count(), n + 1, "{csv}");
            assert_eq!(String::from_utf8(whole(&Page::Report(rows.clone()), Format::Json).unwrap()).unwrap(), json);
            for page in [1, 2, 3, 5, 100] {
                assert_eq!(
                    String::from_utf8(paged(&rows, page, Format::Json)).unwrap(),
                    json,
                    "{n} rows, pages of {page}"
                );
                assert_eq!(
                    String::from_utf8(paged(&rows, page, Format::Csv)).unwrap(),
                    csv,
                    "{n} rows, pages of {page}"
                );
            }
        }
    }

    #[test]
    fn a_report_row_is_quoted_where_csv_needs_it() {
        let csv = String::from_utf8(whole(&Page::Report(report(2)), Format::Csv).unwrap()).unwrap();
        assert_eq!(
            csv,
            "tenant,meter,accepted,counted,stored,rated,status\n\"t\"\"0, é\",api_calls,0.50,0,,0,ok\n\
             \"t\"\"1, é\",api_calls,,1,,0,counted ≠ stored\n"
        );
    }
}
