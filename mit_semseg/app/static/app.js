// The page of mit-semseg-app (mit_semseg/app/server.py serves it and its API): a photo goes to
// the server once per model shown; the server answers with a job to poll, then with the label
// map and each pixel's confidence as raw arrays, which this script draws over the photo and
// reads under the mouse. Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const POLL_MS = 250;
// the disagreement stripes, white and black so that no class colour hides them (the swatch in
// app.css draws the same)
const MARK_STRIPES = { 0: 255, 1: 0 };  // (x + y) % 7 -> grey level; the others stay clear
// the tallest a picture is drawn, as a share of the window's height
const MAX_HEIGHT_VH = 75;
const $ = (selector, root = document) => root.querySelector(selector);

const state = {
  config: null,
  models: new Map(),      // key -> model description from /api/models
  photo: null,            // {file} or {example}, plus name and serial
  photoSerial: 0,
  mode: "single",
  highlight: null,        // a class name, or null
  views: [],              // [view A, view B]
};

// ---- one view: a model's answer for the photo ---------------------------------------------

function makeView(slot) {
  const el = $("#view-template").content.firstElementChild.cloneNode(true);
  el.id = `view-${slot}`;
  el.dataset.view = slot;
  $("#views").append(el);
  const view = {
    slot, el, request: null, job: null, result: null, image: null,
    stage: $(".stage", el), photo: $(".photo", el), overlay: $(".overlay", el),
    marks: $(".marks", el), tooltip: $(".tooltip", el),
  };
  view.stage.addEventListener("mousemove", (event) => hover(view, event));
  view.stage.addEventListener("mouseleave", clearHover);
  return view;
}

function setStatus(view, text, stateName) {
  $(".view-status", view.el).textContent = text;
  if (stateName) view.el.dataset.state = stateName;
}

function modelChoice(slot) {
  const key = $(`#model-${slot}`).value;
  const model = state.models.get(key);
  const epochSelect = $(`#epoch-${slot}`);
  const epoch = epochSelect.hidden ? model.latest_epoch : Number(epochSelect.value);
  return { model, epoch };
}

function viewTitle(model, epoch, mode) {
  const epochText = model.kind === "run" ? `, epoch ${epoch}` : "";
  const scales = model.scales[mode].join(", ");
  return [model.label + epochText,
          `${model.architecture} · ${state.config.modes[mode]} (${scales} px)`];
}

// Sends the photo for this view's model unless the answer on screen is already for it.
async function refresh(view) {
  if (!state.photo) return;
  const { model, epoch } = modelChoice(view.slot);
  const request = `${model.key}|${epoch}|${state.mode}|${state.photo.serial}`;
  if (request === view.request) return;
  view.request = request;
  cancelJob(view);
  view.result = null;
  drawMarks();
  const [title, meta] = viewTitle(model, epoch, state.mode);
  $(".view-title", view.el).textContent = title;
  $(".view-meta", view.el).textContent = meta;
  $(".legend", view.el).replaceChildren();
  $(".downloads", view.el).hidden = true;
  $(".timing", view.el).textContent = "";
  view.overlay.getContext("2d").clearRect(0, 0, view.overlay.width, view.overlay.height);
  setStatus(view, "sending the photo…", "sending");
  const form = new FormData();
  form.append("model", model.key);
  form.append("epoch", String(epoch));
  form.append("mode", state.mode);
  if (state.photo.file) form.append("photo", state.photo.file, state.photo.name);
  else form.append("example", state.photo.example);
  let answer;
  try {
    const response = await fetch("/api/jobs", { method: "POST", body: form });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
  } catch (error) {
    if (view.request === request) fail(view, error.message);
    return;
  }
  if (view.request !== request) {  // superseded while sending: let it go
    fetch(`/api/jobs/${answer.job}`, { method: "DELETE" });
    return;
  }
  view.job = answer.job;
  follow(view, request, answer);
}

function cancelJob(view) {
  if (view.job) fetch(`/api/jobs/${view.job}`, { method: "DELETE" }).catch(() => {});
  view.job = null;
}

// Polls the job, showing its place in line, the download and the loading, until it ends.
async function follow(view, request, status) {
  while (view.request === request) {
    if (status.state === "done") return showResult(view, request, status);
    if (status.state === "error" || status.state === "cancelled") {
      return fail(view, status.message || "the job was cancelled");
    }
    setStatus(view, progressText(status), status.state);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    try {
      const response = await fetch(`/api/jobs/${status.job}`);
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
      status = answer;
    } catch (error) {
      if (view.request === request) fail(view, error.message);
      return;
    }
  }
}

