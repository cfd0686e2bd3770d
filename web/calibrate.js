// Calibrating a stream's model on its own camera (docs/calibration.md, "From the page"): a
// "Calibrate" button on each card opens a panel where frames of the stream are captured at
// the camera's full resolution (POST .../calibration/frames), listed with their dates and
// counts, marked head by head in a zoomable editor over the frame (or given a typed count,
// or "no people"), and, from 5 marked frames, handed to the server to fit the model to the
// camera (POST .../calibration) with its progress and its verdict. The card then says
// "Calibrated on N frames: MAE a → b" (the stream JSON's ``calibration``) and offers
// "Revert" (DELETE .../calibration). A feature module, like zones.js.

import { api, streamPath } from "./api.js";
import { addCardButton, eachCard } from "./card.js";
import { el } from "./dom.js";
import { clearOverlay, FrameEditor, toCss, toFrame, ZoomView } from "./editor.js";
import { formatCount } from "./format.js";
import { MarkSet } from "./marks.js";

export const MIN_FRAMES = 5; // training.calibrate.MIN_FRAMES: the server refuses fewer
const RECENT = 5; // limits.RECENT_FRAMES: how many of the last frames can be picked
const POLL_MS = 1000;
const HIT_PX = 9; // a press this close (CSS px) to a mark grabs it
const MIN_GAP_PX = 3; // a click this close to a mark adds no second one on it
const DRAG_PX = 4; // a press that moves further is a drag (move or pan), not a click
const MARK_RADIUS_PX = 5;
const PAN_STEP_PX = 60;
const THUMB_PX = 80; // .frame-thumb is 40 CSS px: sharp at twice that

const calibrationPath = (id, rest = "") =>
  streamPath(id, rest ? `calibration/${rest}` : "calibration");
const framePath = (id, fid, rest = "") =>
  calibrationPath(id, `frames/${encodeURIComponent(fid)}${rest ? `/${rest}` : ""}`);

function when(t) {
  return new Date(Number(t) * 1000).toLocaleString();
}

function mae(value) {
  return Number.isFinite(Number(value)) ? Number(value).toFixed(2) : "–";
}

// What a frame's marks say, for the list: "14 marked", "typed 14", "no people", "not marked".
function markedText(frame) {
  const marks = frame.marks;
  if (!marks) return "not marked";
  if (Array.isArray(marks.points)) {
    return marks.points.length ? `${marks.points.length} marked` : "no people";
  }
  return `typed ${formatCount(Number(marks.count))}`;
}

// The shortcuts of the marking editor, as its help lists them (and the handler reads them).
const SHORTCUTS = [
  ["Click", "mark a head"],
  ["Drag a mark", "move it"],
  ["Right-click, Delete", "remove the mark under the pointer"],
  ["Ctrl+Z, Ctrl+Shift+Z", "undo, redo"],
  ["Wheel, + and −", "zoom in and out"],
  ["Drag the picture, arrows", "pan"],
  ["0", "fit the whole frame"],
  ["D", "show or hide the model's density"],
  ["Ctrl+S", "save the marks"],
  ["Esc", "close"],
];

// ------------------------------------------------------------------------ marking editor

