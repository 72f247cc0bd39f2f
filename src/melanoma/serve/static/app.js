// Melanoma triage UI: a plain client of the public /v1 API (no framework, no external assets).
"use strict";

const state = { model: null, token: sessionStorage.getItem("melanoma-token") || "" };
const main = () => document.getElementById("main");

// ---------------------------------------------------------------------------------------------- helpers
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "style") el.style.cssText = value;  // CSSOM: allowed by the no-inline-style content policy
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
const NO_PREVIEW = "This browser cannot show this image format (HEIC or TIFF); the result is for the image as uploaded.";
const pct = (p, digits = 1) => (p === null || p === undefined ? "–" : `${(100 * p).toFixed(digits)}%`);
const when = (iso) => new Date(iso).toLocaleString([], { day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit" });

async function askToken() {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  input.value = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  state.token = input.value.trim();
  sessionStorage.setItem("melanoma-token", state.token);
}

async function api(path, options = {}, asBlob = false) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const headers = { ...(options.headers || {}) };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) { await askToken(); continue; }
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail
          : (body.detail || []).map((d) => `${(d.loc || []).slice(-1)}: ${d.msg}`).join("; ");
      } catch (_) { /* not JSON */ }
      throw new Error(detail);
    }
    return asBlob ? response.blob() : response.json();
  }
  throw new Error("not authorised");
}

function bars(probabilities, melanomaClass, top = 4) {
  const rows = Object.entries(probabilities).sort((a, b) => b[1] - a[1]).slice(0, top);
  return h("ul", { class: "bars", "aria-label": "Most likely classes" }, rows.map(([name, p]) =>
    h("li", { class: name === melanomaClass ? "mel" : "" },
      h("span", {}, name),
      h("span", { class: "track", role: "presentation" }, h("span", { class: "fill", style: `width:${(100 * p).toFixed(1)}%` })),
      h("span", { class: "pct" }, pct(p)))));
}

// The API's `warning`: why this result is less reliable without being referred (e.g. a low-resolution image).
function qualityNote(r) {
  return r.warning ? h("div", { class: "quality", role: "note" }, h("strong", {}, "Image quality: "), r.warning) : null;
}

function alertBadge(record) {
  return record.melanoma_alert
    ? h("span", { class: "badge alert" }, "Melanoma alert")
    : h("span", { class: "badge ok" }, "No alert");
}

// ---------------------------------------------------------------------------------------------- upload
function renderUpload() {
  const input = h("input", { type: "file", id: "files", accept: "image/*", multiple: true, class: "visually-hidden", tabindex: "-1" });
  const chosen = h("p", { class: "chosen", "aria-live": "polite" }, "No images chosen");
  const status = h("div", { class: "status", role: "status", "aria-live": "polite" });
  const cards = h("section", { class: "cards", "aria-label": "Results" });
  let files = [];
  const setFiles = (list) => {
    files = Array.from(list).filter((f) => f.type.startsWith("image/") || /\.(jpe?g|png|bmp|tiff?|gif|webp|heic|heif)$/i.test(f.name));
    chosen.textContent = files.length ? `${files.length} image${files.length > 1 ? "s" : ""}: ${files.map((f) => f.name).join(", ")}` : "No images chosen";
    analyse.disabled = !files.length;
  };
  input.addEventListener("change", () => setFiles(input.files));
  const zone = h("div", {
    class: "dropzone", tabindex: "0", role: "button", "aria-describedby": "drop-help",
    onclick: () => input.click(),
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } },
    ondragover: (e) => { e.preventDefault(); zone.classList.add("over"); },
    ondragleave: () => zone.classList.remove("over"),
    ondrop: (e) => { e.preventDefault(); zone.classList.remove("over"); setFiles(e.dataTransfer.files); },
  }, h("strong", {}, "Drop dermoscopic images here or choose files"),
     h("span", { id: "drop-help" }, "JPEG, PNG, BMP, TIFF, GIF, WebP or HEIC · up to 20 MB each · press Enter to browse"));
  const caseRef = h("input", { type: "text", id: "case-ref", maxlength: "200", autocomplete: "off", placeholder: "e.g. clinic case number" });
  const analyse = h("button", { class: "primary", type: "submit", disabled: true }, "Analyse images");
  const form = h("form", { class: "panel", onsubmit: async (e) => {
    e.preventDefault();
    if (!files.length) return;
    const body = new FormData();
    files.forEach((f) => body.append("files", f, f.name));
    if (caseRef.value.trim()) body.append("case_ref", caseRef.value.trim());
    analyse.disabled = true;
    status.className = "status";
    status.textContent = `Analysing ${files.length} image${files.length > 1 ? "s" : ""}…`;
    try {
      const result = await api("v1/predict", { method: "POST", body });
      cards.replaceChildren(...result.results.map((r) => resultCard(r, files[r.file_index])));
      const alerts = result.results.filter((r) => r.melanoma_alert).length;
      status.textContent = `${result.results.length} analysed, ${alerts} melanoma alert${alerts === 1 ? "" : "s"}. Recorded in the audit trail.`;
    } catch (err) {
      status.className = "status error";
      status.textContent = `Not analysed: ${err.message}`;
    } finally {
      analyse.disabled = !files.length;
    }
  } }, h("h2", {}, "New images"), zone, input, chosen,
    h("div", { class: "row" }, h("div", { class: "field" }, h("label", { for: "case-ref" }, "Case reference (optional)"), caseRef),
      h("div", {}, analyse)));
  main().replaceChildren(h("h1", {}, "Upload"),
    h("p", { class: "lead" }, "Each image gets the model's class probabilities, a melanoma alert and a referral flag."),
    form, status, cards);
}

