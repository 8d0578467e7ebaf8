/**
 * `npm run build`: the production build of the `tether` command.
 *
 * Rolldown bundles src/cli/bin.ts and everything it imports (Effect, client-node, undici, ...)
 * into minified ES modules: dist/tether.mjs and one chunk per subcommand plus the shared ones in
 * dist/chunks/, so a process still loads only its own subcommand's code. What this saves, against
 * running the .ts sources through Node's type stripping: the ~2,400 module files a process
 * loaded (Effect's and client-node's barrels, @effect/platform-node's Redis client), the type
 * stripper itself, and the young generation that the load burst grew to its maximum. The README's
 * Footprint section has the figures.
 *
 * The bundle imports nothing but Node's built-in modules (ws's optional native add-ons are
 * looked up in a try/catch), so it runs without node_modules.
 *
 * Files are written to a temporary folder and renamed into place, chunks (content-hashed names)
 * before the entry, so a process started while a build runs sees either the old or the new
 * build, never half of one. Old chunks are left in place unless `--clean`.
 *
 * Then it writes DIR/compile-cache: V8's code cache of every chunk (Node's module compile cache,
 * portable, so it holds wherever DIR is moved), which the entry enables. Node keeps one cache per
 * user id; it is written for the user running the build and for each `--cache-uid` (the image's
 * user), and is only read at run time.
 *
 * Usage: node .ci/build.ts [--out DIR] [--clean] [--cache-uid UID]...      (default DIR: dist)
 */
import * as Fs from "node:fs"
import * as ChildProcess from "node:child_process"
import { createRequire, isBuiltin } from "node:module"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { build, type Plugin } from "rolldown"

const repo = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "..")
const argv = process.argv.slice(2)
let out = Path.join(repo, "dist")
let clean = false
const cacheUids = new Set<number>()
for (let i = 0; i < argv.length; i++) {
  const arg = argv[i]!
  if (arg === "--out" && argv[i + 1] !== undefined) out = Path.resolve(argv[++i]!)
  else if (arg === "--clean") clean = true
  else if (arg === "--cache-uid" && /^\d+$/.test(argv[i + 1] ?? "")) cacheUids.add(Number(argv[++i]!))
  else {
    process.stderr.write(`build: unknown argument '${arg}' (usage: node .ci/build.ts [--out DIR] [--clean] [--cache-uid UID]...)\n`)
    process.exit(2)
  }
}

/**
 * Built-in modules whose ESM facade costs more than the module: Node builds the namespace of an
 * `import ... from "node:http"` by reading every export, and http's lazy `WebSocket`,
 * `CloseEvent` and `MessageEvent` getters then load Node's own copy of undici (~17 MiB resident
 * in a bare process, for a WebSocket client nothing here uses); util's lazy getters load the
 * abort-controller internals. `require` reads no export, so these imports are rewritten to a
 * module that requires the built-in and re-exports its plain values; the lazy getters are not
 * exported (a build that imports one fails with a missing-export error), the cheap ones are.
 */
const viaRequire: Record<string, ReadonlyArray<string>> = {
  http: ["maxHeaderSize", "globalAgent"],
  util: []
}
const builtinPrefix = "\0tether-builtin:"
const builtinsViaRequire: Plugin = {
  name: "tether:builtins-via-require",
  resolveId(source, _importer, extra) {
    const name = source.startsWith("node:") ? source.slice(5) : source
    if (!Object.hasOwn(viaRequire, name) || (extra.kind !== "import-statement" && extra.kind !== "dynamic-import")) return null
    return { id: builtinPrefix + name, moduleSideEffects: false }
  },
  load(id) {
    if (!id.startsWith(builtinPrefix)) return null
    const name = id.slice(builtinPrefix.length)
    const exported = createRequire(import.meta.url)(`node:${name}`) as object
    const names = Object.getOwnPropertyNames(exported).filter((key) =>
      /^[A-Za-z_$][\w$]*$/.test(key) && key !== "default" &&
      (Object.getOwnPropertyDescriptor(exported, key)?.get === undefined || viaRequire[name]!.includes(key))
    )
    return [
      `import { createRequire } from "node:module"`,
      `const m = createRequire(import.meta.url)("node:${name}")`,
      "export default m",
      ...names.map((key) => `export const ${key} = m.${key}`)
    ].join("\n")
  }
}

/**
 * client-node's package entry re-exports every module it has (exec, attach, port-forward, cp,
 * log, metrics, top, ...), and without a `sideEffects` field in its package.json the bundle has
 * to keep and evaluate each of them, with the packages they load (tar-fs, ws). Its modules only
 * define classes and functions, so the ones nothing imports are dropped.
 */
const clientNode = /\/node_modules\/@kubernetes\/client-node\//

