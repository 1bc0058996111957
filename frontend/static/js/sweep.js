// Sweep page: a parallel-coordinates plot (one vertical axis per swept parameter, then the
// metric; one polyline per trial, coloured by its metric), drawn as SVG; and a reload
// every few seconds while the sweep runs.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("plot-data").textContent);
  const box = document.getElementById("parallel");
  const NS = "http://www.w3.org/2000/svg";
  const axes = data.params.concat([data.metric]);
  const width = Math.max(480, box.clientWidth || 800), height = 320, pad = { top: 24, bottom: 30, left: 60, right: 60 };
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "parallel coordinates of the trials");
  box.appendChild(svg);

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node);
    return node;
  }

  function valueOf(trial, axis) { return axis === data.metric ? trial.value : trial.params[axis]; }

  // Each axis maps its values to [0, 1]: numbers linearly (or on a log scale), anything
  // else evenly, in order of first appearance.
  const scales = axes.map(function (axis, i) {
    const values = data.trials.map(function (t) { return valueOf(t, axis); }).filter(function (v) { return v !== null && v !== undefined; });
    const numeric = values.length && values.every(function (v) { return typeof v === "number"; });
    if (numeric) {
      const log = i < data.log.length && data.log[i];
      const f = log ? function (v) { return Math.log10(v); } : function (v) { return v; };
      const lo = Math.min.apply(null, values.map(f)), hi = Math.max.apply(null, values.map(f));
      return { pos: function (v) { return hi === lo ? 0.5 : (f(v) - lo) / (hi - lo); },
               ticks: [[0, lo], [1, hi]].map(function (p) { return [p[0], log ? Math.pow(10, p[1]) : p[1]]; }) };
    }
    const levels = Array.from(new Set(values.map(String)));
    return { pos: function (v) { return levels.length < 2 ? 0.5 : levels.indexOf(String(v)) / (levels.length - 1); },
             ticks: levels.map(function (l, j) { return [levels.length < 2 ? 0.5 : j / (levels.length - 1), l]; }) };
  });
  const x = function (i) { return pad.left + i * (width - pad.left - pad.right) / Math.max(1, axes.length - 1); };
  const y = function (p) { return pad.top + (1 - p) * (height - pad.top - pad.bottom); };
  const scored = data.trials.filter(function (t) { return t.value !== null; }).map(function (t) { return t.value; });
  const best = scored.length ? (data.maximize ? Math.max.apply(null, scored) : Math.min.apply(null, scored)) : null;
  const lo = scored.length ? Math.min.apply(null, scored) : 0, hi = scored.length ? Math.max.apply(null, scored) : 1;

  function colour(t) {
    if (t.state === "failed" || t.state === "pruned" || t.value === null) return "#cbd5e1";
    let q = hi === lo ? 1 : (t.value - lo) / (hi - lo);
    if (!data.maximize) q = 1 - q;
    return "hsl(" + Math.round(10 + q * 110) + ", 70%, 42%)";  // red (worst) to green (best)
  }

  data.trials.forEach(function (t) {
    const points = [];
    axes.forEach(function (axis, i) {
      const v = valueOf(t, axis);
      if (v !== null && v !== undefined) points.push(x(i) + "," + y(scales[i].pos(v)));
    });
    const isBest = t.value !== null && t.value === best && t.state === "complete";
    const line = el("polyline", { points: points.join(" "), fill: "none", stroke: colour(t), "stroke-width": isBest ? 3.5 : 1.5,
                                  "data-trial": t.number, class: "trial-line" + (isBest ? " best" : "") });
    const title = document.createElementNS(NS, "title");
    title.textContent = "#" + t.number + " " + t.state + (t.value !== null ? " · " + data.metric + " " + t.value.toFixed(4) : "");
    line.appendChild(title);
  });
  axes.forEach(function (axis, i) {
    el("line", { x1: x(i), x2: x(i), y1: y(0), y2: y(1), stroke: "#334155" });
    el("text", { x: x(i), y: 14, "text-anchor": "middle", "font-size": 12, "font-weight": "bold" }, axis);
    scales[i].ticks.forEach(function (tick) {
      const label = typeof tick[1] === "number" ? Number(tick[1]).toPrecision(3) : tick[1];
      el("text", { x: x(i) + 4, y: y(tick[0]) + 4, "font-size": 11, fill: "#475569" }, label);
    });
  });
  document.body.dataset.parallelReady = "1";

  const sweep = document.getElementById("sweep");
  if (sweep.dataset.status === "running") setTimeout(function () { window.location.reload(); }, 5000);
})();
