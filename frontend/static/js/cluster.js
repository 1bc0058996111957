// The cluster console: refresh every device's live stats every two seconds.
(function () {
  "use strict";
  const table = document.getElementById("devices");
  if (!table) return;

  function size(bytes) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return bytes.toFixed(1) + " " + units[i];
  }

  function refresh() {
    fetch(table.dataset.poll, { headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : []; })
      .then(function (devices) {
        devices.forEach(function (d) {
          const row = table.querySelector('tr[data-device="' + d.id + '"]');
          if (!row) return;
          const s = d.stats || {};
          const set = function (field, text) { row.querySelector('[data-field="' + field + '"]').textContent = text; };
          set("state", d.state);
          row.querySelector('[data-field="state"]').className = "status state-" + d.state;
          set("utilization", s.utilization != null ? Math.round(s.utilization) + " %" : "");
          set("memory", s.memory_total ? size(s.memory_used) + " / " + size(s.memory_total) : "");
          set("temperature", s.temperature != null ? Math.round(s.temperature) + " °C" : "");
          set("power", s.power != null ? Math.round(s.power) + " W" : "");
        });
      })
      .catch(function () {});
  }
  setInterval(refresh, 2000);
})();