// Node's built-in modules are also taken as free of side effects: a bare `import "node:..."`
// left behind by code the bundle dropped (a child-process spawner nothing calls) would still load
// the module (node:child_process: +2.6 MiB in a bare Node process).

/**
 * undici's package entry requires all of undici when it is evaluated (a CommonJS module, so the
 * bundle cannot drop what it does not use): the mock agents, the cache stores, fetch, WebSocket,
 * EventSource, the cookie helpers. What the bundle uses is the dispatchers tether's HTTP
 * forwarder and client-node build on, and `request` (tether's Kubernetes client). Every
 * `import ... from "undici"` is pointed at an entry of those alone; one that names anything else
 * fails the build with a missing-export error instead of loading the rest. Its `request` is the
 * package's: the request API on the given dispatcher, or on the global one.
 */
const undiciEntry = "\0tether-undici"
const undiciLib = Path.join(repo, "node_modules/undici/lib")
const slimUndici: Plugin = {
  name: "tether:slim-undici",
  resolveId(source, importer) {
    // Only where the bundle uses it: @effect/platform-node's re-export of all of undici is
    // dropped as unused and keeps the package's own entry.
    return source === "undici" && importer !== undefined && (clientNode.test(importer) || importer.startsWith(Path.join(repo, "src") + Path.sep))
      ? { id: undiciEntry, moduleSideEffects: false }
      : null
  },
  // undici's client requires its HTTP/2 half when loaded, and that requires node:http2 (+3.9 MiB in
  // a bare Node process); tether's dispatchers never allow h2 (HTTP/1.1 to every upstream), so it
  // is required on a first HTTP/2 connection instead.
  transform(code, id) {
    if (id !== Path.join(undiciLib, "dispatcher/client.js")) return null
    const eager = "const connectH2 = require('./client-h2.js')"
    if (!code.includes(eager)) throw new Error(`build: ${id} no longer has "${eager}"; update the slim-undici plugin`)
    return code.replace(eager, "const connectH2 = (client, socket) => require('./client-h2.js')(client, socket)")
  },
  load(id) {
    if (id !== undiciEntry) return null
    const lib = (file: string) => JSON.stringify(Path.join(undiciLib, file))
    return [
      `import Agent from ${lib("dispatcher/agent.js")}`,
      `import Pool from ${lib("dispatcher/pool.js")}`,
      `import ProxyAgent from ${lib("dispatcher/proxy-agent.js")}`,
      `import requestOn from ${lib("api/api-request.js")}`,
      `import { getGlobalDispatcher } from ${lib("global.js")}`,
      "export { Agent, Pool, ProxyAgent }",
      // Only client-node code tether never calls (the generated APIs' HTTP library behind
      // KubeConfig.makeApiClient) names fetch: imported on a first call, from a chunk of its own.
      `export const fetch = (...args) => import(${lib("web/fetch/index.js")}).then((m) => m.fetch(...args))`,
      "export function request(url, { dispatcher = getGlobalDispatcher(), ...options } = {}) {",
      "  const target = new URL(url)",
      "  return requestOn.call(dispatcher, { ...options, origin: target.origin, path: target.pathname + target.search, method: options.method ?? \"GET\" })",
      "}"
    ].join("\n")
  }
}

/**
 * Fill DIR/compile-cache by importing every chunk of this build (importing evaluates only module
 * top levels: the chunks define, the entry runs) in a Node with the compile cache on, then copy
 * the cache to the other user ids. A new folder replaces the old one, so a process started
 * meanwhile finds a cache of this build or none. Returns what was cached, for the summary.
 */
function compileCache(chunks: ReadonlyArray<string>): string {
  const target = Path.join(out, "compile-cache")
  const staged = Fs.mkdtempSync(Path.join(out, ".cache-"))
  try {
    const script = [
      `import { enableCompileCache, flushCompileCache } from "node:module"`,
      `enableCompileCache({ directory: ${JSON.stringify(staged)}, portable: true })`,
      `for (const chunk of ${JSON.stringify(chunks.map((name) => Path.join(out, name)))}) await import(chunk)`,
      "flushCompileCache()"
    ].join("\n")
    const { NODE_COMPILE_CACHE: _, NODE_OPTIONS: __, ...env } = process.env
    ChildProcess.execFileSync(process.execPath, ["--input-type=module", "-e", script], { env, stdio: ["ignore", "ignore", "inherit"], timeout: 120_000 })
    // Node names the folder <version>-<arch>-<V8 flags hash>-<uid>.
    const uid = process.getuid?.() ?? 0
    const own = Fs.readdirSync(staged).filter((name) => name.endsWith(`-${uid}`))
    if (own.length !== 1) throw new Error(`expected one code cache folder for uid ${uid} in ${staged}, found ${own.join(", ") || "none"}`)
    for (const other of cacheUids) {
      if (other !== uid) Fs.cpSync(Path.join(staged, own[0]!), Path.join(staged, own[0]!.replace(/-\d+$/, `-${other}`)), { recursive: true })
    }
    Fs.chmodSync(staged, 0o755)
    // Builds of the same sources may run at once (tests call tetherEntry() in parallel): when
    // another one put its cache in place between the removal and the rename, theirs stays.
    Fs.rmSync(target, { recursive: true, force: true })
    try {
      Fs.renameSync(staged, target)
    } catch (error) {
      const code = (error as { code?: unknown }).code
      if (code !== "ENOTEMPTY" && code !== "EEXIST") throw error
    }
    return `${chunks.length} chunks (uid ${[uid, ...[...cacheUids].filter((other) => other !== uid)].join(", ")})`
  } finally {
    Fs.rmSync(staged, { recursive: true, force: true })
  }
}

