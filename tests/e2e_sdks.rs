//! End to end: the official Lago and OpenMeter Python SDKs, unchanged but for base URL and key,
//! send events that meter counts. The SDKs are installed from PyPI into `target/sdk-venv`, pinned.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &[&str] = &["lago-python-client==1.55.0", "openmeter==1.0.0b236"];

fn sdk_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import lago_python_client, openmeter"])
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
