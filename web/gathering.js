// Where people gathered: a stream's density maps averaged over a chosen range, drawn over
// its latest picture (GET /api/streams/{id}/heatmap, PNG), with the numbers behind it
// (?format=json: frames, mean count, the hottest cell). A feature module: a "Where" button
// on every card opens the one gathering panel.

import { api, streamPath } from "./api.js";
import { cards } from "./card.js";
import { el } from "./dom.js";
import { formatCount } from "./format.js";
import { RangePicker } from "./range.js";

class GatheringView {
  constructor() {
    this.card = null;
    this.section = el("section", { class: "gathering panel", testid: "gathering-panel",
                                   "aria-labelledby": "gathering-title", hidden: "" });
    const head = el("div", { class: "panel-head" });
    this.title = el("h2", { id: "gathering-title" }, "Where people gathered");
    const close = el("button", { type: "button", testid: "gathering-close" }, "Close");
    close.addEventListener("click", () => this.close());
    head.append(this.title, close);
    this.picker = new RangePicker("gathering-range", (range) => this.load(range));
    this.image = el("img", { class: "gathering-image", testid: "gathering-image",
                             alt: "Where people were, in heat colours over the camera picture" });
    this.stats = el("p", { class: "muted", testid: "gathering-stats", "aria-live": "polite" });
    this.error = el("p", { class: "form-error", testid: "gathering-error", role: "alert",
                           hidden: "" });
    this.section.append(head, this.picker.el, this.image, this.stats, this.error);
    document.querySelector('[data-testid="stream-grid"]').closest("section").after(this.section);
  }

  async open(card) {
    this.card = card;
    this.title.textContent = `Where people gathered: ${card.name}`;
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

  async load({ since, until }) {
    if (!this.card) return;
    const id = this.card.id;
    const query = `since=${since.toFixed(3)}&until=${until.toFixed(3)}`;
    this.error.hidden = true;
    try {
      const data = await api(streamPath(id, `heatmap?${query}&format=json`));
      if (!this.card || this.card.id !== id) return;
      this.section.dataset.frames = String(data.frames);
      this.stats.textContent = data.frames
        ? `${data.frames} frames over ${data.buckets} minute(s): on average ` +
          `${formatCount(data.mean_count)} people; red is the busiest spot ` +
          `(${formatCount(data.peak_cell)} people per cell on average).`
        : "Nobody was counted in this range.";
      await new Promise((resolve) => {
        this.image.onload = resolve;
        this.image.onerror = resolve;
        this.image.src = streamPath(id, `heatmap?${query}`);
      });
      this.section.dataset.loaded = String(Date.now());
    } catch (err) {
      this.error.textContent = `Could not load the map: ${err.message}`;
      this.error.hidden = false;
    }
  }
}

let view = null;

function attach(card) {
  const button = el("button", { type: "button", class: "gathering-toggle",
                                testid: "gathering-toggle" }, "Where");
  button.setAttribute("aria-label", `Where people gathered in ${card.name}`);
  button.addEventListener("click", () => {
    if (!view) view = new GatheringView();
    view.open(card);
  });
  card.el.querySelector(".card-actions .remove").before(button);
}

document.addEventListener("crowdcount:card-added", (event) => attach(event.detail.card));
document.addEventListener("crowdcount:card-removed", (event) => {
  if (view && view.card === event.detail.card) view.close();
});
for (const card of cards.values()) attach(card);
