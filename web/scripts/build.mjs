// Builds the web app into dist/: src/main.ts bundled and minified to
// dist/assets/app-<hash>.js, src/styles.css to dist/assets/app-<hash>.css,
// and index.html pointing at both. The gateway serves dist/ as it is.
// Run by `npm run build` after the type check.
import { build } from "esbuild";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(web, "dist");
/** The first page's JavaScript, gzipped, must stay under this. */
const BUDGET_GZIP_BYTES = 100 * 1024;

await rm(dist, { recursive: true, force: true });
await mkdir(join(dist, "assets"), { recursive: true });

const result = await build({
  absWorkingDir: web,
  entryPoints: { app: "src/main.ts", style: "src/styles.css" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome111", "firefox115", "safari16.4"],
  outdir: "dist/assets",
  entryNames: "[name]-[hash]",
  metafile: true,
  sourcemap: false,
  legalComments: "none",
  logLevel: "warning",
});

let js = "";
let css = "";
for (const out of Object.keys(result.metafile.outputs)) {
  const name = basename(out);
  if (name.startsWith("app-") && name.endsWith(".js")) js = out;
  if (name.startsWith("style-") && name.endsWith(".css")) css = out;
}
if (!js || !css) throw new Error(`build: missing outputs in ${Object.keys(result.metafile.outputs).join(", ")}`);
const url = (out) => "/" + relative("dist", out).split("\\").join("/");

const template = await readFile(join(web, "index.html"), "utf8");
const html = template.replace("%APP_JS%", url(js)).replace("%APP_CSS%", url(css));
if (html.includes("%APP_")) throw new Error("build: index.html has a placeholder left");
await writeFile(join(dist, "index.html"), html);

const jsBytes = await readFile(join(web, js));
const cssBytes = await readFile(join(web, css));
const jsGzip = gzipSync(jsBytes, { level: 9 }).length;
const cssGzip = gzipSync(cssBytes, { level: 9 }).length;
console.log(`built ${relative(web, dist)}/: ${url(js)} ${jsBytes.length} B (${jsGzip} B gzipped), ${url(css)} ${cssBytes.length} B (${cssGzip} B gzipped)`);
if (jsGzip > BUDGET_GZIP_BYTES) {
  throw new Error(`build: the app's JavaScript is ${jsGzip} B gzipped, over the budget of ${BUDGET_GZIP_BYTES} B`);
}
