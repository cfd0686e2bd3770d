// A time range picker (last hour, day, week, or a custom span) on the server's clock, for
// the history and gathering views. The page's clock may be off (a phone, a kiosk), so
// ranges are computed from the server's time, read once from /api/health and kept as an
// offset from the browser's clock.

import { api } from "./api.js";
import { addCardButton, eachCard } from "./card.js";
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

// A panel below the stream grid that shows one card's data over a picked range (history,
// gathering): a heading, a Close button, the range picker and an error line. A subclass
// adds its content before ``this.error``, names the card in ``heading(card)`` and loads a
// range in ``load({since, until, step})``. ``install`` puts its button on every card; the
// one panel is made on first use and closes when its card goes.
export class RangePanel {
  constructor(name, title) {
    this.card = null;
    this.section = el("section", { class: `${name} panel`, testid: `${name}-panel`,
                                   "aria-labelledby": `${name}-title`, hidden: "" });
    const head = el("div", { class: "panel-head" });
    this.title = el("h2", { id: `${name}-title` }, title);
    const close = el("button", { type: "button", testid: `${name}-close` }, "Close");
    close.addEventListener("click", () => this.close());
    head.append(this.title, close);
    this.picker = new RangePicker(`${name}-range`, (range) => this.load(range));
    this.error = el("p", { class: "form-error", testid: `${name}-error`, role: "alert",
                           hidden: "" });
    this.section.append(head, this.picker.el, this.error);
    document.querySelector('[data-testid="stream-grid"]').closest("section").after(this.section);
  }

  async open(card) {
    this.card = card;
    this.title.textContent = this.heading(card);
    this.section.hidden = false;
    this.section.dataset.stream = card.id;
    await this.picker.choose(this.picker.current && this.picker.current !== "custom"
      ? this.picker.current : "hour");
    this.section.scrollIntoView({ block: "nearest" });
  }

  close() {
    this.section.hidden = true;
    this.card = null;
  }

  // ``button``: addCardButton's {cls, testid, text} plus ``label(card)``.
  static install(button) {
    let view = null;
    eachCard((card) => {
      addCardButton(card, { ...button, label: button.label(card) }).addEventListener(
        "click", () => {
          if (!view) view = new this();
          view.open(card);
        });
    }, (card) => {
      if (view && view.card === card) view.close();
    });
  }
}
