// The alert rule editor: thresholds with hysteresis (raise over "above" for "for" seconds,
// clear under "below"), created, edited and deleted through /api/alerts/rules. Rules from the
// config file are listed read-only. A feature module: it renders into the rules panel of
// index.html and refreshes when alerts come and go on the live feed.

import { api, streamPath } from "./api.js";
import { cards } from "./card.js";
import { el } from "./dom.js";

const RULES = "/api/alerts/rules";
const panel = document.querySelector('[data-testid="rules-panel"]');
const list = panel.querySelector('[data-testid="rule-list"]');
const empty = panel.querySelector('[data-testid="rules-empty"]');
const form = panel.querySelector('[data-testid="rule-form"]');
const error = panel.querySelector('[data-testid="rule-error"]');
const submit = form.querySelector('[data-testid="rule-save"]');
const cancel = form.querySelector('[data-testid="rule-cancel"]');
const streamSelect = form.elements.stream;
const zoneSelect = form.elements.zone;

let editing = null; // the name of the rule being edited, or null when adding

function describe(rule) {
  const where = rule.zone ? `${rule.stream} / zone ${rule.zone}` : `${rule.stream} (total)`;
  const hold = rule.for_seconds ? ` for ${rule.for_seconds} s` : "";
  const what = { density: " people/m²", level: " (level, A=1…F=6)" }[rule.metric] || "";
  return `${where}: over ${rule.above}${what}${hold}, clears under ${rule.below}`;
}

async function refresh() {
  let rules = [];
  try {
    rules = (await api(RULES)).rules || [];
  } catch (err) {
    showError(`Could not load the alert rules: ${err.message}`);
    return;
  }
  list.replaceChildren();
  for (const rule of rules) {
    const li = el("li", { class: "rule", testid: "rule-row" });
    li.dataset.name = rule.name;
    li.dataset.active = String(rule.active);
    li.dataset.origin = rule.origin;
    const text = el("span", { class: "rule-text" });
    text.append(el("strong", {}, rule.name), document.createTextNode(` — ${describe(rule)}`));
    li.append(text);
    if (rule.active) li.append(el("span", { class: "badge", "data-state": "failed" }, "alert"));
    if (rule.origin === "config") {
      li.append(el("span", { class: "muted" }, "from the config file"));
    } else {
      const edit = el("button", { type: "button", testid: "rule-edit" }, "Edit");
      edit.setAttribute("aria-label", `Edit rule ${rule.name}`);
      edit.addEventListener("click", () => startEdit(rule));
      const del = el("button", { type: "button", testid: "rule-delete" }, "Delete");
      del.setAttribute("aria-label", `Delete rule ${rule.name}`);
      del.addEventListener("click", () => remove(rule.name));
      li.append(edit, del);
    }
    list.append(li);
  }
  empty.hidden = rules.length > 0;
}

function showError(text) {
  error.textContent = text || "";
  error.hidden = !text;
}

function fillStreams(selected) {
  const ids = [...cards.keys()].sort();
  if (selected && !ids.includes(selected)) ids.unshift(selected);
  streamSelect.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
  if (selected) streamSelect.value = selected;
}

async function fillZones(selected) {
  const options = [el("option", { value: "" }, "Total (whole picture)")];
  const id = streamSelect.value;
  const card = cards.get(id);
  if (id && !(card?.local && !card.peerId)) {
    try {
      const data = await api(streamPath(id, "zones"));
      for (const z of data.zones || []) options.push(el("option", { value: z.name }, z.name));
    } catch {
      // a stream that is not live: only the total, or the zone the rule already names
    }
  }
  if (selected && !options.some((o) => o.value === selected)) {
    options.push(el("option", { value: selected }, selected));
  }
  zoneSelect.replaceChildren(...options);
  zoneSelect.value = selected || "";
}

function startEdit(rule) {
  editing = rule.name;
  form.elements.name.value = rule.name;
  form.elements.name.readOnly = true;
  fillStreams(rule.stream);
  fillZones(rule.zone);
  form.elements.above.value = rule.above;
  form.elements.below.value = rule.below;
  form.elements.for_seconds.value = rule.for_seconds;
  form.elements.metric.value = rule.metric || "count";
  submit.textContent = "Save changes";
  cancel.hidden = false;
  panel.dataset.editing = rule.name;
  form.elements.above.focus();
}

function resetForm() {
  editing = null;
  form.reset();
  form.elements.name.readOnly = false;
  submit.textContent = "Add rule";
  cancel.hidden = true;
  delete panel.dataset.editing;
  fillStreams(streamSelect.value);
  fillZones("");
}

async function remove(name) {
  showError("");
  try {
    await api(`${RULES}/${encodeURIComponent(name)}`, { method: "DELETE" });
  } catch (err) {
    showError(err.message);
  }
  if (editing === name) resetForm();
  await refresh();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const number = (key) => {
    const v = form.elements[key].value.trim();
    return v === "" ? undefined : Number(v);
  };
  const body = {
    name: form.elements.name.value.trim(),
    stream: streamSelect.value,
    zone: zoneSelect.value || null,
    above: number("above"),
    below: number("below"),
    for_seconds: number("for_seconds") ?? 0,
    metric: form.elements.metric.value || "count",
  };
  if (!body.name || !body.stream || body.above === undefined || body.below === undefined) {
    showError("Give the rule a name, a stream, and both levels.");
    return;
  }
  submit.disabled = true;
  try {
    if (editing) {
      await api(`${RULES}/${encodeURIComponent(editing)}`, { method: "PUT", json: body });
    } else {
      await api(RULES, { method: "POST", json: body });
    }
    resetForm();
    await refresh();
  } catch (err) {
    showError(err.message);
  } finally {
    submit.disabled = false;
  }
});
cancel.addEventListener("click", resetForm);
streamSelect.addEventListener("change", () => fillZones(""));
streamSelect.addEventListener("focus", () => fillStreams(streamSelect.value));

document.addEventListener("crowdcount:card-added", () => {
  if (!editing) fillStreams(streamSelect.value || null);
});
// Zones are asked for when they are needed (not for every card that appears: a browser
// camera's stream does not exist until its offer is answered).
zoneSelect.addEventListener("focus", () => fillZones(zoneSelect.value));
document.addEventListener("crowdcount:feed", (event) => {
  if (event.detail?.type === "alert") refresh();
});

resetForm();
refresh();
