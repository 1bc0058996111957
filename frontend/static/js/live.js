// Live job updates over the Channels websocket, shared by every page that shows jobs.
// The server only pushes what it has already stored, so after a reconnect a page can
// simply reload its state over HTTP.
(function () {
  "use strict";

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
    seconds = Math.round(seconds);
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m) return m + "m " + String(s).padStart(2, "0") + "s";
    return s + "s";
  }

  // onReconnect: after a lost connection; onFirstOpen: once subscribed the first time
  // (what happened between the page's render and then was not pushed: catch up).
  // A websocket that cannot reconnect says nothing of why. When the session has ended
  // (logged out elsewhere, expired), say so once, with the way back, instead of leaving a
  // page that silently stopped updating.
  let sessionChecked = 0;
  function checkSession() {
    if (document.getElementById("logged-out") || Date.now() - sessionChecked < 5000) return;
    sessionChecked = Date.now();
    fetch("/api/jobs/?page_size=1", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status !== 401 && r.status !== 403) return;
        const box = document.createElement("div");
        box.id = "logged-out";
        box.className = "flash error";
        const link = document.createElement("a");
        link.href = "/accounts/login/?next=" + encodeURIComponent(window.location.pathname + window.location.search);
        link.textContent = "Log in again";
        box.append("You are logged out, so this page no longer updates. ", link, " to follow it live.");
        (document.querySelector("main") || document.body).prepend(box);
      })
      .catch(function () { /* the server is down: the reconnects go on */ });
  }

  function connect(path, onMessage, onReconnect, onFirstOpen) {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    let delay = 1000;
    let opened = false;
    function open() {
      const socket = new WebSocket(scheme + window.location.host + path);
      socket.onopen = function () {
        if (opened && onReconnect) onReconnect();
        if (!opened && onFirstOpen) onFirstOpen();
        opened = true;
        delay = 1000;
        document.body.dataset.live = "connected";
      };
      socket.onmessage = function (event) { onMessage(JSON.parse(event.data)); };
      socket.onclose = function (event) {
        document.body.dataset.live = "disconnected";
        if (event.code >= 4400) return;  // not allowed or gone: do not retry
        if (opened) checkSession();  // refused again and again after a restart: logged out?
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 15000);
      };
    }
    open();
  }

  // Keep a job header (partials/job_header.html) current; reload when the job finishes
  // so the server renders its results. `onSubscribed` lets a page fetch what it may have
  // missed before its websocket was subscribed (points of a fast job, say).
  function followJob(onMessage, onSubscribed) {
    const header = document.getElementById("job");
    if (!header) return;
    const jobId = header.dataset.job;
    connect("/ws/jobs/" + jobId + "/", function (msg) {
      if (msg.type === "progress") {
        const bar = document.getElementById("job-progress");
        document.getElementById("progress-row").hidden = false;
        bar.value = msg.progress;
        document.getElementById("job-progress-text").textContent = Math.round(msg.progress * 100) + "%";
        document.getElementById("job-eta").textContent = msg.eta ? "ETA " + formatDuration(msg.eta) : "";
      } else if (msg.type === "status") {
        if (msg.status !== header.dataset.status) window.location.reload();
      } else if (msg.type === "deleted") {
        window.location.href = "/";
      }
      if (onMessage) onMessage(msg);
    }, function () { window.location.reload(); }, function () {
      // A status change between the render and the subscription was not pushed to us.
      fetch(header.dataset.api, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data && data.job.status !== header.dataset.status) window.location.reload(); });
      if (onSubscribed) onSubscribed();
    });
  }

  // While a training job waits, refresh its place in the queue and the reason.
  function followQueue() {
    const box = document.getElementById("queue-reason");
    if (!box) return;
    setInterval(function () {
      fetch(box.dataset.poll, { headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) return;
          const queue = data.job.queue;
          if (!queue) { window.location.reload(); return; }
          document.getElementById("queue-position").textContent = "#" + queue.position + " in the queue";
          document.getElementById("queue-text").textContent = queue.reason;
          const start = queue.estimated_start ? Date.parse(queue.estimated_start) : NaN;
          document.getElementById("queue-start").textContent = isNaN(start)
            ? "no start estimate yet (a job ahead or running has no ETA or past run to go by)"
            : "expected to start " + (start - Date.now() < 1000 ? "now" : "in ~" + formatDuration((start - Date.now()) / 1000))
              + " (" + new Date(start).toTimeString().slice(0, 5) + ")";
        });
    }, 3000);
  }
  document.addEventListener("DOMContentLoaded", followQueue);

  // A running job's run time, counted here between server updates.
  (function tickRuntime() {
    const el = document.getElementById("job-runtime");
    if (!el) return;
    const started = Date.parse(el.dataset.started);
    if (isNaN(started)) return;
    const tick = function () { el.textContent = formatDuration((Date.now() - started) / 1000); };
    tick();
    setInterval(tick, 1000);
  })();

  window.DigitsLive = { connect: connect, followJob: followJob, formatDuration: formatDuration };
})();
