// The annotation frame: scrub to a frame, draw boxes and positive/negative
// points for the active class, with the mouse or from the keyboard.
//
// Coordinates are kept normalised (0..1, boxes as [x, y, w, h] from the
// top-left corner), as the job spec takes them.

import { announce } from "./dom.js";
import { seek } from "./video.js";

const MIN_DISPLAY_SIZE = 480;
const DRAG_PX = 4;

const clamp = (v) => Math.min(1, Math.max(0, v));
const round = (v) => Math.round(v * 10000) / 10000;

export class Editor {
  // `model` holds {classes, active}; each class {label, colour, frame, prompts}.
  constructor(model, onChange) {
    this.model = model;
    this.onChange = onChange;
    this.canvas = document.getElementById("frame");
    this.video = document.getElementById("source");
    this.slider = document.getElementById("frame-index");
    this.label = document.getElementById("frame-label");
    this.status = document.getElementById("editor-status");
    this.ctx = this.canvas.getContext("2d");
    this.facts = null;
    this.frame = 0;
    this.shown = -1;
    this.cursor = [0.5, 0.5];
    this.corner = null;
    this.drag = null;
    this.focused = false;
    this.bind();
  }

  get tool() {
    return document.querySelector('input[name="tool"]:checked').value;
  }

  set tool(value) {
    document.querySelector(`input[name="tool"][value="${value}"]`).checked = true;
  }

