// The classifier's web page: choose, drop or paste images; each gets a card with its top-3 as bars.
// Plain DOM code, no dependencies, every request relative to the page (works under any route prefix).
"use strict";

const TOP_K = 3;
const KEY_STORAGE = "serve-app-api-key";
const LANGUAGE_STORAGE = "serve-app-language";

const TEXT = {
  en: {
    title: "Image classifier",
    dropTitle: "Drop images here",
    dropHint: "or paste an image, or",
    choose: "Choose images",
    results: "Results",
    keyLabel: "This service needs an API key",
    keySave: "Use key",
    keyRejected: "That key was not accepted.",
    classifying: "Classifying…",
    busyStatus: (n) => `Classifying ${n} image${n === 1 ? "" : "s"}…`,
    doneStatus: (ok, failed) => `${ok} classified` + (failed ? `, ${failed} rejected` : "") + ".",
    preview: (name) => `Preview of ${name}`,
    pasted: "pasted image",
    model: "Model",
    backend: "Backend",
    latency: "Latency",
    on: "on",
    standinShort: " (stand-in)",
    standin: "Stand-in weights are being served: seeded, not trained on ImageNet, so these labels mean nothing. For tests and demos only.",
    nullModel: "The null model is being served: no inference runs and every image gets the same classes. This service is being measured.",
    unreachable: "The service did not answer.",
    httpError: (status) => `The service answered HTTP ${status}.`,
  },
  zh: {
    title: "图像分类",
    dropTitle: "把图片拖到这里",
    dropHint: "或粘贴图片，或",
    choose: "选择图片",
    results: "结果",
    keyLabel: "此服务需要 API 密钥",
    keySave: "使用密钥",
    keyRejected: "密钥未被接受。",
    classifying: "正在分类…",
    busyStatus: (n) => `正在分类 ${n} 张图片…`,
    doneStatus: (ok, failed) => `已分类 ${ok} 张` + (failed ? `，${failed} 张被拒绝` : "") + "。",
    preview: (name) => `${name} 的预览`,
    pasted: "粘贴的图片",
    model: "模型",
    backend: "后端",
    latency: "延迟",
    on: "运行于",
    standinShort: "（替身）",
    standin: "当前使用的是替身权重：随机种子生成，未在 ImageNet 上训练，标签没有意义。仅供测试和演示。",
    nullModel: "当前使用的是空模型：不做推理，每张图片得到相同的类别。此服务正在接受测量。",
    unreachable: "服务没有响应。",
    httpError: (status) => `服务返回 HTTP ${status}。`,
  },
};

const page = {
  language: initialLanguage(),
  apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
  entries: [],
  pending: 0,
};

