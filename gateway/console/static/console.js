// The console works without this script; it only keeps the Decisions table live.
"use strict";

(function liveDecisions() {
  const table = document.getElementById("decisions");
  const toggle = document.querySelector("[data-live-toggle]");
  if (!table || !toggle) return;
  const url = table.dataset.rowsUrl;
  async function refresh() {
    if (!toggle.checked || document.hidden) return;
    try {
      const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!answer.ok || answer.redirected) return;  // signed out: leave the page as it is
      const rows = new DOMParser().parseFromString(`<table>${await answer.text()}</table>`, "text/html")
        .getElementById("decision-rows");
      const current = document.getElementById("decision-rows");
      if (rows && current && rows.innerHTML !== current.innerHTML) current.replaceWith(document.adoptNode(rows));
    } catch (error) {
      // the gateway is restarting or unreachable: try again at the next tick
    }
  }
  setInterval(refresh, 3000);
})();
