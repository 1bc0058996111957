// Model page: loss (raw and smoothed), accuracy, learning-rate and throughput charts,
// updated live from the websocket; snapshots, notices and time to the next snapshot.
(function () {
  "use strict";
  // The charts start empty and load the series (downsampled by the server) at once.
  const series = {};
  const header = document.getElementById("job");
  const jobId = header.dataset.job;
  const smoothing = document.getElementById("smoothing");
  if (!smoothing) return;  // an imported model: no training charts
  const controls = document.getElementById("chart-controls");
  const plannedEpochs = Number(controls.dataset.epochs) || undefined;  // the x-axis spans the whole run from the start
  const showTop5 = controls.dataset.top5 === "1";  // top-5 says nothing with 5 classes or fewer
  // Segmentation: mean IoU (the best epoch's measure), pixel accuracy and each class's IoU.
  const segmentation = controls.dataset.task === "segmentation";
  // Detection: mAP@0.5 (the best epoch's measure), mAP@0.5:0.95 and each class's AP@0.5.
  const detection = controls.dataset.task === "detection";
  const classNames = JSON.parse(controls.dataset.classes || "[]");
  const classColours = JSON.parse(controls.dataset.colours || "[]");

  function points(name, scale) {
    return (series[name] || []).map(function (p) { return { x: p.epoch, y: p.value * (scale || 1) }; });
  }

  // Exponential moving average with bias correction, as TensorBoard draws it.
  function smooth(raw, weight) {
    let last = 0, n = 0;
    return raw.map(function (p) {
      last = last * weight + (1 - weight) * p.y;
      n += 1;
      return { x: p.x, y: weight ? last / (1 - Math.pow(weight, n)) : p.y };
    });
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
          x: { type: "linear", min: 0, max: plannedEpochs, title: { display: true, text: "epoch" } },
          y: { title: { display: true, text: yTitle } },
        },
      }, extra || {}),
    });
  }

  const rawLoss = points("train_loss");
  const charts = {
    loss: lineChart("loss-chart", [
      { label: "train loss", data: rawLoss, borderColor: "rgba(59,130,246,0.25)" },
      { label: "train loss (smoothed)", data: smooth(rawLoss, Number(smoothing.value)), borderColor: "#3b82f6" },
      { label: "val loss", data: points("val_loss"), borderColor: "#ef4444", pointRadius: 3 },
    ], "loss"),
    accuracy: lineChart("accuracy-chart", [
      { label: segmentation ? "val mean IoU (%)" : detection ? "val mAP@0.5 (%)" : "val accuracy (top-1, %)", data: points("val_accuracy", 100), borderColor: "#10b981", pointRadius: 3 },
      { label: "best", data: [], borderColor: "#f59e0b", backgroundColor: "#f59e0b", pointStyle: "star", pointRadius: 10, showLine: false },
    ].concat(showTop5 ? [{ label: "val accuracy (top-5, %)", data: points("val_top5", 100), borderColor: "#8b5cf6", pointRadius: 3 }] : [])
     .concat(segmentation ? [{ label: "val pixel accuracy (%)", data: points("val_pixel_accuracy", 100), borderColor: "#7c3aed", pointRadius: 3 }] : [])
     .concat(detection ? [{ label: "val mAP@0.5:0.95 (%)", data: points("val_map", 100), borderColor: "#7c3aed", pointRadius: 3, borderWidth: 2.5 }] : []),
    "accuracy %", { scales: { x: { type: "linear", min: 0, max: plannedEpochs, title: { display: true, text: "epoch" } }, y: { min: 0, max: 100 } } }),
    lr: lineChart("lr-chart", [{ label: "learning rate", data: points("lr"), borderColor: "#f59e0b" }], "learning rate"),
    throughput: lineChart("throughput-chart", [
      { label: "throughput (images/s)", data: points("throughput"), borderColor: "#0ea5e9" },
    ], "images/s"),
    // Each rank's device, as the trainer read it: "<reading>:r<rank>" series.
    device: lineChart("device-chart", [], "% / °C / W"),
    deviceMemory: lineChart("device-memory-chart", [], "MB"),
  };
  const DEVICE_READINGS = {
    gpu_util: ["GPU utilisation %", "device"], cpu_percent: ["CPU use %", "device"], gpu_temp: ["temperature °C", "device"],
    gpu_power_w: ["power W", "device"], gpu_mem_mb: ["GPU memory used", "deviceMemory"],
    gpu_mem_total_mb: ["GPU memory total", "deviceMemory"], rss_mb: ["resident memory", "deviceMemory"],
  };
  const DEVICE_COLOURS = ["#0ea5e9", "#f97316", "#a855f7", "#22c55e", "#e11d48", "#64748b", "#eab308"];

  // A device series gets its dataset on its chart the first time a point of it arrives.
  function deviceTarget(name) {
    const match = /^(\w+):r(\d+)$/.exec(name);
    if (!match || !DEVICE_READINGS[match[1]]) return null;
    const [label, chartName] = DEVICE_READINGS[match[1]];
    const chart = charts[chartName];
    const full = label + (match[2] !== "0" || document.body.dataset.ranks ? " (rank " + match[2] + ")" : "");
    chart.data.datasets.push({ label: full, data: [], borderColor: DEVICE_COLOURS[chart.data.datasets.length % DEVICE_COLOURS.length] });
    where[name] = [chart, chart.data.datasets.length - 1, 1];
    return where[name];
  }
  const where = {
    train_loss: [charts.loss, 0, 1], val_loss: [charts.loss, 2, 1],
    val_accuracy: [charts.accuracy, 0, 100], lr: [charts.lr, 0, 1],
    throughput: [charts.throughput, 0, 1],
  };
  if (showTop5) where.val_top5 = [charts.accuracy, 2, 100];
  if (segmentation) where.val_pixel_accuracy = [charts.accuracy, 2, 100];
  if (detection) where.val_map = [charts.accuracy, 2, 100];

  // A class's IoU ("val_iou/<class id>"): a thin dashed line in the class's colour.
  // Detection: a class's AP@0.5 ("val_ap50/<class index>") likewise.
  const CLASS_LINE_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"];
  function iouTarget(name) {
    const match = segmentation ? /^val_iou\/(\d+)$/.exec(name) : detection ? /^val_ap50\/(\d+)$/.exec(name) : null;
    if (!match) return null;
    const id = Number(match[1]);
    const colour = classColours[id] ? "rgb(" + classColours[id].join(",") + ")" : CLASS_LINE_COLOURS[id % CLASS_LINE_COLOURS.length];
    charts.accuracy.data.datasets.push({
      label: (segmentation ? "IoU " : "AP@0.5 ") + (classNames[id] || "class " + id) + " (%)", data: [], borderColor: colour, borderDash: [4, 3], borderWidth: 1, pointRadius: 2,
    });
    where[name] = [charts.accuracy, charts.accuracy.data.datasets.length - 1, 100];
    return where[name];
  }

  // The best validation accuracy (segmentation: mean IoU; detection: mAP@0.5) so far, starred.
  function markBest() {
    const data = charts.accuracy.data.datasets[0].data;
    let best = null;
    data.forEach(function (p) { if (!best || p.y > best.y) best = p; });
    charts.accuracy.data.datasets[1].data = best ? [{ x: best.x, y: best.y }] : [];
    document.body.dataset.bestEpoch = best ? String(best.x) : "";
  }

  document.getElementById("loss-log").addEventListener("change", function (e) {
    charts.loss.options.scales.y.type = e.target.checked ? "logarithmic" : "linear";
    charts.loss.update("none");
  });

  function resmooth() {
    const weight = Number(smoothing.value);
    document.getElementById("smoothing-value").textContent = weight.toFixed(2);
    charts.loss.data.datasets[1].data = smooth(charts.loss.data.datasets[0].data, weight);
    charts.loss.update("none");
  }
  smoothing.addEventListener("input", resmooth);

  function percent(v) { return v === null || v === undefined ? "—" : (v * 100).toFixed(1) + "%"; }

  function renderSnapshots(snapshots) {
    const table = document.getElementById("snapshots");
    const body = table.querySelector("tbody");
    let best = null;
    snapshots.forEach(function (s) { if (s.val_accuracy !== null && (!best || s.val_accuracy > best.val_accuracy)) best = s; });
    body.innerHTML = "";
    snapshots.forEach(function (s) {
      const row = document.createElement("tr");
      row.dataset.epoch = s.epoch;
      if (s === best) row.className = "best";
      const loss = s.val_loss === null ? "—" : s.val_loss.toFixed(4);
      const cells = [s.epoch + (s === best ? " ★" : ""), percent(s.val_accuracy)].concat(showTop5 ? [percent(s.val_top5)] : []).concat([loss]);
      cells.forEach(function (v) {
        const td = document.createElement("td"); td.textContent = v; row.appendChild(td);
      });
      const td = document.createElement("td");
      [["Download", "/api/models/" + jobId + "/download/?epoch=" + s.epoch], ["Classify", "?epoch=" + s.epoch + "#classify"],
       ["Evaluate", "?epoch=" + s.epoch + "#evaluate"],
       ["Fine-tune", "/models/new/?base_model=" + jobId + "&base_epoch=" + s.epoch + "&dataset=" + table.dataset.dataset]]
        .forEach(function (link, i) {
          if (i) td.appendChild(document.createTextNode(" · "));
          const a = document.createElement("a");
          a.textContent = link[0];
          a.href = link[1];
          td.appendChild(a);
        });
      row.appendChild(td);
      body.appendChild(row);
    });
    // Snapshots that appear after the page was rendered change what "Classify" and "Evaluate" can pick: reload those forms then.
    document.body.dataset.snapshots = String(snapshots.length);
  }

  // The newest iteration drawn; points arrive in order, from the first load and the websocket.
  let lastIteration = 0;

  function asList(bySeries) {
    const list = [];
    Object.keys(bySeries).forEach(function (name) {
      bySeries[name].forEach(function (p) { list.push({ name: name, iteration: p.iteration, epoch: p.epoch, value: p.value }); });
    });
    list.sort(function (a, b) { return a.iteration - b.iteration; });
    return list;
  }

  const loaded = fetch("/api/models/" + jobId + "/metrics/", { credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.json() : {}; })
    .then(function (all) {
      const list = asList(all);
      list.forEach(function (p) { lastIteration = Math.max(lastIteration, p.iteration); });
      addPoints(list);
      document.body.dataset.chartsReady = "1";
    });

  function addPoints(list) {
    const touched = new Set();
    list.forEach(function (p) {
      const target = where[p.name] || deviceTarget(p.name) || iouTarget(p.name);
      if (!target) return;
      const data = target[0].data.datasets[target[1]].data;
      const point = { x: p.epoch, y: p.value * target[2] };
      // In order and once: a point fetched after subscribing may also come by websocket.
      if (data.length && data[data.length - 1].x >= point.x) {
        if (data.some(function (q) { return q.x === point.x; })) return;
        data.push(point);
        data.sort(function (a, b) { return a.x - b.x; });
      } else {
        data.push(point);
      }
      touched.add(target[0]);
    });
    if (touched.has(charts.loss)) resmooth();
    if (touched.has(charts.accuracy)) markBest();
    touched.forEach(function (chart) { chart.update("none"); });
  }

  // Once subscribed: the points stored between this page's render and the subscription.
  function catchUp() {
    // From the last iteration drawn, included: its validation points come in a later batch.
    loaded.then(function () {
      return fetch("/api/models/" + jobId + "/metrics/?after=" + Math.max(0, lastIteration - 1), { credentials: "same-origin" });
    })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (missed) { if (missed) addPoints(asList(missed)); });
    fetch("/api/models/" + jobId + "/", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) renderSnapshots(data.snapshots); });
  }

  DigitsLive.followJob(function (msg) {
    if (msg.type !== "metrics") return;
    addPoints(msg.points);
    (msg.notices || []).forEach(function (text) {
      const div = document.createElement("div");
      div.className = "notice";
      div.textContent = text;
      document.getElementById("notices").appendChild(div);
    });
    if (msg.next_snapshot_eta !== null && msg.next_snapshot_eta !== undefined) {
      document.getElementById("next-snapshot").textContent = "Next snapshot in about " + DigitsLive.formatDuration(msg.next_snapshot_eta);
    }
    if (msg.snapshots.length) {
      fetch("/api/models/" + jobId + "/", { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) { renderSnapshots(data.snapshots); });
    }
  }, catchUp);
})();

