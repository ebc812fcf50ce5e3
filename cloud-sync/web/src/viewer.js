// The X-ray viewer: dwv (a maintained DICOM viewer library) showing the full-resolution
// image, fetched from the hub's own DICOMweb (WADO-RS) transcoded to uncompressed pixels.
// Window/level, zoom and pan by mouse or touch (dwv's tools) and by the buttons below the
// image (keyboard users).
import { App, AppOptions, Point3D, ToolConfig, ViewConfig, WindowLevel } from 'dwv';

const EXPLICIT_LE = '1.2.840.10008.1.2.1';

let count = 0;
// The viewer on screen: the window's resize goes to it only (earlier ones were replaced).
let current = null;
window.addEventListener('resize', () => {
  if (current) {
    try { current.onResize(); } catch { /* its container left the page */ }
  }
});

/** Opens `instanceUrl` (a WADO-RS instance URL of this hub) in `container`. */
export function openViewer(container, instanceUrl, onStatus) {
  const id = `dwv-layer-${++count}`;
  const stage = document.createElement('div');
  stage.id = id;
  stage.className = 'viewer';
  stage.setAttribute('role', 'img');
  stage.setAttribute('aria-label', 'X-ray image');
  const tools = document.createElement('div');
  tools.className = 'row viewer-tools';
  container.replaceChildren(stage, tools);

  const app = new App();
  const options = new AppOptions({ '*': [new ViewConfig(id)] });
  options.tools = { WindowLevel: new ToolConfig(), ZoomAndPan: new ToolConfig() };
  app.init(options);
  const state = { loaded: false, wl: null, scale: 1, url: instanceUrl };
  window.medvanViewer = state;

  const layer = () => app.getActiveLayerGroup();
  const controller = () => layer()?.getActiveViewLayer()?.getViewController();
  const setWl = (center, width) => {
    const vc = controller();
    if (!vc) return;
    vc.setWindowLevel(new WindowLevel(center, Math.max(1, width)));
    state.wl = { center, width: Math.max(1, width) };
    onStatus(`Window ${Math.round(state.wl.width)}, level ${Math.round(state.wl.center)}`);
  };
  const zoom = (factor) => {
    const lg = layer();
    if (!lg) return;
    state.scale = Math.min(20, Math.max(0.1, state.scale * factor));
    lg.setScale({ x: state.scale, y: state.scale, z: 1 }, new Point3D(0, 0, 0));
    lg.draw();
    onStatus(`Zoom ${state.scale.toFixed(2)}×`);
  };
  const pan = (dx, dy) => {
    const lg = layer();
    if (!lg) return;
    lg.addTranslation({ x: dx, y: dy, z: 0 });
    lg.draw();
  };
  const button = (label, fn, title) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'quiet';
    b.textContent = label;
    if (title) b.setAttribute('aria-label', title);
    b.addEventListener('click', fn);
    return b;
  };
  const modes = document.createElement('div');
  modes.className = 'row';
  modes.setAttribute('role', 'group');
  modes.setAttribute('aria-label', 'Mouse does');
  for (const [tool, label] of [['WindowLevel', 'Drag: window/level'], ['ZoomAndPan', 'Drag: pan, wheel: zoom']]) {
    const b = button(label, () => {
      app.setTool(tool);
      for (const x of modes.children) x.setAttribute('aria-pressed', String(x === b));
    });
    b.setAttribute('aria-pressed', String(tool === 'WindowLevel'));
    modes.append(b);
  }
  tools.append(
    modes,
    button('Wider', () => state.wl && setWl(state.wl.center, state.wl.width * 1.25), 'Wider window'),
    button('Narrower', () => state.wl && setWl(state.wl.center, state.wl.width / 1.25), 'Narrower window'),
    button('Brighter', () => state.wl && setWl(state.wl.center - state.wl.width * 0.05, state.wl.width), 'Brighter (lower level)'),
    button('Darker', () => state.wl && setWl(state.wl.center + state.wl.width * 0.05, state.wl.width), 'Darker (higher level)'),
    button('Zoom in', () => zoom(1.25)),
    button('Zoom out', () => zoom(0.8)),
    button('←', () => pan(-40, 0), 'Pan left'),
    button('→', () => pan(40, 0), 'Pan right'),
    button('↑', () => pan(0, -40), 'Pan up'),
    button('↓', () => pan(0, 40), 'Pan down'),
    button('Reset', () => { app.resetDisplay(); state.scale = 1; readWl(); }),
  );
  const readWl = () => {
    const wl = controller()?.getWindowLevel();
    if (wl) {
      state.wl = { center: wl.center, width: wl.width };
      onStatus(`Window ${Math.round(wl.width)}, level ${Math.round(wl.center)}`);
    }
  };
  app.addEventListener('load', () => {
    app.setTool('WindowLevel');
    state.loaded = true;
    readWl();
    stage.setAttribute('aria-label', 'X-ray image, loaded');
  });
  app.addEventListener('wlchange', () => readWl());
  app.addEventListener('error', (e) => onStatus(`The image could not be shown: ${e.error?.message || e.message || 'unknown error'}`, true));
  app.loadURLs([instanceUrl], {
    requestHeaders: [{ name: 'Accept', value: `multipart/related; type="application/dicom"; transfer-syntax=${EXPLICIT_LE}` }],
    withCredentials: true,
  });
  current = app;
  return app;
}
