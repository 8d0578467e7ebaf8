/**
 * The provisioner under faults, on three real kube-apiservers with audit logs (hub, hosting,
 * managed), with a fault-injecting TCP proxy (test/support/FaultProxy.ts) between the provisioner
 * and the hosting and managed apiservers. API requests are counted from the apiservers' audit
 * logs, by the provisioner's User-Agent; connection attempts from the proxy.
 *
 * - quiet: between deadlines no requests but the watches (also across resyncs); per source change
 *   one TokenRequest, one Secret write, at most one status update and one Event; per routine
 *   rotation (the token due, nothing else changed) one TokenRequest and one Secret write;
 * - the managed apiserver away across a refresh: the token keeps serving, the apiserver is not
 *   hammered, and the refresh follows its return within seconds;
 * - its own condition write, whose watch event comes in before the write's answer, is still known
 *   as its own: no reconcile, so no TokenRequest ahead of the backoff;
 * - a deletion storm of the generated Secret mints no token;
 * - the hosting apiserver away: readiness drops, and once it is back the watches are re-listed,
 *   readiness returns and a change made meanwhile is acted on;
 * - a watch that silently stops (the connection kept open, nothing forwarded) is re-listed within
 *   30 s and the change it missed is acted on;
 * - a conflict storm: another writer updates the generated Secret and the add-on's status over and
 *   over across a rotation; the provisioner converges, the Secret never lacks a token, both
 *   writers' fields survive, and its requests stay bounded;
 * - the hosting and hub kube-apiserver processes killed (SIGKILL) and started again on their etcd:
 *   readiness drops, the watches re-list from the restarted servers, readiness returns, and
 *   nothing is lost (the generated Secret untouched, the condition still True, no TokenRequest);
 * - 429 (with Retry-After) and 5xx answers to TokenRequest, injected by an HTTP fault proxy:
 *   retried no sooner than Retry-After and then with a growing backoff, the token in place kept
 *   until the refresh succeeds.
 */
import { assert, beforeAll, describe, it } from "@effect/vitest"
import { CoreV1Api, CustomObjectsApi, type V1Secret } from "@kubernetes/client-node"
import { Duration, Effect } from "effect"
import * as Backoff from "../../src/domain/Backoff.ts"
import * as Conditions from "../../src/domain/Conditions.ts"
import * as ManagedKubeconfigSecret from "../../src/domain/ManagedKubeconfigSecret.ts"
import * as Controller from "../../src/kube/Controller.ts"
import type { Probes } from "../../src/observability/Probes.ts"
import type * as Provisioner from "../../src/provisioner/Provisioner.ts"
import { Apiserver, Fixtures } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"
import { dueSoon } from "../support/dueToken.ts"
import { eventually, until } from "../support/eventually.ts"
import * as FaultProxy from "../support/FaultProxy.ts"
import { call, provisioning, quietLogs, reconciles } from "../support/provisioner.ts"
import { useTrio } from "../support/trio.ts"

const { group, plural, version } = Fixtures.managedClusterAddOnResource

/** The User-Agent of the provisioner's hosting and hub clients in this file. */
const agent = "tether-faults-under-test"
/** The TokenIssuer's own User-Agent. */
const issuerAgent = "tether-managed-kubeconfig-provisioner"

