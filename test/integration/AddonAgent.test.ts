/**
 * The add-on agent and leader election against real kube-apiservers: `hosting` (where the agent
 * runs in hosted mode, so the add-on Lease lives there) and `managed` (which issues the real
 * ServiceAccount tokens of the managed kubeconfig).
 *
 * - The add-on Lease is created and its renewTime advances while healthy; when the proxy-agent's
 *   readiness URL (a loopback server the test controls) fails, renewTime stops; when it recovers,
 *   renewals resume. Intervals are 1 s instead of OCM's 60 s.
 * - The managed-token freshness check passes for a fresh real token, fails for an expired one and
 *   for a real one inside the margin, and the agent writes the Lease only once the file holds a
 *   fresh token. Default mode writes the Lease on the cluster the agent runs on.
 * - The `addon-agent` command (run in-process) renews the Lease and serves its probes and metrics.
 * - Leader election: two candidates on one Lease, exactly one leads; closing the leader releases
 *   the Lease (holder cleared) and the other takes over within the lease duration; a leader cut off
 *   from the apiserver steps down before the other takes over.
 * - No token appears in any log line.
 */
import { NodeServices } from "@effect/platform-node"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { CoordinationV1Api, type V1Lease } from "@kubernetes/client-node"
import { Clock, Context, Data, Duration, Effect, Exit, Fiber, Layer, Logger, Option, Ref, Result, Scope } from "effect"
import { Command } from "effect/cli"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as AddonAgentLayers from "../../layers/AddonAgent.ts"
import { AddonLease } from "../../src/addonagent/AddonLease.ts"
import * as AddonAgentCommand from "../../src/cli/commands/AddonAgent.ts"
import * as HealthChecks from "../../src/addonagent/HealthChecks.ts"
import * as LeaseState from "../../src/domain/LeaseState.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import * as KubeError from "../../src/kube/KubeError.ts"
import * as LeaderElection from "../../src/kube/LeaderElection.ts"
import * as LeaseStore from "../../src/kube/LeaseStore.ts"
import { Probes } from "../../src/observability/Probes.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { until } from "../support/eventually.ts"
import { noApiserver } from "../support/apiserver.ts"
import { freePort } from "../support/local.ts"

/** Every log line written by the components under test, checked for tokens at the end. */
const logLines: Array<string> = []
const tokens = new Set<string>()
const captureLogs = Logger.layer([Logger.map(Logger.formatJson, (line) => void logLines.push(line))])

class CallFailed extends Data.TaggedError("CallFailed")<{ readonly code: number | undefined }> {}

/** A readiness endpoint whose answer the test switches. */
const readinessServer = Effect.acquireRelease(
  Effect.callback<{
    readonly url: string
    readonly setReady: (ready: boolean) => void
    readonly refusals: () => number
    readonly server: Http.Server
  }>((resume) => {
    let ready = true
    let refused = 0
    const server = Http.createServer((req, res) => {
      if (!ready) refused++
      res.writeHead(req.url === "/readyz" && ready ? 200 : 503, { "content-type": "text/plain" })
      res.end(ready ? "ok" : "not ready")
    })
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as Net.AddressInfo).port
      resume(Effect.succeed({ url: `http://127.0.0.1:${port}/readyz`, setReady: (r) => void (ready = r), refusals: () => refused, server }))
    })
  }),
  ({ server }) =>
    Effect.callback<void>((resume) => {
      server.closeAllConnections()
      server.close(() => resume(Effect.void))
    })
)

