//! The waiters' hub in-process, on SQLite and the in-process queue: many
//! waiters on one task share one entry, a hint wakes them before the
//! fallback read would, every watched task is read in one statement per
//! 500 tasks, and a task no one watches any more is forgotten.

use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::hub::Hub;
use ferry_core::broker::Queue;
use ferry_core::hints::Hints;
use ferry_core::task::NewTask;
use ferry_core::{Db, TaskId, TaskStatus};
use serde_json::json;

fn task(i: usize) -> NewTask {
    NewTask {
        id: TaskId::new(),
        event_type: "org.ferry.echo".into(),
        source: "/ferry/hub".into(),
        event_id: format!("hub-{i}"),
        event: json!({"specversion": "1.0", "id": i}),
        digest: format!("digest {i}"),
        max_attempts: 3,
        idempotency_key: None,
        run_after: None,
    }
}

fn statuses(events: &[ferry_core::db::TaskEvent]) -> Vec<TaskStatus> {
    events.iter().map(|e| e.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reader_for_every_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    let db = Db::connect(&url, 4).unwrap();
    db.migrate().unwrap();
    let queue = Queue::local();
    let hub = Hub::spawn(db.clone(), queue.clone());
    let hints = Hints::spawn(&queue);

    let tasks: Vec<NewTask> = (0..600).map(task).collect();
    let ids: Vec<TaskId> = db
        .insert_tasks(&tasks, Utc::now())
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    let id = ids[0];

    // Two waiters on one task: one entry; both see its first event, read
    // at once because the task is newly watched.
    let mut a = hub.watch(id);
    let mut b = hub.watch(id);
    assert_eq!(hub.watched(), 1);
    tokio::time::timeout(Duration::from_secs(5), async {
        while a.events().is_empty() {
            a.changed().await;
        }
    })
    .await
    .expect("the first read");
    assert_eq!(statuses(&b.events()), [TaskStatus::Pending]);

    // A hint wakes both well before the next fallback read (1 s).
    let lease = Utc::now() + Duration::from_secs(30);
    db.claim(id, "w", lease).unwrap().unwrap();
    let hinted = Instant::now();
    hints.send(id, Some("org.ferry.echo"), TaskStatus::Running);
    for waiter in [&mut a, &mut b] {
        tokio::time::timeout(Duration::from_secs(5), async {
            while waiter.events().len() < 2 {
                waiter.changed().await;
            }
        })
        .await
        .expect("woken");
    }
    let took = hinted.elapsed();
    eprintln!("woken by a hint in {took:?}");
    assert!(took < Duration::from_millis(700), "{took:?}");
    assert_eq!(
        statuses(&a.events()),
        [TaskStatus::Pending, TaskStatus::Running]
    );

    // 600 tasks watched: each fallback read is two statements (500 + 100).
    let mut watches: Vec<_> = ids[1..].iter().map(|id| hub.watch(*id)).collect();
    assert_eq!(hub.watched(), 600);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = hub.reads();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ticks = hub.reads() - before;
    assert!(
        (2..=6).contains(&ticks) && ticks.is_multiple_of(2),
        "{ticks} statements in 2.5 s"
    );
    assert!(watches.iter_mut().all(|w| w.events().len() == 1));

    // The last watch of a task dropped: the task is forgotten.
    drop(watches);
    drop(a);
    assert_eq!(hub.watched(), 1);
    drop(b);
    assert_eq!(hub.watched(), 0);
}
