// Shared helpers: the session's CSRF token and JSON calls that explain errors.
"use strict";
const sercon = {
  csrf: null,
  async session() {
    const r = await fetch("/api/session", { credentials: "same-origin" });
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return null; }
    const s = await r.json();
    sercon.csrf = s.csrf;
    const who = document.getElementById("who");
    if (who) who.textContent = s.user;
    return s;
  },
  async api(method, path, body) {
    const headers = { "X-CSRF-Token": sercon.csrf || "" };
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    const r = await fetch(path, init);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const msg = data && data.error ? data.error.message : r.status + " " + r.statusText;
      const err = new Error(msg); err.status = r.status; throw err;
    }
    return data;
  },
  vmName() {
    const m = location.pathname.match(/^\/vms\/(.+)\/(console|diagnostics)$/);
    return m ? decodeURIComponent(m[1]) : null;
  },
  async logout() {
    try { await sercon.api("POST", "/api/logout"); } catch (e) { /* already gone */ }
    location.href = "/login";
  },
};
document.addEventListener("DOMContentLoaded", () => {
  const out = document.getElementById("logout");
  if (out) out.addEventListener("click", (e) => { e.preventDefault(); sercon.logout(); });
});
