// The page: wires the form to the wasm Studio (web/src/lib.rs). Every GPU call is awaited, and
// the training loop yields to the event loop between steps, so the page stays responsive and
// Stop acts after the current step. `window.wgtune` mirrors what the page shows, for tests.
import init, { Studio } from './pkg/wgtune_web.js';

const $ = (id) => document.getElementById(id);
const state = {
  ready: false, noWebgpu: null, error: null, device: null, model: null, run: null, check: null,
  steps: [], evalBefore: null, evalAfter: null, training: false, trained: false,
  answers: { adapter: null, base: null },
};
window.wgtune = state;
let studio = null;
let stopRequested = false;
let cancelLoad = false;

function showError(message) {
  state.error = message;
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
}
function clearError() { state.error = null; $('error').hidden = true; }
const mib = (b) => `${(b / 1048576).toFixed(1)} MiB`;
function fillInfo(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => {
    const dt = document.createElement('dt'); dt.textContent = k;
    const dd = document.createElement('dd'); dd.textContent = v;
    return [dt, dd];
  }));
}
// Lets the browser paint and handle input before the next synchronous call (a piece of the
// model load, run setup).
const nextFrame = () => new Promise((r) => setTimeout(r, 0));

async function start() {
  if (!navigator.gpu) {
    state.noWebgpu = 'no-api';
    $('device').textContent = 'No WebGPU.';
    showError('This browser has no WebGPU (navigator.gpu is missing). Use a browser with WebGPU ' +
      'enabled: Chrome or Edge 113+, Safari 26+, or Firefox 141+ on Windows.');
    return;
  }
  const adapter = await navigator.gpu.requestAdapter().catch(() => null);
  if (!adapter) {
    state.noWebgpu = 'no-adapter';
    $('device').textContent = 'No WebGPU adapter.';
    showError('WebGPU is present but the browser offers no adapter: no usable GPU, or WebGPU ' +
      'is blocked for this one (check chrome://gpu).');
    return;
  }
  try {
    await init();
    // ?kernels=gpu (or software) chooses the 4-bit kernels as on that class of adapter;
    // ?limits=default asks for WebGPU's default limits instead of the adapter's.
    const query = new URLSearchParams(location.search);
    if (![null, 'default'].includes(query.get('limits'))) {
      throw `the page's limits= setting: unknown value "${query.get('limits')}" (only "default")`;
    }
    studio = await Studio.create(query.get('kernels') ?? undefined, query.get('limits') === 'default');
  } catch (e) {
    // The studio's own errors say what failed (WebGPU, or a setting in the address).
    showError(`The page could not start: ${e}`);
    return;
  }
  state.device = JSON.parse(studio.device_info());
  // Browsers hide the adapter's name from wgpu; GPUAdapterInfo says what they allow.
  const info = adapter.info ?? {};
  const named = [info.vendor, info.architecture, info.description].filter((s) => s).join(' ');
  if (named) state.device.adapter = named;
  const l = state.device.limits;
  $('device').textContent = `Device: ${state.device.adapter} · max storage binding ` +
    `${mib(l.maxStorageBufferBindingSize)} · max buffer ${mib(l.maxBufferSize)} · ` +
    `workgroup memory ${l.maxComputeWorkgroupStorageSize / 1024} KiB · ` +
    `${l.maxComputeInvocationsPerWorkgroup} invocations · kernels for a ${state.device.kernels} adapter`;
  $('model-files').disabled = false;
  $('check').disabled = false;
  try {
    const listing = await fetch('model/files.json');
    if (listing.ok) {
      state.defaultModel = await listing.json();
      const size = state.defaultModel.files.reduce((s, f) => s + f.size, 0);
      $('default-name').textContent = `${state.defaultModel.name} (${mib(size)})`;
      $('load-default').disabled = false;
    } else {
      $('default-name').textContent = 'no default model is served next to this page';
    }
  } catch {
    $('default-name').textContent = 'no default model is served next to this page';
  }
  state.ready = true;
}

