// Hivemind web UI: a small single-page app over the REST API. No framework, no build step.
// Pages are hash routes (#/apps, #/apps/NAME, #/deploy, ...); each page renders once and then
// refreshes its live parts every few seconds while it is shown.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "hivemind-token";
const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const IMAGE_RE = /^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(\/[a-z0-9]+([._-]{1,2}[a-z0-9]+)*)*(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$/;
const DOMAIN_RE = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;
const KV_RE = /^[A-Za-z_][A-Za-z0-9_.-]*=.*$/;
const PORT_RE = /^\d{1,5}:\d{1,5}(\/(tcp|udp))?$/;

// ---------------------------------------------------------------------------------------------
// DOM helpers: every element is built with h(), never from HTML strings, so no value from the
// API can become markup.

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, value);
  }
  append(el, children);
  return el;
}

function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

const $ = (selector, root = document) => root.querySelector(selector);

// ---------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body, contentType = "application/json") {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = contentType;
    init.body = contentType === "application/json" ? JSON.stringify(body) : body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `cannot reach the agent (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (response.status === 401) {
    showTokenPrompt(data && data.error);
    throw new ApiError(401, (data && data.error) || "a bearer token is required");
  }
  if (!response.ok && !(response.status === 503 && path === "/api/health")) {
    throw new ApiError(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Formatting

function badgeClass(state) {
  switch (state) {
    case "running": case "ready": case "ok": return "ok";
    case "starting": case "creating": case "stopping": return "warn";
    case "degraded": case "failed": case "not-ready": case "down": return "bad";
    default: return "";
  }
}

const badge = (state) => h("span", { class: `badge ${badgeClass(state)}` }, state || "unknown");

function ago(ms) {
  if (!ms) return "—";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function when(ms) {
  return ms ? h("time", { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString() }, ago(ms)) : "—";
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), hh = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

const shortId = (id) => (id && id.length > 24 ? `${id.slice(0, 24)}…` : id);
const tags = (list) => (list && list.length ? list.map((x) => h("span", { class: "tag" }, x)) : "—");

function table(columns, rows, empty) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class, scope: "col" }, c.label))));
  const body = h("tbody", {});
  if (!rows.length) {
    body.append(h("tr", {}, h("td", { class: "empty", colspan: columns.length }, empty)));
  }
  for (const row of rows) {
    body.append(h("tr", { dataset: row.key ? { key: row.key } : undefined }, columns.map((c) => h("td", { class: c.class }, c.cell(row)))));
  }
  return h("div", { class: "table-wrap" }, h("table", {}, head, body));
}

function toast(message, bad = false) {
  const el = $("#toast");
  el.textContent = message;
  el.className = `toast${bad ? " bad" : ""}`;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, bad ? 8000 : 4000);
}

function confirmDialog(text, okLabel = "Remove") {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

/// Runs an action from a button: disables it with a spinner meanwhile; reports the outcome.
async function act(button, label, work) {
  const original = Array.from(button.childNodes);
  button.disabled = true;
  replace(button, h("span", { class: "spinner", "aria-hidden": "true" }), label);
  try {
    const reply = await work();
    if (reply && reply.message) toast(reply.message);
    return reply;
  } catch (err) {
    toast(err.message, true);
    throw err;
  } finally {
    button.disabled = false;
    replace(button, original);
  }
}

function pageHead(title, ...extra) {
  return h("div", { class: "page-head" }, h("h1", {}, title), ...extra);
}

function errorBox(err) {
  return h("div", { class: "alert bad", role: "alert" }, err.message || String(err));
}

// ---------------------------------------------------------------------------------------------
// Router and live refresh

let current = { stop() {} };

const routes = [
  [/^#\/apps\/([^/]+)\/edit$/, (m) => editPage(decodeURIComponent(m[1])), "apps"],
  [/^#\/apps\/([^/]+)$/, (m) => appPage(decodeURIComponent(m[1])), "apps"],
  [/^#\/apps$/, () => appsPage(), "apps"],
  [/^#\/deploy$/, () => deployPage(), "deploy"],
  [/^#\/containers\/([^/]+)$/, (m) => containerPage(decodeURIComponent(m[1])), "containers"],
  [/^#\/containers$/, () => containersPage(), "containers"],
  [/^#\/volumes$/, () => volumesPage(), "volumes"],
  [/^#\/policies\/([^/]+)$/, (m) => policyPage(decodeURIComponent(m[1])), "policies"],
  [/^#\/policies$/, () => policiesPage(), "policies"],
  [/^#\/health$/, () => healthPage(), "health"],
];

function route() {
  const hash = location.hash || "#/apps";
  current.stop();
  const main = $("#main");
  main.replaceChildren();
  for (const [re, page, nav] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    current = page(m) || { stop() {} };
    $("nav").classList.remove("open");
    $(".menu-toggle").setAttribute("aria-expanded", "false");
    return;
  }
  location.hash = "#/apps";
}

/// A page's live part: `load` fetches, `render` draws; runs now and every POLL_MS while the
/// page is shown and the tab visible.
function live(load, render, onError) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        render(await load());
      } catch (err) {
        if (!stopped && onError) onError(err);
      }
    }
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  };
  tick();
  return {
    stop() { stopped = true; clearTimeout(timer); },
    now() { clearTimeout(timer); tick(); },
  };
}

function stopAll(...parts) {
  return { stop() { for (const p of parts) if (p) p.stop(); } };
}

// ---------------------------------------------------------------------------------------------
// Apps

function appsPage() {
  const main = $("#main");
  const body = h("div", { class: "panel" }, h("p", { class: "notice" }, "Loading…"));
  const stats = h("div", { class: "grid" });
  append(main, pageHead("Apps", h("a", { class: "button primary", href: "#/deploy" }, "Deploy")), stats, body);
  return live(
    () => api("GET", "/api/apps"),
    (apps) => {
      const running = apps.filter((a) => a.status === "running").length;
      const containers = apps.reduce((n, a) => n + a.running, 0);
      replace(stats,
        statCard(apps.length, "apps"),
        statCard(running, "fully running"),
        statCard(containers, "containers running"));
      replace(body, table([
        { label: "Name", cell: (a) => h("a", { href: `#/apps/${encodeURIComponent(a.name)}` }, a.name) },
        { label: "Status", cell: (a) => badge(a.status) },
        { label: "Replicas", class: "num", cell: (a) => `${a.running}/${a.replicas}` },
        { label: "Image", class: "wrap", cell: (a) => h("span", { class: "mono" }, a.image) },
        { label: "Service", class: "hide-narrow", cell: (a) => a.service || "—" },
        { label: "Ports", class: "hide-narrow", cell: (a) => tags(a.ports) },
        { label: "Updated", class: "hide-narrow", cell: (a) => when(a.updated_at_ms) },
      ], apps.map((a) => ({ ...a, key: a.name })), h("span", {}, "No apps yet. ", h("a", { href: "#/deploy" }, "Deploy one"), ".")));
    },
    (err) => replace(body, errorBox(err)),
  );
}