const start = performance.now()
const result = await build({
  plugins: [builtinsViaRequire, slimUndici],
  treeshake: {
    // A property read whose value nothing uses is dropped: platform-node's unused `layerTest` reads
    // `http.createServer` at the top level, which otherwise keeps its whole NodeServices layer.
    propertyReadSideEffects: false,
    moduleSideEffects: (id, external) => (clientNode.test(id) || (external && isBuiltin(id)) ? false : undefined)
  },
  input: { tether: Path.join(repo, "src/cli/bin.ts") },
  cwd: repo,
  platform: "node",
  write: false,
  logLevel: "warn",
  output: {
    format: "esm",
    minify: true,
    // One non-ASCII character makes V8 keep a whole chunk's source as two bytes per character.
    charset: "ascii",
    // The packages' licences go to THIRD-PARTY-LICENSES.txt instead (below).
    comments: false,
    // Maps are written but only read under `node --enable-source-maps`.
    sourcemap: true,
    entryFileNames: "[name].mjs",
    chunkFileNames: "chunks/[name]-[hash].mjs"
  }
})

/** The name, version, licence and licence text of every npm package the bundle contains. */
function licences(output: typeof result.output): string {
  const roots = new Set<string>()
  for (const file of output) {
    if (file.type !== "chunk") continue
    for (const id of Object.keys(file.modules)) {
      const match = /^(.*\/node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(id)
      if (match !== null) roots.add(match[1]!)
    }
  }
  const sections = [...roots].sort().map((root) => {
    const manifest = JSON.parse(Fs.readFileSync(Path.join(root, "package.json"), "utf8")) as { name: string; version: string; license?: string }
    const file = Fs.readdirSync(root).find((name) => /^(licen[cs]e|copying)(\.|$)/i.test(name))
    const text = file === undefined ? "(no licence file in the package)" : Fs.readFileSync(Path.join(root, file), "utf8").trim()
    return `${manifest.name}@${manifest.version} (${manifest.license ?? "see below"})\n\n${text}\n`
  })
  return `Third-party packages bundled into tether's dist/ (${sections.length}):\n\n${sections.join(`\n${"-".repeat(80)}\n\n`)}`
}

if (clean) Fs.rmSync(out, { recursive: true, force: true })
Fs.mkdirSync(out, { recursive: true })
const staging = Fs.mkdtempSync(Path.join(out, ".build-"))
try {
  const files = result.output.map((file) => ({
    name: file.fileName,
    content: file.type === "chunk" ? file.code : file.source
  }))
  files.push({ name: "THIRD-PARTY-LICENSES.txt", content: licences(result.output) })
  // The entry last: it is what names the chunks.
  files.sort((a, b) => Number(a.name === "tether.mjs") - Number(b.name === "tether.mjs"))
  let bytes = 0
  for (const file of files) {
    const staged = Path.join(staging, file.name.replaceAll("/", "__"))
    Fs.writeFileSync(staged, file.content, { mode: file.name === "tether.mjs" ? 0o755 : 0o644 })
    const target = Path.join(out, file.name)
    Fs.mkdirSync(Path.dirname(target), { recursive: true })
    Fs.renameSync(staged, target)
    if (file.name.endsWith(".mjs")) bytes += Buffer.byteLength(file.content)
  }
  const cached = compileCache(files.map((file) => file.name).filter((name) => name.startsWith("chunks/") && name.endsWith(".mjs")))
  const modules = result.output.reduce((n, file) => n + (file.type === "chunk" ? Object.keys(file.modules).length : 0), 0)
  process.stderr.write(
    `build: ${modules} modules into ${Path.relative(process.cwd(), out) || "."}/tether.mjs and ` +
      `${files.filter((f) => f.name.startsWith("chunks/") && f.name.endsWith(".mjs")).length} chunks, ` +
      `${(bytes / 1048576).toFixed(1)} MiB, code cache for ${cached}, in ${Math.round(performance.now() - start)} ms\n`
  )
} finally {
  Fs.rmSync(staging, { recursive: true, force: true })
}
