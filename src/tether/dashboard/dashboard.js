/* tether dashboard: polls GET /dashboard/data once a second and renders it.

   Rules: read-only (only GETs, to this admin port; its CSP allows nothing else); every
   field may be missing or null (an older supervisor, a worker that has not reported
   yet) and renders as "-", never as an exception; values from the server reach the
   page as text (textContent), never as markup. When a poll fails, the last data stays
   on screen under a banner saying since when the supervisor has been unreachable.

   Stable hooks for tests and scripts: rows carry data-* attributes (data-worker-pid
   and data-state on workers, data-provider and data-state on providers, data-from and
   data-to on the timeline), numbers carry data-value with the raw value, and <body>
   counts successful updates in data-updates. */

(function () {
  "use strict";

  // from the origin, not relative to the page: a page opened at a URL holding user:token@
  // would lend a relative URL its credentials, and fetch refuses any URL with them
  // (the browser still sends the Basic credentials it holds for this origin)
  var DATA_URL = window.location.origin + "/dashboard/data";
  var INTERVAL_MS = 1000;
  var FETCH_TIMEOUT_MS = 3000; // a stopped (SIGSTOP) supervisor must still show the banner
  var CHART_HEIGHT = 180;
  var MAX_WORKER_EVENTS = 40;
  var MAX_TIMELINE = 60;
  // worst last: a provider seen in several states shows them in this order
  var PROVIDER_ORDER = ["alive", "connecting", "retrying", "ejected", "evicted"];

  var updates = 0;
  var failingSince = null; // Date of the first failed poll in a row, or null
  var charts = null; // {rps, latency, cancelled} once uPlot is up, or false without it

  // ---- small helpers -------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  /* el("td", {class: "num", "data-value": 3}, "3", child...) */
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        var value = attrs[key];
        if (value !== null && value !== undefined) { node.setAttribute(key, String(value)); }
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) { continue; }
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function num(v) { return isNum(v) ? v : 0; }

  function fmtInt(v) {
    return isNum(v) ? Math.round(v).toLocaleString("en-US") : "-";
  }

  function fmtFixed(v, digits) {
    return isNum(v) ? v.toFixed(digits) : "-";
  }

  function fmtMs(v) {
    if (!isNum(v)) { return "-"; }
    return v >= 100 ? Math.round(v) + " ms" : v.toFixed(v >= 10 ? 1 : 2) + " ms";
  }

  /* 9.5s, 1m05s, 1h02m05s (as `tether status` writes them) */
  function fmtAge(seconds) {
    if (!isNum(seconds)) { return "-"; }
    if (seconds < 60) { return seconds.toFixed(1) + "s"; }
    var s = Math.floor(seconds);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), rest = s % 60;
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    return (h ? h + "h" + two(m) + "m" : m + "m") + two(rest) + "s";
  }

  function fmtClock(date) {
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    return two(date.getHours()) + ":" + two(date.getMinutes()) + ":" + two(date.getSeconds());
  }

  function fmtEpoch(t) { return isNum(t) ? fmtClock(new Date(t * 1000)) : "-"; }

  function badge(state, text) {
    return el("span", {class: "badge", "data-state": state}, text === undefined ? state : text);
  }

  function numCell(v, text) {
    return el("td", {class: "num", "data-value": isNum(v) ? v : null},
              text === undefined ? fmtInt(v) : text);
  }

  function emptyRow(columns, text) {
    return el("tr", {class: "empty"}, el("td", {colspan: columns}, text));
  }

  function setValue(id, value, text) {
    var node = $(id);
    node.textContent = text;
    if (isNum(value)) { node.setAttribute("data-value", String(value)); }
    else { node.removeAttribute("data-value"); }
  }

  function last(list) {
    return Array.isArray(list) && list.length ? list[list.length - 1] : null;
  }

  function sum(list, pick) {
    var total = 0;
    (list || []).forEach(function (item) { total += num(pick(item)); });
    return total;
  }

  // ---- sections ------------------------------------------------------------------

  function renderSupervisor(status) {
    $("supervisor").setAttribute("data-state", status.state || "");
    setValue("sup-pid", status.pid, isNum(status.pid) ? String(status.pid) : "-");
    $("sup-state").replaceChildren(status.state ? badge(status.state) : "-");
    setValue("sup-uptime", status.uptime_seconds, fmtAge(status.uptime_seconds));
    setValue("sup-reloads", status.reloads, fmtInt(status.reloads));
    setValue("sup-starts", status.worker_starts, fmtInt(status.worker_starts));
    setValue("sup-crashes", status.worker_crashes, fmtInt(status.worker_crashes));
    $("sup-registered").textContent = status.registered || "no";
  }

  function renderSummary(status, history) {
    var workers = status.workers || [];
    var requests = sum(workers, function (w) { return w.requests; });
    setValue("requests-total", requests, fmtInt(requests));
    var rps = null;
    if (history && history.rps) {
      rps = 0;
      Object.keys(history.rps).forEach(function (cls) { rps += num(last(history.rps[cls])); });
    }
    setValue("rps-now", rps, rps === null ? "-" : fmtFixed(rps, 1));
    var inFlight = sum(workers, function (w) { return w.in_flight; });
    setValue("in-flight-total", inFlight, fmtInt(inFlight));
    var connections = sum(workers, function (w) { return w.connections; });
    setValue("connections-total", connections, fmtInt(connections));
    var p99 = history && history.latency_ms ? last(history.latency_ms.p99) : null;
    setValue("p99-now", p99, fmtMs(p99));
  }

  function renderWorkers(status) {
    var rows = (status.workers || []).map(function (w) {
      var h2 = num(w.h2_connections), ws = num(w.websockets);
      var h1 = isNum(w.connections) ? Math.max(0, w.connections - h2 - ws) : null;
      return el("tr", {"data-worker-id": w.id, "data-worker-pid": w.pid, "data-state": w.state},
        el("td", null, isNum(w.id) ? String(w.id) : "-"),
        el("td", {class: "pid"}, isNum(w.pid) ? String(w.pid) : "-"),
        el("td", null, w.state ? badge(w.state) : "-"),
        numCell(w.age_seconds, fmtAge(w.age_seconds)),
        numCell(w.requests),
        numCell(w.in_flight),
        numCell(w.connections),
        numCell(h1),
        numCell(w.h2_connections, isNum(w.h2_connections)
          ? fmtInt(w.h2_connections) + " (" + fmtInt(num(w.h2_streams)) + ")" : "-"),
        numCell(w.websockets));
    });
    $("workers-body").replaceChildren.apply($("workers-body"),
      rows.length ? rows : [emptyRow(10, "no workers")]);
  }

  function renderWorkerEvents(events) {
    var rows = (events || []).slice(-MAX_WORKER_EVENTS).reverse().map(function (e) {
      return el("tr", {"data-worker": e.worker, "data-pid": e.pid, "data-state": e.state},
        el("td", null, fmtEpoch(e.t)),
        el("td", null, isNum(e.worker) ? String(e.worker) : "-"),
        el("td", null, isNum(e.pid) ? String(e.pid) : "-"),
        el("td", null, e.state ? badge(e.state) : "-"),
        el("td", null, e.reason || ""));
    });
    $("worker-events-body").replaceChildren.apply($("worker-events-body"),
      rows.length ? rows : [emptyRow(5, "no events yet")]);
  }

  function renderCounters(counters) {
    var names = Object.keys(counters || {}).sort();
    var items = names.map(function (name) {
      return el("div", {"data-counter": name},
        el("dt", null, name), el("dd", {"data-value": counters[name]}, fmtInt(counters[name])));
    });
    $("counters").replaceChildren.apply($("counters"),
      items.length ? items : [el("div", null, el("dt", null, "none above zero"))]);
  }

  /* {"alive": 1, "retrying": 1} -> ["alive", "retrying"], in PROVIDER_ORDER */
  function orderedStates(states) {
    var names = Object.keys(states || {}).filter(function (s) { return states[s] > 0; });
    return names.sort(function (a, b) {
      var ia = PROVIDER_ORDER.indexOf(a), ib = PROVIDER_ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || (a < b ? -1 : 1);
    });
  }

  function renderClusters(clusters) {
    var blocks = (clusters || []).map(function (c) {
      var body = el("tbody");
      (c.providers || []).forEach(function (p) { body.appendChild(providerRow(c, p)); });
      if (!body.firstChild) { body.appendChild(emptyRow(4, "no providers")); }
      var facts = el("dl", {class: "counters"},
        fact("requests", c.requests), fact("retries", c.retries),
        fact("ejections", c.ejections), fact("evictions", c.evictions),
        fact("retry budget", c.retry_budget, isNum(c.retry_budget)
          ? fmtFixed(c.retry_budget, 1) + " tokens" : "-"));
      return el("div", {class: "cluster", "data-service": c.service},
        el("h3", null, c.service || "-"), facts,
        el("div", {class: "scroll"}, el("table", null,
          el("thead", null, el("tr", null, el("th", null, "provider"), el("th", null, "state"),
            el("th", {class: "num"}, "failures"), el("th", {class: "num"}, "next probe"))),
          body)));
    });
    $("clusters-body").replaceChildren.apply($("clusters-body"), blocks.length ? blocks
      : [el("p", {class: "hint"}, "no clusters: the workers' clients call no service")]);
  }

  function stateCell(badges) {
    var td = el("td", {class: "states"});
    if (!badges.length) { td.textContent = "-"; }
    badges.forEach(function (b) { td.appendChild(b); });
    return td;
  }

  function providerRow(c, p) {
    var names = orderedStates(p.states);
    // "alive ×2" when every worker agrees, "alive 1 retrying 1" while they do not
    var badges = names.map(function (s) {
      return badge(s, names.length === 1 ? s + " \u00d7" + p.states[s] : s + " " + p.states[s]);
    });
    var probe = !isNum(p.next_probe_in) ? "-" : "in " + (p.next_probe_in < 60
      ? p.next_probe_in.toFixed(1) + " s" : fmtAge(p.next_probe_in));
    return el("tr", {"data-service": c.service, "data-provider": p.address,
                     "data-state": names.join(" ")},
      el("td", null, p.address || "-"),
      stateCell(badges),
      numCell(p.failures),
      numCell(p.next_probe_in, probe));
  }

  function fact(name, value, text) {
    return el("div", {"data-fact": name},
      el("dt", null, name), el("dd", {"data-value": isNum(value) ? value : null},
                               text === undefined ? fmtInt(value) : text));
  }

  function renderTimeline(timeline) {
    var rows = (timeline || []).slice(-MAX_TIMELINE).reverse().map(function (c) {
      return el("tr", {"data-worker": c.worker, "data-service": c.service,
                       "data-address": c.address, "data-from": c.from, "data-to": c.to},
        el("td", null, fmtEpoch(c.t)),
        el("td", null, isNum(c.worker) ? String(c.worker) : "-"),
        el("td", null, c.service || "-"),
        el("td", null, c.address || "-"),
        el("td", null, badge(c.from || "-"), el("span", {class: "arrow"}, "\u2192 "),
           badge(c.to || "-")),
        el("td", null, c.trigger || ""));
    });
    $("timeline-body").replaceChildren.apply($("timeline-body"),
      rows.length ? rows : [emptyRow(6, "no state changes yet")]);
  }

  function renderPools(pools) {
    var rows = (pools || []).map(function (p) {
      var perConnection = isNum(p.requests) && num(p.connections_opened) > 0
        ? p.requests / p.connections_opened : null;
      return el("tr", {"data-origin": p.origin},
        el("td", null, p.origin || "-"),
        numCell(p.requests),
        numCell(p.connections_opened),
        numCell(perConnection, fmtFixed(perConnection, 1)),
        numCell(p.reuse_ratio, isNum(p.reuse_ratio) ? (p.reuse_ratio * 100).toFixed(1) + "%" : "-"),
        numCell(p.idle),
        numCell(p.active));
    });
    $("pools-body").replaceChildren.apply($("pools-body"),
      rows.length ? rows : [emptyRow(7, "no pools: no outbound requests yet")]);
  }

  // ---- charts (uPlot) ------------------------------------------------------------

  var SERIES = {
    rps: [["2xx", "#2e9e44", ["rps", "2xx"]], ["3xx", "#3b7dd8", ["rps", "3xx"]],
          ["4xx", "#e08a00", ["rps", "4xx"]], ["5xx", "#d83b3b", ["rps", "5xx"]]],
    latency: [["p50", "#3b7dd8", ["latency_ms", "p50"]], ["p90", "#e08a00", ["latency_ms", "p90"]],
              ["p99", "#d83b3b", ["latency_ms", "p99"]]],
    cancelled: [["client left", "#8e5bd6", ["cancelled", "disconnect"]],
                ["deadline", "#e08a00", ["cancelled", "deadline"]],
                ["admission dropped", "#d83b3b", ["admission_dropped"]]]
  };

  function cssVar(name, fallback) {
    var v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  function makeChart(target, series) {
    var axis = cssVar("--chart-axis", "#667085"), grid = cssVar("--chart-grid", "rgba(0,0,0,.07)");
    var opts = {
      width: Math.max(200, target.clientWidth), height: CHART_HEIGHT,
      // a live view: every update resets the scales, so a zoom would not stay
      cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true},
               y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }}},
      // one line of local HH:MM:SS per tick: uPlot's default adds a second line with
      // the date, whose labels run into each other on a narrow chart
      axes: [{stroke: axis, grid: {stroke: grid}, ticks: {stroke: grid}, space: 70,
              values: function (u, splits) {
                return splits.map(function (t) { return fmtEpoch(t); });
              }},
             {stroke: axis, grid: {stroke: grid}, ticks: {stroke: grid}, size: 48}],
      series: [{label: "time", value: function (u, t) { return isNum(t) ? fmtEpoch(t) : "--"; }}]
        .concat(series.map(function (s) {
          return {label: s[0], stroke: s[1], width: 1.5, points: {show: false}};
        }))
    };
    var empty = [[]].concat(series.map(function () { return []; }));
    return new window.uPlot(opts, empty, target);
  }

  function setupCharts() {
    if (typeof window.uPlot !== "function") {
      // the page still shows every table without its charts
      ["chart-rps", "chart-latency", "chart-cancelled"].forEach(function (id) {
        $(id).textContent = "charts unavailable (uPlot did not load)";
      });
      return false;
    }
    var made = {rps: makeChart($("chart-rps"), SERIES.rps),
                latency: makeChart($("chart-latency"), SERIES.latency),
                cancelled: makeChart($("chart-cancelled"), SERIES.cancelled)};
    if (typeof ResizeObserver === "function") {
      var observer = new ResizeObserver(function (entries) {
        entries.forEach(function (entry) {
          var chart = made[entry.target.getAttribute("data-chart")];
          var width = Math.floor(entry.contentRect.width);
          // width only: the chart's own height never feeds back into a resize loop
          if (chart && width > 0 && width !== chart.width) {
            chart.setSize({width: width, height: CHART_HEIGHT});
          }
        });
      });
      [["chart-rps", "rps"], ["chart-latency", "latency"], ["chart-cancelled", "cancelled"]]
        .forEach(function (pair) {
          $(pair[0]).setAttribute("data-chart", pair[1]);
          observer.observe($(pair[0]));
        });
    }
    return made;
  }

  function column(history, path, length) {
    var v = history;
    path.forEach(function (key) { v = v && v[key]; });
    if (!Array.isArray(v)) { v = []; }
    var out = new Array(length);
    for (var i = 0; i < length; i++) { out[i] = isNum(v[i]) ? v[i] : null; }
    return out;
  }

  function renderCharts(history) {
    if (charts === null) { charts = setupCharts(); }
    if (!charts || !history || !Array.isArray(history.t)) { return; }
    var t = history.t, n = t.length;
    Object.keys(SERIES).forEach(function (name) {
      charts[name].setData([t].concat(SERIES[name].map(function (s) {
        return column(history, s[2], n);
      })));
    });
  }

  // ---- polling -------------------------------------------------------------------

  function render(data) {
    var status = data.status || {};
    renderSupervisor(status);
    renderSummary(status, data.history);
    renderWorkers(status);
    renderWorkerEvents(data.worker_events);
    renderCounters(status.counters);
    renderClusters(status.clusters);
    renderTimeline(data.timeline);
    renderPools(status.pools);
    renderCharts(data.history);
  }

  /* unreachable: no answer at all (the supervisor is gone, or stopped); refused: it
     answered, but not with the data (401 without the token, 403 for this Host, ...) */
  function showFailure(unreachable, why) {
    if (failingSince === null) { failingSince = new Date(); }
    var banner = $("banner");
    banner.textContent = (unreachable ? "supervisor unreachable since "
                                      : "the admin port refuses the dashboard's data since ") +
      fmtClock(failingSince) + " (" + why + "); showing the last data received, " +
      "trying again every second";
    banner.setAttribute("data-since", failingSince.toISOString());
    banner.setAttribute("data-reason", unreachable ? "unreachable" : "refused");
    banner.hidden = false;
    $("main").classList.add("stale");
    document.body.setAttribute("data-connected", "false");
  }

  function showSuccess() {
    failingSince = null;
    $("banner").hidden = true;
    $("banner").removeAttribute("data-since");
    $("banner").removeAttribute("data-reason");
    $("main").classList.remove("stale");
    document.body.setAttribute("data-connected", "true");
  }

  function markUpdated() {
    updates += 1;
    document.body.setAttribute("data-updates", String(updates));
    $("updated").textContent = fmtClock(new Date());
  }

  function poll() {
    var started = Date.now();
    var refused = null; // why the admin port answered without the data, or null
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    var timer = controller ? setTimeout(function () { controller.abort(); }, FETCH_TIMEOUT_MS) : null;
    fetch(DATA_URL, {method: "GET", cache: "no-store", credentials: "same-origin",
                     signal: controller ? controller.signal : undefined})
      .then(function (response) {
        if (!response.ok) {
          refused = "it answered " + response.status +
            (response.statusText ? " " + response.statusText : "");
          throw new Error(refused);
        }
        return response.json();
      })
      .then(function (data) { return {data: data}; }, function (error) {
        var why = refused;
        if (why === null) {
          why = error && error.name === "AbortError"
            ? "no answer within " + FETCH_TIMEOUT_MS / 1000 + " s"
            : error instanceof SyntaxError ? "its answer is not JSON"
            : error instanceof TypeError ? "connection failed" : String(error);
        }
        return {error: why, unreachable: refused === null};
      })
      .then(function (outcome) {
        if (timer !== null) { clearTimeout(timer); }
        // scheduled first: a rendering bug must not stop the polling
        setTimeout(poll, Math.max(0, INTERVAL_MS - (Date.now() - started)));
        if (outcome.error !== undefined) {
          showFailure(outcome.unreachable, outcome.error);
          return;
        }
        showSuccess();
        // a throw here is a bug in this page: left uncaught, so it shows in the console
        render(outcome.data);
        markUpdated();
      });
  }

  poll();
})();
