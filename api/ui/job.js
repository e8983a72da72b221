// One job: live progress while it runs; then, for a segment job, the review
// (numbered objects, suggestion, overlay; choose targets, remove, re-prompt);
// for a remove job, before and after; downloads and the job's actions.

import { api, follow } from "./api.js";
import { clearErrors, el, formatTime } from "./dom.js";

const root = document.getElementById("job");
const title = document.getElementById("job-title");
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
let fail = () => {};

const LINKS = {
  video_url: "Result video",
  mask_url: "Mask",
  preview_url: "Preview",
  overlay_url: "Overlay video",
  cutout_url: "Cut-out (MP4, black background)",
  cutout_alpha_url: "Cut-out with alpha (WebM)",
  input_url: "Original video",
};

// A segment job names the files of its first class plainly, the others with _<label>.
const fileOf = (job, name, index, label) => job.result[index === 0 ? name : `${name}_${label}`];

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
      act(again, () => api(`v1/jobs/${job.id}/webhooks/redeliver`, { method: "POST" }), (r) => {
        said.textContent = `${r.event} is queued for delivery again`;
      });
    bar.append(again);
  }
  const remove = el("button", { type: "button", id: "job-delete", class: "danger" }, "Delete");
  remove.onclick = () => {
    if (!remove.dataset.armed) {
      remove.dataset.armed = "1";
      remove.textContent = "Really delete job and files?";
      return;
    }
    act(remove, () => api(`v1/jobs/${job.id}`, { method: "DELETE" }), () => (location.hash = "#jobs"));
  };
  bar.append(remove, said);
  return bar;
}

