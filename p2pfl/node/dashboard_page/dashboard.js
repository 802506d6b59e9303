// The p2pfl node dashboard: renders each snapshot the node pushes on /events.
// No polling: the page waits for the server's messages and reconnects if the
// channel drops. Text from the ledger goes in as textContent, never as HTML.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(key, String(value));
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function rows(table, items, cells) {
    const body = $(table).tBodies[0];
    body.replaceChildren(...items.map((item) => cells(item)));
  }

  const short = (id) => (id ? String(id).slice(0, 12) : "-");
  const fixed = (value, digits) => (value === null || value === undefined ? "-" : Number(value).toFixed(digits));
  const clock = (stamp) => (stamp ? new Date(stamp * 1000).toLocaleTimeString() : "-");

  function bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let value = Number(n);
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
  }

  function ago(stamp) {
    if (!stamp) return "-";
    const seconds = Math.max(0, Date.now() / 1000 - stamp);
    return `${clock(stamp)} (${seconds.toFixed(0)} s ago)`;
  }

  // -- the parts of the page ----------------------------------------------------------

  function summary(snap) {
    const node = snap.node;
    const round = snap.round;
    $("title").textContent = `p2pfl node ${node.name || short(node.node_id)}`;
    $("node-id").textContent = node.node_id || "-";
    $("federation").textContent = node.federation || "-";
    $("address").textContent = node.address || "-";
    $("phase").textContent = round.phase || "-";
    $("phase").dataset.phase = round.phase || "";
    const of = round.rounds ? ` of ${round.rounds}` : "";
    $("round").textContent = `${round.round ?? "-"}${of}`;
    $("round").dataset.round = round.round ?? "";
    $("completed").textContent = round.completed ?? "-";
    $("completed").dataset.completed = round.completed ?? "";
    $("secure").textContent = node.secure ? "secure aggregation on" : "off";
    $("last-error").textContent = node.last_error || "(none)";
    $("updated").textContent = clock(node.updated);
  }

  function members(snap) {
    rows("members", snap.members, (m) => {
      const status = m.revoked ? "revoked" : m.me ? "this node" : m.neighbour ? "neighbour" : "member";
      return el(
        "tr",
        { "data-node": m.node_id, "data-approved": m.approved, "data-revoked": m.revoked, "data-progress": m.progress ?? "" },
        el("td", { title: m.node_id }, short(m.node_id)),
        el("td", {}, m.institution || "-"),
        el("td", { class: m.approved ? "good" : "bad" }, m.approved ? "approved" : "not approved"),
        el("td", { class: m.revoked ? "bad" : "" }, status),
        el("td", {}, m.progress ?? "-"),
      );
    });
  }

  function links(snap) {
    rows("links", snap.links, (l) =>
      el(
        "tr",
        { "data-peer": l.peer, "data-state": l.state },
        el("td", { title: l.peer }, short(l.peer)),
        el("td", { class: l.state === "up" ? "good" : "bad" }, l.state || "-"),
        el("td", {}, ago(l.since)),
        el("td", {}, bytes(l.sent_bytes)),
        el("td", {}, bytes(l.received_bytes)),
        el("td", {}, l.last_error || ""),
      ),
    );
  }

  function metrics(snap) {
    rows("metrics", snap.metrics, (m) =>
      el(
        "tr",
        { "data-round": m.round, "data-accuracy": m.accuracy ?? "", "data-loss": m.loss ?? "" },
        el("td", {}, m.round),
        el("td", {}, fixed(m.accuracy, 4)),
        el("td", {}, fixed(m.loss, 4)),
        el("td", {}, fixed(m.samples, 0)),
      ),
    );
    const shared = $("shared");
    shared.replaceChildren();
    if (snap.shared.length) {
      const list = snap.shared.map((s) => `${short(s.node)} round ${s.round}: ${fixed(s.accuracy, 4)}`);
      shared.append(el("p", { class: "note" }, `Sites that chose to share their own accuracy: ${list.join("; ")}`));
    }
    lineChart($("metrics-chart"), snap.metrics);
  }

  function lineChart(chart, points) {
    const w = 1100, h = 260, left = 44, right = 52, top = 22, bottom = 28;
    chart.replaceChildren();
    const xs = points.map((p) => p.round);
    const lo = Math.min(...xs, 0), hi = Math.max(...xs, 1);
    const x = (r) => left + ((r - lo) / Math.max(1, hi - lo)) * (w - left - right);
    const maxLoss = Math.max(...points.map((p) => p.loss ?? 0), 1e-9);
    const yAcc = (a) => top + (1 - a) * (h - top - bottom);
    const yLoss = (l) => top + (1 - l / maxLoss) * (h - top - bottom);
    chart.append(svg("line", { x1: left, y1: h - bottom, x2: w - right, y2: h - bottom, class: "axis" }));
    for (const a of [0, 0.25, 0.5, 0.75, 1]) {
      chart.append(svg("line", { x1: left, y1: yAcc(a), x2: w - right, y2: yAcc(a), class: "grid" }));
      chart.append(svg("text", { x: left - 6, y: yAcc(a) + 4, class: "tick acc", "text-anchor": "end" }, a.toFixed(2)));
      chart.append(svg("text", { x: w - right + 6, y: yAcc(a) + 4, class: "tick loss" }, (a * maxLoss).toPrecision(2)));
    }
    for (const r of xs) {
      chart.append(svg("text", { x: x(r), y: h - bottom + 16, class: "tick", "text-anchor": "middle" }, r));
    }
    if (!points.length) {
      chart.append(svg("text", { x: w / 2, y: h / 2, class: "empty", "text-anchor": "middle" }, "no round summed yet"));
      return;
    }
    for (const [key, y, cls] of [["accuracy", yAcc, "acc"], ["loss", yLoss, "loss"]]) {
      const shown = points.filter((p) => p[key] !== null && p[key] !== undefined);
      const path = shown.map((p) => `${x(p.round)},${y(p[key])}`).join(" ");
      chart.append(svg("polyline", { points: path, class: `series ${cls}` }));
      for (const p of shown) {
        const dot = svg("circle", { cx: x(p.round), cy: y(p[key]), r: 3.5, class: `dot ${cls}` });
        dot.append(svg("title", {}, `round ${p.round}: ${key} ${Number(p[key]).toFixed(4)}`));
        chart.append(dot);
      }
    }
    chart.append(svg("text", { x: left + 6, y: top - 6, class: "legend acc" }, "accuracy"));
    chart.append(svg("text", { x: w - right - 6, y: top - 6, class: "legend loss", "text-anchor": "end" }, "loss"));
  }

  function costs(snap) {
    rows("costs", snap.costs, (c) =>
      el(
        "tr",
        { "data-round": c.round, "data-bytes": c.bytes_sent },
        el("td", {}, c.round),
        el("td", {}, bytes(c.bytes_sent)),
        el("td", {}, fixed(c.train_seconds, 2)),
        el("td", {}, fixed(c.network_j, 3)),
        el("td", {}, fixed(c.compute_j, 1)),
        el("td", {}, fixed(c.total_j, 1)),
      ),
    );
    const chart = $("costs-chart");
    chart.replaceChildren();
    const w = 1100, h = 170, left = 60, bottom = 24, top = 8;
    const most = Math.max(...snap.costs.map((c) => c.bytes_sent), 1);
    const width = Math.min(90, (w - left - 8) / Math.max(1, snap.costs.length));
    snap.costs.forEach((c, i) => {
      const height = (c.bytes_sent / most) * (h - top - bottom);
      const bar = svg("rect", { x: left + i * width + 2, y: h - bottom - height, width: Math.max(1, width - 4), height, class: "bar" });
      bar.append(svg("title", {}, `round ${c.round}: ${bytes(c.bytes_sent)}, ${fixed(c.total_j, 1)} J`));
      chart.append(bar);
      chart.append(svg("text", { x: left + (i + 0.5) * width, y: h - bottom + 16, class: "tick", "text-anchor": "middle" }, c.round));
    });
    chart.append(svg("text", { x: left - 6, y: top + 10, class: "tick", "text-anchor": "end" }, bytes(most)));
    chart.append(svg("line", { x1: left, y1: h - bottom, x2: w - 8, y2: h - bottom, class: "axis" }));
  }

  function privacy(snap) {
    const box = $("privacy");
    const p = snap.privacy;
    if (!p) {
      box.replaceChildren(el("p", {}, "no differential privacy in this plan"));
      return;
    }
    const share = p.epsilon_run ? Math.min(1, p.epsilon_spent / p.epsilon_run) : 0;
    box.replaceChildren(
      el("p", { id: "epsilon", "data-spent": p.epsilon_spent }, `ε spent ${fixed(p.epsilon_spent, 3)} of ${fixed(p.epsilon_run, 3)} (δ = ${p.delta})`),
      el("div", { class: "meter" }, el("div", { class: "fill", "data-share": share })),
      el("p", { class: "note" }, `${p.mechanism}, after ${p.rounds_done} of ${p.rounds_planned} rounds`),
    );
    box.querySelector(".fill").style.width = `${(100 * share).toFixed(1)}%`;
  }

  function audit(snap) {
    const a = snap.audit;
    const state = $("audit-state");
    state.dataset.ok = a.ok;
    state.dataset.lines = a.lines ?? "";
    state.textContent = a.error ? "unreadable" : a.ok ? "verified" : "damaged";
    const detail = a.error
      ? a.error
      : a.ok
        ? `hash chain intact over lines 1 to ${a.lines} (head ${String(a.head).slice(0, 16)}…)`
        : `${a.problem_count} problem(s): ` + a.problems.map((p) => `line ${p.line} ${p.kind}: ${p.detail}`).join("; ");
    $("audit-detail").textContent = detail;
    const tail = [...a.tail].reverse();
    rows("audit", tail, (e) => {
      const { seq, time, event, ...rest } = e;
      const details = Object.entries(rest)
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
        .join(" ");
      return el("tr", { "data-seq": seq }, el("td", {}, seq), el("td", {}, time ? String(time).slice(11, 19) : "-"), el("td", {}, event), el("td", { class: "details" }, details));
    });
  }

  function render(snap) {
    summary(snap);
    members(snap);
    links(snap);
    metrics(snap);
    costs(snap);
    privacy(snap);
    audit(snap);
    document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
  }

  // -- the push channel ---------------------------------------------------------------

  let delay = 500;

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/events${location.search}`);
    const badge = $("connection");
    socket.onopen = () => {
      delay = 500;
      badge.textContent = "live";
      badge.dataset.state = "live";
    };
    socket.onmessage = (message) => render(JSON.parse(message.data));
    socket.onclose = () => {
      badge.textContent = "disconnected: reconnecting";
      badge.dataset.state = "closed";
      setTimeout(connect, delay);
      delay = Math.min(10000, delay * 2);
    };
  }

  connect();
})();
