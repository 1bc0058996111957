// Dataset page: live progress, and the images-per-class bar chart.
(function () {
  "use strict";
  DigitsLive.followJob();
  const labelsEl = document.getElementById("labels-data");
  const canvas = document.getElementById("class-chart");
  if (!labelsEl || !canvas || !window.Chart) return;
  const labels = JSON.parse(labelsEl.textContent);
  const counts = JSON.parse(document.getElementById("class-counts-data").textContent);
  const colors = { train: "#3b82f6", val: "#f59e0b", test: "#10b981" };
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: labels,
      datasets: Object.keys(counts).map(function (split) {
        return { label: split, data: counts[split], backgroundColor: colors[split] || "#888" };
      }),
    },
    options: { responsive: true, scales: { y: { beginAtZero: true, title: { display: true, text: "images" } } } },
  });
})();
