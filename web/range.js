// A time range picker (last hour, day, week, or a custom span) on the server's clock, for
// the history and gathering views. The page's clock may be off (a phone, a kiosk), so
// ranges are computed from the server's time, read once from /api/health and kept as an
// offset from the browser's clock.

import { api } from "./api.js";
import { el } from "./dom.js";

export const PRESETS = [
  { key: "hour", label: "Last hour", seconds: 3600 },
  { key: "day", label: "Last day", seconds: 86400 },
  { key: "week", label: "Last week", seconds: 7 * 86400 },
];

let offsetPromise = null;

// Seconds to add to the browser's clock to get the server's.
export function serverOffset() {
  if (!offsetPromise) {
    offsetPromise = (async () => {
      try {
        const t0 = Date.now() / 1000;
        const health = await api("/api/health");
        const t1 = Date.now() / 1000;
        return Number.isFinite(health?.time) ? health.time - (t0 + t1) / 2 : 0;
      } catch {
        return 0;
      }
    })();
  }
  return offsetPromise;
}

export async function serverNow() {
  return Date.now() / 1000 + (await serverOffset());
}

// <input type="datetime-local"> value <-> unix seconds (local wall time of the server's
// clock shifted into this browser's time zone, which is what a person reads).
function toLocalInput(seconds) {
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromLocalInput(value) {
  const t = Date.parse(value);
  return Number.isFinite(t) ? t / 1000 : null;
}

// The step (seconds per point) that keeps a span under about 1500 points, from the units
// the server keeps rollups for (whole seconds and minutes).
export function stepFor(span) {
  for (const step of [1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400]) {
    if (span / step <= 1500) return step;
  }
  return 86400;
}

export class RangePicker {
  // onChange({since, until, step, label}) after every choice.
  constructor(testid, onChange) {
    this.onChange = onChange;
    this.el = el("div", { class: "range", testid, role: "group" });
    this.el.setAttribute("aria-label", "Time range");
    this.buttons = new Map();
    for (const preset of PRESETS) {
      const b = el("button", { type: "button", "data-range": preset.key, "aria-pressed": "false" },
                   preset.label);
      b.addEventListener("click", () => this.choose(preset.key));
      this.buttons.set(preset.key, b);
      this.el.append(b);
    }
    const custom = el("button", { type: "button", "data-range": "custom", "aria-pressed": "false" },
                      "Custom");
    custom.addEventListener("click", () => {
      this.customForm.hidden = !this.customForm.hidden;
    });
    this.buttons.set("custom", custom);
    this.el.append(custom);
    this.customForm = el("form", { class: "range-custom", hidden: "" });
    const from = el("label", { class: "field" });
    this.fromInput = el("input", { type: "datetime-local", name: "from", "data-testid": "range-from" });
    from.append(el("span", {}, "From"), this.fromInput);
    const to = el("label", { class: "field" });
    this.toInput = el("input", { type: "datetime-local", name: "to", "data-testid": "range-to" });
    to.append(el("span", {}, "To"), this.toInput);
    const apply = el("button", { type: "submit", "data-testid": "range-apply" }, "Show");
    this.error = el("p", { class: "form-error", role: "alert", hidden: "" });
    this.customForm.append(from, to, apply, this.error);
    this.customForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const since = fromLocalInput(this.fromInput.value);
      const until = fromLocalInput(this.toInput.value);
      if (since === null || until === null || since >= until) {
        this.error.textContent = "Choose a start before the end.";
        this.error.hidden = false;
        return;
      }
      this.error.hidden = true;
      this.emit("custom", since, until);
    });
    this.el.append(this.customForm);
  }

  async choose(key) {
    const preset = PRESETS.find((p) => p.key === key) || PRESETS[0];
    const until = await serverNow();
    const since = until - preset.seconds;
    this.fromInput.value = toLocalInput(since);
    this.toInput.value = toLocalInput(until);
    this.emit(preset.key, since, until);
  }

  emit(key, since, until) {
    this.current = key;
    for (const [k, b] of this.buttons) b.setAttribute("aria-pressed", String(k === key));
    this.el.dataset.range = key;
    this.onChange({ since, until, step: stepFor(until - since), key });
  }
}
