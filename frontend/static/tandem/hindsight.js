// The hindsight task of the annotate page (annotation/kinds/hindsight.html): a 1–5 satisfaction
// rating per response and, with two responses, which satisfied more; given twice, before and after
// the outcome is shown. Keyboard only: a cursor sits on one response's rating row; 1–5 rate the
// response at the cursor, which then moves on to the next response not yet rated; [ and ] put the
// cursor on response A or B (buttons with data-key, so tandem.js binds them and this file only
// moves the cursor); a, b and t choose A, B or tie and n goes to the reason (data-key elements,
// handled by tandem.js alone). The keys are the kind's (KEYS in annotation/kinds/hindsight).
// The page can load this file twice (base page and the kind's partial) and htmx swaps tasks in
// and out: global listeners are bound once, each task is set up when it appears.
(() => {
  "use strict";
  if (window.tandemHindsight) return;

  const TYPING = "textarea, select, [contenteditable], input:not([type=radio]):not([type=checkbox]):not([type=hidden]):not([type=submit]):not([type=button])";
  const RATING_KEYS = ["1", "2", "3", "4", "5"];

  const answer = () => document.querySelector("[data-hindsight-answer]");
  const rows = (root) => Array.from(root.querySelectorAll("[data-rating-row]"));
  const rated = (row) => Boolean(row.querySelector("input[type=radio]:checked"));

  function announce(message) {
    const live = document.querySelector("[data-hindsight-announce]");
    if (live) live.textContent = message;
  }

  // The cursor is shown on the rating row and on the response it rates (data-at-cursor).
  function setCursor(root, index) {
    const all = rows(root);
    if (!all.length) return;
    const at = Math.max(0, Math.min(index, all.length - 1));
    root.dataset.cursor = String(at);
    all.forEach((row, i) => row.toggleAttribute("data-at-cursor", i === at));
    for (const card of document.querySelectorAll("[data-hindsight-task] [data-response]")) {
      card.toggleAttribute("data-at-cursor", Number(card.dataset.response) === at && all.length > 1);
    }
  }

  function cursorOf(root) {
    const at = Number(root.dataset.cursor);
    return Number.isInteger(at) ? at : 0;
  }

  function setUp(root) {
    if (!root || root.dataset.ready) return;
    root.dataset.ready = "1";
    // Start on the first response without a rating (all rated after a refusal: the first).
    const all = rows(root);
    const first = all.findIndex((row) => !rated(row));
    setCursor(root, first < 0 ? 0 : first);
  }

  function setUpAll() {
    const root = answer();
    if (root) setUp(root);
  }

  function rate(root, value) {
    const all = rows(root);
    const row = all[cursorOf(root)];
    if (!row) return;
    const input = row.querySelector(`input[type=radio][value="${value}"]`);
    if (!input || input.disabled) return;
    input.click();
    input.focus({ preventScroll: true });
    announce(`Response ${row.dataset.label}: ${input.dataset.ratingLabel || value}.`);
    // On to the next response still unrated, if any; the cursor stays on the last one.
    const next = all.findIndex((r, i) => i > cursorOf(root) && !rated(r));
    if (next >= 0) setCursor(root, next);
  }

  // Capture phase: runs before tandem.js's own key handler, which skips a key handled here.
  function onKeydown(event) {
    const root = answer();
    if (!root || !document.body.hasAttribute("data-shortcuts") || event.defaultPrevented || event.isComposing) return;
    if (document.querySelector("dialog[open]") || document.documentElement.hasAttribute("data-busy")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target instanceof Element ? event.target : document.body;
    if (target.matches(TYPING)) return;
    if (!RATING_KEYS.includes(event.key)) return;
    setUp(root);
    event.preventDefault();
    rate(root, event.key);
  }

  document.addEventListener("keydown", onKeydown, true);
  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element && event.target.closest("[data-cursor-to]");
    const root = answer();
    if (!button || !root) return;
    setUp(root);
    setCursor(root, Number(button.dataset.cursorTo));
    const row = rows(root)[cursorOf(root)];
    const checked = row?.querySelector("input[type=radio]:checked") || row?.querySelector("input[type=radio]");
    checked?.focus({ preventScroll: true });
    row?.scrollIntoView({ block: "nearest" });
    announce(`Rating response ${row?.dataset.label}: press 1 to 5.`);
  });
  // A rating given by mouse moves the cursor there, so the keys go on from where the eye is.
  document.addEventListener("change", (event) => {
    const row = event.target instanceof Element && event.target.closest("[data-rating-row]");
    const root = answer();
    if (!row || !root) return;
    setCursor(root, rows(root).indexOf(row));
  });
  document.addEventListener("htmx:load", setUpAll);
  document.addEventListener("htmx:afterSwap", setUpAll);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUpAll);
  else setUpAll();

  window.tandemHindsight = { setUpAll };
})();