async function loadModel(name, files) {
  clearError();
  cancelLoad = false;
  setBusy(true);
  $('cancel-load').hidden = false;
  $('model-info').replaceChildren();
  state.model = null; state.run = null; state.trained = false;
  state.loading = { pieces: 0, start_ms: 0, steps: [], read: 0, done: false, cancelled: false };
  // Cancel takes effect between pieces: the model so far is dropped, nothing is kept.
  const cancelled = () => {
    if (!cancelLoad) return false;
    studio.reset();
    state.loading.cancelled = true;
    $('train-status').textContent = `loading ${name} cancelled`;
    return true;
  };
  try {
    studio.reset();
    for (const f of files) {
      studio.add_file(f.name, new Uint8Array(await f.bytes()));
      if (cancelled()) return;
    }
    // The model goes to the device a piece per call (embeddings, head, each layer, final
    // norm), yielding between pieces so the page keeps painting and answering.
    const t0 = performance.now();
    const plan = JSON.parse(studio.start_load(name, $('quant').value));
    const startMs = performance.now() - t0;
    const bar = $('load-progress');
    bar.max = plan.pieces; bar.value = 0; bar.hidden = false;
    state.loading.pieces = plan.pieces;
    state.loading.start_ms = startMs;
    let info = null;
    while (!info) {
      $('train-status').textContent = `loading ${name}: ${mib(state.loading.read)} of ` +
        `${mib(plan.total_bytes)}…`;
      await nextFrame();
      if (cancelled()) return;
      const t = performance.now();
      const p = JSON.parse(studio.load_step());
      state.loading.steps.push(performance.now() - t);
      state.loading.read = p.bytes_read;
      bar.value = p.pieces_done;
      info = p.model ?? null;
    }
    state.model = info;
    fillInfo($('model-info'), [
      ['model', info.name], ['format', info.format],
      ['weights', `${(info.params / 1e6).toFixed(1)} M`], ['files', mib(info.file_bytes)],
      ['layers', info.layers], ['hidden', info.hidden], ['vocabulary', info.vocab],
      ['base weights', info.quant], ['device memory', mib(info.device_bytes)],
      ['loaded in', `${(info.load_ms / 1000).toFixed(1)} s, longest piece ` +
        `${Math.max(...state.loading.steps).toFixed(0)} ms`],
    ]);
    $('train-status').textContent = '';
  } catch (e) {
    $('train-status').textContent = '';
    showError(String(e));
  } finally {
    $('load-progress').hidden = true;
    $('cancel-load').hidden = true;
    if (state.loading) state.loading.done = true;
    setBusy(false);
  }
}

function settings() {
  const num = (id) => Number($(id).value);
  return {
    r: num('r'), alpha: num('alpha'), lr: num('lr'), steps: num('steps'),
    max_len: num('max-len'), batch_size: num('batch'), eval_fraction: num('eval-fraction'),
    targets: $('targets').value, dropout: 0, seed: 42,
  };
}

// Runs every kernel on this device against exact products on the host (wgtune::ops::check).
async function checkKernels() {
  clearError();
  setBusy(true);
  $('check-status').textContent = 'checking the kernels on this device…';
  const start = performance.now();
  try {
    const report = JSON.parse(await studio.check_kernels());
    report.ms = performance.now() - start;
    state.check = report;
    // A non-finite error reads as null in JSON: a failure.
    const failed = report.checks.filter((c) => c.error === null || c.error > report.tolerance);
    const kernels = [...new Set(report.checks.map((c) => c.kernel))].join(', ');
    const tolerance = report.tolerance.toExponential(0);
    $('check-status').textContent = failed.length === 0
      ? `${report.checks.length} products agree with the host's to ${tolerance} ` +
        `(worst ${report.worst.toExponential(1)}; ${kernels}) in ${(report.ms / 1000).toFixed(1)} s`
      : `${failed.length} of ${report.checks.length} products disagree with the host's`;
    if (failed.length > 0) {
      showError('Kernels that disagree with the host on this device (relative error, tolerance ' +
        `${tolerance}):\n` + failed.slice(0, 12).map((c) =>
          `${c.product} by ${c.kernel} (${c.strategy}), ${c.shape}: ${c.error ?? 'not finite'}`).join('\n'));
    }
  } catch (e) {
    $('check-status').textContent = '';
    showError(`The kernel check failed: ${e}`);
  }
  setBusy(false);
}

