/**
 * The managed-apiserver relay in front of real kube-apiservers, used by kubectl with TLS end to
 * end (the serving certificates carry IP SAN 127.0.0.1, so pointing a kubeconfig at the relay's
 * loopback port verifies): plain requests, a watch, a large list compared with a direct one, and
 * a target change (the managed kubeconfig rewritten to a second apiserver) with drain.
 */
import { NodeServices } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { CoreV1Api } from "@kubernetes/client-node"
import { Context, Duration, Effect, Exit, Layer, Logger, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as ApiServerRelay from "../../layers/ApiServerRelay.ts"
import { Probes } from "../../src/observability/Probes.ts"
import { TargetWatcher } from "../../src/relay/TargetWatcher.ts"
import { TcpRelay } from "../../src/relay/TcpRelay.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { publish } from "../support/volume.ts"
import { until } from "../support/eventually.ts"
import { noApiserver } from "../support/apiserver.ts"
import { kubectl, type Run } from "../support/local.ts"

const succeeded = (run: Run, what: string): string => {
  assert.strictEqual(run.code, 0, `${what} failed: ${run.stderr}`)
  return run.stdout
}

/** A long-running kubectl whose output is collected; killed with the scope. */
const kubectlStream = (kubeconfig: string, args: ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const child = ChildProcess.spawn("kubectl", ["--kubeconfig", kubeconfig, ...args], { stdio: ["ignore", "pipe", "pipe"] })
      const output = { stdout: "", stderr: "", exited: false }
      child.stdout.on("data", (chunk: Buffer) => (output.stdout += chunk.toString()))
      child.stderr.on("data", (chunk: Buffer) => (output.stderr += chunk.toString()))
      child.on("exit", () => (output.exited = true))
      return { child, output }
    }),
    ({ child }) => Effect.sync(() => child.kill("SIGKILL"))
  )

const call = <A>(f: () => Promise<A>): Effect.Effect<A> => Effect.promise(f)