const tempDir = Effect.acquireRelease(
  Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-addon-agent-"))),
  (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
)

/** An unsigned JWT-shaped token that expired an hour ago (only its exp is read). */
const expiredToken = () => {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")
  const exp = Math.floor(Date.now() / 1000) - 3600
  return `${part({ alg: "RS256" })}.${part({ exp, sub: "system:serviceaccount:agent:cluster-proxy" })}.c2ln`
}

const microTime = (value: unknown): string | undefined =>
  typeof value === "string" ? value : value instanceof Date ? value.toISOString() : undefined

describe.skipIf(noApiserver)("addon-agent and leader election (real apiservers)", () => {
  let scope: Scope.Closeable | undefined
  let hosting!: Apiserver.ApiserverInfo
  let managed!: Apiserver.ApiserverInfo

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make("parallel"))
    ;[hosting, managed] = await Effect.runPromise(
      Effect.all([Apiserver.make({ name: "hosting" }), Apiserver.make({ name: "managed" })], { concurrency: "unbounded" }).pipe(
        Scope.provide(scope)
      )
    )
  })
  afterAll(async () => {
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  const readLease = (info: Apiserver.ApiserverInfo, namespace: string, name: string) =>
    Effect.tryPromise({
      try: () => Apiserver.kubeConfig(info).makeApiClient(CoordinationV1Api).readNamespacedLease({ namespace, name }),
      catch: (e) => new CallFailed({ code: (e as { code?: number }).code })
    })
  const renewTimeOf = (lease: V1Lease) => microTime(lease.spec?.renewTime) ?? ""

  /** A managed kubeconfig file holding a real ServiceAccount token of the managed cluster. */
  const managedKubeconfig = Effect.fn(function*(dir: string, serviceAccount: string, seconds = 3600) {
    const token = yield* Apiserver.serviceAccountToken(managed, "agent", serviceAccount, seconds)
    tokens.add(token)
    const path = Path.join(dir, `${serviceAccount}.kubeconfig`)
    Fs.writeFileSync(path, Apiserver.kubeconfigForToken(managed, token))
    return { path, token }
  })

  /** Start the agent (the composition root the CLI uses) in the test's scope; its heartbeat and probes. */
  const startAgent = Effect.fn(function*(options: AddonAgentLayers.Options, kubeconfig: string) {
    const context = yield* Layer.build(
      AddonAgentLayers.layer(options, { kubeconfig }).pipe(Layer.provideMerge(Probes.layerNoServer), Layer.provide(captureLogs))
    )
    return { lease: Context.get(context, AddonLease), probes: Context.get(context, Probes) }
  })

  const agentOptions = (namespace: string, overrides: Partial<AddonAgentLayers.Options>): AddonAgentLayers.Options => ({
    clusterName: "managed-1",
    addonName: "cluster-proxy",
    leaseNamespace: namespace,
    leaseDuration: Duration.seconds(60),
    renewInterval: Duration.seconds(1),
    spokeKubeconfig: undefined,
    proxyAgentReadinessUrl: undefined,
    tokenFreshnessMargin: Duration.minutes(5),
    ...overrides
  })

  it.live("hosted mode: renews the Lease on the hosting cluster while healthy, stops while the proxy-agent is not ready, resumes after", () =>
    Effect.gen(function*() {
      const namespace = "agent-hosted"
      yield* Apiserver.createNamespace(hosting, namespace)
      const dir = yield* tempDir
      const spoke = yield* managedKubeconfig(dir, "cluster-proxy")
      const readiness = yield* readinessServer
      yield* startAgent(agentOptions(namespace, { spokeKubeconfig: spoke.path, proxyAgentReadinessUrl: readiness.url }), hosting.kubeconfigPath)

      const first = yield* until(readLease(hosting, namespace, "cluster-proxy").pipe(Effect.option), Option.isSome, "Lease created")
        .pipe(Effect.map((o) => Option.getOrThrow(o)))
      assert.strictEqual(first.spec?.leaseDurationSeconds, 60)
      assert.match(renewTimeOf(first), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/)
      const t1 = renewTimeOf(first)
      const second = yield* until(readLease(hosting, namespace, "cluster-proxy"), (l) => renewTimeOf(l) > t1, "renewTime advanced", { timeout: "5 seconds" })
      const t2 = renewTimeOf(second)
      yield* until(readLease(hosting, namespace, "cluster-proxy"), (l) => renewTimeOf(l) > t2, "renewTime advanced again", { timeout: "5 seconds" })
      // Nothing on the managed cluster: in hosted mode the Lease is the hosting cluster's.
      const onManaged = yield* Effect.flip(readLease(managed, namespace, "cluster-proxy"))
      assert.strictEqual(onManaged.code, 404)

      readiness.setReady(false)
      // Periods run one after another: once one has logged the failure, none that saw the agent
      // ready is still in flight. Then renewTime must stand still across three refused periods.
      yield* until(Effect.sync(() => logLines.some((line) => line.includes("a health check failed"))), (seen) => seen, "failure logged")
      const frozen = renewTimeOf(yield* readLease(hosting, namespace, "cluster-proxy"))
      const refusedAtFreeze = readiness.refusals()
      yield* until(Effect.sync(readiness.refusals), (n) => n >= refusedAtFreeze + 3, "three more refused periods", { timeout: "10 seconds" })
      assert.strictEqual(renewTimeOf(yield* readLease(hosting, namespace, "cluster-proxy")), frozen, "no renewal while the proxy-agent is not ready")

      readiness.setReady(true)
      yield* until(readLease(hosting, namespace, "cluster-proxy"), (l) => renewTimeOf(l) > frozen, "renewals resumed", { timeout: "5 seconds" })
      assert.isTrue(logLines.some((line) => line.includes("a health check failed") && line.includes("answered 503")))
      // The period's log line follows its Lease write, so wait for it rather than read it at once.
      yield* until(Effect.sync(() => logLines.some((line) => line.includes("the health checks pass again"))), (seen) => seen, "recovery logged", { timeout: "5 seconds" })
    }))

  it.live("the token-freshness check: a fresh real token passes; an expired token or a real one inside the margin fails", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const fresh = yield* managedKubeconfig(dir, "fresh", 3600)
      const short = yield* managedKubeconfig(dir, "short", 600)
      const expiredPath = Path.join(dir, "expired.kubeconfig")
      Fs.writeFileSync(expiredPath, Apiserver.kubeconfigForToken(managed, expiredToken()))
      const run = (path: string, margin: Duration.Duration) =>
        Effect.flatMap(HealthChecks.managedTokenFreshness("managed-token", path, margin), ({ check }) => Effect.result(check)).pipe(
          Effect.provide(NodeServices.layer)
        )
      assert.deepStrictEqual(yield* run(fresh.path, Duration.minutes(5)), Result.succeed(undefined))
      const expired = yield* run(expiredPath, Duration.minutes(5))
      assert.match(Result.isFailure(expired) ? expired.failure.reason : "", /^the managed token expired (1h|1h\d+s|59m\d+s) ago$/)
      const inside = yield* run(short.path, Duration.minutes(15))
      assert.match(Result.isFailure(inside) ? inside.failure.reason : "", /^the managed token expires in (9m\d+s|10m), within the freshness margin of 15m$/)
      for (const result of [expired, inside]) {
        for (const token of tokens) assert.notInclude(Result.isFailure(result) ? result.failure.reason : "", token)
      }
    }))

  it.live("hosted mode with an expired managed token writes no Lease until the file holds a fresh token", () =>
    Effect.gen(function*() {
      const namespace = "agent-token"
      yield* Apiserver.createNamespace(hosting, namespace)
      const dir = yield* tempDir
      const path = Path.join(dir, "kubeconfig")
      Fs.writeFileSync(path, Apiserver.kubeconfigForToken(managed, expiredToken()))
      const agent = yield* startAgent(agentOptions(namespace, { spokeKubeconfig: path }), hosting.kubeconfigPath)
      yield* until(agent.lease.last, (o) => Option.isSome(o) && o.value._tag === "Unhealthy", "unhealthy")
      yield* Effect.sleep("2 seconds")
      const missing = yield* Effect.flip(readLease(hosting, namespace, "cluster-proxy"))
      assert.strictEqual(missing.code, 404)

      // The provisioner rotates the token: the next period sees it and writes the Lease.
      const rotated = yield* managedKubeconfig(dir, "rotated")
      Fs.copyFileSync(rotated.path, path)
      yield* until(readLease(hosting, namespace, "cluster-proxy").pipe(Effect.option), Option.isSome, "Lease created", { timeout: "5 seconds" })
    }))

  it.live("default mode writes the Lease on the cluster the agent runs on, without a token check", () =>
    Effect.gen(function*() {
      const namespace = "agent-default"
      yield* Apiserver.createNamespace(managed, namespace)
      const readiness = yield* readinessServer
      const agent = yield* startAgent(agentOptions(namespace, { proxyAgentReadinessUrl: readiness.url }), managed.kubeconfigPath)
      const lease = yield* until(readLease(managed, namespace, "cluster-proxy").pipe(Effect.option), Option.isSome, "Lease created")
      assert.strictEqual(Option.getOrThrow(lease).spec?.leaseDurationSeconds, 60)
      assert.deepStrictEqual(yield* agent.probes.readiness, [])
    }))

  const get = (url: string) =>
    Effect.tryPromise({
      try: async () => {
        const response = await fetch(url)
        return { status: response.status, body: await response.text() }
      },
      catch: () => new CallFailed({ code: undefined })
    })

  it.live("the addon-agent command: renews the Lease and serves /healthz, /readyz and /metrics on its probe address", () =>
    Effect.gen(function*() {
      const namespace = "agent-cli"
      yield* Apiserver.createNamespace(hosting, namespace)
      const dir = yield* tempDir
      const spoke = yield* managedKubeconfig(dir, "cli")
      const readiness = yield* readinessServer
      const port = yield* freePort
      const run = Command.runWith(AddonAgentCommand.command, { version: "0" })
      const fiber = yield* run([
        `--spoke-kubeconfig=${spoke.path}`,
        "--cluster-name=managed-1",
        `--lease-namespace=${namespace}`,
        "--renew-interval=1s",
        `--proxy-agent-readiness-url=${readiness.url}`,
        `--kubeconfig=${hosting.kubeconfigPath}`,
        `--health-probe-bind-address=127.0.0.1:${port}`
      ]).pipe(Effect.provide(NodeServices.layer), Effect.forkChild)
      const base = `http://127.0.0.1:${port}`
      const lease = yield* until(readLease(hosting, namespace, "cluster-proxy").pipe(Effect.option), Option.isSome, "Lease created")
      assert.strictEqual(Option.getOrThrow(lease).spec?.leaseDurationSeconds, 60)
      assert.strictEqual((yield* until(get(`${base}/healthz`), (r) => r.status === 200, "healthz")).body, "ok")
      yield* until(get(`${base}/readyz`), (r) => r.status === 200, "ready")
      const metrics = yield* until(get(`${base}/metrics`), (r) => r.body.includes("cluster_proxy_addon_lease_updates_total"), "metrics")
      assert.match(metrics.body, /cluster_proxy_addon_lease_updates_total\{result="renewed"\} \d+/)
      assert.match(metrics.body, /cluster_proxy_addon_health_check_status\{check="proxy-agent"\} 1/)
      assert.match(metrics.body, /cluster_proxy_addon_health_check_status\{check="managed-token"\} 1/)
      assert.match(metrics.body, /cluster_proxy_addon_lease_renew_timestamp_seconds \d+/)
      yield* Fiber.interrupt(fiber)
      const closed = yield* Effect.flip(get(`${base}/healthz`))
      assert.strictEqual(closed._tag, "CallFailed")
    }))

  // -------------------------------------------------------------------------------------------
  // leader election
  // -------------------------------------------------------------------------------------------

  const electionOptions = (name: string, identity: string): LeaderElection.Options => ({
    namespace: "election",
    name,
    identity,
    leaseDuration: "3 seconds",
    renewInterval: "500 millis"
  })

  /**
   * A candidate in its own scope over the hosting cluster; `cut` makes every call fail, and
   * `answered` counts the calls that reached the apiserver.
   */
  const candidate = Effect.fn(function*(options: LeaderElection.Options, cut?: Ref.Ref<boolean>, answered?: Ref.Ref<number>) {
    const client = ClientNodeKube.make({ cluster: "hosting", connection: Apiserver.connection(hosting) })
    const real = LeaseStore.fromClient(client)
    const guard = <A>(call: Effect.Effect<A, KubeError.KubeError>) =>
      cut === undefined
        ? call
        : Effect.flatMap(Ref.get(cut), (isCut) =>
          isCut
            ? Effect.fail(new KubeError.KubeError({ cluster: "hosting", operation: "lease call", reason: "Transport", detail: "partitioned" }))
            : Effect.tap(call, () => (answered === undefined ? Effect.void : Ref.update(answered, (n) => n + 1))))
    const store = LeaseStore.LeaseStore.of({
      cluster: real.cluster,
      get: (key) => guard(real.get(key)),
      create: (key, spec) => guard(real.create(key, spec)),
      replace: (previous, spec) => guard(real.replace(previous, spec))
    })
    const candidateScope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      LeaderElection.LeaderElection.layerNoDeps(options).pipe(
        Layer.provide(Layer.succeed(LeaseStore.LeaseStore, store)),
        Layer.provide(captureLogs)
      ),
      candidateScope
    )
    return { election: Context.get(context, LeaderElection.LeaderElection), scope: candidateScope }
  })

  const leaders = (elections: ReadonlyArray<LeaderElection.LeaderElection["Service"]>) =>
    Effect.map(Effect.forEach(elections, (e) => e.isLeader), (flags) => elections.filter((_, i) => flags[i]).map((e) => e.identity))

  /** Sample every 50 ms for `millis`, failing if two candidates ever lead at once. */
  const neverTwo = (elections: ReadonlyArray<LeaderElection.LeaderElection["Service"]>, millis: number) =>
    Effect.gen(function*() {
      const end = (yield* Clock.currentTimeMillis) + millis
      while ((yield* Clock.currentTimeMillis) < end) {
        const now = yield* leaders(elections)
        assert.isAtMost(now.length, 1, `two leaders: ${now.join(", ")}`)
        yield* Effect.sleep("50 millis")
      }
    })

  const holderOf = (name: string) => Effect.map(readLease(hosting, "election", name), (l) => l.spec?.holderIdentity)

  it.live("two candidates: exactly one leads; closing it releases the Lease and the other takes over within the lease duration", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(hosting, "election")
      const a = yield* candidate(electionOptions("pair", "candidate-a"))
      const b = yield* candidate(electionOptions("pair", "candidate-b"))
      const elections = [a.election, b.election]
      const [first] = yield* until(leaders(elections), (l) => l.length === 1, "one leader")
      yield* neverTwo(elections, 2000)
      assert.deepStrictEqual(yield* leaders(elections), [first!])
      assert.strictEqual(yield* holderOf("pair"), first)

      const [leader, follower] = first === "candidate-a" ? [a, b] : [b, a]
      const closedAt = yield* Clock.currentTimeMillis
      yield* Scope.close(leader.scope, Exit.void)
      assert.isFalse(yield* leader.election.isLeader)
      yield* until(follower.election.isLeader, (x) => x, "follower leads", { timeout: "5 seconds", interval: "20 millis" })
      const tookOver = (yield* Clock.currentTimeMillis) - closedAt
      assert.isBelow(tookOver, 3000, `took over after ${tookOver} ms`)
      const lease = yield* readLease(hosting, "election", "pair")
      assert.strictEqual(lease.spec?.holderIdentity, follower.election.identity)
      assert.strictEqual(lease.spec?.leaseTransitions, 1)

      // Release clears the holder.
      yield* Scope.close(follower.scope, Exit.void)
      assert.isUndefined(yield* holderOf("pair"))
    }))

  it.live("a leader cut off from the apiserver steps down within the lease duration, before the other takes over", () =>
    Effect.gen(function*() {
      yield* Apiserver.createNamespace(hosting, "election")
      const cut = yield* Ref.make(false)
      const answered = yield* Ref.make(0)
      const a = yield* candidate(electionOptions("partition", "candidate-a"), cut, answered)
      yield* until(a.election.isLeader, (x) => x, "a leads")
      const b = yield* candidate(electionOptions("partition", "candidate-b"))
      yield* neverTwo([a.election, b.election], 1500)

      const renewedBefore = yield* readLease(hosting, "election", "partition")
      yield* Ref.set(cut, true)
      const start = yield* Clock.currentTimeMillis
      let aLost: number | undefined
      let bLed: number | undefined
      while (bLed === undefined && (yield* Clock.currentTimeMillis) - start < 10_000) {
        const now = (yield* Clock.currentTimeMillis) - start
        const [aLeads, bLeads] = [yield* a.election.isLeader, yield* b.election.isLeader]
        assert.isFalse(aLeads && bLeads, `two leaders ${now} ms after the cut`)
        if (!aLeads && aLost === undefined) aLost = now
        if (bLeads) bLed = now
        yield* Effect.sleep("20 millis")
      }
      assert.isDefined(aLost, "a noticed the loss")
      assert.isDefined(bLed, "b took over")
      assert.isAtMost(aLost!, 3000 + 100, "a steps down within the lease duration of its last renewal")
      assert.isBelow(aLost!, bLed!)
      assert.strictEqual(yield* holderOf("partition"), "candidate-b")
      assert.notStrictEqual(renewTimeOf(yield* readLease(hosting, "election", "partition")), renewTimeOf(renewedBefore))
      // Parsing what the apiserver stored gives back a time near ours.
      const stored = LeaseState.parseMicroTime(renewTimeOf(yield* readLease(hosting, "election", "partition")))
      assert.isDefined(stored)
      assert.isBelow(Math.abs(stored! - (yield* Clock.currentTimeMillis)), 5000)

      // Back in touch, a reads b's lease and stays a follower: checked once three of its calls
      // have been answered again, so a whole round has ended after its first read.
      const answeredBefore = yield* Ref.get(answered)
      yield* Ref.set(cut, false)
      yield* until(Ref.get(answered), (n) => n >= answeredBefore + 3, "a talks to the apiserver again", { timeout: "10 seconds", interval: "20 millis" })
      assert.deepStrictEqual(yield* leaders([a.election, b.election]), ["candidate-b"])
      yield* Scope.close(a.scope, Exit.void)
      yield* Scope.close(b.scope, Exit.void)
    }))

  it.live("no token appears in any log line", () =>
    Effect.sync(() => {
      assert.isAbove(tokens.size, 2)
      assert.isAbove(logLines.length, 0)
      const all = logLines.join("\n")
      for (const token of tokens) assert.notInclude(all, token)
    }))
})
