// The console's curves (uPlot, vendored) and its start-a-run form. A charts block
// ([data-charts]) names one or two runs' series URLs; their metrics are grouped into charts
// by name and refetched every data-poll-ms while any of the runs is queued or running.
(function () {
  "use strict";

  const GROUPS = {
    loss: (n) => n === "loss" || n === "eval_loss" || n.startsWith("loss/"),
    scores: (n) => ["objective/scores", "objective/rlhf_reward", "monitor/proxy_score", "monitor/gold_score"].includes(n),
    kl: (n) => n === "objective/kl" || n === "monitor/kl",
    accuracy: (n) => n.endsWith("accuracy") || n.endsWith("accuracies"),
    margin: (n) => n.endsWith("margin") || n.endsWith("margins"),
    lr: (n) => n === "learning_rate",
  };
  const COLORS = ["#2856d8", "#d92d20", "#067647", "#b54708", "#7a5af8", "#0e9384", "#c11574", "#475467"];

  // Series of different steps on one x axis: the union of steps, null where a series has none.
  function align(series) {
    const xs = Array.from(new Set(series.flatMap((s) => s.points.map((p) => p[0])))).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = series.map((s) => {
      const y = new Array(xs.length).fill(null);
      s.points.forEach(([x, v]) => { y[index.get(x)] = v; });
      return y;
    });
    return [xs, ...ys];
  }

  // Axis numbers short: learning rates are 1e-6, losses 0.69.
  function tick(v) {
    if (v === null || v === 0) return v === 0 ? "0" : "";
    return Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5 ? v.toExponential(1) : String(+v.toPrecision(3));
  }

  function draw(chart, series) {
    const plot = chart.querySelector(".plot");
    const points = series.reduce((n, s) => n + s.points.filter((p) => p[1] !== null).length, 0);
    chart.dataset.points = String(points);
    chart.classList.toggle("empty", series.length === 0);
    if (!series.length) return points;
    const labels = series.map((s) => s.label).join("|");
    const data = align(series);
    if (chart._plot && chart._labels === labels) {
      chart._plot.setData(data);
      return points;
    }
    if (chart._plot) chart._plot.destroy();
    const opts = {
      width: Math.max(240, plot.clientWidth || 360),
      height: 200,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { size: 64, values: (u, ticks) => ticks.map(tick) }],
      series: [{ label: "step" }, ...series.map((s, i) => ({
        label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
        points: { show: data[0].length <= 40 },
      }))],
    };
    chart._plot = new uPlot(opts, data, plot);
    chart._labels = labels;
    return points;
  }

  async function refresh(root) {
    const runs = JSON.parse(root.dataset.runs);
    let bodies;
    try {
      bodies = await Promise.all(runs.map((r) => fetch(r.url, { credentials: "same-origin" }).then((res) => {
        if (!res.ok) throw new Error(`${r.url}: ${res.status}`);
        return res.json();
      })));
    } catch (err) {
      root.dataset.error = String(err);
      setTimeout(() => refresh(root), 2 * Number(root.dataset.pollMs || 2000));
      return;
    }
    let total = 0;
    root.querySelectorAll(".chart").forEach((chart) => {
      const match = GROUPS[chart.dataset.group];
      const series = [];
      bodies.forEach((body, i) => {
        Object.keys(body.series).sort().forEach((name) => {
          if (!match(name)) return;
          series.push({ label: runs.length > 1 ? `${name} (${runs[i].label})` : name, points: body.series[name] });
        });
      });
      total += draw(chart, series);
    });
    root.dataset.points = String(total);
    root.dataset.status = bodies.map((b) => b.status).join(",");
    root.dataset.updates = String(Number(root.dataset.updates || 0) + 1);
    if (bodies.some((b) => b.active)) setTimeout(() => refresh(root), Number(root.dataset.pollMs || 2000));
  }

  // Only the values changed from their defaults are sent: the others are disabled on submit.
  function onlyChanged(event) {
    const form = event.target.closest("form[data-only-changed]");
    if (!form) return;
    form.querySelectorAll("[data-default]").forEach((el) => {
      if (el.value.trim() === el.dataset.default) el.disabled = true;
    });
  }

  // Bars (throughput, intervals, win rates) are placed from data-bar-* percentages here: the
  // Content-Security-Policy refuses style="" attributes, not styles set from a script.
  function placeBars(root) {
    root.querySelectorAll("[data-bar-left], [data-bar-width], [data-bar-height]").forEach((el) => {
      if (el.dataset.barLeft !== undefined) el.style.left = `${Number(el.dataset.barLeft)}%`;
      if (el.dataset.barWidth !== undefined) el.style.width = `${Number(el.dataset.barWidth)}%`;
      if (el.dataset.barHeight !== undefined) el.style.height = `${Number(el.dataset.barHeight)}%`;
    });
  }

  // Charts follow their column's width.
  window.addEventListener("resize", () => document.querySelectorAll(".chart").forEach((chart) => {
    if (chart._plot) chart._plot.setSize({ width: Math.max(240, chart.querySelector(".plot").clientWidth), height: 200 });
  }));
  document.addEventListener("submit", onlyChanged, true);
  // Back from the browser's page cache: the inputs disabled on submit are enabled again.
  window.addEventListener("pageshow", () => document.querySelectorAll("[data-default]").forEach((el) => { el.disabled = false; }));
  document.addEventListener("DOMContentLoaded", () => {
    placeBars(document);
    document.querySelectorAll("[data-charts]").forEach(refresh);
  });
  // Content swapped in by htmx (polled fragments) may carry bars too.
  document.addEventListener("htmx:load", (event) => placeBars(event.target));
})();
