// The job list: filtered by status, kept live by the tenant's event feed
// (GET /v1/events), with cancel, delete and webhook redelivery per job.

import { api, follow } from "./api.js";
import { clearErrors, el, formatTime } from "./dom.js";

const body = document.querySelector("#jobs-table tbody");
const filter = document.getElementById("status-filter");
const more = document.getElementById("jobs-more");
const feedState = document.getElementById("feed-state");
const errorBox = document.getElementById("jobs-error");
const section = document.getElementById("view-jobs");
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
let fail = () => {};
let cursor = null;
let loading = null;

function wanted(job) {
  return !filter.value || job.status === filter.value;
}

function button(text, name, onclick) {
  return el("button", { type: "button", class: `small ${name}`, onclick }, text);
}

async function act(node, request, after) {
  clearErrors(section);
  node.disabled = true;
  try {
    const answer = await request();
    after && after(answer);
  } catch (exc) {
    fail(exc, section, errorBox);
  } finally {
    node.disabled = false;
  }
}

function row(job) {
  const cells = el("div", { class: "row-actions" });
  if (!TERMINAL.has(job.status)) {
    cells.append(
      button("Cancel", "cancel", (e) =>
        act(e.target, () => api(`v1/jobs/${job.id}/cancel`, { method: "POST" })),
      ),
    );
  }
  if (TERMINAL.has(job.status) && job.spec.webhook_url) {
    cells.append(
      button("Redeliver webhook", "redeliver", (e) =>
        act(
          e.target,
          () => api(`v1/jobs/${job.id}/webhooks/redeliver`, { method: "POST" }),
          (r) => {
            e.target.textContent = `${r.event} queued`;
          },
        ),
      ),
    );
  }
  cells.append(
    button("Delete", "delete", (e) => {
      if (!e.target.dataset.armed) {
        e.target.dataset.armed = "1";
        e.target.textContent = "Really delete?";
        return;
      }
      act(
        e.target,
        () => api(`v1/jobs/${job.id}`, { method: "DELETE" }),
        () => drop(job.id),
      );
    }),
  );
  const error = job.error
    ? `${job.error.message} (${job.error.code}${job.error.stage ? `, ${job.error.stage}` : ""})`
    : "";
  return el(
    "tr",
    { "data-id": job.id, "data-status": job.status },
    el("td", {}, formatTime(job.created_at)),
    el("th", { scope: "row" }, el("a", { href: `#job=${job.id}` }, job.id)),
    el("td", {}, job.mode),
    el("td", {}, job.engine),
    el("td", {}, el("span", { class: `badge ${job.status}` }, job.status)),
    el(
      "td",
      { class: "progress" },
      el("progress", { max: 1, value: job.progress, "aria-label": `Progress of ${job.id}` }),
      ` ${job.stage || ""}`,
    ),
    el("td", { class: "error" }, error),
    el("td", {}, cells),
  );
}

const known = new Map();
const pending = new Map();
let flushing = null;
const MAX_ROWS = 200;
const MAX_READS = 10;

function find(id) {
  return body.querySelector(`tr[data-id="${CSS.escape(id)}"]`);
}

function drop(id) {
  known.delete(id);
  const node = find(id);
  if (node) node.remove();
}

function place(job) {
  known.set(job.id, job);
  const node = find(job.id);
  if (!wanted(job)) return node && node.remove();
  const fresh = row(job);
  if (node) return node.replaceWith(fresh);
  body.prepend(fresh);
  // The newest MAX_ROWS stay; paging on from a trimmed list would skip rows.
  if (body.rows.length > MAX_ROWS) {
    while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
    cursor = null;
    more.hidden = true;
  }
}

async function load(signal, append = false) {
  const query = new URLSearchParams({ limit: "50" });
  if (filter.value) query.set("status", filter.value);
  if (append && cursor) query.set("cursor", cursor);
  const page = await api(`v1/jobs?${query}`, { signal });
  if (!append) body.replaceChildren();
  for (const job of page.jobs) known.set(job.id, job);
  body.append(...page.jobs.map(row));
  cursor = page.next_cursor;
  more.hidden = !cursor;
}

// Changes from the feed, a few at a time. A job already read changes in place
// (progress without redrawing its row); a new job, or a failed one (for its
// error), is read again; many unknown jobs at once (a batch) read the list.
async function flush(signal, reload) {
  if (loading) await loading;
  const states = [...pending.values()];
  pending.clear();
  const reads = [];
  for (const state of states) {
    const job = known.get(state.id);
    const node = find(state.id);
    if (job && job.status === state.status) {
      Object.assign(job, state);
      if (node) {
        node.querySelector("progress").value = state.progress;
        node.querySelector("td.progress").lastChild.textContent = ` ${state.stage || ""}`;
      }
    } else if (job && state.status !== "failed") {
      place({ ...job, ...state });
    } else if (job || wanted(state)) {
      reads.push(state.id);
    }
  }
  if (reads.length > MAX_READS) return reload();
  for (const id of reads) {
    try {
      place(await api(`v1/jobs/${id}`, { signal }));
    } catch (exc) {
      if (exc.status === 404) drop(id);
    }
  }
}

function changed(state, signal, reload) {
  pending.set(state.id, state);
  schedule(signal, reload);
}

function schedule(signal, reload) {
  if (flushing) return;
  flushing = new Promise((resolve) => setTimeout(resolve, 200))
    .then(() => flush(signal, reload))
    .finally(() => {
      flushing = null;
      if (pending.size && !signal.aborted) schedule(signal, reload);
    });
}

export function setup(onError) {
  fail = onError;
}

export async function show(signal) {
  clearErrors(section);
  const reload = () => {
    loading = load(signal).catch((exc) => exc.name !== "AbortError" && fail(exc, section, errorBox));
    return loading;
  };
  filter.onchange = reload;
  more.onclick = () => load(signal, true).catch((exc) => fail(exc, section, errorBox));
  feedState.textContent = "connecting…";
  try {
    await follow(
      "v1/events",
      (name, data) => {
        if (name === "ready") {
          feedState.textContent = "live";
          section.dataset.live = "1";
          reload();
        } else if (name === "job") changed(data, signal, reload);
        else if (name === "deleted") drop(data.id);
      },
      signal,
      { onState: (text) => (feedState.textContent = text === "live" ? "connecting…" : text) },
    );
  } catch (exc) {
    if (exc.name !== "AbortError") {
      feedState.textContent = "not live";
      fail(exc, section, errorBox);
      reload();
    }
  }
  section.dataset.live = "";
}
