/**
 * Proves the kube-apiserver harness against the real binaries: three instances start in parallel,
 * CRDs install, TokenRequest/TokenReview work, the kubeconfig works for kubectl, and closing the
 * scope leaves no process, port or folder behind. Each instance starts once for the whole file.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import {
  ApiException,
  AuthenticationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  setHeaderOptions
} from "@kubernetes/client-node"
import { Data, Duration, Effect, Exit, Result, Scope } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import { Apiserver, EnvtestAssets, Fixtures } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"

const missing = EnvtestAssets.lookup()
if (Result.isFailure(missing)) {
  console.warn(`[Apiserver.test] skipping the real-apiserver suite: ${missing.failure.message}`)
}

const { group, plural, version } = Fixtures.managedClusterAddOnResource

// Promise-returning client calls, as Effects; failures keep the HTTP status for assertions.
class CallFailed extends Data.TaggedError("CallFailed")<{ readonly status: number | undefined; readonly message: string }> {}

const call = <A>(f: () => Promise<A>): Effect.Effect<A, CallFailed> =>
  Effect.tryPromise({
    try: f,
    catch: (e) =>
      new CallFailed({
        status: e instanceof ApiException ? e.code : undefined,
        message: e instanceof Error ? e.message.split("\n")[0] ?? "" : String(e)
      })
  })

const statusOf = (error: CallFailed): number | undefined => error.status

const kubectl = (args: ReadonlyArray<string>): Effect.Effect<{ code: number; stdout: string; stderr: string }> =>
  Effect.callback((resume) => {
    ChildProcess.execFile("kubectl", [...args], { timeout: 30_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : -1
      resume(Effect.succeed({ code, stdout, stderr: error !== null && code === -1 ? `${error.message}\n${stderr}` : stderr }))
    })
  })

const portOpen = (host: string, port: number): Effect.Effect<boolean> =>
  Effect.callback((resume) => {
    const socket = Net.connect({ host, port })
    socket.once("connect", () => {
      socket.destroy()
      resume(Effect.succeed(true))
    })
    socket.once("error", () => resume(Effect.succeed(false)))
  })

const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe.skipIf(noApiserver)("Apiserver (real kube-apiserver)", () => {
  let scope: Scope.Closeable
  let hub: Apiserver.ApiserverInfo
  let hosting: Apiserver.ApiserverInfo
  let managed: Apiserver.ApiserverInfo

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make("parallel"))
    const [took, infos] = await Effect.runPromise(
      Effect.all([
        Apiserver.make({ name: "hub", crds: [Fixtures.managedClusterAddOnCrd] }),
        Apiserver.make({ name: "hosting" }),
        Apiserver.make({ name: "managed" })
      ], { concurrency: "unbounded" }).pipe(Effect.timed, Scope.provide(scope))
    )
    ;[hub, hosting, managed] = infos
    console.info(`[Apiserver.test] three apiservers (one with a CRD) ready in ${Duration.format(took)}`)
  })

  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  it.live("starts three independent instances in parallel", () =>
    Effect.gen(function*() {
      const all = [hub, hosting, managed]
      assert.strictEqual(new Set(all.map((info) => info.port)).size, 3)
      assert.strictEqual(new Set(all.map((info) => info.caPem)).size, 3)
      for (const info of all) {
        assert.strictEqual(info.server, `https://127.0.0.1:${info.port}`)
        assert.isTrue(Fs.existsSync(info.kubeconfigPath))
        assert.strictEqual(Fs.readFileSync(info.kubeconfigPath, "utf8"), info.kubeconfigYaml)
      }
      // A namespace made in one instance does not exist in the others.
      yield* Apiserver.createNamespace(hub, "only-on-hub")
      yield* Apiserver.createNamespace(hub, "only-on-hub") // idempotent
      const read = (info: Apiserver.ApiserverInfo) =>
        call(() => Apiserver.kubeConfig(info).makeApiClient(CoreV1Api).readNamespace({ name: "only-on-hub" }))
      assert.strictEqual((yield* read(hub)).metadata?.name, "only-on-hub")
      assert.strictEqual(statusOf(yield* Effect.flip(read(hosting))), 404)
      assert.strictEqual(statusOf(yield* Effect.flip(read(managed))), 404)
    }))

  it.live("installs the ManagedClusterAddOn CRD, served with its schema and status subresource", () =>
    Effect.gen(function*() {
      const custom = Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi)
      yield* Apiserver.createNamespace(hub, "cluster1")
      const created = yield* call(() =>
        custom.createNamespacedCustomObject({
          group,
          version,
          namespace: "cluster1",
          plural,
          body: {
            apiVersion: `${group}/${version}`,
            kind: "ManagedClusterAddOn",
            metadata: { name: "tether" },
            spec: { installNamespace: "open-cluster-management-agent-addon" }
          }
        })
      )
      assert.strictEqual(created.spec.installNamespace, "open-cluster-management-agent-addon")

      const patchStatus = (status: unknown) =>
        call(() =>
          custom.patchNamespacedCustomObjectStatus(
            { group, version, namespace: "cluster1", plural, name: "tether", body: { status } },
            setHeaderOptions("Content-Type", PatchStrategy.MergePatch)
          )
        )
      const condition = {
        type: "Available",
        status: "True",
        reason: "Relaying",
        message: "relay is up",
        lastTransitionTime: "2026-01-01T00:00:00Z"
      }
      const patched = yield* patchStatus({ conditions: [condition], healthCheck: { mode: "Customized" } })
      assert.deepStrictEqual(patched.status.conditions, [condition])
      assert.deepStrictEqual(patched.status.healthCheck, { mode: "Customized" }) // other status fields kept

      const invalid = yield* Effect.flip(patchStatus({ conditions: [{ ...condition, status: "Maybe" }] }))
      assert.strictEqual(statusOf(invalid), 422)

      // Installed on the hub only.
      const elsewhere = yield* Effect.flip(call(() =>
        Apiserver.kubeConfig(managed).makeApiClient(CustomObjectsApi).listClusterCustomObject({ group, version, plural })
      ))
      assert.strictEqual(statusOf(elsewhere), 404)
    }))

  it.live("issues service-account tokens that TokenReview authenticates", () =>
    Effect.gen(function*() {
      const token = yield* Apiserver.serviceAccountToken(hub, "agents", "agent", 3600)
      const again = yield* Apiserver.serviceAccountToken(hub, "agents", "agent", 3600) // SA exists already
      assert.notStrictEqual(again, "")

      const review = (info: Apiserver.ApiserverInfo, t: string) =>
        call(() =>
          Apiserver.kubeConfig(info).makeApiClient(AuthenticationV1Api).createTokenReview({ body: { spec: { token: t } } })
        )
      const ok = yield* review(hub, token)
      assert.isTrue(ok.status?.authenticated)
      assert.strictEqual(ok.status?.user?.username, "system:serviceaccount:agents:agent")
      assert.include(ok.status?.audiences ?? [], Apiserver.serviceAccountIssuer)

      const tampered = `${token.slice(0, -4)}${token.slice(-4) === "AAAA" ? "BBBB" : "AAAA"}`
      assert.notStrictEqual((yield* review(hub, tampered)).status?.authenticated, true)
      // Each instance has its own signing key.
      assert.notStrictEqual((yield* review(managed, token)).status?.authenticated, true)

      // As a bearer token the SA is authenticated but, under RBAC, not allowed to list namespaces.
      const asAgent = Apiserver.kubeconfigForToken(hub, token, { namespace: "agents" })
      // (no assert that would print the kubeconfig: it holds the token)
      assert.isFalse(asAgent.includes("client-key-data"))
      const kc = Apiserver.kubeConfig({ ...hub, kubeconfigYaml: asAgent })
      const denied = yield* Effect.flip(call(() => kc.makeApiClient(CoreV1Api).listNamespace()))
      assert.strictEqual(statusOf(denied), 403)
    }))

  it.live("gives a kubeconfig that kubectl can use", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(hosting, "from-the-harness")
      const result = yield* kubectl([
        "--kubeconfig",
        hosting.kubeconfigPath,
        "--cache-dir",
        Path.join(hosting.dir, "kubectl-cache"),
        "get",
        "ns",
        "-o",
        "name"
      ])
      assert.strictEqual(result.code, 0, result.stderr)
      const names = result.stdout.trim().split("\n")
      assert.include(names, "namespace/from-the-harness")
      assert.include(names, "namespace/default")
    }))

  // Runs last: closes the file's scope itself and checks nothing is left behind.
  it.live("stops every process and frees every port and folder when the scope closes", () =>
    Effect.gen(function*() {
      const all = [hub, hosting, managed]
      for (const info of all) {
        assert.isTrue(processAlive(info.pids.apiserver))
        assert.isTrue(processAlive(info.pids.etcd))
        assert.isTrue(yield* portOpen(info.host, info.port))
      }
      const [took] = yield* Effect.timed(Scope.close(scope, Exit.void))
      console.info(`[Apiserver.test] three apiservers stopped in ${Duration.format(took)}`)
      for (const info of all) {
        assert.isFalse(processAlive(info.pids.apiserver), `${info.name} kube-apiserver still running`)
        assert.isFalse(processAlive(info.pids.etcd), `${info.name} etcd still running`)
        assert.isFalse(yield* portOpen(info.host, info.port), `${info.name} port ${info.port} still open`)
        const etcdPort = Number(new URL(info.etcdUrl).port)
        assert.isFalse(yield* portOpen("127.0.0.1", etcdPort), `${info.name} etcd port still open`)
        assert.isFalse(Fs.existsSync(info.dir), `${info.dir} still exists`)
      }
    }))
})