function statCard(value, label) {
  return h("div", { class: "panel" }, h("div", { class: "stat" }, value), h("div", { class: "stat-label" }, label));
}

function appPage(name) {
  const main = $("#main");
  const title = h("h1", {}, name);
  const head = h("div", { class: "page-head" }, title);
  const facts = h("div", { class: "panel" }, h("p", { class: "notice" }, "Loading…"));
  const containers = h("div", { class: "panel" });
  const scaleInput = h("input", { type: "number", id: "scale-replicas", min: "0", max: "1000", required: true, "aria-describedby": "scale-error" });
  const scaleError = h("span", { class: "error", id: "scale-error", role: "alert" });
  const scaleButton = h("button", { type: "submit", class: "primary" }, "Scale");
  const scaleForm = h("form", { class: "inline-form", onsubmit: onScale },
    h("div", { class: "field" }, h("label", { for: "scale-replicas" }, "Replicas"), scaleInput, scaleError),
    scaleButton);
  const restartButton = h("button", { type: "button", onclick: onRestart }, "Restart");
  const editLink = h("a", { class: "button", href: `#/apps/${encodeURIComponent(name)}/edit` }, "Edit settings");
  const removeButton = h("button", { type: "button", class: "danger", onclick: onRemove }, "Remove");
  const actions = h("div", { class: "panel" }, h("h2", {}, "Actions"),
    h("div", { class: "row" }, scaleForm, h("div", { class: "actions" }, editLink, restartButton, removeButton)));
  append(main, h("div", { class: "crumb" }, h("a", { href: "#/apps" }, "Apps"), " / ", name), head, facts, actions, containers);
  let scaleTouched = false;
  scaleInput.addEventListener("input", () => { scaleTouched = true; });

  async function onScale(event) {
    event.preventDefault();
    const n = Number(scaleInput.value);
    if (scaleInput.value === "" || !Number.isInteger(n) || n < 0) {
      scaleInput.setAttribute("aria-invalid", "true");
      scaleError.textContent = "Enter a whole number of replicas, 0 or more.";
      return;
    }
    scaleInput.removeAttribute("aria-invalid");
    scaleError.textContent = "";
    try {
      await act(scaleButton, "Scaling…", () => api("POST", `/api/apps/${encodeURIComponent(name)}/scale`, { replicas: n }));
      scaleTouched = false;
    } catch (err) {
      scaleError.textContent = err.message;
    }
    poll.now();
  }
  async function onRestart() {
    await act(restartButton, "Restarting…", () => api("POST", `/api/apps/${encodeURIComponent(name)}/restart`)).catch(() => {});
    poll.now();
  }
  async function onRemove() {
    if (!(await confirmDialog(`Remove app ${name}? Its containers are stopped and removed; its volumes are kept.`))) return;
    try {
      await act(removeButton, "Removing…", () => api("DELETE", `/api/apps/${encodeURIComponent(name)}`));
      location.hash = "#/apps";
    } catch { /* reported */ }
  }

  const poll = live(
    () => api("GET", `/api/apps/${encodeURIComponent(name)}`),
    (app) => {
      replace(title, app.name, badge(app.status));
      if (!scaleTouched && document.activeElement !== scaleInput) scaleInput.value = app.replicas;
      replace(facts, h("dl", { class: "facts" },
        fact("Image", h("span", { class: "mono" }, app.image)),
        fact("Replicas", `${app.running} running of ${app.replicas}`),
        fact("Service domain", app.service || "—"),
        fact("Service names", tags(app.service_names)),
        fact("Endpoints", app.endpoints && app.endpoints.length ? tags(app.endpoints) : "no healthy replica"),
        fact("Virtual IP", h("span", { class: "mono" }, app.vip || "—")),
        fact("Ports", tags(app.ports)),
        fact("Volumes", tags(app.volumes)),
        fact("Secrets", tags(app.secrets)),
        fact("Environment", tags(app.env)),
        fact("Labels", tags(Object.entries(app.labels || {}).map(([k, v]) => `${k}=${v}`))),
        fact("Limits", limits(app)),
        fact("Generation", app.generation),
        fact("Rollout", app.rollout || "—"),
        fact("Created", when(app.created_at_ms)),
        fact("Updated", when(app.updated_at_ms))));
      replace(containers, h("h2", {}, `Containers (${app.containers.length})`), containerTable(app.containers, false));
    },
    (err) => replace(facts, errorBox(err)),
  );
  return poll;
}

function limits(app) {
  const parts = [];
  if (app.memory_bytes) parts.push(`memory ${bytes(app.memory_bytes)}`);
  if (app.cpu_millis) parts.push(`${app.cpu_millis / 1000} CPU`);
  return parts.length ? parts.join(", ") : "none";
}

const fact = (label, value) => [h("dt", {}, label), h("dd", {}, value)];

