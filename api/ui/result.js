// The result of a job: before and after (side by side, and under a split
// slider) and the links to every file it made.

import { api } from "./api.js";
import { el } from "./dom.js";

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
function compare(before, after) {
  const video = (src, cls) =>
    el("video", { src, muted: true, playsinline: true, preload: "auto", class: cls });
  const under = video(before, "under");
  const over = video(after, "over");
  const split = el("input", {
    type: "range",
    min: 0,
    max: 100,
    value: 50,
    id: "compare-split",
    "aria-label": "Split: before on the left, after on the right",
  });
  const time = el("input", {
    type: "range",
    min: 0,
    max: 1000,
    value: 0,
    id: "compare-time",
    "aria-label": "Time in the clip",
  });
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
    el(
      "div",
      { class: "compare" },
      under,
      over,
      el("span", { class: "tag left" }, "before"),
      el("span", { class: "tag right" }, "after"),
    ),
    el("div", { class: "row" }, el("label", { for: "compare-split" }, "Split"), split),
    el("div", { class: "row" }, el("label", { for: "compare-time" }, "Time"), time),
  );
}

export function result(job) {
  const before = job.input_url;
  const after = job.result.video_url;
  const v1 = el("video", {
    src: before,
    controls: true,
    muted: true,
    playsinline: true,
    preload: "auto",
    id: "before-video",
  });
  const v2 = el("video", {
    src: after,
    controls: true,
    muted: true,
    playsinline: true,
    preload: "auto",
    id: "after-video",
  });
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
    el(
      "div",
      { class: "side-by-side" },
      el("figure", {}, v1, el("figcaption", {}, "Before")),
      el("figure", {}, v2, el("figcaption", {}, "After")),
    ),
    both,
    compare(before, after),
  );
}

function links(job) {
  const labels = new Map(job.spec.classes.map((c, i) => [i === 0 ? "" : `_${c.label}`, c.label]));
  const files = { ...job.result, ...(job.input_url ? { input_url: job.input_url } : {}) };
  return Object.entries(files)
    .sort()
    .map(([name, url]) => {
      const base = Object.keys(LINKS).find((k) => name === k || name.startsWith(`${k}_`));
      const suffix = base ? name.slice(base.length) : "";
      const perClass = job.mode === "segment" && base !== "input_url";
      const cls = perClass && labels.get(suffix) ? ` (class ${labels.get(suffix)})` : "";
      const text = `${LINKS[base] || name}${base === "mask_url" && job.mode === "segment" ? " (object ids)" : ""}${cls}`;
      return el("li", {}, el("a", { href: url, download: "", "data-name": name }, text));
    });
}

export async function downloads(job, signal) {
  const section = el(
    "section",
    { class: "downloads", id: "downloads" },
    el("h3", {}, "Downloads"),
    el("ul", {}, links(job)),
  );
  if (job.spec.from_job) {
    api(`v1/jobs/${job.spec.from_job}`, { signal })
      .then((source) => {
        section.append(
          el("h4", {}, "From segment job ", el("a", { href: `#job=${source.id}` }, source.id)),
          el("ul", { class: "source" }, links(source)),
        );
      })
      .catch(() => {});
  }
  return section;
}
