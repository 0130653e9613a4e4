"use strict";
document.getElementById("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const err = document.getElementById("login-error");
  err.classList.add("hidden");
  const r = await fetch("/api/login", {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user: document.getElementById("user").value, password: document.getElementById("password").value }),
  });
  if (r.ok) {
    const next = new URLSearchParams(location.search).get("next");
    location.href = safeNext(next);
    return;
  }
  let msg = r.status + " " + r.statusText;
  try { msg = (await r.json()).error.message; } catch (x) { /* keep status */ }
  err.textContent = msg;
  err.classList.remove("hidden");
});

// Only a path on this server: "/\\evil.example" and "//evil.example" are other hosts to a browser.
function safeNext(next) {
  if (!next || !/^\/[A-Za-z0-9_\-.\/%?=&]*$/.test(next) || next.startsWith("//")) return "/";
  const url = new URL(next, location.origin);
  return url.origin === location.origin ? url.pathname + url.search : "/";
}
