// New dataset form: show the chosen source's fields, preview every resize mode on the
// user's first image, and upload archives in resumable chunks.
(function () {
  "use strict";
  const form = document.getElementById("dataset-form");
  if (!form) return;
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const el = (name) => form.elements[name];

  // --- source groups -------------------------------------------------------------
  function source() {
    const checked = form.querySelector("input[name=source]:checked");
    return checked ? checked.value : "folder";
  }
  function showSource() {
    form.querySelectorAll(".source-group").forEach(function (group) {
      group.hidden = group.dataset.source !== source();
    });
    form.querySelector(".split-group").hidden = source() === "textfile";
    const quality = document.getElementById("field-jpeg_quality");
    if (quality) quality.hidden = el("encoding").value !== "jpeg";
    schedulePreview();
  }
  form.querySelectorAll("input[name=source]").forEach((r) => r.addEventListener("change", showSource));

  // --- what the dataset is for: a segmentation dataset has label images and a class
  // list instead of class subfolders and separate validation and test folders.
  // A detection dataset has KITTI label files or a COCO file, and maybe a class list.
  function showTask() {
    const task = el("task").value;
    const labelled = task !== "classification";
    const show = { label_folder: labelled, class_list: labelled, annotations_file: task === "detection",
                   val_folder: !labelled, test_folder: !labelled, min_per_class: !labelled, max_per_class: !labelled };
    Object.keys(show).forEach(function (name) {
      const field = document.getElementById("field-" + name);
      if (field) field.hidden = !show[name];
    });
    const folderLabel = form.querySelector("label[for=id_folder]");
    if (folderLabel) folderLabel.firstChild.textContent = labelled ? "Images folder" : "Training images folder";
  }
  el("task").addEventListener("change", showTask);
  showTask();
  el("encoding").addEventListener("change", showSource);

  // --- live resize preview -------------------------------------------------------
  const status = document.getElementById("preview-status");
  let timer = null;
  let seq = 0;
  function schedulePreview() {
    clearTimeout(timer);
    timer = setTimeout(preview, 350);
  }
  function preview() {
    const params = new URLSearchParams({
      source: source(),
      folder: source() === "folder" ? el("folder").value : el("image_folder").value,
      upload: el("upload").value,
      width: el("image_width").value,
      height: el("image_height").value,
      image_mode: el("image_mode").value,
    });
    if (source() === "upload" && !el("upload").value) return;
    if (source() !== "upload" && !params.get("folder")) return;
    const mine = ++seq;
    status.textContent = "Loading preview…";
    fetch(form.dataset.previewUrl + "?" + params, { credentials: "same-origin" })
      .then((r) => r.json())
      .then(function (data) {
        if (mine !== seq) return;
        if (data.error) { status.textContent = data.error; clearSlots(); return; }
        status.innerHTML = "";
        const text = document.createElement("span");
        text.textContent = "Preview of " + data.name + " (" + data.original_size.join("×") + "): ";
        const orig = new Image();
        orig.src = data.original; orig.className = "preview-original"; orig.alt = "original";
        status.append(text, orig);
        form.querySelectorAll(".resize-mode").forEach(function (label) {
          const slot = label.querySelector(".preview-slot");
          slot.innerHTML = "";
          const img = new Image();
          img.src = data.modes[label.dataset.mode];
          img.alt = label.dataset.mode + " preview";
          img.className = "preview";
          img.dataset.mode = label.dataset.mode;
          slot.appendChild(img);
        });
      })
      .catch(function () { if (mine === seq) status.textContent = "Preview unavailable."; });
  }
  function clearSlots() { form.querySelectorAll(".preview-slot").forEach((s) => (s.innerHTML = "")); }
  ["folder", "image_folder", "image_width", "image_height", "image_mode"].forEach(function (name) {
    el(name).addEventListener("input", schedulePreview);
    el(name).addEventListener("change", schedulePreview);
  });

  // --- resumable chunked upload ----------------------------------------------------
  const fileInput = document.getElementById("archive-file");
  const row = document.getElementById("upload-row");
  const bar = document.getElementById("upload-progress");
  const text = document.getElementById("upload-text");
  const retry = document.getElementById("upload-retry");
  const submit = document.getElementById("create");
  const CHUNK = 8 * 1024 * 1024;
  const api = form.dataset.uploadApi;
  function key(file) { return "digits-upload:" + file.name + ":" + file.size + ":" + file.lastModified; }
  function request(method, url, body, headers) {
    return fetch(url, {
      method: method, body: body, credentials: "same-origin",
      headers: Object.assign({ "X-CSRFToken": csrf }, headers || {}),
    }).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) { const e = new Error(data.detail || r.statusText); e.status = r.status; e.data = data; throw e; }
        return data;
      });
    });
  }
  function size(bytes) {
    return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MiB" : (bytes / 1024).toFixed(1) + " KiB";
  }
  function show(done, total, note) {
    row.hidden = false;
    bar.value = total ? done / total : 0;
    text.textContent = (note ? note + " " : "") + size(done) + " / " + size(total);
  }
  async function existing(file) {
    const id = localStorage.getItem(key(file));
    if (!id) return null;
    try { return await request("GET", api + id + "/"); } catch (e) { localStorage.removeItem(key(file)); return null; }
  }
  async function upload(file) {
    retry.hidden = true;
    submit.disabled = true;
    el("upload").value = "";
    try {
      let up = await existing(file);
      if (!up) {
        up = await request("POST", api, JSON.stringify({ filename: file.name, size: file.size }), { "Content-Type": "application/json" });
        localStorage.setItem(key(file), up.id);
      }
      let offset = up.offset;
      const started = Date.now();
      const startOffset = offset;
      let failures = 0;
      while (!up.complete) {
        const end = Math.min(offset + CHUNK, file.size);
        try {
          up = await request("PUT", api + up.id + "/", file.slice(offset, end), {
            "Upload-Offset": String(offset), "Content-Type": "application/octet-stream",
          });
          failures = 0;
        } catch (e) {
          if (e.status === 400 && e.data && /offset/i.test(e.data.detail || "")) {
            up = await request("GET", api + up.id + "/");  // resync with the server
          } else if (!e.status && failures < 5) {
            failures += 1;  // network trouble: back off, then try the same chunk again
            await new Promise((r) => setTimeout(r, 1000 * failures));
            continue;
          } else { throw e; }
        }
        offset = up.offset;
        const rate = (offset - startOffset) / Math.max((Date.now() - started) / 1000, 0.001);
        const eta = rate > 0 ? Math.round((file.size - offset) / rate) : null;
        show(offset, file.size, eta !== null && !up.complete ? "ETA " + eta + " s ·" : "");
      }
      el("upload").value = up.id;
      show(file.size, file.size, "Uploaded ✓");
      localStorage.removeItem(key(file));
      schedulePreview();
    } catch (e) {
      text.textContent = "Upload stopped: " + e.message + " — choose the file again or press Resume to continue.";
      retry.hidden = false;
    } finally {
      submit.disabled = false;
    }
  }
  if (fileInput) {
    fileInput.addEventListener("change", function () { if (fileInput.files[0]) upload(fileInput.files[0]); });
    retry.addEventListener("click", function () { if (fileInput.files[0]) upload(fileInput.files[0]); });
  }
  showSource();
})();
