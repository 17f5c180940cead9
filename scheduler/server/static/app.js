// Conveyor UI: live regions over Server-Sent Events, and logs that follow a running attempt.
// No framework and no inline script (the Content-Security-Policy forbids it). Text from the server
// is inserted as server-escaped HTML (DOMParser, never executed) or as text nodes, never as markup.
(function () {
  "use strict";

  function followLog(pre) {
    if (pre.dataset.following) return;
    var url = pre.dataset.follow;
    if (!url || !window.fetch || !window.TextDecoder) return;
    pre.dataset.following = "1";
    var decoder = new TextDecoder("utf-8");
    fetch(url, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok || !response.body) { pre.dataset.following = ""; return; }
      var reader = response.body.getReader();
      var first = true;
      function pump() {
        return reader.read().then(function (part) {
          if (part.done) { pre.dataset.following = "done"; return; }
          var nearBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
          if (first) { pre.textContent = ""; first = false; }  // the stream starts again from byte 0
          pre.appendChild(document.createTextNode(decoder.decode(part.value, { stream: true })));
          if (nearBottom) pre.scrollTop = pre.scrollHeight;
          return pump();
        });
      }
      return pump();
    }).catch(function () { pre.dataset.following = ""; });
  }

  function wire(root) {
    root.querySelectorAll("pre[data-follow]").forEach(followLog);
  }

  function liveRegion(live) {
    var busy = false, again = false, timer = null;

    function swap(html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      var oldLog = live.querySelector("pre[data-log-key]");
      var openDetails = {};
      live.querySelectorAll("tr[data-step] + tr details[open]").forEach(function (d) {
        openDetails[d.closest("tr").previousElementSibling.dataset.step] = true;
      });
      var nodes = Array.prototype.map.call(doc.body.childNodes, function (n) { return document.importNode(n, true); });
      live.replaceChildren.apply(live, nodes);
      var newLog = live.querySelector("pre[data-log-key]");
      // Keep a log that is being followed (or was scrolled) when the same attempt is shown again.
      if (oldLog && newLog && oldLog.dataset.logKey === newLog.dataset.logKey && oldLog.dataset.following) {
        newLog.replaceWith(oldLog);
      }
      live.querySelectorAll("tr[data-step]").forEach(function (row) {
        if (openDetails[row.dataset.step]) {
          var d = row.nextElementSibling && row.nextElementSibling.querySelector("details");
          if (d) d.open = true;
        }
      });
      wire(live);
      live.dispatchEvent(new CustomEvent("conveyor:updated", { bubbles: true }));
    }

    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(live.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) swap(html); })
        .catch(function () {})
        .then(function () {
          busy = false;
          if (again) { again = false; schedule(); }
        });
    }

    function schedule() {
      clearTimeout(timer);
      timer = setTimeout(refresh, 150);
    }

    if (live.dataset.events && window.EventSource) {
      var source = new EventSource(live.dataset.events);
      source.onmessage = schedule;
      source.onopen = function () { if (live.dataset.opened) schedule(); live.dataset.opened = "1"; };
    }
    // A safety net if events cannot flow (a proxy that buffers them): refresh now and then.
    setInterval(function () { if (live.dataset.ended !== "true" && !document.hidden) schedule(); }, 10000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(liveRegion);
    wire(document);
  });
})();
