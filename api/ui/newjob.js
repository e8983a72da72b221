// New job: a video, classes prompted on a frame, an engine; segment first or
// remove at once. Also "re-prompt": the same form on a finished segment job,
// which sends only the prompts (from_job) and reuses the video and every class
// whose prompt did not change.

import { api, ApiError, upload } from "./api.js";
import { CLASS_COLOURS, clearErrors, el, showError } from "./dom.js";
import { Editor } from "./editor.js";
import { load, mp4Facts } from "./video.js";

const form = document.getElementById("new-form");
const drop = document.getElementById("drop");
const fileInput = document.getElementById("video-file");
const facts = document.getElementById("video-facts");
const classList = document.getElementById("class-list");
const editorBox = document.getElementById("editor");
const engine = document.getElementById("engine");
const progress = document.getElementById("upload-progress");
const formError = document.getElementById("new-error");
const note = document.getElementById("reprompt-note");
const removeButton = document.getElementById("submit-remove");
const segmentButton = document.getElementById("submit-segment");

const model = { classes: [], active: 0 };
const state = { file: null, url: null, facts: null, fromJob: null, options: {} };
let editor = null;
let fail = () => {};

function newClass(label) {
  const used = new Set(model.classes.map((c) => c.colour));
  const colour =
    CLASS_COLOURS.find((c) => !used.has(c)) || CLASS_COLOURS[model.classes.length % CLASS_COLOURS.length];
  return { label, text: "", remove_prompt: "", frame: null, prompts: [], colour };
}

function freeLabel() {
  const labels = new Set(model.classes.map((c) => c.label));
  if (!labels.has("object")) return "object";
  for (let i = 2; ; i++) if (!labels.has(`object${i}`)) return `object${i}`;
}

function describe(prompt, width, height) {
  if (prompt.kind === "box") {
    const [x, y, w, h] = prompt.box;
    return `box at ${Math.round(x * width)},${Math.round(y * height)} px, ${Math.round(w * width)}×${Math.round(h * height)} px`;
  }
  const [x, y] = prompt.point;
  return `${prompt.label ? "positive" : "negative"} point at ${Math.round(x * width)},${Math.round(y * height)} px`;
}

function renderPrompts(index) {
  const cls = model.classes[index];
  const list = classList.querySelector(`[data-index="${index}"] .prompts`);
  if (!list) return;
  const { width = 1, height = 1 } = state.facts || {};
  const where = cls.frame === null ? "No prompts yet" : `Prompts on frame ${cls.frame}`;
  list.replaceChildren(
    el("p", { class: "muted" }, where),
    el(
      "ul",
      {},
      cls.prompts.map((prompt, i) =>
        el(
          "li",
          { class: `prompt ${prompt.kind}` },
          describe(prompt, width, height),
          " ",
          el(
            "button",
            {
              type: "button",
              class: "small",
              "aria-label": `Delete ${describe(prompt, width, height)} of ${cls.label}`,
              onclick: () => {
                cls.prompts.splice(i, 1);
                if (!cls.prompts.length) cls.frame = null;
                changed();
              },
            },
            "Delete",
          ),
        ),
      ),
    ),
  );
}

