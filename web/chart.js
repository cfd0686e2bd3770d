// The count chart of a stream card: raw and smoothed counts over the last minutes on a
// <canvas>, drawn at most once per animation frame. Colours come from CSS custom properties
// (--chart-axis, --chart-grid, --chart-raw, --chart-line) so the stylesheet themes it.

import { ago, niceCeil } from "./format.js";

export const CHART_WINDOW_S = 5 * 60; // the chart shows the last five minutes
const CHART_MAX_POINTS = 2000;

// Size ``canvas`` to its box at the screen's pixel ratio and clear it; the context then
// draws in CSS pixels. Returns the context, the box's size and the plot area inside
// ``margin`` ({left, right, top, bottom}); null while the canvas has no size (hidden).
export function prepareChart(canvas, margin) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return null;
  const ratio = window.devicePixelRatio || 1;
  const w = Math.round(width * ratio);
  const h = Math.round(height * ratio);
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const plotW = Math.max(1, width - margin.left - margin.right);
  const plotH = Math.max(1, height - margin.top - margin.bottom);
  return { ctx, width, height, left: margin.left, top: margin.top, plotW, plotH };
}

// The value axis: ``lines`` intervals of grid from 0 to ``yMax``, each line labelled at the
// left of the plot (in the context's current fill and stroke styles).
export function drawValueGrid(ctx, { left, width, yMax, y, lines }) {
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= lines; i++) {
    const v = (yMax * i) / lines;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, yy);
    ctx.lineTo(left + width, yy);
    ctx.stroke();
    ctx.fillText(v >= 10 ? String(Math.round(v)) : String(+v.toFixed(1)), left - 4, yy);
  }
}

// A colour from the stylesheet's custom property ``name`` as ``element`` sees it (so the
// stylesheet themes the charts), or ``fallback``.
export function cssColour(element, name, fallback) {
  return getComputedStyle(element).getPropertyValue(name).trim() || fallback;
}

// Stroke one series through ``points``, in the context's current style. ``value(p)`` is its
// value at p (not finite: none); where a point has none the line joins over it, or with
// ``breakAtMissing`` stops there and starts again at the next point with one.
export function strokeSeries(ctx, points, xOf, y, value, breakAtMissing = false) {
  ctx.beginPath();
  let started = false;
  for (const p of points) {
    const v = value(p);
    if (v === undefined || v === null || !Number.isFinite(v)) {
      if (breakAtMissing) started = false;
      continue;
    }
    if (started) ctx.lineTo(xOf(p), y(v));
    else ctx.moveTo(xOf(p), y(v));
    started = true;
  }
  ctx.stroke();
}

export class CountChart {
  constructor(canvas, windowSeconds = CHART_WINDOW_S) {
    this.canvas = canvas;
    this.window = windowSeconds;
    this.points = []; // {t (s), count, smoothed}, ascending t
    this.pending = false;
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(canvas);
  }

  setHistory(points) {
    const live = this.points;
    const last = points.length ? points[points.length - 1].t : -Infinity;
    this.points = points.concat(live.filter((p) => p.t > last));
    this.trim();
    this.schedule();
  }

  add(point) {
    const pts = this.points;
    if (pts.length && point.t < pts[pts.length - 1].t) {
      let i = pts.length;
      while (i > 0 && pts[i - 1].t > point.t) i--;
      pts.splice(i, 0, point);
    } else {
      pts.push(point);
    }
    this.trim();
    this.schedule();
  }

  trim() {
    const cutoff = Date.now() / 1000 - this.window;
    let drop = 0;
    while (drop < this.points.length && this.points[drop].t < cutoff) drop++;
    if (this.points.length - drop > CHART_MAX_POINTS) drop = this.points.length - CHART_MAX_POINTS;
    if (drop) this.points.splice(0, drop);
    this.canvas.dataset.points = String(this.points.length);
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  draw() {
    const canvas = this.canvas;
    const chart = prepareChart(canvas, { left: 34, right: 6, top: 6, bottom: 18 });
    if (!chart) return;
    const { ctx, height: cssHeight, left, top, plotW, plotH } = chart;

    const axis = cssColour(canvas, "--chart-axis", "#8a93a6");
    const grid = cssColour(canvas, "--chart-grid", "rgba(128,128,128,.2)");
    const rawColor = cssColour(canvas, "--chart-raw", "rgba(255,160,60,.5)");
    const lineColor = cssColour(canvas, "--chart-line", "#ffb347");

    const now = Date.now() / 1000;
    // Span the data seen so far (at least a minute, at most the window) so that a new
    // stream's first seconds are not a sliver at the right edge.
    const first = this.points.length ? this.points[0].t : now;
    const span = Math.min(this.window, Math.max(60, now - first));
    const t0 = now - span;
    let max = 0;
    for (const p of this.points) max = Math.max(max, p.count, p.smoothed ?? 0);
    const yMax = niceCeil(max * 1.1);
    const x = (t) => left + ((t - t0) / span) * plotW;
    const y = (v) => top + plotH - (v / yMax) * plotH;

    ctx.font = "10px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.fillStyle = axis;
    ctx.strokeStyle = grid;
    drawValueGrid(ctx, { left, width: plotW, yMax, y, lines: 2 });
    ctx.textBaseline = "alphabetic";
    const ticks = [t0, t0 + span / 2, now];
    ticks.forEach((t, i) => {
      ctx.textAlign = i === 0 ? "left" : i === ticks.length - 1 ? "right" : "center";
      const label = i === ticks.length - 1 ? "now" : ago(now - t);
      ctx.fillText(label, x(t), cssHeight - 4);
    });

    if (!this.points.length) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for counts…", left + plotW / 2, top + plotH / 2);
      return;
    }
    const line = (key, color, width) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.lineJoin = "round";
      strokeSeries(ctx, this.points, (p) => Math.max(left, x(p.t)), y, (p) => p[key]);
    };
    line("count", rawColor, 1);
    line("smoothed", lineColor, 2);
  }

  destroy() {
    this.resizeObserver.disconnect();
  }
}
