// Public playground: a domain's grid (GET /generate) and a latent interpolation strip
// (GET /interpolate), each with a link to the exact query (the same pixels again) and the
// provenance its PNG carries in text chunks. Images are fetched (so a private deployment's
// token goes in a header, never in a URL) and shown from blobs. No framework, no build step;
// text only through textContent.
"use strict";

const TOKEN_KEY = "slt-read-token";
const PRIVATE = document.body.dataset.private === "true";
const $ = (sel) => document.querySelector(sel);
const state = { token: localStorage.getItem(TOKEN_KEY) || localStorage.getItem("slt-admin-token") || "" };

function headers() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

function askToken(message) {
  const dlg = $("#token-dialog");
  $("#token-error").hidden = !message;
  $("#token-error").textContent = message || "";
  if (!dlg.open) dlg.showModal();
}

async function get(path) {
  const r = await fetch(path, { headers: headers(), cache: "no-store" });
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
    if (r.status === 401) askToken(detail);
    throw new Error(`${r.status}: ${detail}`);
  }
  return r;
}

// the tEXt chunks of a PNG: {keyword: text}
function pngText(buf) {
  const b = new DataView(buf), out = {};
  let off = 8;
  while (off + 8 <= b.byteLength) {
    const len = b.getUint32(off);
    const type = String.fromCharCode(...new Uint8Array(buf, off + 4, 4));
    if (type === "tEXt") {
      const data = new Uint8Array(buf, off + 8, len);
      const nul = data.indexOf(0);
      const latin1 = (a) => Array.from(a, (c) => String.fromCharCode(c)).join("");
      out[latin1(data.subarray(0, nul))] = latin1(data.subarray(nul + 1));
    }
    if (type === "IEND") break;
    off += 12 + len;
  }
  return out;
}

async function show(path, img, link, prov, round) {
  const r = await get(path);
  const buf = await r.arrayBuffer();
  if (round !== state.round) return; // a newer query was asked meanwhile: its images win
  link.href = new URL(path, location.href).href;
  link.textContent = `reproduce: ${path}`;
  const text = pngText(buf);
  prov.textContent = Object.entries(text).map(([k, v]) => `${k}: ${v}`).join("\n");
  const old = img.src;
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error(`${path}: not an image`));
    img.src = URL.createObjectURL(new Blob([buf], { type: "image/png" }));
  });
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}

function query() {
  const v = (id) => $(id).value.trim();
  return { domain: v("#pg-domain"), seed: v("#pg-seed"), n: v("#pg-n"), seed_to: v("#pg-seed-to"),
           steps: v("#pg-steps"), index: v("#pg-index") };
}

async function render() {
  const q = query();
  const round = state.round = (state.round || 0) + 1;
  delete document.body.dataset.rendered;
  const err = $("#pg-error");
  err.hidden = true;
  history.replaceState(null, "", `?${new URLSearchParams(q)}`); // this page, shareable
  const grid = `/generate?${new URLSearchParams({ domain: q.domain, seed: q.seed, n: q.n })}`;
  const strip = `/interpolate?${new URLSearchParams({ domain: q.domain, seed: q.seed, seed_to: q.seed_to,
                                                      steps: q.steps, index: q.index })}`;
  try {
    await Promise.all([show(grid, $("#pg-grid"), $("#pg-grid-link"), $("#pg-grid-prov"), round),
                       show(strip, $("#pg-strip"), $("#pg-strip-link"), $("#pg-strip-prov"), round)]);
    if (round === state.round) document.body.dataset.rendered = new URLSearchParams(q).toString();
  } catch (e) {
    err.textContent = e.message;
    err.hidden = false;
  }
}

async function loadDomains() {
  const sel = $("#pg-domain");
  const domains = await (await get("/domains")).json();
  sel.replaceChildren(...domains.map((d) => {
    const o = document.createElement("option");
    o.value = o.textContent = d.name;
    return o;
  }));
  if (!domains.length) {
    $("#pg-error").textContent = "No domain yet: a search with “promote” (or the demo) makes one.";
    $("#pg-error").hidden = false;
  }
  return domains.length > 0;
}

async function start() {
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("#token-input").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    $("#token-dialog").close();
    start();
  });
  $("#pg-form").onsubmit = (ev) => { ev.preventDefault(); render(); };
  if (PRIVATE && !state.token) { askToken(""); return; }
  try {
    if (!(await loadDomains())) return;
  } catch (e) {
    $("#pg-error").textContent = e.message;
    $("#pg-error").hidden = false;
    return;
  }
  const given = new URLSearchParams(location.search); // a shared link fills the form
  for (const [k, id] of [["domain", "#pg-domain"], ["seed", "#pg-seed"], ["n", "#pg-n"],
                         ["seed_to", "#pg-seed-to"], ["steps", "#pg-steps"], ["index", "#pg-index"]]) {
    if (given.has(k)) $(id).value = given.get(k);
  }
  render();
}

document.addEventListener("DOMContentLoaded", start);