function classCard(cls, index) {
  const id = (name) => `class-${index}-${name}`;
  const input = (name, label, attrs = {}) =>
    el(
      "div",
      { class: "row", "data-field": `classes[${index}].${name}` },
      el("label", { for: id(name) }, label),
      el("input", {
        id: id(name),
        value: cls[name],
        oninput: (e) => {
          cls[name] = e.target.value;
          if (name === "label") editor && editor.render();
        },
        ...attrs,
      }),
      el("p", { class: "field-error", role: "alert" }),
    );
  return el(
    "div",
    {
      class: "class-card",
      "data-field": `classes[${index}]`,
      "data-index": String(index),
      style: `--colour: ${cls.colour}`,
    },
    el(
      "div",
      { class: "class-head" },
      el(
        "label",
        {},
        el("input", {
          type: "radio",
          name: "active-class",
          checked: index === model.active,
          onchange: () => {
            model.active = index;
            if (cls.frame !== null && editor) editor.setFrame(cls.frame);
            editor && editor.render();
          },
        }),
        ` Draw for class ${index + 1}`,
      ),
      el(
        "button",
        {
          type: "button",
          class: "small",
          disabled: model.classes.length === 1,
          onclick: () => {
            model.classes.splice(index, 1);
            model.active = Math.min(model.active, model.classes.length - 1);
            renderClasses();
          },
        },
        `Remove class ${index + 1}`,
      ),
    ),
    input("label", "Label", { required: true, pattern: "[A-Za-z0-9_\\-]{1,64}", spellcheck: "false" }),
    input("text", "Text prompt (svor)", { placeholder: "e.g. person" }),
    input("remove_prompt", "Removal prompt (svor)", { placeholder: "e.g. remove the pedestrians" }),
    el("div", { class: "prompts", "data-field": `classes[${index}].boxes` }),
    el("p", { class: "field-error", role: "alert" }),
  );
}

function renderClasses() {
  classList.replaceChildren(...model.classes.map(classCard));
  model.classes.forEach((_, i) => renderPrompts(i));
  editor && editor.render();
}

function changed() {
  model.classes.forEach((_, i) => renderPrompts(i));
  editor && editor.render();
}

function specClasses() {
  return model.classes.map((cls) => {
    const boxes = cls.prompts.filter((p) => p.kind === "box").map((p) => p.box);
    const points = cls.prompts.filter((p) => p.kind === "point");
    const spec = {
      label: cls.label.trim(),
      frame_index: cls.frame ?? (editor ? editor.frame : 0),
      boxes,
      points: points.map((p) => p.point),
      point_labels: points.map((p) => p.label),
    };
    if (cls.text.trim()) spec.text = cls.text.trim();
    if (cls.remove_prompt.trim()) spec.remove_prompt = cls.remove_prompt.trim();
    return spec;
  });
}

function buildSpec(mode) {
  const spec = { mode, classes: specClasses(), options: { ...state.options } };
  if (engine.value) spec.engine = engine.value;
  const dilation = document.getElementById("dilation").value;
  if (dilation !== "") spec.options.mask_dilation = Number(dilation);
  const webhook = document.getElementById("webhook-url").value.trim();
  if (webhook) spec.webhook_url = webhook;
  if (state.fromJob) spec.from_job = state.fromJob;
  return spec;
}

async function submit(event) {
  event.preventDefault();
  clearErrors(form);
  const mode = (event.submitter && event.submitter.value) || "segment";
  if (!state.file && !state.fromJob) {
    showError(form, { code: "", message: "choose a video first", field: "video" }, formError);
    fileInput.focus();
    return;
  }
  const spec = buildSpec(mode);
  segmentButton.disabled = removeButton.disabled = true;
  try {
    let job;
    if (state.fromJob) {
      job = await api("v1/jobs", { method: "POST", json: spec });
    } else {
      const body = new FormData();
      body.append("spec", JSON.stringify(spec));
      body.append("video", state.file, state.file.name);
      progress.hidden = false;
      job = await upload("v1/jobs", body, (f) => (progress.value = f));
    }
    location.hash = `#job=${job.id}`;
  } catch (exc) {
    fail(exc, form, formError);
  } finally {
    progress.hidden = true;
    progress.value = 0;
    segmentButton.disabled = removeButton.disabled = false;
  }
}

// What the server reads in a file the browser cannot measure (or cannot play).
async function probe(file) {
  const body = new FormData();
  body.append("video", file, file.name);
  if (engine.value) body.append("engine", engine.value);
  const { input } = await upload("v1/probe", body);
  return input;
}

