/**
 * The floor for the service proxy's rows of `npm run bench`: what Node itself costs for the
 * same hop, with nothing of tether. A `node:https` server hands each request to an undici `Pool`
 * (callbacks, no fiber, the answer's last chunk written with the head as tether does) and sends
 * the answer back; it drops the client's `Authorization`, sets the proxy's token and one
 * `Impersonate-User`, and does no TokenReview, routing, metrics or logging.
 *
 * ```sh
 * node test/bench/NodeFloorProxy.ts --listen-port=<port> --cert=<pem> --key=<pem> \
 *   --upstream=https://127.0.0.1:<port> --upstream-ca=<pem> --token-file=<file>
 * ```
 *
 * Prints `listening <port>` on stdout once it accepts connections.
 *
 * @since 0.1.0
 */
import * as Fs from "node:fs"
import type * as Http from "node:http"
import * as Https from "node:https"
import { type Dispatcher, Pool } from "undici"

const flag = (name: string): string => {
  const prefix = `--${name}=`
  const value = process.argv.find((arg) => arg.startsWith(prefix))?.slice(prefix.length)
  if (value === undefined || value === "") {
    process.stderr.write(`--${name} is required\n`)
    process.exit(2)
  }
  return value
}

const upstream = new URL(flag("upstream"))
const token = Fs.readFileSync(flag("token-file"), "utf8").trim()
const pool = new Pool(upstream.origin, {
  connect: { ca: Fs.readFileSync(flag("upstream-ca"), "utf8"), servername: upstream.hostname },
  keepAliveTimeout: 90_000,
  allowH2: false
})

/** Request headers that do not go upstream (hop-by-hop, and the client's credential). */
const dropped = new Set(["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer", "host", "authorization"])
/** Response headers that do not go back. */
const droppedBack = new Set(["connection", "keep-alive", "transfer-encoding", "trailer", "upgrade"])

const forward = (req: Http.IncomingMessage, res: Http.ServerResponse) => {
  const headers: Array<string> = []
  const raw = req.rawHeaders
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (!dropped.has(raw[i]!.toLowerCase())) headers.push(raw[i]!, raw[i + 1]!)
  }
  headers.push("host", upstream.host, "authorization", `Bearer ${token}`, "impersonate-user", "system:serviceaccount:bench:caller")
  let held: Buffer | undefined
  const handler: Dispatcher.DispatchHandler = {
    onRequestStart() {},
    onResponseStart(_controller, status, answer) {
      const back: Record<string, string | Array<string>> = {}
      for (const name in answer) if (!droppedBack.has(name)) back[name] = answer[name] as string | Array<string>
      res.writeHead(status, back)
    },
    onResponseData(_controller, chunk) {
      if (held !== undefined) res.write(held)
      held = chunk
    },
    onResponseEnd() {
      res.end(held)
    },
    onResponseError(_controller, error) {
      if (res.headersSent) res.destroy(error)
      else res.writeHead(502).end("bad gateway")
    }
  }
  pool.dispatch({ method: req.method ?? "GET", path: req.url ?? "/", headers }, handler)
}

const server = Https.createServer({ cert: Fs.readFileSync(flag("cert"), "utf8"), key: Fs.readFileSync(flag("key"), "utf8") }, forward)
server.keepAliveTimeout = 90_000
server.listen(Number(flag("listen-port")), "127.0.0.1", () => process.stdout.write(`listening ${(server.address() as { port: number }).port}\n`))
process.on("SIGTERM", () => process.exit(0))