function resultCard(r, file) {
  const mel = state.model ? state.model.melanoma_class : "melanoma";
  const original = file ? URL.createObjectURL(file) : "";
  const caption = h("span", { class: "caption" }, "Image");
  // Most browsers cannot draw HEIC or TIFF: say so instead of a broken picture (the heatmap is a PNG from the server)
  const img = h("img", { src: original, alt: `Uploaded image ${r.filename || r.record_id}`, onerror: () => {
    img.hidden = true;
    caption.textContent = NO_PREVIEW;
  }, onload: () => { img.hidden = false; } });
  let heatmapUrl = null;
  const toggle = h("button", { type: "button", "aria-pressed": "false", onclick: async () => {
    const on = toggle.getAttribute("aria-pressed") !== "true";
    if (on && !heatmapUrl) {
      toggle.disabled = true;
      toggle.textContent = "Computing heatmap…";
      try {
        const body = new FormData();
        body.append("file", file, file.name);
        heatmapUrl = URL.createObjectURL(await api("v1/explain?target=melanoma", { method: "POST", body }, true));
      } catch (err) {
        toggle.textContent = "Heatmap unavailable";
        toggle.title = err.message;
        return;
      } finally { toggle.disabled = false; }
    }
    toggle.setAttribute("aria-pressed", String(on));
    toggle.textContent = on ? "Hide heatmap" : "Show heatmap";
    img.src = on ? heatmapUrl : original;
    caption.textContent = on ? "Grad-CAM: where the model looked for melanoma" : "Image";
  } }, "Show heatmap");
  return h("article", { class: `card ${r.melanoma_alert ? "is-alert" : "no-alert"}`, "aria-label": `Result for ${r.filename || "image"}` },
    h("div", { class: "media" }, img, caption),
    h("div", { class: "body" },
      h("div", { class: "head" },
        h("div", {}, h("div", { class: "file" }, r.filename || `image ${r.file_index + 1}`),
          h("h2", {}, `Most likely: ${r.prediction}`)),
        alertBadge(r)),
      h("div", { class: `melprob ${r.melanoma_alert ? "alert" : ""}` },
        h("span", { class: "value" }, pct(r.melanoma_probability)),
        h("span", { class: "label" }, `melanoma probability · alert at ≥ ${pct(r.alert_threshold)}`)),
      r.refer ? h("div", { class: "referral" }, h("strong", {}, "Refer: "), r.refer_reason || "the model is unsure")
              : h("div", { class: "note" }, "No referral flag: the image looks like the training images and the model is confident."),
      qualityNote(r),
      bars(r.probabilities, mel),
      h("div", { class: "foot" }, toggle, h("a", { href: `#/case/${r.record_id}` }, `Open case #${r.record_id}`)),
      h("div", { class: "note" }, "Decision support, not a diagnosis.")));
}

// ---------------------------------------------------------------------------------------------- worklist
const worklistFilters = { status: "false", alertsOnly: false, caseRef: "", offset: 0 };
const PAGE = 50;

