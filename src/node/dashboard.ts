// The dashboard page the admin port serves at `/`: one self-contained HTML file (no build step,
// nothing loaded from elsewhere). Its script asks the node it came from for /api/cluster once a
// second and draws every node's state, ops/s and latency of the last minutes (inline SVG, from
// the nodes' per-second series) and the arbiter's views as a timeline. Everything shown is set
// with textContent: node ids and errors never become markup.

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>lockstep dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em 2em; color: #1d2430; background: #f7f8fa; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
  #meta { color: #5a6474; }
  #meta.stale { color: #b3261e; font-weight: 600; }
  table { border-collapse: collapse; background: #fff; box-shadow: 0 1px 2px #0002; }
  th, td { padding: .35em .8em; border-bottom: 1px solid #e3e6eb; text-align: right; white-space: nowrap; }
  th:first-child, td:first-child, th:nth-child(2), td.role, th:nth-child(4), td.view { text-align: left; }
  th { background: #eef1f5; font-weight: 600; }
  tr.down td { color: #9aa3b0; }
  .pill { display: inline-block; padding: 0 .55em; border-radius: .8em; font-size: .9em; color: #fff; background: #8a94a3; }
  .pill.primary { background: #1f7a3a; } .pill.backup { background: #2a5db0; }
  .pill.spare { background: #8a6d1f; } .pill.halted, .pill.down { background: #b3261e; }
  .charts { display: flex; gap: 1.5em; flex-wrap: wrap; }
  .chart { background: #fff; box-shadow: 0 1px 2px #0002; padding: .5em .8em; }
  .chart svg { display: block; }
  .legend span { margin-right: 1em; }
  #timeline { list-style: none; padding: 0; margin: 0; max-width: 60em; }
  #timeline li { background: #fff; margin: 0 0 .3em; padding: .3em .7em; border-left: 4px solid #8a94a3; box-shadow: 0 1px 2px #0001; }
  #timeline li.failover { border-left-color: #b3261e; }
  #timeline li.switchover { border-left-color: #1a73e8; }
  #timeline li.start { border-left-color: #1f7a3a; }
  #timeline time { color: #5a6474; margin-right: .8em; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>lockstep cluster <span id="cluster">…</span></h1>
<div id="meta">loading…</div>
<p>primary: <strong id="primary">?</strong> · epoch <strong id="epoch">?</strong></p>
<table>
  <thead><tr><th>node</th><th>role</th><th>epoch</th><th>view (primary / backup)</th><th>log index</th><th>backup lag</th><th>held outputs</th><th>ops/s</th><th>latency ms (mean / max)</th><th>admin</th></tr></thead>
  <tbody id="nodes"></tbody>
</table>
<h2>The last minutes</h2>
<div class="charts">
  <div class="chart"><div>ops/s</div><svg id="chart-ops" width="460" height="160"></svg></div>
  <div class="chart"><div>mean command latency (ms, output rule included)</div><svg id="chart-latency" width="460" height="160"></svg></div>
</div>
<div class="legend" id="legend"></div>
<h2>Views and failovers (from the arbiter)</h2>
<ul id="timeline"></ul>
<script>
"use strict";
var COLORS = ["#1f7a3a", "#2a5db0", "#b36b00", "#7b3fa0", "#b3261e", "#00838f", "#5d4037", "#455a64", "#c2185b"];
var SVGNS = "http://www.w3.org/2000/svg";
var lastOk = 0;

function el(tag, text, cls) {
  var e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function svgEl(tag, attrs) {
  var e = document.createElementNS(SVGNS, tag);
  for (var k in attrs) e.setAttribute(k, String(attrs[k]));
  return e;
}
function num(x) { return x === null || x === undefined ? "-" : String(x); }

function drawNodes(data) {
  var body = document.getElementById("nodes");
  body.textContent = "";
  data.nodes.forEach(function (n) {
    var s = n.status || {};
    var role = n.up ? s.role : "down";
    var tr = el("tr", null, n.up ? "" : "down");
    tr.setAttribute("data-node", n.id);
    tr.setAttribute("data-role", role);
    tr.appendChild(el("td", n.id));
    var td = el("td", null, "role");
    td.appendChild(el("span", role, "pill " + role));
    tr.appendChild(td);
    var last = n.series && n.series.length ? n.series[n.series.length - 1] : null;
    var v = s.view;
    [num(s.epoch), v ? (v.primary || "-") + " / " + ((v.backups && v.backups.length ? v.backups.join(", ") : v.backup) || "-") : "-", num(s.logIndex), num(s.lag), num(s.heldOutputs),
     num(s.opsPerSec), last && last.meanMs !== null ? last.meanMs + " / " + last.maxMs : "-", n.admin].forEach(function (t, i) {
      tr.appendChild(el("td", t, i === 1 ? "view" : ""));
    });
    if (!n.up) tr.title = n.error || "no answer";
    body.appendChild(tr);
  });
  var best = null;
  data.nodes.forEach(function (n) { if (n.up && n.status && n.status.view && (best === null || n.status.view.epoch > best.epoch)) best = n.status.view; });
  document.getElementById("primary").textContent = best && best.primary ? best.primary : "none";
  document.getElementById("epoch").textContent = best ? String(best.epoch) : "?";
}

function drawChart(id, data, pick) {
  var svg = document.getElementById(id);
  svg.textContent = "";
  var W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), L = 44, B = 18, T = 6;
  // The last 5 minutes, or less while the nodes have less (at least 20 s).
  var now = Date.now(), oldest = now, max = 0;
  data.nodes.forEach(function (n) { (n.series || []).forEach(function (p) { var y = pick(p); if (y !== null && y > max) max = y; if (p.t < oldest) oldest = p.t; }); });
  var span = Math.min(5 * 60 * 1000, Math.max(20 * 1000, now - oldest));
  max = max <= 0 ? 1 : max * 1.1;
  svg.appendChild(svgEl("rect", { x: L, y: T, width: W - L - 2, height: H - T - B, fill: "#fafbfc", stroke: "#d5dae1" }));
  [0, 0.5, 1].forEach(function (f) {
    var y = T + (H - T - B) * (1 - f);
    var t = svgEl("text", { x: L - 4, y: y + 4, "text-anchor": "end", "font-size": 10, fill: "#5a6474" });
    t.textContent = (max * f >= 10 ? Math.round(max * f) : (max * f).toFixed(2));
    svg.appendChild(t);
  });
  [[span >= 5 * 60 * 1000 ? "-5 min" : "-" + Math.round(span / 1000) + " s", L], ["now", W - 2]].forEach(function (a, i) {
    var t = svgEl("text", { x: a[1], y: H - 4, "text-anchor": i ? "end" : "start", "font-size": 10, fill: "#5a6474" });
    t.textContent = a[0];
    svg.appendChild(t);
  });
  // A line through consecutive seconds that have a value (a second without commands has no
  // latency: a gap), and a dot on each point.
  data.nodes.forEach(function (n, i) {
    var color = COLORS[i % COLORS.length], run = [];
    var flush = function () {
      if (run.length > 1) svg.appendChild(svgEl("polyline", { points: run.join(" "), fill: "none", stroke: color, "stroke-width": 1.5 }));
      run = [];
    };
    (n.series || []).forEach(function (p) {
      var y = pick(p);
      if (p.t < now - span) return;
      if (y === null) return flush();
      var x = L + (W - L - 2) * (1 - (now - p.t) / span), yy = T + (H - T - B) * (1 - y / max);
      run.push(x.toFixed(1) + "," + yy.toFixed(1));
      svg.appendChild(svgEl("circle", { cx: x.toFixed(1), cy: yy.toFixed(1), r: 1.8, fill: color }));
    });
    flush();
  });
}

function drawLegend(data) {
  var lg = document.getElementById("legend");
  lg.textContent = "";
  data.nodes.forEach(function (n, i) {
    var s = el("span", "\\u25A0 " + n.id);
    s.style.color = COLORS[i % COLORS.length];
    lg.appendChild(s);
  });
}

function drawTimeline(data) {
  var ul = document.getElementById("timeline");
  ul.textContent = "";
  if (data.timeline === null) {
    ul.appendChild(el("li", data.arbiterError ? "the arbiter did not answer: " + data.arbiterError : "this arbiter keeps only the current view (no history)"));
    return;
  }
  data.timeline.slice().reverse().forEach(function (e) {
    var li = el("li", null, e.kind);
    li.setAttribute("data-kind", e.kind);
    li.setAttribute("data-epoch", e.epoch);
    var t = el("time", e.at ? new Date(e.at).toLocaleTimeString() : "?");
    if (e.at) t.setAttribute("datetime", e.at);
    li.appendChild(t);
    li.appendChild(document.createTextNode(e.text));
    ul.appendChild(li);
  });
}

// Where to ask: this page's own node first, then (when it does not answer: it may be the primary
// that was just killed) the other nodes' admin addresses from the last answer.
var sources = [""];
var current = 0;

function ask(i) {
  var base = sources[i];
  return fetch(base + "/api/cluster", { cache: "no-store", signal: AbortSignal.timeout(2500) }).then(function (r) {
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  });
}

function askAny(i, tried, firstError) {
  if (tried >= sources.length) return Promise.reject(firstError);
  return ask(i).then(function (data) { current = i; return data; }, function (e) {
    return askAny((i + 1) % sources.length, tried + 1, firstError || e);
  });
}

var busy = false;
function refresh() {
  if (busy) return;
  busy = true;
  askAny(current, 0, null).then(function (data) {
    lastOk = Date.now();
    sources = [""].concat(data.nodes.map(function (n) { return "http://" + n.admin; }).filter(function (u) { return u !== location.origin; }));
    if (current >= sources.length) current = 0;
    document.getElementById("cluster").textContent = data.cluster;
    var meta = document.getElementById("meta");
    meta.className = current === 0 ? "" : "stale";
    meta.textContent = "served by " + data.servedBy + (current === 0 ? "" : " (the node of this page does not answer)") + " · updated " + new Date(data.time).toLocaleTimeString();
    if (current !== 0) current = 0; // try this page's node first again next time
    drawNodes(data);
    drawChart("chart-ops", data, function (p) { return p.ops; });
    drawChart("chart-latency", data, function (p) { return p.meanMs; });
    drawLegend(data);
    drawTimeline(data);
  }).catch(function (e) {
    var meta = document.getElementById("meta");
    meta.className = "stale";
    meta.textContent = "no node answers (" + e.message + ")" + (lastOk ? "; last update " + new Date(lastOk).toLocaleTimeString() : "");
  }).then(function () { busy = false; });
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
`;
