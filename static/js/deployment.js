// Deployment page: log follow (SSE, bounded buffer) and live charts.
const MAX_LOG_LINES = 1000;

function hangarFollow(button) {
  const pre = document.querySelector("#logs pre");
  if (pre._source) {
    pre._source.close(); pre._source = null; button.textContent = "Follow"; return;
  }
  const source = new EventSource(pre.dataset.followUrl);
  source.onmessage = (e) => {
    const lines = (pre.textContent + JSON.parse(e.data) + "\n").split("\n");
    pre.textContent = lines.slice(-MAX_LOG_LINES - 1).join("\n");
    pre.scrollTop = pre.scrollHeight;
  };
  source.addEventListener("end", () => { source.close(); pre._source = null; button.textContent = "Follow"; });
  pre._source = source;
  button.textContent = "Pause";
}
window.hangarFollow = hangarFollow;

(function () {
  const box = document.getElementById("charts");
  if (!box || !window.Chart) return;
  const charts = {};
  function line(id, datasets) {
    const ctx = document.getElementById(id);
    charts[id] = new Chart(ctx, {
      type: "line",
      data: { labels: [], datasets: datasets.map((d) => ({ label: d, data: [], tension: 0.2, pointRadius: 0, borderWidth: 2 })) },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
                 plugins: { legend: { labels: { boxWidth: 10 } } },
                 scales: { x: { ticks: { maxTicksLimit: 6 } }, y: { beginAtZero: true } } },
    });
  }
  line("chart-health", ["ready", "desired"]);
  line("chart-load", ["cpu %", "in flight"]);
  line("chart-runs", ["p50 latency ms", "runs/min"]);
  line("chart-cost", ["$ / min"]);
  // 24-hour clock whatever the locale, as the timeline (H:i:s).
  const hhmm = (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  function set(id, labels, series) {
    const chart = charts[id];
    chart.data.labels = labels.map(hhmm);
    series.forEach((values, i) => { chart.data.datasets[i].data = values; });
    chart.update();
  }
  let last = 0;
  let timer = null;
  async function load() {
    last = Date.now();
    const data = await (await fetch(box.dataset.url, { credentials: "same-origin" })).json();
    set("chart-health", data.t, [data.ready, data.desired]);
    set("chart-load", data.t, [data.cpu, data.inflight]);
    if (data.runs) {
      set("chart-runs", data.runs.t, [data.runs.p50_ms, data.runs.per_minute]);
      set("chart-cost", data.runs.t, [data.runs.cost]);
    }
  }
  // Live: refresh on events for this deployment, at most every 3 s.
  document.addEventListener("hangar:event", (e) => {
    if (String(e.detail.deployment_id) !== box.dataset.deployment || timer) return;
    timer = setTimeout(() => { timer = null; load(); }, Math.max(0, 3000 - (Date.now() - last)));
  });
  document.addEventListener("hangar:resync", () => load());
  load();
})();