function progressText(status) {
  switch (status.state) {
    case "queued":
      return status.ahead > 0
        ? `waiting for the model: ${status.ahead} photo${status.ahead > 1 ? "s" : ""} ahead`
        : "starting…";
    case "downloading":
      return `downloading the model: ${(status.received_bytes / 1e6).toFixed(1)} MB received`;
    case "loading": return "loading the model…";
    case "running": return "segmenting…";
    default: return status.state;
  }
}

function fail(view, message) {
  setStatus(view, message, "error");
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
}

async function showResult(view, request, status) {
  setStatus(view, "drawing…", "fetching");
  const base = `/api/results/${status.job}`;
  let maps, image;
  try {
    const [mapsResponse, imageResponse] = await Promise.all([fetch(`${base}/maps`),
                                                             fetch(`${base}/image.jpg`)]);
    if (!mapsResponse.ok || !imageResponse.ok) {
      const failed = mapsResponse.ok ? imageResponse : mapsResponse;
      throw new Error((await failed.json()).error);
    }
    maps = await mapsResponse.arrayBuffer();
    image = await createImageBitmap(await imageResponse.blob());
  } catch (error) {
    if (view.request === request) fail(view, error.message);
    return;
  }
  if (view.request !== request) return;
  const pixels = status.width * status.height;
  view.result = {
    job: status.job, width: status.width, height: status.height, shares: status.shares,
    model: state.models.get(status.model),
    labels: uint16(maps, 0, pixels), confidence: uint16(maps, 2 * pixels, pixels),
  };
  view.image = image;
  for (const canvas of [view.photo, view.overlay, view.marks]) {
    canvas.width = status.width;
    canvas.height = status.height;
  }
  // as wide as the view, but no taller than most of the window
  view.stage.style.maxWidth = `calc(${MAX_HEIGHT_VH}vh * ${status.width / status.height})`;
  view.photo.getContext("2d").drawImage(image, 0, 0);
  drawOverlay(view);
  drawLegend(view);
  drawMarks();
  const load = status.load_seconds != null ? ` · model loaded in ${status.load_seconds.toFixed(1)} s` : "";
  $(".timing", view.el).textContent = `inference ${status.seconds.toFixed(2)} s${load}`;
  const labels = $(".download-labels", view.el);
  labels.href = `${base}/labels.png`;
  labels.download = `${status.file_stem}_labels.png`;
  const panel = $(".download-panel", view.el);
  panel.href = `${base}/panel.png`;
  panel.download = `${status.file_stem}_panel.png`;
  $(".downloads", view.el).hidden = false;
  view.el.dataset.job = status.job;
  setStatus(view, "", "done");
  if (view.result.model.needs_download) {  // it is in the cache now
    view.result.model.needs_download = false;
    for (const option of document.querySelectorAll(`option[value="${status.model}"]`)) {
      option.textContent = view.result.model.label;
    }
  }
}

// The server sends little-endian uint16; a typed array reads in the machine's own order.
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
function uint16(buffer, offset, count) {
  if (LITTLE_ENDIAN) return new Uint16Array(buffer, offset, count);
  const data = new DataView(buffer, offset, 2 * count);
  return Uint16Array.from({ length: count }, (_, i) => data.getUint16(2 * i, true));
}

function rgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function drawOverlay(view) {
  const { width, height, labels, model } = view.result;
  const colours = model.colors.map(rgb);
  const shown = model.classes.map((name) => state.highlight === null || name === state.highlight);
  const context = view.overlay.getContext("2d");
  const picture = context.createImageData(width, height);
  const data = picture.data;
  for (let i = 0; i < labels.length; i++) {
    const c = labels[i];
    if (!shown[c]) continue;
    const [r, g, b] = colours[c];
    data[4 * i] = r;
    data[4 * i + 1] = g;
    data[4 * i + 2] = b;
    data[4 * i + 3] = 255;
  }
  context.putImageData(picture, 0, 0);
  view.stage.classList.toggle("highlighting", state.highlight !== null);
}

function drawLegend(view) {
  const { model, shares } = view.result;
  const items = shares.map(([c, share]) => {
    const name = model.classes[c];
    const item = document.createElement("li");
    item.dataset.class = name;
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-pressed", String(state.highlight === name));
    button.title = `show only ${name}`;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = model.colors[c];
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const amount = document.createElement("span");
    amount.className = "share";
    amount.textContent = share < 0.001 ? "<0.1%" : `${(100 * share).toFixed(1)}%`;
    button.append(swatch, label, amount);
    button.addEventListener("click", () => setHighlight(state.highlight === name ? null : name));
    item.append(button);
    return item;
  });
  $(".legend", view.el).replaceChildren(...items);
}