function head(job) {
  const input = job.input ? `${job.input.width}×${job.input.height}, ${job.input.frames} frames at ${job.input.fps} fps` : "not read yet";
  const facts = [
    ["Mode", job.mode],
    ["Engine", job.engine],
    ["Created", formatTime(job.created_at)],
    ["Input", input],
  ];
  if (job.spec.from_job) facts.push(["From", el("a", { href: `#job=${job.spec.from_job}` }, job.spec.from_job)]);
  return el(
    "div",
    { class: "job-head" },
    el("dl", { class: "facts" }, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
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

function hit(objects, x, y) {
  const inside = objects.filter(({ box: [bx, by, bw, bh] }) => x >= bx && x <= bx + bw && y >= by && y <= by + bh);
  inside.sort((a, b) => a.box[2] * a.box[3] - b.box[2] * b.box[3]);
  return inside[0] || null;
}

function classReview(job, cls, index, chosen, onChoose) {
  const segment = job.segments[cls.label] || { suggestion: "", objects: [] };
  const picked = new Set();
  chosen.set(cls.label, picked);
  const marks = new Map();
  const checks = new Map();
  const toggle = (id, on = !picked.has(id)) => {
    if (on) picked.add(id);
    else picked.delete(id);
    marks.get(id).classList.toggle("chosen", on);
    checks.get(id).checked = on;
    onChoose();
  };
  for (const o of segment.objects) {
    const [x, y, w, h] = o.box.map((v) => `${v * 100}%`);
    marks.set(o.id, el("div", { class: "mark", style: `left:${x};top:${y};width:${w};height:${h}` }));
    checks.set(o.id, el("input", { type: "checkbox", value: String(o.id), onchange: (e) => toggle(o.id, e.target.checked) }));
  }
  const image = el("img", {
    class: "preview",
    src: fileOf(job, "preview_url", index, cls.label),
    alt: `Frame ${cls.frame_index} with the ${segment.objects.length} object(s) of class ${cls.label} outlined and numbered`,
  });
  const wrap = el("div", { class: "preview-wrap", "data-label": cls.label }, image, el("div", { class: "marks", "aria-hidden": "true" }, [...marks.values()]));
  wrap.addEventListener("click", (e) => {
    const rect = image.getBoundingClientRect();
    const found = hit(segment.objects, (e.clientX - rect.left) / rect.width, (e.clientY - rect.top) / rect.height);
    if (found) toggle(found.id);
  });
  const overlay = fileOf(job, "overlay_url", index, cls.label);
  const cut = el("button", { type: "button", class: "cutout" }, "Cut out the chosen objects");
  cut.onclick = () =>
    act(cut, () => api("v1/jobs", { method: "POST", json: { mode: "segment", from_job: job.id, engine: job.engine, classes: [cls], options: { cutout: [...picked].sort((a, b) => a - b) } } }), (made) => (location.hash = `#job=${made.id}`));
  return el(
    "section",
    { class: "class-review", "data-field": `targets.${cls.label}`, style: `--colour: var(--c${index % 6})` },
    el("h3", {}, `Class ${cls.label} `, el("span", { class: "muted" }, `frame ${cls.frame_index}, ${segment.objects.length} object(s)`)),
    el("p", { class: "suggestion" }, el("strong", {}, "Suggestion: "), segment.suggestion || "none"),
    el(
      "div",
      { class: "review-row" },
      wrap,
      overlay ? el("figure", {}, el("video", { src: overlay, controls: true, muted: true, loop: true, playsinline: true, preload: "auto", class: "overlay" }), el("figcaption", {}, "Overlay")) : null,
    ),
    el(
      "fieldset",
      { class: "objects" },
      el("legend", {}, `Objects of ${cls.label} to remove (click them on the frame, or here)`),
      segment.objects.length ? segment.objects.map((o) => el("label", { class: "object-choice" }, checks.get(o.id), ` ${o.id}`)) : el("p", {}, "No object was found: re-prompt this class."),
    ),
    el(
      "div",
      { class: "actions" },
      el("a", { class: "button", href: `#reprompt=${job.id}` }, "Re-prompt"),
      segment.objects.length ? cut : null,
    ),
    el("p", { class: "field-error", role: "alert" }),
  );
}

function review(job) {
  const chosen = new Map();
  const remove = el("button", { type: "button", id: "remove-chosen", disabled: true }, "Remove the chosen objects");
  const summary = el("span", { class: "muted", "aria-live": "polite" }, "nothing chosen yet");
  const onChoose = () => {
    const parts = [...chosen].filter(([, ids]) => ids.size).map(([label, ids]) => `${label}: ${[...ids].sort((a, b) => a - b).join(", ")}`);
    remove.disabled = !parts.length;
    summary.textContent = parts.length ? `chosen: ${parts.join("; ")}` : "nothing chosen yet";
  };
  const sections = job.spec.classes.map((cls, i) => classReview(job, cls, i, chosen, onChoose));
  remove.onclick = () => {
    const targets = {};
    for (const [label, ids] of chosen) if (ids.size) targets[label] = [...ids].sort((a, b) => a - b);
    const spec = {
      mode: "remove",
      from_job: job.id,
      engine: job.engine,
      classes: job.spec.classes.filter((c) => targets[c.label]),
      targets,
      options: { mask_dilation: job.spec.options.mask_dilation },
      webhook_url: job.spec.webhook_url,
      webhook_events: job.spec.webhook_events,
    };
    act(remove, () => api("v1/jobs", { method: "POST", json: spec }), (made) => (location.hash = `#job=${made.id}`));
  };
  return el("div", { class: "review" }, el("h3", { class: "visually-hidden" }, "Review"), sections, el("div", { class: "actions remove-bar" }, remove, summary));
}

function compare(before, after) {
  const video = (src, cls) => el("video", { src, muted: true, playsinline: true, preload: "auto", class: cls });
  const under = video(before, "under");
  const over = video(after, "over");
  const split = el("input", { type: "range", min: 0, max: 100, value: 50, id: "compare-split", "aria-label": "Split: before on the left, after on the right" });
  const time = el("input", { type: "range", min: 0, max: 1000, value: 0, id: "compare-time", "aria-label": "Time in the clip" });
  const apply = () => (over.style.clipPath = `inset(0 0 0 ${split.value}%)`);
  split.addEventListener("input", apply);
  time.addEventListener("input", () => {
    const t = (Number(time.value) / 1000) * (under.duration || 0);
    under.currentTime = over.currentTime = Math.min(t, (under.duration || 0) - 0.01);
  });
  apply();
  return el(
    "div",
    {},
    el("h3", {}, "Before | after, with a slider"),
    el("div", { class: "compare" }, under, over, el("span", { class: "tag left" }, "before"), el("span", { class: "tag right" }, "after")),
    el("div", { class: "row" }, el("label", { for: "compare-split" }, "Split"), split),
    el("div", { class: "row" }, el("label", { for: "compare-time" }, "Time"), time),
  );
}

function result(job) {
  const before = job.input_url;
  const after = job.result.video_url;
  const v1 = el("video", { src: before, controls: true, muted: true, playsinline: true, preload: "auto", id: "before-video" });
  const v2 = el("video", { src: after, controls: true, muted: true, playsinline: true, preload: "auto", id: "after-video" });
  const both = el("button", { type: "button" }, "Play both");
  both.onclick = () => {
    if (v1.paused) {
      v2.currentTime = v1.currentTime;
      v1.play();
      v2.play();
      both.textContent = "Pause both";
    } else {
      v1.pause();
      v2.pause();
      both.textContent = "Play both";
    }
  };
  return el(
    "section",
    { class: "result" },
    el("h3", {}, "Before and after"),
    el("div", { class: "side-by-side" }, el("figure", {}, v1, el("figcaption", {}, "Before")), el("figure", {}, v2, el("figcaption", {}, "After"))),
    both,
    compare(before, after),
  );
}

function links(job) {
  const labels = new Map(job.spec.classes.map((c, i) => [i === 0 ? "" : `_${c.label}`, c.label]));
  const files = { ...job.result, ...(job.input_url ? { input_url: job.input_url } : {}) };
  return Object.entries(files).sort().map(([name, url]) => {
    const base = Object.keys(LINKS).find((k) => name === k || name.startsWith(`${k}_`));
    const suffix = base ? name.slice(base.length) : "";
    const perClass = job.mode === "segment" && base !== "input_url";
    const cls = perClass && labels.get(suffix) ? ` (class ${labels.get(suffix)})` : "";
    const text = `${LINKS[base] || name}${base === "mask_url" && job.mode === "segment" ? " (object ids)" : ""}${cls}`;
    return el("li", {}, el("a", { href: url, download: "", "data-name": name }, text));
  });
}

async function downloads(job, signal) {
  const section = el("section", { class: "downloads", id: "downloads" }, el("h3", {}, "Downloads"), el("ul", {}, links(job)));
  if (job.spec.from_job) {
    api(`v1/jobs/${job.spec.from_job}`, { signal })
      .then((source) => {
        section.append(el("h4", {}, "From segment job ", el("a", { href: `#job=${source.id}` }, source.id)), el("ul", { class: "source" }, links(source)));
      })
      .catch(() => {});
  }
  return section;
}

async function render(job, signal) {
  title.textContent = `Job ${job.id}`;
  const parts = [head(job)];
  if (job.status === "failed" && job.error) parts.push(failure(job.error));
  if (job.status === "succeeded") {
    parts.push(job.mode === "segment" ? review(job) : result(job));
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
  root.replaceChildren(el("p", { class: "muted" }, "Loading…"), el("p", { class: "field-error form-error", role: "alert", id: "job-error-slot" }));
  try {
    let job = await api(`v1/jobs/${id}`, { signal });
    await render(job, signal);
    if (TERMINAL.has(job.status)) return;
    await follow(`v1/jobs/${id}/events`, (name, state) => name === "job" && update(state), signal, { once: true });
    if (signal.aborted) return;
    job = await api(`v1/jobs/${id}`, { signal });
    await render(job, signal);
  } catch (exc) {
    if (exc.name !== "AbortError") fail(exc, root, errorSlot());
  }
}
