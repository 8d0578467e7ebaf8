import { defineConfig } from "vitest/config"

// npm scripts put the `node` devDependency (Node 24) first on PATH. Under the system Node 20
// (an install with --ignore-scripts, or vitest started outside npm) vitest 5 and client-node 2
// fail in confusing ways, so stop here with a message that says what to do.
const major = Number(process.versions.node.split(".")[0])
if (major < 24) {
  throw new Error(
    `tether needs Node 24 but this is ${process.version} (${process.execPath}). ` +
      "Run the tests through npm scripts (`npm test`); if node_modules/.bin/node is missing, run `npm rebuild node`."
  )
}

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Integration suites start real kube-apiservers; give them room, and keep files apart so
    // two files never fight over the machine's two cores at once.
    testTimeout: 120_000,
    hookTimeout: 180_000,
    fileParallelism: false
  }
})
