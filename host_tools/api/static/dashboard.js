// The live dashboard: polls GET /api/v1/dashboard and redraws the map, prices, caps, sessions.
//
// The token (a member's or the admin's) comes from the URL fragment, /#token=..., which the
// browser never sends to the server (so it never lands in a request log), or from the sign-in
// form. It is kept in sessionStorage for this tab only and removed from the address bar at once.
// Without a valid token the page shows the public digest (community totals) and says how to
// sign in. Every value is written with textContent or SVG attributes, never as HTML.
"use strict";

const POLL_MS = 3000;
const TOKEN_KEY = "energo-dashboard-token";
const SVG_NS = "http://www.w3.org/2000/svg";
let memoryToken = null; // when sessionStorage is not available
let lastData = null;
let updates = 0;

function $(id) { return document.getElementById(id); }

// --- the token ----------------------------------------------------------------------------

function storeToken(token) {
  memoryToken = token;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  } catch (e) { /* private mode: the token lives in this page only */ }
}

function currentToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || memoryToken; } catch (e) { return memoryToken; }
}

function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has("token")) return;
  storeToken(params.get("token").trim() || null);
  history.replaceState(null, "", location.pathname + location.search);
}

// --- formatting ---------------------------------------------------------------------------

function energy(wh) {
  if (Math.abs(wh) >= 1000) return (wh / 1000).toFixed(2) + " kWh";
  return wh + " Wh";
}
function money(micro) { return (micro / 1e6).toFixed(2); }
function price(microPerKwh) { return (microPerKwh / 1e6).toFixed(3) + "/kWh"; }
function clock(seconds) { return new Date(seconds * 1000).toISOString().slice(11, 16); }
function dateTime(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const key in attrs || {}) node.setAttribute(key, String(attrs[key]));
  if (text !== undefined) node.textContent = text;
  return node;
}
function html(name, className, text) {
  const node = document.createElement(name);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

// --- header, notice, tiles ----------------------------------------------------------------

function showNotice(text, isError) {
  const notice = $("notice");
  notice.textContent = text;
  notice.className = isError ? "notice error" : "notice";
  notice.hidden = !text;
}

function renderViewer(data, refused) {
  const viewer = data.viewer;
  const badge = $("viewer");
  badge.className = "badge " + viewer.kind;
  badge.textContent = viewer.kind === "admin" ? "operator view (admin)"
    : viewer.kind === "member" ? "signed in as " + viewer.member : "public digest";
  $("signin").hidden = viewer.kind !== "public";
  $("signout").hidden = viewer.kind === "public";
  if (refused) {
    showNotice("That token was not accepted, so this is the public digest: community totals " +
      "only. Sign in with your member token (or the operator's admin token) in the box above, " +
      "or open this page as /#token=YOUR-TOKEN.", true);
  } else if (viewer.kind === "public") {
    showNotice("Public digest: community totals only, no member's load or generation. " +
      "Members see their own figures after signing in with their member token (box above, " +
      "or open this page as /#token=YOUR-TOKEN); the operator uses the admin token.", false);
  } else {
    showNotice("", false);
  }
}

function renderTiles(data) {
  const c = data.community;
  $("sim-time").textContent = data.latest_interval_s === null ? "nothing closed yet"
    : dateTime(data.latest_interval_s + data.interval_s);
  $("records-settled").textContent = String(data.records_settled);
  $("live-export").textContent = energy(c.live.export_wh);
  $("live-import").textContent = energy(c.live.import_wh);
  $("stored").textContent = energy(c.stored_wh) + " / " + energy(c.cap_wh);
  $("traded-today").textContent = energy(c.today.bought_wh);
  $("sessions-count").textContent = String(data.sessions.count);
}

// --- the community map --------------------------------------------------------------------

function mapNodes(data) {
  if (data.members === null || data.members.length === 0) {
    const c = data.community;
    return [{ name: data.members_count + " members", aggregate: true, last: c.last,
              today: c.today, live: c.live }];
  }
  return data.members;
}

function flowPath(x1, y1, x2, y2, bend) {
  const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
  const dx = x2 - x1, dy = y2 - y1, length = Math.hypot(dx, dy) || 1;
  const cx = mx - dy / length * bend, cy = my + dx / length * bend;
  return "M" + x1.toFixed(1) + " " + y1.toFixed(1) + " Q" + cx.toFixed(1) + " " + cy.toFixed(1) +
    " " + x2.toFixed(1) + " " + y2.toFixed(1);
}

function renderMap(data) {
  const svg = $("map");
  clear(svg);
  const windowKey = $("window").value;
  const nodes = mapNodes(data);
  const center = { x: 360, y: 260 }, grid = { x: 70, y: 56 };
  const radius = nodes.length === 1 ? 0 : 185;
  let maxFlow = 1;
  for (const node of nodes) {
    const f = node[windowKey];
    maxFlow = Math.max(maxFlow, f.production_wh, f.from_storage_wh, f.from_grid_wh, f.to_grid_wh);
  }
  const width = (wh) => (wh > 0 ? 1.5 + 12 * wh / maxFlow : 0);
  const flows = el("g", { class: "flows" });
  const shapes = el("g", { class: "nodes" });
  svg.appendChild(flows);
  svg.appendChild(shapes);
  nodes.forEach((node, i) => {
    const angle = nodes.length === 1 ? Math.PI * 0.75 : -Math.PI / 2 + 2 * Math.PI * i / nodes.length;
    const at = nodes.length === 1 ? { x: 170, y: 400 }
      : { x: center.x + radius * Math.cos(angle), y: center.y + radius * Math.sin(angle) };
    const f = node[windowKey];
    const edges = [
      ["production", at, center, f.production_wh, 14],
      ["from-storage", center, at, f.from_storage_wh, 14],
      ["from-grid", grid, at, f.from_grid_wh, 30],
      ["to-grid", center, grid, f.to_grid_wh, -20],
    ];
    for (const [kind, from, to, wh, bend] of edges) {
      if (wh <= 0) continue;
      const path = el("path", { class: "flow " + kind, d: flowPath(from.x, from.y, to.x, to.y, bend),
                                "stroke-width": width(wh).toFixed(1) });
      path.appendChild(el("title", {}, kind.replace("-", " ") + ": " + energy(wh)));
      flows.appendChild(path);
    }
    const net = f.production_wh - f.consumption_wh;
    const group = el("g", { class: "node member " + (net > 0 ? "net-export" : net < 0 ? "net-import" : ""),
                            "data-member": node.aggregate ? "" : node.name,
                            transform: "translate(" + at.x.toFixed(1) + " " + at.y.toFixed(1) + ")" });
    group.appendChild(el("circle", { r: node.aggregate ? 34 : 22 }));
    group.appendChild(el("text", { y: node.aggregate ? 50 : 36 }, node.name));
    group.appendChild(el("text", { class: "figure", y: node.aggregate ? 64 : 50 },
      "+" + energy(f.production_wh) + " / " + (f.consumption_wh > 0 ? "−" : "") +
      energy(f.consumption_wh)));
    group.appendChild(el("title", {}, node.name + ": produced " + energy(f.production_wh) +
      ", consumed " + energy(f.consumption_wh) + " (" + energy(f.from_grid_wh) + " from the grid)" +
      ", bought " + energy(f.bought_wh) + ", sold " + energy(f.sold_wh) + " on the market"));
    shapes.appendChild(group);
  });
  const storage = el("g", { class: "node storage", transform: "translate(" + center.x + " " + center.y + ")" });
  storage.appendChild(el("rect", { x: -62, y: -26, width: 124, height: 52, rx: 8 }));
  storage.appendChild(el("text", { class: "inside", y: -6 }, "storage"));
  storage.appendChild(el("text", { class: "inside", y: 14, id: "map-stored" },
    energy(data.community.stored_wh)));
  shapes.appendChild(storage);
  const gridNode = el("g", { class: "node grid", transform: "translate(" + grid.x + " " + grid.y + ")" });
  gridNode.appendChild(el("rect", { x: -48, y: -20, width: 96, height: 40, rx: 6 }));
  gridNode.appendChild(el("text", { class: "inside", y: 5 }, "grid"));
  shapes.appendChild(gridNode);
}

// --- prices ------------------------------------------------------------------------------

function renderPrices(data) {
  const svg = $("prices");
  clear(svg);
  const items = data.prices.intervals;
  const left = 56, right = 630, top = 12, bottom = 228;
  const retail = data.prices.retail_micro_per_kwh, feedIn = data.prices.feed_in_micro_per_kwh;
  let maxPrice = Math.max(retail, feedIn, 1);
  let maxVolume = 1;
  for (const item of items) {
    if (item.price_micro_per_kwh !== null) maxPrice = Math.max(maxPrice, item.price_micro_per_kwh);
    maxVolume = Math.max(maxVolume, item.volume_wh);
  }
  maxPrice *= 1.1;
  const y = (p) => bottom - (bottom - top) * p / maxPrice;
  const slot = (right - left) / Math.max(items.length, 1);
  const x = (i) => left + slot * (i + 0.5);
  svg.appendChild(el("line", { class: "axis", x1: left, y1: bottom, x2: right, y2: bottom }));
  svg.appendChild(el("line", { class: "axis", x1: left, y1: top, x2: left, y2: bottom }));
  for (const p of [0, maxPrice / 2, maxPrice]) {
    svg.appendChild(el("text", { class: "axis-label", x: left - 6, y: y(p) + 4, "text-anchor": "end" },
      (p / 1e6).toFixed(2)));
  }
  items.forEach((item, i) => {
    const h = (bottom - top) * 0.35 * item.volume_wh / maxVolume;
    if (h > 0) {
      const bar = el("rect", { class: "bar-volume", x: x(i) - slot * 0.35, y: bottom - h,
                               width: slot * 0.7, height: h });
      bar.appendChild(el("title", {}, clock(item.interval_start_s) + ": " + energy(item.volume_wh) +
        " traded in " + item.trade_count + " trades"));
      svg.appendChild(bar);
    }
    const every = Math.max(1, Math.ceil(items.length / 8));
    if (i % every === 0) {
      svg.appendChild(el("text", { class: "axis-label", x: x(i), y: bottom + 16, "text-anchor": "middle" },
        clock(item.interval_start_s)));
    }
  });
  svg.appendChild(el("line", { class: "line-retail", x1: left, x2: right, y1: y(retail), y2: y(retail) }));
  svg.appendChild(el("line", { class: "line-feed-in", x1: left, x2: right, y1: y(feedIn), y2: y(feedIn) }));
  let d = "", pen = false; // a gap where no price was recorded
  items.forEach((item, i) => {
    if (item.price_micro_per_kwh === null) { pen = false; return; }
    const px = x(i).toFixed(1), py = y(item.price_micro_per_kwh).toFixed(1);
    d += (pen ? "L" : "M") + px + " " + py + " ";
    pen = true;
    const dot = el("circle", { class: "dot-price", cx: px, cy: py, r: 3 });
    dot.appendChild(el("title", {}, clock(item.interval_start_s) + ": " + price(item.price_micro_per_kwh)));
    svg.appendChild(dot);
  });
  if (d) svg.appendChild(el("path", { class: "line-price", d: d.trim() }));
  if (items.length === 0) {
    svg.appendChild(el("text", { class: "axis-label", x: (left + right) / 2, y: (top + bottom) / 2,
                                 "text-anchor": "middle" }, "No interval has closed yet."));
  }
}

// --- caps and sessions -------------------------------------------------------------------

function capRow(name, held, cap) {
  const row = html("div", "cap-row");
  row.appendChild(html("span", "name", name));
  const bar = html("div", "cap-bar");
  const fill = html("div", held >= cap && cap > 0 ? "cap-fill full" : "cap-fill");
  fill.style.width = (cap > 0 ? Math.min(100, 100 * held / cap) : 0).toFixed(1) + "%";
  bar.appendChild(fill);
  row.appendChild(bar);
  row.appendChild(html("span", "figure", energy(held) + " / " + energy(cap)));
  return row;
}

function renderCaps(data) {
  const box = $("caps");
  clear(box);
  box.appendChild(capRow("community", data.community.stored_wh, data.community.cap_wh));
  for (const member of data.members || []) box.appendChild(capRow(member.name, member.watt_wh, member.cap_wh));
  if (data.members === null) {
    box.appendChild(html("p", "muted", "Members' balances are private: sign in to see yours."));
  }
}

function renderSessions(data) {
  const body = $("sessions").querySelector("tbody");
  clear(body);
  const sessions = data.sessions;
  for (const s of sessions.items || []) {
    const row = html("tr");
    const id = html("td", "", s.session.slice(0, 8) + "…");
    id.title = s.session;
    row.appendChild(id);
    for (const text of [s.station, s.vehicle + " (" + s.member + ")", s.state]) {
      row.appendChild(html("td", "", text));
    }
    row.appendChild(html("td", "num", s.wh === null ? "–" : energy(s.wh)));
    row.appendChild(html("td", "num", s.total_micro === null ? "–" : money(s.total_micro)));
    body.appendChild(row);
  }
  const empty = $("sessions-empty");
  $("sessions").hidden = !(sessions.items && sessions.items.length);
  empty.hidden = Boolean(sessions.items && sessions.items.length);
  const total = sessions.count + (sessions.count === 1 ? " charging session" : " charging sessions") +
    " in the community, " + energy(sessions.energy_wh);
  empty.textContent = sessions.count === 0 ? "No charging sessions."
    : sessions.items === null ? total + " (details need a member's or the admin's token)."
    : total + "; none of them yours.";
}

// --- the loop ----------------------------------------------------------------------------

function render(data, refused) {
  lastData = data;
  renderViewer(data, refused);
  renderTiles(data);
  renderMap(data);
  renderPrices(data);
  renderCaps(data);
  renderSessions(data);
  updates += 1;
  document.body.dataset.updates = String(updates);
  document.body.dataset.state = "ok";
  document.body.dataset.viewer = data.viewer.kind;
  $("status").textContent = "Updated " + new Date().toLocaleTimeString() + " (every " +
    POLL_MS / 1000 + " s) · " + data.members_count + " members · " + data.entries_count +
    " ledger entries";
}

async function fetchData(token) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  return fetch("/api/v1/dashboard", { headers: headers, cache: "no-store" });
}

async function poll() {
  try {
    let refused = false;
    const token = currentToken();
    let reply = await fetchData(token);
    if (reply.status === 401 && token) {
      storeToken(null);
      refused = true;
      reply = await fetchData(null);
    }
    if (!reply.ok) throw new Error("the service answered " + reply.status);
    render(await reply.json(), refused);
  } catch (error) {
    document.body.dataset.state = "error";
    $("status").textContent = "Cannot reach the service (" + error.message + "); retrying.";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  window.addEventListener("hashchange", () => { takeTokenFromFragment(); });
  $("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token-input");
    storeToken(input.value.trim() || null);
    input.value = "";
    fetchData(currentToken()).then(async (reply) => {
      if (reply.status === 401) { storeToken(null); render(await (await fetchData(null)).json(), true); }
      else if (reply.ok) render(await reply.json(), false);
    }).catch(() => {});
  });
  $("signout").addEventListener("click", () => {
    storeToken(null);
    fetchData(null).then(async (reply) => { if (reply.ok) render(await reply.json(), false); })
      .catch(() => {});
  });
  $("window").addEventListener("change", () => { if (lastData) renderMap(lastData); });
  poll();
});
