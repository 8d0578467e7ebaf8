#!/usr/bin/env node
/**
 * Entry point of the `tether` command. It checks the Node version before loading anything:
 * the Kubernetes client and Effect's platform package do not even load on Node 20.
 *
 * @since 0.1.0
 */
import * as Fs from "node:fs"
import * as Module from "node:module"
import * as Url from "node:url"

const major = Number(process.versions.node.split(".")[0])
if (major < 24) {
  process.stderr.write(`tether needs Node 24 or newer; this is ${process.version}. Use \`npm run tether -- ...\`.\n`)
  process.exit(1)
}

// The production build ships V8's code cache of its chunks next to them (dist/compile-cache,
// made by .ci/build.ts). Compiling the chunks instead parses ~2 MiB of JavaScript, and the
// parser's memory, freed at once, stays in the process as malloc heap it never returns (~9 MiB
// resident). A cache for another Node version, user or file is ignored, and one that cannot be
// written is only read; the sources (`npm run tether`) have none.
const cache = Url.fileURLToPath(new URL("./compile-cache", import.meta.url))
if (import.meta.url.endsWith(".mjs") && Fs.existsSync(cache)) Module.enableCompileCache({ directory: cache, portable: true })

const { main } = await import("./Main.ts")
await main(process.argv.slice(2))
