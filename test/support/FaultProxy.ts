/**
 * A fault-injecting TCP proxy for integration tests: put it between tether and an apiserver (on
 * loopback; TLS passes through untouched, and the apiservers' certificates name 127.0.0.1) and
 * change how it treats traffic while the test runs:
 * - `pass`: forward both ways;
 * - `reset`: refuse new connections with a TCP reset and reset the open ones;
 * - `blackhole`: accept connections and swallow everything, answering nothing (open ones go silent
 *   too), as a dropped route or a frozen server does;
 * - `latencyMs`: delay every chunk in both directions;
 * - `readBytesPerSecond`: read from the client no faster than this (a slow server);
 * - `stall()`: the connections open now go silent both ways but stay open (a frozen NAT entry or
 *   proxy: no reset, no FIN), while new connections pass.
 *
 * It counts the connections it accepted, so a test can bound how hard a client knocks on a server
 * that is away. Closed with its scope.
 */
import { Effect, Scope } from "effect"
import * as Net from "node:net"

export type Mode = "pass" | "reset" | "blackhole"

export interface FaultProxy {
  readonly host: string
  readonly port: number
  /** `https://127.0.0.1:<port>`, to put in a kubeconfig instead of the apiserver's address. */
  readonly server: string
  readonly setMode: (mode: Mode) => void
  readonly setLatency: (ms: number) => void
  readonly setReadBytesPerSecond: (rate: number | undefined) => void
  /** Freeze the connections open now (both ways, kept open); returns how many sockets (two per connection) it froze. */
  readonly stall: () => number
  /** Connections accepted so far (in any mode). */
  readonly accepted: () => number
  /** Connections currently open. */
  readonly open: () => number
}

export const make = (target: { readonly host: string; readonly port: number }): Effect.Effect<FaultProxy, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<{ proxy: FaultProxy; server: Net.Server; sockets: Set<Net.Socket> }>((resume) => {
      let mode: Mode = "pass"
      let latency = 0
      let rate: number | undefined
      let accepted = 0
      const sockets = new Set<Net.Socket>()
      const frozen = new WeakSet<Net.Socket>()
      const track = (socket: Net.Socket) => {
        sockets.add(socket)
        socket.once("close", () => sockets.delete(socket))
        socket.on("error", () => socket.destroy())
      }
      const relay = (from: Net.Socket, to: Net.Socket, throttle: boolean) => {
        from.on("data", (chunk: Buffer) => {
          if (mode === "blackhole" || frozen.has(from)) return
          if (throttle && rate !== undefined) {
            from.pause()
            setTimeout(() => from.resume(), Math.ceil((chunk.length / rate) * 1000))
          }
          const send = () => {
            if (mode === "pass" && !to.destroyed) to.write(chunk)
          }
          if (latency > 0) setTimeout(send, latency)
          else send()
        })
        from.once("end", () => {
          if (mode === "pass" && !frozen.has(from)) to.end()
        })
        from.once("close", () => {
          if (!frozen.has(from)) to.destroy()
        })
      }
      const server = Net.createServer((client) => {
        accepted++
        track(client)
        if (mode === "reset") return void client.resetAndDestroy()
        const upstream = Net.connect(target.port, target.host)
        track(upstream)
        relay(client, upstream, true)
        relay(upstream, client, false)
      })
      server.listen(0, "127.0.0.1", () => {
        const port = (server.address() as Net.AddressInfo).port
        const proxy: FaultProxy = {
          host: "127.0.0.1",
          port,
          server: `https://127.0.0.1:${port}`,
          setMode: (next) => {
            mode = next
            if (next === "reset") for (const socket of sockets) socket.resetAndDestroy()
          },
          setLatency: (ms) => void (latency = ms),
          setReadBytesPerSecond: (next) => void (rate = next),
          stall: () => {
            for (const socket of sockets) frozen.add(socket)
            return sockets.size
          },
          accepted: () => accepted,
          open: () => sockets.size
        }
        resume(Effect.succeed({ proxy, server, sockets }))
      })
    }),
    ({ server, sockets }) =>
      Effect.callback<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ proxy }) => proxy))

/** The kubeconfig `yaml` with its server address replaced by the proxy's. */
export const throughProxy = (yaml: string, server: string, proxy: FaultProxy): string => yaml.split(server).join(proxy.server)
