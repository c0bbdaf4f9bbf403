// The Changes page's "Draw a secret here": a new API key's secret drawn in this browser,
// shown once to the person creating it, and only its SHA-256 put in the form. The secret
// has no form field name, so it is never sent. Without this script (or outside a secure
// context, where crypto.subtle is missing) the form asks for the hash, as before.
"use strict";

(function drawSecret() {
  const button = document.querySelector("[data-draw-secret]");
  const shown = document.getElementById("key-secret");
  const hash = document.getElementById("key-sha256");
  if (!button || !shown || !hash || !window.isSecureContext || !crypto.subtle) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    const bytes = crypto.getRandomValues(new Uint8Array(32));
    const secret = "fgw_" + btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(secret)));
    hash.value = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    shown.value = secret;
    shown.closest("[data-secret-box]").hidden = false;
    shown.focus();
    shown.select();
  });
})();
