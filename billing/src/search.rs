//! Finding a closed period's invoices: by a piece of the tenant's name or of the invoice's id,
//! a page at a time, with how many match and what they come to per currency.

use meter_rater::Invoice;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// Longest search text.
pub const MAX_QUERY: usize = 128;
/// Most invoices in one page.
pub const MAX_LIMIT: usize = 500;

/// One invoice found, without its lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Found {
    /// The invoice.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its subscription.
    pub subscription: String,
    /// ISO code.
    pub currency: String,
    /// Its total.
    #[schema(value_type = String)]
    pub total: Decimal,
    /// How many lines it has.
    pub lines: usize,
}

/// A page of the invoices that match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Search {
    /// How many invoices match in all.
    pub matched: usize,
    /// What every match comes to, by currency.
    #[schema(value_type = BTreeMap<String, String>)]
    pub totals: BTreeMap<String, Decimal>,
    /// Where this page starts among the matches.
    pub offset: usize,
    /// The page, by tenant then id.
    pub invoices: Vec<Found>,
}

/// What to find.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// A piece of the tenant's name or of the invoice's id, case-insensitive; empty: any.
    pub text: String,
    /// Exactly this tenant's, when given.
    pub tenant: Option<String>,
    /// Also invoices without lines.
    pub with_empty: bool,
    /// Where the page starts among the matches.
    pub offset: usize,
    /// How many in the page.
    pub limit: usize,
}

/// The invoices of `invoices` that `q` finds, a page of them, by tenant then id.
pub fn search(invoices: &[Invoice], q: &Query) -> Search {
    let mut m = Matches::new(q);
    m.add(invoices);
    m.page()
}

/// What a search found so far, invoices given a page at a time: each match without its lines.
struct Matches<'q> {
    q: &'q Query,
    needle: String,
    found: Vec<Found>,
    totals: BTreeMap<String, Decimal>,
}

impl<'q> Matches<'q> {
    fn new(q: &'q Query) -> Self {
        Matches { q, needle: q.text.to_lowercase(), found: Vec::new(), totals: BTreeMap::new() }
    }

    fn add(&mut self, invoices: &[Invoice]) {
        let (q, needle) = (self.q, &self.needle);
        let matching = invoices
            .iter()
            .filter(|i| q.with_empty || !i.lines.is_empty())
            .filter(|i| q.tenant.as_ref().is_none_or(|t| *t == i.tenant))
            .filter(|i| {
                needle.is_empty() || i.tenant.to_lowercase().contains(needle) || i.id.to_lowercase().contains(needle)
            });
        for i in matching {
            *self.totals.entry(i.currency.code().to_string()).or_default() += i.total;
            self.found.push(Found {
                id: i.id.clone(),
                tenant: i.tenant.clone(),
                subscription: i.subscription.clone(),
                currency: i.currency.code().to_string(),
                total: i.total,
                lines: i.lines.len(),
            });
        }
    }

    /// The matches by tenant then id, and the page asked for.
    fn page(mut self) -> Search {
        self.found.sort_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
        let matched = self.found.len();
        let invoices = self.found.into_iter().skip(self.q.offset).take(self.q.limit).collect();
        Search { matched, totals: self.totals, offset: self.q.offset, invoices }
    }
}

/// [`search`] among the invoices of `period`'s close, read a page at a time (holding what each
/// match shows, not the invoices); `None` when it is not closed.
pub async fn of(
    ledger: &crate::Ledger,
    period: meter_schemas::Period,
    q: &Query,
) -> Result<Option<Search>, crate::Error> {
    of_in_pages(ledger, period, q, crate::export::PAGE).await
}

/// [`of`], reading `page` invoices at a time.
pub(crate) async fn of_in_pages(
    ledger: &crate::Ledger,
    period: meter_schemas::Period,
    q: &Query,
    page: usize,
) -> Result<Option<Search>, crate::Error> {
    use crate::export::{Page, Pages, Rows};
    let Some(mut pages) = Pages::open(ledger, period, Rows::Invoices, page).await? else { return Ok(None) };
    let mut m = Matches::new(q);
    while let Some(page) = pages.next().await? {
        if let Page::Invoices(invoices) = page {
            m.add(&invoices);
        }
    }
    Ok(Some(m.page()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice(tenant: &str, currency: &str, total: &str, lines: usize) -> Invoice {
        let list = meter_rater::PriceBook::parse(
            &meter_rater::pricebook::SAMPLE.replace("currency = \"USD\"", &format!("currency = \"{currency}\"")),
            &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"],
            &["active_users"],
        )
        .unwrap();
        let list = list.version("2026-01").unwrap();
        let mut i = Invoice::empty(tenant, &format!("sub_{tenant}"), "2026-11".parse().unwrap(), list);
        i.total = total.parse().unwrap();
        i.lines = vec![];
        for _ in 0..lines {
            i.lines.push(meter_rater::Line {
                id: String::new(),
                kind: meter_rater::LineKind::BaseFee,
                description: String::new(),
                meter: None,
                quantity: None,
                amount: Decimal::ZERO,
                lineage: meter_rater::Lineage {
                    meters: Default::default(),
                    watermark_us: None,
                    price_version: String::new(),
                    inputs_hash: String::new(),
                },
                service: None,
            });
        }
        i
    }

    #[test]
    fn finds_by_tenant_or_id_with_totals_of_every_match_and_pages() {
        let all = [
            invoice("globex", "EUR", "10.00", 1),
            invoice("acme", "USD", "100.00", 2),
            invoice("acme-labs", "USD", "50.50", 1),
            invoice("beta", "USD", "0", 0),
            invoice("hooli", "USD", "7.00", 1),
        ];
        let q = |text: &str, with_empty, offset, limit| Query {
            text: text.into(),
            tenant: None,
            with_empty,
            offset,
            limit,
        };
        let s = search(&all, &q("ACME", false, 0, 1));
        assert_eq!(s.matched, 2);
        assert_eq!(s.totals, BTreeMap::from([("USD".to_string(), "150.50".parse().unwrap())]));
        assert_eq!(s.invoices.iter().map(|f| f.tenant.as_str()).collect::<Vec<_>>(), ["acme"]);
        let next = search(&all, &q("ACME", false, 1, 1));
        assert_eq!(next.invoices[0].tenant, "acme-labs");
        // By a piece of the id, which names the tenant's subscription.
        assert_eq!(search(&all, &q(&all[4].id[..12], false, 0, 10)).invoices[0].tenant, "hooli");
        // Everything, per currency; the empty invoice only when asked.
        let every = search(&all, &q("", false, 0, 10));
        assert_eq!(every.matched, 4);
        let tenants: Vec<&str> = every.invoices.iter().map(|f| f.tenant.as_str()).collect();
        assert_eq!(tenants, ["acme", "acme-labs", "globex", "hooli"], "by tenant");
        assert_eq!(every.totals["EUR"], "10.00".parse::<Decimal>().unwrap());
        assert_eq!(search(&all, &q("", true, 0, 10)).matched, 5);
        assert!(search(&all, &q("nobody", true, 0, 10)).invoices.is_empty());
        // One tenant exactly: acme, not acme-labs.
        let acme = search(&all, &Query { tenant: Some("acme".into()), ..q("", false, 0, 10) });
        assert_eq!((acme.matched, acme.invoices[0].tenant.as_str()), (1, "acme"));
    }
}
