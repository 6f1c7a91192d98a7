// Admin dashboard: renders jobs, domains and masks from the JSON API. Active jobs are followed
// live through their event streams (GET /jobs/{id}/events, read with fetch so the token goes in
// a header); the job list is polled every 1.5 s only while some active job has no live stream,
// else every LIST_EVERY ticks to find jobs started elsewhere. Domains and masks are polled.
// No framework and no build step; the DOM is built with textContent only (mask metadata is
// user-supplied, so nothing is ever inserted as HTML).
"use strict";

const POLL_MS = 1500;
const LIST_EVERY = 20; // ticks between job-list reads while every active job streams (30 s)
const MAX_STREAMS = 3; // a browser opens ~6 connections per host: leave room for the rest
const STREAM_TRIES = 5; // reconnections before a job falls back to polling
const LOSS_POINTS = 500; // as the server keeps
const TOKEN_KEY = "slt-admin-token";
const MAX_N = Number(document.body.dataset.maxN || 9);
const SAMPLE_N = Math.min(9, MAX_N);

const state = {
  token: localStorage.getItem(TOKEN_KEY) || "",
  jobs: new Map(),        // job_id -> DOM node
  losses: new Map(),      // job_id -> [[iteration, loss], ...]
  lossFetched: new Map(), // job_id -> status when its losses were last fetched
  previewAt: new Map(),   // job_id -> iteration of the preview shown
  previewIt: new Map(),   // job_id -> iteration of its latest preview, told by its stream
  jobData: new Map(),     // job_id -> the job as last read (list) or streamed
  follows: new Map(),     // job_id -> {ctrl, last, live}: its event stream
  unfollowable: new Set(),// job_ids whose stream failed STREAM_TRIES times: polled
  forceList: true,
  domains: null,          // null until the first answer, so an empty list still renders
  masks: [],
  tick: 0,
  domainEdited: false,
};

// ---------- helpers ----------

const $ = (sel, el = document) => el.querySelector(sel);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

const short = (id) => (id ? id.slice(0, 10) : "—");

function fmtEta(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}

