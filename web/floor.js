// Floor calibration on a card: click four or more points on the floor in the live video,
// type where each one is on the floor in metres (or tick "a rectangle" and give its width
// and depth), and save (PUT /api/streams/{id}/floor). The server then draws a one-metre grid
// on the floor in the live view and maps people per square metre; this panel shows how far
// the marked points are from the fitted floor (the reprojection error) and the server's
// one-line reason when it refuses the points. Zone densities and levels appear beside the
// zone counts (zones.js) from the feed's "floor" items. A feature module, like zones.js.

import { api, streamPath } from "./api.js";
import { addCardButton, eachCard } from "./card.js";
import { el } from "./dom.js";
import { clearOverlay, FrameEditor, toCss } from "./editor.js";

const floorPath = (id) => streamPath(id, "floor");

class FloorEditor extends FrameEditor {
  constructor(card) {
    super(card, "floor-error");
    this.points = []; // [[x, y], ...] in camera pixels, like zones (the video may be smaller)
    this.size = null; // [width, height] of the camera when the points were marked
    this.current = null; // the server's calibration (GET answer) or null

    this.toggle = addCardButton(card, { cls: "floor-toggle", testid: "floor-toggle",
                                        text: "Floor",
                                        label: `Calibrate the floor of ${card.name}` });
    this.toggle.setAttribute("aria-pressed", "false");
    this.canvas = el("canvas", { class: "overlay", testid: "floor-overlay", hidden: "" });
    this.canvas.setAttribute("aria-label", "Click floor points to mark them");
    card.media.append(this.canvas);

    this.panel = el("div", { class: "floor-panel", testid: "floor-panel", hidden: "" });
    this.status = el("p", { class: "muted", testid: "floor-status", "aria-live": "polite" });
    this.help = el("p", { class: "zone-help" },
                   "Click 4 or more points on the floor, then give each its position in " +
                   "metres (x across, y along the floor), or tick “rectangle” for 4 corners " +
                   "in order around a rectangle of known size.");
    this.rows = el("ol", { class: "floor-points", testid: "floor-points" });
    this.rectBox = el("input", { type: "checkbox", testid: "floor-rect" });
    const rectLabel = el("label", { class: "field-inline" });
    rectLabel.append(this.rectBox, el("span", {}, " rectangle of"));
    this.width = el("input", { type: "number", step: "0.01", min: "0", testid: "floor-width",
                               placeholder: "width m", inputmode: "decimal" });
    this.depth = el("input", { type: "number", step: "0.01", min: "0", testid: "floor-depth",
                               placeholder: "depth m", inputmode: "decimal" });
    this.head = el("input", { type: "number", step: "0.1", min: "0", max: "5", value: "1.6",
                              testid: "floor-head", inputmode: "decimal" });
    const headLabel = el("label", { class: "field-inline" });
    headLabel.append(el("span", {}, "head height m "), this.head);
    const rect = el("div", { class: "floor-rect" });
    rect.append(rectLabel, this.width, el("span", {}, " × "), this.depth, headLabel);
    this.saveButton = el("button", { type: "button", testid: "floor-save" }, "Save floor");
    this.undoButton = el("button", { type: "button", testid: "floor-undo" }, "Undo point");
    this.removeButton = el("button", { type: "button", testid: "floor-remove" },
                           "Remove calibration");
    const buttons = el("div", { class: "zone-controls" });
    buttons.append(this.saveButton, this.undoButton, this.removeButton);
    this.panel.append(this.status, this.help, this.rows, rect, buttons, this.error);
    card.el.querySelector(".card-stats").after(this.panel);

    this.toggle.addEventListener("click", () => (this.panel.hidden ? this.open() : this.close()));
    this.canvas.addEventListener("click", (event) => this.addPoint(event));
    this.undoButton.addEventListener("click", () => {
      this.points.pop();
      this.renderRows();
    });
    this.saveButton.addEventListener("click", () => this.save());
    this.removeButton.addEventListener("click", () => this.remove());
    this.rectBox.addEventListener("change", () => this.renderRows());
    this.observe(card.media);
    if (!card.local) this.load();
  }

