// Ferry's dashboard. Everything it shows comes from the client API
// (/tasks/counts, /tasks, /tasks/<id>, cancel, retry), read once a second
// while the tab is visible. Task data only ever enters the page as text
// (textContent, text nodes, attribute values): an event type written as
// markup is shown as that markup.
"use strict";

const TICK_MS = 1000;
const PAGE_SIZE = 50;
const STATUSES = ["pending", "running", "retrying", "succeeded", "failed", "cancelled"];
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const TOKEN_KEY = "ferry.token";

const $ = (id) => document.getElementById(id);

// ---- The API ------------------------------------------------------------

/** A refusal of the API, with its status and `{error, message}` body. */
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode): the token lives as long as the page.
  }
  memoryToken = value;
  $("forget-token").hidden = !value;
}

let memoryToken = "";

/** Calls the API; resolves to the JSON body, rejects with an ApiError. */
async function api(method, path) {
  const headers = { Accept: "application/json" };
  const bearer = token() || memoryToken;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let response;
  try {
    response = await fetch(path, { method, headers, cache: "no-store" });
  } catch {
    throw new ApiError(0, { error: "offline", message: "The server does not answer." });
  }
  let body = null;
  if ((response.headers.get("Content-Type") || "").includes("json")) {
    body = await response.json().catch(() => null);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// ---- Formatting ---------------------------------------------------------

const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
};

function ago(iso) {
  if (!iso) return "–";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 0) return `in ${duration(-s * 1000)}`;
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  return `${duration(s * 1000)} ago`;
}

function duration(ms) {
  if (ms == null || Number.isNaN(ms)) return "–";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function between(from, to) {
  if (!from) return null;
  return (to ? Date.parse(to) : Date.now()) - Date.parse(from);
}

function localTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

function pretty(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function badge(node, status) {
  setText(node, status);
  node.className = `badge s-${status}`;
}

// ---- Routing: #/?status=…&type=…&cursor=…  and  #/tasks/<id> -------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  const task = path.match(/^\/tasks\/([^/]+)$/);
  if (task) return { view: "task", id: decodeURIComponent(task[1]) };
  const params = new URLSearchParams(query);
  return {
    view: "list",
    status: params.get("status") || "",
    type: params.get("type") || "",
    cursor: params.get("cursor") || "",
  };
}

function listHash({ status = "", type = "", cursor = "" }) {
  const params = new URLSearchParams();
  if (status) params.set("status", status);
  if (type) params.set("type", type);
  if (cursor) params.set("cursor", cursor);
  const query = params.toString();
  return query ? `#/?${query}` : "#/";
}

// ---- The live loop --------------------------------------------------------

let timer = null;
let generation = 0;
let lastOk = null;
let needToken = false;
let current = null;

function schedule(ms = TICK_MS) {
  clearTimeout(timer);
  timer = setTimeout(tick, ms);
}

async function tick() {
  clearTimeout(timer);
  if (document.hidden || needToken) {
    showLive(needToken ? "Signed out" : "Paused");
    return;
  }
  const mine = ++generation;
  const at = route();
  try {
    if (at.view === "task") await refreshTask(at, mine);
    else await refreshList(at, mine);
    if (mine !== generation) return;
    lastOk = Date.now();
    hideBanner();
    showLive("Live");
  } catch (e) {
    if (mine !== generation) return;
    if (handleRefusal(e)) showLive("Signed out");
    else {
      showBanner(e.message);
      showLive(e.status === 0 ? "Offline" : "Error");
    }
  }
  if (mine === generation && !needToken) schedule();
}

function showLive(state) {
  const node = $("live");
  const text = state === "Live" ? "Live" : state;
  setText(node, text);
  node.dataset.state = state.toLowerCase();
}

/** 401: ask for a token. Anything else is left to the caller. */
function handleRefusal(e) {
  if (e.status !== 401) return false;
  needToken = true;
  const hadToken = Boolean(token() || memoryToken);
  showTokenForm(hadToken ? `The token was refused: ${e.message}` : "");
  return true;
}

function showBanner(text) {
  const node = $("banner");
  setText(node, text);
  node.hidden = false;
}

function hideBanner() {
  $("banner").hidden = true;
}

// ---- Token form -----------------------------------------------------------

function showTokenForm(error) {
  $("token-view").hidden = false;
  $("list-view").hidden = true;
  $("task-view").hidden = true;
  hideBanner();
  setText($("token-error"), error);
  $("token-input").value = "";
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token-input").value.trim();
  if (!value) {
    setText($("token-error"), "Enter a token.");
    return;
  }
  setToken(value);
  needToken = false;
  $("token-view").hidden = true;
  render(true);
});

$("forget-token").addEventListener("click", () => {
  setToken("");
  needToken = false;
  render(true);
});

// ---- The list -------------------------------------------------------------

const rows = new Map();

async function refreshList(at, mine) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (at.status) params.set("status", at.status);
  if (at.type) params.set("type", at.type);
  if (at.cursor) params.set("cursor", at.cursor);
  const [counts, page] = await Promise.all([
    api("GET", "/tasks/counts"),
    api("GET", `/tasks?${params}`),
  ]);
  if (mine !== generation) return;
  renderCounts(counts, at);
  renderTypes(counts, at);
  renderRows(page.tasks, at);
  renderPager(page.next, at);
}

