//! A consumer's settlements (ack, requeue, dead-letter), sent in delivery
//! order by one loop per consumer so that acks can go with `multiple`.
//!
//! A worker acks a task's message once its outcome is committed, and an
//! outcome batch commits many at once: their acks reach this loop
//! together. Instead of one `basic.ack` frame each, the loop sends one
//! `basic.ack` with `multiple` for the longest run of them that starts at
//! the channel's oldest unsettled delivery, and one frame each only for
//! those past a delivery still held (a task still running). RabbitMQ then
//! reads and handles one frame for the run.
//!
//! `multiple` acknowledges every unsettled delivery up to its tag on the
//! channel, so it must never cover one that is not being acked: the loop
//! knows every delivery the consumer has handed out (told before the
//! delivery is), and covers only tags below the oldest one not in the
//! acks at hand. Requeues and dead-letters are sent first, before any
//! ack of the same round, so a `multiple` never covers them either. Each
//! caller is answered once its frame is sent, as a lone ack would be.
//!
//! A frame not sent within [`SEND_TIMEOUT`] gives the channel up: the loop
//! asks for the channel to be closed and answers that settlement and every
//! later one at once, as sent on a closed channel, without sending them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tokio::sync::{mpsc, oneshot};

/// Settlements handled in one round at most.
const ROUND: usize = 512;

/// How long a settlement's frame may take to be sent. lapin answers a
/// frame for a channel that closed, but one it never answers (its
/// connection broke under it) must not hold this loop, and with it every
/// task that waits to settle and the slot it holds, for ever. Past this
/// the channel is given up: the frame and every later one count as sent
/// on a closed channel (the broker delivers their messages again, and the
/// claim's compare-and-set makes those deliveries acks), and the channel
/// is closed, so that the worker's watch of its consumer reconnects.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The frames that settle one delivery: lapin's [`lapin::Acker`] (a fake
/// in this module's tests).
pub trait Frames: Send + Sync + 'static {
    /// `basic.ack`; with `multiple`, of every unsettled delivery up to it.
    fn ack(&self, multiple: bool) -> impl Future<Output = Result<bool, lapin::Error>> + Send;
    /// `basic.nack` with requeue.
    fn requeue(&self) -> impl Future<Output = Result<bool, lapin::Error>> + Send;
    /// `basic.reject` without requeue.
    fn dead_letter(&self) -> impl Future<Output = Result<bool, lapin::Error>> + Send;
}

impl Frames for lapin::Acker {
    fn ack(&self, multiple: bool) -> impl Future<Output = Result<bool, lapin::Error>> + Send {
        lapin::Acker::ack(self, BasicAckOptions { multiple })
    }

    fn requeue(&self) -> impl Future<Output = Result<bool, lapin::Error>> + Send {
        self.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
    }

    fn dead_letter(&self) -> impl Future<Output = Result<bool, lapin::Error>> + Send {
        self.reject(BasicRejectOptions { requeue: false })
    }
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// Done with: the broker forgets the message.
    Ack,
    /// Delivered again.
    Requeue,
    /// Rejected without requeue: to the dead-letter queue.
    DeadLetter,
}

/// The answer to one settlement: whether its frame was sent.
type Sent = Result<(), lapin::Error>;

pub(crate) enum Settlement<A = lapin::Acker> {
    /// The consumer handed out this delivery.
    Delivered(u64),
    /// Settle a delivery; `sent` is answered once its frame is sent.
    Settle {
        tag: u64,
        acker: A,
        how: How,
        sent: oneshot::Sender<Sent>,
    },
}

/// The sending side, one per consumer; deliveries hold a clone.
#[derive(Debug)]
pub struct Settler<A = lapin::Acker> {
    settlements: mpsc::UnboundedSender<Settlement<A>>,
}

impl<A> Clone for Settler<A> {
    fn clone(&self) -> Self {
        Self {
            settlements: self.settlements.clone(),
        }
    }
}

impl<A: Frames> Settler<A> {
    /// Starts the loop of one consumer's channel; `give_up` closes the
    /// channel, called once if a frame is not sent in time.
    pub(crate) fn spawn(give_up: impl FnOnce() + Send + 'static) -> Self {
        let (settlements, queue) = mpsc::unbounded_channel();
        tokio::spawn(settle_in_order(queue, give_up));
        Self { settlements }
    }

