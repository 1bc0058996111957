// The evaluation page's reliability diagram: accuracy per confidence bin against the
// diagonal of perfect calibration; the bars' widths are the bins' image counts on hover.
(function () {
  var data = document.getElementById("calibration-data");
  var canvas = document.getElementById("reliability-chart");
  if (!data || !canvas || typeof Chart === "undefined") return;
  var bins = JSON.parse(data.textContent).bins;
  var centres = bins.map(function (b) { return ((b.low + b.high) / 2).toFixed(3); });
  new Chart(canvas, {
    data: {
      labels: centres,
      datasets: [
        { type: "bar", label: "accuracy", data: bins.map(function (b) { return b.accuracy; }), backgroundColor: "#4a6fd1" },
        { type: "line", label: "mean confidence", data: bins.map(function (b) { return b.confidence; }), borderColor: "#d14a4a", spanGaps: true },
        { type: "line", label: "perfect calibration", data: bins.map(function (b) { return (b.low + b.high) / 2; }), borderColor: "#999", borderDash: [4, 4], pointRadius: 0 }
      ]
    },
    options: {
      animation: false, maintainAspectRatio: false,
      scales: { y: { min: 0, max: 1, title: { display: true, text: "accuracy" } }, x: { title: { display: true, text: "confidence (bin centre)" } } },
      plugins: { tooltip: { callbacks: { afterBody: function (items) { return bins[items[0].dataIndex].count + " images"; } } } }
    }
  });
})();

// Segmentation and detection: per-class IoU, or AP@0.5 and AP@0.5:0.95, as bars.
(function () {
  var data = document.getElementById("class-chart-data");
  var canvas = document.getElementById("class-chart");
  if (!data || !canvas || typeof Chart === "undefined") return;
  var chart = JSON.parse(data.textContent);
  var colours = ["#4a6fd1", "#d1884a"];
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: chart.labels,
      datasets: chart.series.map(function (s, i) { return { label: s.label, data: s.values, backgroundColor: colours[i % colours.length] }; })
    },
    options: { animation: false, maintainAspectRatio: false, scales: { y: { min: 0, max: 1 } } }
  });
})();
