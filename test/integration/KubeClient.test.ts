/**
 * The Kubernetes edge against a real apiserver: every failure becomes a KubeError with the right
 * reason and retry classification and a message without credentials; the bearer token comes from
 * the token source on every request; the list+watch stream sees changes.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { CoreV1Api, RbacAuthorizationV1Api } from "@kubernetes/client-node"
import { Effect, Exit, Fiber, Redacted, Schedule, Scope, Stream } from "effect"
import * as Net from "node:net"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import type * as KubeError from "../../src/kube/KubeError.ts"
import * as LeaseStore from "../../src/kube/LeaseStore.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import * as FaultProxy from "../support/FaultProxy.ts"

describe.skipIf(noApiserver)("KubeClient (real apiserver)", () => {
  let scope: Scope.Closeable
  let server: Apiserver.ApiserverInfo

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make())
    server = await Effect.runPromise(Apiserver.make({ name: "kube", auditLog: true }).pipe(Scope.provide(scope)))
  })
  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  const admin = () => ClientNodeKube.make({ cluster: "test", connection: Apiserver.connection(server) })
  /** A kubeconfig without a client certificate (which the apiserver would prefer over any bearer). */
  const tokenOnly = () => Apiserver.connectionOf(Apiserver.kubeconfigForToken(server, "replaced-by-the-token-source"))
  const reasonOf = <A>(effect: Effect.Effect<A, KubeError.KubeError>) =>
    Effect.map(Effect.flip(effect), (e) => ({ reason: e.reason, retryable: e.retryable, message: e.message }))

  it.live("classifies NotFound, Conflict, Invalid and Transport failures", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(server, "errors")
      const kube = admin()
      const notFound = yield* reasonOf(kube.getSecret("errors", "nope"))
      assert.deepStrictEqual([notFound.reason, notFound.retryable], ["NotFound", false])
      assert.include(notFound.message, 'secrets "nope" not found')

      const created = yield* kube.createSecret("errors", { metadata: { name: "s" }, stringData: { a: "1" } })
      yield* kube.replaceSecret("errors", { ...created, stringData: { a: "2" } })
      const conflict = yield* reasonOf(kube.replaceSecret("errors", { ...created, stringData: { a: "3" } }))
      assert.deepStrictEqual([conflict.reason, conflict.retryable], ["Conflict", true])

      const invalid = yield* reasonOf(kube.createSecret("errors", { metadata: { name: "Not_A_Valid_Name" } }))
      assert.deepStrictEqual([invalid.reason, invalid.retryable], ["Invalid", false])

      const closedPort = yield* Effect.promise(() =>
        new Promise<number>((resolve) => {
          const probe = Net.createServer().listen(0, "127.0.0.1", () => {
            const port = (probe.address() as Net.AddressInfo).port
            probe.close(() => resolve(port))
          })
        })
      )
      const unreachable = Apiserver.connection(server, `https://127.0.0.1:${closedPort}`)
      const transport = yield* reasonOf(ClientNodeKube.make({ cluster: "test", connection: unreachable }).getSecret("errors", "s"))
      assert.deepStrictEqual([transport.reason, transport.retryable], ["Transport", true])
    }))

  it.live("a request the server never answers fails as a Transport error at the request bound", () =>
    Effect.gen(function*() {
      const proxy = yield* FaultProxy.make({ host: "127.0.0.1", port: Number(new URL(server.server).port) })
      const connection = Apiserver.connectionOf(FaultProxy.throughProxy(server.kubeconfigYaml, server.server, proxy))
      const kube = ClientNodeKube.make({ cluster: "test", connection, requestTimeoutMs: 1_000 })
      yield* Apiserver.createNamespace(server, "silent")
      // A first answer, so the next request goes on a connection that is already open: after an
      // event-loop turn, as undici's pool takes a connection as busy until then (and would open
      // another for a request sent in the same turn).
      yield* Effect.flip(kube.getSecret("silent", "nope"))
      yield* Effect.promise(() => new Promise<void>((resolve) => setImmediate(resolve)))
      proxy.stall()
      const started = Date.now()
      const failure = yield* reasonOf(kube.getSecret("silent", "nope")).pipe(Effect.timeout("20 seconds"))
      const took = Date.now() - started
      assert.strictEqual(failure.reason, "Transport")
      assert.isTrue(failure.retryable)
      assert.match(failure.message, /UND_ERR_HEADERS_TIMEOUT/)
      assert.isAtLeast(took, 900)
      assert.strictEqual(proxy.accepted(), 1, "the request went down the frozen connection")
    }).pipe(Effect.scoped))

  it.live("Unauthorized and Forbidden carry the apiserver's explanation but never the token", () =>
    Effect.gen(function*() {
      const token = yield* Apiserver.serviceAccountToken(server, "rbac", "reader", 3600)
      const withToken = (value: string) =>
        ClientNodeKube.make({ cluster: "test", connection: tokenOnly(), tokenSource: async () => Redacted.make(value) })
      const forbidden = yield* reasonOf(withToken(token).getSecret("rbac", "x"))
      assert.deepStrictEqual([forbidden.reason, forbidden.retryable], ["Forbidden", false])
      assert.include(forbidden.message, "system:serviceaccount:rbac:reader")
      assert.notInclude(forbidden.message, token)

      const unauthorized = yield* reasonOf(withToken(`${token.slice(0, -8)}AAAAAAAA`).getSecret("rbac", "x"))
      assert.deepStrictEqual([unauthorized.reason, unauthorized.retryable], ["Unauthorized", false])
      assert.notInclude(unauthorized.message, token.slice(0, 40))
    }))

  it.live("takes the bearer token from the token source on every request", () =>
    Effect.gen(function*() {
      const reader = yield* Apiserver.serviceAccountToken(server, "rotate", "reader", 3600)
      const nobody = yield* Apiserver.serviceAccountToken(server, "rotate", "nobody", 3600)
      const rbac = Apiserver.kubeConfig(server).makeApiClient(RbacAuthorizationV1Api)
      yield* Effect.promise(() =>
        rbac.createNamespacedRole({
          namespace: "rotate",
          body: { metadata: { name: "read-secrets" }, rules: [{ apiGroups: [""], resources: ["secrets"], verbs: ["get"] }] }
        })
      )
      yield* Effect.promise(() =>
        rbac.createNamespacedRoleBinding({
          namespace: "rotate",
          body: {
            metadata: { name: "reader" },
            roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "read-secrets" },
            subjects: [{ kind: "ServiceAccount", name: "reader", namespace: "rotate" }]
          }
        })
      )
      yield* Effect.promise(() =>
        Apiserver.kubeConfig(server).makeApiClient(CoreV1Api).createNamespacedSecret({ namespace: "rotate", body: { metadata: { name: "s" } } })
      )
      let current = nobody
      const kube = ClientNodeKube.make({ cluster: "test", connection: tokenOnly(), tokenSource: async () => Redacted.make(current) })
      const denied = yield* reasonOf(kube.getSecret("rotate", "s"))
      assert.strictEqual(denied.reason, "Forbidden")
      current = reader
      const secret = yield* kube.getSecret("rotate", "s")
      assert.strictEqual(secret.metadata?.name, "s")
      current = nobody
      assert.strictEqual((yield* reasonOf(kube.getSecret("rotate", "s"))).reason, "Forbidden")
    }))

  // The client sends and returns the apiserver's JSON (no client-node model classes): what the
  // readers of timestamps (TokenIssuer, LeaseStore) get is the wire string.
  it.live("objects are the apiserver's JSON: timestamps are RFC 3339 strings, a Lease's MicroTime keeps its microseconds", () =>
    Effect.gen(function*() {
      yield* Apiserver.serviceAccountToken(server, "json", "sa", 600)
      const kube = admin()

      const before = Date.now()
      const issued = yield* kube.createServiceAccountToken("json", "sa", { spec: { audiences: [], expirationSeconds: 3600 } })
      const after = Date.now()
      const expiry: unknown = issued.status?.expirationTimestamp
      assert.strictEqual(typeof expiry, "string")
      const expiresAt = Date.parse(expiry as string)
      // Whole seconds on the wire: within a second of the request's window plus the hour asked for.
      assert.isAtLeast(expiresAt, before + 3600_000 - 1000)
      assert.isAtMost(expiresAt, after + 3600_000 + 1000)
      assert.isAbove((issued.status?.token ?? "").length, 0)

      const secret = yield* kube.createSecret("json", { metadata: { name: "s" }, stringData: { k: "v" } })
      assert.strictEqual(typeof (secret.metadata?.creationTimestamp as unknown), "string")
      assert.deepStrictEqual((yield* kube.getSecret("json", "s")).data, { k: Buffer.from("v").toString("base64") })

      const key = { namespace: "json", name: "l" }
      const renewTime = "2026-12-06T03:00:00.123456Z"
      const lease = LeaseStore.toLease(key, { holderIdentity: "a", leaseDurationSeconds: 10, renewTime, acquireTime: renewTime })
      const created = yield* kube.createLease("json", { ...lease, metadata: { ...lease.metadata, labels: { group: "g" } } })
      assert.strictEqual(created.spec?.renewTime as unknown, renewTime)
      const read = yield* kube.getLease("json", "l")
      assert.deepStrictEqual(LeaseStore.toSpec(read), { holderIdentity: "a", leaseDurationSeconds: 10, renewTime, acquireTime: renewTime, leaseTransitions: undefined })
      const renewed = "2026-12-06T03:00:01.000001Z"
      yield* kube.replaceLease("json", LeaseStore.toLease(key, { ...LeaseStore.toSpec(read), renewTime: renewed }, read))
      const listed = yield* kube.listLeases("json", "group=g")
      assert.deepStrictEqual(listed.map((l) => [l.metadata?.name, l.spec?.renewTime as unknown]), [["l", renewed]])
      assert.deepStrictEqual(yield* kube.listLeases("json", "group=other"), [])
      yield* kube.deleteLease("json", "l")
      assert.strictEqual((yield* reasonOf(kube.getLease("json", "l"))).reason, "NotFound")
    }))

  it.live("a delete with a UID precondition refuses another object of the same name", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(server, "guarded")
      const kube = admin()
      const first = yield* kube.createSecret("guarded", { metadata: { name: "s" } })
      yield* kube.deleteSecret("guarded", "s")
      const second = yield* kube.createSecret("guarded", { metadata: { name: "s" } })
      const refused = yield* reasonOf(kube.deleteSecret("guarded", "s", { uid: first.metadata!.uid! }))
      assert.strictEqual(refused.reason, "Conflict")
      assert.strictEqual((yield* kube.getSecret("guarded", "s")).metadata?.uid, second.metadata?.uid)
      yield* kube.deleteSecret("guarded", "s", { uid: second.metadata!.uid! })
      assert.strictEqual((yield* reasonOf(kube.getSecret("guarded", "s"))).reason, "NotFound")
    }))

  it.live("the watch stream lists, then sees additions, changes and deletions", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(server, "watched")
      const kube = admin()
      yield* kube.createSecret("watched", { metadata: { name: "before" } })
      const fiber = yield* kube.watchSecrets("watched").pipe(
        Stream.take(4),
        Stream.runCollect,
        Effect.timeout("20 seconds"),
        Effect.forkChild
      )
      yield* Effect.sleep("500 millis")
      const created = yield* kube.createSecret("watched", { metadata: { name: "after" } })
      yield* kube.replaceSecret("watched", { ...created, stringData: { k: "v" } })
      yield* kube.deleteSecret("watched", "after")
      const events = yield* Fiber.join(fiber)
      const seen = events.map((e) =>
        e._tag === "Synced" ? `Synced:${e.items.map((s) => s.metadata?.name).join(",")}` : e._tag === "Broken" ? "Broken" : `${e._tag}:${e.object.metadata?.name}`
      )
      assert.deepStrictEqual(seen, ["Synced:before", "Added:after", "Modified:after", "Deleted:after"])
    }))

  it.live("a watch the server ends is resumed from the last resourceVersion seen, without a new list", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(server, "resumed")
      const userAgent = "tether-resume-test"
      const kube = ClientNodeKube.make({ cluster: "test", connection: Apiserver.connection(server), userAgent })
      const seen: Array<string> = []
      const fiber = yield* kube.watchSecrets("resumed").pipe(
        Stream.runForEach((e) =>
          Effect.sync(() => seen.push(e._tag === "Synced" || e._tag === "Broken" ? e._tag : `${e._tag}:${e.object.metadata?.name}`))
        ),
        Effect.forkChild
      )
      const until = <A>(read: Effect.Effect<A, unknown>, done: (a: A) => boolean, what: string) =>
        read.pipe(
          Effect.filterOrFail(done, () => "not yet"),
          Effect.retry({ schedule: Schedule.spaced("250 millis") }),
          Effect.timeoutOrElse({ duration: "90 seconds", orElse: () => Effect.die(new Error(`timed out waiting for ${what}`)) })
        )
      yield* until(Effect.succeed(seen), (s) => s.includes("Synced"), "the first list")
      const created = yield* kube.createSecret("resumed", { metadata: { name: "a" } })
      const mine = Effect.map(Apiserver.auditEvents(server), (events) =>
        events.filter((e) => e.userAgent === userAgent && e.objectRef?.namespace === "resumed"))
      // The first watch ends after its 12-16 s timeoutSeconds; the next one starts from where it was.
      const events = yield* until(mine, (es) => es.filter((e) => e.verb === "watch" && e.stage === "ResponseStarted").length >= 2, "a second watch")
      const watches = events.filter((e) => e.verb === "watch" && e.stage === "ResponseStarted")
      const from = Number(new URL(watches[1]!.requestURI, "https://apiserver").searchParams.get("resourceVersion"))
      assert.isAtLeast(from, Number(created.metadata?.resourceVersion))
      assert.strictEqual(events.filter((e) => e.verb === "list" && e.stage === "ResponseComplete").length, 1)
      assert.deepStrictEqual(seen, ["Synced", "Added:a"])
      yield* Fiber.interrupt(fiber)
    }))
})
