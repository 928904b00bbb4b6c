// The search page and the duplicates view: plain JavaScript, no build step and nothing fetched from outside this
// server. State lives in the URL (?q=…, ?similar=ID, filters; ?view=duplicates&kind=…&offset=…), so a search or a
// page of duplicates can be shared and the back button works.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "imgvec-token";
const PROGRESS_EVERY_MS = 3000;
const GROUPS_PER_PAGE = 20;
let objectUrls = [];

// -- talking to the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}, retried = false) {
  let response;
  const sent = localStorage.getItem(TOKEN_KEY);
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (error) {
    throw new ApiError(0, "the imgvec service does not answer: is `imgvec serve` still running?");
  }
  if (response.status === 401 && !retried) {
    // The page's first requests (status, progress, a search from the URL) fail together: the first one asks, the
    // others find the token it stored and try again without asking twice.
    const stored = localStorage.getItem(TOKEN_KEY);
    if (stored && stored !== sent) {
      return api(path, options, true);
    }
    const token = window.prompt("This imgvec service needs a token (imgvec serve --token / IMGVEC_TOKEN):");
    if (token) {
      localStorage.setItem(TOKEN_KEY, token.trim());
      return api(path, options, true);
    }
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return response;
}

// -- notices ---------------------------------------------------------------------------------------

function notice(text, isError = false) {
  const box = $("notice");
  box.hidden = !text;
  box.textContent = text || "";
  box.classList.toggle("error", isError);
}

async function loadStatus() {
  try {
    const status = await (await api("/api/status")).json();
    const model = status.model ? `model ${status.model} (${status.dimension}-dim)` : "no model recorded";
    $("index-info").textContent =
      `index ${status.index}: ${status.documents} documents, ${status.with_vector} with vectors · ${model}`;
    if (status.documents === 0) {
      notice(`The index “${status.index}” is empty: add pictures with \`imgvec ingest FOLDER\`.`);
    } else if (status.with_vector === 0) {
      notice(`No document has a vector yet: \`imgvec ingest --missing\` embeds them.`);
    } else if (status.random_weights) {
      notice(`The model ${status.model} has random weights: the vectors are real computations but the ` +
        `results mean nothing. Index with a trained model (e.g. ViT-B-32/openai) for real searches.`);
    } else {
      notice("");
    }
  } catch (error) {
    $("index-info").textContent = "";
    if (error.status === 404) {
      notice(`${error.message}`);
    } else if (error.status >= 500 || error.status === 0) {
      notice(`The store cannot be reached: ${error.message}`, true);
    } else {
      notice(error.message, true);
    }
  }
}

async function loadProgress() {
  const line = $("progress");
  try {
    const run = await (await api("/api/progress")).json();
    if (run.state !== "running") {
      line.hidden = true;
      return;
    }
    const total = run.total ? ` of ${run.total}` : "";
    const eta = run.eta_seconds != null ? `, about ${formatSeconds(run.eta_seconds)} left` : "";
    line.textContent = `Ingest running (${run.mode}, ${run.source}): ${run.processed}${total} files, ` +
      `${run.failed} failed, ${run.rate.toFixed(1)} images/s${eta}`;
    line.hidden = false;
  } catch (_) {
    line.hidden = true;
  }
}

