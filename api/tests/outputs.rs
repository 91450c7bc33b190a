//! A handler's output that the database cannot store fails that task alone,
//! with an error that says so, and no task that shared its outcome batch
//! runs twice: whether the worker sees it coming (a NUL, a number too long
//! to store) or the database refuses it (here, a trigger of the test's own).

use std::future::Future;
use std::time::Duration;

use ferry_testkit::{require, Api, Deployment};
use serde_json::json;

/// Tasks per run: enough that outcomes share group commits.
const TASKS: usize = 160;

/// Which tasks print an output that cannot be stored, and how.
fn output_for(i: usize) -> Option<&'static str> {
    match i {
        17 | 121 => Some("nul"),
        60 | 61 => Some("refused"),
        140 => Some("huge-number"),
        _ => None,
    }
}

async fn unstorable_outputs_fail_alone(deployment: Deployment) {
    let api = deployment.api().await;
    refuse_marked_results(&deployment);
    let _workers = [deployment.worker("w1"), deployment.worker("w2")];
    let ids = futures_util::future::join_all(submits_in_order(&api)).await;
    let mut finals = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let expected = if output_for(i).is_some() {
            "failed"
        } else {
            "succeeded"
        };
        finals.push(api.wait_for(id, expected, Duration::from_secs(120)).await);
    }
    for (i, view) in finals.iter().enumerate() {
        match output_for(i) {
            Some(kind) => {
                let error = view["error"].as_str().unwrap();
                let expected = match kind {
                    "refused" => "the handler's output could not be stored: ",
                    _ => "the handler's output cannot be stored: `result",
                };
                assert!(error.starts_with(expected), "task {i} ({kind}): {error}");
                assert_eq!(view["attempts"], 1, "{view:#}");
                let history = view["attempt_history"].as_array().unwrap();
                assert_eq!(history.len(), 1, "{view:#}");
                assert_eq!(history[0]["error"], view["error"]);
                // The output is kept, escaped into a storable form.
                match kind {
                    "nul" => assert_eq!(view["result"]["text"], "before\\u0000after"),
                    "huge-number" => assert!(view["result"]["n"].is_string(), "{view:#}"),
                    _ => assert!(error.contains("refused by trigger"), "{error}"),
                }
            }
            None => assert_eq!(view["result"], json!({"counted": true}), "{view:#}"),
        }
    }
    // Every task ran exactly once: none was run again because another
    // task's output failed the batch it shared.
    deployment.assert_each_ran_once(&ids);
}

/// Installs a trigger that refuses any task update whose result holds the
/// marker the `refused` output prints: a refusal no check foresees.
fn refuse_marked_results(deployment: &Deployment) {
    deployment.execute(if deployment.pg.is_some() {
        "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.result::text LIKE '%refused-by-trigger%' THEN \
         RAISE EXCEPTION 'refused by trigger'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_marked BEFORE UPDATE ON tasks \
         FOR EACH ROW EXECUTE FUNCTION refuse_marked();"
    } else {
        "CREATE TRIGGER refuse_marked BEFORE UPDATE ON tasks \
         WHEN NEW.result LIKE '%refused-by-trigger%' \
         BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END;"
    });
}

/// One submit per task; awaited together, they answer in order.
fn submits_in_order(api: &Api) -> Vec<impl Future<Output = String> + '_> {
    (0..TASKS)
        .map(|i| async move {
            let data = match output_for(i) {
                Some(output) => json!({ "output": output }),
                None => json!({ "n": i }),
            };
            api.submit("org.ferry.count-output", &format!("out-{i}"), data)
                .await
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_unstorable_outputs_fail_alone() {
    require!(rabbitmq);
    unstorable_outputs_fail_alone(Deployment::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unstorable_outputs_fail_alone() {
    require!(rabbitmq, postgres);
    unstorable_outputs_fail_alone(Deployment::postgres()).await;
}
