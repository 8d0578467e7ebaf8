/**
 * The managed-apiserver relay over real loopback sockets: bytes both ways, half-close in each
 * direction, dial failures, the connection limit, the idle timeout, target changes with drain
 * (through a Secret-volume style symlink swap), back-pressure with a paused reader, and the
 * readiness check. Plus the pure target reading and flag validation.
 */
import { NodeFileSystem } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Fiber, Layer, Logger, Metric, Result, Scope, SubscriptionRef } from "effect"
import { TestClock } from "effect/testing"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Metrics from "../../src/observability/Metrics.ts"
import { Probes } from "../../src/observability/Probes.ts"
import * as ManagedTarget from "../../src/relay/ManagedTarget.ts"
import * as TcpRelay from "../../src/relay/TcpRelay.ts"
import * as TcpRelayOptions from "../../src/relay/TcpRelayOptions.ts"
import { fromRef, TargetWatcher } from "../../src/relay/TargetWatcher.ts"
import { publish } from "../support/volume.ts"
import { holds, type Options as Polling, until } from "../support/eventually.ts"

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

const ignore = () => {}

/** Real sockets answer within milliseconds: poll often. */
const poll = (timeout: Duration.Input = "5 seconds"): Polling => ({ timeout, interval: "10 millis" })

/** A loopback TCP server for the test's lifetime; `onSocket` handles each connection. */
const upstreamServer = (onSocket: (socket: Net.Socket) => void) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly server: Net.Server; readonly port: number; readonly sockets: Set<Net.Socket> }>((resume) => {
      const sockets = new Set<Net.Socket>()
      const server = Net.createServer({ allowHalfOpen: true }, (socket) => {
        sockets.add(socket)
        socket.on("error", ignore)
        socket.on("close", () => sockets.delete(socket))
        onSocket(socket)
      })
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed({ server, port: (server.address() as Net.AddressInfo).port, sockets })))
    }),
    ({ server, sockets }) =>
      Effect.callback<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
      })
  )

/** Echoes, prefixing nothing; ends its side when the client ends. */
const echo = (socket: Net.Socket) => socket.pipe(socket)

/** Echoes each chunk prefixed with `tag`, so tests see which upstream answered. */
const tagged = (tag: string) => (socket: Net.Socket) => socket.on("data", (chunk) => socket.write(`${tag}:${chunk}`))

/** A port nothing listens on (bound, then released). */
const closedPort = Effect.callback<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as Net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

interface Client {
  readonly socket: Net.Socket
  readonly chunks: Array<Buffer>
  ended: boolean
  closed: boolean
}

/** The relay closed (FIN or reset) its side of the connection. */
const dropped = (client: Client): boolean => client.ended || client.closed

const received = (client: Client): string => Buffer.concat(client.chunks).toString("utf8")
const receivedBytes = (client: Client): number => client.chunks.reduce((n, c) => n + c.length, 0)

/** A client connection to `port`, recording what arrives; destroyed with the test scope. */
const connect = (port: number, options: { readonly paused?: boolean } = {}) =>
  Effect.acquireRelease(
    Effect.callback<Client>((resume) => {
      const socket = Net.connect({ port, host: "127.0.0.1", allowHalfOpen: true })
      const client: Client = { socket, chunks: [], ended: false, closed: false }
      socket.on("error", ignore)
      socket.on("end", () => {
        client.ended = true
      })
      socket.on("close", () => {
        client.closed = true
      })
      socket.once("connect", () => {
        socket.on("data", (chunk: Buffer) => client.chunks.push(chunk))
        // After the listener, which would switch the socket to flowing mode again.
        if (options.paused === true) socket.pause()
        resume(Effect.succeed(client))
      })
    }),
    (client) => Effect.sync(() => client.socket.destroy())
  )

const target = (port: number): ManagedTarget.Target => ({ host: "127.0.0.1", port, scheme: "https" })

