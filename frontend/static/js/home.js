// Console: reload when any job changes status (the tables are rendered by the server),
// and move progress bars in place.
(function () {
  "use strict";
  let pending = null;
  DigitsLive.connect("/ws/jobs/", function (msg) {
    if (msg.type === "status" || msg.type === "deleted") {
      clearTimeout(pending);
      pending = setTimeout(function () { window.location.reload(); }, 300);
    }
  });
  // Progress is sent to the job's own group; follow the active jobs shown here.
  document.querySelectorAll("#active-jobs tr[data-job]").forEach(function (row) {
    DigitsLive.connect("/ws/jobs/" + row.dataset.job + "/", function (msg) {
      if (msg.type === "progress") row.querySelector("[data-field=progress]").value = msg.progress;
    });
  });
})();
