// What the browser test and the browser benchmark share: `wgtune serve-web` on a free port,
// Chromium launched headless (Debian's, or CHROMIUM; with WebGPU, or without the flag), the
// steady-state speed of a run, and the same run in the native binary.
import { chromium } from 'playwright-core';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export function startServer(wgtune, webDir, model) {
  const server = spawn(wgtune, ['serve-web', '--port', '0', '--dir', webDir, '--model', model],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let text = '';
    server.stdout.on('data', (d) => {
      text += d;
      const m = text.match(/on (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (m) resolve({ server, url: m[1] });
    });
    server.on('exit', (code) => reject(new Error(`serve-web exited with ${code}`)));
  });
}

const BASE_ARGS = ['--headless', '--no-sandbox', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

export async function launch(webgpu) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [...(webgpu ? [...BASE_ARGS, '--enable-unsafe-webgpu'] : BASE_ARGS),
      ...(process.env.CHROMIUM_ARGS ?? '').split(' ').filter((a) => a)],
  });
}

export function watchConsole(page, problems) {
  page.on('console', (msg) => {
    const text = msg.text();
    if (msg.type() === 'error' || /panicked|device_poison/.test(text)) {
      problems.push(text);
      console.log(`[page ${msg.type()}] ${text}`);
    }
  });
  page.on('pageerror', (e) => { problems.push(String(e)); console.log(`[page error] ${e}`); });
}

// Clicks the page's "Check the kernels on this device" and waits for it: `{ report, error,
// status }`, the report (null if the check could not run), the page's error and its status line.
export async function runKernelCheck(page, timeout = 600000) {
  await page.click('#check');
  await page.waitForFunction(() => window.wgtune.check || window.wgtune.error, null, { timeout });
  return page.evaluate(() => ({ report: window.wgtune.check, error: window.wgtune.error,
    status: document.getElementById('check-status').textContent }));
}

// The Train section's fields from `settings` (`{ r, alpha, lr, steps, maxLen, batch }`, the
// shape nativeTrain takes) and the eval share.
export async function fillSettings(page, settings, evalShare) {
  const fields = { '#r': settings.r, '#alpha': settings.alpha, '#lr': settings.lr, '#steps': settings.steps,
    '#max-len': settings.maxLen, '#batch': settings.batch, '#eval-fraction': evalShare };
  for (const [id, value] of Object.entries(fields)) await page.fill(id, String(value));
}

// Steady-state speed of a run's steps (`{ ms, tokens }` each): the first step compiles the
// pipelines, so it is left out.
export function steadySpeed(steps) {
  const steady = steps.slice(1);
  const secs = steady.reduce((a, s) => a + s.ms, 0) / 1000;
  return { steps_per_s: steady.length / secs, tokens_per_s: steady.reduce((a, s) => a + s.tokens, 0) / secs };
}

// Chromium's SwiftShader as a Vulkan driver (`SWIFTSHADER_ICD`; Debian's chromium package
// ships it): the native binary on it runs the page's kernels on the page's software adapter,
// so the two speeds differ only by what the browser adds (WebGPU's checks, Tint, wasm).
export function swiftshaderIcd() {
  return process.env.SWIFTSHADER_ICD ?? '/usr/lib/chromium/vk_swiftshader_icd.json';
}

// `wgtune train` with the page's settings (`{ r, alpha, lr, steps, maxLen, batch }`, plus the
// page's fixed ones: no dropout, every linear layer, constant rate, seed 42) on `device`, with
// wgpu restricted to the Vulkan driver `icd` when given; returns its speed (as steadySpeed), its
// losses, its wall time and the device it reported.
export function nativeTrain(wgtune, { model, data, out, settings, quant = 'nf4', evalSplit = 0, device = 'wgpu', icd }) {
  fs.rmSync(out, { recursive: true, force: true });
  if (icd && !fs.existsSync(icd)) throw new Error(`no Vulkan driver manifest at ${icd}`);
  // Loaders before 1.3.207 know only the older variable's name.
  const env = icd ? { ...process.env, VK_DRIVER_FILES: icd, VK_ICD_FILENAMES: icd } : process.env;
  const start = Date.now();
  const r = spawnSync(wgtune, ['train', '--model', model, '--data', data, '--out', out, '--device', device,
    '--quant', quant, '--lora-r', String(settings.r), '--lora-alpha', String(settings.alpha),
    '--lora-dropout', '0', '--target-modules', 'all-linear', '--lr', String(settings.lr),
    '--schedule', 'constant', '--warmup-steps', '0', '--weight-decay', '0', '--max-grad-norm', '1',
    '--batch-size', String(settings.batch), '--steps', String(settings.steps),
    '--max-len', String(settings.maxLen), '--eval-split', String(evalSplit), '--seed', '42'],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env });
  if (r.status !== 0) throw new Error(`wgtune train failed (${r.status}):\n${r.stderr}`);
  const wall = (Date.now() - start) / 1000;
  const adapter = /^device: (.*)$/m.exec(r.stderr)?.[1] ?? 'unknown';
  const metrics = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n')
    .map((l) => JSON.parse(l)).filter((m) => m.step !== undefined && m.loss !== undefined);
  // metrics.jsonl keeps running totals and each step's rate: back out each step's tokens and time.
  const steps = metrics.map((m, i) => {
    const tokens = m.tokens - (i > 0 ? metrics[i - 1].tokens : 0);
    return { tokens, ms: (1000 * tokens) / m.tokens_per_s };
  });
  return { ...steadySpeed(steps), wall_s: wall, losses: metrics.map((m) => m.loss), adapter };
}
