// Zoom and pan of one image in a fixed window: wheel, double click, drag, buttons, and (through the
// page's key handler) + - 0 and the arrow keys. The image is fitted to the window at 100%; its
// thumbnail serves that view and the full image is fetched on the first zoom in. Positions are set
// from script (element.style), which the CSP allows, never from markup.
(() => {
  "use strict";
  if (window.tandemImageViewer) return;

  const ZOOM_STEP = 1.25;
  const ZOOM_MAX = 8;
  const PAN_STEP = 48; // pixels per arrow press

  // Sets up the viewer inside `root` ([data-viewport] holding [data-image], [data-zoom-level] and
  // [data-zoom-action] buttons beside it); returns its state, or null without one.
  function attach(root) {
    const viewport = root.querySelector("[data-viewport]");
    const img = viewport?.querySelector("[data-image]");
    if (!viewport || !img) return null;
    const view = { viewport, img, level: root.querySelector("[data-zoom-level]"), z: 1, x: 0, y: 0, bw: 0, bh: 0 };
    const layout = () => {
      const iw = Number(img.getAttribute("width")) || img.naturalWidth || 1;
      const ih = Number(img.getAttribute("height")) || img.naturalHeight || 1;
      const fit = Math.min(viewport.clientWidth / iw, viewport.clientHeight / ih) || 1;
      view.bw = iw * fit;
      view.bh = ih * fit;
      img.style.width = `${view.bw}px`;
      img.style.height = `${view.bh}px`;
      applyView(view);
    };
    view.layout = layout;
    if (typeof ResizeObserver === "function") new ResizeObserver(layout).observe(viewport);
    layout();
    viewport.addEventListener("wheel", (event) => {
      event.preventDefault();
      const box = viewport.getBoundingClientRect();
      zoomBy(view, event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, event.clientX - box.left, event.clientY - box.top);
    }, { passive: false });
    viewport.addEventListener("dblclick", (event) => {
      const box = viewport.getBoundingClientRect();
      zoomBy(view, 2, event.clientX - box.left, event.clientY - box.top);
    });
    let drag = null;
    viewport.addEventListener("pointerdown", (event) => {
      if (event.button !== 0 || view.z <= 1) return;
      drag = { id: event.pointerId, x: event.clientX, y: event.clientY };
      viewport.setPointerCapture(event.pointerId);
      viewport.classList.add("is-dragging");
    });
    viewport.addEventListener("pointermove", (event) => {
      if (!drag || drag.id !== event.pointerId) return;
      panBy(view, event.clientX - drag.x, event.clientY - drag.y);
      drag.x = event.clientX;
      drag.y = event.clientY;
    });
    const end = () => { drag = null; viewport.classList.remove("is-dragging"); };
    viewport.addEventListener("pointerup", end);
    viewport.addEventListener("pointercancel", end);
    root.querySelectorAll("[data-zoom-action]").forEach((button) => {
      button.addEventListener("click", () => zoomAction(view, button.dataset.zoomAction));
    });
    return view;
  }

  // The image keeps its top-left at (x, y) and is scaled by z; a side smaller than the window is
  // centred, a larger one may not leave a gap at either edge.
  function applyView(view) {
    const { viewport, img } = view;
    const clamp = (pos, size, room) => (size <= room ? (room - size) / 2 : Math.min(0, Math.max(room - size, pos)));
    view.x = clamp(view.x, view.bw * view.z, viewport.clientWidth);
    view.y = clamp(view.y, view.bh * view.z, viewport.clientHeight);
    img.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.z})`;
    viewport.dataset.zoom = view.z.toFixed(2);
    viewport.classList.toggle("is-zoomed", view.z > 1);
    if (view.level) view.level.textContent = `${Math.round(view.z * 100)}%`;
    // The thumbnail serves the fitted view; the full image is fetched once someone zooms in.
    if (view.z > 1 && img.dataset.fullSrc && img.getAttribute("src") !== img.dataset.fullSrc) img.src = img.dataset.fullSrc;
  }

  function zoomBy(view, factor, px, py) {
    const z = Math.min(ZOOM_MAX, Math.max(1, view.z * factor));
    const ax = px ?? view.viewport.clientWidth / 2;
    const ay = py ?? view.viewport.clientHeight / 2;
    // The image point under (ax, ay) stays under it.
    view.x = ax - ((ax - view.x) / view.z) * z;
    view.y = ay - ((ay - view.y) / view.z) * z;
    view.z = z;
    applyView(view);
  }

  function panBy(view, dx, dy) {
    view.x += dx;
    view.y += dy;
    applyView(view);
  }

  function zoomAction(view, action) {
    if (action === "in") zoomBy(view, ZOOM_STEP);
    else if (action === "out") zoomBy(view, 1 / ZOOM_STEP);
    else { view.z = 1; applyView(view); }
  }

  window.tandemImageViewer = {
    attach,
    zoom: zoomAction,
    pan: (view, dx, dy) => panBy(view, dx * PAN_STEP, dy * PAN_STEP),
  };
})();
