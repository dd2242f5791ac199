//! Real RabbitMQ and Redis servers for the destination tests, on free
//! loopback ports with stores of their own (`make test-prereqs` installs
//! Debian's `rabbitmq-server` and `redis-server` and stops their system
//! services).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use taphook::demo::free_port;

fn wait_port(port: u16, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `rabbitmq-server` as root, its node, distribution and epmd ports free
/// ones, its database in a temporary directory; user `guest`.
pub struct Rabbit {
    pub port: u16,
    /// The TLS listener's port (`start_tls`).
    pub tls_port: Option<u16>,
    epmd: u16,
    dir: tempfile::TempDir,
    /// Lines added to `rabbitmq.conf`.
    conf: String,
    child: Child,
}

impl Rabbit {
    pub fn start() -> Rabbit {
        Self::start_with(None, String::new())
    }

    /// With a TLS listener too, its certificate `server.pem` of `pki`.
    pub fn start_tls(pki: &super::pki::Pki) -> Rabbit {
        let port = free_port().unwrap();
        let path = |n: &str| pki.path(n).display().to_string();
        let conf = format!(
            "listeners.ssl.default = 127.0.0.1:{port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
            path("ca.pem"),
            path("server.pem"),
            path("server.key")
        );
        Self::start_with(Some(port), conf)
    }

    fn start_with(tls_port: Option<u16>, conf: String) -> Rabbit {
        let dir = tempfile::tempdir().unwrap();
        let (port, epmd) = (free_port().unwrap(), free_port().unwrap());
        let child = Self::spawn(port, epmd, dir.path(), &conf);
        Rabbit {
            port,
            tls_port,
            epmd,
            dir,
            conf,
            child,
        }
    }

    fn spawn(port: u16, epmd: u16, dir: &Path, conf: &str) -> Child {
        std::fs::write(dir.join("plugins"), "[].").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n{conf}"),
        )
        .unwrap();
        let node = format!("taphook{port}@localhost");
        // The packaged wrapper switches to the rabbitmq user; the server
        // script itself runs as whoever starts it.
        let bin = ["/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server"]
            .into_iter()
            .find(|b| !b.starts_with('/') || Path::new(b).exists())
            .unwrap();
        let child = Command::new(bin)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_DIST_PORT", free_port().unwrap().to_string())
            .env("ERL_EPMD_PORT", epmd.to_string())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("HOME", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server (make test installs it: apt-get install rabbitmq-server)");
        wait_port(port, "rabbitmq-server", Duration::from_secs(60));
        child
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `kill -9` of the broker (its Erlang VM); its database stays.
    pub fn kill9(&mut self) {
        // The Erlang VM outlives the script: its command line names its
        // epmd port.
        let _ = Command::new("pkill")
            .args(["-9", "-f", &format!("epmd_port {}", self.epmd)])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The broker again on the same port and database.
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.port, self.epmd, self.dir.path(), &self.conf);
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // End the VM, then its epmd.
        self.kill9();
        // epmd refuses `-kill` while it still lists the node: end the
        // process listening on its port instead.
        if let Ok(out) = Command::new("ss")
            .args(["-ltnpH", &format!("sport = :{}", self.epmd)])
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            for pid in text
                .split("pid=")
                .skip(1)
                .filter_map(|p| p.split(',').next())
            {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
}

/// `redis-server` on a free port: no persistence, or (`durable`) an
/// append-only file synced before each answer, so a `kill -9` loses no
/// acknowledged write.
pub struct Redis {
    pub port: u16,
    dir: Option<tempfile::TempDir>,
    /// Arguments for a TLS port too.
    tls: Vec<String>,
    child: Child,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(None, Vec::new())
    }

    pub fn durable() -> Redis {
        Self::start_with(Some(tempfile::tempdir().unwrap()), Vec::new())
    }

    /// With a TLS port (`tls_port`) beside the plain one, its certificate
    /// `server.pem` of `pki`.
    pub fn start_tls(pki: &super::pki::Pki, tls_port: u16) -> Redis {
        let path = |n: &str| pki.path(n).display().to_string();
        let tls = [
            "--tls-port".to_string(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let redis = Self::start_with(None, tls.to_vec());
        wait_port(tls_port, "redis-server (TLS)", Duration::from_secs(10));
        redis
    }

    fn start_with(dir: Option<tempfile::TempDir>, tls: Vec<String>) -> Redis {
        let port = free_port().unwrap();
        Redis {
            port,
            child: Self::spawn(port, dir.as_ref().map(|d| d.path()), &tls),
            dir,
            tls,
        }
    }

    fn spawn(port: u16, dir: Option<&Path>, tls: &[String]) -> Child {
        let port_arg = port.to_string();
        let mut args = vec!["--port", &port_arg, "--bind", "127.0.0.1", "--save", ""];
        let dir_arg = dir.map(|d| d.display().to_string());
        match &dir_arg {
            Some(d) => args.extend(["--dir", d, "--appendonly", "yes", "--appendfsync", "always"]),
            None => args.extend(["--appendonly", "no"]),
        }
        // Stream appends are announced (the ordering tests listen).
        args.extend(["--notify-keyspace-events", "Et"]);
        let child = Command::new("redis-server")
            .args(&args)
            .args(tls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it: apt-get install redis-server)");
        wait_port(port, "redis-server", Duration::from_secs(10));
        child
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = Self::spawn(self.port, self.dir.as_ref().map(|d| d.path()), &self.tls);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The TLS port (`start_tls`).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls
            .iter()
            .position(|a| a == "--tls-port")
            .and_then(|i| self.tls.get(i + 1))
            .and_then(|p| p.parse().ok())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}