function containerTable(list, withApp) {
  const columns = [
    { label: "Container", cell: (c) => h("a", { href: `#/containers/${encodeURIComponent(c.id)}`, class: "mono" }, shortId(c.id)) },
  ];
  if (withApp) columns.push({ label: "App", cell: (c) => h("a", { href: `#/apps/${encodeURIComponent(c.app)}` }, c.app) });
  columns.push(
    { label: "Slot", class: "num hide-narrow", cell: (c) => c.slot },
    { label: "State", cell: (c) => badge(c.state) },
    { label: "IP", cell: (c) => h("span", { class: "mono" }, c.ip || "—") },
    { label: "Node", class: "hide-narrow", cell: (c) => c.node },
    { label: "Restarts", class: "num hide-narrow", cell: (c) => c.restart_count },
    { label: "Started", class: "hide-narrow", cell: (c) => when(c.started_at_ms) },
  );
  const sorted = [...list].sort((a, b) => (a.app === b.app ? a.slot - b.slot : a.app < b.app ? -1 : 1));
  return table(columns, sorted.map((c) => ({ ...c, key: c.id })), "No containers.");
}

// ---------------------------------------------------------------------------------------------
// Deploy

function field(id, label, input, hint) {
  const error = h("div", { class: "error", id: `${id}-error`, role: "alert" });
  input.id = id;
  input.setAttribute("aria-describedby", `${id}-error${hint ? ` ${id}-hint` : ""}`);
  // A message goes away as soon as the field is edited.
  input.addEventListener("input", () => setError(id, ""));
  return h("div", { class: "field" },
    h("label", { for: id }, label),
    input,
    hint ? h("div", { class: "hint", id: `${id}-hint` }, hint) : null,
    error);
}

function setError(id, message) {
  const input = document.getElementById(id);
  const error = document.getElementById(`${id}-error`);
  if (input) {
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
  if (error) error.textContent = message || "";
  return !message;
}

const lines = (text) => text.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);

