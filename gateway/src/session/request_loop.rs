//! The request loop of an open session: frames in, one request at a time (sends waiting for the
//! stream in order beside it), and one timer for the ping, the typing expiry, the resume wait,
//! the drain and the token's expiry.

use chat_proto::client;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::handlers::PendingSend;
use super::{Frames, Session};
use crate::error::{CloseReason, RequestError};
use crate::socket::outbox::Outbound;

impl Session {
    /// Serves requests until the client leaves, the socket is evicted or closed, or the drain
    /// that `shutdown` starts ends. Sends awaiting the stream wait in `pending`, in order; while
    /// it is full, no more frames are read.
    pub(super) async fn serve(
        &mut self,
        frames: &mut impl Frames,
        pending: &mut FuturesOrdered<PendingSend>,
        shutdown: CancellationToken,
    ) {
        let config = &self.gateway.shared.settings.config;
        let max_pending = config.max_pending_sends;
        let ping_interval = config.ping_interval;
        let mut next_ping = Instant::now() + ping_interval;
        let mut last_heard = Instant::now();
        let mut drain_deadline = None;
        let drain_time = config.drain_time;
        let idle_timeout = config.idle_timeout;
        // Built once: a future made anew on every turn of the loop costs a registration each time.
        let eviction = self.socket.eviction();
        let evicted = eviction.evicted();
        let shutting_down = shutdown.cancelled();
        // One timer for the ping, the typing expiry, the resume wait, the drain and the token's
        // expiry, reset only when the earliest of them changes: a timer per purpose would sit in
        // every idle socket's task.
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(evicted, shutting_down, timer);
        loop {
            let typing_due = self.typing.values().min().copied();
            let due = [typing_due, self.resume_wait, drain_deadline]
                .into_iter()
                .flatten()
                .fold(next_ping.min(self.token_expiry), Instant::min);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                _ = &mut evicted => return,
                () = &mut shutting_down, if drain_deadline.is_none() => {
                    // Served on while the client moves; closed at the end of the drain.
                    let spread = rand_below(u64::try_from(drain_time.as_millis()).unwrap_or(u64::MAX).max(1));
                    self.emit(client::push("server:draining", json!({ "reconnectAfterMs": spread })));
                    drain_deadline = Some(Instant::now() + drain_time);
                }
                Some(outcome) = pending.next(), if !pending.is_empty() => {
                    Box::pin(self.finish_send(outcome)).await;
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if drain_deadline.is_some_and(|d| d <= now) {
                        self.close(CloseReason::Restarting);
                        return;
                    }
                    if self.token_expiry <= now {
                        let error = RequestError::unauthorized(
                            "token expired; send a fresh one with auth before the old one expires",
                        );
                        self.refused(&error, None, None);
                        self.close(CloseReason::Unauthorized);
                        return;
                    }
                    if self.resume_wait.is_some_and(|d| d <= now) {
                        // No `resume` in time: the socket goes on without a replay.
                        self.resume_wait = None;
                        self.release(None);
                    }
                    if typing_due.is_some_and(|d| d <= now) {
                        Box::pin(self.expire_typing()).await;
                    }
                    if next_ping <= now {
                        if last_heard.elapsed() > idle_timeout {
                            tracing::debug!("no sign of life; closing");
                            return;
                        }
                        let _ = self.socket.outbox().try_push(Outbound::Ping);
                        next_ping = now + ping_interval;
                    }
                }
                frame = frames.next(), if pending.len() < max_pending => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            // Boxed: the largest handler's state would otherwise sit in every
                            // idle socket's task.
                            if let Some(send) = Box::pin(self.on_text(&text)).await {
                                pending.push_back(send);
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.refused(&RequestError::protocol("binary frames are not supported; send JSON text"), None, None);
                        }
                        Some(Ok(Message::Close(_))) | None => return,
                        Some(Ok(_)) => {} // Pings are answered by tungstenite; pongs are signs of life.
                        Some(Err(tungstenite::Error::Capacity(_))) => {
                            self.close(CloseReason::TooBig);
                            return;
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%error, "read failed");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// A number in `0..bound`, spread enough for reconnection jitter.
fn rand_below(bound: u64) -> u64 {
    u64::from(uuid::Uuid::new_v4().as_u128() as u32) % bound.max(1)
}
