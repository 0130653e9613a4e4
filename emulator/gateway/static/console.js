// The console page: xterm.js on a websocket to the guest's COM1, and the toolbar's REST actions.
"use strict";
(function () {
  const vm = sercon.vmName();
  const vmPath = vm.split("/").map(encodeURIComponent).join("/");
  const mode = new URLSearchParams(location.search).get("mode") === "read" ? "read" : "interactive";
  const statusEl = document.getElementById("status");
  const noticeEl = document.getElementById("notice");
  let pasteCap = 2048;
  let ws = null;
  let pos = null;             // serial-log offset of the next byte we expect
  let waitingForEnter = false; // after a takeover / idle close: Enter reconnects (as in Azure)
  let reconnectDelay = 500;
  let transcript = "";
  const decoder = new TextDecoder();

  document.getElementById("vm-title").textContent = "Serial console: " + vm + (mode === "read" ? " (read-only)" : "");
  document.getElementById("diag-link").href = "/vms/" + vmPath + "/diagnostics";

  const term = new Terminal({ scrollback: 10000, convertEol: false, cursorBlink: true });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  window.serconTerm = term;
  window.serconTranscript = () => transcript;
  window.serconScreenText = () => {
    const b = term.buffer.active, lines = [];
    for (let i = 0; i < b.length; i++) { const l = b.getLine(i); if (l) lines.push(l.translateToString(true)); }
    return lines.join("\n");
  };

  function notice(text, isError) {
    noticeEl.textContent = text;
    noticeEl.classList.toggle("error", !!isError);
    noticeEl.classList.toggle("hidden", !text);
  }
  function status(text) { statusEl.textContent = text; }

  function connect() {
    waitingForEnter = false;
    const q = new URLSearchParams({ mode });
    if (pos !== null) q.set("from", String(pos));
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/vms/" + vmPath + "/console?" + q;
    status("connecting...");
    const sock = new WebSocket(url);
    sock.binaryType = "arraybuffer";
    let fatal = false, closedByServer = null;
    sock.onopen = () => { status(mode === "read" ? "connected (read-only)" : "connected"); reconnectDelay = 500; };
    sock.onmessage = (ev) => {
      if (typeof ev.data !== "string") {
        const bytes = new Uint8Array(ev.data);
        if (pos !== null) pos += bytes.length;
        term.write(bytes);
        transcript += decoder.decode(bytes, { stream: true });
        if (transcript.length > 2000000) transcript = transcript.slice(-1000000);
        return;
      }
      const m = JSON.parse(ev.data);
      if (m.type === "hello") {
        pos = m.offset; pasteCap = m.paste_cap || pasteCap;
        if (m.took_over) notice("You took over the console from " + m.took_over + ".");
        else notice("");
      } else if (m.type === "error") {
        notice(m.message, true);
        if (m.fatal) fatal = true;
      } else if (m.type === "closed") {
        closedByServer = m;
      }
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      if (closedByServer && (closedByServer.reason === "takeover" || closedByServer.reason === "idle")) {
        notice(closedByServer.message, true);
        status("disconnected: press Enter in the console to reconnect");
        waitingForEnter = true;
        return;
      }
      if (closedByServer && closedByServer.reason === "disabled") {
        notice(closedByServer.message, true);
        status("disconnected: the console is disabled");
        return;
      }
      if (fatal || ev.code === 4401 || ev.code === 4403 || ev.code === 4404) {
        status("disconnected");
        waitingForEnter = true;
        return;
      }
      // Restart, power cycle, server restart, network: reconnect by ourselves.
      status("connection lost; reconnecting...");
      setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 5000);
    };
    ws = sock;
  }

  term.onData((data) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      if (waitingForEnter && data.includes("\r")) connect();
      return;
    }
    if (mode === "read") { notice("This is a read-only session: keystrokes are not sent.", true); return; }
    ws.send(JSON.stringify({ type: "input", data }));
  });

  // Paste: capped at 2048 characters, as in Azure, with a visible notice.
  document.getElementById("terminal").addEventListener("paste", (ev) => {
    const text = (ev.clipboardData || window.clipboardData).getData("text");
    if (text.length > pasteCap) {
      ev.preventDefault(); ev.stopPropagation();
      notice("Paste truncated: only the first " + pasteCap + " of " + text.length + " characters were sent (the cap is " + pasteCap + ").", true);
      term.paste(text.slice(0, pasteCap));
    }
  }, true);

  const confirmDialog = document.getElementById("confirm");
  function confirmThen(text, fn) {
    document.getElementById("confirm-text").textContent = text;
    const ok = document.getElementById("confirm-ok"), cancel = document.getElementById("confirm-cancel");
    ok.onclick = () => { confirmDialog.close(); fn(); };
    cancel.onclick = () => confirmDialog.close();
    confirmDialog.showModal();
  }
  const powerText = {
    "restart": "Restart " + vm + "? The guest shuts down gracefully (ACPI) and boots again.",
    "reset": "Reset " + vm + "? This is a hard reset: unsaved data in the guest is lost.",
    "power-cycle": "Power cycle " + vm + "? The virtual machine is powered off and on again.",
  };
  async function act(action, body) {
    status(action + "...");
    try {
      const r = await sercon.api("POST", "/api/vms/" + vmPath + "/" + action, body);
      status(action + " done (" + r.seconds + " s)");
      notice("");
    } catch (e) {
      notice(action + " failed: " + e.message, true);
      status("connected");
    }
    if (!ws) connect();
  }
  function power(action) { confirmThen(powerText[action], () => act(action)); }
  for (const id of ["power-restart", "power-reset", "power-cycle"]) {
    const b = document.getElementById(id);
    b.addEventListener("click", () => power(b.dataset.action));
  }
  document.getElementById("power-select").addEventListener("change", (ev) => {
    const v = ev.target.value; ev.target.value = ""; if (v) power(v);
  });
  document.getElementById("sysrq-send").addEventListener("click", () => {
    const keys = document.getElementById("sysrq-keys").value.trim();
    if (!keys) { notice("Type a SysRq key (h for help) or a sequence such as REISUB.", true); return; }
    act("sysrq", { keys });
  });
  document.getElementById("nmi-button").addEventListener("click", () =>
    confirmThen("Send a non-maskable interrupt to " + vm + "?", () => act("nmi")));

  sercon.session().then((s) => { if (s) { connect(); term.focus(); } });
})();
