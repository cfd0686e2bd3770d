// Editing a camera added through the API: its RTSP URL, frame-rate limit and input size
// (PATCH /api/streams/{id}; the server restarts it under the same id, history and zones
// kept). Config-file streams are edited in the config file and browser cameras not at all,
// so the button shows only on cards whose origin is "api" (see style.css).

import { api, streamPath } from "./api.js";
import { addCardButton, eachCard } from "./card.js";
import { el } from "./dom.js";

function attach(card) {
  if (card.local) return;
  const button = addCardButton(card, { cls: "edit-toggle", testid: "edit-toggle", text: "Edit",
                                      label: `Edit ${card.name}` });

  const form = el("form", { class: "edit-form", testid: "edit-form", hidden: "" });
  const field = (label, attrs) => {
    const wrap = el("label", { class: "field" });
    const input = el("input", attrs);
    wrap.append(el("span", {}, label), input);
    form.append(wrap);
    return input;
  };
  const url = field("Change URL", { name: "url", testid: "edit-url", autocomplete: "off",
                                      placeholder: "keep the current URL", inputmode: "url" });
  const fps = field("Frames/s limit", { name: "fps_limit", testid: "edit-fps", type: "number",
                                      min: "0.1", max: "240", step: "0.1", placeholder: "all" });
  const side = field("Size limit (px)", { name: "max_side", testid: "edit-max-side",
                                        type: "number", min: "32", max: "8192", step: "1",
                                        placeholder: "model default" });
  const save = el("button", { type: "submit", testid: "edit-save" }, "Save");
  const cancel = el("button", { type: "button", testid: "edit-cancel" }, "Cancel");
  const error = el("p", { class: "form-error", testid: "edit-error", role: "alert", hidden: "" });
  form.append(save, cancel, error);
  card.el.querySelector(".card-head").after(form);

  button.addEventListener("click", async () => {
    if (!form.hidden) {
      form.hidden = true;
      return;
    }
    error.hidden = true;
    url.value = "";
    try {
      const stream = await api(streamPath(card.id));
      fps.value = stream.options?.fps_limit ?? "";
      // An RTSP camera without a limit is counted once a second (docs/cameras.md).
      fps.placeholder = stream.kind === "rtsp" ? "1 (camera default)" : "all";
      side.value = stream.options?.max_side ?? "";
      url.placeholder = `keep ${stream.url}`;
    } catch {
      // edit with empty fields
    }
    form.hidden = false;
    fps.focus();
  });
  cancel.addEventListener("click", () => {
    form.hidden = true;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const body = {
      fps_limit: fps.value.trim() === "" ? null : Number(fps.value),
      max_side: side.value.trim() === "" ? null : Number(side.value),
    };
    if (url.value.trim()) body.url = url.value.trim();
    save.disabled = true;
    try {
      const stream = await api(streamPath(card.id), { method: "PATCH", json: body });
      form.hidden = true;
      // The server restarted the stream and closed its viewers: forget our peer (a later
      // hang-up would name a peer that is gone) and view the new one when it runs.
      card.link.drop();
      card.update(stream);
      card.el.dataset.edited = String(Date.now());
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      save.disabled = false;
    }
  });
}

eachCard(attach);
