// The doctors' web app in a live call and on the map, in headless Chromium with its fake
// camera and microphone: a doctor logs in (password, then authenticator enrolment), opens
// the case, joins its call (the van's picture plays, the doctor's camera goes out), sees
// who is in it, leaves, and opens the map (the zones drawn). axe-core checks each page.
// Prints one JSON line.
//
//   node tests/ui/call_app.mjs HUB_ORIGIN CASE_ID USER PASSWORD
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const [origin, caseId, user, password] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

function totp(secretB32, at = Date.now()) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secretB32.replace(/=+$/, '')) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(Math.floor(at / 30000)));
  const mac = crypto.createHmac('sha1', key).update(msg).digest();
  const off = mac[mac.length - 1] & 0xf;
  return String((mac.readUInt32BE(off) & 0x7fffffff) % 1000000).padStart(6, '0');
}

async function until(what, ms, fn) {
  const started = Date.now();
  for (;;) {
    try { const v = await fn(); if (v) return v; } catch { /* not yet */ }
    if (Date.now() - started > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function axe(page, where) {
  await page.addScriptTag({ content: AXE });
  const r = await page.evaluate(async () => (await window.axe.run(document, { resultTypes: ['violations'] })).violations
    .filter((v) => ['serious', 'critical'].includes(v.impact)).map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(' ')}`));
  if (r.length) throw new Error(`axe on ${where}: ${r.join('; ')}`);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream'],
});
const out = {};
try {
  // axe is injected as a script: the test may bypass the page's policy, the app never does.
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 1000 }, bypassCSP: true });
  const offHost = [];
  ctx.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:') && !r.url().startsWith('blob:')) offHost.push(r.url()); });
  const page = await ctx.newPage();
  await page.goto(`${origin}/`);
  await page.locator('#org').fill('org-north');
  await page.locator('#username').fill(user);
  await page.locator('#password').fill(password);
  await page.locator('#login').click();
  await page.locator('#totp-secret').waitFor();
  const secret = (await page.locator('#totp-secret').textContent()).trim();
  await page.locator('#enrol-code').fill(totp(secret));
  await page.getByRole('button', { name: 'Confirm' }).click();
  await page.locator('#nav-map').waitFor({ state: 'visible' });

  await page.goto(`${origin}/#/case/${caseId}`);
  await page.locator('#join-call').click();
  const joined = Date.now();
  await until('the van\'s picture plays', 20000, () => page.evaluate(() => {
    const v = document.querySelector('.call video');
    return v && v.videoWidth >= 640 && v.currentTime > 1;
  }));
  out.van_video_ms = Date.now() - joined;
  await until('the call lists the van', 10000, async () => (await page.locator('#call-people').textContent()).includes('ben.medic'));
  out.people = (await page.locator('#call-people').textContent()).trim();
  out.own_camera = await page.evaluate(() => !!document.querySelector('.call video.mine')?.srcObject);
  await axe(page, 'case with a call');
  await page.locator('#leave-call').click();
  await page.locator('#join-call').waitFor();
  out.left = true;

  await page.goto(`${origin}/#/map`);
  await until('the map shows the zones', 10000, async () => (await page.locator('.map svg circle').count()) >= 1);
  out.zones_drawn = await page.locator('.map svg [class^="zone-"]').count();
  await axe(page, 'map');
  out.off_host = offHost;
  process.stdout.write(`${JSON.stringify(out)}\n`);
} finally {
  await browser.close();
}
