// Zones and alerts on the dashboard: draw a polygon zone over a card's live video, name it,
// save it (PUT /api/streams/{id}/zones), show each zone's live count from the feed, and list
// alerts (GET /api/alerts plus live "alert" feed items). A feature module: it follows the
// cards through the crowdcount:card-added / card-removed / feed events (see app.js).

import { api, streamPath } from "./api.js";
import { cards, eachCard } from "./card.js";
import { el } from "./dom.js";
import { clearOverlay, FrameEditor, toCss } from "./editor.js";
import { formatCount } from "./format.js";

const MIN_POINT_GAP_PX = 4; // a click this close to the previous point adds nothing
const ALERTS_SHOWN = 20;

function zonesPath(id) {
  return streamPath(id, "zones");
}

// ------------------------------------------------------------------------------ one card

class ZoneEditor extends FrameEditor {
  constructor(card) {
    super(card, "zone-error");
    this.zones = []; // [{name, points: [[x, y], ...]}] in camera pixels, as the server has them
    this.counts = {}; // zone name -> latest count from the feed
    this.floor = {}; // zone name -> {area_m2, per_m2, level} on a floor-calibrated stream
    this.draft = null; // points of the polygon being drawn, or null when not drawing
    this.closed = false; // the draft is finished and waits for its name

    this.toggle = el("button", { type: "button", class: "zones-toggle", testid: "zones-toggle",
                                 "aria-pressed": "false" }, "Zones");
    this.toggle.setAttribute("aria-label", `Draw zones on ${card.name}`);
    card.el.querySelector(".card-head .remove").before(this.toggle);

    this.canvas = el("canvas", { class: "overlay", testid: "zone-overlay", hidden: "" });
    this.canvas.setAttribute("aria-label", "Click to add zone points; double-click to finish");
    card.media.append(this.canvas);

    this.panel = el("div", { class: "zones", testid: "zones-panel" });
    this.help = el("p", { class: "zone-help", testid: "zone-help", hidden: "" });
    this.controls = el("div", { class: "zone-controls", hidden: "" });
    this.finishButton = el("button", { type: "button", testid: "zone-finish" }, "Finish zone");
    this.undoButton = el("button", { type: "button", testid: "zone-undo" }, "Undo point");
    this.cancelButton = el("button", { type: "button", testid: "zone-cancel" }, "Cancel");
    this.controls.append(this.finishButton, this.undoButton, this.cancelButton);
    this.nameForm = el("form", { class: "zone-name-form", testid: "zone-name-form", hidden: "" });
    const label = el("label", { class: "field" });
    this.nameInput = el("input", { name: "zone", testid: "zone-name", maxlength: "64",
                                   autocomplete: "off", placeholder: "door" });
    label.append(el("span", {}, "Zone name"), this.nameInput);
    this.saveButton = el("button", { type: "submit", testid: "zone-save" }, "Save zone");
    this.nameForm.append(label, this.saveButton);
    this.list = el("ul", { class: "zone-list", testid: "zone-list", role: "list" });
    this.panel.append(this.help, this.controls, this.nameForm, this.error, this.list);
    card.el.querySelector(".card-stats").after(this.panel);

    this.toggle.addEventListener("click", () => (this.draft ? this.stop() : this.start()));
    this.finishButton.addEventListener("click", () => this.finish());
    this.undoButton.addEventListener("click", () => {
      if (this.draft && !this.closed) this.draft.pop();
      this.redraw();
    });
    this.cancelButton.addEventListener("click", () => this.stop());
    this.canvas.addEventListener("click", (event) => this.addPoint(event));
    this.canvas.addEventListener("dblclick", (event) => {
      event.preventDefault();
      this.finish();
    });
    this.nameForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    this.observe(card.media);
    // A browser camera is no stream until its offer is answered (a GET would be a 404,
    // which the console reports): its zones are loaded with its first feed item instead.
    this.loaded = false;
    if (!card.local) this.load();
  }

  async load() {
    this.loaded = true;
    try {
      const data = await api(zonesPath(this.card.id));
      this.zones = data.zones || [];
      this.renderList();
    } catch (err) {
      if (err.status !== 404) console.warn(`zones of ${this.card.id}:`, err.message);
    }
  }

  // -- drawing ------------------------------------------------------------------------------

