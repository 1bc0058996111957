// Compare page: every run's curves overlaid against the epoch (each series downsampled
// by the server to at most 1,000 points), any metric, linear or log scale.
(function () {
  "use strict";
  const runs = JSON.parse(document.getElementById("runs-data").textContent);
  const colours = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
  const colour = function (i) { return colours[i % colours.length]; };
  document.querySelectorAll(".swatch").forEach(function (el) { el.style.background = colour(+el.dataset.index); });
  const series = {};  // run id -> {metric: [{x, y}]}
  const charts = {};

  function chart(id, metric, title, scale) {
    const datasets = runs.map(function (run, i) {
      const points = ((series[run.id] || {})[metric] || []).map(function (p) { return { x: p.epoch, y: p.value * (scale || 1) }; });
      return { label: run.name, data: points, borderColor: colour(i), backgroundColor: colour(i), pointRadius: points.length < 60 ? 2 : 0, borderWidth: 1.5 };
    });
    const log = document.getElementById("log-scale").checked;
    if (charts[id]) charts[id].destroy();
    charts[id] = new Chart(document.getElementById(id), {
      type: "line",
      data: { datasets: datasets },
      options: {
        animation: false, parsing: false, normalized: true, maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: false },
        plugins: { title: { display: true, text: title }, decimation: { enabled: false } },
        scales: { x: { type: "linear", title: { display: true, text: "epoch" } }, y: { type: log ? "logarithmic" : "linear" } },
      },
    });
  }

  function draw() {
    const metric = document.getElementById("metric").value;
    chart("compare-chart", metric, metric);
    chart("compare-loss", "train_loss", "training loss");
    chart("compare-accuracy", "val_accuracy", "validation accuracy (%)", 100);
    chart("compare-lr", "lr", "learning rate");
  }

  Promise.all(runs.map(function (run) {
    return fetch("/api/models/" + run.id + "/metrics/?max_points=1000", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : {}; })
      .then(function (data) { series[run.id] = data; });
  })).then(function () {
    const names = new Set();
    Object.values(series).forEach(function (s) { Object.keys(s).forEach(function (n) { names.add(n); }); });
    const select = document.getElementById("metric");
    Array.from(names).sort().forEach(function (name) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      select.appendChild(option);
    });
    select.value = names.has("val_loss") ? "val_loss" : select.options.length ? select.options[0].value : "";
    select.addEventListener("change", draw);
    document.getElementById("log-scale").addEventListener("change", draw);
    draw();
    document.body.dataset.chartsReady = "1";
  });
})();