function setHighlight(name) {
  state.highlight = name;
  for (const view of activeViews()) {
    if (!view.result) continue;
    drawOverlay(view);
    for (const button of view.el.querySelectorAll(".legend button")) {
      button.setAttribute("aria-pressed", String(button.parentElement.dataset.class === name));
    }
  }
}

// ---- compare mode --------------------------------------------------------------------------

function comparing() {
  return $("#compare").checked;
}

function activeViews() {
  return comparing() ? state.views : state.views.slice(0, 1);
}

// Where the two models name a pixel differently (by class name, so that models with other
// class tables compare too), striped in both views; the share of such pixels below them.
function drawMarks() {
  const [a, b] = state.views;
  const text = $("#agreement");
  for (const view of state.views) {
    view.marks.getContext("2d").clearRect(0, 0, view.marks.width, view.marks.height);
  }
  const ready = comparing() && a.result && b.result
    && a.result.width === b.result.width && a.result.height === b.result.height;
  text.hidden = !ready;
  if (!ready) return;
  const names = new Map();
  const ids = (model) => model.classes.map((name) => {
    if (!names.has(name)) names.set(name, names.size);
    return names.get(name);
  });
  const idsA = ids(a.result.model);
  const idsB = ids(b.result.model);
  const { width, height } = a.result;
  const la = a.result.labels;
  const lb = b.result.labels;
  const marked = $("#mark-disagreement").checked;
  const picture = new ImageData(width, height);
  const data = picture.data;
  let differing = 0;
  for (let i = 0; i < la.length; i++) {
    if (idsA[la[i]] === idsB[lb[i]]) continue;
    differing++;
    const x = i % width;
    const y = (i - x) / width;
    const grey = MARK_STRIPES[(x + y) % 7];
    if (marked && grey !== undefined) {
      data[4 * i] = grey;
      data[4 * i + 1] = grey;
      data[4 * i + 2] = grey;
      data[4 * i + 3] = 255;
    }
  }
  for (const view of state.views) view.marks.getContext("2d").putImageData(picture, 0, 0);
  const share = (100 * differing) / la.length;
  text.replaceChildren();
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  text.append(swatch, ` The models disagree on ${share.toFixed(1)}% of the pixels`
    + (marked ? " (striped)." : "."));
  text.dataset.share = String(share);
}

// ---- the mouse -----------------------------------------------------------------------------

function hover(view, event) {
  if (!view.result) return;
  const box = view.overlay.getBoundingClientRect();
  const { width, height } = view.result;
  const x = Math.min(width - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * width)));
  const y = Math.min(height - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * height)));
  const lines = [];
  for (const other of activeViews()) {
    if (!other.result || other.result.width !== width || other.result.height !== height) continue;
    const { model, labels, confidence } = other.result;
    const c = labels[y * width + x];
    const probability = (100 * confidence[y * width + x]) / 65535;
    lines.push({ view: other, name: model.classes[c], colour: model.colors[c], probability });
  }
  const info = $("#hover-info");
  const rows = lines.map(({ view: other, name, colour, probability }) => {
    const row = document.createElement("div");
    row.className = "hover-line";
    row.dataset.view = other.slot;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour;
    const label = document.createElement("b");
    label.className = "hover-class";
    label.textContent = name;
    const amount = document.createElement("span");
    amount.className = "hover-probability";
    amount.textContent = `${probability.toFixed(1)}%`;
    row.append(swatch, label, amount);
    if (comparing()) {
      const which = document.createElement("small");
      which.textContent = $(".view-title", other.el).textContent;
      row.append(which);
    }
    return row;
  });
  const where = document.createElement("p");
  where.className = "hint";
  where.textContent = `pixel x ${x}, y ${y}`;
  info.replaceChildren(...rows, where);
  info.dataset.x = String(x);
  info.dataset.y = String(y);
  for (const other of activeViews()) {
    const line = lines.find((l) => l.view === other);
    other.tooltip.hidden = !line;
    if (!line) continue;
    const stage = other.stage.getBoundingClientRect();
    const shown = other.overlay.getBoundingClientRect();
    other.tooltip.style.left = `${((x + 0.5) / width) * shown.width}px`;
    other.tooltip.style.top = `${((y + 0.5) / height) * shown.height}px`;
    other.tooltip.textContent = `${line.name} ${line.probability.toFixed(1)}%`;
    other.tooltip.style.maxWidth = `${stage.width}px`;
  }
}

