// sfc-server admin: sortable tables, confirmation of destructive actions, and the
// dashboard's live refresh from the JSON API (same origin, the session cookie).
"use strict";
(function () {
  function cellValue(row, index) {
    var cell = row.children[index];
    if (!cell) return "";
    var sort = cell.getAttribute("data-sort");
    return sort !== null ? Number(sort) : cell.textContent.trim().toLowerCase();
  }
  function makeSortable(table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, index) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows).filter(function (r) { return !r.classList.contains("empty"); });
        rows.sort(function (a, b) {
          var x = cellValue(a, index), y = cellValue(b, index);
          var c = x < y ? -1 : x > y ? 1 : 0;
          return ascending ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });

  if (document.body.getAttribute("data-page") !== "dashboard") return;
  function size(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return u === 0 ? n + " B" : n.toFixed(1) + " " + units[u];
  }
  function row(cells, labels) {
    var tr = document.createElement("tr");
    cells.forEach(function (text, i) {
      var td = document.createElement("td");
      td.textContent = text;
      td.setAttribute("data-label", labels[i]);
      tr.appendChild(td);
    });
    return tr;
  }
  function fill(table, items, toCells, labels, empty) {
    var body = table.tBodies[0];
    body.textContent = "";
    if (items.length === 0) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      tr.className = "empty"; td.colSpan = labels.length; td.textContent = empty;
      tr.appendChild(td); body.appendChild(tr);
    }
    items.forEach(function (item) { body.appendChild(row(toCells(item), labels)); });
  }
  function get(path) {
    return fetch(path, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); });
  }
  function refresh() {
    Promise.all([get("/api/v1/stats"), get("/api/v1/uploads"), get("/api/v1/failures?limit=20")])
      .then(function (all) {
        var stats = all[0], uploads = all[1], failures = all[2].items;
        document.querySelectorAll("[data-stat]").forEach(function (el) {
          var key = el.getAttribute("data-stat");
          el.textContent = key === "bytes_stored" ? size(stats[key]) : stats[key];
        });
        fill(document.getElementById("uploads"), uploads, function (u) {
          return [u.client_name || u.client_id, u.file_name, u.packets_received + " / " + u.total_packets,
                  size(u.bytes_received), size(u.bytes_per_second) + "/s"];
        }, ["Client", "File", "Packets", "Received", "Rate"], "No upload in progress");
        fill(document.getElementById("failures"), failures, function (f) {
          return [f.at, f.kind, f.peer || "-", f.detail];
        }, ["When", "What", "From", "Why"], "No failure since start");
      })
      .catch(function () { /* logged out or server gone: keep the last view */ })
      // The next refresh 2 s after this one ends, never while it is still running: a slow
      // server does not get a pile of requests.
      .then(function () { window.setTimeout(refresh, 2000); });
  }
  window.setTimeout(refresh, 2000);
})();
