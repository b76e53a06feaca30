//! The Stripe backend of the provider port.
//!
//! - A tenant becomes one Customer (`metadata.meter_tenant`), created under a key derived from
//!   the tenant alone, so asking again answers the same customer.
//! - A closed invoice becomes one Stripe invoice (`metadata.meter_invoice_id`): its items are
//!   created first, pending, one per line (the line's exact amount in minor units,
//!   `metadata.meter_line_id` and the line's inputs hash), then the invoice, which takes the
//!   customer's pending items. Its lines are read back and checked against meter's, line by line,
//!   and its `total_excluding_tax` against meter's total, before it is finalized with Stripe's
//!   automatic advancing off (meter drives collection and dunning).
//! - Every request is keyed by what it does ([`crate::key`]); a push that is run again after a lost
//!   reply or a crash gets Stripe's first replies back instead of new objects.

mod http;
pub mod objects;

pub use http::{Client, Settings, api_version};

use crate::Error;
use crate::items::{Item, plan_items};
use crate::provider::{
    Ask, Collected, Collection, Earlier, HostedPage, MirrorState, Mirrored, PaymentMethod, Provider, Pushed, SignUp,
    Synced,
};
use async_trait::async_trait;
use meter_billing::ledger::outbox::{ReceivedEvent, RemoteCustomer};
use meter_rater::Invoice;
use objects::{Customer, InvoiceItem, InvoiceLine, List};
use std::collections::{BTreeMap, HashMap};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_billing::invoice::{
    CreateInvoice, CreateInvoiceAutomaticTax, CreateInvoicePendingInvoiceItemsBehavior, FinalizeInvoiceInvoice,
    ListInvoice, PayInvoice, RetrieveInvoice, SendInvoiceInvoice,
};
use stripe_billing::invoice_item::{CreateInvoiceItem, ListInvoiceItem};
use stripe_billing::invoice_line_item::ListInvoiceInvoiceLineItem;
use stripe_billing::plan::{CreatePlan, CreatePlanInlineProductParams, CreatePlanProduct};
use stripe_billing::subscription::{
    CancelSubscription, CreateSubscription, CreateSubscriptionItems, UpdateSubscription,
};
use stripe_checkout::checkout_session::CreateCheckoutSession;
use stripe_client_core::StripeRequest;
use stripe_core::customer::{CreateCustomer, ListCustomer, UpdateCustomer, UpdateCustomerInvoiceSettings};
use stripe_core::event::ListEvent;
use stripe_core::setup_intent::RetrieveSetupIntent;
use stripe_shared::CheckoutSessionMode;
use stripe_shared::{InvoiceCollectionMethod, PlanInterval};

/// Checks the lines Stripe's invoice holds against the items sent: each item exactly once with
/// its amount, and nothing else that charges (another invoice's pending items swept in).
pub fn check_lines(invoice: &str, items: &[Item], lines: &[InvoiceLine]) -> Result<(), Error> {
    let mismatch = |detail: String| Error::Mismatch { invoice: invoice.to_owned(), detail };
    let mut found: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in lines {
        match (line.metadata.get("meter_invoice_id"), line.metadata.get("meter_line_id")) {
            (Some(inv), Some(id)) if inv == invoice => found.entry(id.clone()).or_default().push(line.amount),
            (Some(inv), _) => return Err(mismatch(format!("line {} belongs to meter invoice {inv}", line.id))),
            (None, _) if line.amount != 0 => {
                return Err(mismatch(format!("line {} of {} was not made by meter", line.id, line.amount)));
            }
            (None, _) => {}
        }
    }
    for item in items {
        let key = item.line_key();
        match found.remove(&key).as_deref() {
            Some([amount]) if *amount == item.amount => {}
            Some([amount]) => {
                return Err(mismatch(format!("line {key} is {amount} in Stripe, {} in meter", item.amount)));
            }
            Some(more) => return Err(mismatch(format!("line {key} is in Stripe {} times", more.len()))),
            None => return Err(mismatch(format!("line {key} is missing in Stripe"))),
        }
    }
    if let Some(extra) = found.keys().next() {
        return Err(mismatch(format!("line {extra} is in Stripe but not in meter's invoice")));
    }
    Ok(())
}

