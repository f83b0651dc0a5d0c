// Keyboard shortcuts of the annotate page, the time spent on a task, and error reporting for htmx.
// Shortcuts are declared in the HTML (data-key="1", data-key="? i"), so the page's legend and this
// file can never disagree; this file only knows what to do with each kind of element.
// The Content-Security-Policy allows no inline script: every behaviour of the pages lives here and
// reads its data from data-* attributes.
(() => {
  "use strict";

  // Replies that carry a form with its errors: htmx swaps them into the form's own region (see
  // responseHandling in base.html's htmx-config) instead of treating them as failures.
  const FORM_ERROR_STATUSES = [400, 409, 413, 422];

  const TYPING = "textarea, select, [contenteditable], input:not([type=radio]):not([type=checkbox]):not([type=hidden]):not([type=submit]):not([type=button])";
  const ACTIVATES_ON_ENTER = "button, a[href], summary, input[type=submit], input[type=button]";

  const taskForm = () => document.querySelector("form[data-task-form]");

  function flash(message) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { box.hidden = true; }, 8000);
  }

  // Time spent is measured from the moment the task appears until submit.
  function stampShown(root) {
    const forms = root.matches?.("form[data-task-form]") ? [root] : root.querySelectorAll?.("form[data-task-form]") || [];
    for (const form of forms) form.dataset.shownAt = String(performance.now());
  }

  // A tie or "both bad" has no direction, so its strength is disabled (and not sent).
  function syncStrength(form) {
    const choice = form.querySelector("input[name=choice]:checked");
    const strength = form.querySelector("[data-strength]");
    if (strength) strength.disabled = Boolean(choice) && !["A", "B"].includes(choice.value);
  }

  function submitTask(form) {
    if (form) form.requestSubmit();
  }

  // From the moment an annotate request leaves until the task that answers it has settled, keys
  // do nothing: an Enter pressed while the next task swaps in would otherwise reach a form htmx
  // has not yet taken over, and the browser would post it as a whole page.
  // The state is mirrored on <html data-busy> so a page (or a browser test) can tell when keys
  // work again.
  let busy = false;
  function setBusy(value) {
    busy = value;
    document.documentElement.toggleAttribute("data-busy", value);
  }

  function activate(element) {
    if (element.matches("textarea, input:not([type=radio])")) {
      element.focus();
    } else if (element.matches("input[type=radio]")) {
      if (element.disabled || element.closest("fieldset:disabled")) return;
      element.click();
      element.focus({ preventScroll: true });
    } else {
      element.click();
    }
  }

  function onKeydown(event) {
    if (!document.body.hasAttribute("data-shortcuts") || event.defaultPrevented || event.isComposing) return;
    if (document.querySelector("dialog[open]")) return; // the dialog closes itself on Esc
    if (busy) {
      if (event.key === "Enter" || event.key.length === 1) event.preventDefault();
      return;
    }
    const target = event.target instanceof Element ? event.target : document.body;
    const form = taskForm();

    if (target.matches(TYPING)) {
      if (event.key === "Escape") {
        event.preventDefault();
        target.blur();
      } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form === form) {
        event.preventDefault();
        submitTask(form);
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;

    if (event.key === "Enter") {
      if (target.matches(ACTIVATES_ON_ENTER)) return; // Enter presses the focused button itself
      event.preventDefault();
      submitTask(form);
      return;
    }
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const element = document.querySelector(`[data-key~="${CSS.escape(key)}"]`);
    if (!element) return;
    event.preventDefault(); // so "r" focuses the rationale without typing an "r" into it
    activate(element);
  }

  function openDialog(event) {
    const trigger = event.target instanceof Element && event.target.closest("[data-dialog]");
    if (!trigger) return;
    const dialog = document.getElementById(trigger.dataset.dialog);
    if (!dialog || typeof dialog.showModal !== "function") return; // follow the link instead
    event.preventDefault();
    dialog.showModal();
  }

  document.addEventListener("keydown", onKeydown);
  document.addEventListener("click", openDialog);
  document.addEventListener("change", (event) => {
    const form = event.target.form;
    if (form && form.matches("[data-task-form]")) syncStrength(form);
  });
  // Capture phase: runs before htmx reads the form's values.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!form.matches("[data-task-form]")) return;
    // With htmx on the page the annotate form never posts natively: a form swapped in a moment ago
    // and not yet processed by htmx would otherwise navigate away (a full-page POST). htmx's own
    // listener still sends the request when the form is ready; before that the submit is dropped.
    if (window.htmx) event.preventDefault();
    if (busy) return;
    const shownAt = Number(form.dataset.shownAt);
    const input = form.querySelector("input[name=time_spent_ms]");
    if (input && shownAt) input.value = String(Math.round(performance.now() - shownAt));
  }, true);

  const inTaskPanel = (event) => Boolean(event.detail?.elt?.closest?.("#task-panel"));
  document.addEventListener("htmx:beforeRequest", (event) => {
    if (inTaskPanel(event)) setBusy(true);
  });
  // A request that ends without a swap (network error, refused) frees the keys at once; one that
  // swaps frees them when the new task has settled.
  document.addEventListener("htmx:afterRequest", (event) => {
    if (inTaskPanel(event) && !event.detail.shouldSwap) setBusy(false);
  });
  document.addEventListener("htmx:responseError", () => setBusy(false));
  document.addEventListener("htmx:sendError", () => setBusy(false));
  document.addEventListener("htmx:afterSettle", () => setBusy(false));

  // Capture phase on window: runs before django-htmx's debug script (DEBUG on), which would
  // otherwise replace the whole page with the form's error reply. Stopping the event here hides
  // it from that script only; htmx goes on to swap the reply as responseHandling says.
  window.addEventListener("htmx:beforeOnLoad", (event) => {
    const status = event.detail?.xhr?.status;
    if (FORM_ERROR_STATUSES.includes(status)) event.stopPropagation();
  }, true);

  // Progress bars get their width from a data attribute: the CSP allows no style="" in markup,
  // but a width set from this script is fine.
  function sizeBars(root) {
    const bars = root.querySelectorAll?.("[data-width]") || [];
    for (const bar of bars) bar.style.width = `${Number(bar.dataset.width) || 0}%`;
    if (root.matches?.("[data-width]")) root.style.width = `${Number(root.dataset.width) || 0}%`;
  }

  document.addEventListener("DOMContentLoaded", () => {
    stampShown(document);
    sizeBars(document);
    const form = taskForm();
    if (form) syncStrength(form);
  });
  document.addEventListener("htmx:load", (event) => {
    stampShown(event.detail.elt);
    sizeBars(event.detail.elt);
  });
  document.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail.target?.id !== "task-panel") return;
    const panel = document.getElementById("task-panel");
    if (!panel) return;
    const form = taskForm();
    if (form) syncStrength(form);
    // The old task's focused element is gone: put focus on the new task, and its top in view.
    panel.focus({ preventScroll: true });
    if (panel.getBoundingClientRect().top < 0) panel.scrollIntoView({ block: "start" });
  });
  document.addEventListener("htmx:responseError", (event) => {
    const status = event.detail.xhr.status;
    const reason = { 403: "you are not allowed to do this", 404: "it no longer exists" }[status] || `the server answered ${status}`;
    flash(`That did not work: ${reason}. Nothing was lost; reload the page to continue.`);
  });
  document.addEventListener("htmx:sendError", () => {
    flash("Could not reach the server. Your answer is still on the page; press Enter to try again.");
  });
})();