const relayOptions = (overrides: Partial<TcpRelay.Options> = {}): TcpRelay.Options => ({
  listen: { host: "127.0.0.1", port: 0 },
  dialTimeout: Duration.seconds(2),
  drainTimeout: Duration.seconds(30),
  idleTimeout: Duration.zero,
  maxConnections: 0,
  ...overrides
})

/** The relay in front of a fixed target. */
const relayTo = (port: number, overrides: Partial<TcpRelay.Options> = {}) =>
  TcpRelay.TcpRelay.layer(relayOptions(overrides)).pipe(Layer.provideMerge(TargetWatcher.layerFixed(target(port))))

/** Every test gets its own metric registry. */
const isolated = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.provideService(self, Metric.MetricRegistry, new Map())

const counterValue = (metric: Metric.Metric<number, Metric.CounterState<number>>) =>
  Effect.map(Metric.value(metric), (state) => state.count)

const relayIdle = (relay: TcpRelay.TcpRelay["Service"]) =>
  until(relay.connections, (all) => all.length === 0, "the relay has no connections", poll())

const kubeconfig = (server: string, token = "relay-test-token-abc123") =>
  [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: decoy",
    "  cluster:",
    "    server: https://192.0.2.1:6443",
    "- name: managed",
    "  cluster:",
    `    server: ${JSON.stringify(server)}`,
    "users:",
    "- name: relay",
    "  user:",
    `    token: ${token}`,
    "contexts:",
    "- name: decoy",
    "  context: { cluster: decoy, user: relay }",
    "- name: managed",
    "  context: { cluster: managed, user: relay }",
    "current-context: managed",
    ""
  ].join("\n")

/**
 * A folder laid out like a Secret volume: `kubeconfig -> ..data/kubeconfig`, and `..data` a
 * symlink to a versioned folder, swapped atomically on update (what the kubelet does).
 */
const secretVolume = Effect.acquireRelease(
  Effect.sync(() => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-relay-"))
    const write = (content: string) => publish(dir, { kubeconfig: content })
    return { dir, path: Path.join(dir, "kubeconfig"), write }
  }),
  ({ dir }) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

/** Log lines (message parts as JSON) captured for assertions. */
const captureLogs = () => {
  const lines: Array<string> = []
  const layer = Logger.layer([Logger.make((options) => lines.push(JSON.stringify(options.message)))])
  return { lines, layer }
}

// ---------------------------------------------------------------------------------------------
// relay
// ---------------------------------------------------------------------------------------------

