// Keyboard shortcuts of the annotate page, the time spent on a task, and error reporting for htmx.
// Shortcuts are declared in the HTML (data-key="1", data-key="? i"), so the page's legend and this
// file can never disagree; this file only knows what to do with each kind of element.
(() => {
  "use strict";

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
    const shownAt = Number(form.dataset.shownAt);
    const input = form.querySelector("input[name=time_spent_ms]");
    if (input && shownAt) input.value = String(Math.round(performance.now() - shownAt));
  }, true);

  document.addEventListener("DOMContentLoaded", () => {
    stampShown(document);
    const form = taskForm();
    if (form) syncStrength(form);
  });
  document.addEventListener("htmx:load", (event) => stampShown(event.detail.elt));
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
