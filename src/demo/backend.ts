/**
 * The demo's backend Service (`hello.default.svc:8080` on the "managed cluster"): a plain HTTP
 * server that answers with what reached it, so the demo can show which headers crossed the
 * service proxy, the managed apiserver's `services/proxy` and the service relay.
 *
 * Usage: `node src/demo/backend.ts <host> <port>`; stops on SIGTERM or SIGINT.
 *
 * @since 0.1.0
 */
import * as Http from "node:http"

const [host = "127.0.0.1", port = "8080"] = process.argv.slice(2)
let served = 0

const server = Http.createServer((req, res) => {
  served++
  req.resume()
  req.on("end", () => {
    const body = JSON.stringify({
      served,
      method: req.method,
      url: req.url,
      // What the caller sent on, minus nothing: the demo shows that no credential of the proxies arrives.
      headers: Object.keys(req.headers).sort()
    })
    res.writeHead(200, { "content-type": "application/json", "x-backend": "hello" })
    res.end(`${body}\n`)
  })
}).listen(Number(port), host, () => console.log(`backend listening on ${host}:${port}`))

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.once(signal, () => {
    server.close()
    server.closeAllConnections()
  })
}
