// What the editors on a camera picture share: zones.js and floor.js draw on the live video,
// calibrate.js marks heads on a captured still. All three speak the same ``view``: where a
// frame lies in a box of CSS pixels, {x, y, scale, sx, sy, frameWidth, frameHeight}, with
// ``scale`` CSS px per drawn px and sx/sy frame px per drawn px (the live video may come at
// the model's smaller size than the camera's frame; a still is drawn at its own, sx = sy = 1).
// Card.videoRect() gives the live video's view, ZoomView a still's, so one pair of functions
// maps points both ways and the editors keep their points in frame pixels, as the API wants.

import { el } from "./dom.js";

// A point in frame pixels -> CSS pixels in the view's box.
export function toCss(view, [x, y]) {
  return [view.x + (x / view.sx) * view.scale, view.y + (y / view.sy) * view.scale];
}

// CSS pixels in the view's box -> a point in frame pixels (0.1 px steps, clamped onto the
// frame), or null when more than ``slack`` frame px off it (the black bars of the video).
export function toFrame(view, cssX, cssY, slack = 0) {
  const x = ((cssX - view.x) / view.scale) * view.sx;
  const y = ((cssY - view.y) / view.scale) * view.sy;
  const w = view.frameWidth;
  const h = view.frameHeight;
  if (x < -slack || y < -slack || x > w + slack || y > h + slack) return null;
  const clamp = (v, hi) => Math.round(Math.min(Math.max(v, 0), hi) * 10) / 10;
  return [clamp(x, w), clamp(y, h)];
}

// An overlay canvas sized to its box at the device's pixel ratio and cleared: a 2D context
// drawing in CSS pixels.
export function clearOverlay(canvas) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(canvas.clientWidth * dpr);
  canvas.height = Math.round(canvas.clientHeight * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  return ctx;
}

export const MAX_ZOOM = 16;

// Zoom and pan over a still frame of ``width`` x ``height`` px shown in a box: zoom 1 fits
// the whole frame; ``center`` is the frame point at the box's centre. Along a side where the
// frame is smaller than the box it stays inside the box, along one where it is larger it
// covers the box: a pan cannot lose it, and zooming keeps the point under the pointer
// where it is (a portrait frame in a wide box is narrower than the box for a while).
export class ZoomView {
  constructor(width, height) {
    this.width = width;
    this.height = height;
    this.reset();
  }

  reset() {
    this.zoom = 1;
    this.center = [this.width / 2, this.height / 2];
  }

  // The view in a box of ``boxWidth`` x ``boxHeight`` CSS px.
  view(boxWidth, boxHeight) {
    const fit = Math.min(boxWidth / this.width, boxHeight / this.height);
    const scale = fit * this.zoom;
    this.clamp(boxWidth, boxHeight, scale);
    return {
      x: boxWidth / 2 - this.center[0] * scale, y: boxHeight / 2 - this.center[1] * scale,
      scale, sx: 1, sy: 1, frameWidth: this.width, frameHeight: this.height,
    };
  }

  clamp(boxWidth, boxHeight, scale) {
    const axis = (c, size, box) => {
      const half = box / 2 / scale;
      return Math.min(Math.max(c, Math.min(half, size - half)), Math.max(half, size - half));
    };
    this.center = [axis(this.center[0], this.width, boxWidth),
                   axis(this.center[1], this.height, boxHeight)];
  }

  // Zoom by ``factor`` keeping the frame point under (cssX, cssY) where it is.
  zoomAt(boxWidth, boxHeight, cssX, cssY, factor) {
    const before = this.view(boxWidth, boxHeight);
    const px = (cssX - before.x) / before.scale;
    const py = (cssY - before.y) / before.scale;
    this.zoom = Math.min(Math.max(this.zoom * factor, 1), MAX_ZOOM);
    const after = Math.min(boxWidth / this.width, boxHeight / this.height) * this.zoom;
    this.center = [px - (cssX - boxWidth / 2) / after, py - (cssY - boxHeight / 2) / after];
    this.clamp(boxWidth, boxHeight, after);
  }

  // Move the picture by (dx, dy) CSS px, as a drag would.
  panBy(boxWidth, boxHeight, dx, dy) {
    const scale = this.view(boxWidth, boxHeight).scale;
    this.center = [this.center[0] - dx / scale, this.center[1] - dy / scale];
    this.clamp(boxWidth, boxHeight, scale);
  }
}

// The base of an editor on a card (``card``; null for the page's marking dialog): its
// one-line error (the server's {"error"} text, or what to do next) and the resize observer
// that redraws its overlay; ``dispose`` when the card goes.
export class FrameEditor {
  constructor(card, errorTestid) {
    this.card = card;
    this.error = el("p", { class: "form-error", testid: errorTestid, role: "alert", hidden: "" });
    this.resizeObserver = new ResizeObserver(() => this.redraw());
  }

  // Redraw the overlay whenever ``target`` changes size.
  observe(target) {
    this.resizeObserver.observe(target);
  }

  redraw() {}

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  dispose() {
    this.resizeObserver.disconnect();
  }
}
