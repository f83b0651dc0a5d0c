// The hallucination task of the annotate page: an image viewer (zoom and pan, by keyboard too),
// hallucinated spans marked by mouse (select, then a category) or by keyboard alone (a cursor that
// moves sentence by sentence, as RLAIF-V's claim-level feedback), and a correction with its diff.
//
// Span offsets count Unicode code points (Python's str indices, what the server validates); JS
// strings count UTF-16 code units, so every offset crosses between the two through the helpers
// below. Response texts are untrusted: nodes are built with textContent, never innerHTML.
// Needs image-viewer.js and word-diff.js loaded before it (the partial's script tags keep that order).
// The page can load this file twice (base page and the kind's partial) and htmx swaps tasks in
// and out: global listeners are bound once, each task root is set up once (a WeakMap holds it).
(() => {
  "use strict";
  if (window.tandemHallucination) return;

  const TYPING = "textarea, select, [contenteditable], input:not([type=radio]):not([type=checkbox]):not([type=hidden]):not([type=submit]):not([type=button])";
  // Where a category finds no free letter of its own name (the kind's rule: category_keys in
  // annotation/kinds/hallucination): digits the page leaves free, then letters.
  const FALLBACK = "456789abcdefghijklmnopqrstuvwxyz";
  const LABELS = "ABCDEFGH";
  const states = new WeakMap();

  // --- code points ------------------------------------------------------------------------
  const cpLength = (s) => { let n = 0; for (const _ of s) n += 1; return n; };
  // utf16[i] = code points before UTF-16 index i (an index inside a surrogate pair rounds up).
  function utf16ToCp(text) {
    const map = new Uint32Array(text.length + 1);
    let cp = 0;
    for (let i = 0; i < text.length; ) {
      const step = text.codePointAt(i) > 0xffff ? 2 : 1;
      map[i] = cp;
      if (step === 2) map[i + 1] = cp + 1;
      cp += 1;
      i += step;
    }
    map[text.length] = cp;
    return map;
  }
  function cpToUtf16(text, cp) {
    let i = 0;
    for (let n = 0; n < cp && i < text.length; n += 1) i += text.codePointAt(i) > 0xffff ? 2 : 1;
    return i;
  }
  // Django's escapejs writes every backslash, quote, angle bracket and control character as \uXXXX
  // and leaves the rest as is, so undoing it is exact.
  const unescapeJs = (s) => s.replace(/\\u([0-9a-fA-F]{4})/g, (_, hex) => String.fromCharCode(parseInt(hex, 16)));
  const lines = (s) => s.replace(/\r\n?/g, "\n");
  const isSpace = (ch) => /\s/u.test(ch);

  // Sentences as [start, end) in code points, without their surrounding white space; a line break
  // always ends one (lists and short answers are one claim a line).
  function sentencesOf(text, map) {
    const out = [];
    const push = (a, b) => {
      while (a < b && isSpace(text[a])) a += 1;
      while (b > a && isSpace(text[b - 1])) b -= 1;
      if (a < b) out.push({ start: map[a], end: map[b] });
    };
    const pieces = typeof Intl.Segmenter === "function"
      ? Array.from(new Intl.Segmenter(undefined, { granularity: "sentence" }).segment(text), (s) => [s.index, s.index + s.segment.length])
      : Array.from(text.matchAll(/[^.!?。！？]*(?:[.!?。！？]+|$)\s*/gu), (m) => [m.index, m.index + m[0].length]);
    for (const [a, b] of pieces) {
      let from = a;
      for (let i = a; i < b; i += 1) if (text[i] === "\n") { push(from, i); from = i + 1; }
      push(from, b);
    }
    return out;
  }

  // Code-point offsets where a reader's character ends: a span edge never splits an accent from
  // its letter or an emoji sequence (the server refuses such an edge).
  function graphemeEdges(text, map) {
    const edges = new Set([0, map[text.length]]);
    if (typeof Intl.Segmenter === "function") {
      for (const g of new Intl.Segmenter(undefined, { granularity: "grapheme" }).segment(text)) edges.add(map[g.index]);
    } else {
      for (let i = 0; i <= text.length; i += 1) edges.add(map[i]);
    }
    return edges;
  }

  // --- state ------------------------------------------------------------------------------
  function setUp(root) {
    if (states.has(root)) return;
    const articles = Array.from(root.querySelectorAll("[data-response]"));
    // The answer fields live in the judgement form, outside the task body but in the same panel.
    const answer = (root.closest("#task-panel") || document).querySelector("[data-hallucination-answer]");
    const state = {
      root,
      answer,
      texts: [], cps: [], sentences: [], edges: [],
      textEls: [], listEls: [], countEls: [],
      spans: [], cursor: null,
      input: answer?.querySelector("[data-spans]"),
      live: root.querySelector("[data-announce]"),
      cursorInfo: root.querySelector("[data-cursor-info]"),
      categories: [],
    };
    for (const article of articles) {
      const el = article.querySelector("[data-response-text]");
      const text = unescapeJs(el?.dataset.text ?? el?.textContent ?? "");
      const map = utf16ToCp(text);
      state.texts.push(text);
      state.cps.push(Array.from(text));
      state.sentences.push(sentencesOf(text, map));
      state.edges.push(graphemeEdges(text, map));
      state.textEls.push(el);
      state.listEls.push(article.querySelector("[data-span-list]"));
      state.countEls.push(article.querySelector("[data-span-count]"));
    }
    const taken = new Set((root.dataset.takenKeys || "").split(/\s+/).filter(Boolean));
    state.categories = assignKeys(Array.from(root.querySelectorAll("button[data-category]")), taken);
    state.spans = loadSpans(state);
    states.set(root, state);
    state.view = window.tandemImageViewer?.attach(root);
    setUpCorrection(state);
    if (answer) syncHelpful(answer);
    render(state);
  }

  // Keys come from the view when it gives them (data-category-key); otherwise by the kind's rule:
  // the first character of the name, then of FALLBACK, that is in FALLBACK and not taken.
  function assignKeys(buttons, taken) {
    buttons.forEach((b) => { if (b.dataset.categoryKey) taken.add(b.dataset.categoryKey); });
    return buttons.map((button, i) => {
      let key = button.dataset.categoryKey || "";
      if (!key) {
        key = [...button.dataset.category, ...FALLBACK].find((ch) => FALLBACK.includes(ch) && !taken.has(ch)) || "";
        taken.add(key);
      }
      button.dataset.categoryKey = key;
      button.dataset.tone = String(i % 8);
      if (key) button.setAttribute("aria-keyshortcuts", key);
      const kbd = button.querySelector("[data-category-kbd]");
      if (kbd) { kbd.textContent = key; kbd.hidden = !key; }
      return { name: button.dataset.category, key, tone: button.dataset.tone, button };
    });
  }

  // Spans the server sent back with a form error; anything malformed is dropped, not trusted.
  function loadSpans(state) {
    let raw;
    try { raw = JSON.parse(state.input?.value || "[]"); } catch { raw = []; }
    if (!Array.isArray(raw)) return [];
    const names = new Set(state.categories.map((c) => c.name));
    const spans = [];
    for (const s of raw) {
      if (!s || !Number.isInteger(s.response) || state.texts[s.response] === undefined) continue;
      const length = state.cps[s.response]?.length ?? -1;
      if (!Number.isInteger(s.start) || !Number.isInteger(s.end) || s.start < 0 || s.end > length || s.start >= s.end) continue;
      if (!names.has(s.category) || spans.some((o) => overlaps(o, s))) continue;
      spans.push(typeof s.note === "string" && s.note ? { response: s.response, start: s.start, end: s.end, category: s.category, note: s.note }
        : { response: s.response, start: s.start, end: s.end, category: s.category });
    }
    return spans;
  }

  const overlaps = (a, b) => a.response === b.response && a.start < b.end && b.start < a.end;
  const excerpt = (state, s) => {
    const t = state.cps[s.response].slice(s.start, s.end).join("");
    return cpLength(t) > 60 ? `${Array.from(t).slice(0, 57).join("")}…` : t;
  };
  const toneOf = (state, name) => state.categories.find((c) => c.name === name)?.tone || "0";

  function announce(state, message) {
    if (!state.live) return;
    // The same message twice in a row is still read out: empty the region first.
    state.live.textContent = "";
    requestAnimationFrame(() => { state.live.textContent = message; });
    state.live.dataset.last = message;
  }

  // --- rendering --------------------------------------------------------------------------
  function render(state) {
    state.spans.sort((a, b) => a.response - b.response || a.start - b.start);
    if (state.input) state.input.value = JSON.stringify(state.spans);
    state.textEls.forEach((_, r) => { renderText(state, r); renderList(state, r); });
    const info = state.cursorInfo;
    if (info) {
      const c = state.cursor;
      info.textContent = c ? `Cursor: response ${LABELS[c.response]}, sentence ${c.index + 1} of ${state.sentences[c.response].length}` : "";
    }
  }

  function cursorSentence(state) {
    const c = state.cursor;
    return c ? { response: c.response, ...state.sentences[c.response][c.index] } : null;
  }

  function renderText(state, r) {
    const el = state.textEls[r];
    if (!el) return;
    const cps = state.cps[r];
    const spans = state.spans.filter((s) => s.response === r);
    const cur = cursorSentence(state);
    const here = cur && cur.response === r ? cur : null;
    const cuts = new Set([0, cps.length]);
    for (const s of spans) { cuts.add(s.start); cuts.add(s.end); }
    if (here) { cuts.add(here.start); cuts.add(here.end); }
    const points = [...cuts].sort((a, b) => a - b);
    const frag = document.createDocumentFragment();
    for (let i = 0; i + 1 < points.length; i += 1) {
      const a = points[i];
      const b = points[i + 1];
      const span = spans.find((s) => s.start <= a && b <= s.end);
      const piece = document.createElement(span ? "mark" : "span");
      piece.dataset.start = String(a);
      piece.textContent = cps.slice(a, b).join("");
      if (span) {
        piece.className = "hallu-mark";
        piece.dataset.spanCategory = span.category;
        piece.dataset.tone = toneOf(state, span.category);
        piece.title = span.category;
        if (span.end === b) piece.classList.add("hallu-mark-end");
      }
      if (here && here.start <= a && b <= here.end) piece.classList.add("hallu-at-cursor");
      frag.append(piece);
    }
    el.replaceChildren(frag);
  }

  function renderList(state, r) {
    const list = state.listEls[r];
    const spans = state.spans.filter((s) => s.response === r);
    if (state.countEls[r]) state.countEls[r].textContent = spans.length ? `· ${spans.length} marked` : "";
    if (!list) return;
    list.replaceChildren(...spans.map((span) => {
      const item = document.createElement("li");
      const chip = document.createElement("span");
      chip.className = "hallu-chip";
      chip.dataset.tone = toneOf(state, span.category);
      chip.textContent = span.category;
      const quote = document.createElement("q");
      quote.textContent = excerpt(state, span);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link hallu-remove-span";
      remove.dataset.removeSpan = `${span.response}:${span.start}`;
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove the ${span.category} span “${excerpt(state, span)}” from response ${LABELS[r]}`);
      item.append(chip, " ", quote, " ", remove);
      return item;
    }));
  }

  // --- the text the annotator points at ---------------------------------------------------
  function pointToCp(state, r, node, offset) {
    const el = state.textEls[r];
    if (node === el) return offset >= el.children.length ? state.cps[r].length : Number(el.children[offset].dataset.start);
    const piece = (node.nodeType === Node.TEXT_NODE ? node.parentElement : node).closest("[data-start]");
    const start = Number(piece.dataset.start);
    if (node.nodeType === Node.TEXT_NODE) return start + cpLength(node.data.slice(0, offset));
    return offset === 0 ? start : start + cpLength(piece.textContent);
  }

  // The mouse selection as {response, start, end}, clipped to the one response it covers, trimmed
  // of white space and widened to whole characters; null without one, {error} when it is unusable.
  function selectionTarget(state) {
    const sel = window.getSelection();
    if (!sel || sel.rangeCount === 0 || sel.isCollapsed) return null;
    const range = sel.getRangeAt(0);
    const hits = [];
    state.textEls.forEach((el, r) => {
      if (!el || !range.intersectsNode(el)) return;
      const cps = state.cps[r];
      let start = el.contains(range.startContainer) ? pointToCp(state, r, range.startContainer, range.startOffset) : 0;
      let end = el.contains(range.endContainer) ? pointToCp(state, r, range.endContainer, range.endOffset) : cps.length;
      while (start < end && isSpace(cps[start])) start += 1;
      while (end > start && isSpace(cps[end - 1])) end -= 1;
      while (start > 0 && !state.edges[r].has(start)) start -= 1;
      while (end < cps.length && !state.edges[r].has(end)) end += 1;
      if (start < end) hits.push({ response: r, start, end });
    });
    if (hits.length > 1) return { error: "The selection runs over both responses: select words in one of them." };
    return hits[0] || null;
  }

  function markWith(state, category) {
    const selected = selectionTarget(state);
    if (selected?.error) return announce(state, selected.error);
    const where = selected || cursorSentence(state);
    if (!where) return announce(state, "Select words in a response, or move to a sentence with j and k, then choose a category.");
    const label = LABELS[where.response];
    const same = state.spans.find((s) => s.response === where.response && s.start === where.start && s.end === where.end);
    if (same) {
      same.category = category;
    } else {
      const clash = state.spans.find((s) => overlaps(s, where));
      if (clash) return announce(state, `That overlaps the ${clash.category} span “${excerpt(state, clash)}” in response ${label}: remove it first (x).`);
      state.spans.push({ response: where.response, start: where.start, end: where.end, category });
    }
    if (selected) window.getSelection().removeAllRanges();
    render(state);
    announce(state, `Marked “${excerpt(state, where)}” in response ${label} as ${category}.`);
  }

  function removeAt(state) {
    const selected = selectionTarget(state);
    const where = selected && !selected.error ? selected : cursorSentence(state);
    const index = where ? state.spans.findIndex((s) => overlaps(s, where)) : -1;
    if (index < 0) return announce(state, "No marked span here.");
    removeSpan(state, index);
  }

  function removeSpan(state, index) {
    const [span] = state.spans.splice(index, 1);
    render(state);
    announce(state, `Removed the ${span.category} span “${excerpt(state, span)}” from response ${LABELS[span.response]}.`);
  }

  function moveCursor(state, delta) {
    const focused = state.textEls.indexOf(document.activeElement);
    let c = state.cursor;
    if (!c || (focused >= 0 && focused !== c.response)) {
      const r = focused >= 0 ? focused : 0;
      c = { response: r, index: delta > 0 ? 0 : state.sentences[r].length - 1 };
    } else {
      c = { response: c.response, index: c.index + delta };
    }
    placeCursor(state, c);
  }

  function toResponse(state, r) {
    if (r < state.textEls.length) placeCursor(state, { response: r, index: 0 });
  }

  function placeCursor(state, c) {
    const sentences = state.sentences[c.response] || [];
    if (!sentences.length) return announce(state, `Response ${LABELS[c.response]} has no text to mark.`);
    const edge = c.index < 0 || c.index >= sentences.length;
    c.index = Math.min(sentences.length - 1, Math.max(0, c.index));
    state.cursor = c;
    render(state);
    const el = state.textEls[c.response];
    if (document.activeElement !== el) el.focus({ preventScroll: true });
    el.querySelector(".hallu-at-cursor")?.scrollIntoView({ block: "nearest" });
    const s = sentences[c.index];
    const marked = state.spans.filter((o) => overlaps(o, { response: c.response, ...s })).map((o) => o.category);
    const text = state.cps[c.response].slice(s.start, s.end).join("");
    announce(state, `${edge ? "No more sentences. " : ""}Response ${LABELS[c.response]}, sentence ${c.index + 1} of ${sentences.length}: ${text}${marked.length ? ` (marked ${marked.join(", ")})` : ""}`);
  }

  // --- correction -------------------------------------------------------------------------
  function setUpCorrection(state) {
    const box = state.answer?.querySelector("[data-correction]");
    if (!box) return;
    const select = box.querySelector("[data-correction-response]");
    const area = box.querySelector("[data-correction-text]");
    const diff = box.querySelector("[data-correction-diff]");
    const summary = box.querySelector("[data-diff-summary]");
    state.correction = { box, select, area, diff, summary, previous: select.value };
    let timer = 0;
    const update = () => { clearTimeout(timer); timer = setTimeout(() => renderDiff(state), 120); };
    select.addEventListener("change", () => {
      // An untouched copy follows the choice of response; an edited one is kept.
      const before = state.correction.previous;
      if (!area.value || (before !== "" && lines(area.value) === lines(state.texts[Number(before)]))) {
        area.value = select.value === "" ? "" : state.texts[Number(select.value)];
      }
      state.correction.previous = select.value;
      syncCorrection(state);
    });
    area.addEventListener("input", update);
    syncCorrection(state);
  }

  function syncCorrection(state) {
    const { select, area } = state.correction;
    // No response chosen: the text is not sent (a disabled field is left out of the form).
    area.disabled = select.value === "";
    renderDiff(state);
  }

  function editCorrection(state) {
    const { box, select, area } = state.correction || {};
    if (!box) return;
    box.open = true;
    if (select.value === "") {
      select.value = String(state.cursor ? state.cursor.response : 0);
      select.dispatchEvent(new Event("change", { bubbles: true }));
    }
    area.focus();
    // Unedited, the copy lines up with the response: select the sentence at the cursor to retype it.
    const r = Number(select.value);
    const c = state.cursor;
    if (c && c.response === r && area.value === state.texts[r]) { // only where no \r shifted it
      const s = state.sentences[r][c.index];
      area.setSelectionRange(cpToUtf16(area.value, s.start), cpToUtf16(area.value, s.end));
    }
  }

  function renderDiff(state) {
    const { select, area, diff, summary } = state.correction;
    if (select.value === "") {
      diff.replaceChildren();
      diff.hidden = true;
      summary.textContent = "(choose a response to correct)";
      return;
    }
    // A textarea keeps line breaks as \n (and a form sends them as \r\n): compare as lines.
    const original = lines(state.texts[Number(select.value)]);
    const edited = lines(area.value);
    diff.hidden = false;
    const ops = window.tandemWordDiff.diff(original, edited);
    let removed = 0;
    let added = 0;
    diff.replaceChildren(...ops.map((op) => {
      if (op.type === "same") return document.createTextNode(op.text);
      const words = (op.text.match(/[^\s]+/gu) || []).length;
      if (op.type === "del") removed += words; else added += words;
      const el = document.createElement(op.type);
      el.textContent = op.text;
      return el;
    }));
    summary.textContent = edited === original ? "(none yet: edit the copy above; an unchanged copy is not sent)"
      : `(${removed} word${removed === 1 ? "" : "s"} removed, ${added} added)`;
  }

  // --- the answer -------------------------------------------------------------------------
  // "Which is more helpful?" is only asked after a tie (LLaVA-RLHF's protocol).
  function syncHelpful(answer) {
    const choice = answer.querySelector("input[name=choice]:checked");
    const helpful = answer.querySelector("[data-helpful]");
    if (helpful) helpful.disabled = !choice || choice.value !== "tie";
  }

  // --- wiring -----------------------------------------------------------------------------
  function setUpAll(scope) {
    const roots = [];
    if (scope?.matches?.("[data-hallucination-task]")) roots.push(scope);
    roots.push(...(scope?.querySelectorAll?.("[data-hallucination-task]") || []));
    roots.forEach(setUp);
  }

  const currentState = () => {
    const root = document.querySelector("[data-hallucination-task]");
    if (root && !states.has(root)) setUp(root);
    return root ? states.get(root) : null;
  };

  // Capture phase: runs before tandem.js's own key handler, which skips a key handled here.
  function onKeydown(event) {
    const state = currentState();
    if (!state || !document.body.hasAttribute("data-shortcuts") || event.defaultPrevented || event.isComposing) return;
    if (document.querySelector("dialog[open]") || document.documentElement.hasAttribute("data-busy")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target instanceof Element ? event.target : document.body;
    if (target.matches(TYPING)) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const view = state.view;
    const viewer = window.tandemImageViewer;
    const pan = { ArrowLeft: [1, 0], ArrowRight: [-1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] }[key];
    if (pan && view && target === view.viewport) viewer.pan(view, pan[0], pan[1]);
    else if ((key === "+" || key === "=") && view) viewer.zoom(view, "in");
    else if ((key === "-" || key === "_") && view) viewer.zoom(view, "out");
    else if (key === "0" && view) viewer.zoom(view, "reset");
    else if (key === "j") moveCursor(state, 1);
    else if (key === "k") moveCursor(state, -1);
    else if (key === "[") toResponse(state, 0);
    else if (key === "]") toResponse(state, 1);
    else if (key === "x") removeAt(state);
    else if (key === "c") editCorrection(state);
    else {
      const category = state.categories.find((c) => c.key && c.key === key);
      if (!category) return;
      markWith(state, category.name);
    }
    event.preventDefault();
  }

  document.addEventListener("keydown", onKeydown, true);
  // A category button keeps the text selection: it takes no focus on mouse down.
  document.addEventListener("mousedown", (event) => {
    if (event.target instanceof Element && event.target.closest("[data-hallucination-task] button[data-category], [data-remove-at-cursor]")) event.preventDefault();
  });
  document.addEventListener("click", (event) => {
    const target = event.target instanceof Element ? event.target : null;
    const root = target?.closest("[data-hallucination-task]");
    const state = root && states.get(root);
    if (!state) return;
    const category = target.closest("button[data-category]");
    const remove = target.closest("[data-remove-span]");
    if (category) markWith(state, category.dataset.category);
    else if (target.closest("[data-remove-at-cursor]")) removeAt(state);
    else if (remove) {
      const [r, start] = remove.dataset.removeSpan.split(":").map(Number);
      const index = state.spans.findIndex((s) => s.response === r && s.start === start);
      if (index >= 0) removeSpan(state, index);
      state.textEls[r]?.focus({ preventScroll: true });
    }
  });
  document.addEventListener("change", (event) => {
    const answer = event.target.closest?.("[data-hallucination-answer]");
    if (answer && event.target.name === "choice") syncHelpful(answer);
  });
  // A correction left unchanged is no correction (the server refuses one): send none.
  document.addEventListener("submit", (event) => {
    const state = currentState();
    const correction = state?.correction;
    if (!correction || !event.target.contains(state.answer)) return;
    const r = correction.select.value;
    if (r !== "" && lines(correction.area.value) === lines(state.texts[Number(r)])) {
      correction.select.value = "";
      correction.area.disabled = true;
    }
  }, true);
  document.addEventListener("htmx:load", (event) => setUpAll(event.detail?.elt));
  document.addEventListener("htmx:afterSwap", () => setUpAll(document));
  // Not at once even when the document is parsed: this file may run (deferred, from <head>) before
  // the helper scripts the partial loads further down; DOMContentLoaded waits for every one.
  if (document.readyState === "complete") setUpAll(document);
  else {
    document.addEventListener("DOMContentLoaded", () => setUpAll(document));
    window.addEventListener("load", () => setUpAll(document));
  }

  window.tandemHallucination = { setUpAll, cpLength };
})();
