// Model page: loss, accuracy and learning-rate charts, updated live from the websocket.
(function () {
  "use strict";
  const series = JSON.parse(document.getElementById("metrics-data").textContent);
  const header = document.getElementById("job");
  const jobId = header.dataset.job;

  function points(name, scale) {
    return (series[name] || []).map(function (p) { return { x: p.epoch, y: p.value * (scale || 1) }; });
  }

  function lineChart(id, datasets, yTitle, extra) {
    return new Chart(document.getElementById(id), {
      type: "line",
      data: { datasets: datasets },
      options: Object.assign({
        animation: false,
        parsing: false,
        normalized: true,
        maintainAspectRatio: false,
        elements: { point: { radius: 0 }, line: { borderWidth: 1.5 } },
        interaction: { mode: "nearest", intersect: false },
        scales: {
          x: { type: "linear", title: { display: true, text: "epoch" } },
          y: { title: { display: true, text: yTitle } },
        },
      }, extra || {}),
    });
  }

  const charts = {
    loss: lineChart("loss-chart", [
      { label: "train loss", data: points("train_loss"), borderColor: "#3b82f6" },
      { label: "val loss", data: points("val_loss"), borderColor: "#ef4444", pointRadius: 3 },
    ], "loss"),
    accuracy: lineChart("accuracy-chart", [
      { label: "val accuracy (top-1, %)", data: points("val_accuracy", 100), borderColor: "#10b981", pointRadius: 3 },
      { label: "val accuracy (top-5, %)", data: points("val_top5", 100), borderColor: "#8b5cf6", pointRadius: 3 },
    ], "accuracy %", { scales: { x: { type: "linear", title: { display: true, text: "epoch" } }, y: { min: 0, max: 100 } } }),
    lr: lineChart("lr-chart", [
      { label: "learning rate", data: points("lr"), borderColor: "#f59e0b" },
    ], "learning rate"),
  };
  const where = {
    train_loss: [charts.loss, 0, 1], val_loss: [charts.loss, 1, 1],
    val_accuracy: [charts.accuracy, 0, 100], val_top5: [charts.accuracy, 1, 100], lr: [charts.lr, 0, 1],
  };

  function renderSnapshots(snapshots) {
    const body = document.querySelector("#snapshots tbody");
    body.innerHTML = "";
    snapshots.forEach(function (s) {
      const row = document.createElement("tr");
      const acc = s.val_accuracy === null ? "—" : (s.val_accuracy * 100).toFixed(1) + "%";
      const loss = s.val_loss === null ? "—" : s.val_loss.toFixed(4);
      [s.epoch, acc, loss].forEach(function (v) { const td = document.createElement("td"); td.textContent = v; row.appendChild(td); });
      const td = document.createElement("td");
      const a = document.createElement("a");
      a.href = "/api/models/" + jobId + "/download/?epoch=" + s.epoch;
      a.textContent = "Download";
      td.appendChild(a);
      row.appendChild(td);
      body.appendChild(row);
    });
  }

  DigitsLive.followJob(function (msg) {
    if (msg.type !== "metrics") return;
    const touched = new Set();
    msg.points.forEach(function (p) {
      const target = where[p.name];
      if (!target) return;
      target[0].data.datasets[target[1]].data.push({ x: p.epoch, y: p.value * target[2] });
      touched.add(target[0]);
    });
    touched.forEach(function (chart) { chart.update("none"); });
    if (msg.snapshots.length) {
      fetch("/api/models/" + jobId + "/", { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) { renderSnapshots(data.snapshots); });
    }
  });
})();