// The one marking dialog of the page: the full-resolution frame on a canvas, the model's
// density faintly under the marks, and the marks, in frame pixels, drawn through a ZoomView.
class MarkDialog extends FrameEditor {
  constructor() {
    super(null, "mark-error");
    this.dialog = el("dialog", { class: "mark-dialog", testid: "mark-dialog",
                                 "aria-labelledby": "mark-title" });
    const head = el("div", { class: "mark-head" });
    this.title = el("h2", { id: "mark-title", testid: "mark-title" }, "Mark heads");
    this.countOut = el("output", { class: "mark-count", testid: "mark-count",
                                   "aria-live": "polite" });
    const close = el("button", { type: "button", testid: "mark-close",
                                 "aria-label": "Close without saving" }, "×");
    close.addEventListener("click", () => this.cancel());
    head.append(this.title, this.countOut, close);

    const tools = el("div", { class: "mark-tools", role: "toolbar",
                              "aria-label": "Marking tools" });
    const tool = (testid, text, label, action) => {
      const b = el("button", { type: "button", testid, "aria-label": label }, text);
      b.addEventListener("click", () => {
        action();
        this.canvas.focus();
      });
      tools.append(b);
      return b;
    };
    this.undoButton = tool("mark-undo", "Undo", "Undo (Ctrl+Z)", () => this.undo());
    this.redoButton = tool("mark-redo", "Redo", "Redo (Ctrl+Shift+Z)", () => this.redo());
    tool("mark-zoom-in", "+", "Zoom in (+)", () => this.zoomBy(1.5));
    tool("mark-zoom-out", "−", "Zoom out (−)", () => this.zoomBy(1 / 1.5));
    tool("mark-fit", "Fit", "Fit the whole frame (0)", () => this.fit());
    this.densityBox = el("input", { type: "checkbox", testid: "mark-density", checked: "" });
    const densityLabel = el("label", { class: "field-inline" });
    densityLabel.append(this.densityBox, el("span", {}, " model's density"));
    this.densityBox.addEventListener("change", () => this.redraw());
    tools.append(densityLabel);

    this.stage = el("div", { class: "mark-stage" });
    // A widget of its own (role "application"): it takes the keys listed in mark-keys.
    this.canvas = el("canvas", {
      testid: "mark-canvas", tabindex: "0", role: "application",
      "aria-describedby": "mark-keys",
      "aria-label": "The frame: click each head to mark it (without a pointer, give its count)",
    });
    this.stage.append(this.canvas);

    const foot = el("div", { class: "mark-foot" });
    this.emptyButton = el("button", { type: "button", testid: "mark-empty" }, "No people");
    this.emptyButton.title = "Save this frame as one with nobody in it (it teaches background)";
    this.countForm = el("form", { class: "mark-count-form", testid: "mark-count-form" });
    const countLabel = el("label", { class: "field-inline" });
    this.typed = el("input", { type: "number", min: "0", max: "2000", step: "any",
                               inputmode: "decimal", testid: "mark-typed-count",
                               placeholder: "count" });
    countLabel.append(el("span", {}, "or type the count "), this.typed);
    this.typedButton = el("button", { type: "submit", testid: "mark-save-count" },
                          "Save count");
    this.countForm.append(countLabel, this.typedButton);
    this.saveButton = el("button", { type: "button", class: "primary", testid: "mark-save" },
                         "Save marks");
    const cancel = el("button", { type: "button", testid: "mark-cancel" }, "Cancel");
    foot.append(this.emptyButton, this.countForm, this.saveButton, cancel);

    this.discard = el("div", { class: "confirm", testid: "mark-discard", role: "alertdialog",
                               hidden: "" });
    this.discardText = el("span", {});
    const discardYes = el("button", { type: "button", class: "danger",
                                      testid: "mark-discard-yes" }, "Discard");
    const discardNo = el("button", { type: "button", testid: "mark-discard-no" },
                         "Keep marking");
    this.discard.append(this.discardText, discardYes, discardNo);
    discardYes.addEventListener("click", () => this.close());
    discardNo.addEventListener("click", () => {
      this.discard.hidden = true;
      this.canvas.focus();
    });

    const keys = el("dl", { class: "mark-keys", testid: "mark-keys", id: "mark-keys",
                            "aria-label": "Keyboard and mouse shortcuts" });
    for (const [key, what] of SHORTCUTS) {
      const pair = el("div", {});
      pair.append(el("dt", {}, key), el("dd", {}, what));
      keys.append(pair);
    }
    this.dialog.append(head, tools, this.stage, foot, this.discard, this.error, keys);
    document.body.append(this.dialog);

    cancel.addEventListener("click", () => this.cancel());
    this.saveButton.addEventListener("click", () => this.save(this.marks.body()));
    this.emptyButton.addEventListener("click", () => this.save({ points: [] }));
    this.countForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = this.typed.value.trim();
      if (text === "") {
        this.showError("Type how many people the frame shows.");
        return;
      }
      this.save({ count: Number(text) });
    });
    this.dialog.addEventListener("cancel", (event) => {
      event.preventDefault(); // Esc: closes unless there are unsaved marks
      this.cancel();
    });
    this.dialog.addEventListener("keydown", (event) => this.onKey(event));
    this.canvas.addEventListener("pointerdown", (event) => this.onDown(event));
    this.canvas.addEventListener("pointermove", (event) => this.onMove(event));
    this.canvas.addEventListener("pointerup", (event) => this.onUp(event));
    this.canvas.addEventListener("pointercancel", () => {
      this.press = null;
    });
    this.canvas.addEventListener("pointerleave", () => this.hover(-1));
    this.canvas.addEventListener("contextmenu", (event) => this.onContextMenu(event));
    this.canvas.addEventListener("wheel", (event) => this.onWheel(event), { passive: false });
    this.observe(this.stage);
  }

  // Mark ``frame`` of ``panel``'s stream; ``panel.onSaved(frame)`` gets the server's answer.
  async open(panel, frame) {
    this.panel = panel;
    this.frame = frame;
    this.image = null;
    this.density = null;
    this.press = null;
    this.hovered = -1;
    const points = Array.isArray(frame.marks?.points) ? frame.marks.points : [];
    this.marks = new MarkSet(frame.width, frame.height, points);
    this.zoom = new ZoomView(frame.width, frame.height);
    this.typed.value = frame.marks && !Array.isArray(frame.marks.points)
      ? String(frame.marks.count) : "";
    this.title.textContent = `Mark heads: ${panel.card.name}, ${when(frame.captured_at)}`;
    this.dialog.dataset.frameId = frame.id;
    delete this.dialog.dataset.loaded;
    this.discard.hidden = true;
    this.showError("");
    this.update();
    if (!this.dialog.open) this.dialog.showModal();
    this.canvas.focus();
    const id = panel.card.id;
    const load = async (rest) => {
      const image = new Image();
      image.src = framePath(id, frame.id, rest);
      await image.decode();
      return image;
    };
    try {
      const [image, density] = await Promise.all([
        load("image"), load("density").catch(() => null)]);
      if (this.frame !== frame) return;
      this.image = image;
      this.density = density;
      this.densityBox.disabled = !density;
      this.dialog.dataset.loaded = "1";
      this.redraw();
    } catch {
      if (this.frame === frame) this.showError("Could not load the frame's picture.");
    }
  }

  close() {
    this.frame = null;
    this.dialog.close();
    this.panel?.focusList();
  }

  cancel() {
    if (this.marks?.dirty) {
      this.discardText.textContent = "Discard the unsaved marks?";
      this.discard.hidden = false;
      this.discard.querySelector('[data-testid="mark-discard-no"]').focus();
      return;
    }
    this.close();
  }

  async save(body) {
    const frame = this.frame;
    if (!frame) return;
    for (const b of [this.saveButton, this.emptyButton, this.typedButton]) b.disabled = true;
    try {
      const saved = await api(framePath(this.panel.card.id, frame.id, "marks"),
                              { method: "PUT", json: body });
      this.marks.saved();
      this.panel.onSaved(saved.frame || saved);
      this.close();
    } catch (err) {
      this.showError(err.message);
    } finally {
      for (const b of [this.saveButton, this.typedButton]) b.disabled = false;
      this.update();
    }
  }

  // -- view -------------------------------------------------------------------------------

  box() {
    return [this.canvas.clientWidth, this.canvas.clientHeight];
  }

  view() {
    return this.zoom.view(...this.box());
  }

  // The pointer's place on the frame (null off it; ``slack`` px of the frame beyond it).
  pointAt(event, slack = 0) {
    return toFrame(this.view(), event.offsetX, event.offsetY, slack);
  }

  zoomBy(factor, at = null) {
    const [w, h] = this.box();
    const [x, y] = at || [w / 2, h / 2];
    this.zoom.zoomAt(w, h, x, y, factor);
    this.redraw();
  }

  fit() {
    this.zoom.reset();
    this.redraw();
  }

  pan(dx, dy) {
    this.zoom.panBy(...this.box(), dx, dy);
    this.redraw();
  }

  // -- editing ----------------------------------------------------------------------------

  edited() {
    this.update();
    this.redraw();
  }

  undo() {
    if (this.marks.undo()) this.edited();
  }

  redo() {
    if (this.marks.redo()) this.edited();
  }

  removeMark(i) {
    if (this.marks.remove(i)) {
      this.hovered = -1;
      this.edited();
    }
  }

  hover(i) {
    if (i === this.hovered) return;
    this.hovered = i;
    this.canvas.style.cursor = i >= 0 ? "move" : "crosshair";
    this.redraw();
  }

  onDown(event) {
    if (event.button !== 0 || !this.frame) return;
    this.canvas.focus();
    this.canvas.setPointerCapture(event.pointerId);
    const point = this.pointAt(event);
    const scale = this.view().scale;
    this.press = {
      x: event.offsetX, y: event.offsetY, lastX: event.offsetX, lastY: event.offsetY,
      point, hit: point ? this.marks.nearest(point, HIT_PX / scale) : -1, mode: "press",
    };
  }

  onMove(event) {
    const press = this.press;
    if (!press) {
      const point = this.pointAt(event);
      this.hover(point ? this.marks.nearest(point, HIT_PX / this.view().scale) : -1);
      return;
    }
    if (press.mode === "press" &&
        Math.hypot(event.offsetX - press.x, event.offsetY - press.y) > DRAG_PX) {
      press.mode = press.hit >= 0 ? "move" : "pan";
      if (press.mode === "move") this.marks.startMove(press.hit);
    }
    if (press.mode === "move") {
      const point = this.pointAt(event, Infinity);
      if (point) this.marks.move(press.hit, point);
      this.redraw();
    } else if (press.mode === "pan") {
      this.pan(event.offsetX - press.lastX, event.offsetY - press.lastY);
    }
    press.lastX = event.offsetX;
    press.lastY = event.offsetY;
  }

  onUp(event) {
    const press = this.press;
    this.press = null;
    if (!press || event.button !== 0) return;
    if (press.mode === "press" && press.point) {
      this.marks.add(press.point, MIN_GAP_PX / this.view().scale);
      this.edited();
    } else if (press.mode === "move") {
      this.edited();
    }
  }

  onContextMenu(event) {
    event.preventDefault();
    const point = this.pointAt(event);
    if (point) this.removeMark(this.marks.nearest(point, HIT_PX / this.view().scale));
  }

  onWheel(event) {
    event.preventDefault();
    const unit = event.deltaMode === 1 ? 30 : event.deltaMode === 2 ? 300 : 1;
    this.zoomBy(2 ** (-event.deltaY * unit / 300), [event.offsetX, event.offsetY]);
  }

  onKey(event) {
    if (!this.frame || event.target instanceof HTMLInputElement) return;
    const ctrl = event.ctrlKey || event.metaKey;
    const key = event.key;
    let done = true;
    if (ctrl && (key === "z" || key === "Z")) {
      if (event.shiftKey) this.redo();
      else this.undo();
    } else if (ctrl && (key === "y" || key === "Y")) {
      this.redo();
    } else if (ctrl && (key === "s" || key === "S")) {
      this.save(this.marks.body());
    } else if (ctrl || event.altKey) {
      done = false;
    } else if (key === "Delete" || key === "Backspace") {
      this.removeMark(this.hovered >= 0 ? this.hovered
        : this.marks.selected >= 0 ? this.marks.selected : this.marks.size - 1);
    } else if (key === "+" || key === "=") {
      this.zoomBy(1.5);
    } else if (key === "-" || key === "_") {
      this.zoomBy(1 / 1.5);
    } else if (key === "0") {
      this.fit();
    } else if (key === "d" || key === "D") {
      if (!this.densityBox.disabled) this.densityBox.checked = !this.densityBox.checked;
      this.redraw();
    } else if (key.startsWith("Arrow") && event.target === this.canvas) {
      const step = { ArrowLeft: [1, 0], ArrowRight: [-1, 0], ArrowUp: [0, 1],
                     ArrowDown: [0, -1] }[key];
      this.pan(step[0] * PAN_STEP_PX, step[1] * PAN_STEP_PX);
    } else {
      done = false;
    }
    if (done) event.preventDefault();
  }

  // -- drawing ----------------------------------------------------------------------------

  update() {
    const n = this.marks.size;
    const model = formatCount(Number(this.frame?.model_count));
    this.countOut.textContent = `${n} marked · model counted ${model}`;
    this.countOut.dataset.value = String(n);
    this.undoButton.disabled = !this.marks.undoStack.length;
    this.redoButton.disabled = !this.marks.redoStack.length;
    this.emptyButton.disabled = n > 0; // "no people" is a frame without marks
    this.canvas.dataset.marks = String(n);
  }

  redraw() {
    if (!this.dialog.open || !this.marks) return;
    const ctx = clearOverlay(this.canvas);
    const view = this.view();
    const { width, height } = this.frame || { width: 0, height: 0 };
    // For tests and tools: where the frame is drawn (CSS px of the canvas).
    this.canvas.dataset.view = JSON.stringify({ x: view.x, y: view.y, scale: view.scale });
    this.canvas.dataset.zoom = String(this.zoom.zoom);
    if (this.image) {
      // Pixels stay pixels when zoomed far in: a far head is a few of them.
      ctx.imageSmoothingEnabled = view.scale < 3;
      ctx.drawImage(this.image, view.x, view.y, width * view.scale, height * view.scale);
      if (this.density && this.densityBox.checked) {  // faint already: alpha ~ density
        ctx.drawImage(this.density, view.x, view.y, width * view.scale, height * view.scale);
      }
    }
    this.marks.points.forEach((p, i) => {
      const [x, y] = toCss(view, p);
      const active = i === this.hovered || i === this.marks.selected;
      ctx.beginPath();
      ctx.arc(x, y, active ? MARK_RADIUS_PX + 2 : MARK_RADIUS_PX, 0, 2 * Math.PI);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.8)";
      ctx.stroke();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = active ? "#ffb347" : "#39ff88";
      ctx.stroke();
      ctx.beginPath();
      ctx.arc(x, y, 1.2, 0, 2 * Math.PI);
      ctx.fillStyle = ctx.strokeStyle;
      ctx.fill();
    });
  }
}

