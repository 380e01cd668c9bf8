// The page of `backflow serve`: an overview of syncs and entities, a page per sync (history,
// chart, samples, Run now, Full resync) and per entity (find a golden record). It reads the
// same JSON API as scripts do; with a token, it asks for it once and keeps it in this tab.
// Every value is put in the page as text (never as HTML).
"use strict";

const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const signout = document.getElementById("signout");
const KEY = "backflow-token";
const COLORS = { created: "var(--created)", updated: "var(--updated)", deleted: "var(--deleted)", rejected: "var(--rejected)" };
let refresh = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class NeedsToken extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = sessionStorage.getItem(KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, { ...options, headers });
  if (r.status === 401) throw new NeedsToken();
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

function when(t) {
  if (!t) return "—";
  const d = new Date(t);
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  const rel = Math.abs(s) < 60 ? `${Math.abs(s)}s` : Math.abs(s) < 3600 ? `${Math.round(Math.abs(s) / 60)}m` : Math.abs(s) < 86400 ? `${Math.round(Math.abs(s) / 3600)}h` : `${Math.round(Math.abs(s) / 86400)}d`;
  return s >= 0 ? `${rel} ago` : `in ${rel}`;
}

function badge(status) {
  return el("span", { class: `badge ${status || ""}` }, status || "never run");
}

function duration(run) {
  if (!run.started_at || !run.finished_at) return "";
  const ms = new Date(run.finished_at) - new Date(run.started_at);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// Stacked bars, one per run (oldest left): created, updated, deleted, rejected.
function chart(runs, width, height) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  const list = runs.slice().reverse().filter((r) => r.counts);
  const total = (r) => ["created", "updated", "deleted", "rejected"].reduce((a, k) => a + (r.counts[k] || 0), 0);
  const max = Math.max(1, ...list.map(total));
  const bar = Math.min(14, Math.max(2, Math.floor(width / Math.max(list.length, 1)) - 2));
  list.forEach((r, i) => {
    let y = height;
    for (const k of ["created", "updated", "deleted", "rejected"]) {
      const h = Math.round(((r.counts[k] || 0) / max) * (height - 4));
      if (!h) continue;
      y -= h;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", i * (bar + 2) + 1);
      rect.setAttribute("y", y);
      rect.setAttribute("width", bar);
      rect.setAttribute("height", h);
      rect.setAttribute("fill", COLORS[k]);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${r.status}, ${new Date(r.started_at).toLocaleString()}: ${k} ${r.counts[k]}`;
      rect.append(title);
      svg.append(rect);
    }
    if (r.status !== "succeeded") {
      const mark = document.createElementNS(ns, "rect");
      mark.setAttribute("x", i * (bar + 2) + 1);
      mark.setAttribute("y", height - 3);
      mark.setAttribute("width", bar);
      mark.setAttribute("height", 3);
      mark.setAttribute("fill", r.status === "skipped" ? "var(--warn)" : "var(--bad)");
      svg.append(mark);
    }
  });
  return svg;
}

function legend() {
  return el("div", { class: "legend" }, Object.entries(COLORS).map(([k, c]) => el("span", {}, el("i", { style: `background:${c}` }), k)));
}

async function overview() {
  const [syncs, entities] = await Promise.all([api("/api/syncs"), api("/api/entities")]);
  const rows = [...entities, ...syncs];
  const recent = await Promise.all(
    rows.map((t) => api(`/api/${t.kind === "entity" ? "entities" : "syncs"}/${encodeURIComponent(t.name)}/runs?limit=20`).catch(() => [])),
  );
  const table = el(
    "table",
    { id: "targets" },
    el("thead", {}, el("tr", {}, ["name", "kind", "state", "schedule", "last run", "", "created", "updated", "deleted", "rejected", "next run", "recent runs"].map((h, i) => el("th", { class: i >= 6 && i <= 9 ? "num" : null }, h)))),
    el(
      "tbody",
      {},
      rows.map((t, i) => {
        const last = t.last_run || {};
        const c = last.counts || {};
        const href = `#/${t.kind}/${encodeURIComponent(t.name)}`;
        return el(
          "tr",
          { class: "clickable", "data-name": t.name, onclick: () => (location.hash = href) },
          el("td", {}, el("a", { href }, t.name)),
          el("td", { class: "muted" }, t.kind),
          el("td", {}, t.state === "idle" ? el("span", { class: "muted" }, "idle") : badge(t.state)),
          el("td", { class: "muted" }, t.after.length ? `after ${t.after.join(", ")}` : t.schedule),
          el("td", {}, badge(last.status)),
          el("td", { class: "muted" }, when(last.finished_at)),
          ["created", "updated", "deleted", "rejected"].map((k) => el("td", { class: "num" }, c[k] ?? "")),
          el("td", { class: "muted" }, t.next_run ? when(t.next_run) : "—"),
          el("td", {}, chart(recent[i], 120, 22)),
        );
      }),
    ),
  );
  main.replaceChildren(
    el("h1", {}, "Syncs and entities"),
    rows.length ? table : el("p", { class: "muted" }, "This project has no syncs or entities."),
    legend(),
  );
  const running = rows.filter((t) => t.state !== "idle").length;
  statusLine.textContent = `${rows.length} syncs and entities, ${running} running`;
}

