// itda-lens atom browser: renders the embedded JSON lazily (only the visible rows).
"use strict";
(function () {
  const t0 = performance.now();
  const D = JSON.parse(document.getElementById("itda-data").textContent);
  const A = D.atoms, U = D.usage, M = D.meta;
  const N = A.token.length;
  const ROW = 30, OVERSCAN = 12;
  const $ = (id) => document.getElementById(id);
  const list = $("list"), spacer = $("spacer"), detail = $("detail");
  const fmt = new Intl.NumberFormat("en-US");

  // ------------------------------------------------------------------ helpers
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const oneLine = (s) => s.replace(/\r?\n/g, "↵").replace(/\t/g, "→");
  const showToken = (s) => (s === "" ? "∅" : s.replace(/\n/g, "↵").replace(/\t/g, "→"));
  function pct(x) {
    if (x === 0) return "0";
    const p = 100 * x;
    return (p >= 10 ? p.toFixed(0) : p >= 1 ? p.toFixed(1) : p >= 0.01 ? p.toFixed(2) : "<0.01") + "%";
  }
  const num = (x, d) => (Number.isFinite(x) ? x.toFixed(d) : "–");
  function mark(token, negative) {
    const m = el("mark", negative ? "tok neg" : "tok", showToken(token));
    return m;
  }
  function withNewlines(box, text) {
    // Newlines shown as a faint ↵ so a context reads as one paragraph.
    text.split("\n").forEach((part, j) => {
      if (j) box.append(el("span", "nl", "↵"));
      if (part) box.append(document.createTextNode(part));
    });
  }
  function contextBlock(before, token, after, negative) {
    const box = el("div", "context");
    withNewlines(box, before);
    box.append(mark(token, negative));
    withNewlines(box, after);
    return box;
  }

  // ------------------------------------------------------------------ summary
  $("title").textContent = M.title;
  document.title = M.title + " — itda-lens";
  const summary = $("summary");
  function fact(label, value) {
    const s = el("span");
    s.append(document.createTextNode(label + " "), el("b", "", value));
    return s;
  }
  const facts = [fact("atoms", fmt.format(N)), fact("k", String(M.k)), fact("d_model", String(M.d_model))];
  if (M.built_tokens) facts.push(fact("built from", fmt.format(M.built_tokens) + " tokens"));
  if (U) {
    facts.push(fact("held-out", fmt.format(U.tokens) + " tokens"));
    facts.push(fact("used", fmt.format(U.used) + " atoms (" + pct(U.used / N) + ")"));
    if (Number.isFinite(U.fvu)) facts.push(fact("FVU", num(U.fvu, 3)));
  } else {
    facts.push(el("span", "", "no held-out usage (run itda-lens browse with text)"));
  }
  facts.forEach((f, i) => { if (i) summary.append(document.createTextNode(" · ")); summary.append(f); });

  // Top held-out contexts: [coefficient, before, token, after], cut from the embedded documents.
  function topContexts(i) {
    const [nb, na] = U.context_chars;
    return U.top[i].map(([v, t, s, e]) => {
      const text = U.texts[t];
      return [v, text.slice(Math.max(0, s - nb), s), text.slice(s, e), text.slice(e, e + na)];
    });
  }

  // ------------------------------------------------------------ search / order
  const count = U ? U.count : null, meanAbs = U ? U.mean_abs : null;
  const maxCount = U ? count.reduce((m, c) => (c > m ? c : m), 1) : 1;
  let tokenKey = null, textKey = null; // built on first use
  function tokenKeys() {
    if (!tokenKey) tokenKey = A.token.map((t) => t.trim().toLowerCase());
    return tokenKey;
  }
  function textKeys() {
    if (!textKey) {
      textKey = new Array(N);
      for (let i = 0; i < N; i++) {
        let s = A.before[i] + A.token[i] + A.after[i];
        if (U) for (const c of topContexts(i)) s += "\u0000" + c[1] + c[2] + c[3];
        textKey[i] = s.toLowerCase();
      }
    }
    return textKey;
  }

  const state = { q: "", mode: "token", sort: "id", filter: "all", atom: -1 };
  let order = new Int32Array(0);

  function compute() {
    const q = state.q.trim().toLowerCase();
    let ids = [];
    const idMatch = /^#\s*(\d+)$/.exec(q);
    if (idMatch) {
      const i = Number(idMatch[1]);
      if (i < N) ids.push(i);
    } else if (q === "") {
      for (let i = 0; i < N; i++) ids.push(i);
    } else if (state.mode === "token") {
      const keys = tokenKeys();
      for (let i = 0; i < N; i++) if (keys[i] === q) ids.push(i);
    } else {
      const keys = textKeys();
      for (let i = 0; i < N; i++) if (keys[i].includes(q)) ids.push(i);
    }
    if (U && state.filter !== "all") {
      const want = state.filter === "used";
      ids = ids.filter((i) => (count[i] > 0) === want);
    }
    if (state.sort === "count" && U) ids.sort((a, b) => count[b] - count[a] || a - b);
    else if (state.sort === "strength" && U) ids.sort((a, b) => meanAbs[b] - meanAbs[a] || a - b);
    else if (state.sort === "token") {
      const keys = tokenKeys();
      ids.sort((a, b) => (keys[a] < keys[b] ? -1 : keys[a] > keys[b] ? 1 : a - b));
    }
    order = Int32Array.from(ids);
    $("matches").textContent = fmt.format(order.length) + (order.length === 1 ? " atom" : " atoms");
    spacer.style.height = order.length * ROW + "px";
    list.scrollTop = 0;
    pool.forEach((r) => (r.dataset.pos = "-1"));
    render(true);
    if (order.length && !order.includes(state.atom)) select(order[0], false);
    else if (!order.length) showEmpty();
    writeHash();
  }

  // ------------------------------------------------------------ virtual list
  const pool = [];
  function makeRow() {
    const row = el("div", "row");
    const id = el("span", "c-id"), ctx = el("span", "c-ctx");
    const before = el("span", "before"), after = el("span", "after");
    before.append(el("span")); after.append(el("span"));
    ctx.append(before, el("mark", "tok"), after);
    const freq = el("span", "c-freq"), box = el("span", "barbox"), bar = el("span", "bar"), ftxt = el("span");
    box.append(bar); freq.append(box, ftxt);
    const mag = el("span", "c-mag");
    row.append(id, ctx, freq, mag);
    row.addEventListener("click", () => select(Number(row.dataset.atom), false));
    list.append(row);
    return row;
  }
  function fill(row, pos) {
    const i = order[pos];
    row.dataset.pos = String(pos);
    row.dataset.atom = String(i);
    row.style.transform = "translateY(" + pos * ROW + "px)";
    const [id, ctx, freq, mag] = row.children;
    id.textContent = "#" + i;
    ctx.children[0].firstChild.textContent = oneLine(A.before[i].slice(-120));
    const tok = ctx.children[1];
    tok.textContent = showToken(A.token[i]);
    ctx.children[2].firstChild.textContent = oneLine(A.after[i].slice(0, 120));
    if (U) {
      const c = count[i];
      freq.children[0].firstChild.style.width = (c ? Math.max(1.5, 46 * Math.sqrt(c / maxCount)) : 0) + "px";
      freq.children[1].textContent = c ? pct(c / U.tokens) : "unused";
      freq.children[1].className = c ? "" : "dead";
      mag.textContent = c ? num(meanAbs[i], 2) : "";
    } else {
      freq.children[1].textContent = "–";
    }
    row.classList.toggle("selected", i === state.atom);
  }
  let pending = false;
  function render(force) {
    const first = Math.max(0, Math.floor(list.scrollTop / ROW) - OVERSCAN);
    const last = Math.min(order.length, Math.ceil((list.scrollTop + list.clientHeight) / ROW) + OVERSCAN);
    const need = last - first;
    while (pool.length < need) pool.push(makeRow());
    for (let j = 0; j < pool.length; j++) {
      const row = pool[j];
      if (j >= need) { row.style.display = "none"; row.dataset.pos = "-1"; continue; }
      const pos = first + j;
      row.style.display = "";
      if (force || row.dataset.pos !== String(pos)) fill(row, pos);
    }
  }
  list.addEventListener("scroll", () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(false); });
  });
  window.addEventListener("resize", () => render(false));

  // ------------------------------------------------------------ detail pane
  function showEmpty() {
    detail.replaceChildren(el("div", "empty", "No atom matches the search."));
    state.atom = -1;
  }
  function select(i, scroll) {
    state.atom = i;
    pool.forEach((r) => r.classList.toggle("selected", Number(r.dataset.atom) === i && r.dataset.pos !== "-1"));
    if (scroll) {
      const pos = order.indexOf(i);
      if (pos >= 0) {
        const top = pos * ROW, bottom = top + ROW;
        if (scroll === "center") list.scrollTop = Math.max(0, top - (list.clientHeight - ROW) / 2);
        else if (top < list.scrollTop) list.scrollTop = top;
        else if (bottom > list.scrollTop + list.clientHeight) list.scrollTop = bottom - list.clientHeight;
        render(false);
      }
    }
    showAtom(i);
    writeHash();
  }
  function showAtom(i) {
    const out = [];
    const h = el("h2");
    h.append(document.createTextNode("Atom #" + i + " "), mark(A.token[i], false));
    out.push(h);
    const dl = el("dl", "facts");
    const add = (k, v) => { dl.append(el("dt", "", k), el("dd", "", v)); };
    add("token", JSON.stringify(A.token[i]));
    if (A.doc[i] >= 0) {
      add("document", D.docs[A.doc[i]]);
      add("token index", String(A.index[i]));
      add("characters", A.start[i] + "–" + A.end[i]);
    } else {
      add("source", "unknown (atom given by the user)");
    }
    if (U) {
      const c = count[i];
      add("used on", c ? fmt.format(c) + " of " + fmt.format(U.tokens) + " held-out tokens (" + pct(c / U.tokens) + ")" : "no held-out token");
      if (c) {
        add("mean |coef|", num(meanAbs[i], 3));
        add("mean coef", num(U.mean[i], 3));
      }
    }
    out.push(dl);
    out.push(el("h3", "", "Source context"));
    out.push(contextBlock(A.before[i], A.token[i], A.after[i], false));
    if (U) {
      out.push(el("h3", "", "Top held-out contexts (largest |coefficient|)"));
      const tops = topContexts(i);
      if (!tops.length) out.push(el("div", "note", "No held-out token used this atom."));
      for (const [v, before, tok, after] of tops) {
        const r = el("div", "ctxrow");
        r.append(el("span", "coef", (v >= 0 ? "+" : "") + num(v, 2)), contextBlock(before, tok, after, v < 0));
        out.push(r);
      }
    }
    detail.replaceChildren(...out);
    detail.scrollTop = 0;
  }

  // ------------------------------------------------------------ controls
  const query = $("query"), mode = $("mode"), sort = $("sort"), filter = $("filter");
  if (!U) {
    for (const v of ["count", "strength"]) sort.querySelector('option[value="' + v + '"]').disabled = true;
    filter.disabled = true;
  }
  let timer = 0;
  query.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = query.value; compute(); }, 120);
  });
  mode.addEventListener("change", () => { state.mode = mode.value; compute(); });
  sort.addEventListener("change", () => { state.sort = sort.value; compute(); });
  filter.addEventListener("change", () => { state.filter = filter.value; compute(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== query) { e.preventDefault(); query.focus(); return; }
    if ((e.key === "ArrowDown" || e.key === "ArrowUp") && document.activeElement !== mode && document.activeElement !== sort && document.activeElement !== filter) {
      if (!order.length) return;
      e.preventDefault();
      const pos = order.indexOf(state.atom);
      const next = Math.min(order.length - 1, Math.max(0, pos + (e.key === "ArrowDown" ? 1 : -1)));
      select(order[next], true);
    }
  });

  // ------------------------------------------------------------ URL hash
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    if (p.has("q")) state.q = p.get("q");
    if (p.get("mode") === "text" || p.get("mode") === "token") state.mode = p.get("mode");
    if (["id", "count", "strength", "token"].includes(p.get("sort"))) state.sort = p.get("sort");
    if (["all", "used", "unused"].includes(p.get("filter"))) state.filter = p.get("filter");
    if (p.has("atom")) state.atom = Number(p.get("atom"));
    query.value = state.q; mode.value = state.mode; sort.value = state.sort; filter.value = state.filter;
  }
  let hashReady = false;
  function writeHash() {
    if (!hashReady) return;
    const p = new URLSearchParams();
    if (state.q) p.set("q", state.q);
    if (state.mode !== "token") p.set("mode", state.mode);
    if (state.sort !== "id") p.set("sort", state.sort);
    if (state.filter !== "all") p.set("filter", state.filter);
    if (state.atom >= 0) p.set("atom", String(state.atom));
    try { history.replaceState(null, "", "#" + p.toString()); } catch (err) { /* file:// in some browsers */ }
  }

  readHash();
  const wanted = state.atom;
  compute();
  if (wanted >= 0 && wanted < N) select(wanted, "center");
  hashReady = true;
  writeHash();
  document.body.dataset.renderMs = (performance.now() - t0).toFixed(1);
  document.body.dataset.ready = "1";
})();
