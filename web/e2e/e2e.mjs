// End-to-end test of the browser demo, run by .ci/run (after web/build.sh):
//
//  1. builds a tiny model: the fixtures' random 2-layer LLaMA (vocab 256) with a byte-level
//     tokenizer of exactly 256 tokens, so text rows and chat work on it;
//  2. serves web/ with it as the default model (`wgtune serve-web`);
//  3. in Debian's Chromium, headless, WebGPU on SwiftShader: compiles every kernel
//     specialization in the browser's WebGPU, runs the page's kernel check (every kernel
//     against exact products on the host), loads the default model, then the
//     same files through the file picker, trains 24 steps on a small text dataset, asserts the
//     loss fell, generates text with and without the adapter, downloads the adapter zip, and
//     saves a screenshot (out/trained.png);
//  4. checks with the native binary that the adapter loads and gives the eval loss the page
//     reported (within 1e-3), and that `wgtune train` with the same settings follows the same
//     loss curve on llvmpipe and on Chromium's SwiftShader as a Vulkan driver (the page's own
//     adapter, so that the speeds compare the browser with the native binary alone);
//  5. runs the page again with the kernels a page on a real GPU takes and WebGPU's default
//     limits (`?kernels=gpu&limits=default`): its kernel check passes, and the same training
//     run follows the same loss curve;
//  6. starts Chromium without the WebGPU flag and checks the page says there is no WebGPU.
//
// Env: WGTUNE (the native binary), FIXTURES (../shared/fixtures), OUT (default web/e2e/out),
// SWIFTSHADER_ICD (Chromium's SwiftShader Vulkan manifest; /usr/lib/chromium/vk_swiftshader_icd.json).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fillSettings, launch, nativeTrain, runKernelCheck, startServer, steadySpeed, swiftshaderIcd,
  watchConsole } from './browser.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const WGTUNE = process.env.WGTUNE ?? path.join(process.env.HOME, '.cache/wgtune-target/release/wgtune');
const FIXTURES = path.resolve(process.env.FIXTURES ?? path.join(root, '../shared/fixtures'));
const OUT = path.resolve(process.env.OUT ?? path.join(here, 'out'));
const SETTINGS = { r: 8, alpha: 16, lr: 0.01, steps: 24, maxLen: 64, batch: 4 };

function check(ok, message) {
  if (!ok) throw new Error(`FAILED: ${message}`);
  console.log(`ok: ${message}`);
}

// GPT-2's byte <-> unicode map, which the ByteLevel pre-tokenizer and decoder use.
function bytesToUnicode() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  const map = new Array(256);
  bs.forEach((b, i) => { map[b] = String.fromCodePoint(cs[i]); });
  return map;
}

function tinyModel(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  for (const f of ['config.json', 'model.safetensors']) {
    fs.copyFileSync(path.join(FIXTURES, 'tiny-llama/model-f32', f), path.join(dir, f));
  }
  const vocab = {};
  bytesToUnicode().forEach((ch, b) => { vocab[ch] = b; });
  const tokenizer = {
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
      end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false,
      vocab, merges: [],
    },
  };
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
  return dir;
}

const ROWS = [
  'the cat sat on the mat.', 'the dog sat on the log.', 'a cat and a dog sat.',
  'the cat saw the dog.', 'the dog saw the cat.', 'on the mat sat the cat.',
  'the mat was red.', 'the log was wet.', 'a red mat, a wet log.', 'the cat ran to the mat.',
  'the dog ran to the log.', 'a cat, a dog, a mat.',
];

// Clicks the page's "Check the kernels" button and waits for its report: every product within
// tolerance, and as many as the native test counts.
async function checkKernels(page) {
  const { report, error, status } = await runKernelCheck(page, 300000);
  check(!error && report?.failures === 0 && report.checks.length === 199 &&
    report.checks.every((c) => c.error !== null && c.error <= report.tolerance),
  `the page's kernel check passes on ${report?.adapter_class ?? '?'}: ${status}${error ? `\n${error}` : ''}`);
  const kernels = [...new Set(report.checks.map((c) => c.kernel))];
  return { report, kernels, worst: report.worst, ms: report.ms };
}

