// The page's forms: add an RTSP camera, publish this browser's camera, count an image.
// Each setup function wires one form to the API; the cards appear through card.js.

import { api } from "./api.js";
import { Card, cards, showStream } from "./card.js";
import { formatCount } from "./format.js";

export function setupAddForm() {
  const form = document.querySelector('[data-testid="add-form"]');
  const error = document.querySelector('[data-testid="add-error"]');
  const button = form.querySelector('[data-testid="add-submit"]');
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const name = form.elements.name.value.trim();
    const url = form.elements.url.value.trim();
    if (!name || !url) {
      error.textContent = "Enter a camera name and an rtsp:// or rtsps:// URL.";
      error.hidden = false;
      return;
    }
    button.disabled = true;
    try {
      const stream = await api("/api/streams", { method: "POST", json: { name, url } });
      form.reset();
      if (stream && stream.id && !cards.has(stream.id)) showStream(stream, name);
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
}

export function setupCameraButton() {
  const button = document.querySelector('[data-testid="use-camera"]');
  if (!navigator.mediaDevices?.getUserMedia || !window.RTCPeerConnection) {
    button.disabled = true;
    button.title = "This browser cannot share a camera (needs HTTPS or localhost)";
    return;
  }
  button.addEventListener("click", () => {
    const suffix = Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) =>
      b.toString(16).padStart(2, "0"),
    ).join("");
    const card = new Card(`camera-${suffix}`, "My camera", { local: true });
    card.publish();
  });
}

export function setupUpload() {
  const form = document.querySelector('[data-testid="upload-form"]');
  const input = form.querySelector('[data-testid="upload-input"]');
  const error = document.querySelector('[data-testid="upload-error"]');
  const result = document.querySelector('[data-testid="upload-result"]');
  const countEl = document.querySelector('[data-testid="upload-count"]');
  const sizeEl = document.querySelector('[data-testid="upload-size"]');
  const img = document.querySelector('[data-testid="upload-overlay"]');
  const button = form.querySelector('[data-testid="upload-submit"]');

  const send = async () => {
    const file = input.files && input.files[0];
    error.hidden = true;
    if (!file) {
      error.textContent = "Choose an image first.";
      error.hidden = false;
      return;
    }
    const body = new FormData();
    body.append("image", file, file.name);
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const data = await api("/api/count?overlay=1", { method: "POST", body });
      countEl.textContent = formatCount(data.count);
      countEl.dataset.value = String(data.count);
      sizeEl.textContent = data.width ? `(${data.width}×${data.height})` : "";
      if (data.overlay_png) img.src = `data:image/png;base64,${data.overlay_png}`;
      img.hidden = !data.overlay_png;
      result.hidden = false;
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("change", () => {
    if (input.files && input.files.length) send();
  });
}
