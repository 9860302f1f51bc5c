//! A real cluster for tests, this crate's and others': `nats-server` with JetStream, the
//! persistence worker on SQLite and gateways, each on free ports, started in this process exactly
//! as their binaries start them.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use chat_proto::testing::NatsServer;
use clap::Parser as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Cli;

pub mod client;

/// The HS256 secret of test gateways.
pub const SECRET: &str = "test-secret";
/// How long a test waits for anything.
pub const WAIT: Duration = Duration::from_secs(10);

/// A component's shutdown signal: resolves when it is to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A component running in this process, stopped by its shutdown signal.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Runs a component as a task: `run` gets the shutdown signal that [`Running::stop`] gives.
    pub fn spawn<F>(run: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async {
            let _ = stopped.await;
        });
        Self {
            stop: Some(stop),
            task: Some(tokio::spawn(run(shutdown))),
        }
    }

    /// Signals shutdown and waits for the component to finish.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A gateway running in this process.
pub struct Gateway {
    /// Its WebSocket listener.
    pub ws: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
    /// Its server API's listener, when `--api-listen` was given (its port is then a free one).
    pub api: Option<SocketAddr>,
    /// Its task.
    pub running: Running,
}

impl Gateway {
    /// `ws://<addr>/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }
}

/// NATS, a worker and two gateways.
pub struct Cluster {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    pub worker: Running,
    pub gateways: Vec<Gateway>,
}

pub fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("chat.db")
}

pub async fn start_worker(nats_url: &str, db: PathBuf, extra: &[&str]) -> Running {
    let mut args = vec![
        "worker",
        "--nats-url",
        nats_url,
        "--db-path",
        db.to_str().expect("a UTF-8 path"),
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let config = chat_persistence_worker::Config::try_parse_from(args).expect("worker flags parse");
    let running = Running::spawn(|shutdown| async move {
        if let Err(error) = chat_persistence_worker::run(config, shutdown).await {
            panic!("worker failed: {error}");
        }
    });
    // The worker owns the stream: wait until it exists and the worker answers requests (a
    // gateway refuses connections while no worker answers).
    let servers = chat_proto::options::nats_servers(nats_url).expect("NATS URLs");
    let client = async_nats::connect(servers).await.expect("nats is up");
    let js = async_nats::jetstream::new(client.clone());
    let worker = crate::worker::WorkerClient::new(client, Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + WAIT;
    while js.get_stream(chat_proto::subjects::STREAM).await.is_err()
        || worker.membership("probe", "probe").await.is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not create the stream and answer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}

/// The abuse limits a test gateway runs without: tests send from one address and a few users
/// at once.
pub const UNLIMITED: [&str; 6] = [
    "--message-rate",
    "0",
    "--connect-rate-per-ip",
    "0",
    "--failed-auth-rate-per-ip",
    "0",
];

/// A test gateway's settings: without the abuse limits ([`UNLIMITED`]) unless `extra` sets
/// them; `extra` replaces any default flag it names.
pub fn settings(nats_url: &str, extra: &[&str]) -> crate::Settings {
    let defaults = [
        ("--jwt-secret", SECRET),
        ("--allowed-origins", "https://app.example"),
        ("--auth-timeout", "1s"),
        ("--request-timeout", "2s"),
        ("--drain-time", "1s"),
    ]
    .into_iter()
    .chain(UNLIMITED.chunks(2).map(|pair| (pair[0], pair[1])));
    let mut args = vec!["chat-gateway", "--nats-url", nats_url];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    Cli::try_parse_from(args)
        .expect("gateway flags parse")
        .config
        .validate()
        .expect("gateway settings are valid")
}

/// Starts a gateway in-process with [`settings`].
pub async fn start_gateway(nats_url: &str, extra: &[&str]) -> Gateway {
    let settings = settings(nats_url, extra);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = match settings.config.api_listen {
        Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        None => None,
    };
    let (ws, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let api_addr = api.as_ref().map(|api| api.local_addr().unwrap());
    let running = Running::spawn(|shutdown| async move {
        let listeners = crate::Listeners {
            ws: listener,
            admin,
            api,
        };
        crate::run(settings, listeners, shutdown)
            .await
            .expect("the gateway runs");
    });
    Gateway {
        ws,
        admin: admin_addr,
        api: api_addr,
        running,
    }
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(gateway_flags: &[&str]) -> Self {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let worker = start_worker(&nats.url(), db_path(&dir), &[]).await;
        let mut gateways = Vec::new();
        for _ in 0..2 {
            gateways.push(start_gateway(&nats.url(), gateway_flags).await);
        }
        Self {
            nats,
            dir,
            worker,
            gateways,
        }
    }

    pub fn url(&self, gateway: usize) -> String {
        self.gateways[gateway].url()
    }

    pub async fn stop_worker(&mut self) {
        self.worker.stop().await;
    }

    pub async fn restart_worker(&mut self) {
        self.restart_worker_with(&[]).await;
    }

    pub async fn restart_worker_with(&mut self, flags: &[&str]) {
        self.worker = start_worker(&self.nats.url(), db_path(&self.dir), flags).await;
    }
}

/// The key of the test gateways' server API.
pub const API_KEY: &str = "test-api-key-0123456789abcdef0123456789";
/// The admin key of the test gateways' server API.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef012345678";

/// The flags that turn the server API on, on a free port, with the key [`API_KEY`] and the admin
/// key [`ADMIN_KEY`] (their files are written once per test process).
pub fn api_flags() -> [&'static str; 6] {
    static FILES: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (keys, admin) = FILES.get_or_init(|| {
        let write = |what: &str, line: String| {
            let name = format!("chat-test-{what}-{}", std::process::id());
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, line).expect("a keys file is written");
            path.to_str().expect("a UTF-8 path").to_owned()
        };
        (
            write("api-keys", format!("# test\nbackend:{API_KEY}\n")),
            write("api-admin-keys", format!("ops:{ADMIN_KEY}\n")),
        )
    });
    [
        "--api-listen",
        "127.0.0.1:0",
        "--api-keys-file",
        keys,
        "--api-admin-keys-file",
        admin,
    ]
}

/// A test user's token.
pub fn token(user: &str) -> String {
    crate::auth::mint_hs256(SECRET.as_bytes(), user, Duration::from_secs(3600), None)
}

/// A test user's token with a `role` claim.
pub fn role_token(user: &str, role: &str) -> String {
    crate::auth::mint_hs256(
        SECRET.as_bytes(),
        user,
        Duration::from_secs(3600),
        Some(role),
    )
}
