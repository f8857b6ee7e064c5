// The model page: tabs, the charts (Chart.js, vendored: see docs/web.md), the pricing
// calculator (integer micro-dollars, the rule and size checks of SPEC §1-2) and the code tabs.
"use strict";

const PAGE = JSON.parse(document.getElementById("page-data").textContent);
const COLORS = ["#4f46e5", "#f97316", "#0891b2", "#db2777", "#65a30d", "#7c3aed"];
const LEVEL_COLORS = { ok: "#16a34a", warn: "#eab308", bad: "#dc2626", none: "#cbd5e1" };

// ------------------------------------------------------------------------------ money

const MICRO_PER_USD = 1000000;

/** `$0.014`, `$0.14`, `$1.50` from integer micro-dollars (as web/display.py `usd_text`). */
function usdText(micro) {
  const sign = micro < 0 ? "-" : "";
  const abs = Math.abs(micro);
  const whole = Math.floor(abs / MICRO_PER_USD);
  let decimals = String(abs % MICRO_PER_USD).padStart(6, "0").replace(/0+$/, "");
  while (decimals.length < 2) decimals += "0";
  return `${sign}$${whole}.${decimals}`;
}

// ------------------------------------------------------------------------------ sizes (SPEC §2)

const LIMITS = PAGE.pricing.limits;
const PIXELS_PER_MP = 1048576;