function wgtune(args) {
  const r = spawnSync(WGTUNE, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`wgtune ${args.join(' ')} failed:\n${r.stderr}`);
  return r.stdout;
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const modelDir = tinyModel(path.join(OUT, 'tiny-model'));
  const dataPath = path.join(OUT, 'data.jsonl');
  fs.writeFileSync(dataPath, ROWS.map((t) => JSON.stringify({ text: t })).join('\n') + '\n');
  const { server, url } = await startServer(WGTUNE, path.join(root, 'web'), modelDir);
  const results = {};
  try {
    // --- The trained page.
    const browser = await launch(true);
    const page = await browser.newPage({ acceptDownloads: true, viewport: { width: 1100, height: 900 } });
    const problems = [];
    watchConsole(page, problems);
    await page.goto(url);
    await page.waitForFunction(() => window.wgtune.ready || window.wgtune.error, null, { timeout: 120000 });
    const device = await page.evaluate(() => window.wgtune.device);
    check(device !== null, `WebGPU started: ${JSON.stringify(device)}`);
    results.device = device;

    // Every kernel specialization compiles in Chromium's WebGPU (Tint's uniformity analysis, and
    // a pipeline within the default limits), including those the run below never launches.
    const shaders = await page.evaluate(async () => {
      const { shaderSources } = await import('./pkg/wgtune_web.js');
      const list = JSON.parse(shaderSources());
      const adapter = await navigator.gpu.requestAdapter();
      const gpu = await adapter.requestDevice();
      const failures = [];
      for (const { name, code } of list) {
        gpu.pushErrorScope('validation');
        const module = gpu.createShaderModule({ code });
        const info = await module.getCompilationInfo();
        const errors = info.messages.filter((m) => m.type === 'error')
          .map((m) => `${m.lineNum}:${m.linePos} ${m.message}`);
        try {
          await gpu.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
        } catch (e) {
          errors.push(String(e?.message ?? e));
        }
        const scoped = await gpu.popErrorScope();
        if (scoped) errors.push(scoped.message);
        if (errors.length > 0) failures.push(`${name}: ${errors.join('; ')}`);
      }
      gpu.destroy();
      return { count: list.length, failures };
    });
    check(shaders.count >= 10 && shaders.failures.length === 0,
      `all ${shaders.count} kernel specializations compile in the browser's WebGPU at default limits` +
      (shaders.failures.length ? `:\n${shaders.failures.join('\n')}` : ''));

    // Every kernel runs in the page against exact products on the host (the page's own
    // "Check the kernels" button): Tint and the browser's driver sit between these kernels and
    // the native ones the Rust tests check.
    const checked = await checkKernels(page);
    check(device.kernels === 'software' && checked.kernels.includes('tile'),
      `SwiftShader chooses the software adapter's kernels (${device.kernels}: ${checked.kernels.join(', ')})`);
    results.kernel_check = checked;

    // A timer chain stands for the user: it counts the turns the event loop gave to other work
    // while a model load was under way. A load in one call would leave it at 0 (how many turns
    // it gets is the browser's call: its timers are clamped to 4 ms, the load's yields are not).
    await page.evaluate(() => {
      window.loadTicks = 0;
      const tick = () => {
        if (window.wgtune.loading && !window.wgtune.loading.done) window.loadTicks += 1;
        setTimeout(tick, 0);
      };
      tick();
    });
    await page.click('#load-default');
    await page.waitForFunction(() => window.wgtune.model || window.wgtune.error, null, { timeout: 120000 });
    const viaDefault = await page.evaluate(() => window.wgtune.model);
    check(viaDefault && viaDefault.vocab === 256 && viaDefault.layers === 2,
      `default model loaded: ${viaDefault?.name}, ${viaDefault?.format}, ${viaDefault?.params} weights`);
    const loading = await page.evaluate(() => ({ ...window.wgtune.loading, ticks: window.loadTicks }));
    check(loading.steps.length === 5 && loading.ticks >= 1,
      `the load went a piece at a time (${loading.steps.length} pieces, longest ` +
      `${Math.max(...loading.steps).toFixed(0)} ms) and the page ran ${loading.ticks} other tasks meanwhile`);

    // Cancel mid-load: an observer clicks Cancel as soon as the bar shows two pieces done (it
    // runs before the page's next yield ends, so the load stops at exactly two pieces).
    await page.evaluate(() => {
      const bar = document.getElementById('load-progress');
      const watch = new MutationObserver(() => {
        if (bar.value >= 2) { watch.disconnect(); document.getElementById('cancel-load').click(); }
      });
      watch.observe(bar, { attributes: true, attributeFilter: ['value'] });
    });
    await page.click('#load-default');
    await page.waitForFunction(() => window.wgtune.loading.done, null, { timeout: 120000 });
    const cancel = await page.evaluate(() => ({ loading: window.wgtune.loading, model: window.wgtune.model,
      error: window.wgtune.error, status: document.getElementById('train-status').textContent,
      trainOff: document.getElementById('train').disabled }));
    check(cancel.loading.cancelled && cancel.loading.steps.length === 2 && cancel.model === null &&
      cancel.error === null && cancel.trainOff && /cancelled/.test(cancel.status),
      `Cancel stops a load between pieces (after ${cancel.loading.steps.length} of ` +
      `${cancel.loading.pieces}): "${cancel.status}", no model, Train disabled`);

    await page.setInputFiles('#model-files', ['config.json', 'model.safetensors', 'tokenizer.json']
      .map((f) => path.join(modelDir, f)));
    await page.waitForFunction(() => window.wgtune.model?.name?.includes('+') || window.wgtune.error,
      null, { timeout: 120000 });
    const model = await page.evaluate(() => window.wgtune.model);
    check(model && model.has_tokenizer && model.quant === 'nf4', `picked files loaded as NF4: ${model?.name}`);

    await page.fill('#dataset', fs.readFileSync(dataPath, 'utf8'));
    await fillSettings(page, SETTINGS, 0);
    const trainStart = Date.now();
    await page.click('#train');
    await page.waitForFunction(() => window.wgtune.trained || window.wgtune.error, null, { timeout: 900000 });
    const trainWall = (Date.now() - trainStart) / 1000;
    const st = await page.evaluate(() => ({
      error: window.wgtune.error, steps: window.wgtune.steps,
      evalBefore: window.wgtune.evalBefore, evalAfter: window.wgtune.evalAfter,
    }));
    check(!st.error, `training ran without an error (${st.error ?? 'none'})`);
    check(st.steps.length === SETTINGS.steps, `${st.steps.length} steps trained`);
    const losses = st.steps.map((s) => s.loss);
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(losses.slice(0, 4));
    const last = mean(losses.slice(-4));
    check(last < first * 0.8, `loss fell: first 4 steps ${first.toFixed(4)} -> last 4 ${last.toFixed(4)}`);
    check(st.evalAfter.loss < st.evalBefore.loss,
      `eval loss fell: ${st.evalBefore.loss.toFixed(4)} -> ${st.evalAfter.loss.toFixed(4)}`);
    results.page = {
      ...steadySpeed(st.steps),
      first_step_ms: st.steps[0].ms,
      train_wall_s: trainWall,
      losses, eval_before: st.evalBefore.loss, eval_after: st.evalAfter.loss,
    };

    await page.fill('#prompt', 'the cat');
    await page.uncheck('#as-chat');
    await page.fill('#max-new', '24');
    await page.click('#send');
    await page.waitForFunction(() => (window.wgtune.answers.adapter && window.wgtune.answers.base) || window.wgtune.error,
      null, { timeout: 300000 });
    const answers = await page.evaluate(() => window.wgtune.answers);
    check(answers.adapter && answers.adapter.tokens > 0 && answers.adapter.text.length > 0,
      `generated with the adapter: ${JSON.stringify(answers.adapter?.text)} (${answers.adapter?.tokens_per_s?.toFixed(1)} tokens/s)`);
    check(answers.base && answers.base.tokens > 0, `generated without it: ${JSON.stringify(answers.base?.text)}`);
    results.page.generate_tokens_per_s = answers.adapter.tokens_per_s;

    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
    const zipPath = path.join(OUT, 'adapter.zip');
    await download.saveAs(zipPath);
    check(fs.statSync(zipPath).size > 0, `adapter downloaded (${fs.statSync(zipPath).size} bytes)`);
    await page.screenshot({ path: path.join(OUT, 'trained.png'), fullPage: true });

    // --- Clear errors, and Stop.
    const errorAfter = async (action) => {
      await page.evaluate(() => { window.wgtune.error = null; });
      await action();
      await page.waitForFunction(() => window.wgtune.error, null, { timeout: 120000 });
      return page.evaluate(() => window.wgtune.error);
    };
    let err = await errorAfter(async () => {
      await page.fill('#dataset', '{"text": "fine"}\n{"text": 5}\n');
      await page.click('#train');
    });
    check(/dataset:2/.test(err), `a bad dataset row is named: ${err}`);
    await page.fill('#dataset', fs.readFileSync(dataPath, 'utf8'));
    await page.fill('#batch', '300000');
    err = await errorAfter(() => page.click('#train'));
    check(/maxStorageBufferBindingSize is 1024\.0 MiB/.test(err) && /over/.test(err),
      `a step past the device's limits is refused: ${err}`);
    await page.fill('#batch', String(SETTINGS.batch));
    const corrupt = path.join(OUT, 'corrupt-model');
    fs.rmSync(corrupt, { recursive: true, force: true });
    fs.mkdirSync(corrupt);
    fs.copyFileSync(path.join(modelDir, 'config.json'), path.join(corrupt, 'config.json'));
    fs.writeFileSync(path.join(corrupt, 'model.safetensors'),
      fs.readFileSync(path.join(modelDir, 'model.safetensors')).subarray(0, 5000));
    err = await errorAfter(() => page.setInputFiles('#model-files',
      ['config.json', 'model.safetensors'].map((f) => path.join(corrupt, f))));
    check(/model\.safetensors/.test(err) && /safetensors/.test(err), `a truncated model file is named: ${err}`);
    check(await page.isDisabled('#train'), 'Train is disabled without a model');

    await page.click('#load-default');
    await page.waitForFunction(() => window.wgtune.model, null, { timeout: 120000 });
    await page.fill('#steps', '500');
    await page.click('#train');
    await page.waitForFunction(() => window.wgtune.steps.length >= 2, null, { timeout: 300000 });
    await page.click('#stop');
    await page.waitForFunction(() => window.wgtune.trained || window.wgtune.error, null, { timeout: 300000 });
    const stopped = await page.evaluate(() => ({ n: window.wgtune.steps.length, stopped: window.wgtune.stopped,
      error: window.wgtune.error, status: document.getElementById('train-status').textContent }));
    check(stopped.stopped && !stopped.error && stopped.n < 10, `Stop ends the run after the current step: ${stopped.status}`);
    check(problems.length === 0, `no console errors or panics (${problems.length})`);

    // --- The kernels a page on a real GPU takes (the group kernel up to 32 rows, dequantize+
    // matmul above), forced on SwiftShader, on a device with WebGPU's default limits (SwiftShader
    // offers 1 GiB bindings and 32 KiB of workgroup memory): checked, and the same training run.
    // A setting the page does not know is an error that names it, not a silent default.
    for (const [query, named] of [['kernels=fast', /kernels=.*gpu, llvmpipe or software/], ['limits=max', /limits=.*"max"/]]) {
      const bad = await browser.newPage();
      await bad.goto(`${url}?${query}`);
      await bad.waitForFunction(() => window.wgtune.ready || window.wgtune.error, null, { timeout: 120000 });
      const shown = await bad.evaluate(() => window.wgtune.error);
      check(named.test(shown ?? '') && await bad.isDisabled('#check'), `?${query} is refused: ${shown}`);
      await bad.close();
    }
    const gpuPage = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const gpuProblems = [];
    watchConsole(gpuPage, gpuProblems);
    await gpuPage.goto(`${url}?kernels=gpu&limits=default`);
    await gpuPage.waitForFunction(() => window.wgtune.ready || window.wgtune.error, null, { timeout: 120000 });
    const gpuDevice = await gpuPage.evaluate(() => window.wgtune.device);
    const dl = gpuDevice?.limits ?? {};
    check(dl.maxStorageBufferBindingSize === 128 << 20 && dl.maxBufferSize === 256 << 20 &&
      dl.maxComputeWorkgroupStorageSize === 16384 && dl.maxComputeInvocationsPerWorkgroup === 256,
    `?limits=default opens the device at WebGPU's default limits: ${JSON.stringify(dl)}`);
    const gpuChecked = await checkKernels(gpuPage);
    const gpuAuto = [...new Set(gpuChecked.report.checks.filter((c) => c.strategy === 'auto').map((c) => c.kernel))];
    check(gpuDevice?.kernels === 'gpu' && gpuAuto.includes('group') && gpuAuto.includes('dequant_matmul') &&
      !gpuAuto.includes('tile'), `?kernels=gpu chooses a GPU's kernels on SwiftShader (auto ran ${gpuAuto.join(', ')})`);
    await gpuPage.click('#load-default');
    await gpuPage.waitForFunction(() => window.wgtune.model || window.wgtune.error, null, { timeout: 120000 });
    check(await gpuPage.evaluate(() => window.wgtune.model?.quant === 'nf4'), 'the default model loaded as NF4');
    await gpuPage.fill('#dataset', fs.readFileSync(dataPath, 'utf8'));
    await fillSettings(gpuPage, SETTINGS, 0);
    await gpuPage.click('#train');
    await gpuPage.waitForFunction(() => window.wgtune.trained || window.wgtune.error, null, { timeout: 900000 });
    const gpuRun = await gpuPage.evaluate(() => ({ error: window.wgtune.error, steps: window.wgtune.steps,
      evalAfter: window.wgtune.evalAfter }));
    check(!gpuRun.error && gpuRun.steps.length === SETTINGS.steps, `the GPU's kernels trained ${gpuRun.steps.length} steps`);
    const gpuWorst = Math.max(...gpuRun.steps.map((x, i) => Math.abs(x.loss - losses[i])));
    const gpuEval = Math.abs(gpuRun.evalAfter.loss - st.evalAfter.loss);
    check(gpuWorst < 1e-3 && gpuEval < 1e-3, `and follow the software kernels' loss curve (worst step diff ` +
      `${gpuWorst.toExponential(2)}, eval ${gpuEval.toExponential(2)})`);
    await gpuPage.fill('#prompt', 'the cat');
    await gpuPage.uncheck('#as-chat');
    await gpuPage.fill('#max-new', '24');
    await gpuPage.click('#send');
    await gpuPage.waitForFunction(() => window.wgtune.answers.adapter || window.wgtune.error, null, { timeout: 300000 });
    const gpuAnswer = await gpuPage.evaluate(() => window.wgtune.answers.adapter);
    check(gpuAnswer?.tokens > 0, `and generate (one row a token: the group kernel): ${JSON.stringify(gpuAnswer?.text)}` +
      ` (${gpuAnswer.text === answers.adapter.text ? 'the same text as' : 'not the text of'} the software kernels)`);
    check(gpuProblems.length === 0, `no console errors or panics with the GPU's kernels (${gpuProblems.length})`);
    results.page_gpu_kernels = { ...steadySpeed(gpuRun.steps), worst_loss_diff: gpuWorst, eval_diff: gpuEval };
    await browser.close();

    // --- The adapter in the native binary.
    const unzipped = path.join(OUT, 'unzipped');
    fs.rmSync(unzipped, { recursive: true, force: true });
    const py = spawnSync('python3', ['-m', 'zipfile', '-e', zipPath, unzipped], { encoding: 'utf8' });
    check(py.status === 0, `python's zipfile extracts the archive (CRCs checked) ${py.stderr}`);
    const evalOut = JSON.parse(wgtune(['eval', '--model', modelDir, '--adapter', path.join(unzipped, 'adapter'),
      '--data', dataPath, '--max-len', String(SETTINGS.maxLen), '--quant', 'nf4', '--device', 'cpu', '--json']));
    const diff = Math.abs(evalOut.loss - st.evalAfter.loss);
    check(diff < 1e-3, `native eval of the downloaded adapter ${evalOut.loss.toFixed(6)} vs page ` +
      `${st.evalAfter.loss.toFixed(6)} (diff ${diff.toExponential(2)})`);
    results.native_eval = evalOut.loss;

    // --- The same run natively: on the machine's own Vulkan adapter (llvmpipe without a GPU),
    // then on the page's adapter, Chromium's SwiftShader, where the speeds differ only by what
    // the browser adds. Speed, and the loss curve.
    const follows = (name, run) => {
      const worst = Math.max(...run.losses.map((l, i) => Math.abs(l - losses[i])));
      check(run.losses.length === losses.length && worst < 1e-3,
        `native run on ${run.adapter} follows the page's loss curve (worst step diff ${worst.toExponential(2)})`);
      results[name] = { ...run, worst_loss_diff: worst };
    };
    follows('native', nativeTrain(WGTUNE, { model: modelDir, data: dataPath, out: path.join(OUT, 'native-run'),
      settings: SETTINGS }));
    const swiftshader = nativeTrain(WGTUNE, { model: modelDir, data: dataPath,
      out: path.join(OUT, 'native-swiftshader-run'), settings: SETTINGS, icd: swiftshaderIcd() });
    check(/swiftshader/i.test(swiftshader.adapter), `the native binary runs on Chromium's SwiftShader (${swiftshader.adapter})`);
    follows('native_swiftshader', swiftshader);

    // --- No WebGPU.
    const plain = await launch(false);
    const p2 = await plain.newPage();
    await p2.goto(url);
    await p2.waitForFunction(() => window.wgtune.noWebgpu || window.wgtune.ready || window.wgtune.error,
      null, { timeout: 60000 });
    const noGpu = await p2.evaluate(() => ({ kind: window.wgtune.noWebgpu, error: window.wgtune.error }));
    const shown = await p2.textContent('#error');
    check(noGpu.kind !== null && /WebGPU/.test(shown) && await p2.isVisible('#error'),
      `without the WebGPU flag the page says so (${noGpu.kind}): ${shown}`);
    check(await p2.isDisabled('#train'), 'and Train stays disabled');
    await plain.close();
  } finally {
    server.kill();
  }
  fs.writeFileSync(path.join(OUT, 'results.json'), JSON.stringify(results, null, 2));
  const r = results;
  console.log(`\nspeed (tiny model, batch ${SETTINGS.batch}, steady state after step 1):`);
  console.log(`  page (Chromium WebGPU, ${r.device.adapter}): ${r.page.steps_per_s.toFixed(2)} steps/s, ${r.page.tokens_per_s.toFixed(0)} tokens/s (first step ${(r.page.first_step_ms / 1000).toFixed(1)} s)`);
  for (const n of [r.native, r.native_swiftshader]) {
    console.log(`  native (wgtune train on ${n.adapter}): ${n.steps_per_s.toFixed(2)} steps/s, ` +
      `${n.tokens_per_s.toFixed(0)} tokens/s; page / native ${(r.page.steps_per_s / n.steps_per_s).toFixed(2)}x`);
  }
  const g = r.page_gpu_kernels;
  console.log(`  page with a GPU's kernels at default limits (?kernels=gpu&limits=default), same adapter: ${g.steps_per_s.toFixed(2)} steps/s, ` +
    `${g.tokens_per_s.toFixed(0)} tokens/s`);
  console.log(`results and screenshot in ${OUT}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
