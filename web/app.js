// CrowdCount dashboard: stream cards with the annotated WebRTC video, live counts (SSE) and a
// small count chart, an RTSP form, "use my camera" (WebRTC publish) and an image counter.
// Plain ES module, no dependencies, no requests anywhere but this origin.

const POLL_MS = 2000;
const CHART_WINDOW_S = 5 * 60; // the chart shows the last five minutes
const CHART_MAX_POINTS = 2000;
const ICE_GATHER_TIMEOUT_MS = 3000;
const RTC_RETRY_MS = [1000, 2000, 4000, 8000];

// ---------------------------------------------------------------------------------- the API
// With a token the server answers /?token=… with a session cookie and a redirect to /, so
// requests are normally authorised by that cookie; a token still in the address (a server
// that does not redirect) is also sent as a bearer header.

const params = new URLSearchParams(location.search);
const token = params.get("token");

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set("Authorization", `Bearer ${token}`);
  let body = options.body;
  if (options.json !== undefined) {
    headers.set("Content-Type", "application/json");
    body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { ...options, headers, body });
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error) || text.trim() || `HTTP ${response.status}`;
    throw new ApiError(message, response.status);
  }
  return data;
}


// ------------------------------------------------------------------------------- formatting

function formatCount(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return value >= 100 ? Math.round(value).toString() : value.toFixed(1);
}

function toSeconds(t) {
  if (typeof t === "string") {
    const n = Number(t);
    if (Number.isFinite(n)) t = n;
    else return Date.parse(t) / 1000;
  }
  return t > 1e12 ? t / 1000 : t; // milliseconds → seconds
}

function ago(seconds) {
  const s = Math.round(seconds);
  if (s < 90) return `-${s}s`;
  const m = s / 60;
  return `-${Number.isInteger(m) ? m : m.toFixed(1)}m`;
}

function niceCeil(value) {
  if (value <= 0) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * exp) return m * exp;
  return 10 * exp;
}

// ------------------------------------------------------------------------------------ chart

class CountChart {
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

// ------------------------------------------------------------------------------------ WebRTC

function waitForIceGathering(pc, timeoutMs = ICE_GATHER_TIMEOUT_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs); // send what we have rather than hang
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function preferMaintainResolution(sender) {
  // Chrome drops to 480x360 under CPU load unless told to keep the resolution.
  try {
    const p = sender.getParameters();
    if (p.degradationPreference === "maintain-resolution") return;
    p.degradationPreference = "maintain-resolution";
    await sender.setParameters(p);
  } catch (err) {
    console.warn("degradationPreference not applied:", err);
  }
}

// -------------------------------------------------------------------------------------- cards

const grid = document.querySelector('[data-testid="stream-grid"]');
const template = document.getElementById("card-template");
const cards = new Map(); // stream id -> Card

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

class Card {
  constructor(id, name, { local = false } = {}) {
    this.id = id;
    this.name = name;
    this.local = local; // a camera this page publishes
    this.pc = null;
    this.peerId = null;
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
    const remove = el.querySelector('[data-testid="stream-remove"]');
    remove.setAttribute("aria-label", `Remove ${name}`);
    remove.addEventListener("click", () => this.remove());
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
    document.dispatchEvent(new CustomEvent("crowdcount:card-added", { detail: { card: this } }));
  }

  // Where the video picture lies inside .media (object-fit: contain), for overlays such as
  // zone drawing: {x, y, width, height, scale} in CSS pixels, scale = CSS px per video px.
  videoRect() {
    const box = this.media.getBoundingClientRect();
    const vw = this.video.videoWidth;
    const vh = this.video.videoHeight;
    if (!vw || !vh) return null;
    const scale = Math.min(box.width / vw, box.height / vh);
    const width = vw * scale;
    const height = vh * scale;
    return { x: (box.width - width) / 2, y: (box.height - height) / 2, width, height, scale };
  }

