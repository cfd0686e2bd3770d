// Small DOM helpers shared by the page's modules.

// document.createElement with attributes (``testid`` becomes data-testid) and text.
export function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "testid") node.dataset.testid = value;
    else node.setAttribute(key, value);
  }
  if (text) node.textContent = text;
  return node;
}

const banner = document.querySelector('[data-testid="banner"]');
let bannerTimer = null;

// One line at the top of the page (server unreachable, a failed removal, ...); it clears
// itself after 8 s, or at once with an empty text.
export function showBanner(text) {
  banner.textContent = text || "";
  banner.hidden = !text;
  clearTimeout(bannerTimer);
  if (text) bannerTimer = setTimeout(() => showBanner(""), 8000);
}

export function bannerIsSticky() {
  return Boolean(banner.dataset.sticky);
}