describe("TcpRelay", () => {
  it.live("relays bytes both ways and counts them", () =>
    Effect.gen(function*() {
      const upstream = yield* upstreamServer(echo)
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const client = yield* connect(relay.address.port)
        client.socket.write("hello relay")
        yield* holds(() => received(client) === "hello relay", "the echo arrives", poll())
        const [info] = yield* relay.connections
        assert.strictEqual(info?.target, `127.0.0.1:${upstream.port}`)
        assert.isTrue(info?.connected)
        client.socket.end()
        yield* holds(() => client.closed, "the relay closes the client", poll())
        yield* relayIdle(relay)
        assert.strictEqual(yield* counterValue(Metrics.relayConnectionsTotal), 1)
        assert.strictEqual((yield* Metric.value(Metrics.relayConnectionsActive)).value, 0)
        assert.strictEqual(yield* counterValue(Metric.withAttributes(Metrics.relayBytesTotal, { direction: "upstream" })), 11)
        assert.strictEqual(yield* counterValue(Metric.withAttributes(Metrics.relayBytesTotal, { direction: "downstream" })), 11)
        assert.strictEqual((yield* Metric.value(Metrics.relayDialDuration)).count, 1)
        assert.strictEqual((yield* Metric.value(Metrics.relayConnectionDuration)).count, 1)
      }).pipe(Effect.provide(relayTo(upstream.port)))
    }).pipe(isolated))

  it.live("a client that sends and then half-closes still gets the whole reply", () =>
    Effect.gen(function*() {
      // Replies only after the request is complete (FIN received): size and a checksum.
      const upstream = yield* upstreamServer((socket) => {
        let bytes = 0
        let sum = 0
        socket.on("data", (chunk: Buffer) => {
          bytes += chunk.length
          for (const b of chunk) sum = (sum + b) % 65521
        })
        socket.on("end", () => socket.end(`${bytes}/${sum}`))
      })
      const payload = Buffer.alloc(1024 * 1024, 7)
      const expected = `${payload.length}/${(payload.length * 7) % 65521}`
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const client = yield* connect(relay.address.port)
        client.socket.end(payload)
        yield* holds(() => client.ended, "the reply and the FIN arrive", poll())
        assert.strictEqual(received(client), expected)
        yield* relayIdle(relay)
      }).pipe(Effect.provide(relayTo(upstream.port)))
    }).pipe(isolated))

  it.live("the apiserver half-closing first does not stop the client's direction", () =>
    Effect.gen(function*() {
      let lateData = ""
      let upstreamSawEnd = false
      const upstream = yield* upstreamServer((socket) => {
        socket.end("bye")
        socket.on("data", (chunk: Buffer) => (lateData += chunk.toString()))
        socket.on("end", () => (upstreamSawEnd = true))
      })
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const client = yield* connect(relay.address.port)
        yield* holds(() => client.ended, "the upstream FIN reaches the client", poll())
        assert.strictEqual(received(client), "bye")
        client.socket.end("still talking")
        yield* holds(() => upstreamSawEnd, "the late data and FIN reach the upstream", poll())
        assert.strictEqual(lateData, "still talking")
        yield* holds(() => client.closed, "the relay closes the client", poll())
        yield* relayIdle(relay)
      }).pipe(Effect.provide(relayTo(upstream.port)))
    }).pipe(isolated))

  it.live("a dial failure closes the client and counts a dial error", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const logs = captureLogs()
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const client = yield* connect(relay.address.port)
        client.socket.write("anyone there?")
        yield* holds(() => dropped(client), "the relay closes the client", poll())
        assert.strictEqual(receivedBytes(client), 0)
        yield* relayIdle(relay)
        assert.strictEqual(yield* counterValue(Metrics.relayDialErrorsTotal), 1)
        assert.strictEqual(yield* counterValue(Metrics.relayConnectionsTotal), 1)
        assert.strictEqual((yield* Metric.value(Metrics.relayConnectionsActive)).value, 0)
        assert.isTrue(logs.lines.some((line) => line.includes("cannot connect") && line.includes("ECONNREFUSED")))
      }).pipe(Effect.provide(relayTo(port).pipe(Layer.provide(logs.layer))))
    }).pipe(isolated))

  it.live("refuses connections beyond --max-connections and accepts again below it", () =>
    Effect.gen(function*() {
      const upstream = yield* upstreamServer(echo)
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const first = yield* connect(relay.address.port)
        const second = yield* connect(relay.address.port)
        first.socket.write("1")
        second.socket.write("2")
        yield* holds(() => received(first) === "1" && received(second) === "2", "both relayed", poll())
        const third = yield* connect(relay.address.port)
        third.socket.write("3")
        yield* holds(() => dropped(third), "the third is closed", poll())
        assert.strictEqual(receivedBytes(third), 0)
        assert.strictEqual(yield* counterValue(Metrics.relayConnectionsRefusedTotal), 1)
        assert.strictEqual(yield* counterValue(Metrics.relayConnectionsTotal), 3)
        assert.strictEqual((yield* relay.connections).length, 2)

        first.socket.end()
        yield* until(relay.connections, (all) => all.length === 1, "one slot free", poll())
        const fourth = yield* connect(relay.address.port)
        fourth.socket.write("4")
        yield* holds(() => received(fourth) === "4", "the fourth is relayed", poll())
        assert.isFalse(dropped(second))
      }).pipe(Effect.provide(relayTo(upstream.port, { maxConnections: 2 })))
    }).pipe(isolated))

  it.live("closes connections idle for --idle-timeout, not busy ones", () =>
    Effect.gen(function*() {
      const upstream = yield* upstreamServer(echo)
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const idle = yield* connect(relay.address.port)
        const busy = yield* connect(relay.address.port)
        idle.socket.write("x")
        const openedAt = Date.now()
        // Traffic every 100 ms keeps `busy` alive well past the 600 ms timeout.
        for (let i = 0; i < 12; i++) {
          busy.socket.write("y")
          yield* Effect.sleep("100 millis")
        }
        yield* holds(() => dropped(idle), "the idle connection is closed", poll("3 seconds"))
        assert.strictEqual(received(idle), "x")
        assert.isFalse(dropped(busy), "the busy connection is still open")
        assert.strictEqual(received(busy), "y".repeat(12))
        yield* holds(() => dropped(busy), "the busy one times out once quiet", poll("3 seconds"))
        assert.isAtLeast(Date.now() - openedAt, 1200 + 500)
        yield* relayIdle(relay)
      }).pipe(Effect.provide(relayTo(upstream.port, { idleTimeout: Duration.millis(600) })))
    }).pipe(isolated))

  it.live("a paused reader pauses the upstream instead of growing the relay's buffers", () =>
    Effect.gen(function*() {
      const total = 64 * 1024 * 1024
      const chunk = Buffer.alloc(256 * 1024, 1)
      let written = 0
      let finished = false
      // Writes 64 MiB as fast as the relay takes it (waiting for "drain" like any good writer).
      const upstream = yield* upstreamServer((socket) => {
        const pump = () => {
          while (written < total) {
            written += chunk.length
            if (!socket.write(chunk)) return void socket.once("drain", pump)
          }
          finished = true
          socket.end()
        }
        pump()
      })
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const client = yield* connect(relay.address.port, { paused: true })
        // Let the upstream push until every buffer on the way is full.
        let last = -1
        yield* holds(() => {
          const stalled = written === last
          last = written
          return stalled && written > 0
        }, "the upstream stalls", poll("10 seconds")).pipe(Effect.andThen(Effect.sleep("300 millis")))
        const [info] = yield* relay.connections
        assert.isDefined(info)
        assert.isFalse(finished, "the upstream could not write everything")
        assert.isBelow(written, total / 2)
        assert.isTrue(info!.upstreamReadPaused, "the relay stopped reading from the upstream")
        assert.isAtMost(info!.bufferedDownstream, 32 * 1024, "the relay holds at most one read buffer")
        assert.isBelow(info!.bytesDownstream, total / 2)

        client.socket.resume()
        yield* holds(() => client.ended, "all 64 MiB arrive", poll("30 seconds"))
        assert.strictEqual(receivedBytes(client), total)
        client.socket.end()
        yield* relayIdle(relay)
        assert.strictEqual(yield* counterValue(Metric.withAttributes(Metrics.relayBytesTotal, { direction: "downstream" })), total)
      }).pipe(Effect.provide(relayTo(upstream.port)))
    }).pipe(isolated), 60_000)

  it.live("bytes arrive intact and in order both ways while the reader keeps pausing", () =>
    Effect.gen(function*() {
      // Random bytes, so a reused read buffer overwritten too early would show as corruption.
      const sent = Crypto.randomBytes(24 * 1024 * 1024)
      const upstream = yield* upstreamServer(echo)
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const client = yield* connect(relay.address.port)
        // Stop reading for a moment after every 2 MiB, so the relay's writes back to the client
        // go pending and its reads stop and resume, again and again.
        let sinceBreak = 0
        client.socket.on("data", (chunk: Buffer) => {
          sinceBreak += chunk.length
          if (sinceBreak < 2 * 1024 * 1024) return
          sinceBreak = 0
          client.socket.pause()
          setTimeout(() => client.socket.resume(), 20)
        })
        for (let offset = 0; offset < sent.length; offset += 1024 * 1024) {
          client.socket.write(sent.subarray(offset, offset + 1024 * 1024))
        }
        client.socket.end()
        yield* holds(() => client.ended, "the echo ends", poll("30 seconds"))
        const back = Buffer.concat(client.chunks)
        assert.strictEqual(back.length, sent.length)
        assert.isTrue(back.equals(sent), "the echoed bytes equal the bytes sent")
      }).pipe(Effect.provide(relayTo(upstream.port)))
    }).pipe(isolated))

  it.live("after a target change, new connections go to the new target and old ones close after --drain-timeout", () =>
    Effect.gen(function*() {
      const a = yield* upstreamServer(tagged("A"))
      const b = yield* upstreamServer(tagged("B"))
      const volume = yield* secretVolume
      volume.write(kubeconfig(`https://127.0.0.1:${a.port}`))
      const drainMs = 800
      const logs = captureLogs()
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const watcher = yield* TargetWatcher
        const old = yield* connect(relay.address.port)
        old.socket.write("1")
        yield* holds(() => received(old) === "A:1", "A answers", poll())

        // Only the folder watch can notice this in time: the reload interval is a minute.
        volume.write(kubeconfig(`https://127.0.0.1:${b.port}`))
        yield* until(watcher.current, (t) => t.port === b.port, "the target moves to B", poll("3 seconds"))
        const changedAt = Date.now()
        assert.isTrue(logs.lines.some((line) => line.includes(`target updated from 127.0.0.1:${a.port} to 127.0.0.1:${b.port}`)))

        const fresh = yield* connect(relay.address.port)
        fresh.socket.write("2")
        yield* holds(() => received(fresh) === "B:2", "B answers the new connection", poll())

        // The old connection still works during the drain, then is closed.
        old.socket.write("3")
        yield* holds(() => received(old) === "A:1A:3", "A still answers the old one", poll())
        yield* holds(() => dropped(old), "the old connection is closed", poll("5 seconds"))
        const closedAfter = Date.now() - changedAt
        assert.isAtLeast(closedAfter, drainMs - 150)
        assert.isFalse(dropped(fresh), "the new connection stays")
        assert.deepStrictEqual((yield* relay.connections).map((c) => c.target), [`127.0.0.1:${b.port}`])
        // No token in any log line.
        assert.isFalse(logs.lines.some((line) => line.includes("relay-test-token")))
      }).pipe(
        Effect.provide(
          TcpRelay.TcpRelay.layer(relayOptions({ drainTimeout: Duration.millis(drainMs) })).pipe(
            Layer.provideMerge(TargetWatcher.layer({ path: volume.path, reloadInterval: Duration.minutes(1) })),
            Layer.provide(NodeFileSystem.layer),
            Layer.provideMerge(logs.layer)
          )
        )
      )
    }).pipe(isolated))

  // The drain timer runs on the TestClock; the sockets are real, so waiting for bytes uses the
  // live clock.
  it.effect("a target that comes back during the drain keeps its connections; one that stays away loses them at --drain-timeout", () =>
    Effect.gen(function*() {
      const a = yield* upstreamServer(tagged("A"))
      const ref = yield* SubscriptionRef.make(target(a.port))
      yield* Effect.gen(function*() {
        const relay = yield* TcpRelay.TcpRelay
        const client = yield* connect(relay.address.port)
        let sent = ""
        /** A round trip: only an open connection brings the echo back. */
        const roundTrip = (text: string) => {
          client.socket.write(text)
          sent += `A:${text}`
          return TestClock.withLive(holds(() => received(client) === sent, `A answers ${text}`, poll()))
        }
        yield* roundTrip("1")
        yield* SubscriptionRef.set(ref, target(a.port + 1))
        yield* roundTrip("2")
        yield* SubscriptionRef.set(ref, target(a.port))
        yield* roundTrip("3")
        yield* TestClock.adjust("10 seconds")
        yield* roundTrip("4")
        assert.isFalse(dropped(client))

        // The same connection, its target away for good: open until the drain timeout, closed at it.
        yield* SubscriptionRef.set(ref, target(a.port + 1))
        yield* roundTrip("5")
        yield* TestClock.adjust("299 millis")
        yield* roundTrip("6")
        yield* TestClock.adjust("1 millis")
        yield* TestClock.withLive(holds(() => dropped(client), "the connection is closed at the drain timeout", poll()))
      }).pipe(
        Effect.provide(
          TcpRelay.TcpRelay.layer(relayOptions({ drainTimeout: Duration.millis(300) })).pipe(
            Layer.provide(Layer.succeed(TargetWatcher, fromRef(ref)))
          )
        )
      )
    }).pipe(isolated))

  it.live("closing the layer closes the listener and every connection", () =>
    Effect.gen(function*() {
      const upstream = yield* upstreamServer(echo)
      const scope = yield* Scope.make()
      const relay = Context.get(yield* Layer.buildWithScope(relayTo(upstream.port), scope), TcpRelay.TcpRelay)
      const client = yield* connect(relay.address.port)
      client.socket.write("x")
      yield* holds(() => received(client) === "x", "the echo arrives", poll())
      yield* Scope.close(scope, Exit.void)
      yield* holds(() => dropped(client), "the client is closed", poll())
      const refused = yield* Effect.callback<boolean>((resume) => {
        const socket = Net.connect({ port: relay.address.port, host: "127.0.0.1" })
        socket.once("connect", () => {
          socket.destroy()
          resume(Effect.succeed(false))
        })
        socket.once("error", () => resume(Effect.succeed(true)))
      })
      assert.isTrue(refused, "nothing listens any more")
    }).pipe(isolated))

  it.effect("with shutdownDrain, closing the layer stops accepting at once and lets open connections finish until the drain ends", () =>
    Effect.gen(function*() {
      const upstream = yield* upstreamServer(echo)
      const scope = yield* Scope.make()
      const relay = Context.get(
        yield* Layer.buildWithScope(relayTo(upstream.port, { shutdownDrain: Duration.millis(1500) }), scope),
        TcpRelay.TcpRelay
      )
      const client = yield* connect(relay.address.port)
      client.socket.write("a")
      yield* TestClock.withLive(holds(() => received(client) === "a", "the echo arrives", poll()))
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      const refused = Effect.callback<boolean>((resume) => {
        const socket = Net.connect({ port: relay.address.port, host: "127.0.0.1" })
        socket.once("connect", () => {
          socket.destroy()
          resume(Effect.succeed(false))
        })
        socket.once("error", () => resume(Effect.succeed(true)))
      })
      yield* TestClock.withLive(until(refused, (isRefused) => isRefused, "the listener closes", poll("1 second")))
      // The open connection still carries bytes until the very end of the drain.
      yield* TestClock.adjust("1499 millis")
      client.socket.write("b")
      yield* TestClock.withLive(holds(() => received(client) === "ab", "the echo arrives during the drain", poll()))
      assert.isFalse(dropped(client))
      yield* TestClock.adjust("1 millis")
      yield* Fiber.join(closing)
      yield* TestClock.withLive(holds(() => dropped(client), "the client is closed once the drain ends", poll()))
    }).pipe(isolated))

  it.live("with shutdownDrain, the layer closes as soon as the last connection ends", () =>
    Effect.gen(function*() {
      const upstream = yield* upstreamServer(echo)
      const scope = yield* Scope.make()
      const relay = Context.get(
        yield* Layer.buildWithScope(relayTo(upstream.port, { shutdownDrain: Duration.seconds(30) }), scope),
        TcpRelay.TcpRelay
      )
      const client = yield* connect(relay.address.port)
      client.socket.write("a")
      yield* holds(() => received(client) === "a", "the echo arrives", poll())
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      client.socket.end()
      const closed = yield* Fiber.join(closing).pipe(Effect.timeoutOption("5 seconds"))
      assert.isTrue(closed._tag === "Some", "closed well before the 30 s drain timeout")
    }).pipe(isolated))
})