describe.skipIf(noApiserver)("provisioner under faults (real apiservers, audit logs, fault proxy)", () => {
  const trio = useTrio({ auditLog: true })
  let hub!: Apiserver.ApiserverInfo
  let hosting!: Apiserver.ApiserverInfo
  let managed!: Apiserver.ApiserverInfo
  beforeAll(() => {
    ;({ hub, hosting, managed } = trio)
  })
  const provisioner = provisioning(trio)
  const { changeSource, condition, readTarget } = provisioner

  const core = (info: Apiserver.ApiserverInfo) => Apiserver.kubeConfig(info).makeApiClient(CoreV1Api)
  const hubCustom = () => Apiserver.kubeConfig(hub).makeApiClient(CustomObjectsApi)

  /** Requests (not watches) a user agent made, from the audit log, since `from` (an index). */
  const requests = (info: Apiserver.ApiserverInfo, userAgent: string, from = 0) =>
    Effect.map(Apiserver.auditEvents(info), (events) =>
      events
        .filter((e) => e.stage === "ResponseComplete" && e.verb !== "watch" && (e.userAgent ?? "").startsWith(userAgent))
        .slice(from)
        .map((e) => `${e.verb} ${e.objectRef?.resource ?? e.requestURI}${e.objectRef?.subresource === undefined ? "" : `/${e.objectRef.subresource}`}`))
  const count = (info: Apiserver.ApiserverInfo, userAgent: string) => Effect.map(requests(info, userAgent), (all) => all.length)

  const setUp = Effect.fn(function*(cluster: string, managedServer: string, syncInterval: Duration.Duration = Duration.seconds(3)) {
    const source = managed.kubeconfigYaml.split(managed.server).join(managedServer)
    const options = yield* provisioner.setUp(cluster, { source, syncInterval })
    return { options, source }
  })

  /** A provisioner in the test's scope, its hosting and hub clients going to `hostingServer` and `hubServer`; its probes. */
  const start = (options: Provisioner.Options, hostingServer?: string, hubServer?: string) =>
    provisioner.start(options, { logs: quietLogs, userAgent: agent, hostingServer, hubServer })

  const hashOf = (secret: V1Secret) => secret.metadata?.annotations?.[ManagedKubeconfigSecret.sourceHashAnnotation]
  const ready = (probes: Probes["Service"]) => until(probes.readiness, (failures) => failures.length === 0, "ready", { timeout: "30 seconds" })

  it.live("between deadlines only the watches; a source change costs one TokenRequest, one Secret write, at most one status update and one Event; a routine rotation one TokenRequest and one Secret write", () =>
    Effect.gen(function*() {
      const { options, source } = yield* setUp("q-quiet", managed.server)
      const probes = yield* start(options)
      yield* eventually(readTarget(options))
      yield* until(condition(options), (c) => c.status === "True", "condition True")
      yield* ready(probes)
      yield* Effect.sleep("2 seconds") // start-up: the watches' first lists and the first reconcile

      // Quiet: three resync periods with nothing to do.
      const before = { hosting: yield* count(hosting, agent), hub: yield* count(hub, agent), managed: yield* count(managed, issuerAgent) }
      yield* Effect.sleep("10 seconds")
      assert.deepStrictEqual(yield* requests(hosting, agent, before.hosting), [], "hosting requests between deadlines")
      assert.deepStrictEqual(yield* requests(hub, agent, before.hub), [], "hub requests between deadlines")
      assert.deepStrictEqual(yield* requests(managed, issuerAgent, before.managed), [], "managed requests between deadlines")

      // One rotation (a source change), then quiet again.
      const old = yield* readTarget(options)
      yield* changeSource(options, `${source}\n# rotated\n`)
      yield* until(readTarget(options), (s) => hashOf(s) !== hashOf(old), "rotated")
      yield* until(condition(options), (c) => c.reason === "ManagedKubeconfigUpdated", "condition updated")
      yield* Effect.sleep("5 seconds")
      assert.deepStrictEqual(yield* requests(managed, issuerAgent, before.managed), ["create serviceaccounts/token"])
      assert.deepStrictEqual([...(yield* requests(hosting, agent, before.hosting))].sort(), ["create events", "update secrets"])
      const hubRequests = yield* requests(hub, agent, before.hub)
      assert.isAtMost(hubRequests.length, 1, hubRequests.join(", "))
      for (const r of hubRequests) assert.strictEqual(r, "update managedclusteraddons/status")

      // A routine rotation (the token in place due, nothing else changed): nothing on the hub, no Event.
      const routine = { hosting: yield* count(hosting, agent), hub: yield* count(hub, agent), managed: yield* count(managed, issuerAgent) }
      const reconcilesBefore = yield* reconciles
      const current = yield* readTarget(options)
      yield* call(() => core(hosting).replaceNamespacedSecret({ ...options.target, body: dueSoon(current) }))
      const expiry = (s: V1Secret) => Date.parse(s.metadata?.annotations?.[ManagedKubeconfigSecret.expirationAnnotation] ?? "")
      yield* until(readTarget(options), (s) => expiry(s) > Date.now() + 30 * 60_000, "rotated")
      // The rotating reconcile was under way when its write was seen; once it has returned, all it sent is logged.
      yield* until(reconciles, (n) => n > reconcilesBefore, "the rotation's reconcile returned")
      assert.deepStrictEqual(yield* requests(managed, issuerAgent, routine.managed), ["create serviceaccounts/token"])
      assert.deepStrictEqual(yield* requests(hosting, agent, routine.hosting), ["update secrets"])
      assert.deepStrictEqual(yield* requests(hub, agent, routine.hub), [])
    }), { timeout: 120_000 })

  it.live("the managed apiserver away across a refresh: the token keeps serving, no hammering, and the refresh follows its return within seconds", () =>
    Effect.gen(function*() {
      const proxy = yield* FaultProxy.make({ host: managed.host, port: managed.port })
      // The default 5-minute resync, so that only the probe can bring the refresh forward.
      const { options, source } = yield* setUp("q-away", proxy.server, Duration.minutes(5))
      const probes = yield* start(options)
      const good = yield* eventually(readTarget(options))
      yield* ready(probes)

      proxy.setMode("reset")
      const acceptedBefore = proxy.accepted()
      const tokenRequestsBefore = yield* count(managed, issuerAgent)
      yield* changeSource(options, `${source}\n# while away\n`)
      const pending = yield* until(condition(options), (c) => c.reason === "ManagedKubeconfigRefreshPending", "refresh pending")
      assert.strictEqual(pending.status, "True")
      yield* Effect.sleep("30 seconds")
      // Still serving the old token, still ready (it is valid), and knocked on at most once a second on average.
      assert.strictEqual((yield* readTarget(options)).metadata?.resourceVersion, good.metadata?.resourceVersion)
      assert.deepStrictEqual(yield* probes.readiness, [])
      const knocks = proxy.accepted() - acceptedBefore
      assert.isAtMost(knocks, 30, `${knocks} connections in 30 s while away`)
      assert.strictEqual(yield* count(managed, issuerAgent), tokenRequestsBefore)

      proxy.setMode("pass")
      const back = Date.now()
      yield* until(readTarget(options), (s) => hashOf(s) !== hashOf(good), "refreshed after the return", { timeout: "20 seconds", interval: "50 millis" })
      const after = Date.now() - back
      assert.isBelow(after, 5_000, `refreshed ${after} ms after the managed apiserver came back`)
      yield* until(condition(options), (c) => c.reason === "ManagedKubeconfigUpdated", "condition updated")
      assert.strictEqual((yield* requests(managed, issuerAgent, tokenRequestsBefore)).length, 1)
    }), { timeout: 120_000 })

  it.live("its own condition write, whose watch event comes in before the write's answer, brings no TokenRequest forward of the backoff", () =>
    Effect.gen(function*() {
      const managedProxy = yield* FaultProxy.make({ host: managed.host, port: managed.port })
      const hubProxy = yield* FaultProxy.makeHttp(hub)
      const { options, source } = yield* setUp("q-own", managedProxy.server, Duration.minutes(5))
      // No reachability probe (it connects too): every connection to the managed apiserver is a TokenRequest.
      const probes = yield* start({ ...options, probeInterval: "1 hour" }, hosting.server, hubProxy.server)
      yield* eventually(readTarget(options))
      yield* until(condition(options), (c) => c.status === "True", "condition True")
      yield* ready(probes)

      managedProxy.setMode("reset")
      const from = managedProxy.accepted()
      // The failed refresh writes RefreshPending; its answer is held until its watch event has gone through.
      const held = hubProxy.hold((method, path) => method === "PUT" && path.endsWith("/status"))
      const eventPassed = hubProxy.passed("ManagedKubeconfigRefreshPending")
      yield* changeSource(options, `${source}\n# own write, event first\n`)
      yield* held.answered
      yield* eventPassed
      yield* Effect.sleep("300 millis") // for the provisioner to take the event in before the answer
      yield* held.release
      yield* until(Effect.sync(() => managedProxy.accepted()), (n) => n >= from + 2, "the first retry", { timeout: "20 seconds", interval: "50 millis" })
      const [first, second] = managedProxy.acceptedAt().slice(from)
      const min = Backoff.bounds(Controller.retryPolicy({ resyncInterval: options.syncInterval }), 0).min
      assert.isAtLeast(second! - first!, min, `the retry came ${second! - first!} ms after the first attempt`)
    }), { timeout: 120_000 })

  it.live("a deletion storm of the generated Secret mints no token: it is re-created from the token in hand", () =>
    Effect.gen(function*() {
      const { options } = yield* setUp("q-storm", managed.server)
      yield* start(options)
      const first = yield* eventually(readTarget(options))
      const token = first.data?.["token"]
      yield* Effect.sleep("1 second")
      const before = yield* count(managed, issuerAgent)
      let uid = first.metadata?.uid
      for (let i = 0; i < 20; i++) {
        yield* call(() => core(hosting).deleteNamespacedSecret(options.target))
        const again = yield* until(readTarget(options), (s) => s.metadata?.uid !== uid, `re-created after deletion ${i + 1}`, { interval: "20 millis" })
        uid = again.metadata?.uid
        assert.strictEqual(again.data?.["token"], token)
      }
      assert.deepStrictEqual(yield* requests(managed, issuerAgent, before), [], "TokenRequests during the storm")
    }), { timeout: 120_000 })

  it.live("the hosting apiserver away and back: readiness drops, the watches re-list, readiness returns and a change made meanwhile is acted on", () =>
    Effect.gen(function*() {
      const proxy = yield* FaultProxy.make({ host: hosting.host, port: hosting.port })
      const { options, source } = yield* setUp("q-hosting", managed.server)
      const probes = yield* start(options, proxy.server)
      const good = yield* eventually(readTarget(options))
      yield* ready(probes)

      proxy.setMode("reset")
      const down = yield* until(probes.readiness, (failures) => failures.some((f) => f.name === "watches"), "watches down", { timeout: "30 seconds" })
      assert.isAbove(down.length, 0)
      const listsBefore = (yield* Apiserver.auditEvents(hosting)).filter((e) => e.verb === "list" && (e.userAgent ?? "").startsWith(agent)).length
      yield* changeSource(options, `${source}\n# while the hosting apiserver was away\n`) // by the test, directly
      yield* Effect.sleep("3 seconds")

      proxy.setMode("pass")
      yield* ready(probes)
      yield* until(readTarget(options), (s) => hashOf(s) !== hashOf(good), "the change made meanwhile acted on", { timeout: "30 seconds" })
      const listsAfter = (yield* Apiserver.auditEvents(hosting)).filter((e) => e.verb === "list" && (e.userAgent ?? "").startsWith(agent)).length
      assert.isAtLeast(listsAfter - listsBefore, 2, "both Secret watches re-listed")
    }), { timeout: 120_000 })

  it.live("a watch that silently stops (connection open, nothing delivered) is re-listed within 30 s and the change it missed is acted on", () =>
    Effect.gen(function*() {
      const proxy = yield* FaultProxy.make({ host: hosting.host, port: hosting.port })
      // The 5-minute resync, so that only the watches can bring the change in.
      const { options, source } = yield* setUp("q-stall", managed.server, Duration.minutes(5))
      const probes = yield* start(options, proxy.server)
      const good = yield* eventually(readTarget(options))
      yield* ready(probes)
      const lists = Effect.map(
        Apiserver.auditEvents(hosting),
        (events) => events.filter((e) => e.stage === "ResponseComplete" && e.verb === "list" && (e.userAgent ?? "").startsWith(agent)).length
      )
      const listsBefore = yield* lists

      // Freeze the connections to the hosting apiserver open now: both Secret watches' among them.
      assert.isAtLeast(proxy.stall(), 2, "the watches' connection frozen")
      const stalledAt = Date.now()
      yield* changeSource(options, `${source}\n# while the watch was frozen\n`) // by the test, directly
      yield* until(lists, (n) => n >= listsBefore + 2, "both Secret watches re-listed", { timeout: "45 seconds", interval: "200 millis" })
      const relisted = Date.now() - stalledAt
      assert.isBelow(relisted, 30_000, `re-listed ${relisted} ms after the watches froze`)
      yield* until(readTarget(options), (s) => hashOf(s) !== hashOf(good), "the missed change acted on", { timeout: "10 seconds" })
      yield* ready(probes)
    }), { timeout: 120_000 })

  it.live("a conflict storm on the generated Secret and the add-on status: converges, never without a token, both writers' fields kept, bounded requests", () =>
    Effect.gen(function*() {
      const { options, source } = yield* setUp("q-conflict", managed.server, Duration.minutes(5))
      yield* start(options)
      const good = yield* eventually(readTarget(options))
      yield* until(condition(options), (c) => c.status === "True", "condition True")
      yield* Effect.sleep("1 second")
      const before = { hosting: yield* count(hosting, agent), hub: yield* count(hub, agent), managed: yield* count(managed, issuerAgent) }

      // The other writer: read-modify-write of the Secret's annotations and of a condition of its own
      // in the add-on's status, as fast as it can, for a bounded number of rounds; its conflicts are its own business.
      let withoutToken = 0
      let writes = 0
      const storm = Effect.gen(function*() {
        for (let i = 0; i < 60; i++) {
          const secret = yield* readTarget(options)
          if ((secret.data?.["token"] ?? "") === "") withoutToken++
          secret.metadata = { ...secret.metadata, annotations: { ...secret.metadata?.annotations, "storm.example/round": String(i) } }
          const wroteSecret = yield* call(() => core(hosting).replaceNamespacedSecret({ ...options.target, body: secret })).pipe(Effect.as(1), Effect.orElseSucceed(() => 0))
          const addon = (yield* call(() => hubCustom().getNamespacedCustomObject({ group, version, plural, ...options.addon! }))) as {
            status?: { conditions?: Array<Conditions.Condition> }
          }
          const others = (addon.status?.conditions ?? []).filter((c) => c.type !== "StormTest")
          const mine = { type: "StormTest", status: "True", reason: "Round", message: String(i), lastTransitionTime: new Date().toISOString() } as Conditions.Condition
          addon.status = { ...addon.status, conditions: [...others, mine] }
          const wroteStatus = yield* call(() =>
            hubCustom().replaceNamespacedCustomObjectStatus({ group, version, plural, ...options.addon!, body: addon })
          ).pipe(Effect.as(1), Effect.orElseSucceed(() => 0))
          writes += wroteSecret + wroteStatus
        }
      })
      // A rotation in the middle of the storm.
      const rotate = Effect.andThen(Effect.sleep("300 millis"), changeSource(options, `${source}\n# rotated in the storm\n`))
      yield* Effect.all([storm, rotate], { concurrency: "unbounded" })

      const final = yield* until(readTarget(options), (s) => hashOf(s) !== hashOf(good), "rotated", { timeout: "30 seconds" })
      yield* until(condition(options), (c) => c.status === "True" && c.reason === "ManagedKubeconfigUpdated", "condition updated")
      assert.strictEqual(withoutToken, 0, "reads of the Secret without a token during the storm")
      assert.isAbove(writes, 20, "the other writer got its writes in")
      // Both writers' fields survive.
      assert.strictEqual((yield* readTarget(options)).metadata?.annotations?.["storm.example/round"], "59")
      assert.notStrictEqual(final.data?.["token"], good.data?.["token"])
      const addon = (yield* call(() => hubCustom().getNamespacedCustomObject({ group, version, plural, ...options.addon! }))) as {
        status?: { conditions?: Array<Conditions.Condition> }
      }
      assert.strictEqual(Conditions.findCondition(addon.status?.conditions ?? [], "StormTest")?.message, "59")
      // Bounded: one TokenRequest for the one rotation; the provisioner's writes a handful, not one per storm write.
      yield* Effect.sleep("3 seconds")
      assert.deepStrictEqual(yield* requests(managed, issuerAgent, before.managed), ["create serviceaccounts/token"])
      const hostingRequests = yield* requests(hosting, agent, before.hosting)
      const hubRequests = yield* requests(hub, agent, before.hub)
      assert.isAtMost(hostingRequests.length, 8, hostingRequests.join(", "))
      assert.isAtMost(hubRequests.length, 8, hubRequests.join(", "))
      // How stormy it was, by the audit logs (409s to either writer; the provisioner writes once per
      // rotation, so whether its one write meets a conflict is a matter of timing: reported, not asserted).
      const conflicts = [...(yield* Apiserver.auditEvents(hosting)), ...(yield* Apiserver.auditEvents(hub))]
        .filter((e) => e.stage === "ResponseComplete" && e.verb === "update" && e.responseStatus?.code === 409).length
      console.log(`conflict storm: ${writes} writes by the other writer, ${conflicts} conflicts; provisioner: ${hostingRequests.length} hosting and ${hubRequests.length} hub requests, 1 TokenRequest`)
    }), { timeout: 120_000 })

  it.live("the hosting and hub apiservers killed and restarted: watches re-listed, readiness back, nothing lost", () =>
    Effect.gen(function*() {
      const { options } = yield* setUp("q-restart", managed.server, Duration.minutes(5))
      const probes = yield* start(options)
      const good = yield* eventually(readTarget(options))
      const before = yield* until(condition(options), (c) => c.status === "True", "condition True")
      yield* ready(probes)
      const tokenRequestsBefore = yield* count(managed, issuerAgent)

      yield* Effect.all([Apiserver.stopApiserver(hosting), Apiserver.stopApiserver(hub)], { concurrency: "unbounded", discard: true })
      yield* until(probes.readiness, (failures) => failures.some((f) => f.name === "watches"), "watches down", { timeout: "30 seconds" })
      const restartedAt = new Date()
      yield* Effect.all([Apiserver.startApiserver(hosting), Apiserver.startApiserver(hub)], { concurrency: "unbounded", discard: true })
      const up = Date.now()
      yield* until(probes.readiness, (failures) => failures.length === 0, "ready again", { timeout: "60 seconds", interval: "200 millis" })
      console.log(`apiservers restarted: the provisioner ready again ${Date.now() - up} ms after both answered`)

      // Re-listed from the restarted servers (audit events received after the restart).
      const listsSince = (info: Apiserver.ApiserverInfo) =>
        Effect.map(Apiserver.auditEvents(info), (events) =>
          events.filter((e) =>
            e.stage === "ResponseComplete" && e.verb === "list" && (e.userAgent ?? "").startsWith(agent) &&
            new Date(e.requestReceivedTimestamp) >= restartedAt
          ).map((e) => e.objectRef?.resource))
      assert.includeMembers(yield* listsSince(hosting), ["secrets", "secrets"])
      assert.include(yield* listsSince(hub), "managedclusteraddons")
      // Nothing lost: the same Secret (not even rewritten), the same condition, no new token.
      const after = yield* readTarget(options)
      assert.strictEqual(after.metadata?.resourceVersion, good.metadata?.resourceVersion)
      assert.strictEqual(after.data?.["token"], good.data?.["token"])
      const now = yield* condition(options)
      assert.strictEqual(now.status, "True")
      assert.strictEqual(now.reason, before.reason)
      assert.strictEqual(yield* count(managed, issuerAgent), tokenRequestsBefore)
    }), { timeout: 180_000 })

  it.live("429 and 5xx answers to TokenRequest: Retry-After honoured, then a growing backoff, no tight loop, the token in place kept", () =>
    Effect.gen(function*() {
      const proxy = yield* FaultProxy.makeHttp(managed)
      const { options, source } = yield* setUp("q-429", proxy.server, Duration.minutes(5))
      yield* start(options)
      const good = yield* eventually(readTarget(options))
      const isTokenRequest = (method: string, path: string) => method === "POST" && path.includes("/serviceaccounts/cluster-proxy/token")
      proxy.inject(
        { match: isTokenRequest, status: 429, retryAfterSeconds: 3, times: 1 },
        { match: isTokenRequest, status: 500, times: 1 },
        { match: isTokenRequest, status: 503, times: 1 }
      )
      const tokenRequestsBefore = yield* count(managed, issuerAgent)
      const from = proxy.seen().length // the first token went through before the faults
      const attemptsSince = () => proxy.seen().slice(from).filter((r) => isTokenRequest(r.method, r.path))
      yield* changeSource(options, `${source}\n# rotated into faults\n`)
      // While the faults last, the Secret keeps the good token.
      yield* until(Effect.sync(() => attemptsSince().length), (n) => n >= 2, "two attempts", { timeout: "20 seconds" })
      assert.strictEqual((yield* readTarget(options)).data?.["token"], good.data?.["token"])
      const rotated = yield* until(readTarget(options), (s) => hashOf(s) !== hashOf(good), "rotated once the faults are used up", { timeout: "60 seconds", interval: "200 millis" })
      assert.notStrictEqual(rotated.data?.["token"], good.data?.["token"])

      const attempts = attemptsSince()
      assert.deepStrictEqual(attempts.map((r) => r.injected), [429, 500, 503, undefined])
      const gaps = attempts.slice(1).map((r, i) => r.at - attempts[i]!.at)
      console.log(`TokenRequest answered 429 (Retry-After 3), 500, 503, then passed; gaps ${gaps.join(", ")} ms`)
      // Retry-After is a floor; after the 5xx answers the backoff (2 s, 4 s ... ±20%) grows.
      assert.isAtLeast(gaps[0]!, 2_900)
      assert.isAtLeast(gaps[1]!, 3_000)
      assert.isAtLeast(gaps[2]!, 6_000)
      // ... and no slower than that needs (with the jitter and a busy machine's slack).
      assert.isAtMost(gaps[0]!, 10_000)
      assert.isAtMost(gaps[1]!, 10_000)
      assert.isAtMost(gaps[2]!, 20_000)
      // Only the one that passed reached the apiserver.
      assert.deepStrictEqual(yield* requests(managed, issuerAgent, tokenRequestsBefore), ["create serviceaccounts/token"])
    }), { timeout: 120_000 })
})
