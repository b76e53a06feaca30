//! End to end: the official Lago and OpenMeter Python SDKs and OpenMeter's JavaScript SDK,
//! unchanged but for base URL and key, send events that meter counts; the served OpenAPI document
//! passes a real validator. The Python packages are installed from PyPI into `target/sdk-venv`,
//! the npm package into `target/sdk-node`, all pinned.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &[&str] = &["lago-python-client==1.55.0", "openmeter==1.0.0b236", "openapi-spec-validator==0.9.0"];
const NPM_PACKAGE: &str = "@openmeter/sdk@1.0.0-beta.232";

/// The venv's python, with the pinned packages; made once per test process (two tests use it,
/// and two `python3 -m venv` at once would clear each other's install).
fn sdk_python() -> PathBuf {
    static READY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    READY.get_or_init(install_sdk_python).clone()
}

fn install_sdk_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import lago_python_client, openmeter, openapi_spec_validator"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 runs");
        assert!(made.success(), "python3 -m venv failed");
        let pip = Command::new(venv.join("bin/pip")).args(["install", "-q"]).args(PACKAGES).status().expect("pip runs");
        assert!(pip.success(), "installing {PACKAGES:?} from PyPI failed");
    }
    python
}

/// A folder holding `node_modules/@openmeter/sdk`, installed when missing.
fn sdk_node() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-node");
    if !dir.join("node_modules/@openmeter/sdk/package.json").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let npm = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg(NPM_PACKAGE)
            .status()
            .expect("npm runs (Node.js and npm are on this kind of machine)");
        assert!(npm.success(), "installing {NPM_PACKAGE} from npm failed");
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lago_and_openmeter_sdks_work_unchanged() {
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "admin", None);
    let meter = Meter::start(dir.path(), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/compat.py");
    let url = meter.url.clone();
    let k = key.clone();
    let out =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).args([&url, &k, "acme", "sdk"]).output())
            .await
            .unwrap()
            .unwrap();
    assert!(out.status.success(), "SDK script failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["lago_create"]["transaction_id"], "sdk-lago-1", "{report}");
    assert_eq!(report["lago_create"]["lago_id"].as_str().unwrap().len(), 36);
    assert_eq!(report["lago_invalid"]["status"], 422, "{report}");
    assert!(report["lago_invalid"]["detail"].as_str().unwrap().contains("event.properties.input_tokens"));
    assert_eq!(report["openmeter"], "ok");
    assert_eq!(report["openmeter_resend"], "ok", "a resend with a fresh time is a duplicate: {report}");
    assert_eq!(report["openmeter_conflict"]["status"], 409, "another payload is a conflict: {report}");
    assert_eq!(report["openmeter_invalid"]["status"], 422, "{report}");

    let u = wait_counted(&meter.url, &key, "acme", now_us()).await;
    let v = values(&u);
    let got: Vec<(&str, &str)> = v.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap())).collect();
    assert_eq!(
        got,
        vec![
            ("active_users", "1"),
            ("agent_invocations", "1"),
            ("agent_tokens", "42"),
            ("api_calls", "1"),
            ("work_orders", "1"),
            ("work_orders_completed", "2"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmeter_javascript_sdk_retries_count_once() {
    let node_dir = tokio::task::spawn_blocking(sdk_node).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "admin", None);
    let meter = Meter::start(dir.path(), &[]);
    // Node resolves packages from the script's folder upwards: run a copy beside node_modules.
    let script = node_dir.join("compat.mjs");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/compat.mjs"), &script).unwrap();
    let url = meter.url.clone();
    let k = key.clone();
    let started = now_us();
    let out =
        tokio::task::spawn_blocking(move || Command::new("node").arg(script).args([&url, &k, "js", "npm"]).output())
            .await
            .unwrap()
            .unwrap();
    assert!(out.status.success(), "SDK script failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["resend"], "ok", "a resend with a fresh time is a duplicate: {report}");
    assert_eq!(report["conflict"]["status"], 409, "another payload is a conflict: {report}");
    let u = wait_counted(&meter.url, &key, "js", started).await;
    assert_eq!(values(&u)["api_calls"], "1", "counted once: {u}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_valid() {
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let meter = Meter::start(dir.path(), &[]);
    let doc = client().get(format!("{}/api/v1/openapi.json", meter.url)).send().await.unwrap().text().await.unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &doc).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).args(["-m", "openapi_spec_validator"]).arg(file).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the served document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let usage = &doc["paths"]["/api/v1/usage"]["get"]["parameters"];
    let tenant = usage.as_array().unwrap().iter().find(|p| p["name"] == "tenant").unwrap();
    assert_eq!((&tenant["in"], &tenant["required"]), (&json!("query"), &json!(false)), "{tenant}");
}
