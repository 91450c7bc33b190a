//! The dashboard (`GET /`) driven in a real browser: Debian's headless
//! Chromium through `chromedriver` and the WebDriver client `fantoccini`,
//! against real servers (`ferry-api --standalone` on SQLite, and `ferry-api`
//! plus a `ferry-worker` process on PostgreSQL and RabbitMQ).
//!
//! Tasks are submitted over the API; the page must show them, and their
//! changes, without a reload (a mark set in the page's `window` at the start
//! must still be there at the end). Every wait is WebDriver polling with a
//! generous limit, never a timing assertion. Screenshots go to
//! `<target>/screenshots/` (the target directory the test was built in);
//! a failed wait saves one too, named for what it waited for.
//!
//! Each test starts `chromedriver` itself, on a free port, in a process
//! group of its own, and kills that group (the driver and the browser it
//! started) when it ends, failed or not. Without `chromedriver` the tests
//! fail under CI and are skipped elsewhere (`.ci/run` installs Debian's
//! `chromium` and `chromium-driver`).

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
use fantoccini::{Client, ClientBuilder, Locator};
use ferry_testkit::{bin_dir, services, Api, Layout, Stack};
use serde_json::{json, Value};

/// WebDriver's code of the Tab key.
const TAB: char = '\u{E004}';

/// Longest any one thing may take to show up in the page.
const WAIT: Duration = Duration::from_secs(60);

/// The WebDriver key code of Enter.
const ENTER: &str = "\u{E007}";

/// An event type written as markup: the page must show it as text.
const HOSTILE_TYPE: &str = "<img src=x onerror=window.__xss=1>";

