// Boot diagnostics: the serial log in pages of PAGE bytes (by byte offset), its download, a screenshot.
"use strict";
(function () {
  const PAGE = 65536;
  const vm = sercon.vmName();
  const vmPath = vm.split("/").map(encodeURIComponent).join("/");
  const base = "/api/vms/" + vmPath;
  let start = -PAGE, size = 0, shown = 0;
  document.getElementById("vm-title").textContent = "Boot diagnostics: " + vm;
  document.getElementById("console-link").href = "/vms/" + vmPath + "/console";
  document.getElementById("log-download").href = base + "/serial-log/download";

  async function load(from) {
    const err = document.getElementById("log-error");
    try {
      const r = await sercon.api("GET", base + "/serial-log?start=" + from + "&length=" + PAGE);
      start = r.start; size = r.size; shown = r.length;
      document.getElementById("log").textContent = r.text;
      document.getElementById("log-range").textContent =
        "bytes " + r.start + "-" + r.next + " of " + r.size;
      err.classList.add("hidden");
    } catch (e) {
      err.textContent = "Serial log: " + e.message; err.classList.remove("hidden");
    }
  }
  document.getElementById("log-first").onclick = () => load(0);
  document.getElementById("log-prev").onclick = () => load(Math.max(0, start - PAGE));
  document.getElementById("log-next").onclick = () => load(start + shown);
  document.getElementById("log-last").onclick = () => load(-PAGE);
  document.getElementById("log-refresh").onclick = () => load(start);
  document.getElementById("shot-button").onclick = async () => {
    const err = document.getElementById("shot-error"), img = document.getElementById("shot");
    const r = await fetch(base + "/screenshot", { credentials: "same-origin" });
    if (!r.ok) {
      let msg = r.status + ""; try { msg = (await r.json()).error.message; } catch (e) { /* keep */ }
      err.textContent = "Screenshot: " + msg; err.classList.remove("hidden"); return;
    }
    img.src = URL.createObjectURL(await r.blob()); img.classList.remove("hidden"); err.classList.add("hidden");
  };
  sercon.session().then((s) => { if (s) load(-PAGE); });
})();
