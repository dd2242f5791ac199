//! A real `nats-server` for the tests (make test installs it).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use taphook::demo::free_port;

/// `nats-server -js` on a free loopback port, with its own store.
pub struct Nats {
    pub port: u16,
    store: tempfile::TempDir,
    /// More arguments (TLS).
    extra: Vec<String>,
    pub child: Child,
}

impl Nats {
    pub fn start() -> Nats {
        Self::start_with(Vec::new())
    }

    /// Requiring user `user` with password `password`.
    pub fn start_auth(user: &str, password: &str) -> Nats {
        Self::start_with(vec![
            "--user".into(),
            user.into(),
            "--pass".into(),
            password.into(),
        ])
    }

    /// Requiring TLS, with `server.pem` and `server.key` of `pki`.
    pub fn start_tls(pki: &super::pki::Pki) -> Nats {
        let path = |n: &str| pki.path(n).display().to_string();
        Self::start_with(vec![
            "--tls".into(),
            "--tlscert".into(),
            path("server.pem"),
            "--tlskey".into(),
            path("server.key"),
        ])
    }

    fn start_with(extra: Vec<String>) -> Nats {
        let store = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let child = Self::spawn(port, store.path(), &extra);
        Nats {
            port,
            store,
            extra,
            child,
        }
    }

    fn spawn(port: u16, store: &Path, extra: &[String]) -> Child {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (make test installs it: apt-get install nats-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = Self::spawn(self.port, self.store.path(), &self.extra);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}
