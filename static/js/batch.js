// Batch panels: the job-run chart (duration and throughput per run) with the
// vendored Chart.js, drawn from the JSON its panel carries, and redrawn each
// time htmx swaps the panel in (a live update).
(function () {
  "use strict";
  if (window.hangarBatch) { window.hangarBatch.drawAll(); return; }
  const charts = new Map();
  const hhmm = (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });

  function draw(canvas) {
    const source = document.getElementById(canvas.dataset.batchChart);
    if (!source || !window.Chart) return;
    const data = JSON.parse(source.textContent);
    const old = charts.get(canvas.dataset.batchChart);
    if (old) old.destroy();
    charts.set(canvas.dataset.batchChart, new window.Chart(canvas, {
      data: {
        labels: data.t.map(hhmm),
        datasets: [
          { type: "bar", label: "duration s", data: data.duration_s, yAxisID: "y" },
          { type: "line", label: "items/min", data: data.items_per_min, yAxisID: "y1",
            tension: 0.2, pointRadius: 2, borderWidth: 2, spanGaps: true },
        ],
      },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
                 plugins: { legend: { labels: { boxWidth: 10 } } },
                 scales: { x: { ticks: { maxTicksLimit: 8 } }, y: { beginAtZero: true, position: "left" },
                           y1: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } } } },
    }));
    canvas.dataset.drawn = String(data.t.length);
  }

  function drawAll() { document.querySelectorAll("canvas[data-batch-chart]").forEach(draw); }
  window.hangarBatch = { drawAll };
  document.addEventListener("htmx:afterSettle", drawAll);
  if (window.Chart) drawAll(); else window.addEventListener("load", drawAll);
})();