async function renderWorklist() {
  const status = h("select", { id: "status" },
    [["false", "To review"], ["true", "Reviewed"], ["", "All"]].map(([v, t]) => h("option", { value: v, selected: worklistFilters.status === v }, t)));
  const alertsOnly = h("input", { type: "checkbox", id: "alerts-only", checked: worklistFilters.alertsOnly });
  const caseRef = h("input", { type: "text", id: "case-filter", value: worklistFilters.caseRef, placeholder: "contains…" });
  const apply = () => {
    Object.assign(worklistFilters, { status: status.value, alertsOnly: alertsOnly.checked, caseRef: caseRef.value.trim(), offset: 0 });
    renderWorklist();
  };
  status.addEventListener("change", apply);
  alertsOnly.addEventListener("change", apply);
  const filters = h("form", { class: "panel filters", onsubmit: (e) => { e.preventDefault(); apply(); }, "aria-label": "Filter the worklist" },
    h("div", { class: "field" }, h("label", { for: "status" }, "Status"), status),
    h("div", { class: "field" }, h("label", { for: "case-filter" }, "Case reference"), caseRef),
    h("label", { class: "check", for: "alerts-only" }, alertsOnly, "Alerts only"),
    h("button", { type: "submit" }, "Apply"));
  const params = new URLSearchParams({ order: "priority", limit: PAGE, offset: worklistFilters.offset });
  if (worklistFilters.status) params.set("reviewed", worklistFilters.status);
  if (worklistFilters.alertsOnly) params.set("alert", "true");
  if (worklistFilters.caseRef) params.set("case", worklistFilters.caseRef);
  const body = h("div", { class: "table-wrap" }, h("div", { class: "empty" }, "Loading…"));
  main().replaceChildren(h("h1", {}, "Worklist"),
    h("p", { class: "lead" }, "Melanoma alerts first, then by melanoma probability. Open a case to review it."), filters, body);
  try {
    const data = await api(`v1/audit?${params}`);
    body.replaceChildren(worklistTable(data.records));
    const first = data.total ? data.offset + 1 : 0;
    const last = data.offset + data.records.length;
    const pager = h("div", { class: "pager" }, h("span", {}, `${first}–${last} of ${data.total} cases`),
      h("span", { class: "actions" },
        h("button", { type: "button", disabled: data.offset === 0, onclick: () => { worklistFilters.offset = Math.max(0, data.offset - PAGE); renderWorklist(); } }, "Previous"),
        h("button", { type: "button", disabled: last >= data.total, onclick: () => { worklistFilters.offset = data.offset + PAGE; renderWorklist(); } }, "Next")));
    body.after(pager);
  } catch (err) {
    body.replaceChildren(h("div", { class: "empty status error" }, `Cannot load the worklist: ${err.message}`));
  }
}

function worklistTable(records) {
  if (!records.length) return h("div", { class: "empty" }, "No cases match these filters.");
  const open = (id) => { location.hash = `#/case/${id}`; };
  return h("table", {},
    h("thead", {}, h("tr", {}, ["Priority", "Case", "Melanoma probability", "Most likely", "Referral", "Received", "Review"]
      .map((t, i) => h("th", { scope: "col", class: i === 5 ? "hide-narrow" : "" }, t)))),
    h("tbody", {}, records.map((r) => h("tr", { class: r.melanoma_alert ? "alert-row" : "", onclick: () => open(r.record_id) },
      h("td", {}, alertBadge(r)),
      h("td", { class: "case-cell" }, h("a", { href: `#/case/${r.record_id}` }, `#${r.record_id}`), r.case_ref ? ` · ${r.case_ref}` : ""),
      h("td", { class: "num" }, pct(r.melanoma_probability),
        h("span", { class: "minibar", "aria-hidden": "true" }, h("span", { style: `width:${(100 * (r.melanoma_probability || 0)).toFixed(1)}%` }))),
      h("td", {}, r.prediction),
      h("td", {}, r.refer ? h("span", { class: "badge refer", title: r.refer_reason }, "Refer") : "–"),
      h("td", { class: "hide-narrow when" }, when(r.created_at)),
      h("td", {}, r.review ? h("span", { class: "badge muted" }, `${r.review.decision}${r.review.final_diagnosis ? " · " + r.review.final_diagnosis : ""}`) : "Pending")))));
}

