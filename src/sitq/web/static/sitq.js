/* sitq dashboard: refreshes the overview's counts and a running task's progress from the JSON
   API every 2 seconds, without reloading the page. Text from the API is only ever set with
   textContent, never parsed as HTML. */
(function () {
  "use strict";

  var INTERVAL = 2000;
  var body = document.body;
  var root = body.getAttribute("data-root") || "";

  function getJSON(path) {
    return fetch(root + path, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" }
    }).then(function (response) {
      if (!response.ok) {
        var error = new Error("HTTP " + response.status);
        error.status = response.status;
        throw error;
      }
      return response.json();
    });
  }

  /* Call refresh() every INTERVAL ms, one call at a time; stop once it answers 401 (the
     login cookie is gone) and back off after other errors. */
  function every(refresh) {
    function tick() {
      refresh().then(
        function () { window.setTimeout(tick, INTERVAL); },
        function (error) {
          if (error && error.status === 401) { return; }
          window.setTimeout(tick, INTERVAL * 3);
        }
      );
    }
    window.setTimeout(tick, INTERVAL);
  }

  function when(iso) {
    if (!iso) { return "-"; }
    var date = new Date(iso);
    if (isNaN(date.getTime())) { return "-"; }
    return date.toISOString().slice(0, 19).replace("T", " ");
  }

  function setText(element, text) {
    if (element && element.textContent !== String(text)) { element.textContent = String(text); }
  }

  function percent(value) {
    return value === null || value === undefined ? "-" : Math.round(value * 100) + "%";
  }

  /* -- overview ------------------------------------------------------------------------ */

  function drawBars() {
    var bars = document.querySelectorAll("#throughput-minutes .bar");
    var most = 0;
    bars.forEach(function (bar) {
      most = Math.max(most, Number(bar.getAttribute("data-finished")) || 0);
    });
    bars.forEach(function (bar) {
      var finished = Number(bar.getAttribute("data-finished")) || 0;
      var observed = Number(bar.getAttribute("data-observed")) || 0;
      bar.classList.toggle("unobserved", observed === 0);
      var fill = bar.querySelector(".fill");
      if (fill) { fill.style.height = most > 0 ? (finished * 100 / most) + "%" : "0"; }
    });
  }

  function updateCounts(queues) {
    var rows = document.querySelectorAll("#counts tr[data-queue]");
    var shown = [];
    rows.forEach(function (row) { shown.push(row.getAttribute("data-queue")); });
    var names = queues.map(function (q) { return q.queue; });
    if (shown.join("\n") !== names.join("\n")) {
      /* A queue came or went: draw the table again from the server. */
      window.location.reload();
      return;
    }
    var byName = {};
    queues.forEach(function (q) { byName[q.queue] = q; });
    document.querySelectorAll("[data-count]").forEach(function (cell) {
      var key = cell.getAttribute("data-count");
      var cut = key.lastIndexOf(":");
      var counts = byName[key.slice(0, cut)];
      if (counts) { setText(cell, counts[key.slice(cut + 1)]); }
    });
  }

  function updateThroughput(throughput) {
    throughput.windows.forEach(function (w) {
      var row = document.querySelector('tr[data-throughput="' + Number(w.window) + '"]');
      if (!row) { return; }
      setText(row.querySelector('[data-field="finished"]'), w.finished);
      setText(row.querySelector('[data-field="failed"]'), w.failed);
      setText(row.querySelector('[data-field="per_minute"]'), w.per_minute === null ? "-" : w.per_minute);
      setText(row.querySelector('[data-field="observed"]'), Math.round(w.observed) + " s");
    });
    throughput.minutes.forEach(function (m) {
      var bar = document.querySelector('#throughput-minutes .bar[data-minute="' + Number(m.ago) + '"]');
      if (!bar) { return; }
      bar.setAttribute("data-finished", m.finished);
      bar.setAttribute("data-observed", m.observed);
      bar.title = m.finished + " finished, " + m.ago + " min ago";
    });
    drawBars();
  }

  function updateWorkers(workers) {
    var tbody = document.querySelector("#workers tbody");
    if (!tbody) { return; }
    var rows = document.createDocumentFragment();
    workers.forEach(function (w) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-worker-id", w.worker_id);
      [
        [w.worker_id], [w.kind], [w.queues.join(", ")], [w.concurrency, "num"], [w.running, "num"],
        [w.processed, "num"], [w.failed, "num"], [when(w.started_at)], [when(w.last_seen)]
      ].forEach(function (cell) {
        var td = document.createElement("td");
        td.textContent = String(cell[0]);
        if (cell[1]) { td.className = cell[1]; }
        tr.appendChild(td);
      });
      rows.appendChild(tr);
    });
    if (!workers.length) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      var td = document.createElement("td");
      td.colSpan = 9;
      td.textContent = "No worker is alive.";
      tr.appendChild(td);
      rows.appendChild(tr);
    }
    tbody.replaceChildren(rows);
  }

  function refreshOverview() {
    return getJSON("/api/overview").then(function (data) {
      updateCounts(data.queues);
      updateThroughput(data.throughput);
      updateWorkers(data.workers);
      var stamp = document.getElementById("refreshed");
      if (stamp) {
        stamp.setAttribute("data-counted-at", data.counted_at);
        setText(stamp, "Counted at " + when(data.counted_at) + " UTC.");
      }
    });
  }

  /* -- one task ------------------------------------------------------------------------ */

  function refreshTask(taskId, shownStatus) {
    return getJSON("/api/tasks/" + encodeURIComponent(taskId)).then(
      function (task) {
        if (task.status !== shownStatus) {
          /* It started, finished or was requeued: the page shows other fields and actions. */
          window.location.reload();
          return;
        }
        setText(document.getElementById("attempts"), task.attempts);
        setText(document.getElementById("started-at"), when(task.started_at));
        setText(document.getElementById("worker"), task.worker_id || "-");
        var section = document.getElementById("progress-section");
        var bar = document.getElementById("progress");
        if (task.status === "running" && section && bar) {
          section.hidden = false;
          bar.value = task.progress === null ? 0 : task.progress;
          bar.setAttribute("data-progress", task.progress === null ? "" : String(task.progress));
          setText(document.getElementById("progress-percent"), percent(task.progress));
          setText(document.getElementById("progress-message"), task.progress_message || "");
        }
      },
      function (error) {
        if (error && error.status === 404) { window.location.reload(); }
        throw error;
      }
    );
  }

  var page = body.getAttribute("data-page");
  if (page === "overview") {
    drawBars();
    every(refreshOverview);
  } else if (page === "task") {
    var status = body.getAttribute("data-status");
    var taskId = body.getAttribute("data-task-id");
    if (taskId !== null && (status === "pending" || status === "running")) {
      every(function () { return refreshTask(taskId, status); });
    }
  }
})();