async function samples(box, runId) {
  box.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  const records = await api(`/api/runs/${runId}/records`);
  if (!records.length) {
    box.replaceChildren(el("p", { class: "muted" }, `Run ${runId}: no invalid or rejected records.`));
    return;
  }
  box.replaceChildren(
    el("h2", {}, `Invalid and rejected records of run ${runId}`),
    el(
      "table",
      { id: "samples" },
      el("thead", {}, el("tr", {}, ["kind", "key", "reason", "record"].map((h) => el("th", {}, h)))),
      el("tbody", {}, records.map((s) => el("tr", {}, el("td", {}, s.kind), el("td", {}, s.key ?? "NULL"), el("td", {}, s.reason), el("td", {}, el("pre", {}, JSON.stringify(s.record, null, 1)))))),
    ),
  );
}

async function target(kind, name) {
  const plural = kind === "entity" ? "entities" : "syncs";
  const base = `/api/${plural}/${encodeURIComponent(name)}`;
  const [t, runs] = await Promise.all([api(base), api(`${base}/runs?limit=50`)]);
  const note = el("span", { class: "muted", id: "note" });
  const start = async (full) => {
    if (full && !confirm(`Full resync of ${name}: every row is sent again. Go on?`)) return;
    note.textContent = "starting…";
    try {
      const r = await api(`${base}/runs`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ full_resync: full }) });
      note.textContent = `run ${r.run_id} started`;
    } catch (e) {
      if (e instanceof NeedsToken) throw e;
      note.textContent = e.message;
    }
    render();
  };
  const busy = t.state !== "idle";
  const box = el("div", { id: "samples-box" });
  const config = Object.entries(t.config).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : v ?? "—"}`).join(" · ");
  const table = el(
    "table",
    { id: "runs" },
    el("thead", {}, el("tr", {}, ["started", "status", "read", "created", "updated", "deleted", "unchanged", "rejected", "invalid", "took", "started by", "error"].map((h, i) => el("th", { class: i >= 2 && i <= 8 ? "num" : null }, h)))),
    el(
      "tbody",
      {},
      runs.map((r) => {
        const c = r.counts || {};
        return el(
          "tr",
          { class: "clickable run", "data-run": r.run_id, "data-status": r.status, onclick: (e) => { for (const x of table.querySelectorAll("tr.selected")) x.classList.remove("selected"); e.currentTarget.classList.add("selected"); samples(box, r.run_id).catch(show); } },
          el("td", { title: r.run_id }, r.started_at ? new Date(r.started_at).toLocaleString() : "—"),
          el("td", {}, badge(r.status)),
          ["read", "created", "updated", "deleted", "unchanged", "rejected", "invalid"].map((k) => el("td", { class: "num" }, c[k] ?? "")),
          el("td", { class: "muted" }, duration(r)),
          el("td", { class: "muted" }, r.trigger ? (r.keys != null ? `${r.trigger} (${r.keys})` : r.trigger) : "—"),
          el("td", { class: "error" }, r.error || ""),
        );
      }),
    ),
  );
  const children = [
    el("h1", {}, `${kind} ${name} `, t.state === "idle" ? null : badge(t.state)),
    el("p", { class: "muted" }, `${t.after.length ? "after " + t.after.join(", ") : t.schedule}${t.next_run ? " · next run " + when(t.next_run) : ""} · ${config}`),
    el("div", { class: "actions" }, el("button", { class: "primary", id: "run-now", disabled: busy, onclick: () => start(false).catch(show) }, "Run now"), el("button", { id: "full-resync", disabled: busy, onclick: () => start(true).catch(show) }, "Full resync"), note),
    el("h2", {}, "Runs"),
    chart(runs, Math.min(900, Math.max(200, runs.length * 18)), 90),
    legend(),
    runs.length ? table : el("p", { class: "muted" }, "No runs yet."),
    box,
  ];
  if (kind === "entity") children.push(goldenFinder(name));
  main.replaceChildren(...children);
  statusLine.textContent = busy ? `${name} is ${t.state}` : "";
}

function goldenFinder(entity) {
  const out = el("div", { id: "golden" });
  const find = async (query) => {
    out.replaceChildren(el("p", { class: "muted" }, "Looking…"));
    try {
      const g = await api(`/api/entities/${encodeURIComponent(entity)}/golden${query}`);
      out.replaceChildren(
        el("h2", {}, `Golden record ${g.golden_id}${g.merged_into ? ` (merged into ${g.merged_into})` : g.retired_at ? ` (retired ${g.retired_at})` : ""}`),
        g.retired_reason ? el("p", { class: "muted", id: "retired" }, g.retired_reason) : "",
        el("table", { id: "golden-fields" }, el("thead", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "value"), el("th", {}, "from"))), el("tbody", {}, g.fields.map((f) => el("tr", {}, el("td", {}, f.field), el("td", {}, f.value ?? "NULL"), el("td", { class: "muted" }, f.source ?? "—"))))),
        el("h2", {}, "ID map"),
        el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "source"), el("th", {}, "id"), el("th", {}, "linked by"))), el("tbody", {}, g.links.map((l) => el("tr", {}, el("td", {}, l.source), el("td", {}, l.source_id), el("td", { class: "muted" }, l.linked_by ?? "—"))))),
        el("h2", {}, "Transaction log"),
        el("table", {}, el("thead", {}, el("tr", {}, ["at", "op", "field", "old", "new", "source"].map((h) => el("th", {}, h)))), el("tbody", {}, g.history.map((e) => el("tr", {}, el("td", {}, e.at), el("td", {}, e.op), el("td", {}, e.field ?? ""), el("td", {}, e.old_value ?? ""), el("td", {}, e.new_value ?? ""), el("td", { class: "muted" }, e.source ? `${e.source} ${e.source_id ?? ""}` : ""))))),
      );
    } catch (e) {
      if (e instanceof NeedsToken) return show(e);
      out.replaceChildren(el("p", { class: "error" }, e.message));
    }
  };
  const byId = el("input", { name: "golden", placeholder: "golden id", size: 10 });
  const source = el("input", { name: "source", placeholder: "source", size: 10 });
  const id = el("input", { name: "id", placeholder: "id in that source", size: 14 });
  return el(
    "div",
    {},
    el("h2", {}, "Find a golden record"),
    el("form", { class: "find", onsubmit: (e) => { e.preventDefault(); find(`/${encodeURIComponent(byId.value.trim())}`); } }, byId, el("button", { type: "submit" }, "by golden id")),
    el("form", { class: "find", onsubmit: (e) => { e.preventDefault(); find(`?source=${encodeURIComponent(source.value.trim())}&id=${encodeURIComponent(id.value.trim())}`); } }, source, id, el("button", { type: "submit" }, "by source id")),
    out,
  );
}

function askToken() {
  clearInterval(refresh);
  const form = document.getElementById("token-form").content.cloneNode(true).firstElementChild;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, form.elements.token.value.trim());
    render();
  });
  if (sessionStorage.getItem(KEY)) {
    const err = form.querySelector(".error");
    err.textContent = "That token was refused.";
    err.hidden = false;
  }
  main.replaceChildren(form);
  statusLine.textContent = "";
}

function show(e) {
  if (e instanceof NeedsToken) return askToken();
  main.replaceChildren(el("p", { class: "error" }, e.message));
}

let rendering = false;
async function render() {
  if (rendering) return;
  rendering = true;
  signout.hidden = !sessionStorage.getItem(KEY);
  const [, kind, name] = location.hash.split("/");
  try {
    if ((kind === "sync" || kind === "entity") && name) await target(kind, decodeURIComponent(name));
    else await overview();
  } catch (e) {
    show(e);
    rendering = false;
    return;
  }
  rendering = false;
  clearInterval(refresh);
  // Live: a page on a target refreshes every 2 s (keeping a selected run's samples), the overview every 5 s.
  refresh = setInterval(() => {
    if (document.querySelector("#samples-box > *")) return;
    render();
  }, kind ? 2000 : 5000);
}

signout.addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  render();
});
window.addEventListener("hashchange", render);
render();
