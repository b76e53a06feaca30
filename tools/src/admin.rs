//! `meter subscriptions …` and `meter period …`: the admin API from the command line, against a
//! running meter (`--url`, `METER_URL`) with an admin key (`--key`, `METER_KEY`).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::path::PathBuf;

/// Where the server is and the key to use.
#[derive(Debug, Args, Clone)]
pub struct Remote {
    /// The meter API's base URL.
    #[arg(long, env = "METER_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin API key.
    #[arg(long, env = "METER_KEY", hide_env_values = true)]
    pub key: String,
}

/// When a change takes effect.
#[derive(Debug, Args, Clone)]
pub struct At {
    /// RFC 3339 time (default: now).
    #[arg(long)]
    pub at: Option<String>,
}

/// Subscription commands.
#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// Create a subscription.
    Create {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// The tenant it bills.
        #[arg(long)]
        tenant: String,
        /// Plan code.
        #[arg(long)]
        plan: String,
        /// monthly, quarterly or annual.
        #[arg(long, default_value = "monthly")]
        cycle: String,
        /// Years committed.
        #[arg(long, default_value_t = 1)]
        term_years: u32,
        /// Do not renew at the cycle's end.
        #[arg(long)]
        no_auto_renew: bool,
        /// Start with the plan's trial.
        #[arg(long)]
        trial: bool,
        /// When it takes effect.
        #[command(flatten)]
        at: At,
    },
    /// List subscriptions.
    List {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one subscription with its audit trail.
    Get {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// Subscription id.
        id: String,
    },
    /// Change plan or cycle, prorated to the second.
    ChangePlan {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// Subscription id.
        id: String,
        /// New plan.
        #[arg(long)]
        plan: String,
        /// New cycle.
        #[arg(long)]
        cycle: Option<String>,
        /// When it takes effect.
        #[command(flatten)]
        at: At,
    },
    /// Cancel at the end of the paid cycle.
    Cancel {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// Subscription id.
        id: String,
        /// When it takes effect.
        #[command(flatten)]
        at: At,
    },
    /// Payment received: back to active.
    Reactivate {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// Subscription id.
        id: String,
        /// When it takes effect.
        #[command(flatten)]
        at: At,
    },
    /// A payment failed: active becomes past_due.
    PaymentFailed {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// Subscription id.
        id: String,
        /// When it takes effect.
        #[command(flatten)]
        at: At,
    },
    /// End a trial now.
    Convert {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// Subscription id.
        id: String,
        /// When it takes effect.
        #[command(flatten)]
        at: At,
    },
}

/// Period commands.
#[derive(Debug, Subcommand)]
pub enum PeriodCommand {
    /// Close a period: freeze, rate, write drafts, reconcile (running it again changes nothing).
    Close {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// `YYYY-MM`.
        period: String,
        /// Write invoices.json, invoices.csv, report.json and report.csv here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Export a closed period's drafts and report.
    Export {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// `YYYY-MM`.
        period: String,
        /// Directory to write the four files to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `meter sync …` subcommands (beside running the sync role).
#[derive(Debug, clap::Subcommand)]
pub enum SyncCommand {
    /// Reconcile a closed period against the payment provider: every meter invoice held exactly
    /// once, each line and total to the cent. Prints the report (JSON) and exits non-zero when
    /// anything differs.
    Reconcile {
        /// Server and key.
        #[command(flatten)]
        remote: Remote,
        /// `YYYY-MM`.
        period: String,
    },
}

/// Runs a `meter sync` subcommand.
#[allow(clippy::print_stdout)]
pub async fn sync(command: SyncCommand) -> anyhow::Result<()> {
    match command {
        SyncCommand::Reconcile { remote, period } => {
            let client = Client::new(remote);
            let text = client
                .send(client.request(reqwest::Method::GET, &format!("/api/v1/periods/{period}/reconciliation")))
                .await?;
            let v: Value = serde_json::from_str(&text)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            let differing = v["with_differences"].as_u64().unwrap_or(0);
            let metering = v["with_metering_differences"].as_u64().unwrap_or(0);
            eprintln!(
                "meter: {period}: {} invoices against {}; {differing} with differences; {metering} whose metering differs in the close's report",
                v["invoices"], v["provider"]
            );
            if differing > 0 {
                bail!("{differing} invoices of {period} differ from the provider's");
            }
            if metering > 0 {
                bail!("{metering} invoices of {period} bill a tenant whose events accepted, counted and stored differ");
            }
        }
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    remote: Remote,
}

impl Client {
    fn new(remote: Remote) -> Self {
        Client { http: reqwest::Client::new(), remote }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.remote.url.trim_end_matches('/')))
            .bearer_auth(&self.remote.key)
    }

    /// Sends and returns the body, or fails with the server's `detail`.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<String> {
        let resp = req.send().await.with_context(|| format!("cannot reach meter at {}", self.remote.url))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let detail = v["detail"].as_str().unwrap_or(&text);
            match v.get("allowed") {
                Some(a) => bail!("{status}: {detail} (allowed: {a})"),
                None => bail!("{status}: {detail}"),
            }
        }
        Ok(text)
    }
}

fn with_at(mut body: Value, at: &At) -> Value {
    if let Some(at) = &at.at {
        body["at"] = json!(at);
    }
    body
}