  update(stream) {
    this.seen = Date.now();
    if (stream.name && stream.name !== this.name && !this.local) {
      this.name = stream.name;
      this.nameEl.textContent = stream.name;
    }
    const st = stream.status || {};
    this.serverState = st.state || this.serverState;
    this.lastError = st.last_error || null;
    this.el.dataset.kind = stream.kind || this.el.dataset.kind;
    if (Number.isFinite(st.last_count) && !this.liveCount) this.showCount(st.last_count);
    const fps = [];
    if (Number.isFinite(st.fps_in)) fps.push(`${st.fps_in.toFixed(1)} fps in`);
    if (Number.isFinite(st.fps_out)) fps.push(`${st.fps_out.toFixed(1)} counted`);
    if (st.reconnects) fps.push(`${st.reconnects} reconnects`);
    this.fpsEl.textContent = fps.join(" · ");
    this.render();
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
      const data = await api(
        `/api/streams/${encodeURIComponent(this.id)}/counts?since=${since.toFixed(3)}&step=2`,
      );
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
    if (this.rtcState !== "playing") {
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
    this.media.dataset.video = this.rtcState;
  }

  closePeer(pc = this.pc) {
    if (!pc) return;
    pc.ontrack = null;
    pc.onconnectionstatechange = null;
    pc.close();
    if (this.pc === pc) this.pc = null;
  }

  // Whether a view connection should be started (none running, pending or scheduled).
  idle() {
    return !this.pc && !this.connecting && !this.retryTimer && !this.removed;
  }

  // Tell the server first, then close our side: closed first, the server notices the
  // hang-up by itself and the DELETE would race it to a 404.
  async hangUp(unloading = false) {
    const peerId = this.peerId;
    const pc = this.pc;
    this.peerId = null;
    if (peerId) {
      const request = api(`/api/rtc/peers/${encodeURIComponent(peerId)}`, {
        method: "DELETE",
        keepalive: unloading,
      }).catch(() => {});
      if (!unloading && pc) {
        pc.onconnectionstatechange = null;
        await Promise.race([request, new Promise((r) => setTimeout(r, 2000))]);
      }
    }
    this.closePeer(pc);
  }

  async negotiate(mode) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.ontrack = (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      if (this.video.srcObject !== stream) this.video.srcObject = stream;
      this.video.play().catch(() => {}); // autoplay of muted video; "playing" sets the state
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      const s = pc.connectionState;
      if (s === "failed" || s === "closed") this.onPeerLost(`connection ${s}`);
    };
    let sender = null;
    if (mode === "publish") {
      const [track] = this.camera.getVideoTracks();
      const tr = pc.addTransceiver(track, { direction: "sendrecv", streams: [this.camera] });
      sender = tr.sender;
      await preferMaintainResolution(sender);
    } else {
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (this.pc !== pc) throw new Error("cancelled");
    const body = { sdp: pc.localDescription.sdp, type: "offer", mode, stream_id: this.id };
    const answer = await api("/api/rtc/offer", { method: "POST", json: body });
    if (this.pc !== pc) {
      api(`/api/rtc/peers/${encodeURIComponent(answer.peer_id)}`, { method: "DELETE" }).catch(
        () => {},
      );
      throw new Error("cancelled");
    }
    this.peerId = answer.peer_id;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    if (sender) await preferMaintainResolution(sender);
    return answer;
  }

  async connectView() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.connecting || this.removed) return;
    this.connecting = true;
    try {
      await this.hangUp();
      if (this.removed) return;
      this.setRtc(this.retry ? "retrying" : "connecting");
      await this.negotiate("view");
      this.rtcError = null;
    } catch (err) {
      if (this.removed || err.message === "cancelled") return;
      this.closePeer();
      console.warn(`video of ${this.id}:`, err.message);
      this.scheduleRetry();
    } finally {
      this.connecting = false;
    }
  }

  scheduleRetry() {
    if (this.removed || this.local) return;
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
    this.peerId = null;
    this.closePeer();
    if (this.removed) return;
    if (this.local) {
      this.rtcError = `Camera connection lost (${reason})`;
      this.setRtc("error");
      this.stopCamera();
    } else {
      this.scheduleRetry();
    }
  }

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
      const answer = await this.negotiate("publish");
      if (answer.stream_id && answer.stream_id !== this.id) rekey(this, answer.stream_id);
      this.serverState = "running";
      this.rtcError = null;
      this.render();
      this.loadHistory();
    } catch (err) {
      if (err.message === "cancelled") return;
      this.closePeer();
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

  async remove() {
    if (this.removed) return;
    this.removed = true;
    clearTimeout(this.retryTimer);
    this.chart.destroy();
    cards.delete(this.id);
    this.el.remove();
    updateEmpty();
    document.dispatchEvent(new CustomEvent("crowdcount:card-removed", { detail: { card: this } }));
    await this.hangUp(); // before the stream goes, which would end the peer server-side
    this.stopCamera();
    this.video.srcObject = null;
    if (!this.local) {
      try {
        await api(`/api/streams/${encodeURIComponent(this.id)}`, { method: "DELETE" });
      } catch (err) {
        if (err.status !== 404) showBanner(`Could not remove ${this.name}: ${err.message}`);
      }
    }
  }

  dispose() {
    // The stream disappeared server-side, and with it the peer: close our side only.
    if (this.removed) return;
    this.removed = true;
    clearTimeout(this.retryTimer);
    this.peerId = null;
    this.closePeer();
    this.stopCamera();
    this.chart.destroy();
    cards.delete(this.id);
    this.el.remove();
    updateEmpty();
    document.dispatchEvent(new CustomEvent("crowdcount:card-removed", { detail: { card: this } }));
  }
}

