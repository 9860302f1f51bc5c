//! A socket's writer: the task that owns the write half and drains the outbox in batches, one
//! flush (one system call) per batch, until the session closes it, the peer goes, or the socket
//! is evicted. Generic over the sink, so it runs without a network in tests. Before it starts,
//! the frames of the session's opening go out on the whole socket ([`write_opening`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use super::Eviction;
use super::outbox::{Outbound, Outbox};
use crate::error::CloseReason;

/// Most frames the writer sends before it flushes.
const WRITE_BATCH: usize = 64;
/// How long an evicted socket's writer keeps trying to deliver what it holds and the close frame.
pub const CLOSE_LINGER: Duration = Duration::from_secs(3);

/// How a socket's writer ends.
enum WriterEnd {
    /// Evicted (the peer may not be reading).
    Evicted(CloseReason),
    /// The outbox was closed and drained.
    Drained,
    /// The session closes.
    Close(CloseReason),
    /// The peer is gone.
    Failed,
}

/// Writes what `outbox` holds to `sink` until the session ends or the socket is evicted; then
/// the close frame.
pub async fn write_loop<S>(mut sink: S, outbox: Arc<Outbox>, eviction: Arc<Eviction>)
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let end = write_frames(&mut sink, &outbox, &eviction).await;
    // Boxed, like each batch: the state of a step taken once or briefly would otherwise sit in
    // every idle socket's writer.
    Box::pin(async move {
        let close = |reason: CloseReason| {
            Message::Close(Some(CloseFrame {
                code: CloseCode::from(reason.code()),
                reason: Utf8Bytes::from_static(reason.text()),
            }))
        };
        let _ = match end {
            // Stuck writing to a peer that does not read, perhaps: what was half written is
            // flushed before the close frame, if the peer reads again soon.
            WriterEnd::Evicted(reason) => {
                tokio::time::timeout(CLOSE_LINGER, sink.send(close(reason))).await
            }
            WriterEnd::Close(reason) => {
                tokio::time::timeout(Duration::from_secs(1), sink.send(close(reason))).await
            }
            WriterEnd::Drained => tokio::time::timeout(Duration::from_secs(1), sink.close()).await,
            WriterEnd::Failed => return,
        };
    })
    .await;
}

/// Writes the text frames that `outbox` holds as a session opens (its `connected` answer, the
/// largest frame an idle socket gets, about 1.2 KiB with four rooms) in one write on the socket
/// itself, before the socket is split. Through tungstenite, whose write buffer keeps the largest
/// size it ever held, each idle socket would keep that frame's size for its life; sent in small
/// fragments instead, it took a system call each. Anything else queued is left to the writer.
pub async fn write_opening(
    ws: &mut WebSocketStream<TcpStream>,
    outbox: &Outbox,
) -> Result<(), tungstenite::Error> {
    // What tungstenite has pending (a pong) goes first: its buffer is then empty, and the bytes
    // written here follow whole frames.
    ws.flush().await?;
    let mut bytes = Vec::new();
    for _ in 0..WRITE_BATCH {
        let Some(text) = outbox.try_pop_text() else {
            break;
        };
        Frame::message(bytes::Bytes::from(text), OpCode::Data(Data::Text), true)
            .format(&mut bytes)?;
    }
    if !bytes.is_empty() {
        ws.get_mut().write_all(&bytes).await?;
    }
    Ok(())
}

