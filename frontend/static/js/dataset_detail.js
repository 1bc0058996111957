// Dataset page: live progress, and one images-per-class bar chart per split.
(function () {
  "use strict";
  DigitsLive.followJob();
  const labelsEl = document.getElementById("labels-data");
  if (!labelsEl || !window.Chart) return;
  const labels = JSON.parse(labelsEl.textContent);
  const counts = JSON.parse(document.getElementById("class-counts-data").textContent);
  const colors = { train: "#3b82f6", val: "#f59e0b", test: "#10b981" };
  // Segmentation: pixels, each class in its own colour, on a log scale (the background
  // often outnumbers the rest by orders of magnitude).
  const colourEl = document.getElementById("label-colours-data");
  const classColours = colourEl ? JSON.parse(colourEl.textContent) : [];
  const pixels = classColours.length > 0;
  const unitEl = document.getElementById("count-unit");
  const unit = unitEl ? unitEl.textContent : "images";
  document.querySelectorAll("canvas.class-chart").forEach(function (canvas) {
    const split = canvas.dataset.split;
    const fill = pixels ? classColours.map((c) => "rgb(" + c.join(",") + ")") : colors[split] || "#888";
    new Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: [{ label: split, data: counts[split] || [], backgroundColor: fill, borderColor: "#6b7280", borderWidth: pixels ? 1 : 0 }] },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        plugins: { title: { display: true, text: split + " (" + (counts[split] || []).reduce((a, b) => a + b, 0).toLocaleString() + " " + unit + ")" }, legend: { display: false } },
        scales: { y: { type: pixels ? "logarithmic" : "linear", beginAtZero: !pixels, title: { display: true, text: unit } } },
      },
    });
  });
})();