function rekey(card, id) {
  cards.delete(card.id);
  card.id = id;
  card.el.dataset.streamId = id;
  cards.set(id, card);
}

function updateEmpty() {
  document.querySelector('[data-testid="empty"]').hidden = cards.size > 0;
}

// -------------------------------------------------------------------------------- polling

let bannerTimer = null;
function showBanner(text) {
  const banner = document.querySelector('[data-testid="banner"]');
  banner.textContent = text || "";
  banner.hidden = !text;
  clearTimeout(bannerTimer);
  if (text) bannerTimer = setTimeout(() => showBanner(""), 8000);
}

let pollFailures = 0;
async function poll() {
  try {
    const data = await api("/api/streams");
    pollFailures = 0;
    if (!document.querySelector('[data-testid="banner"]').dataset.sticky) showBanner("");
    const seen = new Set();
    for (const stream of data.streams || []) {
      seen.add(stream.id);
      let card = cards.get(stream.id);
      if (!card) {
        card = new Card(stream.id, stream.name || stream.id);
        card.update(stream);
        card.loadHistory();
        if (card.idle()) card.connectView();
      } else {
        card.update(stream);
      }
    }
    for (const card of [...cards.values()]) {
      if (seen.has(card.id)) continue;
      if (card.local) {
        // Our camera's stream is gone server-side (or not registered yet right after the
        // answer): only a card that was live and then vanished is closed.
        if (card.peerId && card.serverState === "running" && Date.now() - card.seen > 6000) {
          card.onPeerLost("stream removed");
        }
      } else {
        card.dispose();
      }
    }
  } catch (err) {
    pollFailures++;
    if (pollFailures >= 2) {
      showBanner(
        err.status === 401 || err.status === 403
          ? `Not authorised: ${err.message} (open the page with ?token=…)`
          : `Server unreachable: ${err.message}`,
      );
    }
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// ------------------------------------------------------------------------------- live feed

let feed = null;
function openFeed() {
  // No token in this URL: EventSource cannot send headers, and the server's session cookie
  // (set when the page was opened with ?token=) authorises it like every other request.
  feed = new EventSource("/api/feed");
  feed.onmessage = (event) => {
    let item;
    try {
      item = JSON.parse(event.data);
    } catch {
      return;
    }
    // Every item also goes out as an event (zones.js shows zone counts and alerts from it);
    // alert items ({type: "alert", event: "raised"|"cleared", ...}) carry no count.
    document.dispatchEvent(new CustomEvent("crowdcount:feed", { detail: item }));
    if (item.type === "alert") return;
    const id = item.stream ?? item.stream_id;
    const card = cards.get(id);
    if (card) card.onFeed(item);
  };
  // EventSource reconnects by itself; nothing to do on error.
}

// ------------------------------------------------------------------------------- the forms

function setupAddForm() {
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
      if (stream && stream.id && !cards.has(stream.id)) {
        const card = new Card(stream.id, stream.name || name);
        card.update(stream);
        card.loadHistory();
        if (card.idle()) card.connectView();
      }
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
}

function setupCameraButton() {
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
    const id = `camera-${suffix}`;
    const card = new Card(id, "My camera", { local: true });
    card.publish();
  });
}

function setupUpload() {
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

// ----------------------------------------------------------------------------------- start

function closeAll() {
  for (const card of cards.values()) {
    card.removed = true;
    card.hangUp(true);
    card.stopCamera();
  }
  if (feed) feed.close();
}

window.addEventListener("pagehide", closeAll);

setupAddForm();
setupCameraButton();
setupUpload();
updateEmpty();
openFeed();
poll();

// For the zone editor and for tests: the live cards, and the chart/count state inside them.
window.crowdcount = { cards, api, formatCount, Card, CountChart };