/// The Stripe provider.
pub struct Stripe {
    client: Client,
    automatic_tax: bool,
    /// The zero-amount plan of each currency, once made by this process.
    zero_plans: tokio::sync::Mutex<HashMap<String, String>>,
}

/// A Stripe object with an id.
#[derive(serde::Deserialize)]
struct Created {
    id: String,
}

impl Stripe {
    /// A provider sending through `client`; `automatic_tax` turns on Stripe Tax for the invoices
    /// it creates.
    pub fn new(client: Client, automatic_tax: bool) -> Self {
        Stripe { client, automatic_tax, zero_plans: Default::default() }
    }

    /// Checks `created`'s lines and total against meter's and finalizes it (unless it is
    /// already past draft).
    async fn verify_and_finalize(
        &self,
        invoice: &Invoice,
        items: &[Item],
        expected: i64,
        customer: String,
        created: objects::Invoice,
    ) -> Result<Pushed, Error> {
        check_lines(&invoice.id, items, &self.lines(&created.id).await?)?;
        let read: objects::Invoice = self.client.send(RetrieveInvoice::new(created.id.as_str()).build()).await?;
        let before_tax = read.total_excluding_tax.ok_or_else(|| Error::Protocol {
            what: format!("GET /v1/invoices/{}", read.id),
            detail: "the invoice has no total_excluding_tax".into(),
        })?;
        if before_tax != expected {
            return Err(Error::Mismatch {
                invoice: invoice.id.clone(),
                detail: format!("Stripe's total before tax is {before_tax}, meter's {expected} (minor units)"),
            });
        }
        let finalized: objects::Invoice = if read.status.as_deref() == Some("draft") {
            self.client.send(FinalizeInvoiceInvoice::new(created.id.as_str()).auto_advance(false).build()).await?
        } else {
            read
        };
        Ok(Pushed::Synced(Synced {
            customer,
            invoice: finalized.id,
            status: finalized.status.unwrap_or_default(),
            total_minor: before_tax,
            items: items.len(),
            aggregated: items.iter().filter(|i| i.lines.len() > 1).map(|i| i.lines.len()).sum(),
            hosted_url: finalized.hosted_invoice_url,
            pdf_url: finalized.invoice_pdf,
        }))
    }

    /// The invoice of `customer` carrying lines of meter invoice `invoice`, if one was made
    /// (read by its lines' metadata, which every Stripe keeps; the invoice's own metadata says
    /// the same on Stripe).
    async fn find_invoice(&self, customer: &str, invoice: &str) -> Result<Option<objects::Invoice>, Error> {
        Ok(self.invoices_carrying(customer, invoice, true).await?.into_iter().next().map(|(i, _)| i))
    }