function deployPage() {
  const main = $("#main");
  const alert = h("div", {});
  const name = h("input", { name: "name", required: true, autocomplete: "off", placeholder: "my-app", spellcheck: "false" });
  const image = h("input", { name: "image", required: true, autocomplete: "off", placeholder: "repository/image:tag", spellcheck: "false" });
  const service = h("input", { name: "service", autocomplete: "off", placeholder: "app.example.com", spellcheck: "false" });
  const replicas = h("input", { name: "replicas", type: "number", min: "0", max: "1000", value: "1" });
  const env = h("textarea", { name: "env", placeholder: "KEY=VALUE, one per line", spellcheck: "false" });
  const ports = h("textarea", { name: "ports", placeholder: "8080:80/tcp, one per line", spellcheck: "false" });
  const labels = h("textarea", { name: "labels", placeholder: "tier=front, one per line", spellcheck: "false" });
  const memory = h("input", { name: "memory", placeholder: "256m", autocomplete: "off" });
  const cpus = h("input", { name: "cpus", placeholder: "0.5", autocomplete: "off" });
  const mounts = h("div", { class: "stack", id: "mounts" });
  const newVolume = h("input", { placeholder: "new-volume-name", autocomplete: "off", spellcheck: "false" });
  const createVolume = h("button", { type: "button", onclick: onCreateVolume }, "Create volume");
  const submit = h("button", { type: "submit", class: "primary" }, "Deploy");
  let volumes = [];

  const form = h("form", { class: "stack", novalidate: true, onsubmit: onSubmit },
    field("deploy-name", "Name", name, "A DNS label: lowercase letters, digits and -."),
    field("deploy-image", "Image", image, "In the format repository/image:tag."),
    field("deploy-service", "Service Domain (optional)", service, "Enter a domain name if you want the application exposed."),
    field("deploy-replicas", "Replicas", replicas),
    h("details", {},
      h("summary", {}, "Environment, ports, volumes, labels, limits"),
      h("div", { class: "stack" },
        field("deploy-env", "Environment", env, "KEY=VALUE per line."),
        field("deploy-ports", "Ports", ports, "HOST:CONTAINER[/tcp|udp] per line."),
        h("fieldset", { class: "field" },
          h("legend", { class: "label" }, "Volumes"),
          mounts,
          h("div", { class: "row" }, h("button", { type: "button", onclick: () => addMount() }, "Add a volume mount")),
          h("div", { class: "row" }, h("label", { class: "hint", for: "new-volume" }, "Or create one:"), Object.assign(newVolume, { id: "new-volume" }), createVolume),
          h("div", { class: "error", id: "new-volume-error", role: "alert" })),
        field("deploy-labels", "Labels", labels, "KEY=VALUE per line; network policies select apps by label."),
        h("div", { class: "two" },
          field("deploy-memory", "Memory limit", memory, "e.g. 256m, 1g"),
          field("deploy-cpus", "CPU limit", cpus, "cores, e.g. 0.5")))),
    h("div", { class: "actions" }, h("a", { class: "button", href: "#/apps" }, "Cancel"), submit));

  append(main, pageHead("Deploy an application"), alert, h("div", { class: "panel" }, form));
  name.focus();
  loadVolumes();

  async function loadVolumes(select) {
    try {
      volumes = await api("GET", "/api/volumes");
    } catch { volumes = []; }
    for (const sel of mounts.querySelectorAll("select")) fillVolumes(sel, sel.value);
    if (select) addMount(select);
  }

  function fillVolumes(sel, value) {
    replace(sel, h("option", { value: "" }, volumes.length ? "Choose a volume" : "No volumes yet"),
      volumes.map((v) => h("option", { value: v.name, selected: v.name === value }, v.name)));
  }

  function addMount(volume) {
    const n = mounts.children.length;
    const sel = h("select", { "aria-label": `Volume ${n + 1}`, class: "mount-volume" });
    fillVolumes(sel, volume);
    const path = h("input", { placeholder: "/data", "aria-label": `Mount path ${n + 1}`, class: "mount-path", spellcheck: "false" });
    const ro = h("input", { type: "checkbox", class: "mount-ro", id: `mount-ro-${n}` });
    const row = h("div", { class: "row mount" }, sel, path,
      h("label", { for: `mount-ro-${n}` }, ro, " read-only"),
      h("button", { type: "button", class: "small", onclick: () => row.remove(), "aria-label": "Remove this mount" }, "✕"));
    mounts.append(row);
    (volume ? path : sel).focus();
  }

  async function onCreateVolume() {
    const volumeName = newVolume.value.trim();
    if (!setError("new-volume", NAME_RE.test(volumeName) ? "" : "A volume name is a DNS label: lowercase letters, digits and -.")) return;
    try {
      await act(createVolume, "Creating…", () => api("POST", "/api/volumes/create", { name: volumeName }));
      newVolume.value = "";
      await loadVolumes(volumeName);
    } catch (err) {
      setError("new-volume", err.message);
    }
  }

  function collect() {
    let ok = true;
    const check = (id, message) => { ok = setError(id, message) && ok; };
    const n = name.value.trim(), img = image.value.trim(), svc = service.value.trim().toLowerCase();
    check("deploy-name", !n ? "A name is required." : NAME_RE.test(n) ? "" : "Use lowercase letters, digits and - (at most 63), starting and ending with a letter or digit.");
    check("deploy-image", !img ? "An image is required, e.g. registry.example.com/team/app:1.2." : IMAGE_RE.test(img) ? "" : "Use the format repository/image:tag (lowercase repository).");
    check("deploy-service", !svc || DOMAIN_RE.test(svc) ? "" : "Enter a domain name such as app.example.com.");
    const r = Number(replicas.value);
    check("deploy-replicas", replicas.value !== "" && Number.isInteger(r) && r >= 0 ? "" : "Enter a whole number, 0 or more.");
    const envs = lines(env.value), portList = lines(ports.value), labelList = lines(labels.value);
    const badEnv = envs.find((e) => !KV_RE.test(e));
    check("deploy-env", badEnv ? `"${badEnv}" is not KEY=VALUE.` : "");
    const badPort = portList.find((p) => !PORT_RE.test(p));
    check("deploy-ports", badPort ? `"${badPort}" is not HOST:CONTAINER[/tcp|udp].` : "");
    const badLabel = labelList.find((e) => !KV_RE.test(e));
    check("deploy-labels", badLabel ? `"${badLabel}" is not KEY=VALUE.` : "");
    const volumeList = [];
    for (const row of mounts.querySelectorAll(".mount")) {
      const v = $(".mount-volume", row).value, p = $(".mount-path", row).value.trim();
      if (!v && !p) continue;
      if (!v || !p.startsWith("/")) {
        ok = false;
        setError("new-volume", "Each mount needs a volume and an absolute path such as /data.");
        continue;
      }
      volumeList.push(`${v}:${p}${$(".mount-ro", row).checked ? ":ro" : ""}`);
    }
    const body = { name: n, image: img, replicas: r, env: envs, ports: portList, volumes: volumeList, labels: labelList };
    if (svc) body.service = svc;
    if (memory.value.trim()) body.memory = memory.value.trim();
    if (cpus.value.trim()) body.cpus = cpus.value.trim();
    return ok ? body : null;
  }

  async function onSubmit(event) {
    event.preventDefault();
    alert.replaceChildren();
    const body = collect();
    if (!body) {
      const first = form.querySelector('[aria-invalid="true"]');
      if (first) first.focus();
      return;
    }
    try {
      const reply = await act(submit, "Deploying…", () => api("POST", "/api/deploy", body));
      location.hash = `#/apps/${encodeURIComponent(reply.app || body.name)}`;
    } catch (err) {
      // Put the server's message beside the field it is about, else above the form.
      const m = err.message.toLowerCase();
      const target = m.includes("app name") || m.includes("app ") && m.includes("exists") ? "deploy-name"
        : m.includes("image") ? "deploy-image"
        : m.includes("domain") || m.includes("service name") ? "deploy-service"
        : m.includes("replica") ? "deploy-replicas"
        : m.includes("port") ? "deploy-ports"
        : m.includes("volume") ? "new-volume"
        : m.includes("env") ? "deploy-env"
        : m.includes("label") ? "deploy-labels"
        : null;
      if (target) setError(target, err.message);
      replace(alert, errorBox(err));
    }
  }
  return { stop() {} };
}

// ---------------------------------------------------------------------------------------------
// Edit an app: its spec in a form; only what changed is sent, as a merge patch (PATCH).

/// `KEY=VALUE` lines as a map.
function kvMap(list) {
  const map = {};
  for (const line of list) {
    const i = line.indexOf("=");
    map[line.slice(0, i)] = line.slice(i + 1);
  }
  return map;
}

/// The merge patch of a map: changed or new keys with their value, removed keys as null.
/// A masked value left as it was is not sent (it is unchanged).
function mapPatch(before, after) {
  const patch = {};
  for (const [k, v] of Object.entries(after)) if (before[k] !== v) patch[k] = v;
  for (const k of Object.keys(before)) if (!(k in after)) patch[k] = null;
  return Object.keys(patch).length ? patch : null;
}

const sameList = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

