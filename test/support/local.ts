/**
 * Local resources the integration suites share: free loopback ports, self-signed serving
 * certificates, kubectl runs, and plain HTTP GETs of probe endpoints.
 */
import { Data, Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"

/** A port free on 127.0.0.1 at the time of asking. */
export const freePort: Effect.Effect<number> = Effect.callback<number>((resume) => {
  const probe = Net.createServer().listen(0, "127.0.0.1", () => {
    const port = (probe.address() as Net.AddressInfo).port
    probe.close(() => resume(Effect.succeed(port)))
  })
})

/** A self-signed certificate and key for `names` (DNS names and IPs), written to `dir`; the certificate is its own CA. */
export const selfSigned = (dir: string, base: string, names: ReadonlyArray<string>) => {
  const san = names.map((name) => (Net.isIP(name) ? `IP:${name}` : `DNS:${name}`)).join(",")
  const certFile = Path.join(dir, `${base}.crt`)
  const keyFile = Path.join(dir, `${base}.key`)
  ChildProcess.execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
    "-subj", `/CN=${names[0]}`, "-addext", `subjectAltName=${san}`, "-keyout", keyFile, "-out", certFile
  ], { stdio: "ignore" })
  return { certFile, keyFile, cert: Fs.readFileSync(certFile, "utf8"), key: Fs.readFileSync(keyFile, "utf8") }
}

export interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/** Run kubectl with `kubeconfig` (and `input` on stdin), bounded in time; never fails (the exit code says how it went). */
export const kubectl = (kubeconfig: string, args: ReadonlyArray<string>, input?: string): Effect.Effect<Run> =>
  Effect.callback((resume) => {
    const child = ChildProcess.execFile(
      "kubectl",
      ["--kubeconfig", kubeconfig, "--request-timeout", "20s", ...args],
      { timeout: 60_000, maxBuffer: 256 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : -1
        resume(Effect.succeed({ code, stdout, stderr }))
      }
    )
    child.stdin?.end(input ?? "")
  })

export class GetFailed extends Data.TaggedError("GetFailed")<{ readonly url: string; readonly cause: unknown }> {}

/** GET `url` (plain HTTP); the status and body. */
export const get = (url: string): Effect.Effect<{ readonly status: number; readonly body: string }, GetFailed> =>
  Effect.tryPromise({
    try: async () => {
      const response = await fetch(url)
      return { status: response.status, body: await response.text() }
    },
    catch: (cause) => new GetFailed({ url, cause })
  })
