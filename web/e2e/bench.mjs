// Browser benchmark on a real model (not part of CI): serves MODEL (default: the cached
// SmolLM2-135M-Instruct GGUF), loads it in Chromium's WebGPU, trains STEPS QLoRA steps on the
// quickstart's date data, and prints load time, per-step time, tokens/s and device memory.
//
//   node web/e2e/bench.mjs                       # SwiftShader (no GPU needed; slow)
//   CHROMIUM_ARGS="--use-angle=vulkan" MODEL=path/to/model.gguf STEPS=10 node web/e2e/bench.mjs
//
// Env: WGTUNE (binary), MODEL, STEPS (5), BATCH (1), MAX_LEN (128), R (16), QUANT (nf4),
// ROWS (all 400 quickstart rows), REPEAT (1: the rows that many times over), EVAL_SHARE (0.01),
// CHECK (set: run the page's kernel check first, and stop if a kernel disagrees), QUERY (the page's settings, e.g. `kernels=gpu&limits=default`: a GPU's kernels at WebGPU's
// default limits), DEVICE_ONLY (set: print the WebGPU adapter and stop), LOAD_ONLY (set: stop after the load),
// PREPARE_ONLY (set: stop once the run is ready), SCREENSHOT (a .png path: the trained page),
// NATIVE (wgpu, cpu, or swiftshader: wgpu on Chromium's SwiftShader as a Vulkan driver, the page's
// own adapter without a GPU; then the same run in `wgtune train` on that device, and the ratio).
//
// On a GPU machine without network or browser: web/e2e/gpu-bundle.sh packs, carries and runs it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fillSettings, launch, nativeTrain, runKernelCheck, startServer, steadySpeed, swiftshaderIcd,
  watchConsole } from './browser.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const env = process.env;
const WGTUNE = env.WGTUNE ?? path.join(os.homedir(), '.cache/wgtune-target/release/wgtune');
const MODEL = env.MODEL ?? path.join(env.WGTUNE_CACHE ?? path.join(os.homedir(), '.cache/wgtune'),
  'SmolLM2-135M-Instruct.Q4_1.gguf');
const STEPS = Number(env.STEPS ?? 5);

const { server, url } = await startServer(WGTUNE, path.join(root, 'web'), MODEL);
try {
  const browser = await launch(true);
  const page = await browser.newPage();
  const problems = [];
  watchConsole(page, problems);
  await page.goto(env.QUERY ? `${url}?${env.QUERY}` : url);
  await page.waitForFunction(() => window.wgtune.ready || window.wgtune.error, null, { timeout: 120000 });
  console.log('device:', JSON.stringify(await page.evaluate(() => window.wgtune.device ?? window.wgtune.error)));
  if (env.CHECK && !env.DEVICE_ONLY) await checkKernels(page);
  if (!env.DEVICE_ONLY) {
    await load(page);
    if (!env.LOAD_ONLY) await train(page);
  }
  if (problems.length > 0) console.log(`${problems.length} console errors`);
  await browser.close();
} finally {
  server.kill();
}

// The page's "Check the kernels" button: every kernel on this device against exact host products.
async function checkKernels(page) {
  const { report, error, status } = await runKernelCheck(page);
  console.log(`kernel check: ${status}`);
  if (error || report?.failures !== 0) {
    throw new Error(`the kernel check failed: ${error ?? `${report?.failures} failures`}`);
  }
}

async function load(page) {
  await page.selectOption('#quant', env.QUANT ?? 'nf4');
  const t0 = Date.now();
  await page.click('#load-default');
  await page.waitForFunction(() => window.wgtune.model || window.wgtune.error, null, { timeout: 1200000 });
  const model = await page.evaluate(() => window.wgtune.model ?? window.wgtune.error);
  console.log(`model: ${JSON.stringify(model)} (${((Date.now() - t0) / 1000).toFixed(1)} s with the download)`);
  const load = await page.evaluate(() => window.wgtune.loading);
  if (load?.steps?.length > 0) {
    const ms = (x) => `${x.toFixed(0)} ms`;
    const pieces = load.steps;
    const layers = pieces.slice(2, -1).sort((a, b) => a - b);
    console.log(`load: start (headers, tokenizer) ${ms(load.start_ms)}, then ${pieces.length} pieces, ` +
      `${ms(pieces.reduce((a, b) => a + b, 0))} in all: embeddings ${ms(pieces[0])}, head ` +
      `${ms(pieces[1])}, layers ${ms(layers[0])}-${ms(layers[layers.length - 1])} ` +
      `(median ${ms(layers[layers.length >> 1])}), norm ${ms(pieces[pieces.length - 1])}`);
  }
}