function formatSeconds(seconds) {
  const s = Math.round(seconds);
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

// -- state in the URL ------------------------------------------------------------------------------

function filters() {
  const params = new URLSearchParams();
  const k = parseInt($("k").value, 10);
  params.set("k", String(Number.isFinite(k) && k > 0 ? Math.min(k, 1000) : 24));
  const ext = $("ext").value.trim();
  if (ext) params.set("ext", ext);
  const prefix = $("path-prefix").value.trim();
  if (prefix) params.set("path_prefix", prefix);
  for (const [id, name] of SEARCH_FILTERS) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

// the filters on what a photo says about itself: input id → query parameter (the API's and the CLI's names)
const SEARCH_FILTERS = [["taken-from", "taken_from"], ["taken-to", "taken_to"], ["camera", "camera"],
  ["near", "near"], ["within", "within"]];

function chooseCamera(name) {
  const picker = $("camera");
  if (name && ![...picker.options].some((option) => option.value === name)) {
    picker.add(new Option(name, name));  // from a shared URL, before (or without) the index's list
  }
  picker.value = name || "";
}

async function loadFacets() {
  try {
    const facets = await (await api("/api/facets")).json();
    const picker = $("camera");
    const chosen = picker.value;
    picker.replaceChildren(new Option("any camera", ""));
    for (const camera of facets.cameras) {
      picker.add(new Option(`${camera.name} (${camera.count})`, camera.name));
    }
    chooseCamera(chosen);
    const first = facets.taken_first ? facets.taken_first.slice(0, 10) : "";
    const last = facets.taken_last ? facets.taken_last.slice(0, 10) : "";
    for (const id of ["taken-from", "taken-to"]) {  // the calendar opens on the index's span (the form does not validate)
      $(id).min = first;
      $(id).max = last;
    }
    const span = first ? `taken ${first} to ${last}` : "no capture dates";
    $("facets-info").textContent = `${facets.cameras.length} cameras, ${span}, ${facets.located} with a place`;
  } catch (_) {
    $("facets-info").textContent = "";  // the status line already says why the index cannot be read
  }
}

function showState(params, { push }) {
  const url = `${location.pathname}?${params.toString()}`;
  if (push && url !== `${location.pathname}${location.search}`) history.pushState(null, "", url);
}

async function runFromUrl() {
  const params = new URLSearchParams(location.search);
  const duplicates = params.get("view") === "duplicates";
  $("search-view").hidden = duplicates;
  $("duplicates-view").hidden = !duplicates;
  $("search-link").classList.toggle("current", !duplicates);
  $("duplicates-link").classList.toggle("current", duplicates);
  if (duplicates) return showDuplicates(params);
  $("query").value = params.get("q") || "";
  $("ext").value = params.get("ext") || "";
  $("path-prefix").value = params.get("path_prefix") || "";
  for (const [id, name] of SEARCH_FILTERS) {
    if (id !== "camera") $(id).value = params.get(name) || "";
  }
  chooseCamera(params.get("camera"));
  if (params.get("k")) $("k").value = params.get("k");
  if (params.get("similar")) return findSimilar(params.get("similar"), { push: false });
  if (params.get("q")) return searchText(params.get("q"), { push: false });
  render(null);
}

// -- searches --------------------------------------------------------------------------------------

async function searchText(text, { push = true } = {}) {
  const params = filters();
  params.set("q", text);
  showState(params, { push });
  $("query-info").textContent = `Pictures matching “${text}”`;
  await show(() => api(`/api/search?${params.toString()}`));
}

async function searchImage(file, { push = true } = {}) {
  if (!file || !file.type.startsWith("image/") && file.type !== "") {
    notice(`${file ? file.name : "that"} is not an image`, true);
    return;
  }
  $("query").value = "";
  const params = filters();
  showState(params, { push }); // an uploaded picture cannot live in a URL: the filters do
  const info = $("query-info");
  info.textContent = "";
  const preview = document.createElement("img");
  preview.alt = "query image";
  preview.src = keep(URL.createObjectURL(file));
  info.append("Pictures like ", preview, ` ${file.name || "the pasted image"}`);
  const form = new FormData();
  form.append("image", file, file.name || "pasted.png");
  await show(() => api(`/api/search?${params.toString()}`, { method: "POST", body: form }));
}

async function findSimilar(id, { push = true } = {}) {
  const params = filters();
  params.set("similar", id);
  showState(params, { push });
  $("query").value = "";
  const info = $("query-info");
  info.textContent = "Pictures like ";
  try {
    const doc = await (await api(`/api/documents/${encodeURIComponent(id)}`)).json();
    info.append(doc.file_path || id);
  } catch (_) {
    info.append(id);
  }
  const query = new URLSearchParams(params);
  query.delete("similar");
  await show(() => api(`/api/similar/${encodeURIComponent(id)}?${query.toString()}`));
}

async function show(request) {
  const results = $("results");
  results.setAttribute("aria-busy", "true");
  try {
    render(await (await request()).json());
  } catch (error) {
    render([]);
    notice(error.message, true);
  } finally {
    results.removeAttribute("aria-busy");
  }
}

// -- the grid --------------------------------------------------------------------------------------

function keep(url) {
  objectUrls.push(url);
  return url;
}

function render(hits) {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  const results = $("results");
  results.replaceChildren();
  if (hits === null) return;
  if (hits.length === 0) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "No results.";
    results.append(empty);
    return;
  }
  const template = $("result-template");
  for (const hit of hits) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.id = hit.id;
    card.querySelector(".score").textContent = hit.score.toFixed(4);
    card.querySelector(".path").textContent = hit.file_path || hit.s3_url || hit.id;
    card.querySelector(".facts").textContent = photoFacts(hit);
    card.title = "Find similar pictures";
    const img = card.querySelector("img");
    img.alt = hit.file_name || hit.file_path || hit.id;
    loadThumbnail(img, hit.id);
    card.addEventListener("click", () => findSimilar(hit.id));
    card.addEventListener("keydown", (event) => { if (event.key === "Enter") findSimilar(hit.id); });
    results.append(card);
  }
}