function editPage(name) {
  const main = $("#main");
  const alert = h("div", {});
  const body = h("div", { class: "panel" }, h("p", { class: "notice" }, "Loading…"));
  append(main, h("div", { class: "crumb" }, h("a", { href: "#/apps" }, "Apps"), " / ",
    h("a", { href: `#/apps/${encodeURIComponent(name)}` }, name), " / edit"),
  pageHead(`Edit ${name}`), alert, body);
  let stopped = false;
  api("GET", `/api/apps/${encodeURIComponent(name)}/spec`).then((spec) => {
    if (!stopped) replace(body, form(spec));
  }, (err) => replace(body, errorBox(err)));

  function form(spec) {
    const input = (value, attrs = {}) => h("input", { value: value ?? "", autocomplete: "off", spellcheck: "false", ...attrs });
    const area = (list) => h("textarea", { spellcheck: "false" }, list.join("\n"));
    const f = {
      image: input(spec.image),
      replicas: input(String(spec.replicas), { type: "number", min: "0", max: "1000" }),
      service: input(spec.service, { placeholder: "app.example.com" }),
      env: area(spec.env),
      labels: area(Object.entries(spec.labels || {}).map(([k, v]) => `${k}=${v}`)),
      ports: area(spec.ports),
      volumes: area(spec.volumes),
      secrets: area(spec.secrets || []),
      memory: input(spec.memory, { placeholder: "256m" }),
      cpus: input(spec.cpus, { placeholder: "0.5" }),
      user: input(spec.user, { placeholder: "the image's USER" }),
      workdir: input(spec.workdir, { placeholder: "the image's WORKDIR" }),
      stop_signal: input(spec.stop_signal, { placeholder: "the image's STOPSIGNAL" }),
    };
    const submit = h("button", { type: "submit", class: "primary" }, "Save and roll out");
    const el = h("form", { class: "stack", novalidate: true, onsubmit: onSubmit },
      field("edit-image", "Image", f.image),
      h("div", { class: "two" },
        field("edit-replicas", "Replicas", f.replicas),
        field("edit-service", "Service domain", f.service, "Empty: none.")),
      field("edit-env", "Environment", f.env, "KEY=VALUE per line. Masked values (******) are kept unless you change them."),
      field("edit-labels", "Labels", f.labels, "KEY=VALUE per line."),
      field("edit-ports", "Ports", f.ports, "HOST:CONTAINER[/tcp|udp] per line."),
      field("edit-volumes", "Volumes", f.volumes, "VOLUME:/path[:ro] per line; the volumes must exist."),
      field("edit-secrets", "Secrets", f.secrets, "SECRET[:FILE] per line, mounted as /run/secrets/FILE; create secrets with `hivemind secret create`."),
      h("div", { class: "two" },
        field("edit-memory", "Memory limit", f.memory, "Empty: no limit."),
        field("edit-cpus", "CPU limit", f.cpus, "Empty: no limit.")),
      h("div", { class: "two" },
        field("edit-user", "User", f.user, "name, uid, name:group, uid:gid; empty: the image's."),
        field("edit-workdir", "Working directory", f.workdir, "Empty: the image's.")),
      field("edit-stop_signal", "Stop signal", f.stop_signal, "e.g. SIGQUIT; empty: the image's, else SIGTERM."),
      h("p", { class: "hint" }, "Only what you change is sent. Changes other than replicas, labels, ports and the service domain replace the replicas one at a time, each new one healthy before an old one stops."),
      h("div", { class: "actions" }, h("a", { class: "button", href: `#/apps/${encodeURIComponent(name)}` }, "Cancel"), submit));

    function patch() {
      const p = {};
      const text = (key, before) => { const v = f[key].value.trim(); if (v !== (before ?? "")) p[key] = v; };
      text("image", spec.image);
      text("service", spec.service);
      text("memory", spec.memory);
      text("cpus", spec.cpus);
      text("user", spec.user);
      text("workdir", spec.workdir);
      text("stop_signal", spec.stop_signal);
      const r = Number(f.replicas.value);
      if (f.replicas.value === "" || !Number.isInteger(r) || r < 0 || r > 1000) {
        setError("edit-replicas", "Enter a whole number from 0 to 1000.");
        return null;
      }
      if (r !== spec.replicas) p.replicas = r;
      const envs = lines(f.env.value), labelList = lines(f.labels.value);
      const bad = envs.find((e) => !KV_RE.test(e));
      if (bad) { setError("edit-env", `"${bad}" is not KEY=VALUE.`); return null; }
      const badLabel = labelList.find((e) => !KV_RE.test(e));
      if (badLabel) { setError("edit-labels", `"${badLabel}" is not KEY=VALUE.`); return null; }
      const env = mapPatch(kvMap(spec.env), kvMap(envs));
      if (env) p.env = env;
      const labels = mapPatch(spec.labels || {}, kvMap(labelList));
      if (labels) p.labels = labels;
      const portList = lines(f.ports.value), volumeList = lines(f.volumes.value);
      const badPort = portList.find((x) => !PORT_RE.test(x));
      if (badPort) { setError("edit-ports", `"${badPort}" is not HOST:CONTAINER[/tcp|udp].`); return null; }
      if (!sameList(portList, spec.ports)) p.ports = portList;
      if (!sameList(volumeList, spec.volumes)) p.volumes = volumeList;
      const secretList = lines(f.secrets.value);
      if (!sameList(secretList, spec.secrets || [])) p.secrets = secretList;
      return p;
    }

    async function onSubmit(event) {
      event.preventDefault();
      alert.replaceChildren();
      const p = patch();
      if (!p) return;
      if (!Object.keys(p).length) { toast("Nothing changed."); return; }
      try {
        await act(submit, "Rolling out…", () => api("PATCH", `/api/apps/${encodeURIComponent(name)}`, p));
        location.hash = `#/apps/${encodeURIComponent(name)}`;
      } catch (err) {
        replace(alert, errorBox(err));
      }
    }
    return el;
  }
  return { stop() { stopped = true; } };
}

// ---------------------------------------------------------------------------------------------
// Containers

function containersPage() {
  const main = $("#main");
  const body = h("div", { class: "panel" }, h("p", { class: "notice" }, "Loading…"));
  append(main, pageHead("Containers"), body);
  return live(
    () => api("GET", "/api/containers"),
    (list) => replace(body, containerTable(list, true)),
    (err) => replace(body, errorBox(err)),
  );
}

