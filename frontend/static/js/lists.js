// Lists: tick rows for the bulk actions (abort, delete, move to a group) or to compare.
(function () {
  "use strict";
  const form = document.getElementById("bulk-form");
  if (!form) return;
  const boxes = function () { return Array.from(form.querySelectorAll("input[name=ids]")); };
  const compare = document.getElementById("compare-selected");

  function refresh() {
    const chosen = boxes().filter(function (b) { return b.checked; });
    document.getElementById("selected-count").textContent = chosen.length + " selected";
    form.querySelectorAll(".bulk-action").forEach(function (button) { button.disabled = !chosen.length; });
    if (compare) compare.disabled = chosen.length < 2;
  }
  form.addEventListener("change", refresh);
  document.getElementById("select-all").addEventListener("change", function (e) {
    boxes().forEach(function (b) { b.checked = e.target.checked; });
    refresh();
  });
  form.addEventListener("submit", function (e) {
    const button = e.submitter;
    if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) e.preventDefault();
  });
  if (compare) {
    compare.addEventListener("click", function () {
      const ids = boxes().filter(function (b) { return b.checked; }).map(function (b) { return b.value; });
      window.location.href = "/models/compare/?ids=" + ids.join(",");
    });
  }
  refresh();
})();
