// A doctor's browser in a case's call: headless Chromium (with its fake camera and
// microphone) watches the call over WHEP through the hub's media server, and, with
// --publish, sends its own camera and microphone over WHIP. Reads the time bar code the
// van's test source draws into each frame to measure glass-to-glass latency, and prints
// one JSON line of what arrived.
//
//   node tests/ui/whep.mjs HUB_ORIGIN CASE_ID TOKEN SECONDS [--publish] [--delay SECONDS]
//
// --delay waits before joining; the JSON includes how many sessions the call had, polled
// every half second from the join.
import { launch } from './browser.mjs';

const [origin, caseId, token, secondsArg] = process.argv.slice(2);
const publish = process.argv.includes('--publish');
const seconds = Number(secondsArg || 10);
const delayAt = process.argv.indexOf('--delay');
const delay = delayAt > 0 ? Number(process.argv[delayAt + 1]) : 0;
// --via HOST:PORT sends this browser's media through a relay (the test's shaped link) by
// putting its address in place of the hub's candidates.
const viaAt = process.argv.indexOf('--via');
const via = viaAt > 0 ? process.argv[viaAt + 1] : null;

const browser = await launch();
try {
  const page = await browser.newPage();
  page.on('console', (m) => process.stderr.write(`page: ${m.text()}\n`));
  await page.goto(`${origin}/health`);
  await new Promise((r) => setTimeout(r, delay * 1000));
  const result = await page.evaluate(async ({ caseId, token, seconds, publish, via }) => {
    const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/sdp' };
    const gathered = (pc) => new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
      setTimeout(resolve, 3000);
    });
    async function exchange(pc, kind) {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const r = await fetch(`/api/v1/calls/${caseId}/${kind}`, { method: 'POST', headers: auth, body: pc.localDescription.sdp });
      if (r.status !== 201) throw new Error(`${kind}: ${r.status} ${await r.text()}`);
      const location = r.headers.get('location');
      let sdp = await r.text();
      if (via) {
        const [host, port] = via.split(':');
        sdp = sdp.replace(/^(a=candidate:\S+ \d+ \S+ \d+ )(\S+) (\d+)/gm, `$1${host} ${port}`);
      }
      await pc.setRemoteDescription({ type: 'answer', sdp });
      return location;
    }
    let sent = null;
    if (publish) {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: true });
      sent = new RTCPeerConnection();
      for (const t of stream.getTracks()) sent.addTransceiver(t, { direction: 'sendonly' });
      await exchange(sent, 'whip');
    }
    const pc = new RTCPeerConnection();
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const video = document.createElement('video');
    video.muted = true;
    video.autoplay = true;
    document.body.append(video);
    const remote = new MediaStream();
    pc.ontrack = (e) => {
      remote.addTrack(e.track);
      video.srcObject = remote;
    };
    const location = await exchange(pc, 'whep');
    const started = performance.now();
    // The bar code: 32 cells across the top, after one blank cell.
    const canvas = document.createElement('canvas');
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    const latencies = [];
    let decodedFrames = 0;
    let firstFrameMs = null;
    const onFrame = () => {
      if (!video.videoWidth) return video.requestVideoFrameCallback(onFrame);
      const now = Date.now();
      decodedFrames += 1;
      if (firstFrameMs === null) firstFrameMs = performance.now() - started;
      const w = video.videoWidth;
      canvas.width = w;
      canvas.height = video.videoHeight;
      ctx.drawImage(video, 0, 0);
      const cell = Math.max(4, Math.floor(w / 34));
      const row = ctx.getImageData(0, Math.floor(cell / 2), w, 1).data;
      let value = 0;
      for (let i = 0; i < 32; i++) {
        const x = Math.floor((i + 1) * cell + cell / 2);
        const lum = row[x * 4];
        value = value * 2 + (lum > 128 ? 1 : 0);
      }
      const ms = ((now % 2 ** 32) - value + 2 ** 32) % 2 ** 32;
      if (ms < 10000) latencies.push(ms);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    const sessions = [];
    // Every 100 ms: what has been decoded and heard so far (concealed audio is not heard).
    const timeline = [];
    const sample = setInterval(async () => {
      const at = Date.now();
      let frames = 0; let heard = 0; let bytes = 0;
      (await pc.getStats()).forEach((s) => {
        if (s.type !== 'inbound-rtp') return;
        bytes += s.bytesReceived || 0;
        if (s.kind === 'video') frames = s.framesDecoded || 0;
        if (s.kind === 'audio') heard = (s.totalSamplesReceived || 0) - (s.concealedSamples || 0);
      });
      timeline.push([at, frames, heard, bytes]);
    }, 100);
    const poll = setInterval(async () => {
      const r = await fetch(`/api/v1/calls/${caseId}`, { headers: { authorization: `Bearer ${token}` } });
      if (r.ok) sessions.push((await r.json()).length);
    }, 500);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    clearInterval(poll);
    clearInterval(sample);
    const stats = {};
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp') stats[s.kind] = s;
    });
    let outbound = {};
    if (sent) {
      (await sent.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp') outbound[s.kind] = { packetsSent: s.packetsSent, bytesSent: s.bytesSent };
      });
    }
    const done = await fetch(location, { method: 'DELETE', headers: { authorization: `Bearer ${token}` } });
    return {
      ice: pc.iceConnectionState,
      firstFrameMs,
      decodedFrames,
      width: stats.video?.frameWidth || 0,
      height: stats.video?.frameHeight || 0,
      framesPerSecond: stats.video?.framesPerSecond || 0,
      videoPackets: stats.video?.packetsReceived || 0,
      audioPackets: stats.audio?.packetsReceived || 0,
      audioEnergy: stats.audio?.totalAudioEnergy || 0,
      latencies,
      outbound,
      deleted: done.status,
      sessions,
      timeline,
    };
  }, { caseId, token, seconds, publish, via });
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  await browser.close();
}
