//! What one meter invoice becomes at a payment provider: one item per line, each line's amount
//! exactly in minor units, and at most [`MAX_ITEMS`] items (Stripe's limit). The push and the
//! reconciliation both read invoices through it.

use crate::Error;
use crate::amount::minor_units;
use meter_rater::Invoice;

/// The most invoice items one Stripe invoice takes.
pub const MAX_ITEMS: usize = 250;

/// One invoice item to send: a line, or the lines beyond [`MAX_ITEMS`] summed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The meter lines it carries (one, or the aggregated tail).
    pub lines: Vec<String>,
    /// Minor units.
    pub amount: i64,
    /// For people.
    pub description: String,
    /// The line's inputs hash (one line only).
    pub inputs_hash: Option<String>,
}

impl Item {
    /// What `metadata.meter_line_id` says: the line, or `first..last` of the aggregated tail.
    pub fn line_key(&self) -> String {
        match self.lines.as_slice() {
            [one] => one.clone(),
            [first, .., last] => format!("{first}..{last}"),
            [] => String::new(),
        }
    }
}

/// The items of `invoice`: one per line, each line's amount exactly in minor units. Past
/// [`MAX_ITEMS`] lines, the last item sums every line from the 250th on (and says which). A
/// line Stripe cannot represent fails the whole invoice before anything is sent.
pub fn plan_items(invoice: &Invoice) -> Result<Vec<Item>, Error> {
    let mut items = Vec::with_capacity(invoice.lines.len().min(MAX_ITEMS));
    for line in &invoice.lines {
        let amount = minor_units(line.amount, invoice.currency).map_err(|reason| Error::Unrepresentable {
            invoice: invoice.id.clone(),
            line: line.id.clone(),
            reason,
        })?;
        items.push(Item {
            lines: vec![line.id.clone()],
            amount,
            description: line.description.clone(),
            inputs_hash: Some(line.lineage.inputs_hash.clone()),
        });
    }
    if items.len() > MAX_ITEMS {
        let tail = items.split_off(MAX_ITEMS - 1);
        let lines: Vec<String> = tail.iter().flat_map(|i| i.lines.clone()).collect();
        let amount = tail.iter().map(|i| i.amount).sum();
        items.push(Item {
            description: format!("{} further lines, itemized in meter's invoice {}", lines.len(), invoice.id),
            lines,
            amount,
            inputs_hash: None,
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::invoice;

    #[test]
    fn each_line_becomes_one_item_of_its_exact_amount_credits_negative() {
        let items = plan_items(&invoice("acme", "USD", &["49.00", "0.01", "-12.50"])).unwrap();
        let got: Vec<_> = items.iter().map(|i| (i.line_key(), i.amount, i.inputs_hash.clone())).collect();
        assert_eq!(
            got,
            [
                ("inv_acme_2026-10_001".to_string(), 4900, Some("hash0".to_string())),
                ("inv_acme_2026-10_002".into(), 1, Some("hash1".into())),
                ("inv_acme_2026-10_003".into(), -1250, Some("hash2".into()))
            ]
        );
    }

    #[test]
    fn a_line_stripe_cannot_represent_fails_the_invoice_naming_the_line() {
        let e = plan_items(&invoice("acme", "KWD", &["1.000", "2.345"])).unwrap_err();
        assert!(matches!(&e, Error::Unrepresentable { line, .. } if line == "inv_acme_2026-10_002"), "{e}");
        assert!(!e.is_transient());
    }

    #[test]
    fn past_250_lines_the_tail_is_summed_into_one_item_that_says_which_lines() {
        let amounts: Vec<String> = (1..=300).map(|i| format!("{i}.00")).collect();
        let amounts: Vec<&str> = amounts.iter().map(String::as_str).collect();
        let items = plan_items(&invoice("acme", "USD", &amounts)).unwrap();
        assert_eq!(items.len(), MAX_ITEMS);
        let last = items.last().unwrap();
        assert_eq!(last.lines.len(), 51);
        assert_eq!(last.line_key(), "inv_acme_2026-10_250..inv_acme_2026-10_300");
        assert_eq!(last.amount, (250..=300).sum::<i64>() * 100);
        assert_eq!(items.iter().map(|i| i.amount).sum::<i64>(), (1..=300).sum::<i64>() * 100);
        assert_eq!(plan_items(&invoice("acme", "USD", &amounts[..250])).unwrap().len(), 250);
    }
}
