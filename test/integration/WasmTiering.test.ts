import { assert, describe, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const wasmTiering = fileURLToPath(new URL("../../src/observability/WasmTiering.ts", import.meta.url))

/**
 * A Node process that sends HTTP/1.1 requests through an undici pool (llhttp in WebAssembly)
 * to a local server, 3,000 of them or for 5 s, whichever comes first; with `baseline` it first
 * calls `keepOnBaseline`.
 */
const script = `
import * as Http from "node:http"
import { Pool } from ${JSON.stringify(import.meta.resolve("undici"))}
import { keepOnBaseline } from ${JSON.stringify(wasmTiering)}
if (process.argv[2] === "baseline") keepOnBaseline()
const server = Http.createServer((_req, res) => res.end("x".repeat(1024)))
await new Promise((ready) => server.listen(0, "127.0.0.1", ready))
const pool = new Pool("http://127.0.0.1:" + server.address().port)
const started = Date.now()
for (let i = 0; i < 3000 && Date.now() - started < 5000; i++) {
  const answer = await pool.request({ method: "GET", path: "/" })
  await answer.body.text()
}
await pool.close()
server.close()
`

/** The WebAssembly functions V8 compiled with TurboFan in such a process, as its trace names them. */
const turbofanned = (dir: string, mode: "default" | "baseline"): ReadonlyArray<string> => {
  const file = Path.join(dir, "tiering.mjs")
  Fs.writeFileSync(file, script)
  const trace = ChildProcess.execFileSync(process.execPath, ["--trace-wasm-compilation-times", file, mode], {
    encoding: "utf8",
    timeout: 30_000
  })
  return trace.split("\n").filter((line) => line.includes("using TurboFan"))
}

describe("WasmTiering.keepOnBaseline", () => {
  it("keeps undici's HTTP/1.1 parser off TurboFan", () => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-wasm-"))
    try {
      // Without it, llhttp's state machine is recompiled within the same bound (so the second
      // assertion can fail); that compile malloced 22.8 MiB at its peak.
      assert.isNotEmpty(turbofanned(dir, "default"))
      assert.deepStrictEqual(turbofanned(dir, "baseline"), [])
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 60_000)
})