function initialLanguage() {
  const saved = localStorage.getItem(LANGUAGE_STORAGE);
  if (saved === "en" || saved === "zh") return saved;
  const preferred = navigator.languages && navigator.languages.length ? navigator.languages[0] : navigator.language;
  return (preferred || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

function text(key, ...args) {
  const value = TEXT[page.language][key];
  return typeof value === "function" ? value(...args) : value;
}

function element(tag, className, content) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (content !== undefined) node.textContent = content;
  return node;
}

// ---- language -------------------------------------------------------------------------------

function setLanguage(language) {
  page.language = language;
  localStorage.setItem(LANGUAGE_STORAGE, language);
  document.documentElement.lang = language === "zh" ? "zh-CN" : "en";
  document.title = text("title");
  for (const node of document.querySelectorAll("[data-text]")) node.textContent = text(node.dataset.text);
  for (const button of document.querySelectorAll("button.language")) {
    button.setAttribute("aria-pressed", String(button.dataset.language === language));
  }
  renderBanner();
  renderStatus();
  for (const entry of page.entries) renderCard(entry);
}

// ---- model info and the stand-in banner -----------------------------------------------------

let servedModel = null;

function noteModel(model) {
  if (!model) return;
  servedModel = model;
  renderBanner();
  document.getElementById("model-info").textContent = describeModel(model);
}

function describeModel(model) {
  return `${text("model")}: ${model.architecture} · ${model.weights} · ${text("backend")}: ${model.backend} ${text("on")} ${model.device}`;
}

function renderBanner() {
  const banner = document.getElementById("standin-banner");
  banner.hidden = !(servedModel && (servedModel.standin || servedModel.null_model));
  banner.textContent = servedModel && servedModel.null_model ? text("nullModel") : text("standin");
}

async function loadModelInfo() {
  try {
    const response = await fetch("healthz");
    if (response.ok) noteModel((await response.json()).model);
  } catch (_) {
    // The cards say so when classifying fails; the footer just stays empty.
  }
}

// ---- classifying ----------------------------------------------------------------------------

function classifyFiles(files) {
  for (const file of files) {
    const entry = {
      file,
      name: file.name || text("pasted"),
      preview: URL.createObjectURL(file),
      state: "busy",
    };
    page.entries.push(entry);
    document.getElementById("results").prepend(createCard(entry));
    send(entry);
  }
}

async function send(entry) {
  entry.state = "busy";
  page.pending += 1;
  renderCard(entry);
  renderStatus();
  const form = new FormData();
  form.append("file", entry.file, entry.name);
  const headers = page.apiKey ? { Authorization: `Bearer ${page.apiKey}` } : {};
  const started = performance.now();
  try {
    const response = await fetch(`v1/classify?top_k=${TOP_K}`, { method: "POST", body: form, headers });
    const body = await response.json().catch(() => null);
    entry.latencyMs = performance.now() - started;
    if (response.ok && body && body.predictions) {
      Object.assign(entry, { state: "done", predictions: body.predictions, model: body.model });
      noteModel(body.model);
    } else {
      entry.state = "error";
      entry.status = response.status;
      entry.error = body && body.error ? body.error.message : text("httpError", response.status);
      if (response.status === 401) askForKey(Boolean(page.apiKey));
    }
  } catch (_) {
    Object.assign(entry, { state: "error", error: text("unreachable") });
  }
  page.pending -= 1;
  renderCard(entry);
  renderStatus();
}

// ---- rendering ------------------------------------------------------------------------------

function createCard(entry) {
  const card = element("li", "card");
  const image = element("img", "thumbnail");
  image.src = entry.preview;
  const body = element("div", "card-body");
  body.append(element("h3", "file-name"), element("div", "answer"));
  card.append(image, body);
  entry.card = card;
  return card;
}

function renderCard(entry) {
  const card = entry.card;
  card.setAttribute("aria-busy", String(entry.state === "busy"));
  card.dataset.state = entry.state;
  card.querySelector("img").alt = text("preview", entry.name);
  card.querySelector(".file-name").textContent = entry.name;
  const answer = card.querySelector(".answer");
  answer.replaceChildren();
  if (entry.state === "busy") {
    const busy = element("p", "busy");
    busy.append(element("span", "spinner"), element("span", "", text("classifying")));
    answer.append(busy);
  } else if (entry.state === "error") {
    const error = element("p", "error", entry.error);
    error.setAttribute("role", "alert");
    answer.append(error);
  } else {
    answer.append(renderBars(entry.predictions), renderMeta(entry));
  }
}

function renderBars(predictions) {
  const list = element("ol", "predictions");
  for (const prediction of predictions) {
    const percent = `${(prediction.score * 100).toFixed(1)}%`;
    const row = element("li", "prediction");
    row.dataset.index = prediction.index;
    const label = page.language === "zh" ? prediction.label_zh : prediction.label;
    const bar = element("span", "bar");
    bar.setAttribute("aria-hidden", "true");
    const fill = element("span", "fill");
    fill.style.width = percent;
    bar.append(fill);
    row.append(element("span", "label", label), element("span", "percent", percent), bar);
    list.append(row);
  }
  return list;
}

function renderMeta(entry) {
  const meta = element("p", "meta");
  const model = entry.model;
  meta.textContent =
    `${text("model")}: ${model.architecture}${model.standin ? text("standinShort") : ""} · ` +
    `${text("backend")}: ${model.backend} ${text("on")} ${model.device} · ` +
    `${text("latency")}: ${Math.round(entry.latencyMs)} ms`;
  return meta;
}

function renderStatus() {
  const status = document.getElementById("status");
  const finished = page.entries.filter((e) => e.state !== "busy");
  if (page.pending) status.textContent = text("busyStatus", page.pending);
  else if (finished.length) {
    const failed = finished.filter((e) => e.state === "error").length;
    status.textContent = text("doneStatus", finished.length - failed, failed);
  } else status.textContent = "";
  document.getElementById("drop-zone").setAttribute("aria-busy", String(page.pending > 0));
}

// ---- API key --------------------------------------------------------------------------------

function askForKey(rejected) {
  const form = document.getElementById("key-form");
  form.hidden = false;
  const error = document.getElementById("key-error");
  error.hidden = !rejected;
  error.textContent = rejected ? text("keyRejected") : "";
  document.getElementById("api-key").focus();
}

function useKey(event) {
  event.preventDefault();
  page.apiKey = document.getElementById("api-key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, page.apiKey);
  document.getElementById("key-form").hidden = true;
  for (const entry of page.entries) if (entry.state === "error" && entry.status === 401) send(entry);
}

// ---- input: picker, drag and drop, paste ----------------------------------------------------

function wireInputs() {
  const input = document.getElementById("file-input");
  const zone = document.getElementById("drop-zone");
  document.getElementById("choose").addEventListener("click", () => input.click());
  // The whole zone opens the picker on a click; the button is its keyboard-reachable twin.
  zone.addEventListener("click", (event) => {
    if (!event.target.closest("button")) input.click();
  });
  input.addEventListener("change", () => {
    classifyFiles([...input.files]);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    classifyFiles([...event.dataTransfer.files]);
  });
  // A file dropped beside the zone must not make the browser navigate away to it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    const files = [...event.clipboardData.files];
    if (files.length) {
      event.preventDefault();
      classifyFiles(files);
    }
  });
  for (const button of document.querySelectorAll("button.language")) {
    button.addEventListener("click", () => setLanguage(button.dataset.language));
  }
  document.getElementById("key-form").addEventListener("submit", useKey);
}

wireInputs();
setLanguage(page.language);
loadModelInfo();
