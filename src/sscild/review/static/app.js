// sscild reader study: one level slice at a time; every answer is saved on the server before the next one.
"use strict";
const $ = (id) => document.getElementById(id);
const PATTERNS = ["TOT", "GG", "RET"];
const LIKERT = "Marks the diseased lung: 1 not at all ... 5 exactly";
let task = null, offset = 0, win = "lung", zoom = 1, pan = [0, 0], started = 0, afterSave = false;

async function api(method, url, body) {
  const r = await fetch(url, {method, headers: {"Content-Type": "application/json"}, credentials: "same-origin",
                              body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    let d = data && data.detail;
    if (Array.isArray(d)) d = d.map((x) => `${(x.loc || []).slice(-1)[0]}: ${x.msg}`).join("; ");
    const err = new Error(d || `HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

function show(view) {
  for (const v of ["login-view", "read-view", "done-view"]) $(v).hidden = v !== view;
  $("logout").hidden = $("bar").hidden = view === "login-view";
}

function imageUrl() {
  return `/api/image/${task.position}/${task.level}/${offset}/${win}`;
}

function applyView() {
  $("slice").src = imageUrl();
  $("slice").style.transform = `translate(${pan[0]}px, ${pan[1]}px) scale(${zoom})`;
  const z = offset === 0 ? "level slice" : `${offset > 0 ? "+" : ""}${offset} slice${Math.abs(offset) > 1 ? "s" : ""}`;
  $("slice-label").textContent = z;
  $("w-lung").classList.toggle("on", win === "lung");
  $("w-mediastinal").classList.toggle("on", win === "mediastinal");
}

function scroll(d) {
  const o = offset + d;
  if (task.offsets.includes(o)) { offset = o; applyView(); }
}

function setZoom(f) { zoom = Math.min(8, Math.max(1, zoom * f)); if (zoom === 1) pan = [0, 0]; applyView(); }

function renderTabs() {
  const tabs = $("tabs");
  tabs.replaceChildren();
  for (const [lv, done] of Object.entries(task.levels)) {
    const b = document.createElement("button");
    b.textContent = lv;
    b.type = "button";
    b.className = (done ? "done " : "") + (lv === task.level ? "current" : "");
    b.addEventListener("click", () => load(task.position, lv));
    tabs.append(b);
  }
}

function renderLikert() {
  const box = $("likert"), hm = $("heatmaps");
  box.replaceChildren(); hm.replaceChildren();
  if (!task.heatmaps.length) return;
  const p = document.createElement("p");
  p.className = "hint"; p.textContent = LIKERT;
  box.append(p);
  for (const pat of task.heatmaps) {
    const fig = document.createElement("figure"), img = document.createElement("img");
    img.src = `/api/heatmap/${task.position}/${task.level}/${pat}`; img.alt = `heat map ${pat}`;
    const cap = document.createElement("figcaption"); cap.textContent = `heat map ${pat}`;
    fig.append(img, cap); hm.append(fig);
    const row = document.createElement("div"); row.className = "likert";
    const lab = document.createElement("span"); lab.textContent = pat; row.append(lab);
    for (let v = 1; v <= 5; v++) {
      const l = document.createElement("label"), r = document.createElement("input");
      l.style.display = "inline"; r.type = "radio"; r.name = `likert-${pat}`; r.value = v;
      r.checked = !!(task.answer && task.answer.likert && task.answer.likert[pat] === v);
      l.append(r, ` ${v} `); row.append(l);
    }
    box.append(row);
  }
}

function fill() {
  const a = task.answer;
  for (const p of PATTERNS) $(p).value = a ? a[p] : "";
  $("misplaced").checked = !!(a && a.misplaced);
  $("misplaced-hint").hidden = !$("misplaced").checked;
  $("comment").value = a ? a.comment : "";
  offset = a && a.misplaced && a.corrected_offset !== null ? a.corrected_offset : 0;
}

async function load(position, level) {
  const q = position === undefined ? "" : `?position=${position}&level=${level}`;
  try {
    task = await api("GET", `/api/task${q}`);
  } catch (e) {
    if (e.status === 401) { show("login-view"); return; }
    $("answer-msg").textContent = e.message; return;
  }
  $("who").textContent = `reader ${task.reader}`;
  $("bar").max = Math.max(1, task.total); $("bar").value = task.answered;
  $("count").textContent = `${task.answered} / ${task.total} levels saved`;
  if (task.done) {
    show("done-view");
    $("done-msg").textContent = `All ${task.total} answers are saved. Thank you. You can close this page.`;
    return;
  }
  show("read-view");
  afterSave = false; $("tool").hidden = true; $("answer-msg").textContent = "";
  zoom = 1; pan = [0, 0];
  fill();
  $("case-title").textContent = `Case ${task.position + 1} of ${task.n_cases} \u2014 level ${task.level}`;
  renderTabs(); renderLikert(); applyView();
  started = performance.now();
  $("TOT").focus();
}

function checkScores(v) {
  for (const p of PATTERNS) {
    if (!Number.isInteger(v[p]) || v[p] < 0 || v[p] > 100 || v[p] % 5)
      return `${p} must be 0-100 % in 5 % steps`;
  }
  const lo = Math.max(v.GG, v.RET), hi = v.GG + v.RET;
  if (v.TOT < lo || v.TOT > hi) return `TOT ${v.TOT} % must lie between max(GG, RET) = ${lo} % and GG + RET = ${hi} %`;
  return "";
}

function collect() {
  const v = {};
  for (const p of PATTERNS) v[p] = $(p).value === "" ? NaN : Number($(p).value);
  v.misplaced = $("misplaced").checked;
  v.corrected_offset = v.misplaced ? offset : null;
  v.comment = $("comment").value;
  v.seconds = (performance.now() - started) / 1000;
  if (task.heatmaps.length) {
    v.likert = {};
    for (const pat of task.heatmaps) {
      const r = document.querySelector(`input[name=likert-${pat}]:checked`);
      if (r) v.likert[pat] = Number(r.value);
    }
  }
  return v;
}

async function save(ev) {
  if (ev) ev.preventDefault();
  if (afterSave) { await load(); return; }
  const v = collect();
  const err = checkScores(v) ||
    (task.heatmaps.length && Object.keys(v.likert).length < task.heatmaps.length ? "rate every heat map (1-5)" : "");
  if (err) { $("answer-msg").textContent = err; return; }
  try {
    const r = await api("PUT", `/api/answer/${task.position}/${task.level}`, v);
    if (r.tool) {
      $("tool").hidden = false; afterSave = true;
      $("tool").textContent = `Saved. The tool scored this slice TOT ${r.tool.TOT.toFixed(0)} %, ` +
        `GG ${r.tool.GG.toFixed(0)} %, RET ${r.tool.RET.toFixed(0)} %. Enter: next.`;
      $("save").focus();
      return;
    }
    await load();
  } catch (e) {
    if (e.status === 401) { show("login-view"); return; }
    $("answer-msg").textContent = e.message;
  }
}

function keys(ev) {
  const tag = ev.target.tagName, type = ev.target.type;
  const inText = tag === "TEXTAREA" || (tag === "INPUT" && (type === "text" || type === "password"));
  const inNumber = tag === "INPUT" && type === "number";
  if ($("read-view").hidden) return;
  if (ev.key === "Enter" && !(tag === "TEXTAREA" && !ev.ctrlKey) && tag !== "BUTTON") { save(ev); return; }
  if (inText || ev.ctrlKey || ev.altKey || ev.metaKey) return;
  const k = ev.key.toLowerCase();
  if (inNumber && !"tgrnwm".includes(k)) return;     // digits and arrows keep their meaning in a score field
  const act = {
    t: () => $("TOT").select(), g: () => $("GG").select(), r: () => $("RET").select(),
    n: () => { for (const p of PATTERNS) $(p).value = 0; $("save").focus(); },
    w: () => { win = win === "lung" ? "mediastinal" : "lung"; applyView(); },
    m: () => { $("misplaced").click(); },
    arrowup: () => scroll(1), arrowdown: () => scroll(-1), pageup: () => scroll(1), pagedown: () => scroll(-1),
    "+": () => setZoom(1.25), "=": () => setZoom(1.25), "-": () => setZoom(0.8), "0": () => setZoom(0),
  }[k];
  if (act && k.length > 0) { ev.preventDefault(); act(); }
}

function wire() {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/api/login", {token: $("token").value});
      $("token").value = ""; $("login-msg").textContent = "";
      await load();
    } catch (e) { $("login-msg").textContent = e.message; }
  });
  $("logout").addEventListener("click", async () => { await api("POST", "/api/logout"); show("login-view"); });
  $("answer-form").addEventListener("submit", save);
  $("normal").addEventListener("click", () => { for (const p of PATTERNS) $(p).value = 0; $("save").focus(); });
  $("misplaced").addEventListener("change", () => { $("misplaced-hint").hidden = !$("misplaced").checked; });
  $("w-lung").addEventListener("click", () => { win = "lung"; applyView(); });
  $("w-mediastinal").addEventListener("click", () => { win = "mediastinal"; applyView(); });
  $("up").addEventListener("click", () => scroll(1));
  $("down").addEventListener("click", () => scroll(-1));
  $("zoom-in").addEventListener("click", () => setZoom(1.25));
  $("zoom-out").addEventListener("click", () => setZoom(0.8));
  $("reset").addEventListener("click", () => setZoom(0));
  const frame = $("frame");
  frame.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    if (ev.ctrlKey) setZoom(ev.deltaY < 0 ? 1.15 : 0.87); else scroll(ev.deltaY < 0 ? 1 : -1);
  }, {passive: false});
  let drag = null;
  frame.addEventListener("pointerdown", (ev) => { drag = [ev.clientX - pan[0], ev.clientY - pan[1]]; });
  window.addEventListener("pointerup", () => { drag = null; });
  frame.addEventListener("pointermove", (ev) => {
    if (drag && zoom > 1) { pan = [ev.clientX - drag[0], ev.clientY - drag[1]]; applyView(); }
  });
  document.addEventListener("keydown", keys);
  load();
}

document.addEventListener("DOMContentLoaded", wire);
