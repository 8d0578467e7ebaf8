/**
 * What one TLS context per upstream pool saves (src/http/Forwarder.ts): rounds of new TLS client
 * connections to a loopback server, each connection given `ca` (Node builds a context per
 * connection, parsing every CA certificate) or one shared `secureContext`; with one CA and with
 * the system roots plus one (the service relay's trust for https Services). Each variant runs in
 * its own process, one after another in one run; each prints its resident size after a forced
 * GC per round and the CPU time it used.
 *
 * ```sh
 * node test/bench/TlsContext.ts [connections per round, default 300] [rounds, default 10]
 * ```
 *
 * @since 0.1.0
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import type * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Tls from "node:tls"
import { fileURLToPath } from "node:url"
import { selfSigned } from "../support/local.ts"

const [perRound = 300, rounds = 10] = process.argv.slice(2, 4).map(Number)
const variant = process.env["TLS_CONTEXT_VARIANT"]

const child = async (mode: "per-connection" | "shared", roots: boolean, cert: string, key: string) => {
  const ca = roots ? [...Tls.rootCertificates, cert] : [cert]
  const server = Tls.createServer({ cert, key }, (socket) => {
    socket.on("error", () => socket.destroy())
    socket.end("hi")
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as Net.AddressInfo).port
  const shared = Tls.createSecureContext({ ca, minVersion: "TLSv1.2" })
  const once = () =>
    new Promise<void>((resolve) => {
      const options = mode === "shared" ? { secureContext: shared } : { ca, minVersion: "TLSv1.2" as const }
      const socket = Tls.connect({ host: "127.0.0.1", port, servername: "localhost", ...options })
      socket.on("data", () => {})
      socket.on("error", () => socket.destroy())
      socket.on("close", () => resolve())
    })
  const rss: Array<number> = []
  const cpu = process.cpuUsage()
  for (let round = 0; round < rounds; round++) {
    await Promise.all(Array.from({ length: perRound }, once))
    ;(globalThis as { gc?: () => void }).gc?.()
    rss.push(Math.round(process.memoryUsage().rss / 2 ** 20))
  }
  const used = process.cpuUsage(cpu)
  const seconds = ((used.user + used.system) / 1e6).toFixed(1)
  console.log(`${mode.padEnd(14)} ${roots ? "system roots + 1" : "one CA          "}  CPU ${seconds} s  resident MB per round: ${rss.join(" ")}`)
  server.close()
}

if (variant !== undefined) {
  const [mode, roots, certFile, keyFile] = variant.split(",")
  await child(mode as "per-connection" | "shared", roots === "roots", Fs.readFileSync(certFile!, "utf8"), Fs.readFileSync(keyFile!, "utf8"))
} else {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-tls-context-"))
  const { certFile, keyFile } = selfSigned(dir, "server", ["localhost"])
  console.log(`${rounds} rounds of ${perRound} TLS connections per variant`)
  for (const roots of ["one", "roots"]) {
    for (const mode of ["per-connection", "shared"]) {
      ChildProcess.execFileSync(process.execPath, ["--expose-gc", fileURLToPath(import.meta.url), String(perRound), String(rounds)], {
        stdio: "inherit",
        env: { ...process.env, TLS_CONTEXT_VARIANT: [mode, roots, certFile, keyFile].join(",") }
      })
    }
  }
  Fs.rmSync(dir, { recursive: true, force: true })
}