/// The routes the tests add to the testkit's: the hostile type, echoed.
fn hostile_route() -> String {
    format!("\n[[routes]]\ntype = {HOSTILE_TYPE:?}\nhandler = \"echo\"\n")
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Where screenshots go: `screenshots/` in the target directory.
fn screenshot_dir() -> PathBuf {
    let dir = bin_dir()
        .parent()
        .expect("the profile's directory is in the target directory")
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

/// Headless Chromium under a `chromedriver` of the test's own. Dropping it
/// kills the driver's whole process group, browser included.
struct Browser {
    client: Option<Client>,
    driver: Child,
    shots: PathBuf,
    name: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` when chromedriver is missing and this is not CI.
    async fn start(name: &str) -> Option<Self> {
        let (Some(driver), Some(chromium)) = (
            find_program("chromedriver"),
            find_program("chromium").or_else(|| find_program("chromium-browser")),
        ) else {
            services::missing(
                "chromedriver",
                "no chromedriver or chromium on PATH (Debian: apt-get install chromium chromium-driver)",
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let profile = tempfile::tempdir().expect("a profile directory");
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own group, so that the browser it starts dies with it.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut browser = Self {
            client: None,
            driver,
            shots: screenshot_dir(),
            name: name.into(),
            _profile: profile,
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = reqwest::get(format!("{url}/status")).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile_dir = browser._profile.path().join("chromium");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,800", "--hide-scrollbars", "--no-first-run",
                    format!("--user-data-dir={}", profile_dir.display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a WebDriver session in headless Chromium");
        browser.client = Some(client);
        browser.resize(1280, 800).await;
        Some(browser)
    }

    /// Sizes the window so that the page is `width` x `height`, whatever
    /// the browser's frame takes.
    async fn resize(&self, width: u32, height: u32) {
        let frame = self
            .js("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]")
            .await;
        let extra = |i: usize| frame[i].as_u64().unwrap_or(0) as u32;
        self.client()
            .set_window_size(width + extra(0), height + extra(1))
            .await
            .expect("size the window");
    }

    /// Presses and releases a key, as a keyboard does (on the focused
    /// element, or the page).
    async fn press(&self, key: char) {
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        self.client()
            .perform_actions(keys)
            .await
            .unwrap_or_else(|e| panic!("press {key:?}: {e}"));
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    async fn goto(&self, url: &str) {
        self.client().goto(url).await.expect("navigate");
    }

    /// Runs `script` (a function body) in the page.
    async fn js(&self, script: &str) -> Value {
        self.client()
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Polls `script` until it returns something truthy, and returns that;
    /// fails after [`WAIT`], saving a screenshot named for `what`.
    async fn until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.js(script).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot(&format!("failed-{}", slug(what))).await;
                let text = self.js("return document.body.innerText").await;
                panic!(
                    "{}: waited {WAIT:?} for {what}; screenshot {}; the page says:\n{}",
                    self.name,
                    shot.display(),
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client()
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `keys` into the element with id `id` (`ENTER` presses Enter).
    async fn type_into(&self, id: &str, keys: &str) {
        self.client()
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .send_keys(keys)
            .await
            .unwrap_or_else(|e| panic!("typing into #{id}: {e}"));
    }

    async fn select(&self, css: &str, value: &str) {
        // The option is there once the counts have named it.
        self.until(
            &format!("the option {value} of {css}"),
            &format!(
                "return Array.from(document.querySelector({css:?}).options).some(o => o.value === {value:?})"
            ),
        )
        .await;
        let select = self.client().find(Locator::Css(css)).await.unwrap();
        select
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("select {value} in {css}: {e}"));
    }

    /// Saves a screenshot as `<target>/screenshots/<name>-<test>.png`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client().screenshot().await.expect("a screenshot");
        let path = self.shots.join(format!("{}-{name}.png", self.name));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client.close().await.expect("end the WebDriver session");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and every browser process it started.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}

/// A CSS selector of the list's row of task `id`.
fn row(id: &str) -> String {
    format!("#task-rows tr[data-id=\"{id}\"]")
}

fn event(event_type: &str, id: &str) -> Value {
    json!({"specversion": "1.0", "type": event_type, "source": "/ferry/dashboard", "id": id, "data": {"n": id}})
}

/// POSTs an event with an optional bearer token; returns the task id.
async fn submit(api: &Api, token: Option<&str>, event: Value) -> String {
    let mut request = api
        .client
        .post(api.url("/receive"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let reply = api.send(request).await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    reply.task_id()
}

/// The scenario every layout runs: live table, counts, filters, a task's
/// page, cancel and retry, markup shown as text.
async fn live_dashboard(stack: &Stack, name: &str) {
    let Some(browser) = Browser::start(name).await else {
        return;
    };
    let api = &stack.api;
    browser.goto(&api.url("/")).await;
    browser
        .until(
            "the page to go live",
            "return document.getElementById('live').dataset.state === 'live'",
        )
        .await;
    // The keyboard: Tab goes from the skip link to the brand, the counts
    // and the filters, each showing where the focus is.
    for expected in ["skip", "brand", "count", "count"] {
        browser.press(TAB).await;
        let focused = browser.js("return document.activeElement.className").await;
        assert!(
            focused
                .as_str()
                .is_some_and(|c| c.split(' ').any(|c| c == expected)),
            "Tab reached {focused}, not .{expected}"
        );
    }
    let ring = browser
        .js("return getComputedStyle(document.activeElement).outlineStyle")
        .await;
    assert_eq!(ring, "solid", "the focused link shows its focus");
    browser.screenshot("keyboard-focus").await;
    // Gone if the page ever reloads.
    browser.js("window.__mark = 'no reload'; return true").await;
    let total_before = browser
        .until(
            "the total count",
            "const n = document.querySelector('#counts [data-status=\"\"] .n').textContent; return n !== '–' && n",
        )
        .await;
    assert_eq!(total_before, "0", "a fresh deployment has no task");

    // Submitted over the API, shown without a reload.
    let hostile = submit(api, None, event(HOSTILE_TYPE, "hostile-1")).await;
    let mut echoes = Vec::new();
    for i in 0..3 {
        echoes.push(submit(api, None, event("org.ferry.echo", &format!("echo-{i}"))).await);
    }
    let slow = submit(api, None, event("org.ferry.sleep-1s", "slow-1")).await;
    for id in echoes.iter().chain([&slow, &hostile]) {
        browser
            .until(
                &format!("task {id} to succeed in the table"),
                &format!("const r = document.querySelector('{}'); return r && r.dataset.status === 'succeeded'", row(id)),
            )
            .await;
    }
    browser
        .until(
            "the counts to show 5 succeeded",
            "return document.querySelector('#counts [data-status=\"succeeded\"] .n').textContent === '5'",
        )
        .await;
    let delayed = submit(
        api,
        None,
        json!({"specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/dashboard",
               "id": "later-1", "delayseconds": 3600, "data": "later"}),
    )
    .await;
    browser
        .until(
            "the delayed task to be listed pending",
            &format!("const r = document.querySelector('{}'); return r && r.dataset.status === 'pending'", row(&delayed)),
        )
        .await;
    browser
        .until(
            "the counts to show 1 pending of 6",
            "const n = (s) => document.querySelector(`#counts [data-status=\"${s}\"] .n`).textContent; \
             return n('pending') === '1' && n('') === '6'",
        )
        .await;

    // Markup in task data is text: no element was made of it.
    let shown = browser
        .js(&format!(
            "return document.querySelector('{} td.type').textContent",
            row(&hostile)
        ))
        .await;
    assert_eq!(shown, HOSTILE_TYPE);
    let made = browser
        .js("return document.querySelectorAll('main img').length + (window.__xss ? 100 : 0)")
        .await;
    assert_eq!(made, 0, "task data became markup");
    browser.screenshot("table-live").await;

    // Filter by status, then by type, then clear.
    browser.select("#filter-status", "succeeded").await;
    browser
        .until(
            "only succeeded tasks listed",
            "const rows = Array.from(document.querySelectorAll('#task-rows tr')); \
             return location.hash.includes('status=succeeded') && rows.length === 5 \
                 && rows.every(r => r.dataset.status === 'succeeded')",
        )
        .await;
    browser.select("#filter-type", "org.ferry.sleep-1s").await;
    browser
        .until(
            "only the sleep task listed",
            &format!(
                "const rows = Array.from(document.querySelectorAll('#task-rows tr')); \
                 return rows.length === 1 && rows[0].dataset.id === '{slow}'"
            ),
        )
        .await;
    browser.click("#clear-filters").await;
    browser
        .until(
            "every task listed again",
            "return document.querySelectorAll('#task-rows tr').length === 6",
        )
        .await;

    // A task's page, opened from the keyboard: its event and result.
    let echo = &echoes[0];
    let link = browser
        .client()
        .find(Locator::Css(&format!("{} a", row(echo))))
        .await
        .unwrap();
    link.send_keys(ENTER)
        .await
        .expect("Enter on the task's link");
    browser
        .until(
            "the task page to show succeeded",
            &format!(
                "return location.hash === '#/tasks/{echo}' \
                 && document.getElementById('task-status').textContent === 'succeeded'"
            ),
        )
        .await;
    let result = browser
        .js("return document.getElementById('task-result').textContent")
        .await;
    let result: Value = serde_json::from_str(result.as_str().unwrap()).expect("the result as JSON");
    assert_eq!(result, json!({"n": "echo-0"}));
    let shown_event = browser
        .js("return document.getElementById('task-event').textContent")
        .await;
    let shown_event: Value = serde_json::from_str(shown_event.as_str().unwrap()).unwrap();
    assert_eq!(shown_event["source"], "/ferry/dashboard");
    assert_eq!(shown_event["id"], "echo-0");
    let attempts = browser
        .js("return document.querySelectorAll('#attempt-rows tr').length")
        .await;
    assert_eq!(attempts, 1);
    browser.screenshot("task-page").await;
    let mark = browser.js("return window.__mark || null").await;
    assert_eq!(mark, "no reload", "the page reloaded");

    // The hostile task's page: still text.
    browser.goto(&api.url(&format!("/#/tasks/{hostile}"))).await;
    browser.js("window.__mark = 'no reload'; return true").await;
    browser
        .until(
            "the hostile task's page",
            &format!(
                "return document.getElementById('details').textContent.includes({HOSTILE_TYPE:?})"
            ),
        )
        .await;
    let made = browser
        .js("return document.querySelectorAll('main img').length + (window.__xss ? 100 : 0)")
        .await;
    assert_eq!(made, 0, "task data became markup on its page");

    // Cancel the delayed task with its button, then retry it: it runs.
    browser.goto(&api.url(&format!("/#/tasks/{delayed}"))).await;
    browser.js("window.__mark = 'no reload'; return true").await;
    browser
        .until(
            "the delayed task's page, pending",
            "return document.getElementById('task-status').textContent === 'pending' \
             && !document.getElementById('cancel').disabled",
        )
        .await;
    browser.click("#cancel").await;
    browser
        .until(
            "the delayed task cancelled",
            "return document.getElementById('task-status').textContent === 'cancelled' \
             && !document.getElementById('retry').disabled",
        )
        .await;
    let view = api.status(&delayed).await;
    assert_eq!(view.body["status"], "cancelled");
    browser.click("#retry").await;
    browser
        .until(
            "the retried task to succeed",
            "return document.getElementById('task-status').textContent === 'succeeded'",
        )
        .await;
    let attempts = browser
        .js("return document.querySelectorAll('#attempt-rows tr').length")
        .await;
    assert_eq!(attempts, 1);
    // A finished task cannot be cancelled: the button is off. Were it on (a
    // page behind the task's changes), the API's 409 would be shown.
    let off = browser
        .js("return document.getElementById('cancel').disabled")
        .await;
    assert_eq!(off, true);
    browser
        .js("document.getElementById('cancel').disabled = false; return true")
        .await;
    browser.click("#cancel").await;
    browser
        .until(
            "the 409's message",
            "const m = document.getElementById('action-message'); \
             return m.classList.contains('error') && m.textContent.includes('nothing to cancel')",
        )
        .await;

    // Back to the list: the counts followed.
    browser.click("#back").await;
    browser
        .until(
            "the counts to show 6 succeeded",
            "return document.querySelector('#counts [data-status=\"succeeded\"] .n').textContent === '6'",
        )
        .await;
    let mark = browser.js("return window.__mark || null").await;
    assert_eq!(mark, "no reload", "the page reloaded");

    // A busier queue for the picture (docs/dashboard.png is one): the
    // pacifica ingest script, a task failing through its retries, others
    // running and done.
    let ingest = api.post_file("C234-1234-1234/event.json").await;
    assert_eq!(ingest.status, 202, "{:?}", ingest.body);
    let failing = submit(api, None, event("org.ferry.fail", "fail-1")).await;
    submit(api, None, event("org.ferry.sleep", "sleep-1")).await;
    submit(api, None, event("org.ferry.flaky", "flaky-1")).await;
    for i in 0..4 {
        submit(
            api,
            None,
            event("org.ferry.echo", &format!("echo-late-{i}")),
        )
        .await;
    }
    browser
        .until(
            "the failing task to fail",
            &format!(
                "const r = document.querySelector('{}'); return r && r.dataset.status === 'failed'",
                row(&failing)
            ),
        )
        .await;
    browser
        .until(
            "the counts to show the failure",
            "return document.querySelector('#counts [data-status=\"failed\"] .n').textContent === '1'",
        )
        .await;
    browser.screenshot("table-busy").await;

    // A phone's width: nothing but the table's own box scrolls sideways.
    browser.resize(390, 844).await;
    browser
        .until(
            "the page to fit 390 pixels",
            "return window.innerWidth === 390 \
                 && document.documentElement.scrollWidth <= window.innerWidth",
        )
        .await;
    browser.screenshot("table-narrow").await;
    browser.close().await;
}

#[tokio::test]
async fn dashboard_standalone_sqlite() {
    let stack = Stack::start_with(Layout::Standalone, 0, |d| {
        let text = std::fs::read_to_string(&d.config).unwrap() + &hostile_route();
        d.config(&text)
    })
    .await
    .expect("standalone needs no service");
    live_dashboard(&stack, "standalone").await;
}

#[tokio::test]
async fn dashboard_postgres_api_and_worker() {
    let Some(stack) = Stack::start_with(Layout::Postgres, 1, |d| {
        let text = std::fs::read_to_string(&d.config).unwrap() + &hostile_route();
        d.config(&text)
    })
    .await
    else {
        return;
    };
    live_dashboard(&stack, "postgres").await;
}

const ADMIN: &str = "dashboard-admin-0123456789";
const READER: &str = "dashboard-reader-0123456789";

/// With tokens configured the page asks for one, keeps it for the tab, and
/// shows the API's refusals: an unknown token, a read-only token's cancel.
#[tokio::test]
async fn dashboard_asks_for_a_token() {
    let stack = Stack::start_with(Layout::Standalone, 0, |d| {
        d.token("ops", ADMIN, &["admin"])
            .token("watcher", READER, &["read"])
    })
    .await
    .expect("standalone needs no service");
    let Some(browser) = Browser::start("tokens").await else {
        return;
    };
    let api = &stack.api;
    let delayed = submit(
        api,
        Some(ADMIN),
        json!({"specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/dashboard",
               "id": "later-1", "delayseconds": 3600}),
    )
    .await;

    browser.goto(&api.url("/")).await;
    browser
        .until(
            "the token form",
            "return !document.getElementById('token-view').hidden \
             && document.activeElement === document.getElementById('token-input')",
        )
        .await;
    let listed = browser
        .js("return document.getElementById('list-view').hidden")
        .await;
    assert_eq!(listed, true, "no data is shown without a token");
    browser.screenshot("token-form").await;

    // A token the server does not know: the form says so.
    browser
        .type_into("token-input", &format!("not-a-known-token{ENTER}"))
        .await;
    browser
        .until(
            "the refusal of an unknown token",
            "return document.getElementById('token-error').textContent.includes('refused')",
        )
        .await;

    // The read token: the list.
    browser.type_into("token-input", READER).await;
    browser.click("#token-form button[type=submit]").await;
    browser
        .until(
            "the delayed task listed",
            &format!("return document.querySelector('{}')", row(&delayed)),
        )
        .await;
    let kept = browser
        .js("return sessionStorage.getItem('ferry.token')")
        .await;
    assert_eq!(kept, READER);

    // A read-only token cannot cancel: the API's 403 message is shown.
    browser.goto(&api.url(&format!("/#/tasks/{delayed}"))).await;
    browser
        .until(
            "the task page with the read token",
            "return document.getElementById('task-status').textContent === 'pending'",
        )
        .await;
    browser.click("#cancel").await;
    let refused = browser
        .until(
            "the 403 message",
            "const m = document.getElementById('action-message').textContent; \
             return m.includes('scope') && m",
        )
        .await;
    assert!(refused.as_str().unwrap().contains("\"admin\""), "{refused}");
    assert_eq!(status_with(api, &delayed, ADMIN).await, "pending");

    // Forget it; the admin token cancels.
    browser.click("#forget-token").await;
    browser
        .until(
            "the token form again",
            "return !document.getElementById('token-view').hidden",
        )
        .await;
    browser
        .type_into("token-input", &format!("{ADMIN}{ENTER}"))
        .await;
    browser
        .until(
            "the task page with the admin token",
            "return document.getElementById('task-status').textContent === 'pending' \
             && !document.getElementById('cancel').disabled",
        )
        .await;
    browser.click("#cancel").await;
    browser
        .until(
            "the task cancelled",
            "return document.getElementById('task-status').textContent === 'cancelled'",
        )
        .await;
    assert_eq!(status_with(api, &delayed, ADMIN).await, "cancelled");
    browser.close().await;
}

/// A task's status, read with a token.
async fn status_with(api: &Api, id: &str, token: &str) -> String {
    let request = api
        .client
        .get(api.url(&format!("/status/{id}")))
        .bearer_auth(token);
    let reply = api.send(request).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["status"].as_str().unwrap().to_string()
}

/// The page and its files: types, the security and cache headers, a `304`
/// for a current tag, JSON `404` for a file the dashboard lacks, and no
/// token needed while every data route still wants one.
#[tokio::test]
async fn dashboard_files_and_their_headers() {
    let stack = Stack::start_with(Layout::Standalone, 0, |d| d.token("ops", ADMIN, &["admin"]))
        .await
        .expect("standalone needs no service");
    let api = &stack.api;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ] {
        let response = api.client.get(api.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_else(|| panic!("{path}: no {name}"))
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        assert!(
            header("content-security-policy").starts_with("default-src 'self'"),
            "{path}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        let etag = header("etag");
        let again = api
            .client
            .get(api.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert!(
            again.bytes().await.unwrap().is_empty(),
            "{path}: a 304 has no body"
        );
    }
    let missing = api.get("/dashboard/secrets.txt").await;
    missing.assert_error(404, "not_found");
    // The shell is open; the data it shows is not.
    api.get("/tasks").await.assert_error(401, "unauthorized");
    let page = api
        .client
        .get(api.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/dashboard/app.js"), "{page}");
}
