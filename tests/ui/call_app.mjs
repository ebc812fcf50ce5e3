// The doctors' web app in a live call and on the map, in headless Chromium with its fake
// camera and microphone: a doctor logs in (password, then authenticator enrolment), opens
// the case, joins its call (the van's picture plays, the doctor's camera goes out), sees
// who is in it, leaves, and opens the map (the zones drawn). axe-core checks each page.
// Prints one JSON line.
//
//   node tests/ui/call_app.mjs HUB_ORIGIN CASE_ID USER PASSWORD
import { axe, launch, totp, until } from './browser.mjs';

const [origin, caseId, user, password] = process.argv.slice(2);

const browser = await launch();
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
