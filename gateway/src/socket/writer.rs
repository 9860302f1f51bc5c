//! A socket's writer: the task that owns the write half and drains the outbox in batches, one
//! flush (one system call) per batch, until the session closes it, the peer goes, or the socket
//! is evicted. Generic over the sink, so it runs without a network in tests.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
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
/// Largest fragment of a socket's first frame (see [`write_frames`]).
const FIRST_FRAGMENT: usize = 256;

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

/// Sends a text frame in fragments of at most [`FIRST_FRAGMENT`] bytes, each flushed on its own
/// (a client's WebSocket library joins them).
async fn send_fragmented<S>(sink: &mut S, text: Utf8Bytes) -> Result<(), tungstenite::Error>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let bytes = bytes::Bytes::from(text);
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + FIRST_FRAGMENT).min(bytes.len());
        let opcode = if at == 0 { Data::Text } else { Data::Continue };
        let fragment = Frame::message(
            bytes.slice(at..end),
            OpCode::Data(opcode),
            end == bytes.len(),
        );
        sink.send(Message::Frame(fragment)).await?;
        at = end;
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
    // The first frame (`connected`, the largest an idle socket gets, about 1.2 KiB with four
    // rooms) goes out alone and in fragments: tungstenite keeps its write buffer at the largest
    // size it ever reached, and an idle socket then keeps only a fragment's size.
    let mut batch = 1;
    loop {
        let first = tokio::select! {
            biased;
            reason = &mut evicted => return WriterEnd::Evicted(reason),
            first = outbox.next() => first,
        };
        let Some(first) = first else {
            return WriterEnd::Drained;
        };
        let limit = std::mem::replace(&mut batch, WRITE_BATCH);
        let write = Box::pin(async {
            let mut next = Some(first);
            let mut written = 0;
            while let Some(item) = next.take() {
                match item {
                    Outbound::Text(text) if limit == 1 && text.len() > FIRST_FRAGMENT => {
                        send_fragmented(sink, text).await?;
                    }
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
                if written < limit {
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
    async fn the_first_frame_goes_in_fragments_then_batches_then_the_close() {
        let outbox = Arc::new(Outbox::new(16, Duration::from_secs(5)));
        let eviction = Arc::new(Eviction::default());
        let first = "x".repeat(FIRST_FRAGMENT * 2 + 10);
        outbox
            .try_push(Outbound::Text(first.clone().into()))
            .unwrap();
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
        let fragments = received
            .iter()
            .take_while(|m| matches!(m, Message::Frame(_)))
            .count();
        assert_eq!(fragments, 3, "{} bytes in 256-byte fragments", first.len());
        let texts: Vec<&str> = received[fragments..]
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
