#!/usr/bin/env node
/**
 * Entry point of the `tether` command. It checks the Node version before loading anything:
 * the Kubernetes client and Effect's platform package do not even load on Node 20.
 *
 * @since 0.1.0
 */
const major = Number(process.versions.node.split(".")[0])
if (major < 24) {
  process.stderr.write(`tether needs Node 24 or newer; this is ${process.version}. Use \`npm run tether -- ...\`.\n`)
  process.exit(1)
}

const { main } = await import("./Main.ts")
await main(process.argv.slice(2))
