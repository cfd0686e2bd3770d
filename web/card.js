// Stream cards: one <li> per stream (from the template in index.html) with its annotated
// video, state badge, live count and chart. ``cards`` (stream id -> Card) is the page's one
// registry of streams; other modules follow it through the document events
// "crowdcount:card-added", "crowdcount:card-updated" (each GET /api/streams answer) and
// "crowdcount:card-removed" ({detail: {card}}).

import { api, streamPath } from "./api.js";
import { CHART_WINDOW_S, CountChart } from "./chart.js";
import { el, showBanner } from "./dom.js";
import { toFrame } from "./editor.js";
import { formatCount, toSeconds } from "./format.js";
import { PeerLink } from "./webrtc.js";

const RTC_RETRY_MS = [1000, 2000, 4000, 8000];

const grid = document.querySelector('[data-testid="stream-grid"]');
const template = document.getElementById("card-template");

export const cards = new Map(); // stream id -> Card
// Streams the user removed on this page that the server may still list for a moment (a
// poll answered before the removal reached it): the poll must not show them again.
export const removedIds = new Set();

const STATE_LABELS = {
  starting: "connecting",
  connecting: "connecting",
  running: "running",
  reconnecting: "reconnecting",
  failed: "failed",
  ended: "ended",
  stopped: "stopped",
  publishing: "connecting",
};

function announce(name, card) {
  document.dispatchEvent(new CustomEvent(`crowdcount:${name}`, { detail: { card } }));
}

// How a feature module joins the cards: ``attach(card)`` now for every card and later for
// each one added, ``detach(card)`` (optional) for each one removed.
export function eachCard(attach, detach = null) {
  document.addEventListener("crowdcount:card-added", (event) => attach(event.detail.card));
  if (detach) {
    document.addEventListener("crowdcount:card-removed", (event) => detach(event.detail.card));
  }
  for (const card of cards.values()) attach(card);
}

// A feature's button among a card's actions (before "Remove"); ``label`` is what a screen
// reader says, naming the card.
export function addCardButton(card, { cls, testid, text, label }) {
  const button = el("button", { type: "button", class: cls, testid, "aria-label": label }, text);
  card.el.querySelector(".card-actions .remove").before(button);
  return button;
}

export function updateEmpty() {
  document.querySelector('[data-testid="empty"]').hidden = cards.size > 0;
}

export class Card {
  constructor(id, name, { local = false } = {}) {
    this.id = id;
    this.name = name;
    this.local = local; // a camera this page publishes
    this.link = new PeerLink({
      onTrack: (stream) => {
        if (this.video.srcObject !== stream) this.video.srcObject = stream;
        this.video.play().catch(() => {}); // autoplay of muted video; "playing" sets the state
      },
      onLost: (reason) => this.onPeerLost(reason),
    });
    this.camera = null; // MediaStream from getUserMedia (local cards)
    this.serverState = local ? "connecting" : "starting";
    this.rtcState = "new";
    this.retry = 0;
    this.retryTimer = null;
    this.removed = false;
    this.seen = Date.now();

    const el = template.content.firstElementChild.cloneNode(true);
    this.el = el;
    el.dataset.streamId = id;
    el.dataset.kind = local ? "webrtc" : "";
    this.nameEl = el.querySelector('[data-testid="stream-name"]');
    this.badge = el.querySelector('[data-testid="stream-state"]');
    this.media = el.querySelector('[data-testid="stream-media"]');
    this.video = el.querySelector('[data-testid="stream-video"]');
    this.note = el.querySelector('[data-testid="video-note"]');
    this.errorEl = el.querySelector('[data-testid="stream-error"]');
    this.countEl = el.querySelector('[data-testid="stream-count"]');
    this.fpsEl = el.querySelector('[data-testid="stream-fps"]');
    this.canvas = el.querySelector('[data-testid="stream-chart"]');
    // Removal asks first, in the card (a stray click must not delete a camera).
    this.removeButton = el.querySelector('[data-testid="stream-remove"]');
    this.removeButton.setAttribute("aria-label", `Remove ${name}`);
    this.confirmBar = el.querySelector('[data-testid="remove-confirm"]');
    el.querySelector('[data-testid="remove-question"]').textContent =
      local ? `Stop sharing ${name}?` : `Remove ${name}? Its history is kept.`;
    this.removeButton.addEventListener("click", () => {
      this.confirmBar.hidden = false;
      el.querySelector('[data-testid="remove-no"]').focus();
    });
    el.querySelector('[data-testid="remove-yes"]').addEventListener("click", () => this.remove());
    el.querySelector('[data-testid="remove-no"]').addEventListener("click", () => {
      this.confirmBar.hidden = true;
    });
    this.paused = false; // the view is hung up while the card is off screen or the tab hidden
    this.nameEl.textContent = name;
    this.video.setAttribute("aria-label", `Annotated live video of ${name}`);
    this.canvas.setAttribute("aria-label", `Count of ${name} over the last five minutes`);
    this.chart = new CountChart(this.canvas);

    this.video.addEventListener("playing", () => this.setRtc("playing"));
    this.video.addEventListener("resize", () => {
      if (this.video.videoWidth) {
        this.media.style.aspectRatio = `${this.video.videoWidth} / ${this.video.videoHeight}`;
      }
    });
    cards.set(id, this);
    grid.append(el);
    this.render();
    updateEmpty();
    announce("card-added", this);
  }

