/**
 * The floor for a relay written on Node: the fewest lines that relay at all, with none of
 * tether's work (no authentication, routing, header filtering, metrics, limits or Effect). The
 * benchmark runs it next to tether so the table separates what Node itself costs from what
 * tether adds on top.
 *
 * ```sh
 * node test/bench/NodeBaseline.ts tcp  --target=127.0.0.1:<port>   # net.Socket pipe both ways
 * node test/bench/NodeBaseline.ts http --target=127.0.0.1:<port>   # http.request + pipe, keep-alive agent
 * ```
 *
 * Listens on a free loopback port and prints `listening <port>`.
 *
 * @since 0.1.0
 */
import * as Http from "node:http"
import * as Net from "node:net"

const [mode, ...rest] = process.argv.slice(2)
const target = rest.find((arg) => arg.startsWith("--target="))?.slice("--target=".length) ?? ""
const [host, portText] = target.split(":")
const port = Number(portText)
if ((mode !== "tcp" && mode !== "http") || host !== "127.0.0.1" || !Number.isInteger(port)) {
  process.stderr.write("usage: NodeBaseline.ts tcp|http --target=127.0.0.1:<port>\n")
  process.exit(2)
}

// A clean exit, so `--cpu-prof` writes its profile.
process.on("SIGTERM", () => process.exit(0))

const announce = (server: Net.Server) =>
  server.listen(0, "127.0.0.1", () => process.stdout.write(`listening ${(server.address() as Net.AddressInfo).port}\n`))

if (mode === "tcp") {
  announce(Net.createServer({ noDelay: true }, (client) => {
    const upstream = Net.connect({ host, port, noDelay: true })
    const close = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on("error", close)
    upstream.on("error", close)
    client.pipe(upstream)
    upstream.pipe(client)
  }))
} else {
  const agent = new Http.Agent({ keepAlive: true, maxFreeSockets: 256 })
  announce(Http.createServer((req, res) => {
    const outgoing = Http.request({ host, port, method: req.method, path: req.url, headers: req.headers, agent }, (response) => {
      res.writeHead(response.statusCode ?? 502, response.headers)
      response.pipe(res)
    })
    outgoing.on("error", () => {
      res.writeHead(502)
      res.end()
    })
    req.pipe(outgoing)
  }))
}
