// The API client: every request the page makes goes through api(), same origin only.
// With a token the server answers /?token=… with a session cookie and a redirect to /, so
// requests are normally authorised by that cookie; a token still in the address (a server
// that does not redirect) is also sent as a bearer header.

const token = new URLSearchParams(location.search).get("token");

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// fetch() with JSON in (options.json) and out; a non-2xx answer throws ApiError with the
// server's {"error": ...} message and the HTTP status; 204 gives null.
export async function api(path, options = {}) {
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

// The path of stream ``id``'s sub-resource (``""``, ``"zones"``, ``"counts"``, ...).
export function streamPath(id, rest = "") {
  const base = `/api/streams/${encodeURIComponent(id)}`;
  return rest ? `${base}/${rest}` : base;
}
