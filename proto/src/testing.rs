//! A real `nats-server` for tests: JetStream on, a free port, its own store directory, killed on
//! drop. The binary is `$NATS_SERVER` or `nats-server` on the `PATH` (the test command installs
//! it from the OS packages). [`run_to_exit`] runs a binary with a deadline.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server`.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// `name`, cluster port and the cluster's route URLs, for a server of a cluster.
    cluster: Option<(String, u16, Vec<String>)>,
    /// JetStream's `max_file_store`.
    max_file_store: &'static str,
}

/// Ports a test server tries before it gives up.
const ATTEMPTS: usize = 5;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

impl NatsServer {
    /// Starts a server on a free port with a new store directory.
    pub fn start() -> Self {
        Self::start_with_file_store("1TB")
    }

    /// Starts a server whose JetStream may use `max_file_store` (`"2GB"`, …) of file storage.
    pub fn start_with_file_store(max_file_store: &'static str) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            cluster: None,
            max_file_store,
        };
        for _ in 0..ATTEMPTS {
            if server.spawn() {
                return server;
            }
            server.port = free_port();
        }
        panic!("nats-server could not bind a free port in {ATTEMPTS} attempts");
    }

    /// Starts `size` servers in one cluster (`n1`, `n2`, …; JetStream clustered), each on free
    /// ports with its own store. JetStream answers once they have elected a leader: see
    /// [`wait_for_jetstream`].
    pub fn cluster(size: usize) -> Vec<Self> {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        cluster_ports
            .iter()
            .enumerate()
            .map(|(i, cluster_port)| {
                let mut server = Self {
                    child: None,
                    port: free_port(),
                    dir: tempfile::tempdir().expect("a temporary directory"),
                    cluster: Some((format!("n{}", i + 1), *cluster_port, routes.clone())),
                    max_file_store: "1TB",
                };
                assert!(
                    server.spawn(),
                    "nats-server {} could not bind its ports",
                    i + 1
                );
                server
            })
            .collect()
    }

    /// The server's name in its cluster.
    pub fn name(&self) -> Option<&str> {
        self.cluster.as_ref().map(|(name, _, _)| name.as_str())
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "nats-server could not start again on port {}",
            self.port
        );
    }

    /// Starts the server on its port; whether it is ready (false: it exited, its port taken).
    fn spawn(&mut self) -> bool {
        let binary = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("a log file");
        // The stream reserves its limit (8 GiB by default) against JetStream's store limit,
        // which by default is 75% of the free disk: a set limit keeps the tests independent of
        // how full the machine's disk is.
        let config = self.dir.path().join("nats.conf");
        let store_dir = self.store_dir();
        let store_dir = store_dir.to_str().expect("a UTF-8 temporary path");
        let max_file_store = self.max_file_store;
        let mut text = format!(
            "jetstream {{\n  store_dir: {store_dir:?}\n  max_file_store: {max_file_store}\n}}\n"
        );
        if let Some((name, cluster_port, routes)) = &self.cluster {
            text.push_str(&format!(
                "server_name: {name}\ncluster {{\n  name: chat\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: {routes:?}\n}}\n"
            ));
        }
        std::fs::write(&config, text).expect("the server's configuration is written");
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary}: {e}; install it with `apt-get install nats-server` or run .ci/run")
            });
        self.child = Some(child);
        // Ready once its own log says so: a connection to the port could reach another test's
        // server that took the port between `free_port` and this one's bind (this one then
        // exits), and that server may go away with its test.
        let log = self.dir.path().join("nats.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            if logged.contains("Server is ready") {
                return true;
            }
            let child = self.child.as_mut().expect("the server was spawned");
            if child.try_wait().is_ok_and(|status| status.is_some()) {
                self.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (at most `within`) until JetStream answers at `url` (a cluster has elected its leader).
pub async fn wait_for_jetstream(url: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // The list of streams: an error until the cluster has a leader. (Not the account's
        // info: nats-server 2.9's reply to that does not parse here.)
        if let Ok(client) = async_nats::connect(url).await
            && let Ok(Ok(reply)) = tokio::time::timeout(
                Duration::from_secs(2),
                client.request("$JS.API.STREAM.NAMES", "".into()),
            )
            .await
            && !String::from_utf8_lossy(&reply.payload).contains("\"error\"")
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "JetStream does not answer at {url}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How a binary run by [`run_to_exit`] ended.
#[derive(Debug)]
pub struct Exited {
    /// Its exit code; `None` when a signal ended it, or when it was killed at the deadline.
    pub code: Option<i32>,
    /// Whether it was still running at the deadline (then it was killed).
    pub timed_out: bool,
    /// What it wrote to stderr.
    pub stderr: String,
}

/// Runs `binary` with `args` and no environment (so no `CHAT_*` variable of the caller's leaks
/// in), and waits for it to exit; at `deadline` it is killed instead: a test of a binary that
/// should refuse its options at once must not hang when it does not.
pub fn run_to_exit(binary: &str, args: &[&str], deadline: Duration) -> Exited {
    use std::io::Read as _;

    let mut child = Command::new(binary)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    // Read on another thread: a child that logs while it hangs must not block on a full pipe.
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let until = Instant::now() + deadline;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break (status, false);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            break (child.wait().expect("the killed child can be reaped"), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Exited {
        code: if timed_out { None } else { status.code() },
        timed_out,
        stderr: reader.join().expect("the stderr reader does not panic"),
    }
}