let dialog = null;
function markDialog() {
  if (!dialog) dialog = new MarkDialog();
  return dialog;
}

// -------------------------------------------------------------------- a card's panel

class CalibrationPanel extends FrameEditor {
  constructor(card) {
    super(card, "calibration-error");
    this.frames = [];
    this.status = null;
    this.pollTimer = null;

    this.toggle = addCardButton(card, { cls: "calibrate-toggle", testid: "calibrate-toggle",
                                        text: "Calibrate",
                                        label: `Calibrate the counting model on ${card.name}` });
    this.toggle.setAttribute("aria-pressed", "false");
    this.toggle.addEventListener("click", () => (this.panel.hidden ? this.open() : this.close()));

    // What the card always shows of a calibration in force, with its one undo.
    this.summary = el("div", { class: "calibration-summary", testid: "calibration-summary",
                               hidden: "" });
    this.summaryText = el("span", { testid: "calibration-text" });
    this.revertButton = el("button", { type: "button", testid: "calibration-revert",
                                       "aria-label": `Revert ${card.name} to the generic model` },
                           "Revert");
    this.revertConfirm = el("span", { class: "confirm", testid: "calibration-revert-confirm",
                                      role: "alertdialog", hidden: "" });
    const revertYes = el("button", { type: "button", class: "danger",
                                     testid: "calibration-revert-yes" }, "Revert");
    const revertNo = el("button", { type: "button", testid: "calibration-revert-no" }, "Keep");
    this.revertConfirm.append(el("span", {}, "Count with the generic model again? The marked " +
                                 "frames are kept."), revertYes, revertNo);
    this.summary.append(this.summaryText, this.revertButton, this.revertConfirm);
    this.revertButton.addEventListener("click", () => {
      this.revertConfirm.hidden = false;
      revertNo.focus();
    });
    revertNo.addEventListener("click", () => {
      this.revertConfirm.hidden = true;
    });
    revertYes.addEventListener("click", () => this.revert());

    this.panel = el("section", { class: "calibration-panel", testid: "calibration-panel",
                                 hidden: "", "aria-label": `Calibration of ${card.name}` });
    const help = el("p", { class: "zone-help" },
                    "Capture frames of this camera, mark every head on each (or type its " +
                    "count), then calibrate: from 5 marked frames the server fits the model " +
                    "to this camera, and keeps it only if it counts the marked frames it " +
                    "held back better than the generic model.");
    const capture = el("div", { class: "zone-controls" });
    this.recent = el("select", { testid: "calibration-recent" });
    for (let k = 0; k < RECENT; k++) {
      this.recent.append(el("option", { value: String(k) },
                            k === 0 ? "newest frame" : `${k} frame${k > 1 ? "s" : ""} earlier`));
    }
    const recentLabel = el("label", { class: "field-inline" });
    recentLabel.append(el("span", {}, "Take the "), this.recent);
    this.captureButton = el("button", { type: "button", testid: "calibration-capture" },
                            "Capture frame");
    capture.append(recentLabel, this.captureButton);
    this.emptyNote = el("p", { class: "muted", testid: "calibration-empty" },
                        "No frames captured yet.");
    this.list = el("ol", { class: "calibration-frames", testid: "calibration-frames" });
    this.list.setAttribute("aria-label", "Captured frames");

    const run = el("div", { class: "zone-controls" });
    this.budget = el("input", { type: "number", min: "10", max: "300", step: "1",
                                inputmode: "numeric", testid: "calibration-budget",
                                placeholder: "default" });
    const budgetLabel = el("label", { class: "field-inline" });
    budgetLabel.append(el("span", {}, "training time (s) "), this.budget);
    this.runButton = el("button", { type: "button", class: "primary",
                                    testid: "calibration-run" }, "Start calibration");
    run.append(this.runButton, budgetLabel);
    this.hint = el("p", { class: "muted", testid: "calibration-hint" });
    this.progress = el("progress", { testid: "calibration-progress", max: "1", value: "0",
                                     hidden: "" });
    this.progress.setAttribute("aria-label", "Calibration progress");
    this.message = el("p", { class: "muted", testid: "calibration-message",
                             "aria-live": "polite" });
    this.result = el("p", { class: "calibration-result", testid: "calibration-result",
                            "aria-live": "polite", hidden: "" });
    this.panel.append(help, capture, this.emptyNote, this.list, run, this.hint, this.progress,
                      this.message, this.result, this.error);
    card.el.querySelector(".card-stats").after(this.summary, this.panel);

    this.captureButton.addEventListener("click", () => this.capture());
    this.runButton.addEventListener("click", () => this.run());
    this.renderList();
  }

