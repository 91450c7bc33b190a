//! The `/status` answers of succeeded tasks, kept in memory.
//!
//! A succeeded task never changes again: it cannot be cancelled, nor
//! retried (only `failed` and `cancelled` tasks can be, from any api), and
//! no worker records an outcome over it. Its row stays as it is until
//! retention deletes it. So once an api has read and serialized such a
//! task's view, it answers later `/status` requests for it with the same
//! bytes, without the database, the read batch or the serializer: on
//! SQLite that was most of what a `/status` cost beyond the HTTP floor
//! (BENCHMARKS.md, "`/status` of a succeeded task from memory"). Tasks in
//! flight, and failed or cancelled ones (a retry makes them `pending`
//! again), are read from the database every time.
//!
//! An answer is kept only until its task's retention less [`MARGIN`]
//! (`finished_at + retention - MARGIN`; forever with retention off), so a
//! task that retention may have deleted, by any process whose clock runs
//! at most `MARGIN` ahead of this one's, is read again and found gone.
//! Memory is bounded: at most [`CAPACITY`] answers in two generations
//! (the newer takes what is kept and what is asked again; when it is full
//! the older is dropped), about 3 MiB for views of 700 bytes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::task::{TaskStatus, TaskView};
use ferry_core::TaskId;
use metrics::Counter;

/// Answers kept at most, over both generations.
pub const CAPACITY: usize = 4096;

/// How long before its task's retention ends an answer stops being used.
pub const MARGIN: Duration = Duration::from_secs(3600);

/// The counter of `/status` requests answered from memory.
pub const SERVED: &str = "ferry_status_answered_from_memory_total";

/// Succeeded tasks' `/status` bodies; see the module's documentation.
#[derive(Debug)]
pub struct FinalViews {
    generations: Mutex<Generations>,
    /// `None`: retention is off, an answer never expires.
    retention: Option<chrono::Duration>,
    served: Counter,
}

type Map = HashMap<TaskId, Kept, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Default)]
struct Generations {
    newer: Map,
    older: Map,
}

#[derive(Debug, Clone)]
struct Kept {
    body: Arc<[u8]>,
    /// Served until then; `None`: always.
    until: Option<DateTime<Utc>>,
}

impl FinalViews {
    /// An empty store for an api whose tasks are deleted `retention` after
    /// they finished (`None`: never).
    pub fn new(retention: Option<Duration>) -> Self {
        metrics::describe_counter!(
            SERVED,
            "/status requests answered from memory (succeeded tasks)"
        );
        Self {
            generations: Mutex::default(),
            retention: retention
                .map(|r| chrono::Duration::from_std(r).unwrap_or(chrono::Duration::MAX)),
            served: metrics::counter!(SERVED),
        }
    }

    /// The kept answer for `id`, if there is one still in force.
    pub fn get(&self, id: TaskId) -> Option<Arc<[u8]>> {
        let mut generations = self.generations.lock().expect("not poisoned");
        let kept = match generations.newer.get(&id) {
            Some(kept) => kept.clone(),
            None => {
                let kept = generations.older.remove(&id)?;
                generations.keep(id, kept.clone());
                kept
            }
        };
        drop(generations);
        if kept.until.is_some_and(|until| Utc::now() >= until) {
            return None;
        }
        self.served.increment(1);
        Some(kept.body)
    }

    /// Keeps `body`, the serialized `view`, if the view is of a succeeded
    /// task whose retention is more than [`MARGIN`] away.
    pub fn keep(&self, view: &TaskView, body: &Arc<[u8]>) {
        if view.status != TaskStatus::Succeeded {
            return;
        }
        let until = match (self.retention, view.finished_at) {
            (None, _) => None,
            (Some(retention), Some(finished)) => {
                let margin = chrono::Duration::from_std(MARGIN).expect("an hour fits");
                match finished.checked_add_signed(retention - margin) {
                    Some(until) if until > Utc::now() => Some(until),
                    _ => return,
                }
            }
            // A succeeded task has a finish time; without one, do not keep.
            (Some(_), None) => return,
        };
        let kept = Kept {
            body: body.clone(),
            until,
        };
        self.generations
            .lock()
            .expect("not poisoned")
            .keep(view.id, kept);
    }
}

