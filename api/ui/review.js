// The review of a segment job: per class, the preview with its numbered
// objects (click one to choose it), the suggestion and the overlay; then remove
// the chosen objects (from_job), cut them out, or prompt a class again.

import { api } from "./api.js";
import { el } from "./dom.js";

// A segment job names the files of its first class plainly, the others with _<label>.
const fileOf = (job, name, index, label) => job.result[index === 0 ? name : `${name}_${label}`];

function hit(objects, x, y) {
  const inside = objects.filter(
    ({ box: [bx, by, bw, bh] }) => x >= bx && x <= bx + bw && y >= by && y <= by + bh,
  );
  inside.sort((a, b) => a.box[2] * a.box[3] - b.box[2] * b.box[3]);
  return inside[0] || null;
}

function classReview(job, cls, index, chosen, onChoose, act) {
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
    checks.set(
      o.id,
      el("input", { type: "checkbox", value: String(o.id), onchange: (e) => toggle(o.id, e.target.checked) }),
    );
  }
  const image = el("img", {
    class: "preview",
    src: fileOf(job, "preview_url", index, cls.label),
    alt: `Frame ${cls.frame_index} with the ${segment.objects.length} object(s) of class ${cls.label} outlined and numbered`,
  });
  const wrap = el(
    "div",
    { class: "preview-wrap", "data-label": cls.label },
    image,
    el("div", { class: "marks", "aria-hidden": "true" }, [...marks.values()]),
  );
  wrap.addEventListener("click", (e) => {
    const rect = image.getBoundingClientRect();
    const found = hit(
      segment.objects,
      (e.clientX - rect.left) / rect.width,
      (e.clientY - rect.top) / rect.height,
    );
    if (found) toggle(found.id);
  });
  const overlay = fileOf(job, "overlay_url", index, cls.label);
  const cut = el("button", { type: "button", class: "cutout" }, "Cut out the chosen objects");
  cut.onclick = () =>
    act(
      cut,
      () =>
        api("v1/jobs", {
          method: "POST",
          json: {
            mode: "segment",
            from_job: job.id,
            engine: job.engine,
            classes: [cls],
            options: { cutout: [...picked].sort((a, b) => a - b) },
          },
        }),
      (made) => (location.hash = `#job=${made.id}`),
    );
  return el(
    "section",
    { class: "class-review", "data-field": `targets.${cls.label}`, style: `--colour: var(--c${index % 6})` },
    el(
      "h3",
      {},
      `Class ${cls.label} `,
      el("span", { class: "muted" }, `frame ${cls.frame_index}, ${segment.objects.length} object(s)`),
    ),
    el("p", { class: "suggestion" }, el("strong", {}, "Suggestion: "), segment.suggestion || "none"),
    el(
      "div",
      { class: "review-row" },
      wrap,
      overlay
        ? el(
            "figure",
            {},
            el("video", {
              src: overlay,
              controls: true,
              muted: true,
              loop: true,
              playsinline: true,
              preload: "auto",
              class: "overlay",
            }),
            el("figcaption", {}, "Overlay"),
          )
        : null,
    ),
    el(
      "fieldset",
      { class: "objects" },
      el("legend", {}, `Objects of ${cls.label} to remove (click them on the frame, or here)`),
      segment.objects.length
        ? segment.objects.map((o) => el("label", { class: "object-choice" }, checks.get(o.id), ` ${o.id}`))
        : el("p", {}, "No object was found: re-prompt this class."),
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

export function review(job, act) {
  const chosen = new Map();
  const remove = el(
    "button",
    { type: "button", id: "remove-chosen", disabled: true },
    "Remove the chosen objects",
  );
  const summary = el("span", { class: "muted", "aria-live": "polite" }, "nothing chosen yet");
  const onChoose = () => {
    const parts = [...chosen]
      .filter(([, ids]) => ids.size)
      .map(([label, ids]) => `${label}: ${[...ids].sort((a, b) => a - b).join(", ")}`);
    remove.disabled = !parts.length;
    summary.textContent = parts.length ? `chosen: ${parts.join("; ")}` : "nothing chosen yet";
  };
  const sections = job.spec.classes.map((cls, i) => classReview(job, cls, i, chosen, onChoose, act));
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
    act(
      remove,
      () => api("v1/jobs", { method: "POST", json: spec }),
      (made) => (location.hash = `#job=${made.id}`),
    );
  };
  return el(
    "div",
    { class: "review" },
    el("h3", { class: "visually-hidden" }, "Review"),
    sections,
    el("div", { class: "actions remove-bar" }, remove, summary),
  );
}