async function chooseFile(file) {
  clearErrors(drop);
  editorBox.hidden = true;
  state.file = file;
  state.facts = null;
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = URL.createObjectURL(file);
  facts.textContent = `Reading ${file.name}…`;
  const video = document.getElementById("source");
  const [header, playable] = await Promise.all([
    mp4Facts(file),
    load(video, state.url).then(
      () => true,
      () => false,
    ),
  ]);
  if (state.file !== file) return;
  let measured = header;
  try {
    if (!measured || !playable) {
      const input = await probe(file);
      measured = { fps: input.fps, frames: input.frames };
    }
  } catch (exc) {
    facts.textContent = `${file.name}: not accepted`;
    state.file = null;
    fail(exc, form, drop.querySelector(".field-error"));
    return;
  }
  if (!playable) {
    facts.textContent = `${file.name}: vor can read it (${measured.frames} frames at ${measured.fps} fps), but this browser cannot show its frames; convert it to MP4 (H.264) to draw prompts, or use text prompts with svor.`;
    return;
  }
  for (const cls of model.classes) {
    cls.prompts = [];
    cls.frame = null;
  }
  state.facts = { ...measured, width: video.videoWidth, height: video.videoHeight };
  facts.textContent = `${file.name}: ${state.facts.width}×${state.facts.height}, ${state.facts.frames} frames at ${Math.round(state.facts.fps * 100) / 100} fps`;
  openEditor(0);
}

function openEditor(frame) {
  editorBox.hidden = false;
  editor = editor || new Editor(model, changed);
  editor.open(state.facts, frame);
  changed();
}

function reset() {
  model.classes = [newClass("object")];
  model.active = 0;
  state.fromJob = null;
  state.options = {};
  note.hidden = true;
  drop.hidden = false;
  removeButton.hidden = false;
  segmentButton.textContent = "Segment first";
  renderClasses();
}

// The form on a finished segment job: its video and prompts, ready to change.
async function reprompt(jobId, signal) {
  const job = await api(`v1/jobs/${encodeURIComponent(jobId)}`, { signal });
  model.classes = [];
  for (const c of job.spec.classes) {
    const cls = newClass(c.label);
    cls.text = c.text || "";
    cls.remove_prompt = c.remove_prompt || "";
    cls.frame = c.frame_index;
    cls.prompts = [
      ...c.boxes.map((box) => ({ kind: "box", box })),
      ...c.points.map((point, i) => ({ kind: "point", point, label: c.point_labels[i] ?? 1 })),
    ];
    model.classes.push(cls);
  }
  model.active = 0;
  state.fromJob = job.id;
  state.file = null;
  state.options = {};
  engine.value = job.engine;
  note.replaceChildren(
    `Re-prompting segment job `,
    el("a", { href: `#job=${job.id}` }, job.id),
    ": the video is reused, and so is the segmentation of every class whose prompts you leave as they are.",
  );
  note.hidden = false;
  drop.hidden = true;
  removeButton.hidden = true;
  segmentButton.textContent = "Segment again";
  renderClasses();
  const video = document.getElementById("source");
  await load(video, job.input_url);
  state.facts = {
    fps: job.input.fps,
    frames: job.input.frames,
    width: video.videoWidth,
    height: video.videoHeight,
  };
  facts.textContent = "";
  openEditor(model.classes[0].frame || 0);
}

export function setup(onError) {
  fail = onError;
  form.addEventListener("submit", submit);
  fileInput.addEventListener("change", () => fileInput.files[0] && chooseFile(fileInput.files[0]));
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) chooseFile(file);
  });
  document.getElementById("add-class").addEventListener("click", () => {
    model.classes.push(newClass(freeLabel()));
    model.active = model.classes.length - 1;
    renderClasses();
    classList.querySelector(`[data-index="${model.active}"] input[id$="-label"]`).focus();
  });
  reset();
}

export async function show(route, signal) {
  if (route.reprompt) {
    try {
      await reprompt(route.reprompt, signal);
    } catch (exc) {
      if (exc.name !== "AbortError")
        fail(exc instanceof ApiError ? exc : new ApiError(0, "video", exc.message), form, formError);
    }
  } else if (state.fromJob) {
    reset();
    state.facts = null;
    facts.textContent = "";
    fileInput.value = "";
    editorBox.hidden = true;
  }
}