    /// Tells the loop of a delivery before the consumer hands it out.
    pub(crate) fn delivered(&self, tag: u64) {
        let _ = self.settlements.send(Settlement::Delivered(tag));
    }

    /// Settles a delivery; returns once its frame is sent (`Ok(())` too
    /// when the acker can no longer be used: its channel closed, and the
    /// broker delivers what it left unsettled again).
    pub(crate) async fn settle(&self, tag: u64, acker: A, how: How) -> Sent {
        let (sent, answer) = oneshot::channel();
        let settlement = Settlement::Settle {
            tag,
            acker,
            how,
            sent,
        };
        if self.settlements.send(settlement).is_err() {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }
}

/// The loop: see the module's documentation.
async fn settle_in_order<A: Frames>(
    mut queue: mpsc::UnboundedReceiver<Settlement<A>>,
    give_up: impl FnOnce(),
) {
    let mut channel = Channel {
        give_up: Some(give_up),
    };
    let mut unsettled = BTreeSet::new();
    let mut round = Vec::with_capacity(ROUND);
    while queue.recv_many(&mut round, ROUND).await > 0 {
        let mut acks = BTreeMap::new();
        for settlement in round.drain(..) {
            match settlement {
                Settlement::Delivered(tag) => {
                    unsettled.insert(tag);
                }
                Settlement::Settle {
                    tag,
                    acker,
                    how: How::Ack,
                    sent,
                } => {
                    acks.insert(tag, (acker, sent));
                }
                Settlement::Settle {
                    tag,
                    acker,
                    how,
                    sent,
                } => {
                    // Before this round's acks, so that none covers it.
                    unsettled.remove(&tag);
                    let _ = sent.send(channel.send(refuse(&acker, how)).await);
                }
            }
        }
        let frames = frames(&unsettled, acks.keys().copied());
        for frame in frames {
            let last = *frame.last().expect("a frame settles a delivery");
            let (acker, _) = &acks[&last];
            let multiple = frame.len() > 1;
            let result = channel.send(acker.ack(multiple)).await;
            for tag in frame {
                unsettled.remove(&tag);
                if let Some((_, sent)) = acks.remove(&tag) {
                    let _ = sent.send(result.clone());
                }
            }
        }
    }
}

/// The ack frames that settle `acks` (tags in increasing order), given
/// the deliveries still `unsettled` (which hold every one of `acks`),
/// each frame as the tags it settles: first the run of `acks` below the
/// oldest unsettled delivery not among them, one frame (`multiple` when
/// it holds more than one), then one frame for each of the others.
fn frames(unsettled: &BTreeSet<u64>, acks: impl Iterator<Item = u64>) -> Vec<Vec<u64>> {
    let acks: BTreeSet<u64> = acks.collect();
    let held = unsettled.iter().copied().find(|tag| !acks.contains(tag));
    let (run, others): (Vec<u64>, Vec<u64>) = acks
        .into_iter()
        .partition(|&tag| held.is_none_or(|held| tag < held));
    let run = (!run.is_empty()).then_some(run);
    run.into_iter()
        .chain(others.into_iter().map(|tag| vec![tag]))
        .collect()
}

/// A requeue's or a dead-letter's frame.
async fn refuse<A: Frames>(acker: &A, how: How) -> Result<bool, lapin::Error> {
    match how {
        How::Ack => unreachable!("acks are sent in runs"),
        How::Requeue => acker.requeue().await,
        How::DeadLetter => acker.dead_letter().await,
    }
}

/// The loop's channel: open until a frame is not sent in time.
struct Channel<G> {
    /// Closes the channel; taken when it is given up.
    give_up: Option<G>,
}

impl<G: FnOnce()> Channel<G> {
    /// Sends `frame`, given at most [`SEND_TIMEOUT`]. A channel given up
    /// sends nothing more: the settlement counts as sent on a closed
    /// channel at once.
    async fn send(&mut self, frame: impl Future<Output = Result<bool, lapin::Error>>) -> Sent {
        if self.give_up.is_none() {
            return Ok(());
        }
        match tokio::time::timeout(SEND_TIMEOUT, frame).await {
            Ok(sent) => sent.map(drop),
            Err(_) => {
                tracing::warn!(
                    timeout = ?SEND_TIMEOUT,
                    "a settlement was not sent in time; closing its channel, whose deliveries the broker hands out again"
                );
                if let Some(give_up) = self.give_up.take() {
                    give_up();
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A channel whose frames are never answered (its connection broke
    /// under it); counts the frames the loop started to send.
    #[derive(Debug, Clone, Default)]
    struct Stuck {
        frames: Arc<AtomicUsize>,
    }

    impl Stuck {
        fn frame(&self) -> impl Future<Output = Result<bool, lapin::Error>> + Send {
            let frames = self.frames.clone();
            async move {
                frames.fetch_add(1, Ordering::SeqCst);
                std::future::pending().await
            }
        }
    }

    impl Frames for Stuck {
        fn ack(&self, _: bool) -> impl Future<Output = Result<bool, lapin::Error>> + Send {
            self.frame()
        }

        fn requeue(&self) -> impl Future<Output = Result<bool, lapin::Error>> + Send {
            self.frame()
        }

        fn dead_letter(&self) -> impl Future<Output = Result<bool, lapin::Error>> + Send {
            self.frame()
        }
    }

    /// The first frame lapin never answers lets its settlement go after
    /// [`SEND_TIMEOUT`], as sent on a closed channel, and gives the
    /// channel up: it is closed once, and the settlements after it are
    /// answered without a frame, instead of each waiting out its own
    /// timeout while their tasks hold their slots (paused time).
    #[tokio::test(start_paused = true)]
    async fn a_frame_never_answered_gives_the_channel_up() {
        let closed = Arc::new(AtomicUsize::new(0));
        let settler = Settler::<Stuck>::spawn({
            let closed = closed.clone();
            move || {
                closed.fetch_add(1, Ordering::SeqCst);
            }
        });
        let stuck = Stuck::default();
        for tag in 1..=3 {
            settler.delivered(tag);
        }
        let first = settler.settle(1, stuck.clone(), How::Ack).await;
        assert!(first.is_ok(), "{first:?}");
        assert_eq!(closed.load(Ordering::SeqCst), 1, "the channel is closed");
        // 2 is still held, so 3's ack would be a frame of its own.
        let later = tokio::join!(
            settler.settle(3, stuck.clone(), How::Ack),
            settler.settle(2, stuck.clone(), How::Requeue),
        );
        assert!(later.0.is_ok() && later.1.is_ok(), "{later:?}");
        assert_eq!(
            stuck.frames.load(Ordering::SeqCst),
            1,
            "no frame is sent on a channel given up"
        );
        assert_eq!(closed.load(Ordering::SeqCst), 1, "closed once");
    }

    fn frames_of(unsettled: &[u64], acks: &[u64]) -> Vec<Vec<u64>> {
        frames(&unsettled.iter().copied().collect(), acks.iter().copied())
    }

    #[test]
    fn acks_from_the_oldest_delivery_go_in_one_frame() {
        assert_eq!(frames_of(&[1, 2, 3], &[1, 2, 3]), vec![vec![1, 2, 3]]);
        // Deliveries handed out since, not acked, are past the run.
        assert_eq!(frames_of(&[4, 5, 6, 7, 8], &[4, 5, 6]), vec![vec![4, 5, 6]]);
        assert_eq!(frames_of(&[9], &[9]), vec![vec![9]]);
    }

    #[test]
    fn a_held_delivery_ends_the_run_and_is_never_covered() {
        // 3 is still running: 1 and 2 go together, 4 and 6 alone.
        assert_eq!(
            frames_of(&[1, 2, 3, 4, 5, 6], &[1, 2, 4, 6]),
            vec![vec![1, 2], vec![4], vec![6]]
        );
        // The oldest is held: no run, every ack alone.
        assert_eq!(frames_of(&[1, 2, 3], &[2, 3]), vec![vec![2], vec![3]]);
    }

    #[test]
    fn settled_deliveries_do_not_hold_the_run() {
        // 2 was requeued (no longer unsettled) before this round's acks.
        assert_eq!(frames_of(&[1, 3, 4], &[1, 3]), vec![vec![1, 3]]);
        assert!(frames_of(&[1, 2], &[]).is_empty());
    }
}
