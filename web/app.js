// CrowdCount dashboard, the entry module: keeps the stream cards in step with the server
// (GET /api/streams every two seconds), routes the live feed (SSE) to them, and starts the
// forms. Plain ES modules, no build step, no dependencies, no requests anywhere but this
// origin. The page's modules, by concern:
//   api.js     the API client (api(), ApiError)          format.js  numbers and times
//   card.js    stream cards and the ``cards`` registry   chart.js   a card's count chart
//   webrtc.js  a card's WebRTC link (view or publish)    forms.js   add camera, my camera, upload
//   dom.js     element and banner helpers               zones.js   zone editor and alerts
//   onscreen.js  pause hidden cards, narrow the feed      range.js   time range picker
//   editor.js  frame <-> CSS pixels, zoom, editor base   marks.js   head marks with undo
//   history.js, gathering.js, edit.js, rules.js, floor.js, calibrate.js: the history,
//   gathering map, stream edit, alert rule, floor and model calibration views (feature
//   modules like zones.js)
// A feature module imports what it needs from these and follows the document events
// "crowdcount:card-added", "crowdcount:card-updated", "crowdcount:card-removed"
// ({detail: {card}}) and
// "crowdcount:feed" ({detail: item}, every live-feed item, alerts included); index.html
// loads it with its own <script type="module">.

import { api } from "./api.js";
import { Card, cards, removedIds, showStream, updateEmpty } from "./card.js";
import { CountChart } from "./chart.js";
import { bannerIsSticky, showBanner } from "./dom.js";
import { formatCount } from "./format.js";
import { setupAddForm, setupCameraButton, setupUpload } from "./forms.js";
import { onScreenIds, pageVisible } from "./onscreen.js";

const POLL_MS = 2000;

// --------------------------------------------------------------------------------- polling

let pollFailures = 0;
async function poll() {
  try {
    const data = await api("/api/streams");
    pollFailures = 0;
    if (!bannerIsSticky()) showBanner("");
    const seen = new Set();
    for (const stream of data.streams || []) {
      seen.add(stream.id);
      const card = cards.get(stream.id);
      if (card) card.update(stream);
      else if (!removedIds.has(stream.id)) showStream(stream);
    }
    for (const id of removedIds) if (!seen.has(id)) removedIds.delete(id);
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
let feedIds = null; // the streams the open feed carries (a comma-joined list)
function openFeed() {
  // Only the streams this tab shows (alerts always come): a wall of cameras in a
  // background tab, or scrolled away, costs the server no pushes. Reopened when that set
  // changes (onscreen.js); closed while the tab is hidden.
  const ids = onScreenIds().join(",");
  if (feed && ids === feedIds && pageVisible()) return;
  if (feed) feed.close();
  feed = null;
  feedIds = ids;
  if (!pageVisible()) return;
  // No token in this URL: EventSource cannot send headers, and the server's session cookie
  // (set when the page was opened with ?token=) authorises it like every other request.
  feed = new EventSource(`/api/feed?streams=${encodeURIComponent(ids).replaceAll("%2C", ",")}`);
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
    const card = cards.get(item.stream ?? item.stream_id);
    if (card) card.onFeed(item);
  };
  // EventSource reconnects by itself; nothing to do on error.
}
document.addEventListener("crowdcount:onscreen-changed", openFeed);

// ----------------------------------------------------------------------------------- start

window.addEventListener("pagehide", () => {
  for (const card of cards.values()) card.unload();
  if (feed) feed.close();
});

setupAddForm();
setupCameraButton();
setupUpload();
updateEmpty();
openFeed();
poll();

// For tests and the browser console: the live cards, and the chart/count state inside them.
window.crowdcount = { cards, api, formatCount, Card, CountChart };