// ---------------------------------------------------------------------------------------------
// target watcher
// ---------------------------------------------------------------------------------------------

describe("TargetWatcher", () => {
  it.live("an unsupported scheme is refused at startup with a clear error", () =>
    Effect.gen(function*() {
      const volume = yield* secretVolume
      volume.write(kubeconfig("ftp://127.0.0.1:21"))
      const exit = yield* Layer.build(
        TargetWatcher.layer({ path: volume.path, reloadInterval: Duration.minutes(1) }).pipe(Layer.provide(NodeFileSystem.layer))
      ).pipe(Effect.scoped, Effect.exit)
      assert.isTrue(Exit.isFailure(exit))
      const message = Exit.isFailure(exit) ? String(exit.cause) : ""
      assert.include(message, "managed kubeconfig: unsupported server scheme \"ftp\"")
    }))

  it.live("a missing file is refused at startup, naming the path", () =>
    Effect.gen(function*() {
      const volume = yield* secretVolume
      const exit = yield* Layer.build(
        TargetWatcher.layer({ path: volume.path, reloadInterval: Duration.minutes(1) }).pipe(Layer.provide(NodeFileSystem.layer))
      ).pipe(Effect.scoped, Effect.exit)
      assert.isTrue(Exit.isFailure(exit))
      assert.include(Exit.isFailure(exit) ? String(exit.cause) : "", `cannot read the managed kubeconfig ${volume.path}`)
    }))

  it.live("an invalid update keeps the last good target and logs no file content", () =>
    Effect.gen(function*() {
      const volume = yield* secretVolume
      volume.write(kubeconfig("https://127.0.0.1:6443"))
      const logs = captureLogs()
      yield* Effect.gen(function*() {
        const watcher = yield* TargetWatcher
        volume.write(kubeconfig("gopher://127.0.0.1:70", "leaky-token-value"))
        yield* watcher.reload
        volume.write("clusters: [unterminated\n  token: leaky-token-value")
        yield* watcher.reload
        Fs.rmSync(volume.path)
        yield* watcher.reload
        assert.deepStrictEqual(yield* watcher.current, { host: "127.0.0.1", port: 6443, scheme: "https" })
        const warnings = logs.lines.filter((line) => line.includes("keeping the last good target"))
        assert.isAtLeast(warnings.length, 3)
        assert.isFalse(logs.lines.some((line) => line.includes("leaky-token-value") || line.includes("relay-test-token")))
        // A good file is picked up again by the periodic reload.
        volume.write(kubeconfig("https://[::1]:7443"))
        yield* until(watcher.current, (t) => t.port === 7443, "the reload interval picks up the fix", poll("3 seconds"))
        assert.strictEqual(ManagedTarget.format(yield* watcher.current), "[::1]:7443")
      }).pipe(
        Effect.provide(
          TargetWatcher.layer({ path: volume.path, reloadInterval: Duration.millis(200) }).pipe(
            Layer.provide(NodeFileSystem.layer),
            Layer.provideMerge(logs.layer)
          )
        )
      )
    }))
})

