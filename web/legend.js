// The heatmap legend: the absolute colour scale the server draws every heatmap with
// (GET /api/heatmap, from model/render.py), so the same colour means the same crowding on
// every stream and upload. A feature module: it only reads the API and fills its <figure>.

import { api } from "./api.js";

const figure = document.querySelector('[data-testid="heat-legend"]');

async function showLegend() {
  let scale;
  try {
    scale = await api("/api/heatmap");
  } catch (err) {
    console.warn("heatmap scale:", err.message);
    return;
  }
  const stops = scale.stops || [];
  if (!stops.length) return;
  const top = scale.max;
  const gradient = stops.map((s) => `${s.color} ${((100 * s.value) / top).toFixed(1)}%`);
  figure.querySelector('[data-testid="heat-bar"]').style.background =
    `linear-gradient(to right, ${gradient.join(", ")})`;
  const ticks = figure.querySelector('[data-testid="heat-ticks"]');
  ticks.replaceChildren(
    ...[0, top / 2, top].map((v, i) => {
      const tick = document.createElement("span");
      tick.textContent = i === 2 ? `${v}+` : String(v);
      return tick;
    }),
  );
  figure.querySelector('[data-testid="heat-caption"]').textContent =
    `Heatmap: ${scale.unit} (a cell is 8×8 pixels of the model's input)`;
  figure.dataset.max = String(top);
  figure.hidden = false;
}

showLegend();