  // The current RTCPeerConnection and the server's peer id (null when not connected).
  get pc() {
    return this.link.pc;
  }

  get peerId() {
    return this.link.peerId;
  }

  // Where the video picture lies inside .media (object-fit: contain), as an editor.js view
  // for overlays such as zone drawing, plus the picture's width and height in CSS pixels:
  // scale = CSS px per video px; frameWidth/frameHeight is the camera's size
  // (status.frame_size), in which zones are given, and sx/sy camera px per video px: the
  // server may send a camera's video at the model's smaller size.
  videoRect() {
    const box = this.media.getBoundingClientRect();
    const vw = this.video.videoWidth;
    const vh = this.video.videoHeight;
    if (!vw || !vh) return null;
    const scale = Math.min(box.width / vw, box.height / vh);
    const width = vw * scale;
    const height = vh * scale;
    const [frameWidth, frameHeight] = this.frameSize || [vw, vh];
    return {
      x: (box.width - width) / 2, y: (box.height - height) / 2, width, height, scale,
      frameWidth, frameHeight, sx: frameWidth / vw, sy: frameHeight / vh,
    };
  }

  // A click on an overlay canvas as a point in camera pixels (zones and floor points are
  // both given in them), or null off the picture (more than ``slack`` px onto the black bars).
  framePoint(event, slack = 0) {
    const rect = this.videoRect();
    return rect && toFrame(rect, event.offsetX, event.offsetY, slack);
  }

  // A stream as GET /api/streams lists it: name, kind, status (kept as ``stream`` for the
  // feature modules, told by "crowdcount:card-updated").
  update(stream) {
    this.seen = Date.now();
    this.stream = stream;
    if (stream.name && stream.name !== this.name && !this.local) {
      this.name = stream.name;
      this.nameEl.textContent = stream.name;
    }
    const st = stream.status || {};
    this.serverState = st.state || this.serverState;
    if (Array.isArray(st.frame_size) && st.frame_size[0] > 0 && st.frame_size[1] > 0) {
      this.frameSize = st.frame_size;
    }
    this.lastError = st.last_error || null;
    this.el.dataset.kind = stream.kind || this.el.dataset.kind;
    if (stream.origin) {
      this.origin = stream.origin;
      this.el.dataset.origin = stream.origin;
      // Config-file streams are removed in the config file, not here (the API says 409).
      this.removeButton.hidden = stream.origin === "config";
    }
    if (Number.isFinite(st.last_count) && !this.liveCount) this.showCount(st.last_count);
    const fps = [];
    if (Number.isFinite(st.fps_in)) fps.push(`${st.fps_in.toFixed(1)} fps in`);
    if (Number.isFinite(st.fps_out)) fps.push(`${st.fps_out.toFixed(1)} counted`);
    if (st.reconnects) fps.push(`${st.reconnects} reconnects`);
    this.fpsEl.textContent = fps.join(" · ");
    this.render();
    announce("card-updated", this);
    // The stream came (back) to life: make sure the video follows.
    if (this.serverState === "running" && !this.local && this.idle()) {
      this.connectView();
    }
  }