// ---------------------------------------------------------------------------------------------
// readiness
// ---------------------------------------------------------------------------------------------

describe("readiness", () => {
  const readiness = (port: number) =>
    Effect.gen(function*() {
      const probes = yield* Probes
      return yield* probes.readiness
    }).pipe(
      Effect.provide(
        TcpRelay.layerReadiness({ timeout: "1 second", cacheFor: "1 second" }).pipe(
          Layer.provideMerge(Probes.layerNoServer),
          Layer.provide(TargetWatcher.layerFixed(target(port)))
        )
      )
    )

  it.live("ready when the target accepts TCP connections", () =>
    Effect.gen(function*() {
      const upstream = yield* upstreamServer(echo)
      assert.deepStrictEqual(yield* readiness(upstream.port), [])
    }))

  it.live("not ready, with the reason, when it does not", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const failures = yield* readiness(port)
      assert.strictEqual(failures.length, 1)
      assert.strictEqual(failures[0]?.name, "managed-apiserver")
      assert.include(failures[0]?.reason ?? "", `cannot connect to 127.0.0.1:${port}`)
    }))
})

// ---------------------------------------------------------------------------------------------
// pure parts
// ---------------------------------------------------------------------------------------------

describe("ManagedTarget", () => {
  const ok = (text: string) => Result.getOrThrowWith(ManagedTarget.fromKubeconfig(text), (e) => new Error(e.message))
  const error = (text: string) => {
    const result = ManagedTarget.fromKubeconfig(text)
    return Result.isFailure(result) ? result.failure.message : "(no error)"
  }

  it("takes the current context's cluster, with the scheme's default port", () => {
    assert.deepStrictEqual(ok(kubeconfig("https://api.example.com")), { host: "api.example.com", port: 443, scheme: "https" })
    assert.deepStrictEqual(ok(kubeconfig("http://10.1.2.3")), { host: "10.1.2.3", port: 80, scheme: "http" })
    assert.strictEqual(ManagedTarget.format(ok(kubeconfig("https://[fd00::1]:6443/prefix"))), "[fd00::1]:6443")
  })

  it("without a current context, uses the only cluster", () => {
    const text = "clusters:\n- name: only\n  cluster:\n    server: https://only:6443\n"
    assert.deepStrictEqual(ok(text), { host: "only", port: 6443, scheme: "https" })
  })

  it("explains what is missing, never quoting values", () => {
    assert.strictEqual(error(kubeconfig("ftp://host")), "managed kubeconfig: unsupported server scheme \"ftp\"")
    assert.strictEqual(error(""), "managed kubeconfig: kubeconfig is malformed: the document is empty")
    assert.include(error("a: [b\ntoken: secret-value"), "not valid YAML")
    assert.notInclude(error("a: [b\ntoken: secret-value"), "secret-value")
    assert.strictEqual(
      error(kubeconfig("https://x").replace("current-context: managed", "current-context: gone")),
      "managed kubeconfig: current context \"gone\" is not defined in contexts"
    )
    assert.strictEqual(
      error("clusters:\n- name: a\n  cluster: {server: https://a}\n- name: b\n  cluster: {server: https://b}\n"),
      "managed kubeconfig: kubeconfig must have a current context or exactly one cluster"
    )
    assert.strictEqual(
      error("clusters:\n- name: a\n  cluster: {}\ncontexts:\n- name: c\n  context: {cluster: a}\ncurrent-context: c\n"),
      "managed kubeconfig: cluster \"a\" has no server"
    )
  })
})

