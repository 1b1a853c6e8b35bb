// kvmtlb trace viewer: step selection (click, arrows, #step-N), entry focus (j/k), scenario line
// highlighting. No network, no libraries.
(function () {
  "use strict";
  var body = document.body;
  if (!body.classList.contains("trace")) { return; }
  var count = parseInt(body.dataset.steps, 10);
  var current = -1;
  var focused = -1;

  // Scroll `el` into view inside its pane only (scrollIntoView would scroll the page too).
  function reveal(el) {
    var box = el.closest(".viewer > *");
    if (!box) { return; }
    var r = el.getBoundingClientRect(), b = box.getBoundingClientRect();
    if (r.top < b.top + 26) { box.scrollTop += r.top - b.top - 26; }
    else if (r.bottom > b.bottom) { box.scrollTop += r.bottom - b.bottom + 4; }
  }

  function panel(n) { return document.getElementById("panel-" + n); }
  function row(n) { return document.getElementById("row-" + n); }

  function showSource(n) {
    var r = row(n);
    document.querySelectorAll(".src.op-now, .src.next").forEach(function (el) {
      el.classList.remove("op-now", "next");
      el.querySelector(".ptr").textContent = "";
    });
    if (!r) { return; }
    (r.dataset.pointers || "").split(",").forEach(function (item) {
      if (!item) { return; }
      var parts = item.split(":");
      var el = document.getElementById("line-" + parts[0]);
      if (el) { el.classList.add("next"); el.querySelector(".ptr").textContent = "▸" + parts[1]; }
    });
    var line = document.getElementById("line-" + r.dataset.line);
    if (line) { line.classList.add("op-now"); reveal(line); }
  }

  function select(n, updateHash) {
    if (isNaN(n)) { return; }
    n = Math.max(0, Math.min(count - 1, n));
    if (current >= 0) {
      panel(current).hidden = true;
      row(current).classList.remove("selected");
    } else {
      document.querySelectorAll(".panel").forEach(function (p) { p.hidden = true; });
    }
    current = n;
    focused = -1;
    panel(n).hidden = false;
    row(n).classList.add("selected");
    reveal(row(n));
    showSource(n);
    document.getElementById("entry-info").textContent = "";
    document.querySelectorAll("tr.entry.focused").forEach(function (el) { el.classList.remove("focused"); });
    if (updateHash && location.hash !== "#step-" + n) {
      history.replaceState(null, "", "#step-" + n);
    }
  }

  function fromHash() {
    var m = /^#step-(\d+)$/.exec(location.hash);
    return m ? parseInt(m[1], 10) : parseInt(body.dataset.default, 10);
  }

  function visibleEntries() {
    return Array.prototype.filter.call(panel(current).querySelectorAll("tr.entry"), function (el) {
      return el.offsetParent !== null;
    });
  }

  function focusEntry(delta) {
    var rows = visibleEntries();
    if (!rows.length) { return; }
    if (focused >= 0 && rows[focused]) { rows[focused].classList.remove("focused"); }
    focused = focused < 0 ? (delta > 0 ? 0 : rows.length - 1) : Math.max(0, Math.min(rows.length - 1, focused + delta));
    rows[focused].classList.add("focused");
    reveal(rows[focused]);
    document.getElementById("entry-info").textContent = rows[focused].title;
  }

  document.querySelectorAll("tr.step").forEach(function (el) {
    el.addEventListener("click", function () { select(parseInt(el.dataset.step, 10), true); });
  });
  var toggle = document.getElementById("show-psc");
  toggle.addEventListener("change", function () { body.classList.toggle("hide-psc", !toggle.checked); });
  window.addEventListener("hashchange", function () { select(fromHash(), false); });
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey || (e.target && e.target.tagName === "INPUT")) { return; }
    if (e.key === "ArrowRight") { select(current + 1, true); e.preventDefault(); }
    else if (e.key === "ArrowLeft") { select(current - 1, true); e.preventDefault(); }
    else if (e.key === "j") { focusEntry(1); }
    else if (e.key === "k") { focusEntry(-1); }
    else if (e.key === "p") { toggle.checked = !toggle.checked; body.classList.toggle("hide-psc", !toggle.checked); }
  });
  select(fromHash(), false);
  body.dataset.readyMs = String(Math.round(performance.now()));  // for the render-time test
})();
