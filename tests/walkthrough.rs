//! The README's "Your importer in ten minutes", played against a real
//! importer (datasette-upload-csvs from PyPI, installed by `make test`
//! into /tmp/importers): `taphook record` in front of it, a successful and
//! a failing import through it, `taphook draft --tests`, `taphook test`,
//! then `taphook run` with the untouched draft and a webhook, and the same
//! two imports again: the receiver gets each session's upload and its end
//! (success, failure) from the polls, each session under one key.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use taphook::demo::free_port;
use taphook::demo::receiver::Receiver;

const IMPORTER: &str = "datasette-upload-csvs";

fn importer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/importers")
        .join(IMPORTER)
}

/// The importer, installed (quietly, at once when it is already there).
fn install() {
    let out = Command::new("bash")
        .arg(importer_dir().join("setup.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot install {IMPORTER} (make test-prereqs does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn local(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// One user's import through `base` (the driver plays what the upload
/// page's JavaScript does).
fn drive(base: &str, fail: bool) {
    let mut cmd = Command::new("python3");
    cmd.arg(importer_dir().join("drive.py"))
        .arg(base)
        .arg("--quiet");
    if fail {
        cmd.arg("--fail");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "drive.py {base} (fail: {fail}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn taphook(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_importer_from_nothing_to_delivered_webhooks() {
    install();
    let dir = tempfile::tempdir().unwrap();
    let upstream = free_port().unwrap();
    let _importer = Killed(
        Command::new("bash")
            .arg(importer_dir().join("serve.sh"))
            .arg(upstream.to_string())
            .arg(dir.path().join("importer"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(local(upstream)).await;
    let upstream_url = format!("http://127.0.0.1:{upstream}");

    // 1. Record: no config, no routes.
    let listen = local(free_port().unwrap());
    let mut recorder = Killed(
        Command::new(env!("CARGO_BIN_EXE_taphook"))
            .args(["record", "--upstream", &upstream_url, "--listen"])
            .arg(listen.to_string())
            .current_dir(dir.path())
            .stderr(std::fs::File::create(dir.path().join("record.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(listen).await;
    drive(&format!("http://{listen}"), false);
    drive(&format!("http://{listen}"), true);
    let status = Command::new("kill")
        .args(["-INT", &recorder.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorder.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "taphook record did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("record.log")).unwrap();
    let har = log
        .lines()
        .find_map(|l| l.strip_prefix("next: taphook draft --har "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("{log}"))
        .to_string();

    // 2. Draft, with its test.
    std::fs::create_dir_all(dir.path().join("rules/tests")).unwrap();
    let out = taphook(
        &[
            "draft",
            "--har",
            &har,
            "--tests",
            "rules/tests/importer.yaml",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let draft = String::from_utf8(out.stdout).unwrap();
    std::fs::write(dir.path().join("rules/importer.yaml"), &draft).unwrap();

    // 4. Test.
    let out = taphook(&["test", "--rules", "rules", "rules/tests/"], dir.path());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{draft}");
    assert!(report.ends_with("1 passed, 0 failed\n"), "{report}");

    // 5. Deliver: a webhook for everything, and taphook in front.
    let receiver = Receiver::start().await.unwrap();
    std::fs::write(
        dir.path().join("rules/webhooks.yaml"),
        format!(
            "webhooks:\n  - key: importer-events\n    url: http://{}/hook\n    events: [\"*\"]\n",
            receiver.addr
        ),
    )
    .unwrap();
    let (proxy, admin) = (local(free_port().unwrap()), local(free_port().unwrap()));
    std::fs::write(
        dir.path().join("taphook.yaml"),
        format!(
            "listen: {proxy}\nupstream: {upstream_url}\nadmin_listen: {admin}\nrules_dir: rules\ndata_dir: data\n\
             delivery:\n  allow_private_networks: [127.0.0.0/8]\n"
        ),
    )
    .unwrap();
    let out = taphook(&["check"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _taphook = Killed(
        common::launch(dir.path(), admin, proxy, "info", &[])
            .await
            .unwrap_or_else(|log| panic!("{log}")),
    );
    drive(&format!("http://{proxy}"), false);
    drive(&format!("http://{proxy}"), true);

    let deadline = Instant::now() + Duration::from_secs(20);
    let events: Vec<Value> = loop {
        let got: Vec<Value> = receiver
            .received_on("/hook")
            .iter()
            .map(|r| r.json())
            .filter(|e| e["event_type"] != "post_login")
            .collect();
        if got.len() >= 4 || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_string(),
                e["embed_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    let types: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "file_uploaded",
            "file_uploaded",
            "import_failed",
            "import_succeeded"
        ],
        "{events:#?}\n{draft}"
    );
    // Each end is in the session of its upload (the task id).
    let session_of = |t: &str| &seen.iter().find(|(x, _)| x == t).unwrap().1;
    let uploads: Vec<&String> = seen
        .iter()
        .filter(|(t, _)| t == "file_uploaded")
        .map(|(_, s)| s)
        .collect();
    assert_ne!(uploads[0], uploads[1]);
    for end in ["import_succeeded", "import_failed"] {
        assert!(
            !session_of(end).is_empty() && uploads.contains(&session_of(end)),
            "{events:#?}"
        );
    }
}