  // The stream JSON of each /api/streams poll: its calibration in force, if any.
  onStream(stream) {
    if (stream && "calibration" in stream) this.showModel(stream.calibration);
  }

  showModel(model) {
    const on = Boolean(model);
    this.summary.hidden = !on;
    this.card.el.dataset.calibrated = on ? "1" : "";
    if (!on) {
      this.revertConfirm.hidden = true;
      return;
    }
    this.summaryText.textContent =
      `Calibrated on ${model.frames} frames: MAE ${mae(model.mae_before)} → ` +
      `${mae(model.mae_after)}`;
    this.summaryText.title = model.calibrated_at
      ? `Calibrated ${when(model.calibrated_at)}; the MAE is on marked frames held back`
      : "";
  }

  async open() {
    this.panel.hidden = false;
    this.toggle.setAttribute("aria-pressed", "true");
    this.showError("");
    await Promise.all([this.loadFrames(), this.loadStatus()]);
  }

  close() {
    this.panel.hidden = true;
    this.toggle.setAttribute("aria-pressed", "false");
  }

  focusList() {
    if (!this.panel.hidden) this.captureButton.focus();
  }

  async loadFrames() {
    try {
      const data = await api(calibrationPath(this.card.id, "frames"));
      this.frames = data.frames || [];
      this.renderList();
    } catch (err) {
      this.showError(err.message);
    }
  }

