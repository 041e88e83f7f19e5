// Modelyard dashboard: the little JavaScript the pages use. Every page works without it.
"use strict";

// Copy buttons: shown only when the clipboard can be written.
function setUpCopyButtons() {
  if (!navigator.clipboard) return;
  for (const button of document.querySelectorAll("button.copy[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    if (!source) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(source.textContent);
        button.textContent = "Copied";
      } catch (error) {
        button.textContent = "Copy failed";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }
}

// Uploads: send the form with XMLHttpRequest to show progress; on success go where the server
// redirected, on refusal show its reason (read as text from the error page, never as HTML).
function setUpUpload() {
  const form = document.getElementById("upload-form");
  if (!form || !window.XMLHttpRequest || !window.FormData) return;
  const progress = document.getElementById("upload-progress");
  const error = document.getElementById("upload-error");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.responseType = "document";
    error.hidden = true;
    progress.hidden = false;
    progress.value = 0;
    button.disabled = true;
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        progress.value = Math.round((100 * e.loaded) / e.total);
        progress.textContent = progress.value + "%";
      }
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) {
        window.location.assign(request.responseURL);
        return;
      }
      let reason = "the upload was refused (" + request.status + ")";
      const page = request.response;
      const shown = page && (page.getElementById("upload-error") || page.getElementById("error-detail"));
      if (shown && shown.textContent.trim()) {
        reason = shown.textContent.trim();
      } else if (request.status === 413) {
        reason = "the file is larger than this server accepts";
      }
      error.textContent = reason;
      error.hidden = false;
      progress.hidden = true;
      button.disabled = false;
    });
    request.addEventListener("error", () => {
      error.textContent = "the upload failed: the connection was lost";
      error.hidden = false;
      progress.hidden = true;
      button.disabled = false;
    });
    request.send(new FormData(form));
  });
}

// Live notices: on a model's page (or the model list), say when the model changes elsewhere —
// another tab, a colleague, a CI job — and offer to reload. The stream is /events (the audit
// log's tail for the signed-in user); the browser reconnects by itself where it left off.
const REGISTRY_EVENTS = {
  "model_version.created": "new version",
  "model_version.stage_changed": "stage changed",
  "alias.changed": "alias changed",
  "model.deleted": "deleted",
  "traffic.changed": "traffic policy changed",
};

// Show `text` in the page's live notice, with a link that reloads the page.
function announceChange(notice, text) {
  notice.textContent = text + " — ";
  const reload = document.createElement("a");
  reload.href = window.location.href;
  reload.textContent = "reload";
  notice.appendChild(reload);
  notice.hidden = false;
}

function setUpLiveNotices() {
  const main = document.getElementById("main");
  const notice = document.getElementById("live-notice");
  const watched = main && main.dataset.liveModel;
  if (!watched || !notice || !window.EventSource) return;
  const source = new EventSource("/events");
  const show = (event) => {
    let row;
    try { row = JSON.parse(event.data); } catch (error) { return; }
    if (watched !== "*" && row.model_id !== watched) return;
    const details = row.details || {};
    let what = details.model || "a model";
    if (details.version) what += " v" + details.version;
    if (details.to) what += " → " + details.to;
    announceChange(notice, what + ": " + REGISTRY_EVENTS[event.type] + " elsewhere");
  };
  for (const name of Object.keys(REGISTRY_EVENTS)) source.addEventListener(name, show);
}

// The jobs page: running jobs' progress moves in place (`batch_job.progress` messages of the
// event stream); a job created, started or ended elsewhere is announced with a reload link.
const JOB_EVENTS = {
  "batch_job.created": "created",
  "batch_job.started": "started",
  "batch_job.finished": "ended",
  "batch_job.cancelled": "cancelled",
};

function rowsText(done, total) {
  const count = (n) => Number(n).toLocaleString("en-US");
  return count(done) + (total === null || total === undefined ? "" : " / " + count(total)) + " rows";
}

// A job that ended, or was asked to stop, elsewhere: its row says so at once and offers no
// Cancel any more (a succeeded job its output), as the page would after a reload.
function showEnded(tr, jobId, details) {
  const status = tr.querySelector("[data-status]");
  if (status && details.status === "running") {  // cancelling: it stops after its chunk
    if (!status.textContent.includes("(stopping)")) {
      const stopping = document.createElement("span");
      stopping.className = "muted";
      stopping.textContent = "(stopping)";
      status.append(" ", stopping);
    }
  } else if (status && details.status) {
    status.textContent = details.status;
    if (details.error) {
      const error = document.createElement("span");
      error.className = "error";
      error.textContent = String(details.error).slice(0, 200);
      status.append(document.createElement("br"), error);
    }
  }
  if (details.status === "succeeded" && details.rows_done !== undefined) {
    const bar = tr.querySelector("[data-progress]");
    if (bar) { bar.max = Math.max(details.rows_done, 1); bar.value = details.rows_done; }
    const rows = tr.querySelector("[data-rows]");
    if (rows) rows.textContent = rowsText(details.rows_done, details.rows_done);
  }
  const cancel = tr.querySelector("[data-cancel]");
  if (cancel) {
    const cell = cancel.parentNode;
    cancel.remove();
    if (details.status === "succeeded") {
      const output = document.createElement("a");
      output.href = "/jobs/" + encodeURIComponent(String(jobId)) + "/output";
      output.textContent = "Output";
      cell.appendChild(output);
    }
  }
}

function setUpLiveJobs() {
  const main = document.getElementById("main");
  const notice = document.getElementById("live-notice");
  if (!main || !("liveJobs" in main.dataset) || !notice || !window.EventSource) return;
  const source = new EventSource("/events");
  source.addEventListener("batch_job.progress", (event) => {
    let job;
    try { job = JSON.parse(event.data); } catch (error) { return; }
    const row = document.querySelector('tr[data-job-id="' + CSS.escape(String(job.id)) + '"]');
    if (!row) return;
    const bar = row.querySelector("[data-progress]");
    if (bar && job.rows_total) {
      bar.max = job.rows_total;
      bar.value = job.rows_done;
    }
    const rows = row.querySelector("[data-rows]");
    if (rows) rows.textContent = rowsText(job.rows_done, job.rows_total);
    const status = row.querySelector("[data-status]");
    if (status && status.firstChild && status.firstChild.nodeType === Node.TEXT_NODE) {
      status.firstChild.textContent = job.status;
    }
  });
  const announce = (event) => {
    let row;
    try { row = JSON.parse(event.data); } catch (error) { return; }
    announceChange(
      notice, "Batch job " + String(row.target_id).slice(0, 8) + "… " + JOB_EVENTS[event.type]);
    if (event.type === "batch_job.finished" || event.type === "batch_job.cancelled") {
      const tr = document.querySelector('tr[data-job-id="' + CSS.escape(String(row.target_id)) + '"]');
      if (tr) showEnded(tr, row.target_id, row.details || {});
    }
  };
  for (const name of Object.keys(JOB_EVENTS)) source.addEventListener(name, announce);
}

document.addEventListener("DOMContentLoaded", () => {
  setUpCopyButtons();
  setUpUpload();
  setUpLiveNotices();
  setUpLiveJobs();
});