function clearHover() {
  for (const view of state.views) view.tooltip.hidden = true;
}

// ---- the controls --------------------------------------------------------------------------

function fillModels(select, models, chosen) {
  const groups = [["run", "Your runs"], ["released", "Released (ADE20K, 150 classes)"]];
  for (const [kind, title] of groups) {
    const inKind = models.filter((m) => m.kind === kind);
    if (!inKind.length) continue;
    const group = document.createElement("optgroup");
    group.label = title;
    for (const model of inKind) {
      const option = document.createElement("option");
      option.value = model.key;
      option.textContent = model.label + (model.needs_download ? " (downloaded on first use)" : "");
      group.append(option);
    }
    select.append(group);
  }
  select.value = chosen;
}

function fillEpochs(slot) {
  const model = state.models.get($(`#model-${slot}`).value);
  const select = $(`#epoch-${slot}`);
  select.replaceChildren(...model.epochs.map((epoch) => {
    const option = document.createElement("option");
    option.value = String(epoch);
    option.textContent = `epoch ${epoch}${epoch === model.latest_epoch ? " (latest)" : ""}`;
    return option;
  }));
  select.value = String(model.latest_epoch);
  select.hidden = model.epochs.length < 2;
}

function refreshAll() {
  $("#error").hidden = true;
  for (const view of activeViews()) refresh(view);
}

function choosePhoto(photo) {
  state.photoSerial += 1;
  state.photo = { ...photo, serial: state.photoSerial };
  $("#photo-name").textContent = photo.name;
  $("#empty-hint").hidden = true;
  for (const button of document.querySelectorAll("#examples button")) {
    button.classList.toggle("chosen", button.dataset.example === photo.example);
  }
  refreshAll();
}

function chooseFile(file) {
  if (!file) return;
  choosePhoto({ file, name: file.name || "photo" });
}

function setUpDragAndDrop() {
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) chooseFile(file);
  });
}

async function start() {
  const response = await fetch("/api/models");
  state.config = await response.json();
  const models = state.config.models;
  for (const model of models) state.models.set(model.key, model);
  const first = models[0].key;
  const second = (models.find((m) => m.key !== first) || models[0]).key;
  fillModels($("#model-a"), models, first);
  fillModels($("#model-b"), models, second);
  fillEpochs("a");
  fillEpochs("b");
  state.views = [makeView("a"), makeView("b")];
  state.views[1].el.hidden = true;
  $("#limits-hint").textContent = `JPEG, PNG or WebP, up to ${state.config.limits.text}`;

  const examples = $("#examples");
  for (const example of state.config.examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.example = example.key;
    button.title = `${example.title} (${example.credit})`;
    const image = document.createElement("img");
    image.src = `/api/examples/${example.key}`;
    image.alt = example.title;
    button.append(image);
    button.addEventListener("click", () => choosePhoto({ example: example.key, name: example.title }));
    examples.append(button);
  }

  $("#photo-input").addEventListener("change", (event) => {
    chooseFile(event.target.files[0]);
    event.target.value = "";  // the same file chosen again is a new choice
  });
  setUpDragAndDrop();
  for (const slot of ["a", "b"]) {
    $(`#model-${slot}`).addEventListener("change", () => { fillEpochs(slot); refreshAll(); });
    $(`#epoch-${slot}`).addEventListener("change", refreshAll);
  }
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => { state.mode = radio.value; refreshAll(); });
  }
  $("#compare").addEventListener("change", () => {
    const on = comparing();
    $("#compare-row").hidden = !on;
    $("#mark-row").hidden = !on;
    state.views[1].el.hidden = !on;
    if (!on) cancelJob(state.views[1]);
    if (!on) state.views[1].request = null;
    drawMarks();
    refreshAll();
  });
  $("#mark-disagreement").addEventListener("change", drawMarks);
  const opacity = $("#opacity");
  const applyOpacity = () => {
    $("#opacity-value").textContent = `${opacity.value}%`;
    for (const view of state.views) view.overlay.style.opacity = String(opacity.value / 100);
  };
  opacity.addEventListener("input", applyOpacity);
  applyOpacity();
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  const box = $("#error");
  box.textContent = `the page could not start: ${error.message}`;
  box.hidden = false;
});
