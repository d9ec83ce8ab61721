// lumos serve: submit the run form through the JSON API, poll the job, show progress and result.
// Every user string goes into the page through textContent; the result is a fragment rendered by
// the server with autoescaping.
"use strict";
(function () {
  const POLL_MS = 250;          // while the job is young
  const SLOW_POLL_MS = 1000;    // after a minute
  const MAX_POLLS = 20000;      // bounded: about five hours of polling, then the page stops asking

  function $(id) { return document.getElementById(id); }

  function showError(message) {
    const box = $("error");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  function setJob(job) {
    const panel = $("job");
    if (!panel) return;
    panel.hidden = false;
    panel.dataset.state = job.state;
    panel.dataset.jobId = job.id;
    $("progress-bar").value = job.progress;
    const pct = Math.round(100 * job.progress);
    const finished = job.state === "done" || job.state === "failed" || job.state === "cancelled";
    $("progress-text").textContent = finished
      ? job.state + (job.started && job.finished ? " in " + (job.finished - job.started).toFixed(1) + " s" : "")
      : (job.stage ? job.stage + ": " : "") + pct + "%";
    $("job-state").textContent = job.state;
    const cancel = $("cancel-button");
    cancel.hidden = !(job.state === "queued" || job.state === "running");
    cancel.dataset.jobId = job.id;
  }

  async function showResult(jobId) {
    const resp = await fetch("/jobs/" + encodeURIComponent(jobId) + "/fragment");
    $("result").innerHTML = await resp.text();  // rendered by the server, every string escaped
  }

  async function poll(jobId) {
    for (let i = 0; i < MAX_POLLS; i++) {
      let job;
      try {
        const resp = await fetch("/api/jobs/" + encodeURIComponent(jobId));
        const body = await resp.json();
        if (!resp.ok) { showError(body.error || ("HTTP " + resp.status)); return; }
        job = body.job;
      } catch (err) {
        showError("lost contact with the server: " + err);
        return;
      }
      setJob(job);
      if (job.state === "done") { await showResult(jobId); setRunning(false); return; }
      if (job.state === "failed") { showError(job.error || "the job failed"); setRunning(false); return; }
      if (job.state === "cancelled") { setRunning(false); return; }
      await new Promise((r) => setTimeout(r, i < 240 ? POLL_MS : SLOW_POLL_MS));
    }
  }

  function setRunning(running) {
    const btn = $("run-button");
    if (btn) btn.disabled = running;
  }

  async function submit(event) {
    event.preventDefault();
    const form = event.target;
    showError("");
    $("result").textContent = "";
    setRunning(true);
    let resp, body;
    try {
      resp = await fetch(form.dataset.api, { method: "POST", body: new FormData(form) });
      body = await resp.json();
    } catch (err) {
      showError("the request failed: " + err);
      setRunning(false);
      return;
    }
    if (!resp.ok) {
      showError(body.error || ("HTTP " + resp.status));
      setRunning(false);
      return;
    }
    setJob(body.job);
    poll(body.job.id);
  }

  async function cancel(event) {
    event.preventDefault();
    const jobId = event.target.dataset.jobId || ($("job") && $("job").dataset.jobId);
    if (!jobId) return;
    const resp = await fetch("/api/jobs/" + encodeURIComponent(jobId) + "/cancel", { method: "POST" });
    const body = await resp.json();
    if (resp.ok) setJob(body.job); else showError(body.error);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = $("run-form");
    if (form) form.addEventListener("submit", submit);
    const cancelButton = $("cancel-button");
    if (cancelButton) cancelButton.addEventListener("click", cancel);
    // the load form: the tokenizer folder is asked for only when the inputs are texts
    const kind = $("kind-select"), tokenizerField = $("tokenizer-field");
    if (kind && tokenizerField) {
      const showTokenizer = function () { tokenizerField.hidden = kind.value !== "text"; };
      kind.addEventListener("change", showTokenizer);
      showTokenizer();
    }
    const panel = $("job");
    // the job's own page (/jobs/ID): keep following a job that is still running
    if (panel && panel.dataset.jobId && (panel.dataset.state === "queued" || panel.dataset.state === "running")) {
      setRunning(true);
      poll(panel.dataset.jobId);
    }
  });
})();