function setBusy(busy) {
  const hasModel = state.model !== null;
  $('load-default').disabled = busy || !state.defaultModel;
  $('model-files').disabled = busy;
  $('check').disabled = busy || studio === null;
  $('train').disabled = busy || !hasModel;
  $('send').disabled = busy || !hasModel;
  $('download').disabled = busy || !state.run || state.steps.length === 0;
  $('stop').disabled = !state.training;
}

async function train() {
  clearError();
  stopRequested = false;
  state.steps = []; state.evalBefore = null; state.evalAfter = null; state.trained = false;
  state.stopped = false;
  drawChart();
  setBusy(true);
  try {
    state.run = null;
    // The rows are tokenized a slice (about 50 ms) per call, yielding between slices.
    const t0 = performance.now();
    const plan = JSON.parse(studio.start_prepare($('dataset').value, JSON.stringify(settings())));
    state.preparing = { rows: plan.rows, start_ms: performance.now() - t0, slices: 0, read: 0, slice_ms: [] };
    for (;;) {
      $('train-status').textContent = `reading the data: ${state.preparing.read} of ${plan.rows} rows…`;
      await nextFrame();
      const t = performance.now();
      const p = JSON.parse(studio.prepare_step());
      state.preparing.slice_ms.push(performance.now() - t);
      state.preparing.slices += 1;
      state.preparing.read = p.rows_read;
      if (p.run) { state.run = p.run; break; }
    }
    state.training = true;
    setBusy(true);
    $('train-status').textContent = 'eval before training…';
    state.evalBefore = JSON.parse(await studio.evaluate());
    const started = performance.now();
    while (!stopRequested) {
      const step = JSON.parse(await studio.train_step());
      state.steps.push(step);
      const secs = (performance.now() - started) / 1000;
      showStats(step, secs);
      drawChart();
      if (step.done) break;
      await nextFrame();
    }
    const secs = (performance.now() - started) / 1000;
    $('train-status').textContent = 'eval after training…';
    state.evalAfter = JSON.parse(await studio.evaluate());
    state.training = false;
    state.stopped = stopRequested;
    if (state.steps.length > 0) showStats(state.steps[state.steps.length - 1], secs);
    $('train-status').textContent = stopRequested
      ? `stopped after ${state.steps.length} steps`
      : `done: ${state.steps.length} steps`;
    state.trained = true;
  } catch (e) {
    showError(String(e));
    $('train-status').textContent = '';
  } finally {
    state.training = false;
    setBusy(false);
  }
}

function showStats(step, secs) {
  const tokens = state.steps.reduce((s, x) => s + x.tokens, 0);
  const pairs = [
    ['step', `${step.step} / ${step.total_steps}`], ['loss', step.loss.toFixed(4)],
    ['steps/s', (state.steps.length / secs).toFixed(3)], ['tokens/s', (tokens / secs).toFixed(1)],
    ['last step', `${step.ms.toFixed(0)} ms`], ['grad norm', step.grad_norm.toFixed(3)],
    ['device memory', mib(step.mem_bytes)],
    ['data', state.run.train_rows === state.run.rows
      ? `${state.run.rows} ${state.run.format} rows, eval on all of them`
      : `${state.run.train_rows} train / ${state.run.eval_rows} eval ${state.run.format} rows`],
  ];
  if (state.evalBefore) pairs.push(['eval loss before', state.evalBefore.loss.toFixed(4)]);
  if (state.evalAfter) pairs.push(['eval loss after', state.evalAfter.loss.toFixed(4)]);
  fillInfo($('stats'), pairs);
  $('train-status').textContent = state.training ? `training… step ${step.step} of ${step.total_steps}` : '';
}

