// edgeclf studio: the pages' behaviour. Our own, no dependencies, served from /static (works offline).
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function api(method, url, body) {
  const r = await fetch(url, {
    method, credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data;
  try { data = await r.json(); } catch (e) { data = {error: `HTTP ${r.status}`}; }
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function flash(message, kind = "error") {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = kind;
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, kind === "error" ? 8000 : 3000);
}

const num = (v, digits) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));
const ago = (s) => (s === null || s === undefined ? "-" : s < 120 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`);

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
}

// ---------------------------------------------------------------- fleet
function renderFleet(snap) {
  const tbody = document.querySelector("#fleet tbody");
  tbody.replaceChildren();
  if (!snap.devices.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = document.createElement("td");
    td.colSpan = 11;
    td.textContent = `No device seen yet on ${snap.broker || "any broker"}.`;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
  for (const d of snap.devices) {
    const tr = document.createElement("tr");
    tr.dataset.device = d.device;
    tr.className = `state-${d.state}`;
    cell(tr, d.device, "device");
    cell(tr, d.state, "state");
    cell(tr, num(d.fps, 1));
    cell(tr, `${num(d.latency_p50_ms, 1)} / ${num(d.latency_p95_ms, 1)}`);
    cell(tr, d.queue_depth);
    cell(tr, d.model_name);
    cell(tr, d.model_version, "version");
    cell(tr, d.last_label);
    cell(tr, d.samples);
    cell(tr, d.last_update ? `${d.last_update.outcome} ${d.last_update.version || ""}` : null, "update");
    cell(tr, ago(d.seen_s_ago));
    tbody.appendChild(tr);
  }
  const conn = document.getElementById("fleet-connection");
  conn.textContent = snap.connected ? `connected to ${snap.broker}` : `not connected${snap.error ? ": " + snap.error : ""}`;
}

function startFleet() {
  const events = new EventSource("/api/fleet/events");
  events.onmessage = (e) => renderFleet(JSON.parse(e.data));
  events.onerror = () => { document.getElementById("fleet-connection").textContent = "studio unreachable; retrying"; };
}

// ---------------------------------------------------------------- samples
function startSamples() {
  const {labels, keys} = JSON.parse(document.getElementById("studio-labels").textContent);
  const cards = [...document.querySelectorAll(".card")];
  const selected = new Set();
  const undo = [];
  let focus = cards.findIndex((c) => c.dataset.status === "pending");
  if (focus < 0) focus = 0;
  let queue = Promise.resolve();

  const setCounts = (counts) => {
    document.getElementById("count-pending").textContent = counts.pending;
    document.getElementById("count-labelled").textContent = counts.labelled;
  };
  const show = (card, status, label) => {
    card.dataset.status = status;
    card.dataset.label = label || "";
    card.className = card.className.replace(/status-\w+/, `status-${status}`);
    card.querySelector(".outcome").textContent = status === "labelled" ? label : status === "skipped" ? "discarded" : "";
  };
  const setFocus = (i) => {
    if (!cards.length) return;
    focus = Math.max(0, Math.min(cards.length - 1, i));
    cards.forEach((c, j) => c.classList.toggle("focused", j === focus));
    cards[focus].scrollIntoView({block: "nearest"});
  };
  const advance = () => {
    const next = cards.findIndex((c, j) => j > focus && c.dataset.status === "pending");
    if (next >= 0) { setFocus(next); return; }
    if (!cards.some((c) => c.dataset.status === "pending")) {
      queue.then(() => {  // everything on this page is done: the next page of what is left
        if (!cards.some((c) => c.classList.contains("saving"))) location.reload();
      });
    }
  };
  const run = (work) => { queue = queue.then(work, work); return queue; };
  const updateBulk = () => {
    document.getElementById("bulk").hidden = selected.size === 0;
    document.getElementById("bulk-count").textContent = selected.size;
    cards.forEach((c) => c.classList.toggle("selected", selected.has(+c.dataset.id)));
  };

  function label(card, value) {
    act(card, "labelled", value, "label", {label: value});
  }

  function skip(card) {
    act(card, "skipped", null, "skip", undefined);
  }

  // Show the outcome at once, send it, keep what it replaced for undo; put the card back on failure.
  function act(card, status, value, endpoint, body) {
    const id = +card.dataset.id;
    card.classList.add("saving");
    const was = {status: card.dataset.status, label: card.dataset.label || null};
    show(card, status, value);
    run(async () => {
      try {
        const r = await api("POST", `/api/samples/${id}/${endpoint}`, body);
        undo.push([r.before]);
        setCounts(r.counts);
      } catch (e) {
        show(card, was.status, was.label);
        flash(`sample ${id}: ${e.message}`);
      } finally { card.classList.remove("saving"); }
    });
  }

  function bulk(value) {
    const ids = [...selected];
    run(async () => {
      try {
        const r = await api("POST", "/api/samples/bulk", {ids, label: value});
        undo.push(r.before);
        setCounts(r.counts);
        const done = new Set(ids);  // what was sent, whatever the selection is now
        for (const c of cards) if (done.has(+c.dataset.id)) show(c, "labelled", value);
        for (const id of ids) selected.delete(id);
        updateBulk();
        flash(`${r.labelled} samples labelled ${value}`, "info");
        advance();
      } catch (e) { flash(e.message); }
    });
  }

  function undoLast() {
    run(async () => {
      const last = undo.pop();
      if (!last) { flash("nothing to undo", "info"); return; }
      try {
        for (const b of last) {
          const r = await api("POST", `/api/samples/${b.id}/restore`, {status: b.status, label: b.label});
          setCounts(r.counts);
          const card = cards.find((c) => +c.dataset.id === b.id);
          if (card) { show(card, r.after.status, r.after.label); setFocus(cards.indexOf(card)); }
        }
      } catch (e) { flash(e.message); }
    });
  }

  async function selectSimilar(card) {
    try {
      const r = await api("GET", `/api/samples/${card.dataset.id}/similar`);
      const onPage = new Set(cards.map((c) => +c.dataset.id));
      r.ids.filter((i) => onPage.has(i)).forEach((i) => selected.add(i));
      updateBulk();
      flash(`${r.ids.length} near-duplicate(s) selected`, "info");
    } catch (e) { flash(e.message); }
  }

  document.addEventListener("keydown", (e) => {
    // keys belong to what has focus when it is a control (a form field, a link, a button other than
    // a card's label buttons), never to the gallery
    if (e.target.closest("input, select, textarea, a, summary, [contenteditable], button:not(.label-btn)")
        || e.ctrlKey || e.metaKey || e.altKey || !cards.length) return;
    const card = cards[focus];
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (keys[key] !== undefined) {
      e.preventDefault();
      if (selected.size) { bulk(keys[key]); return; }
      label(card, keys[key]);
      advance();
    } else if (key === "Enter") {
      e.preventDefault();
      const guess = card.dataset.predicted;
      if (!labels.includes(guess)) { flash(`sample ${card.dataset.id} has no guess among the labels`); return; }
      label(card, guess);
      advance();
    } else if (key === "x") {
      e.preventDefault(); skip(card); advance();
    } else if (key === "u") {
      e.preventDefault(); undoLast();
    } else if (key === "ArrowRight" || key === "ArrowDown") {
      e.preventDefault(); setFocus(focus + 1);
    } else if (key === "ArrowLeft" || key === "ArrowUp") {
      e.preventDefault(); setFocus(focus - 1);
    } else if (key === " ") {
      e.preventDefault();
      const id = +card.dataset.id;
      selected.has(id) ? selected.delete(id) : selected.add(id);
      updateBulk();
    } else if (key === "s") {
      e.preventDefault(); selectSimilar(card);
    } else if (key === "Escape") {
      selected.clear(); updateBulk();
    }
  });
  for (const card of cards) {
    card.addEventListener("click", (e) => {
      const btn = e.target.closest(".label-btn");
      setFocus(cards.indexOf(card));
      if (btn) { label(card, btn.dataset.label); advance(); return; }
      if (e.shiftKey || e.ctrlKey || e.metaKey) {
        const id = +card.dataset.id;
        selected.has(id) ? selected.delete(id) : selected.add(id);
        updateBulk();
      }
    });
  }
  for (const btn of document.querySelectorAll(".bulk-label")) btn.addEventListener("click", () => bulk(btn.dataset.label));
  document.getElementById("bulk-clear").addEventListener("click", () => { selected.clear(); updateBulk(); });
  setFocus(focus);
}

// ---------------------------------------------------------------- retrain, jobs
function target(form) {
  const t = new FormData(form).get("target");
  return t === "__fleet__" ? {fleet: true} : {devices: [t]};
}

function startLabels() {
  const form = document.getElementById("labels-form");
  if (form) form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const current = form.dataset.current ? form.dataset.current.split("\n") : [];
    const added = new FormData(form).get("labels").split(/[,\n]/).map((x) => x.trim()).filter((x) => x);
    if (!added.length) { flash("name at least one class"); return; }
    try {
      await api("POST", "/api/labels", {labels: [...current, ...added]});
      location.reload();
    } catch (err) { flash(err.message); }
  });
}

function startRetrain() {
  const train = document.getElementById("train-form");
  if (train) train.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(train);
    try {
      const r = await api("POST", "/api/train", {model: f.get("model"), epochs: +f.get("epochs"), target: f.get("target"),
                                                 image_size: [+f.get("height"), +f.get("width")]});
      location.href = r.url;
    } catch (err) { flash(err.message); }
  });
  const form = document.getElementById("retrain-form");
  if (form) form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const r = await api("POST", "/api/retrain", {epochs: +new FormData(form).get("epochs")});
      location.href = r.url;
    } catch (err) { flash(err.message); }
  });
  const rollback = document.getElementById("rollback-form");
  if (rollback) rollback.addEventListener("submit", async (e) => {
    e.preventDefault();
    try { location.href = (await api("POST", "/api/rollback", target(rollback))).url; } catch (err) { flash(err.message); }
  });
}

function startJob() {
  const el = document.getElementById("job");
  const id = el.dataset.job;
  const publish = document.getElementById("publish-form");
  if (publish) publish.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      location.href = (await api("POST", "/api/publish", {job: publish.dataset.job, ...target(publish)})).url;
    } catch (err) { flash(err.message); }
  });
  if (el.dataset.status !== "running") return;
  const poll = async () => {
    try {
      const j = await api("GET", `/api/jobs/${id}`);
      document.getElementById("job-status").textContent = j.status;
      const bar = document.getElementById("job-progress");
      if (j.epochs) { bar.max = j.epochs; bar.value = j.epoch; }
      document.getElementById("job-epoch").textContent = j.epoch ? `epoch ${j.epoch}/${j.epochs}` : "";
      document.getElementById("job-log").textContent = j.log.join("\n");
      if (j.status !== "running") { location.reload(); return; }
    } catch (err) { flash(err.message); }
    setTimeout(poll, 1000);
  };
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  const logout = document.getElementById("logout");
  if (logout) logout.addEventListener("click", async () => { await api("POST", "/api/logout"); location.href = "/login"; });
  const page = document.body.dataset.page;
  if (page === "fleet") startFleet();
  if (page === "samples") { startLabels(); startSamples(); }
  if (page === "retrain") startRetrain();
  if (page === "job") startJob();
});