  async loadStatus() {
    try {
      this.showStatus(await api(calibrationPath(this.card.id)));
    } catch (err) {
      this.showError(err.message);
    }
  }

  async capture() {
    this.captureButton.disabled = true;
    this.showError("");
    const k = Number(this.recent.value);
    try {
      const data = await api(calibrationPath(this.card.id, "frames"),
                             { method: "POST", json: k ? { recent: k } : {} });
      const frame = data.frame || data;
      this.frames.push(frame);
      this.renderList();
      markDialog().open(this, frame);
    } catch (err) {
      this.showError(err.message);
    } finally {
      this.captureButton.disabled = false;
    }
  }

  onSaved(frame) {
    const i = this.frames.findIndex((f) => f.id === frame.id);
    if (i >= 0) this.frames[i] = frame;
    else this.frames.push(frame);
    this.renderList();
  }

  async deleteFrame(frame) {
    try {
      await api(framePath(this.card.id, frame.id), { method: "DELETE" });
      this.frames = this.frames.filter((f) => f.id !== frame.id);
      this.renderList();
      this.captureButton.focus();
    } catch (err) {
      this.showError(err.message);
    }
  }

  renderList() {
    this.list.replaceChildren();
    for (const frame of this.frames) {
      const date = when(frame.captured_at);
      const li = el("li", { class: "calibration-frame", testid: "calibration-frame" });
      li.dataset.frameId = frame.id;
      li.dataset.marked = frame.marks ? "1" : "0";
      const thumb = el("img", { class: "frame-thumb", loading: "lazy", alt: "",
                                src: framePath(this.card.id, frame.id,
                                               `image?width=${THUMB_PX}`) });
      const text = el("span", { class: "frame-text" });
      const counts = el("span", { class: "frame-counts", testid: "frame-counts" },
                        `${markedText(frame)} · model ${formatCount(Number(frame.model_count))}`);
      text.append(el("span", { class: "frame-when" }, date), counts);
      const mark = el("button", { type: "button", testid: "frame-mark",
                                  "aria-label": `Mark heads on the frame of ${date}` },
                      frame.marks ? "Edit" : "Mark");
      mark.addEventListener("click", () => markDialog().open(this, frame));
      // Deleting asks once more in the button itself: marks are minutes of work.
      const del = el("button", { type: "button", testid: "frame-delete",
                                 "aria-label": `Delete the frame of ${date}` }, "Delete");
      del.addEventListener("click", () => {
        if (del.dataset.armed) {
          this.deleteFrame(frame);
          return;
        }
        del.dataset.armed = "1";
        del.textContent = "Delete?";
        del.setAttribute("aria-label", `Really delete the frame of ${date}?`);
      });
      del.addEventListener("blur", () => {
        delete del.dataset.armed;
        del.textContent = "Delete";
        del.setAttribute("aria-label", `Delete the frame of ${date}`);
      });
      li.append(thumb, text, mark, del);
      this.list.append(li);
    }
    this.emptyNote.hidden = this.frames.length > 0;
    this.list.dataset.frames = String(this.frames.length);
    this.renderRun();
  }