    /// The invoices of `customer` carrying lines of meter invoice `invoice`, with their lines;
    /// the first only when `first`.
    async fn invoices_carrying(
        &self,
        customer: &str,
        invoice: &str,
        first: bool,
    ) -> Result<Vec<(objects::Invoice, Vec<InvoiceLine>)>, Error> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut list = ListInvoice::new().customer(customer).limit(100);
            if let Some(id) = &after {
                list = list.starting_after(id.as_str());
            }
            let page: List<objects::Invoice> = self.client.send(list.build()).await?;
            let more = page.has_more && !page.data.is_empty();
            for candidate in page.data {
                after = Some(candidate.id.clone());
                if candidate.is_empty_subscription_invoice() {
                    continue;
                }
                let lines = self.lines(&candidate.id).await?;
                let ours = candidate.metadata.get("meter_invoice_id").is_some_and(|m| m == invoice)
                    || lines.iter().any(|l| l.metadata.get("meter_invoice_id").is_some_and(|m| m == invoice));
                if ours {
                    found.push((candidate, lines));
                    if first {
                        return Ok(found);
                    }
                }
            }
            if !more {
                return Ok(found);
            }
        }
    }

    /// The meter lines of `invoice` already made as pending items of `customer`.
    async fn pending_items_of(
        &self,
        customer: &str,
        invoice: &str,
    ) -> Result<std::collections::HashSet<String>, Error> {
        let mut made = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let mut list = ListInvoiceItem::new().customer(customer).pending(true).limit(100);
            if let Some(id) = &after {
                list = list.starting_after(id.as_str());
            }
            let page: List<InvoiceItem> = self.client.send(list.build()).await?;
            let more = page.has_more && !page.data.is_empty();
            for item in page.data {
                after = Some(item.id.clone());
                if item.metadata.get("meter_invoice_id").is_some_and(|m| m == invoice)
                    && let Some(line) = item.metadata.get("meter_line_id")
                {
                    made.insert(line.clone());
                }
            }
            if !more {
                return Ok(made);
            }
        }
    }

    /// The zero-amount monthly plan of `currency` the mirrors subscribe to: it bills nothing.
    async fn zero_plan(&self, currency: meter_rater::Currency) -> Result<String, Error> {
        let mut plans = self.zero_plans.lock().await;
        if let Some(id) = plans.get(currency.code()) {
            return Ok(id.clone());
        }
        let create = CreatePlan::new(stripe_currency(currency), PlanInterval::Month)
            .amount(0)
            .nickname("meter subscription (billed by meter)")
            .product(CreatePlanProduct::InlineProductParams(CreatePlanInlineProductParams::new("meter subscription")))
            .metadata(metadata(&[("meter_zero_plan", "true")]));
        let plan: Created = self.client.send(create.build()).await?;
        plans.insert(currency.code().to_owned(), plan.id.clone());
        Ok(plan.id)
    }

    /// Invoice `invoice` as the provider holds it now, with its payments' intents.
    async fn read_back(&self, invoice: &str) -> Result<objects::Invoice, Error> {
        let expand = vec![objects::Invoice::EXPAND_PAYMENTS.to_string()];
        self.client.send(RetrieveInvoice::new(invoice).expand(expand).build()).await
    }

    async fn lines(&self, invoice: &str) -> Result<Vec<InvoiceLine>, Error> {
        let mut all = Vec::new();
        loop {
            let mut list = ListInvoiceInvoiceLineItem::new(invoice).limit(100);
            if let Some(last) = all.last().map(|l: &InvoiceLine| l.id.clone()) {
                list = list.starting_after(last);
            }
            let page: List<InvoiceLine> = self.client.send(list.build()).await?;
            let more = page.has_more && !page.data.is_empty();
            all.extend(page.data);
            if !more {
                return Ok(all);
            }
        }
    }
}

fn stripe_currency(c: meter_rater::Currency) -> stripe_types::Currency {
    c.code().to_lowercase().parse().expect("parsing a currency is infallible")
}

fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[async_trait]
impl Provider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn verify(&self) -> Result<(), Error> {
        let _: List<Customer> = self.client.send(ListCustomer::new().limit(1).build()).await?;
        Ok(())
    }

    async fn held(&self, customer: &str, invoice: &str) -> Result<Vec<crate::provider::Held>, Error> {
        let mut held = Vec::new();
        for (inv, lines) in self.invoices_carrying(customer, invoice, false).await? {
            let read: objects::Invoice = match inv.total_excluding_tax {
                Some(_) => inv,
                None => self.client.send(RetrieveInvoice::new(inv.id.as_str()).build()).await?,
            };
            let before_tax = read.total_excluding_tax.unwrap_or(read.total);
            let mut by_line: BTreeMap<String, Vec<i64>> = BTreeMap::new();
            for l in lines.iter().filter(|l| l.metadata.get("meter_invoice_id").is_some_and(|m| m == invoice)) {
                let key = l.metadata.get("meter_line_id").cloned().unwrap_or_default();
                by_line.entry(key).or_default().push(l.amount);
            }
            held.push(crate::provider::Held {
                id: read.id,
                status: read.status.unwrap_or_default(),
                currency: read.currency,
                total_excluding_tax: before_tax,
                tax: read.total - before_tax,
                lines: by_line,
            });
        }
        Ok(held)
    }

    async fn collect(&self, invoice: &str, ask: Ask, attempt: u32) -> Result<Collected, Error> {
        let occasion = format!("attempt={attempt}");
        let request = match ask {
            // Off session: the customer is not there to authenticate a charge meter starts.
            Ask::Pay => PayInvoice::new(invoice).off_session(true).build(),
            // With its payments: a reminder sent while a transfer or debit is on its way is no
            // failure.
            Ask::Send => {
                SendInvoiceInvoice::new(invoice).expand(vec![objects::Invoice::EXPAND_PAYMENTS.to_string()]).build()
            }
            Ask::Check => {
                RetrieveInvoice::new(invoice).expand(vec![objects::Invoice::EXPAND_PAYMENTS.to_string()]).build()
            }
        };
        let answered: Result<objects::Invoice, Error> = self.client.send_on(request, Some(&occasion)).await;
        let (read, refusal) = match answered {
            // Read with its payments, sent, paid or voided: that is all there is to know.
            Ok(read)
                if !matches!(ask, Ask::Pay)
                    || matches!(read.status.as_deref(), Some("paid" | "void" | "uncollectible")) =>
            {
                (read, None)
            }
            // Charged and still open: whether the payment is on its way, with its payments read
            // back (a debit takes days).
            Ok(_) => (self.read_back(invoice).await?, None),
            // A declined card (402), no payment method, an invoice paid or voided meanwhile:
            // where the invoice stands says which.
            Err(refused @ Error::Refused { .. }) => (self.read_back(invoice).await?, Some(refused)),
            Err(e) => return Err(e),
        };
        let processing = read.payment_processing();
        let status = read.status.unwrap_or_default();
        Ok(match (status.as_str(), ask, refusal) {
            ("paid", _, _) => Collected::Paid,
            ("void" | "uncollectible", _, _) => Collected::Closed(status),
            // A debit on its way: neither paid nor failed, whatever was asked.
            ("open", _, _) if processing => Collected::Processing,
            (_, Ask::Send | Ask::Check, None) => Collected::Sent,
            // Sending refused while the invoice is still to be paid: nothing a retry changes.
            (_, Ask::Send | Ask::Check, Some(refused)) => return Err(refused),
            (_, Ask::Pay, refused) => Collected::Declined(match refused {
                Some(Error::Refused { message, .. }) => message,
                _ => format!("the charge did not go through; the invoice is {status}"),
            }),
        })
    }

    async fn mirror(&self, mirror: &str, state: &MirrorState, occasion: &str) -> Result<Mirrored, Error> {
        let sent: Result<Created, Error> = if state.state == meter_rater::State::Expired {
            self.client.send_on(CancelSubscription::new(mirror).build(), Some(occasion)).await
        } else {
            let metadata: HashMap<String, String> = [("meter_state".to_string(), state.state.to_string())].into();
            let mut update =
                UpdateSubscription::new(mirror).cancel_at_period_end(state.cancel_at_period_end).metadata(metadata);
            if let Some(end) = state.trial_end {
                update = update.trial_end(stripe_billing::subscription::UpdateSubscriptionTrialEnd::Timestamp(end));
            }
            self.client.send_on(update.build(), Some(occasion)).await
        };
        match sent {
            Ok(_) if state.state == meter_rater::State::Expired => Ok(Mirrored::Ended),
            Ok(_) => Ok(Mirrored::Updated),
            // Deleted at the provider (its dashboard): nothing left to show meter's state on.
            Err(Error::Refused { status: 404, .. }) => Ok(Mirrored::Ended),
            Err(Error::Refused { message, .. }) if message.contains("cancel") => Ok(Mirrored::Ended),
            Err(e) => Err(e),
        }
    }

    async fn checkout(&self, customer: &str, sign_up: &SignUp) -> Result<HostedPage, Error> {
        let metadata: HashMap<String, String> = [
            ("meter_tenant", sign_up.tenant.clone()),
            ("meter_plan", sign_up.plan.clone()),
            ("meter_cycle", sign_up.cycle.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // Setup mode: the customer gives a payment method and pays nothing here; meter bills.
        // The same sign-up asked again within Stripe's key window answers the same session.
        let create = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Setup)
            .customer(customer)
            .currency(stripe_currency(sign_up.currency))
            .client_reference_id(sign_up.tenant.as_str())
            .success_url(sign_up.success_url.as_str())
            .cancel_url(sign_up.cancel_url.as_str())
            .metadata(metadata);
        self.client.send(create.build()).await
    }

    async fn billing_portal(&self, customer: &str, return_url: &str) -> Result<HostedPage, Error> {
        // A portal session lives minutes: each minute's asking is an occasion of its own, and the
        // client's retries within one share its key.
        let minute = format!("minute={}", meter_schemas::period::now_us() / 60_000_000);
        let create = CreateBillingPortalSession::new().customer(customer).return_url(return_url);
        self.client.send_on(create.build(), Some(&minute)).await
    }

    async fn keep_payment_method(&self, customer: &str, setup: &str) -> Result<PaymentMethod, Error> {
        let intent: objects::SetupIntent = self.client.send(RetrieveSetupIntent::new(setup).build()).await?;
        if intent.customer.as_deref() != Some(customer) {
            return Ok(PaymentMethod::NotKept(format!("setup {} is not for customer {customer}", intent.id)));
        }
        let Some(method) = intent.payment_method.filter(|_| intent.status == "succeeded") else {
            return Ok(PaymentMethod::NotKept(format!(
                "setup {} collected no payment method (it is {})",
                intent.id, intent.status
            )));
        };
        let settings =
            UpdateCustomerInvoiceSettings { default_payment_method: Some(method.clone()), ..Default::default() };
        let _: Customer = self.client.send(UpdateCustomer::new(customer).invoice_settings(settings).build()).await?;
        Ok(PaymentMethod::Default(method))
    }

    async fn events_since(&self, created: i64) -> Result<Vec<Option<ReceivedEvent>>, Error> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut list = ListEvent::new().created(stripe_types::RangeQueryTs::gte(created)).limit(100);
            if let Some(id) = &after {
                list = list.starting_after(id.as_str());
            }
            let page: List<serde_json::Value> = self.client.send(list.build()).await?;
            let more = page.has_more && !page.data.is_empty();
            for raw in page.data {
                if let Some(id) = raw["id"].as_str() {
                    after = Some(id.to_owned());
                }
                match crate::events::parse(raw.to_string().as_bytes()) {
                    Ok(event) => all.push(Some(event)),
                    Err(e) => {
                        tracing::warn!(id = ?raw["id"], error = %e, "a Stripe event meter cannot keep; skipped");
                        all.push(None);
                    }
                }
            }
            if !more {
                return Ok(all);
            }
        }
    }

    fn check(&self, invoice: &Invoice) -> Result<(), Error> {
        plan_items(invoice).map(drop)
    }

    async fn ensure_customer(
        &self,
        tenant: &str,
        currency: meter_rater::Currency,
    ) -> Result<Option<RemoteCustomer>, Error> {
        // Only what identifies the tenant: the same requests, hence the same keys, every time.
        let create = CreateCustomer::new().name(tenant).metadata(metadata(&[("meter_tenant", tenant)]));
        let customer: Customer = self.client.send(create.build()).await?;
        let plan = self.zero_plan(currency).await?;
        let mut item = CreateSubscriptionItems::new();
        item.plan = Some(plan);
        let mirror = CreateSubscription::new()
            .customer(customer.id.as_str())
            .items(vec![item])
            .metadata(metadata(&[("meter_tenant", tenant)]));
        let subscription: Created = self.client.send(mirror.build()).await?;
        Ok(Some(RemoteCustomer {
            tenant: tenant.to_owned(),
            customer: customer.id,
            subscription: Some(subscription.id),
        }))
    }

    async fn push_invoice(
        &self,
        invoice: &Invoice,
        customer: &str,
        collection: Collection,
        earlier: Earlier,
    ) -> Result<Pushed, Error> {
        let items = plan_items(invoice)?;
        let expected: i64 = items.iter().map(|i| i.amount).sum();
        let customer = customer.to_owned();
        let currency = stripe_currency(invoice.currency);
        // Past Stripe's idempotency window the keys no longer answer for what earlier tries
        // made: look it up instead of making it again.
        let mut made = std::collections::HashSet::new();
        if earlier == Earlier::BeforeWindow {
            if let Some(found) = self.find_invoice(&customer, &invoice.id).await? {
                return self.verify_and_finalize(invoice, &items, expected, customer, found).await;
            }
            made = self.pending_items_of(&customer, &invoice.id).await?;
        }
        for item in items.iter().filter(|i| !made.contains(&i.line_key())) {
            let key = item.line_key();
            let mut md = vec![("meter_invoice_id", invoice.id.as_str()), ("meter_line_id", key.as_str())];
            if let Some(h) = &item.inputs_hash {
                md.push(("meter_inputs_hash", h));
            }
            let count = item.lines.len().to_string();
            if item.lines.len() > 1 {
                md.push(("meter_lines", &count));
            }
            let create = CreateInvoiceItem::new()
                .customer(customer.as_str())
                .amount(item.amount)
                .currency(currency.clone())
                .description(item.description.as_str())
                .metadata(metadata(&md));
            let _: InvoiceItem = self.client.send(create.build()).await?;
        }
        let mut create = CreateInvoice::new()
            .customer(customer.as_str())
            .currency(currency.clone())
            .auto_advance(false)
            .pending_invoice_items_behavior(CreateInvoicePendingInvoiceItemsBehavior::Include)
            .description(format!("{} {}", invoice.period, invoice.plan.as_deref().unwrap_or("")).trim().to_owned())
            .metadata(metadata(&[("meter_invoice_id", invoice.id.as_str())]));
        create = match collection {
            Collection::ChargeAutomatically => create.collection_method(InvoiceCollectionMethod::ChargeAutomatically),
            Collection::SendInvoice { days_until_due } => {
                create.collection_method(InvoiceCollectionMethod::SendInvoice).days_until_due(days_until_due)
            }
        };
        if self.automatic_tax {
            create = create.automatic_tax(CreateInvoiceAutomaticTax::new(true));
        }
        let created: objects::Invoice = self.client.send(create.build()).await?;
        self.verify_and_finalize(invoice, &items, expected, customer, created).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::invoice;

    fn line(id: &str, amount: i64, meter_line: Option<(&str, &str)>) -> InvoiceLine {
        let metadata = meter_line
            .map(|(inv, l)| {
                [("meter_invoice_id".to_string(), inv.to_string()), ("meter_line_id".into(), l.into())].into()
            })
            .unwrap_or_default();
        InvoiceLine { id: id.into(), amount, metadata }
    }

    #[test]
    fn stripe_lines_must_match_meter_items_once_each() {
        let items = plan_items(&invoice("acme", "USD", &["1.00", "2.00"])).unwrap();
        let (inv, l1, l2) = ("inv_acme_2026-10", "inv_acme_2026-10_001", "inv_acme_2026-10_002");
        let ok = [
            line("il_1", 100, Some((inv, l1))),
            line("il_2", 200, Some((inv, l2))),
            // The zero-amount mirror subscription's line is not meter's and charges nothing.
            line("il_0", 0, None),
        ];
        check_lines(inv, &items, &ok).unwrap();
        let twice = [
            line("il_1", 100, Some((inv, l1))),
            line("il_1b", 100, Some((inv, l1))),
            line("il_2", 200, Some((inv, l2))),
        ];
        assert!(check_lines(inv, &items, &twice).unwrap_err().to_string().contains("2 times"));
        let missing = [line("il_1", 100, Some((inv, l1)))];
        assert!(check_lines(inv, &items, &missing).unwrap_err().to_string().contains("missing"));
        let wrong = [line("il_1", 100, Some((inv, l1))), line("il_2", 199, Some((inv, l2)))];
        assert!(check_lines(inv, &items, &wrong).unwrap_err().to_string().contains("199"));
        let foreign = [
            line("il_1", 100, Some((inv, l1))),
            line("il_2", 200, Some((inv, l2))),
            line("il_9", 500, Some(("inv_0", "inv_0_001"))),
        ];
        assert!(check_lines(inv, &items, &foreign).unwrap_err().to_string().contains("inv_0"));
        let stranger =
            [line("il_1", 100, Some((inv, l1))), line("il_2", 200, Some((inv, l2))), line("il_x", 700, None)];
        assert!(check_lines(inv, &items, &stranger).unwrap_err().to_string().contains("not made by meter"));
    }
}