function sizeIsValid(w, h) {
  return w % LIMITS.multiple === 0 && h % LIMITS.multiple === 0 &&
    w >= LIMITS.min_side && w <= LIMITS.max_side &&
    h >= LIMITS.min_side && h <= LIMITS.max_side && w * h <= LIMITS.max_pixels;
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** The valid size closest to (w, h) with about the same ratio (catalog.nearest_valid_size). */
function nearestValidSize(width, height) {
  let w = Math.max(width, 1), h = Math.max(height, 1);
  if (w * h > LIMITS.max_pixels) {
    const scale = Math.sqrt(LIMITS.max_pixels / (w * h));
    w *= scale; h *= scale;
  }
  const snap = (side, floor) => {
    const n = floor ? Math.floor(side / LIMITS.multiple) : roundHalfEven(side / LIMITS.multiple);
    return Math.min(LIMITS.max_side, Math.max(LIMITS.min_side, n * LIMITS.multiple));
  };
  let sw = snap(w, false), sh = snap(h, false);
  if (sw * sh > LIMITS.max_pixels) { sw = snap(w, true); sh = snap(h, true); }
  while (sw * sh > LIMITS.max_pixels) {
    if (sw >= sh) sw -= LIMITS.multiple; else sh -= LIMITS.multiple;
  }
  return [sw, sh];
}

/** The server's 400 message for a size, or null when it is valid (catalog.check_size). */
function sizeError(w, h) {
  if (sizeIsValid(w, h)) return null;
  const [nw, nh] = nearestValidSize(w, h);
  return `Size ${w}x${h} is not supported: each side must be a multiple of 16 between ` +
    `${LIMITS.min_side} and ${LIMITS.max_side}, and the image at most ${LIMITS.max_pixels} ` +
    `pixels (4 MP). The nearest valid size is ${nw}x${nh}.`;
}

function billableMegapixels(w, h) {
  return Math.max(1, Math.ceil((w * h) / PIXELS_PER_MP));
}

function imagePriceMicro(w, h) {
  const p = PAGE.pricing;
  return p.first_mp_micro + (billableMegapixels(w, h) - 1) * p.extra_mp_micro;
}

/** {error} or {mp, perImage, total, tokens} for the calculator's fields (strings). */
function quote(widthText, heightText, nText) {
  const isInt = (t) => /^\d+$/.test(t.trim());
  if (!isInt(widthText) || !isInt(heightText)) {
    const text = `${widthText.trim()}x${heightText.trim()}`;
    return { error: `size '${text}' is not understood: use 'WIDTHxHEIGHT' such as '1024x1024', or a tier: 0.5K, 1K, 2K.` };
  }
  const w = parseInt(widthText, 10), h = parseInt(heightText, 10);
  const bad = sizeError(w, h);
  if (bad) return { error: bad };
  const max = PAGE.pricing.max_images;
  const n = isInt(nText) ? parseInt(nText, 10) : NaN;
  if (!(n >= 1 && n <= max)) {
    return { error: `n must be between 1 and ${max}; got ${nText.trim() || "nothing"}.` };
  }
  const mp = billableMegapixels(w, h);
  const perImage = imagePriceMicro(w, h);
  return { w, h, n, mp, perImage, total: perImage * n, tokens: mp * PAGE.pricing.image_tokens_per_mp * n };
}

function setupCalculator() {
  const width = document.getElementById("calc-width");
  const height = document.getElementById("calc-height");
  const n = document.getElementById("calc-n");
  const total = document.getElementById("calc-total");
  const detail = document.getElementById("calc-detail");
  const error = document.getElementById("calc-error");
  const result = document.getElementById("calc-result");
  const update = () => {
    const q = quote(width.value, height.value, n.value);
    if (q.error) {
      error.textContent = q.error;
      error.hidden = false;
      result.hidden = true;
      result.dataset.totalMicro = "";
      return;
    }
    error.hidden = true;
    result.hidden = false;
    result.dataset.totalMicro = String(q.total);
    total.textContent = usdText(q.total);
    detail.textContent = ` = ${q.n} × ${usdText(q.perImage)} (${q.w}x${q.h}: ${q.mp} MP, ` +
      `${q.mp * PAGE.pricing.image_tokens_per_mp} image tokens per image)`;
  };
  for (const input of [width, height, n]) input.addEventListener("input", update);
  update();
}

// ------------------------------------------------------------------------------ charts

const BASE_OPTIONS = {
  animation: false,
  responsive: true,
  maintainAspectRatio: false,
  interaction: { mode: "index", intersect: false },
  plugins: { legend: { position: "bottom" } },
};

function makeChart(id, config) {
  const canvas = document.getElementById(id);
  if (!canvas || Chart.getChart(canvas)) return;
  new Chart(canvas, config);
  canvas.dataset.ready = "true";
}

function performanceCharts() {
  const perf = PAGE.performance;
  const datasets = (field) => perf.providers.map((p, i) => ({
    label: p.provider_name,
    data: p[field],
    borderColor: COLORS[i % COLORS.length],
    backgroundColor: COLORS[i % COLORS.length],
    spanGaps: false,
    pointRadius: 2,
  }));
  const options = (unit) => ({
    ...BASE_OPTIONS,
    scales: {
      x: { ticks: { maxTicksLimit: 6, autoSkip: true, maxRotation: 0 } },
      y: { beginAtZero: true, title: { display: true, text: unit } },
    },
  });
  makeChart("chart-latency", {
    type: "line", data: { labels: perf.labels, datasets: datasets("latency_p50") }, options: options("seconds"),
  });
  makeChart("chart-throughput", {
    type: "line", data: { labels: perf.labels, datasets: datasets("throughput_p50") }, options: options("tokens / s"),
  });
}

function appsChart() {
  makeChart("chart-apps", {
    type: "bar",
    data: {
      labels: PAGE.apps.map((a) => a.app),
      datasets: [{ label: "Requests", data: PAGE.apps.map((a) => a.requests), backgroundColor: COLORS[0] }],
    },
    options: { ...BASE_OPTIONS, indexAxis: "y", plugins: { legend: { display: false } } },
  });
}

function activityChart() {
  const act = PAGE.activity;
  makeChart("chart-activity", {
    type: "bar",
    data: {
      labels: act.days,
      datasets: act.images_by_provider.map((p, i) => ({
        label: p.provider_name, data: p.images, backgroundColor: COLORS[i % COLORS.length],
      })),
    },
    options: {
      ...BASE_OPTIONS,
      scales: {
        x: { stacked: true, ticks: { maxTicksLimit: 8, maxRotation: 0 } },
        y: { stacked: true, beginAtZero: true, title: { display: true, text: "images" } },
      },
    },
  });
}

function uptimeCharts() {
  PAGE.uptime.forEach((row, i) => {
    // An hour under 5 samples is drawn full height in grey: "no verdict", not "down".
    const values = row.hours.map((h) => (h.uptime === null ? 100 : h.uptime));
    makeChart(`chart-uptime-${i}`, {
      type: "bar",
      data: {
        labels: row.hours.map((h) => h.label),
        datasets: [{
          label: row.provider_name,
          data: values,
          backgroundColor: row.hours.map((h) => LEVEL_COLORS[h.level]),
          categoryPercentage: 1.0,
          barPercentage: 0.8,
        }],
      },
      options: {
        ...BASE_OPTIONS,
        interaction: { mode: "nearest", intersect: true },
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              label: (ctx) => {
                const h = row.hours[ctx.dataIndex];
                const up = h.uptime === null ? "under 5 samples" : `${h.uptime.toFixed(1)}% up`;
                return `${up} (${h.successes} ok, ${h.errors} errors)`;
              },
            },
          },
        },
        scales: {
          x: { ticks: { maxTicksLimit: 6, maxRotation: 0 }, grid: { display: false } },
          y: { min: 0, max: 100, ticks: { stepSize: 50 } },
        },
      },
    });
  });
}

const CHARTS = { performance: performanceCharts, apps: appsChart, activity: activityChart, uptime: uptimeCharts };

// ------------------------------------------------------------------------------ tabs

function showTab(name) {
  const tabs = document.querySelectorAll('[role="tablist"] > a[role="tab"]');
  const known = Array.from(tabs).some((t) => t.dataset.tab === name);
  if (!known) name = "overview";
  for (const tab of tabs) tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  // Charts are drawn when their tab is first shown, so they size to a visible canvas.
  if (CHARTS[name]) CHARTS[name]();
  document.body.dataset.shownTab = name;
}

function setupTabs() {
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  showTab(location.hash.slice(1));
}

function setupExamples() {
  const buttons = document.querySelectorAll("[data-example]");
  for (const button of buttons) {
    button.addEventListener("click", () => {
      for (const b of buttons) b.setAttribute("aria-selected", String(b === button));
      for (const panel of document.querySelectorAll("[data-example-panel]")) {
        panel.hidden = panel.dataset.examplePanel !== button.dataset.example;
      }
    });
  }
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const code = document.querySelector(`[data-testid="example-${button.dataset.copy}"]`).textContent;
      try {
        await navigator.clipboard.writeText(code);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Select the code to copy it";
      }
    });
  }
}

setupCalculator();
setupExamples();
setupTabs();
