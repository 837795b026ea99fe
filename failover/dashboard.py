"""The dashboard: one HTML page, no build step. It polls status and events once a second and
shows one section per pool (its readiness, the origin(s) taking its traffic, its origins).

It is sent with a strict Content-Security-Policy: its inline script and style are allowed by
their SHA-256 hashes (no other script, inline handler or style runs), it may fetch only from
its own origin, and no page may frame it.
"""

from __future__ import annotations

import base64
import hashlib
import re

__all__ = ["DASHBOARD", "dashboard_page"]

DASHBOARD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>failover</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d2733; background: #f6f7f9; }
  h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
  h2 { font-size: 1.15rem; margin: 1.4rem 0 .3rem; }
  .active { margin: 0 0 .6rem; }
  .active b { padding: .1rem .5rem; border-radius: 4px; background: #d9f2e3; }
  .active.down b { background: #f8d7da; }
  table { border-collapse: collapse; width: 100%; background: #fff; table-layout: fixed; }
  th, td { text-align: left; padding: .45rem .7rem; border-bottom: 1px solid #e3e6ea;
           box-sizing: border-box; overflow-wrap: anywhere; }
  th { background: #eef1f4; font-weight: 600; }
  th:nth-child(1), th:nth-child(8) { width: 14%; }
  th:nth-child(3) { width: 10%; }
  th:nth-child(4), th:nth-child(6) { width: 9%; }
  th:nth-child(2), th:nth-child(7) { width: 7%; }
  th:nth-child(5) { width: 6%; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  .state { padding: .1rem .45rem; border-radius: 4px; font-weight: 600; white-space: nowrap; }
  h2 .state { font-size: .8rem; vertical-align: middle; }
  .healthy { background: #d9f2e3; color: #17623a; }
  .unusable { background: #f8d7da; color: #842029; }
  .operator { background: #fff3cd; color: #664d03; }
  .tag { background: #e3e8ef; color: #33475b; }
  tr.taking td:first-child::before { content: "\\25B6  "; color: #17623a; }
  #events li { margin: .2rem 0; }
  #events time { color: #5c6b7a; font-variant-numeric: tabular-nums; margin-right: .5rem; }
  #events .tag { margin-right: .4rem; }
  #error { color: #842029; }
  .muted { color: #5c6b7a; }
</style>
</head>
<body>
<h1>failover</h1>
<div class="muted">Refreshes every second. <span id="error"></span></div>
<div id="pools"></div>
<template id="pool">
  <section class="pool">
    <h2>Pool <span class="name"></span> <span class="ready state"></span></h2>
    <div class="active">Traffic goes to <b></b></div>
    <table>
      <thead><tr>
        <th>Origin</th><th>Priority</th><th>State</th><th>Flags</th><th>Req/s</th>
        <th>Error rate</th><th>Latency</th><th>Probe</th><th>Last change</th>
      </tr></thead>
      <tbody></tbody>
    </table>
  </section>
</template>
<h2>Events</h2>
<ol id="events" reversed></ol>
<script>
const prefix = "{{prefix}}";
const sections = new Map();
function text(value) { return value === null || value === undefined ? "-" : String(value); }
function cell(row, value, cls) {
  const td = row.insertCell(); td.textContent = text(value); if (cls) td.className = cls; return td;
}
function badge(value, cls) {
  const span = document.createElement("span");
  span.className = "state " + cls; span.textContent = value; return span;
}
function section(name) {
  let node = sections.get(name);
  if (!node) {
    node = document.getElementById("pool").content.firstElementChild.cloneNode(true);
    node.dataset.pool = name;
    node.querySelector(".name").textContent = name;
    sections.set(name, node);
  }
  return node;
}
function showPool(pool) {
  const node = section(pool.name);
  const ready = node.querySelector(".ready");
  ready.textContent = pool.ready ? "ready" : "not ready";
  ready.className = "ready state " + (pool.ready ? "healthy" : "unusable");
  const taking = Array.isArray(pool.active) ? pool.active : pool.active ? [pool.active] : [];
  let shown = taking.join(", ") || "no usable origin";
  const ramp = pool.ramp;
  if (ramp) {
    shown += ` (ramping up: ${Math.round(ramp.share * 100)} % of the traffic, all of it in ` +
      `${Math.round(ramp.remaining)} s; the rest to ${ramp.from.join(", ")})`;
  }
  node.querySelector(".active b").textContent = shown;
  node.querySelector(".active").className = taking.length ? "active" : "active down";
  const body = node.querySelector("tbody");
  body.replaceChildren();
  for (const o of pool.origins) {
    const row = body.insertRow();
    row.dataset.origin = o.name;
    if (taking.includes(o.name)) row.className = "taking";
    cell(row, o.name);
    cell(row, o.priority, "num");
    const operator = o.flags.includes("drained") || o.flags.includes("disabled");
    cell(row, "").appendChild(
      badge(o.state, o.usable ? "healthy" : operator ? "operator" : "unusable"));
    const untested = o.drills && o.drills.untested ? ["untested (no traffic, no drill)"] : [];
    cell(row, [...o.flags, ...untested].join(", ") || "none");
    cell(row, o.passive.requests_per_second, "num");
    cell(row, (o.passive.error_rate * 100).toFixed(1) + " %", "num");
    cell(row, o.passive.mean_latency_ms === null ? "-" : o.passive.mean_latency_ms + " ms",
         "num");
    cell(row, o.check.last || o.check.state);
    cell(row, o.reason);
  }
  return node;
}
async function refresh() {
  try {
    const [status, events] = await Promise.all([
      fetch(prefix + "/status").then(r => r.json()),
      fetch(prefix + "/events?limit=30").then(r => r.json()),
    ]);
    const shown = status.pools.map(showPool);
    for (const name of sections.keys()) {
      if (!status.pools.some(p => p.name === name)) sections.delete(name);
    }
    document.getElementById("pools").replaceChildren(...shown);
    const list = document.getElementById("events");
    list.replaceChildren();
    for (const e of events.events) {
      const li = document.createElement("li");
      li.dataset.pool = e.pool || "-";
      const when = document.createElement("time");
      when.textContent = new Date(e.time * 1000).toLocaleTimeString();
      li.appendChild(when);
      if (e.pool && e.pool !== "-") li.appendChild(badge(e.pool, "tag"));
      const origin = e.origin && e.origin !== "-" ? " " + e.origin : "";
      const change = e.old || e.new ? ": " + e.old + " \\u2192 " + e.new : "";
      li.appendChild(document.createTextNode(e.kind + origin + change + " (" + e.reason + ")"));
      list.appendChild(li);
    }
    const reload = status.last_reload;
    const rejected = reload && reload.result === "error";
    document.getElementById("error").textContent =
      rejected ? "Last config reload rejected: " + reload.errors.join("; ") : "";
  } catch (err) {
    document.getElementById("error").textContent = "Cannot reach the proxy: " + err;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""


_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _hash_source(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def dashboard_page(prefix: str) -> tuple[str, dict[str, str]]:
    """The dashboard for this admin prefix, and the security headers to send with it."""
    html = DASHBOARD.replace("{{prefix}}", prefix)
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for match in _INLINE.finditer(html):
        hashes[match.group(1)].append(_hash_source(match.group(2)))
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(hashes["script"]) or "'none'"),
            "style-src " + (" ".join(hashes["style"]) or "'none'"),
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
    }
    return html, headers