  async load() {
    try {
      this.show(await api(floorPath(this.card.id)));
    } catch (err) {
      if (err.status !== 404) console.warn(`floor of ${this.card.id}:`, err.message);
    }
  }

  show(data) {
    this.current = data && data.floor ? data : null;
    this.card.el.dataset.floor = this.current ? "1" : "";
    this.status.textContent = this.current
      ? `Calibrated: the marked points are ${this.current.rms_error_px.toFixed(1)} px ` +
        `(worst ${this.current.max_error_px.toFixed(1)} px) from the fitted floor; the live ` +
        "view shows a 1 m grid and people per m²."
      : "Not calibrated: maps show people per image cell.";
    this.removeButton.hidden = !this.current;
  }

  open() {
    this.panel.hidden = false;
    this.canvas.hidden = false;
    this.toggle.setAttribute("aria-pressed", "true");
    this.card.el.dataset.calibrating = "1";
    this.redraw();
  }

  close() {
    this.panel.hidden = true;
    this.canvas.hidden = true;
    this.toggle.setAttribute("aria-pressed", "false");
    delete this.card.el.dataset.calibrating;
  }

  addPoint(event) {
    const point = this.card.framePoint(event);
    if (!point) return;
    const rect = this.card.videoRect();
    // the frame the points are in (kept: a reconnecting video has none)
    this.size = [rect.frameWidth, rect.frameHeight];
    this.points.push(point);
    this.renderRows();
  }

  renderRows() {
    const old = [...this.rows.querySelectorAll("li")].map((li) =>
      [...li.querySelectorAll("input")].map((i) => i.value));
    this.rows.replaceChildren();
    this.points.forEach(([x, y], i) => {
      const li = el("li", { testid: "floor-point" });
      li.append(el("span", {}, `(${x}, ${y}) px → `));
      if (!this.rectBox.checked) {
        for (const [j, axis] of ["x", "y"].entries()) {
          const input = el("input", { type: "number", step: "0.01", inputmode: "decimal",
                                      placeholder: `${axis} m`, testid: `floor-${axis}` });
          input.value = old[i]?.[j] ?? "";
          li.append(input);
        }
      }
      this.rows.append(li);
    });
    this.canvas.dataset.points = String(this.points.length);
    this.redraw();
  }

  body() {
    const rect = this.card.videoRect();
    const size = this.size || (rect && [rect.frameWidth, rect.frameHeight]);
    const out = { image_points: this.points, frame_size: size,
                  head_height: Number(this.head.value || 0) };
    if (this.rectBox.checked) {
      out.width = Number(this.width.value);
      out.depth = Number(this.depth.value);
    } else {
      out.floor_points = [...this.rows.querySelectorAll("li")].map((li) =>
        [...li.querySelectorAll("input")].map((i) => Number(i.value)));
    }
    return out;
  }

  async save() {
    this.saveButton.disabled = true;
    try {
      const data = await api(floorPath(this.card.id), { method: "PUT", json: this.body() });
      this.points = [];
      this.renderRows();
      this.showError("");
      this.show(data);
    } catch (err) {
      this.showError(err.message);
    } finally {
      this.saveButton.disabled = false;
    }
  }

  async remove() {
    try {
      this.show(await api(floorPath(this.card.id), { method: "DELETE" }));
    } catch (err) {
      this.showError(err.message);
    }
  }

  redraw() {
    if (this.canvas.hidden) return;
    const ctx = clearOverlay(this.canvas);
    const rect = this.card.videoRect();
    if (!rect) return;
    ctx.fillStyle = "#7fdbff";
    ctx.font = "12px sans-serif";
    this.points.forEach((p, i) => {
      const [cx, cy] = toCss(rect, p);
      ctx.beginPath();
      ctx.arc(cx, cy, 5, 0, 2 * Math.PI);
      ctx.fill();
      ctx.fillText(String(i + 1), cx + 7, cy - 7);
    });
  }
}

const editors = new Map(); // Card -> FloorEditor

eachCard((card) => {
  if (!editors.has(card)) editors.set(card, new FloorEditor(card));
}, (card) => {
  editors.get(card)?.dispose();
  editors.delete(card);
});
