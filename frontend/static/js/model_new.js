// New-model form: network mode (standard / fine-tune / custom code), "Customize",
// "Visualize", the learning-rate preview chart and policy-specific fields.
(function () {
  "use strict";
  const form = document.getElementById("model-form");
  const $ = function (name) { return form.elements[name]; };
  const field = function (name) { return document.getElementById("field-" + name); };
  const csrf = $("csrfmiddlewaretoken").value;
  // Not form.dataset: the form's "dataset" field shadows that property.
  const url = function (name) { return form.getAttribute("data-" + name); };

  // -- network mode -----------------------------------------------------------------
  const code = $("custom_code");
  function setMode(mode) {
    const radio = form.querySelector('input[name="network_mode"][value="' + mode + '"]');
    if (radio) radio.checked = true;
    field("network").hidden = mode !== "standard";
    field("custom_code").hidden = mode !== "custom";
    field("base_model").hidden = mode !== "previous";
    field("base_epoch").hidden = mode !== "previous";
    document.getElementById("customize").hidden = mode !== "standard" || !code || code.disabled;
    if (mode === "custom") {
      if (!Array.from($("network").options).some(function (o) { return o.value === "custom"; })) return;
      $("network").value = "custom";
    } else if (mode === "standard" && $("network").value === "custom") {
      $("network").selectedIndex = 0;
    }
    if (mode !== "previous") $("base_model").value = "";
  }
  form.querySelectorAll('input[name="network_mode"]').forEach(function (radio) {
    radio.addEventListener("change", function () { setMode(radio.value); });
  });
  setMode($("base_model").value ? "previous" : $("network").value === "custom" ? "custom" : "standard");

  // -- the networks made for the chosen dataset's task (classification, segmentation,
  // detection): the other groups are hidden, and a network of another task is replaced.
  const tasksEl = document.getElementById("dataset-tasks");
  const datasetTasks = tasksEl ? JSON.parse(tasksEl.textContent) : {};
  function showNetworksFor() {
    const task = datasetTasks[$("dataset").value] || "classification";
    const wanted = task.charAt(0).toUpperCase() + task.slice(1);
    let firstShown = null;
    $("network").querySelectorAll("optgroup").forEach(function (group) {
      group.hidden = group.label !== wanted;
      if (!group.hidden && !firstShown) firstShown = group.querySelector("option");
    });
    const chosen = $("network").selectedOptions[0];
    if (chosen && chosen.parentElement.tagName === "OPTGROUP" && chosen.parentElement.hidden && firstShown) {
      $("network").value = firstShown.value;
      $("network").dispatchEvent(new Event("change"));
    }
  }
  $("dataset").addEventListener("change", showNetworksFor);
  showNetworksFor();

  // Snapshot epochs of the chosen base model, as a select.
  const epochInput = $("base_epoch");
  const epochSelect = document.createElement("select");
  epochSelect.id = "base-epoch-select";
  epochInput.insertAdjacentElement("afterend", epochSelect);
  epochInput.type = "hidden";
  epochSelect.addEventListener("change", function () { epochInput.value = epochSelect.value; });
  function loadEpochs() {
    epochSelect.innerHTML = "";
    const id = $("base_model").value;
    if (!id) return;
    fetch(url("models-api") + id + "/", { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        const latest = document.createElement("option");
        latest.value = ""; latest.textContent = "latest";
        epochSelect.appendChild(latest);
        data.snapshots.forEach(function (s) {
          const o = document.createElement("option");
          o.value = s.epoch;
          o.textContent = "epoch " + s.epoch + (s.val_accuracy === null ? "" : " (val. accuracy " + (s.val_accuracy * 100).toFixed(1) + "%)");
          epochSelect.appendChild(o);
        });
        epochSelect.value = epochInput.value;
        if (epochSelect.value !== epochInput.value) epochInput.value = "";
      });
  }
  $("base_model").addEventListener("change", loadEpochs);
  loadEpochs();

  // Base-model picker: search the paginated API by name (models with a snapshot), pick
  // one; the id field underneath stays the form's value.
  const idInput = $("base_model");
  const search = document.createElement("input");
  search.type = "search";
  search.id = "base-model-search";
  search.placeholder = "Search models by name…";
  search.autocomplete = "off";
  const results = document.createElement("select");
  results.id = "base-model-results";
  results.size = 6;
  results.hidden = true;
  const chosen = document.createElement("span");
  chosen.id = "base-model-chosen";
  chosen.className = "muted";
  idInput.insertAdjacentElement("beforebegin", search);
  search.insertAdjacentElement("afterend", results);
  idInput.insertAdjacentElement("afterend", chosen);
  function describe(m) {
    return m.job.name + " (" + m.network + ", " + m.job.owner + ", #" + m.id + ")";
  }
  let searchTimer = null;
  function runSearch() {
    const params = new URLSearchParams({ has_snapshots: "true", page_size: "20", search: search.value.trim() });
    fetch(url("models-api") + "?" + params, { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (page) {
        results.innerHTML = "";
        page.results.forEach(function (m) {
          const o = document.createElement("option");
          o.value = m.id;
          o.textContent = describe(m);
          results.appendChild(o);
        });
        if (page.count > page.results.length) {
          const more = document.createElement("option");
          more.disabled = true;
          more.textContent = (page.count - page.results.length) + " more: type more of the name";
          results.appendChild(more);
        }
        results.hidden = page.results.length === 0;
      });
  }
  search.addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 200);
  });
  search.addEventListener("focus", runSearch);
  results.addEventListener("change", function () {
    idInput.value = results.value;
    chosen.textContent = results.options[results.selectedIndex].textContent;
    results.hidden = true;
    idInput.dispatchEvent(new Event("change"));
  });
  if (idInput.value) {  // a fine-tune link or a clone: say which model it is
    fetch(url("models-api") + idInput.value + "/", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (m) { if (m) chosen.textContent = describe(m); });
  }

  // -- Customize and Visualize --------------------------------------------------------
  document.getElementById("customize").addEventListener("click", function () {
    const name = $("network").value;
    fetch(url("network-api") + name + "/", { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) { code.value = data.source; setMode("custom"); code.focus(); });
  });
  if (code) {
    code.addEventListener("keydown", function (event) {
      if (event.key !== "Tab") return;
      event.preventDefault();
      const start = code.selectionStart;
      code.setRangeText("    ", start, code.selectionEnd, "end");
    });
  }

  function selectLine(line) {
    const lines = code.value.split("\n");
    let start = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    code.focus();
    code.setSelectionRange(start, start + (lines[line - 1] || "").length);
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  const result = document.getElementById("visualize-result");
  document.getElementById("visualize").addEventListener("click", function () {
    const mode = form.querySelector('input[name="network_mode"]:checked').value;
    result.hidden = false;
    result.textContent = "Building the network in a worker process…";
    const body = {
      dataset: $("dataset").value, network: mode === "custom" ? "custom" : $("network").value,
      custom_code: code ? code.value : "", crop_size: $("crop_size").value || null,
    };
    if (mode === "previous") { result.textContent = "Visualize shows standard or custom networks; a fine-tune reuses its base model's network."; return; }
    fetch(url("visualize-api"), {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify(body),
    }).then(function (r) { return r.json().then(function (data) { return [r.status, data]; }); })
      .then(function (pair) {
        const data = pair[1];
        result.innerHTML = "";
        if (pair[0] !== 200 || !data.ok) {
          const box = document.createElement("div");
          box.className = "code-error";
          box.id = "visualize-error";
          box.textContent = data.error || data.detail || JSON.stringify(data);
          result.appendChild(box);
          if (data.line && code) selectLine(data.line);
          return;
        }
        const summary = document.createElement("p");
        summary.textContent = "Input " + data.input_shape.join("×") + " → output " + (data.output_shape || []).join("×") +
          " · " + data.total_params.toLocaleString() + " parameters (" + data.trainable_params.toLocaleString() + " trainable)";
        result.appendChild(summary);
        const table = document.createElement("table");
        table.id = "layer-table";
        table.innerHTML = "<thead><tr><th>Layer</th><th>Type</th><th>Output shape</th><th>Parameters</th></tr></thead>";
        const tbody = document.createElement("tbody");
        data.layers.forEach(function (layer) {
          const row = document.createElement("tr");
          cell(row, "\u00a0\u00a0".repeat(layer.depth) + layer.name);
          cell(row, layer.type);
          cell(row, layer.output_shape ? layer.output_shape.slice(1).join("×") : "—");
          cell(row, layer.params.toLocaleString(), "num");
          tbody.appendChild(row);
        });
        table.appendChild(tbody);
        result.appendChild(table);
      })
      .catch(function (err) { result.textContent = "Visualize failed: " + err; });
  });

  // -- learning-rate policy -------------------------------------------------------------
  const POLICY_FIELDS = {
    fixed: [], step: ["lr_step_size", "lr_gamma"], multistep: ["lr_steps", "lr_gamma"], exp: ["lr_gamma"],
    inv: ["lr_gamma", "lr_power"], poly: ["lr_power"], sigmoid: ["lr_step_size", "lr_gamma"], cosine: [],
  };
  const LR_INPUTS = ["lr_policy", "lr_step_size", "lr_steps", "lr_gamma", "lr_power", "lr_warmup_epochs", "learning_rate", "epochs"];
  const chart = new Chart(document.getElementById("lr-preview"), {
    type: "line",
    data: { datasets: [{ label: "learning rate", data: [], borderColor: "#f59e0b", pointRadius: 0, borderWidth: 1.5 }] },
    options: {
      animation: false, parsing: false, maintainAspectRatio: false,
      scales: { x: { type: "linear", title: { display: true, text: "epoch" } }, y: { title: { display: true, text: "learning rate" } } },
    },
  });
  function showPolicyFields() {
    const wanted = POLICY_FIELDS[$("lr_policy").value] || [];
    ["lr_step_size", "lr_steps", "lr_gamma", "lr_power"].forEach(function (name) { field(name).hidden = wanted.indexOf(name) < 0; });
  }
  let timer = null;
  function refresh() {
    showPolicyFields();
    clearTimeout(timer);
    timer = setTimeout(function () {
      const params = new URLSearchParams();
      LR_INPUTS.forEach(function (name) { params.set(name, $(name).value); });
      fetch(url("lr-api") + "?" + params.toString(), { credentials: "same-origin" })
        .then(function (r) { return r.json().then(function (data) { return [r.status, data]; }); })
        .then(function (pair) {
          const error = document.getElementById("lr-preview-error");
          if (pair[0] !== 200) { error.textContent = pair[1].detail || ""; return; }
          error.textContent = "";
          chart.data.datasets[0].data = pair[1].points.map(function (p) { return { x: p[0], y: p[1] }; });
          chart.update("none");
          document.getElementById("lr-preview").dataset.points = pair[1].points.length;
        });
    }, 200);
  }
  LR_INPUTS.forEach(function (name) { $(name).addEventListener("input", refresh); $(name).addEventListener("change", refresh); });
  refresh();

  // -- devices: show the count or the device list only for the mode that uses it ------
  function showPlacement() {
    const checked = form.querySelector('input[name="placement"]:checked');
    const mode = checked ? checked.value : "next";
    field("devices").hidden = mode !== "count";
    field("device_ids").hidden = mode !== "specific";
    field("multi_host").hidden = mode === "next";
  }
  form.querySelectorAll('input[name="placement"]').forEach(function (r) { r.addEventListener("change", showPlacement); });
  showPlacement();
})();