// ---------------------------------------------------------------------------------------------- case
async function renderCase(id) {
  main().replaceChildren(h("p", {}, "Loading case…"));
  let r;
  try { r = await api(`v1/cases/${encodeURIComponent(id)}`); } catch (err) {
    main().replaceChildren(h("h1", {}, `Case #${id}`), h("p", { class: "status error" }, err.message));
    return;
  }
  const mel = state.model ? state.model.melanoma_class : "melanoma";
  const classes = state.model ? state.model.class_names : Object.keys(r.probabilities);
  const imageBox = h("div", { class: "image" }, r.image_kept ? "Loading image…" : "Image not kept on the server (start it with --keep-images to keep images).");
  if (r.image_kept) {
    api(`v1/cases/${r.record_id}/image`, {}, true).then((blob) => imageBox.replaceChildren(h("img", { src: URL.createObjectURL(blob), alt: `Image of case ${r.record_id}`,
      onerror: () => { imageBox.textContent = NO_PREVIEW; } })))
      .catch((err) => { imageBox.textContent = err.message; });
  }
  let decision = r.review ? r.review.decision : "";
  const decisionButtons = ["agree", "disagree"].map((d) => h("button", { type: "button", "aria-pressed": String(decision === d), onclick: () => {
    decision = d;
    decisionButtons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.value === d)));
  }, "data-value": d }, d === "agree" ? "Agree with the result" : "Disagree"));
  const diagnosis = h("select", { id: "final-diagnosis" }, h("option", { value: "" }, "Not known yet"),
    [...classes, "other"].map((c) => h("option", { value: c, selected: r.review && r.review.final_diagnosis === c }, c)));
  const reviewer = h("input", { type: "text", id: "reviewer", maxlength: "200", autocomplete: "name" });
  const note = h("textarea", { id: "note", maxlength: "2000" });
  const saved = h("div", { class: "status", role: "status", "aria-live": "polite" });
  const form = h("form", { class: "panel", "aria-label": "Review", onsubmit: async (e) => {
    e.preventDefault();
    if (!decision) { saved.className = "status error"; saved.textContent = "Choose agree or disagree first."; return; }
    try {
      await api(`v1/cases/${r.record_id}/review`, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ decision, final_diagnosis: diagnosis.value || null, reviewer: reviewer.value || null, note: note.value || null }) });
      saved.className = "status";
      saved.textContent = "Review saved.";
      setTimeout(() => renderCase(id), 600);
    } catch (err) { saved.className = "status error"; saved.textContent = `Not saved: ${err.message}`; }
  } }, h("h2", {}, "Dermatologist review"),
    h("div", { class: "decision", role: "group", "aria-label": "Decision" }, decisionButtons),
    h("div", { class: "row", style: "margin-top:.8rem" },
      h("div", { class: "field" }, h("label", { for: "final-diagnosis" }, "Final diagnosis"), diagnosis),
      h("div", { class: "field" }, h("label", { for: "reviewer" }, "Reviewer (optional)"), reviewer)),
    h("div", { style: "margin-top:.8rem" }, h("label", { for: "note" }, "Note (optional)"), note),
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Save review"),
      h("a", { href: "#/worklist", class: "back" }, "Back to the worklist")), saved);
  main().replaceChildren(
    h("h1", {}, `Case #${r.record_id}`, r.case_ref ? ` · ${r.case_ref}` : ""),
    h("p", { class: "lead" }, `Received ${when(r.created_at)} · model ${r.model.name} ${r.model.version}`),
    h("div", { class: "case" }, imageBox,
      h("div", { class: "panel" },
        h("div", { class: "head", style: "display:flex;justify-content:space-between;gap:.5rem" }, h("h2", {}, `Most likely: ${r.prediction}`), alertBadge(r)),
        h("div", { class: `melprob ${r.melanoma_alert ? "alert" : ""}` }, h("span", { class: "value" }, pct(r.melanoma_probability)),
          h("span", { class: "label" }, `melanoma probability · alert at ≥ ${pct(r.alert_threshold)}`)),
        r.refer ? h("div", { class: "referral", style: "margin:.6rem 0" }, h("strong", {}, "Refer: "), r.refer_reason) : null,
        qualityNote(r),
        bars(r.probabilities, mel, 9),
        h("dl", { class: "facts", style: "margin-top:.8rem" },
          h("dt", {}, "Image SHA-256"), h("dd", {}, h("code", {}, r.image_sha256.slice(0, 16) + "…")),
          h("dt", {}, "Patient reference"), h("dd", {}, r.patient_ref || "–"),
          h("dt", {}, "Backend"), h("dd", {}, r.backend)))),
    form,
    r.reviews.length ? h("section", { class: "panel" }, h("h2", {}, "Review history"),
      h("ul", { class: "history" }, r.reviews.map((v) => h("li", {}, `${when(v.created_at)} · ${v.decision}`,
        v.final_diagnosis ? ` · ${v.final_diagnosis}` : "", v.reviewer ? ` · ${v.reviewer}` : "", v.note ? ` — ${v.note}` : "")))) : null,
    h("p", { class: "note" }, "Decision support, not a diagnosis."));
}