/// Runs a subscription command and prints the answer (JSON) on stdout.
#[allow(clippy::print_stdout)]
pub async fn subscriptions(command: SubscriptionsCommand) -> anyhow::Result<()> {
    use SubscriptionsCommand as S;
    use reqwest::Method;
    let (remote, method, path, body) = match command {
        S::Create { remote, tenant, plan, cycle, term_years, no_auto_renew, trial, at } => {
            let body = json!({ "tenant": tenant, "plan": plan, "cycle": cycle, "term_years": term_years,
                "auto_renew": !no_auto_renew, "trial": trial });
            (remote, Method::POST, "/api/v1/subscriptions".to_string(), Some(with_at(body, &at)))
        }
        S::List { remote, tenant } => {
            let q = tenant.map(|t| format!("?tenant={t}")).unwrap_or_default();
            (remote, Method::GET, format!("/api/v1/subscriptions{q}"), None)
        }
        S::Get { remote, id } => (remote, Method::GET, format!("/api/v1/subscriptions/{id}"), None),
        S::ChangePlan { remote, id, plan, cycle, at } => {
            let mut body = json!({ "plan": plan });
            if let Some(c) = cycle {
                body["cycle"] = json!(c);
            }
            (remote, Method::POST, format!("/api/v1/subscriptions/{id}/change_plan"), Some(with_at(body, &at)))
        }
        S::Cancel { remote, id, at } => action(remote, &id, "cancel", &at),
        S::Reactivate { remote, id, at } => action(remote, &id, "reactivate", &at),
        S::PaymentFailed { remote, id, at } => action(remote, &id, "payment_failed", &at),
        S::Convert { remote, id, at } => action(remote, &id, "convert", &at),
    };
    let client = Client::new(remote);
    let mut req = client.request(method, &path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let text = client.send(req).await?;
    let v: Value = serde_json::from_str(&text)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn action(remote: Remote, id: &str, name: &str, at: &At) -> (Remote, reqwest::Method, String, Option<Value>) {
    (remote, reqwest::Method::POST, format!("/api/v1/subscriptions/{id}/{name}"), Some(with_at(json!({}), at)))
}

/// Runs a period command: progress on stderr, the summary on stdout.
#[allow(clippy::print_stdout)]
pub async fn period(command: PeriodCommand) -> anyhow::Result<()> {
    match command {
        PeriodCommand::Close { remote, period, out } => {
            let client = Client::new(remote);
            let req = client
                .request(reqwest::Method::POST, &format!("/api/v1/periods/{period}/close"))
                .header(reqwest::header::ACCEPT, "application/x-ndjson");
            let mut resp = req.send().await.with_context(|| format!("cannot reach meter at {}", client.remote.url))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let v: Value = serde_json::from_str(&resp.text().await?).unwrap_or(Value::Null);
                bail!("{status}: {}", v["detail"].as_str().unwrap_or("the close was refused"));
            }
            let mut pending = String::new();
            let mut summary = None;
            while let Some(chunk) = resp.chunk().await? {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = pending.find('\n') {
                    let line: String = pending.drain(..=i).collect();
                    let v: Value = serde_json::from_str(line.trim())?;
                    if let Some(p) = v.get("progress") {
                        eprintln!("meter: {}", progress_text(p));
                    } else if let Some(e) = v.get("error") {
                        bail!("{}: {}", e["status"], e["detail"].as_str().unwrap_or("the close failed"));
                    } else if let Some(c) = v.get("close") {
                        summary = Some(c.clone());
                    }
                }
            }
            let summary = summary.context("the server ended the answer without the close")?;
            // The rows that differ, from the report (the close's answer holds none of its rows).
            let differing = match summary["differences"].as_u64() {
                Some(0) | None => Vec::new(),
                Some(_) => {
                    let req = client.request(reqwest::Method::GET, &format!("/api/v1/periods/{period}/report"));
                    let report: Vec<Value> = serde_json::from_str(&client.send(req).await?)?;
                    report.into_iter().filter(|r| r["status"] != json!("ok")).collect()
                }
            };
            print_summary(&summary, &differing);
            if let Some(dir) = out {
                export(&client, &period, &dir).await?;
            }
        }
        PeriodCommand::Export { remote, period, out } => export(&Client::new(remote), &period, &out).await?,
    }
    Ok(())
}

fn progress_text(p: &Value) -> String {
    match p["stage"].as_str() {
        Some("census") => format!("census of the log: {} records read", p["read"]),
        Some("totals") => "reading the stores' totals".into(),
        Some("rating") if p["of"] != json!(0) => format!("rated: {} subscriptions", p["done"]),
        Some("rating") => format!("rating: {} subscriptions done", p["done"]),
        Some("adjusting") => {
            format!("adjusting {}: rating it again on today's totals", p["period"].as_str().unwrap_or("?"))
        }
        _ => p.to_string(),
    }
}

#[allow(clippy::print_stdout)]
fn print_summary(c: &Value, differing: &[Value]) {
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    println!("period {} closed at {}, frozen at watermark {}", s("period"), s("closed_at"), s("watermark"));
    if c["complete"] != json!(true) {
        println!("  closed before the lateness window ended: later events go into adjustments next period");
    }
    println!("  price list {}; {} invoice drafts", s("price_version"), c["invoices"]);
    if let Some(totals) = c["totals"].as_object() {
        for (currency, total) in totals {
            println!("  total {currency} {}", total.as_str().unwrap_or_default());
        }
    }
    println!("reconciliation (tenant, meter: accepted / counted / stored / rated): {} differences", c["differences"]);
    for r in differing {
        let v = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        println!(
            "  {} {}: {} / {} / {} / {}  {}",
            v("tenant"),
            v("meter"),
            v("accepted"),
            v("counted"),
            v("stored"),
            v("rated"),
            v("status")
        );
    }
}

async fn export(client: &Client, period: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (what, format) in [("invoices", "json"), ("invoices", "csv"), ("report", "json"), ("report", "csv")] {
        let req = client.request(reqwest::Method::GET, &format!("/api/v1/periods/{period}/{what}?format={format}"));
        let body = client.send(req).await?;
        let path = dir.join(format!("{what}.{format}"));
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("meter: wrote {}", path.display());
    }
    Ok(())
}