  start() {
    if (!this.card.videoRect()) {
      this.showError("Wait for the video to play before drawing a zone.");
      return;
    }
    this.draft = [];
    this.closed = false;
    this.showError("");
    this.canvas.hidden = false;
    this.controls.hidden = false;
    this.nameForm.hidden = true;
    this.toggle.setAttribute("aria-pressed", "true");
    this.card.el.dataset.drawing = "1";
    this.redraw();
  }

  stop() {
    this.draft = null;
    this.closed = false;
    this.canvas.hidden = true;
    this.controls.hidden = true;
    this.nameForm.hidden = true;
    this.help.hidden = true;
    this.toggle.setAttribute("aria-pressed", "false");
    delete this.card.el.dataset.drawing;
  }

  addPoint(event) {
    if (!this.draft || this.closed) return;
    const point = this.card.framePoint(event, 2);
    if (!point) return;
    const last = this.draft[this.draft.length - 1];
    const rect = this.card.videoRect();
    const gap = Math.hypot((point[0] - (last?.[0] ?? 0)) / rect.sx,
                           (point[1] - (last?.[1] ?? 0)) / rect.sy) * rect.scale;
    if (last && gap < MIN_POINT_GAP_PX) {
      return; // the second click of a double-click, or a shaky one
    }
    this.draft.push(point);
    this.redraw();
  }

  finish() {
    if (!this.draft || this.closed) return;
    if (this.draft.length < 3) {
      this.showError("A zone needs at least 3 points: click on the video to add them.");
      return;
    }
    this.closed = true;
    this.showError("");
    this.controls.hidden = true;
    this.nameForm.hidden = false;
    this.nameInput.value = "";
    this.nameInput.focus();
    this.redraw();
  }

  async save() {
    const name = this.nameInput.value.trim();
    if (!name) {
      this.showError("Give the zone a name.");
      return;
    }
    const zones = [...this.zones, { name, points: this.draft }];
    this.saveButton.disabled = true;
    try {
      const data = await api(zonesPath(this.card.id), { method: "PUT", json: { zones } });
      this.zones = data.zones || [];
      this.stop();
      this.showError("");
      this.renderList();
    } catch (err) {
      this.showError(err.message);
    } finally {
      this.saveButton.disabled = false;
    }
  }

  async remove(name) {
    const zones = this.zones.filter((z) => z.name !== name);
    try {
      const data = await api(zonesPath(this.card.id), { method: "PUT", json: { zones } });
      this.zones = data.zones || [];
      delete this.counts[name];
      this.renderList();
    } catch (err) {
      this.showError(err.message);
    }
  }