// ---------------------------------------------------------------------------------------------- calibration
async function renderCalibration() {
  const target = h("input", { type: "number", id: "target", min: "0.5", max: "1", step: "0.01", value: "0.90" });
  const out = h("div", { "aria-live": "polite" });
  const compute = async () => {
    out.replaceChildren(h("p", {}, "Computing…"));
    try { out.replaceChildren(calibrationResult(await api(`v1/calibration?target_sensitivity=${encodeURIComponent(target.value)}`), target.value)); }
    catch (err) { out.replaceChildren(h("p", { class: "status error" }, err.message)); }
  };
  const monitor = h("section", { class: "panel", id: "monitor", "aria-live": "polite" }, h("p", {}, "Loading the site monitor…"));
  const loadMonitor = (prevalence) => api(prevalence ? `v1/monitor?prevalence=${encodeURIComponent(prevalence)}` : "v1/monitor")
    .then((data) => monitor.replaceChildren(...monitorResult(data, loadMonitor)))
    .catch((err) => monitor.replaceChildren(h("p", { class: "status error" }, err.message)));
  loadMonitor();
  main().replaceChildren(h("h1", {}, "Site calibration"), monitor,
    h("p", { class: "lead" }, "A threshold chosen on the training source does not keep its sensitivity at a new clinic. ",
      "From your reviewed cases with a final diagnosis, see how the current alert performs here and which threshold ",
      "would reach your target sensitivity (the same code as ", h("code", {}, "melanoma threshold --predictions"), ")."),
    h("form", { class: "panel row", onsubmit: (e) => { e.preventDefault(); compute(); } },
      h("div", { class: "field" }, h("label", { for: "target" }, "Target melanoma sensitivity"), target),
      h("div", {}, h("button", { class: "primary", type: "submit" }, "Compute"))), out);
  compute();
}

const STATUS_BADGE = { ok: "ok", check: "alert", "too few": "muted", unknown: "muted" };

function monitorResult(data, reload) {
  const span = (share) => `${pct(share.share, 0)} (${pct(share.interval[0], 0)}–${pct(share.interval[1], 0)})`;
  const out = [h("h2", {}, "This site's alert, no diagnoses needed ", h("span", { class: `badge ${STATUS_BADGE[data.status] || "muted"}` }, data.status))];
  if (data.status === "too few") {
    out.push(h("p", { class: "note" }, `${data.images} image(s) predicted by this model so far; the monitor speaks from ${data.min_images}.`));
    return out;
  }
  const a = data.alerted;
  if (a) {
    out.push(h("p", {}, `Alerted: ${span(a)} of the last ${data.images} images`,
      a.expected ? ` · on the validation images ${pct(a.expected[0], 0)}–${pct(a.expected[1], 0)} at a melanoma prevalence up to ${pct(data.max_prevalence, 0)}` : ""));
  }
  if (data.referred) out.push(h("p", {}, `Referred: ${span(data.referred)} · less detail than the training images: ${span(data.warned)}`));
  data.findings.forEach((f) => out.push(h("p", { class: "callout warn" }, f)));
  if (data.proposed) out.push(adaptedThreshold(data, reload));
  return out;
}