// Exports run as jobs of their own: while one is unfinished, look again every few
// seconds and reload the page once all are done, so the table shows their checks.
(function () {
  const pending = Array.from(document.querySelectorAll("#exports .export")).filter(function (el) {
    return ["initialized", "queued", "running", "waiting"].indexOf(el.dataset.status) >= 0;
  });
  if (!pending.length) return;
  const modelId = document.body.dataset.jobId || (location.pathname.match(/models\/(\d+)/) || [])[1];
  const timer = setInterval(function () {
    fetch("/api/models/" + modelId + "/exports/", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        const rows = data.results || data;
        const running = rows.some(function (e) { return ["initialized", "queued", "running", "waiting"].indexOf(e.job.status) >= 0; });
        if (!running) { clearInterval(timer); location.reload(); }
      });
  }, 3000);
})();

// Classify many: show the fields of the chosen source only.
(function () {
  const form = document.getElementById("evaluate-form");
  if (!form) return;
  const groups = { split: ["split"], list: ["image_list_file", "list_path", "image_folder"], files: ["images"] };
  function show() {
    const checked = form.querySelector("input[name=source]:checked");
    const source = checked ? checked.value : "split";
    Object.keys(groups).forEach(function (name) {
      groups[name].forEach(function (field) {
        const el = form.querySelector("#field-" + field);
        if (el) el.hidden = name !== source;
      });
    });
  }
  form.querySelectorAll("input[name=source]").forEach(function (r) { r.addEventListener("change", show); });
  show();
})();
