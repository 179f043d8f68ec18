// edgefleet dashboard: refresh the live parts of a page by short polling.
// An element with data-live="URL" data-every="SECONDS" is replaced by the HTML the URL
// answers, every SECONDS, while the page is visible. Without JavaScript the page is whole;
// reloading it shows the same state.
"use strict";
(function () {
  function poll(el) {
    var url = el.getAttribute("data-live");
    var every = Math.max(1, parseFloat(el.getAttribute("data-every") || "5")) * 1000;
    function tick() {
      if (document.hidden) { setTimeout(tick, every); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html !== null && html !== undefined) {
            el.innerHTML = html;
            el.setAttribute("data-updated", String(Date.now()));
          }
        })
        .catch(function () {})
        .then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(poll);
  });
})();
