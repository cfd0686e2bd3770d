// Number and time formatting shared by the cards, the chart, zones and uploads.

export function formatCount(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return value >= 100 ? Math.round(value).toString() : value.toFixed(1);
}

// API times are Unix seconds; accept numeric strings, ISO dates and milliseconds too.
export function toSeconds(t) {
  if (typeof t === "string") {
    const n = Number(t);
    if (Number.isFinite(n)) t = n;
    else return Date.parse(t) / 1000;
  }
  return t > 1e12 ? t / 1000 : t; // milliseconds → seconds
}

// "-45s", "-2.5m": how long ago, for axis labels.
export function ago(seconds) {
  const s = Math.round(seconds);
  if (s < 90) return `-${s}s`;
  const m = s / 60;
  return `-${Number.isInteger(m) ? m : m.toFixed(1)}m`;
}

// The smallest 1, 2, 2.5, 5 × 10^k at or above ``value``: a round axis maximum.
export function niceCeil(value) {
  if (value <= 0) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * exp) return m * exp;
  return 10 * exp;
}