function photoFacts(hit) {
  const camera = [hit.camera_make, hit.camera_model].filter(Boolean);
  const parts = [];
  if (camera.length === 2 && camera[1].toLowerCase().startsWith(camera[0].split(" ")[0].toLowerCase())) camera.shift();
  if (camera.length) parts.push(camera.join(" "));
  if (hit.taken_at) parts.push(hit.taken_at.slice(0, 10));
  if (hit.latitude != null) parts.push(`${hit.latitude.toFixed(3)}, ${hit.longitude.toFixed(3)}`);
  return parts.join(" · ");
}

async function loadThumbnail(img, id) {
  const url = `/api/thumbnail/${encodeURIComponent(id)}?size=256`;
  img.addEventListener("error", () => img.parentElement.classList.add("broken"), { once: true });
  if (!localStorage.getItem(TOKEN_KEY)) {
    img.src = url;
    return;
  }
  try {  // an <img> cannot send the token: fetch the picture and show it from memory
    img.src = keep(URL.createObjectURL(await (await api(url, {}, true)).blob()));
  } catch (_) {
    img.parentElement.classList.add("broken");
  }
}

// -- the duplicates view --------------------------------------------------------------------------

function formatBytes(size) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let unit = 0;
  while (size >= 1000 && unit < units.length - 1) {
    size /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${units[unit]}`;
}

function duplicatesParams(offset = 0) {
  const params = new URLSearchParams({ view: "duplicates", kind: $("dup-kind").value });
  const threshold = $("dup-threshold").value.trim();
  if (threshold) params.set("threshold", threshold);
  const prefix = $("dup-path-prefix").value.trim();
  if (prefix) params.set("path_prefix", prefix);
  if (offset > 0) params.set("offset", String(offset));
  return params;
}

function goToDuplicates(offset) {
  const params = duplicatesParams(offset);
  showState(params, { push: true });
  showDuplicates(params);
}

async function showDuplicates(params) {
  $("dup-kind").value = params.get("kind") || "resaved";
  $("dup-threshold").value = params.get("threshold") || "";
  $("dup-path-prefix").value = params.get("path_prefix") || "";
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const query = new URLSearchParams(params);
  query.delete("view");
  query.set("offset", String(offset));
  query.set("limit", String(GROUPS_PER_PAGE));
  const info = $("duplicates-info");
  const groups = $("groups");
  info.textContent = "Looking for duplicates… (the first look at a large index takes a while)";
  groups.replaceChildren();
  groups.setAttribute("aria-busy", "true");
  try {
    const found = await (await api(`/api/duplicates?${query.toString()}`)).json();
    renderGroups(found, offset);
  } catch (error) {
    info.textContent = "";
    notice(error.message, true);
  } finally {
    groups.removeAttribute("aria-busy");
  }
}

function renderGroups(found, offset) {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  const threshold = found.threshold == null ? "" : ` (threshold ${found.threshold})`;
  const shown = found.groups.length ? `; groups ${offset + 1}–${offset + found.groups.length}` : "";
  let text = `${found.groups_total} groups of ${found.kind} duplicates${threshold} among ${found.documents} ` +
    `documents; keeping one of each frees ${formatBytes(found.saving_total)}${shown}.`;
  if (found.random_weights) text += " The model has random weights: these groups say nothing about the pictures.";
  if (found.unhashed) text += ` ${found.unhashed} documents have no perceptual hash yet: ingest them again to fill it in.`;
  $("duplicates-info").textContent = text;
  const groups = $("groups");
  const template = $("member-template");
  found.groups.forEach((group, index) => {
    const box = document.createElement("section");
    box.className = "group";
    const title = document.createElement("h2");
    title.textContent = `#${offset + index + 1} · ${group.members.length} files · frees ${formatBytes(group.saving)}`;
    const row = document.createElement("div");
    row.className = "members";
    for (const member of group.members) {
      const card = template.content.firstElementChild.cloneNode(true);
      const keeper = member.id === group.keep;
      card.classList.toggle("keeper", keeper);
      card.dataset.id = member.id;
      const score = member.score == null ? "" : found.kind === "resaved" ? ` · ${member.score} bits` : ` · cos ${member.score}`;
      card.querySelector(".badge").textContent = keeper ? "keep" : `duplicate${score}`;
      const size = member.width ? `${member.width}×${member.height}` : "size unknown";
      const taken = member.taken_at ? ` · taken ${member.taken_at.slice(0, 16).replace("T", " ")}` : "";
      card.querySelector(".facts").textContent = `${formatBytes(member.file_size)} · ${size}${taken}`;
      card.querySelector(".path").textContent = member.file_path;
      const img = card.querySelector("img");
      img.alt = member.file_path;
      loadThumbnail(img, member.id);
      row.append(card);
    }
    box.append(title, row);
    groups.append(box);
  });
  if (!found.groups.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "No duplicates.";
    groups.append(empty);
  }
  $("previous-groups").hidden = offset === 0;
  $("next-groups").hidden = offset + found.groups.length >= found.groups_total;
  $("previous-groups").onclick = () => goToDuplicates(Math.max(0, offset - GROUPS_PER_PAGE));
  $("next-groups").onclick = () => goToDuplicates(offset + GROUPS_PER_PAGE);
}

