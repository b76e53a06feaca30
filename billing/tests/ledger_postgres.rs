//! The ledger's contract against Postgres (`METER_TEST_POSTGRES`, or a private cluster), and
//! what several hosts writing one ledger need.

use meter_billing::Ledger;
use meter_billing::ledger::contract::{a_close, book, invoice, pushed, setup};
use meter_billing::ledger::{LedgerStore, Page, PgLedger, Rows};
use meter_postgres::testing::{fresh_database, shared_url};
use meter_postgres::{MAX_CONNECTIONS, Pg, PgUrl};
use std::sync::Arc;

fn database() -> PgUrl {
    let url = fresh_database(&shared_url());
    PgLedger::migrate(&Pg::connect(&url, 1).unwrap()).unwrap();
    url
}

/// A process's view of the ledger at `url`: a pool of its own, as on another host.
fn host(url: &PgUrl) -> PgLedger {
    PgLedger::open(Arc::new(Pg::connect(url, MAX_CONNECTIONS).unwrap())).unwrap()
}

fn store() -> Arc<dyn LedgerStore> {
    Arc::new(host(&database()))
}

meter_billing::ledger_contract!(store());

/// A close's invoices and report rows are rows of their own, read back in the close's order a
/// few thousand at a time; a body too long for one value is kept in parts; recording it again
/// keeps the first; a close recorded whole in parts (before rows were kept apart) still reads
/// back.
#[tokio::test]
async fn a_large_close_keeps_its_rows_apart_and_reads_back_the_same() {
    let url = database();
    let ledger = Ledger::new(Arc::new(host(&url).with_part_bytes(100)));
    // More than one statement's worth of each (5,000), not in order, and two invoices sharing an
    // id across the first statement's end (the close is kept by position, whatever its ids).
    let mut invoices: Vec<_> = (0..5_000).rev().map(|t| invoice(&format!("t{t:05}"), "2026-10", 1)).collect();
    invoices.push(invoice("t00000", "2026-10", 2));
    assert_eq!(invoices[4_999].id, invoices[5_000].id);
    let row = |i: usize| meter_billing::ReportRow {
        tenant: format!("t{i:05}"),
        meter: "api_calls".into(),
        accepted: i.is_multiple_of(3).then(|| i.to_string()),
        counted: Some(i.to_string()),
        stored: None,
        rated: Some("0".into()),
        status: "ok".into(),
    };
    let report = (0..10_001).map(row).collect();
    let big = meter_billing::Close { invoices, report, ..a_close("2026-10", &["2026-09"]) };
    let book = book();
    let list = book.version("2026-01").unwrap();
    let recorded = ledger.record(big.clone(), list).await.unwrap();
    assert_eq!(recorded, big);
    // Byte for byte (a decimal's scale too, which `==` does not compare).
    let read = ledger.close_of("2026-10".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(serde_json::to_string(&read).unwrap(), serde_json::to_string(&recorded).unwrap());
    let mut again = big.clone();
    again.closed_us = 8;
    again.report.truncate(1);
    assert_eq!(ledger.record(again, list).await.unwrap(), big);
    assert_eq!(ledger.invoices_of("t00007").await.unwrap().len(), 1);
    let pg = Arc::new(Pg::connect(&url, 1).unwrap());
    let old = meter_billing::Close { invoices: big.invoices[..3].to_vec(), ..a_close("2026-09", &[]) };
    // Recorded whole, in parts (as a close past 64 MiB was).
    let body = serde_json::to_vec(&old).unwrap();
    let (parts, rows, placed): (i64, i64, i64) = pg
        .with(async move |c| {
            c.execute(
                "INSERT INTO closes (period, closed_us, body, watermark_us, revises) VALUES ('2026-09', 7, '', 42, '[]')",
                &[],
            )
            .await?;
            for (i, part) in body.chunks(body.len() / 2 + 1).enumerate() {
                c.execute(
                    "INSERT INTO close_parts (period, part, body) VALUES ('2026-09', $1, $2)",
                    &[&(i as i32), &part],
                )
                .await?;
            }
            let counts = c
                .query_one(
                    "SELECT (SELECT count(*) FROM close_parts WHERE period = '2026-10'),
                            (SELECT count(*) FROM close_report WHERE period = '2026-10'),
                            (SELECT count(*) FROM close_invoices WHERE period = '2026-10')",
                    &[],
                )
                .await?;
            Ok::<_, meter_billing::Error>((counts.get(0), counts.get(1), counts.get(2)))
        })
        .await
        .unwrap();
    assert!(parts > 1, "the body is in parts");
    assert_eq!((rows, placed), (10_001, 5_001), "the report's rows and the invoices are rows of their own");
    assert_eq!(ledger.close_of("2026-09".parse().unwrap()).await.unwrap().unwrap(), old);
    // Pages: from inside the close, over more than one statement, past its end; the old close
    // read whole, every row from `from` at once.
    let page = |p: &str, rows, from, limit| ledger.close_rows(p.parse().unwrap(), rows, from, limit);
    let report = page("2026-10", Rows::Report, 3, 7_000).await.unwrap();
    assert_eq!(report, Some(Page::Report(big.report[3..7_003].to_vec())));
    let last = page("2026-10", Rows::Invoices, 4_998, 5).await.unwrap();
    assert_eq!(last, Some(Page::Invoices(big.invoices[4_998..].to_vec())));
    let old_page = page("2026-09", Rows::Invoices, 1, 1).await.unwrap();
    assert_eq!(old_page, Some(Page::Invoices(old.invoices[1..].to_vec())));
}

/// Each invoice's body is written once: the close's place and its push read it from the invoice
/// row of its id. An invoice whose id's row holds another invoice (written before the close, or
/// earlier in it: in the same statement or an earlier one) keeps its own body in its place, and
/// in its push when it has one, so every read gives what was recorded.
#[tokio::test]
async fn a_close_writes_each_invoice_body_once() {
    let url = database();
    let ledger = Ledger::new(Arc::new(host(&url)));
    let book = book();
    let list = book.version("2026-01").unwrap();
    // An invoice row of tenant c's id from before the close (which a close does not make).
    let taken = invoice("c", "2026-10", 3);
    let pg = Arc::new(Pg::connect(&url, 1).unwrap());
    let (id, body) = (taken.id.clone(), serde_json::to_string(&taken).unwrap());
    pg.with(async move |c| {
        c.execute("INSERT INTO invoices (id, tenant, period, body) VALUES ($1, 'c', '2026-10', $2)", &[&id, &body])
            .await?;
        Ok::<_, meter_billing::Error>(())
    })
    .await
    .unwrap();
    // Two of tenant a's one id in one statement, and a third of it past the first statement.
    let mut invoices = vec![invoice("c", "2026-10", 2), invoice("a", "2026-10", 2), invoice("a", "2026-10", 1)];
    invoices.extend((0..5_000).map(|t| invoice(&format!("t{t:05}"), "2026-10", 1)));
    invoices.push(invoice("a", "2026-10", 3));
    let close = meter_billing::Close { invoices, ..a_close("2026-10", &[]) };
    assert_eq!(ledger.record(close.clone(), list).await.unwrap(), close);
    let (own, pushes_own): (i64, i64) = pg
        .with(async move |c| {
            let counts = c
                .query_one(
                    "SELECT (SELECT count(*) FROM close_invoices WHERE period = '2026-10' AND body != ''),
                            (SELECT count(*) FROM outbox WHERE kind = 'push_invoice' AND payload != '')",
                    &[],
                )
                .await?;
            Ok::<_, meter_billing::Error>((counts.get(0), counts.get(1)))
        })
        .await
        .unwrap();
    // Tenant c's (its id was taken) and a's second and third keep theirs; of the pushes, c's.
    assert_eq!((own, pushes_own), (3, 1));
    let read = ledger.close_of("2026-10".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(serde_json::to_string(&read).unwrap(), serde_json::to_string(&close).unwrap());
    // Each id's first invoice with lines, as before.
    let pushed = pushed(&ledger, "2026-10").await;
    assert_eq!(pushed.len(), 5_002);
    assert_eq!(pushed[..3], [close.invoices[0].clone(), close.invoices[1].clone(), close.invoices[3].clone()]);
    assert_eq!(ledger.invoice(&taken.id).await.unwrap().unwrap(), taken, "the row that was there stays");
}

/// An invoice row that a close's place or push reads, gone (by hand): reading the close or the
/// outbox fails naming what is missing, and nothing else is read in its place.
#[tokio::test]
async fn an_invoice_row_gone_under_a_close_is_named() {
    let url = database();
    let ledger = Ledger::new(Arc::new(host(&url)));
    let book = book();
    let close = meter_billing::Close {
        invoices: vec![invoice("a", "2026-10", 1), invoice("b", "2026-10", 2)],
        ..a_close("2026-10", &[])
    };
    ledger.record(close.clone(), book.version("2026-01").unwrap()).await.unwrap();
    let gone = close.invoices[1].id.clone();
    let pg = Arc::new(Pg::connect(&url, 1).unwrap());
    let id = gone.clone();
    pg.with(async move |c| {
        c.execute("DELETE FROM invoices WHERE id = $1", &[&id]).await?;
        Ok::<_, meter_billing::Error>(())
    })
    .await
    .unwrap();
    let e = ledger.close_of("2026-10".parse().unwrap()).await.unwrap_err();
    assert!(
        matches!(&e, meter_billing::Error::Corrupt(m) if m == &format!("invoice {gone} of the close of 2026-10 is gone")),
        "{e}"
    );
    let e = ledger.operations(None, None).await.unwrap_err();
    assert!(matches!(&e, meter_billing::Error::Corrupt(m) if m.ends_with(": its invoice is gone")), "{e}");
}

/// Three hosts creating one tenant's subscription at once: one is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_admit_one_subscription_per_tenant() {
    let url = database();
    let hosts: Vec<Arc<Ledger>> = (0..3).map(|_| Arc::new(Ledger::new(Arc::new(host(&url))))).collect();
    let tries: Vec<_> = hosts
        .iter()
        .cycle()
        .take(9)
        .enumerate()
        .map(|(i, ledger)| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let book = book();
                ledger
                    .create(
                        "acme",
                        setup("starter"),
                        1_791_849_600_000_000 + i as i64,
                        "k",
                        book.version("2026-01").unwrap(),
                    )
                    .await
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tries {
        admitted += usize::from(t.await.unwrap().is_ok());
    }
    assert_eq!(admitted, 1);
}

/// While a close records its parts, subscriptions are still written on every host (a sign-up
/// dated after the period, with its mirror's operation): the recording holds neither the
/// periods' lock nor the outbox's until its end, so no writer waits on it holding a connection
/// the close's own reads need. Its pushes come after the sign-up's operation in the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_are_written_while_a_close_records() {
    use meter_billing::ledger::Part;
    use meter_billing::ledger::outbox::OpKind;
    let url = database();
    let (ledger, other) = (Ledger::new(Arc::new(host(&url))), Ledger::new(Arc::new(host(&url))));
    let book = book();
    let list = book.version("2026-01").unwrap().clone();
    let october: meter_schemas::Period = "2026-10".parse().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let recording = tokio::spawn({
        let (ledger, list) = (ledger.clone(), list.clone());
        async move { ledger.record_parts(a_close("2026-10", &[]), &list, rx).await }
    });
    tx.send(Part::Rows(vec![invoice("t1", "2026-10", 1)], vec![])).await.unwrap();
    // Taken (the channel holds one): the recording began, with its locks.
    tx.send(Part::Rows(vec![], vec![])).await.unwrap();
    let signed_up = other.create("newcomer", setup("starter"), october.end_us() + 1, "k", &list);
    // Long enough for a loaded machine; the recording's end is minutes away in a real close, and
    // a writer waiting on its locks waited for all of it.
    let signed_up = tokio::time::timeout(std::time::Duration::from_secs(30), signed_up).await;
    signed_up.expect("a sign-up waits for no recording").unwrap();
    tx.send(Part::Rows(vec![invoice("t2", "2026-10", 1)], vec![])).await.unwrap();
    tx.send(Part::End(Default::default())).await.unwrap();
    drop(tx);
    let recorded = recording.await.unwrap().unwrap();
    assert_eq!(recorded.invoices, 2);
    let kinds: Vec<OpKind> = ledger.operations(None, None).await.unwrap().iter().map(|o| o.kind).collect();
    assert_eq!(kinds.last(), Some(&OpKind::PushInvoice));
    let first_push = kinds.iter().position(|k| *k == OpKind::PushInvoice).unwrap();
    assert!(kinds[..first_push].iter().all(|k| *k != OpKind::PushInvoice) && first_push > 0, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == OpKind::PushInvoice).count(), 2);
}
