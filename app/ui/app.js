// Cell review page: classify one sample's cell images through the service's own API, show
// them sorted by blast probability with out-of-distribution images set apart, explain any
// cell on demand (the version's heatmap from /explain), and summarise the sample. Plain JS.
"use strict";

const BATCH = 8; // images per /v1/classify request: small enough to show steady progress
const KEY_STORAGE = "leuk-api-key";
const EXPLAIN_RETRIES = 20; // explain_busy: the explanation slots are shared; wait and retry

const state = { cells: [], responses: [], model: null, version: null, digest: null };

const $ = (id) => document.getElementById(id);

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function headers() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

// Plain-language text for the API's stable error codes; the API's own detail follows it.
const MESSAGES = {
  unauthorized: "The service needs a valid API key. Enter it above and try again.",
  too_many_files: "Too many images in one request.",
  payload_too_large: "The upload is too large for the service.",
  image_too_large: "An image has too many pixels.",
  invalid_image: "A file is not a readable image.",
  truncated_image: "An image file is incomplete.",
  unsupported_media_type: "A file type is not supported (BMP, PNG, JPEG, TIFF).",
  unsupported_image_mode: "An image's colour mode is not supported.",
  not_ready: "The service is still starting; try again in a moment.",
  overloaded: "The service is busy; try again in a moment.",
  explain_busy: "All explanation slots are busy.",
  explain_unsupported: "This model version cannot produce heatmaps.",
  model_unavailable: "The model could not be loaded.",
};

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  } catch (err) {
    throw new ApiError(0, "network", "The service could not be reached.");
  }
  if (response.ok) return response.json();
  let code = "http_" + response.status;
  let detail = response.statusText;
  try {
    const body = await response.json();
    code = body.error.code;
    detail = body.error.detail;
  } catch (err) { /* not the API's error shape */ }
  throw new ApiError(response.status, code, detail);
}

function showError(err) {
  const box = $("error");
  const friendly = MESSAGES[err.code] || "The request failed.";
  box.textContent = `${friendly} (${err.code}: ${err.message})`;
  box.hidden = false;
  if (err.code === "unauthorized") {
    $("key-row").hidden = false;
    $("api-key").focus();
  }
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// Wilson score interval for k of n (z = 1.96): stays in [0, 1] and keeps its coverage for
// small samples and extreme fractions, unlike k/n +- 1.96 sqrt(p(1-p)/n).
function wilson(k, n, z = 1.959964) {
  if (n === 0) return null;
  const p = k / n;
  const denom = 1 + (z * z) / n;
  const centre = (p + (z * z) / (2 * n)) / denom;
  const half = (z / denom) * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n));
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

const pct = (x) => (100 * x).toFixed(1) + "%";

async function classifyAll(files) {
  clearError();
  state.cells = [];
  state.responses = [];
  $("gallery").replaceChildren();
  $("ood").replaceChildren();
  $("summary").hidden = $("gallery-section").hidden = $("ood-section").hidden = true;
  const images = files.filter((f) => /\.(bmp|png|jpe?g|tiff?)$/i.test(f.name) || f.type.startsWith("image/"));
  if (images.length === 0) {
    showError(new ApiError(0, "no_images", "No image files were chosen."));
    return;
  }
  $("progress-row").hidden = false;
  const bar = $("progress");
  bar.max = images.length;
  bar.value = 0;
  const text = $("progress-text");
  text.textContent = `Uploading and classifying 0 of ${images.length}`;
  const started = performance.now();
  for (let start = 0; start < images.length; start += BATCH) {
    const chunk = images.slice(start, start + BATCH);
    const form = new FormData();
    chunk.forEach((file) => form.append("files", file, file.name));
    let body;
    try {
      body = await call("/v1/classify", { method: "POST", body: form });
    } catch (err) {
      showError(err);
      text.textContent = `Stopped after ${bar.value} of ${images.length}`;
      return;
    }
    state.responses.push(body);
    state.model = body.model;
    state.version = body.version;
    body.results.forEach((result, i) => {
      state.cells.push({ file: chunk[i], result, url: URL.createObjectURL(chunk[i]), heatmap: null });
    });
    bar.value = state.cells.length;
    text.textContent = `Classified ${state.cells.length} of ${images.length}`;
  }
  try {
    const info = await call(`/v1/models/${encodeURIComponent(state.model)}/versions/${state.version}`);
    state.digest = info.digest;
    state.explainable = Boolean(info.explain);
  } catch (err) {
    state.digest = null;
  }
  render();
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  text.textContent = `Done: ${state.cells.length} cells classified in ${seconds} s`;
  document.body.dataset.complete = "true";
  document.body.dataset.seconds = seconds;
}

