//! A WebSocket client that speaks the protocol, for tests: requests wait for their answer,
//! pushes are kept until a test expects them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{WAIT, token};

/// An upgrade request of `url` with `user`'s token in the `Authorization` header.
pub fn upgrade_request(url: &str, user: &str) -> Request {
    let mut request = url.into_client_request().unwrap();
    let bearer = format!("Bearer {}", token(user));
    request
        .headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    request
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upgrades with `request`, which the server answers after the upgrade with an error and a
/// close: the error frame and the close code.
pub async fn refused(request: Request) -> (Value, Option<u16>) {
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the refusal comes after the upgrade");
    let mut client = Client::from_ws(ws);
    let frame = client.next_frame(WAIT).await.expect("an error frame");
    (frame, client.expect_close().await)
}

/// A protocol client: requests wait for their answer; pushes are kept for `expect`.
pub struct Client {
    ws: Ws,
    pushes: VecDeque<Value>,
    next_id: u64,
    pub connected: Value,
}

impl Client {
    /// Connects with the token in the `Authorization` header and reads `connected`.
    pub async fn connect(url: &str, user: &str) -> Self {
        Self::connect_with(upgrade_request(url, user))
            .await
            .expect("the upgrade succeeds")
    }

    /// Like [`Client::connect`], with a token whose `role` claim is `role`.
    pub async fn connect_as(url: &str, user: &str, role: &str) -> Self {
        let mut request = url.into_client_request().unwrap();
        let bearer = format!("Bearer {}", super::role_token(user, role));
        request
            .headers_mut()
            .insert("authorization", bearer.parse().unwrap());
        Self::connect_with(request)
            .await
            .expect("the upgrade succeeds")
    }

    /// Upgrades with `request` and reads `connected`; the upgrade's refusal is the error.
    pub async fn connect_with(request: Request) -> Result<Self, tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self::from_ws(ws).connected().await)
    }

    /// Reads `connected`.
    async fn connected(mut self) -> Self {
        self.connected = self.expect("connected").await;
        self
    }

    /// Like [`Client::connect`], with a tiny TCP receive buffer: a client that stops reading
    /// fills it at once.
    pub async fn connect_small_buffer(url: &str, user: &str) -> Self {
        let request = upgrade_request(url, user);
        let host = request.uri().authority().unwrap().as_str().to_owned();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4 * 1024).unwrap();
        let stream = socket.connect(host.parse().unwrap()).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .expect("the upgrade succeeds");
        Self::from_ws(ws).connected().await
    }

    pub fn from_ws(ws: Ws) -> Self {
        Self {
            ws,
            pushes: VecDeque::new(),
            next_id: 0,
            connected: Value::Null,
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into().into()))
            .await
            .expect("the frame is sent");
    }

    /// The next frame, or `None` at the close or after `WAIT`; a close is `{"close": code}`.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(wait, self.ws.next()).await.ok()??;
            match message {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("frames are JSON"));
                }
                Ok(Message::Close(frame)) => {
                    return Some(json!({ "close": frame.map(|f| u16::from(f.code)) }));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Sends a request and returns its answer (`ack` or `error` frame); pushes read meanwhile
    /// are kept.
    pub async fn request(&mut self, event: &str, data: Value) -> Value {
        self.next_id += 1;
        let id = format!("r-{}", self.next_id);
        let frame = json!({ "event": event, "requestId": id, "data": data });
        self.send_text(frame.to_string()).await;
        self.answer(&id).await
    }

    pub async fn answer(&mut self, id: &str) -> Value {
        loop {
            let frame = self
                .next_frame(WAIT)
                .await
                .unwrap_or_else(|| panic!("no answer to {id}"));
            if frame["requestId"] == id {
                return frame;
            }
            assert!(
                frame.get("close").is_none(),
                "closed while waiting for {id}: {frame}"
            );
            self.pushes.push_back(frame);
        }
    }

    /// The ack data of a request that must succeed.
    pub async fn ok(&mut self, event: &str, data: Value) -> Value {
        let answer = self.request(event, data).await;
        assert_eq!(answer["event"], "ack", "{event} failed: {answer}");
        answer["data"].clone()
    }

    /// The error code of a request that must fail.
    pub async fn fails(&mut self, event: &str, data: Value) -> String {
        let answer = self.request(event, data).await;
        assert_eq!(answer["event"], "error", "{event} should fail: {answer}");
        answer["data"]["code"].as_str().unwrap().to_owned()
    }

    /// The data of the next push named `event` (others before it are kept).
    pub async fn expect(&mut self, event: &str) -> Value {
        self.expect_within(event, WAIT)
            .await
            .unwrap_or_else(|| panic!("no {event} push"))
    }

    pub async fn expect_within(&mut self, event: &str, wait: Duration) -> Option<Value> {
        if let Some(i) = self.pushes.iter().position(|p| p["event"] == event) {
            return self.pushes.remove(i).map(|p| p["data"].clone());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next_frame(left).await?;
            if frame["event"] == event {
                return Some(frame["data"].clone());
            }
            self.pushes.push_back(frame);
        }
    }

    /// Whether a push named `event` was read and kept (it came before those taken since).
    pub fn kept(&self, event: &str) -> bool {
        self.pushes.iter().any(|p| p["event"] == event)
    }

    /// Asserts that no push named `event` arrives within `wait`.
    pub async fn expect_none(&mut self, event: &str, wait: Duration) {
        if let Some(data) = self.expect_within(event, wait).await {
            panic!("unexpected {event}: {data}");
        }
    }

    /// Waits for the close and returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            let frame = self.next_frame(WAIT).await?;
            if let Some(code) = frame.get("close") {
                return code.as_u64().map(|c| c as u16);
            }
        }
    }
}

/// Creates a conversation of `owner` with `others` and returns its id.
pub async fn create_room(owner: &mut Client, others: &[&str]) -> String {
    let data = owner
        .ok(
            "room:create",
            json!({ "title": "test", "participantIds": others }),
        )
        .await;
    data["conversation"]["id"].as_str().unwrap().to_owned()
}

/// Creates a public conversation of `owner` alone (others join it) and returns its id.
pub async fn create_public_room(owner: &mut Client) -> String {
    let data = owner
        .ok(
            "room:create",
            json!({ "title": "lobby", "participantIds": [], "private": false }),
        )
        .await;
    data["conversation"]["id"].as_str().unwrap().to_owned()
}

/// `GET path` on an admin port; the whole response.
pub async fn get(admin: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// One request to a server API: `METHOD path` with `key` as the bearer token and `body` as
/// JSON; the status and the JSON answer (`Value::Null` for an empty one).
pub async fn http(
    api: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        request.push_str(&format!("authorization: Bearer {key}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("content-type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let mut stream = TcpStream::connect(api).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(super::WAIT, stream.read_to_string(&mut response))
        .await
        .expect("the server API answers in time")
        .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
    };
    (status, value)
}