function renderCounts(counts, at) {
  for (const link of document.querySelectorAll("#counts .count")) {
    const status = link.dataset.status;
    const n = status ? counts.by_status[status] ?? 0 : counts.total;
    setText(link.querySelector(".n"), n.toLocaleString());
    link.href = listHash({ status, type: at.type });
    if (status === at.status) link.setAttribute("aria-current", "true");
    else link.removeAttribute("aria-current");
  }
}

function renderTypes(counts, at) {
  const select = $("filter-type");
  const types = Object.keys(counts.by_type || {});
  if (at.type && !types.includes(at.type)) types.push(at.type);
  types.sort();
  const have = Array.from(select.options).slice(1).map((o) => o.value);
  if (have.join("\n") !== types.join("\n")) {
    // Rebuilt only when the set of types changes, so an open list is not
    // disturbed every second.
    while (select.options.length > 1) select.remove(1);
    for (const type of types) select.add(el("option", { value: type, text: type }));
  }
  if (select.value !== at.type) select.value = at.type;
  const status = $("filter-status");
  if (status.value !== at.status) status.value = at.status;
}

function renderRows(tasks, at) {
  const body = $("task-rows");
  const seen = new Set();
  let next = body.firstChild;
  for (const task of tasks) {
    seen.add(task.id);
    let row = rows.get(task.id);
    if (!row) {
      row = newRow(task.id);
      rows.set(task.id, row);
    }
    fillRow(row, task);
    // Rows already in place are not moved, so a focused link keeps focus.
    if (row !== next) body.insertBefore(row, next);
    next = row.nextSibling;
  }
  for (const [id, row] of rows) {
    if (!seen.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  $("empty").hidden = tasks.length > 0;
  const filtered = at.status || at.type;
  setText(
    $("list-summary"),
    `${tasks.length}${tasks.length === PAGE_SIZE ? "+" : ""} ${filtered ? "matching " : ""}task${tasks.length === 1 ? "" : "s"}${at.cursor ? " (older page)" : ""}`,
  );
}

function newRow(id) {
  const link = el("a", { href: `#/tasks/${encodeURIComponent(id)}`, class: "id", title: id });
  link.append(el("code", { text: id.slice(0, 8) }), el("span", { class: "sr-only", text: id.slice(8) }));
  const row = el(
    "tr",
    { "data-id": id },
    el("td", {}, link),
    el("td", { class: "type" }),
    el("td", { class: "opt source" }),
    el("td", {}, el("span", { class: "badge" })),
    el("td", { class: "opt num attempts" }),
    el("td", {}, el("time")),
    el("td", { class: "opt num took" }),
  );
  return row;
}

function fillRow(row, task) {
  const cells = row.cells;
  setText(cells[1], task.type);
  cells[1].title = task.type;
  setText(cells[2], task.source);
  cells[2].title = task.source;
  badge(cells[3].firstChild, task.status);
  row.dataset.status = task.status;
  setText(cells[4], String(task.attempts));
  const time = cells[5].firstChild;
  time.dateTime = task.created_at;
  time.title = localTime(task.created_at);
  setText(time, ago(task.created_at));
  const took = task.finished_at ? between(task.started_at || task.created_at, task.finished_at) : null;
  setText(cells[6], took == null ? (task.status === "running" ? "running" : "–") : duration(took));
}

function renderPager(next, at) {
  const older = $("older");
  if (next) {
    const cursor = new URLSearchParams(next.split("?")[1] || "").get("cursor") || "";
    older.href = listHash({ status: at.status, type: at.type, cursor });
  }
  older.hidden = !next;
  const newest = $("newest");
  newest.href = listHash({ status: at.status, type: at.type });
  newest.hidden = !at.cursor;
}

$("filter-status").addEventListener("change", (e) => {
  const at = route();
  location.hash = listHash({ status: e.target.value, type: at.type });
});
$("filter-type").addEventListener("change", (e) => {
  const at = route();
  location.hash = listHash({ status: at.status, type: e.target.value });
});
$("filters").addEventListener("submit", (e) => e.preventDefault());

// ---- One task -------------------------------------------------------------

async function refreshTask(at, mine) {
  const task = await api("GET", `/tasks/${encodeURIComponent(at.id)}`);
  if (mine !== generation) return;
  renderTask(task);
}

function renderTask(task) {
  current = task;
  setText($("task-id"), task.id);
  document.title = `${task.status} · ${task.id.slice(0, 8)} · Ferry`;
  badge($("task-status"), task.status);
  $("cancel").disabled = !["pending", "running", "retrying"].includes(task.status) || Boolean(task.cancel_requested_at);
  $("retry").disabled = !["failed", "cancelled"].includes(task.status);

  renderSteps(task);
  renderDetails(task);

  $("error-panel").hidden = !task.error;
  setText($("task-error"), task.error || "");
  $("result-panel").hidden = task.status !== "succeeded" && task.result == null;
  setText($("task-result"), pretty(task.result));
  setText($("task-event"), pretty(task.event));

  const body = $("attempt-rows");
  const attempts = task.attempt_history || [];
  const fresh = attempts.map((a) =>
    el(
      "tr",
      {},
      el("td", { class: "num", text: String(a.attempt) }),
      el("td", { class: "mono", text: a.worker }),
      el("td", {}, el("time", { datetime: a.started_at, title: a.started_at, text: localTime(a.started_at) })),
      el("td", { class: "num", text: a.finished_at ? duration(between(a.started_at, a.finished_at)) : "running" }),
      el("td", { class: "attempt-error", text: a.error || "" }),
    ),
  );
  const key = JSON.stringify(attempts);
  if (body.dataset.key !== key) {
    body.dataset.key = key;
    body.replaceChildren(...fresh);
  }
  $("no-attempts").hidden = attempts.length > 0;
}

function renderSteps(task) {
  const steps = [
    ["Received", task.created_at, null],
    ["Started", task.started_at, task.started_at ? `after ${duration(between(task.created_at, task.started_at))}` : null],
    [
      task.finished_at ? capitalize(task.status) : "Finished",
      task.finished_at,
      task.finished_at && task.started_at ? `ran ${duration(between(task.started_at, task.finished_at))}` : null,
    ],
  ];
  const list = $("steps");
  const fresh = steps.map(([label, at, note], i) =>
    el(
      "li",
      { class: at ? "done" : i === 1 && task.status === "running" ? "now" : "todo" },
      el("span", { class: "step-label", text: label }),
      el("span", { class: "step-time", text: at ? localTime(at) : "–" }),
      el("span", { class: "step-note", text: note || "" }),
    ),
  );
  list.replaceChildren(...fresh);

  let note = `Attempt ${task.attempts} of ${task.max_attempts}.`;
  if (task.status === "running" && task.attempt_history?.length) {
    const last = task.attempt_history[task.attempt_history.length - 1];
    note += ` Running for ${duration(between(last.started_at, null))}.`;
  }
  if (task.due_at) note += ` Due ${ago(task.due_at)} (${localTime(task.due_at)}).`;
  if (task.cancel_requested_at) note += " Cancel requested; waiting for its worker to stop it.";
  setText($("progress-note"), note);
}

function capitalize(s) {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function renderDetails(task) {
  const pairs = [
    ["Type", task.type],
    ["Source", task.source],
    ["Event id", task.event_id],
    ["Attempts", `${task.attempts} of ${task.max_attempts}`],
    ["Created", localTime(task.created_at)],
    ["Started", localTime(task.started_at)],
    ["Finished", localTime(task.finished_at)],
  ];
  if (task.due_at) pairs.push(["Due", localTime(task.due_at)]);
  const list = $("details");
  const fresh = [];
  for (const [name, value] of pairs) fresh.push(el("dt", { text: name }), el("dd", { text: value }));
  list.replaceChildren(...fresh);
}

async function act(verb) {
  if (!current) return;
  const button = $(verb);
  const id = current.id;
  const message = $("action-message");
  button.disabled = true;
  message.className = "action-message";
  setText(message, verb === "cancel" ? "Cancelling…" : "Retrying…");
  try {
    const answer = await api("POST", `/tasks/${encodeURIComponent(id)}/${verb}`);
    setText(
      message,
      verb === "cancel"
        ? answer.cancel_requested ? "Cancel requested: its worker is stopping it." : "Cancelled."
        : "Queued to run again.",
    );
    message.classList.add("ok");
  } catch (e) {
    if (handleRefusal(e)) return;
    setText(message, e.message);
    message.classList.add("error");
  }
  generation++;
  tick();
}

$("cancel").addEventListener("click", () => act("cancel"));
$("retry").addEventListener("click", () => act("retry"));

// ---- Views ----------------------------------------------------------------

let lastView = null;

function render(focus) {
  const at = route();
  if (needToken) return;
  $("token-view").hidden = true;
  $("list-view").hidden = at.view !== "list";
  $("task-view").hidden = at.view !== "task";
  if (at.view !== lastView || at.view === "task") {
    if (at.view === "task") {
      if (!current || current.id !== at.id) {
        current = null;
        setText($("task-id"), at.id);
        setText($("action-message"), "");
        $("task-status").className = "badge";
        setText($("task-status"), "");
      }
    } else {
      document.title = "Ferry";
    }
    // A new view: move focus to its heading, so keyboard and screen reader
    // users start there.
    if (focus && lastView !== null) (at.view === "task" ? $("task-title") : $("list-title")).focus();
  }
  lastView = at.view;
  generation++;
  tick();
}

window.addEventListener("hashchange", () => render(true));
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) tick();
  else showLive("Paused");
});
// Relative times ("5 s ago") stay true between two answers too.
setInterval(() => {
  for (const time of document.querySelectorAll("#task-rows time")) {
    if (time.dateTime) setText(time, ago(time.dateTime));
  }
}, 5000);

$("forget-token").hidden = !token();
render(false);