  marked() {
    return this.frames.filter((f) => f.marks).length;
  }

  renderRun() {
    const marked = this.marked();
    const running = this.status?.state === "running";
    this.runButton.disabled = running || marked < MIN_FRAMES;
    this.list.dataset.marked = String(marked);
    this.hint.textContent = marked < MIN_FRAMES
      ? `${marked} of the ${MIN_FRAMES} marked frames calibration needs.`
      : `${marked} marked frames. More, from busy and quiet moments, calibrate better.`;
  }

  async run() {
    this.showError("");
    const body = {};
    const budget = this.budget.value.trim();
    if (budget !== "") body.time_budget = Number(budget);
    this.runButton.disabled = true;
    try {
      this.showStatus(await api(calibrationPath(this.card.id), { method: "POST", json: body }));
    } catch (err) {
      this.showError(err.message);
      this.renderRun();
    }
  }

  // A calibration status (GET .../calibration): progress while it runs, then its verdict;
  // polled once a second while running.
  showStatus(status) {
    this.status = status;
    const state = status?.state || "idle";
    this.panel.dataset.state = state;
    const running = state === "running";
    this.progress.hidden = !running;
    this.progress.value = Number(status?.progress) || 0;
    this.message.textContent = running
      ? `Calibrating: ${status.message || "working"} (${Math.round(this.progress.value * 100)} %)`
      : "";
    this.result.hidden = true;
    const r = status?.result;
    if (state === "done" || state === "refused") {
      const numbers = r
        ? `${r.frames} marked frames, ${r.held_out} held back: their MAE ` +
          `${mae(r.mae_before)} with the generic model, ${mae(r.mae_after)} calibrated` +
          (Number.isFinite(Number(r.seconds)) ? ` (${Math.round(r.seconds)} s)` : "")
        : "";
      this.result.textContent = state === "done" && (!r || r.kept)
        ? `Kept: ${numbers}. ${this.card.name} now counts with its own model.`
        : `Not kept: ${status.message || `${this.card.name} keeps its model`}` +
          (numbers ? `. ${numbers}.` : ".");
      this.result.dataset.kept = state === "done" && (!r || r.kept) ? "1" : "0";
      this.result.hidden = false;
    } else if (state === "failed") {
      this.showError(`Calibration failed: ${status.message || "unknown error"}`);
    }
    if ("model" in (status || {})) this.showModel(status.model);
    this.renderRun();
    clearTimeout(this.pollTimer);
    this.pollTimer = running ? setTimeout(() => this.loadStatus(), POLL_MS) : null;
  }

  async revert() {
    this.revertConfirm.hidden = true;
    try {
      const status = await api(calibrationPath(this.card.id), { method: "DELETE" });
      this.showModel(null);
      if (status) this.showStatus(status);
      this.message.textContent = `${this.card.name} counts with the generic model again.`;
    } catch (err) {
      if (!this.panel.hidden) this.showError(err.message);
      else this.summaryText.textContent = `Could not revert: ${err.message}`;
    }
  }

  dispose() {
    super.dispose();
    clearTimeout(this.pollTimer);
    if (dialog?.panel === this && dialog.dialog.open) dialog.close();
  }
}

const panels = new Map(); // Card -> CalibrationPanel

eachCard((card) => {
  // A browser camera is a stream only while its tab publishes: nothing to calibrate.
  if (card.local || panels.has(card)) return;
  const panel = new CalibrationPanel(card);
  panels.set(card, panel);
  panel.onStream(card.stream);
}, (card) => {
  panels.get(card)?.dispose();
  panels.delete(card);
});

document.addEventListener("crowdcount:card-updated", (event) => {
  panels.get(event.detail.card)?.onStream(event.detail.card.stream);
});
