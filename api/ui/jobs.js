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

function find(id) {
  return body.querySelector(`tr[data-id="${CSS.escape(id)}"]`);
}

function drop(id) {
  const node = find(id);
  if (node) node.remove();
}

function place(job) {
  const node = find(job.id);
  if (!wanted(job)) return drop(job.id);
  const fresh = row(job);
  if (node) node.replaceWith(fresh);
  else body.prepend(fresh);
}

async function load(signal, append = false) {
  const query = new URLSearchParams({ limit: "50" });
  if (filter.value) query.set("status", filter.value);
  if (append && cursor) query.set("cursor", cursor);
  const page = await api(`v1/jobs?${query}`, { signal });
  if (!append) body.replaceChildren();
  body.append(...page.jobs.map(row));
  cursor = page.next_cursor;
  more.hidden = !cursor;
}

// A change from the feed: progress updates a row in place; a new status (or a
// job not listed yet) reads the job again, for its error and its actions.
async function changed(state, signal) {
  if (loading) await loading;
  const node = find(state.id);
  if (node && node.dataset.status === state.status) {
    node.querySelector("progress").value = state.progress;
    node.querySelector("td.progress").lastChild.textContent = ` ${state.stage || ""}`;
    return;
  }
  if (!node && !wanted(state)) return;
  try {
    place(await api(`v1/jobs/${state.id}`, { signal }));
  } catch (exc) {
    if (exc.status === 404) drop(state.id);
  }
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
        } else if (name === "job") changed(data, signal);
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