function drawChart() {
  const c = $('chart');
  const g = c.getContext('2d');
  const [w, h, pad] = [c.width, c.height, 36];
  g.clearRect(0, 0, w, h);
  g.font = '12px system-ui';
  g.fillStyle = '#6b7385';
  g.strokeStyle = '#d9dde5';
  g.strokeRect(pad, 8, w - pad - 8, h - pad - 8);
  const losses = state.steps.map((s) => s.loss);
  if (losses.length === 0) { g.fillText('loss per step', pad + 8, 26); return; }
  const total = state.steps[0].total_steps;
  const [lo, hi] = [Math.min(...losses), Math.max(...losses)];
  const span = Math.max(hi - lo, 1e-6);
  const x = (i) => pad + ((w - pad - 8) * i) / Math.max(total - 1, 1);
  const y = (v) => 8 + (h - pad - 8) * (1 - (v - lo) / span);
  g.fillText(hi.toFixed(3), 2, 18);
  g.fillText(lo.toFixed(3), 2, h - pad);
  g.fillText(`loss per step, 1 … ${total}`, pad, h - 10);
  g.strokeStyle = '#2f6fdb';
  g.lineWidth = 2;
  g.beginPath();
  losses.forEach((v, i) => (i === 0 ? g.moveTo(x(i), y(v)) : g.lineTo(x(i), y(v))));
  g.stroke();
}

async function send() {
  clearError();
  const prompt = $('prompt').value;
  if (!prompt) return;
  setBusy(true);
  try {
    const runs = state.run && state.steps.length > 0
      ? [['adapter', true], ['base', false]] : [['base', false]];
    for (const [which, withAdapter] of runs) {
      const out = $(`answer-${which}`);
      out.textContent = '';
      const result = JSON.parse(await studio.generate(prompt, Number($('max-new').value),
        Number($('temperature').value), $('as-chat').checked, withAdapter,
        (piece) => { out.textContent += piece; }));
      state.answers[which] = result;
    }
  } catch (e) {
    showError(String(e));
  } finally {
    setBusy(false);
  }
}

async function download() {
  clearError();
  try {
    const zip = await studio.adapter_zip();
    const url = URL.createObjectURL(new Blob([zip], { type: 'application/zip' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = 'wgtune-adapter.zip';
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    $('download-status').textContent = `${mib(zip.length)} · unzip and pass the adapter folder to wgtune --adapter`;
  } catch (e) {
    showError(String(e));
  }
}

$('load-default').addEventListener('click', async () => {
  const m = state.defaultModel;
  const files = m.files.map((f) => ({
    name: f.name,
    bytes: async () => {
      const r = await fetch(`model/${encodeURIComponent(f.name)}`);
      if (!r.ok) throw new Error(`model/${f.name}: HTTP ${r.status}`);
      return r.arrayBuffer();
    },
  }));
  await loadModel(m.name, files);
});
$('model-files').addEventListener('change', async (ev) => {
  const picked = [...ev.target.files];
  if (picked.length === 0) return;
  const files = picked.map((f) => ({ name: f.name, bytes: () => f.arrayBuffer() }));
  const name = picked.length === 1 ? picked[0].name : picked.map((f) => f.name).join(' + ');
  await loadModel(name, files);
});
$('dataset-file').addEventListener('change', async (ev) => {
  const f = ev.target.files[0];
  if (f) $('dataset').value = await f.text();
});
$('train').addEventListener('click', train);
$('check').addEventListener('click', checkKernels);
$('cancel-load').addEventListener('click', () => { cancelLoad = true; });
$('stop').addEventListener('click', () => { stopRequested = true; $('train-status').textContent = 'stopping after this step…'; });
$('send').addEventListener('click', send);
$('prompt').addEventListener('keydown', (e) => { if (e.key === 'Enter' && !$('send').disabled) send(); });
$('download').addEventListener('click', download);
drawChart();
start().catch((e) => showError(String(e)));