describe("managed-apiserver-proxy flags", () => {
  const given = {
    managedKubeconfig: "/etc/managed/kubeconfig",
    listen: { host: undefined, port: 8443 },
    dialTimeout: Duration.seconds(30),
    reloadInterval: Duration.seconds(30),
    drainTimeout: Duration.seconds(30),
    maxConnections: 1024,
    idleTimeout: Duration.zero
  }
  const message = (overrides: Partial<typeof given>) => {
    const result = TcpRelayOptions.resolve({ ...given, ...overrides })
    return Result.isFailure(result) ? result.failure.message : "(valid)"
  }

  it("requires --managed-kubeconfig with a message that says what to pass", () => {
    assert.include(message({ managedKubeconfig: "" }), "--managed-kubeconfig is required")
    assert.include(message({ managedKubeconfig: "  " }), "--managed-kubeconfig is required")
  })

  it("accepts the defaults and refuses nonsense", () => {
    assert.strictEqual(message({}), "(valid)")
    assert.strictEqual(message({ maxConnections: 0, drainTimeout: Duration.zero }), "(valid)")
    assert.include(message({ maxConnections: -1 }), "--max-connections")
    assert.include(message({ dialTimeout: Duration.zero }), "--dial-timeout")
    assert.include(message({ reloadInterval: Duration.zero }), "--reload-interval")
  })
})