/// Writes what the outbox holds, in batches with one flush each, until the writer ends.
async fn write_frames<S>(sink: &mut S, outbox: &Outbox, eviction: &Eviction) -> WriterEnd
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    // Built once: a future made anew on every turn of the loop costs a registration each time.
    let evicted = eviction.evicted();
    tokio::pin!(evicted);
    loop {
        let first = tokio::select! {
            biased;
            reason = &mut evicted => return WriterEnd::Evicted(reason),
            first = outbox.next() => first,
        };
        let Some(first) = first else {
            return WriterEnd::Drained;
        };
        let write = Box::pin(async {
            let mut next = Some(first);
            let mut written = 0;
            while let Some(item) = next.take() {
                match item {
                    Outbound::Text(text) | Outbound::Event { frame: text, .. } => {
                        sink.feed(Message::Text(text)).await?
                    }
                    Outbound::Ping => sink.feed(Message::Ping(bytes::Bytes::new())).await?,
                    Outbound::Close(reason) => {
                        sink.flush().await?;
                        return Ok(Some(reason));
                    }
                }
                written += 1;
                if written < WRITE_BATCH {
                    next = outbox.try_pop();
                }
            }
            sink.flush().await.map(|()| None)
        });
        let written = tokio::select! {
            biased;
            reason = &mut evicted => return WriterEnd::Evicted(reason),
            written = write => written,
        };
        match written {
            Ok(None) => {}
            Ok(Some(reason)) => return WriterEnd::Close(reason),
            Err(error) => {
                tracing::debug!(%error, "write failed");
                return WriterEnd::Failed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that hands what it is given to a channel, as a socket would send it.
    fn channel_sink() -> (
        impl Sink<Message, Error = tungstenite::Error> + Unpin,
        tokio::sync::mpsc::Receiver<Message>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let sink = tokio_util::sync::PollSender::new(tx)
            .sink_map_err(|_| tungstenite::Error::ConnectionClosed);
        (sink, rx)
    }

    async fn received(mut rx: tokio::sync::mpsc::Receiver<Message>) -> Vec<Message> {
        let mut messages = Vec::new();
        while let Some(message) = rx.recv().await {
            messages.push(message);
        }
        messages
    }

    #[tokio::test]
    async fn frames_go_in_order_then_the_close() {
        let outbox = Arc::new(Outbox::new(16, Duration::from_secs(5)));
        let eviction = Arc::new(Eviction::default());
        for i in 0..3 {
            let frame = format!("frame {i}");
            outbox.try_push(Outbound::Text(frame.into())).unwrap();
        }
        outbox
            .try_push(Outbound::Close(CloseReason::Restarting))
            .unwrap();
        let (sink, rx) = channel_sink();
        write_loop(sink, outbox, eviction).await;
        let received = received(rx).await;
        let texts: Vec<&str> = received
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["frame 0", "frame 1", "frame 2"]);
        let Some(Message::Close(Some(close))) = received.last() else {
            panic!("ends with a close: {received:?}");
        };
        assert_eq!(u16::from(close.code), 1012);
    }

    #[tokio::test]
    async fn the_opening_frames_reach_a_client_whole_and_the_rest_waits_for_the_writer() {
        use futures_util::StreamExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let (client, server) = tokio::join!(tokio_tungstenite::connect_async(url), async {
            let (stream, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async(stream).await.unwrap()
        });
        let (mut client, _) = client.unwrap();
        let mut server = server;
        let outbox = Outbox::new(16, Duration::from_secs(5));
        // A `connected` answer larger than a TCP segment on most links, then a push.
        let connected = format!(r#"{{"event":"connected","data":"{}"}}"#, "r".repeat(3_000));
        for frame in [connected.as_str(), "push", "after the ping"] {
            outbox.try_push(Outbound::Text(frame.into())).unwrap();
            if frame == "push" {
                outbox.try_push(Outbound::Ping).unwrap();
            }
        }
        write_opening(&mut server, &outbox).await.unwrap();
        for expected in [connected.as_str(), "push"] {
            let message = client.next().await.unwrap().unwrap();
            assert_eq!(message, Message::Text(expected.into()));
        }
        assert!(matches!(outbox.try_pop(), Some(Outbound::Ping)), "left");
        assert!(
            matches!(outbox.try_pop(), Some(Outbound::Text(t)) if t == "after the ping"),
            "left, in order"
        );
        // The socket goes on as a WebSocket: what tungstenite writes next is read whole.
        server.send(Message::Text("next".into())).await.unwrap();
        let next = client.next().await.unwrap().unwrap();
        assert_eq!(next, Message::Text("next".into()));
    }

    #[tokio::test]
    async fn an_evicted_socket_gets_its_close_code_at_once() {
        let outbox = Arc::new(Outbox::new(16, Duration::from_secs(5)));
        let eviction = Arc::new(Eviction::default());
        eviction.evict(CloseReason::TooSlow);
        let (sink, rx) = channel_sink();
        write_loop(sink, outbox, eviction).await;
        let received = received(rx).await;
        let [Message::Close(Some(close))] = received.as_slice() else {
            panic!("only the close: {received:?}");
        };
        assert_eq!(u16::from(close.code), 4503);
    }
}