  showCount(value, live = false) {
    if (live) this.liveCount = Date.now();
    this.countEl.textContent = formatCount(value);
    this.countEl.dataset.value = String(value);
  }

  // A count item of the live feed ({t, count, smoothed, ...}).
  onFeed(item) {
    const t = toSeconds(item.t ?? Date.now() / 1000);
    const count = Number(item.count);
    const smoothed = item.smoothed === undefined ? null : Number(item.smoothed);
    this.showCount(smoothed ?? count, true);
    this.chart.add({ t, count, smoothed });
  }

  async loadHistory() {
    const since = Date.now() / 1000 - CHART_WINDOW_S;
    try {
      const data = await api(streamPath(this.id, `counts?since=${since.toFixed(3)}&step=2`));
      const points = (data?.counts || []).map((c) => ({
        t: toSeconds(c.t),
        count: Number(c.count),
        smoothed: c.smoothed === undefined || c.smoothed === null ? null : Number(c.smoothed),
      }));
      this.chart.setHistory(points);
    } catch (err) {
      if (err.status !== 404) console.warn(`count history of ${this.id}:`, err.message);
    }
  }

  setRtc(state) {
    this.rtcState = state;
    if (state === "playing") this.retry = 0;
    this.render();
  }

  render() {
    const failed = this.serverState === "failed" || this.rtcState === "error";
    let state = STATE_LABELS[this.serverState] || this.serverState;
    if (this.rtcState === "error" && this.local) state = "failed";
    this.badge.textContent = state;
    this.badge.dataset.state = state;
    this.el.dataset.state = state;

    const error = this.rtcError || (failed || state === "reconnecting" ? this.lastError : null);
    this.errorEl.hidden = !error;
    this.errorEl.textContent = error || "";

    let note = "";
    if (this.paused) {
      note = "Video paused while not shown";
    } else if (this.rtcState !== "playing") {
      if (this.rtcState === "error") note = this.local ? "Camera failed" : "Video unavailable";
      else if (this.rtcState === "retrying") note = "Video lost, reconnecting…";
      else if (this.local && this.rtcState === "new") note = "Starting your camera…";
      else note = "Connecting video…";
    } else if (state === "reconnecting") {
      note = "Camera reconnecting…";
    } else if (state === "failed" || state === "ended" || state === "stopped") {
      note = `Stream ${state}`;
    }
    this.note.textContent = note;
    this.note.hidden = !note;
    this.media.dataset.video = this.paused ? "paused" : this.rtcState;
  }

  // Off screen or in a hidden tab: hang up the view, so the server stops encoding video for
  // nobody; back in sight, connect again and refill the chart. A camera this page publishes
  // keeps going (it is the stream's source).
  pauseView() {
    if (this.local || this.paused || this.removed) return;
    this.paused = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retry = 0;
    // Mid-offer, closing the RTCPeerConnection would leave its pending promises unsettled
    // forever (WebRTC spec); connectView hangs up itself once the offer is through.
    if (!this.connecting) this.link.hangUp();
    this.video.srcObject = null;
    this.rtcState = "new";
    this.render();
  }

  resumeView() {
    if (!this.paused || this.removed) return;
    this.paused = false;
    this.render();
    this.loadHistory();
    if (this.serverState === "running" && this.idle()) this.connectView();
  }

  // Whether a view connection should be started (none running, pending or scheduled).
  idle() {
    return !this.link.pc && !this.connecting && !this.retryTimer && !this.removed && !this.paused;
  }

