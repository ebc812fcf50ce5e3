// Builds the doctor app into dist/: one bundled, minified script (the app and the dwv
// viewer library) and the static files. No file in dist/ loads anything from elsewhere.
import { build } from 'esbuild';
import fs from 'node:fs';

fs.rmSync('dist', { recursive: true, force: true });
fs.mkdirSync('dist');
await build({
  entryPoints: ['src/main.js'],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  outfile: 'dist/app.js',
  logLevel: 'warning',
});
for (const f of ['index.html', 'style.css']) fs.copyFileSync(`src/${f}`, `dist/${f}`);
console.log('doctor app built in dist/');