function containerPage(id) {
  const main = $("#main");
  const title = h("h1", {}, shortId(id));
  const crumb = h("div", { class: "crumb" }, h("a", { href: "#/containers" }, "Containers"), " / ", shortId(id));
  const facts = h("div", { class: "panel" }, h("p", { class: "notice" }, "Loading…"));
  const usage = h("div", { class: "grid" });
  const history = h("div", { class: "panel" });
  const log = h("pre", { class: "log", id: "log", tabindex: "0", "aria-label": "Container log", "aria-live": "off" });
  const follow = h("input", { type: "checkbox", id: "log-follow", checked: true });
  const logPanel = h("div", { class: "panel" },
    h("div", { class: "page-head" }, h("h2", {}, "Log"),
      h("label", { for: "log-follow" }, follow, " follow")),
    log);
  append(main, crumb, h("div", { class: "page-head" }, title), usage, facts, history, logPanel);

  let last = null;
  const poll = live(
    () => api("GET", `/api/containers/${encodeURIComponent(id)}`),
    (c) => {
      replace(title, h("span", { class: "mono" }, shortId(c.id)), badge(c.state));
      replace(crumb, h("a", { href: "#/containers" }, "Containers"), " / ",
        h("a", { href: `#/apps/${encodeURIComponent(c.app)}` }, c.app), " / ", shortId(c.id));
      let cpu = "—";
      if (c.usage && last && last.usage && c.usage.cpu_ns >= last.usage.cpu_ns) {
        const dt = (Date.now() - last.at) * 1e6;
        cpu = `${((100 * (c.usage.cpu_ns - last.usage.cpu_ns)) / dt).toFixed(1)} %`;
      }
      last = { usage: c.usage, at: Date.now() };
      const mem = c.usage ? c.usage.memory_bytes : 0;
      const limit = c.usage && c.usage.memory_limit_bytes && c.usage.memory_limit_bytes < 2 ** 60 ? c.usage.memory_limit_bytes : 0;
      const pct = limit ? Math.min(100, (100 * mem) / limit) : 0;
      replace(usage,
        h("div", { class: "panel" }, h("div", { class: "stat" }, cpu), h("div", { class: "stat-label" }, "CPU (of one core)")),
        h("div", { class: "panel" }, h("div", { class: "stat" }, c.usage ? bytes(mem) : "—"),
          h("div", { class: "stat-label" }, limit ? `memory of ${bytes(limit)}` : "memory (no limit)"),
          limit ? h("div", { class: `meter${pct > 85 ? " high" : ""}`, role: "meter", "aria-valuenow": pct.toFixed(0), "aria-valuemin": "0", "aria-valuemax": "100", "aria-label": "Memory use" }, h("span", { style: `width:${pct}%` })) : null),
        h("div", { class: "panel" }, h("div", { class: "stat" }, c.restart_count), h("div", { class: "stat-label" }, "restarts")));
      replace(facts, h("dl", { class: "facts" },
        fact("ID", h("span", { class: "mono" }, c.id)),
        fact("App", h("a", { href: `#/apps/${encodeURIComponent(c.app)}` }, c.app)),
        fact("State", [badge(c.state), c.exit_code !== null && c.exit_code !== undefined ? ` exit code ${c.exit_code}` : ""]),
        fact("IP", h("span", { class: "mono" }, c.ip || "—")),
        fact("Node", c.node),
        fact("Slot", c.slot),
        fact("PID", c.pid || "—"),
        fact("Image", h("span", { class: "mono" }, c.image)),
        fact("Digest", h("span", { class: "mono" }, c.image_digest || "—")),
        fact("Ports", tags(c.ports)),
        fact("Volumes", tags(c.volumes)),
        fact("Environment", tags(c.env)),
        fact("Created", when(c.created_at_ms)),
        fact("Started", when(c.started_at_ms))));
      const rows = [...(c.history || [])].reverse();
      replace(history, h("h2", {}, "Status history"), table([
        { label: "When", cell: (s) => when(s.at_ms) },
        { label: "State", cell: (s) => badge(s.state) },
        { label: "Exit", class: "num", cell: (s) => (s.exit_code === null || s.exit_code === undefined ? "—" : s.exit_code) },
        { label: "Message", class: "wrap", cell: (s) => s.message || "" },
      ], rows, "No changes recorded."));
    },
    (err) => replace(facts, errorBox(err)),
  );

  // The log: the last 200 lines, then new output streamed as it is written.
  let controller = null;
  const decoder = new TextDecoder();
  async function stream() {
    controller = new AbortController();
    log.textContent = "";
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
      const response = await fetch(`/api/containers/${encodeURIComponent(id)}/logs?tail=200&follow=${follow.checked}`, { headers, signal: controller.signal });
      if (!response.ok) {
        const data = await response.json().catch(() => ({}));
        log.textContent = data.error || `${response.status}`;
        return;
      }
      const reader = response.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
        log.append(decoder.decode(value, { stream: true }));
        if (log.textContent.length > 400000) log.textContent = log.textContent.slice(-300000);
        if (atBottom) log.scrollTop = log.scrollHeight;
      }
    } catch (err) {
      if (err.name !== "AbortError") log.append(`\n[log stream ended: ${err.message}]`);
    }
  }
  follow.addEventListener("change", () => { controller.abort(); stream(); });
  stream();
  return stopAll(poll, { stop() { if (controller) controller.abort(); } });
}

// ---------------------------------------------------------------------------------------------
// Volumes