function adaptedThreshold(data, reload) {
  const p = data.proposed;
  const prevalence = h("input", { type: "number", id: "prevalence", min: "0.01", max: "0.5", step: "0.01", value: String(p.prevalence) });
  return h("div", { class: "adapt" }, h("h3", {}, "Threshold adapted to this site, without diagnoses"),
    h("p", {}, `At a melanoma prevalence of ${pct(p.prevalence, 0)} the validation images predict ${pct(p.target_share, 0)} of these images alerted: `,
      `a threshold of ${pct(p.threshold, 2)} (now ${pct(data.model.alert_threshold, 2)}) alerts ${pct(p.alerted_at_threshold, 0)} of them. `,
      "It keeps the validation operating point only if this site's images are ranked as the validation images were, and only at the stated prevalence."),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); reload(Number(prevalence.value)); } },
      h("div", { class: "field" }, h("label", { for: "prevalence" }, "This site's melanoma prevalence"), prevalence),
      h("div", {}, h("button", { type: "submit" }, "Recompute"))),
    ...copyWriter("confirm-share", "I have checked the prevalence and want a copy of the model with this threshold",
      "Write adapted copy", "v1/monitor/apply", { prevalence: p.prevalence, last: data.last }, "Adapted copy"));
}

// A confirmation box and a button that POSTs `body` (confirmed) to `endpoint`, which writes a NEW model folder.
function copyWriter(id, consent, buttonText, endpoint, body, what) {
  const confirm = h("input", { type: "checkbox", id });
  const result = h("div", { "aria-live": "polite" });
  const button = h("button", { class: "danger", type: "button", disabled: true, onclick: async () => {
    button.disabled = true;
    try {
      const r = await api(endpoint, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...body, confirm: true }) });
      result.replaceChildren(h("p", { class: "callout" }, `${what} written to `, h("code", {}, r.model_folder),
        ` (alert threshold ${pct(r.new, 2)}). The running service is unchanged: restart it with `, h("code", {}, `--model ${r.model_folder}`), " to use it."));
    } catch (err) { result.replaceChildren(h("p", { class: "status error" }, err.message)); button.disabled = false; }
  } }, buttonText);
  confirm.addEventListener("change", () => { button.disabled = !confirm.checked; });
  return [h("label", { class: "check", for: id, style: "margin-top:.7rem" }, confirm, consent),
    h("div", { class: "actions" }, button), result];
}

function metric(title, threshold, point) {
  return h("div", { class: "metric" }, h("h3", {}, title), h("div", { class: "big" }, `≥ ${pct(threshold, 2)}`),
    h("p", {}, `Sensitivity ${pct(point.sensitivity)}`), h("p", {}, `Specificity ${pct(point.specificity)}`));
}

function calibrationResult(data, target) {
  const c = data.current;
  const panel = h("section", { class: "panel" }, h("h2", {}, `${data.reviewed_cases} reviewed cases with a final diagnosis`),
    h("p", { class: "note" }, `${c.n_melanoma} melanoma, ${c.n_other} other · model ${data.model.name} ${data.model.version}`));
  const cards = h("div", { class: "metrics" }, metric("Current alert", c.threshold, c));
  if (data.proposed) cards.append(metric(`Proposed (target ${pct(Number(target), 0)})`, data.proposed.threshold, data.proposed));
  panel.append(cards);
  if (!data.proposed) {
    panel.append(h("p", { class: "callout warn", style: "margin-top:1rem" }, `No threshold proposed: ${data.reason}`));
    return panel;
  }
  panel.append(h("div", { class: "callout", style: "margin-top:1rem" },
    "Applying writes a NEW model folder with the proposed threshold; the model being served is not modified."),
    ...copyWriter("confirm", "I have checked these figures and want a calibrated copy of the model",
      "Write calibrated copy", "v1/calibration/apply", { target_sensitivity: Number(target) }, "Calibrated copy"));
  return panel;
}

// ---------------------------------------------------------------------------------------------- router
async function loadModel() {
  try {
    state.model = await api("v1/model");
    document.getElementById("model-info").textContent = `Model ${state.model.name} · ${state.model.version} · ${state.model.backend}`;
  } catch (err) { document.getElementById("model-info").textContent = `Model unavailable: ${err.message}`; }
}

function route() {
  const [, page = "upload", arg] = location.hash.split("/");
  const current = page === "case" ? "worklist" : page;
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.page === current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  const pages = { upload: renderUpload, worklist: renderWorklist, calibration: renderCalibration, case: () => renderCase(arg) };
  (pages[page] || renderUpload)();
  main().focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => { await loadModel(); route(); });