  bind() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.pointerDown(e));
    c.addEventListener("pointermove", (e) => this.pointerMove(e));
    c.addEventListener("pointerup", (e) => this.pointerUp(e));
    c.addEventListener("pointercancel", () => ((this.drag = null), this.render()));
    c.addEventListener("keydown", (e) => this.key(e));
    c.addEventListener("focus", () => ((this.focused = true), this.render()));
    c.addEventListener("blur", () => ((this.focused = false), this.render()));
    this.slider.addEventListener("input", () => this.setFrame(Number(this.slider.value)));
    document.getElementById("frame-prev").addEventListener("click", () => this.setFrame(this.frame - 1));
    document.getElementById("frame-next").addEventListener("click", () => this.setFrame(this.frame + 1));
  }

  // Show the loaded video's frames: facts = {fps, frames, width, height}.
  open(facts, frame = 0) {
    this.facts = facts;
    const scale = Math.max(1, Math.ceil(MIN_DISPLAY_SIZE / Math.max(facts.width, facts.height)));
    this.canvas.width = facts.width * scale;
    this.canvas.height = facts.height * scale;
    this.slider.max = String(Math.max(0, facts.frames - 1));
    this.shown = -1;
    this.setFrame(frame);
  }

  async setFrame(index) {
    if (!this.facts) return;
    this.frame = Math.min(Math.max(0, index), this.facts.frames - 1);
    this.slider.value = String(this.frame);
    this.label.textContent = `${this.frame} / ${this.facts.frames - 1}`;
    this.corner = null;
    if (this.seeking) return;
    this.seeking = true;
    try {
      while (this.shown !== this.frame) {
        const target = this.frame;
        await seek(this.video, target, this.facts.fps);
        this.shown = target;
      }
    } finally {
      this.seeking = false;
    }
    this.canvas.dataset.frame = String(this.shown);
    this.render();
  }

  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return [clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height)];
  }

  pointerDown(event) {
    if (event.button !== 0 || !this.facts) return;
    this.canvas.focus();
    this.canvas.setPointerCapture(event.pointerId);
    const start = this.point(event);
    this.drag = { start, end: start, x: event.clientX, y: event.clientY };
  }

  pointerMove(event) {
    if (!this.drag) return;
    this.drag.end = this.point(event);
    this.render();
  }

  pointerUp(event) {
    if (!this.drag) return;
    const { start, x, y } = this.drag;
    const end = this.point(event);
    this.drag = null;
    const moved = Math.hypot(event.clientX - x, event.clientY - y) > DRAG_PX;
    this.cursor = end;
    if (this.tool === "box") {
      if (moved) this.addBox(start, end);
      else this.say("drag to draw a box (or pick a point tool)");
    } else {
      this.addPoint(start, this.tool === "positive" ? 1 : 0);
    }
    this.render();
  }

  key(event) {
    if (!this.facts) return;
    const step = event.shiftKey ? 0.05 : 0.01;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    const tools = { b: "box", p: "positive", n: "negative" };
    if (moves[event.key]) {
      const [dx, dy] = moves[event.key];
      this.cursor = [clamp(this.cursor[0] + dx), clamp(this.cursor[1] + dy)];
    } else if (event.key === "Enter" || event.key === " ") {
      this.place();
    } else if (event.key === "Escape") {
      this.corner = null;
      this.say("box canceled");
    } else if (event.key === "Delete" || event.key === "Backspace") {
      this.removeLast();
    } else if (tools[event.key.toLowerCase()] && !event.ctrlKey && !event.metaKey) {
      this.tool = tools[event.key.toLowerCase()];
      this.say(`tool: ${this.tool}`);
    } else {
      return;
    }
    event.preventDefault();
    this.render();
  }

  place() {
    if (this.tool !== "box") {
      this.addPoint(this.cursor, this.tool === "positive" ? 1 : 0);
    } else if (!this.corner) {
      this.corner = [...this.cursor];
      this.say("first corner placed; move to the opposite corner and press Enter");
    } else {
      this.addBox(this.corner, this.cursor);
      this.corner = null;
    }
  }

  activeClass() {
    return this.model.classes[this.model.active];
  }

  // A class is prompted on one frame: the first prompt fixes it.
  claim(cls) {
    if (cls.prompts.length && cls.frame !== this.frame) {
      this.say(
        `class "${cls.label}" is prompted on frame ${cls.frame}: go to that frame, or delete its prompts to use this one`,
      );
      return false;
    }
    cls.frame = this.frame;
    return true;
  }

  addBox(a, b) {
    const cls = this.activeClass();
    const [x, y] = [Math.min(a[0], b[0]), Math.min(a[1], b[1])];
    const [w, h] = [Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1])];
    if (w <= 0.002 || h <= 0.002) return this.say("the box is too small");
    if (!cls || !this.claim(cls)) return;
    const box = [round(x), round(y), round(Math.min(w, 1 - round(x))), round(Math.min(h, 1 - round(y)))];
    cls.prompts.push({ kind: "box", box });
    this.say(`box added to "${cls.label}" on frame ${this.frame}`);
    this.onChange();
  }

  addPoint(p, label) {
    const cls = this.activeClass();
    if (!cls || !this.claim(cls)) return;
    cls.prompts.push({ kind: "point", point: [round(p[0]), round(p[1])], label });
    this.say(`${label ? "positive" : "negative"} point added to "${cls.label}" on frame ${this.frame}`);
    this.onChange();
  }

  removeLast() {
    const cls = this.activeClass();
    if (!cls || !cls.prompts.length) return;
    cls.prompts.pop();
    if (!cls.prompts.length) cls.frame = null;
    this.say(`last prompt of "${cls.label}" removed`);
    this.onChange();
  }

  say(text) {
    this.status.textContent = text;
    announce(text);
  }

  render() {
    if (!this.facts) return;
    const { ctx, canvas } = this;
    const W = canvas.width;
    const H = canvas.height;
    const line = Math.max(2, Math.round(W / 320));
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.video, 0, 0, W, H);
    this.model.classes.forEach((cls, index) => {
      if (cls.frame !== this.frame) return;
      const active = index === this.model.active;
      ctx.lineWidth = active ? line * 1.5 : line;
      ctx.strokeStyle = cls.colour;
      ctx.fillStyle = cls.colour;
      ctx.font = `${Math.max(12, line * 6)}px sans-serif`;
      for (const prompt of cls.prompts) {
        if (prompt.kind === "box") {
          const [x, y, w, h] = prompt.box;
          ctx.strokeRect(x * W, y * H, w * W, h * H);
          ctx.fillText(cls.label, x * W + line, y * H - line * 2 > 10 ? y * H - line * 2 : y * H + line * 8);
        } else {
          this.drawPoint(prompt.point, prompt.label, cls.colour, line);
        }
      }
    });
    ctx.setLineDash([line * 3, line * 2]);
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = line;
    const pending =
      this.drag && this.tool === "box"
        ? [this.drag.start, this.drag.end]
        : this.corner
          ? [this.corner, this.cursor]
          : null;
    if (pending) {
      const [a, b] = pending;
      ctx.strokeRect(
        Math.min(a[0], b[0]) * W,
        Math.min(a[1], b[1]) * H,
        Math.abs(a[0] - b[0]) * W,
        Math.abs(a[1] - b[1]) * H,
      );
    }
    ctx.setLineDash([]);
    if (this.focused) {
      const [cx, cy] = [this.cursor[0] * W, this.cursor[1] * H];
      ctx.strokeStyle = "#ffffff";
      ctx.beginPath();
      ctx.moveTo(cx - 10 * line, cy);
      ctx.lineTo(cx + 10 * line, cy);
      ctx.moveTo(cx, cy - 10 * line);
      ctx.lineTo(cx, cy + 10 * line);
      ctx.stroke();
    }
  }

  drawPoint([x, y], label, colour, line) {
    const { ctx, canvas } = this;
    const [cx, cy, r] = [x * canvas.width, y * canvas.height, line * 4];
    ctx.beginPath();
    ctx.arc(cx, cy, r, 0, 2 * Math.PI);
    ctx.fillStyle = label ? colour : "#000000";
    ctx.fill();
    ctx.lineWidth = line;
    ctx.strokeStyle = label ? "#ffffff" : colour;
    ctx.stroke();
    ctx.beginPath();
    ctx.strokeStyle = "#ffffff";
    ctx.moveTo(cx - r / 2, cy);
    ctx.lineTo(cx + r / 2, cy);
    if (label) {
      ctx.moveTo(cx, cy - r / 2);
      ctx.lineTo(cx, cy + r / 2);
    }
    ctx.stroke();
  }
}
