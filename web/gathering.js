// Where people gathered: a stream's density maps averaged over a chosen range, drawn over
// its latest picture (GET /api/streams/{id}/heatmap, PNG), with the numbers behind it
// (?format=json: frames, mean count, the hottest cell). A feature module: a "Where" button
// on every card opens the one gathering panel.

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
    this.error.before(this.image, this.stats);
  }

  heading(card) {
    return `Where people gathered: ${card.name}`;
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

GatheringView.install({ cls: "gathering-toggle", testid: "gathering-toggle", text: "Where",
                        label: (card) => `Where people gathered in ${card.name}` });
