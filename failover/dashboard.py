"""The dashboard: one HTML page, no build step. It polls status and events once a second.

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
  #active { font-size: 1.1rem; margin: .6rem 0 1.2rem; }
  #active b { padding: .1rem .5rem; border-radius: 4px; background: #d9f2e3; }
  #active.down b { background: #f8d7da; }
  table { border-collapse: collapse; width: 100%; background: #fff; margin-bottom: 1.5rem; }
  th, td { text-align: left; padding: .45rem .7rem; border-bottom: 1px solid #e3e6ea; }
  th { background: #eef1f4; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .state { padding: .1rem .45rem; border-radius: 4px; font-weight: 600; }
  .healthy { background: #d9f2e3; color: #17623a; }
  .unusable { background: #f8d7da; color: #842029; }
  .operator { background: #fff3cd; color: #664d03; }
  tr.taking td:first-child::before { content: "\\25B6  "; color: #17623a; }
  #events li { margin: .2rem 0; }
  #events time { color: #5c6b7a; font-variant-numeric: tabular-nums; margin-right: .5rem; }
  #error { color: #842029; }
  .muted { color: #5c6b7a; }
</style>
</head>
<body>
<h1>failover</h1>
<div class="muted">Refreshes every second. <span id="error"></span></div>
<div id="active">Traffic goes to <b id="active-name">&hellip;</b></div>
<table id="origins">
  <thead><tr>
    <th>Origin</th><th>Priority</th><th>State</th><th>Flags</th><th>Req/s</th>
    <th>Error rate</th><th>Latency</th><th>Probe</th><th>Last change</th>
  </tr></thead>
  <tbody></tbody>
</table>
<h2>Events</h2>
<ol id="events" reversed></ol>
<script>
const prefix = "{{prefix}}";
function text(value) { return value === null || value === undefined ? "-" : String(value); }
function cell(row, value, cls) {
  const td = row.insertCell(); td.textContent = text(value); if (cls) td.className = cls; return td;
}
async function refresh() {
  try {
    const [status, events] = await Promise.all([
      fetch(prefix + "/status").then(r => r.json()),
      fetch(prefix + "/events?limit=30").then(r => r.json()),
    ]);
    const active = Array.isArray(status.active) ? status.active.join(", ") : status.active;
    document.getElementById("active-name").textContent = active || "no usable origin";
    document.getElementById("active").className = active ? "" : "down";
    const body = document.querySelector("#origins tbody");
    body.replaceChildren();
    const taking = new Set(Array.isArray(status.active) ? status.active : [status.active]);
    for (const o of status.origins) {
      const row = body.insertRow();
      row.dataset.origin = o.name;
      if (taking.has(o.name)) row.className = "taking";
      cell(row, o.name);
      cell(row, o.priority, "num");
      const operator = o.flags.includes("drained") || o.flags.includes("disabled");
      const state = cell(row, "");
      const badge = document.createElement("span");
      badge.className = "state " + (o.usable ? "healthy" : operator ? "operator" : "unusable");
      badge.textContent = o.state;
      state.appendChild(badge);
      cell(row, o.flags.join(", ") || "none");
      cell(row, o.passive.requests_per_second, "num");
      cell(row, (o.passive.error_rate * 100).toFixed(1) + " %", "num");
      cell(row, o.passive.mean_latency_ms === null ? "-" : o.passive.mean_latency_ms + " ms",
           "num");
      cell(row, o.check.last || o.check.state);
      cell(row, o.reason);
    }
    const list = document.getElementById("events");
    list.replaceChildren();
    for (const e of events.events) {
      const li = document.createElement("li");
      const when = document.createElement("time");
      when.textContent = new Date(e.time * 1000).toLocaleTimeString();
      li.appendChild(when);
      li.appendChild(document.createTextNode(
        e.kind + " " + e.origin + (e.old || e.new ? ": " + e.old + " \\u2192 " + e.new : "") +
        " (" + e.reason + ")"));
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
