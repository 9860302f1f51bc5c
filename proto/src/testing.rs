//! A real `nats-server` for tests: JetStream on, a free port, its own store directory, killed on
//! drop. The binary is `$NATS_SERVER` or `nats-server` on the `PATH` (the test command installs
//! it from the OS packages). [`run_to_exit`] runs a binary with a deadline.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server`.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

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
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        server.spawn();
        server
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
        self.spawn();
    }

    fn spawn(&mut self) {
        let binary = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("a log file");
        // The stream reserves its limit (8 GiB by default) against JetStream's store limit,
        // which by default is 75% of the free disk: a set limit keeps the tests independent of
        // how full the machine's disk is.
        let config = self.dir.path().join("nats.conf");
        let store_dir = self.store_dir();
        let store_dir = store_dir.to_str().expect("a UTF-8 temporary path");
        std::fs::write(
            &config,
            format!("jetstream {{\n  store_dir: {store_dir:?}\n  max_file_store: 1TB\n}}\n"),
        )
        .expect("the server's configuration is written");
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
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