describe.skipIf(noApiserver)("managed-apiserver relay (real apiservers)", () => {
  const drainTimeout = Duration.seconds(3)
  const logLines: Array<string> = []
  let scope: Scope.Closeable
  let first: Apiserver.ApiserverInfo
  let second: Apiserver.ApiserverInfo
  let dir: string
  let relay: TcpRelay["Service"]
  let watcher: TargetWatcher["Service"]
  let probes: Probes["Service"]
  /** Secret-volume style update of the managed kubeconfig (symlink swap). */
  let writeManaged: (yaml: string) => void
  /** A kubeconfig file for `info`'s admin, with the server set to the relay. */
  let viaRelay: (info: Apiserver.ApiserverInfo) => string

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make())
    ;[first, second] = await Effect.runPromise(
      Effect.all([Apiserver.make({ name: "relay-first" }), Apiserver.make({ name: "relay-second" })], { concurrency: "unbounded" })
        .pipe(Scope.provide(scope))
    )
    dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-relay-it-"))
    const volume = Path.join(dir, "managed")
    writeManaged = (yaml) => publish(volume, { kubeconfig: yaml })
    writeManaged(first.kubeconfigYaml)

    const context = await Effect.runPromise(
      Layer.buildWithScope(
        ApiServerRelay.layerNoDeps({
          managedKubeconfig: Path.join(volume, "kubeconfig"),
          listen: { host: "127.0.0.1", port: 0 },
          dialTimeout: Duration.seconds(5),
          reloadInterval: Duration.seconds(30),
          drainTimeout,
          maxConnections: 64,
          idleTimeout: Duration.zero
        }).pipe(Layer.provideMerge(Probes.layerNoServer), Layer.provide(NodeServices.layer)),
        scope
      ).pipe(Effect.provide(Logger.layer([Logger.map(Logger.formatJson, (line) => void logLines.push(line))])))
    )
    relay = Context.get(context, TcpRelay)
    watcher = Context.get(context, TargetWatcher)
    probes = Context.get(context, Probes)
    viaRelay = (info) => {
      const path = Path.join(dir, `${info.name}-via-relay.kubeconfig`)
      Fs.writeFileSync(path, info.kubeconfigYaml.replace(info.server, `https://127.0.0.1:${relay.address.port}`), { mode: 0o600 })
      return path
    }
  })

  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
    if (dir !== undefined) Fs.rmSync(dir, { recursive: true, force: true })
  })

  it.live("kubectl works through the relay, TLS end to end, and the relay is ready", () =>
    Effect.gen(function*() {
      assert.strictEqual(first.kubeconfigYaml.includes(first.server), true)
      const out = succeeded(yield* kubectl(viaRelay(first), ["get", "ns", "-o", "name"]), "kubectl get ns")
      assert.include(out, "namespace/default")
      assert.include(out, "namespace/kube-system")
      assert.deepStrictEqual(yield* probes.readiness, [])
    }))

  it.live("a watch through the relay sees an object created afterwards", () =>
    Effect.gen(function*() {
      const core = Apiserver.kubeConfig(first).makeApiClient(CoreV1Api)
      yield* Apiserver.createNamespace(first, "watched")
      yield* call(() => core.createNamespacedConfigMap({ namespace: "watched", body: { metadata: { name: "before" } } }))
      const watch = yield* kubectlStream(viaRelay(first), ["get", "configmaps", "-n", "watched", "--watch", "-o", "name"])
      yield* until(Effect.sync(() => watch.output.stdout), (out) => out.includes("configmap/before"), "the watch lists", {
        timeout: "20 seconds"
      })
      // The watch request follows the list on the same connection; give it a moment to start.
      yield* Effect.sleep("1 second")
      yield* call(() => core.createNamespacedConfigMap({ namespace: "watched", body: { metadata: { name: "after" } } }))
      yield* until(Effect.sync(() => watch.output.stdout), (out) => out.includes("configmap/after"), "the event arrives", {
        timeout: "20 seconds"
      })
      assert.isFalse(watch.output.exited, `kubectl exited: ${watch.output.stderr}`)
    }))

  it.live("a large list through the relay equals the direct one", () =>
    Effect.gen(function*() {
      const core = Apiserver.kubeConfig(first).makeApiClient(CoreV1Api)
      yield* Apiserver.createNamespace(first, "bulk")
      const filler = "x".repeat(4096)
      yield* Effect.forEach(
        Array.from({ length: 300 }, (_, i) => i),
        (i) =>
          call(() =>
            core.createNamespacedConfigMap({
              namespace: "bulk",
              body: { metadata: { name: `cm-${String(i).padStart(3, "0")}` }, data: { index: String(i), filler } }
            })
          ),
        { concurrency: 16, discard: true }
      )
      const args = ["get", "configmaps", "-n", "bulk", "-o", "json"]
      const throughRelay = JSON.parse(succeeded(yield* kubectl(viaRelay(first), args), "list via relay"))
      const direct = JSON.parse(succeeded(yield* kubectl(first.kubeconfigPath, args), "list direct"))
      assert.strictEqual(throughRelay.items.length, 300)
      assert.deepStrictEqual(throughRelay.items, direct.items)
      const bytes = JSON.stringify(throughRelay).length
      assert.isAbove(bytes, 300 * 4096)
    }))

  it.live("after the managed kubeconfig moves to another apiserver, new connections land there and old ones drain", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(second, "only-on-second")
      // A long-lived connection to the first apiserver, to see it drained.
      const watch = yield* kubectlStream(viaRelay(first), ["get", "ns", "--watch", "-o", "name"])
      yield* until(Effect.sync(() => watch.output.stdout), (out) => out.includes("namespace/default"), "the watch lists", {
        timeout: "20 seconds"
      })
      const firstTarget = `127.0.0.1:${first.port}`
      const secondTarget = `127.0.0.1:${second.port}`
      yield* until(relay.connections, (all) => all.some((c) => c.target === firstTarget), "a connection to the first apiserver")

      writeManaged(second.kubeconfigYaml)
      yield* until(watcher.current, (t) => t.port === second.port, "the relay follows the file", { timeout: "10 seconds" })
      const switchedAt = Date.now()
      assert.isTrue(logLines.some((line) => line.includes(`target updated from ${firstTarget} to ${secondTarget}`)))

      // The second apiserver's certificate and admin only work if the bytes reach it.
      const out = succeeded(yield* kubectl(viaRelay(second), ["get", "ns", "only-on-second", "-o", "name"]), "get ns via relay")
      assert.strictEqual(out.trim(), "namespace/only-on-second")
      const wrongCa = yield* kubectl(viaRelay(first), ["get", "ns", "default"])
      assert.notStrictEqual(wrongCa.code, 0, "the first apiserver's kubeconfig does not verify the second apiserver")

      // Connections to the first apiserver are closed once the drain timeout has passed.
      yield* until(relay.connections, (all) => all.every((c) => c.target === secondTarget), "old connections drained", {
        timeout: "15 seconds"
      })
      assert.isAtLeast(Date.now() - switchedAt, Duration.toMillis(drainTimeout) - 500)
      yield* until(Effect.sync(() => watch.output.exited || watch.output.stderr !== ""), (gone) => gone, "kubectl sees its watch end", {
        timeout: "15 seconds"
      })
      assert.deepStrictEqual(yield* probes.readiness, [])

      // No credential material in any log line.
      const secrets = [first, second].flatMap((info) =>
        [...info.kubeconfigYaml.matchAll(/(?:client-key-data|client-certificate-data|token): *(\S{24})/g)].map((m) => m[1]!)
      )
      assert.isAbove(secrets.length, 0)
      for (const line of logLines) {
        for (const secret of secrets) assert.notInclude(line, secret)
      }
    }))
})