function volumesPage() {
  const main = $("#main");
  const nameInput = h("input", { name: "name", required: true, autocomplete: "off", placeholder: "my-data-volume", spellcheck: "false" });
  const create = h("button", { type: "submit", class: "primary" }, "Create volume");
  const form = h("form", { class: "inline-form", novalidate: true, onsubmit: onCreate },
    field("volume-name", "Volume name", nameInput), create);
  const body = h("div", { class: "panel" }, h("p", { class: "notice" }, "Loading…"));
  append(main, pageHead("Volumes"), h("div", { class: "panel" }, h("h2", {}, "Create a volume"), form), body);

  async function onCreate(event) {
    event.preventDefault();
    const name = nameInput.value.trim();
    if (!setError("volume-name", !name ? "A name is required." : NAME_RE.test(name) ? "" : "Use lowercase letters, digits and - (a DNS label).")) return;
    try {
      await act(create, "Creating…", () => api("POST", "/api/volumes/create", { name }));
      nameInput.value = "";
    } catch (err) {
      setError("volume-name", err.message);
    }
    poll.now();
  }

  async function onRemove(button, name) {
    if (!(await confirmDialog(`Remove volume ${name} and all its data?`))) return;
    await act(button, "Removing…", () => api("DELETE", `/api/volumes/${encodeURIComponent(name)}`)).catch(() => {});
    poll.now();
  }

  const poll = live(
    () => api("GET", "/api/volumes"),
    (list) => replace(body, table([
      { label: "Name", cell: (v) => v.name },
      { label: "Size", class: "num", cell: (v) => bytes(v.size_bytes) },
      { label: "Used by", cell: (v) => (v.used_by.length ? v.used_by.map((a) => h("a", { href: `#/apps/${encodeURIComponent(a)}`, class: "tag" }, a)) : "—") },
      { label: "Node", class: "hide-narrow", cell: (v) => v.node },
      { label: "Path", class: "hide-narrow wrap", cell: (v) => h("span", { class: "mono" }, v.path) },
      { label: "Created", class: "hide-narrow", cell: (v) => when(v.created_at_ms) },
      { label: "", cell: (v) => { const b = h("button", { type: "button", class: "danger small", "aria-label": `Remove volume ${v.name}` }, "Remove"); b.addEventListener("click", () => onRemove(b, v.name)); return b; } },
    ], list.map((v) => ({ ...v, key: v.name })), "No volumes yet.")),
    (err) => replace(body, errorBox(err)),
  );
  return poll;
}

// ---------------------------------------------------------------------------------------------
// Policies

function selectorText(selector) {
  return selector ? selector.split(",") : ["every app"];
}

function policiesPage() {
  const main = $("#main");
  const file = h("input", { type: "file", accept: ".yaml,.yml,application/yaml,text/yaml" });
  const text = h("textarea", { name: "yaml", rows: "8", spellcheck: "false", placeholder: "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: api-from-web }\nspec:\n  selector: { app: api }\n  ingress:\n    - from: [ { app: web } ]" });
  const apply = h("button", { type: "submit", class: "primary" }, "Apply");
  const result = h("div", {});
  let source = "ui.yaml";
  file.addEventListener("change", async () => {
    const f = file.files[0];
    if (!f) return;
    source = f.name;
    text.value = await f.text();
  });
  const form = h("form", { class: "stack", onsubmit: onApply },
    field("policy-file", "Policy file", file, "A YAML file with one or more NetworkPolicy documents; or paste below."),
    field("policy-yaml", "YAML", text),
    h("div", { class: "actions" }, apply));
  const body = h("div", { class: "panel" }, h("p", { class: "notice" }, "Loading…"));
  append(main, pageHead("Network policies"), body,
    h("div", { class: "panel" }, h("h2", {}, "Apply policies"), result, form));

  async function onApply(event) {
    event.preventDefault();
    result.replaceChildren();
    if (!setError("policy-yaml", text.value.trim() ? "" : "Choose a file or paste YAML.")) return;
    try {
      const reply = await act(apply, "Applying…", () => api("POST", `/api/policies?source=${encodeURIComponent(source)}`, text.value, "application/yaml"));
      const changed = [...(reply.created || []).map((n) => `${n} created`), ...(reply.updated || []).map((n) => `${n} updated`)];
      replace(result, h("div", { class: "alert ok" }, changed.length ? `Applied: ${changed.join(", ")}` : "Applied",
        (reply.warnings || []).map((w) => h("div", {}, `warning: ${w}`))));
    } catch (err) {
      replace(result, h("div", { class: "alert bad", role: "alert" }, h("pre", { class: "mono" }, err.message)));
    }
    poll.now();
  }

  async function onRemove(button, name) {
    if (!(await confirmDialog(`Remove policy ${name}? The apps it selected fall back to what the other policies say.`))) return;
    await act(button, "Removing…", () => api("DELETE", `/api/policies/${encodeURIComponent(name)}`)).catch(() => {});
    poll.now();
  }

  const poll = live(
    () => api("GET", "/api/policies"),
    (list) => replace(body, table([
      { label: "Name", cell: (p) => h("a", { href: `#/policies/${encodeURIComponent(p.name)}` }, p.name) },
      { label: "Selects", cell: (p) => tags(selectorText(p.selector)) },
      { label: "Rules", class: "num", cell: (p) => `${p.ingress_rules} in / ${p.egress_rules} out / ${p.deny_rules} deny` },
      { label: "Drops", class: "num", cell: (p) => h("span", { class: p.dropped_packets ? "badge bad" : "badge" }, String(p.dropped_packets || 0)) },
      { label: "Source", class: "hide-narrow", cell: (p) => p.source || "—" },
      { label: "", cell: (p) => { const b = h("button", { type: "button", class: "danger small", "aria-label": `Remove policy ${p.name}` }, "Remove"); b.addEventListener("click", () => onRemove(b, p.name)); return b; } },
    ], list.map((p) => ({ ...p, key: p.name })), "No policies: every app is open.")),
    (err) => replace(body, errorBox(err)),
  );
  return poll;
}

function policyPage(name) {
  const main = $("#main");
  const facts = h("div", { class: "panel" }, h("p", { class: "notice" }, "Loading…"));
  const yaml = h("pre", { class: "yaml", tabindex: "0", "aria-label": "Policy YAML" });
  append(main, h("div", { class: "crumb" }, h("a", { href: "#/policies" }, "Policies"), " / ", name),
    pageHead(name), facts, h("div", { class: "panel" }, h("h2", {}, "YAML"), yaml));
  return live(
    () => api("GET", `/api/policies/${encodeURIComponent(name)}`),
    (p) => {
      replace(facts, h("dl", { class: "facts" },
        fact("Selects", tags(selectorText(p.selector))),
        fact("Selected apps", tags(p.selects)),
        fact("Rules", `${p.ingress_rules} ingress, ${p.egress_rules} egress, ${p.deny_rules} deny`),
        fact("Drops", `${p.dropped_packets || 0} packets`),
        fact("Source", p.source || "—"),
        fact("Applied", when(p.applied_at_ms))));
      if (yaml.textContent !== p.yaml) yaml.textContent = p.yaml;
    },
    (err) => replace(facts, errorBox(err)),
  );
}