function render() {
  const sorted = [...state.cells].sort((a, b) => b.result.blast_probability - a.result.blast_probability);
  const inDist = sorted.filter((c) => !c.result.out_of_distribution);
  const ood = sorted.filter((c) => c.result.out_of_distribution);
  $("gallery").replaceChildren(...inDist.map(cellItem));
  $("ood").replaceChildren(...ood.map(cellItem));
  $("gallery-section").hidden = inDist.length === 0;
  $("ood-section").hidden = ood.length === 0;
  const blasts = inDist.filter((c) => c.result.label === "all").length;
  $("s-n").textContent = `${state.cells.length} (${inDist.length} in distribution)`;
  $("s-all").textContent = String(blasts);
  $("s-hem").textContent = String(inDist.length - blasts);
  $("s-ood").textContent = String(ood.length);
  const ci = wilson(blasts, inDist.length);
  $("s-fraction").textContent = ci
    ? `${pct(blasts / inDist.length)} (95% CI ${pct(ci[0])} to ${pct(ci[1])}, Wilson)`
    : "no in-distribution cells";
  $("s-model").textContent = `${state.model} version ${state.version}` +
    (state.digest ? `, digest sha256:${state.digest}` : "");
  $("summary").hidden = false;
}

function cellItem(cell) {
  const r = cell.result;
  const li = document.createElement("li");
  li.className = "cell";
  li.dataset.label = r.label;
  li.dataset.probability = r.blast_probability.toFixed(6);
  const open = document.createElement("button");
  open.type = "button";
  open.className = "cell-open";
  open.setAttribute("aria-label", `Enlarge ${cell.file.name}: ${r.label_description}, blast probability ${pct(r.blast_probability)}`);
  const img = document.createElement("img");
  img.src = cell.url;
  img.alt = "";
  open.append(img);
  open.addEventListener("click", () => openViewer(cell));
  const label = document.createElement("div");
  label.className = `label ${r.label}`;
  label.textContent = r.label === "all" ? "Blast (ALL)" : "Normal (hem)";
  const row = document.createElement("div");
  row.className = "row";
  const prob = document.createElement("span");
  prob.className = "prob";
  prob.textContent = `P(blast) ${pct(r.blast_probability)}`;
  row.append(prob);
  if (state.explainable !== false) {
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "heat-toggle";
    toggle.textContent = "Heatmap";
    toggle.setAttribute("aria-pressed", "false");
    toggle.addEventListener("click", () => toggleHeat(cell, img, toggle, note));
    row.append(toggle);
  }
  const name = document.createElement("div");
  name.className = "note";
  name.textContent = cell.file.name;
  const note = document.createElement("div");
  note.className = "note heat-note";
  li.append(open, label, row, name, note);
  if (r.out_of_distribution) {
    const reason = document.createElement("div");
    reason.className = "reason";
    reason.textContent = "Why: " + r.input_check.reasons.map(explainReason).join("; ");
    li.append(reason);
  }
  return li;
}

async function explainCell(cell) {
  if (cell.heatmap) return cell.heatmap;
  const form = new FormData();
  form.append("files", cell.file, cell.file.name);
  const path = `/v1/models/${encodeURIComponent(state.model)}/versions/${state.version}/explain`;
  for (let attempt = 0; ; attempt++) {
    try {
      const body = await call(path, { method: "POST", body: form });
      cell.heatmap = body.results[0].heatmap;
      return cell.heatmap;
    } catch (err) {
      if (err.code !== "explain_busy" || attempt >= EXPLAIN_RETRIES) throw err;
      await new Promise((resolve) => setTimeout(resolve, 300 + 200 * attempt));
    }
  }
}

function heatText(h) {
  if (h.spatial_evidence < 0.05) {
    return "Little spatial evidence for this label: the image features point the other way; " +
      "the call comes mostly from whole-cell size and colour.";
  }
  return h.heat_on_cell === null ? "" : `${pct(h.heat_on_cell)} of the heat lies on the cell.`;
}

