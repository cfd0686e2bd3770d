// The count chart of a stream card: raw and smoothed counts over the last minutes on a
// <canvas>, drawn at most once per animation frame. Colours come from CSS custom properties
// (--chart-axis, --chart-grid, --chart-raw, --chart-line) so the stylesheet themes it.

import { ago, niceCeil } from "./format.js";

export const CHART_WINDOW_S = 5 * 60; // the chart shows the last five minutes
const CHART_MAX_POINTS = 2000;

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
    const cssWidth = canvas.clientWidth;
    const cssHeight = canvas.clientHeight;
    if (!cssWidth || !cssHeight) return;
    const ratio = window.devicePixelRatio || 1;
    const w = Math.round(cssWidth * ratio);
    const h = Math.round(cssHeight * ratio);
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);

    const style = getComputedStyle(canvas);
    const axis = style.getPropertyValue("--chart-axis").trim() || "#8a93a6";
    const grid = style.getPropertyValue("--chart-grid").trim() || "rgba(128,128,128,.2)";
    const rawColor = style.getPropertyValue("--chart-raw").trim() || "rgba(255,160,60,.5)";
    const lineColor = style.getPropertyValue("--chart-line").trim() || "#ffb347";

    const left = 34;
    const right = 6;
    const top = 6;
    const bottom = 18;
    const plotW = Math.max(1, cssWidth - left - right);
    const plotH = Math.max(1, cssHeight - top - bottom);
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
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 2; i++) {
      const v = (yMax * i) / 2;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(left + plotW, yy);
      ctx.stroke();
      ctx.fillText(v >= 10 ? String(Math.round(v)) : String(+v.toFixed(1)), left - 4, yy);
    }
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
      ctx.beginPath();
      let started = false;
      for (const p of this.points) {
        const v = p[key];
        if (v === null || v === undefined || !Number.isFinite(v)) continue;
        const xx = Math.max(left, x(p.t));
        if (started) ctx.lineTo(xx, y(v));
        else ctx.moveTo(xx, y(v));
        started = true;
      }
      ctx.stroke();
    };
    line("count", rawColor, 1);
    line("smoothed", lineColor, 2);
  }

  destroy() {
    this.resizeObserver.disconnect();
  }
}