// ---------------------------------------------------------------------------------------------
// Health

function healthPage() {
  const main = $("#main");
  const cards = h("div", { class: "grid" });
  const nodes = h("div", { class: "panel" });
  const tunnels = h("div", { class: "panel" });
  const programs = h("div", { class: "panel" });
  append(main, pageHead("Health"), cards, nodes, tunnels, programs);
  return live(
    () => Promise.all([api("GET", "/api/health"), api("GET", "/api/nodes")]),
    ([health, nodeList]) => {
      const store = health.store || {}, runtime = health.runtime || {}, dp = health.dataplane || {};
      replace(cards,
        h("div", { class: "panel" }, h("h2", {}, "Agent"), h("dl", { class: "facts" },
          fact("Node", health.node_name), fact("Version", health.version), fact("Uptime", duration(health.uptime_seconds)))),
        h("div", { class: "panel" }, h("h2", {}, "Runtime"), h("dl", { class: "facts" },
          fact("containerd", [badge(runtime.reachable ? "ok" : "down"), " ", runtime.version || runtime.error || ""]),
          fact("Namespace", runtime.namespace), fact("Socket", h("span", { class: "mono" }, runtime.socket)))),
        h("div", { class: "panel" }, h("h2", {}, "Store"), h("dl", { class: "facts" },
          fact("Backend", [badge(store.ok ? "ok" : "down"), " ", store.backend]),
          fact("Location", h("span", { class: "mono" }, store.location)),
          store.error ? fact("Error", store.error) : null)));
      replace(nodes, h("h2", {}, "Nodes"), table([
        { label: "Name", cell: (n) => [n.name, n.local ? " (this node)" : ""] },
        { label: "Ready", cell: (n) => badge(n.ready ? "ready" : "not-ready") },
        { label: "Subnet", class: "hide-narrow", cell: (n) => h("span", { class: "mono" }, n.subnet || "—") },
        { label: "Underlay IP", class: "hide-narrow", cell: (n) => h("span", { class: "mono" }, n.underlay_ip || "—") },
        { label: "Containers", class: "num", cell: (n) => `${n.containers}` },
        { label: "etcd", class: "hide-narrow", cell: (n) => n.etcd_role || "—" },
        { label: "Version", class: "hide-narrow", cell: (n) => n.version },
      ], nodeList, "No nodes."));
      const peers = nodeList.filter((n) => !n.local);
      replace(tunnels, h("h2", {}, "Overlay tunnels"),
        peers.length === 0 ? h("p", { class: "notice" }, "None: this is a single node. Tunnels appear when a second node joins.")
          : table([
            { label: "Peer", cell: (n) => n.name },
            { label: "Remote IP", cell: (n) => h("span", { class: "mono" }, (n.tunnel && n.tunnel.remote_ip) || n.underlay_ip) },
            { label: "Port", class: "num hide-narrow", cell: (n) => (n.tunnel && n.tunnel.vxlan_port) || "—" },
            { label: "Sent", class: "num", cell: (n) => n.tunnel ? `${n.tunnel.tx_packets} pkts / ${n.tunnel.tx_bytes} B` : "—" },
            { label: "Received", class: "num", cell: (n) => n.tunnel ? `${n.tunnel.rx_packets} pkts / ${n.tunnel.rx_bytes} B` : "—" },
            { label: "Last seen", class: "hide-narrow", cell: (n) => n.tunnel && n.tunnel.last_received_ms ? when(n.tunnel.last_received_ms) : "never" },
          ], peers, "No peers."));
      replace(programs, h("h2", {}, "eBPF programs"),
        h("p", { class: "notice" }, "Pinned at ", h("span", { class: "mono" }, dp.pin_path || "—")),
        table([
          { label: "Program", cell: (p) => h("span", { class: "mono" }, p.name) },
          { label: "Kind", cell: (p) => p.kind },
          { label: "ID", class: "num", cell: (p) => p.id || "—" },
          { label: "Attached", class: "wrap", cell: (p) => tags(p.attached) },
        ], dp.programs || [], "No programs loaded."));
    },
    (err) => replace(cards, errorBox(err)),
  );
}

// ---------------------------------------------------------------------------------------------
// Token prompt (agents not on loopback) and the node status in the top bar

function showTokenPrompt(message) {
  if ($("#token-form")) return;
  current.stop();
  current = { stop() {} };
  const input = h("input", { type: "password", autocomplete: "off", required: true });
  const form = h("form", { class: "stack", id: "token-form", onsubmit: (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    route();
  } },
  field("token", "API token", input, "Print it on the agent's host with: hivemind agent --print-token"),
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Continue")));
  replace($("#main"), pageHead("This agent needs its API token"),
    message ? h("div", { class: "alert bad" }, message) : null,
    h("div", { class: "panel" }, h("p", {}, "The agent listens on a non-loopback address, so every API request carries a bearer token. It is kept in this tab only."), form));
  input.focus();
}

function nodeStatus() {
  const el = $("#node-status");
  live(
    () => api("GET", "/api/health"),
    (health) => {
      const ok = health.store && health.store.ok && health.runtime && health.runtime.reachable;
      el.className = `node-status ${ok ? "ok" : "bad"}`;
      el.textContent = `${health.node_name} · ${ok ? "healthy" : "degraded"}`;
    },
    () => { el.className = "node-status bad"; el.textContent = "agent unreachable"; },
  );
}

document.addEventListener("DOMContentLoaded", () => {
  const toggle = $(".menu-toggle");
  toggle.addEventListener("click", () => {
    const open = $("nav").classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
  for (const link of document.querySelectorAll("nav a")) {
    link.addEventListener("click", () => {
      $("nav").classList.remove("open");
      toggle.setAttribute("aria-expanded", "false");
    });
  }
  window.addEventListener("hashchange", route);
  route();
  nodeStatus();
});