  redraw() {
    if (this.canvas.hidden) return;
    const ctx = clearOverlay(this.canvas);
    const rect = this.card.videoRect();
    const points = this.draft || [];
    this.help.hidden = false;
    this.help.textContent = this.closed
      ? "Name the zone and save it."
      : `Click on the video to add points (${points.length} so far); double-click or ` +
        "“Finish zone” to close the polygon.";
    this.canvas.dataset.points = String(points.length);
    if (!rect || !points.length) return;
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#ffb347";
    ctx.fillStyle = "rgba(255, 179, 71, 0.25)";
    ctx.beginPath();
    points.forEach((p, i) => {
      const [x, y] = toCss(rect, p);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    if (this.closed) {
      ctx.closePath();
      ctx.fill();
    }
    ctx.stroke();
    ctx.fillStyle = "#ffb347";
    for (const p of points) {
      const [x, y] = toCss(rect, p);
      ctx.beginPath();
      ctx.arc(x, y, 4, 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  // -- zone list and counts -----------------------------------------------------------------

  renderList() {
    this.list.replaceChildren();
    for (const zone of this.zones) {
      const item = el("li", { class: "zone-item", testid: "zone-item" });
      item.dataset.zone = zone.name;
      const name = el("span", { class: "zone-name" }, zone.name);
      const count = el("output", { class: "zone-count", testid: "zone-count" });
      const density = el("output", { class: "zone-density", testid: "zone-density" });
      const del = el("button", { type: "button", class: "zone-delete", testid: "zone-delete" },
                     "×");
      del.setAttribute("aria-label", `Delete zone ${zone.name}`);
      del.addEventListener("click", () => this.remove(zone.name));
      item.append(name, count, density, del);
      this.list.append(item);
    }
    this.showCounts();
  }

  onCounts(zones, floor = {}) {
    this.counts = zones;
    this.floor = floor;
    const known = this.zones.map((z) => z.name).sort().join("\n");
    if (Object.keys(zones).sort().join("\n") !== known && !this.reloading) {
      // Someone else changed this stream's zones: fetch them (at most once a second).
      this.reloading = true;
      setTimeout(() => (this.reloading = false), 1000);
      this.load();
    }
    this.showCounts();
  }

  showCounts() {
    for (const item of this.list.children) {
      const value = Number(this.counts[item.dataset.zone]);
      const out = item.querySelector('[data-testid="zone-count"]');
      out.textContent = formatCount(value);
      if (Number.isFinite(value)) out.dataset.value = String(value);
      // People per m2 of floor and the level of service (A-F), when the floor is calibrated.
      const d = this.floor[item.dataset.zone];
      const dens = item.querySelector('[data-testid="zone-density"]');
      dens.textContent = d ? `${Number(d.per_m2).toFixed(2)}/m² · ${d.level}` : "";
      dens.title = d ? `${Number(d.area_m2).toFixed(1)} m² of floor; level of service ` +
        `${d.level} (A free flow … F jammed)` : "";
      if (d) {
        dens.dataset.value = String(d.per_m2);
        dens.dataset.level = d.level;
      } else {
        delete dens.dataset.value;
        delete dens.dataset.level;
      }
    }
  }

}

const editors = new Map(); // Card -> ZoneEditor

function attach(card) {
  if (!editors.has(card)) editors.set(card, new ZoneEditor(card));
}

eachCard(attach, (card) => {
  editors.get(card)?.dispose();
  editors.delete(card);
});

function editorOf(streamId) {
  const card = cards.get(streamId);
  return card ? editors.get(card) : undefined;
}

// --------------------------------------------------------------------------------- alerts

const alertList = document.querySelector('[data-testid="alert-list"]');
const alertsEmpty = document.querySelector('[data-testid="alerts-empty"]');
const alerts = new Map(); // "stream|rule|raised_at" -> alert

function alertKey(a) {
  return `${a.stream}|${a.rule}|${Number(a.raised_at).toFixed(3)}`;
}

function renderAlerts() {
  const items = [...alerts.values()].sort((a, b) => b.raised_at - a.raised_at);
  alertList.replaceChildren();
  for (const a of items.slice(0, ALERTS_SHOWN)) {
    const active = a.cleared_at === null || a.cleared_at === undefined;
    const li = el("li", { class: "alert-item", testid: "alert-item" });
    li.dataset.active = active ? "1" : "0";
    li.dataset.rule = a.rule;
    const where = a.zone ? `${a.stream} · ${a.zone}` : a.stream;
    const when = new Date(a.raised_at * 1000).toLocaleTimeString();
    const state = active ? "active" : `cleared ${new Date(a.cleared_at * 1000).toLocaleTimeString()}`;
    li.append(
      el("strong", {}, a.rule),
      el("span", { class: "alert-where" }, where),
      el("span", { class: "alert-peak" }, `peak ${formatCount(Number(a.peak))}`),
      el("span", { class: "alert-when" }, `${when} · ${state}`),
    );
    alertList.append(li);
  }
  alertsEmpty.hidden = alerts.size > 0;
  const activeStreams = new Set(items.filter((a) => a.cleared_at == null).map((a) => a.stream));
  for (const card of cards.values()) {
    if (activeStreams.has(card.id)) card.el.dataset.alert = "1";
    else delete card.el.dataset.alert;
  }
}

async function loadAlerts() {
  try {
    const data = await api(`/api/alerts?limit=${ALERTS_SHOWN}`);
    for (const a of data.alerts || []) alerts.set(alertKey(a), a);
    renderAlerts();
  } catch (err) {
    console.warn("alerts:", err.message);
  }
}

function onAlertEvent(item) {
  const key = alertKey(item);
  const known = alerts.get(key) || {};
  alerts.set(key, {
    ...known,
    stream: item.stream,
    zone: item.zone,
    rule: item.rule,
    raised_at: item.raised_at,
    cleared_at: item.event === "cleared" ? item.t : null,
    peak: Math.max(Number(known.peak ?? -Infinity), Number(item.peak)),
  });
  renderAlerts();
}

// ---------------------------------------------------------------------------- live feed

document.addEventListener("crowdcount:feed", (event) => {
  const item = event.detail;
  if (item.type === "alert") {
    onAlertEvent(item);
    return;
  }
  const editor = editorOf(item.stream ?? item.stream_id);
  if (!editor) return;
  if (!editor.loaded) editor.load();
  else if (item.zones || editor.zones.length) editor.onCounts(item.zones || {}, item.floor || {});
});

loadAlerts();
