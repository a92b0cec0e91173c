// What the browser test and the browser benchmark share: `wgtune serve-web` on a free port, and
// Debian's Chromium launched headless (with WebGPU on SwiftShader, or without the flag).
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';

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

