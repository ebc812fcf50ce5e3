// The van's touchscreen in a video consult, in headless Chromium on the agent's own page: a
// crew member logs in, opens the case, starts the video consult, watches the doctor (the
// agent relays the page's WHEP offer to the hub with the van's ticket), then ends it and
// sees the recording stored. axe-core checks the screen with the call live; every target
// must be at least 48x48. Prints one JSON line of what it saw.
//
//   node tests/ui/touchscreen_call.mjs AGENT_ORIGIN CASE_ID SECONDS
import { axe, launch, until } from './browser.mjs';

const [origin, caseId, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg || 8);

const browser = await launch();
const out = {};
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, bypassCSP: true });
  const offHost = [];
  ctx.on('request', (r) => { if (!r.url().startsWith(origin)) offHost.push(r.url()); });
  const page = await ctx.newPage();
  page.on('console', (m) => process.stderr.write(`page: ${m.text()}\n`));
  // The crew's login (break-glass: this van has no PIN roster in the test), then the case.
  await page.goto(`${origin}/health`);
  const login = await page.evaluate(async () => {
    const r = await fetch('/api/v1/crew/break-glass', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'Kim Lee', reason: 'video consult test' }),
    });
    return { status: r.status, body: await r.json() };
  });
  if (login.status !== 201) throw new Error(`break-glass login: ${JSON.stringify(login)}`);
  await page.evaluate(({ token, user, caseId }) => {
    sessionStorage.setItem('medvan.token', token);
    sessionStorage.setItem('medvan.user', user);
    sessionStorage.setItem('medvan.bg', '1');
    sessionStorage.setItem('medvan.case', caseId);
  }, { token: login.body.token, user: login.body.user, caseId });
  await page.goto(`${origin}/ui/`);
  await page.locator('[data-tab="consult"]').click();
  await page.locator('#start-call').waitFor();

  const started = Date.now();
  await page.locator('#start-call').click();
  await until('the call is live', 30000, async () => (await page.locator('#call-state').textContent()).startsWith('Live'));
  out.liveMs = Date.now() - started;
  await until('the doctor\'s picture plays', 20000, () => page.evaluate(() => {
    const v = document.getElementById('call-video');
    return v && v.getVideoPlaybackQuality().totalVideoFrames > 0;
  }));
  out.firstFrameMs = Date.now() - started;
  await axe(page, 'touchscreen in a video consult');
  out.smallTargets = await page.evaluate(() => [...document.querySelectorAll('button')]
    .filter((e) => { const r = e.getBoundingClientRect(); return r.width > 0 && (r.width < 48 || r.height < 48); })
    .map((e) => e.textContent.trim()));
  const framesAt = () => page.evaluate(() => document.getElementById('call-video').getVideoPlaybackQuality().totalVideoFrames);
  const before = await framesAt();
  await page.waitForTimeout(seconds * 1000);
  out.framesPerSecond = (await framesAt() - before) / seconds;
  out.received = await page.evaluate(() => window.medvanCallStats());
  out.size = await page.evaluate(() => {
    const v = document.getElementById('call-video');
    return `${v.videoWidth}x${v.videoHeight}`;
  });
  out.liveText = await page.locator('#call-state').textContent();

  await page.locator('#end-call').click();
  await until('the call ended', 30000, async () => (await page.locator('#call-state').textContent()).startsWith('Video consult ended'));
  out.endedText = await page.locator('#call-state').textContent();
  out.startVisibleAgain = await page.locator('#start-call').isVisible();
  out.offHost = offHost;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