// -- input: typing, choosing, dropping and pasting -------------------------------------------------

function firstImage(items) {
  for (const item of items || []) {
    const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && file.type.startsWith("image/")) return file;
  }
  return null;
}

function wire() {
  $("duplicates-form").addEventListener("submit", (event) => {
    event.preventDefault();
    goToDuplicates(0);
  });
  for (const link of [$("search-link"), $("duplicates-link")]) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      history.pushState(null, "", link.getAttribute("href"));
      runFromUrl();
    });
  }
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query").value.trim();
    if (text) searchText(text);
  });
  for (const id of ["camera", "taken-from", "taken-to"]) {
    $(id).addEventListener("change", () => {  // a picked value applies at once to the search on show
      const current = new URLSearchParams(location.search);
      const text = $("query").value.trim();
      if (text) searchText(text);
      else if (current.get("similar")) findSimilar(current.get("similar"));
    });
  }
  $("image-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) searchImage(file);
    event.target.value = "";
  });
  const zone = $("drop-zone");
  let depth = 0;
  window.addEventListener("dragenter", (event) => {
    if (![...(event.dataTransfer?.types || [])].includes("Files")) return;
    depth += 1;
    zone.hidden = false;
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) zone.hidden = true;
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.hidden = true;
    const file = firstImage(event.dataTransfer?.files);
    if (file) searchImage(file);
    else notice("Drop an image file to search with it.", true);
  });
  window.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData?.items);
    if (file) {
      event.preventDefault();
      searchImage(file);
    }
  });
  window.addEventListener("popstate", runFromUrl);
}

wire();
loadStatus();
loadFacets();
loadProgress();
setInterval(loadProgress, PROGRESS_EVERY_MS);
runFromUrl();