async function toggleHeat(cell, img, button, note) {
  const showing = button.getAttribute("aria-pressed") === "true";
  if (showing) {
    img.src = cell.url;
    button.setAttribute("aria-pressed", "false");
    note.textContent = "";
    return;
  }
  button.disabled = true;
  try {
    const h = await explainCell(cell);
    img.src = "data:image/png;base64," + h.png_base64;
    button.setAttribute("aria-pressed", "true");
    note.textContent = heatText(h);
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

let viewerCell = null;

function openViewer(cell) {
  viewerCell = cell;
  const r = cell.result;
  $("viewer-title").textContent = cell.file.name;
  $("viewer-img").src = cell.url;
  $("viewer-img").alt = `Cell image ${cell.file.name}`;
  $("viewer-heat").setAttribute("aria-pressed", "false");
  $("viewer-heat").textContent = "Show heatmap";
  $("viewer-heat").hidden = state.explainable === false;
  const lines = [
    `${r.label_description}`,
    `P(blast) ${pct(r.blast_probability)} (threshold ${pct(r.threshold)})`,
    r.out_of_distribution
      ? "Out of distribution: " + r.input_check.reasons.map(explainReason).join("; ") : "",
    ...r.warnings.filter((w) => !w.startsWith("out_of_distribution")),
  ].filter(Boolean);
  $("viewer-info").replaceChildren(...lines.map((t) => Object.assign(document.createElement("p"), { textContent: t })));
  $("viewer").showModal();
}

async function toggleViewerHeat() {
  const button = $("viewer-heat");
  if (button.getAttribute("aria-pressed") === "true") {
    $("viewer-img").src = viewerCell.url;
    button.setAttribute("aria-pressed", "false");
    button.textContent = "Show heatmap";
    return;
  }
  try {
    const h = await explainCell(viewerCell);
    $("viewer-img").src = "data:image/png;base64," + h.png_base64;
    button.setAttribute("aria-pressed", "true");
    button.textContent = "Hide heatmap";
    $("viewer-info").append(Object.assign(document.createElement("p"), { textContent: heatText(h) }));
  } catch (err) {
    $("viewer").close();
    showError(err);
  }
}

// The API's reason codes in words; the code stays in brackets (it is what the CSV and the
// API carry). Unknown codes are shown as they are.
const REASONS = {
  no_black_background: "no black background: not a segmented single cell",
  no_cell_visible: "no cell visible",
  foreground_too_large: "the cell fills too much of the frame",
  too_small: "smaller than the 450x450 images the model was trained on",
  unexpected_size: "not the 450x450 size the model was trained on",
  unfamiliar_cell: "does not look like the B-lymphoid cells the model learned " +
    "(another cell type, or another laboratory's staining)",
};

function explainReason(code) {
  return REASONS[code] ? `${REASONS[code]} (${code})` : code;
}

function download(name, type, text) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// OWASP's CSV-injection rule: spreadsheets run a cell that starts with = + - @ (or a TAB or
// CR, which some strip before looking) as a formula, and file names come from the user's disk,
// so such a cell gets a leading apostrophe and is read as text.
function csvField(value) {
  let text = String(value ?? "");
  if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function resultsCsv() {
  const header = ["file", "label", "blast_probability", "threshold", "out_of_distribution",
    "ood_reasons", "ood_score", "model", "version", "digest"];
  const rows = state.cells.map((c) => [c.file.name, c.result.label, c.result.blast_probability,
    c.result.threshold, c.result.out_of_distribution, c.result.input_check.reasons.join("; "),
    c.result.ood_score, state.model, state.version, state.digest]);
  return [header, ...rows].map((row) => row.map(csvField).join(",")).join("\n") + "\n";
}

async function filesFromDrop(items) {
  // Folders arrive as directory entries; walk them (readEntries returns at most 100 a call).
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) {
      out.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (batch.length === 0) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  const entries = [...items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  for (const entry of entries) await walk(entry);
  return out;
}

function setup() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("files").click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("files").click();
    }
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = e.dataTransfer.items ? await filesFromDrop(e.dataTransfer.items) : [...e.dataTransfer.files];
    classifyAll(files.length ? files : [...e.dataTransfer.files]);
  });
  for (const id of ["files", "folder"]) {
    $(id).addEventListener("change", (e) => {
      const files = [...e.target.files].sort((a, b) => a.name.localeCompare(b.name));
      e.target.value = "";
      classifyAll(files);
    });
  }
  $("api-key").value = apiKey();
  if (apiKey()) $("key-row").hidden = false;
  $("key-save").addEventListener("click", () => {
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    clearError();
  });
  $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") $("key-save").click(); });
  $("dl-csv").addEventListener("click", () => download("cells.csv", "text/csv", resultsCsv()));
  $("dl-json").addEventListener("click", () =>
    download("cells.json", "application/json", JSON.stringify(state.responses, null, 2)));
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("viewer-heat").addEventListener("click", toggleViewerHeat);
  // The key field is shown at once when the service says it needs one.
  call("/v1/models").catch((err) => { if (err.code === "unauthorized") $("key-row").hidden = false; });
}

setup();
