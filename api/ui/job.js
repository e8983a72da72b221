// One job: live progress while it runs; then, for a segment job, the review
// (numbered objects, suggestion, overlay; choose targets, remove, re-prompt);
// for a remove job, before and after; downloads and the job's actions.

import { api, follow } from "./api.js";
import { clearErrors, el, formatTime } from "./dom.js";
import { downloads, result } from "./result.js";
import { review } from "./review.js";

const root = document.getElementById("job");
const title = document.getElementById("job-title");
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
let fail = () => {};

function errorSlot() {
  return root.querySelector("#job-error-slot");
}

function percent(progress) {
  return `${Math.round(progress * 100)}%`;
}

function update(state) {
  const badge = document.getElementById("job-status");
  if (!badge) return;
  root.dataset.events = String(Number(root.dataset.events || 0) + 1);
  badge.textContent = state.status;
  badge.className = `badge ${state.status}`;
  document.getElementById("job-stage").textContent = state.stage ? `stage: ${state.stage}` : "";
  document.getElementById("job-progress").value = state.progress;
  document.getElementById("job-percent").textContent = percent(state.progress);
}

async function act(button, request, after) {
  clearErrors(root);
  button.disabled = true;
  try {
    after(await request());
  } catch (exc) {
    fail(exc, root, errorSlot());
  } finally {
    button.disabled = false;
  }
}

function actions(job) {
  const bar = el("div", { class: "actions", role: "group", "aria-label": "Job actions" });
  const said = el("span", { class: "muted", "aria-live": "polite", id: "job-said" });
  if (!TERMINAL.has(job.status)) {
    const cancel = el("button", { type: "button", id: "job-cancel" }, "Cancel");
    cancel.onclick = () => act(cancel, () => api(`v1/jobs/${job.id}/cancel`, { method: "POST" }), update);
    bar.append(cancel);
  }
  if (TERMINAL.has(job.status) && job.spec.webhook_url) {
    const again = el("button", { type: "button", id: "job-redeliver" }, "Redeliver webhook");
    again.onclick = () =>
      act(
        again,
        () => api(`v1/jobs/${job.id}/webhooks/redeliver`, { method: "POST" }),
        (r) => {
          said.textContent = `${r.event} is queued for delivery again`;
        },
      );
    bar.append(again);
  }
  const remove = el("button", { type: "button", id: "job-delete", class: "danger" }, "Delete");
  remove.onclick = () => {
    if (!remove.dataset.armed) {
      remove.dataset.armed = "1";
      remove.textContent = "Really delete job and files?";
      return;
    }
    act(
      remove,
      () => api(`v1/jobs/${job.id}`, { method: "DELETE" }),
      () => (location.hash = "#jobs"),
    );
  };
  bar.append(remove, said);
  return bar;
}

function head(job) {
  const input = job.input
    ? `${job.input.width}×${job.input.height}, ${job.input.frames} frames at ${job.input.fps} fps`
    : "not read yet";
  const facts = [
    ["Mode", job.mode],
    ["Engine", job.engine],
    ["Created", formatTime(job.created_at)],
    ["Input", input],
  ];
  if (job.spec.from_job)
    facts.push(["From", el("a", { href: `#job=${job.spec.from_job}` }, job.spec.from_job)]);
  return el(
    "div",
    { class: "job-head" },
    el(
      "dl",
      { class: "facts" },
      facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]),
    ),
    el(
      "p",
      { class: "status-line" },
      el("span", { id: "job-status", class: `badge ${job.status}` }, job.status),
      " ",
      el("progress", { id: "job-progress", max: 1, value: job.progress, "aria-label": "Progress" }),
      " ",
      el("span", { id: "job-percent" }, percent(job.progress)),
      " ",
      el("span", { id: "job-stage", class: "muted" }, job.stage ? `stage: ${job.stage}` : ""),
    ),
    actions(job),
    el("p", { class: "field-error form-error", role: "alert", id: "job-error-slot" }),
  );
}

function failure(error) {
  return el(
    "div",
    { class: "job-failure", id: "job-failure" },
    el("h3", {}, "Why it failed"),
    el("p", {}, error.message),
    el("p", { class: "muted" }, `code ${error.code}${error.stage ? `, in stage ${error.stage}` : ""}`),
  );
}

async function render(job, signal) {
  title.textContent = `Job ${job.id}`;
  const parts = [head(job)];
  if (job.status === "failed" && job.error) parts.push(failure(job.error));
  if (job.status === "succeeded") {
    parts.push(job.mode === "segment" ? review(job, act) : result(job));
    parts.push(await downloads(job, signal));
  }
  root.replaceChildren(...parts);
  root.dataset.status = job.status;
}

export function setup(onError) {
  fail = onError;
}

export async function show(given, signal) {
  const id = encodeURIComponent(given);
  title.textContent = `Job ${given}`;
  root.dataset.status = "";
  root.dataset.events = "0";
  root.replaceChildren(
    el("p", { class: "muted" }, "Loading…"),
    el("p", { class: "field-error form-error", role: "alert", id: "job-error-slot" }),
  );
  try {
    let job = await api(`v1/jobs/${id}`, { signal });
    await render(job, signal);
    if (TERMINAL.has(job.status)) return;
    await follow(`v1/jobs/${id}/events`, (name, state) => name === "job" && update(state), signal, {
      once: true,
    });
    if (signal.aborted) return;
    job = await api(`v1/jobs/${id}`, { signal });
    await render(job, signal);
  } catch (exc) {
    if (exc.name !== "AbortError") fail(exc, root, errorSlot());
  }
}