function fmtNum(x, digits = 4) {
  if (x === null || x === undefined || typeof x !== "number" || !isFinite(x)) return "—";
  if (Math.abs(x) >= 1000 || (Math.abs(x) < 1e-3 && x !== 0)) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

function fmtTime(t) {
  if (!t) return "—";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(method, path, { body, admin = false, form = null } = {}) {
  const headers = {};
  // the token goes with reads too: a private deployment (SLT_READ_TOKEN) accepts the admin token
  if (admin || state.token) headers.Authorization = `Bearer ${state.token}`;
  let payload;
  if (form) payload = form;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch(path, { method, headers, body: payload, cache: "no-store" });
  const ct = r.headers.get("content-type") || "";
  const data = ct.includes("application/json") ? await r.json() : null;
  if (!r.ok) {
    const detail = (data && data.detail) || r.statusText;
    if ((admin && r.status === 403) || r.status === 401) askToken(`Refused: ${detail}`);
    throw new ApiError(r.status, detail);
  }
  return data;
}

function toast(el, text, ok = true) {
  el.textContent = text;
  el.classList.toggle("error", !ok);
  el.classList.toggle("ok", ok);
}

// ---------- token ----------

function askToken(message) {
  const dlg = $("#token-dialog");
  const err = $("#token-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("#token-input").value = state.token;
  if (!dlg.open) dlg.showModal();
  $("#token-input").focus();
}

function initToken() {
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("#token-input").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    $("#token-dialog").close();
  });
  $("#token-change").addEventListener("click", () => askToken(""));
  if (!state.token) askToken("");
}

// ---------- jobs ----------

function lossCurve(points) {
  const W = 300, H = 90, P = 4;
  const el = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "curve", role: "img",
                          "aria-label": "loss curve" });
  const pts = (points || []).filter((p) => p[1] !== null && isFinite(p[1]));
  if (pts.length < 2) {
    const t = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "curve-empty" });
    t.textContent = "loss curve appears as the search runs";
    el.append(t);
    return el;
  }
  const log = pts.every((p) => p[1] > 0);
  const ys = pts.map((p) => (log ? Math.log10(p[1]) : p[1]));
  const x0 = pts[0][0], x1 = pts[pts.length - 1][0];
  const y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => P + ((x - x0) / Math.max(1, x1 - x0)) * (W - 2 * P);
  const sy = (y) => H - P - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * P - 12);
  const d = pts.map((p, i) => `${sx(p[0]).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join(" ");
  el.append(svg("polyline", { points: d, class: "curve-line", fill: "none" }));
  const label = svg("text", { x: W - P, y: 11, "text-anchor": "end", class: "curve-label" });
  label.textContent = `loss ${fmtNum(pts[pts.length - 1][1])}${log ? " (log scale)" : ""}`;
  el.append(label);
  return el;
}

function jobNode(job) {
  const node = h("article", { class: "job", "data-job": job.job_id },
    h("div", { class: "job-head" },
      h("strong", { class: "job-domain" }), h("span", { class: "muted job-dataset" }),
      h("span", { class: "badge job-status" }),
      h("span", { class: "spacer" }),
      h("button", { class: "danger small job-cancel", type: "button",
                    onclick: () => cancelJob(job.job_id) }, "Cancel")),
    h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 },
      h("div", { class: "fill" }), h("span", { class: "bar-text" })),
    h("div", { class: "job-meta muted" }),
    h("div", { class: "job-body" }, h("div", { class: "curve-box" }),
      h("img", { class: "preview", alt: "latest preview", hidden: true })),
    h("p", { class: "error job-error", hidden: true }));
  return node;
}

function renderJob(node, job) {
  $(".job-domain", node).textContent = job.domain;
  $(".job-dataset", node).textContent = `${job.dataset}${job.preset ? " · " + job.preset : ""}`;
  const badge = $(".job-status", node);
  badge.textContent = job.status;
  badge.className = `badge job-status ${job.status}`;
  node.className = `job ${job.status}`;
  const active = job.status === "queued" || job.status === "running";
  $(".job-cancel", node).hidden = !active || job.cancel_requested;
  const pct = Math.round(100 * (job.progress || 0));
  const bar = $(".bar", node);
  bar.setAttribute("aria-valuenow", pct);
  $(".fill", node).style.width = `${pct}%`;
  $(".bar-text", node).textContent = `${pct}% · ${job.iteration}/${job.iterations}`;
  const cfg = job.config || {};
  const meta = [`loss ${fmtNum(job.loss)}`, `ETA ${active ? fmtEta(job.eta_s) : "—"}`,
                `k ${cfg.k ?? "—"}`, `${cfg.pruning ?? ""}`];
  if (active && job.phase && job.phase !== "searching") meta.push(job.phase);
  if (job.mask_id) meta.push(`mask ${short(job.mask_id)}`);
  if (job.note) meta.push(job.note);
  $(".job-meta", node).textContent = meta.filter(Boolean).join(" · ");
  const err = $(".job-error", node);
  err.hidden = !job.error;
  err.textContent = job.error || "";
  const box = $(".curve-box", node);
  box.replaceChildren(lossCurve(state.losses.get(job.job_id)));
  const img = $(".preview", node);
  const at = state.previewIt.get(job.job_id) ?? job.iteration;
  if (job.preview && state.previewAt.get(job.job_id) !== at) {
    state.previewAt.set(job.job_id, at);
    img.src = `${job.preview}?it=${at}`;
    img.hidden = false;
  }
  const f = state.follows.get(job.job_id);
  node.dataset.live = f && f.live ? "stream" : "poll";
}

// ---------- live job events ----------

const isActive = (job) => job.status === "queued" || job.status === "running";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Server-Sent Events from a fetch body: yields {id, event, data} per event (comments skipped)
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "", ev = { data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (line === "") {
        if (ev.data.length) yield { id: ev.id, event: ev.event || "message", data: ev.data.join("\n") };
        ev = { data: [] };
      } else if (!line.startsWith(":")) {
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        let v = i < 0 ? "" : line.slice(i + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "data") ev.data.push(v);
        else if (field === "id" || field === "event") ev[field] = v;
      }
    }
  }
}

// one event of a followed job; true once it was the last (`end`)
function onJobEvent(id, ev) {
  const data = JSON.parse(ev.data);
  const job = state.jobData.get(id) || { job_id: id };
  if (ev.event === "job") Object.assign(job, data);
  else if (ev.event === "phase") Object.assign(job, { phase: data.phase, status: "running" });
  else if (ev.event === "progress") {
    const { preview_iteration: pit, resumed_from: _r, ...fields } = data;
    Object.assign(job, fields, { status: "running" });
    if (pit) {
      state.previewIt.set(id, pit);
      job.preview = `/jobs/${id}/preview`;
    }
    const pts = state.losses.get(id) || [];
    if (!pts.length || pts[pts.length - 1][0] < data.iteration) pts.push([data.iteration, data.loss]);
    state.losses.set(id, pts.slice(-LOSS_POINTS));
  } else if (ev.event === "end") Object.assign(job, data, { eta_s: null });
  state.jobData.set(id, job);
  const node = state.jobs.get(id);
  if (node) renderJob(node, job);
  return ev.event === "end";
}

async function followJob(id) {
  const f = { ctrl: new AbortController(), last: null, live: false };
  state.follows.set(id, f);
  let tries = 0, ended = false;
  try {  // the curve so far, once; the stream brings the rest
    const full = await api("GET", `/jobs/${id}`);
    state.losses.set(id, full.losses || []);
    state.lossFetched.set(id, full.status);
  } catch (e) { /* drawn from the stream alone */ }
  while (!ended && !f.ctrl.signal.aborted && tries < STREAM_TRIES) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (state.token) headers.Authorization = `Bearer ${state.token}`;
      if (f.last) headers["Last-Event-ID"] = f.last;
      const r = await fetch(`/jobs/${id}/events`, { headers, cache: "no-store", signal: f.ctrl.signal });
      if (r.status === 204 || r.status === 404) break; // ended (or gone): nothing more to follow
      if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
      f.live = true;
      tries = 0;
      for await (const ev of sseEvents(r.body)) {
        if (ev.id) f.last = ev.id;
        ended = onJobEvent(id, ev) || ended;
      }
    } catch (e) {
      if (f.ctrl.signal.aborted) break;
    }
    f.live = false;
    if (!ended) {
      tries += 1;
      state.forceList = true; // meanwhile the list is polled for this job
      await sleep(POLL_MS * tries);
    }
  }
  f.live = false;
  state.follows.delete(id);
  if (!ended && !f.ctrl.signal.aborted) state.unfollowable.add(id);
  state.forceList = true; // the ended job's final record, its domain and mask
  tick();
}

function followActiveJobs(jobs) {
  for (const j of jobs) {
    if (state.follows.size >= MAX_STREAMS) break;
    if (isActive(j) && !state.follows.has(j.job_id) && !state.unfollowable.has(j.job_id)) followJob(j.job_id);
  }
}

// every active job has a live stream: the list need not be polled for progress
function streamsCover() {
  for (const [id, j] of state.jobData) {
    if (isActive(j) && !(state.follows.get(id) || {}).live) return false;
  }
  return true;
}

async function refreshLosses(jobs) {
  // the curve of polled running jobs each tick, of others once after they end (a followed
  // job's curve grows from its stream)
  const want = jobs.filter((j) => !state.follows.has(j.job_id) && (j.status === "running" ||
                                  (state.lossFetched.get(j.job_id) !== j.status))).slice(0, 6);
  await Promise.all(want.map(async (j) => {
    try {
      const full = await api("GET", `/jobs/${j.job_id}`);
      state.losses.set(j.job_id, full.losses || []);
      state.lossFetched.set(j.job_id, j.status);
    } catch (e) { /* the next tick retries */ }
  }));
}

async function refreshJobs() {
  const jobs = await api("GET", "/jobs?limit=30");
  await refreshLosses(jobs);
  state.jobData = new Map(jobs.map((j) => [j.job_id,
    state.follows.has(j.job_id) ? Object.assign(state.jobData.get(j.job_id) || {}, j) : j]));
  const box = $("#jobs");
  if (!jobs.length) {
    box.replaceChildren(h("p", { class: "muted" }, "No jobs yet: launch a search."));
    state.jobs.clear();
  } else {
    if (box.querySelector("p.muted")) box.replaceChildren();
    const seen = new Set();
    jobs.forEach((job, i) => {
      seen.add(job.job_id);
      let node = state.jobs.get(job.job_id);
      if (!node) {
        node = jobNode(job);
        state.jobs.set(job.job_id, node);
      }
      if (box.children[i] !== node) box.insertBefore(node, box.children[i] || null);
      renderJob(node, state.jobData.get(job.job_id));
    });
    for (const [id, node] of state.jobs) {
      if (!seen.has(id)) { node.remove(); state.jobs.delete(id); }
    }
  }
  followActiveJobs(jobs);
  const counts = {};
  for (const j of jobs) counts[j.status] = (counts[j.status] || 0) + 1;
  $("#jobs-summary").textContent = Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(" · ");
}

async function cancelJob(id) {
  try {
    await api("DELETE", `/jobs/${id}`, { admin: true });
    state.forceList = true;
    tick();
  } catch (e) {
    alert(`Cancel failed: ${e.message}`);
  }
}

// ---------- launch ----------

async function refreshDatasets() {
  const sel = $("#f-dataset");
  try {
    const sets = await api("GET", "/datasets");
    const current = sel.value;
    sel.replaceChildren(...sets.map((d) => h("option", { value: d.name, disabled: !!d.error },
      `${d.name} (${d.images} images${d.error ? ", unusable" : ""})`)));
    if (!sets.length) sel.append(h("option", { value: "" }, "no datasets under $SLT_HOME/datasets"));
    if (current) sel.value = current;
    if (!state.domainEdited) $("#f-domain").value = domainFrom(sel.value);
  } catch (e) {
    sel.replaceChildren(h("option", { value: "" }, `datasets unavailable: ${e.message}`));
  }
}

function domainFrom(name) {
  return (name || "").toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^[-_]+/, "").slice(0, 64);
}

function initLaunch() {
  $("#f-dataset").addEventListener("change", (ev) => {
    if (!state.domainEdited) $("#f-domain").value = domainFrom(ev.target.value);
  });
  $("#f-domain").addEventListener("input", () => { state.domainEdited = true; });
  $("#launch").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = $("#launch-result");
    const num = (id, int) => {
      const v = $(id).value.trim();
      return v === "" ? undefined : (int ? parseInt(v, 10) : parseFloat(v));
    };
    const config = { k: num("#f-k"), iterations: num("#f-iterations", true),
                     batch_size: num("#f-batch", true),
                     pruning: $("#f-pruning").value || undefined, seed: num("#f-seed", true) };
    for (const k of Object.keys(config)) if (config[k] === undefined) delete config[k];
    const body = { domain: $("#f-domain").value.trim(), dataset: $("#f-dataset").value,
                   config, promote: $("#f-promote").checked };
    if ($("#f-preset").value) body.preset = $("#f-preset").value;
    $("#f-submit").disabled = true;
    try {
      const res = await api("POST", "/masks", { body, admin: true });
      toast(out, `Job ${short(res.job_id)} ${res.status}.`);
      state.forceList = true;
      tick();
    } catch (e) {
      toast(out, `Refused (${e.status}): ${e.message}`, false);
    } finally {
      $("#f-submit").disabled = false;
    }
  });
}

// ---------- domains ----------

async function putDomain(name, body) {
  try {
    await api("PUT", `/domains/${encodeURIComponent(name)}`, { body, admin: true });
    await tick();
  } catch (e) {
    alert(`${name}: ${e.message}`);
  }
}

function setResident(badge, resident) {
  badge.textContent = resident ? "resident" : "not resident";
  badge.classList.toggle("resident", resident);
  badge.classList.toggle("cold", !resident);
  badge.title = resident ? "its masked weights are on this replica's device" : "built on first use";
  return badge;
}

function renderDomains(domains) {
  const box = $("#domains");
  $("#domains-summary").textContent = `${domains.length} domain${domains.length === 1 ? "" : "s"}`;
  $("#domain-names")?.remove();
  document.body.append(h("datalist", { id: "domain-names" },
    domains.map((d) => h("option", { value: d.name }))));
  if (!domains.length) {
    box.replaceChildren(h("p", { class: "muted" },
      "No domain yet: a finished search with “promote” creates one."));
    return;
  }
  const nodes = domains.map((d) => {
    const key = `${d.name}:${d.mask_id}:${d.pinned}:${d.history.length}`;
    const old = box.querySelector(`article[data-domain="${CSS.escape(d.name)}"]`);
    if (old && old.dataset.key === key) {
      setResident(old.querySelector(".residency"), d.resident);
      return old;
    }
    const previous = d.history.find((x) => x.mask_id !== d.mask_id);
    const sample = h("img", { class: "sample", alt: `${d.name} samples`,
      src: `/generate?domain=${encodeURIComponent(d.name)}&n=${SAMPLE_N}&seed=0&v=${short(d.mask_id)}` });
    return h("article", { class: "domain", "data-domain": d.name, "data-key": key },
      h("div", { class: "domain-head" },
        h("strong", {}, d.name),
        h("code", { title: d.mask_id }, short(d.mask_id)),
        d.pinned ? h("span", { class: "badge pinned" }, "pinned") : null,
        setResident(h("span", { class: "badge residency" }), d.resident),
        h("span", { class: "spacer" }),
        previous ? h("button", { type: "button", class: "small rollback",
          title: `back to ${previous.mask_id}`,
          onclick: () => putDomain(d.name, { mask_id: previous.mask_id }) }, "Roll back") : null,
        h("button", { type: "button", class: "small ghost pin",
          onclick: () => putDomain(d.name, { pinned: !d.pinned }) }, d.pinned ? "Unpin" : "Pin")),
      sample,
      h("details", { class: "history" },
        h("summary", {}, `history (${d.history.length})`),
        h("ol", {}, d.history.map((x) => h("li", {},
          h("code", { title: x.mask_id }, short(x.mask_id)), " ",
          h("span", { class: "muted" }, `${fmtTime(x.at)}${x.by ? " · " + x.by : ""}`), " ",
          x.mask_id === d.mask_id ? h("span", { class: "badge" }, "active")
            : h("button", { type: "button", class: "small ghost",
                onclick: () => putDomain(d.name, { mask_id: x.mask_id }) }, "Activate"))))));
  });
  box.replaceChildren(...nodes);
}

// ---------- masks ----------

function metricsText(m) {
  // evaluation is keyed by split ({"heldout": {...}}); held-out numbers are the ones to report
  const ev = m.evaluation || {};
  const split = "heldout" in ev ? "heldout" : Object.keys(ev)[0];
  const src = Object.assign({}, m.metrics || {}, split ? ev[split] : {});
  const keys = ["fid", "kid", "precision", "recall", "density", "coverage", "loss"];
  const parts = keys.filter((k) => typeof src[k] === "number").map((k) => `${k} ${fmtNum(src[k], 3)}`);
  if (split && parts.length) {
    const e = ev[split];
    parts.push(`(${split}${typeof e.n === "number" ? ", n " + e.n : ""}` +
               `${e.features ? ", " + e.features : ""})`);
  }
  return parts.join(" · ") || "—";
}

function renderMasks(masks) {
  const body = $("#masks tbody");
  if (!masks.length) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No masks yet.")));
    return;
  }
  body.replaceChildren(...masks.map((m) => {
    if (m.error) {
      return h("tr", {}, h("td", {}, h("code", {}, short(m.mask_id))),
        h("td", { colspan: 9, class: "error" }, m.error));
    }
    const input = h("input", { list: "domain-names", value: m.domain || "", size: 10,
                               "aria-label": "domain", pattern: "[a-z0-9][a-z0-9_\\-]{0,63}" });
    const serving = [m.served ? "servable" : "other base",
                     m.domains.length ? `active: ${m.domains.join(", ")}` : "",
                     m.resident ? "resident" : ""].filter(Boolean).join(" · ");
    return h("tr", { "data-mask": m.mask_id },
      h("td", {}, h("a", { href: `/masks/${m.mask_id}/file`, title: `download ${m.mask_id}` },
        h("code", {}, short(m.mask_id)))),
      h("td", {}, m.domain || "—"),
      h("td", {}, fmtNum(typeof m.k === "number" ? m.k : NaN, 3)),
      h("td", {}, m.pruning || "—"),
      h("td", {}, typeof m.kept_fraction === "number" ? `${(100 * m.kept_fraction).toFixed(1)}%` : "—"),
      h("td", {}, fmtNum(m.bits_per_weight, 3)),
      h("td", {}, metricsText(m)),
      h("td", {}, fmtTime(m.created)),
      h("td", {}, serving),
      h("td", { class: "promote" }, input,
        h("button", { type: "button", class: "small", disabled: !m.served,
          onclick: () => input.value && putDomain(input.value.trim(), { mask_id: m.mask_id }) },
          "Promote")));
  }));
}

function initImport() {
  $("#import-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    const out = $("#import-result");
    const form = new FormData();
    form.append("file", file);
    try {
      const m = await api("POST", "/masks/import", { form, admin: true });
      toast(out, `imported ${short(m.mask_id)}`);
      tick();
    } catch (e) {
      toast(out, `refused (${e.status}): ${e.message}`, false);
    }
    ev.target.value = "";
  });
}

// ---------- loop ----------

let running = null;

async function tick() {
  if (running) return running;
  running = (async () => {
    const conn = $("#conn");
    try {
      // the job list: while some active job is not streamed, after a change, else now and then
      const listDue = state.forceList || !streamsCover() || state.tick % LIST_EVERY === 0;
      state.forceList = false;
      const [domains] = await Promise.all([api("GET", "/domains"), listDue ? refreshJobs() : null]);
      const changed = JSON.stringify(domains) !== JSON.stringify(state.domains);
      state.domains = domains;
      if (changed) renderDomains(domains);
      if (changed || state.tick % 4 === 0) {
        state.masks = await api("GET", "/masks");
        renderMasks(state.masks);
      }
      if (state.tick % 10 === 0) await refreshDatasets();
      conn.textContent = "live";
      conn.className = "pill ok";
    } catch (e) {
      conn.textContent = `offline: ${e.message}`;
      conn.className = "pill bad";
    } finally {
      state.tick += 1;
      running = null;
    }
  })();
  return running;
}

function start() {
  initToken();
  initLaunch();
  initImport();
  tick();
  setInterval(() => { if (!document.hidden) tick(); }, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
