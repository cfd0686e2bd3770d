// Light on the machine: a card whose video nobody can see (scrolled off screen, or the tab
// hidden) hangs up its WebRTC view, and the live feed carries only the streams in sight
// (app.js reopens it on "crowdcount:onscreen-changed"). Both resume by themselves when the
// card or the tab comes back. IntersectionObserver tells which cards are in the viewport;
// the Page Visibility API tells whether the tab is shown at all.

import { cards } from "./card.js";

const inView = new Set(); // ids of cards intersecting the viewport

export function pageVisible() {
  return document.visibilityState !== "hidden";
}

// The streams this tab shows now (none while it is hidden).
export function onScreenIds() {
  return pageVisible() ? [...inView].filter((id) => cards.has(id)).sort() : [];
}

let notifyTimer = null;
function changed() {
  clearTimeout(notifyTimer);
  notifyTimer = setTimeout(() => {
    document.dispatchEvent(new CustomEvent("crowdcount:onscreen-changed",
                                           { detail: { ids: onScreenIds() } }));
  }, 150);
}

function apply(card) {
  if (pageVisible() && inView.has(card.id)) card.resumeView();
  else card.pauseView();
}

const observer = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const card = [...cards.values()].find((c) => c.el === entry.target);
    if (!card) continue;
    if (entry.isIntersecting) inView.add(card.id);
    else inView.delete(card.id);
    card.el.dataset.onscreen = String(entry.isIntersecting);
    apply(card);
  }
  changed();
});

document.addEventListener("crowdcount:card-added", (event) => {
  observer.observe(event.detail.card.el);
});
document.addEventListener("crowdcount:card-removed", (event) => {
  observer.unobserve(event.detail.card.el);
  inView.delete(event.detail.card.id);
  changed();
});
document.addEventListener("visibilitychange", () => {
  for (const card of cards.values()) apply(card);
  changed();
});
