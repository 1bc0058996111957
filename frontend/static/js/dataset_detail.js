// Dataset page: live progress, and one images-per-class bar chart per split.
(function () {
  "use strict";
  DigitsLive.followJob();
  const labelsEl = document.getElementById("labels-data");
  if (!labelsEl || !window.Chart) return;
  const labels = JSON.parse(labelsEl.textContent);
  const counts = JSON.parse(document.getElementById("class-counts-data").textContent);
  const colors = { train: "#3b82f6", val: "#f59e0b", test: "#10b981" };
  document.querySelectorAll("canvas.class-chart").forEach(function (canvas) {
    const split = canvas.dataset.split;
    new Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: [{ label: split, data: counts[split] || [], backgroundColor: colors[split] || "#888" }] },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        plugins: { title: { display: true, text: split + " (" + (counts[split] || []).reduce((a, b) => a + b, 0) + " images)" }, legend: { display: false } },
        scales: { y: { beginAtZero: true, title: { display: true, text: "images" } } },
      },
    });
  });
})();