  async connectView() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.connecting || this.removed || this.paused) return;
    this.connecting = true;
    try {
      await this.link.hangUp();
      if (this.removed || this.paused) return;
      this.setRtc(this.retry ? "retrying" : "connecting");
      await this.link.open("view", this.id);
      if (this.paused) {
        await this.link.hangUp(); // paused while the offer was answered
        return;
      }
      this.rtcError = null;
    } catch (err) {
      if (this.removed || err.message === "cancelled") return;
      this.link.close();
      console.warn(`video of ${this.id}:`, err.message);
      this.scheduleRetry();
    } finally {
      this.connecting = false;
    }
  }

  scheduleRetry() {
    if (this.removed || this.local || this.paused) return;
    const delay = RTC_RETRY_MS[Math.min(this.retry, RTC_RETRY_MS.length - 1)];
    this.retry++;
    this.setRtc("retrying");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connectView();
    }, delay);
  }

  onPeerLost(reason) {
    this.link.drop();
    if (this.removed || this.paused) return;
    if (this.local) {
      this.rtcError = `Camera connection lost (${reason})`;
      this.setRtc("error");
      this.stopCamera();
    } else {
      this.scheduleRetry();
    }
  }

  // Publish this browser's camera as a new stream (a local card).
  async publish() {
    this.setRtc("new");
    try {
      this.camera = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
        audio: false,
      });
    } catch (err) {
      this.rtcError = `Camera not available: ${err.message || err.name}`;
      this.setRtc("error");
      return;
    }
    if (this.removed) return this.stopCamera();
    this.setRtc("connecting");
    try {
      const answer = await this.link.open("publish", this.id, this.camera);
      if (answer.stream_id && answer.stream_id !== this.id) this.rekey(answer.stream_id);
      this.serverState = "running";
      this.rtcError = null;
      this.render();
      this.loadHistory();
    } catch (err) {
      if (err.message === "cancelled") return;
      this.link.close();
      this.stopCamera();
      this.rtcError = `Could not publish the camera: ${err.message}`;
      this.setRtc("error");
    }
  }

  stopCamera() {
    if (this.camera) {
      for (const t of this.camera.getTracks()) t.stop();
      this.camera = null;
    }
  }

  // The server named our published stream differently from the id we proposed.
  rekey(id) {
    cards.delete(this.id);
    this.id = id;
    this.el.dataset.streamId = id;
    cards.set(id, this);
  }

  // The user removes the stream: from the page, and from the server.
  async remove() {
    if (this.removed) return;
    this.removed = true;
    clearTimeout(this.retryTimer);
    this.chart.destroy();
    cards.delete(this.id);
    removedIds.add(this.id);
    this.el.remove();
    updateEmpty();
    announce("card-removed", this);
    await this.link.hangUp(); // before the stream goes, which would end the peer server-side
    this.stopCamera();
    this.video.srcObject = null;
    if (!this.local) {
      try {
        await api(streamPath(this.id), { method: "DELETE" });
      } catch (err) {
        if (err.status !== 404) showBanner(`Could not remove ${this.name}: ${err.message}`);
      }
    }
  }

  // The stream disappeared server-side, and with it the peer: close our side only.
  dispose() {
    if (this.removed) return;
    this.removed = true;
    clearTimeout(this.retryTimer);
    this.link.drop();
    this.stopCamera();
    this.chart.destroy();
    cards.delete(this.id);
    this.el.remove();
    updateEmpty();
    announce("card-removed", this);
  }

  // The page is going away: hang up without waiting.
  unload() {
    this.removed = true;
    this.link.hangUp(true);
    this.stopCamera();
  }
}

// A card for a server stream that the page has not shown yet, with its history and video.
export function showStream(stream, fallbackName = stream.id) {
  removedIds.delete(stream.id); // added again
  const card = new Card(stream.id, stream.name || fallbackName);
  card.update(stream);
  card.loadHistory();
  if (card.idle()) card.connectView();
  return card;
}
