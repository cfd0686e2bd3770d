// History of a stream over a chosen range (last hour, day, week, custom): the mean count per
// point with its min–max band, each zone's mean beside it, a CSV of exactly what is shown,
// and a time axis on the server's clock. Aggregated by the server (GET /counts?step=, read
// from its per-second and per-minute rollups), so a week is ~1000 points, not millions.
// A feature module: a "History" button on every card opens the one history panel.

import { api, streamPath } from "./api.js";
import { cssColour, drawValueGrid, prepareChart, strokeSeries } from "./chart.js";
import { el } from "./dom.js";
import { formatCount, niceCeil } from "./format.js";
import { RangePanel } from "./range.js";

const ZONE_COLOURS = ["#4fc3f7", "#ba68c8", "#81c784", "#f06292", "#fff176", "#90a4ae"];

function stepLabel(step) {
  if (step < 60) return `${step} s`;
  if (step < 3600) return `${step / 60} min`;
  return `${step / 3600} h`;
}

function timeLabel(t, span) {
  const d = new Date(t * 1000);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  if (span <= 36 * 3600) return hm;
  return `${d.toLocaleDateString([], { weekday: "short", day: "numeric" })} ${hm}`;
}

// Round tick spacing for an axis ``span`` seconds wide (about 6 ticks).
function tickStep(span) {
  for (const s of [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800]) {
    if (span / s <= 7) return s;
  }
  return 604800;
}

class HistoryView extends RangePanel {
  constructor() {
    super("history", "History");
    this.range = null;
    this.legend = el("ul", { class: "legend", testid: "history-legend", role: "list" });
    this.canvas = el("canvas", { class: "history-chart", testid: "history-chart", height: "260",
                                 role: "img", "data-points": "0" });
    this.status = el("p", { class: "muted", testid: "history-status", "aria-live": "polite" });
    this.csv = el("a", { class: "csv-link", testid: "history-csv", download: "" },
                  "Download CSV of this range");
    this.error.before(this.legend, this.canvas, this.status, this.csv);
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  heading(card) {
    return `History of ${card.name}`;
  }

  async load({ since, until, step }) {
    if (!this.card) return;
    const id = this.card.id;
    const query = `since=${since.toFixed(3)}&until=${until.toFixed(3)}&step=${step}`;
    this.csv.href = streamPath(id, `counts.csv?${query}`);
    this.error.hidden = true;
    this.section.setAttribute("aria-busy", "true");
    try {
      const data = await api(streamPath(id, `counts?${query}&zones=1&limit=100000`));
      if (!this.card || this.card.id !== id) return;
      this.data = { since, until, step, points: data.counts || [] };
      const zones = new Set();
      for (const p of this.data.points) for (const z of Object.keys(p.zones || {})) zones.add(z);
      this.zones = [...zones].sort();
      const n = this.data.points.length;
      this.status.textContent = n
        ? `${n} points, one per ${stepLabel(step)}, ${timeLabel(since, until - since)} – ` +
          `${timeLabel(until, until - since)} (server time); mean ` +
          `${formatCount(this.data.points.reduce((a, p) => a + p.count * p.n, 0) /
                         Math.max(1, this.data.points.reduce((a, p) => a + p.n, 0)))}, ` +
          `peak ${formatCount(Math.max(...this.data.points.map((p) => p.max)))}`
        : "No counts in this range.";
      this.renderLegend();
      this.draw();
    } catch (err) {
      this.error.textContent = `Could not load the history: ${err.message}`;
      this.error.hidden = false;
    } finally {
      this.section.removeAttribute("aria-busy");
    }
  }

  renderLegend() {
    this.legend.replaceChildren();
    const item = (name, colour, testid) => {
      const li = el("li", { testid });
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour;
      li.append(swatch, document.createTextNode(name));
      this.legend.append(li);
    };
    item("Total (mean, min–max band)", "var(--accent)", "legend-total");
    this.zones.forEach((z, i) => item(`Zone ${z}`, ZONE_COLOURS[i % ZONE_COLOURS.length],
                                      "legend-zone"));
  }

  draw() {
    const canvas = this.canvas;
    if (!this.data || this.section.hidden) return;
    const chart = prepareChart(canvas, { left: 40, right: 8, top: 8, bottom: 22 });
    if (!chart) return;
    const { ctx, height: cssHeight, left, top, plotW, plotH } = chart;
    const axis = cssColour(canvas, "--chart-axis", "#8a93a6");
    const gridColour = cssColour(canvas, "--chart-grid", "rgba(128,128,128,.25)");
    const accent = cssColour(document.documentElement, "--accent", "#ffb347");

    const { since, until, step, points } = this.data;
    canvas.dataset.points = String(points.length);
    canvas.dataset.series = String(1 + this.zones.length);
    const span = until - since;
    let max = 0;
    for (const p of points) max = Math.max(max, p.max ?? p.count);
    const yMax = niceCeil(max * 1.05);
    const x = (t) => left + ((t - since) / span) * plotW;
    const y = (v) => top + plotH - (v / yMax) * plotH;

    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = axis;
    ctx.strokeStyle = gridColour;
    ctx.lineWidth = 1;
    drawValueGrid(ctx, { left, width: plotW, yMax, y, lines: 4 });
    ctx.textAlign = "center";
    ctx.textBaseline = "alphabetic";
    const tick = tickStep(span);
    const offset = new Date(since * 1000).getTimezoneOffset() * 60; // ticks on local hours
    for (let t = Math.ceil((since - offset) / tick) * tick + offset; t <= until; t += tick) {
      const xx = Math.round(x(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(xx, top);
      ctx.lineTo(xx, top + plotH);
      ctx.stroke();
      ctx.fillText(timeLabel(t, span), xx, cssHeight - 6);
    }
    if (!points.length) {
      ctx.fillText("No counts in this range", left + plotW / 2, top + plotH / 2);
      return;
    }
    // A gap of more than two steps is drawn as a gap (the camera was off), not a slope.
    const runs = [];
    let run = [];
    for (const p of points) {
      if (run.length && p.t - run[run.length - 1].t > 2 * step) {
        runs.push(run);
        run = [];
      }
      run.push(p);
    }
    runs.push(run);
    const mid = (p) => p.t + step / 2;
    ctx.fillStyle = accent;
    ctx.globalAlpha = 0.22;
    for (const r of runs) {
      ctx.beginPath();
      r.forEach((p, i) => (i ? ctx.lineTo(x(mid(p)), y(p.max)) : ctx.moveTo(x(mid(p)), y(p.max))));
      for (let i = r.length - 1; i >= 0; i--) ctx.lineTo(x(mid(r[i])), y(r[i].min));
      ctx.closePath();
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    const line = (value, colour, width) => {
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.lineJoin = "round";
      for (const r of runs) strokeSeries(ctx, r, (p) => x(mid(p)), y, value, true);
    };
    this.zones.forEach((z, i) => line((p) => p.zones?.[z], ZONE_COLOURS[i % ZONE_COLOURS.length],
                                      1.5));
    line((p) => p.count, accent, 2);
  }
}

HistoryView.install({ cls: "history-toggle", testid: "history-toggle", text: "History",
                      label: (card) => `History of ${card.name}` });
