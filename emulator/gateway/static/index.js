"use strict";
async function load() {
  if (!(await sercon.session())) return;
  const data = await sercon.api("GET", "/api/vms");
  if (!data.console_enabled) {
    const n = document.getElementById("fleet-console");
    n.textContent = "The serial console is disabled for this fleet; boot diagnostics stay available.";
    n.classList.remove("hidden");
  }
  const body = document.querySelector("#vms tbody");
  body.textContent = "";
  for (const vm of data.vms) {
    const tr = document.createElement("tr");
    tr.dataset.vm = vm.name;
    const cells = [vm.name, vm.scale_set || "", vm.state, vm.boot ?? "", vm.role,
      vm.console_enabled ? (vm.console_in_use ? "in use" : "enabled") : "disabled"];
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
    const links = document.createElement("td");
    const path = "/vms/" + vm.name.split("/").map(encodeURIComponent).join("/");
    if (vm.permissions.includes("console")) {
      const a = document.createElement("a"); a.href = path + "/console"; a.textContent = "Serial console";
      a.className = "console-link"; links.appendChild(a); links.appendChild(document.createTextNode(" "));
    }
    const d = document.createElement("a"); d.href = path + "/diagnostics"; d.textContent = "Boot diagnostics";
    d.className = "diag-link"; links.appendChild(d);
    tr.appendChild(links);
    body.appendChild(tr);
  }
}
load();
setInterval(load, 10000);
