// Where people gathered: a stream's density maps averaged over a chosen range, drawn over
// its latest picture (GET /api/streams/{id}/heatmap, PNG), with the numbers behind it
// (?format=json: frames, mean count, the hottest cell). A feature module: a "Where" button
// on every card opens the one gathering panel. On a floor-calibrated stream (floor.js) it
// can also show people per m² of floor (?unit=m2) or the map top-down on the floor
// (?view=floor); otherwise only per image cell, which the picture says.

import { api, streamPath } from "./api.js";
import { el } from "./dom.js";
import { formatCount } from "./format.js";
import { RangePanel } from "./range.js";

class GatheringView extends RangePanel {
  constructor() {
    super("gathering", "Where people gathered");
    this.image = el("img", { class: "gathering-image", testid: "gathering-image",
                             alt: "Where people were, in heat colours over the camera picture" });
    this.stats = el("p", { class: "muted", testid: "gathering-stats", "aria-live": "polite" });
    this.unit = el("select", { testid: "gathering-unit" });
    for (const [value, text] of [["cell", "People per image cell"],
                                 ["m2", "People per m² of floor"],
                                 ["floor", "Top-down on the floor"]]) {
      this.unit.append(el("option", { value }, text));
    }
    const unitLabel = el("label", { class: "field-inline" });
    unitLabel.append(el("span", {}, "Map "), this.unit);
    this.unit.addEventListener("change", () => this.range && this.load(this.range));
    this.error.before(unitLabel, this.image, this.stats);
  }

  async open(card) {
    // Per m2 needs a calibrated floor: offer it only then (floor.js marks the card).
    const calibrated = card.el.dataset.floor === "1";
    for (const option of this.unit.options) option.disabled = !calibrated && option.value !== "cell";
    if (!calibrated) this.unit.value = "cell";
    return super.open(card);
  }

  heading(card) {
    return `Where people gathered: ${card.name}`;
  }

  async load(range) {
    if (!this.card) return;
    this.range = range;
    const { since, until } = range;
    const id = this.card.id;
    const unit = this.unit.value === "cell" ? "" : "&unit=m2";
    const view = this.unit.value === "floor" ? "&view=floor" : "";
    const query = `since=${since.toFixed(3)}&until=${until.toFixed(3)}${unit}`;
    this.error.hidden = true;
    try {
      const data = await api(streamPath(id, `heatmap?${query}&format=json`));
      if (!this.card || this.card.id !== id) return;
      this.section.dataset.frames = String(data.frames);
      this.stats.textContent = data.frames
        ? `${data.frames} frames over ${data.buckets} minute(s): on average ` +
          `${formatCount(data.mean_count)} people; red is the busiest spot ` +
          (unit ? `(${Number(data.peak_cell).toFixed(2)} people per m² of floor on average).`
                : `(${formatCount(data.peak_cell)} people per cell on average).`)
        : "Nobody was counted in this range.";
      await new Promise((resolve) => {
        this.image.onload = resolve;
        this.image.onerror = resolve;
        this.image.src = streamPath(id, `heatmap?${query}${view}`);
      });
      this.section.dataset.loaded = String(Date.now());
    } catch (err) {
      this.error.textContent = `Could not load the map: ${err.message}`;
      this.error.hidden = false;
    }
  }
}

GatheringView.install({ cls: "gathering-toggle", testid: "gathering-toggle", text: "Where",
                        label: (card) => `Where people gathered in ${card.name}` });