impl Generations {
    fn keep(&mut self, id: TaskId, kept: Kept) {
        self.newer.insert(id, kept);
        if self.newer.len() >= CAPACITY / 2 {
            self.older = std::mem::take(&mut self.newer);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }
}

/// Hashes a task id by folding its bytes. Ids are random (UUID v4) and
/// only ids Ferry made are kept, so this spreads them as well as SipHash
/// does, at a fraction of the cost; an id a client chooses is only looked
/// up, which cannot make the keys collide.
#[derive(Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(status: TaskStatus, finished_ago: Option<Duration>) -> TaskView {
        let now = Utc::now();
        TaskView {
            id: TaskId::new(),
            status,
            event_type: "org.ferry.echo".into(),
            source: "/test".into(),
            event_id: "e".into(),
            attempts: 1,
            max_attempts: 3,
            created_at: now,
            due_at: None,
            started_at: Some(now),
            finished_at: finished_ago.map(|ago| now - chrono::Duration::from_std(ago).unwrap()),
            cancel_requested_at: None,
            result: None,
            error: None,
            attempt_history: Vec::new(),
        }
    }

    fn body(view: &TaskView) -> Arc<[u8]> {
        Arc::from(serde_json::to_vec(view).unwrap())
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn keeps_only_succeeded_tasks() {
        let views = FinalViews::new(Some(7 * DAY));
        for status in [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Retrying,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
            TaskStatus::Succeeded,
        ] {
            let v = view(status, Some(Duration::ZERO));
            views.keep(&v, &body(&v));
            let kept = views.get(v.id);
            assert_eq!(
                kept.is_some(),
                status == TaskStatus::Succeeded,
                "{status:?}"
            );
            if let Some(kept) = kept {
                assert_eq!(kept, body(&v));
            }
        }
    }

    #[test]
    fn keeps_nothing_retention_may_have_deleted() {
        let views = FinalViews::new(Some(2 * MARGIN));
        let fresh = view(TaskStatus::Succeeded, Some(Duration::from_secs(60)));
        let near = view(
            TaskStatus::Succeeded,
            Some(MARGIN + Duration::from_secs(60)),
        );
        for v in [&fresh, &near] {
            views.keep(v, &body(v));
        }
        assert!(views.get(fresh.id).is_some());
        assert!(views.get(near.id).is_none());
        // Within the margin of its retention: never kept.
        let short = FinalViews::new(Some(MARGIN));
        short.keep(&fresh, &body(&fresh));
        assert!(short.get(fresh.id).is_none());
        // Retention off: kept whatever its age.
        let off = FinalViews::new(None);
        let old = view(TaskStatus::Succeeded, Some(365 * DAY));
        off.keep(&old, &body(&old));
        assert!(off.get(old.id).is_some());
    }

    #[test]
    fn holds_at_most_its_capacity_and_keeps_what_is_asked_again() {
        let views = FinalViews::new(None);
        let first = view(TaskStatus::Succeeded, Some(Duration::ZERO));
        views.keep(&first, &body(&first));
        for _ in 0..3 * CAPACITY {
            let v = view(TaskStatus::Succeeded, Some(Duration::ZERO));
            views.keep(&v, &body(&v));
            // Asked again and again, the first stays.
            assert!(views.get(first.id).is_some());
            assert!(views.generations.lock().unwrap().len() <= CAPACITY);
        }
        let unasked = view(TaskStatus::Succeeded, Some(Duration::ZERO));
        views.keep(&unasked, &body(&unasked));
        for _ in 0..CAPACITY {
            let v = view(TaskStatus::Succeeded, Some(Duration::ZERO));
            views.keep(&v, &body(&v));
        }
        assert!(views.get(unasked.id).is_none());
    }
}
