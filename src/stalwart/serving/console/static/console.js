/* Stalwart console: the whole script layer. Loaded from /ui/static (the page's
   Content-Security-Policy allows no inline script).
   - [data-refresh]: fetch the URL every data-every seconds (default 5) and put the
     server-rendered (escaped) HTML in place; skipped while the tab is hidden.
   - button[data-confirm]: ask before its form is sent.
   - select[data-submit]: choosing submits its form. */
(function () {
  "use strict";

  function refresh(element) {
    var every = Math.max(1, Number(element.dataset.every || 5)) * 1000;
    function tick() {
      if (document.hidden) {
        setTimeout(tick, every);
        return;
      }
      fetch(element.dataset.refresh, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (response) {
          // A redirect means the session ended (to the login page): keep what is shown.
          if (!response.ok || response.redirected) throw new Error(String(response.status));
          return response.text();
        })
        .then(function (html) {
          element.innerHTML = html;
          element.classList.remove("stale");
          element.dataset.refreshed = String(Date.now());
        })
        .catch(function () { element.classList.add("stale"); })
        .finally(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    document.querySelectorAll("form").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        var button = event.submitter;
        var question = button && button.dataset.confirm;
        if (question && !window.confirm(question)) event.preventDefault();
      });
    });
    document.querySelectorAll("select[data-submit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
  });
})();