async function train(page) {
  const rows = fs.readFileSync(path.join(root, 'data/quickstart/train.jsonl'), 'utf8').trim().split('\n');
  const picked = rows.slice(0, Number(env.ROWS ?? rows.length));
  const text = Array(Number(env.REPEAT ?? 1)).fill(picked.join('\n')).join('\n');
  // Set directly: typing megabytes through fill() takes Playwright minutes.
  await page.$eval('#dataset', (el, v) => { el.value = v; }, text);
  const r = Number(env.R ?? 16);
  const settings = { r, alpha: 2 * r, lr: 0.0002, steps: STEPS, maxLen: Number(env.MAX_LEN ?? 128),
    batch: Number(env.BATCH ?? 1) };
  // A few rows for the eval: a forward over all 400 takes long on a software adapter.
  await fillSettings(page, settings, env.EVAL_SHARE ?? '0.01');
  await page.click('#train');
  await page.waitForFunction(() => window.wgtune.run || window.wgtune.error, null, { timeout: 1200000 });
  const prep = await page.evaluate(() => ({ p: window.wgtune.preparing, run: window.wgtune.run }));
  if (prep.run) {
    const ms = prep.p.slice_ms;
    console.log(`data: ${prep.p.rows} rows, ${prep.run.tokens} tokens, read in ${ms.length} slices, ` +
      `${ms.reduce((a, b) => a + b, 0).toFixed(0)} ms in all; slices: median ` +
      `${[...ms].sort((a, b) => a - b)[ms.length >> 1].toFixed(0)} ms, longest ${Math.max(...ms).toFixed(0)} ms, ` +
      `last (with the run's setup) ${ms[ms.length - 1].toFixed(0)} ms; start (the JSON) ${prep.p.start_ms.toFixed(0)} ms`);
  }
  if (env.PREPARE_ONLY) return;
  // Print each step as it lands (a software adapter takes minutes per step on this model).
  let shown = 0;
  const t1 = Date.now();
  for (;;) {
    const now = await page.evaluate(() => ({ steps: window.wgtune.steps, done: window.wgtune.trained,
      error: window.wgtune.error, before: window.wgtune.evalBefore }));
    for (const s of now.steps.slice(shown)) {
      console.log(`[${((Date.now() - t1) / 1000).toFixed(0)} s] step ${s.step}: loss ${s.loss.toFixed(4)} ` +
        `in ${(s.ms / 1000).toFixed(1)} s, ${s.tokens} tokens, device memory ${(s.mem_bytes / 1048576).toFixed(0)} MiB`);
    }
    shown = now.steps.length;
    if (now.done || now.error) break;
    await new Promise((r) => setTimeout(r, 2000));
  }
  const st = await page.evaluate(() => ({ steps: window.wgtune.steps, error: window.wgtune.error,
    before: window.wgtune.evalBefore, after: window.wgtune.evalAfter }));
  if (st.error) throw new Error(st.error);
  if (env.SCREENSHOT) await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
  if (st.steps.length < 2) return;
  const speed = steadySpeed(st.steps);
  console.log(`steady state: ${speed.steps_per_s.toFixed(3)} steps/s, ${speed.tokens_per_s.toFixed(1)} tokens/s; ` +
    `eval ${st.before.loss.toFixed(4)} -> ${st.after.loss.toFixed(4)} (${st.before.tokens} tokens)`);
  if (!env.NATIVE) return;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wgtune-bench-'));
  fs.writeFileSync(path.join(dir, 'train.jsonl'), `${text}\n`);
  const onSwiftshader = env.NATIVE === 'swiftshader';
  const native = nativeTrain(WGTUNE, { model: MODEL, data: path.join(dir, 'train.jsonl'), out: path.join(dir, 'out'),
    settings, quant: env.QUANT ?? 'nf4', evalSplit: env.EVAL_SHARE ?? '0.01',
    device: onSwiftshader ? 'wgpu' : env.NATIVE, icd: onSwiftshader ? swiftshaderIcd() : undefined });
  const worst = Math.max(...native.losses.map((l, i) => Math.abs(l - st.steps[i].loss)));
  console.log(`native (wgtune train on ${native.adapter}): ${native.steps_per_s.toFixed(3)} steps/s, ` +
    `${native.tokens_per_s.toFixed(1)} tokens/s; page / native ${(speed.steps_per_s / native.steps_per_s).toFixed(2)}x; ` +
    `loss curves differ by at most ${worst.toExponential(2)} over ${native.losses.length} steps`);
  fs.rmSync(dir, { recursive: true, force: true });
}
